//! Convergence under churn: thousands of random puts, deletes and moves (a NIC to another node
//! or network) in a real etcd, node and network changes, interleaved with taps appearing and
//! going and with agent restarts (SIGKILL, then start). After each burst, the pinned maps must
//! equal what IPAM holds within [`CONVERGE`]: the model validated from an etcd export, rendered
//! with `render::desired::build` for this node and the interfaces present.
//!
//! The bursts are written as fast as etcd takes them, so the agent's channel fills with
//! documents (a node changed, a relist after a restart) and partial changes (one network
//! changed) behind each other while taps come and go. An update lost or applied out of order
//! (an older document applied over a newer partial change, or an update dropped by a `select!`
//! branch) shows as maps that never converge: the etcd source has already forgotten it.
//!
//! Seeds: [`SEEDS`], or `HOLDFAST_CONVERGE_SEED=<n>` for one; a failure names its seed.
//! `HOLDFAST_BIN` runs another build of the agent (to check that the test catches a bug).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    net::Ipv4Addr,
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use holdfast::{
    dataplane::{Desired, read_bindings, read_vpc},
    links::{LinkInfo, Links},
    model::{Limits, MacAddr, Nic},
    ports::{DEFAULT_PATTERNS, Pattern, VmPorts},
    render::desired::{Inputs, build},
};
use holdfast_tests::{
    etcd::{Etcd, EtcdClient},
    netns::{Agent, Netns},
    rng::Rng,
    xdp::ROUTER_MAC,
};

const THIS_NODE: &str = "hv-1";
/// The other nodes, each with a range of its own for its VTEP (no two nodes ever share one).
const OTHER_NODES: [(&str, u8); 2] = [("hv-2", 2), ("hv-3", 3)];
/// Networks: id, second octet of the /16, the two VNIs it moves between (never shared).
const NETWORKS: [(&str, u8, [u32; 2]); 3] = [
    ("net-a", 1, [2001, 2011]),
    ("net-b", 2, [2002, 2012]),
    ("net-c", 3, [2003, 2013]),
];
/// MACs `02:c0:00:00:00:<i>`; NIC `i` has address `10.<net>.0.<10 + i>` in whichever network
/// it is, and tap `tapc<i>` when it is on this node: no two NICs ever collide, so what IPAM
/// holds validates without rejections and without depending on history.
const POOL: u8 = 40;

const SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
const BURSTS: usize = 12;
const OPS_PER_BURST: usize = 85;
/// Operations written while the agent is dead, before it starts again.
const OPS_WHILE_DEAD: usize = 15;
/// How long the agent may take, once the writes stop, to hold what IPAM holds. It catches a
/// lost update (which never converges), not a busy machine: convergence takes well under a
/// second here.
const CONVERGE: Duration = Duration::from_secs(10);

/// Prints the seed of a failing run.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "convergence failed with seed {:#x}: rerun it alone with HOLDFAST_CONVERGE_SEED={:#x}",
                self.0, self.0
            );
        }
    }
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0xc0, 0, 0, 0, i])
}

fn tap(i: u8) -> String {
    format!("tapc{i}")
}

/// What the test wrote, to choose valid operations (the expected maps come from etcd).
struct World {
    /// VNI choice (0 or 1) of each network, lease time, MTU.
    networks: BTreeMap<&'static str, (usize, u32, u16)>,
    /// VTEP last octet of each other node.
    vteps: BTreeMap<&'static str, u8>,
    /// NIC `i`: network index and node.
    nics: BTreeMap<u8, (usize, &'static str)>,
    /// Taps present on this node.
    taps: BTreeSet<u8>,
}

/// What the bursts did, for the figures.
#[derive(Default)]
struct Counts {
    puts: usize,
    moves: usize,
    deletes: usize,
    node_changes: usize,
    network_changes: usize,
    taps_added: usize,
    taps_removed: usize,
    restarts: usize,
}

impl World {
    fn new(rng: &mut Rng) -> Self {
        let mut w = Self {
            networks: NETWORKS
                .iter()
                .map(|(id, _, _)| (*id, (0, 3600, 1450)))
                .collect(),
            vteps: OTHER_NODES.iter().map(|(n, _)| (*n, 1)).collect(),
            nics: BTreeMap::new(),
            taps: BTreeSet::new(),
        };
        for i in 0..POOL {
            if rng.below(2) == 0 {
                let nic = w.random_nic(rng);
                w.nics.insert(i, nic);
            }
            if rng.below(2) == 0 {
                w.taps.insert(i);
            }
        }
        w
    }

    fn random_nic(&self, rng: &mut Rng) -> (usize, &'static str) {
        let node = match rng.below(4) {
            0 => OTHER_NODES[0].0,
            1 => OTHER_NODES[1].0,
            _ => THIS_NODE,
        };
        (rng.below(NETWORKS.len()), node)
    }

    fn nic(&self, i: u8) -> Nic {
        let (net, node) = self.nics[&i];
        let (id, octet, _) = NETWORKS[net];
        Nic {
            mac: mac(i),
            network: id.into(),
            ip: Ipv4Addr::new(10, octet, 0, 10 + i),
            hostname: Some(format!("vm-{i}")),
            node: node.into(),
            interface: (node == THIS_NODE).then(|| tap(i)),
            default_route: None,
            options: None,
            boot: None,
            ip6: None,
            forwarding: false,
        }
    }

    fn network_json(&self, net: usize) -> String {
        let (id, octet, vnis) = NETWORKS[net];
        let (vni, lease_time, mtu) = self.networks[id];
        format!(
            r#"{{"id":"{id}","vni":{},"subnet":"10.{octet}.0.0/16","gateway":"10.{octet}.0.1","dns":["10.{octet}.0.2"],"mtu":{mtu},"lease_time":{lease_time}}}"#,
            vnis[vni]
        )
    }

    fn node_json(name: &str, vtep: Ipv4Addr) -> String {
        format!(r#"{{"name":"{name}","vtep":"{vtep}"}}"#)
    }

    fn vtep(&self, node: &str) -> Ipv4Addr {
        match OTHER_NODES.iter().find(|(n, _)| *n == node) {
            Some((n, range)) => Ipv4Addr::new(198, 18, *range, self.vteps[n]),
            None => Ipv4Addr::new(198, 18, 1, 1),
        }
    }

    fn document(&self) -> String {
        let networks: Vec<String> = (0..NETWORKS.len()).map(|n| self.network_json(n)).collect();
        let nodes: Vec<String> = std::iter::once(THIS_NODE)
            .chain(OTHER_NODES.iter().map(|(n, _)| *n))
            .map(|n| Self::node_json(n, self.vtep(n)))
            .collect();
        let nics: Vec<String> = self
            .nics
            .keys()
            .map(|i| serde_json::to_string(&self.nic(*i)).expect("nic"))
            .collect();
        format!(
            r#"{{"networks":[{}],"nodes":[{}],"nics":[{}]}}"#,
            networks.join(","),
            nodes.join(","),
            nics.join(",")
        )
    }

    /// One random operation: on etcd, or on this node's taps.
    fn step(&mut self, rng: &mut Rng, etcd: &EtcdClient, hv: &Netns, counts: &mut Counts) {
        let i = rng.below(POOL as usize) as u8;
        match rng.below(100) {
            // A put: a new NIC, or one that moves to another node or network.
            0..45 => {
                let before = self.nics.get(&i).copied();
                let nic = self.random_nic(rng);
                self.nics.insert(i, nic);
                if before.is_some_and(|b| b != nic) {
                    counts.moves += 1;
                } else {
                    counts.puts += 1;
                }
                etcd.put_nic(self.nic(i));
            }
            45..60 => {
                if self.nics.remove(&i).is_some() {
                    counts.deletes += 1;
                    etcd.delete_nic(mac(i).0);
                }
            }
            // A node's VTEP: the source sends a whole document.
            60..64 => {
                let (node, _) = OTHER_NODES[rng.below(OTHER_NODES.len())];
                self.vteps.insert(node, 1 + rng.below(250) as u8);
                counts.node_changes += 1;
                etcd.put_raw(
                    &format!("nodes/{node}"),
                    &Self::node_json(node, self.vtep(node)),
                );
            }
            // A network's VNI, lease time or MTU: a partial change of that network.
            64..70 => {
                let net = rng.below(NETWORKS.len());
                let (id, _, _) = NETWORKS[net];
                let e = self.networks.get_mut(id).expect("network");
                match rng.below(3) {
                    0 => e.0 = 1 - e.0,
                    1 => e.1 = [600, 1200, 3600][rng.below(3)],
                    _ => e.2 = [1400, 1450][rng.below(2)],
                }
                counts.network_changes += 1;
                etcd.put_raw(&format!("networks/{id}"), &self.network_json(net));
            }
            // A tap appears or goes.
            _ => {
                if self.taps.remove(&i) {
                    counts.taps_removed += 1;
                    hv.ip(&["link", "del", &tap(i)]);
                } else {
                    self.taps.insert(i);
                    counts.taps_added += 1;
                    add_tap(hv, i);
                }
            }
        }
    }
}

fn add_tap(hv: &Netns, i: u8) {
    hv.ip(&["tuntap", "add", "dev", &tap(i), "mode", "tap"]);
}

/// The interfaces of the namespace, as the agent's netlink dump sees them.
fn links(hv: &Netns) -> Links {
    let out = hv.query(&["-o", "link", "show"]);
    let mut links = Links::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, ": ");
        let (Some(index), Some(name), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name).to_owned();
        let mtu = rest
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if let Ok(index) = index.trim().parse() {
            links.insert(
                index,
                LinkInfo {
                    name,
                    mtu,
                    ..LinkInfo::default()
                },
            );
        }
    }
    links
}

/// What the maps must hold: IPAM as etcd exports it, validated as `holdfast check` would,
/// rendered for this node and the interfaces present.
fn expected(etcd: &EtcdClient, hv: &Netns) -> Desired {
    let (doc, skipped) = etcd.run(|s, rt| rt.block_on(s.export()).expect("export"));
    assert_eq!(skipped, 0, "entries that are not JSON in the export");
    let json = serde_json::to_vec(&doc).expect("json");
    let v = holdfast::cli::check_document(&json, THIS_NODE, &Limits::default()).expect("document");
    assert!(
        v.rejections.is_empty(),
        "the export has rejections: {:?}",
        v.rejections
    );
    build(&Inputs {
        model: Arc::new(v.model),
        node: THIS_NODE.into(),
        router_mac: MacAddr(ROUTER_MAC),
        links: links(hv),
        underlay: None,
        decap: None,
        // The agent's default `[vm] interfaces`.
        ports: VmPorts::new(
            &DEFAULT_PATTERNS
                .iter()
                .map(|p| Pattern::parse(p).expect("default pattern"))
                .collect::<Vec<_>>(),
            None,
            holdfast::anchor::DEFAULT_NAME,
        ),
        prune: true,
        former_servers: Arc::default(),
    })
}

/// How one map differs: counts, and a few keys of each kind.
fn diff<K: Ord + Debug + Copy, V: PartialEq + Debug + Copy>(
    name: &str,
    want: impl IntoIterator<Item = (K, V)>,
    have: impl IntoIterator<Item = (K, V)>,
) -> Option<String> {
    let want: BTreeMap<K, V> = want.into_iter().collect();
    let have: BTreeMap<K, V> = have.into_iter().collect();
    if want == have {
        return None;
    }
    let missing: Vec<&K> = want.keys().filter(|k| !have.contains_key(k)).collect();
    let extra: Vec<&K> = have.keys().filter(|k| !want.contains_key(k)).collect();
    let wrong: Vec<(&K, &V, &V)> = want
        .iter()
        .filter_map(|(k, w)| have.get(k).filter(|h| *h != w).map(|h| (k, w, h)))
        .collect();
    Some(format!(
        "{name}: {} missing {:?}, {} extra {:?}, {} wrong {:?}",
        missing.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)],
        wrong.len(),
        &wrong[..wrong.len().min(3)],
    ))
}

/// How the pinned state differs from `want`, or `None` when it holds exactly that.
fn mismatch(bpffs: &Path, want: &Desired) -> Option<String> {
    let bindings = match read_bindings(bpffs) {
        Ok(b) => b,
        Err(e) => return Some(format!("bindings: {e}")),
    };
    let vpc = match read_vpc(bpffs) {
        Ok(v) => v,
        Err(e) => return Some(format!("vpc maps: {e}")),
    };
    let pinned: BTreeSet<u32> = std::fs::read_dir(bpffs.join("links"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("vm-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let unguarded: Vec<&String> = want
        .interfaces
        .iter()
        .filter(|(i, _)| !pinned.contains(i))
        .map(|(_, n)| n)
        .collect();
    let problems: Vec<String> = [
        diff("bindings", want.bindings.clone(), bindings),
        diff("fdb", want.fdb.clone(), vpc.fdb),
        diff("arp", want.arp.clone(), vpc.arp),
        diff("vnis", want.vnis.clone(), vpc.vnis),
        diff(
            "vteps",
            want.vteps.keys().map(|k| (*k, ())),
            vpc.vteps.into_iter().map(|k| (k, ())),
        ),
        (!unguarded.is_empty()).then(|| format!("no program on {unguarded:?}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// Waits until the maps hold `want`; how long that took.
fn wait_converged(agent: &Agent, want: &Desired, seed: u64, burst: usize) -> Duration {
    let started = Instant::now();
    loop {
        let Some(problem) = mismatch(agent.bpffs.path(), want) else {
            return started.elapsed();
        };
        assert!(
            started.elapsed() < CONVERGE,
            "seed {seed:#x}, burst {burst}: the maps do not hold what IPAM holds {CONVERGE:?} \
             after the last write:\n{problem}\n--- agent log ---\n{}",
            agent.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One seed: bursts of random operations, each followed by a convergence check. Returns the
/// time each burst took to converge.
fn churn(seed: u64) -> (Counts, Vec<Duration>) {
    let _guard = SeedGuard(seed);
    let mut rng = Rng::new(seed);
    let hv = Netns::new("hv");
    let mut etcd = Etcd::start(&hv, &[]);
    let mut world = World::new(&mut rng);
    let client = etcd.client();
    client.import(&world.document());
    for i in &world.taps {
        add_tap(&hv, *i);
    }
    let mut agent = Agent::start_etcd(&hv, THIS_NODE, &Etcd::url(Ipv4Addr::LOCALHOST), "");
    let mut counts = Counts::default();
    let mut took = Vec::new();
    for burst in 0..BURSTS {
        // A third of the bursts kill the agent somewhere in them; it starts again a few
        // operations later, while the burst goes on.
        let kill_at = (rng.below(3) == 0).then(|| rng.below(OPS_PER_BURST - OPS_WHILE_DEAD));
        for op in 0..OPS_PER_BURST {
            if Some(op) == kill_at {
                agent.kill();
                counts.restarts += 1;
            }
            if kill_at.is_some_and(|k| op == k + OPS_WHILE_DEAD) {
                agent.spawn(&hv);
            }
            world.step(&mut rng, client, &hv, &mut counts);
        }
        let want = expected(client, &hv);
        took.push(wait_converged(&agent, &want, seed, burst));
    }
    (counts, took)
}

#[test]
fn maps_converge_to_ipam_under_random_churn_links_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("HOLDFAST_CONVERGE_SEED") {
        Ok(s) => vec![
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .expect("HOLDFAST_CONVERGE_SEED: a number (decimal, or hex after 0x)"),
        ],
        Err(_) => SEEDS.to_vec(),
    };
    let started = Instant::now();
    for seed in seeds {
        let t = Instant::now();
        let (c, mut took) = churn(seed);
        took.sort();
        eprintln!(
            "seed {seed:#x}: {} operations ({} puts, {} moves, {} deletes, {} node and {} network \
             changes, {} taps added, {} removed), {} restarts, in {:?}; converged after each \
             burst in median {:?}, max {:?}",
            BURSTS * OPS_PER_BURST,
            c.puts,
            c.moves,
            c.deletes,
            c.node_changes,
            c.network_changes,
            c.taps_added,
            c.taps_removed,
            c.restarts,
            t.elapsed(),
            took[took.len() / 2],
            took[took.len() - 1],
        );
    }
    eprintln!("whole test: {:?}", started.elapsed());
}
