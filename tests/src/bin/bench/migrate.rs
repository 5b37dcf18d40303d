//! `cargo xtask bench migrate`: live migration at cloud scale. Many real agents (`holdfast
//! run`, each with its own pinned maps) read IPAM from one real etcd; one NIC, in a network
//! every node has a NIC in, moves from node to node. For each move: the time from the etcd
//! write to each agent's pinned forwarding entry pointing at the new VTEP, and to the last one
//! (the convergence the issue's target is about: under 1 s at 100 hosts).
//!
//! The agents share one namespace and have no underlay and no VM interfaces: they load their
//! programs and write their maps, which is all a move asks of them. They share this machine's
//! CPUs too, where each hypervisor would have its own: the figure is an upper bound.
//!
//! `HOLDFAST_BENCH_AGENTS` (default 100), `HOLDFAST_BENCH_MOVES` (default 10) and
//! `HOLDFAST_BENCH_NETWORKS` (networks besides the shared one, default 50) override the run.

use std::{
    net::Ipv4Addr,
    process::Stdio,
    time::{Duration, Instant},
};

use agent_common::{FdbEntry, FdbKey, be32};
use aya::maps::{HashMap, MapData};
use holdfast::model::{MacAddr, Nic};
use holdfast_tests::{
    etcd::{Etcd, ipam_section},
    netns::{Agent, Netns, Proc, mac_str},
    rng::Rng,
};

/// NICs each node has besides its one in the shared network, in networks drawn at random.
const OTHER_NICS: usize = 3;
/// The shared network's VNI; the others follow it.
const SHARED_VNI: u32 = 20_000;
/// The first agent's metrics port; agent `i` serves on this plus `i`.
const METRICS_PORT: u16 = 21_000;

fn env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn vtep(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        100,
        64 + (h / 62_500) as u8,
        (h / 250 % 250) as u8,
        (h % 250 + 1) as u8,
    )
}

/// NIC `k`: its MAC and address (networks share 10.0.0.0/16, told apart by VNI).
fn nic(k: usize, network: &str, node: usize) -> Nic {
    Nic {
        mac: MacAddr([0x02, 0x6d, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8]),
        network: network.into(),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + k as u32),
        hostname: None,
        node: format!("hv-{node}").into(),
        interface: Some(format!("tap{k}")),
        default_route: None,
        options: None,
        boot: None,
        ip6: None,
        forwarding: false,
    }
}

/// The document: the shared network `s` with one NIC per node (NIC `i` on node `i`), and
/// `networks` others with [`OTHER_NICS`] NICs of each node drawn among them.
fn cloud(agents: usize, networks: usize) -> String {
    let mut rng = Rng::new(0x316_4a7e);
    let mut nets = vec![format!(
        r#"{{"id":"s","vni":{SHARED_VNI},"subnet":"10.0.0.0/16","gateway":"10.0.0.1","mtu":1450}}"#
    )];
    nets.extend((0..networks).map(|n| {
        format!(
            r#"{{"id":"n{n}","vni":{},"subnet":"10.0.0.0/16","gateway":"10.0.0.1","mtu":1450}}"#,
            SHARED_VNI + 1 + n as u32
        )
    }));
    let nodes: Vec<String> = (0..agents)
        .map(|h| format!(r#"{{"name":"hv-{h}","vtep":"{}"}}"#, vtep(h)))
        .collect();
    let mut nics: Vec<Nic> = (0..agents).map(|i| nic(i, "s", i)).collect();
    if networks > 0 {
        for node in 0..agents {
            for _ in 0..OTHER_NICS {
                let k = nics.len();
                nics.push(nic(k, &format!("n{}", rng.below(networks)), node));
            }
        }
    }
    let nics: Vec<String> = nics
        .iter()
        .map(|n| serde_json::to_string(n).expect("NIC JSON"))
        .collect();
    format!(
        r#"{{"networks":[{}],"nodes":[{}],"nics":[{}]}}"#,
        nets.join(","),
        nodes.join(","),
        nics.join(",")
    )
}

/// One agent: its process (killed first) and its files.
struct Running {
    /// Killed on drop, before `agent` removes its files.
    _proc: Proc,
    agent: Agent,
    fdb: Option<HashMap<MapData, FdbKey, FdbEntry>>,
}

fn start(ns: &Netns, i: usize) -> Running {
    let agent = Agent::configure(
        ns,
        &format!("hv-{i}"),
        |_| {
            format!(
                "metrics_addr = \"127.0.0.1:{}\"\n{}",
                METRICS_PORT + i as u16,
                ipam_section(&Etcd::url(Ipv4Addr::LOCALHOST), 5000)
            )
        },
        "",
    );
    let log = std::fs::File::create(&agent.log).expect("log");
    let child = ns
        .enter(&agent.binary)
        .args(["run", "--config"])
        .arg(&agent.config)
        .env("RUST_LOG", "info,netlink_packet_route=error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn holdfast");
    Running {
        _proc: Proc(child),
        agent,
        fdb: None,
    }
}

/// The moved NIC's entry in agent `a`'s map.
fn entry(a: &mut Running, key: &FdbKey) -> Option<FdbEntry> {
    if a.fdb.is_none() {
        a.fdb = holdfast::dataplane::pinned_fdb(a.agent.bpffs.path()).ok();
    }
    a.fdb.as_ref()?.get(key, 0).ok()
}

/// Whether agent `i` forwards the moved NIC as it should once it is on node `at`: behind
/// `at`'s VTEP; on `at` itself, no longer behind another's (its interface does not exist in
/// this simulation, so it has no local entry). Node 0, whose one NIC in the network is the
/// moved one, carries the network only while the NIC is there.
fn converged(a: &mut Running, i: usize, at: usize, key: &FdbKey) -> bool {
    match entry(a, key) {
        Some(e) if i != at => e.kind == FdbEntry::REMOTE && e.vtep == be32(vtep(at)),
        Some(e) => e.kind != FdbEntry::REMOTE,
        None => i == at || i == 0,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub fn run() {
    holdfast_tests::sweep_stale();
    let agents = env("HOLDFAST_BENCH_AGENTS", 100).max(2);
    let moves = env("HOLDFAST_BENCH_MOVES", 10).max(1);
    let networks = env("HOLDFAST_BENCH_NETWORKS", 50);
    println!(
        "holdfast migration benchmark: {agents} agents (holdfast run, pinned maps each) on one \
         real etcd, all in one namespace on this machine's {} CPUs; network s has a NIC on every \
         node, {networks} more networks hold {OTHER_NICS} NICs of each node; one NIC of s moves \
         from node to node {moves} times",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let ns = Netns::new("bench-migrate");
    let mut etcd = Etcd::start(&ns, &[]);
    let json = cloud(agents, networks);
    let t = Instant::now();
    etcd.client().import(&json);
    println!("  imported in {:.1?}", t.elapsed());

    let t = Instant::now();
    let mut running: Vec<Running> = (0..agents).map(|i| start(&ns, i)).collect();
    // NIC 0 of network s starts on hv-0.
    let key = FdbKey::new(SHARED_VNI, nic(0, "s", 0).mac.0);
    let mut at = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut ready = 0;
        for (i, a) in running.iter_mut().enumerate() {
            ready += usize::from(converged(a, i, at, &key));
        }
        if ready == agents {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of {agents} agents loaded; the first's log:\n{}",
            running[0].agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  {agents} agents started and serving in {:.1?}",
        t.elapsed()
    );
    // Let the start's work (snapshots, memory trims) settle.
    std::thread::sleep(Duration::from_secs(2));

    let mut lasts = Vec::with_capacity(moves);
    let mut all = Vec::with_capacity(moves * agents);
    for m in 0..moves {
        // Never where it is: a spread of nodes, not only neighbours.
        let to = (at + 1 + (m * 7) % (agents - 1)) % agents;
        let moved = nic(0, "s", to);
        let t = Instant::now();
        etcd.client().put_nic(moved);
        let written = t.elapsed();
        let mut when: Vec<Option<Duration>> = vec![None; agents];
        loop {
            for (i, a) in running.iter_mut().enumerate() {
                if when[i].is_none() && converged(a, i, to, &key) {
                    when[i] = Some(t.elapsed());
                }
            }
            if when.iter().all(Option::is_some) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let late: Vec<String> = when
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.is_none())
                    .map(|(i, _)| format!("hv-{i}: {:?}", entry(&mut running[i], &key)))
                    .collect();
                panic!("move {m}: agents never pointed at hv-{to}: {late:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut times: Vec<Duration> = when.into_iter().flatten().collect();
        times.sort();
        let last = times[times.len() - 1];
        println!(
            "  move {m}: {} (hv-{at} -> hv-{to}): etcd write {written:.1?}; agents converged p50 \
             {:.1?}, p99 {:.1?}, last {last:.1?}",
            mac_str(key.mac),
            pct(&times, 0.5),
            pct(&times, 0.99),
        );
        lasts.push(last);
        all.extend(times);
        at = to;
        std::thread::sleep(Duration::from_millis(500));
    }
    lasts.sort();
    all.sort();
    let worst = lasts[lasts.len() - 1];
    println!(
        "\n{agents} agents, {moves} moves: each agent's map at the new VTEP p50 {:.1?}, p99 {:.1?}; \
         the last agent of a move p50 {:.1?}, max {worst:.1?}",
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&lasts, 0.5),
    );
    println!(
        "Target: every peer at the new VTEP in under 1 s at 100 hosts: {worst:.1?} -> {}",
        if worst < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(running);
}
