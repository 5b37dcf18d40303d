//! The rules an entry must follow on its own: a network within the host's limits, a NIC
//! within its network. The rules between entries (duplicates, references) are
//! [`validate`](super::validate())'s.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::{
    Boot, Limits, Network, Nic, Node,
    reasons::{Reason, Reject, reject},
    validate::NicOwners,
};
use crate::ports::VmPorts;

const MTU_MIN: u16 = 576;
/// RFC 8200 §5: every link carrying IPv6 has an MTU of 1280 or more.
const MTU_MIN_IPV6: u16 = 1280;
/// The prefix length of a network's `subnet6`: addresses are managed per /64, the length an
/// interface identifier assumes (RFC 4291 §2.5.1), and every network is one link.
const SUBNET6_LEN: u8 = 64;
const MTU_MAX: u16 = 9000;
const VNI_MAX: u32 = (1 << 24) - 1;
/// Bytes VXLAN adds on the underlay (outer Ethernet excluded from the IP MTU: 20 + 8 + 8 + 14).
const VXLAN_MTU_OVERHEAD: u32 = 50;
/// The shortest lease a network may hand out, in seconds.
const LEASE_TIME_MIN: u32 = 10;

/// A host or domain name as RFC 1123 §2.1 has it: dot-separated labels of letters, digits and
/// inner hyphens, up to 63 bytes each and 253 in all; a trailing dot is allowed.
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

/// A network on its own and within the host's `limits`; the first rule broken is the reason.
/// `owners` names the NIC holding a route's `via`, only to say why the route is refused.
pub(super) fn check_network(
    n: &Network,
    limits: &Limits,
    owners: &NicOwners<'_>,
) -> Result<(), Reject> {
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
    if let Some(server) = n.dhcp_server {
        if !n.subnet.contains(&server) {
            return Err(reject(
                Reason::OutsideSubnet,
                format!("dhcp_server {server} is outside subnet {}", n.subnet),
            ));
        }
        if server == n.subnet.network() || server == n.subnet.broadcast() {
            return Err(reject(
                Reason::ReservedAddress,
                format!(
                    "dhcp_server {server} is the network or broadcast address of {}",
                    n.subnet
                ),
            ));
        }
    }
    if let Some(boot) = &n.boot {
        check_boot(boot)?;
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
    check_ipv6(n)?;
    if n.lease_time < LEASE_TIME_MIN {
        return Err(reject(
            Reason::InvalidLeaseTime,
            format!(
                "lease_time {} s is shorter than {LEASE_TIME_MIN} s",
                n.lease_time
            ),
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
    check_vpc(n)?;
    check_routes(n, owners)?;
    n.options.check("network")
}

/// The longest VPC name.
const VPC_NAME_MAX: usize = 64;

/// A network's routing fields on their own: a VPC name an operator can read back (letters,
/// digits, `-`, `_`, `.`), and a `default_via` that can be a NIC of the network (whether a
/// forwarding NIC holds it is judged with the NICs: [`super::validate`]).
fn check_vpc(n: &Network) -> Result<(), Reject> {
    if let Some(vpc) = &n.vpc
        && (vpc.is_empty()
            || vpc.len() > VPC_NAME_MAX
            || !vpc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return Err(reject(
            Reason::InvalidVpc,
            format!("vpc {vpc:?} must be 1 to {VPC_NAME_MAX} letters, digits, `-`, `_` or `.`"),
        ));
    }
    let Some(via) = n.default_via else {
        return Ok(());
    };
    let why = if !n.subnet.contains(&via) {
        format!("outside subnet {}", n.subnet)
    } else if via == n.subnet.network() || via == n.subnet.broadcast() {
        format!("the network or broadcast address of {}", n.subnet)
    } else if via == n.gateway || via == n.server_id() {
        // The router itself: what leaves the VPC would come back to it.
        "the gateway (the router itself, which sends what leaves the VPC to default_via)".into()
    } else {
        return Ok(());
    };
    Err(reject(
        Reason::DefaultViaInvalid,
        format!(
            "default_via {via} is {why}: it must be the address of a NIC of the network with \
             `forwarding: true` (a gateway VM)"
        ),
    ))
}

/// The IPv6 fields of `n`: a `subnet6` that is a /64 of global unicast or unique-local space,
/// a link MTU IPv6 can use, resolvers a VM can send to.
fn check_ipv6(n: &Network) -> Result<(), Reject> {
    if let Some(p) = n.subnet6 {
        if p.prefix_len() != SUBNET6_LEN {
            return Err(reject(
                Reason::Subnet6NotSlash64,
                format!(
                    "subnet6 {p} is a /{}: a network's IPv6 prefix is a /{SUBNET6_LEN}",
                    p.prefix_len()
                ),
            ));
        }
        if p != p.trunc() {
            return Err(reject(
                Reason::InvalidField,
                format!(
                    "subnet6 {p} has host bits set (did you mean {}?)",
                    p.trunc()
                ),
            ));
        }
        if let Some(why) = subnet6_unfit(p) {
            return Err(reject(
                Reason::Subnet6Scope,
                format!(
                    "subnet6 {p} is {why}: a network's prefix is global unicast (2000::/3) \
                     or unique-local (fc00::/7)"
                ),
            ));
        }
        if n.effective_mtu() < MTU_MIN_IPV6 {
            return Err(reject(
                Reason::MtuBelowIpv6Minimum,
                format!(
                    "mtu {} is under {MTU_MIN_IPV6}, the least a link carrying IPv6 has (RFC \
                     8200 §5): lower subnet6 or raise the mtu",
                    n.effective_mtu()
                ),
            ));
        }
    }
    for a in &n.dns6 {
        if let Some(why) = dns6_unfit(*a) {
            return Err(reject(
                Reason::Dns6Unreachable,
                format!("dns6 {a} is {why}: not a resolver a VM can reach"),
            ));
        }
    }
    Ok(())
}

/// Why prefix `p` (a /64) cannot be a network's: only global unicast and unique-local space
/// holds addresses a VM can be given (RFC 4291 §2.4, RFC 4193).
fn subnet6_unfit(p: Ipv6Net) -> Option<&'static str> {
    let a = p.network();
    let first = a.segments()[0];
    Some(if a.is_unspecified() {
        // ::/64 holds ::, ::1 and the IPv4-mapped ::ffff:0:0/96 (RFC 4291 §2.5.2, §2.5.3,
        // §2.5.5.2).
        "::/64, the unspecified, loopback and IPv4-mapped addresses"
    } else if a.is_multicast() {
        "multicast (ff00::/8)"
    } else if a.is_unicast_link_local() {
        "link-local (fe80::/10): the router's own address is there"
    } else if first & 0xffc0 == 0xfec0 {
        // RFC 3879 deprecated site-local addresses.
        "site-local (fec0::/10, deprecated)"
    } else if first & 0xe000 == 0x2000 || first & 0xfe00 == 0xfc00 {
        return None;
    } else {
        "outside global unicast and unique-local space"
    })
}

/// Why `a` cannot be a resolver's address.
fn dns6_unfit(a: Ipv6Addr) -> Option<&'static str> {
    Some(if a.is_unspecified() {
        "the unspecified address"
    } else if a.is_loopback() {
        // A VM's own loopback: not the resolver IPAM means.
        "the loopback address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.to_ipv4_mapped().is_some() {
        // RFC 4291 §2.5.5.2: for a host's own use; never on the wire.
        "an IPv4-mapped address"
    } else if a.is_unicast_link_local() {
        // On a holdfast network only the router has a link-local address others reach: a
        // VM's own is for ND, RS and DHCPv6 toward the router, and anti-spoofing holds it to
        // that. The router runs no resolver.
        "link-local (no resolver answers from one on a holdfast network)"
    } else {
        return None;
    })
}

/// Why `ip` cannot be a NIC's address in its /64: the interface identifiers a /64 reserves
/// (RFC 5453 §3).
fn ip6_reserved(ip: Ipv6Addr) -> Option<&'static str> {
    // The interface identifier: the low 64 bits.
    let iid = (u128::from(ip) & u128::from(u64::MAX)) as u64;
    Some(if iid == 0 {
        // RFC 4291 §2.6.1: the subnet-router anycast address.
        "the subnet-router anycast address (interface identifier 0)"
    } else if iid >= 0xfdff_ffff_ffff_ff80 {
        // RFC 2526 §2: the top 128 identifiers of a /64 with EUI-64 identifiers.
        "a reserved subnet anycast address (RFC 2526)"
    } else if (0x0200_5eff_fe00_0000..=0x0200_5eff_feff_ffff).contains(&iid) {
        // RFC 5453 §3: reserved by IANA (proxy mobile IPv6 among them).
        "in the reserved interface identifiers 0200:5eff:fe00:0-0200:5eff:feff:ffff (RFC 5453)"
    } else {
        return None;
    })
}

/// The routes of `n`, which a client installs as they are (RFC 3442), so each must lead where
/// holdfast carries traffic: via the gateway, the network's one router, or via a NIC of the
/// network (a gateway VM: whether it has `forwarding: true` is judged with the NICs, and a
/// route via one without is refused alone there). An address no one holds is a black hole.
/// `owners` says which NIC holds an address.
fn check_routes(n: &Network, owners: &NicOwners<'_>) -> Result<(), Reject> {
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
        if r.to.prefix_len() == 0 {
            if r.via != n.gateway {
                // Option 3 names the gateway: a client would get two default routes, or
                // (RFC 3442 §1: 121 wins) one that clients without 121 do not have.
                return Err(reject(
                    Reason::DefaultRouteNotGateway,
                    format!(
                        "route to {} goes via {}: the default route is the gateway {} (set \
                         `default_route` to say which NICs get it, and `default_via` to send \
                         what leaves the VPC to a gateway VM)",
                        r.to, r.via, n.gateway
                    ),
                ));
            }
            // The default route itself: sent as `default_route` says.
            continue;
        }
        if n.subnet.contains(&r.to.network()) && r.to.prefix_len() >= n.subnet.prefix_len() {
            // A wider route (10.0.0.0/8 for a /24) is fine: the subnet's on-link route is
            // more specific. This one would take on-link neighbours off the link.
            return Err(reject(
                Reason::RouteOverlapsSubnet,
                format!(
                    "route to {} lies within subnet {}, whose addresses are on the link",
                    r.to, n.subnet
                ),
            ));
        }
        if r.via == n.subnet.network() || r.via == n.subnet.broadcast() {
            return Err(reject(
                Reason::RouteViaReserved,
                format!(
                    "route to {} goes via {}, the network or broadcast address of {}",
                    r.to, r.via, n.subnet
                ),
            ));
        }
        if r.via == n.gateway {
            continue;
        }
        if owners.holder(&n.id, r.via).is_some() {
            continue;
        }
        return Err(reject(
            Reason::RouteViaUnowned,
            format!(
                "route to {} goes via {}, which neither the gateway ({}) nor a NIC of the \
                 network holds: a black hole",
                r.to, r.via, n.gateway
            ),
        ));
    }
    Ok(())
}

/// The longest boot file: `file` holds 128 bytes with its terminating NUL (RFC 2131 §2).
const BOOT_FILE_MAX: usize = 127;
/// The longest TFTP server name: `sname` holds 64 bytes with its NUL.
const BOOT_SERVER_NAME_MAX: usize = 63;

/// Network boot fields: files that fit `file` (printable ASCII: a path or a URL), a server
/// name that fits `sname`, a next server one can send to.
fn check_boot(b: &Boot) -> Result<(), Reject> {
    for (variant, file) in b.files() {
        let Some(file) = file else {
            continue;
        };
        if file.is_empty()
            || file.len() > BOOT_FILE_MAX
            || !file.bytes().all(|c| c.is_ascii_graphic())
        {
            return Err(reject(
                Reason::InvalidField,
                format!(
                    "boot file {file:?} ({variant:?}) must be 1 to {BOOT_FILE_MAX} printable \
                     ASCII characters without spaces"
                ),
            ));
        }
    }
    if let Some(name) = &b.server_name
        && (name.len() > BOOT_SERVER_NAME_MAX || !valid_dns_name(name))
    {
        return Err(reject(
            Reason::InvalidName,
            format!(
                "boot server_name {name:?} is not a DNS name of at most {BOOT_SERVER_NAME_MAX} \
                 bytes"
            ),
        ));
    }
    if let Some(a) = b.next_server
        && (a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
    {
        return Err(reject(
            Reason::InvalidAddress,
            format!("boot next_server {a} is not a unicast address"),
        ));
    }
    Ok(())
}

/// Why `a` cannot be a VTEP: it must be a unicast address one host can own, since VXLAN is
/// accepted from a VTEP by its outer source address.
fn vtep_unfit(a: Ipv4Addr) -> Option<&'static str> {
    let [first, ..] = a.octets();
    Some(if first == 0 {
        // RFC 1122 §3.2.1.3: "this host on this network", never a source to trust.
        "in 0.0.0.0/8 (this network)"
    } else if a.is_loopback() {
        "a loopback address"
    } else if a.is_link_local() {
        "a link-local address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_broadcast() {
        "the broadcast address"
    } else if first >= 240 {
        // RFC 1112 §4: class E, reserved.
        "in 240.0.0.0/4 (class E, reserved)"
    } else {
        return None;
    })
}

/// A node on its own: its VTEP a unicast host address.
pub(super) fn check_node(n: &Node) -> Result<(), Reject> {
    match vtep_unfit(n.vtep) {
        Some(why) => Err(reject(
            Reason::InvalidVtep,
            format!("vtep {} is {why}, not a unicast host address", n.vtep),
        )),
        None => Ok(()),
    }
}

/// A NIC within its network `net`; one on `this_node` must name its interface, a VM port of
/// `ports`.
pub(super) fn check_nic(
    nic: &Nic,
    net: &Network,
    this_node: &str,
    ports: &VmPorts,
) -> Result<(), Reject> {
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
    if nic.ip == net.server_id() {
        return Err(reject(
            Reason::ReservedAddress,
            format!("ip {} is the DHCP server address of {}", nic.ip, net.id),
        ));
    }
    if let Some(ip6) = nic.ip6 {
        check_ip6(ip6, net)?;
    }
    if let Some(boot) = &nic.boot {
        check_boot(boot)?;
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
        // Another host's interfaces are its business.
        Some(i) if *nic.node == *this_node => {
            if let Err(e) = ports.check(i) {
                return Err(reject(Reason::InterfaceNotVmPort, e.to_string()));
            }
        }
        None if *nic.node == *this_node => {
            return Err(reject(
                Reason::MissingInterface,
                format!("NIC on this node ({this_node}) has no `interface`"),
            ));
        }
        _ => {}
    }
    match &nic.options {
        Some(o) => o.check("NIC"),
        None => Ok(()),
    }
}

/// A NIC's `ip6` within its network `net`.
fn check_ip6(ip6: Ipv6Addr, net: &Network) -> Result<(), Reject> {
    let Some(p) = net.subnet6 else {
        return Err(reject(
            Reason::Ip6WithoutSubnet6,
            format!("ip6 {ip6} is set but network {} has no subnet6", net.id),
        ));
    };
    if !p.contains(&ip6) {
        return Err(reject(
            Reason::OutsideSubnet,
            format!("ip6 {ip6} is outside subnet6 {p} of network {}", net.id),
        ));
    }
    if let Some(why) = ip6_reserved(ip6) {
        return Err(reject(
            Reason::ReservedAddress,
            format!("ip6 {ip6} is {why} of {}", net.id),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["a", "ex.org", "ex.org.", "a-b.c1", &"a".repeat(63)] {
            assert!(valid_dns_name(good), "{good}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        for bad in [
            "",
            ".",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"a".repeat(64),
            &long,
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }

    fn node(vtep: &str) -> Node {
        Node {
            name: "hv-1".into(),
            vtep: vtep.parse().unwrap(),
        }
    }

    #[test]
    fn a_vtep_is_a_unicast_host_address() {
        for (bad, why) in [
            ("0.0.0.0", "this network"),
            ("0.1.2.3", "this network"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.0.1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "class E"),
            ("254.1.2.3", "class E"),
        ] {
            let r = check_node(&node(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(r.reason, Reason::InvalidVtep, "{bad}");
            assert!(
                r.detail.contains(bad) && r.detail.contains(why),
                "{}",
                r.detail
            );
        }
        for good in [
            "198.18.0.1",
            "10.0.0.1",
            "1.0.0.1",
            "223.255.255.254",
            "172.16.0.1",
        ] {
            assert!(check_node(&node(good)).is_ok(), "{good}");
        }
    }

    fn net(extra: serde_json::Value) -> Network {
        let mut v = serde_json::json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                       "gateway": "10.10.0.1"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn nic(ip: &str, boot: Option<serde_json::Value>) -> Nic {
        let mut v = serde_json::json!({"mac": "02:00:00:00:00:01", "network": "blue",
                                       "ip": ip, "node": "hv-2"});
        if let Some(b) = boot {
            v["boot"] = b;
        }
        serde_json::from_value(v).unwrap()
    }

    fn reason(r: Result<(), Reject>) -> Option<Reason> {
        r.err().map(|r| r.reason)
    }

    #[test]
    fn a_dhcp_server_is_a_host_address_of_the_subnet_no_nic_has() {
        let limits = Limits::default();
        let ok = net(serde_json::json!({"dhcp_server": "10.10.0.253"}));
        assert_eq!(
            reason(check_network(&ok, &limits, &NicOwners::new(&[]))),
            None
        );
        assert_eq!(ok.server_id(), "10.10.0.253".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            net(serde_json::json!({})).server_id(),
            "10.10.0.1".parse::<Ipv4Addr>().unwrap()
        );
        for (bad, why) in [
            ("10.20.0.2", Reason::OutsideSubnet),
            ("10.10.0.0", Reason::ReservedAddress),
            ("10.10.0.255", Reason::ReservedAddress),
        ] {
            let n = net(serde_json::json!({"dhcp_server": bad}));
            assert_eq!(
                reason(check_network(&n, &limits, &NicOwners::new(&[]))),
                Some(why),
                "{bad}"
            );
        }
        let ports = VmPorts::default();
        assert_eq!(
            reason(check_nic(&nic("10.10.0.253", None), &ok, "hv-1", &ports)),
            Some(Reason::ReservedAddress)
        );
        assert_eq!(
            reason(check_nic(&nic("10.10.0.11", None), &ok, "hv-1", &ports)),
            None
        );
    }

    #[test]
    fn boot_fields_must_fit_the_reply() {
        let limits = Limits::default();
        let ports = VmPorts::default();
        let good = serde_json::json!({"next_server": "10.10.0.5", "server_name": "tftp.blue",
                                      "bios": "undionly.kpxe", "uefi": "ipxe.efi",
                                      "arm64": "arm64/ipxe.efi",
                                      "ipxe": "http://10.10.0.5/boot.ipxe"});
        assert_eq!(
            reason(check_network(
                &net(serde_json::json!({"boot": good})),
                &limits,
                &NicOwners::new(&[])
            )),
            None
        );
        for (bad, why) in [
            (serde_json::json!({"bios": ""}), Reason::InvalidField),
            (
                serde_json::json!({"bios": "a".repeat(128)}),
                Reason::InvalidField,
            ),
            (
                serde_json::json!({"uefi": "with space.efi"}),
                Reason::InvalidField,
            ),
            (serde_json::json!({"ipxe": "x\u{0}y"}), Reason::InvalidField),
            (
                serde_json::json!({"server_name": "a_b"}),
                Reason::InvalidName,
            ),
            (
                serde_json::json!({"server_name": "a".repeat(64)}),
                Reason::InvalidName,
            ),
            (
                serde_json::json!({"next_server": "0.0.0.0"}),
                Reason::InvalidAddress,
            ),
            (
                serde_json::json!({"next_server": "224.0.0.1"}),
                Reason::InvalidAddress,
            ),
            (
                serde_json::json!({"next_server": "255.255.255.255"}),
                Reason::InvalidAddress,
            ),
        ] {
            let n = net(serde_json::json!({"boot": bad.clone()}));
            assert_eq!(
                reason(check_network(&n, &limits, &NicOwners::new(&[]))),
                Some(why),
                "{bad}"
            );
            // The same on a NIC: the NIC alone is rejected.
            let plain = net(serde_json::json!({}));
            assert_eq!(
                reason(check_nic(
                    &nic("10.10.0.11", Some(bad.clone())),
                    &plain,
                    "hv-1",
                    &ports
                )),
                Some(why),
                "{bad}"
            );
        }
        assert_eq!(
            reason(check_network(
                &net(serde_json::json!({"boot": {"bios": "a".repeat(127)}})),
                &limits,
                &NicOwners::new(&[])
            )),
            None
        );
    }

    #[test]
    fn interface_names() {
        for good in ["tap1", "vm-1.0", &"t".repeat(15)] {
            assert!(valid_interface_name(good), "{good}");
        }
        for bad in ["", "a/b", "a:b", "a b", &"t".repeat(16)] {
            assert!(!valid_interface_name(bad), "{bad}");
        }
    }

    fn v6(extra: serde_json::Value) -> Network {
        let mut base = serde_json::json!({"subnet6": "fd00:10:10::/64"});
        for (k, x) in extra.as_object().unwrap() {
            base[k] = x.clone();
        }
        net(base)
    }

    fn network_reason(n: &Network) -> Option<Reject> {
        check_network(n, &Limits::default(), &NicOwners::new(&[])).err()
    }

    #[test]
    fn a_subnet6_is_a_slash_64_of_global_or_unique_local_space() {
        for good in ["fd00:10:10::/64", "2001:db8:1:2::/64", "2a01:4f8:0:1::/64"] {
            assert!(
                network_reason(&v6(serde_json::json!({"subnet6": good}))).is_none(),
                "{good}"
            );
        }
        for (bad, reason, words) in [
            ("fd00:10:10::/48", Reason::Subnet6NotSlash64, "is a /48"),
            ("fd00:10:10::/80", Reason::Subnet6NotSlash64, "is a /80"),
            ("fd00:10:10::1/64", Reason::InvalidField, "host bits"),
            ("fe80::/64", Reason::Subnet6Scope, "link-local"),
            ("ff02::/64", Reason::Subnet6Scope, "multicast"),
            ("::/64", Reason::Subnet6Scope, "loopback"),
            ("fec0::/64", Reason::Subnet6Scope, "site-local"),
            ("100::/64", Reason::Subnet6Scope, "outside global unicast"),
            ("4000::/64", Reason::Subnet6Scope, "outside global unicast"),
        ] {
            let r = network_reason(&v6(serde_json::json!({"subnet6": bad})))
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(r.reason, reason, "{bad}");
            assert!(
                r.detail.contains(bad) && r.detail.contains(words),
                "{}",
                r.detail
            );
        }
        // Without subnet6 the network is IPv4-only, as before.
        assert!(network_reason(&net(serde_json::json!({}))).is_none());
    }

    #[test]
    fn a_network_with_ipv6_carries_ipv6_minimum_mtu() {
        let r = network_reason(&v6(serde_json::json!({"mtu": 1279}))).unwrap();
        assert_eq!(r.reason, Reason::MtuBelowIpv6Minimum);
        assert!(
            r.detail.contains("mtu 1279") && r.detail.contains("1280"),
            "{}",
            r.detail
        );
        assert!(network_reason(&v6(serde_json::json!({"mtu": 1280}))).is_none());
        // IPv4 alone may go lower.
        assert!(network_reason(&net(serde_json::json!({"mtu": 1000}))).is_none());
    }

    #[test]
    fn dns6_are_unicast_addresses() {
        let good = serde_json::json!({"dns6": ["fd00:10:10::53", "2001:4860:4860::8888"]});
        assert!(network_reason(&v6(good)).is_none());
        for (bad, words) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.53", "IPv4-mapped"),
            ("fe80::53", "link-local"),
        ] {
            let r = network_reason(&v6(serde_json::json!({"dns6": ["fd00::53", bad]})))
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(r.reason, Reason::Dns6Unreachable, "{bad}");
            assert!(r.detail.contains(words), "{}", r.detail);
        }
    }

    fn nic6(ip6: &str) -> Nic {
        let mut n = nic("10.10.0.11", None);
        n.ip6 = Some(ip6.parse().unwrap());
        n
    }

    #[test]
    fn an_ip6_is_a_host_address_of_its_networks_subnet6() {
        let ports = VmPorts::default();
        let n = v6(serde_json::json!({}));
        for good in [
            "fd00:10:10::11",
            "fd00:10:10:0:fdff:ffff:ffff:ff7f",
            "fd00:10:10::1",
        ] {
            assert_eq!(
                reason(check_nic(&nic6(good), &n, "hv-1", &ports)),
                None,
                "{good}"
            );
        }
        for (bad, why, words) in [
            (
                "fd00:10:11::11",
                Reason::OutsideSubnet,
                "outside subnet6 fd00:10:10::/64",
            ),
            ("2001:db8::11", Reason::OutsideSubnet, "outside"),
            (
                "fd00:10:10::",
                Reason::ReservedAddress,
                "subnet-router anycast",
            ),
            (
                "fd00:10:10:0:fdff:ffff:ffff:ff80",
                Reason::ReservedAddress,
                "RFC 2526",
            ),
            (
                "fd00:10:10:0:fdff:ffff:ffff:fffe",
                Reason::ReservedAddress,
                "RFC 2526",
            ),
            (
                "fd00:10:10:0:200:5eff:fe00:5213",
                Reason::ReservedAddress,
                "RFC 5453",
            ),
        ] {
            let r = check_nic(&nic6(bad), &n, "hv-1", &ports)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(r.reason, why, "{bad}");
            assert!(r.detail.contains(words), "{}", r.detail);
        }
        // On an IPv4-only network an ip6 has nowhere to be.
        let r = check_nic(
            &nic6("fd00:10:10::11"),
            &net(serde_json::json!({})),
            "hv-1",
            &ports,
        )
        .err()
        .unwrap();
        assert_eq!(r.reason, Reason::Ip6WithoutSubnet6);
        assert!(r.detail.contains("has no subnet6"), "{}", r.detail);
        // A NIC without ip6 on an IPv6 network is IPv4-only, which is fine.
        assert_eq!(
            reason(check_nic(&nic("10.10.0.11", None), &n, "hv-1", &ports)),
            None
        );
    }
}
