//! IPv6 in the IPAM model, end to end (issue 15, the agent's side): an agent given a
//! dual-stack document fills the pinned BINDINGS6, NEIGH6 and VNIS6; hostile `ip6` records
//! (another network's address, a duplicate, a reserved one) are rejected alone while the rest
//! serves and applies, from a file and from etcd (whose changes are judged network by
//! network); `holdfast ipam import` and `export` carry the IPv6 fields.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use agent_common::{Binding6, BindingKey, FdbKey, Neigh6Entry, Neigh6Key};
use holdfast::{
    dataplane::{Ipv6State, pinned_fdb, read_ipv6},
    model::{MacAddr, Network, Nic},
    render::ra6,
};
use holdfast_tests::{
    etcd::Etcd,
    netns::{Agent, Netns, Vm, mac_str, wait_for},
    xdp::ROUTER_MAC,
};
use serde_json::{Value, json};

const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const RED1: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const REMOTE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const BLUE: u32 = 1001;

fn blue() -> Value {
    json!({"id": "pn-blue", "vni": BLUE, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
           "mtu": 1450, "dns": ["10.10.0.2"], "search": ["blue.internal"],
           "subnet6": "fd00:10:10::/64", "dns6": ["fd00:10:10::53"]})
}

fn nic(mac: [u8; 6], network: &str, ip: &str, ip6: Option<&str>, tap: Option<&str>) -> Value {
    let mut v = json!({"mac": mac_str(mac), "network": network, "ip": ip,
                       "node": if tap.is_some() { "hv-1" } else { "hv-2" }});
    if let Some(ip6) = ip6 {
        v["ip6"] = json!(ip6);
    }
    if let Some(tap) = tap {
        v["interface"] = json!(tap);
    }
    v
}

/// blue (dual-stack) with two NICs here (one with `ip6`) and one on hv-2; red (IPv4-only)
/// with one NIC here; green (dual-stack) only on hv-2; and `extra` NICs.
fn doc(extra: &[Value]) -> String {
    let mut nics = vec![
        nic(
            MAC1,
            "pn-blue",
            "10.10.0.11",
            Some("fd00:10:10::11"),
            Some("tap-vm1"),
        ),
        nic(MAC2, "pn-blue", "10.10.0.12", None, Some("tap-vm2")),
        nic(
            REMOTE,
            "pn-blue",
            "10.10.0.21",
            Some("fd00:10:10::21"),
            None,
        ),
        nic(RED1, "pn-red", "10.20.0.11", None, Some("tap-vm3")),
        nic(
            [0x02, 0, 0, 0, 0x0c, 0x01],
            "pn-green",
            "10.30.0.11",
            Some("fd00:20:20::11"),
            None,
        ),
    ];
    nics.extend_from_slice(extra);
    json!({
        "networks": [
            blue(),
            {"id": "pn-red", "vni": 1002, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1",
             "mtu": 1450},
            {"id": "pn-green", "vni": 1003, "subnet": "10.30.0.0/24", "gateway": "10.30.0.1",
             "mtu": 1450, "subnet6": "fd00:20:20::/64"},
        ],
        "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
        "nics": nics,
    })
    .to_string()
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("ipv6").octets()
}

fn neigh(mac: [u8; 6], router: u8) -> Neigh6Entry {
    Neigh6Entry {
        mac,
        router,
        _pad: 0,
    }
}

fn rejected_now(agent: &Agent, reason: &str) -> f64 {
    agent.metric(&format!(
        "holdfast_ipam_rejected_entries{{reason=\"{reason}\"}}"
    ))
}

fn in_fdb(agent: &Agent, mac: [u8; 6]) -> bool {
    pinned_fdb(agent.bpffs.path())
        .map(|m| m.get(&FdbKey::new(BLUE, mac), 0).is_ok())
        .unwrap_or(false)
}

fn state(agent: &Agent) -> Ipv6State {
    read_ipv6(agent.bpffs.path()).expect("the IPv6 maps are pinned")
}

#[test]
fn a_dual_stack_document_fills_the_ipv6_maps_and_hostile_ip6_records_are_rejected_alone() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &doc(&[]));
    let _vms = [
        Vm::new(&hv, "tap-vm1", MAC1),
        Vm::new(&hv, "tap-vm2", MAC2),
        Vm::new(&hv, "tap-vm3", RED1),
    ];
    let applied = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 3.0).then_some(())
    });
    assert!(applied.is_some(), "{}", agent.logs());
    let filled = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (!s.bindings6.is_empty()).then_some(s)
    });
    let s = filled.unwrap_or_else(|| panic!("BINDINGS6 stayed empty: {}", agent.logs()));

    let counted = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_ipv6_addresses") == 1.0).then_some(())
    });
    assert!(counted.is_some(), "holdfast_ipv6_addresses");
    // BINDINGS6: the NIC here with an ip6, on its tap; not MAC2 (none), not red's.
    assert_eq!(
        s.bindings6,
        [(
            BindingKey::new(hv.ifindex("tap-vm1"), MAC1),
            Binding6 {
                ip6: ip6("fd00:10:10::11"),
                vni: BLUE,
                _pad: 0
            }
        )]
    );
    // NEIGH6: blue's addresses, here and on hv-2, and its router's link-local address (the
    // EUI-64 of the router MAC); nothing of red (IPv4-only) or green (no NIC here).
    let router = MacAddr(ROUTER_MAC).eui64_link_local();
    assert_eq!(
        router,
        "fe80::68:66ff:fe00:1".parse::<Ipv6Addr>().expect("ll")
    );
    assert_eq!(
        s.neigh6,
        [
            (Neigh6Key::new(BLUE, ip6("fd00:10:10::11")), neigh(MAC1, 0)),
            (
                Neigh6Key::new(BLUE, ip6("fd00:10:10::21")),
                neigh(REMOTE, 0)
            ),
            (Neigh6Key::new(BLUE, router.octets()), neigh(ROUTER_MAC, 1)),
        ]
    );
    // VNIS6: blue's advertisement, as the renderer makes it.
    let net: Network = serde_json::from_value(blue()).expect("network");
    let expected = ra6::render(&net, MacAddr(ROUTER_MAC)).expect("an advertisement");
    assert_eq!(s.ra6, [(BLUE, expected)]);
    let ra = s.ra6[0].1;
    assert_eq!(
        (ra.body[0], ra.body[1]),
        (64, 0xc0),
        "hop limit 64, M=1 O=1"
    );
    // 12 fixed + SLLA 8 + MTU 8 + prefix 32 + RDNSS 24 + DNSSL 24 ("blue.internal").
    assert_eq!(ra.len, 108);

    // Hostile records, on hv-2 where they would take over blue's neighbour answers: green's
    // address, MAC1's address, blue's subnet-router anycast address. And a good newcomer.
    let hostile = [
        nic(
            [0x02, 0, 0, 0, 0, 0x31],
            "pn-blue",
            "10.10.0.31",
            Some("fd00:20:20::11"),
            None,
        ),
        nic(
            [0x02, 0, 0, 0, 0, 0x32],
            "pn-blue",
            "10.10.0.32",
            Some("fd00:10:10::11"),
            None,
        ),
        nic(
            [0x02, 0, 0, 0, 0, 0x33],
            "pn-blue",
            "10.10.0.33",
            Some("fd00:10:10::"),
            None,
        ),
        nic(
            [0x02, 0, 0, 0, 0, 0x34],
            "pn-blue",
            "10.10.0.34",
            Some("fd00:10:10::34"),
            None,
        ),
    ];
    agent.write_ipam(&doc(&hostile));
    let judged = wait_for(Duration::from_secs(10), || {
        (rejected_now(&agent, "outside_subnet") == 1.0
            && rejected_now(&agent, "duplicate_ip") == 1.0
            && rejected_now(&agent, "reserved_address") == 1.0)
            .then_some(())
    });
    assert!(judged.is_some(), "{}", agent.logs());
    let applied = wait_for(Duration::from_secs(10), || {
        in_fdb(&agent, [0x02, 0, 0, 0, 0, 0x34]).then_some(())
    });
    assert!(
        applied.is_some(),
        "the good newcomer applies: {}",
        agent.logs()
    );
    let after = state(&agent);
    // Everything that served serves as it was; the newcomer's answer joins it.
    assert_eq!(after.bindings6, s.bindings6);
    assert_eq!(after.ra6, s.ra6);
    let mut expected = s.neigh6.clone();
    expected.push((
        Neigh6Key::new(BLUE, ip6("fd00:10:10::34")),
        neigh([0x02, 0, 0, 0, 0, 0x34], 0),
    ));
    expected.sort_by_key(|(k, _)| *k);
    assert_eq!(after.neigh6, expected);
    for last in [0x31, 0x32, 0x33] {
        assert!(!in_fdb(&agent, [0x02, 0, 0, 0, 0, last]), "{last:#x}");
    }
    assert_eq!(agent.metric("holdfast_leases"), 3.0);
    let logs = agent.logs();
    for words in [
        "ip6 fd00:20:20::11 is outside subnet6 fd00:10:10::/64",
        "ip6 fd00:10:10::11 in network pn-blue is already held by 02:00:00:00:00:01",
        "subnet-router anycast",
    ] {
        assert!(logs.contains(words), "{words}: {logs}");
    }

    // `holdfast vpc` shows them.
    let vpc = agent.vpc();
    for line in [
        "02:00:00:00:00:01  fd00:10:10::11",
        "1001  fe80::68:66ff:fe00:1",
        "02:68:66:00:00:01  router",
        "1001  108",
    ] {
        assert!(vpc.contains(line), "{line}: {vpc}");
    }
    // `holdfast leases` shows each NIC's ip6 beside its IPv4 lease, and "-" for one without.
    let leases = agent.leases();
    assert!(
        leases
            .lines()
            .next()
            .is_some_and(|h| h.contains("ADDRESS6")),
        "{leases}"
    );
    let line = |mac: [u8; 6]| {
        leases
            .lines()
            .find(|l| l.contains(&mac_str(mac)))
            .unwrap_or_else(|| panic!("{} missing: {leases}", mac_str(mac)))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line(MAC1)[3..6],
        ["10.10.0.11/24", "fd00:10:10::11", "10.10.0.1"]
    );
    assert_eq!(line(MAC2)[3..6], ["10.10.0.12/24", "-", "10.10.0.1"]);

    // A layout directory of a build before IPv6 has the other maps and not these: the next
    // agent adopts the others (same layout, no migration) and makes and fills these.
    let mut agent = agent;
    agent.stop();
    let maps = agent
        .bpffs
        .path()
        .join(format!("maps-v{}", agent_common::LAYOUT_VERSION));
    for name in ["BINDINGS6", "NEIGH6", "VNIS6"] {
        std::fs::remove_file(maps.join(name)).expect("unpin");
    }
    let bindings = holdfast::dataplane::read_bindings(agent.bpffs.path()).expect("bindings");
    assert_eq!(bindings.len(), 3, "IPv4 keeps serving with the agent down");
    agent.spawn(&hv);
    let refilled = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.neigh6 == after.neigh6).then_some(s)
    });
    let s = refilled.unwrap_or_else(|| panic!("NEIGH6 not refilled: {}", agent.logs()));
    assert_eq!((s.bindings6, s.ra6), (after.bindings6, after.ra6));
    let layouts: Vec<String> = std::fs::read_dir(agent.bpffs.path())
        .expect("bpffs")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("maps-v"))
        .collect();
    assert_eq!(
        layouts,
        [format!("maps-v{}", agent_common::LAYOUT_VERSION)],
        "one layout"
    );
}

/// The same document through etcd: `ipam import` and `export` keep the IPv6 fields, the agent
/// fills the IPv6 maps from it, and a NIC put later with a serving NIC's `ip6` is rejected
/// alone (a partial revalidation of its network) while a good one applies.
#[test]
fn ipv6_through_etcd_import_export_and_a_partial_update() {
    let hv = Netns::new("hv");
    let mut etcd = Etcd::start(&hv, &[]);
    etcd.client().import(&doc(&[]));
    let (exported, skipped) = etcd
        .client()
        .run(|s, rt| rt.block_on(s.export()).expect("export"));
    assert_eq!(skipped, 0);
    let again =
        holdfast::cli::check_document(exported.to_string().as_bytes(), "", &Default::default())
            .expect("the export is a document");
    let imported =
        holdfast::cli::check_document(doc(&[]).as_bytes(), "", &Default::default()).expect("doc");
    assert!(again.rejections.is_empty(), "{:?}", again.rejections);
    assert_eq!(
        again.model, imported.model,
        "the export is what was imported"
    );
    assert!(again.model.networks["pn-blue"].subnet6.is_some());
    assert_eq!(again.model.networks["pn-blue"].dns6.len(), 1);
    assert_eq!(
        again
            .model
            .nics
            .values()
            .filter(|n| n.ip6.is_some())
            .count(),
        3
    );

    let agent = Agent::start_etcd(&hv, "hv-1", &Etcd::url(Ipv4Addr::LOCALHOST), "");
    let _vms = [
        Vm::new(&hv, "tap-vm1", MAC1),
        Vm::new(&hv, "tap-vm2", MAC2),
        Vm::new(&hv, "tap-vm3", RED1),
    ];
    let filled = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.bindings6.len() == 1 && s.neigh6.len() == 3 && s.ra6.len() == 1).then_some(s)
    });
    let before = filled.unwrap_or_else(|| panic!("the IPv6 maps: {}", agent.logs()));

    let remote = |last: u8, ip6: &str| Nic {
        mac: MacAddr([0x02, 0, 0, 0, 0, last]),
        network: "pn-blue".into(),
        ip: Ipv4Addr::new(10, 10, 0, last),
        hostname: None,
        node: "hv-2".into(),
        interface: None,
        default_route: None,
        options: None,
        boot: None,
        ip6: Some(ip6.parse().expect("ipv6")),
        forwarding: false,
    };
    let c = etcd.client();
    c.put_nic(remote(0x41, "fd00:10:10::11"));
    c.put_nic(remote(0x42, "fd00:10:10::42"));
    let applied = wait_for(Duration::from_secs(10), || {
        (in_fdb(&agent, [0x02, 0, 0, 0, 0, 0x42]) && rejected_now(&agent, "duplicate_ip") == 1.0)
            .then_some(())
    });
    assert!(applied.is_some(), "{}", agent.logs());
    let after = state(&agent);
    assert!(!in_fdb(&agent, [0x02, 0, 0, 0, 0, 0x41]));
    assert_eq!(after.bindings6, before.bindings6);
    assert_eq!(after.ra6, before.ra6);
    let mut expected = before.neigh6.clone();
    expected.push((
        Neigh6Key::new(BLUE, ip6("fd00:10:10::42")),
        neigh([0x02, 0, 0, 0, 0, 0x42], 0),
    ));
    expected.sort_by_key(|(k, _)| *k);
    assert_eq!(after.neigh6, expected, "MAC1 keeps its address");
}
