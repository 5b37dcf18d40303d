//! Live migration: a VM moves from hv-1 to hv-2 (its NIC unplugged from one host and plugged
//! into the other, same MAC, same address, its namespace, sockets and DHCP client kept), and
//! IPAM changes the NIC's `node`. Flows from a VM that stays on the old host and from one on
//! the new host run throughout; the loss they see is bounded by the window from the unplug to
//! both data planes holding the new place; the moved VM's DHCP client renews on the new host
//! and is acknowledged; the old host delivers nothing for the NIC any more. With the file source
//! and with etcd. Hostile IPAM: a move to a node that does not exist, and a node flapping
//! between the hosts, disturb no other VM.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::{FdbEntry, FdbKey, Stat, be32};
use holdfast::model::{MacAddr, Nic};
use holdfast_tests::{
    clients,
    netns::{Netns, mac_str, wait_for},
    vpc::{self, Cloud, NETWORK_MTU, Net, Options, Source, VmSpec},
    xdp::VmHook,
};

holdfast_tests::for_each_hook!(
    a_vm_moved_with_the_file_source_keeps_its_flows_and_its_lease,
    a_vm_moved_with_the_etcd_source_keeps_its_flows_and_its_lease,
    a_vm_moved_to_a_host_without_its_network_keeps_its_flows_and_its_lease,
    a_vm_moved_in_ipam_before_it_is_plugged_keeps_its_flows_and_its_lease,
);

const NETS: [Net; 2] = [Net { id: "a", vni: 1001 }, Net { id: "b", vni: 1002 }];
const VNI: u32 = 1001;
/// The VM that moves, from hv-1 to hv-2.
const M: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
/// A VM that stays on hv-1 (the old host).
const P1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02];
/// A VM on hv-2 (the new host).
const P2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];
const IP_M: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_P1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const IP_P2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const TAP_M: &str = "tap-m";
/// How often the flows send: `ping -i`.
const INTERVAL: Duration = Duration::from_millis(10);

fn spec(mac: [u8; 6], host: usize, ip: Ipv4Addr, tap: &'static str) -> VmSpec {
    VmSpec {
        net: "a",
        host,
        mac,
        ip,
        tap,
        real_tap: false,
    }
}

/// M (in network a) on `m_host`, P1 in network a on hv-1, P2 on hv-2 in network `p2_net`
/// (a: hv-2 carries M's network before M comes; b: M brings it).
fn specs(m_host: usize, p2_net: &'static str) -> Vec<VmSpec> {
    let mut p2 = spec(P2, 1, IP_P2, "tap-p2");
    p2.net = p2_net;
    vec![
        spec(M, m_host, IP_M, TAP_M),
        spec(P1, 0, IP_P1, "tap-p1"),
        p2,
    ]
}

fn cloud(hook: VmHook, source: Source, p2_net: &'static str) -> Cloud {
    Cloud::with(
        &NETS,
        &specs(0, p2_net),
        &Options {
            hooks: [hook; 2],
            source,
            ipv6: true,
            ..Options::default()
        },
    )
}

/// M's NIC as IPAM holds it, on `node` (`hv-<n>`).
fn nic_m(node: &str) -> Nic {
    Nic {
        mac: MacAddr(M),
        network: "a".into(),
        ip: IP_M,
        hostname: None,
        node: node.into(),
        interface: Some(TAP_M.into()),
        default_route: None,
        options: None,
        boot: None,
        ip6: Some(vpc::ip6_for(VNI, IP_M)),
        forwarding: false,
    }
}

/// Tells IPAM that M is on hv-`host + 1` (or on `node`, when given), through the cloud's
/// source.
fn move_in_ipam(cloud: &mut Cloud, host: usize, node: Option<&str>, p2_net: &'static str) {
    let name = node.map_or_else(|| format!("hv-{}", host + 1), str::to_owned);
    match cloud.control {
        None => {
            let doc = vpc::dual_stack(&vpc::ipam(&NETS, &specs(host, p2_net), 3600));
            let mut v: serde_json::Value = serde_json::from_str(&doc).expect("json");
            for nic in v["nics"].as_array_mut().expect("nics") {
                if nic["mac"] == mac_str(M).as_str() {
                    nic["node"] = name.as_str().into();
                }
            }
            let doc = v.to_string();
            for a in &cloud.agents {
                a.write_ipam(&doc);
            }
        }
        Some(_) => {
            cloud.etcd().client().put_nic(nic_m(&name));
        }
    }
}

/// Unplugs the VM `mac` from host `from` and plugs it into host `to` as `tap`, as a
/// hypervisor's live migration leaves it: the same MAC, MTU and address on an `eth0` of the
/// same ifindex (a DHCP client's sockets name it), the VM's namespace and sockets kept, its
/// default route put back.
fn replug(cloud: &Cloud, mac: [u8; 6], from: usize, to: usize, tap: &str, ip: Ipv4Addr) {
    let vm = cloud.vm(mac);
    let index = vm.ns.ifindex("eth0").to_string();
    cloud.hosts[from].ip(&["link", "del", tap]);
    vm.ns.ip(&[
        "link",
        "add",
        "eth0",
        "index",
        &index,
        "address",
        &mac_str(mac),
        "mtu",
        &NETWORK_MTU.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        tap,
        "netns",
        &cloud.hosts[to].name,
    ]);
    cloud.hosts[to].ip(&["link", "set", tap, "up"]);
    vm.ns.ip(&["link", "set", "eth0", "up"]);
    vm.ns
        .ip(&["addr", "replace", &format!("{ip}/24"), "dev", "eth0"]);
    vm.ns.ip(&[
        "route", "replace", "default", "via", "10.0.0.1", "dev", "eth0",
    ]);
    vm.ns.ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{}/64", vpc::ip6_for(VNI, ip)),
        "dev",
        "eth0",
        "nodad",
    ]);
    holdfast_tests::netns::run(
        vm.ns
            .exec(
                holdfast_tests::workspace_bin("holdfast")
                    .to_str()
                    .expect("path"),
            )
            .args(["veth-peer", "eth0"]),
    );
}

/// The forwarding entry host `host`'s data plane holds for M, read from its pinned map.
fn fdb_m(cloud: &Cloud, host: usize) -> Option<FdbEntry> {
    let map = holdfast::dataplane::pinned_fdb(cloud.agents[host].bpffs.path()).ok()?;
    map.get(&FdbKey::new(VNI, M), 0).ok()
}

/// Whether host `host` forwards M to `to`'s VTEP (another host) or to its own interface `tap`.
fn points_to(cloud: &Cloud, host: usize, to: usize) -> bool {
    points_to_tap(cloud, host, to, || cloud.hosts[to].ifindex(TAP_M))
}

/// [`points_to`], with the ifindex of `to`'s tap given (the convergence is timed: no `ip`
/// process per look).
fn points_to_tap(cloud: &Cloud, host: usize, to: usize, tap: impl FnOnce() -> u32) -> bool {
    let Some(e) = fdb_m(cloud, host) else {
        return false;
    };
    if host == to {
        e.kind == FdbEntry::LOCAL && e.ifindex == tap()
    } else {
        e.kind == FdbEntry::REMOTE && e.vtep == be32(vpc::VTEPS[to])
    }
}

/// A ping flow from a VM, every [`INTERVAL`], until [`Flow::finish`].
struct Flow(Child);

impl Flow {
    fn start(ns: &Netns, to: Ipv4Addr) -> Self {
        // `ip netns exec` execs ping: the child is ping itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ping", "-n", "-D", "-i"])
            .arg(format!("{}", INTERVAL.as_secs_f64()))
            .args(["-c", "1000000", "-W", "1"])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        Self(child)
    }

    /// Stops the flow (SIGINT: ping prints its summary) and says what it saw.
    fn finish(self) -> Seen {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let out = self.0.wait_with_output().expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        // `[1700000000.123456] 64 bytes from 10.0.0.11: icmp_seq=7 ttl=64 time=0.1 ms`
        let answered: BTreeMap<u32, f64> = text
            .lines()
            .filter_map(|l| {
                let at = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
                let seq = l
                    .split("icmp_seq=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?;
                Some((seq, at))
            })
            .collect();
        let sent: u32 = text
            .lines()
            .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
            .unwrap_or(0);
        // The last one may have been in flight when the flow stopped.
        let lost = (1..sent).filter(|s| !answered.contains_key(s)).collect();
        Seen {
            sent,
            lost,
            answered,
        }
    }
}

struct Seen {
    sent: u32,
    /// The sequence numbers never answered.
    lost: Vec<u32>,
    /// The answered ones, with when the answer came (Unix time).
    answered: BTreeMap<u32, f64>,
}

impl Seen {
    /// When the first answer after the last loss came (Unix time).
    fn resumed(&self) -> Option<f64> {
        let last = *self.lost.last()?;
        self.answered.range(last..).next().map(|(_, at)| *at)
    }
}

/// The longest run of consecutive sequence numbers in `lost`.
fn longest_gap(lost: &[u32]) -> usize {
    let (mut best, mut run, mut prev) = (0, 0, None);
    for &s in lost {
        run = if prev == Some(s.wrapping_sub(1)) {
            run + 1
        } else {
            1
        };
        best = usize::max(best, run);
        prev = Some(s);
    }
    best
}

fn a_vm_moved_with_the_file_source_keeps_its_flows_and_its_lease(hook: VmHook) {
    migrates(hook, Source::File, "a", false);
}

fn a_vm_moved_with_the_etcd_source_keeps_its_flows_and_its_lease(hook: VmHook) {
    migrates(hook, Source::Etcd, "a", false);
}

/// The new host has no NIC in M's network before M comes: it starts carrying the network
/// (with etcd, its source starts watching it) at the move.
fn a_vm_moved_to_a_host_without_its_network_keeps_its_flows_and_its_lease(hook: VmHook) {
    migrates(hook, Source::File, "b", false);
    migrates(hook, Source::Etcd, "b", false);
}

/// IPAM says the VM is on hv-2 before it is unplugged from hv-1: hv-2 binds it when its
/// interface appears.
fn a_vm_moved_in_ipam_before_it_is_plugged_keeps_its_flows_and_its_lease(hook: VmHook) {
    migrates(hook, Source::Etcd, "a", true);
}

fn migrates(hook: VmHook, source: Source, p2_net: &'static str, ipam_first: bool) {
    // P2 shares M's network: it reaches M before and after.
    let p2_peer = p2_net == "a";
    let mut cloud = cloud(hook, source, p2_net);
    // M takes its address from DHCP (the others are static), and keeps its client running.
    let vm = cloud.vm(M);
    vm.ns.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    let client = clients::udhcpc(vm, &[]);
    let bound = wait_for(Duration::from_secs(20), || {
        client
            .log()
            .contains(&format!("bound ip={IP_M} "))
            .then_some(())
    });
    assert!(bound.is_some(), "M never bound: {}", client.log());
    // The client's script logs the event before it applies the address.
    let configured = wait_for(Duration::from_secs(10), || {
        (vm.address().map(|a| a.0) == Some(IP_M)).then_some(())
    });
    assert!(configured.is_some(), "M's address: {:?}", vm.address());
    assert_eq!(cloud.ping(P1, IP_M, 2), 2, "before the move, from hv-1");
    if p2_peer {
        assert_eq!(cloud.ping(P2, IP_M, 2), 2, "before the move, from hv-2");
    }
    assert!(points_to(&cloud, 0, 0));
    // hv-2 carries M's network only when it has a NIC in it.
    assert_eq!(points_to(&cloud, 1, 0), p2_peer, "{:?}", fdb_m(&cloud, 1));

    // Flows to M from both hosts throughout.
    let from_p1 = Flow::start(&cloud.vm(P1).ns, IP_M);
    let from_p2 = p2_peer.then(|| Flow::start(&cloud.vm(P2).ns, IP_M));
    std::thread::sleep(Duration::from_millis(1500));

    // The orchestrator may tell IPAM once the VM runs on the new host, or before it stops it
    // on the old one.
    let (unplugged, plugged, changed, written);
    if ipam_first {
        changed = Instant::now();
        move_in_ipam(&mut cloud, 1, None, p2_net);
        written = changed.elapsed();
        unplugged = Instant::now();
        replug(&cloud, M, 0, 1, TAP_M, IP_M);
        plugged = unplugged.elapsed();
    } else {
        unplugged = Instant::now();
        replug(&cloud, M, 0, 1, TAP_M, IP_M);
        plugged = unplugged.elapsed();
        changed = Instant::now();
        move_in_ipam(&mut cloud, 1, None, p2_net);
        written = changed.elapsed();
    }
    let started = unplugged.min(changed);
    let tap = cloud.hosts[1].ifindex(TAP_M);
    let mut at = [None, None];
    let converged = wait_for_fast(Duration::from_secs(15), || {
        for (host, t) in at.iter_mut().enumerate() {
            if t.is_none() && points_to_tap(&cloud, host, 1, || tap) {
                *t = Some(changed.elapsed());
            }
        }
        at.iter().all(Option::is_some).then_some(())
    });
    assert!(
        converged.is_some(),
        "not converged: hv-1 {:?}, hv-2 {:?}\n{}\n{}",
        fdb_m(&cloud, 0),
        fdb_m(&cloud, 1),
        cloud.agents[0].logs(),
        cloud.agents[1].logs()
    );
    let window = started.elapsed();
    let [hv1, hv2] = at.map(|t| t.unwrap_or_default());

    // The flows go on for a while at the new place.
    std::thread::sleep(Duration::from_secs(1));
    let mut flows = vec![("hv-1", from_p1.finish())];
    flows.extend(from_p2.map(|f| ("hv-2", f.finish())));
    let change_at = unix_at(changed);
    let mut report = format!(
        "migration ({source:?}, {hook}, P2 in network {p2_net}, IPAM first: {ipam_first}): unplug+plug {plugged:.1?}, IPAM written in \
         {written:.1?}; IPAM change -> hv-1 (old host) remote {hv1:.1?}, hv-2 (new host) local \
         {hv2:.1?}; window from the first of the unplug and the IPAM change {window:.1?}"
    );
    for (from, seen) in &flows {
        report.push_str(&format!(
            "; from {from}: {} of {} lost (longest run {}), answers again {}",
            seen.lost.len(),
            seen.sent,
            longest_gap(&seen.lost),
            seen.resumed().map_or("-".into(), |t| format!(
                "{:+.0} ms after the IPAM change",
                (t - change_at) * 1e3
            )),
        ));
    }
    eprintln!("{report}");
    // Loss only within the window: what was sent while the VM was unplugged and the data
    // planes changing, with room for ping's reply timeout and a slow machine; a migration that
    // does not converge loses everything after the unplug.
    let bound = (window.as_millis() / INTERVAL.as_millis()) as usize + 100;
    for (from, seen) in &flows {
        assert!(seen.sent > 50, "from {from}: only {} pings sent", seen.sent);
        assert!(
            seen.lost.len() <= bound,
            "from {from}: {} of {} lost, over the {bound} the window allows: {:?}",
            seen.lost.len(),
            seen.sent,
            seen.lost
        );
        let after_last_loss = seen.lost.last().map_or(seen.answered.len(), |l| {
            seen.answered.range(l + 1..).count()
        });
        assert!(
            after_last_loss >= 10,
            "from {from}: the flow did not resume ({after_last_loss} answers after the last \
             loss): {:?}\n{}",
            seen.lost,
            diagnose(&cloud)
        );
    }

    // The lease: M's client renews on the new host, from the same address, and is acknowledged.
    let hv2_before = cloud.agents[1].counters();
    let events_before = client.log();
    let pid = client.proc.0.id();
    // SAFETY: kill(2) on our child (busybox udhcpc: SIGUSR1 renews now).
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let renewed = wait_for(Duration::from_secs(30), || {
        let log = client.log();
        log[events_before.len()..]
            .contains(&format!("renew ip={IP_M} "))
            .then_some(())
    });
    let after = client.log()[events_before.len()..].to_owned();
    assert!(renewed.is_some(), "M's renewal on hv-2: {after}");
    assert!(
        !after.contains("nak") && !after.contains("deconfig"),
        "M's lease was lost on the new host: {after}"
    );
    let hv2_after = cloud.agents[1].counters();
    assert!(
        hv2_after[Stat::DhcpAck as usize] > hv2_before[Stat::DhcpAck as usize],
        "hv-2 acknowledged nothing"
    );
    assert_eq!(
        hv2_after[Stat::DhcpNak as usize],
        hv2_before[Stat::DhcpNak as usize],
        "hv-2 refused M's renewal"
    );
    assert_eq!(cloud.vm(M).address().map(|a| a.0), Some(IP_M));

    self_announce_is_dropped(&cloud);
    old_host_delivers_nothing_for_it(&cloud, p2_peer);
}

/// What a failed flow leaves to read: both hosts' drops and the VMs' neighbour tables.
fn diagnose(cloud: &Cloud) -> String {
    let mut out = String::new();
    for (host, agent) in cloud.agents.iter().enumerate() {
        let metrics = agent.http("/metrics").1;
        let drops: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("drop") && !l.starts_with('#') && !l.ends_with(" 0"))
            .collect();
        out.push_str(&format!("hv-{} drops: {drops:?}\n", host + 1));
    }
    for (name, mac) in [("M", M), ("P1", P1), ("P2", P2)] {
        let neigh = cloud.vm(mac).ns.ip(&["-4", "neigh", "show"]);
        out.push_str(&format!(
            "{name} neighbours: {}\n",
            String::from_utf8_lossy(&neigh.stdout).trim()
        ));
    }
    out
}

/// A hypervisor announces a migrated VM with RARP frames from its MAC (QEMU's self-announce):
/// nothing is learned from traffic here, so they are dropped and counted on the new host and
/// never cross the underlay.
fn self_announce_is_dropped(cloud: &Cloud) {
    let mut rarp = vec![0xff; 6];
    rarp.extend_from_slice(&M);
    rarp.extend_from_slice(&[0x80, 0x35]);
    // Ethernet, IPv4, "reverse request", the MAC as sender and target, no addresses.
    rarp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]);
    for _ in 0..2 {
        rarp.extend_from_slice(&M);
        rarp.extend_from_slice(&[0; 4]);
    }
    let drops = |c: &[u64]| c[Stat::DropNotIpv4 as usize] + c[Stat::DropBcastMcast as usize];
    let (hv1, hv2) = (cloud.agents[0].counters(), cloud.agents[1].counters());
    let sock = holdfast_tests::rawsock::RawSocket::open(&cloud.vm(M).ns.path(), "eth0");
    for _ in 0..5 {
        sock.send(&rarp);
    }
    let counted = wait_for(Duration::from_secs(5), || {
        (drops(&cloud.agents[1].counters()) >= drops(&hv2) + 5).then_some(())
    });
    assert!(counted.is_some(), "hv-2 did not drop M's self-announce");
    let after = cloud.agents[1].counters();
    for stat in [Stat::VxlanEncap, Stat::SkbEncap] {
        assert_eq!(after[stat as usize], hv2[stat as usize], "{stat:?}");
    }
    assert_eq!(
        cloud.agents[0].counters()[Stat::VxlanDecap as usize],
        hv1[Stat::VxlanDecap as usize]
    );
}

/// `at` as Unix time.
fn unix_at(at: Instant) -> f64 {
    holdfast_tests::unix_now() - at.elapsed().as_secs_f64()
}

/// [`wait_for`] polling every millisecond: the figures measured are tens of milliseconds.
fn wait_for_fast<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// After the move, an impostor plugged into hv-1 as M's old tap with M's MAC neither receives
/// what is sent to M nor sends as M; M keeps answering from hv-2.
fn old_host_delivers_nothing_for_it(cloud: &Cloud, p2_peer: bool) {
    let impostor = holdfast_tests::netns::Vm::new(&cloud.hosts[0], TAP_M, M);
    impostor
        .ns
        .ip(&["addr", "add", &format!("{IP_M}/24"), "dev", "eth0"]);
    impostor
        .ns
        .ip(&["link", "set", "eth0", "mtu", &NETWORK_MTU.to_string()]);
    // hv-1's agent puts its programs on the new tap.
    let guarded = wait_for(Duration::from_secs(10), || {
        (cloud.agents[0].metric("holdfast_interfaces") >= 2.0).then_some(())
    });
    assert!(guarded.is_some(), "{}", cloud.agents[0].logs());
    let echoes = |ns: &Netns| {
        let out = ns.exec("cat").arg("/proc/net/snmp").output().expect("snmp");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InEchos")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = echoes(&impostor.ns);
    assert_eq!(cloud.ping(P1, IP_M, 10), 10, "M answers from hv-2");
    if p2_peer {
        assert_eq!(cloud.ping(P2, IP_M, 10), 10, "M answers locally on hv-2");
    }
    // And over IPv6: its `ip6` moved with it.
    let ip6 = vpc::ip6_for(VNI, IP_M);
    let answered6 = wait_for(Duration::from_secs(10), || {
        (cloud.vm(P1).ns.ping6(ip6, 1) == 1).then_some(())
    });
    assert!(answered6.is_some(), "M unreachable over IPv6 from hv-1");
    assert_eq!(
        echoes(&impostor.ns),
        before,
        "hv-1 delivered to its old tap what was sent to M"
    );
    assert_eq!(
        impostor.ns.ping(IP_P1, 3),
        0,
        "hv-1 let a VM on M's old tap send as M"
    );
    assert!(points_to(cloud, 0, 1) && points_to(cloud, 1, 1));
}

#[test]
fn a_move_to_an_unknown_node_or_a_flapping_node_disturbs_no_other_vm_file() {
    hostile_moves(Source::File);
}

#[test]
fn a_move_to_an_unknown_node_or_a_flapping_node_disturbs_no_other_vm_etcd() {
    hostile_moves(Source::Etcd);
}

/// What host `host`'s data plane holds for every VM but M: its forwarding entries and
/// bindings.
fn others(cloud: &Cloud, host: usize) -> (Vec<(FdbKey, FdbEntry)>, Vec<String>) {
    let dir = cloud.agents[host].bpffs.path();
    let map = holdfast::dataplane::pinned_fdb(dir).expect("fdb");
    let mut fdb: Vec<(FdbKey, FdbEntry)> = [P1, P2]
        .iter()
        .filter_map(|mac| {
            let k = FdbKey::new(VNI, *mac);
            Some((k, map.get(&k, 0).ok()?))
        })
        .collect();
    fdb.sort_by_key(|(k, _)| k.mac);
    let mut bindings: Vec<String> = holdfast::dataplane::read_bindings(dir)
        .expect("bindings")
        .into_iter()
        .filter(|(k, _)| k.mac != M)
        .map(|(k, b)| format!("{k:?} {b:?}"))
        .collect();
    bindings.sort();
    (fdb, bindings)
}

/// IPAM moves M to a node it does not name (rejected: M keeps its place), then flaps M's node
/// between hv-2 and hv-1 twenty times, 20 ms apart, ending where the VM is. A flow between the
/// other VMs, across the hosts, loses nothing; their entries never change; M is reachable at
/// the end.
fn hostile_moves(source: Source) {
    let mut cloud = cloud(VmHook::Xdp, source, "a");
    assert_eq!(cloud.ping(P2, IP_M, 2), 2);
    let before = [others(&cloud, 0), others(&cloud, 1)];
    let flow = Flow::start(&cloud.vm(P1).ns, IP_P2);
    std::thread::sleep(Duration::from_millis(300));

    move_in_ipam(&mut cloud, 0, Some("hv-9"), "a");
    for (i, a) in cloud.agents.iter().enumerate() {
        let rejected = wait_for(Duration::from_secs(10), || {
            (a.metric("holdfast_ipam_rejected_entries{reason=\"unknown_node\"}") >= 1.0)
                .then_some(())
        });
        assert!(rejected.is_some(), "hv-{}: {}", i + 1, a.logs());
    }
    assert!(
        points_to(&cloud, 0, 0) && points_to(&cloud, 1, 0),
        "M lost its place: {:?} {:?}",
        fdb_m(&cloud, 0),
        fdb_m(&cloud, 1)
    );
    assert_eq!(cloud.ping(P2, IP_M, 3), 3, "M unreachable after a bad move");

    for i in 0..20 {
        move_in_ipam(&mut cloud, (i + 1) % 2, None, "a");
        std::thread::sleep(Duration::from_millis(20));
    }
    let settled = wait_for(Duration::from_secs(10), || {
        (points_to(&cloud, 0, 0) && points_to(&cloud, 1, 0)).then_some(())
    });
    assert!(
        settled.is_some(),
        "M's place after the flapping: {:?} {:?}",
        fdb_m(&cloud, 0),
        fdb_m(&cloud, 1)
    );
    let seen = flow.finish();
    assert!(seen.sent > 50, "only {} pings", seen.sent);
    assert!(
        seen.lost.is_empty(),
        "P1 -> P2 lost {} of {} while M's node changed: {:?}",
        seen.lost.len(),
        seen.sent,
        seen.lost
    );
    assert_eq!(
        [others(&cloud, 0), others(&cloud, 1)],
        before,
        "the other VMs' entries changed"
    );
    let reachable = wait_for(Duration::from_secs(10), || {
        (cloud.ping(P2, IP_M, 1) == 1).then_some(())
    });
    assert!(reachable.is_some(), "M unreachable after the flapping");
}

#[test]
fn flapping_a_nic_to_a_host_without_its_network_leaves_no_stale_state_file() {
    flapping_to_a_new_host(Source::File);
}

#[test]
fn flapping_a_nic_to_a_host_without_its_network_leaves_no_stale_state_etcd() {
    flapping_to_a_new_host(Source::Etcd);
}

/// hv-2 has no NIC in M's network (P2 is in network b): each move of M there makes hv-2 carry
/// the network (with etcd, its source starts watching it), each move back drops it. Twenty
/// quick flips, ending on hv-2 then on hv-1: hv-2 carries network a exactly when M is named
/// there, and P2's network b is untouched throughout.
fn flapping_to_a_new_host(source: Source) {
    let mut cloud = cloud(VmHook::Xdp, source, "b");
    let p1_on_hv2 = |cloud: &Cloud| {
        let map = holdfast::dataplane::pinned_fdb(cloud.agents[1].bpffs.path()).ok()?;
        map.get(&FdbKey::new(VNI, P1), 0).ok()
    };
    let p2_on_hv2 = |cloud: &Cloud| {
        let map = holdfast::dataplane::pinned_fdb(cloud.agents[1].bpffs.path()).ok()?;
        map.get(&FdbKey::new(1002, P2), 0).ok()
    };
    assert!(p1_on_hv2(&cloud).is_none(), "hv-2 carries network a");
    let p2 = p2_on_hv2(&cloud);
    assert!(p2.is_some());
    for end in [1, 0] {
        for i in 0..19 {
            move_in_ipam(&mut cloud, (i + end + 1) % 2, None, "b");
            std::thread::sleep(Duration::from_millis(20));
        }
        move_in_ipam(&mut cloud, end, None, "b");
        let settled = wait_for(Duration::from_secs(10), || {
            let carried = p1_on_hv2(&cloud);
            let ok = if end == 1 {
                carried.is_some_and(|e| e.kind == FdbEntry::REMOTE && e.vtep == be32(vpc::VTEPS[0]))
                    && points_to(&cloud, 0, 1)
            } else {
                carried.is_none() && fdb_m(&cloud, 1).is_none() && points_to(&cloud, 0, 0)
            };
            ok.then_some(())
        });
        assert!(
            settled.is_some(),
            "ending on hv-{}: hv-2 holds P1 as {:?} and M as {:?}; hv-1 holds M as {:?}\n{}",
            end + 1,
            p1_on_hv2(&cloud),
            fdb_m(&cloud, 1),
            fdb_m(&cloud, 0),
            cloud.agents[1].logs()
        );
        assert_eq!(p2_on_hv2(&cloud), p2, "P2's entry changed");
    }
    let reachable = wait_for(Duration::from_secs(10), || {
        (cloud.ping(P1, IP_M, 1) == 1).then_some(())
    });
    assert!(reachable.is_some(), "M unreachable after the flapping");
}
