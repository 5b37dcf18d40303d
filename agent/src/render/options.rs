//! DHCP options, rendered once per NIC into the bytes XDP copies into every reply, with their
//! checksum precomputed; and read back for `holdfast leases`.

use std::net::Ipv4Addr;

use agent_common::{
    Binding, OPTS_MAX, be32, csum_partial,
    dhcp::{
        OPT_CLASSLESS_ROUTES, OPT_DNS, OPT_DOMAIN_NAME, OPT_DOMAIN_SEARCH, OPT_END, OPT_HOSTNAME,
        OPT_INTERFACE_MTU, OPT_LEASE_TIME, OPT_NTP, OPT_REBINDING_TIME, OPT_RENEWAL_TIME,
        OPT_ROUTER, OPT_SUBNET_MASK,
    },
};
use ipnet::Ipv4Net;

use crate::model::{Network, Nic, OptionsBudget};

/// Bytes the blob is padded to at least, so every reply is a 300-byte BOOTP message
/// (RFC 1542 §2.1): 236 fixed + 4 cookie + 12 fixed options + 48.
const MIN_BLOB: usize = 48;

/// Bytes of the lease-time options (51, 58, 59) at the start of every blob.
pub const LEASE_OPTS_LEN: usize = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("option {code} would be {len} bytes, over the 255 an option can carry")]
    OptionTooLong { code: u8, len: usize },
    #[error("options take {len} bytes, over the {OPTS_MAX} a reply can carry")]
    TooLong { len: usize },
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn opt(&mut self, code: u8, value: &[u8]) -> Result<(), RenderError> {
        let len = u8::try_from(value.len()).map_err(|_| RenderError::OptionTooLong {
            code,
            len: value.len(),
        })?;
        self.buf.push(code);
        self.buf.push(len);
        self.buf.extend_from_slice(value);
        Ok(())
    }

    fn addrs(&mut self, code: u8, addrs: &[Ipv4Addr]) -> Result<(), RenderError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = addrs.iter().flat_map(|a| a.octets()).collect();
        self.opt(code, &bytes)
    }
}

/// RFC 1035 §3.1 wire form of a DNS name (uncompressed, as RFC 3397 permits).
fn dns_wire(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// RFC 3442 encoding of one classless route: prefix length, significant octets, router.
fn classless_route(to: Ipv4Net, via: Ipv4Addr, out: &mut Vec<u8>) {
    let width = to.prefix_len();
    out.push(width);
    out.extend_from_slice(&to.network().octets()[..usize::from(width).div_ceil(8)]);
    out.extend_from_slice(&via.octets());
}

/// Renders the options of `nic` on `net`. Layout: lease-time options first (an INFORM reply
/// blanks them), then 1, 3, 6, 15, 119, 121, 26, 12, 42, END, zero padding.
pub fn render_options(net: &Network, nic: &Nic) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer {
        buf: Vec::with_capacity(OPTS_MAX),
    };
    let lease = net.lease_time;
    // RFC 2131 §4.4.5: T1 defaults to half the lease, T2 to 7/8 of it.
    let t1 = (u64::from(lease) / 2) as u32;
    let t2 = (u64::from(lease) * 7 / 8) as u32;
    w.opt(OPT_LEASE_TIME, &lease.to_be_bytes())?;
    w.opt(OPT_RENEWAL_TIME, &t1.to_be_bytes())?;
    w.opt(OPT_REBINDING_TIME, &t2.to_be_bytes())?;
    debug_assert_eq!(w.buf.len(), LEASE_OPTS_LEN);

    w.opt(OPT_SUBNET_MASK, &net.subnet.netmask().octets())?;
    w.opt(OPT_ROUTER, &net.gateway.octets())?;
    w.addrs(OPT_DNS, &net.dns)?;
    if let Some(domain) = &net.domain {
        w.opt(OPT_DOMAIN_NAME, domain.as_bytes())?;
    }
    if !net.search.is_empty() {
        let mut wire = Vec::new();
        for s in &net.search {
            dns_wire(s, &mut wire);
        }
        w.opt(OPT_DOMAIN_SEARCH, &wire)?;
    }
    if !net.routes.is_empty() {
        // RFC 3442: a client that gets 121 ignores option 3, so the default route goes in too.
        let mut wire = Vec::new();
        for r in &net.routes {
            classless_route(r.to, r.via, &mut wire);
        }
        if !net.routes.iter().any(|r| r.to.prefix_len() == 0) {
            classless_route(Ipv4Net::default(), net.gateway, &mut wire);
        }
        w.opt(OPT_CLASSLESS_ROUTES, &wire)?;
    }
    if let Some(mtu) = net.mtu {
        w.opt(OPT_INTERFACE_MTU, &mtu.to_be_bytes())?;
    }
    if let Some(h) = &nic.hostname {
        w.opt(OPT_HOSTNAME, h.as_bytes())?;
    }
    w.addrs(OPT_NTP, &net.ntp)?;
    w.buf.push(OPT_END);

    let mut buf = w.buf;
    if buf.len() > OPTS_MAX {
        return Err(RenderError::TooLong { len: buf.len() });
    }
    // Even length: the precomputed checksum covers whole 16-bit words.
    let padded = buf.len().next_multiple_of(2).max(MIN_BLOB);
    buf.resize(padded, 0);
    Ok(buf)
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
    use crate::model::Route;

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
            dhcp_server: None,
            boot: None,
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
            boot: None,
        }
    }

    #[test]
    fn renders_the_documented_options() {
        let blob = render_options(&net(), &nic()).unwrap();
        let expect: &[u8] = &[
            51, 4, 0, 0, 0x0e, 0x10, // lease 3600
            58, 4, 0, 0, 0x07, 0x08, // T1 1800
            59, 4, 0, 0, 0x0c, 0x4e, // T2 3150
            1, 4, 255, 255, 255, 0, //
            3, 4, 10, 10, 0, 1, //
            6, 4, 10, 10, 0, 2, //
            15, 13, b'b', b'l', b'u', b'e', b'.', b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            119, 15, 4, b'b', b'l', b'u', b'e', 8, b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l',
            0, //
            121, 12, 12, 172, 16, 10, 10, 0, 1, 0, 10, 10, 0, 1, // 172.16/12 and default
            26, 2, 0x05, 0xaa, // 1450
            12, 4, b'v', b'm', b'-', b'1', //
            255,
        ];
        assert_eq!(&blob[..expect.len()], expect);
        assert!(blob[expect.len()..].iter().all(|b| *b == 0));
        assert_eq!(blob.len() % 2, 0);
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
        let mut n = net();
        n.dns.clear();
        n.domain = None;
        n.search.clear();
        n.routes.clear();
        n.mtu = None;
        let mut c = nic();
        c.hostname = None;
        let blob = render_options(&n, &c).unwrap();
        assert_eq!(blob.len(), MIN_BLOB);
    }

    #[test]
    fn too_many_options_are_refused() {
        let mut n = net();
        n.search = (0..40).map(|i| format!("d{i}.example.internal")).collect();
        assert!(matches!(
            render_options(&n, &nic()),
            Err(RenderError::OptionTooLong { code: 119, .. })
        ));
        n.search = (0..12).map(|i| format!("d{i}.example.internal")).collect();
        n.dns = (0..30).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert!(matches!(
            render_options(&n, &nic()),
            Err(RenderError::TooLong { .. })
        ));
    }
}
