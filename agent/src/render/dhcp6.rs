//! What every DHCPv6 reply of a network carries (RFC 8415), rendered once with its checksum
//! precomputed: the programs build the message header, the IA_NA with the NIC's `ip6` and the
//! client's identifier, and send these options after them.
//!
//! The address's lifetimes are the network's `lease_time`, as for DHCPv4, with T1 and T2 at
//! the fractions RFC 8415 §21.4 recommends (0.5 and 0.8): the client renews with the data
//! plane, which answers from its pinned maps with IPAM or the agent gone.

use agent_common::{
    Dhcp6Net, csum_partial,
    dhcp6::{OPT_DNS_SERVERS, OPT_DOMAIN_LIST, TAIL_MAX, server_id_option},
};

use super::ra6;
use crate::model::{MacAddr, Network};

/// The options of `net`'s replies from a server whose DUID is the router MAC's: `None` for a
/// network without `subnet6`, or (which validation rules out: a network whose router
/// advertisement fits fits here) one whose options do not fit `TAIL_MAX`.
pub fn render(net: &Network, router_mac: MacAddr) -> Option<Dhcp6Net> {
    net.subnet6?;
    let mut b: Vec<u8> = Vec::with_capacity(TAIL_MAX);
    b.extend_from_slice(&server_id_option(router_mac.0));
    if !net.dns6.is_empty() {
        // RFC 3646 §3: the addresses, 16 bytes each.
        b.extend_from_slice(&OPT_DNS_SERVERS.to_be_bytes());
        b.extend_from_slice(&u16::try_from(16 * net.dns6.len()).ok()?.to_be_bytes());
        for a in &net.dns6 {
            b.extend_from_slice(&a.octets());
        }
    }
    if !net.search.is_empty() {
        // RFC 3646 §4: the names in DNS wire format, uncompressed.
        let names = ra6::search_wire(&net.search);
        b.extend_from_slice(&OPT_DOMAIN_LIST.to_be_bytes());
        b.extend_from_slice(&u16::try_from(names.len()).ok()?.to_be_bytes());
        b.extend_from_slice(&names);
    }
    let len = b.len();
    let mut tail = [0u8; TAIL_MAX];
    tail.get_mut(..len)?.copy_from_slice(&b);
    let lease = net.lease_time;
    Some(Dhcp6Net {
        len: u16::try_from(len).ok()?,
        _pad: 0,
        csum: csum_partial(&tail[..len]),
        t1: (lease / 2).to_be_bytes(),
        t2: (lease / 5 * 4 + lease % 5 * 4 / 5).to_be_bytes(),
        preferred: lease.to_be_bytes(),
        valid: lease.to_be_bytes(),
        tail,
    })
}

#[cfg(test)]
mod tests {
    use agent_common::dhcp6::SERVER_ID_LEN;

    use super::*;

    fn net(extra: serde_json::Value) -> Network {
        let mut v = serde_json::json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                       "gateway": "10.10.0.1", "mtu": 1450,
                                       "subnet6": "fd00:10:10::/64"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_options_field_by_field() {
        let router = MacAddr([0x02, 0x68, 0x66, 0, 0, 1]);
        let n = net(serde_json::json!({
            "dns6": ["fd00:10:10::53", "2001:db8::53"],
            "search": ["corp.example.", "example"],
            "lease_time": 3600,
        }));
        let d = render(&n, router).expect("dual stack");
        let t = &d.tail[..usize::from(d.len)];
        // Server identifier: DUID-LL (3), Ethernet (1), the router MAC.
        assert_eq!(
            &t[..SERVER_ID_LEN],
            &[0, 2, 0, 10, 0, 3, 0, 1, 0x02, 0x68, 0x66, 0, 0, 1]
        );
        // DNS servers.
        let dns = &t[SERVER_ID_LEN..];
        assert_eq!(&dns[..4], &[0, 23, 0, 32]);
        assert_eq!(
            &dns[4..20],
            &"fd00:10:10::53"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        // Domain list: two names in wire format, no padding.
        let dl = &dns[36..];
        let wire = b"\x04corp\x07example\x00\x07example\x00";
        assert_eq!(&dl[..4], &[0, 24, 0, wire.len() as u8]);
        assert_eq!(&dl[4..], wire);
        assert_eq!(d.csum, csum_partial(t));
        assert!(d.tail[usize::from(d.len)..].iter().all(|b| *b == 0));
        // T1 0.5, T2 0.8 of the lifetimes, which are the lease time.
        assert_eq!(u32::from_be_bytes(d.t1), 1800);
        assert_eq!(u32::from_be_bytes(d.t2), 2880);
        assert_eq!(u32::from_be_bytes(d.preferred), 3600);
        assert_eq!(u32::from_be_bytes(d.valid), 3600);
    }

    #[test]
    fn without_subnet6_nothing_and_without_dns_the_server_identifier_alone() {
        let router = MacAddr([0x02, 0x68, 0x66, 0, 0, 1]);
        let mut v4 = net(serde_json::json!({}));
        v4.subnet6 = None;
        assert_eq!(render(&v4, router), None);
        let bare = render(&net(serde_json::json!({"dns6": [], "search": []})), router).unwrap();
        assert_eq!(usize::from(bare.len), SERVER_ID_LEN);
    }

    #[test]
    fn a_network_whose_advertisement_fits_fits_here() {
        // The longest search list the advertisement takes with three resolvers.
        let router = MacAddr([0x02, 0x68, 0x66, 0, 0, 1]);
        let mut search = Vec::new();
        let mut n = net(serde_json::json!({
            "dns6": ["fd00::1", "fd00::2", "fd00::3"],
        }));
        loop {
            search.push(format!("n{}.example", search.len()));
            n.search = search.clone();
            if ra6::check(&n).is_err() {
                search.pop();
                n.search = search.clone();
                break;
            }
        }
        assert!(render(&n, router).is_some());
    }
}
