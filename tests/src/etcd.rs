//! A real etcd server for the tests, inside a namespace the test created (its loopback, and
//! optionally an underlay address), with its data in a temporary directory. It can be stopped,
//! restarted on the same data, or frozen (SIGSTOP) to play a hung store. A client thread in the
//! same namespace writes through holdfast's own [`Store`], so NICs keep their index keys.
//!
//! [`Proxy`] stands between an agent and etcd when a test must cut the agent off while etcd
//! itself goes on (to compact the history behind the agent's back).

use std::{
    io,
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use holdfast::{
    config::IpamConfig,
    ipam::etcd::Store,
    model::{MacAddr, Nic},
};

use crate::{
    TempDir,
    netns::{Netns, echo, in_netns, wait_for},
};

pub const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub struct Etcd {
    ns: PathBuf,
    dir: TempDir,
    listen: Vec<Ipv4Addr>,
    child: Option<Child>,
    client: Option<EtcdClient>,
}

impl Etcd {
    /// Starts etcd in `ns` on 127.0.0.1 and the `extra` addresses, port 2379.
    pub fn start(ns: &Netns, extra: &[Ipv4Addr]) -> Self {
        let mut listen = vec![Ipv4Addr::LOCALHOST];
        listen.extend_from_slice(extra);
        let mut e = Self {
            ns: ns.path(),
            dir: TempDir::new("etcd"),
            listen,
            child: None,
            client: None,
        };
        e.spawn();
        e
    }

    /// The URL agents use on `addr` (one of the listening addresses).
    pub fn url(addr: Ipv4Addr) -> String {
        format!("http://{addr}:{CLIENT_PORT}")
    }

    fn spawn(&mut self) {
        let urls: Vec<String> = self.listen.iter().map(|a| Self::url(*a)).collect();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.display()))
            .arg("etcd")
            .arg("--name")
            .arg("ipam")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(urls.join(","))
            .arg("--advertise-client-urls")
            .arg(&urls[0])
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{PEER_PORT}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{PEER_PORT}"))
            .arg("--initial-cluster")
            .arg(format!("ipam=http://127.0.0.1:{PEER_PORT}"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("etcd.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        echo(&cmd);
        self.child = Some(cmd.spawn().expect("etcd (Debian package etcd-server)"));
        let up = wait_for(Duration::from_secs(20), || {
            in_netns(&self.ns, || {
                TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, CLIENT_PORT).into(),
                    Duration::from_millis(200),
                )
                .ok()
            })
            .map(drop)
        });
        assert!(up.is_some(), "etcd did not start:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The server's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// A client in the namespace (made on first use).
    pub fn client(&mut self) -> &EtcdClient {
        if self.client.is_none() {
            self.client = Some(EtcdClient::connect(
                &self.ns,
                &Self::url(Ipv4Addr::LOCALHOST),
            ));
        }
        self.client.as_ref().expect("client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
    }
}

/// The `[ipam]` section for an etcd source at `url`.
pub fn ipam_section(url: &str, timeout_ms: u64) -> String {
    format!("[ipam]\nsource = \"etcd\"\nendpoints = [\"{url}\"]\ntimeout_ms = {timeout_ms}\n")
}

type Job = Box<dyn FnOnce(&mut Store, &tokio::runtime::Runtime) + Send>;

/// holdfast's etcd client, on a thread inside the namespace.
pub struct EtcdClient {
    config: IpamConfig,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl EtcdClient {
    fn connect(ns: &std::path::Path, url: &str) -> Self {
        let config: IpamConfig = client_config(url);
        let thread_config = config.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_owned();
        let thread = thread::spawn(move || {
            let ns_file = std::fs::File::open(&ns).expect("netns");
            // SAFETY: setns on this thread only.
            let rc = unsafe {
                libc::setns(
                    std::os::fd::AsRawFd::as_raw_fd(&ns_file),
                    libc::CLONE_NEWNET,
                )
            };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut store = rt
                .block_on(Store::connect(&thread_config))
                .expect("connect to etcd");
            let _ = ready_tx.send(());
            while let Ok(job) = rx.recv() {
                job(&mut store, &rt);
            }
        });
        ready_rx.recv().expect("etcd client thread");
        Self {
            config,
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` with the store on the client's thread.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store, &tokio::runtime::Runtime) -> T + Send + 'static,
    ) -> T {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("client")
            .send(Box::new(move |s, rt| {
                let _ = rtx.send(f(s, rt));
            }))
            .expect("etcd client thread");
        rrx.recv().expect("etcd client thread")
    }

    /// `holdfast ipam import`, in-process: the document validated then written.
    pub fn import(&self, json: &str) -> i64 {
        let v = holdfast::cli::check_document(json.as_bytes(), "", &Default::default())
            .expect("document");
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        self.run(move |s, rt| rt.block_on(s.import(&v.model)).expect("import").revision)
    }

    /// The write `op` (idempotent), retried as an operator's tool retries one that timed
    /// out: on a loaded machine etcd's fsync can outlast the client's deadline.
    fn write<E: std::fmt::Display>(
        &self,
        what: &'static str,
        op: impl Fn(&mut Store, &tokio::runtime::Runtime) -> Result<i64, E> + Send + 'static,
    ) -> i64 {
        self.run(move |s, rt| {
            let mut tries = 0;
            loop {
                match op(s, rt) {
                    Ok(revision) => return revision,
                    Err(e) if tries < 5 && e.to_string().contains("Timeout expired") => {
                        tries += 1;
                        thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("{what}: {e}"),
                }
            }
        })
    }

    pub fn put_nic(&self, nic: Nic) -> i64 {
        self.write("put nic", move |s, rt| rt.block_on(s.put_nic(&nic)))
    }

    pub fn delete_nic(&self, mac: [u8; 6]) -> i64 {
        self.write("delete nic", move |s, rt| {
            rt.block_on(s.delete_nic(MacAddr(mac)))
        })
    }

    /// Raw bytes at `key` relative to the prefix (`nics/…`, `networks/…`).
    pub fn put_raw(&self, key: &str, value: &str) -> i64 {
        let (key, value) = (format!("/holdfast/{key}"), value.to_owned());
        self.write("put", move |s, rt| {
            rt.block_on(s.put_raw(&key, value.clone()))
        })
    }

    pub fn compact(&self, revision: i64) {
        self.run(move |s, rt| rt.block_on(s.compact(revision)).expect("compact"));
    }

    /// Every key under `prefix` (relative to the IPAM prefix), with its value.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let prefix = format!("/holdfast/{prefix}");
        self.run(move |s, rt| {
            let (kvs, _) = rt.block_on(s.list(&prefix, 0)).expect("list");
            kvs.into_iter()
                .map(|(k, v)| {
                    let v = v.bytes().map(String::from_utf8_lossy).unwrap_or_default();
                    (k, v.into_owned())
                })
                .collect()
        })
    }

    /// Puts each NIC from a connection of its own, all at once: writers racing on one MAC as
    /// `holdfast ipam` tools on several machines would. Each result is the revision written or
    /// the error's text.
    pub fn put_nics_at_once(&self, nics: Vec<Nic>) -> Vec<Result<i64, String>> {
        let config = self.config.clone();
        self.run(move |_, rt| {
            rt.block_on(async move {
                // Every connection first, so that the writers start together.
                let mut stores = Vec::new();
                for _ in &nics {
                    stores.push(Store::connect(&config).await.expect("connect to etcd"));
                }
                let writers: Vec<_> = stores
                    .into_iter()
                    .zip(nics)
                    .map(|(mut store, nic)| {
                        tokio::spawn(
                            async move { store.put_nic(&nic).await.map_err(|e| e.to_string()) },
                        )
                    })
                    .collect();
                let mut out = Vec::new();
                for w in writers {
                    out.push(w.await.expect("writer task"));
                }
                out
            })
        })
    }
}

impl Drop for EtcdClient {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `[ipam]` config of a client of the etcd at `url`.
pub fn client_config(url: &str) -> IpamConfig {
    let text = format!("node = \"test\"\n{}", ipam_section(url, 5000));
    holdfast::config::Config::parse(std::path::Path::new("test.toml"), &text)
        .expect("config")
        .ipam
}

/// A TCP proxy inside a namespace: `listen` → `target`. `cut` drops every connection and
/// refuses new ones until `restore`.
pub struct Proxy {
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

impl Proxy {
    pub fn start(ns: &Netns, port: u16, target: u16) -> Self {
        let listener = in_netns(&ns.path(), || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("proxy listen")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ns_path = ns.path();
        let (o, c, s) = (open.clone(), conns.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !o.load(Ordering::Relaxed) {
                            drop(client);
                            continue;
                        }
                        let Some(server) = in_netns(&ns_path, || {
                            TcpStream::connect((Ipv4Addr::LOCALHOST, target)).ok()
                        }) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (mut from, mut to) = (
                                from.try_clone().expect("clone"),
                                to.try_clone().expect("clone"),
                            );
                            thread::spawn(move || {
                                let _ = io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Both);
                            });
                        }
                        let mut all = c.lock().expect("conns");
                        all.push(client);
                        all.push(server);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            open,
            conns,
            stop,
            thread: Some(thread),
            port,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Relaxed);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
