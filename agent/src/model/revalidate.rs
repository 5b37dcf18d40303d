//! Validation of some networks again, merged into the model serving now: what the etcd source
//! asks for when entries of a few networks change.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use imbl::OrdMap;

use super::{
    Limits, MacAddr, Model, Network, Nic, OptionsBudget, RawDocument, Validated, capacity,
    reasons::{Reason, Rejection},
    routing, validate,
};

/// The outcome of validating some networks again.
#[derive(Debug)]
pub struct Revalidated {
    pub validated: Validated,
    /// The MACs each of those networks holds now.
    pub nics_of: BTreeMap<String, BTreeSet<MacAddr>>,
}

/// The model serving now, with the index of it that [`revalidate()`] needs to take time
/// proportional to the networks validated again, not to the cloud.
#[derive(Clone, Copy, Debug)]
pub struct Serving<'a> {
    pub model: &'a Model,
    /// This node's NICs in `model`.
    pub local: &'a LocalNics,
}

/// This node's NICs in a model, by the interface each is on: what [`revalidate()`] reads
/// rather than every NIC of the model. More MACs than that do no harm (each is looked up in
/// the model). A copy costs nothing: the index is persistent, like the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalNics(OrdMap<Option<String>, BTreeSet<MacAddr>>);

impl LocalNics {
    /// `node`'s NICs in `model`, read from every NIC.
    pub fn of(model: &Model, node: &str) -> Self {
        let mut out = Self::default();
        for (mac, nic) in model.nics.iter().filter(|(_, n)| *n.node == *node) {
            out.0.entry(nic.interface.clone()).or_default().insert(*mac);
        }
        out
    }

    /// The index after a change of the NICs `old` (as `prev` has them) to `new` (as `next`
    /// has them) from `prev`, which this indexes, to `next`.
    pub fn changed<'a>(
        &self,
        prev: &Model,
        old: impl IntoIterator<Item = &'a MacAddr>,
        next: &Model,
        new: impl IntoIterator<Item = &'a MacAddr>,
        node: &str,
    ) -> Self {
        let mut out = self.clone();
        for mac in old {
            let Some(nic) = prev.nics.get(mac) else {
                continue;
            };
            if let Some(set) = out.0.get_mut(&nic.interface) {
                set.remove(mac);
                if set.is_empty() {
                    out.0.remove(&nic.interface);
                }
            }
        }
        for mac in new {
            if let Some(nic) = next.nics.get(mac)
                && *nic.node == *node
            {
                out.0.entry(nic.interface.clone()).or_default().insert(*mac);
            }
        }
        out
    }

    /// The MACs of the NICs on `interface`.
    fn on(&self, interface: &str) -> impl Iterator<Item = &MacAddr> {
        self.0
            .get(&Some(interface.to_owned()))
            .into_iter()
            .flatten()
    }

    fn all(&self) -> impl Iterator<Item = &MacAddr> {
        self.0.values().flatten()
    }
}

/// Validates some networks again and merges the result into the model serving now: every
/// other network and its NICs stay as they are. `sub` holds those networks' entries, all their
/// NICs and every node; `old` the MACs the networks held before. A network or NIC that
/// conflicts with an entry of another network (one VNI, one MAC) loses: the other serves now.
/// The same rules as [`validate()`], in time proportional to the networks, not to the cloud.
pub fn revalidate<B: OptionsBudget>(
    sub: &RawDocument,
    networks: &BTreeSet<String>,
    old: &BTreeSet<MacAddr>,
    serving: Serving<'_>,
    this_node: &str,
    limits: &Limits,
    budget: &B,
) -> Revalidated {
    let prev = serving.model;
    let part = validate(sub, Some(prev), this_node, limits, budget);
    let mut model = prev.clone();
    for id in networks {
        model.networks.remove(id);
    }
    for mac in old {
        model.nics.remove(mac);
    }
    let mut rejections = without_nodes(part.rejections, sub);
    // Judged again below, on the merged model.
    rejections.retain(|r| !routing::VIA_REASONS.contains(&r.reason));
    merge_networks(&mut model, part.model.networks, networks, &mut rejections);
    let mut nics_of = merge_nics(
        &mut model,
        part.model.nics,
        networks,
        this_node,
        serving.local,
        &mut rejections,
    );
    // What serves unchanged keeps its place: only these networks can be cut. This node's NICs
    // are counted again only when these networks hold more of them than before.
    let on_node = |m: &Model, mac: &MacAddr| m.nics.get(mac).is_some_and(|n| *n.node == *this_node);
    let grew = nics_of
        .values()
        .flatten()
        .filter(|mac| on_node(&model, mac))
        .count()
        > old.iter().filter(|mac| on_node(prev, mac)).count();
    // Counted from the index: the NICs that served here and those of these networks.
    let local_nics = |m: &Model| {
        grew.then(|| {
            let mut macs: BTreeSet<&MacAddr> = serving.local.all().collect();
            macs.extend(nics_of.values().flatten());
            macs.into_iter().filter(|mac| on_node(m, mac)).count()
        })
    };
    let cut = capacity::fit_networks(
        &mut model,
        prev,
        this_node,
        &limits.capacity,
        local_nics,
        &mut rejections,
    );
    for id in cut {
        if let Some(set) = nics_of.get_mut(&id) {
            set.clear();
        }
    }
    let nics = |id: &str| {
        nics_of
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|mac| model.nics.get(mac))
            .collect()
    };
    routing::check_vias(&model, networks, &nics, &sub.networks, &mut rejections);
    Revalidated {
        validated: Validated { model, rejections },
        nics_of,
    }
}

/// Nodes are judged by complete documents only: what the sub-document says of them stands
/// neither way.
fn without_nodes(rejections: Vec<Rejection>, sub: &RawDocument) -> Vec<Rejection> {
    let node_labels: BTreeSet<String> = sub
        .nodes
        .iter()
        .enumerate()
        .map(|(i, e)| e.label("nodes", i))
        .collect();
    rejections
        .into_iter()
        .filter(|r| !node_labels.contains(&r.entry))
        .collect()
}

/// Puts `validated`'s entries of `networks` into `model`, but for one whose VNI another network
/// of `model` holds: that one serves now.
fn merge_networks(
    model: &mut Model,
    validated: OrdMap<String, Network>,
    networks: &BTreeSet<String>,
    rejections: &mut Vec<Rejection>,
) {
    // The holders of the VNIs these networks claim, not of every VNI: a change in one network
    // would copy a thousand ids.
    let claimed: HashSet<u32> = validated
        .iter()
        .filter(|(id, _)| networks.contains(*id))
        .map(|(_, n)| n.vni)
        .collect();
    let vnis: HashMap<u32, String> = model
        .networks
        .iter()
        .filter(|(_, n)| claimed.contains(&n.vni))
        .map(|(id, n)| (n.vni, id.clone()))
        .collect();
    for (id, n) in validated {
        if !networks.contains(&id) {
            continue;
        }
        if let Some(other) = vnis.get(&n.vni) {
            rejections.push(Rejection {
                entry: "networks".into(),
                key: Some(id),
                reason: Reason::DuplicateVni,
                detail: format!("vni {} is used by network {other}", n.vni),
                kept_last_good: false,
            });
            continue;
        }
        // Another network of its VPC serving now, and overlapping it, keeps its place.
        if let Some(detail) = routing::overlaps_serving(model, &n, networks) {
            rejections.push(Rejection {
                entry: "networks".into(),
                key: Some(id),
                reason: Reason::VpcOverlap,
                detail,
                kept_last_good: false,
            });
            continue;
        }
        model.networks.insert(id, n);
    }
}

/// Puts `validated`'s NICs of `networks` into `model`, but for one whose network was rejected,
/// whose node `model` does not hold, whose MAC a NIC of another network holds, or whose
/// interface on this node a NIC of another network is on; returns the MACs each of `networks`
/// holds now. `local`: this node's NICs in the model serving now.
fn merge_nics(
    model: &mut Model,
    validated: OrdMap<MacAddr, Nic>,
    networks: &BTreeSet<String>,
    this_node: &str,
    local: &LocalNics,
    rejections: &mut Vec<Rejection>,
) -> BTreeMap<String, BTreeSet<MacAddr>> {
    let mut nics_of: BTreeMap<String, BTreeSet<MacAddr>> = networks
        .iter()
        .map(|n| (n.clone(), BTreeSet::new()))
        .collect();
    for (mac, nic) in validated {
        let Some(set) = nics_of.get_mut(&*nic.network) else {
            continue;
        };
        let refused = if !model.networks.contains_key(&*nic.network) {
            Some((
                Reason::UnknownNetwork,
                format!("network {:?} was rejected", nic.network),
            ))
        } else if !model.nodes.contains_key(&*nic.node) {
            // Nodes are validated with the complete document only: a NIC must be on one it
            // kept.
            Some((
                Reason::UnknownNode,
                format!("node {:?} is not a valid node", nic.node),
            ))
        } else if let Some(holder) = model.nics.get(&mac) {
            Some((
                Reason::DuplicateMac,
                format!("a NIC of network {} has the same MAC", holder.network),
            ))
        } else if *nic.node == *this_node
            && let Some(iface) = &nic.interface
            && let Some(other) = network_on(model, local, this_node, iface)
            && other != nic.network
        {
            // Validated together with that network, it would have lost to it too.
            Some((
                Reason::InterfaceShared,
                format!(
                    "interface {iface} carries NICs of network {other}: one interface, one network"
                ),
            ))
        } else {
            None
        };
        if let Some((reason, detail)) = refused {
            rejections.push(Rejection {
                entry: "nics".into(),
                key: Some(mac.to_string()),
                reason,
                detail,
                kept_last_good: false,
            });
            continue;
        }
        set.insert(mac);
        model.nics.insert(mac, nic);
    }
    nics_of
}

/// The network of `node`'s NICs on `interface` in `model` (one network an interface), read
/// from the NICs `local` names. Those are all that matter: the others `merge_nics` put in from
/// the networks validated again, which validation already kept to one network an interface.
fn network_on(model: &Model, local: &LocalNics, node: &str, interface: &str) -> Option<Arc<str>> {
    local
        .on(interface)
        .filter_map(|mac| model.nics.get(mac))
        .find(|n| *n.node == *node && n.interface.as_deref() == Some(interface))
        .map(|n| n.network.clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fixtures::{NoBudget, base, doc, dual, sub};

    #[test]
    fn revalidating_changed_networks_matches_a_full_validation() {
        let limits = Limits::default();
        let prev = validate(&doc(base()), None, "hv-1", &limits, &NoBudget).model;
        let mut d = base();
        // blue: one NIC moves, one is added, one goes; its MTU changes. red untouched.
        d["networks"][0]["mtu"] = json!(1400);
        let nics = d["nics"].as_array_mut().unwrap();
        nics[0]["ip"] = json!("10.10.0.50");
        nics.remove(2);
        nics.push(json!({"mac": "02:00:00:00:00:04", "network": "blue", "ip": "10.10.0.13", "node": "hv-2"}));
        // A MAC already held by red, and a NIC on a node that does not exist: both rejected.
        nics.push(json!({"mac": "02:00:00:00:00:02", "network": "blue", "ip": "10.10.0.14", "node": "hv-2"}));
        nics.push(json!({"mac": "02:00:00:00:00:05", "network": "blue", "ip": "10.10.0.15", "node": "hv-9"}));
        let full = validate(&doc(d.clone()), Some(&prev), "hv-1", &limits, &NoBudget);
        let networks = BTreeSet::from(["blue".to_owned()]);
        let old = prev.nics_by_network().remove("blue").unwrap_or_default();
        let part = revalidate(
            &sub(&d, &["blue"]),
            &networks,
            &old,
            Serving {
                model: &prev,
                local: &LocalNics::of(&prev, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        assert_eq!(part.validated.model, full.model);
        let mut got: Vec<Reason> = part.validated.rejections.iter().map(|r| r.reason).collect();
        got.sort();
        assert_eq!(got, vec![Reason::DuplicateMac, Reason::UnknownNode]);
        assert_eq!(part.nics_of["blue"], full.model.nics_by_network()["blue"]);

        // A network taking another's VNI is rejected; the holder keeps serving.
        let mut d2 = d.clone();
        d2["networks"][0]["vni"] = json!(1002);
        let part = revalidate(
            &sub(&d2, &["blue"]),
            &networks,
            &part.nics_of["blue"],
            Serving {
                model: &part.validated.model,
                local: &LocalNics::of(&part.validated.model, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        assert_eq!(part.validated.model.networks.len(), 1);
        assert!(part.validated.model.networks.contains_key("red"));
        assert!(
            part.validated
                .rejections
                .iter()
                .any(|r| r.reason == Reason::DuplicateVni)
        );
    }

    /// The index of this node's NICs, brought along a change, is the index of the new model.
    #[test]
    fn the_index_of_this_nodes_nics_follows_a_change() {
        let limits = Limits::default();
        let prev = validate(&doc(base()), None, "hv-1", &limits, &NoBudget).model;
        let local = LocalNics::of(&prev, "hv-1");
        let mut d = base();
        let nics = d["nics"].as_array_mut().unwrap();
        // blue: its NIC here moves to another tap, one comes here on its old tap, and its NIC
        // on hv-2 comes here without an interface (rejected: it stays on hv-2).
        nics[0]["interface"] = json!("tap9");
        nics[2]["node"] = json!("hv-1");
        nics.push(json!({"mac": "02:00:00:00:00:06", "network": "blue", "ip": "10.10.0.16", "node": "hv-1", "interface": "tap1"}));
        let networks = BTreeSet::from(["blue".to_owned()]);
        let old = prev.nics_by_network().remove("blue").unwrap_or_default();
        let part = revalidate(
            &sub(&d, &["blue"]),
            &networks,
            &old,
            Serving {
                model: &prev,
                local: &local,
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        let next = &part.validated.model;
        assert_eq!(next.nics.len(), 4, "{:?}", part.validated.rejections);
        let changed = local.changed(&prev, &old, next, part.nics_of.values().flatten(), "hv-1");
        assert_eq!(changed, LocalNics::of(next, "hv-1"));
        assert_eq!(changed.on("tap1").count(), 1);
        assert_eq!(changed.all().count(), 3);
    }

    #[test]
    fn a_sub_document_does_not_judge_nodes() {
        let limits = Limits::default();
        let prev = validate(&doc(base()), None, "hv-1", &limits, &NoBudget).model;
        let mut d = base();
        d["nodes"][1]["vtep"] = json!("x");
        let networks = BTreeSet::from(["blue".to_owned()]);
        let old = prev.nics_by_network().remove("blue").unwrap_or_default();
        let part = revalidate(
            &sub(&d, &["blue"]),
            &networks,
            &old,
            Serving {
                model: &prev,
                local: &LocalNics::of(&prev, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        assert!(
            part.validated.rejections.is_empty(),
            "{:?}",
            part.validated.rejections
        );
        assert_eq!(part.validated.model, prev);
    }

    /// IPv6 changes confined to blue: a partial revalidation of blue reaches the verdicts of
    /// the whole document.
    #[test]
    fn revalidating_ipv6_changes_matches_a_full_validation() {
        let limits = Limits::default();
        let prev = validate(&doc(dual()), None, "hv-1", &limits, &NoBudget).model;
        let networks = BTreeSet::from(["blue".to_owned()]);
        let old = prev.nics_by_network().remove("blue").unwrap_or_default();
        fn extra(last: u8, ip6: &str) -> serde_json::Value {
            json!({"mac": format!("02:00:00:00:01:{last:02x}"), "network": "blue",
                   "ip": format!("10.10.0.{last}"), "ip6": ip6, "node": "hv-2"})
        }
        let changes: [fn(&mut serde_json::Value); 5] = [
            // A NIC's ip6 moves, one goes, hostile ones come.
            |d| {
                d["nics"][0]["ip6"] = json!("fd00:10:10::51");
                d["nics"][2].as_object_mut().unwrap().remove("ip6");
                let nics = d["nics"].as_array_mut().unwrap();
                nics.push(extra(31, "fd00:10:10::51"));
                nics.push(extra(32, "fd00:10:10::"));
                nics.push(extra(33, "fd00:20::33"));
                nics.push(extra(34, "fd00:10:10::34"));
            },
            // The prefix moves: the NICs still in the old one are rejected.
            |d| {
                d["networks"][0]["subnet6"] = json!("fd00:99::/64");
            },
            // A bad prefix: blue keeps its last good version.
            |d| {
                d["networks"][0]["subnet6"] = json!("fd00::/48");
            },
            // IPv6 goes from blue: its NICs' ip6 have nowhere to be.
            |d| {
                d["networks"][0].as_object_mut().unwrap().remove("subnet6");
            },
            // The MTU under IPv6's minimum.
            |d| {
                d["networks"][0]["mtu"] = json!(1000);
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut d = dual();
            change(&mut d);
            let full = validate(&doc(d.clone()), Some(&prev), "hv-1", &limits, &NoBudget);
            let part = revalidate(
                &sub(&d, &["blue"]),
                &networks,
                &old,
                Serving {
                    model: &prev,
                    local: &LocalNics::of(&prev, "hv-1"),
                },
                "hv-1",
                &limits,
                &NoBudget,
            );
            assert_eq!(part.validated.model, full.model, "change {i}");
            let verdicts = |rs: &[Rejection]| {
                let mut v: Vec<(Option<String>, Reason, bool)> = rs
                    .iter()
                    .map(|r| (r.key.clone(), r.reason, r.kept_last_good))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                verdicts(&part.validated.rejections),
                verdicts(&full.rejections),
                "change {i}"
            );
            assert!(!full.rejections.is_empty(), "change {i} is judged");
        }
    }
}
