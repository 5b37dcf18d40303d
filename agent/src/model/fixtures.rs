//! What the model's tests share: a good document to change, and a budget with room for all.

use std::convert::Infallible;

use serde_json::json;

use super::{Network, Nic, OptionsBudget, RawDocument, Reason, Validated};

/// A budget with room for any options.
pub(super) struct NoBudget;

impl OptionsBudget for NoBudget {
    type Error = Infallible;

    fn check(&self, _: &Network, _: &Nic) -> Result<(), Infallible> {
        Ok(())
    }
}

pub(super) fn doc(v: serde_json::Value) -> RawDocument {
    serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// Two networks sharing a subnet, two nodes, three NICs (two of them on hv-1).
pub(super) fn base() -> serde_json::Value {
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

/// `base()` with IPv6 on blue: a prefix, a resolver, an `ip6` on each of its NICs.
pub(super) fn dual() -> serde_json::Value {
    let mut d = base();
    d["networks"][0]["subnet6"] = json!("fd00:10:10::/64");
    d["networks"][0]["dns6"] = json!(["fd00:10:10::53"]);
    d["nics"][0]["ip6"] = json!("fd00:10:10::11");
    d["nics"][2]["ip6"] = json!("fd00:10:10::12");
    d
}

/// The rejections as (entry, reason).
pub(super) fn reasons(v: &Validated) -> Vec<(String, Reason)> {
    v.rejections
        .iter()
        .map(|r| (r.entry.clone(), r.reason))
        .collect()
}

/// The sub-document of `networks` as the etcd source builds it: their entries, their NICs
/// and every node.
pub(super) fn sub(d: &serde_json::Value, networks: &[&str]) -> RawDocument {
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
