//! The routing rules between entries: the networks of one VPC do not overlap (they are routed
//! to each other by their subnets), and a network's `default_via` and the `via` of its routes
//! name a NIC of it with `forwarding: true` (a gateway VM).
//!
//! A `via` that names no forwarding NIC costs only itself: the network keeps serving (its
//! DHCP options as written), the data plane does not route through it, and the rejection
//! (`default_via_not_forwarding`, `route_via_nic`) says why. So a gateway VM whose NIC loses
//! `forwarding`, or goes, takes its routes with it and nothing else.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use imbl::OrdMap;
use ipnet::Ipv4Net;

use super::{
    Model, Network, Nic, RawEntry,
    reasons::{Reason, Rejection, reject},
};

/// The reasons [`check_vias`] gives: judged on the merged model, never on a part of it.
pub(super) const VIA_REASONS: [Reason; 2] = [Reason::DefaultViaNotForwarding, Reason::RouteViaNic];

/// The first and last address of a subnet, as numbers.
fn span(net: Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// The subnets kept of each VPC, by first address (disjoint): which one `net` overlaps.
#[derive(Default)]
pub(super) struct VpcSpans<'a> {
    by_vpc: HashMap<&'a str, BTreeMap<u32, (u32, &'a str)>>,
}

impl<'a> VpcSpans<'a> {
    /// The network of `vpc` whose subnet overlaps `subnet`, if one was added.
    pub(super) fn overlapping(&self, vpc: &str, subnet: Ipv4Net) -> Option<&'a str> {
        let (first, last) = span(subnet);
        let spans = self.by_vpc.get(vpc)?;
        // Kept subnets are disjoint: only the last one starting at or before `last` can reach
        // into `subnet`.
        let (_, (end, id)) = spans.range(..=last).next_back()?;
        (*end >= first).then_some(*id)
    }

    pub(super) fn add(&mut self, vpc: &'a str, subnet: Ipv4Net, id: &'a str) {
        let (first, last) = span(subnet);
        self.by_vpc
            .entry(vpc)
            .or_default()
            .insert(first, (last, id));
    }
}

fn overlap_detail(n: &Network, vpc: &str, other: &str, how: &str) -> String {
    format!(
        "subnet {} overlaps the subnet of network {other} ({how}) in vpc {vpc}: the networks \
         of one VPC are routed to each other by their subnets",
        n.subnet
    )
}

/// Of networks of one VPC whose subnets overlap, the one serving now keeps its place, else the
/// first by id; the others are rejected.
pub(super) fn one_subnet_per_vpc(
    networks: &mut OrdMap<String, Network>,
    prev: &OrdMap<String, Network>,
    rejections: &mut Vec<Rejection>,
) {
    if networks.values().all(|n| n.vpc.is_none()) {
        return;
    }
    let mut order: Vec<(bool, &String)> = networks
        .iter()
        .filter(|(_, n)| n.vpc.is_some())
        .map(|(id, n)| (prev.get(id) != Some(n), id))
        .collect();
    order.sort();
    let mut kept = VpcSpans::default();
    let mut losers = Vec::new();
    for (_, id) in order {
        let n = &networks[id];
        let Some(vpc) = n.vpc.as_deref() else {
            continue;
        };
        match kept.overlapping(vpc, n.subnet) {
            Some(other) => losers.push((
                id.clone(),
                overlap_detail(
                    n,
                    vpc,
                    other,
                    "kept first: the network serving, else the first by id",
                ),
            )),
            None => kept.add(vpc, n.subnet, id),
        }
    }
    // Of the losers, those whose version serving now fits beside what was kept (and whose VNI
    // no other network took meanwhile): that version keeps serving.
    let fits: Vec<(String, String, Option<Network>)> = losers
        .into_iter()
        .map(|(id, detail)| {
            let old = prev.get(&id).filter(|old| {
                old.vpc
                    .as_deref()
                    .is_none_or(|v| kept.overlapping(v, old.subnet).is_none())
                    && !networks.iter().any(|(o, n)| *o != id && n.vni == old.vni)
            });
            let old = old.cloned();
            (id, detail, old)
        })
        .collect();
    let mut restored = Vec::new();
    for (id, detail, old) in fits {
        networks.remove(&id);
        let mut r = reject(Reason::VpcOverlap, detail).at("networks".into(), Some(id.clone()));
        if let Some(old) = old {
            restored.push((id, old));
            r.kept_last_good = true;
        }
        rejections.push(r);
    }
    for (id, old) in restored {
        networks.insert(id, old);
    }
}

/// Why network `n` may not join the networks of `model` outside `scope` (they serve now): the
/// one of its VPC whose subnet it overlaps.
pub(super) fn overlaps_serving(
    model: &Model,
    n: &Network,
    scope: &std::collections::BTreeSet<String>,
) -> Option<String> {
    let vpc = n.vpc.as_deref()?;
    let (first, last) = span(n.subnet);
    model
        .networks
        .iter()
        .filter(|(id, o)| !scope.contains(*id) && o.vpc.as_deref() == Some(vpc))
        .find(|(_, o)| {
            let (f, l) = span(o.subnet);
            f <= last && first <= l
        })
        .map(|(id, _)| overlap_detail(n, vpc, id, "serving"))
}

/// The rejections of the `default_via` and route `via`s of the networks `ids` of `model` that
/// name no NIC with `forwarding: true` of their network (`nics` gives each network's NICs);
/// the networks keep serving. `raws`: the document's networks, to name the entries.
pub(super) fn check_vias<'a>(
    model: &'a Model,
    ids: impl IntoIterator<Item = &'a String>,
    nics: &dyn Fn(&str) -> Vec<&'a Nic>,
    raws: &[RawEntry],
    rejections: &mut Vec<Rejection>,
) {
    let labels: std::cell::OnceCell<HashMap<String, String>> = std::cell::OnceCell::new();
    for id in ids {
        let Some(n) = model.networks.get(id) else {
            continue;
        };
        let vias: Vec<(Option<Ipv4Net>, Ipv4Addr)> = n
            .default_via
            .map(|v| (None, v))
            .into_iter()
            .chain(
                n.routes
                    .iter()
                    .filter(|r| r.via != n.gateway && r.to.prefix_len() > 0)
                    .map(|r| (Some(r.to), r.via)),
            )
            .collect();
        if vias.is_empty() {
            continue;
        }
        let held: HashMap<Ipv4Addr, &Nic> = nics(id).into_iter().map(|c| (c.ip, c)).collect();
        // Named only when refused: the document's networks are read once, then.
        let entry = || {
            labels
                .get_or_init(|| {
                    raws.iter()
                        .enumerate()
                        .filter_map(|(i, e)| Some((e.key("id")?, e.label("networks", i))))
                        .collect()
                })
                .get(id.as_str())
                .cloned()
                .unwrap_or_else(|| "networks".into())
        };
        // A network whose route no NIC entry holds is refused for it (`route_via_unowned`) and
        // serves its last good version: its routes are not refused twice.
        let unowned = rejections
            .iter()
            .any(|r| r.reason == Reason::RouteViaUnowned && r.key.as_deref() == Some(id));
        for (to, via) in vias {
            let why = match held.get(&via) {
                Some(c) if c.forwarding => continue,
                None if unowned && to.is_some() => continue,
                Some(c) => format!("NIC {}, which has no `forwarding: true`", c.mac),
                None => "which no NIC of the network serving holds (its entry was rejected)".into(),
            };
            let (reason, detail) = match to {
                None => (
                    Reason::DefaultViaNotForwarding,
                    format!(
                        "default_via {via} is {why}: what leaves the VPC gets ICMP unreachable \
                         until a gateway VM's NIC with `forwarding: true` holds it; the network \
                         keeps serving"
                    ),
                ),
                Some(to) => (
                    Reason::RouteViaNic,
                    format!(
                        "route to {to} goes via {via}, {why}: not routed (a VM routes for others \
                         only with `forwarding: true`; what it forwards would be dropped as \
                         spoofed); the network keeps serving"
                    ),
                ),
            };
            rejections.push(reject(reason, detail).at(entry(), Some(id.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::model::{
        Limits, LocalNics, MacAddr, Serving,
        fixtures::{NoBudget, doc, reasons, sub},
        revalidate, validate,
    };

    const GW_VM: &str = "02:00:00:00:0a:fe";

    /// VPC prod: blue (10.10.0.0/24) with a gateway VM at .254, green (10.20.0.0/24); red
    /// alone with blue's subnet.
    fn vpcs() -> serde_json::Value {
        json!({
            "networks": [
                {"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                 "vpc": "prod", "default_via": "10.10.0.254",
                 "routes": [{"to": "192.168.0.0/16", "via": "10.10.0.254"}]},
                {"id": "green", "vni": 1003, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1",
                 "vpc": "prod"},
                {"id": "red", "vni": 1002, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1"}
            ],
            "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
            "nics": [
                {"mac": "02:00:00:00:0a:01", "network": "blue", "ip": "10.10.0.11", "node": "hv-1", "interface": "tap1"},
                {"mac": GW_VM, "network": "blue", "ip": "10.10.0.254", "node": "hv-2", "forwarding": true},
                {"mac": "02:00:00:00:0c:01", "network": "green", "ip": "10.20.0.11", "node": "hv-2"},
                {"mac": "02:00:00:00:0b:01", "network": "red", "ip": "10.10.0.11", "node": "hv-1", "interface": "tap2"}
            ]
        })
    }

    fn good() -> Model {
        let v = validate(&doc(vpcs()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        v.model
    }

    #[test]
    fn a_vpc_document_is_accepted() {
        let m = good();
        assert_eq!(m.networks["blue"].vpc.as_deref(), Some("prod"));
        assert_eq!(
            m.networks["blue"].default_via,
            Some(Ipv4Addr::new(10, 10, 0, 254))
        );
        assert!(m.nics[&GW_VM.parse::<MacAddr>().unwrap()].forwarding);
    }

    #[test]
    fn a_bad_vpc_name_rejects_its_network_alone() {
        let serving = good();
        for bad in [
            json!(""),
            json!("prod vpc"),
            json!("x".repeat(65)),
            json!("é"),
            json!(7),
        ] {
            let mut d = vpcs();
            d["networks"][1]["vpc"] = bad.clone();
            let v = validate(
                &doc(d.clone()),
                Some(&serving),
                "hv-1",
                &Limits::default(),
                &NoBudget,
            );
            let want = if bad.is_string() {
                Reason::InvalidVpc
            } else {
                Reason::InvalidField
            };
            assert_eq!(reasons(&v), vec![("networks[1]".into(), want)], "{bad}");
            assert!(v.rejections[0].kept_last_good, "{bad}");
            assert_eq!(v.model, serving, "{bad}: green keeps its last good version");
            // New: green goes with its NIC; the rest serves.
            let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![
                    ("networks[1]".into(), want),
                    ("nics[2]".into(), Reason::UnknownNetwork)
                ]
            );
            assert_eq!(v.model.networks.len(), 2);
        }
    }

    #[test]
    fn overlapping_networks_of_one_vpc_the_serving_one_keeps_its_place() {
        let serving = good();
        // A newcomer in prod with a subnet inside blue's, named before it.
        let mut d = vpcs();
        d["networks"].as_array_mut().unwrap().push(
            json!({"id": "aqua", "vni": 1004, "subnet": "10.10.0.128/25", "gateway": "10.10.0.129", "vpc": "prod"}),
        );
        d["nics"].as_array_mut().unwrap().push(
            json!({"mac": "02:00:00:00:0d:01", "network": "aqua", "ip": "10.10.0.140", "node": "hv-1", "interface": "tap4"}),
        );
        let v = validate(
            &doc(d.clone()),
            Some(&serving),
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![
                ("networks".into(), Reason::VpcOverlap),
                ("nics[4]".into(), Reason::UnknownNetwork)
            ]
        );
        let r = &v.rejections[0];
        assert_eq!(r.key.as_deref(), Some("aqua"));
        assert!(
            r.detail.contains("10.10.0.128/25") && r.detail.contains("network blue"),
            "{}",
            r.detail
        );
        assert_eq!(v.model, serving, "nothing else changed");
        // Nothing serving: the first by id (aqua) keeps it, blue loses.
        let v = validate(&doc(d.clone()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.model.networks.contains_key("aqua"));
        assert!(!v.model.networks.contains_key("blue"));
        // aqua validated alone against the serving model (the etcd source): the same.
        let networks = BTreeSet::from(["aqua".to_owned()]);
        let part = revalidate(
            &sub(&d, &["aqua"]),
            &networks,
            &BTreeSet::new(),
            Serving {
                model: &serving,
                local: &LocalNics::of(&serving, "hv-1"),
            },
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert_eq!(part.validated.model, serving);
        assert_eq!(
            part.validated
                .rejections
                .iter()
                .map(|r| r.reason)
                .collect::<Vec<_>>(),
            [Reason::VpcOverlap, Reason::UnknownNetwork]
        );
        // blue, serving, moves onto green's subnet: green serving unchanged keeps it, blue
        // keeps its version serving now.
        let mut moved = vpcs();
        moved["networks"][0]["subnet"] = json!("10.20.0.0/16");
        moved["networks"][0]["gateway"] = json!("10.20.1.1");
        moved["networks"][0]["default_via"] = json!("10.20.1.254");
        moved["networks"][0]["routes"] = json!([]);
        let v = validate(
            &doc(moved),
            Some(&serving),
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert_eq!(reasons(&v), vec![("networks".into(), Reason::VpcOverlap)]);
        assert_eq!(v.rejections[0].key.as_deref(), Some("blue"));
        assert!(v.rejections[0].kept_last_good);
        assert_eq!(v.model, serving);
        // In another VPC, or none, the same subnet is fine (red has blue's).
        d["networks"][3]["vpc"] = json!("dev");
        let v = validate(
            &doc(d),
            Some(&serving),
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn a_default_via_the_router_or_outside_the_subnet_rejects_the_network() {
        let serving = good();
        for (via, why) in [
            ("10.20.0.254", "outside subnet"),
            ("10.10.0.1", "the gateway"),
            ("10.10.0.255", "broadcast"),
            ("10.10.0.0", "network or broadcast"),
        ] {
            let mut d = vpcs();
            d["networks"][0]["default_via"] = json!(via);
            let v = validate(
                &doc(d),
                Some(&serving),
                "hv-1",
                &Limits::default(),
                &NoBudget,
            );
            assert_eq!(
                reasons(&v),
                vec![("networks[0]".into(), Reason::DefaultViaInvalid)],
                "{via}"
            );
            assert!(
                v.rejections[0].detail.contains(why),
                "{}",
                v.rejections[0].detail
            );
            assert!(v.rejections[0].kept_last_good);
            assert_eq!(v.model, serving);
        }
        let mut d = vpcs();
        d["networks"][0]["default_via"] = json!("gw");
        let v = validate(
            &doc(d),
            Some(&serving),
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![("networks[0]".into(), Reason::InvalidAddress)]
        );
    }

    /// The via reasons of `v`, as (key, reason), and whether the network serves.
    fn via_rejections(v: &crate::model::Validated) -> Vec<(String, Reason)> {
        v.rejections
            .iter()
            .map(|r| (r.key.clone().unwrap_or_default(), r.reason))
            .collect()
    }

    #[test]
    fn a_via_that_is_no_forwarding_nic_costs_only_itself() {
        // The gateway VM's NIC without forwarding: blue serves, its default_via and route are
        // refused with their reasons.
        let mut d = vpcs();
        d["nics"][1]["forwarding"] = json!(false);
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            via_rejections(&v),
            [
                ("blue".into(), Reason::DefaultViaNotForwarding),
                ("blue".into(), Reason::RouteViaNic)
            ]
        );
        assert!(
            v.rejections
                .iter()
                .all(|r| r.entry == "networks[0]" && !r.kept_last_good)
        );
        assert!(
            v.rejections[0].detail.contains(GW_VM),
            "{}",
            v.rejections[0].detail
        );
        assert_eq!(v.model.networks.len(), 3);
        assert_eq!(v.model.nics.len(), 4);
        // A default_via no NIC holds: the same, named so.
        let mut d = vpcs();
        d["networks"][0]["default_via"] = json!("10.10.0.77");
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            via_rejections(&v),
            [("blue".into(), Reason::DefaultViaNotForwarding)]
        );
        assert!(v.rejections[0].detail.contains("no NIC"));
        assert_eq!(v.model.networks.len(), 3);
    }

    /// The gateway VM's NIC losing `forwarding`, or going, as the etcd source delivers it
    /// (blue validated again): blue keeps serving, its default_via and route are refused, as a
    /// whole validation says; the flag back, the rejections go.
    #[test]
    fn a_gateway_nic_changing_refuses_the_vias_that_named_it() {
        let serving = good();
        let local = LocalNics::of(&serving, "hv-1");
        let blue = BTreeSet::from(["blue".to_owned()]);
        let old = serving.nics_by_network().remove("blue").unwrap();
        let again = |d: &serde_json::Value| {
            revalidate(
                &sub(d, &["blue"]),
                &blue,
                &old,
                Serving {
                    model: &serving,
                    local: &local,
                },
                "hv-1",
                &Limits::default(),
                &NoBudget,
            )
        };
        let mut flipped = vpcs();
        flipped["nics"][1]["forwarding"] = json!(false);
        let mut gone = vpcs();
        gone["nics"].as_array_mut().unwrap().remove(1);
        for (d, want) in [
            (
                flipped,
                vec![
                    ("blue".to_owned(), Reason::DefaultViaNotForwarding),
                    ("blue".to_owned(), Reason::RouteViaNic),
                ],
            ),
            // Gone: its route's via is no NIC's any more, which refuses blue's new version
            // (the same) and keeps its last good version, whose default_via is refused.
            (
                gone,
                vec![
                    ("blue".to_owned(), Reason::RouteViaUnowned),
                    ("blue".to_owned(), Reason::DefaultViaNotForwarding),
                ],
            ),
        ] {
            let part = again(&d);
            let full = validate(
                &doc(d.clone()),
                Some(&serving),
                "hv-1",
                &Limits::default(),
                &NoBudget,
            );
            assert_eq!(part.validated.model, full.model);
            assert_eq!(via_rejections(&part.validated), want);
            assert_eq!(via_rejections(&full), want);
            assert_eq!(
                part.validated.model.networks, serving.networks,
                "blue serves"
            );
        }
        let part = again(&vpcs());
        assert!(part.validated.rejections.is_empty());
        assert_eq!(part.validated.model, serving);
    }
}
