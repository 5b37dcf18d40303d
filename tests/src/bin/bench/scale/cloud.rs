//! The simulated cloud: networks, nodes and their NICs, drawn at random from a fixed seed, as
//! one IPAM document to import, and which networks each node has NICs in (what the design
//! predicts each agent watches).

use std::{collections::BTreeSet, net::Ipv4Addr};

use holdfast::model::{MacAddr, Nic};
use holdfast_tests::rng::Rng;

use super::NICS_PER_NODE;

/// Every network shares 10.0.0.0/16 (they are told apart by VNI), so NIC `k` of the whole
/// cloud, churn included, gets an address of its own.
fn nic(k: usize, network: usize, node: usize) -> Nic {
    Nic {
        mac: MacAddr([0x02, 0x5c, 0, (k >> 16) as u8, (k >> 8) as u8, k as u8]),
        network: format!("n{network}").into(),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + k as u32),
        hostname: None,
        node: format!("hv-{node}").into(),
        interface: Some(format!("tap{k}")),
        default_route: None,
        options: None,
        boot: None,
        ip6: None,
        forwarding: false,
    }
}

/// The cloud as the benchmark tracks it: which networks each node has NICs in.
pub(super) struct Cloud {
    agents: usize,
    node_networks: Vec<BTreeSet<usize>>,
    pub(super) nics: usize,
}

impl Cloud {
    pub(super) fn new(agents: usize, networks: usize, rng: &mut Rng) -> (Self, String) {
        let mut c = Self {
            agents,
            node_networks: vec![BTreeSet::new(); agents],
            nics: 0,
        };
        let mut nics = Vec::with_capacity(agents * NICS_PER_NODE);
        for node in 0..agents {
            for _ in 0..NICS_PER_NODE {
                let network = rng.below(networks);
                nics.push(c.add(network, node));
            }
        }
        let networks_json: Vec<String> = (0..networks)
            .map(|n| {
                format!(
                    r#"{{"id":"n{n}","vni":{},"subnet":"10.0.0.0/16","gateway":"10.0.0.1","mtu":1450}}"#,
                    10_000 + n
                )
            })
            .collect();
        let nodes_json: Vec<String> = (0..agents)
            .map(|h| format!(r#"{{"name":"hv-{h}","vtep":"{}"}}"#, vtep(h)))
            .collect();
        let nics_json: Vec<String> = nics
            .iter()
            .map(|n| serde_json::to_string(n).expect("NIC JSON"))
            .collect();
        let json = format!(
            r#"{{"networks":[{}],"nodes":[{}],"nics":[{}]}}"#,
            networks_json.join(","),
            nodes_json.join(","),
            nics_json.join(",")
        );
        (c, json)
    }

    pub(super) fn add(&mut self, network: usize, node: usize) -> Nic {
        let n = nic(self.nics, network, node);
        self.nics += 1;
        self.node_networks[node].insert(network);
        n
    }

    /// Watchers the design predicts: per agent, its node's NICs and the nodes, plus for each
    /// network it has a NIC in, the network's key and its NICs.
    pub(super) fn watchers(&self) -> usize {
        self.node_networks.iter().map(|n| 2 + 2 * n.len()).sum()
    }

    pub(super) fn mean_networks_per_node(&self) -> f64 {
        self.node_networks.iter().map(BTreeSet::len).sum::<usize>() as f64 / self.agents as f64
    }
}

fn vtep(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        100,
        64 + (h / 62_500) as u8,
        (h / 250 % 250) as u8,
        (h % 250 + 1) as u8,
    )
}
