//! The VPC forwarding state this host needs, derived from the model.
//!
//! A host carries every network of each VPC it has a NIC in (a network without `vpc` is a VPC
//! of its own): every NIC of those networks (local ones on their interface, remote ones behind
//! their node's VTEP), an ARP answer for every address of those networks (gateways resolve to
//! the router MAC), each network's routing table (the VPC's subnets and gateways, its routes
//! and `default_via` through forwarding NICs), the forwarding NICs, the VTEPs hosting them,
//! and the VTEPs of all known nodes. Nothing of the other VPCs: a change there does not
//! concern it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use agent_common::{Dhcp6Net, Ra6};
use ipnet::Ipv4Net;

use super::{dhcp6, ra6};
use crate::model::{MacAddr, Model, Network, Nic};

/// Which VPC a network is in: the one it names, or its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VpcKey<'a> {
    Named(&'a str),
    /// A network without `vpc`, by its id: it reaches only itself.
    Alone(&'a str),
}

impl<'a> VpcKey<'a> {
    pub fn of(net: &'a Network) -> Self {
        match &net.vpc {
            Some(name) => VpcKey::Named(name),
            None => VpcKey::Alone(&net.id),
        }
    }
}

/// Where the longest prefix of a destination leads, in the table of the network a frame comes
/// from (rendered into `agent_common::RouteEntry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTo {
    /// A subnet of the VPC: resolved in network `vni` by the destination address.
    Subnet { vni: u32 },
    /// A route or `default_via`: to the forwarding NIC at `via` in network `vni`.
    Via { vni: u32, via: Ipv4Addr },
    /// A gateway address of the VPC's network `vni`: ICMP echo is answered there.
    Gateway { vni: u32 },
}

/// Where a NIC is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// On this host, on this interface.
    Local { interface: String },
    /// Behind another node's VTEP.
    Remote { vtep: Ipv4Addr },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Station {
    pub ip: Ipv4Addr,
    pub endpoint: Endpoint,
}

/// A network with NICs here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalNetwork {
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Derived when the desired state is built and dropped after: the model is what is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vpc {
    /// This node's VTEP, when the model knows this node.
    pub vtep: Option<Ipv4Addr>,
    pub fdb: BTreeMap<(u32, MacAddr), Station>,
    pub arp: BTreeMap<(u32, Ipv4Addr), MacAddr>,
    pub vteps: BTreeSet<Ipv4Addr>,
    pub vnis: BTreeMap<u32, LocalNetwork>,
    /// IPv6 neighbour answers of the networks with `subnet6`: every NIC's `ip6`, and the
    /// router's link-local address (`true`: the router).
    pub neigh6: BTreeMap<(u32, Ipv6Addr), (MacAddr, bool)>,
    /// The router advertisement of each of those networks.
    pub ra6: BTreeMap<u32, Ra6>,
    /// The options of each of those networks' DHCPv6 replies.
    pub dhcp6: BTreeMap<u32, Dhcp6Net>,
    /// Each carried network's routing table, by (the VNI frames come from, destination): every
    /// subnet of its VPC, every gateway address of its VPC (a /32), its routes whose `via` is
    /// a forwarding NIC of it, and its `default_via` (0.0.0.0/0). A subnet or gateway wins
    /// over a route to the same prefix.
    pub routes: BTreeMap<(u32, Ipv4Net), RouteTo>,
    /// The NICs with `forwarding: true` of the carried networks, local and remote.
    pub forwarding: BTreeSet<(u32, MacAddr)>,
    /// For each carried network, the other nodes' VTEPs hosting a forwarding NIC of its VPC:
    /// routed frames from there may carry sources outside the VPC.
    pub forwarders: BTreeSet<(u32, Ipv4Addr)>,
}

/// Server identifiers each network had before (by network id), which clients may still hold:
/// they keep resolving to the router MAC while no NIC has them (see the agent's
/// `FormerServers`).
pub type FormerServers = BTreeMap<String, Vec<Ipv4Addr>>;

/// Former identifiers kept per network: a client holds the one it last renewed with, so a
/// few changes back is plenty; the oldest goes first.
pub const MAX_FORMER_SERVERS: usize = 4;

/// The former server identifiers after the model changed from `prev` to `next`: a network
/// whose identifier changed keeps its old one, for as long as it stays in its subnet, is not
/// its identifier or gateway again, and no NIC has it. Networks gone forget theirs.
/// `nics_of` holds the MACs of each network of `next`: only the NICs of a network with former
/// identifiers are read, so a change costs the networks, not the cloud's NICs.
pub fn former_after(
    former: &FormerServers,
    prev: &Model,
    next: &Model,
    nics_of: &BTreeMap<String, BTreeSet<MacAddr>>,
) -> FormerServers {
    next.networks
        .keys()
        .filter_map(|id| Some((id.clone(), former_of(former, prev, next, nics_of, id)?)))
        .collect()
}

/// [`former_after`] when only `networks` changed (their entries and NICs): every other network
/// keeps what it has, which is what [`former_after`] gives it again, so that a change costs its
/// networks and not the cloud's.
pub fn former_after_change<'a>(
    former: &FormerServers,
    prev: &Model,
    next: &Model,
    nics_of: &BTreeMap<String, BTreeSet<MacAddr>>,
    networks: impl IntoIterator<Item = &'a String>,
) -> FormerServers {
    let mut out = former.clone();
    out.retain(|id, _| next.networks.contains_key(id));
    for id in networks {
        match former_of(former, prev, next, nics_of, id) {
            Some(list) => out.insert(id.clone(), list),
            None => out.remove(id),
        };
    }
    out
}

/// The former server identifiers of network `id` of `next`, when it keeps any.
fn former_of(
    former: &FormerServers,
    prev: &Model,
    next: &Model,
    nics_of: &BTreeMap<String, BTreeSet<MacAddr>>,
    id: &str,
) -> Option<Vec<Ipv4Addr>> {
    let net = next.networks.get(id)?;
    let mut list = former.get(id).cloned().unwrap_or_default();
    if let Some(p) = prev.networks.get(id)
        && p.server_id() != net.server_id()
    {
        list.retain(|a| *a != p.server_id());
        list.push(p.server_id());
    }
    list.retain(|a| *a != net.server_id() && *a != net.gateway && net.subnet.contains(a));
    if list.is_empty() {
        return None;
    }
    for mac in nics_of.get(id).into_iter().flatten() {
        if let Some(nic) = next.nics.get(mac) {
            list.retain(|a| *a != nic.ip);
        }
    }
    let extra = list.len().saturating_sub(MAX_FORMER_SERVERS);
    list.drain(..extra);
    (!list.is_empty()).then_some(list)
}

/// The forwarding state `node` needs.
pub fn derive(model: &Model, node: &str, router_mac: MacAddr) -> Vpc {
    derive_with(model, node, router_mac, &FormerServers::new())
}

/// [`derive`], with the networks' former server identifiers.
pub fn derive_with(model: &Model, node: &str, router_mac: MacAddr, former: &FormerServers) -> Vpc {
    let mut vpc = Vpc {
        vtep: model.nodes.get(node).map(|n| n.vtep),
        vteps: vteps(model, node),
        ..Vpc::default()
    };
    let mut nics_of: BTreeMap<String, BTreeSet<MacAddr>> = model
        .networks
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    for (id, macs) in model.nics_by_network() {
        nics_of.insert(id, macs);
    }
    derive_networks(model, &nics_of, node, router_mac, former, &mut vpc);
    vpc
}

/// The networks of `model` in the VPCs of the networks `ids` had in `prev` or have in `model`
/// (all of them, `ids` among them): what a change of `ids` touches, on the hosts that carry
/// their VPCs. A network without `vpc` is in no other's VPC: alone, it is just itself.
pub fn vpc_members<'a>(
    prev: &Model,
    model: &'a Model,
    ids: impl IntoIterator<Item = &'a String>,
) -> BTreeSet<String> {
    let mut named: BTreeSet<String> = BTreeSet::new();
    let mut out: BTreeSet<String> = BTreeSet::new();
    for id in ids {
        out.insert(id.clone());
        for m in [prev, model] {
            if let Some(name) = m.networks.get(id).and_then(|n| n.vpc.clone()) {
                named.insert(name);
            }
        }
    }
    if !named.is_empty() {
        out.extend(
            model
                .networks
                .iter()
                .filter(|(_, n)| n.vpc.as_ref().is_some_and(|v| named.contains(v)))
                .map(|(id, _)| id.clone()),
        );
    }
    out
}

/// Adds to `vpc` the entries of the networks of `nics_of` (each with the MACs of its NICs) that
/// `node` carries: those of a VPC in which one of them has a NIC on `node`. `nics_of` must hold
/// every network of `model` in the VPCs it names ([`vpc_members`]): a VPC's tables are derived
/// from all of its networks.
pub fn derive_networks(
    model: &Model,
    nics_of: &BTreeMap<String, BTreeSet<MacAddr>>,
    node: &str,
    router_mac: MacAddr,
    former: &FormerServers,
    vpc: &mut Vpc,
) {
    let mut groups: BTreeMap<VpcKey<'_>, Vec<(&Network, &BTreeSet<MacAddr>)>> = BTreeMap::new();
    for (id, macs) in nics_of {
        if let Some(net) = model.networks.get(id) {
            groups.entry(VpcKey::of(net)).or_default().push((net, macs));
        }
    }
    for members in groups.values() {
        // Each NIC looked up once: a VPC may hold most of the cloud's NICs.
        let members: Vec<(&Network, Vec<&Nic>)> = members
            .iter()
            .map(|(net, macs)| {
                (
                    *net,
                    macs.iter().filter_map(|m| model.nics.get(m)).collect(),
                )
            })
            .collect();
        let carried = members
            .iter()
            .any(|(_, nics)| nics.iter().any(|n| *n.node == *node));
        if !carried {
            continue;
        }
        let mut forwarder_vteps: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for (net, nics) in &members {
            let Some(vni) = add_network(model, &net.id, router_mac, former, vpc) else {
                continue;
            };
            for nic in nics {
                add_nic(model, vni, nic, node, vpc);
                if nic.forwarding
                    && *nic.node != *node
                    && let Some(owner) = model.nodes.get(&*nic.node)
                {
                    forwarder_vteps.insert(owner.vtep);
                }
            }
        }
        for (net, nics) in &members {
            add_routes(net, nics, &members, vpc);
            for vtep in &forwarder_vteps {
                vpc.forwarders.insert((net.vni, *vtep));
            }
        }
    }
}

/// The routing table of network `net` (whose NICs are `nics`), in a VPC of `members`.
fn add_routes(net: &Network, nics: &[&Nic], members: &[(&Network, Vec<&Nic>)], vpc: &mut Vpc) {
    // Its forwarding NICs' addresses: the only next hops a route or default_via may name.
    let forwarders: HashSet<Ipv4Addr> =
        nics.iter().filter(|n| n.forwarding).map(|n| n.ip).collect();
    let via = |addr: Ipv4Addr| {
        forwarders.contains(&addr).then_some(RouteTo::Via {
            vni: net.vni,
            via: addr,
        })
    };
    if let Some(to) = net.default_via.and_then(via) {
        vpc.routes.insert((net.vni, Ipv4Net::default()), to);
    }
    for r in &net.routes {
        if let Some(to) = via(r.via) {
            vpc.routes.insert((net.vni, r.to), to);
        }
    }
    // After the routes: a subnet or gateway of the VPC wins over a route to the same prefix.
    for (other, _) in members {
        vpc.routes
            .insert((net.vni, other.subnet), RouteTo::Subnet { vni: other.vni });
    }
    for (other, _) in members {
        vpc.routes.insert(
            (net.vni, Ipv4Net::from(other.gateway)),
            RouteTo::Gateway { vni: other.vni },
        );
    }
}

/// Whether network `vni` of `vpc` carries IPv6 (has `subnet6`): its NICs' `ip6` are answered.
fn has_v6(vpc: &Vpc, vni: u32) -> bool {
    vpc.ra6.contains_key(&vni)
}

/// The VTEPs of the nodes other than `node`.
pub fn vteps(model: &Model, node: &str) -> BTreeSet<Ipv4Addr> {
    model
        .nodes
        .values()
        .filter(|n| n.name != node)
        .map(|n| n.vtep)
        .collect()
}

/// Adds network `id` itself (its VNI, and the ARP answers of its gateway, its DHCP server and
/// its former server identifiers); its VNI, when it exists.
fn add_network(
    model: &Model,
    id: &str,
    router_mac: MacAddr,
    former: &FormerServers,
    vpc: &mut Vpc,
) -> Option<u32> {
    let net = model.networks.get(id)?;
    vpc.vnis.insert(
        net.vni,
        LocalNetwork {
            gateway: net.gateway,
            mtu: u32::from(net.effective_mtu()),
        },
    );
    vpc.arp.insert((net.vni, net.gateway), router_mac);
    vpc.arp.insert((net.vni, net.server_id()), router_mac);
    // A client whose lease names a former identifier renews by unicast to it: it must
    // resolve it. A NIC that has the address now takes its ARP answer (`add_nic` comes after).
    for a in former.get(id).into_iter().flatten() {
        if net.subnet.contains(a) {
            vpc.arp.insert((net.vni, *a), router_mac);
        }
    }
    // IPv6: the router answers from its link-local address (RFC 4861 §4.2: advertisements
    // come from a link-local source), the same on every host.
    if let Some(ra) = ra6::render(net, router_mac) {
        vpc.ra6.insert(net.vni, ra);
        if let Some(d) = dhcp6::render(net, router_mac) {
            vpc.dhcp6.insert(net.vni, d);
        }
        vpc.neigh6.insert(
            (net.vni, ra6::router_address(router_mac)),
            (router_mac, true),
        );
    }
    Some(net.vni)
}

/// Adds one NIC of network `vni`: local ones on their interface, remote ones behind their
/// node's VTEP, and its ARP answer (and neighbour answer, for an `ip6` of an IPv6 network).
fn add_nic(model: &Model, vni: u32, nic: &Nic, node: &str, vpc: &mut Vpc) {
    let endpoint = if *nic.node == *node {
        let Some(interface) = &nic.interface else {
            return;
        };
        Endpoint::Local {
            interface: interface.clone(),
        }
    } else {
        let Some(owner) = model.nodes.get(&*nic.node) else {
            return;
        };
        Endpoint::Remote { vtep: owner.vtep }
    };
    vpc.fdb.insert(
        (vni, nic.mac),
        Station {
            ip: nic.ip,
            endpoint,
        },
    );
    vpc.arp.insert((vni, nic.ip), nic.mac);
    if nic.forwarding {
        vpc.forwarding.insert((vni, nic.mac));
    }
    if let Some(ip6) = nic.ip6
        && has_v6(vpc, vni)
    {
        vpc.neigh6.insert((vni, ip6), (nic.mac, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Limits, parse_document, validate},
        render::options::Budget,
    };

    const ROUTER: MacAddr = MacAddr([2, 0x68, 0x66, 0, 0, 1]);

    fn model() -> Model {
        let doc = parse_document(
            br#"{ "networks": [
                { "id": "a", "vni": 1001, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "mtu": 1450 },
                { "id": "b", "vni": 1002, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "mtu": 1450 },
                { "id": "c", "vni": 1003, "subnet": "10.3.0.0/24", "gateway": "10.3.0.1", "mtu": 1450 } ],
              "nodes": [ { "name": "hv-1", "vtep": "198.18.0.1" }, { "name": "hv-2", "vtep": "198.18.0.2" } ],
              "nics": [
                { "mac": "02:00:00:00:0a:01", "network": "a", "ip": "10.0.0.11", "node": "hv-1", "interface": "tap-a1" },
                { "mac": "02:00:00:00:0a:02", "network": "a", "ip": "10.0.0.12", "node": "hv-2", "interface": "tap-a2" },
                { "mac": "02:00:00:00:0b:02", "network": "b", "ip": "10.0.0.11", "node": "hv-2", "interface": "tap-b2" },
                { "mac": "02:00:00:00:0c:02", "network": "c", "ip": "10.3.0.12", "node": "hv-2", "interface": "tap-c2" } ] }"#,
        )
        .unwrap();
        let v = validate(&doc, None, "hv-1", &Limits::default(), &Budget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        v.model
    }

    #[test]
    fn a_host_carries_only_the_networks_it_has_nics_in() {
        let vpc = derive(&model(), "hv-1", ROUTER);
        assert_eq!(vpc.vtep, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(vpc.vnis.keys().copied().collect::<Vec<_>>(), vec![1001]);
        assert_eq!(vpc.fdb.len(), 2);
        let a2 = &vpc.fdb[&(1001, "02:00:00:00:0a:02".parse().unwrap())];
        assert_eq!(
            a2.endpoint,
            Endpoint::Remote {
                vtep: "198.18.0.2".parse().unwrap()
            }
        );
        let a1 = &vpc.fdb[&(1001, "02:00:00:00:0a:01".parse().unwrap())];
        assert_eq!(
            a1.endpoint,
            Endpoint::Local {
                interface: "tap-a1".into()
            }
        );
        // Same address in network b: not here, no ARP answer for it in 1002.
        assert_eq!(vpc.arp.len(), 3);
        assert_eq!(vpc.arp[&(1001, "10.0.0.1".parse().unwrap())], ROUTER);
        assert!(!vpc.arp.contains_key(&(1002, "10.0.0.11".parse().unwrap())));
        assert_eq!(vpc.vteps.len(), 1);
    }

    #[test]
    fn a_changed_server_identifier_is_kept_while_no_nic_has_it() {
        let before = model();
        let mut after = before.clone();
        let mut a = after.networks["a"].clone();
        a.gateway = "10.0.0.254".parse().unwrap();
        after.networks.insert("a".into(), a);
        let former = former_after(
            &FormerServers::new(),
            &before,
            &after,
            &after.nics_by_network(),
        );
        let old: Ipv4Addr = "10.0.0.1".parse().unwrap();
        assert_eq!(former, FormerServers::from([("a".into(), vec![old])]));
        // It keeps resolving to the router MAC, beside the new gateway.
        let vpc = derive_with(&after, "hv-1", ROUTER, &former);
        assert_eq!(vpc.arp[&(1001, old)], ROUTER);
        assert_eq!(vpc.arp[&(1001, "10.0.0.254".parse().unwrap())], ROUTER);
        // Unchanged models keep it; a NIC taking the address ends it.
        assert_eq!(
            former_after(&former, &after, &after, &after.nics_by_network()),
            former
        );
        let mut taken = after.clone();
        let mut nic = taken.nics.values().next().unwrap().clone();
        nic.ip = old;
        taken.nics.insert(nic.mac, nic);
        assert!(former_after(&former, &after, &taken, &taken.nics_by_network()).is_empty());
        // So does the gateway coming back (the one it replaced is the former one now), and the
        // network going.
        assert_eq!(
            former_after(&former, &after, &before, &before.nics_by_network()),
            FormerServers::from([("a".into(), vec!["10.0.0.254".parse().unwrap()])])
        );
        let mut gone = after.clone();
        gone.networks.remove("a");
        assert!(former_after(&former, &after, &gone, &gone.nics_by_network()).is_empty());
        // A dhcp_server set later: the gateway it replaces as identifier is kept.
        let mut pinned = after.clone();
        let mut a = pinned.networks["a"].clone();
        a.dhcp_server = Some("10.0.0.2".parse().unwrap());
        pinned.networks.insert("a".into(), a);
        let f = former_after(&former, &after, &pinned, &pinned.nics_by_network());
        assert_eq!(f["a"], vec![old]);
        // Each of these changes, told which networks it touched, comes to the same.
        let a = ["a".to_owned()];
        for (was, prev, next) in [
            (&FormerServers::new(), &before, &after),
            (&former, &after, &after),
            (&former, &after, &taken),
            (&former, &after, &before),
            (&former, &after, &gone),
            (&former, &after, &pinned),
        ] {
            let of = next.nics_by_network();
            assert_eq!(
                former_after_change(was, prev, next, &of, &a),
                former_after(was, prev, next, &of)
            );
        }
        let vpc = derive_with(&pinned, "hv-1", ROUTER, &f);
        assert_eq!(vpc.arp[&(1001, "10.0.0.2".parse().unwrap())], ROUTER);
    }

    /// Two VPCs with the same subnets, a gateway VM in one, a network alone: as hv-1 (a NIC
    /// in prod's blue and in dev's blue) and hv-3 (only in the lone network) see them.
    fn routed() -> Model {
        let doc = parse_document(
            br#"{ "networks": [
                { "id": "blue", "vni": 1001, "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "vpc": "prod",
                  "default_via": "10.1.0.254", "routes": [ { "to": "192.168.0.0/16", "via": "10.1.0.254" },
                                                         { "to": "172.16.0.0/12", "via": "10.1.0.1" } ] },
                { "id": "green", "vni": 1002, "subnet": "10.2.0.0/24", "gateway": "10.2.0.1", "vpc": "prod" },
                { "id": "dev-blue", "vni": 2001, "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "vpc": "dev" },
                { "id": "dev-green", "vni": 2002, "subnet": "10.2.0.0/24", "gateway": "10.2.0.1", "vpc": "dev" },
                { "id": "lone", "vni": 3001, "subnet": "10.3.0.0/24", "gateway": "10.3.0.1" } ],
              "nodes": [ { "name": "hv-1", "vtep": "198.18.0.1" }, { "name": "hv-2", "vtep": "198.18.0.2" },
                         { "name": "hv-3", "vtep": "198.18.0.3" } ],
              "nics": [
                { "mac": "02:00:00:00:01:01", "network": "blue", "ip": "10.1.0.11", "node": "hv-1", "interface": "tap1" },
                { "mac": "02:00:00:00:01:fe", "network": "blue", "ip": "10.1.0.254", "node": "hv-2", "forwarding": true },
                { "mac": "02:00:00:00:02:02", "network": "green", "ip": "10.2.0.12", "node": "hv-2" },
                { "mac": "02:00:00:00:02:03", "network": "green", "ip": "10.2.0.13", "node": "hv-1", "interface": "tap2", "forwarding": true },
                { "mac": "02:00:00:00:03:02", "network": "dev-green", "ip": "10.2.0.12", "node": "hv-2" },
                { "mac": "02:00:00:00:04:03", "network": "lone", "ip": "10.3.0.13", "node": "hv-3", "interface": "tap3" } ] }"#,
        )
        .unwrap();
        let v = validate(&doc, None, "hv-1", &Limits::default(), &Budget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        v.model
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_carries_its_vpcs_and_their_tables() {
        let vpc = derive(&routed(), "hv-1", ROUTER);
        // prod, whole: green has a NIC here too, but blue would carry it alone. Not dev, not lone.
        assert_eq!(vpc.vnis.keys().copied().collect::<Vec<_>>(), [1001, 1002]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let gw = ip("10.1.0.254");
        let want: BTreeMap<(u32, Ipv4Net), RouteTo> = [1001, 1002]
            .into_iter()
            .flat_map(|from| {
                [
                    ((from, net("10.1.0.0/24")), RouteTo::Subnet { vni: 1001 }),
                    ((from, net("10.2.0.0/24")), RouteTo::Subnet { vni: 1002 }),
                    ((from, net("10.1.0.1/32")), RouteTo::Gateway { vni: 1001 }),
                    ((from, net("10.2.0.1/32")), RouteTo::Gateway { vni: 1002 }),
                ]
            })
            .chain([
                // blue's default_via and its route via the gateway VM; not its route via the
                // gateway (the router itself: DHCP's only).
                (
                    (1001, net("0.0.0.0/0")),
                    RouteTo::Via { vni: 1001, via: gw },
                ),
                (
                    (1001, net("192.168.0.0/16")),
                    RouteTo::Via { vni: 1001, via: gw },
                ),
            ])
            .collect();
        assert_eq!(vpc.routes, want);
        // The forwarding NICs of prod, local and remote; the other nodes hosting one of them,
        // for every network of prod.
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        assert_eq!(
            vpc.forwarding,
            BTreeSet::from([
                (1001, mac("02:00:00:00:01:fe")),
                (1002, mac("02:00:00:00:02:03"))
            ])
        );
        assert_eq!(
            vpc.forwarders,
            BTreeSet::from([(1001, ip("198.18.0.2")), (1002, ip("198.18.0.2"))])
        );
        // Every NIC of prod, green's remote one behind hv-2; none of dev, whose addresses are
        // the same.
        assert_eq!(
            vpc.fdb[&(1002, mac("02:00:00:00:02:02"))].endpoint,
            Endpoint::Remote {
                vtep: ip("198.18.0.2")
            }
        );
        assert!(vpc.fdb.keys().all(|(v, _)| *v < 2000));
        assert!(vpc.arp.keys().all(|(v, _)| *v < 2000));
        assert!(vpc.routes.values().all(|r| !matches!(r, RouteTo::Subnet { vni } | RouteTo::Gateway { vni } | RouteTo::Via { vni, .. } if *vni >= 2000)));
    }

    #[test]
    fn two_vpcs_with_the_same_subnets_never_see_each_other() {
        // hv-2 carries prod and dev: the same subnets, each VPC's tables name its own VNIs.
        let vpc = derive(&routed(), "hv-2", ROUTER);
        assert_eq!(
            vpc.vnis.keys().copied().collect::<Vec<_>>(),
            [1001, 1002, 2001, 2002]
        );
        for ((from, dst), to) in &vpc.routes {
            let target = match to {
                RouteTo::Subnet { vni } | RouteTo::Gateway { vni } | RouteTo::Via { vni, .. } => {
                    *vni
                }
            };
            assert_eq!(from / 1000, target / 1000, "{from} {dst} -> {to:?}");
        }
        assert_eq!(
            vpc.routes[&(2001, net("10.2.0.0/24"))],
            RouteTo::Subnet { vni: 2002 }
        );
        // dev has no default_via: nothing leaves it.
        assert!(!vpc.routes.contains_key(&(2001, net("0.0.0.0/0"))));
        // The gateway VM is on hv-2 itself: no other node forwards for blue; green's forwarder
        // is hv-1.
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            vpc.forwarders,
            BTreeSet::from([(1001, ip("198.18.0.1")), (1002, ip("198.18.0.1"))])
        );
        // A lone network reaches only itself.
        let vpc = derive(&routed(), "hv-3", ROUTER);
        assert_eq!(vpc.vnis.keys().copied().collect::<Vec<_>>(), [3001]);
        assert_eq!(
            vpc.routes,
            BTreeMap::from([
                ((3001, net("10.3.0.0/24")), RouteTo::Subnet { vni: 3001 }),
                ((3001, net("10.3.0.1/32")), RouteTo::Gateway { vni: 3001 }),
            ])
        );
    }

    #[test]
    fn a_via_that_is_no_forwarding_nic_is_not_routed() {
        let mut m = routed();
        let gw: MacAddr = "02:00:00:00:01:fe".parse().unwrap();
        let mut nic = m.nics[&gw].clone();
        nic.forwarding = false;
        m.nics.insert(gw, nic);
        let vpc = derive(&m, "hv-1", ROUTER);
        assert!(!vpc.routes.contains_key(&(1001, net("0.0.0.0/0"))));
        assert!(!vpc.routes.contains_key(&(1001, net("192.168.0.0/16"))));
        assert!(!vpc.forwarding.contains(&(1001, gw)));
        // hv-2 hosts no forwarding NIC of prod any more; green's is here.
        assert!(vpc.forwarders.is_empty());
    }

    /// A change costs its VPCs, before and after: never the networks of other VPCs.
    #[test]
    fn a_change_touches_the_networks_of_its_vpcs_only() {
        let m = routed();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            vpc_members(&m, &m, &ids(&["blue"])),
            ids(&["blue", "green"])
        );
        assert_eq!(vpc_members(&m, &m, &ids(&["lone"])), ids(&["lone"]));
        // dev-blue moves to prod: both VPCs.
        let mut next = m.clone();
        let mut n = next.networks["dev-blue"].clone();
        n.vpc = Some("prod".into());
        n.subnet = net("10.9.0.0/24");
        next.networks.insert("dev-blue".into(), n);
        assert_eq!(
            vpc_members(&m, &next, &ids(&["dev-blue"])),
            ids(&["blue", "dev-blue", "dev-green", "green"])
        );
    }

    #[test]
    fn the_other_host_sees_the_mirror_image() {
        let vpc = derive(&model(), "hv-2", ROUTER);
        assert_eq!(vpc.vnis.len(), 3);
        assert_eq!(vpc.fdb.len(), 4);
    }
}
