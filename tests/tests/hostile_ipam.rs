//! Hostile and mistaken IPAM input, end to end: NICs naming the host's own interfaces, ports
//! left without a binding, a network outgrowing its DHCP options, values over the entry bound
//! in a real etcd, a tampered snapshot. Each test sends the bad input and asserts that nothing
//! outside its scope changed, that the rest keeps serving, and that the reason is counted.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{FdbKey, Stat};
use holdfast::model::{MacAddr, Nic};
use holdfast_tests::{
    etcd::Etcd,
    netns::{Agent, Netns, Vm, mac_str, wait_for},
    packet::{Request, arp_request, udp_frame},
    rawsock::RawSocket,
    vpc::{self, Cloud, Net, VTEPS, VmSpec},
    xdp::ROUTER_MAC,
};
use serde_json::{Value, json};

fn rejected_total(agent: &Agent, reason: &str) -> f64 {
    agent.metric(&format!(
        "holdfast_ipam_rejected_total{{reason=\"{reason}\"}}"
    ))
}

fn rejected_now(agent: &Agent, reason: &str) -> f64 {
    agent.metric(&format!(
        "holdfast_ipam_rejected_entries{{reason=\"{reason}\"}}"
    ))
}

/// Whether the agent's pins put the VM programs (XDP or TC) on `interface` of `hv`.
fn vm_programs_on(agent: &Agent, hv: &Netns, interface: &str) -> bool {
    let ifindex = hv.ifindex(interface);
    let links = agent.bpffs.path().join("links");
    ["vm", "tc"]
        .iter()
        .any(|p| links.join(format!("{p}-{ifindex}")).exists())
}

const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];
const IP11: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP13: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const NETS: [Net; 1] = [Net { id: "a", vni: 1001 }];

fn specs() -> Vec<VmSpec> {
    vec![
        VmSpec {
            net: "a",
            host: 0,
            mac: A1,
            ip: IP11,
            tap: "tap-a1",
            real_tap: false,
        },
        VmSpec {
            net: "a",
            host: 1,
            mac: A3,
            ip: IP13,
            tap: "tap-a3",
            real_tap: false,
        },
    ]
}

/// Records naming the underlay, `lo`, an interface carrying a host address and a name that is
/// no VM port, and a NIC of another network on a VM's tap: each is rejected alone, the
/// underlay goes on carrying the hosts' traffic, the VMs keep reaching each other. A VM port
/// that gains a host address later loses its NICs and its programs, and gets them back when
/// the address goes.
#[test]
fn nics_naming_host_interfaces_are_rejected_and_the_host_keeps_its_network() {
    let mut cloud = Cloud::new(&NETS, &specs());
    let hv1 = &cloud.hosts[0];
    // Named like a tap, but the host's own: it carries a host address.
    hv1.ip(&[
        "link", "add", "tap-host", "type", "veth", "peer", "name", "hostpeer",
    ]);
    hv1.ip(&["addr", "add", "192.0.2.1/24", "dev", "tap-host"]);
    for l in ["tap-host", "hostpeer"] {
        hv1.ip(&["link", "set", l, "up"]);
    }
    let mut doc: Value = serde_json::from_str(&vpc::ipam(&NETS, &specs(), 3600)).expect("json");
    let nics = doc["nics"].as_array_mut().expect("nics");
    for (last, iface) in [
        (0x21, "ul0"),
        (0x22, "lo"),
        (0x23, "tap-host"),
        (0x24, "eth9"),
    ] {
        nics.push(
            json!({"mac": mac_str([2, 0x0a, 0, 0, 0, last]), "network": "a",
            "ip": format!("10.0.0.{last}"), "node": "hv-1", "interface": iface}),
        );
    }
    // Another network's NIC on A1's tap: the VM would bridge two VNIs.
    nics.push(
        json!({"mac": "02:0b:00:00:00:31", "network": "b", "ip": "10.0.0.31",
        "node": "hv-1", "interface": "tap-a1"}),
    );
    doc["networks"].as_array_mut().expect("networks").push(
        json!({"id": "b", "vni": 1002, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1",
            "mtu": 1450}),
    );
    for a in &cloud.agents {
        a.write_ipam(&doc.to_string());
    }
    let loaded = wait_for(Duration::from_secs(10), || {
        cloud.agents[0]
            .logs()
            .contains("IPAM document validated networks=2")
            .then_some(())
    });
    assert!(loaded.is_some(), "{}", cloud.agents[0].logs());
    // hv-1 reboots: its pins are gone, its snapshot stays, and the agent starts afresh with
    // the bad records in IPAM.
    cloud.agents[0].stop();
    std::fs::remove_dir_all(cloud.agents[0].bpffs.path()).expect("unpin");
    cloud.agents[0].spawn(hv1);
    let agent = &cloud.agents[0];
    let applied = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 1.0).then_some(())
    });
    assert!(applied.is_some(), "{}", agent.logs());
    // The underlay carries the hosts' own traffic, and the VMs' across it.
    assert_eq!(hv1.ping(VTEPS[1], 5), 5, "underlay to underlay");
    assert_eq!(cloud.ping(A1, IP13, 5), 5, "VM to VM across the underlay");
    let counted = wait_for(Duration::from_secs(10), || {
        (rejected_now(agent, "interface_not_vm_port") == 4.0
            && rejected_now(agent, "interface_shared") == 1.0)
            .then_some(())
    });
    assert!(counted.is_some(), "{}", agent.logs());
    assert!(rejected_total(agent, "interface_not_vm_port") >= 4.0);
    let logs = agent.logs();
    for why in [
        "\"ul0\" is not a VM port: it is the underlay",
        "\"lo\" is not a VM port: it is the loopback interface",
        "\"tap-host\" is not a VM port: it carries the host address 192.0.2.1",
        "\"eth9\" is not a VM port: it matches none of [vm] interfaces (tap*, vnet*)",
        "interface tap-a1 carries NICs of network a",
    ] {
        assert!(logs.contains(why), "{why}:\n{logs}");
    }
    for iface in ["ul0", "lo", "tap-host"] {
        assert!(!vm_programs_on(agent, hv1, iface), "VM programs on {iface}");
    }
    assert!(vm_programs_on(agent, hv1, "tap-a1"));
    assert_eq!(agent.metric("holdfast_leases"), 1.0);

    // A VM port that gains a host address is the host's from then on: both NICs naming it
    // are rejected.
    hv1.ip(&["addr", "add", "192.0.2.9/24", "dev", "tap-a1"]);
    let gone = wait_for(Duration::from_secs(10), || {
        (!vm_programs_on(agent, hv1, "tap-a1")
            && agent.metric("holdfast_leases") == 0.0
            && rejected_now(agent, "interface_not_vm_port") == 6.0)
            .then_some(())
    });
    assert!(gone.is_some(), "{}", agent.logs());
    assert!(
        agent
            .logs()
            .contains("it carries the host address 192.0.2.9"),
        "{}",
        agent.logs()
    );
    assert_eq!(hv1.ping(VTEPS[1], 3), 3, "the underlay is untouched");
    // And a VM port again once the address goes.
    hv1.ip(&["addr", "del", "192.0.2.9/24", "dev", "tap-a1"]);
    let back = wait_for(Duration::from_secs(10), || {
        (vm_programs_on(agent, hv1, "tap-a1") && agent.metric("holdfast_leases") == 1.0)
            .then_some(())
    });
    assert!(back.is_some(), "{}", agent.logs());
    assert_eq!(cloud.ping(A1, IP13, 5), 5);
}

const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const STRAY: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);

/// A network with `routes` classless routes and NICs `(mac, ip, tap)` on hv-1.
fn blue(routes: usize, nics: &[([u8; 6], &str, &str)]) -> String {
    let routes: Vec<Value> = (0..routes)
        .map(|i| json!({"to": format!("172.{}.0.0/16", 16 + i), "via": "10.10.0.1"}))
        .collect();
    let nics: Vec<Value> = nics
        .iter()
        .map(|(mac, ip, tap)| {
            json!({"mac": mac_str(*mac), "network": "pn-blue", "ip": ip, "node": "hv-1",
                "interface": tap})
        })
        .collect();
    json!({
        "networks": [{"id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24",
            "gateway": "10.10.0.1", "dns": ["10.10.0.2"], "mtu": 1450, "routes": routes}],
        "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}],
        "nics": nics,
    })
    .to_string()
}

/// Frames from `vm` that seen from the host side of its port: ARP, IPv4 to the router MAC,
/// a DHCP DISCOVER. Returns how many of `mac`'s frames the host received.
fn frames_reaching_the_host(hv: &Netns, vm: &Vm, mac: [u8; 6], ip: Ipv4Addr) -> usize {
    let host = RawSocket::open(&hv.path(), &vm.tap);
    let sock = RawSocket::open(&vm.ns.path(), "eth0");
    for _ in 0..10 {
        sock.send(&arp_request(mac, ip, GATEWAY));
        sock.send(&udp_frame(
            mac, ROUTER_MAC, ip, GATEWAY, 40000, 7, b"hello", false,
        ));
        sock.send(&Request::discover(mac).frame());
    }
    let mut seen = 0;
    while let Some(f) = host.recv(Duration::from_millis(500)) {
        if f.len() >= 12 && f[6..12] == mac {
            seen += 1;
        }
    }
    seen
}

/// A NIC removed from IPAM while its tap exists, and a tap that never had one: both ports keep
/// the programs, which drop what their VMs send (no binding) instead of handing it to the host.
#[test]
fn a_port_without_a_binding_stays_guarded() {
    let hv = Netns::new("hv");
    let agent = Agent::start(
        &hv,
        "hv-1",
        &blue(
            1,
            &[
                (MAC1, "10.10.0.11", "tap-vm1"),
                (MAC2, "10.10.0.12", "tap-vm2"),
            ],
        ),
    );
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let _vm2 = Vm::new(&hv, "tap-vm2", MAC2);
    let stray = Vm::new(&hv, "tap-stray", STRAY);
    let applied = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 2.0).then_some(())
    });
    assert!(applied.is_some(), "{}", agent.logs());

    agent.write_ipam(&blue(1, &[(MAC2, "10.10.0.12", "tap-vm2")]));
    let removed = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 1.0).then_some(())
    });
    assert!(removed.is_some(), "{}", agent.logs());

    let before = agent.counters();
    let ip = Ipv4Addr::new(10, 10, 0, 11);
    assert_eq!(frames_reaching_the_host(&hv, &vm, MAC1, ip), 0);
    assert_eq!(
        frames_reaching_the_host(&hv, &stray, STRAY, Ipv4Addr::new(10, 10, 0, 77)),
        0
    );
    let after = agent.counters();
    let rose = |s: Stat| after[s as usize] - before[s as usize];
    // ARP and IPv4 from a MAC with no binding on the port: 2 × 10 per VM.
    assert!(
        rose(Stat::DropSpoofedMac) >= 40,
        "spoofed-MAC drops rose by {}",
        rose(Stat::DropSpoofedMac)
    );
    assert_eq!(rose(Stat::ToRouter), 0, "nothing reached the router path");
    for tap in ["tap-vm1", "tap-vm2", "tap-stray"] {
        assert!(vm_programs_on(&agent, &hv, tap), "{tap}");
    }
    assert_eq!(agent.metric("holdfast_interfaces"), 3.0);
}

/// A network given 40 routes: option 121 (285 bytes, in two instances) no longer fits in the
/// 296 bytes of options of any NIC on it. The new version is rejected, the one serving goes on,
/// and the VM still gets its lease with it.
#[test]
fn a_network_outgrowing_its_dhcp_options_keeps_its_last_good_version() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &blue(1, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let sock = RawSocket::open(&vm.ns.path(), "eth0");
    let offer = || {
        sock.exchange(&Request::discover(MAC1), Duration::from_secs(1))
            .filter(|r| r.msg_type() == Some(2))
    };
    let first = wait_for(Duration::from_secs(10), offer).expect("no offer");
    let routes = first.option(121).expect("option 121").to_vec();

    agent.write_ipam(&blue(40, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let rejected = wait_for(Duration::from_secs(10), || {
        (rejected_now(&agent, "options_too_long") == 1.0).then_some(())
    });
    assert!(rejected.is_some(), "{}", agent.logs());
    for _ in 0..3 {
        let r = offer().expect("the VM gets its lease after the bad change");
        assert_eq!(r.option(121), Some(&routes[..]), "with the serving options");
        let ack = sock
            .exchange(
                &Request::selecting(MAC1, GATEWAY, Ipv4Addr::new(10, 10, 0, 11)),
                Duration::from_secs(1),
            )
            .and_then(|r| r.msg_type());
        assert_eq!(ack, Some(5));
    }
    assert_eq!(agent.metric("holdfast_leases"), 1.0);
    assert!(vm_programs_on(&agent, &hv, "tap-vm1"));
    let logs = agent.logs();
    assert!(
        logs.contains("networks[0] (pn-blue): options_too_long")
            && logs.contains("option 121")
            && logs.contains("its last good version keeps serving"),
        "{logs}"
    );
}

const VNI: u32 = 1001;
const LOCAL: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const REMOTE: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x01];

fn in_fdb(agent: &Agent, mac: [u8; 6]) -> bool {
    holdfast::dataplane::pinned_fdb(agent.bpffs.path())
        .map(|m| m.get(&FdbKey::new(VNI, mac), 0).is_ok())
        .unwrap_or(false)
}

/// Values no list could take in one message before: twelve nodes of 1.4 MiB (one page of them
/// is over the 16 MiB a message may carry), 300 NICs of 2 KB, and a NIC over the 8 KiB entry
/// bound. The oversized entries are rejected alone, everything else syncs, and the watch goes
/// on: a large value arriving by it is rejected, a good NIC reaches the map.
#[test]
fn oversized_values_in_etcd_are_rejected_alone_and_the_rest_syncs() {
    let hv = Netns::new("hv");
    let mut etcd = Etcd::start(&hv, &[]);
    let doc = json!({
        "networks": [{"id": "blue", "vni": VNI, "subnet": "10.0.0.0/16", "gateway": "10.0.0.1"}],
        "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
        "nics": [
            {"mac": mac_str(LOCAL), "network": "blue", "ip": "10.0.0.11", "node": "hv-1", "interface": "tap-a"},
            {"mac": mac_str(REMOTE), "network": "blue", "ip": "10.0.0.21", "node": "hv-2"},
        ],
    });
    let c = etcd.client();
    c.import(&doc.to_string());
    let big = "x".repeat(1_400_000);
    for i in 0..12 {
        c.put_raw(
            &format!("nodes/big-{i:02}"),
            &format!(r#"{{"name":"big-{i:02}","vtep":"198.18.1.{i}","pad":"{big}"}}"#),
        );
    }
    let pad = "y".repeat(2_000);
    let padded = |i: u32| [0x02, 0xcc, 0, 0, (i >> 8) as u8, i as u8];
    for i in 0..300u32 {
        let mac = mac_str(padded(i));
        c.put_raw(
            &format!("by-network/blue/{mac}"),
            &format!(
                r#"{{"mac":"{mac}","network":"blue","ip":"10.0.{}.{}","node":"hv-2","pad":"{pad}"}}"#,
                1 + i / 200,
                10 + i % 200
            ),
        );
    }
    let over = "z".repeat(9_000);
    c.put_raw(
        "by-network/blue/02:dd:00:00:00:01",
        &format!(
            r#"{{"mac":"02:dd:00:00:00:01","network":"blue","ip":"10.0.9.1","node":"hv-2","pad":"{over}"}}"#
        ),
    );

    let started = Instant::now();
    let agent = Agent::start_etcd(&hv, "hv-1", &Etcd::url(Ipv4Addr::LOCALHOST), "");
    let synced = wait_for(Duration::from_secs(20), || {
        (in_fdb(&agent, REMOTE) && (0..300).all(|i| in_fdb(&agent, padded(i)))).then_some(())
    });
    assert!(synced.is_some(), "{}", agent.logs());
    let counted = wait_for(Duration::from_secs(5), || {
        (rejected_now(&agent, "entry_too_large") == 13.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "entry_too_large {}:\n{}",
        rejected_now(&agent, "entry_too_large"),
        agent.logs()
    );
    eprintln!(
        "synced with the oversized values in {:?}",
        started.elapsed()
    );
    assert!(!in_fdb(&agent, [0x02, 0xdd, 0, 0, 0, 0x01]));
    let logs = agent.logs();
    assert!(
        logs.contains("a page is over the message limit; smaller pages"),
        "the nodes were listed in smaller pages:\n{logs}"
    );
    assert!(
        logs.contains("/holdfast/nodes/big-00") && logs.contains("entry_too_large"),
        "{logs}"
    );
    assert_eq!(agent.metric("holdfast_ipam_up"), 1.0);

    // By the watch: a large value is rejected alone, a good NIC still reaches the map.
    c.put_raw(
        "nodes/big-watch",
        &format!(r#"{{"name":"big-watch","vtep":"198.18.2.1","pad":"{big}"}}"#),
    );
    let late = [0x02, 0xbb, 0, 0, 0, 0x02];
    c.put_nic(Nic {
        mac: MacAddr(late),
        network: "blue".into(),
        ip: Ipv4Addr::new(10, 0, 0, 22),
        hostname: None,
        node: "hv-2".into(),
        interface: None,
        default_route: None,
        options: None,
        boot: None,
        ip6: None,
        forwarding: false,
    });
    let ok = wait_for(Duration::from_secs(10), || {
        (in_fdb(&agent, late) && rejected_now(&agent, "entry_too_large") == 14.0).then_some(())
    });
    assert!(ok.is_some(), "{}", agent.logs());
    // The view keeps no large value: the agent stays small.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("pid")))
        .expect("status");
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "agent RSS {} KiB, peak {} KiB",
        kib("VmRSS:"),
        kib("VmHWM:")
    );
    assert!(kib("VmRSS:") < 100 * 1024, "{status}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// The snapshot is the agent's alone, and what it says is validated at start: entries changed
/// behind the agent's back to name the host's interfaces, or to be no NIC at all, are rejected
/// and never served; the good ones serve. A snapshot that is not one is ignored.
#[test]
fn a_tampered_snapshot_serves_only_its_good_entries() {
    let hv = Netns::new("hv");
    let mut agent = Agent::start(
        &hv,
        "hv-1",
        &blue(
            1,
            &[
                (MAC1, "10.10.0.11", "tap-vm1"),
                (MAC2, "10.10.0.12", "tap-vm2"),
            ],
        ),
    );
    let vm1 = Vm::new(&hv, "tap-vm1", MAC1);
    let _vm2 = Vm::new(&hv, "tap-vm2", MAC2);
    let state = agent.dir.path().join("state");
    let snapshot = state.join("ipam-snapshot.json");
    let saved = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 2.0 && snapshot.exists()).then_some(())
    });
    assert!(saved.is_some(), "{}", agent.logs());
    agent.stop();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&snapshot), 0o600);

    let text = std::fs::read_to_string(&snapshot).expect("snapshot");
    let tampered = text.replace(r#""interface":"tap-vm2""#, r#""interface":"lo""#).replace(
        r#""nics":{"#,
        r#""nics":{"02:00:00:00:00:66":{"mac":"02:00:00:00:00:66","network":"pn-blue","ip":"10.10.0.1","node":"hv-1","interface":"tap-x"},"#,
    );
    assert_ne!(tampered, text);
    std::fs::write(&snapshot, tampered).expect("tamper");
    // IPAM says nothing usable: what serves is the snapshot's.
    agent.write_ipam("{ this is not json");
    agent.spawn(&hv);
    let judged = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 1.0
            && rejected_total(&agent, "interface_not_vm_port") == 1.0
            && rejected_total(&agent, "reserved_address") == 1.0)
            .then_some(())
    });
    assert!(judged.is_some(), "{}", agent.logs());
    assert!(
        agent.logs().contains("snapshot entry rejected"),
        "{}",
        agent.logs()
    );
    assert!(!vm_programs_on(&agent, &hv, "lo"));
    let sock = RawSocket::open(&vm1.ns.path(), "eth0");
    let offer = sock
        .exchange(&Request::discover(MAC1), Duration::from_secs(1))
        .and_then(|r| r.msg_type());
    assert_eq!(offer, Some(2), "the good entry serves");

    // A snapshot that is not one is ignored; the pinned state serves on.
    agent.stop();
    std::fs::write(&snapshot, b"\x00garbage").expect("garbage");
    agent.spawn(&hv);
    assert!(
        agent.logs().contains("ignoring the IPAM snapshot"),
        "{}",
        agent.logs()
    );
    let offer = sock
        .exchange(&Request::discover(MAC1), Duration::from_secs(1))
        .and_then(|r| r.msg_type());
    assert_eq!(offer, Some(2));
}

/// An IPAM larger than the bindings map (16,384 NICs on one host): whole networks are cut, in
/// a stable order, so that the maps take every write and no network is half-present.
#[test]
fn an_ipam_larger_than_the_maps_is_cut_by_whole_networks() {
    let hv = Netns::new("hv");
    // n0: 16,000 NICs on tap-c0; n1: 1,000 more on tap-c1. Together over 16,384.
    let mut nics = Vec::new();
    for (net, count, tap) in [(0u32, 16_000u32, "tap-c0"), (1, 1_000, "tap-c1")] {
        for k in 0..count {
            let host = 10 + k;
            nics.push(json!({
                "mac": mac_str([0x02, 0xcc, net as u8, 0, (k >> 8) as u8, k as u8]),
                "network": format!("n{net}"),
                "ip": format!("10.{}.{}.{}", net, host / 256, host % 256),
                "node": "hv-1", "interface": tap}));
        }
    }
    let networks: Vec<Value> = (0..2)
        .map(|n| {
            json!({"id": format!("n{n}"), "vni": 2000 + n, "subnet": format!("10.{n}.0.0/16"),
            "gateway": format!("10.{n}.0.1")})
        })
        .collect();
    let doc = json!({"networks": networks, "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}],
        "nics": nics});
    let agent = Agent::start(&hv, "hv-1", &doc.to_string());
    for tap in ["tap-c0", "tap-c1"] {
        hv.ip(&[
            "link",
            "add",
            tap,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{tap}p"),
        ]);
        hv.ip(&["link", "set", tap, "up"]);
    }
    let applied = wait_for(Duration::from_secs(60), || {
        (agent.metric("holdfast_leases") == 16_000.0).then_some(())
    });
    assert!(
        applied.is_some(),
        "leases {}:\n{}",
        agent.metric("holdfast_leases"),
        agent.logs()
    );
    assert_eq!(rejected_now(&agent, "over_capacity"), 1.0);
    assert_eq!(
        agent.metric("holdfast_dataplane_errors_total"),
        0.0,
        "{}",
        agent.logs()
    );
    assert_eq!(agent.metric("holdfast_fdb_entries"), 16_000.0);
    let logs = agent.logs();
    assert!(
        logs.contains("(n1): over_capacity: its 1000 NICs (1000 on this node) do not fit: the bindings map holds 16384 entries and 16000 are taken"),
        "{logs}"
    );
}

/// Defence in depth: asked to put the VM programs on `lo`, on the underlay, on an interface
/// with a host address or on one no pattern names, the data plane refuses each, naming why,
/// and attaches to the VM port alone.
#[test]
fn the_data_plane_attaches_to_vm_ports_only_even_if_asked() {
    use holdfast::dataplane::{Dataplane, Desired, ReconcileError};
    let hv = Netns::new("hv");
    for (name, addr) in [
        ("tap-g1", None),
        ("tap-g2", Some("192.0.2.7/24")),
        ("eth-x", None),
        ("ul0", None),
    ] {
        hv.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]);
        if let Some(a) = addr {
            hv.ip(&["addr", "add", a, "dev", name]);
        }
        hv.ip(&["link", "set", name, "up"]);
    }
    let bpffs = holdfast_tests::TempDir::bpffs("guard");
    let names = ["lo", "tap-g1", "tap-g2", "eth-x", "ul0"];
    let desired = Desired {
        interfaces: names
            .iter()
            .map(|n| (hv.ifindex(n), (*n).to_owned()))
            .collect(),
        underlay: Some((hv.ifindex("ul0"), "ul0".into())),
        prune: true,
        ..Desired::default()
    };
    let report = holdfast_tests::netns::in_netns(&hv.path(), || {
        let mut dp = Dataplane::open(bpffs.path(), ROUTER_MAC).expect("load programs");
        dp.reconcile(&desired)
    });
    let refused: Vec<String> = report
        .errors
        .iter()
        .filter(|e| matches!(e, ReconcileError::NotVmPort { .. }))
        .map(ToString::to_string)
        .collect();
    for why in [
        "\"lo\" is not a VM port: it is the loopback interface",
        "\"tap-g2\" is not a VM port: it carries the host address 192.0.2.7",
        "\"eth-x\" is not a VM port: it matches none of [vm] interfaces (tap*, vnet*)",
        "\"ul0\" is not a VM port: it is the underlay",
    ] {
        assert!(
            refused.iter().any(|r| r.contains(why)),
            "{why}: {refused:?}"
        );
    }
    assert_eq!(refused.len(), 4, "{refused:?}");
    let vm_links: Vec<&String> = report
        .attached
        .iter()
        .filter(|a| a.ends_with("/vm") || a.ends_with("/tc"))
        .collect();
    assert_eq!(
        vm_links,
        ["tap-g1/tc", "tap-g1/vm"],
        "{:?}",
        report.attached
    );
}

/// Mistaken routing records (issue 16): a VPC name that is no name, a network overlapping
/// another of its VPC, a `default_via` that is the router, one that no NIC holds. Each is
/// rejected with its reason (counted, logged); the networks serving keep serving as they were
/// (their last good versions, or themselves with the bad `via` not routed): the routing maps,
/// the forwarding entries and the VM's lease are unchanged.
#[test]
fn bad_routing_records_are_rejected_alone_and_the_vpc_keeps_routing() {
    const GW_VM: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0xfe];
    let net = |id: &str, vni: u32, third: u8, vpc: &str| {
        json!({"id": id, "vni": vni, "subnet": format!("10.{third}.0.0/24"),
               "gateway": format!("10.{third}.0.1"), "mtu": 1450, "vpc": vpc})
    };
    let good = || {
        let mut blue = net("rt-blue", 1001, 10, "prod");
        blue["default_via"] = json!("10.10.0.254");
        json!({
            "networks": [blue, net("rt-green", 1003, 20, "prod"), net("rt-red", 1002, 10, "dev")],
            "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
            "nics": [
                {"mac": mac_str(MAC1), "network": "rt-blue", "ip": "10.10.0.11", "node": "hv-1",
                 "interface": "tap-vm1"},
                {"mac": mac_str(GW_VM), "network": "rt-blue", "ip": "10.10.0.254", "node": "hv-2",
                 "forwarding": true},
                {"mac": "02:00:00:00:0c:01", "network": "rt-green", "ip": "10.20.0.12", "node": "hv-1",
                 "interface": "tap-vm2"},
                {"mac": "02:00:00:00:0b:01", "network": "rt-red", "ip": "10.10.0.12", "node": "hv-1",
                 "interface": "tap-vm3"}
            ]
        })
    };
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &good().to_string());
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let routing = || holdfast::dataplane::read_routing(agent.bpffs.path()).expect("routing maps");
    // prod: 2 networks x (2 subnets + 2 gateways) + blue's default_via; dev: 2.
    let before = wait_for(Duration::from_secs(10), || {
        let s = routing();
        (s.routes.len() == 11).then_some(s)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", routing(), agent.logs()));
    let vpc_before = holdfast::dataplane::read_vpc(agent.bpffs.path()).expect("vpc");

    let mut bad = good();
    bad["networks"][0]["vpc"] = json!("prod vpc!");
    bad["networks"][1]["default_via"] = json!("10.20.0.1");
    bad["networks"][2]["default_via"] = json!("10.10.0.77");
    let mut aqua = net("rt-aqua", 1004, 10, "prod");
    aqua["subnet"] = json!("10.10.0.128/25");
    aqua["gateway"] = json!("10.10.0.129");
    bad["networks"].as_array_mut().unwrap().push(aqua);
    agent.write_ipam(&bad.to_string());
    let reasons = [
        "invalid_vpc",
        "default_via_invalid",
        "default_via_not_forwarding",
        "vpc_overlap",
    ];
    let rejected = wait_for(Duration::from_secs(10), || {
        reasons
            .iter()
            .all(|r| rejected_now(&agent, r) == 1.0)
            .then_some(())
    });
    assert!(
        rejected.is_some(),
        "{:?}\n{}",
        reasons.map(|r| rejected_now(&agent, r)),
        agent.logs()
    );
    for r in reasons {
        assert_eq!(rejected_total(&agent, r), 1.0, "{r}");
    }
    let logs = agent.logs();
    for needle in [
        "networks[0] (rt-blue): invalid_vpc",
        "networks[1] (rt-green): default_via_invalid",
        "networks[2] (rt-red): default_via_not_forwarding",
        "(rt-aqua): vpc_overlap",
        "its last good version keeps serving",
    ] {
        assert!(logs.contains(needle), "{needle}: {logs}");
    }
    // Nothing outside the bad records changed: the tables, the forwarding state, the lease.
    let after = routing();
    assert_eq!(after.routes, before.routes);
    assert_eq!(after.forwarding, before.forwarding);
    assert_eq!(after.forwarders, before.forwarders);
    let vpc_after = holdfast::dataplane::read_vpc(agent.bpffs.path()).expect("vpc");
    assert_eq!(vpc_after.fdb, vpc_before.fdb);
    assert_eq!(vpc_after.arp, vpc_before.arp);
    assert_eq!(vpc_after.vnis, vpc_before.vnis);
    let sock = RawSocket::open(&vm.ns.path(), "eth0");
    let offer = wait_for(Duration::from_secs(5), || {
        sock.exchange(&Request::discover(MAC1), Duration::from_secs(1))
            .filter(|r| r.msg_type() == Some(2))
    });
    assert!(offer.is_some(), "the VM gets its lease: {}", agent.logs());
}
