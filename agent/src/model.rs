//! The IPAM model: networks, nodes and NICs, and its validation.
//!
//! Validation rejects bad entries one by one and never costs what is already served: an entry
//! that fails keeps its last good version (from the previously applied model) when it had one.
//! The model knows nothing of BPF or of where documents come from.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
    sync::Arc,
};

use imbl::OrdMap;
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// A NIC's Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':'")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| MacParseError(s.into()))?;
            if part.len() != 2 {
                return Err(MacParseError(s.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.into()));
        }
        Ok(Self(out))
    }
}

impl MacAddr {
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A private network: one subnet, one VNI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_time")]
    pub lease_time: u32,
}

fn default_lease_time() -> u32 {
    3600
}

/// A classless static route handed out with option 121.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub to: Ipv4Net,
    pub via: Ipv4Addr,
}

/// A hypervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub vtep: Ipv4Addr,
}

/// A VM's network interface. Its network and node names are shared by all the NICs a
/// validation accepts ([`Names`]): a host may hold 100,000 NICs of a few hundred networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: MacAddr,
    pub network: Arc<str>,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub node: Arc<str>,
    /// The tap (or veth) carrying this NIC on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// One copy of each network and node name for the NICs that use it.
#[derive(Default)]
struct Names(std::collections::HashSet<Arc<str>>);

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

/// Limits a network must respect.
pub const MTU_MIN: u16 = 576;
pub const MTU_MAX: u16 = 9000;
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// What a VM assumes without option 26.
pub const DEFAULT_MTU: u16 = 1500;
/// Bytes VXLAN adds on the underlay (outer Ethernet excluded from the IP MTU: 20 + 8 + 8 + 14).
pub const VXLAN_MTU_OVERHEAD: u32 = 50;

impl Network {
    /// The IP MTU VMs on this network use: option 26, or Ethernet's 1500.
    pub fn effective_mtu(&self) -> u16 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }
}

/// What this host can carry, for the checks that depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The underlay MTU, when VXLAN is configured: a network's MTU plus 50 must fit in it.
    pub underlay_mtu: Option<u32>,
}

/// A validated model: every entry consistent with every other. Its maps are persistent
/// (structure-sharing): a copy costs nothing, and a copy changed in one network shares the
/// rest with the original.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub networks: OrdMap<String, Network>,
    pub nodes: OrdMap<String, Node>,
    pub nics: OrdMap<MacAddr, Nic>,
}

impl Model {
    /// The MACs of each network's NICs.
    pub fn nics_by_network(&self) -> BTreeMap<String, BTreeSet<MacAddr>> {
        let mut out: BTreeMap<String, BTreeSet<MacAddr>> = BTreeMap::new();
        for (mac, nic) in &self.nics {
            match out.get_mut(&*nic.network) {
                Some(set) => {
                    set.insert(*mac);
                }
                None => {
                    out.insert(nic.network.to_string(), BTreeSet::from([*mac]));
                }
            }
        }
        out
    }
}

/// An IPAM document as a source delivers it: entries still unparsed, so one bad entry cannot
/// spoil the others. Cloning it is cheap (the entries are shared).
#[derive(Clone, Debug, Default)]
pub struct RawDocument {
    pub networks: Vec<RawEntry>,
    pub nodes: Vec<RawEntry>,
    pub nics: Vec<RawEntry>,
}

/// One entry of a document, as its source holds it: its JSON text, parsed when validated.
#[derive(Clone, Debug)]
pub struct RawEntry {
    /// Where the entry comes from, which `id` completes: for example the directory of an
    /// etcd key, shared by the entries under it. `None` in a document, where its position
    /// names it.
    pub dir: Option<Arc<str>>,
    /// The entry's id as its origin names it (the last part of an etcd key): it still names an
    /// entry whose value is too broken to say its own id, so its last good version can serve.
    pub id: Option<Arc<str>>,
    /// The JSON text.
    pub json: Arc<[u8]>,
}

impl RawEntry {
    /// An entry of a document.
    pub fn json(text: &[u8]) -> Self {
        Self {
            dir: None,
            id: None,
            json: Arc::from(text),
        }
    }

    /// Where the entry comes from (`dir` and `id`), for example an etcd key.
    pub fn origin(&self) -> Option<String> {
        Some(format!("{}{}", self.dir.as_deref()?, self.id.as_deref()?))
    }

    /// How rejections name the entry: its origin, or its position in `list`.
    fn label(&self, list: &str, index: usize) -> String {
        self.origin().unwrap_or_else(|| format!("{list}[{index}]"))
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, Reject> {
        parse_entry(&self.json)
    }

    /// The entry's key: the string `field` of its value, else the id its origin gives.
    fn key(&self, field: &str) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.json)
            .ok()
            .and_then(|v| raw_key(&v, field))
            .or_else(|| self.id.as_deref().map(str::to_owned))
    }

    /// The string `field` of the entry, read without parsing the rest (a NIC's network).
    pub fn field(&self, field: &str) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.json)
            .ok()
            .and_then(|v| raw_key(&v, field))
    }
}

impl<'de> Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Plain {
            networks: Vec<Box<serde_json::value::RawValue>>,
            nodes: Vec<Box<serde_json::value::RawValue>>,
            nics: Vec<Box<serde_json::value::RawValue>>,
        }
        let p = Plain::deserialize(d)?;
        let wrap = |v: Vec<Box<serde_json::value::RawValue>>| {
            v.iter()
                .map(|r| RawEntry::json(r.get().as_bytes()))
                .collect()
        };
        Ok(Self {
            networks: wrap(p.networks),
            nodes: wrap(p.nodes),
            nics: wrap(p.nics),
        })
    }
}

/// Why an entry was rejected; the label of `holdfast_ipam_rejected_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidDocument,
    InvalidJson,
    InvalidField,
    InvalidMac,
    InvalidAddress,
    OutsideSubnet,
    ReservedAddress,
    DuplicateIp,
    DuplicateMac,
    DuplicateId,
    DuplicateVni,
    UnknownNetwork,
    UnknownNode,
    MissingInterface,
    MtuOutOfRange,
    MtuExceedsUnderlay,
    DuplicateVtep,
    VniOutOfRange,
    InvalidLeaseTime,
    InvalidName,
    OptionsTooLong,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::InvalidDocument,
        Reason::InvalidJson,
        Reason::InvalidField,
        Reason::InvalidMac,
        Reason::InvalidAddress,
        Reason::OutsideSubnet,
        Reason::ReservedAddress,
        Reason::DuplicateIp,
        Reason::DuplicateMac,
        Reason::DuplicateId,
        Reason::DuplicateVni,
        Reason::UnknownNetwork,
        Reason::UnknownNode,
        Reason::MissingInterface,
        Reason::MtuOutOfRange,
        Reason::MtuExceedsUnderlay,
        Reason::DuplicateVtep,
        Reason::VniOutOfRange,
        Reason::InvalidLeaseTime,
        Reason::InvalidName,
        Reason::OptionsTooLong,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidDocument => "invalid_document",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidMac => "invalid_mac",
            Reason::InvalidAddress => "invalid_address",
            Reason::OutsideSubnet => "outside_subnet",
            Reason::ReservedAddress => "reserved_address",
            Reason::DuplicateIp => "duplicate_ip",
            Reason::DuplicateMac => "duplicate_mac",
            Reason::DuplicateId => "duplicate_id",
            Reason::DuplicateVni => "duplicate_vni",
            Reason::UnknownNetwork => "unknown_network",
            Reason::UnknownNode => "unknown_node",
            Reason::MissingInterface => "missing_interface",
            Reason::MtuOutOfRange => "mtu_out_of_range",
            Reason::MtuExceedsUnderlay => "mtu_exceeds_underlay",
            Reason::DuplicateVtep => "duplicate_vtep",
            Reason::VniOutOfRange => "vni_out_of_range",
            Reason::InvalidLeaseTime => "invalid_lease_time",
            Reason::InvalidName => "invalid_name",
            Reason::OptionsTooLong => "options_too_long",
        }
    }
}

/// One rejected entry, with what is wrong in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Where the entry sits in the document, for example `nics[3]`.
    pub entry: String,
    /// The entry's key when it could be read (network id, node name, MAC).
    pub key: Option<String>,
    pub reason: Reason,
    pub detail: String,
    /// Whether the entry's last good version keeps serving in its place.
    pub kept_last_good: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.entry)?;
        if let Some(key) = &self.key {
            write!(f, " ({key})")?;
        }
        write!(f, ": {}: {}", self.reason.label(), self.detail)?;
        if self.kept_last_good {
            write!(f, "; its last good version keeps serving")?;
        }
        Ok(())
    }
}

/// The outcome of validating a document.
#[derive(Debug)]
pub struct Validated {
    pub model: Model,
    pub rejections: Vec<Rejection>,
}

/// Checks that a NIC's DHCP options fit; supplied by the DHCP renderer so the model stays free
/// of wire formats.
pub trait OptionsBudget {
    /// `Err(detail)` when the network's and NIC's options do not fit in a reply.
    fn check(&self, network: &Network, nic: &Nic) -> Result<(), String>;
}

struct Reject {
    reason: Reason,
    detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// Deserializes one entry, naming the field that is wrong.
fn parse_entry<T: DeserializeOwned>(json: &[u8]) -> Result<T, Reject> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if parsed.is_ok()
        && let Err(e) = de.end()
    {
        return Err(Reject {
            reason: Reason::InvalidJson,
            detail: format!("not JSON: {e}"),
        });
    }
    parsed.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        ) {
            return Reject {
                reason: Reason::InvalidJson,
                detail: format!("not JSON: {inner}"),
            };
        }
        let inner = inner.to_string();
        let reason = if inner.contains("MAC address") {
            Reason::InvalidMac
        } else if inner.contains("IP address") || inner.contains("invalid IPv4") {
            Reason::InvalidAddress
        } else {
            Reason::InvalidField
        };
        let detail = if path == "." {
            inner
        } else {
            format!("field `{path}`: {inner}")
        };
        Reject { reason, detail }
    })
}

fn raw_key(value: &serde_json::Value, field: &str) -> Option<String> {
    value.get(field).and_then(|v| v.as_str()).map(str::to_owned)
}

fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 with the terminating NUL.
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn check_network(n: &Network, limits: &Limits) -> Result<(), Reject> {
    if n.id.is_empty() {
        return Err(reject(Reason::InvalidField, "field `id` is empty"));
    }
    if n.vni == 0 || n.vni > VNI_MAX {
        return Err(reject(
            Reason::VniOutOfRange,
            format!("vni {} is outside 1..={VNI_MAX}", n.vni),
        ));
    }
    if n.subnet.prefix_len() > 30 {
        return Err(reject(
            Reason::InvalidField,
            format!(
                "subnet {} leaves no room for hosts (prefix must be /30 or shorter)",
                n.subnet
            ),
        ));
    }
    if n.subnet != n.subnet.trunc() {
        return Err(reject(
            Reason::InvalidField,
            format!(
                "subnet {} has host bits set (did you mean {}?)",
                n.subnet,
                n.subnet.trunc()
            ),
        ));
    }
    if !n.subnet.contains(&n.gateway) {
        return Err(reject(
            Reason::OutsideSubnet,
            format!("gateway {} is outside subnet {}", n.gateway, n.subnet),
        ));
    }
    if n.gateway == n.subnet.network() || n.gateway == n.subnet.broadcast() {
        return Err(reject(
            Reason::ReservedAddress,
            format!(
                "gateway {} is the network or broadcast address of {}",
                n.gateway, n.subnet
            ),
        ));
    }
    if let Some(mtu) = n.mtu
        && !(MTU_MIN..=MTU_MAX).contains(&mtu)
    {
        return Err(reject(
            Reason::MtuOutOfRange,
            format!("mtu {mtu} is outside {MTU_MIN}..={MTU_MAX}"),
        ));
    }
    if let Some(underlay) = limits.underlay_mtu
        && u32::from(n.effective_mtu()) + VXLAN_MTU_OVERHEAD > underlay
    {
        return Err(reject(
            Reason::MtuExceedsUnderlay,
            format!(
                "mtu {}{} plus {VXLAN_MTU_OVERHEAD} bytes of VXLAN exceeds the underlay MTU {underlay}",
                n.effective_mtu(),
                if n.mtu.is_none() {
                    " (not set: 1500)"
                } else {
                    ""
                }
            ),
        ));
    }
    if n.lease_time < 10 {
        return Err(reject(
            Reason::InvalidLeaseTime,
            format!("lease_time {} s is shorter than 10 s", n.lease_time),
        ));
    }
    if let Some(domain) = &n.domain
        && !valid_dns_name(domain)
    {
        return Err(reject(
            Reason::InvalidName,
            format!("domain {domain:?} is not a DNS name"),
        ));
    }
    if let Some(bad) = n.search.iter().find(|s| !valid_dns_name(s)) {
        return Err(reject(
            Reason::InvalidName,
            format!("search domain {bad:?} is not a DNS name"),
        ));
    }
    for r in &n.routes {
        if r.to != r.to.trunc() {
            return Err(reject(
                Reason::InvalidField,
                format!("route to {} has host bits set", r.to),
            ));
        }
        if !n.subnet.contains(&r.via) {
            return Err(reject(
                Reason::OutsideSubnet,
                format!(
                    "route to {} goes via {}, outside subnet {}",
                    r.to, r.via, n.subnet
                ),
            ));
        }
    }
    Ok(())
}

fn check_nic(nic: &Nic, net: &Network, this_node: &str) -> Result<(), Reject> {
    if !nic.mac.is_unicast() {
        return Err(reject(
            Reason::InvalidMac,
            format!("{} is not a unicast MAC address", nic.mac),
        ));
    }
    if !net.subnet.contains(&nic.ip) {
        return Err(reject(
            Reason::OutsideSubnet,
            format!(
                "ip {} is outside subnet {} of network {}",
                nic.ip, net.subnet, net.id
            ),
        ));
    }
    if nic.ip == net.subnet.network() || nic.ip == net.subnet.broadcast() || nic.ip == net.gateway {
        return Err(reject(
            Reason::ReservedAddress,
            format!(
                "ip {} is the network, broadcast or gateway address of {}",
                nic.ip, net.id
            ),
        ));
    }
    if let Some(h) = &nic.hostname
        && !valid_dns_name(h)
    {
        return Err(reject(
            Reason::InvalidName,
            format!("hostname {h:?} is not a DNS name"),
        ));
    }
    match &nic.interface {
        Some(i) if !valid_interface_name(i) => {
            return Err(reject(
                Reason::InvalidName,
                format!("interface {i:?} is not a valid interface name"),
            ));
        }
        None if *nic.node == *this_node => {
            return Err(reject(
                Reason::MissingInterface,
                format!("NIC on this node ({this_node}) has no `interface`"),
            ));
        }
        _ => {}
    }
    Ok(())
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

/// Validates `doc` for node `this_node`. `prev` is the model serving now: rejected entries keep
/// their version from it, and it wins ties between duplicates.
pub fn validate(
    doc: &RawDocument,
    prev: Option<&Model>,
    this_node: &str,
    limits: &Limits,
    budget: &dyn OptionsBudget,
) -> Validated {
    let empty = Model::default();
    let prev = prev.unwrap_or(&empty);
    let mut rejections = Vec::new();
    let mut model = Model::default();

    // Networks.
    let mut nets: Accepted<String, Network> = Accepted::new();
    let mut failed_nets = BTreeSet::new();
    for (i, raw) in doc.networks.iter().enumerate() {
        let entry = raw.label("networks", i);
        let parsed = raw
            .parse::<Network>()
            .and_then(|n| check_network(&n, limits).map(|()| n));
        match parsed {
            Ok(n) => {
                let id = n.id.clone();
                if let Some((lost, _)) = nets.insert(id.clone(), i, n, prev.networks.get(&id)) {
                    rejections.push(Rejection {
                        entry: doc.networks[lost].label("networks", lost),
                        key: Some(id),
                        reason: Reason::DuplicateId,
                        detail: "another network has the same id".into(),
                        kept_last_good: false,
                    });
                }
            }
            Err(r) => {
                let key = raw.key("id");
                if let Some(k) = &key {
                    failed_nets.insert(k.clone());
                }
                rejections.push(Rejection {
                    entry,
                    key,
                    reason: r.reason,
                    detail: r.detail,
                    kept_last_good: false,
                });
            }
        }
    }
    for (id, (_, n)) in nets.map {
        model.networks.insert(id, n);
    }
    keep_last_good(
        &mut model.networks,
        &prev.networks,
        &failed_nets,
        &mut rejections,
    );
    // VNIs are unique: of two networks with one VNI, the one serving now stays.
    let mut by_vni: HashMap<u32, String> = HashMap::new();
    let mut dup_vni = Vec::new();
    for (id, n) in &model.networks {
        if let Some(other) = by_vni.get(&n.vni) {
            // The one serving now stays; otherwise the first (by id) does.
            let this_serving = prev.networks.get(id) == Some(n);
            let other_serving = prev.networks.get(other) == model.networks.get(other);
            let keep_other = other_serving || !this_serving;
            let loser = if keep_other {
                id.clone()
            } else {
                other.clone()
            };
            dup_vni.push((loser.clone(), n.vni));
            if !keep_other {
                by_vni.insert(n.vni, id.clone());
            }
        } else {
            by_vni.insert(n.vni, id.clone());
        }
    }
    for (id, vni) in dup_vni {
        model.networks.remove(&id);
        rejections.push(Rejection {
            entry: "networks".into(),
            key: Some(id),
            reason: Reason::DuplicateVni,
            detail: format!("vni {vni} is used by another network"),
            kept_last_good: false,
        });
    }

    // Nodes.
    let mut nodes: Accepted<String, Node> = Accepted::new();
    let mut failed_nodes = BTreeSet::new();
    for (i, raw) in doc.nodes.iter().enumerate() {
        let entry = raw.label("nodes", i);
        match raw.parse::<Node>() {
            Ok(n) if n.name.is_empty() => rejections.push(Rejection {
                entry,
                key: None,
                reason: Reason::InvalidField,
                detail: "field `name` is empty".into(),
                kept_last_good: false,
            }),
            Ok(n) => {
                let name = n.name.clone();
                if let Some((lost, _)) = nodes.insert(name.clone(), i, n, prev.nodes.get(&name)) {
                    rejections.push(Rejection {
                        entry: doc.nodes[lost].label("nodes", lost),
                        key: Some(name),
                        reason: Reason::DuplicateId,
                        detail: "another node has the same name".into(),
                        kept_last_good: false,
                    });
                }
            }
            Err(r) => {
                let key = raw.key("name");
                if let Some(k) = &key {
                    failed_nodes.insert(k.clone());
                }
                rejections.push(Rejection {
                    entry,
                    key,
                    reason: r.reason,
                    detail: r.detail,
                    kept_last_good: false,
                });
            }
        }
    }
    for (name, (_, n)) in nodes.map {
        model.nodes.insert(name, n);
    }
    keep_last_good(
        &mut model.nodes,
        &prev.nodes,
        &failed_nodes,
        &mut rejections,
    );

    // One VTEP per node: of two nodes claiming one, the one serving now stays, otherwise the
    // first (by name).
    let mut by_vtep: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut dup_vtep = Vec::new();
    for (name, n) in &model.nodes {
        match by_vtep.get(&n.vtep) {
            Some(other) => {
                let this_serving = prev.nodes.get(name) == Some(n);
                let other_serving = prev.nodes.get(other) == model.nodes.get(other);
                if other_serving || !this_serving {
                    dup_vtep.push((name.clone(), n.vtep));
                } else {
                    dup_vtep.push((other.clone(), n.vtep));
                    by_vtep.insert(n.vtep, name.clone());
                }
            }
            None => {
                by_vtep.insert(n.vtep, name.clone());
            }
        }
    }
    for (name, vtep) in dup_vtep {
        model.nodes.remove(&name);
        rejections.push(Rejection {
            entry: "nodes".into(),
            key: Some(name),
            reason: Reason::DuplicateVtep,
            detail: format!("vtep {vtep} is used by another node"),
            kept_last_good: false,
        });
    }

    // NICs.
    let mut nics: Accepted<MacAddr, Nic> = Accepted::new();
    let mut failed_nics = BTreeSet::new();
    let mut names = Names::default();
    for (i, raw) in doc.nics.iter().enumerate() {
        let parsed = raw.parse::<Nic>().and_then(|mut nic| {
            let net = model.networks.get(&*nic.network).ok_or_else(|| {
                reject(
                    Reason::UnknownNetwork,
                    format!("network {:?} does not exist", nic.network),
                )
            })?;
            if !model.nodes.contains_key(&*nic.node) {
                return Err(reject(
                    Reason::UnknownNode,
                    format!("node {:?} does not exist", nic.node),
                ));
            }
            check_nic(&nic, net, this_node)?;
            budget
                .check(net, &nic)
                .map_err(|d| reject(Reason::OptionsTooLong, d))?;
            names.share(&mut nic);
            Ok(nic)
        });
        match parsed {
            Ok(nic) => {
                let mac = nic.mac;
                if let Some((lost, _)) = nics.insert(mac, i, nic, prev.nics.get(&mac)) {
                    rejections.push(Rejection {
                        entry: doc.nics[lost].label("nics", lost),
                        key: Some(mac.to_string()),
                        reason: Reason::DuplicateMac,
                        detail: "another NIC has the same MAC".into(),
                        kept_last_good: false,
                    });
                }
            }
            Err(r) => {
                let key = raw.key("mac");
                if let Some(mac) = key.as_deref().and_then(|k| k.parse::<MacAddr>().ok()) {
                    failed_nics.insert(mac);
                }
                rejections.push(Rejection {
                    entry: raw.label("nics", i),
                    key,
                    reason: r.reason,
                    detail: r.detail,
                    kept_last_good: false,
                });
            }
        }
    }
    let mut accepted_nics: Vec<(usize, Nic)> = nics.map.into_values().collect();
    // Last good versions of rejected NICs, still consistent with the new networks and nodes.
    for mac in &failed_nics {
        if let Some(old) = prev.nics.get(mac)
            && !accepted_nics.iter().any(|(_, n)| n.mac == *mac)
            && let Some(net) = model.networks.get(&*old.network)
            && model.nodes.contains_key(&*old.node)
            && check_nic(old, net, this_node).is_ok()
        {
            accepted_nics.push((usize::MAX, old.clone()));
            mark_kept(&mut rejections, &mac.to_string());
        }
    }
    // One address per network: the NIC serving it now keeps it, else the first in the document.
    accepted_nics.sort_by_key(|(i, n)| (prev.nics.get(&n.mac) != Some(n), *i));
    let mut ips: HashMap<(&str, Ipv4Addr), MacAddr> = HashMap::new();
    let mut kept = Vec::new();
    for (i, nic) in &accepted_nics {
        match ips.get(&(&*nic.network, nic.ip)) {
            Some(owner) => rejections.push(Rejection {
                entry: match doc.nics.get(*i) {
                    Some(raw) => raw.label("nics", *i),
                    None => "nics".into(),
                },
                key: Some(nic.mac.to_string()),
                reason: Reason::DuplicateIp,
                detail: format!(
                    "ip {} in network {} is already held by {owner}",
                    nic.ip, nic.network
                ),
                kept_last_good: false,
            }),
            None => {
                ips.insert((&*nic.network, nic.ip), nic.mac);
                kept.push(nic.clone());
            }
        }
    }
    for nic in kept {
        model.nics.insert(nic.mac, nic);
    }
    rejections.sort_by(|a, b| a.entry.cmp(&b.entry));
    Validated { model, rejections }
}

/// The outcome of validating some networks again.
#[derive(Debug)]
pub struct Revalidated {
    pub validated: Validated,
    /// The MACs each of those networks holds now.
    pub nics_of: BTreeMap<String, BTreeSet<MacAddr>>,
}

/// Validates some networks again and merges the result into the model serving now: every
/// other network and its NICs stay as they are. `sub` holds those networks' entries, all their
/// NICs and every node; `old` the MACs the networks held before. A network or NIC that
/// conflicts with an entry of another network (one VNI, one MAC) loses: the other serves now.
/// The same rules as [`validate`], in time proportional to the networks, not to the cloud.
pub fn revalidate(
    sub: &RawDocument,
    networks: &BTreeSet<String>,
    old: &BTreeSet<MacAddr>,
    prev: &Model,
    this_node: &str,
    limits: &Limits,
    budget: &dyn OptionsBudget,
) -> Revalidated {
    let part = validate(sub, Some(prev), this_node, limits, budget);
    let mut model = prev.clone();
    for id in networks {
        model.networks.remove(id);
    }
    for mac in old {
        model.nics.remove(mac);
    }
    // Nodes are judged by complete documents only: what the sub-document says of them stands
    // neither way.
    let node_labels: BTreeSet<String> = sub
        .nodes
        .iter()
        .enumerate()
        .map(|(i, e)| e.label("nodes", i))
        .collect();
    let mut rejections: Vec<Rejection> = part
        .rejections
        .into_iter()
        .filter(|r| !node_labels.contains(&r.entry))
        .collect();
    let vnis: HashMap<u32, String> = model
        .networks
        .iter()
        .map(|(id, n)| (n.vni, id.clone()))
        .collect();
    for (id, n) in part.model.networks {
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
        model.networks.insert(id, n);
    }
    let mut nics_of: BTreeMap<String, BTreeSet<MacAddr>> = networks
        .iter()
        .map(|n| (n.clone(), BTreeSet::new()))
        .collect();
    for (mac, nic) in part.model.nics {
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
        } else {
            model.nics.get(&mac).map(|holder| {
                (
                    Reason::DuplicateMac,
                    format!("a NIC of network {} has the same MAC", holder.network),
                )
            })
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
    Revalidated {
        validated: Validated { model, rejections },
        nics_of,
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

/// Parses a whole document. Only a document that is not JSON, or lacks one of the three lists,
/// fails here; entries are checked one by one by [`validate`].
pub fn parse_document(bytes: &[u8]) -> Result<RawDocument, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct NoBudget;
    impl OptionsBudget for NoBudget {
        fn check(&self, _: &Network, _: &Nic) -> Result<(), String> {
            Ok(())
        }
    }

    fn doc(v: serde_json::Value) -> RawDocument {
        serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({
            "networks": [
                {"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                 "mtu": 1450, "dns": ["10.10.0.2"]},
                {"id": "red", "vni": 1002, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1"}
            ],
            "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}, {"name": "hv-2", "vtep": "198.18.0.2"}],
            "nics": [
                {"mac": "02:00:00:00:00:01", "network": "blue", "ip": "10.10.0.11", "node": "hv-1", "interface": "tap1"},
                {"mac": "02:00:00:00:00:02", "network": "red", "ip": "10.10.0.11", "node": "hv-1", "interface": "tap2"},
                {"mac": "02:00:00:00:00:03", "network": "blue", "ip": "10.10.0.12", "node": "hv-2"}
            ]
        })
    }

    fn reasons(v: &Validated) -> Vec<(String, Reason)> {
        v.rejections
            .iter()
            .map(|r| (r.entry.clone(), r.reason))
            .collect()
    }

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

    /// The sub-document of `networks` as the etcd source builds it: their entries, their NICs
    /// and every node.
    fn sub(d: &serde_json::Value, networks: &[&str]) -> RawDocument {
        let keep = |v: &serde_json::Value, field: &str| {
            networks.contains(&v[field].as_str().unwrap_or_default())
        };
        let pick = |list: &str, field: &str| -> Vec<serde_json::Value> {
            d[list]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| keep(v, field))
                .cloned()
                .collect()
        };
        doc(
            json!({"networks": pick("networks", "id"), "nodes": d["nodes"], "nics": pick("nics", "network")}),
        )
    }

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
            &prev,
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
            &part.validated.model,
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
    fn a_document_without_its_lists_is_invalid() {
        let err = parse_document(br#"{"networks": []}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `nodes`"), "{err}");
        assert!(parse_document(b"{not json").is_err());
    }

    #[test]
    fn networks_must_fit_the_underlay_and_vteps_are_unique() {
        let limits = Limits {
            underlay_mtu: Some(1500),
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
    fn mac_parsing() {
        assert_eq!(
            "02:00:0A:00:00:ff".parse::<MacAddr>().unwrap().to_string(),
            "02:00:0a:00:00:ff"
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0200.0000.0000",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
