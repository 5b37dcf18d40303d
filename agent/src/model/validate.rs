//! Validation of a whole document into a [`Model`]: each entry checked on its own, then against
//! the others (one entry per key, one network per VNI, one node per VTEP, references, one NIC
//! per address). A rejected entry keeps its last good version when it had one.

use std::{
    cell::OnceCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use imbl::OrdMap;
use serde::de::DeserializeOwned;

use super::{
    Limits, MacAddr, Model, Network, Nic, Node, RawDocument, RawEntry, capacity,
    checks::{check_network, check_nic, check_node},
    document::FieldKinds,
    reasons::{Reason, Reject, Rejection, reject},
    routing,
};

/// The outcome of validating a document.
#[derive(Debug)]
pub struct Validated {
    pub model: Model,
    pub rejections: Vec<Rejection>,
}

/// Checks that a NIC's DHCP options fit; supplied by the DHCP renderer so the model stays free
/// of wire formats.
pub trait OptionsBudget {
    /// Why options do not fit; its text is the rejection's detail.
    type Error: std::error::Error;

    /// `Err` when the network's and NIC's options do not fit in a reply.
    fn check(&self, network: &Network, nic: &Nic) -> Result<(), Self::Error>;

    /// `Err` when the network's router advertisement (its `dns6` and `search` list) does not
    /// fit what the data plane holds; the network is rejected (`ra_too_long`).
    fn check_ra(&self, network: &Network) -> Result<(), Self::Error> {
        let _ = network;
        Ok(())
    }
}

/// Validates `doc` for node `this_node`. `prev` is the model serving now: rejected entries keep
/// their version from it, and it wins ties between duplicates.
pub fn validate<B: OptionsBudget>(
    doc: &RawDocument,
    prev: Option<&Model>,
    this_node: &str,
    limits: &Limits,
    budget: &B,
) -> Validated {
    let empty = Model::default();
    let prev = prev.unwrap_or(&empty);
    let mut rejections = Vec::new();
    let owners = NicOwners::new(&doc.nics);
    let ra = |n: &Network| {
        budget
            .check_ra(n)
            .map_err(|e| reject(Reason::RaTooLong, e.to_string()))
    };
    let mut networks = accept_keyed(
        &doc.networks,
        &prev.networks,
        limits,
        &owners,
        &ra,
        &mut rejections,
    );
    routing::one_subnet_per_vpc(&mut networks, &prev.networks, &mut rejections);
    let mut nodes = accept_keyed(
        &doc.nodes,
        &prev.nodes,
        limits,
        &owners,
        &|_| Ok(()),
        &mut rejections,
    );
    capacity::fit_nodes(
        &mut nodes,
        prev,
        this_node,
        &limits.capacity,
        &mut rejections,
    );
    let mut model = Model {
        networks,
        nodes,
        nics: OrdMap::new(),
    };
    model.nics = accept_all_nics(
        doc,
        prev,
        &mut model,
        this_node,
        limits,
        budget,
        &mut rejections,
    );
    // A whole document may hold any number of this node's NICs: counted when it matters.
    let local_nics = |m: &Model| Some(m.nics.values().filter(|n| *n.node == *this_node).count());
    capacity::fit_networks(
        &mut model,
        prev,
        this_node,
        &limits.capacity,
        local_nics,
        &mut rejections,
    );
    check_vias(&model, &doc.networks, &mut rejections);
    rejections.sort_by(|a, b| a.entry.cmp(&b.entry));
    Validated { model, rejections }
}

/// The `via`s of every network of `model` against its NICs there.
fn check_vias(model: &Model, raws: &[RawEntry], rejections: &mut Vec<Rejection>) {
    let routed =
        |n: &Network| n.default_via.is_some() || n.routes.iter().any(|r| r.via != n.gateway);
    if !model.networks.values().any(routed) {
        return;
    }
    let mut by_network: HashMap<&str, Vec<&Nic>> = HashMap::new();
    for nic in model.nics.values() {
        if model.networks.get(&*nic.network).is_some_and(routed) {
            by_network.entry(&nic.network).or_default().push(nic);
        }
    }
    let nics = |id: &str| by_network.get(id).cloned().unwrap_or_default();
    routing::check_vias(model, model.networks.keys(), &nics, raws, rejections);
}

/// The NICs of `doc` against the networks and nodes of `model`. A network whose version in
/// `doc` leaves a NIC's options over budget that fit the version serving now is the one at
/// fault: it is rejected and its serving version kept, with every NIC on it, and the NICs are
/// judged again.
fn accept_all_nics<B: OptionsBudget>(
    doc: &RawDocument,
    prev: &Model,
    model: &mut Model,
    this_node: &str,
    limits: &Limits,
    budget: &B,
    rejections: &mut Vec<Rejection>,
) -> OrdMap<MacAddr, Nic> {
    loop {
        let mut round = Vec::new();
        let mut outgrown = Outgrown::new();
        let j = Judge {
            prev,
            model,
            this_node,
            limits,
            budget,
        };
        let (nics, failed) = accept_nics(&doc.nics, &j, &mut outgrown, &mut round);
        let nics = restore_nics(nics, &failed, &j, &mut outgrown, &mut round);
        let reverted = revert_outgrown(doc, prev, model, outgrown, rejections);
        if reverted == 0 {
            // Each round reverts a network to its serving version, which cannot outgrow again:
            // this ends.
            rejections.extend(round);
            let nics = one_nic_per_address(nics, &doc.nics, prev, rejections);
            return one_network_per_interface(nics, &doc.nics, prev, this_node, rejections);
        }
    }
}

/// The networks whose new version outgrew a NIC's options budget: for each, a NIC and why.
type Outgrown = BTreeMap<String, (MacAddr, String)>;

/// What NICs are judged against.
struct Judge<'a, B> {
    prev: &'a Model,
    model: &'a Model,
    this_node: &'a str,
    limits: &'a Limits,
    budget: &'a B,
}

impl<B: OptionsBudget> Judge<'_, B> {
    /// The options of `nic` on `net`; when they do not fit but fit the serving version of the
    /// network, the network is noted in `outgrown`.
    fn options(&self, net: &Network, nic: &Nic, outgrown: &mut Outgrown) -> Result<(), Reject> {
        let Err(e) = self.budget.check(net, nic) else {
            return Ok(());
        };
        if let Some(serving) = self.prev.networks.get(&net.id)
            && serving != net
            && self.budget.check(serving, nic).is_ok()
        {
            outgrown
                .entry(net.id.clone())
                .or_insert_with(|| (nic.mac, e.to_string()));
        }
        Err(reject(Reason::OptionsTooLong, e.to_string()))
    }
}

/// Puts back the serving version of each network of `outgrown`, unless another network holds
/// its VNI now; rejects the new version. Returns how many were put back.
fn revert_outgrown(
    doc: &RawDocument,
    prev: &Model,
    model: &mut Model,
    outgrown: Outgrown,
    rejections: &mut Vec<Rejection>,
) -> usize {
    let mut reverted = 0;
    for (id, (mac, why)) in outgrown {
        let Some(serving) = prev.networks.get(&id) else {
            continue;
        };
        if model
            .networks
            .iter()
            .any(|(other, n)| *other != id && n.vni == serving.vni)
        {
            // Its NICs that do not fit are rejected one by one instead.
            continue;
        }
        model.networks.insert(id.clone(), serving.clone());
        let entry = doc
            .networks
            .iter()
            .enumerate()
            .find(|(_, e)| e.key("id").as_deref() == Some(id.as_str()))
            .map_or_else(|| "networks".into(), |(i, e)| e.label("networks", i));
        let detail = format!(
            "with this version's DHCP options, NIC {mac} (served with the version serving now) \
             would not fit a reply: {why}"
        );
        let mut r = reject(Reason::OptionsTooLong, detail).at(entry, Some(id));
        r.kept_last_good = true;
        rejections.push(r);
        reverted += 1;
    }
    reverted
}

/// A network or a node: an entry with a unique key, checked on its own, and a claim (VNI,
/// VTEP) no other entry of its kind may hold.
trait Keyed: DeserializeOwned + FieldKinds + Clone + PartialEq {
    /// The document's list of them, which names an entry by position (`networks[3]`).
    const LIST: &'static str;
    /// What one of them is called in a rejection's detail.
    const NOUN: &'static str;
    /// The field holding the key.
    const KEY: &'static str;
    /// The field holding the claim.
    const CLAIM: &'static str;
    /// The reason of an entry that loses its claim to another.
    const CLAIMED: Reason;
    type Claim: Copy + Eq + Hash + fmt::Display;

    fn key(&self) -> &str;
    fn claim(&self) -> Self::Claim;
    /// The checks of the entry on its own (`owners` only names what a route goes via).
    fn check(&self, limits: &Limits, owners: &NicOwners<'_>) -> Result<(), Reject>;
}

/// Which NIC of a document holds an address of a network, read from the NIC entries as they
/// are (an entry rejected for another reason still says what IPAM meant). Only a route via an
/// address other than the gateway asks, and the network is refused either way: the answer
/// names the reason, so it couples no network to its NICs' changes. Built on first use.
pub(super) struct NicOwners<'a> {
    nics: &'a [RawEntry],
    index: OnceCell<HashMap<(String, Ipv4Addr), String>>,
}

impl<'a> NicOwners<'a> {
    pub(super) fn new(nics: &'a [RawEntry]) -> Self {
        Self {
            nics,
            index: OnceCell::new(),
        }
    }

    /// The MAC of the NIC holding `ip` in `network`, as its entry writes it.
    pub(super) fn holder(&self, network: &str, ip: Ipv4Addr) -> Option<&str> {
        let index = self.index.get_or_init(|| {
            self.nics
                .iter()
                .filter_map(|e| {
                    let ip = e.field("ip")?.parse().ok()?;
                    Some(((e.field("network")?, ip), e.key("mac")?))
                })
                .collect()
        });
        index.get(&(network.to_owned(), ip)).map(String::as_str)
    }
}

impl Keyed for Network {
    const LIST: &'static str = "networks";
    const NOUN: &'static str = "network";
    const KEY: &'static str = "id";
    const CLAIM: &'static str = "vni";
    const CLAIMED: Reason = Reason::DuplicateVni;
    type Claim = u32;

    fn key(&self) -> &str {
        &self.id
    }

    fn claim(&self) -> u32 {
        self.vni
    }

    fn check(&self, limits: &Limits, owners: &NicOwners<'_>) -> Result<(), Reject> {
        check_network(self, limits, owners)
    }
}

impl Keyed for Node {
    const LIST: &'static str = "nodes";
    const NOUN: &'static str = "node";
    const KEY: &'static str = "name";
    const CLAIM: &'static str = "vtep";
    const CLAIMED: Reason = Reason::DuplicateVtep;
    type Claim = Ipv4Addr;

    fn key(&self) -> &str {
        &self.name
    }

    fn claim(&self) -> Ipv4Addr {
        self.vtep
    }

    fn check(&self, _: &Limits, _: &NicOwners<'_>) -> Result<(), Reject> {
        check_node(self)
    }
}

/// The networks or nodes of a document: each parsed and checked (on its own, then by `fits`,
/// what the data plane must hold of it), one per key (the one serving now, else the first),
/// the last good version of one that fails, one per claim.
fn accept_keyed<T: Keyed>(
    raws: &[RawEntry],
    prev: &OrdMap<String, T>,
    limits: &Limits,
    owners: &NicOwners<'_>,
    fits: &dyn Fn(&T) -> Result<(), Reject>,
    rejections: &mut Vec<Rejection>,
) -> OrdMap<String, T> {
    let mut accepted: Accepted<String, T> = Accepted::new();
    let mut failed = BTreeSet::new();
    for (i, raw) in raws.iter().enumerate() {
        let entry = raw.label(T::LIST, i);
        let parsed = raw.parse::<T>();
        // Without a key an entry has no last good version, and nothing to be a duplicate of.
        if let Ok(v) = &parsed
            && v.key().is_empty()
        {
            let detail = format!("field `{}` is empty", T::KEY);
            rejections.push(reject(Reason::InvalidField, detail).at(entry, None));
            continue;
        }
        match parsed.and_then(|v| v.check(limits, owners).and_then(|()| fits(&v)).map(|()| v)) {
            Ok(v) => {
                let key = v.key().to_owned();
                if let Some((lost, _)) = accepted.insert(key.clone(), i, v, prev.get(&key)) {
                    let detail = format!("another {} has the same {}", T::NOUN, T::KEY);
                    rejections.push(
                        reject(Reason::DuplicateId, detail)
                            .at(raws[lost].label(T::LIST, lost), Some(key)),
                    );
                }
            }
            Err(r) => {
                let key = raw.key(T::KEY);
                failed.extend(key.clone());
                rejections.push(r.at(entry, key));
            }
        }
    }
    let mut out: OrdMap<String, T> = accepted.map.into_iter().map(|(k, (_, v))| (k, v)).collect();
    keep_last_good(&mut out, prev, &failed, rejections);
    one_per_claim(&mut out, prev, rejections);
    out
}

/// Of entries with one claim (two networks with one VNI), the one serving now keeps it, else
/// the first by key; the others are rejected.
fn one_per_claim<T: Keyed>(
    entries: &mut OrdMap<String, T>,
    prev: &OrdMap<String, T>,
    rejections: &mut Vec<Rejection>,
) {
    let mut holders: HashMap<T::Claim, String> = HashMap::new();
    let mut losers = Vec::new();
    for (key, v) in entries.iter() {
        let claim = v.claim();
        let Some(other) = holders.get(&claim) else {
            holders.insert(claim, key.clone());
            continue;
        };
        let this_serving = prev.get(key) == Some(v);
        let other_serving = prev.get(other) == entries.get(other);
        if other_serving || !this_serving {
            losers.push((key.clone(), claim));
        } else {
            losers.push((other.clone(), claim));
            holders.insert(claim, key.clone());
        }
    }
    for (key, claim) in losers {
        entries.remove(&key);
        let detail = format!("{} {claim} is used by another {}", T::CLAIM, T::NOUN);
        rejections.push(reject(T::CLAIMED, detail).at(T::LIST.into(), Some(key)));
    }
}

/// The NICs of a document, each parsed and checked against the accepted networks and nodes
/// of the judge's model, one per MAC (the one serving now, else the first), each with its
/// document index; and the MACs of those that failed.
fn accept_nics<B: OptionsBudget>(
    raws: &[RawEntry],
    j: &Judge<'_, B>,
    outgrown: &mut Outgrown,
    rejections: &mut Vec<Rejection>,
) -> (Vec<(usize, Nic)>, BTreeSet<MacAddr>) {
    let mut accepted: Accepted<MacAddr, Nic> = Accepted::new();
    let mut failed = BTreeSet::new();
    let mut names = Names::default();
    for (i, raw) in raws.iter().enumerate() {
        match check_nic_in(raw, j, outgrown) {
            Ok(mut nic) => {
                names.share(&mut nic);
                let mac = nic.mac;
                if let Some((lost, _)) = accepted.insert(mac, i, nic, j.prev.nics.get(&mac)) {
                    rejections.push(
                        reject(Reason::DuplicateMac, "another NIC has the same MAC")
                            .at(raws[lost].label("nics", lost), Some(mac.to_string())),
                    );
                }
            }
            Err(r) => {
                let key = raw.key("mac");
                failed.extend(key.as_deref().and_then(|k| k.parse::<MacAddr>().ok()));
                rejections.push(r.at(raw.label("nics", i), key));
            }
        }
    }
    (accepted.map.into_values().collect(), failed)
}

/// A NIC parsed, checked on its own, against its network and node, and against the options
/// budget.
fn check_nic_in<B: OptionsBudget>(
    raw: &RawEntry,
    j: &Judge<'_, B>,
    outgrown: &mut Outgrown,
) -> Result<Nic, Reject> {
    let nic: Nic = raw.parse()?;
    let net = j.model.networks.get(&*nic.network).ok_or_else(|| {
        reject(
            Reason::UnknownNetwork,
            format!("network {:?} does not exist", nic.network),
        )
    })?;
    if !j.model.nodes.contains_key(&*nic.node) {
        return Err(reject(
            Reason::UnknownNode,
            format!("node {:?} does not exist", nic.node),
        ));
    }
    check_nic(&nic, net, j.this_node, &j.limits.ports)?;
    j.options(net, &nic, outgrown)?;
    Ok(nic)
}

/// Adds to `nics` the last good version of each NIC of `failed` that no accepted NIC replaces
/// and that still fits the accepted networks and nodes of the judge's model, and the options
/// budget.
fn restore_nics<B: OptionsBudget>(
    mut nics: Vec<(usize, Nic)>,
    failed: &BTreeSet<MacAddr>,
    j: &Judge<'_, B>,
    outgrown: &mut Outgrown,
    rejections: &mut [Rejection],
) -> Vec<(usize, Nic)> {
    for mac in failed {
        if let Some(old) = j.prev.nics.get(mac)
            && !nics.iter().any(|(_, n)| n.mac == *mac)
            && let Some(net) = j.model.networks.get(&*old.network)
            && j.model.nodes.contains_key(&*old.node)
            && check_nic(old, net, j.this_node, &j.limits.ports).is_ok()
            && j.options(net, old, outgrown).is_ok()
        {
            // Not in the document: sorts after every NIC that is.
            nics.push((usize::MAX, old.clone()));
            mark_kept(rejections, &mac.to_string());
        }
    }
    nics
}

/// One address per network, of each family: the NIC serving it now keeps it, else the first in
/// the document. A NIC that loses either address is rejected whole, as it would be with one.
fn one_nic_per_address(
    mut nics: Vec<(usize, Nic)>,
    raws: &[RawEntry],
    prev: &Model,
    rejections: &mut Vec<Rejection>,
) -> Vec<(usize, Nic)> {
    // Keyed once per NIC: the key looks up the serving model.
    nics.sort_by_cached_key(|(i, n)| (prev.nics.get(&n.mac) != Some(n), *i));
    let mut holders: HashMap<(Arc<str>, Ipv4Addr), MacAddr> = HashMap::new();
    let mut holders6: HashMap<(Arc<str>, Ipv6Addr), MacAddr> = HashMap::new();
    let mut out = Vec::with_capacity(nics.len());
    for (i, nic) in nics {
        let taken = holders
            .get(&(nic.network.clone(), nic.ip))
            .map(|holder| {
                format!(
                    "ip {} in network {} is already held by {holder}",
                    nic.ip, nic.network
                )
            })
            .or_else(|| {
                let ip6 = nic.ip6?;
                let holder = holders6.get(&(nic.network.clone(), ip6))?;
                Some(format!(
                    "ip6 {ip6} in network {} is already held by {holder}",
                    nic.network
                ))
            });
        let Some(detail) = taken else {
            holders.insert((nic.network.clone(), nic.ip), nic.mac);
            if let Some(ip6) = nic.ip6 {
                holders6.insert((nic.network.clone(), ip6), nic.mac);
            }
            out.push((i, nic));
            continue;
        };
        rejections.push(
            reject(Reason::DuplicateIp, detail).at(nic_entry(raws, i), Some(nic.mac.to_string())),
        );
    }
    out
}

/// One network per interface of this node (a VM on two networks would bridge their VNIs): the
/// network that holds the interface now keeps it, else the one of the first NIC in the
/// document naming it.
fn one_network_per_interface(
    mut nics: Vec<(usize, Nic)>,
    raws: &[RawEntry],
    prev: &Model,
    this_node: &str,
    rejections: &mut Vec<Rejection>,
) -> OrdMap<MacAddr, Nic> {
    let held_before = |n: &Nic| {
        prev.nics.get(&n.mac).is_some_and(|p| {
            p.network == n.network && p.interface == n.interface && p.node == n.node
        })
    };
    nics.sort_by_cached_key(|(i, n)| (!held_before(n), *i));
    let mut holders: HashMap<String, Arc<str>> = HashMap::new();
    let mut out = OrdMap::new();
    for (i, nic) in nics {
        if *nic.node == *this_node
            && let Some(iface) = &nic.interface
        {
            match holders.get(iface) {
                None => {
                    holders.insert(iface.clone(), nic.network.clone());
                }
                Some(net) if *net == nic.network => {}
                Some(net) => {
                    let detail = format!(
                        "interface {iface} carries NICs of network {net}: one interface, one \
                         network"
                    );
                    rejections.push(
                        reject(Reason::InterfaceShared, detail)
                            .at(nic_entry(raws, i), Some(nic.mac.to_string())),
                    );
                    continue;
                }
            }
        }
        out.insert(nic.mac, nic);
    }
    out
}

/// How a rejection names the NIC at document index `i` (`usize::MAX`: a last good version).
fn nic_entry(raws: &[RawEntry], i: usize) -> String {
    match raws.get(i) {
        Some(raw) => raw.label("nics", i),
        None => "nics".into(),
    }
}

/// Collects accepted entries of one kind, resolving duplicate keys in favour of the version
/// already serving, else the first in the document.
struct Accepted<K: Ord + Clone, V> {
    map: BTreeMap<K, (usize, V)>,
}

impl<K: Ord + Clone, V: PartialEq> Accepted<K, V> {
    fn new() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }

    /// Returns the entry that lost (document index and value), if `key` was already taken.
    fn insert(&mut self, key: K, idx: usize, value: V, prev: Option<&V>) -> Option<(usize, V)> {
        match self.map.get(&key) {
            None => {
                self.map.insert(key, (idx, value));
                None
            }
            Some((_, existing)) if prev != Some(existing) && prev == Some(&value) => {
                self.map.insert(key, (idx, value))
            }
            Some(_) => Some((idx, value)),
        }
    }
}

/// One copy of each network and node name for the NICs that use it.
#[derive(Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn share(&mut self, nic: &mut Nic) {
        for name in [&mut nic.network, &mut nic.node] {
            match self.0.get(&**name) {
                Some(shared) => *name = shared.clone(),
                None => {
                    self.0.insert(name.clone());
                }
            }
        }
    }
}

/// Puts back the last good version of entries that failed to parse or check.
fn keep_last_good<V: Clone>(
    current: &mut OrdMap<String, V>,
    prev: &OrdMap<String, V>,
    failed: &BTreeSet<String>,
    rejections: &mut [Rejection],
) {
    for key in failed {
        if !current.contains_key(key)
            && let Some(old) = prev.get(key)
        {
            current.insert(key.clone(), old.clone());
            mark_kept(rejections, key);
        }
    }
}

fn mark_kept(rejections: &mut [Rejection], key: &str) {
    for r in rejections.iter_mut() {
        if r.key.as_deref() == Some(key) {
            r.kept_last_good = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fixtures::{NoBudget, base, doc, dual, reasons};

    #[test]
    fn accepts_a_good_document_and_same_ip_on_two_networks() {
        let v = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        assert_eq!(v.model.nics.len(), 3);
        assert_eq!(v.model.networks.len(), 2);
    }

    #[test]
    fn rejects_bad_entries_one_by_one() {
        let mut d = base();
        let nics = d["nics"].as_array_mut().unwrap();
        nics.push(json!({"mac": "zz:00:00:00:00:09", "network": "blue", "ip": "10.10.0.20", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:0a", "network": "blue", "ip": "10.99.0.20", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:0b", "network": "blue", "ip": "10.10.0.11", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:01", "network": "blue", "ip": "10.10.0.30", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:0c", "network": "green", "ip": "10.10.0.31", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:0d", "network": "blue", "ip": "10.10.0.x", "node": "hv-1", "interface": "t"}));
        nics.push(json!({"mac": "02:00:00:00:00:0e", "network": "blue", "ip": "10.10.0.40", "node": "hv-1"}));
        d["networks"].as_array_mut().unwrap().push(
            json!({"id": "tiny", "vni": 7, "subnet": "10.7.0.0/24", "gateway": "10.7.0.1", "mtu": 0}),
        );
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[2]".into(), Reason::MtuOutOfRange),
                ("nics[3]".into(), Reason::InvalidMac),
                ("nics[4]".into(), Reason::OutsideSubnet),
                ("nics[5]".into(), Reason::DuplicateIp),
                ("nics[6]".into(), Reason::DuplicateMac),
                ("nics[7]".into(), Reason::UnknownNetwork),
                ("nics[8]".into(), Reason::InvalidAddress),
                ("nics[9]".into(), Reason::MissingInterface),
            ]
        );
        // Everything good still applies.
        assert_eq!(v.model.nics.len(), 3);
        let bad_ip = v.rejections.iter().find(|r| r.entry == "nics[8]").unwrap();
        assert!(bad_ip.detail.contains("field `ip`"), "{}", bad_ip.detail);
    }

    #[test]
    fn a_rejected_entry_keeps_its_last_good_version() {
        let good = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = base();
        d["nics"][0]["ip"] = json!("10.99.0.1");
        d["networks"][1]["mtu"] = json!(0);
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(v.model, good);
        assert!(v.rejections.iter().all(|r| r.kept_last_good));
        assert_eq!(v.rejections.len(), 2);
    }

    #[test]
    fn the_serving_nic_wins_an_address_conflict() {
        let good = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = base();
        // A newcomer listed first claims the address of a serving NIC.
        d["nics"].as_array_mut().unwrap().insert(
            0,
            json!({"mac": "02:00:00:00:00:99", "network": "blue", "ip": "10.10.0.11", "node": "hv-1", "interface": "t9"}),
        );
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(v.model, good);
        assert_eq!(reasons(&v), vec![("nics[0]".into(), Reason::DuplicateIp)]);
    }

    #[test]
    fn a_duplicate_vni_loses_to_the_first_or_the_serving_network() {
        let mut d = base();
        d["networks"][1]["vni"] = json!(1001);
        let v = validate(&doc(d.clone()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.model.networks.contains_key("blue"));
        assert!(!v.model.networks.contains_key("red"));
        // When red was serving with 1001 before, red keeps it and blue loses.
        let mut red_only = base();
        red_only["networks"].as_array_mut().unwrap().remove(0);
        red_only["networks"][0]["vni"] = json!(1001);
        red_only["nics"] = json!([]);
        let prev = validate(&doc(red_only), None, "hv-1", &Limits::default(), &NoBudget).model;
        let v = validate(&doc(d), Some(&prev), "hv-1", &Limits::default(), &NoBudget);
        assert!(v.model.networks.contains_key("red"));
        assert!(!v.model.networks.contains_key("blue"));
    }

    #[test]
    fn deletions_apply() {
        let good = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = base();
        d["nics"].as_array_mut().unwrap().remove(0);
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(v.model.nics.len(), 2);
    }

    #[test]
    fn networks_must_fit_the_underlay_and_vteps_are_unique() {
        let limits = Limits {
            underlay_mtu: Some(1500),
            ..Limits::default()
        };
        let v = validate(&doc(base()), None, "hv-1", &limits, &NoBudget);
        // blue (1450) fits; red has no MTU: 1500 + 50 does not; its NIC goes with it.
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[1]".into(), Reason::MtuExceedsUnderlay),
                ("nics[1]".into(), Reason::UnknownNetwork),
            ]
        );
        let mut d = base();
        d["nodes"][1]["vtep"] = json!("198.18.0.1");
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        let dup = v
            .rejections
            .iter()
            .find(|r| r.reason == Reason::DuplicateVtep)
            .unwrap();
        assert_eq!(dup.key.as_deref(), Some("hv-2"), "the first node keeps it");
        // hv-2's NIC goes with it.
        assert!(v.rejections.iter().any(|r| r.reason == Reason::UnknownNode));
    }

    #[test]
    fn a_node_with_an_unfit_vtep_is_rejected_alone() {
        let good = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = base();
        d["nodes"][1]["vtep"] = json!("0.0.0.0");
        // New: hv-2 is rejected, and its NIC with it; hv-1 and its NICs serve.
        let v = validate(&doc(d.clone()), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("nics[2]".into(), Reason::UnknownNode),
                ("nodes[1]".into(), Reason::InvalidVtep),
            ]
        );
        assert_eq!(v.model, base_without(&["hv-2", HV2_NIC]));
        // Serving before: its last good version keeps serving.
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(v.model, good);
        assert_eq!(reasons(&v), vec![("nodes[1]".into(), Reason::InvalidVtep)]);
        assert!(v.rejections[0].kept_last_good);
    }

    /// `base()` with `change` applied, validated with `budget`.
    fn changed(
        change: impl FnOnce(&mut serde_json::Value),
        budget: &impl OptionsBudget,
    ) -> Validated {
        let mut d = base();
        change(&mut d);
        validate(&doc(d), None, "hv-1", &Limits::default(), budget)
    }

    /// The model of `base()` without the entries keyed `keys` (network ids, node names, MACs).
    fn base_without(keys: &[&str]) -> Model {
        let mut m = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        for key in keys {
            m.networks.remove(*key);
            m.nodes.remove(*key);
            if let Ok(mac) = key.parse::<MacAddr>() {
                m.nics.remove(&mac);
            }
        }
        m
    }

    const RED_NIC: &str = "02:00:00:00:00:02";
    const HV2_NIC: &str = "02:00:00:00:00:03";

    #[test]
    fn an_entry_that_is_not_json_is_invalid_json() {
        let mut d = doc(base());
        d.nodes.push(RawEntry::json(br#"{"name": "hv-3", "#));
        let v = validate(&d, None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(reasons(&v), vec![("nodes[2]".into(), Reason::InvalidJson)]);
        assert_eq!(v.model, base_without(&[]));
    }

    #[test]
    fn invalid_fields() {
        // A network: its NIC goes with it.
        let red = |change: fn(&mut serde_json::Value)| {
            let v = changed(change, &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![
                    ("networks[1]".into(), Reason::InvalidField),
                    ("nics[1]".into(), Reason::UnknownNetwork),
                ]
            );
            assert_eq!(v.model, base_without(&["red", RED_NIC]));
            v
        };
        let v = red(|d| d["networks"][1]["vni"] = json!("1002"));
        assert_eq!(v.rejections[0].key.as_deref(), Some("red"));
        red(|d| d["networks"][1]["subnet"] = json!("10.10.0.0/31"));
        let v = red(|d| d["networks"][1]["subnet"] = json!("10.10.0.1/24"));
        assert!(
            v.rejections[0].detail.contains("host bits"),
            "{}",
            v.rejections[0].detail
        );
        red(|d| d["networks"][1]["routes"] = json!([{"to": "10.20.0.1/16", "via": "10.10.0.4"}]));
        let v = red(|d| d["networks"][1]["id"] = json!(""));
        assert_eq!(v.rejections[0].detail, "field `id` is empty");
        assert_eq!(v.rejections[0].key, None, "an empty id is no key");
        // A node: its NIC goes with it.
        let v = changed(|d| d["nodes"][1]["name"] = json!(""), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("nics[2]".into(), Reason::UnknownNode),
                ("nodes[1]".into(), Reason::InvalidField),
            ]
        );
        assert_eq!(v.model, base_without(&["hv-2", HV2_NIC]));
        // A NIC.
        let v = changed(|d| d["nics"][2]["ip"] = json!(5), &NoBudget);
        assert_eq!(reasons(&v), vec![("nics[2]".into(), Reason::InvalidField)]);
        assert_eq!(v.model, base_without(&[HV2_NIC]));
    }

    #[test]
    fn reserved_addresses() {
        for ip in ["10.10.0.0", "10.10.0.1", "10.10.0.255"] {
            let v = changed(|d| d["nics"][2]["ip"] = json!(ip), &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![("nics[2]".into(), Reason::ReservedAddress)]
            );
            assert_eq!(v.model, base_without(&[HV2_NIC]));
        }
        let v = changed(
            |d| d["networks"][1]["gateway"] = json!("10.10.0.255"),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[1]".into(), Reason::ReservedAddress),
                ("nics[1]".into(), Reason::UnknownNetwork),
            ]
        );
        assert_eq!(v.model, base_without(&["red", RED_NIC]));
    }

    #[test]
    fn a_duplicate_id_loses_to_the_first() {
        let v = changed(
            |d| {
                let nodes = d["nodes"].as_array_mut().unwrap();
                nodes.push(json!({"name": "hv-1", "vtep": "198.18.0.9"}));
            },
            &NoBudget,
        );
        assert_eq!(reasons(&v), vec![("nodes[2]".into(), Reason::DuplicateId)]);
        assert_eq!(v.rejections[0].key.as_deref(), Some("hv-1"));
        assert_eq!(v.model, base_without(&[]));
        let v = changed(
            |d| {
                let networks = d["networks"].as_array_mut().unwrap();
                networks.insert(
                    0,
                    json!({"id": "red", "vni": 9, "subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}),
                );
            },
            &NoBudget,
        );
        // The first in the document wins: red's NIC is outside its subnet now.
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[2]".into(), Reason::DuplicateId),
                ("nics[1]".into(), Reason::OutsideSubnet),
            ]
        );
        assert_eq!(v.model.networks["red"].vni, 9);
        assert_eq!(v.model.nics, base_without(&[RED_NIC]).nics);
    }

    #[test]
    fn a_vni_out_of_range() {
        for vni in [0, 1 << 24] {
            let v = changed(|d| d["networks"][1]["vni"] = json!(vni), &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![
                    ("networks[1]".into(), Reason::VniOutOfRange),
                    ("nics[1]".into(), Reason::UnknownNetwork),
                ]
            );
            assert_eq!(v.model, base_without(&["red", RED_NIC]));
        }
    }

    #[test]
    fn a_lease_time_under_ten_seconds() {
        let v = changed(|d| d["networks"][1]["lease_time"] = json!(9), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[1]".into(), Reason::InvalidLeaseTime),
                ("nics[1]".into(), Reason::UnknownNetwork),
            ]
        );
        assert_eq!(v.model, base_without(&["red", RED_NIC]));
    }

    #[test]
    fn invalid_names() {
        let v = changed(|d| d["nics"][2]["hostname"] = json!("-vm"), &NoBudget);
        assert_eq!(reasons(&v), vec![("nics[2]".into(), Reason::InvalidName)]);
        assert_eq!(v.model, base_without(&[HV2_NIC]));
        let v = changed(|d| d["nics"][1]["interface"] = json!("tap/2"), &NoBudget);
        assert_eq!(reasons(&v), vec![("nics[1]".into(), Reason::InvalidName)]);
        assert_eq!(v.model, base_without(&[RED_NIC]));
        for (field, value) in [("domain", json!("a..b")), ("search", json!(["ok", "no_t"]))] {
            let v = changed(|d| d["networks"][1][field] = value, &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![
                    ("networks[1]".into(), Reason::InvalidName),
                    ("nics[1]".into(), Reason::UnknownNetwork),
                ]
            );
            assert_eq!(v.model, base_without(&["red", RED_NIC]));
        }
    }

    /// `red` (networks[1]) changed by `change` is rejected for `reason`, its NIC with it;
    /// everything else serves. Returns the rejection's detail.
    #[track_caller]
    fn red_rejected(change: impl FnOnce(&mut serde_json::Value), reason: Reason) -> String {
        let v = changed(change, &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[1]".into(), reason),
                ("nics[1]".into(), Reason::UnknownNetwork),
            ]
        );
        assert_eq!(v.model, base_without(&["red", RED_NIC]), "the rest serves");
        let detail = v.rejections[0].detail.clone();
        // One sentence, as an operator reads it in the log (no source indentation in it).
        assert!(!detail.contains("  "), "{detail:?}");
        detail
    }

    fn route(to: &str, via: &str) -> serde_json::Value {
        json!([{"to": "172.16.0.0/12", "via": "10.10.0.1"}, {"to": to, "via": via}])
    }

    #[test]
    fn a_route_via_the_network_or_broadcast_address() {
        for via in ["10.10.0.0", "10.10.0.255"] {
            let d = red_rejected(
                |d| d["networks"][1]["routes"] = route("192.168.0.0/16", via),
                Reason::RouteViaReserved,
            );
            assert!(d.contains("network or broadcast address"), "{d}");
        }
    }

    #[test]
    fn a_route_via_an_address_no_one_holds() {
        let d = red_rejected(
            |d| d["networks"][1]["routes"] = route("192.168.0.0/16", "10.10.0.77"),
            Reason::RouteViaUnowned,
        );
        assert!(d.contains("10.10.0.77") && d.contains("black hole"), "{d}");
    }

    #[test]
    fn a_route_via_a_nic_without_forwarding_is_refused_alone() {
        // 10.10.0.11 is red's NIC (and, in blue, another): the detail names red's. The route
        // is not routed; red and its NIC serve as written.
        let mut d = base();
        d["networks"][1]["routes"] = route("192.168.0.0/16", "10.10.0.11");
        let v = validate(&doc(d.clone()), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![("networks[1]".into(), Reason::RouteViaNic)]
        );
        let r = &v.rejections[0];
        assert_eq!(r.key.as_deref(), Some("red"));
        assert!(
            r.detail.contains(RED_NIC)
                && r.detail.contains("forwarding")
                && r.detail.contains("keeps serving"),
            "{}",
            r.detail
        );
        assert_eq!(v.model.networks.len(), 2);
        assert_eq!(v.model.nics.len(), 3);
        // With forwarding on the NIC: accepted.
        d["nics"][1]["forwarding"] = json!(true);
        let v = validate(&doc(d.clone()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        // The NIC's entry rejected for another reason: the route names no NIC serving.
        d["nics"][1]["hostname"] = json!("-bad");
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("networks[1]".into(), Reason::RouteViaNic),
                ("nics[1]".into(), Reason::InvalidName)
            ]
        );
        assert!(
            v.rejections[0]
                .detail
                .contains("no NIC of the network serving")
        );
    }

    #[test]
    fn a_route_within_the_subnet() {
        for to in ["10.10.0.0/24", "10.10.0.128/25", "10.10.0.7/32"] {
            let d = red_rejected(
                |d| d["networks"][1]["routes"] = route(to, "10.10.0.1"),
                Reason::RouteOverlapsSubnet,
            );
            assert!(d.contains(to), "{d}");
        }
        // A wider route covers the subnet too, but its on-link route is more specific.
        let v = changed(
            |d| d["networks"][1]["routes"] = route("10.0.0.0/8", "10.10.0.1"),
            &NoBudget,
        );
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn a_default_route_via_another_than_the_gateway() {
        for via in ["10.10.0.11", "10.10.0.77"] {
            let d = red_rejected(
                |d| d["networks"][1]["routes"] = route("0.0.0.0/0", via),
                Reason::DefaultRouteNotGateway,
            );
            assert!(d.contains("default_route"), "{d}");
        }
        // Via the gateway it is the default route itself.
        let v = changed(
            |d| d["networks"][1]["routes"] = route("0.0.0.0/0", "10.10.0.1"),
            &NoBudget,
        );
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn a_bad_route_keeps_the_last_good_version_serving() {
        let good = validate(&doc(base()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = base();
        d["networks"][1]["routes"] = route("192.168.0.0/16", "10.10.0.77");
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(v.model, good);
        assert_eq!(
            reasons(&v),
            vec![("networks[1]".into(), Reason::RouteViaUnowned)]
        );
        assert!(v.rejections[0].kept_last_good);
    }

    #[test]
    fn extra_options_with_a_reserved_code_or_a_bad_value() {
        let d = red_rejected(
            |d| d["networks"][1]["options"] = json!({"raw": [{"code": 121, "hex": "00"}]}),
            Reason::OptionCodeReserved,
        );
        assert!(d.contains("option 121") && d.contains("`routes`"), "{d}");
        red_rejected(
            |d| d["networks"][1]["options"] = json!({"ipv6_only_preferred": 60}),
            Reason::InvalidOption,
        );
        // A NIC's: the NIC alone.
        for (options, reason) in [
            (
                json!({"raw": [{"code": 53, "hex": "05"}]}),
                Reason::OptionCodeReserved,
            ),
            (json!({"wpad": "file:///etc/passwd"}), Reason::InvalidOption),
        ] {
            let v = changed(|d| d["nics"][2]["options"] = options, &NoBudget);
            assert_eq!(reasons(&v), vec![("nics[2]".into(), reason)]);
            assert_eq!(v.model, base_without(&[HV2_NIC]));
        }
        // Bad hex is a field that does not parse; a bad address is named for it.
        let v = changed(
            |d| d["nics"][2]["options"] = json!({"raw": [{"code": 224, "hex": "xyz"}]}),
            &NoBudget,
        );
        assert_eq!(reasons(&v), vec![("nics[2]".into(), Reason::InvalidField)]);
        let v = changed(
            |d| d["nics"][2]["options"] = json!({"netbios_name_servers": ["10.0.0.x"]}),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![("nics[2]".into(), Reason::InvalidAddress)]
        );
        // Good ones serve, with the NIC's `default_route`.
        let v = changed(
            |d| {
                d["networks"][1]["default_route"] = json!(false);
                d["networks"][1]["options"] = json!({
                    "broadcast": true, "netbios_name_servers": ["10.10.0.5"],
                    "netbios_node_type": "H", "ipv6_only_preferred": 1800,
                    "captive_portal": "https://cp.example/api", "ms_classless_routes": true,
                    "wpad": "http://wpad.example/wpad.dat",
                    "raw": [{"code": 224, "base64": "aGY="}]});
                d["nics"][1]["default_route"] = json!(true);
            },
            &NoBudget,
        );
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        let red = &v.model.networks["red"];
        let nic = &v.model.nics[&RED_NIC.parse::<MacAddr>().unwrap()];
        assert!(!red.default_route && nic.default_route(red));
        assert_eq!(red.options.raw[0].value, b"hf");
    }

    /// A budget that has no room for a hostname.
    struct NoHostname;

    #[derive(Debug, thiserror::Error)]
    #[error("no room for hostname {0:?}")]
    struct NoRoom(String);

    impl OptionsBudget for NoHostname {
        type Error = NoRoom;

        fn check(&self, _: &Network, nic: &Nic) -> Result<(), NoRoom> {
            match &nic.hostname {
                Some(h) => Err(NoRoom(h.clone())),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn options_too_long() {
        let v = changed(|d| d["nics"][2]["hostname"] = json!("vm3"), &NoHostname);
        assert_eq!(
            reasons(&v),
            vec![("nics[2]".into(), Reason::OptionsTooLong)]
        );
        assert_eq!(v.rejections[0].detail, r#"no room for hostname "vm3""#);
        assert_eq!(v.model, base_without(&[HV2_NIC]));
    }

    fn on_taps(extra_excluded: &[(&str, &str)]) -> Limits {
        let mut links = crate::links::Links::new();
        for (i, (name, addr)) in extra_excluded.iter().enumerate() {
            links.insert(
                i as u32 + 10,
                crate::links::LinkInfo {
                    name: (*name).into(),
                    addresses: [addr.parse().unwrap()].into(),
                    ..Default::default()
                },
            );
        }
        let patterns = [crate::ports::Pattern::parse("tap*").unwrap()];
        Limits {
            ports: crate::ports::VmPorts::new(&patterns, Some("tap-ul"), "holdfast0")
                .with_links(&links),
            ..Limits::default()
        }
    }

    #[test]
    fn a_nic_of_this_node_names_a_vm_port_only() {
        for (iface, why) in [
            ("eth0", "matches none of [vm] interfaces (tap*)"),
            ("lo", "it is the loopback interface"),
            ("holdfast0", "it is holdfast's next-hop lookup anchor"),
            ("tap-ul", "it is the underlay"),
            ("tap-host", "it carries the host address 10.1.2.3"),
        ] {
            let v = validate(
                &doc({
                    let mut d = base();
                    d["nics"][1]["interface"] = json!(iface);
                    d
                }),
                None,
                "hv-1",
                &on_taps(&[("tap-host", "10.1.2.3")]),
                &NoBudget,
            );
            assert_eq!(
                reasons(&v),
                vec![("nics[1]".into(), Reason::InterfaceNotVmPort)],
                "{iface}"
            );
            assert!(
                v.rejections[0].detail.contains(why),
                "{}",
                v.rejections[0].detail
            );
            assert_eq!(v.model, base_without(&[RED_NIC]), "the others serve");
        }
        // Another node's interfaces are its business.
        let mut d = base();
        d["nics"][2]["interface"] = json!("eth0");
        let v = validate(&doc(d), None, "hv-1", &on_taps(&[]), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn a_nic_whose_tap_gains_a_host_address_is_rejected_at_the_next_validation() {
        let serving = validate(&doc(base()), None, "hv-1", &on_taps(&[]), &NoBudget).model;
        let v = validate(
            &doc(base()),
            Some(&serving),
            "hv-1",
            &on_taps(&[("tap2", "2001:db8::2")]),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![("nics[1]".into(), Reason::InterfaceNotVmPort)]
        );
        assert!(
            !v.rejections[0].kept_last_good,
            "its last good version names the same tap"
        );
        assert_eq!(v.model, base_without(&[RED_NIC]));
    }

    #[test]
    fn one_interface_carries_one_network() {
        // red's NIC moves onto blue's tap: the second by document order is rejected.
        let mut d = base();
        d["nics"][1]["interface"] = json!("tap1");
        let v = validate(&doc(d.clone()), None, "hv-1", &on_taps(&[]), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![("nics[1]".into(), Reason::InterfaceShared)]
        );
        assert!(
            v.rejections[0]
                .detail
                .contains("carries NICs of network blue")
        );
        assert_eq!(v.model, base_without(&[RED_NIC]));
        // Listed first, it still loses to the network serving on that tap.
        let serving = base_without(&[RED_NIC]);
        let nics = d["nics"].as_array_mut().unwrap();
        let red = nics.remove(1);
        nics.insert(0, red);
        let v = validate(
            &doc(d.clone()),
            Some(&serving),
            "hv-1",
            &on_taps(&[]),
            &NoBudget,
        );
        assert_eq!(
            reasons(&v),
            vec![("nics[0]".into(), Reason::InterfaceShared)]
        );
        assert_eq!(v.model, serving);
        // With nothing serving, the first in the document wins.
        let v = validate(&doc(d.clone()), None, "hv-1", &on_taps(&[]), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![("nics[1]".into(), Reason::InterfaceShared)]
        );
        assert!(v.model.networks["red"].vni == 1002 && v.model.nics.len() == 2);
        // A second NIC of the same network on one tap is fine; so is another node's tap1.
        let mut d = base();
        let nics = d["nics"].as_array_mut().unwrap();
        nics.push(json!({"mac": "02:00:00:00:00:04", "network": "blue", "ip": "10.10.0.14", "node": "hv-1", "interface": "tap1"}));
        nics.push(json!({"mac": "02:00:00:00:00:05", "network": "red", "ip": "10.10.0.15", "node": "hv-2", "interface": "tap1"}));
        let v = validate(&doc(d), None, "hv-1", &on_taps(&[]), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn revalidating_one_network_never_puts_two_on_one_interface() {
        let limits = on_taps(&[]);
        let serving = validate(&doc(base()), None, "hv-1", &limits, &NoBudget).model;
        // red alone is validated again, its NIC now on blue's tap.
        let mut d = base();
        d["nics"][1]["interface"] = json!("tap1");
        let networks = BTreeSet::from(["red".to_owned()]);
        let old = serving.nics_by_network().remove("red").unwrap();
        let part = crate::model::revalidate(
            &crate::model::fixtures::sub(&d, &["red"]),
            &networks,
            &old,
            crate::model::Serving {
                model: &serving,
                local: &crate::model::LocalNics::of(&serving, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        assert_eq!(
            part.validated
                .rejections
                .iter()
                .map(|r| r.reason)
                .collect::<Vec<_>>(),
            [Reason::InterfaceShared]
        );
        assert_eq!(part.validated.model, base_without(&[RED_NIC]));
        assert!(part.nics_of["red"].is_empty());
        // Both validated together (as the etcd source couples them): the same outcome.
        let both = BTreeSet::from(["blue".to_owned(), "red".to_owned()]);
        let part = crate::model::revalidate(
            &crate::model::fixtures::sub(&d, &["blue", "red"]),
            &both,
            &serving.nics.keys().copied().collect(),
            crate::model::Serving {
                model: &serving,
                local: &crate::model::LocalNics::of(&serving, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        assert_eq!(part.validated.model, base_without(&[RED_NIC]));
    }

    /// A budget of `n` routes: what option 121 holds in a 296-byte reply, roughly.
    struct Routes(usize);

    #[derive(Debug, thiserror::Error)]
    #[error("option 121 would carry {0} routes, over the {1} that fit")]
    struct TooMany(usize, usize);

    impl OptionsBudget for Routes {
        type Error = TooMany;

        fn check(&self, net: &Network, nic: &Nic) -> Result<(), TooMany> {
            let n = net.routes.len() + usize::from(nic.hostname.is_some());
            if n > self.0 {
                Err(TooMany(n, self.0))
            } else {
                Ok(())
            }
        }
    }

    fn routes(n: usize) -> serde_json::Value {
        json!(
            (0..n)
                .map(|i| json!({"to": format!("172.{i}.0.0/16"), "via": "10.10.0.1"}))
                .collect::<Vec<_>>()
        )
    }

    #[test]
    fn a_network_outgrowing_the_options_of_its_nics_keeps_its_last_good_version() {
        let budget = Routes(30);
        let mut d = base();
        d["networks"][0]["routes"] = routes(2);
        let serving = validate(&doc(d.clone()), None, "hv-1", &on_taps(&[]), &budget).model;
        assert_eq!(serving.nics.len(), 3);
        // 40 routes: no NIC of blue would fit any more. The network is at fault, not its NICs.
        d["networks"][0]["routes"] = routes(40);
        let v = validate(
            &doc(d.clone()),
            Some(&serving),
            "hv-1",
            &on_taps(&[]),
            &budget,
        );
        assert_eq!(
            v.model, serving,
            "blue and every NIC on it keep serving as they were"
        );
        assert_eq!(
            reasons(&v),
            vec![("networks[0]".into(), Reason::OptionsTooLong)]
        );
        let r = &v.rejections[0];
        assert!(r.kept_last_good);
        assert_eq!(r.key.as_deref(), Some("blue"));
        assert!(
            r.detail.contains("option 121 would carry 40 routes"),
            "{}",
            r.detail
        );
        // The same as a partial revalidation of blue.
        let networks = BTreeSet::from(["blue".to_owned()]);
        let old = serving.nics_by_network().remove("blue").unwrap();
        let part = crate::model::revalidate(
            &crate::model::fixtures::sub(&d, &["blue"]),
            &networks,
            &old,
            crate::model::Serving {
                model: &serving,
                local: &crate::model::LocalNics::of(&serving, "hv-1"),
            },
            "hv-1",
            &on_taps(&[]),
            &budget,
        );
        assert_eq!(part.validated.model, serving);
        assert_eq!(part.nics_of["blue"], old);
        // A new network has no last good version: its NICs are rejected one by one. And a NIC
        // whose own hostname tips it over is the NIC's fault.
        let mut fresh = base();
        fresh["networks"][0]["routes"] = routes(40);
        let v = validate(&doc(fresh), None, "hv-1", &on_taps(&[]), &budget);
        assert_eq!(
            reasons(&v),
            vec![
                ("nics[0]".into(), Reason::OptionsTooLong),
                ("nics[2]".into(), Reason::OptionsTooLong)
            ]
        );
        let mut d = base();
        d["networks"][0]["routes"] = routes(30);
        let serving = validate(&doc(d.clone()), None, "hv-1", &on_taps(&[]), &budget).model;
        d["nics"][0]["hostname"] = json!("vm1");
        let v = validate(&doc(d), Some(&serving), "hv-1", &on_taps(&[]), &budget);
        assert_eq!(
            reasons(&v),
            vec![("nics[0]".into(), Reason::OptionsTooLong)]
        );
        assert!(v.rejections[0].kept_last_good);
        assert_eq!(v.model, serving);
    }

    #[test]
    fn a_dual_stack_document_is_accepted_and_old_documents_unchanged() {
        let v = validate(&doc(dual()), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        let blue = &v.model.networks["blue"];
        assert_eq!(blue.subnet6, Some("fd00:10:10::/64".parse().unwrap()));
        assert_eq!(blue.dns6, ["fd00:10:10::53".parse::<Ipv6Addr>().unwrap()]);
        let nic = &v.model.nics[&"02:00:00:00:00:01".parse::<MacAddr>().unwrap()];
        assert_eq!(nic.ip6, Some("fd00:10:10::11".parse().unwrap()));
        // red says nothing of IPv6: IPv4-only.
        assert!(v.model.networks["red"].subnet6.is_none());
        assert!(
            v.model.nics[&RED_NIC.parse::<MacAddr>().unwrap()]
                .ip6
                .is_none()
        );
    }

    #[test]
    fn hostile_ip6_records_are_rejected_alone() {
        let good = validate(&doc(dual()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = dual();
        let nics = d["nics"].as_array_mut().unwrap();
        let nic = |last: u8, network: &str, ip6: &str| {
            json!({"mac": format!("02:00:00:00:01:{last:02x}"), "network": network,
                   "ip": format!("10.10.0.{last}"), "ip6": ip6, "node": "hv-2"})
        };
        // Another network's prefix; blue's first NIC's address; the subnet-router anycast
        // address; an RFC 2526 anycast address; an ip6 on IPv4-only red; not an address.
        nics.push(nic(31, "blue", "fd00:20:20::31"));
        nics.push(nic(32, "blue", "fd00:10:10::11"));
        nics.push(nic(33, "blue", "fd00:10:10::"));
        nics.push(nic(34, "blue", "fd00:10:10:0:fdff:ffff:ffff:ffff"));
        nics.push(nic(35, "red", "fd00:10:10::35"));
        nics.push(nic(36, "blue", "fd00:10:10::zz"));
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(
            reasons(&v),
            vec![
                ("nics[3]".into(), Reason::OutsideSubnet),
                ("nics[4]".into(), Reason::DuplicateIp),
                ("nics[5]".into(), Reason::ReservedAddress),
                ("nics[6]".into(), Reason::ReservedAddress),
                ("nics[7]".into(), Reason::Ip6WithoutSubnet6),
                ("nics[8]".into(), Reason::InvalidAddress),
            ]
        );
        let dup = &v.rejections[1];
        assert!(
            dup.detail.contains(
                "ip6 fd00:10:10::11 in network blue is already held by 02:00:00:00:00:01"
            ),
            "{}",
            dup.detail
        );
        assert!(v.rejections[5].detail.contains("field `ip6`"));
        // Nothing else changed: what served serves.
        assert_eq!(v.model, good);
    }

    #[test]
    fn the_serving_nic_keeps_its_ip6_and_the_same_ip6_in_two_networks_is_fine() {
        let good = validate(&doc(dual()), None, "hv-1", &Limits::default(), &NoBudget).model;
        let mut d = dual();
        // A newcomer listed first claims a serving NIC's ip6 (its IPv4 address is free).
        d["nics"].as_array_mut().unwrap().insert(
            0,
            json!({"mac": "02:00:00:00:00:99", "network": "blue", "ip": "10.10.0.99",
                   "ip6": "fd00:10:10::12", "node": "hv-2"}),
        );
        let v = validate(
            &doc(d.clone()),
            Some(&good),
            "hv-1",
            &Limits::default(),
            &NoBudget,
        );
        assert_eq!(reasons(&v), vec![("nics[0]".into(), Reason::DuplicateIp)]);
        assert_eq!(v.model, good);
        // With nothing serving, the first in the document wins.
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert_eq!(reasons(&v), vec![("nics[3]".into(), Reason::DuplicateIp)]);
        // red with the same prefix and address: another network, another link.
        let mut d = dual();
        d["networks"][1]["subnet6"] = json!("fd00:10:10::/64");
        d["nics"][1]["ip6"] = json!("fd00:10:10::11");
        let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    }

    #[test]
    fn a_bad_ipv6_network_keeps_its_last_good_version() {
        let good = validate(&doc(dual()), None, "hv-1", &Limits::default(), &NoBudget).model;
        for (field, value, reason) in [
            (
                "subnet6",
                json!("fd00:10:10::/56"),
                Reason::Subnet6NotSlash64,
            ),
            ("subnet6", json!("fe80::/64"), Reason::Subnet6Scope),
            ("subnet6", json!("fd00:10:10::/200"), Reason::InvalidAddress),
            ("dns6", json!(["ff02::1"]), Reason::Dns6Unreachable),
            ("dns6", json!(["x"]), Reason::InvalidAddress),
            ("mtu", json!(1200), Reason::MtuBelowIpv6Minimum),
        ] {
            let mut d = dual();
            d["networks"][0][field] = value.clone();
            let v = validate(
                &doc(d.clone()),
                Some(&good),
                "hv-1",
                &Limits::default(),
                &NoBudget,
            );
            assert_eq!(
                reasons(&v),
                vec![("networks[0]".into(), reason)],
                "{field} {value}"
            );
            assert!(v.rejections[0].kept_last_good);
            assert_eq!(v.model, good, "{field} {value}");
            // New: blue is rejected, and its NICs with it; red serves.
            let v = validate(&doc(d), None, "hv-1", &Limits::default(), &NoBudget);
            assert_eq!(
                reasons(&v),
                vec![
                    ("networks[0]".into(), reason),
                    ("nics[0]".into(), Reason::UnknownNetwork),
                    ("nics[2]".into(), Reason::UnknownNetwork),
                ]
            );
            assert_eq!(
                v.model,
                base_without(&["blue", "02:00:00:00:00:01", HV2_NIC])
            );
        }
    }

    /// A budget whose router advertisements hold `0` resolvers.
    struct RaRoom(usize);

    impl OptionsBudget for RaRoom {
        type Error = NoRoom;

        fn check(&self, _: &Network, _: &Nic) -> Result<(), NoRoom> {
            Ok(())
        }

        fn check_ra(&self, n: &Network) -> Result<(), NoRoom> {
            if n.dns6.len() > self.0 {
                return Err(NoRoom(format!("{} dns6", n.dns6.len())));
            }
            Ok(())
        }
    }

    #[test]
    fn a_network_whose_advertisement_does_not_fit_is_rejected() {
        let good = validate(&doc(dual()), None, "hv-1", &Limits::default(), &RaRoom(1)).model;
        let mut d = dual();
        d["networks"][0]["dns6"] = json!(["fd00:10:10::53", "fd00:10:10::54"]);
        let v = validate(&doc(d), Some(&good), "hv-1", &Limits::default(), &RaRoom(1));
        assert_eq!(reasons(&v), vec![("networks[0]".into(), Reason::RaTooLong)]);
        assert!(v.rejections[0].detail.contains("2 dns6"));
        assert!(v.rejections[0].kept_last_good);
        assert_eq!(v.model, good);
    }
}
