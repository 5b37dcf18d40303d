//! Which networks validation judges together: the rules that make one network's outcome depend
//! on another's entries, stated over raw entries for a source that has networks validated
//! again one by one ([`revalidate`](super::revalidate())). When an entry changes, every network
//! these functions name must be validated again with it:
//!
//! - one VNI belongs to one network ([`Reason::DuplicateVni`](super::Reason::DuplicateVni)):
//!   of the networks claiming a VNI, which one holds it depends on all of them;
//! - one MAC is one NIC ([`Reason::DuplicateMac`](super::Reason::DuplicateMac)): of the
//!   networks listing a NIC with one MAC, which one gets it depends on all of them;
//! - one interface of this node carries one network
//!   ([`Reason::InterfaceShared`](super::Reason::InterfaceShared)): of the networks whose
//!   NICs on this node name one interface, which one holds it depends on all of them (the etcd
//!   view knows this node's NICs and their interfaces, and names those networks itself).
//!
//! - the networks of one VPC do not overlap
//!   ([`Reason::VpcOverlap`](super::Reason::VpcOverlap)): of the networks of a VPC whose
//!   subnets overlap, which one keeps its place depends on all of them
//!   ([`overlapping_in_vpc`]).
//!
//! Nodes couple every network with a NIC on them: only a complete document judges them.
//!
//! A route's `via` or a `default_via` couples its network only to its own NICs (a gateway VM's
//! NIC is a NIC of the network), which are validated with it.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

use super::RawEntry;

/// The networks of `networks` (id and entry) whose entry claims the VNI the entry `network`
/// claims, itself included when it is among them; none when it claims none (its `vni` is not
/// a number).
pub fn sharing_vni<'a, K: 'a, I>(
    network: &RawEntry,
    networks: I,
) -> impl Iterator<Item = &'a K> + use<'a, K, I>
where
    I: IntoIterator<Item = (&'a K, &'a RawEntry)>,
{
    let vni = claimed_vni(network);
    networks
        .into_iter()
        .filter(move |(_, e)| vni.is_some() && claimed_vni(e) == vni)
        .map(|(id, _)| id)
}

/// The networks of `nics` (each network's NIC entries, keyed by the MAC their source names
/// them by) that list a NIC keyed `mac`.
pub fn holding_mac<'a, 'm, K: 'a, I>(
    mac: &'m str,
    nics: I,
) -> impl Iterator<Item = &'a K> + use<'a, 'm, K, I>
where
    I: IntoIterator<Item = (&'a K, &'a BTreeMap<Arc<str>, RawEntry>)>,
{
    nics.into_iter()
        .filter(move |(_, entries)| entries.contains_key(mac))
        .map(|(id, _)| id)
}

/// The networks of `networks` (id and entry) in the VPC the entry `network` names whose
/// subnets overlap its subnet, itself included when it is among them; none when it names no
/// VPC or subnet.
pub fn overlapping_in_vpc<'a, K: 'a, I>(
    network: &RawEntry,
    networks: I,
) -> impl Iterator<Item = &'a K> + use<'a, K, I>
where
    I: IntoIterator<Item = (&'a K, &'a RawEntry)>,
{
    let claim = vpc_subnet(network);
    networks
        .into_iter()
        .filter(move |(_, e)| {
            let Some((vpc, (first, last))) = &claim else {
                return false;
            };
            vpc_subnet(e).is_some_and(|(v, (f, l))| v == *vpc && f <= *last && *first <= l)
        })
        .map(|(id, _)| id)
}

/// The VPC a network's entry names and the span of its subnet, read without parsing the rest.
fn vpc_subnet(network: &RawEntry) -> Option<(String, (u32, u32))> {
    let v: Value = serde_json::from_slice(&network.json).ok()?;
    let vpc = v.get("vpc")?.as_str()?.to_owned();
    let subnet: ipnet::Ipv4Net = v.get("subnet")?.as_str()?.parse().ok()?;
    Some((
        vpc,
        (u32::from(subnet.network()), u32::from(subnet.broadcast())),
    ))
}

/// The VNI a network's entry claims, read without parsing the rest of it.
fn claimed_vni(network: &RawEntry) -> Option<u64> {
    serde_json::from_slice::<Value>(&network.json)
        .ok()?
        .get("vni")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;

    use super::*;
    use crate::model::{
        Limits, LocalNics, Reason, Serving,
        fixtures::{NoBudget, base, doc, sub},
        revalidate, validate,
    };

    fn entry(v: serde_json::Value) -> RawEntry {
        RawEntry::json(&serde_json::to_vec(&v).unwrap())
    }

    fn set<'a>(ids: impl Iterator<Item = &'a String>) -> BTreeSet<&'a str> {
        ids.map(String::as_str).collect()
    }

    #[test]
    fn networks_of_one_vpc_that_overlap_are_coupled() {
        let networks: BTreeMap<String, RawEntry> = [
            (
                "blue",
                json!({"id": "blue", "vpc": "prod", "subnet": "10.10.0.0/24"}),
            ),
            (
                "aqua",
                json!({"id": "aqua", "vpc": "prod", "subnet": "10.10.0.128/25"}),
            ),
            (
                "green",
                json!({"id": "green", "vpc": "prod", "subnet": "10.20.0.0/24"}),
            ),
            (
                "red",
                json!({"id": "red", "vpc": "dev", "subnet": "10.10.0.0/24"}),
            ),
            ("lone", json!({"id": "lone", "subnet": "10.10.0.0/24"})),
            (
                "bad",
                json!({"id": "bad", "vpc": "prod", "subnet": "10.10.0.0/99"}),
            ),
        ]
        .into_iter()
        .map(|(id, v)| (id.to_owned(), entry(v)))
        .collect();
        let of = |id: &str| set(overlapping_in_vpc(&networks[id], &networks));
        assert_eq!(of("blue"), BTreeSet::from(["aqua", "blue"]));
        assert_eq!(of("aqua"), BTreeSet::from(["aqua", "blue"]));
        assert_eq!(of("green"), BTreeSet::from(["green"]));
        assert_eq!(of("red"), BTreeSet::from(["red"]), "another VPC");
        assert_eq!(of("lone"), BTreeSet::new(), "no VPC: coupled to none");
        assert_eq!(of("bad"), BTreeSet::new(), "no subnet to overlap");
    }

    #[test]
    fn networks_claiming_one_vni_are_coupled() {
        let networks: BTreeMap<String, RawEntry> = [
            ("blue", json!({"id": "blue", "vni": 1001})),
            ("red", json!({"id": "red", "vni": 1002})),
            (
                "green",
                json!({"id": "green", "vni": 1001, "subnet": "broken"}),
            ),
            ("grey", json!({"id": "grey", "vni": "1001"})),
        ]
        .into_iter()
        .map(|(id, v)| (id.to_owned(), entry(v)))
        .collect();
        let of = |id: &str| set(sharing_vni(&networks[id], &networks));
        assert_eq!(of("blue"), BTreeSet::from(["blue", "green"]));
        assert_eq!(of("green"), BTreeSet::from(["blue", "green"]));
        assert_eq!(of("red"), BTreeSet::from(["red"]));
        // No VNI to claim: coupled to none.
        assert_eq!(of("grey"), BTreeSet::new());
        assert_eq!(
            set(sharing_vni(&RawEntry::json(b"{broken"), &networks)),
            BTreeSet::new()
        );
        // A network not (or no longer) among them: the others claiming its VNI.
        let gone = entry(json!({"id": "gone", "vni": 1002}));
        assert_eq!(set(sharing_vni(&gone, &networks)), BTreeSet::from(["red"]));
    }

    #[test]
    fn networks_listing_one_mac_are_coupled() {
        let nic = |mac: &str| (Arc::from(mac), entry(json!({"mac": mac})));
        let nics: BTreeMap<String, BTreeMap<Arc<str>, RawEntry>> = [
            (
                "blue",
                vec![nic("02:00:00:00:00:01"), nic("02:00:00:00:00:02")],
            ),
            ("red", vec![nic("02:00:00:00:00:02")]),
            ("green", vec![]),
        ]
        .into_iter()
        .map(|(id, nics)| (id.to_owned(), nics.into_iter().collect()))
        .collect();
        let of = |mac: &str| set(holding_mac(mac, &nics));
        assert_eq!(of("02:00:00:00:00:02"), BTreeSet::from(["blue", "red"]));
        assert_eq!(of("02:00:00:00:00:01"), BTreeSet::from(["blue"]));
        assert_eq!(of("02:00:00:00:00:09"), BTreeSet::new());
    }

    /// The coupled networks are what revalidation needs: revalidating the network that takes
    /// another's VNI together with that one matches a full validation.
    #[test]
    fn revalidating_the_coupled_networks_matches_a_full_validation() {
        let limits = Limits::default();
        let prev = validate(&doc(base()), None, "hv-1", &limits, &NoBudget).model;
        let mut d = base();
        d["networks"][0]["vni"] = json!(1002);
        let networks: BTreeMap<String, RawEntry> = d["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_owned(), entry(n.clone())))
            .collect();
        let coupled: BTreeSet<String> =
            sharing_vni(&networks["blue"], &networks).cloned().collect();
        assert_eq!(coupled, BTreeSet::from(["blue".into(), "red".into()]));
        let ids: Vec<&str> = coupled.iter().map(String::as_str).collect();
        let old = prev.nics.keys().copied().collect();
        let part = revalidate(
            &sub(&d, &ids),
            &coupled,
            &old,
            Serving {
                model: &prev,
                local: &LocalNics::of(&prev, "hv-1"),
            },
            "hv-1",
            &limits,
            &NoBudget,
        );
        let full = validate(&doc(d), Some(&prev), "hv-1", &limits, &NoBudget);
        assert_eq!(part.validated.model, full.model);
        // red serves 1002 and keeps it.
        let lost = full
            .rejections
            .iter()
            .find(|r| r.reason == Reason::DuplicateVni);
        assert_eq!(lost.and_then(|r| r.key.as_deref()), Some("blue"));
        assert!(full.model.networks.contains_key("red"));
    }
}
