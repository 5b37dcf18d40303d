//! The desired data-plane state: every map entry this host must hold, rendered from the model,
//! this node and the interfaces present now.
//!
//! [`build`] renders it whole. [`patch`] renders again only the networks and NICs a change
//! touched, in a state built before, and must equal what [`build`] renders (a property test
//! below holds it to that): at 100,000 NICs, a change in one network costs that network only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use agent_common::{
    ArpEntry, ArpKey, Binding6, BindingKey, BootKey, DataplaneConfig, FdbEntry, FdbKey,
    ForwarderKey, MAX_ARP, MAX_BINDINGS, MAX_FDB, MAX_NEIGH6, MAX_ROUTES, MAX_VNIS, MAX_VTEPS,
    Neigh6Entry, Neigh6Key, RouteEntry, VniInfo, be32,
};

use super::{
    leases::{self, Lease},
    vpc::{self, Endpoint, FormerServers, LocalNetwork, RouteTo, Station, Vpc},
};
use crate::{
    anchor,
    dataplane::{Desired, RouteKey},
    links::Links,
    model::{Capacity, MacAddr, Model, Nic},
    ports::VmPorts,
};

/// What the data plane's maps hold, for validation to cut a model to.
pub const CAPACITY: Capacity = Capacity {
    bindings: MAX_BINDINGS as usize,
    fdb: MAX_FDB as usize,
    arp: MAX_ARP as usize,
    vnis: MAX_VNIS as usize,
    vteps: MAX_VTEPS as usize,
    routes: MAX_ROUTES as usize,
    // FORWARDERS has the VTEP map's size.
    forwarders: MAX_VTEPS as usize,
};

// The IPv6 maps need no capacity of their own: a network's neighbour answers (its NICs' `ip6`
// and its router) are at most its ARP answers (its NICs and its gateway), BINDINGS6 has
// BINDINGS' size and VNIS6 VNIS'. A model cut to fit those fits these.
const _: () = assert!(MAX_NEIGH6 >= MAX_ARP);

/// What the desired state is rendered from.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub model: Arc<Model>,
    pub node: String,
    pub router_mac: MacAddr,
    /// The interfaces present now, by ifindex.
    pub links: Links,
    /// The underlay interface, when configured and present.
    pub underlay: Option<(u32, String)>,
    /// The metadata-mode VXLAN device, with `[underlay] hook = "tc"` once it exists.
    pub decap: Option<(u32, String)>,
    /// Which interfaces are VM ports: each one present carries the programs, bound or not,
    /// and no binding or forwarding entry names another.
    pub ports: VmPorts,
    /// Whether entries and links not desired are removed: only once a model was validated.
    pub prune: bool,
    /// The networks' former DHCP server identifiers, still answered (ARP, DHCP) for clients
    /// whose lease names one.
    pub former_servers: Arc<FormerServers>,
}

/// What a change touched: the networks whose entries are rendered again, as the VNIs they had
/// and have, and the NICs they had and have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// The changed networks and the MACs of their NICs in the new model.
    pub networks: BTreeMap<String, BTreeSet<MacAddr>>,
    pub vnis: BTreeSet<u32>,
    pub macs: BTreeSet<MacAddr>,
}

impl Touched {
    /// What changing `networks` from `prev` to `next` touches; `nics_before` and `nics_after`
    /// are the MACs of those networks' NICs in each, `index` those of every network in `next`.
    /// The other networks of their VPCs (before and after) are touched too: their routing
    /// tables hold these networks' subnets, and whether a host carries them depends on these
    /// networks' NICs. A change costs the VPCs it is in, not the cloud.
    pub fn new(
        prev: &Model,
        next: &Model,
        nics_before: &BTreeMap<String, BTreeSet<MacAddr>>,
        mut nics_after: BTreeMap<String, BTreeSet<MacAddr>>,
        index: &BTreeMap<String, BTreeSet<MacAddr>>,
    ) -> Self {
        let mut t = Touched::default();
        for set in nics_before.values().chain(nics_after.values()) {
            t.macs.extend(set.iter().copied());
        }
        let changed: BTreeSet<String> = nics_before
            .keys()
            .chain(nics_after.keys())
            .cloned()
            .collect();
        for id in vpc::vpc_members(prev, next, &changed) {
            for m in [prev, next] {
                if let Some(n) = m.networks.get(&id) {
                    t.vnis.insert(n.vni);
                }
            }
            if let std::collections::btree_map::Entry::Vacant(e) = nics_after.entry(id) {
                let macs = index.get(e.key()).cloned().unwrap_or_default();
                e.insert(macs);
            }
        }
        t.networks = nics_after;
        t
    }
}

/// The whole state the data plane must hold.
pub fn build(i: &Inputs) -> Desired {
    let vpc = vpc::derive_with(&i.model, &i.node, i.router_mac, &i.former_servers);
    let by_name = ports_by_name(i);
    let mut d = Desired {
        prune: i.prune,
        ..Desired::default()
    };
    add_bindings(
        &mut d,
        leases::served(&i.model, &i.node, i.model.nics.values()),
        &by_name,
    );
    add_bindings6(&mut d, i, i.model.nics.values(), &by_name);
    d.interfaces = by_name.iter().map(|(n, i)| (*i, (*n).to_owned())).collect();
    for &vni in vpc.vnis.keys() {
        add_vni(&mut d, &vpc, vni, &by_name);
    }
    for vtep in &vpc.vteps {
        d.vteps.insert(be32(*vtep), 1);
    }
    if let Some((ifindex, name)) = &i.underlay {
        d.underlay = Some((*ifindex, name.clone()));
        d.decap.clone_from(&i.decap);
        let fib_ifindex = i
            .links
            .iter()
            .find(|(_, l)| l.name == anchor::DEFAULT_NAME)
            .map_or(0, |(i, _)| *i);
        d.config = DataplaneConfig {
            vtep: vpc.vtep.map(be32).unwrap_or(0),
            underlay_ifindex: *ifindex,
            fib_ifindex,
            _pad: 0,
        };
    }
    d
}

/// Brings the entries of the networks and NICs `t` names in `d` (built from an earlier model
/// in which only those changed) up to date with `i`.
pub fn patch(d: &mut Desired, i: &Inputs, t: &Touched) {
    let by_name = ports_by_name(i);
    let mut part = Vpc::default();
    vpc::derive_networks(
        &i.model,
        &t.networks,
        &i.node,
        i.router_mac,
        &i.former_servers,
        &mut part,
    );
    for &vni in &t.vnis {
        let fdb: Vec<FdbKey> = d
            .fdb
            .range(FdbKey::new(vni, [0; 6])..=FdbKey::new(vni, [0xff; 6]))
            .map(|(k, _)| *k)
            .collect();
        for k in fdb {
            d.fdb.remove(&k);
        }
        let arp: Vec<ArpKey> = d
            .arp
            .range(ArpKey { vni, ip: 0 }..=ArpKey { vni, ip: u32::MAX })
            .map(|(k, _)| *k)
            .collect();
        for k in arp {
            d.arp.remove(&k);
        }
        let neigh6: Vec<Neigh6Key> = d
            .neigh6
            .range(Neigh6Key::new(vni, [0; 16])..=Neigh6Key::new(vni, [0xff; 16]))
            .map(|(k, _)| *k)
            .collect();
        for k in neigh6 {
            d.neigh6.remove(&k);
        }
        let routes: Vec<RouteKey> = d
            .routes
            .range(RouteKey::first(vni)..=RouteKey::last(vni))
            .map(|(k, _)| *k)
            .collect();
        for k in routes {
            d.routes.remove(&k);
        }
        let forwarding: Vec<FdbKey> = d
            .forwarding
            .range(FdbKey::new(vni, [0; 6])..=FdbKey::new(vni, [0xff; 6]))
            .map(|(k, _)| *k)
            .collect();
        for k in forwarding {
            d.forwarding.remove(&k);
        }
        let forwarders: Vec<ForwarderKey> = d
            .forwarders
            .range(
                ForwarderKey { vni, vtep: 0 }..=ForwarderKey {
                    vni,
                    vtep: u32::MAX,
                },
            )
            .map(|(k, _)| *k)
            .collect();
        for k in forwarders {
            d.forwarders.remove(&k);
        }
        d.vnis.remove(&vni);
        d.ra6.remove(&vni);
        d.dhcp6.remove(&vni);
        add_vni(d, &part, vni, &by_name);
    }
    if !t.macs.is_empty() {
        let stale: Vec<BindingKey> = d
            .bindings
            .keys()
            .filter(|k| t.macs.contains(&MacAddr(k.mac)))
            .copied()
            .collect();
        for k in stale {
            d.bindings.remove(&k);
        }
        let stale: Vec<BootKey> = d
            .boot
            .keys()
            .filter(|k| t.macs.contains(&MacAddr(k.mac)))
            .copied()
            .collect();
        for k in stale {
            d.boot.remove(&k);
        }
        let stale: Vec<BindingKey> = d
            .bindings6
            .keys()
            .filter(|k| t.macs.contains(&MacAddr(k.mac)))
            .copied()
            .collect();
        for k in stale {
            d.bindings6.remove(&k);
        }
        let nics = t.macs.iter().filter_map(|m| i.model.nics.get(m));
        add_bindings(d, leases::served(&i.model, &i.node, nics), &by_name);
        let nics = t.macs.iter().filter_map(|m| i.model.nics.get(m));
        add_bindings6(d, i, nics, &by_name);
    }
    d.interfaces = by_name.iter().map(|(n, i)| (*i, (*n).to_owned())).collect();
}

/// The VM ports present, by name: the only interfaces bindings and local forwarding entries
/// may name, and every one of them carries the programs (a port with no binding drops what
/// its VM sends rather than hand it to the host unchecked).
fn ports_by_name(i: &Inputs) -> BTreeMap<&str, u32> {
    i.links
        .iter()
        .filter(|(_, l)| i.ports.is_port(&l.name))
        .map(|(ifindex, l)| (l.name.as_str(), *ifindex))
        .collect()
}

/// Adds the forwarding entries of network `vni` that `vpc` holds.
fn add_vni(d: &mut Desired, vpc: &Vpc, vni: u32, by_name: &BTreeMap<&str, u32>) {
    let Some(net) = vpc.vnis.get(&vni) else {
        return;
    };
    d.vnis.insert(vni, vni_info(net));
    for ((v, mac), station) in vpc
        .fdb
        .range((vni, MacAddr([0; 6]))..=(vni, MacAddr([0xff; 6])))
    {
        if let Some(entry) = fdb_entry(station, by_name) {
            d.fdb.insert(FdbKey::new(*v, mac.0), entry);
        }
    }
    for ((v, addr), mac) in vpc
        .arp
        .range((vni, Ipv4Addr::UNSPECIFIED)..=(vni, Ipv4Addr::BROADCAST))
    {
        let (k, e) = arp_entry(*v, *addr, *mac);
        d.arp.insert(k, e);
    }
    if let Some(ra) = vpc.ra6.get(&vni) {
        d.ra6.insert(vni, *ra);
    }
    for ((_, dst), to) in vpc
        .routes
        .range((vni, ipnet::Ipv4Net::default())..)
        .take_while(|((v, _), _)| *v == vni)
    {
        d.routes.insert(RouteKey::new(vni, *dst), route_entry(*to));
    }
    for (v, mac) in vpc
        .forwarding
        .range((vni, MacAddr([0; 6]))..=(vni, MacAddr([0xff; 6])))
    {
        d.forwarding.insert(FdbKey::new(*v, mac.0), 1);
    }
    for (v, vtep) in vpc
        .forwarders
        .range((vni, Ipv4Addr::UNSPECIFIED)..=(vni, Ipv4Addr::BROADCAST))
    {
        d.forwarders.insert(
            ForwarderKey {
                vni: *v,
                vtep: be32(*vtep),
            },
            1,
        );
    }
    if let Some(o) = vpc.dhcp6.get(&vni) {
        d.dhcp6.insert(vni, *o);
    }
    for ((v, addr), (mac, router)) in vpc
        .neigh6
        .range((vni, Ipv6Addr::UNSPECIFIED)..=(vni, Ipv6Addr::from(u128::MAX)))
    {
        d.neigh6.insert(
            Neigh6Key::new(*v, addr.octets()),
            Neigh6Entry {
                mac: mac.0,
                router: u8::from(*router),
                _pad: 0,
            },
        );
    }
}

/// Adds the `ip6` of those of `nics` on this node that have one, on a VM port present, in a
/// network with `subnet6`: the address its port's programs hold the VM to.
fn add_bindings6<'a>(
    d: &mut Desired,
    i: &Inputs,
    nics: impl Iterator<Item = &'a Nic>,
    by_name: &BTreeMap<&str, u32>,
) {
    for nic in nics.filter(|n| *n.node == *i.node) {
        let (Some(ip6), Some(interface)) = (nic.ip6, nic.interface.as_deref()) else {
            continue;
        };
        let Some(net) = i.model.networks.get(&*nic.network) else {
            continue;
        };
        if net.subnet6.is_none() {
            continue;
        }
        if let Some(&ifindex) = by_name.get(interface) {
            d.bindings6.insert(
                BindingKey::new(ifindex, nic.mac.0),
                Binding6 {
                    ip6: ip6.octets(),
                    vni: net.vni,
                    _pad: 0,
                },
            );
        }
    }
}

/// Adds the bindings of `leases` whose interface is a VM port present.
fn add_bindings<'a>(
    d: &mut Desired,
    leases: impl Iterator<Item = Lease<'a>>,
    by_name: &BTreeMap<&str, u32>,
) {
    for lease in leases {
        if let Some(&ifindex) = by_name.get(lease.interface) {
            d.bindings
                .insert(BindingKey::new(ifindex, lease.mac.0), lease.binding);
            for (variant, entry) in lease.boot {
                d.boot
                    .insert(BootKey::new(ifindex, lease.mac.0, variant), entry);
            }
        }
    }
}

fn fdb_entry(station: &Station, by_name: &BTreeMap<&str, u32>) -> Option<FdbEntry> {
    let ip = be32(station.ip);
    Some(match &station.endpoint {
        Endpoint::Local { interface } => FdbEntry::local(*by_name.get(interface.as_str())?, ip),
        Endpoint::Remote { vtep } => FdbEntry::remote(be32(*vtep), ip),
    })
}

fn arp_entry(vni: u32, addr: Ipv4Addr, mac: MacAddr) -> (ArpKey, ArpEntry) {
    (
        ArpKey {
            vni,
            ip: be32(addr),
        },
        ArpEntry {
            mac: mac.0,
            _pad: [0; 2],
        },
    )
}

fn route_entry(to: RouteTo) -> RouteEntry {
    let (kind, vni, via) = match to {
        RouteTo::Subnet { vni } => (RouteEntry::SUBNET, vni, 0),
        RouteTo::Via { vni, via } => (RouteEntry::VIA, vni, be32(via)),
        RouteTo::Gateway { vni } => (RouteEntry::GATEWAY, vni, 0),
    };
    RouteEntry {
        kind,
        vni,
        via,
        _pad: 0,
    }
}

fn vni_info(net: &LocalNetwork) -> VniInfo {
    VniInfo {
        gateway: be32(net.gateway),
        mtu: net.mtu,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        links::LinkInfo,
        model::{Limits, Model, parse_document, validate},
        ports::Pattern,
        render::options::Budget,
    };

    const ROUTER: MacAddr = MacAddr([2, 0x68, 0x66, 0, 0, 1]);
    const NODES: [&str; 3] = ["hv-1", "hv-2", "hv-3"];
    const NETWORKS: usize = 5;

    #[derive(Clone)]
    struct Net {
        vni: u32,
        third: u8,
        mtu: u16,
        /// With `subnet6` and this many `dns6`.
        v6: Option<u8>,
        /// In VPC `vpc{k}`, or alone.
        vpc: Option<u8>,
        /// `default_via` this host number of the network, and a route via it.
        via: Option<u8>,
    }

    #[derive(Clone)]
    struct NicSpec {
        network: usize,
        host: u8,
        node: usize,
        tap: u8,
        /// With an `ip6`, when its network has IPv6.
        ip6: bool,
        forwarding: bool,
    }

    /// A document from specs, validated as hv-1 sees it.
    fn model(nets: &[Net], nics: &BTreeMap<u8, NicSpec>) -> Model {
        let networks: Vec<_> = nets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut v = serde_json::json!({
                    "id": format!("n{i}"), "vni": n.vni,
                    "subnet": format!("10.{}.0.0/24", n.third),
                    "gateway": format!("10.{}.0.1", n.third), "mtu": n.mtu,
                });
                if let Some(k) = n.vpc {
                    v["vpc"] = serde_json::json!(format!("vpc{k}"));
                }
                if let Some(h) = n.via {
                    let via = format!("10.{}.0.{h}", n.third);
                    v["default_via"] = serde_json::json!(via);
                    v["routes"] =
                        serde_json::json!([{"to": format!("172.16.{}.0/24", n.third), "via": via}]);
                }
                if let Some(dns) = n.v6 {
                    v["subnet6"] = serde_json::json!(format!("fd00:{}::/64", n.third));
                    v["dns6"] = (0..dns)
                        .map(|k| format!("fd00:{}::53:{k}", n.third))
                        .collect();
                }
                v
            })
            .collect();
        let nodes: Vec<_> = NODES
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({ "name": n, "vtep": format!("198.18.0.{}", i + 1) }))
            .collect();
        let nics: Vec<_> = nics
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::json!({
                    "mac": format!("02:00:00:00:00:{id:02x}"),
                    "network": format!("n{}", s.network),
                    "ip": format!("10.{}.0.{}", nets[s.network].third, s.host),
                    "node": NODES[s.node],
                    "interface": format!("tap{}", s.tap),
                });
                if s.forwarding {
                    v["forwarding"] = serde_json::json!(true);
                }
                if s.ip6 && nets[s.network].v6.is_some() {
                    // The same host part in IPv6: duplicates come with IPv4's.
                    v["ip6"] =
                        serde_json::json!(format!("fd00:{}::{:x}", nets[s.network].third, s.host));
                }
                v
            })
            .collect();
        let doc = serde_json::json!({ "networks": networks, "nodes": nodes, "nics": nics });
        let doc = parse_document(doc.to_string().as_bytes()).unwrap();
        validate(&doc, None, "hv-1", &Limits::default(), &Budget).model
    }

    fn inputs(model: Model, links: &Links) -> Inputs {
        Inputs {
            model: Arc::new(model),
            node: "hv-1".into(),
            router_mac: ROUTER,
            links: links.clone(),
            underlay: Some((1, "ul0".into())),
            decap: None,
            ports: ports(),
            prune: true,
            former_servers: Arc::default(),
        }
    }

    fn ports() -> VmPorts {
        VmPorts::new(&[Pattern::parse("tap*").unwrap()], Some("ul0"), "holdfast0")
    }

    fn links(present: &BTreeSet<u8>) -> Links {
        let mut l = Links::new();
        l.insert(
            1,
            LinkInfo {
                name: "ul0".into(),
                mtu: 1600,
                ..LinkInfo::default()
            },
        );
        for tap in present {
            l.insert(
                100 + u32::from(*tap),
                LinkInfo {
                    name: format!("tap{tap}"),
                    mtu: 1500,
                    ..LinkInfo::default()
                },
            );
        }
        l
    }

    /// Taps per network: a tap carries one network's NICs (validation couples networks that
    /// share one, which the etcd source's view accounts for; not this test's subject).
    const TAPS: u8 = 12;

    fn tap_in(network: usize, rng: &mut fastrand::Rng) -> u8 {
        network as u8 * TAPS + rng.u8(..TAPS)
    }

    fn random_nic(rng: &mut fastrand::Rng) -> NicSpec {
        let network = rng.usize(..NETWORKS);
        NicSpec {
            network,
            host: rng.u8(10..50),
            node: rng.usize(..NODES.len()),
            tap: tap_in(network, rng),
            ip6: rng.bool(),
            forwarding: rng.u8(..4) == 0,
        }
    }

    /// Patching the state of a model for the networks a change touched equals rendering the
    /// changed model whole: NICs added, removed, moved between networks, nodes and
    /// interfaces, gaining or losing an `ip6`, and networks changing their MTU or gaining,
    /// losing or changing IPv6, over many seeds.
    #[test]
    fn patching_the_touched_networks_equals_building_whole() {
        let mut seen_v6 = false;
        let mut seen_routes = false;
        for seed in 1..=200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut nets: Vec<Net> = (0..NETWORKS)
                .map(|i| Net {
                    vni: 1000 + i as u32,
                    third: i as u8,
                    mtu: 1400,
                    v6: (i % 2 == 0).then_some(1),
                    vpc: (i < 4).then_some((i % 2) as u8),
                    via: (i % 2 == 0).then(|| rng.u8(10..50)),
                })
                .collect();
            let mut nics: BTreeMap<u8, NicSpec> = BTreeMap::new();
            for id in 0..20 {
                nics.insert(id, random_nic(&mut rng));
            }
            let present: BTreeSet<u8> = (0..NETWORKS as u8 * TAPS)
                .filter(|_| rng.u64(..4) != 0)
                .collect();
            let links = links(&present);
            let before = model(&nets, &nics);
            let mut d = build(&inputs(before.clone(), &links));

            // A change confined to some networks.
            let mut changed: BTreeSet<usize> = BTreeSet::new();
            for _ in 0..1 + rng.u64(..4) {
                match rng.u64(..9) {
                    0 => {
                        let id = rng.u8(20..50);
                        let spec = random_nic(&mut rng);
                        if let Some(old) = nics.get(&id) {
                            changed.insert(old.network);
                        }
                        changed.insert(spec.network);
                        nics.insert(id, spec);
                    }
                    1 => {
                        let id = rng.u8(..50);
                        if let Some(old) = nics.remove(&id) {
                            changed.insert(old.network);
                        }
                    }
                    2 => {
                        let id = rng.u8(..20);
                        if let Some(s) = nics.get_mut(&id) {
                            changed.insert(s.network);
                            s.node = rng.usize(..NODES.len());
                            if rng.u64(..2) == 0 {
                                s.network = rng.usize(..NETWORKS);
                                changed.insert(s.network);
                            }
                            s.tap = tap_in(s.network, &mut rng);
                        }
                    }
                    3 => {
                        let n = rng.usize(..NETWORKS);
                        nets[n].mtu = rng.u16(1300..1400);
                        changed.insert(n);
                    }
                    4 => {
                        // IPv6 comes, goes, or changes its resolvers (its advertisement).
                        let n = rng.usize(..NETWORKS);
                        nets[n].v6 = match rng.u8(..3) {
                            0 => None,
                            k => Some(k),
                        };
                        changed.insert(n);
                    }
                    5 => {
                        let id = rng.u8(..20);
                        if let Some(s) = nics.get_mut(&id) {
                            changed.insert(s.network);
                            s.ip6 = !s.ip6;
                        }
                    }
                    6 => {
                        // A network joins, leaves or changes VPC.
                        let n = rng.usize(..NETWORKS);
                        nets[n].vpc = match rng.u8(..3) {
                            0 => None,
                            k => Some(k - 1),
                        };
                        changed.insert(n);
                    }
                    7 => {
                        // A gateway VM comes or goes: the routes through it with it.
                        let id = rng.u8(..50);
                        if let Some(s) = nics.get_mut(&id) {
                            changed.insert(s.network);
                            s.forwarding = !s.forwarding;
                        }
                    }
                    _ => {
                        let n = rng.usize(..NETWORKS);
                        nets[n].via = rng.bool().then(|| rng.u8(10..50));
                        changed.insert(n);
                    }
                }
            }
            let after = model(&nets, &nics);
            seen_v6 |= !d.neigh6.is_empty() && !d.bindings6.is_empty() && !d.ra6.is_empty();
            let names: BTreeSet<String> = changed.iter().map(|n| format!("n{n}")).collect();
            let of = |m: &Model| {
                let mut all = m.nics_by_network();
                all.retain(|id, _| names.contains(id));
                for id in &names {
                    all.entry(id.clone()).or_default();
                }
                all
            };
            seen_routes |= d.routes.values().any(|r| r.kind == RouteEntry::VIA)
                && d.routes
                    .values()
                    .any(|r| r.kind == RouteEntry::SUBNET && r.vni != 1000)
                && !d.forwarders.is_empty()
                && !d.forwarding.is_empty();
            let touched = Touched::new(
                &before,
                &after,
                &of(&before),
                of(&after),
                &after.nics_by_network(),
            );
            let i = inputs(after, &links);
            patch(&mut d, &i, &touched);
            let whole = build(&i);
            assert_eq!(
                d, whole,
                "seed {seed}: patched state differs from the whole build"
            );
        }
        assert!(seen_v6, "the IPv6 maps were exercised");
        assert!(seen_routes, "the routing maps were exercised");
    }

    #[test]
    fn only_present_interfaces_carry_bindings_and_programs() {
        let nets = vec![Net {
            vni: 1001,
            third: 0,
            mtu: 1450,
            v6: None,
            vpc: None,
            via: None,
        }];
        let mut nics = BTreeMap::new();
        for (id, tap) in [(1, 1), (2, 2)] {
            nics.insert(
                id,
                NicSpec {
                    network: 0,
                    host: 10 + id,
                    node: 0,
                    tap,
                    ip6: false,
                    forwarding: false,
                },
            );
        }
        let d = build(&inputs(model(&nets, &nics), &links(&BTreeSet::from([1]))));
        assert_eq!(d.bindings.len(), 1);
        assert_eq!(d.interfaces, BTreeMap::from([(101, "tap1".to_owned())]));
        // The NIC whose tap is absent has no FDB entry either; the gateway's ARP answer and
        // both NICs' are there.
        assert_eq!(d.fdb.len(), 1);
        assert_eq!(d.arp.len(), 3);
        assert_eq!(d.config.vtep, be32("198.18.0.1".parse().unwrap()));
    }

    /// Every VM port present carries the programs, bound or not; nothing of the host's own
    /// interfaces does, even for a model validated without the host (as a snapshot of an
    /// older build could be).
    #[test]
    fn every_vm_port_and_only_vm_ports_carry_programs() {
        let nets = vec![Net {
            vni: 1001,
            third: 0,
            mtu: 1450,
            v6: None,
            vpc: None,
            via: None,
        }];
        let mut nics = BTreeMap::new();
        nics.insert(
            1,
            NicSpec {
                network: 0,
                host: 11,
                node: 0,
                tap: 1,
                ip6: false,
                forwarding: false,
            },
        );
        let mut m = model(&nets, &nics);
        // NICs naming the underlay and a tap with a host address, accepted by a validation
        // that knew nothing of this host.
        let v = m.nics.values().next().unwrap().clone();
        for (last, iface) in [(0x21, "ul0"), (0x22, "tap3")] {
            let mut n = v.clone();
            n.mac = MacAddr([2, 0, 0, 0, 0, last]);
            n.ip = format!("10.0.0.{last}").parse().unwrap();
            n.interface = Some(iface.into());
            m.nics.insert(n.mac, n);
        }
        let mut l = links(&BTreeSet::from([1, 2, 3]));
        l.get_mut(&103)
            .unwrap()
            .addresses
            .insert("192.0.2.1".parse().unwrap());
        let mut i = inputs(m, &l);
        i.ports = i.ports.with_links(&l);
        let d = build(&i);
        // tap2 has no binding and carries the programs; tap3 and ul0 carry none.
        assert_eq!(
            d.interfaces,
            BTreeMap::from([(101, "tap1".to_owned()), (102, "tap2".to_owned())])
        );
        assert_eq!(
            d.bindings.keys().map(|k| k.ifindex).collect::<Vec<_>>(),
            [101]
        );
        assert!(
            d.fdb.values().all(|e| e.ifindex == 101),
            "no forwarding entry leads to ul0 or tap3: {:?}",
            d.fdb
        );
        assert_eq!(d.underlay, Some((1, "ul0".into())));
    }

    #[test]
    fn a_dual_stack_network_renders_its_addresses_neighbours_and_advertisement() {
        let nets = vec![
            Net {
                vni: 1001,
                third: 0,
                mtu: 1450,
                v6: Some(2),
                vpc: None,
                via: None,
            },
            Net {
                vni: 1002,
                third: 1,
                mtu: 1450,
                v6: None,
                vpc: None,
                via: None,
            },
        ];
        let spec = |network, host, node, tap, ip6| NicSpec {
            network,
            host,
            node,
            tap,
            ip6,
            forwarding: false,
        };
        let nics = BTreeMap::from([
            // Here, on a present tap, with and without ip6; here on an absent tap; remote.
            (1, spec(0, 11, 0, 1, true)),
            (2, spec(0, 12, 0, 2, false)),
            (3, spec(0, 13, 0, 3, true)),
            (4, spec(0, 14, 1, 4, true)),
            // An IPv4-only network here.
            (5, spec(1, 15, 0, 5, true)),
        ]);
        let d = build(&inputs(
            model(&nets, &nics),
            &links(&BTreeSet::from([1, 2, 5])),
        ));
        let ip6 = |h: u8| {
            format!("fd00:0::{h:x}")
                .parse::<Ipv6Addr>()
                .unwrap()
                .octets()
        };
        // BINDINGS6: the local NIC with an ip6 on a present VM port, and no other.
        assert_eq!(
            d.bindings6
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>(),
            [(
                BindingKey::new(101, [2, 0, 0, 0, 0, 1]),
                Binding6 {
                    ip6: ip6(11),
                    vni: 1001,
                    _pad: 0
                }
            )]
        );
        // NEIGH6: every ip6 of the network, local or remote (the NIC on an absent tap too, as
        // its ARP answer), and the router.
        let router = ROUTER.eui64_link_local().octets();
        let n = |mac: [u8; 6], router| Neigh6Entry {
            mac,
            router,
            _pad: 0,
        };
        assert_eq!(
            d.neigh6.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            [
                (Neigh6Key::new(1001, ip6(11)), n([2, 0, 0, 0, 0, 1], 0)),
                (Neigh6Key::new(1001, ip6(13)), n([2, 0, 0, 0, 0, 3], 0)),
                (Neigh6Key::new(1001, ip6(14)), n([2, 0, 0, 0, 0, 4], 0)),
                (Neigh6Key::new(1001, router), n(ROUTER.0, 1)),
            ]
        );
        // VNIS6: the dual-stack network's advertisement only.
        assert_eq!(d.ra6.keys().copied().collect::<Vec<_>>(), [1001]);
        let ra = d.ra6[&1001];
        assert_eq!(usize::from(ra.len), 12 + 48 + 8 + 32);
        assert_eq!(
            ra.csum,
            agent_common::csum_partial(&ra.body[..usize::from(ra.len)])
        );
    }
}
