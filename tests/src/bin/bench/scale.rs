//! `cargo xtask bench scale`: many agents' etcd sources in one process against one real etcd.
//!
//! For each cloud of the matrix (agents × networks, every node with a few NICs in a few
//! networks), one real [`EtcdSource`] per simulated hypervisor `hv-<i>` runs in one tokio
//! runtime inside the benchmark's namespace, each draining its own channel and counting what it
//! got. Then a burst of NIC creations in random networks on random nodes, then one node change.
//! Reported per cloud: the watch events each agent received against what a watcher of the whole
//! prefix received (plain `etcdctl watch --prefix` processes in the same run: the naive design,
//! where every agent is woken by every change; etcdctl because this crate has no etcd client of
//! its own), the updates each agent delivered, what each agent read at start, and etcd's load:
//! watchers and streams, Range calls, bytes sent, CPU seconds, RSS, and the steady cost of the
//! sources' progress requests over an idle window. Once per agent count, etcd is also stopped
//! for two seconds and started again, first with its history intact (the sources resume their
//! watches), then compacted meanwhile (they list again).
//!
//! `HOLDFAST_BENCH_AGENTS`, `HOLDFAST_BENCH_NETWORKS` (comma-separated) and
//! `HOLDFAST_BENCH_PUTS` override the matrix and the churn.
//!
//! `docs/scale.md` explains the design these figures back.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use holdfast::{
    config::{Config, IpamConfig},
    ipam::{Update, etcd::EtcdSource},
    model::{MacAddr, Nic},
};
use holdfast_tests::{
    etcd::{CLIENT_PORT, Etcd, ipam_section},
    netns::Netns,
};
use tokio::sync::{Notify, mpsc};

/// NICs each node starts with, each in a network drawn at random.
const NICS_PER_NODE: usize = 4;
/// NIC creations in the churn phase, unless `HOLDFAST_BENCH_PUTS` says otherwise.
const PUTS: usize = 1_000;
/// Naive watchers: `etcdctl watch --prefix /holdfast/`, as every agent would in a design that
/// watches everything.
const NAIVE: usize = 3;
/// The idle window over which the steady load is measured.
const IDLE: Duration = Duration::from_secs(10);
/// A phase has settled when nothing moved for this long.
const QUIET: Duration = Duration::from_secs(2);
/// How long etcd stays away in the outage phases.
const DOWN: Duration = Duration::from_secs(2);
/// The deadline of every etcd call the sources make (the agent's default).
const TIMEOUT_MS: u64 = 5_000;

/// splitmix64: a fixed seed, so every run builds the same clouds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every network shares 10.0.0.0/16 (they are told apart by VNI), so NIC `k` of the whole
/// cloud, churn included, gets an address of its own.
fn nic(k: usize, network: usize, node: usize) -> Nic {
    Nic {
        mac: MacAddr([0x02, 0x5c, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8]),
        network: format!("n{network}").into(),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + k as u32),
        hostname: None,
        node: format!("hv-{node}").into(),
        interface: Some(format!("t{k}")),
    }
}

/// The cloud as the benchmark tracks it: which networks each node has NICs in.
struct Cloud {
    agents: usize,
    node_networks: Vec<BTreeSet<usize>>,
    nics: usize,
}

impl Cloud {
    fn new(agents: usize, networks: usize, rng: &mut Rng) -> (Self, String) {
        let mut c = Self {
            agents,
            node_networks: vec![BTreeSet::new(); agents],
            nics: 0,
        };
        let mut nics = Vec::with_capacity(agents * NICS_PER_NODE);
        for node in 0..agents {
            for _ in 0..NICS_PER_NODE {
                let network = rng.below(networks);
                nics.push(c.add(network, node));
            }
        }
        let networks_json: Vec<String> = (0..networks)
            .map(|n| {
                format!(
                    r#"{{"id":"n{n}","vni":{},"subnet":"10.0.0.0/16","gateway":"10.0.0.1","mtu":1450}}"#,
                    10_000 + n
                )
            })
            .collect();
        let nodes_json: Vec<String> = (0..agents)
            .map(|h| format!(r#"{{"name":"hv-{h}","vtep":"{}"}}"#, vtep(h)))
            .collect();
        let nics_json: Vec<String> = nics
            .iter()
            .map(|n| serde_json::to_string(n).expect("NIC JSON"))
            .collect();
        let json = format!(
            r#"{{"networks":[{}],"nodes":[{}],"nics":[{}]}}"#,
            networks_json.join(","),
            nodes_json.join(","),
            nics_json.join(",")
        );
        (c, json)
    }

    fn add(&mut self, network: usize, node: usize) -> Nic {
        let n = nic(self.nics, network, node);
        self.nics += 1;
        self.node_networks[node].insert(network);
        n
    }

    /// Watchers the design predicts: per agent, its node's NICs and the nodes, plus for each
    /// network it has a NIC in, the network's key and its NICs.
    fn watchers(&self) -> usize {
        self.node_networks.iter().map(|n| 2 + 2 * n.len()).sum()
    }

    fn mean_networks_per_node(&self) -> f64 {
        self.node_networks.iter().map(BTreeSet::len).sum::<usize>() as f64 / self.agents as f64
    }
}

fn vtep(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        100,
        64 + (h / 62_500) as u8,
        (h / 250 % 250) as u8,
        (h % 250 + 1) as u8,
    )
}

/// What one simulated agent received from its source.
#[derive(Default)]
struct Seen {
    documents: AtomicU64,
    partials: AtomicU64,
    /// Networks named by the partial updates: what the agent would validate again.
    partial_networks: AtomicU64,
    alive: AtomicU64,
    unavailable: AtomicU64,
    invalid: AtomicU64,
    /// Entries (networks + nodes + NICs) of the first document.
    first_entries: AtomicU64,
}

impl Seen {
    fn record(&self, update: Update) {
        match update {
            Update::Document(doc) => {
                if self.documents.load(Ordering::Relaxed) == 0 {
                    let entries = doc.networks.len() + doc.nodes.len() + doc.nics.len();
                    self.first_entries.store(entries as u64, Ordering::Relaxed);
                }
                // Counted last: a reader that sees the document sees its size.
                self.documents.fetch_add(1, Ordering::Release);
            }
            Update::Partial { networks, .. } => {
                self.partial_networks
                    .fetch_add(networks.len() as u64, Ordering::Relaxed);
                self.partials.fetch_add(1, Ordering::Relaxed);
            }
            Update::Alive => {
                self.alive.fetch_add(1, Ordering::Relaxed);
            }
            Update::Invalid(_) => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Update::Unavailable(_) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

type Read = Box<dyn Fn() -> u64 + Send + Sync>;

/// One simulated agent: its source's counters and what it received.
struct SimAgent {
    seen: Arc<Seen>,
    events: Read,
    reconnects: Read,
}

/// A snapshot of every agent's counters.
#[derive(Clone)]
struct Counts {
    events: Vec<u64>,
    documents: Vec<u64>,
    partials: Vec<u64>,
    partial_networks: Vec<u64>,
    naive: Vec<u64>,
}

impl Counts {
    fn take(agents: &[SimAgent], naive: &[Naive]) -> Self {
        let seen = |f: fn(&Seen) -> &AtomicU64| -> Vec<u64> {
            agents
                .iter()
                .map(|a| f(&a.seen).load(Ordering::Acquire))
                .collect()
        };
        Self {
            events: agents.iter().map(|a| (a.events)()).collect(),
            documents: seen(|s| &s.documents),
            partials: seen(|s| &s.partials),
            partial_networks: seen(|s| &s.partial_networks),
            naive: naive
                .iter()
                .map(|n| n.events.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Whether anything that matters moved (the sources' Alive updates do not).
    fn same(&self, other: &Self) -> bool {
        self.events == other.events
            && self.documents == other.documents
            && self.partials == other.partials
            && self.naive == other.naive
    }
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Mean, p50, p99 and max of a per-agent figure.
#[derive(Clone, Copy, Default)]
struct Dist {
    mean: f64,
    p50: u64,
    p99: u64,
    max: u64,
}

impl Dist {
    fn of(values: &[u64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:.1}, p50 {}, p99 {}, max {}",
            self.mean, self.p50, self.p99, self.max
        )
    }
}

/// `etcdctl watch --prefix`, counting the events it prints (one JSON response per line).
struct Naive {
    child: Child,
    events: Arc<AtomicU64>,
}

impl Naive {
    fn start(ns: &Netns, prefix: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["etcdctl", "--endpoints", &Etcd::url(Ipv4Addr::LOCALHOST)])
            .args(["watch", "--prefix", prefix, "-w", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl (Debian package etcd-client)");
        let out = child.stdout.take().expect("etcdctl stdout");
        let events = Arc::new(AtomicU64::default());
        let counter = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let n = ["Events", "events"]
                    .iter()
                    .find_map(|k| v.get(*k)?.as_array().map(Vec::len))
                    .unwrap_or(0);
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Self { child, events }
    }
}

impl Drop for Naive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's Prometheus metrics, read from its client URL.
struct Scrape(String);

impl Scrape {
    fn get(ns: &Netns) -> Self {
        let text = holdfast_tests::netns::in_netns(&ns.path(), || {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, CLIENT_PORT)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            // HTTP/1.0: the body comes whole, not chunked, and ends when the server closes.
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        Self(text.expect("etcd /metrics"))
    }

    /// The sum of the samples of `name` whose labels contain every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn watchers(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_watcher_total", &[])
    }

    fn streams(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_watch_stream_total", &[])
    }

    /// Events etcd sent to all watchers.
    fn events(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_events_total", &[])
    }

    fn sent_bytes(&self) -> f64 {
        self.sum("etcd_network_client_grpc_sent_bytes_total", &[])
    }

    fn received_bytes(&self) -> f64 {
        self.sum("etcd_network_client_grpc_received_bytes_total", &[])
    }

    /// Range calls etcd answered (lists and gets).
    fn ranges(&self) -> f64 {
        self.sum(
            "grpc_server_handled_total",
            &["grpc_method=\"Range\"", "etcdserverpb.KV"],
        )
    }

    /// Messages received on watch streams: watch creations, cancellations and progress
    /// requests.
    fn watch_requests(&self) -> f64 {
        self.sum(
            "grpc_server_msg_received_total",
            &["grpc_method=\"Watch\"", "etcdserverpb.Watch"],
        )
    }

    fn watch_responses(&self) -> f64 {
        self.sum(
            "grpc_server_msg_sent_total",
            &["grpc_method=\"Watch\"", "etcdserverpb.Watch"],
        )
    }

    fn slow_watchers(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_slow_watcher_total", &[])
    }
}

/// The pid of the etcd running in `ns` (nsenter execs it, but other tests may run their own
/// etcd: the namespace tells them apart).
fn etcd_pid(ns: &Netns) -> u32 {
    let ino = std::fs::metadata(ns.path()).expect("netns").ino();
    let want = format!("net:[{ino}]");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "etcd")
                && std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == want)
        })
        .expect("the etcd process in the benchmark's namespace")
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command.
    (ticks(11) + ticks(12)) as f64 / hz
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Each source has its own gRPC connection, and etcd one per source.
fn raise_open_files() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}

/// A multi-thread runtime whose every thread (workers and blocking pool) enters `ns` first:
/// the sources connect to the etcd inside it.
fn runtime(ns: &Netns) -> tokio::runtime::Runtime {
    let file = Arc::new(File::open(ns.path()).expect("netns"));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scale-agents")
        .on_thread_start(move || {
            // SAFETY: setns on this new thread only; the fd is a namespace file.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        })
        .build()
        .expect("runtime")
}

fn ipam_config() -> IpamConfig {
    let text = format!(
        "node = \"scale\"\n{}",
        ipam_section(&Etcd::url(Ipv4Addr::LOCALHOST), TIMEOUT_MS)
    );
    Config::parse(Path::new("scale.toml"), &text)
        .expect("config")
        .ipam
}

fn start_agents(rt: &tokio::runtime::Runtime, agents: usize) -> Vec<SimAgent> {
    let config = ipam_config();
    (0..agents)
        .map(|i| {
            // The agent's own channel depth.
            let (tx, mut rx) = mpsc::channel(4);
            let source = EtcdSource {
                config: config.clone(),
                node: format!("hv-{i}"),
                reconnects: Default::default(),
                events: Default::default(),
                resend: Arc::new(Notify::new()),
            };
            let (events, reconnects) = (source.events.clone(), source.reconnects.clone());
            rt.spawn(source.run(tx));
            let seen = Arc::new(Seen::default());
            let s = seen.clone();
            rt.spawn(async move {
                while let Some(u) = rx.recv().await {
                    s.record(u);
                }
            });
            SimAgent {
                seen,
                events: Box::new(move || events.get()),
                reconnects: Box::new(move || reconnects.get()),
            }
        })
        .collect()
}

/// Waits until nothing moved for [`QUIET`] and each naive watcher saw `want` events in all;
/// returns the counts and when the last change arrived after `since`.
fn settle(agents: &[SimAgent], naive: &[Naive], want: u64, since: Instant) -> (Counts, Duration) {
    let mut last = Counts::take(agents, naive);
    let mut moved = Instant::now();
    let mut last_change = since.elapsed();
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = Counts::take(agents, naive);
        if !now.same(&last) {
            moved = Instant::now();
            last_change = since.elapsed();
            last = now;
            continue;
        }
        let naive_done = last.naive.iter().all(|n| *n >= want);
        if naive_done && moved.elapsed() >= QUIET {
            return (last, last_change);
        }
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "did not settle: naive watchers at {:?} of {want}",
            last.naive
        );
    }
}

/// What one cloud measured.
struct Figures {
    agents: usize,
    networks: usize,
    nics: usize,
    networks_per_node: f64,
    start: Duration,
    start_cpu: f64,
    start_sent: f64,
    ranges_per_agent: f64,
    first_entries: Dist,
    watchers: f64,
    watchers_formula: usize,
    streams: f64,
    rss_before: f64,
    rss_agents: f64,
    idle_watch_requests: f64,
    idle_watch_responses: f64,
    idle_cpu: f64,
    idle_self_cpu: f64,
    idle_sent: f64,
    puts: usize,
    put_time: Duration,
    churn_events: Dist,
    churn_woken: usize,
    naive_events: f64,
    churn_partials: Dist,
    churn_documents: u64,
    churn_partial_networks: f64,
    churn_settled: Duration,
    churn_cpu: f64,
    churn_etcd_events: f64,
    churn_sent: f64,
    churn_watchers_after: f64,
    churn_watchers_formula: usize,
    node_events: Dist,
    node_documents: Dist,
    node_naive: f64,
    node_settled: Duration,
    node_cpu: f64,
    node_sent: f64,
    reconnects: u64,
    unavailable: u64,
    slow_watchers: f64,
    /// Resumed, then listed again after a compaction.
    outages: Option<(Outage, Outage)>,
}

/// What an etcd outage cost once etcd was back.
struct Outage {
    /// From etcd accepting connections again to every source watching again (and, after a
    /// compaction, every source having listed again).
    back: Duration,
    reconnects: Dist,
    ranges_per_agent: f64,
    documents: Dist,
    /// etcd's CPU seconds from accepting connections until then.
    cpu: f64,
    /// etcd's CPU seconds from its start until it accepted connections (replaying its log).
    start_cpu: f64,
    rss: f64,
}

/// Stops etcd for [`DOWN`] and starts it again on the same data; with `compact`, the history
/// is first compacted up to that revision, as a retention policy would during a longer outage.
fn outage(
    etcd: &mut Etcd,
    ns: &Netns,
    sim: &[SimAgent],
    watchers: usize,
    compact: Option<i64>,
) -> Outage {
    if let Some(revision) = compact {
        etcd.client().compact(revision);
    }
    let before = Counts::take(sim, &[]);
    let reconnects: Vec<u64> = sim.iter().map(|a| (a.reconnects)()).collect();
    etcd.stop();
    thread::sleep(DOWN);
    etcd.restart();
    let t = Instant::now();
    let pid = etcd_pid(ns).to_string();
    let cpu0 = cpu_seconds(&pid);
    let mut last = Instant::now();
    loop {
        let relisted = compact.is_none()
            || sim
                .iter()
                .zip(&before.documents)
                .all(|(a, d)| a.seen.documents.load(Ordering::Acquire) > *d);
        if relisted && Scrape::get(ns).watchers() >= watchers as f64 {
            break;
        }
        if last.elapsed() > Duration::from_secs(5) {
            println!(
                "  … {:.0} of {watchers} watchers back after {:.0?}",
                Scrape::get(ns).watchers(),
                t.elapsed()
            );
            last = Instant::now();
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the sources did not come back after the outage"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let back = t.elapsed();
    let scrape = Scrape::get(ns);
    let now = Counts::take(sim, &[]);
    Outage {
        back,
        reconnects: Dist::of(&delta(
            &sim.iter().map(|a| (a.reconnects)()).collect::<Vec<_>>(),
            &reconnects,
        )),
        ranges_per_agent: scrape.ranges() / sim.len() as f64,
        documents: Dist::of(&delta(&now.documents, &before.documents)),
        cpu: cpu_seconds(&pid) - cpu0,
        start_cpu: cpu0,
        rss: rss_mib(pid.parse().unwrap_or(0)),
    }
}

/// Waits until every agent has received `n` documents; returns how long that took since `t`.
fn wait_documents(sim: &[SimAgent], n: u64, t: Instant) -> Duration {
    let mut report = Instant::now();
    loop {
        let ready = sim
            .iter()
            .filter(|a| a.seen.documents.load(Ordering::Acquire) >= n)
            .count();
        if ready == sim.len() {
            return t.elapsed();
        }
        if report.elapsed() > Duration::from_secs(5) {
            println!(
                "  {ready}/{} agents have document {n} ({:.0?})",
                sim.len(),
                t.elapsed()
            );
            report = Instant::now();
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "only {ready} of {} agents got document {n}",
            sim.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn measure(
    etcd: &mut Etcd,
    ns: &Netns,
    agents: usize,
    networks: usize,
    puts: usize,
    outages: bool,
) -> Figures {
    // A fresh etcd process on the same data: its RSS and CPU are this cloud's alone.
    etcd.restart();
    let process = etcd_pid(ns);
    let pid = process.to_string();
    let mut rng = Rng(0x5ca1e ^ ((agents as u64) << 20) ^ networks as u64);
    let (mut cloud, json) = Cloud::new(agents, networks, &mut rng);
    let t = Instant::now();
    let revision = etcd.client().import(&json);
    drop(json);
    // A small history: what the previous cloud left is compacted away.
    etcd.client().compact(revision);
    println!(
        "\n{agents} agents, {networks} networks, {} NICs ({:.2} networks per node): imported in {:.1?}",
        cloud.nics,
        cloud.mean_networks_per_node(),
        t.elapsed()
    );

    let naive: Vec<Naive> = (0..NAIVE).map(|_| Naive::start(ns, "/holdfast/")).collect();
    let base = holdfast_tests::netns::wait_for(Duration::from_secs(20), || {
        let s = Scrape::get(ns);
        (s.watchers() >= NAIVE as f64).then_some(s)
    })
    .expect("the naive watchers are watching");
    let base_watchers = base.watchers();
    let base_streams = base.streams();
    let rss_before = rss_mib(process);

    // Start: every source lists and watches; wait for every first document.
    let rt = runtime(ns);
    let cpu0 = cpu_seconds(&pid);
    let t = Instant::now();
    let sim = start_agents(&rt, agents);
    let start = wait_documents(&sim, 1, t);
    // The watches are created right after the list; wait for etcd to hold them all.
    let formula = cloud.watchers();
    let after_start = holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
        let s = Scrape::get(ns);
        (s.watchers() - base_watchers >= formula as f64).then_some(s)
    })
    .unwrap_or_else(|| Scrape::get(ns));
    let start_cpu = cpu_seconds(&pid) - cpu0;
    let first_entries = Dist::of(
        &sim.iter()
            .map(|a| a.seen.first_entries.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
    );

    // Churn: NIC creations, one at a time, each in a random network on a random node.
    let (nics, networks_per_node) = (cloud.nics, cloud.mean_networks_per_node());
    let before = Counts::take(&sim, &naive);
    let (s2, cpu2) = (Scrape::get(ns), cpu_seconds(&pid));
    let t = Instant::now();
    let client = etcd.client();
    for _ in 0..puts {
        let (network, node) = (rng.below(networks), rng.below(agents));
        client.put_nic(cloud.add(network, node));
    }
    let put_time = t.elapsed();
    let want = before.naive.iter().copied().min().unwrap_or(0) + 3 * puts as u64;
    let (after, churn_settled) = settle(&sim, &naive, want, t);
    let (s3, cpu3) = (Scrape::get(ns), cpu_seconds(&pid));
    let churn_events = delta(&after.events, &before.events);
    let naive_churn = delta(&after.naive, &before.naive);

    // One node changes its VTEP: every agent needs it.
    let t = Instant::now();
    client.put_raw(
        "nodes/hv-0",
        &format!(
            r#"{{"name":"hv-0","vtep":"{}"}}"#,
            Ipv4Addr::new(100, 127, 0, 1)
        ),
    );
    let want = after.naive.iter().copied().min().unwrap_or(0) + 1;
    let (node, node_settled) = settle(&sim, &naive, want, t);
    let (s4, cpu4) = (Scrape::get(ns), cpu_seconds(&pid));
    let rss_agents = rss_mib(process);
    let reconnects = sim.iter().map(|a| (a.reconnects)()).sum();
    let unavailable = sim
        .iter()
        .map(|a| a.seen.unavailable.load(Ordering::Relaxed))
        .sum();

    drop(naive);

    // Idle: only the progress requests (and HTTP/2 keepalives) run.
    let (s0, cpu0, self0) = (Scrape::get(ns), cpu_seconds(&pid), cpu_seconds("self"));
    thread::sleep(IDLE);
    let (s1, cpu1, self1) = (Scrape::get(ns), cpu_seconds(&pid), cpu_seconds("self"));
    let secs = IDLE.as_secs_f64();
    let invalid: u64 = sim
        .iter()
        .map(|a| a.seen.invalid.load(Ordering::Relaxed))
        .sum();
    let alive: u64 = sim
        .iter()
        .map(|a| a.seen.alive.load(Ordering::Relaxed))
        .sum();

    let (mut rt, mut sim) = (rt, sim);
    let outages = outages.then(|| {
        // etcd goes away for a moment and comes back: the sources resume their watches.
        let watchers = cloud.watchers();
        let resume = outage(etcd, ns, &sim, watchers, None);
        // Again with the history compacted meanwhile: they list again. Fresh sources, so that
        // their backoff starts where the first outage's did (a session under 30 s does not
        // reset it). Two writes no source watches put the compaction past every revision
        // they would resume from (etcd refuses a watch from a revision below the compacted one).
        drop(std::mem::take(&mut sim));
        std::mem::replace(&mut rt, runtime(ns)).shutdown_timeout(Duration::from_secs(10));
        sim = start_agents(&rt, agents);
        wait_documents(&sim, 1, Instant::now());
        holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
            (Scrape::get(ns).watchers() >= watchers as f64).then_some(())
        })
        .expect("every source watching");
        etcd.client().put_raw("bench/marker", "1");
        let revision = etcd.client().put_raw("bench/marker", "2");
        let relist = outage(etcd, ns, &sim, watchers, Some(revision));
        (resume, relist)
    });

    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let f = Figures {
        agents,
        networks,
        nics,
        networks_per_node,
        start,
        start_cpu,
        start_sent: after_start.sent_bytes() - base.sent_bytes(),
        ranges_per_agent: (after_start.ranges() - base.ranges()) / agents as f64,
        first_entries,
        watchers: after_start.watchers() - base_watchers,
        watchers_formula: formula,
        streams: after_start.streams() - base_streams,
        rss_before,
        rss_agents,
        idle_watch_requests: (s1.watch_requests() - s0.watch_requests()) / secs,
        idle_watch_responses: (s1.watch_responses() - s0.watch_responses()) / secs,
        idle_cpu: (cpu1 - cpu0) / secs,
        idle_self_cpu: (self1 - self0) / secs,
        idle_sent: (s1.sent_bytes() - s0.sent_bytes()) / secs,
        puts,
        put_time,
        churn_woken: churn_events.iter().filter(|e| **e > 0).count(),
        churn_events: Dist::of(&churn_events),
        naive_events: mean(&naive_churn),
        churn_partials: Dist::of(&delta(&after.partials, &before.partials)),
        churn_documents: delta(&after.documents, &before.documents).iter().sum(),
        churn_partial_networks: mean(&delta(&after.partial_networks, &before.partial_networks)),
        churn_settled,
        churn_cpu: cpu3 - cpu2,
        churn_etcd_events: s3.events() - s2.events(),
        churn_sent: s3.sent_bytes() - s2.sent_bytes(),
        churn_watchers_after: s3.watchers() - base_watchers,
        churn_watchers_formula: cloud.watchers(),
        node_events: Dist::of(&delta(&node.events, &after.events)),
        node_documents: Dist::of(&delta(&node.documents, &after.documents)),
        node_naive: mean(&delta(&node.naive, &after.naive)),
        node_settled,
        node_cpu: cpu4 - cpu3,
        node_sent: s4.sent_bytes() - s3.sent_bytes(),
        reconnects,
        unavailable,
        slow_watchers: s4.slow_watchers(),
        outages,
    };
    print_one(
        &f,
        s1.received_bytes() - s0.received_bytes(),
        invalid,
        alive,
    );

    // Stop: the sources and their connections go with the runtime.
    drop(sim);
    rt.shutdown_timeout(Duration::from_secs(10));
    let gone = holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
        (Scrape::get(ns).streams() == 0.0).then_some(())
    });
    if gone.is_none() {
        println!("  (etcd still counts watch streams 30 s after the agents stopped)");
    }
    f
}

fn print_one(f: &Figures, idle_received: f64, invalid: u64, alive: u64) {
    let a = f.agents as f64;
    println!(
        "  start: every agent has its document after {:.2?}; etcd used {:.2} CPU s ({:.1} ms per agent)",
        f.start,
        f.start_cpu,
        f.start_cpu * 1000.0 / a
    );
    println!(
        "    per agent: {:.1} Range calls, first document of {} entries; etcd sent {:.1} MiB in all",
        f.ranges_per_agent,
        f.first_entries,
        f.start_sent / 1048576.0
    );
    println!(
        "    etcd holds {} watchers (formula 2 + 2 × networks per node: {}) on {} streams; RSS {:.0} → {:.0} MiB",
        f.watchers, f.watchers_formula, f.streams, f.rss_before, f.rss_agents
    );
    println!(
        "  churn: {} NIC creations in {:.2?}, settled {:.2?} after the first",
        f.puts, f.put_time, f.churn_settled
    );
    println!(
        "    watch events per agent: {}; agents woken: {} of {}",
        f.churn_events, f.churn_woken, f.agents
    );
    println!(
        "    a whole-prefix watcher: {:.0} events ({:.0}× the mean agent); one event per change: {} ({:.0}×)",
        f.naive_events,
        f.naive_events / f.churn_events.mean.max(f64::MIN_POSITIVE),
        f.puts,
        f.puts as f64 / f.churn_events.mean.max(f64::MIN_POSITIVE)
    );
    println!(
        "    updates per agent: partial {}, {:.1} networks validated again; complete documents: {}",
        f.churn_partials, f.churn_partial_networks, f.churn_documents
    );
    println!(
        "    etcd: {:.2} CPU s, {:.0} events sent to all watchers (the {} naive ones included), \
         {:.1} MiB sent; watchers now {} (formula {})",
        f.churn_cpu,
        f.churn_etcd_events,
        NAIVE,
        f.churn_sent / 1048576.0,
        f.churn_watchers_after,
        f.churn_watchers_formula
    );
    println!(
        "  node change: watch events per agent {}; documents per agent {}; whole-prefix watcher {:.0}; \
         settled {:.2?}; etcd {:.2} CPU s, {:.1} KiB sent",
        f.node_events,
        f.node_documents,
        f.node_naive,
        f.node_settled,
        f.node_cpu,
        f.node_sent / 1024.0
    );
    println!(
        "  reconnects {}, unavailable {}, invalid {}, alive updates {}, slow watchers {}",
        f.reconnects, f.unavailable, invalid, alive, f.slow_watchers
    );
    let outage = |what: &str, o: &Outage| {
        println!(
            "  {what} ({DOWN:?} down): every source watching again after {:.2?}; per agent \
             {:.1} Range calls, documents {}, reconnect attempts {}; etcd {:.2} CPU s meanwhile \
             ({:.2} s to start), RSS {:.0} MiB",
            o.back, o.ranges_per_agent, o.documents, o.reconnects, o.cpu, o.start_cpu, o.rss
        );
    };
    println!(
        "  idle {:.0?}: {:.1} watch requests/s (agents/2 = {:.1}), {:.1} watch responses/s, \
         etcd {:.1}% of a core, the agents {:.1}%, etcd sends {:.1} KiB/s, receives {:.1} KiB/s",
        IDLE,
        f.idle_watch_requests,
        a / 2.0,
        f.idle_watch_responses,
        f.idle_cpu * 100.0,
        f.idle_self_cpu * 100.0,
        f.idle_sent / 1024.0,
        idle_received / 1024.0
    );
    if let Some((resume, relist)) = &f.outages {
        outage("etcd away, back", resume);
        outage("etcd away, history compacted meanwhile", relist);
    }
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

pub fn run() {
    holdfast_tests::sweep_stale();
    let nofile = raise_open_files();
    let agents = list("HOLDFAST_BENCH_AGENTS", &[100, 500, 1000]);
    let networks = list("HOLDFAST_BENCH_NETWORKS", &[100, 1000]);
    let puts = list("HOLDFAST_BENCH_PUTS", &[PUTS])[0];
    println!(
        "holdfast scale benchmark: one real etcd; per simulated hypervisor one etcd source \
         (holdfast::ipam::etcd::EtcdSource) in this process; {NICS_PER_NODE} NICs per node in \
         random networks; {puts} NIC creations, then one node change; {NAIVE} `etcdctl watch \
         --prefix /holdfast/` as the naive design. Open files: {nofile}. CPUs: {}.",
        thread::available_parallelism().map_or(0, usize::from)
    );
    let ns = Netns::new("bench-scale");
    let mut etcd = Etcd::start(&ns, &[]);
    let mut all = Vec::new();
    // The outages cost mostly backoff time, whatever the networks: once per agent count.
    let last = networks.iter().copied().max().unwrap_or(0);
    for &a in &agents {
        for &n in &networks {
            all.push(measure(&mut etcd, &ns, a, n, puts, n == last));
        }
    }

    println!("\nStart and steady state (per agent unless said)");
    println!(
        "| agents | networks | NICs | nets/node | all documents | etcd CPU s | etcd MiB sent | Range calls | entries listed | watchers (formula) | streams | progress req/s | idle etcd CPU | etcd RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        println!(
            "| {} | {} | {} | {:.2} | {:.2?} | {:.2} | {:.1} | {:.1} | {:.0} | {} ({}) | {} | {:.1} | {:.1}% | {:.0} |",
            f.agents,
            f.networks,
            f.nics,
            f.networks_per_node,
            f.start,
            f.start_cpu,
            f.start_sent / 1048576.0,
            f.ranges_per_agent,
            f.first_entries.mean,
            f.watchers,
            f.watchers_formula,
            f.streams,
            f.idle_watch_requests,
            f.idle_cpu * 100.0,
            f.rss_agents
        );
    }
    println!("\nChurn: {puts} NIC creations, then one node change");
    println!(
        "| agents | networks | events/agent mean | p99 | max | whole-prefix watcher | ratio | agent events per change, all agents (naive) | partials/agent | documents | etcd CPU s | etcd MiB sent | settled | node change: events, documents per agent |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let total: f64 = f.churn_events.mean * f.agents as f64;
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.0} | {:.0}× | {:.1} ({:.0}) | {:.1} | {} | {:.2} | {:.1} | {:.2?} | {:.2}, {:.2} |",
            f.agents,
            f.networks,
            f.churn_events.mean,
            f.churn_events.p99,
            f.churn_events.max,
            f.naive_events,
            f.naive_events / f.churn_events.mean.max(f64::MIN_POSITIVE),
            total / f.puts as f64,
            f.naive_events / f.puts as f64 * f.agents as f64,
            f.churn_partials.mean,
            f.churn_documents,
            f.churn_cpu,
            f.churn_sent / 1048576.0,
            f.churn_settled,
            f.node_events.mean,
            f.node_documents.mean
        );
    }
    println!("\nOutages: etcd stopped for {DOWN:?} and started again on the same data");
    println!(
        "| agents | networks | history | all watching again after | reconnect attempts/agent mean (max) | Range calls/agent | documents/agent | etcd CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in &all {
        let Some((resume, relist)) = &f.outages else {
            continue;
        };
        for (what, o) in [("kept", resume), ("compacted", relist)] {
            println!(
                "| {} | {} | {what} | {:.2?} | {:.1} ({}) | {:.1} | {:.2} | {:.2} |",
                f.agents,
                f.networks,
                o.back,
                o.reconnects.mean,
                o.reconnects.max,
                o.ranges_per_agent,
                o.documents.mean,
                o.cpu
            );
        }
    }
    let reconnects: u64 = all.iter().map(|f| f.reconnects + f.unavailable).sum();
    if reconnects > 0 {
        println!("\nnote: sources reconnected or reported etcd unavailable ({reconnects} times)");
    }
}
