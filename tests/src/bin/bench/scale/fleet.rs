//! The simulated fleet: one real etcd source per simulated hypervisor, all in one tokio runtime
//! inside the benchmark's namespace, each draining its own channel and counting what it got;
//! snapshots of those counts and the waits on them.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
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
};
use holdfast_tests::{
    etcd::{Etcd, ipam_section},
    netns::Netns,
};
use tokio::sync::mpsc;

use super::{QUIET, TIMEOUT_MS, naive::Naive};

/// What one simulated agent received from its source.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) documents: AtomicU64,
    pub(super) partials: AtomicU64,
    /// Networks named by the partial updates: what the agent would validate again.
    pub(super) partial_networks: AtomicU64,
    pub(super) alive: AtomicU64,
    pub(super) unavailable: AtomicU64,
    pub(super) invalid: AtomicU64,
    /// Entries (networks + nodes + NICs) of the first document.
    pub(super) first_entries: AtomicU64,
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
pub(super) struct SimAgent {
    pub(super) seen: Arc<Seen>,
    pub(super) events: Read,
    pub(super) reconnects: Read,
}

/// A snapshot of every agent's counters.
#[derive(Clone)]
pub(super) struct Counts {
    pub(super) events: Vec<u64>,
    pub(super) documents: Vec<u64>,
    pub(super) partials: Vec<u64>,
    pub(super) partial_networks: Vec<u64>,
    pub(super) naive: Vec<u64>,
}

impl Counts {
    pub(super) fn take(agents: &[SimAgent], naive: &[Naive]) -> Self {
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

pub(super) fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Each source has its own gRPC connection, and etcd one per source.
pub(super) fn raise_open_files() -> u64 {
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
pub(super) fn runtime(ns: &Netns) -> tokio::runtime::Runtime {
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

pub(super) fn start_agents(rt: &tokio::runtime::Runtime, agents: usize) -> Vec<SimAgent> {
    let config = ipam_config();
    (0..agents)
        .map(|i| {
            // The agent's own channel depth.
            let (tx, mut rx) = mpsc::channel(4);
            let source = EtcdSource::new(config.clone(), format!("hv-{i}"));
            let stats = source.stats();
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
                events: Box::new({
                    let stats = stats.clone();
                    move || stats.watch_events()
                }),
                reconnects: Box::new(move || stats.reconnects()),
            }
        })
        .collect()
}

/// Waits until nothing moved for [`QUIET`] and each naive watcher saw `want` events in all;
/// returns the counts and when the last change arrived after `since`.
pub(super) fn settle(
    agents: &[SimAgent],
    naive: &[Naive],
    want: u64,
    since: Instant,
) -> (Counts, Duration) {
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

/// Waits until every agent has received `n` documents; returns how long that took since `t`.
pub(super) fn wait_documents(sim: &[SimAgent], n: u64, t: Instant) -> Duration {
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
