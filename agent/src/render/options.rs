//! DHCP options, rendered once per NIC into the bytes XDP copies into every reply, with their
//! checksum precomputed; and read back for `holdfast leases`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use agent_common::{
    Binding, OPTS_MAX, be32, csum_partial,
    dhcp::{
        OPT_BROADCAST, OPT_CAPTIVE_PORTAL, OPT_CLASSLESS_ROUTES, OPT_DNS, OPT_DOMAIN_NAME,
        OPT_DOMAIN_SEARCH, OPT_END, OPT_HOSTNAME, OPT_INTERFACE_MTU, OPT_IPV6_ONLY_PREFERRED,
        OPT_LEASE_TIME, OPT_MS_CLASSLESS_ROUTES, OPT_NETBIOS_NAME_SERVERS, OPT_NETBIOS_NODE_TYPE,
        OPT_NTP, OPT_REBINDING_TIME, OPT_RENEWAL_TIME, OPT_ROUTER, OPT_SUBNET_MASK, OPT_WPAD,
        V6ONLY_OPT_LEN, V6ONLY_OPT_OFF,
    },
};
use ipnet::Ipv4Net;

use crate::model::{DhcpOptions, Network, Nic, OptionsBudget};

/// Bytes the blob is padded to at least, so every reply is a 300-byte BOOTP message
/// (RFC 1542 §2.1): 236 fixed + 4 cookie + 12 fixed options + 48.
const MIN_BLOB: usize = 48;

/// Bytes of the lease-time options (51, 58, 59) at the start of every blob.
pub const LEASE_OPTS_LEN: usize = 18;

const _: () = assert!(V6ONLY_OPT_OFF == LEASE_OPTS_LEN && V6ONLY_OPT_LEN == 6);

/// The most bytes one instance of an option carries; RFC 3396 splits a longer value into
/// consecutive instances of the same code, which clients concatenate.
const INSTANCE_MAX: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error(
        "options take {len} bytes, over the {OPTS_MAX} a reply can carry; the largest is option \
         {largest} ({largest_len} bytes)"
    )]
    TooLong {
        len: usize,
        /// The option taking the most bytes (its instances and their headers).
        largest: u8,
        largest_len: usize,
    },
    /// A network's router advertisement, not a DHCP reply.
    #[error(transparent)]
    Ra(#[from] super::ra6::RaTooLong),
}

struct Writer {
    buf: Vec<u8>,
    /// Bytes each option takes, headers included.
    sizes: BTreeMap<u8, usize>,
}

impl Writer {
    /// Option `code` with `value`: one instance, or (RFC 3396) as many consecutive instances as
    /// 255-byte pieces of it; an empty value is one empty instance.
    fn opt(&mut self, code: u8, value: &[u8]) {
        if value.is_empty() {
            self.instance(code, &[]);
        }
        for piece in value.chunks(INSTANCE_MAX) {
            self.instance(code, piece);
        }
    }

    /// Option `code` made of whole `items` (an address, a route, a name): split between items
    /// when it is longer than one instance, so that a client that reads each instance on its
    /// own rather than concatenating them (as RFC 3396 says) still reads whole items.
    fn items<I: AsRef<[u8]>>(&mut self, code: u8, items: &[I]) {
        let mut piece: Vec<u8> = Vec::with_capacity(INSTANCE_MAX);
        for item in items {
            let item = item.as_ref();
            if !piece.is_empty() && piece.len() + item.len() > INSTANCE_MAX {
                self.opt(code, &piece);
                piece.clear();
            }
            piece.extend_from_slice(item);
        }
        if !piece.is_empty() {
            self.opt(code, &piece);
        }
    }

    fn instance(&mut self, code: u8, piece: &[u8]) {
        debug_assert!(piece.len() <= INSTANCE_MAX);
        self.buf.push(code);
        self.buf.push(piece.len() as u8);
        self.buf.extend_from_slice(piece);
        *self.sizes.entry(code).or_default() += 2 + piece.len();
    }

    fn addrs(&mut self, code: u8, addrs: &[Ipv4Addr]) {
        let items: Vec<[u8; 4]> = addrs.iter().map(|a| a.octets()).collect();
        self.items(code, &items);
    }
}

/// A DNS name as it goes on the wire: without the trailing dot of a fully qualified name
/// (RFC 2132 §3.14 and §3.17 want the name itself; validation allows the dot).
fn bare(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// RFC 1035 §3.1 wire form of a DNS name (uncompressed, as RFC 3397 permits).
fn dns_wire(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in bare(name).split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// RFC 3442 encoding of one classless route: prefix length, significant octets, router.
fn classless_route(to: Ipv4Net, via: Ipv4Addr) -> Vec<u8> {
    let width = to.prefix_len();
    let mut out = Vec::with_capacity(9);
    out.push(width);
    out.extend_from_slice(&to.network().octets()[..usize::from(width).div_ceil(8)]);
    out.extend_from_slice(&via.octets());
    out
}

/// The classless routes (121, and 249 when asked) of `nic` on `net`: the network's routes,
/// then the default route via the gateway when the NIC gets it. A 0.0.0.0/0 route in `routes`
/// goes via the gateway (validation) and is that default route: it follows `default_route`.
fn classless_routes(net: &Network, default_route: bool) -> Vec<Vec<u8>> {
    let mut routes: Vec<Vec<u8>> = net
        .routes
        .iter()
        .filter(|r| r.to.prefix_len() > 0)
        .map(|r| classless_route(r.to, r.via))
        .collect();
    if routes.is_empty() {
        // Option 3 says it all.
        return routes;
    }
    if default_route {
        // RFC 3442: a client that gets 121 ignores option 3, so the default route goes in too.
        routes.push(classless_route(Ipv4Net::default(), net.gateway));
    }
    routes
}

/// Renders the options of `nic` on `net`. Layout: lease-time options first (an INFORM reply
/// blanks them), then 108 (the responder blanks it for a client that did not ask for it),
/// then 1, 3, 6, 15, 119, 121, 249, 26, 12, 42, 28, 44, 46, 114, 252, the raw options by
/// code, END, zero padding. An option longer than 255 bytes is split (RFC 3396).
pub fn render_options(net: &Network, nic: &Nic) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer {
        buf: Vec::with_capacity(OPTS_MAX),
        sizes: BTreeMap::new(),
    };
    let merged;
    let extra = match &nic.options {
        Some(o) => {
            merged = net.options.overridden_by(o);
            &merged
        }
        None => &net.options,
    };
    let default_route = nic.default_route(net);
    let lease = net.lease_time;
    // RFC 2131 §4.4.5: T1 defaults to half the lease, T2 to 7/8 of it.
    let t1 = (u64::from(lease) / 2) as u32;
    let t2 = (u64::from(lease) * 7 / 8) as u32;
    w.opt(OPT_LEASE_TIME, &lease.to_be_bytes());
    w.opt(OPT_RENEWAL_TIME, &t1.to_be_bytes());
    w.opt(OPT_REBINDING_TIME, &t2.to_be_bytes());
    debug_assert_eq!(w.buf.len(), LEASE_OPTS_LEN);
    if let Some(wait) = extra.ipv6_only_preferred {
        w.opt(OPT_IPV6_ONLY_PREFERRED, &wait.to_be_bytes());
    }

    w.opt(OPT_SUBNET_MASK, &net.subnet.netmask().octets());
    if default_route {
        w.opt(OPT_ROUTER, &net.gateway.octets());
    }
    w.addrs(OPT_DNS, &net.dns);
    if let Some(domain) = &net.domain {
        w.opt(OPT_DOMAIN_NAME, bare(domain).as_bytes());
    }
    let search: Vec<Vec<u8>> = net.search.iter().map(|s| dns_wire(s)).collect();
    w.items(OPT_DOMAIN_SEARCH, &search);
    let routes = classless_routes(net, default_route);
    w.items(OPT_CLASSLESS_ROUTES, &routes);
    if extra.ms_classless_routes == Some(true) {
        w.items(OPT_MS_CLASSLESS_ROUTES, &routes);
    }
    if let Some(mtu) = net.mtu {
        w.opt(OPT_INTERFACE_MTU, &mtu.to_be_bytes());
    }
    if let Some(h) = &nic.hostname {
        w.opt(OPT_HOSTNAME, bare(h).as_bytes());
    }
    w.addrs(OPT_NTP, &net.ntp);
    extra_options(&mut w, net, extra);
    w.buf.push(OPT_END);

    let mut buf = w.buf;
    if buf.len() > OPTS_MAX {
        let (largest, largest_len) = w
            .sizes
            .iter()
            .map(|(c, n)| (*c, *n))
            .max_by_key(|(c, n)| (*n, std::cmp::Reverse(*c)))
            .unwrap_or_default();
        return Err(RenderError::TooLong {
            len: buf.len(),
            largest,
            largest_len,
        });
    }
    // Even length: the precomputed checksum covers whole 16-bit words.
    let padded = buf.len().next_multiple_of(2).max(MIN_BLOB);
    buf.resize(padded, 0);
    Ok(buf)
}

/// The typed extra options after the model's own, then the raw ones by code.
fn extra_options(w: &mut Writer, net: &Network, extra: &DhcpOptions) {
    if extra.broadcast == Some(true) {
        w.opt(OPT_BROADCAST, &net.subnet.broadcast().octets());
    }
    if let Some(servers) = &extra.netbios_name_servers {
        w.addrs(OPT_NETBIOS_NAME_SERVERS, servers);
    }
    if let Some(t) = extra.netbios_node_type {
        w.opt(OPT_NETBIOS_NODE_TYPE, &[t.code()]);
    }
    if let Some(uri) = &extra.captive_portal {
        w.opt(OPT_CAPTIVE_PORTAL, uri.as_bytes());
    }
    if let Some(url) = &extra.wpad {
        w.opt(OPT_WPAD, url.as_bytes());
    }
    let mut raw: Vec<_> = extra.raw.iter().collect();
    raw.sort_by_key(|o| o.code);
    for o in raw {
        w.opt(o.code, &o.value);
    }
}

/// The map value for `nic` on `net`.
pub fn render(net: &Network, nic: &Nic) -> Result<Binding, RenderError> {
    let blob = render_options(net, nic)?;
    let mut opts = [0u8; OPTS_MAX];
    opts[..blob.len()].copy_from_slice(&blob);
    let mut inform = blob.clone();
    inform[..LEASE_OPTS_LEN].fill(0);
    Ok(Binding {
        ip: be32(nic.ip),
        server_id: be32(net.server_id()),
        vni: net.vni,
        mtu: u32::from(net.effective_mtu()),
        opts_len: blob.len() as u16,
        lease_opts_len: LEASE_OPTS_LEN as u16,
        opts_csum: csum_partial(&blob),
        inform_opts_csum: csum_partial(&inform),
        opts,
    })
}

/// The renderer's size check, for model validation.
pub struct Budget;

impl OptionsBudget for Budget {
    type Error = RenderError;

    fn check(&self, network: &Network, nic: &Nic) -> Result<(), RenderError> {
        render_options(network, nic).map(drop)
    }

    fn check_ra(&self, network: &Network) -> Result<(), RenderError> {
        Ok(super::ra6::check(network)?)
    }
}

/// What an operator wants to see of a binding's options: lease time and hostname.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub lease_time: Option<u32>,
    pub hostname: Option<String>,
    pub mtu: Option<u16>,
    pub prefix_len: Option<u32>,
}

/// Reads back the options of a binding held by the data plane.
pub fn summarize(b: &Binding) -> Summary {
    let mut s = Summary::default();
    let opts = &b.opts[..usize::from(b.opts_len).min(OPTS_MAX)];
    let mut i = 0;
    while i + 1 < opts.len() {
        let (code, len) = (opts[i], usize::from(opts[i + 1]));
        if code == OPT_END {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let Some(v) = opts.get(i + 2..i + 2 + len) else {
            break;
        };
        match code {
            OPT_LEASE_TIME if len == 4 => {
                s.lease_time = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            }
            OPT_HOSTNAME => s.hostname = Some(String::from_utf8_lossy(v).into_owned()),
            OPT_INTERFACE_MTU if len == 2 => s.mtu = Some(u16::from_be_bytes([v[0], v[1]])),
            OPT_SUBNET_MASK if len == 4 => {
                s.prefix_len = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]).count_ones());
            }
            _ => {}
        }
        i += 2 + len;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetbiosNodeType, RawOption, Route};

    fn net() -> Network {
        Network {
            id: "blue".into(),
            vni: 1001,
            subnet: "10.10.0.0/24".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            dns: vec!["10.10.0.2".parse().unwrap()],
            domain: Some("blue.internal".into()),
            search: vec!["blue.internal".into()],
            mtu: Some(1450),
            routes: vec![Route {
                to: "172.16.0.0/12".parse().unwrap(),
                via: "10.10.0.1".parse().unwrap(),
            }],
            ntp: vec![],
            lease_time: 3600,
            default_route: true,
            options: DhcpOptions::default(),
            dhcp_server: None,
            boot: None,
            subnet6: None,
            dns6: vec![],
            vpc: None,
            default_via: None,
        }
    }

    fn nic() -> Nic {
        Nic {
            mac: "02:00:00:00:00:01".parse().unwrap(),
            network: "blue".into(),
            ip: "10.10.0.11".parse().unwrap(),
            hostname: Some("vm-1".into()),
            node: "hv-1".into(),
            interface: Some("tap-vm1".into()),
            default_route: None,
            options: None,
            boot: None,
            ip6: None,
            forwarding: false,
        }
    }

    /// The first 18 bytes of every blob: 51, 58 and 59 for a lease of 3600 s.
    const LEASE: [u8; 18] = [
        51, 4, 0, 0, 0x0e, 0x10, // lease 3600
        58, 4, 0, 0, 0x07, 0x08, // T1 1800
        59, 4, 0, 0, 0x0c, 0x4e, // T2 3150
    ];

    /// A network with no options of its own but the mask (and the router when `nic` gets
    /// the default route), to see one option at a time.
    fn bare_net() -> Network {
        Network {
            dns: vec![],
            domain: None,
            search: vec![],
            mtu: None,
            routes: vec![],
            ..net()
        }
    }

    fn bare_nic() -> Nic {
        Nic {
            hostname: None,
            ..nic()
        }
    }

    /// `blob` is `LEASE`, then `body`, then END and zeros.
    #[track_caller]
    fn assert_blob(blob: &[u8], body: &[u8]) {
        assert_eq!(&blob[..LEASE.len()], LEASE);
        let rest = &blob[LEASE.len()..];
        assert_eq!(&rest[..body.len()], body, "{rest:?}");
        assert_eq!(rest[body.len()], 255, "END after the body: {rest:?}");
        assert!(rest[body.len() + 1..].iter().all(|b| *b == 0), "{rest:?}");
        assert_eq!(blob.len() % 2, 0);
    }

    #[test]
    fn renders_the_documented_options() {
        let blob = render_options(&net(), &nic()).unwrap();
        let expect: &[u8] = &[
            1, 4, 255, 255, 255, 0, //
            3, 4, 10, 10, 0, 1, //
            6, 4, 10, 10, 0, 2, //
            15, 13, b'b', b'l', b'u', b'e', b'.', b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            119, 15, 4, b'b', b'l', b'u', b'e', 8, b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            0, //
            121, 12, 12, 172, 16, 10, 10, 0, 1, 0, 10, 10, 0, 1, // 172.16/12 and default
            26, 2, 0x05, 0xaa, // 1450
            12, 4, b'v', b'm', b'-', b'1', //
        ];
        assert_blob(&blob, expect);
    }

    #[test]
    fn names_with_a_trailing_dot_go_out_without_it() {
        let mut n = net();
        n.domain = Some("blue.internal.".into());
        n.search = vec!["blue.internal.".into()];
        let mut c = nic();
        c.hostname = Some("vm-1.blue.internal.".into());
        let blob = render_options(&n, &c).unwrap();
        let expect: &[u8] = &[
            1, 4, 255, 255, 255, 0, //
            3, 4, 10, 10, 0, 1, //
            6, 4, 10, 10, 0, 2, //
            15, 13, b'b', b'l', b'u', b'e', b'.', b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            119, 15, 4, b'b', b'l', b'u', b'e', 8, b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            0, //
            121, 12, 12, 172, 16, 10, 10, 0, 1, 0, 10, 10, 0, 1, //
            26, 2, 0x05, 0xaa, //
            12, 18, b'v', b'm', b'-', b'1', b'.', b'b', b'l', b'u', b'e', b'.', b'i', b'n', b't',
            b'e', b'r', b'n', b'a', b'l', //
        ];
        assert_blob(&blob, expect);
    }

    #[test]
    fn a_nic_without_the_default_route_gets_neither_3_nor_a_default_in_121() {
        let mut n = net();
        // A 0.0.0.0/0 route via the gateway is the default route, and follows the same rule.
        n.routes.push(Route {
            to: Ipv4Net::default(),
            via: n.gateway,
        });
        let with: &[u8] = &[
            1, 4, 255, 255, 255, 0, //
            3, 4, 10, 10, 0, 1, //
            121, 12, 12, 172, 16, 10, 10, 0, 1, 0, 10, 10, 0, 1, //
        ];
        let without: &[u8] = &[
            1, 4, 255, 255, 255, 0, //
            121, 7, 12, 172, 16, 10, 10, 0, 1, // the classless route stays
        ];
        let n = Network {
            dns: vec![],
            domain: None,
            search: vec![],
            mtu: None,
            ..n
        };
        let c = bare_nic();
        assert_blob(&render_options(&n, &c).unwrap(), with);
        // Per NIC, over the network's default.
        let off = Nic {
            default_route: Some(false),
            ..c.clone()
        };
        assert_blob(&render_options(&n, &off).unwrap(), without);
        let n_off = Network {
            default_route: false,
            ..n.clone()
        };
        assert_blob(&render_options(&n_off, &c).unwrap(), without);
        let on = Nic {
            default_route: Some(true),
            ..c.clone()
        };
        assert_blob(&render_options(&n_off, &on).unwrap(), with);
        // Without classless routes: the mask alone.
        let plain = Network {
            routes: vec![],
            ..n_off
        };
        assert_blob(
            &render_options(&plain, &c).unwrap(),
            &[1, 4, 255, 255, 255, 0],
        );
    }

    fn with_options(o: DhcpOptions) -> Vec<u8> {
        let n = Network {
            options: o,
            ..bare_net()
        };
        render_options(&n, &bare_nic()).unwrap()
    }

    const MASK_ROUTER: [u8; 12] = [1, 4, 255, 255, 255, 0, 3, 4, 10, 10, 0, 1];

    #[test]
    fn each_typed_option_has_its_bytes() {
        let cases: [(DhcpOptions, &[u8]); 7] = [
            (
                DhcpOptions {
                    broadcast: Some(true),
                    ..Default::default()
                },
                &[28, 4, 10, 10, 0, 255],
            ),
            (
                DhcpOptions {
                    netbios_name_servers: Some(vec![
                        Ipv4Addr::new(10, 10, 0, 5),
                        Ipv4Addr::new(10, 10, 0, 6),
                    ]),
                    ..Default::default()
                },
                &[44, 8, 10, 10, 0, 5, 10, 10, 0, 6],
            ),
            (
                DhcpOptions {
                    netbios_node_type: Some(NetbiosNodeType::H),
                    ..Default::default()
                },
                &[46, 1, 8],
            ),
            (
                DhcpOptions {
                    captive_portal: Some("https://cp.example/api".into()),
                    ..Default::default()
                },
                b"\x72\x16https://cp.example/api",
            ),
            (
                DhcpOptions {
                    wpad: Some("http://w.example/wpad.dat".into()),
                    ..Default::default()
                },
                b"\xfc\x19http://w.example/wpad.dat",
            ),
            (
                DhcpOptions {
                    raw: vec![
                        RawOption {
                            code: 224,
                            value: vec![0xde, 0xad],
                        },
                        RawOption {
                            code: 175,
                            value: vec![],
                        },
                    ],
                    ..Default::default()
                },
                // By code; an empty value is an empty option.
                &[175, 0, 224, 2, 0xde, 0xad],
            ),
            (
                DhcpOptions {
                    broadcast: Some(false),
                    ms_classless_routes: Some(true),
                    netbios_name_servers: Some(vec![]),
                    ..Default::default()
                },
                // Nothing: no routes for 249, an empty list, 28 off.
                &[],
            ),
        ];
        for (o, tail) in cases {
            let blob = with_options(o.clone());
            let mut body = MASK_ROUTER.to_vec();
            body.extend_from_slice(tail);
            assert_blob(&blob, &body);
        }
        // 108 sits right after the lease times, where the responder can blank it.
        let blob = with_options(DhcpOptions {
            ipv6_only_preferred: Some(1800),
            ..Default::default()
        });
        let mut body = vec![108, 4, 0, 0, 0x07, 0x08];
        body.extend_from_slice(&MASK_ROUTER);
        assert_blob(&blob, &body);
        assert_eq!(blob[V6ONLY_OPT_OFF], OPT_IPV6_ONLY_PREFERRED);
        // 249 repeats 121.
        let n = Network {
            options: DhcpOptions {
                ms_classless_routes: Some(true),
                ..Default::default()
            },
            routes: net().routes,
            ..bare_net()
        };
        let mut body = MASK_ROUTER.to_vec();
        let routes = [12, 172, 16, 10, 10, 0, 1, 0, 10, 10, 0, 1];
        for code in [121, 249] {
            body.extend_from_slice(&[code, 12]);
            body.extend_from_slice(&routes);
        }
        assert_blob(&render_options(&n, &bare_nic()).unwrap(), &body);
    }

    #[test]
    fn a_nics_options_override_its_networks_by_code() {
        let n = Network {
            options: DhcpOptions {
                wpad: Some("http://net/w".into()),
                netbios_node_type: Some(NetbiosNodeType::B),
                raw: vec![
                    RawOption {
                        code: 224,
                        value: vec![1],
                    },
                    RawOption {
                        code: 225,
                        value: vec![2],
                    },
                ],
                ..Default::default()
            },
            ..bare_net()
        };
        let c = Nic {
            options: Some(Box::new(DhcpOptions {
                wpad: Some("http://nic/w".into()),
                raw: vec![RawOption {
                    code: 225,
                    value: vec![3, 3],
                }],
                ..Default::default()
            })),
            ..bare_nic()
        };
        let mut body = MASK_ROUTER.to_vec();
        body.extend_from_slice(&[46, 1, 1]);
        body.extend_from_slice(b"\xfc\x0chttp://nic/w");
        body.extend_from_slice(&[224, 1, 1, 225, 2, 3, 3]);
        assert_blob(&render_options(&n, &c).unwrap(), &body);
    }

    /// `n` routes to 1.0.0.0/8, 2.0.0.0/8, ...: 6 bytes each in 121.
    fn slash8_routes(n: u8) -> Vec<Route> {
        (1..=n)
            .map(|i| Route {
                to: Ipv4Net::new(Ipv4Addr::new(i, 0, 0, 0), 8).unwrap(),
                via: "10.10.0.1".parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn a_121_longer_than_255_bytes_is_split_between_routes() {
        // 43 routes of 6 bytes: 258 bytes, over one option's 255.
        let n = Network {
            routes: slash8_routes(43),
            default_route: false,
            ..bare_net()
        };
        let blob = render_options(&n, &bare_nic()).unwrap();
        let mut body = vec![1, 4, 255, 255, 255, 0];
        // 42 whole routes (252 bytes) in the first instance, the 43rd in the second.
        body.extend_from_slice(&[121, 252]);
        for i in 1..=42u8 {
            body.extend_from_slice(&[8, i, 10, 10, 0, 1]);
        }
        body.extend_from_slice(&[121, 6, 8, 43, 10, 10, 0, 1]);
        assert_blob(&blob, &body);
        assert_eq!(blob.len(), 18 + 6 + 254 + 8 + 1 + 1);
        // An option that is not made of items is cut at 255 bytes.
        let n = Network {
            options: DhcpOptions {
                raw: vec![RawOption {
                    code: 224,
                    value: (0..=255u8).collect(),
                }],
                ..Default::default()
            },
            default_route: false,
            ..bare_net()
        };
        let blob = render_options(&n, &bare_nic()).unwrap();
        let mut body = vec![1, 4, 255, 255, 255, 0, 224, 255];
        body.extend(0..=254u8);
        body.extend_from_slice(&[224, 1, 255]);
        assert_blob(&blob, &body);
    }

    #[test]
    fn a_119_longer_than_255_bytes_is_split_between_names() {
        // 12 names of 22 wire bytes: 264 bytes.
        let n = Network {
            search: (10..22).map(|i| format!("d{i}.example.internal")).collect(),
            default_route: false,
            ..bare_net()
        };
        let blob = render_options(&n, &bare_nic()).unwrap();
        let name = |i: usize| {
            let mut w = vec![3, b'd'];
            w.extend_from_slice(i.to_string().as_bytes());
            w.push(7);
            w.extend_from_slice(b"example");
            w.push(8);
            w.extend_from_slice(b"internal");
            w.push(0);
            w
        };
        assert_eq!(name(10).len(), 22);
        let mut body = vec![1, 4, 255, 255, 255, 0];
        // 11 whole names (242 bytes), then the 12th.
        body.extend_from_slice(&[119, 242]);
        for i in 10..21 {
            body.extend(name(i));
        }
        body.extend_from_slice(&[119, 22]);
        body.extend(name(21));
        assert_blob(&blob, &body);
    }

    #[test]
    fn binding_checksums_cover_the_blob() {
        let b = render(&net(), &nic()).unwrap();
        let len = usize::from(b.opts_len);
        assert_eq!(b.opts_csum, csum_partial(&b.opts[..len]));
        let mut inform = b.opts[..len].to_vec();
        inform[..LEASE_OPTS_LEN].fill(0);
        assert_eq!(b.inform_opts_csum, csum_partial(&inform));
        assert_eq!(b.server_id, u32::from_ne_bytes([10, 10, 0, 1]));
        let s = summarize(&b);
        assert_eq!(s.lease_time, Some(3600));
        assert_eq!(s.hostname.as_deref(), Some("vm-1"));
        assert_eq!(s.mtu, Some(1450));
    }

    #[test]
    fn a_minimal_network_is_padded_to_a_300_byte_message() {
        let blob = render_options(&bare_net(), &bare_nic()).unwrap();
        assert_eq!(blob.len(), MIN_BLOB);
    }

    #[test]
    fn options_over_the_reply_are_refused_naming_the_largest() {
        let mut n = net();
        // 40 search domains: 119 is split, and still far over.
        n.search = (0..40).map(|i| format!("d{i}.example.internal")).collect();
        let err = render_options(&n, &nic()).unwrap_err();
        assert!(
            matches!(err, RenderError::TooLong { largest: 119, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("the largest is option 119"),
            "{err}"
        );
        n.search = (0..12).map(|i| format!("d{i}.example.internal")).collect();
        n.dns = (0..30).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert!(matches!(
            render_options(&n, &nic()),
            Err(RenderError::TooLong { largest: 119, .. })
        ));
        // 43 routes fit without the default route (above), not with it and option 3.
        let n = Network {
            routes: slash8_routes(43),
            ..bare_net()
        };
        let err = render_options(&n, &bare_nic()).unwrap_err();
        assert_eq!(
            err,
            RenderError::TooLong {
                len: 18 + 6 + 6 + 267 + 1,
                largest: 121,
                largest_len: 267
            }
        );
    }
}
