//! A network's router advertisement (RFC 4861 §4.2), rendered once into the bytes the programs
//! send after the ICMPv6 header, with their checksum precomputed: the data plane answers a
//! router solicitation with it, and the agent's periodic sender sends the same bytes.
//!
//! Addresses are managed (M=1, O=1) and the prefix is on-link only (L=1, A=0): a VM takes the
//! address IPAM gave it from DHCPv6 and nothing else, which is what anti-spoofing holds it to.

use std::net::Ipv6Addr;

use agent_common::{RA_MAX, Ra6, csum_partial};

use crate::model::{MacAddr, Network};

/// Cur hop limit a VM uses for what it sends (RFC 4861 §4.2; the IANA default, RFC 8200).
pub const CUR_HOP_LIMIT: u8 = 64;
/// M: addresses come from DHCPv6 (RFC 4861 §4.2).
const FLAG_MANAGED: u8 = 0x80;
/// O: so does other configuration (DNS).
const FLAG_OTHER: u8 = 0x40;
/// The router lifetime, in seconds: the longest RFC 4861 §6.2.1 allows (`AdvDefaultLifetime`
/// at most 9000 s). A VM keeps its default route this long after the last advertisement it
/// heard, which is the time an agent may stay down before its VMs lose it.
pub const ROUTER_LIFETIME: u16 = 9000;
/// Lifetime of the resolvers and the search list (RFC 8106 §5.1, §5.2), in seconds: as long
/// as the default route they are reached by.
pub const DNS_LIFETIME: u32 = 9000;
/// A lifetime without end (RFC 4861 §4.6.2): the prefix stays on-link through any outage.
pub const INFINITE: u32 = u32::MAX;

/// Option types (RFC 4861 §4.6, RFC 8106 §5).
pub const OPT_SOURCE_LL: u8 = 1;
pub const OPT_PREFIX: u8 = 3;
pub const OPT_MTU: u8 = 5;
pub const OPT_RDNSS: u8 = 25;
pub const OPT_DNSSL: u8 = 31;
/// The prefix information option's L flag: on-link. A (autonomous, SLAAC) stays 0.
pub const PREFIX_ON_LINK: u8 = 0x80;

/// The fixed part of the body: cur hop limit, flags, router lifetime, reachable time,
/// retransmission timer.
const FIXED: usize = 12;
/// Source link-layer address 8, MTU 8, prefix information 32.
const ALWAYS: usize = 8 + 8 + 32;

/// A network's router advertisement does not fit what the data plane holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the router advertisement would take {len} bytes, over the {RA_MAX} the data plane holds: \
     RDNSS {rdnss} bytes ({servers} dns6), DNSSL {dnssl} bytes (the search list); list fewer"
)]
pub struct RaTooLong {
    pub len: usize,
    pub servers: usize,
    pub rdnss: usize,
    pub dnssl: usize,
}

/// The search list in DNS wire format (RFC 1035 §3.1, uncompressed as RFC 8106 §5.2 says):
/// each name as its labels, length first, and a zero byte.
pub(super) fn search_wire(search: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in search {
        let name = name.strip_suffix('.').unwrap_or(name);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            // Validation holds labels to 63 bytes.
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

/// Bytes of the RDNSS and DNSSL options of `net` (0 for one it has none of).
fn dns_option_lens(net: &Network) -> (usize, usize) {
    let rdnss = if net.dns6.is_empty() {
        0
    } else {
        8 + 16 * net.dns6.len()
    };
    let dnssl = if net.search.is_empty() {
        0
    } else {
        (8 + search_wire(&net.search).len()).next_multiple_of(8)
    };
    (rdnss, dnssl)
}

/// Whether the router advertisement of `net` fits `RA_MAX` (a network without `subnet6` has
/// none, and fits).
pub fn check(net: &Network) -> Result<(), RaTooLong> {
    if net.subnet6.is_none() {
        return Ok(());
    }
    let (rdnss, dnssl) = dns_option_lens(net);
    let len = FIXED + ALWAYS + rdnss + dnssl;
    if len > RA_MAX {
        return Err(RaTooLong {
            len,
            servers: net.dns6.len(),
            rdnss,
            dnssl,
        });
    }
    Ok(())
}

/// The router advertisement of `net` from a router at `router_mac`: the body after the 4-byte
/// ICMPv6 header, its length and its partial checksum. `None` for a network without `subnet6`
/// or (which validation rules out) one whose advertisement does not fit.
pub fn render(net: &Network, router_mac: MacAddr) -> Option<Ra6> {
    let prefix = net.subnet6?;
    check(net).ok()?;
    let mut b: Vec<u8> = Vec::with_capacity(RA_MAX);
    // RFC 4861 §4.2: the fixed part. Reachable time and retrans timer 0: unspecified, the
    // VM keeps its own.
    b.push(CUR_HOP_LIMIT);
    b.push(FLAG_MANAGED | FLAG_OTHER);
    b.extend_from_slice(&ROUTER_LIFETIME.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    // §4.6.1: source link-layer address, so a VM needs no solicitation to reach the router.
    b.extend_from_slice(&[OPT_SOURCE_LL, 1]);
    b.extend_from_slice(&router_mac.0);
    // §4.6.4: the network's MTU, which VXLAN's overhead already fits.
    b.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
    b.extend_from_slice(&u32::from(net.effective_mtu()).to_be_bytes());
    // §4.6.2: the prefix, on-link, no SLAAC; infinite lifetimes: on-link through any outage.
    b.extend_from_slice(&[OPT_PREFIX, 4, prefix.prefix_len(), PREFIX_ON_LINK]);
    b.extend_from_slice(&INFINITE.to_be_bytes());
    b.extend_from_slice(&INFINITE.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&prefix.network().octets());
    if !net.dns6.is_empty() {
        // RFC 8106 §5.1: length in units of 8 bytes, 1 + 2 per address.
        b.extend_from_slice(&[OPT_RDNSS, len8(8 + 16 * net.dns6.len()), 0, 0]);
        b.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
        for a in &net.dns6 {
            b.extend_from_slice(&a.octets());
        }
    }
    if !net.search.is_empty() {
        // RFC 8106 §5.2: the names, zero-padded to a multiple of 8 bytes.
        let names = search_wire(&net.search);
        let total = (8 + names.len()).next_multiple_of(8);
        b.extend_from_slice(&[OPT_DNSSL, len8(total), 0, 0]);
        b.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
        b.extend_from_slice(&names);
        b.resize(b.len() + total - 8 - names.len(), 0);
    }
    let len = b.len();
    let mut body = [0u8; RA_MAX];
    body.get_mut(..len)?.copy_from_slice(&b);
    Some(Ra6 {
        len: u16::try_from(len).ok()?,
        _pad: 0,
        csum: csum_partial(&body[..len]),
        body,
    })
}

/// An option length in units of 8 bytes; options here are under 256 bytes.
fn len8(bytes: usize) -> u8 {
    u8::try_from(bytes / 8).unwrap_or(u8::MAX)
}

/// The router's address on every network: its link-local address from `router_mac`.
pub fn router_address(router_mac: MacAddr) -> Ipv6Addr {
    router_mac.eui64_link_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: MacAddr = MacAddr([2, 0x68, 0x66, 0, 0, 1]);

    fn net(extra: serde_json::Value) -> Network {
        let mut v = serde_json::json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                       "gateway": "10.10.0.1", "mtu": 1450,
                                       "subnet6": "fd00:10:10::/64"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Reads the options after the fixed part as (type, bytes of the whole option).
    fn options(body: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = FIXED;
        while at < body.len() {
            let len = usize::from(body[at + 1]) * 8;
            assert!(len > 0, "an option of length 0 at {at}");
            out.push((body[at], &body[at..at + len]));
            at += len;
        }
        assert_eq!(at, body.len(), "options end where the body does");
        out
    }

    #[test]
    fn the_advertisement_field_by_field() {
        let n = net(serde_json::json!({
            "dns6": ["fd00:10:10::53", "2001:db8::53"],
            "search": ["blue.example", "example."],
        }));
        let ra = render(&n, ROUTER).unwrap();
        let b = &ra.body[..usize::from(ra.len)];
        assert!(ra.body[usize::from(ra.len)..].iter().all(|x| *x == 0));
        // RFC 4861 §4.2.
        assert_eq!(b[0], 64, "cur hop limit");
        assert_eq!(b[1], 0xc0, "M=1, O=1, nothing else");
        assert_eq!(be16(b, 2), 9000, "router lifetime");
        assert_eq!(be32(b, 4), 0, "reachable time");
        assert_eq!(be32(b, 8), 0, "retrans timer");
        let opts = options(b);
        assert_eq!(
            opts.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [1, 5, 3, 25, 31]
        );
        // §4.6.1: source link-layer address.
        assert_eq!(opts[0].1, &[1, 1, 2, 0x68, 0x66, 0, 0, 1]);
        // §4.6.4: MTU.
        let mtu = opts[1].1;
        assert_eq!((mtu.len(), be16(mtu, 2), be32(mtu, 4)), (8, 0, 1450));
        // §4.6.2: prefix information.
        let p = opts[2].1;
        assert_eq!(p.len(), 32);
        assert_eq!(p[2], 64, "prefix length");
        assert_eq!(p[3], 0x80, "L=1, A=0");
        assert_eq!(be32(p, 4), u32::MAX, "valid lifetime");
        assert_eq!(be32(p, 8), u32::MAX, "preferred lifetime");
        assert_eq!(be32(p, 12), 0, "reserved");
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&p[16..32]).unwrap()),
            "fd00:10:10::".parse::<Ipv6Addr>().unwrap()
        );
        // RFC 8106 §5.1: RDNSS, length 1 + 2 per address.
        let r = opts[3].1;
        assert_eq!((r[1], be16(r, 2), be32(r, 4)), (5, 0, 9000));
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&r[8..24]).unwrap()),
            "fd00:10:10::53".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&r[24..40]).unwrap()),
            "2001:db8::53".parse::<Ipv6Addr>().unwrap()
        );
        // §5.2: DNSSL, names in wire format, zero-padded to 8 bytes.
        let d = opts[4].1;
        assert_eq!((be16(d, 2), be32(d, 4)), (0, 9000));
        let wire = b"\x04blue\x07example\x00\x07example\x00";
        assert_eq!(&d[8..8 + wire.len()], wire);
        assert!(d[8 + wire.len()..].iter().all(|x| *x == 0));
        assert_eq!(d.len(), (8 + wire.len()).next_multiple_of(8));
        assert_eq!(ra.csum, csum_partial(b));
    }

    #[test]
    fn without_dns_no_dns_options_and_without_subnet6_no_advertisement() {
        let ra = render(&net(serde_json::json!({})), ROUTER).unwrap();
        assert_eq!(usize::from(ra.len), FIXED + ALWAYS);
        // An unset MTU is Ethernet's.
        let mut n = net(serde_json::json!({}));
        n.mtu = None;
        let ra = render(&n, ROUTER).unwrap();
        assert_eq!(be32(&ra.body, FIXED + 8 + 4), 1500);
        n.subnet6 = None;
        assert_eq!(render(&n, ROUTER), None);
        assert_eq!(check(&n), Ok(()));
    }

    #[test]
    fn an_advertisement_over_ra_max_does_not_fit() {
        // 60 bytes always; RDNSS 8 + 16 each: 11 servers (184 bytes) fit, 12 (200) do not.
        let servers =
            |k: usize| serde_json::json!((1..=k).map(|i| format!("fd00::{i}")).collect::<Vec<_>>());
        assert!(check(&net(serde_json::json!({"dns6": servers(11)}))).is_ok());
        let e = check(&net(serde_json::json!({"dns6": servers(12)}))).unwrap_err();
        assert_eq!(e.len, 12 + 48 + 8 + 16 * 12);
        assert!(e.to_string().contains("12 dns6"), "{e}");
        // A search list of long names.
        let long: Vec<String> = (0..4)
            .map(|i| format!("{}.example", "a".repeat(50 + i)))
            .collect();
        let e = check(&net(serde_json::json!({"search": long}))).unwrap_err();
        assert!(e.dnssl > 196, "{e}");
        assert_eq!(
            render(&net(serde_json::json!({"search": long})), ROUTER),
            None
        );
        // Three servers leave 140 bytes: a DNSSL of 8 + 128 bytes of names (wire format: a
        // name's length plus 2), padded to 136. One byte more pads to 144 and does not fit.
        let three = servers(3);
        let names = |a: usize, b: usize| {
            vec![
                "x".repeat(a),
                format!("{}.{}", "y".repeat(60), "z".repeat(b)),
            ]
        };
        assert_eq!(search_wire(&names(1, 62)).len(), 3 + 125);
        let n = net(serde_json::json!({"dns6": three, "search": names(1, 62)}));
        assert_eq!(usize::from(render(&n, ROUTER).unwrap().len), 60 + 56 + 136);
        let n = net(serde_json::json!({"dns6": three, "search": names(2, 62)}));
        assert!(check(&n).is_err());
        // The most servers that fit: 244 of 256 bytes.
        let ra = render(&net(serde_json::json!({"dns6": servers(11)})), ROUTER).unwrap();
        assert_eq!(usize::from(ra.len), 244);
    }

    #[test]
    fn the_router_answers_from_its_eui64_link_local_address() {
        assert_eq!(
            router_address(ROUTER),
            "fe80::68:66ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
    }

    /// Through validation with the renderer's budget: a network whose advertisement does not
    /// fit is rejected (`ra_too_long`), its last good version serving.
    #[test]
    fn validation_rejects_a_network_whose_advertisement_does_not_fit() {
        use crate::{
            model::{Limits, Reason, parse_document, validate},
            render::options::Budget,
        };
        let doc = |dns6: usize| {
            let servers: Vec<String> = (1..=dns6).map(|i| format!("fd00::{i}")).collect();
            let d = serde_json::json!({
                "networks": [{"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                              "gateway": "10.10.0.1", "subnet6": "fd00::/64", "dns6": servers}],
                "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}], "nics": []});
            parse_document(d.to_string().as_bytes()).unwrap()
        };
        let good = validate(&doc(11), None, "hv-1", &Limits::default(), &Budget);
        assert!(good.rejections.is_empty(), "{:?}", good.rejections);
        let v = validate(
            &doc(12),
            Some(&good.model),
            "hv-1",
            &Limits::default(),
            &Budget,
        );
        assert_eq!(v.rejections.len(), 1);
        let r = &v.rejections[0];
        assert_eq!((r.reason, r.kept_last_good), (Reason::RaTooLong, true));
        assert!(
            r.detail.contains("260 bytes") && r.detail.contains("12 dns6"),
            "{}",
            r.detail
        );
        assert_eq!(v.model, good.model);
    }
}
