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
//!
//! `cloud` draws the clouds, `fleet` runs the simulated agents, `naive` the whole-prefix
//! watchers, `etcd_load` reads what etcd does and costs, `measure` runs one cloud's phases into
//! `figures`, and `report` prints them.

mod cloud;
mod etcd_load;
mod figures;
mod fleet;
mod measure;
mod naive;
mod report;

use std::{thread, time::Duration};

use holdfast_tests::{etcd::Etcd, netns::Netns};

use self::{fleet::raise_open_files, measure::measure};

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
    report::tables(&all, puts);
}
