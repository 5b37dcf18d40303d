//! Cutting a model to what the data plane holds ([`Capacity`]): whole nodes and whole networks,
//! in a stable order, so that none is half-present and the same document against the same
//! serving model always keeps the same ones.
//!
//! What serves now goes first: nodes and networks serving unchanged keep their place (they fit
//! together before), then the others by name. A network that grows past what is left is
//! rejected whole, with its NICs, rather than a few of its NICs at random.

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;

use super::{
    Capacity, Model, Network, Node,
    reasons::{Reason, Rejection},
};

/// The entries of each kind a network, or a VPC, takes on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    bindings: usize,
    fdb: usize,
    arp: usize,
    vnis: usize,
    routes: usize,
    forwarders: usize,
}

impl Usage {
    fn plus(self, o: Usage) -> Usage {
        Usage {
            bindings: self.bindings + o.bindings,
            fdb: self.fdb + o.fdb,
            arp: self.arp + o.arp,
            vnis: self.vnis + o.vnis,
            routes: self.routes + o.routes,
            forwarders: self.forwarders + o.forwarders,
        }
    }

    /// The first map that `self` overflows, with its size.
    fn over(self, cap: &Capacity) -> Option<(&'static str, usize)> {
        [
            ("bindings", self.bindings, cap.bindings),
            ("FDB", self.fdb, cap.fdb),
            ("ARP", self.arp, cap.arp),
            ("VNI", self.vnis, cap.vnis),
            ("ROUTES", self.routes, cap.routes),
            ("FORWARDERS", self.forwarders, cap.forwarders),
        ]
        .into_iter()
        .find(|(_, used, size)| used > size)
        .map(|(map, _, size)| (map, size))
    }

    fn of(self, map: &str) -> usize {
        match map {
            "bindings" => self.bindings,
            "FDB" => self.fdb,
            "ARP" => self.arp,
            "VNI" => self.vnis,
            "ROUTES" => self.routes,
            _ => self.forwarders,
        }
    }
}

/// The VPC of a network as capacity counts it: the named one, or the network alone.
fn vpc_of(id: &str, n: &Network) -> (bool, String) {
    match &n.vpc {
        Some(v) => (true, v.clone()),
        None => (false, id.to_owned()),
    }
}

/// The routing entries of a network: its VPC's `k` subnets and gateways, its routes and its
/// `default_via` (counted whether they are routed or not: a bound that a flag cannot change).
fn own_routes(n: &Network) -> usize {
    n.routes.len() + usize::from(n.default_via.is_some())
}

/// Keeps at most `cap.vteps` nodes besides `this_node`: those serving unchanged first, then by
/// name; rejects the others.
pub(super) fn fit_nodes(
    nodes: &mut OrdMap<String, Node>,
    prev: &Model,
    this_node: &str,
    cap: &Capacity,
    rejections: &mut Vec<Rejection>,
) {
    let others = nodes.len() - usize::from(nodes.contains_key(this_node));
    if others <= cap.vteps {
        return;
    }
    let mut order: Vec<(bool, String)> = nodes
        .iter()
        .filter(|(name, _)| name.as_str() != this_node)
        .map(|(name, n)| (prev.nodes.get(name) != Some(n), name.clone()))
        .collect();
    order.sort();
    for (_, name) in order.into_iter().skip(cap.vteps) {
        nodes.remove(&name);
        rejections.push(Rejection {
            entry: "nodes".into(),
            key: Some(name),
            reason: Reason::OverCapacity,
            detail: format!(
                "the VTEP map holds {} nodes besides this one and {others} are listed \
                 (kept: those serving unchanged, then by name)",
                cap.vteps
            ),
            kept_last_good: false,
        });
    }
}

/// Keeps the networks this node carries (every network of each VPC it has a NIC in) while
/// their entries fit `cap`, a VPC at a time: those serving unchanged first, then by name;
/// rejects the others' networks with NICs here whole (the network and its NICs), so that the
/// VPC is not carried. Returns the ids of the networks rejected. `local_nics` counts this
/// node's NICs in the model, asked only when every NIC is more than the bindings map holds;
/// `None` when they cannot be more than in `prev` (which fits), so they need no counting.
pub(super) fn fit_networks(
    model: &mut Model,
    prev: &Model,
    this_node: &str,
    cap: &Capacity,
    local_nics: impl FnOnce(&Model) -> Option<usize>,
    rejections: &mut Vec<Rejection>,
) -> BTreeSet<String> {
    // Bounds that hold whatever the node: every NIC and network counted, every VPC's tables,
    // every network with every node as a forwarder; and this node's NICs, counted without
    // grouping them (a host serves far fewer than its networks hold).
    let (nics, nets) = (model.nics.len(), model.networks.len());
    let mut sizes: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut routes = 0usize;
    for (id, n) in &model.networks {
        *sizes.entry(vpc_of(id, n)).or_default() += 1;
        routes = routes.saturating_add(own_routes(n));
    }
    for k in sizes.values() {
        routes = routes.saturating_add(k.saturating_mul(2 * k));
    }
    if nets <= cap.vnis
        && nics <= cap.fdb
        && nics.saturating_add(nets) <= cap.arp
        && routes <= cap.routes
        && nets.saturating_mul(model.nodes.len()) <= cap.forwarders
        && (nics <= cap.bindings || local_nics(model).is_none_or(|n| n <= cap.bindings))
    {
        return BTreeSet::new();
    }
    let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut forwarders: BTreeMap<(bool, String), BTreeSet<&str>> = BTreeMap::new();
    for nic in model.nics.values() {
        let u = usage.entry(&nic.network).or_default();
        u.fdb += 1;
        u.arp += 1;
        u.bindings += usize::from(*nic.node == *this_node);
        if nic.forwarding
            && *nic.node != *this_node
            && let Some(n) = model.networks.get(&*nic.network)
        {
            forwarders
                .entry(vpc_of(&nic.network, n))
                .or_default()
                .insert(&nic.node);
        }
    }
    // Each network has a VNI and a gateway; its VPC's tables are counted by VPC below.
    let mut groups: BTreeMap<(bool, String), (Usage, Vec<&str>)> = BTreeMap::new();
    for (id, n) in &model.networks {
        let mut u = usage.get(id.as_str()).copied().unwrap_or_default();
        u.vnis = 1;
        u.arp += 1;
        u.routes = own_routes(n);
        let g = groups.entry(vpc_of(id, n)).or_default();
        g.0 = g.0.plus(u);
        g.1.push(id);
    }
    // Only the VPCs with a NIC here take entries.
    groups.retain(|_, (u, _)| u.bindings > 0);
    for (key, (u, ids)) in groups.iter_mut() {
        let k = ids.len();
        u.routes += 2 * k * k;
        u.forwarders = k * forwarders.get(key).map_or(0, BTreeSet::len);
    }
    let total = groups
        .values()
        .fold(Usage::default(), |a, (u, _)| a.plus(*u));
    if total.over(cap).is_none() {
        return BTreeSet::new();
    }
    let unchanged = unchanged_networks(model, prev);
    let mut order: Vec<(bool, &(bool, String))> = groups
        .iter()
        .map(|(key, (_, ids))| (!ids.iter().all(|id| unchanged.contains(*id)), key))
        .collect();
    order.sort();
    let mut used = Usage::default();
    let mut out: Vec<(String, Usage, &'static str, usize, Usage)> = Vec::new();
    for (_, key) in order {
        let (need, ids) = &groups[key];
        match used.plus(*need).over(cap) {
            None => used = used.plus(*need),
            Some((map, size)) => {
                // Its networks with NICs here go: then nothing of the VPC is carried.
                for id in ids {
                    if usage.get(id).is_some_and(|u| u.bindings > 0) {
                        out.push(((*id).to_owned(), *need, map, size, used));
                    }
                }
            }
        }
    }
    let mut removed = BTreeSet::new();
    for (id, need, map, size, used_then) in out {
        let vpc = model.networks.get(&id).and_then(|n| n.vpc.clone());
        model.networks.remove(&id);
        let macs: Vec<_> = model
            .nics
            .iter()
            .filter(|(_, n)| *n.network == *id)
            .map(|(m, _)| *m)
            .collect();
        for m in macs {
            model.nics.remove(&m);
        }
        let whose = match &vpc {
            Some(v) => format!("the {} networks of its vpc {v}", need.vnis),
            None => "its".into(),
        };
        rejections.push(Rejection {
            entry: "networks".into(),
            key: Some(id.clone()),
            reason: Reason::OverCapacity,
            detail: format!(
                "{whose} {} NICs ({} on this node) do not fit: the {map} map holds {size} entries \
                 and {} are taken by networks kept before it (kept first: networks serving \
                 unchanged, then by id); none of its NICs is served here",
                need.fdb,
                need.bindings,
                used_then.of(map)
            ),
            kept_last_good: false,
        });
        removed.insert(id);
    }
    removed
}

/// The networks whose entry and NICs are as `prev` has them.
fn unchanged_networks(model: &Model, prev: &Model) -> BTreeSet<String> {
    let mut same: BTreeMap<&str, (bool, usize)> = model
        .networks
        .iter()
        .map(|(id, n)| (id.as_str(), (prev.networks.get(id) == Some(n), 0)))
        .collect();
    for (mac, nic) in &model.nics {
        if let Some((s, count)) = same.get_mut(&*nic.network) {
            *s &= prev.nics.get(mac) == Some(nic);
            *count += 1;
        }
    }
    // As many NICs as before, each as before: none left either.
    let mut before: BTreeMap<&str, usize> = BTreeMap::new();
    for nic in prev.nics.values() {
        *before.entry(&nic.network).or_default() += 1;
    }
    same.into_iter()
        .filter(|(id, (s, count))| *s && before.get(id).copied().unwrap_or(0) == *count)
        .map(|(id, _)| id.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    /// What checking a model of 100,000 NICs against the maps costs, when it fits (every
    /// validation, partial ones included, pays it).
    #[test]
    fn checking_a_large_model_that_fits_is_cheap() {
        let mut nets = Vec::new();
        let mut nics = Vec::new();
        for i in 0..1000 {
            nets.push(json!({"id": format!("n{i}"), "vni": 10 + i, "subnet": format!("10.{}.{}.0/24", i / 256, i % 256), "gateway": format!("10.{}.{}.1", i / 256, i % 256)}));
            for j in 0..100 {
                let node = if j == 0 {
                    "hv-1".to_owned()
                } else {
                    format!("hv-{}", 2 + j % 50)
                };
                nics.push(json!({"mac": format!("02:00:00:{:02x}:{:02x}:{j:02x}", i / 256, i % 256), "network": format!("n{i}"),
                    "ip": format!("10.{}.{}.{}", i / 256, i % 256, 10 + j), "node": node, "interface": format!("tap{i}")}));
            }
        }
        let nodes: Vec<_> = (1..=51)
            .map(|i| json!({"name": format!("hv-{i}"), "vtep": format!("198.18.0.{i}")}))
            .collect();
        let d = doc(json!({"networks": nets, "nodes": nodes, "nics": nics}));
        let mut m = validate(&d, None, "hv-1", &Limits::default(), &NoBudget).model;
        assert_eq!(m.nics.len(), 100_000);
        let cap = Capacity {
            bindings: 16_384,
            fdb: 262_144,
            arp: 262_144,
            vnis: 16_384,
            vteps: 65_536,
            routes: 262_144,
            forwarders: 65_536,
        };
        let prev = m.clone();
        let t = std::time::Instant::now();
        let mut rejections = Vec::new();
        for _ in 0..10 {
            let local = |m: &Model| Some(m.nics.values().filter(|n| &*n.node == "hv-1").count());
            assert!(fit_networks(&mut m, &prev, "hv-1", &cap, local, &mut rejections).is_empty());
        }
        eprintln!("fit_networks at 100,000 NICs: {:?} each", t.elapsed() / 10);
        assert!(rejections.is_empty());
    }

    use serde_json::json;

    use super::*;
    use crate::model::{
        Limits, LocalNics, MacAddr, Serving,
        fixtures::{NoBudget, doc},
        revalidate, validate,
    };

    /// `n` networks `net<i>` of `per` NICs each, all on hv-1, each NIC on its own tap.
    fn cloud(n: usize, per: usize) -> serde_json::Value {
        let mut networks = Vec::new();
        let mut nics = Vec::new();
        for i in 0..n {
            networks.push(json!({"id": format!("net{i}"), "vni": 100 + i, "subnet": format!("10.{i}.0.0/24"), "gateway": format!("10.{i}.0.1")}));
            for j in 0..per {
                nics.push(json!({"mac": format!("02:00:00:00:{i:02x}:{j:02x}"), "network": format!("net{i}"),
                    "ip": format!("10.{i}.0.{}", 10 + j), "node": "hv-1", "interface": format!("tap{i}")}));
            }
        }
        json!({"networks": networks, "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}, {"name": "hv-3", "vtep": "198.18.0.3"}], "nics": nics})
    }

    fn limits(cap: Capacity) -> Limits {
        Limits {
            capacity: cap,
            ..Limits::default()
        }
    }

    fn kept(m: &Model) -> Vec<String> {
        m.networks.keys().cloned().collect()
    }

    #[test]
    fn networks_that_do_not_fit_are_rejected_whole_in_a_stable_order() {
        // Three networks of 4 NICs: 4 bindings, 4 FDB entries, 5 ARP answers each.
        let cap = Capacity {
            fdb: 10,
            ..Capacity::UNBOUNDED
        };
        let v = validate(&doc(cloud(3, 4)), None, "hv-1", &limits(cap), &NoBudget);
        assert_eq!(kept(&v.model), ["net0", "net1"]);
        assert_eq!(v.model.nics.len(), 8, "net2 has no NIC left in the model");
        assert_eq!(v.rejections.len(), 1);
        let r = &v.rejections[0];
        assert_eq!(
            (r.reason, r.key.as_deref()),
            (Reason::OverCapacity, Some("net2"))
        );
        assert!(
            r.detail
                .contains("the FDB map holds 10 entries and 8 are taken"),
            "{}",
            r.detail
        );
        // The same document again: the same outcome.
        let again = validate(
            &doc(cloud(3, 4)),
            Some(&v.model),
            "hv-1",
            &limits(cap),
            &NoBudget,
        );
        assert_eq!(again.model, v.model);

        for (cap, want) in [
            (
                Capacity {
                    bindings: 8,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1"][..],
            ),
            (
                Capacity {
                    arp: 14,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1"],
            ),
            (
                Capacity {
                    vnis: 1,
                    ..Capacity::UNBOUNDED
                },
                &["net0"],
            ),
            (
                Capacity {
                    fdb: 3,
                    ..Capacity::UNBOUNDED
                },
                &[],
            ),
            (
                Capacity {
                    fdb: 12,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1", "net2"],
            ),
        ] {
            let v = validate(&doc(cloud(3, 4)), None, "hv-1", &limits(cap), &NoBudget);
            assert_eq!(kept(&v.model), want, "{cap:?}");
            assert!(
                v.rejections
                    .iter()
                    .all(|r| r.reason == Reason::OverCapacity)
            );
        }
    }

    #[test]
    fn what_serves_unchanged_keeps_its_place() {
        let cap = Capacity {
            fdb: 10,
            ..Capacity::UNBOUNDED
        };
        // net1 and net2 serve; net0 comes later: it does not push them out.
        let mut d = cloud(3, 4);
        d["networks"].as_array_mut().unwrap().remove(0);
        d["nics"].as_array_mut().unwrap().drain(0..4);
        let serving = validate(&doc(d), None, "hv-1", &limits(cap), &NoBudget).model;
        assert_eq!(kept(&serving), ["net1", "net2"]);
        let v = validate(
            &doc(cloud(3, 4)),
            Some(&serving),
            "hv-1",
            &limits(cap),
            &NoBudget,
        );
        assert_eq!(kept(&v.model), ["net1", "net2"]);
        assert_eq!(v.rejections[0].key.as_deref(), Some("net0"));

        // A serving network that grows past the room left is the one rejected.
        let mut d = cloud(3, 4);
        d["nics"].as_array_mut().unwrap().drain(0..4);
        d["networks"].as_array_mut().unwrap().remove(0);
        let mut grown = d.clone();
        grown["nics"].as_array_mut().unwrap().push(json!({"mac": "02:00:00:00:01:09", "network": "net1", "ip": "10.1.0.99", "node": "hv-2"}));
        grown["nics"].as_array_mut().unwrap().push(json!({"mac": "02:00:00:00:01:0a", "network": "net1", "ip": "10.1.0.98", "node": "hv-2"}));
        let cap = Capacity {
            fdb: 9,
            ..Capacity::UNBOUNDED
        };
        let serving = validate(&doc(d), None, "hv-1", &limits(cap), &NoBudget).model;
        let v = validate(
            &doc(grown.clone()),
            Some(&serving),
            "hv-1",
            &limits(cap),
            &NoBudget,
        );
        assert_eq!(kept(&v.model), ["net2"]);

        // Revalidating the network that grew gives the same as validating everything.
        let networks = BTreeSet::from(["net1".to_owned()]);
        let old: BTreeSet<MacAddr> = serving.nics_by_network().remove("net1").unwrap();
        let sub = crate::model::fixtures::sub(&grown, &["net1"]);
        let part = revalidate(
            &sub,
            &networks,
            &old,
            Serving {
                model: &serving,
                local: &LocalNics::of(&serving, "hv-1"),
            },
            "hv-1",
            &limits(cap),
            &NoBudget,
        );
        assert_eq!(part.validated.model, v.model);
        assert!(part.nics_of["net1"].is_empty());
        assert_eq!(
            part.validated
                .rejections
                .iter()
                .map(|r| r.reason)
                .collect::<Vec<_>>(),
            [Reason::OverCapacity]
        );
    }

    /// A host carries every network of a VPC it has a NIC in: the VPC is counted whole (its
    /// remote networks' NICs, its tables), and cut whole, by its networks with NICs here.
    #[test]
    fn a_vpc_is_counted_and_cut_whole() {
        // net0 and net1 alone; net2 (a NIC here) and net3 (a NIC on hv-2) in vpc b.
        let mut d = cloud(4, 1);
        d["networks"][2]["vpc"] = json!("b");
        d["networks"][3]["vpc"] = json!("b");
        d["nics"][3]["node"] = json!("hv-2");
        // Routes: 2 + 2 for the lone networks, 2 networks x (2 subnets + 2 gateways) for b.
        for (cap, want) in [
            (
                Capacity {
                    routes: 12,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1", "net2", "net3"][..],
            ),
            (
                Capacity {
                    routes: 11,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1", "net3"][..],
            ),
            // FDB: b takes net3's remote NIC too.
            (
                Capacity {
                    fdb: 3,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1", "net3"][..],
            ),
            (
                Capacity {
                    fdb: 4,
                    ..Capacity::UNBOUNDED
                },
                &["net0", "net1", "net2", "net3"][..],
            ),
        ] {
            let v = validate(&doc(d.clone()), None, "hv-1", &limits(cap), &NoBudget);
            assert_eq!(kept(&v.model), want, "{cap:?}");
            if want.len() == 3 {
                assert_eq!(v.rejections.len(), 1);
                let r = &v.rejections[0];
                assert_eq!(
                    (r.reason, r.key.as_deref()),
                    (Reason::OverCapacity, Some("net2"))
                );
                assert!(r.detail.contains("vpc b"), "{}", r.detail);
            }
        }
        // A forwarding NIC on hv-2: each network of b has hv-2 as a forwarder.
        d["nics"][3]["forwarding"] = json!(true);
        let cap = Capacity {
            forwarders: 1,
            ..Capacity::UNBOUNDED
        };
        let v = validate(&doc(d), None, "hv-1", &limits(cap), &NoBudget);
        assert_eq!(kept(&v.model), ["net0", "net1", "net3"]);
    }

    #[test]
    fn nodes_past_the_vtep_map_are_rejected_with_their_nics() {
        let cap = Capacity {
            vteps: 1,
            ..Capacity::UNBOUNDED
        };
        let mut d = cloud(1, 2);
        d["nics"][1]["node"] = json!("hv-3");
        let v = validate(&doc(d), None, "hv-1", &limits(cap), &NoBudget);
        assert_eq!(
            v.model.nodes.keys().cloned().collect::<Vec<_>>(),
            ["hv-1", "hv-2"],
            "this node, and the first other by name"
        );
        let reasons: Vec<_> = v
            .rejections
            .iter()
            .map(|r| (r.reason, r.key.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                (Reason::UnknownNode, Some("02:00:00:00:00:01".into())),
                (Reason::OverCapacity, Some("hv-3".into())),
            ]
        );
    }
}
