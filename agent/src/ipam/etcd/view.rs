//! What this node knows of IPAM: the ranges it watches, the entries they hold, and the
//! partitions (networks) a change touches, from which the sub-document of those networks or
//! the whole document is cut.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{
    keys::{Layout, key_safe, split_key},
    store::Listed,
};
use crate::model::{self, MacAddr, RawDocument, RawEntry};

/// Listed entries stored into the view between two yields to the runtime.
const FILL_SLICE: usize = 1_000;

/// What one watch covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Range {
    /// This node's NICs: which networks it needs.
    Own,
    /// Every node (their VTEPs).
    Nodes,
    /// One network's own key.
    Network(String),
    /// One network's NICs.
    NetworkNics(String),
    /// Every network's entry, for the VPC each names: a host follows the other networks of
    /// the VPCs it has NICs in (their entries are kept by [`Range::Network`]).
    Catalog,
}

impl Range {
    /// The key and whether it is a prefix.
    pub(super) fn key(&self, l: &Layout, node: &str) -> (String, bool) {
        match self {
            Range::Own => (l.by_node(node), true),
            Range::Nodes => (l.nodes(), true),
            Range::Network(id) => (l.network(id), false),
            Range::NetworkNics(id) => (l.by_network(id), true),
            Range::Catalog => (l.networks(), true),
        }
    }
}

/// What this node knows of IPAM: only what it needs. At 100,000 NICs the view is most of the
/// agent's memory, so an entry is its JSON and two shared names: its key's directory (one per
/// range) and its id, which is also its key here.
#[derive(Clone, Debug, Default)]
pub(super) struct View {
    own: BTreeMap<Arc<str>, RawEntry>,
    nodes: BTreeMap<Arc<str>, RawEntry>,
    pub(super) networks: BTreeMap<String, RawEntry>,
    nics: BTreeMap<String, BTreeMap<Arc<str>, RawEntry>>,
    /// How many networks' NIC indexes hold a key naming each MAC (keys that are not a MAC are
    /// not counted). Which networks hold a MAC is asked at every change of a NIC; with the
    /// count, the networks the change names answer it, rather than every network's index.
    listed: HashMap<MacAddr, u32>,
    /// The network each of this node's NICs names, read once when the NIC changes.
    own_networks: BTreeMap<Arc<str>, Option<String>>,
    /// The interface each of this node's NICs names, likewise: one interface carries one
    /// network, which couples the networks of the NICs naming it.
    own_interfaces: BTreeMap<Arc<str>, String>,
    /// The directories of the keys held, one copy each.
    dirs: HashSet<Arc<str>>,
    /// The VPC each network's entry names (by the catalog of every network): which networks
    /// share a VPC with this node's.
    vpcs: BTreeMap<String, String>,
}

impl View {
    /// The networks this node carries: those it has NICs in, and the other networks of their
    /// VPCs.
    pub(super) fn wanted(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .own_networks
            .values()
            .flatten()
            .filter(|n| key_safe(n))
            .cloned()
            .collect();
        let vpcs: BTreeSet<&String> = out.iter().filter_map(|n| self.vpcs.get(n)).collect();
        if !vpcs.is_empty() {
            let members: Vec<String> = self
                .vpcs
                .iter()
                .filter(|(id, v)| vpcs.contains(v) && key_safe(id))
                .map(|(id, _)| id.clone())
                .collect();
            out.extend(members);
        }
        out
    }

    /// The entry for `key` that `make` makes of its directory and id, its names shared with
    /// the view's.
    fn entry(
        &mut self,
        key: &str,
        make: impl FnOnce(Arc<str>, Arc<str>) -> RawEntry,
    ) -> (Arc<str>, RawEntry) {
        let (dir, id) = split_key(key);
        let dir = match self.dirs.get(dir) {
            Some(d) => d.clone(),
            None => {
                let d: Arc<str> = Arc::from(dir);
                self.dirs.insert(d.clone());
                d
            }
        };
        let id: Arc<str> = Arc::from(id);
        (id.clone(), make(dir, id))
    }

    /// Adds listed keys of `range`, a slice at a time: a list can hold 100,000 NICs, and the
    /// runtime must not stall while they are stored.
    pub(super) async fn fill(&mut self, range: &Range, kvs: Vec<(String, Listed)>) {
        for chunk in kvs.chunks(FILL_SLICE) {
            for (key, value) in chunk {
                self.set(range, key, Some(value));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Applies one put (`Some`) or delete (`None`); whether anything changed.
    pub(super) fn apply(&mut self, range: &Range, key: &str, value: Option<&[u8]>) -> bool {
        // A value over the entry bound is not kept, only its size.
        let entry = value.map(|v| self.entry(key, |dir, id| RawEntry::at(dir, id, v)));
        self.put(range, key, entry)
    }

    /// Stores one listed key (`Some`) or forgets it (`None`); whether anything changed.
    pub(super) fn set(&mut self, range: &Range, key: &str, value: Option<&Listed>) -> bool {
        let entry = value.map(|v| {
            self.entry(key, |dir, id| match v {
                Listed::Value(json) => RawEntry::at(dir, id, json),
                Listed::Oversize(size) => RawEntry::oversized(dir, id, *size),
            })
        });
        self.put(range, key, entry)
    }

    fn put(&mut self, range: &Range, key: &str, entry: Option<(Arc<str>, RawEntry)>) -> bool {
        let name = split_key(key).1;
        let map = match range {
            Range::Catalog => {
                let vpc = entry.and_then(|(_, e)| e.field("vpc"));
                let was = match vpc {
                    Some(v) => self.vpcs.insert(name.to_owned(), v.clone()) != Some(v),
                    None => self.vpcs.remove(name).is_some(),
                };
                return was;
            }
            Range::Network(id) => {
                return match entry {
                    Some((_, e)) => {
                        self.networks.insert(id.clone(), e);
                        true
                    }
                    None => self.networks.remove(id).is_some(),
                };
            }
            Range::Own => {
                match &entry {
                    Some((id, e)) => {
                        self.own_networks.insert(id.clone(), e.field("network"));
                        match e.field("interface") {
                            Some(i) => self.own_interfaces.insert(id.clone(), i),
                            None => self.own_interfaces.remove(name),
                        };
                    }
                    None => {
                        self.own_networks.remove(name);
                        self.own_interfaces.remove(name);
                    }
                }
                &mut self.own
            }
            Range::Nodes => &mut self.nodes,
            Range::NetworkNics(id) => {
                let map = self.nics.entry(id.clone()).or_default();
                return match entry {
                    Some((id, e)) => {
                        if map.insert(id, e).is_none() {
                            count(&mut self.listed, name, true);
                        }
                        true
                    }
                    None => {
                        let gone = map.remove(name).is_some();
                        if gone {
                            count(&mut self.listed, name, false);
                        }
                        gone
                    }
                };
            }
        };
        match entry {
            Some((id, e)) => {
                map.insert(id, e);
                true
            }
            None => map.remove(name).is_some(),
        }
    }

    /// Starts a network's NIC index (empty until its NICs are stored).
    pub(super) fn add_network(&mut self, id: &str) {
        if !self.nics.contains_key(id) {
            self.nics.insert(id.to_owned(), BTreeMap::new());
        }
    }

    /// Forgets a network and its NICs: this node no longer has a NIC in it.
    pub(super) fn forget_network(&mut self, id: &str) {
        self.networks.remove(id);
        for mac in self.nics.remove(id).unwrap_or_default().keys() {
            count(&mut self.listed, mac, false);
        }
    }

    /// The networks whose NIC index holds `mac`, but for those of `known`: the count of them
    /// says whether `known` holds them all, and only when it does not is every index asked.
    fn holding_mac(&self, mac: &str, known: &BTreeSet<String>) -> Vec<String> {
        let listed = mac
            .parse::<MacAddr>()
            .ok()
            .map(|m| self.listed.get(&m).copied().unwrap_or(0));
        let holds = |id: &String| self.nics.get(id).is_some_and(|m| m.contains_key(mac));
        let here = known.iter().filter(|id| holds(id)).count();
        if listed.is_some_and(|n| n as usize == here) {
            return Vec::new();
        }
        model::holding_mac(mac, &self.nics)
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect()
    }

    /// The keys held, as (directory, id): shared names, nothing copied.
    pub(super) fn keys(&self) -> BTreeSet<(Arc<str>, Arc<str>)> {
        self.own
            .values()
            .chain(self.nodes.values())
            .chain(self.networks.values())
            .chain(self.nics.values().flat_map(BTreeMap::values))
            .filter_map(|e| Some((e.dir.clone()?, e.id.clone()?)))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.own.len()
            + self.nodes.len()
            + self.networks.len()
            + self.nics.values().map(BTreeMap::len).sum::<usize>()
    }

    /// The networks (partitions) whose validation depends on the entry at `key` as the view
    /// holds it now; `None` when only a complete document can say (a node changed, or one of
    /// this node's NICs does not name its network).
    pub(super) fn affected(&self, range: &Range, key: &str) -> Option<BTreeSet<String>> {
        let name = split_key(key).1;
        let mut out = BTreeSet::new();
        match range {
            Range::Nodes => return None,
            // The networks followed are marked by their own watch, the ones a change makes
            // followed by following them.
            Range::Catalog => return Some(out),
            Range::Own => {
                if self.own.contains_key(name) {
                    let network = self.own_networks.get(name).cloned().flatten();
                    out.insert(network.filter(|n| key_safe(n))?);
                }
                // The networks of this node's NICs on the same interface: which one holds it
                // may change.
                if let Some(iface) = self.own_interfaces.get(name) {
                    for (mac, i) in &self.own_interfaces {
                        if i == iface
                            && let Some(Some(n)) = self.own_networks.get(mac)
                            && key_safe(n)
                        {
                            out.insert(n.clone());
                        }
                    }
                }
            }
            Range::Network(id) => {
                out.insert(id.clone());
                // Networks sharing its VNI: which one holds it may change.
                if let Some(entry) = self.networks.get(id) {
                    out.extend(model::sharing_vni(entry, &self.networks).cloned());
                    // Networks of its VPC it overlaps: which one keeps its place may change.
                    out.extend(model::overlapping_in_vpc(entry, &self.networks).cloned());
                }
                return Some(out);
            }
            Range::NetworkNics(id) => {
                out.insert(id.clone());
            }
        }
        // Networks holding the same MAC: which one gets it may change.
        let more = self.holding_mac(name, &out);
        out.extend(more);
        Some(out)
    }

    /// The part of [`View::document`] that `networks` depend on: their entries, their NICs,
    /// and the nodes those NICs and this node are on.
    pub(super) fn sub_document(&self, networks: &BTreeSet<String>, this_node: &str) -> RawDocument {
        let all = self.wanted();
        let wanted: BTreeSet<&String> = networks.iter().filter(|id| all.contains(*id)).collect();
        let mut nics: BTreeMap<&str, &RawEntry> = BTreeMap::new();
        for id in &wanted {
            for (mac, e) in self.nics.get(*id).into_iter().flatten() {
                if !self.own.contains_key(mac) {
                    nics.insert(mac, e);
                }
            }
        }
        for (mac, e) in &self.own {
            let network = self.own_networks.get(mac).and_then(Option::as_ref);
            if network.is_some_and(|n| networks.contains(n)) {
                nics.insert(mac, e);
            }
        }
        let mut on: BTreeSet<String> = nics.values().filter_map(|e| e.field("node")).collect();
        on.insert(this_node.to_owned());
        RawDocument {
            networks: wanted
                .iter()
                .filter_map(|id| self.networks.get(*id).cloned())
                .collect(),
            // Looked up by name (the nodes of a network's NICs are a few of a thousand), in
            // the view's order.
            nodes: on
                .iter()
                .filter_map(|name| self.nodes.get(name.as_str()).cloned())
                .collect(),
            nics: nics.into_values().cloned().collect(),
        }
    }

    /// The document this view amounts to. A NIC of this node comes from its by-node key, the
    /// authority for what runs here; the others from their network's index.
    pub(super) fn document(&self) -> RawDocument {
        let wanted = self.wanted();
        let mut nics: BTreeMap<&str, &RawEntry> = BTreeMap::new();
        for (network, entries) in &self.nics {
            if wanted.contains(network) {
                for (mac, e) in entries {
                    nics.insert(mac, e);
                }
            }
        }
        for (mac, e) in &self.own {
            nics.insert(mac, e);
        }
        RawDocument {
            networks: self.networks.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            nics: nics.into_values().cloned().collect(),
        }
    }
}

/// Counts one more (`up`) or one fewer network index holding a key naming `mac`.
fn count(listed: &mut HashMap<MacAddr, u32>, mac: &str, up: bool) {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return;
    };
    if up {
        *listed.entry(mac).or_default() += 1;
    } else if let Some(n) = listed.get_mut(&mac) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            listed.remove(&mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host follows the other networks of the VPCs it has NICs in, by the catalog of every
    /// network's entry, and lets them go when they leave the VPC.
    #[test]
    fn the_view_follows_the_vpcs_of_this_nodes_networks() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let nic = br#"{"mac":"02:00:00:00:00:01","network":"blue","ip":"10.0.0.5","node":"hv-1"}"#;
        v.apply(
            &Range::Own,
            &format!("{}02:00:00:00:00:01", l.by_node("hv-1")),
            Some(nic),
        );
        let catalog = |v: &mut View, id: &str, vpc: Option<&str>| {
            let json = match vpc {
                Some(p) => format!(r#"{{"id":"{id}","vpc":"{p}"}}"#),
                None => format!(r#"{{"id":"{id}"}}"#),
            };
            v.apply(&Range::Catalog, &l.network(id), Some(json.as_bytes()))
        };
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(!catalog(&mut v, "blue", None), "no VPC: nothing changes");
        catalog(&mut v, "green", Some("prod"));
        catalog(&mut v, "red", Some("dev"));
        assert_eq!(v.wanted(), set(&["blue"]));
        assert!(catalog(&mut v, "blue", Some("prod")));
        assert_eq!(v.wanted(), set(&["blue", "green"]));
        // Only the VPC is read: another change of the entry changes nothing.
        assert!(!v.apply(
            &Range::Catalog,
            &l.network("green"),
            Some(br#"{"id":"green","vpc":"prod","mtu":1400}"#)
        ));
        // The catalog marks nothing dirty itself: following a network does.
        assert_eq!(
            v.affected(&Range::Catalog, &l.network("green")),
            Some(BTreeSet::new())
        );
        catalog(&mut v, "green", Some("dev"));
        assert_eq!(v.wanted(), set(&["blue"]));
        v.apply(&Range::Catalog, &l.network("blue"), None);
        catalog(&mut v, "green", Some("prod"));
        assert_eq!(v.wanted(), set(&["blue"]), "blue's VPC is no longer known");
    }

    #[test]
    fn the_view_follows_the_networks_of_this_nodes_nics() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let nic = br#"{"mac":"02:00:00:00:00:01","network":"blue","ip":"10.0.0.5","node":"hv-1"}"#;
        v.apply(
            &Range::Own,
            &format!("{}02:00:00:00:00:01", l.by_node("hv-1")),
            Some(nic),
        );
        assert_eq!(v.wanted(), BTreeSet::from(["blue".to_owned()]));
        v.apply(
            &Range::NetworkNics("blue".into()),
            &format!("{}02:00:00:00:00:01", l.by_network("blue")),
            Some(nic),
        );
        v.apply(
            &Range::NetworkNics("blue".into()),
            &format!("{}02:00:00:00:00:02", l.by_network("blue")),
            Some(b"{not json"),
        );
        let doc = v.document();
        assert_eq!(doc.nics.len(), 2);
        let bad = doc
            .nics
            .iter()
            .find(|e| serde_json::from_slice::<serde_json::Value>(&e.json).is_err())
            .unwrap();
        assert_eq!(bad.id.as_deref(), Some("02:00:00:00:00:02"));
        assert!(v.apply(
            &Range::Own,
            &format!("{}02:00:00:00:00:01", l.by_node("hv-1")),
            None
        ));
        assert!(v.wanted().is_empty());
    }

    /// Which networks hold a MAC is answered from the count of them when the change names them
    /// all, and from every index when it does not: the same answer either way.
    #[test]
    fn a_mac_in_two_networks_couples_them_until_one_lets_it_go() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let idx = |net: &str, mac: &str| format!("{}{mac}", l.by_network(net));
        let nic = |mac: &str, net: &str| {
            format!(r#"{{"mac":"{mac}","network":"{net}","ip":"10.0.0.5","node":"hv-2"}}"#)
        };
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let (m1, m1_upper) = ("02:00:00:00:00:0a", "02:00:00:00:00:0A");
        let (blue, red, green) = (
            Range::NetworkNics("blue".into()),
            Range::NetworkNics("red".into()),
            Range::NetworkNics("green".into()),
        );
        for r in [&blue, &red, &green] {
            let Range::NetworkNics(id) = r else {
                unreachable!()
            };
            v.add_network(id);
        }
        assert_eq!(v.affected(&blue, &idx("blue", m1)), Some(set(&["blue"])));
        v.apply(&blue, &idx("blue", m1), Some(nic(m1, "blue").as_bytes()));
        assert_eq!(v.affected(&blue, &idx("blue", m1)), Some(set(&["blue"])));
        // red lists it too: a change of it in either network touches both.
        assert_eq!(
            v.affected(&red, &idx("red", m1)),
            Some(set(&["blue", "red"]))
        );
        v.apply(&red, &idx("red", m1), Some(nic(m1, "red").as_bytes()));
        assert_eq!(
            v.affected(&blue, &idx("blue", m1)),
            Some(set(&["blue", "red"]))
        );
        // Written again: still two indexes hold it.
        v.apply(&red, &idx("red", m1), Some(nic(m1, "red").as_bytes()));
        assert_eq!(
            v.affected(&blue, &idx("blue", m1)),
            Some(set(&["blue", "red"]))
        );
        // A key naming the same MAC in other letters is another key: green holds that one.
        v.apply(
            &green,
            &idx("green", m1_upper),
            Some(nic(m1_upper, "green").as_bytes()),
        );
        assert_eq!(
            v.affected(&blue, &idx("blue", m1)),
            Some(set(&["blue", "red"]))
        );
        assert_eq!(
            v.affected(&green, &idx("green", m1_upper)),
            Some(set(&["green"]))
        );
        v.apply(&red, &idx("red", m1), None);
        assert_eq!(v.affected(&blue, &idx("blue", m1)), Some(set(&["blue"])));
        // A network forgotten takes its NICs along.
        v.apply(&red, &idx("red", m1), Some(nic(m1, "red").as_bytes()));
        v.forget_network("red");
        assert_eq!(v.affected(&blue, &idx("blue", m1)), Some(set(&["blue"])));
        v.forget_network("green");
        assert_eq!(v.listed.len(), 1, "{:?}", v.listed);
        // A key that is not a MAC is never counted: every index is asked.
        v.apply(&red, &idx("red", "x"), Some(b"{}"));
        assert_eq!(
            v.affected(&blue, &idx("blue", "x")),
            Some(set(&["blue", "red"]))
        );
    }

    #[test]
    fn a_change_dirties_only_the_networks_it_touches() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let own = |mac: &str| format!("{}{mac}", l.by_node("hv-1"));
        let idx = |net: &str, mac: &str| format!("{}{mac}", l.by_network(net));
        let nic = |mac: &str, net: &str, node: &str| {
            format!(r#"{{"mac":"{mac}","network":"{net}","ip":"10.0.0.5","node":"{node}"}}"#)
        };
        let net = |id: &str, vni: u32| {
            format!(r#"{{"id":"{id}","vni":{vni},"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}}"#)
        };
        let (m1, m2, m3) = (
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
            "02:00:00:00:00:03",
        );
        v.apply(
            &Range::Own,
            &own(m1),
            Some(nic(m1, "blue", "hv-1").as_bytes()),
        );
        v.apply(
            &Range::Own,
            &own(m2),
            Some(nic(m2, "red", "hv-1").as_bytes()),
        );
        for (n, vni) in [("blue", 1), ("red", 2)] {
            v.apply(
                &Range::Network(n.into()),
                &l.network(n),
                Some(net(n, vni).as_bytes()),
            );
        }
        let blue = Range::NetworkNics("blue".into());
        v.apply(
            &blue,
            &idx("blue", m1),
            Some(nic(m1, "blue", "hv-1").as_bytes()),
        );
        v.apply(
            &blue,
            &idx("blue", m3),
            Some(nic(m3, "blue", "hv-2").as_bytes()),
        );
        v.apply(
            &Range::Nodes,
            &l.node("hv-2"),
            Some(br#"{"name":"hv-2","vtep":"198.18.0.2"}"#),
        );
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        // A remote NIC of blue: blue only.
        assert_eq!(v.affected(&blue, &idx("blue", m3)), Some(set(&["blue"])));
        // A network's entry: it and the networks sharing its VNI.
        assert_eq!(
            v.affected(&Range::Network("red".into()), &l.network("red")),
            Some(set(&["red"]))
        );
        v.apply(
            &Range::Network("red".into()),
            &l.network("red"),
            Some(net("red", 1).as_bytes()),
        );
        assert_eq!(
            v.affected(&Range::Network("red".into()), &l.network("red")),
            Some(set(&["blue", "red"]))
        );
        // One of this node's NICs: its network, and the networks indexing the same MAC.
        assert_eq!(v.affected(&Range::Own, &own(m1)), Some(set(&["blue"])));
        // Another of this node's NICs, on m1's interface: both networks.
        let on = |mac: &str, net: &str, iface: &str| {
            format!(
                r#"{{"mac":"{mac}","network":"{net}","ip":"10.0.0.6","node":"hv-1","interface":"{iface}"}}"#
            )
        };
        v.apply(
            &Range::Own,
            &own(m1),
            Some(on(m1, "blue", "tap1").as_bytes()),
        );
        v.apply(
            &Range::Own,
            &own(m2),
            Some(on(m2, "red", "tap1").as_bytes()),
        );
        assert_eq!(
            v.affected(&Range::Own, &own(m2)),
            Some(set(&["blue", "red"]))
        );
        v.apply(
            &Range::Own,
            &own(m2),
            Some(on(m2, "red", "tap2").as_bytes()),
        );
        assert_eq!(v.affected(&Range::Own, &own(m2)), Some(set(&["red"])));
        v.apply(
            &Range::Own,
            &own(m2),
            Some(nic(m2, "red", "hv-1").as_bytes()),
        );
        // A node: only a complete document can say.
        assert_eq!(v.affected(&Range::Nodes, &l.node("hv-2")), None);
        v.apply(&Range::Own, &own(m2), Some(b"{broken"));
        assert_eq!(v.affected(&Range::Own, &own(m2)), None);

        // The sub-document of blue: its network, its NICs (this node's from by-node), the
        // nodes they are on.
        let sub = v.sub_document(&set(&["blue"]), "hv-1");
        assert_eq!(sub.networks.len(), 1);
        assert_eq!(sub.nics.len(), 2);
        assert_eq!(sub.nodes.len(), 1);
        assert_eq!(sub.nics[0].origin(), Some(own(m1)));
    }
}
