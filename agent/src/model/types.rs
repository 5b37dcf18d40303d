//! What the model holds: networks, nodes and NICs, the validated [`Model`] of them, and the
//! [`Limits`] of the host that validates it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use imbl::OrdMap;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{
    MacAddr,
    document::{FieldKind, FieldKinds, PathStep},
    options::DhcpOptions,
};
use crate::ports::VmPorts;

/// What a VM assumes without option 26.
const DEFAULT_MTU: u16 = 1500;

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
    /// Whether this network's NICs get the default route (option 3, and 0.0.0.0/0 in 121)
    /// unless a NIC says otherwise: a VM with NICs in several networks takes it from one.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub default_route: bool,
    /// Extra DHCP options for every NIC of the network.
    #[serde(default, skip_serializing_if = "DhcpOptions::is_empty")]
    pub options: DhcpOptions,
    /// The DHCP server's address on this network: the server identifier (option 54) and the
    /// source of replies. Defaults to the gateway; set it to keep the identifier clients hold
    /// when the gateway changes. No NIC may have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_server: Option<Ipv4Addr>,
    /// Network boot for the network's NICs (a NIC's own fields win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// The network's IPv6 prefix (a /64, global unicast or unique-local): announced in router
    /// advertisements, its addresses (`ip6`) managed by DHCPv6. Without it the network is
    /// IPv4-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// IPv6 resolvers, announced in router advertisements (RDNSS, RFC 8106) and DHCPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns6: Vec<Ipv6Addr>,
    /// The VPC the network belongs to: the networks of one VPC reach each other (routed in
    /// the data plane), and must not overlap. Without it, the network is a VPC of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Where what leaves the VPC goes: the address of a NIC of this network with
    /// `forwarding: true` (a gateway VM: NAT, firewall). Without it, off-VPC destinations get
    /// ICMP unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_via: Option<Ipv4Addr>,
}

fn default_lease_time() -> u32 {
    3600
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Network {
    /// The IP MTU VMs on this network use: option 26, or Ethernet's 1500.
    pub fn effective_mtu(&self) -> u16 {
        self.mtu.unwrap_or(DEFAULT_MTU)
    }

    /// The DHCP server identifier: `dhcp_server`, or the gateway.
    pub fn server_id(&self) -> Ipv4Addr {
        self.dhcp_server.unwrap_or(self.gateway)
    }
}

/// Network boot (PXE, UEFI, iPXE): where a booting VM fetches its boot file from, and which
/// file, by what the client says it is. Every field is optional; on a NIC, each field set
/// overrides the network's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// The next server (`siaddr`): the TFTP server boot files are fetched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_server: Option<Ipv4Addr>,
    /// The TFTP server's name (`sname`, option 66).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The boot file (`file`, option 67) of a BIOS PXE client (option 93 type 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<String>,
    /// Of an x86-64 UEFI client (types 7 and 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi: Option<String>,
    /// Of an ARM64 UEFI client (type 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm64: Option<String>,
    /// Of iPXE (user class "iPXE" or option 175), whatever its architecture: a script (a
    /// file name or URL), so that iPXE runs it instead of loading itself again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe: Option<String>,
}

impl Boot {
    /// `nic`'s fields over `network`'s.
    pub fn merged(network: Option<&Boot>, nic: Option<&Boot>) -> Option<Boot> {
        match (network, nic) {
            (None, None) => None,
            (Some(b), None) | (None, Some(b)) => Some(b.clone()),
            (Some(n), Some(c)) => Some(Boot {
                next_server: c.next_server.or(n.next_server),
                server_name: c.server_name.clone().or_else(|| n.server_name.clone()),
                bios: c.bios.clone().or_else(|| n.bios.clone()),
                uefi: c.uefi.clone().or_else(|| n.uefi.clone()),
                arm64: c.arm64.clone().or_else(|| n.arm64.clone()),
                ipxe: c.ipxe.clone().or_else(|| n.ipxe.clone()),
            }),
        }
    }

    /// The boot files, by the variant they are for.
    pub fn files(&self) -> [(agent_common::BootVariant, Option<&str>); 4] {
        use agent_common::BootVariant as V;
        [
            (V::Bios, self.bios.as_deref()),
            (V::UefiX64, self.uefi.as_deref()),
            (V::UefiArm64, self.arm64.as_deref()),
            (V::Ipxe, self.ipxe.as_deref()),
        ]
    }
}

impl FieldKinds for Network {
    fn kind_at(path: &[PathStep<'_>]) -> Option<FieldKind> {
        use PathStep::{Field, Index};
        match path {
            [Field("subnet" | "gateway" | "dhcp_server" | "subnet6" | "default_via")]
            | [Field("boot"), Field("next_server")]
            | [Field("dns" | "ntp" | "dns6"), Index]
            | [Field("routes"), Index, Field("to" | "via")]
            | [Field("options"), Field("netbios_name_servers"), Index] => Some(FieldKind::Address),
            _ => None,
        }
    }
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

impl FieldKinds for Node {
    fn kind_at(path: &[PathStep<'_>]) -> Option<FieldKind> {
        matches!(path, [PathStep::Field("vtep")]).then_some(FieldKind::Address)
    }
}

/// A VM's network interface. Its network and node names are shared by all the NICs a
/// validation accepts: a host may hold 100,000 NICs of a few hundred networks.
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
    /// Whether this NIC gets the default route; its network's `default_route` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<bool>,
    /// Extra DHCP options, overriding its network's by code. Boxed: most NICs have none, and
    /// a host holds 100,000 NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Box<DhcpOptions>>,
    /// Network boot fields of this NIC, over its network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Box<Boot>>,
    /// The NIC's IPv6 address, inside its network's `subnet6`: the only global source address
    /// it may send from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    /// Whether the NIC may send and receive any address (AWS: the source/destination check
    /// disabled): a gateway VM's. Its MAC stays enforced. Only such a NIC may be a `via`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forwarding: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Nic {
    /// Whether this NIC, on `net`, gets the default route.
    pub fn default_route(&self, net: &Network) -> bool {
        self.default_route.unwrap_or(net.default_route)
    }
}

impl FieldKinds for Nic {
    fn kind_at(path: &[PathStep<'_>]) -> Option<FieldKind> {
        match path {
            [PathStep::Field("mac")] => Some(FieldKind::Mac),
            [PathStep::Field("ip" | "ip6")]
            | [PathStep::Field("boot"), PathStep::Field("next_server")]
            | [
                PathStep::Field("options"),
                PathStep::Field("netbios_name_servers"),
                PathStep::Index,
            ] => Some(FieldKind::Address),
            _ => None,
        }
    }
}

/// What this host can carry, for the checks that depend on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The underlay MTU, when VXLAN is configured: a network's MTU plus 50 must fit in it.
    pub underlay_mtu: Option<u32>,
    /// The interfaces a NIC of this node may name.
    pub ports: VmPorts,
    /// How many entries of each kind the data plane holds.
    pub capacity: Capacity,
}

/// How many entries of each kind the data plane holds (its maps' sizes). A model that needs
/// more is cut to fit by validation, whole networks and nodes at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// DHCP bindings: the NICs of this node.
    pub bindings: usize,
    /// Forwarding entries: every NIC of the networks this node carries (those of the VPCs it
    /// has NICs in).
    pub fdb: usize,
    /// ARP answers: those NICs and each network's gateway.
    pub arp: usize,
    /// The networks this node carries.
    pub vnis: usize,
    /// The other nodes.
    pub vteps: usize,
    /// Routing entries: for each network carried, its VPC's subnets and gateways, its routes
    /// and its `default_via`.
    pub routes: usize,
    /// For each network carried, the other nodes hosting a forwarding NIC of its VPC.
    pub forwarders: usize,
}

impl Capacity {
    /// No limit: a document judged without a host.
    pub const UNBOUNDED: Capacity = Capacity {
        bindings: usize::MAX,
        fdb: usize::MAX,
        arp: usize::MAX,
        vnis: usize::MAX,
        vteps: usize::MAX,
        routes: usize::MAX,
        forwarders: usize::MAX,
    };
}

impl Default for Capacity {
    fn default() -> Self {
        Self::UNBOUNDED
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4-only entry written back has the keys it was read with: an old document (and
    /// what `holdfast ipam export` writes of it) is unchanged by IPv6.
    #[test]
    fn ipv6_fields_round_trip_and_old_entries_are_unchanged() {
        let old_net = serde_json::json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                         "gateway": "10.10.0.1", "dns": [], "search": [],
                                         "routes": [], "ntp": [], "lease_time": 3600});
        let n: Network = serde_json::from_value(old_net.clone()).unwrap();
        assert_eq!((n.subnet6, n.dns6.len()), (None, 0));
        assert_eq!(serde_json::to_value(&n).unwrap(), old_net);
        let old_nic = serde_json::json!({"mac": "02:00:00:00:00:01", "network": "blue",
                                         "ip": "10.10.0.11", "node": "hv-1"});
        let c: Nic = serde_json::from_value(old_nic.clone()).unwrap();
        assert_eq!(c.ip6, None);
        assert_eq!(serde_json::to_value(&c).unwrap(), old_nic);

        let mut dual_net = old_net;
        dual_net["subnet6"] = serde_json::json!("fd00:10:10::/64");
        dual_net["dns6"] = serde_json::json!(["fd00:10:10::53", "2001:db8::53"]);
        let n: Network = serde_json::from_value(dual_net.clone()).unwrap();
        assert_eq!(n.subnet6, Some("fd00:10:10::/64".parse().unwrap()));
        assert_eq!(serde_json::to_value(&n).unwrap(), dual_net);
        let mut dual_nic = old_nic;
        dual_nic["ip6"] = serde_json::json!("fd00:10:10::11");
        let c: Nic = serde_json::from_value(dual_nic.clone()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), dual_nic);
    }

    /// Routing fields are read and written back as they are; an entry without them is
    /// unchanged (no `vpc`, `default_via` or `forwarding: false` appears in it).
    #[test]
    fn routing_fields_round_trip_and_old_entries_are_unchanged() {
        let old_net = serde_json::json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                         "gateway": "10.10.0.1", "dns": [], "search": [],
                                         "routes": [], "ntp": [], "lease_time": 3600});
        let n: Network = serde_json::from_value(old_net.clone()).unwrap();
        assert_eq!((n.vpc.as_deref(), n.default_via), (None, None));
        assert_eq!(serde_json::to_value(&n).unwrap(), old_net);
        let old_nic = serde_json::json!({"mac": "02:00:00:00:00:01", "network": "blue",
                                         "ip": "10.10.0.11", "node": "hv-1"});
        let c: Nic = serde_json::from_value(old_nic.clone()).unwrap();
        assert!(!c.forwarding);
        assert_eq!(serde_json::to_value(&c).unwrap(), old_nic);
        // `forwarding: false` said out loud reads the same, and is written as nothing.
        let mut said = old_nic.clone();
        said["forwarding"] = serde_json::json!(false);
        let c: Nic = serde_json::from_value(said).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), old_nic);

        let mut routed = old_net;
        routed["vpc"] = serde_json::json!("prod");
        routed["default_via"] = serde_json::json!("10.10.0.254");
        routed["routes"] = serde_json::json!([{"to": "192.168.0.0/16", "via": "10.10.0.254"}]);
        let n: Network = serde_json::from_value(routed.clone()).unwrap();
        assert_eq!(n.vpc.as_deref(), Some("prod"));
        assert_eq!(n.default_via, Some(Ipv4Addr::new(10, 10, 0, 254)));
        assert_eq!(serde_json::to_value(&n).unwrap(), routed);
        let mut gw = old_nic;
        gw["forwarding"] = serde_json::json!(true);
        let c: Nic = serde_json::from_value(gw.clone()).unwrap();
        assert!(c.forwarding);
        assert_eq!(serde_json::to_value(&c).unwrap(), gw);
        // default_via is an address: a hostile value names its field.
        assert_eq!(
            Network::kind_at(&[PathStep::Field("default_via")]),
            Some(FieldKind::Address)
        );
    }
}
