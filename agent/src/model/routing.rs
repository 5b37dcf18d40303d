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
    for (id, detail) in losers {
        networks.remove(&id);
        rejections.push(reject(Reason::VpcOverlap, detail).at("networks".into(), Some(id)));
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
        let entry = raws
            .iter()
            .enumerate()
            .find(|(_, e)| e.key("id").as_deref() == Some(id.as_str()))
            .map_or_else(|| "networks".into(), |(i, e)| e.label("networks", i));
        for (to, via) in vias {
            let why = match held.get(&via) {
                Some(c) if c.forwarding => continue,
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
            rejections.push(reject(reason, detail).at(entry.clone(), Some(id.clone())));
        }
    }
}
