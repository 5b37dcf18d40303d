//! Network namespaces, VMs on veth pairs and `holdfast` agents for integration tests.
//!
//! Hypervisors and VMs are namespaces named `hft-<pid>-<n>-<role>`; everything inside them is
//! private, so interface names need not be unique. Each guard removes what it created, and
//! `sweep_stale` removes what a killed test process left behind.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{TempDir, is_stale, unique, workspace_bin};

/// Whether commands are printed before they run (the demo turns this on).
pub static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints `cmd` as a shell line when [`VERBOSE`] is on.
pub fn echo(cmd: &Command) {
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!(
            "$ {} {}",
            cmd.get_program().to_string_lossy(),
            args.join(" ")
        );
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    echo(cmd);
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// Deletes a namespace after killing what runs in it.
fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
}

/// Removes namespaces of test processes that are gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if is_stale(name) {
            delete_netns(name);
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // SAFETY: setns on this thread only; the fd is a namespace file.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        crate::sweep_stale();
        let name = unique(role);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // Files bind-mounted over /etc by `ip netns exec`: DHCP clients write resolv.conf here
        // instead of the host's.
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        std::fs::create_dir_all(&etc).expect("/etc/netns");
        std::fs::write(etc.join("resolv.conf"), "").expect("resolv.conf");
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip netns exec`: the namespace's network and its /etc/netns files (own mount namespace).
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `nsenter --net`: the namespace's network only; /sys/fs/bpf stays the host's, so pins
    /// made here outlive the process.
    pub fn enter(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// One counter of the namespace's own stack, from a `/proc/net` file that lays its tables
    /// out as a row of names and a row of values (`snmp`, `netstat`):
    /// `proc_counter("snmp", "Icmp", "InEchos")`, `proc_counter("netstat", "TcpExt", "TCPOFOQueue")`.
    pub fn proc_counter(&self, file: &str, table: &str, counter: &str) -> u64 {
        let out = self
            .exec("cat")
            .arg(format!("/proc/net/{file}"))
            .output()
            .expect(file);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let prefix = format!("{table}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (rows.next().expect(table), rows.next().expect(table));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == counter)
            .and_then(|(_, v)| v.parse().ok())
            .expect(counter)
    }

    /// One counter of an interface in the namespace (`/sys/class/net/<interface>/statistics/
    /// <counter>`: `rx_packets`, `tx_bytes`…), `None` when there is no such interface.
    pub fn link_counter(&self, interface: &str, counter: &str) -> Option<u64> {
        let out = self
            .exec("cat")
            .arg(format!("/sys/class/net/{interface}/statistics/{counter}"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip` for reading state: never printed, even in the demo.
    pub fn query(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Whether interface `name` exists here.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The resolv.conf DHCP clients in this namespace write.
    pub fn resolv_conf(&self) -> String {
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", self.name)).unwrap_or_default()
    }

    /// How many of `count` pings to `ip` from this namespace got an answer.
    pub fn ping(&self, ip: Ipv4Addr, count: u32) -> u32 {
        self.ping_any(&ip.to_string(), count)
    }

    /// [`Netns::ping`] to an IPv6 address.
    pub fn ping6(&self, ip: std::net::Ipv6Addr, count: u32) -> u32 {
        self.ping_any(&ip.to_string(), count)
    }

    fn ping_any(&self, ip: &str, count: u32) -> u32 {
        let out = self
            .exec("ping")
            .args([
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
            ])
            .arg(ip)
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(',')
            .find_map(|p| p.trim().strip_suffix(" received"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A one-shot `iperf3 -s` on `port`, returned once it listens (a fixed sleep was not enough
    /// on a busy host: the client found nothing listening).
    pub fn iperf3_server(&self, port: u16) -> Proc {
        let server = Proc(
            self.exec("iperf3")
                .args(["-s", "-1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 -s"),
        );
        let filter = format!("sport = :{port}");
        let listening = wait_for(Duration::from_secs(10), || {
            let out = self.exec("ss").args(["-Hltn", &filter]).output().ok()?;
            (!out.stdout.is_empty()).then_some(())
        });
        assert!(
            listening.is_some(),
            "iperf3 -s on port {port} never listened"
        );
        server
    }

    pub fn ifindex(&self, interface: &str) -> u32 {
        let out = self.query(&["-o", "link", "show", interface]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .expect("ifindex")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// A VM: its own namespace, its NIC `eth0` on a veth whose other end (`tap`) is in the
/// hypervisor namespace.
pub struct Vm {
    pub ns: Netns,
    pub mac: [u8; 6],
    pub tap: String,
}

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Vm {
    /// Creates the VM and plugs it into `hv` as `tap`.
    pub fn new(hv: &Netns, tap: &str, mac: [u8; 6]) -> Self {
        let ns = Netns::new("vm");
        hv.ip(&[
            "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        ns.ip(&["link", "set", "eth0", "address", &mac_str(mac)]);
        hv.ip(&["link", "set", tap, "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        // The kernel delivers XDP_TX frames into a veth only when its peer runs XDP.
        run(ns
            .exec(workspace_bin("holdfast").to_str().expect("path"))
            .args(["veth-peer", "eth0"]));
        Self {
            ns,
            mac,
            tap: tap.to_owned(),
        }
    }

    /// Plugs a second NIC into the VM: `name` in its namespace, `tap` in `hv`.
    pub fn add_nic(&self, hv: &Netns, tap: &str, mac: [u8; 6], name: &str) {
        hv.ip(&[
            "link",
            "add",
            tap,
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            &self.ns.name,
        ]);
        self.ns.ip(&["link", "set", name, "address", &mac_str(mac)]);
        hv.ip(&["link", "set", tap, "up"]);
        self.ns.ip(&["link", "set", name, "up"]);
        run(self
            .ns
            .exec(workspace_bin("holdfast").to_str().expect("path"))
            .args(["veth-peer", name]));
    }

    /// The IPv4 address and prefix on eth0, if any.
    pub fn address(&self) -> Option<(Ipv4Addr, u8)> {
        let out = self.ns.query(&["-4", "-o", "addr", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let cidr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?;
        let (a, p) = cidr.split_once('/')?;
        Some((a.parse().ok()?, p.parse().ok()?))
    }

    pub fn routes(&self) -> String {
        String::from_utf8_lossy(&self.ns.query(&["-4", "route", "show"]).stdout).into_owned()
    }

    pub fn mtu(&self) -> u32 {
        let out = self.ns.query(&["-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("mtu")
    }

    /// Waits until eth0 has an IPv4 address.
    pub fn wait_address(&self, timeout: Duration) -> Option<(Ipv4Addr, u8)> {
        wait_for(timeout, || self.address())
    }

    /// Every IPv4 address on eth0.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let out = self.ns.query(&["-4", "-o", "addr", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| {
                let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
                cidr.split_once('/')?.0.parse().ok()
            })
            .collect()
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Config for an agent whose VM interfaces carry many clients each (the load generator's, a
/// prober asking 50 times a second): the per-port rate limits, sized for one real client,
/// turned off. Appended to the config (`Agent::start_with`).
pub const NO_RATE_LIMITS: &str =
    "[rate_limits]\ndhcp_per_sec = 0\narp_per_sec = 0\nevents_per_sec = 0\n";

/// A `holdfast run` process in a hypervisor namespace.
pub struct Agent {
    child: Option<Child>,
    pub ns_path: PathBuf,
    pub config: PathBuf,
    pub ipam: PathBuf,
    pub dir: TempDir,
    pub bpffs: TempDir,
    pub log: PathBuf,
    /// Extra environment for the process (fault injection, systemd's variables).
    pub env: Vec<(String, String)>,
    /// The build to run: this workspace's `holdfast` unless a test swaps it (upgrades).
    pub binary: PathBuf,
    /// RLIMIT_NOFILE (soft and hard) of the process, as `prlimit --nofile=N` would set it.
    pub nofile: Option<u64>,
}

impl Agent {
    /// Writes a config and an IPAM document in a fresh directory and starts the agent.
    pub fn start(hv: &Netns, node: &str, ipam_json: &str) -> Self {
        Self::start_with(hv, node, ipam_json, "")
    }

    /// As [`Agent::start`], with extra TOML appended to the config (an `[underlay]` section).
    pub fn start_with(hv: &Netns, node: &str, ipam_json: &str, extra: &str) -> Self {
        let mut agent = Self::configure(
            hv,
            node,
            |ipam| {
                std::fs::write(ipam, ipam_json).expect("ipam");
                format!(
                    "[ipam]\nsource = \"file\"\npath = \"{}\"\npoll_interval_ms = 200\n",
                    ipam.display()
                )
            },
            extra,
        );
        agent.spawn(hv);
        agent
    }

    /// An agent whose IPAM is the etcd at `url`.
    pub fn start_etcd(hv: &Netns, node: &str, url: &str, extra: &str) -> Self {
        let mut agent = Self::configure(hv, node, |_| crate::etcd::ipam_section(url, 1000), extra);
        agent.spawn(hv);
        agent
    }

    /// Writes the config (the `[ipam]` section from `ipam`, given the document's path) in a
    /// fresh directory; does not start anything.
    pub fn configure(
        hv: &Netns,
        node: &str,
        ipam: impl FnOnce(&Path) -> String,
        extra: &str,
    ) -> Self {
        let dir = TempDir::new("agent");
        let bpffs = TempDir::bpffs("agent");
        let ipam_path = dir.path().join("ipam.json");
        let section = ipam(&ipam_path);
        let config = dir.path().join("holdfast.toml");
        std::fs::write(
            &config,
            format!(
                "node = \"{node}\"\nstate_dir = \"{}\"\nbpffs_dir = \"{}\"\n\
                 router_mac = \"{}\"\n{section}{extra}",
                dir.path().join("state").display(),
                bpffs.path().display(),
                mac_str(crate::xdp::ROUTER_MAC),
            ),
        )
        .expect("config");
        Self {
            child: None,
            ns_path: hv.path(),
            config,
            ipam: ipam_path,
            log: dir.path().join("agent.log"),
            env: Vec::new(),
            binary: workspace_bin("holdfast"),
            nofile: None,
            dir,
            bpffs,
        }
    }

    /// Starts (or restarts) the process and waits until it is ready.
    pub fn spawn(&mut self, hv: &Netns) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        // HOLDFAST_AGENT_WRAP runs the agent under a profiler: "heaptrack -o /tmp/hf".
        let mut cmd = match std::env::var("HOLDFAST_AGENT_WRAP") {
            Ok(wrap) if !wrap.trim().is_empty() => {
                let mut words = wrap.split_whitespace();
                let mut c = hv.enter(Path::new(words.next().unwrap_or_default()));
                c.args(words).arg(&self.binary);
                c
            }
            _ => hv.enter(&self.binary),
        };
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit(2) only, between fork and exec; nsenter execs the agent with it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        echo(&cmd);
        let child = cmd.spawn().expect("spawn holdfast");
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(20), || {
            (self.http("/readyz").0 == 200).then_some(())
        });
        assert!(ready.is_some(), "agent not ready:\n{}", self.logs());
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn write_ipam(&self, json: &str) {
        // Atomic replace, as an operator's tooling would do it.
        let tmp = self.ipam.with_extension("tmp");
        std::fs::write(&tmp, json).expect("ipam");
        std::fs::rename(&tmp, &self.ipam).expect("ipam");
    }

    /// GET on the agent's HTTP endpoint (inside its namespace): status and body.
    pub fn http(&self, path: &str) -> (u16, String) {
        in_netns(&self.ns_path, || {
            let Ok(mut s) = TcpStream::connect_timeout(
                &"127.0.0.1:9469".parse().expect("addr"),
                Duration::from_secs(2),
            ) else {
                return (0, String::new());
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            let status = body
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (status, body)
        })
    }

    /// The value of one sample on `/metrics`, e.g. `holdfast_dhcp_replies_total{type="ack"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric(&self.http("/metrics").1, sample)
    }

    /// `holdfast leases`, run in the hypervisor namespace.
    pub fn leases(&self) -> String {
        self.cli("leases")
    }

    /// `holdfast vpc`, run in the hypervisor namespace.
    pub fn vpc(&self) -> String {
        self.cli("vpc")
    }

    fn cli(&self, command: &str) -> String {
        let out = run(Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg(workspace_bin("holdfast"))
            .args([command, "--config"])
            .arg(&self.config));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The data-plane counters, read from the pinned map (works with the agent down).
    pub fn counters(&self) -> Vec<u64> {
        holdfast::dataplane::StatsReader::open(self.bpffs.path())
            .expect("stats")
            .read()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.logs());
        }
    }
}

/// Finds one sample in Prometheus text.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
