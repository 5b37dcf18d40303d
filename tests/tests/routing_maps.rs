//! The agent's side of routing (issue 16): a document with VPCs, a gateway VM and routes goes
//! through `ipam import` and `export` unchanged; the agent fills `ROUTES`, `FORWARDING` and
//! `FORWARDERS` in the pinned maps from it (the VPCs of its NICs, whole; never another VPC's
//! entries); a gateway NIC losing `forwarding` takes its routes with it and nothing else; and a
//! restart adopts the pinned maps without writing them again.
//! With etcd, the agent follows the other networks of its VPCs too (green, where it has no
//! NIC), and a change arrives as a partial update of the networks it touches.

use std::{net::Ipv4Addr, time::Duration};

use agent_common::{FdbKey, ForwarderKey, RouteEntry, be32};
use holdfast::{
    dataplane::{RouteKey, RoutingState, read_routing},
    model::{MacAddr, Nic},
};
use holdfast_tests::{
    etcd::Etcd,
    netns::{Agent, Netns, Vm, mac_str, wait_for},
};
use serde_json::json;

const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const GW_VM: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0xfe];
const BLUE: u32 = 1001;
const GREEN: u32 = 1003;
const RED: u32 = 1002;

/// prod: blue (a NIC here, a gateway VM on hv-2, default_via and a route through it) and green
/// (a NIC on hv-2); dev: red, with blue's subnet, only on hv-2.
fn doc() -> String {
    json!({
        "networks": [
            {"id": "rt-blue", "vni": BLUE, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
             "mtu": 1450, "vpc": "prod", "default_via": "10.10.0.254",
             "routes": [{"to": "192.168.0.0/16", "via": "10.10.0.254"}]},
            {"id": "rt-green", "vni": GREEN, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1",
             "mtu": 1450, "vpc": "prod"},
            {"id": "rt-red", "vni": RED, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
             "mtu": 1450, "vpc": "dev"}
        ],
        "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
        "nics": [
            {"mac": mac_str(MAC1), "network": "rt-blue", "ip": "10.10.0.11", "node": "hv-1",
             "interface": "tap-rt1"},
            {"mac": mac_str(GW_VM), "network": "rt-blue", "ip": "10.10.0.254", "node": "hv-2",
             "forwarding": true},
            {"mac": "02:00:00:00:0c:01", "network": "rt-green", "ip": "10.20.0.12", "node": "hv-2"},
            {"mac": "02:00:00:00:0b:01", "network": "rt-red", "ip": "10.10.0.12", "node": "hv-2"}
        ]
    })
    .to_string()
}

fn route(from: u32, dst: &str, kind: u32, vni: u32, via: Option<&str>) -> (RouteKey, RouteEntry) {
    (
        RouteKey::new(from, dst.parse().expect("prefix")),
        RouteEntry {
            kind,
            vni,
            via: via.map_or(0, |v| be32(v.parse().expect("address"))),
            _pad: 0,
        },
    )
}

/// prod's tables as hv-1 holds them; with the gateway VM's routes when `via`.
fn prod_routes(via: bool) -> Vec<(RouteKey, RouteEntry)> {
    let mut out = Vec::new();
    for from in [BLUE, GREEN] {
        out.push(route(from, "10.10.0.0/24", RouteEntry::SUBNET, BLUE, None));
        out.push(route(from, "10.10.0.1/32", RouteEntry::GATEWAY, BLUE, None));
        out.push(route(from, "10.20.0.0/24", RouteEntry::SUBNET, GREEN, None));
        out.push(route(
            from,
            "10.20.0.1/32",
            RouteEntry::GATEWAY,
            GREEN,
            None,
        ));
    }
    if via {
        let gw = Some("10.10.0.254");
        out.push(route(BLUE, "0.0.0.0/0", RouteEntry::VIA, BLUE, gw));
        out.push(route(BLUE, "192.168.0.0/16", RouteEntry::VIA, BLUE, gw));
    }
    out.sort_by_key(|(k, _)| *k);
    out
}

fn state(agent: &Agent) -> RoutingState {
    read_routing(agent.bpffs.path()).expect("the routing maps are pinned")
}

#[test]
fn routing_fields_through_etcd_import_and_export() {
    let hv = Netns::new("hv");
    let mut etcd = Etcd::start(&hv, &[]);
    etcd.client().import(&doc());
    let (exported, skipped) = etcd
        .client()
        .run(|s, rt| rt.block_on(s.export()).expect("export"));
    assert_eq!(skipped, 0);
    let again =
        holdfast::cli::check_document(exported.to_string().as_bytes(), "", &Default::default())
            .expect("the export is a document");
    let imported =
        holdfast::cli::check_document(doc().as_bytes(), "", &Default::default()).expect("doc");
    assert!(again.rejections.is_empty(), "{:?}", again.rejections);
    assert_eq!(
        again.model, imported.model,
        "the export is what was imported"
    );
    assert_eq!(again.model.networks["rt-blue"].vpc.as_deref(), Some("prod"));
    assert_eq!(
        again.model.networks["rt-blue"].default_via,
        Some(Ipv4Addr::new(10, 10, 0, 254))
    );
    assert!(again.model.nics[&MacAddr(GW_VM)].forwarding);
}

#[test]
fn the_agent_fills_the_routing_maps_and_follows_a_gateway_nic() {
    let hv = Netns::new("hv");
    let mut agent = Agent::start(&hv, "hv-1", &doc());
    let _vm = Vm::new(&hv, "tap-rt1", MAC1);
    let filled = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.routes.len() == 10).then_some(s)
    });
    let before = filled.unwrap_or_else(|| panic!("ROUTES: {:?}\n{}", state(&agent), agent.logs()));
    assert_eq!(before.routes, prod_routes(true));
    assert_eq!(before.forwarding, [FdbKey::new(BLUE, GW_VM)]);
    let hv2 = be32(Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(
        before.forwarders,
        [
            ForwarderKey {
                vni: BLUE,
                vtep: hv2
            },
            ForwarderKey {
                vni: GREEN,
                vtep: hv2
            }
        ]
    );
    // `holdfast vpc` shows them.
    let shown = agent.vpc();
    for needle in [
        "0.0.0.0/0           via 10.10.0.254 in VNI 1001",
        "10.20.0.1/32        gateway of VNI 1003",
        "1001  02:00:00:00:0a:fe",
        "1003  198.18.0.2",
    ] {
        assert!(shown.contains(needle), "{needle}: {shown}");
    }
    // dev is not carried here: nothing of red's, whose subnet is blue's.
    let vpc = holdfast::dataplane::read_vpc(agent.bpffs.path()).expect("vpc");
    assert!(vpc.fdb.iter().all(|(k, _)| k.vni != RED));
    assert!(
        vpc.vnis.iter().any(|(v, _)| *v == GREEN),
        "green is carried"
    );

    // The gateway VM's NIC loses `forwarding`: its routes and marks go, prod's subnets stay,
    // blue serves with its default_via refused.
    agent.write_ipam(&doc().replace(r#""forwarding":true"#, r#""forwarding":false"#));
    let applied = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.routes.len() == 8).then_some(s)
    });
    let after = applied.unwrap_or_else(|| panic!("{:?}\n{}", state(&agent), agent.logs()));
    assert_eq!(after.routes, prod_routes(false));
    assert!(
        after.forwarding.is_empty() && after.forwarders.is_empty(),
        "{after:?}"
    );
    let rejected = |reason: &str| {
        agent.metric(&format!(
            "holdfast_ipam_rejected_entries{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(rejected("default_via_not_forwarding"), 1.0);
    assert_eq!(rejected("route_via_nic"), 1.0);

    // A restart adopts what is pinned: the same entries, none written again. (Once the
    // snapshot it serves first is this state: an older one would be written, then corrected.)
    let snapshot = holdfast::snapshot::path(&agent.dir.path().join("state"));
    let saved = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&snapshot).ok()?;
        (!text.contains("\"forwarding\"")).then_some(())
    });
    assert!(saved.is_some(), "the snapshot never caught up");
    agent.kill();
    let held = state(&agent);
    assert_eq!(held.routes, after.routes, "the maps outlive the agent");
    let logged = agent.logs().len();
    agent.spawn(&hv);
    let settled = wait_for(Duration::from_secs(10), || {
        agent.logs()[logged..]
            .contains("IPAM document validated")
            .then_some(())
    });
    assert!(settled.is_some(), "{}", agent.logs());
    let logs = agent.logs()[logged..].to_owned();
    assert!(logs.contains("adopted_routes=8"), "{logs}");
    for line in logs.lines().filter(|l| l.contains("data plane reconciled")) {
        assert!(line.contains("upserted=0"), "rewrote entries: {line}");
    }
    assert_eq!(state(&agent).routes, after.routes);
}

/// The same through etcd: green, where this node has no NIC, is followed for its VPC; the
/// gateway NIC's change is a partial update (blue validated again, prod patched); green
/// leaving prod takes its subnet out of blue's table.
#[test]
fn through_etcd_the_vpc_is_followed_and_a_gateway_nic_change_is_partial() {
    let hv = Netns::new("hv");
    let mut etcd = Etcd::start(&hv, &[]);
    etcd.client().import(&doc());
    let agent = Agent::start_etcd(&hv, "hv-1", &Etcd::url(Ipv4Addr::LOCALHOST), "");
    let _vm = Vm::new(&hv, "tap-rt1", MAC1);
    let filled = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.routes == prod_routes(true)).then_some(s)
    });
    let before = filled.unwrap_or_else(|| panic!("ROUTES: {:?}\n{}", state(&agent), agent.logs()));
    assert_eq!(before.forwarding, [FdbKey::new(BLUE, GW_VM)]);
    assert_eq!(before.forwarders.len(), 2);
    let vpc = holdfast::dataplane::read_vpc(agent.bpffs.path()).expect("vpc");
    assert!(
        vpc.fdb.iter().any(|(k, _)| k.vni == GREEN),
        "green's NIC on hv-2 is carried"
    );
    assert!(vpc.fdb.iter().all(|(k, _)| k.vni != RED));

    let model = holdfast::cli::check_document(doc().as_bytes(), "", &Default::default())
        .expect("doc")
        .model;
    let mut gw = model.nics[&MacAddr(GW_VM)].clone();
    gw.forwarding = false;
    etcd.client().put_nic(Nic { ..gw });
    let applied = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.routes == prod_routes(false) && s.forwarding.is_empty()).then_some(s)
    });
    let after = applied.unwrap_or_else(|| panic!("{:?}\n{}", state(&agent), agent.logs()));
    assert!(after.forwarders.is_empty());

    // green leaves prod: no longer followed, its subnet gone from blue's table.
    let mut green =
        serde_json::from_str::<serde_json::Value>(&doc()).expect("doc")["networks"][1].clone();
    green["vpc"] = json!("other");
    etcd.client()
        .put_raw("networks/rt-green", &green.to_string());
    let left = wait_for(Duration::from_secs(10), || {
        let s = state(&agent);
        (s.routes.len() == 2).then_some(s)
    });
    let left = left.unwrap_or_else(|| panic!("{:?}\n{}", state(&agent), agent.logs()));
    assert_eq!(
        left.routes,
        [
            route(BLUE, "10.10.0.0/24", RouteEntry::SUBNET, BLUE, None),
            route(BLUE, "10.10.0.1/32", RouteEntry::GATEWAY, BLUE, None),
        ]
    );
}
