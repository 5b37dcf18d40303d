//! `cargo xtask bench sync`: IPAM from a real etcd into the maps, at 10,000 and 100,000 NICs.
//!
//! The cloud: networks of 100 NICs each, 1,000 nodes, and the benchmarked node with one NIC in
//! every network, so it needs every NIC: the worst case for one agent. For each size: the time
//! from the agent's start to every forwarding entry in its maps, the put-to-map latency of
//! 1,000 further NICs written one at a time, and the agent's resident memory.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent_common::FdbKey;
use holdfast::model::{MacAddr, Nic};
use holdfast_tests::{
    etcd::Etcd,
    netns::{Agent, Netns, mac_str},
};

const PER_NETWORK: usize = 100;
const NODES: usize = 1_000;
const PUTS: usize = 1_000;

/// The document, and how many forwarding entries the benchmarked node ends with (every NIC
/// but its own, which have no interface here).
fn cloud(total: usize) -> (String, usize) {
    let networks = total / PER_NETWORK;
    let mut out = String::with_capacity(total * 120);
    out.push_str(r#"{"networks":["#);
    for n in 0..networks {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":"n{n}","vni":{},"subnet":"10.{}.{}.0/24","gateway":"10.{}.{}.1","mtu":1450}}"#,
            10_000 + n,
            n / 256,
            n % 256,
            n / 256,
            n % 256
        ));
    }
    out.push_str(r#"],"nodes":["#);
    for h in 0..NODES {
        if h > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"name":"hv-{h}","vtep":"100.64.{}.{}"}}"#,
            h / 250,
            h % 250 + 1
        ));
    }
    out.push_str(r#"],"nics":["#);
    let mut local = 0;
    for k in 0..total {
        let (n, slot) = (k % networks, k / networks);
        // Slot 0 of every network is the benchmarked node's.
        let node = if slot == 0 {
            local += 1;
            0
        } else {
            1 + (k % (NODES - 1))
        };
        let iface = if node == 0 {
            format!(r#","interface":"tap{n}""#)
        } else {
            String::new()
        };
        if k > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"mac":"{}","network":"n{n}","ip":"10.{}.{}.{}","node":"hv-{node}"{iface}}}"#,
            mac_str([0x02, 0xee, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8]),
            n / 256,
            n % 256,
            10 + slot
        ));
    }
    out.push_str("]}");
    (out, total - local)
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time the process has used (user and system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

struct Figures {
    nics: usize,
    import: Duration,
    ready: Duration,
    loaded: Duration,
    listed: String,
    agent_cpu: Duration,
    etcd_cpu: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rss_mib: f64,
    busy_mib: f64,
    peak_mib: f64,
}

fn measure(etcd: &mut Etcd, hv: &Netns, total: usize) -> Figures {
    let (doc, fdb) = cloud(total);
    let t = Instant::now();
    etcd.client().import(&doc);
    let import = t.elapsed();
    drop(doc);

    let etcd_pid = etcd.pid().expect("etcd pid");
    let etcd_before = cpu(etcd_pid);
    let start = Instant::now();
    let agent = Agent::start_etcd(hv, "hv-0", &Etcd::url(Ipv4Addr::LOCALHOST), "");
    let ready = start.elapsed();
    let map = loop {
        if let Ok(m) = holdfast::dataplane::pinned_fdb(agent.bpffs.path()) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Every forwarding entry in the map: the last NIC of the last network is written last.
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.metric("holdfast_fdb_entries") < fdb as f64 {
        assert!(Instant::now() < deadline, "not loaded:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    let loaded = start.elapsed();
    let agent_cpu = cpu(agent.pid().expect("pid"));
    let etcd_cpu = cpu(etcd_pid) - etcd_before;
    for l in agent.logs().lines().filter(|l| l.contains("elapsed=")) {
        let l = l.split_once("holdfast::").map_or(l, |(_, r)| r);
        println!("    agent: {l}");
    }
    let listed = agent
        .logs()
        .lines()
        .find(|l| l.contains("IPAM listed from etcd"))
        .and_then(|l| l.split("elapsed=").nth(1))
        .unwrap_or("?")
        .to_owned();

    let networks = total / PER_NETWORK;
    let client = etcd.client();
    let mut lat = Vec::with_capacity(PUTS);
    for i in 0..PUTS {
        let mac = [0x02, 0xef, 0, 0, (i >> 8) as u8, i as u8];
        let n = i % networks;
        let nic = Nic {
            mac: MacAddr(mac),
            network: format!("n{n}").into(),
            ip: Ipv4Addr::new(
                10,
                (n / 256) as u8,
                (n % 256) as u8,
                200 + (i / networks) as u8 % 50,
            ),
            hostname: None,
            node: "hv-7".into(),
            interface: None,
            default_route: None,
            options: None,
            boot: None,
            ip6: None,
            forwarding: false,
        };
        let key = FdbKey::new(10_000 + n as u32, mac);
        let t = Instant::now();
        client.put_nic(nic);
        while map.get(&key, 0).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "put {i} never applied"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let pid = agent.pid().expect("pid");
    let (busy, _) = rss_kib(pid);
    // At rest: the agent hands freed memory back a second after the last change.
    std::thread::sleep(Duration::from_secs(3));
    let (rss, peak) = rss_kib(pid);
    Figures {
        nics: total,
        import,
        ready,
        loaded,
        listed,
        agent_cpu,
        etcd_cpu,
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat[lat.len() - 1],
        rss_mib: rss as f64 / 1024.0,
        busy_mib: busy as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
    }
}

pub fn run() {
    holdfast_tests::sweep_stale();
    println!(
        "holdfast sync benchmark: a real etcd, networks of {PER_NETWORK} NICs, {NODES} nodes; the \
         agent's node has a NIC in every network, so it needs them all"
    );
    let hv = Netns::new("bench-sync");
    let mut etcd = Etcd::start(&hv, &[]);
    let mut all = Vec::new();
    let sizes: Vec<usize> = std::env::var("HOLDFAST_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for total in sizes {
        let f = measure(&mut etcd, &hv, total);
        println!(
            "\n{} NICs ({} networks)\n  import into etcd (holdfast ipam import, {} keys)  {:>8.2?}\n  agent start -> ready (programs loaded)            {:>8.2?}\n  agent start -> every forwarding entry in the map {:>8.2?}   (etcd list and parse: {})\n  CPU used while loading                            agent {:.2?}, etcd {:.2?}\n  put-to-map over {PUTS} puts                       p50 {:.1?}  p99 {:.1?}  max {:.1?}\n  agent memory                                     RSS at rest {:.1} MiB, right after the puts {:.1} MiB, peak {:.1} MiB",
            f.nics,
            f.nics / PER_NETWORK,
            f.nics * 3,
            f.import,
            f.ready,
            f.loaded,
            f.listed,
            f.agent_cpu,
            f.etcd_cpu,
            f.p50,
            f.p99,
            f.max,
            f.rss_mib,
            f.busy_mib,
            f.peak_mib
        );
        all.push(f);
    }
    let Some(big) = all.iter().find(|f| f.nics == 100_000) else {
        return;
    };
    println!("\nTargets (100,000 NICs):");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  applied in under 2 s:        {:.2?} -> {}",
        big.loaded,
        verdict(big.loaded < Duration::from_secs(2))
    );
    println!(
        "  p99 put-to-map under 50 ms:  {:.1?} -> {}",
        big.p99,
        verdict(big.p99 < Duration::from_millis(50))
    );
    println!(
        "  RSS under 100 MiB:           {:.1} MiB (peak {:.1}) -> {}",
        big.rss_mib,
        big.peak_mib,
        verdict(big.rss_mib < 100.0)
    );
}
