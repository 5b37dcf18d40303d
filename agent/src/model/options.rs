//! The DHCP options IPAM adds to a network's or a NIC's replies beyond those the model's own
//! fields make (mask, gateway, DNS, names, routes, MTU, NTP): the known ones typed, any other
//! as a code and its bytes. A NIC's options override its network's, option by option (by code).

use std::{collections::BTreeMap, net::Ipv4Addr};

use agent_common::dhcp::{
    OPT_BROADCAST, OPT_CAPTIVE_PORTAL, OPT_CLASSLESS_ROUTES, OPT_CLIENT_ID, OPT_DNS,
    OPT_DOMAIN_NAME, OPT_DOMAIN_SEARCH, OPT_END, OPT_HOSTNAME, OPT_INTERFACE_MTU,
    OPT_IPV6_ONLY_PREFERRED, OPT_LEASE_TIME, OPT_MESSAGE_TYPE, OPT_MS_CLASSLESS_ROUTES,
    OPT_NETBIOS_NAME_SERVERS, OPT_NETBIOS_NODE_TYPE, OPT_NTP, OPT_OVERLOAD, OPT_PAD,
    OPT_RAPID_COMMIT, OPT_REBINDING_TIME, OPT_RELAY_AGENT_INFO, OPT_RENEWAL_TIME, OPT_ROUTER,
    OPT_SERVER_ID, OPT_SUBNET_MASK, OPT_WPAD,
};
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reasons::{Reason, Reject, reject};

/// RFC 8925 §3.4: MIN_V6ONLY_WAIT. A client waits at least this long whatever it is told, so a
/// shorter value is a mistake.
pub const V6ONLY_WAIT_MIN: u32 = 300;

/// What RFC 8910 §2 allows in option 114 besides an HTTPS URI: "no captive portal here".
pub const CAPPORT_UNRESTRICTED: &str = "urn:ietf:params:capport:unrestricted";

/// Extra options of a network (`options` of its entry) or of a NIC, which override the
/// network's. Absent fields send nothing (or the network's, for a NIC).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpOptions {
    /// 28 (RFC 2132 §5.3): sends the subnet's broadcast address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<bool>,
    /// 44 (RFC 2132 §8.5): NetBIOS over TCP/IP name servers (WINS); an empty list sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbios_name_servers: Option<Vec<Ipv4Addr>>,
    /// 46 (RFC 2132 §8.7): the NetBIOS node type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbios_node_type: Option<NetbiosNodeType>,
    /// 108 (RFC 8925): seconds an IPv6-only capable client should go without IPv4. Sent only
    /// to a client that lists 108 in its parameter request list (§3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_only_preferred: Option<u32>,
    /// 114 (RFC 8910): the captive portal API's HTTPS URI, or [`CAPPORT_UNRESTRICTED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captive_portal: Option<String>,
    /// 249: the network's classless routes again, under Microsoft's pre-standard code (the
    /// encoding of 121), for Windows before Vista, which asks for 249 and ignores 121.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_classless_routes: Option<bool>,
    /// 252: the proxy auto-configuration (WPAD) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wpad: Option<String>,
    /// Any other option, as its code and bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw: Vec<RawOption>,
}

impl DhcpOptions {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These options with `over`'s in their place wherever `over` sets one (a NIC's over its
    /// network's): typed fields by field, raw options by code.
    pub fn overridden_by(&self, over: &DhcpOptions) -> DhcpOptions {
        let mut raw: BTreeMap<u8, &RawOption> = self.raw.iter().map(|o| (o.code, o)).collect();
        raw.extend(over.raw.iter().map(|o| (o.code, o)));
        DhcpOptions {
            broadcast: over.broadcast.or(self.broadcast),
            netbios_name_servers: over
                .netbios_name_servers
                .clone()
                .or_else(|| self.netbios_name_servers.clone()),
            netbios_node_type: over.netbios_node_type.or(self.netbios_node_type),
            ipv6_only_preferred: over.ipv6_only_preferred.or(self.ipv6_only_preferred),
            captive_portal: over
                .captive_portal
                .clone()
                .or_else(|| self.captive_portal.clone()),
            ms_classless_routes: over.ms_classless_routes.or(self.ms_classless_routes),
            wpad: over.wpad.clone().or_else(|| self.wpad.clone()),
            raw: raw.into_values().cloned().collect(),
        }
    }

    /// The options on their own; `whose` names them in the detail ("network", "NIC").
    pub(super) fn check(&self, whose: &str) -> Result<(), Reject> {
        let bad = |what: String| Err(reject(Reason::InvalidOption, format!("{whose} {what}")));
        if let Some(servers) = &self.netbios_name_servers
            && let Some(a) = servers.iter().find(|a| !unicast(**a))
        {
            return bad(format!(
                "options.netbios_name_servers: {a} is not a unicast address"
            ));
        }
        if let Some(wait) = self.ipv6_only_preferred
            && wait < V6ONLY_WAIT_MIN
        {
            return bad(format!(
                "options.ipv6_only_preferred: {wait} s is shorter than the {V6ONLY_WAIT_MIN} s \
                 a client waits at least (RFC 8925 §3.4)"
            ));
        }
        if let Some(uri) = &self.captive_portal
            && !(uri == CAPPORT_UNRESTRICTED || url_like(uri, &["https://"]))
        {
            return bad(format!(
                "options.captive_portal: {uri:?} is neither an https:// URI nor \
                 {CAPPORT_UNRESTRICTED} (RFC 8910 §2)"
            ));
        }
        if let Some(url) = &self.wpad
            && !url_like(url, &["http://", "https://"])
        {
            return bad(format!(
                "options.wpad: {url:?} is not an http:// or https:// URL"
            ));
        }
        let mut seen = [false; 256];
        for o in &self.raw {
            if let Some(owner) = reserved(o.code) {
                return Err(reject(
                    Reason::OptionCodeReserved,
                    format!("{whose} options.raw: option {} {owner}", o.code),
                ));
            }
            if std::mem::replace(&mut seen[usize::from(o.code)], true) {
                return bad(format!("options.raw: option {} is listed twice", o.code));
            }
        }
        Ok(())
    }
}

/// An address a client can send to: not 0.0.0.0, loopback, multicast or broadcast.
fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
}

/// A URL with one of `schemes` and a host: printable ASCII without spaces (a client copies
/// the bytes as they are; nothing in it may end or split it).
fn url_like(s: &str, schemes: &[&str]) -> bool {
    schemes
        .iter()
        .any(|scheme| s.len() > scheme.len() && s.starts_with(scheme))
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a raw option may not carry `code`: holdfast sends it itself, from the request or a
/// field, or it would break the reply.
fn reserved(code: u8) -> Option<&'static str> {
    Some(match code {
        OPT_PAD | OPT_END => "is not an option (pad, end)",
        OPT_MESSAGE_TYPE | OPT_SERVER_ID => "is written by holdfast in every reply",
        OPT_RAPID_COMMIT => "is written by holdfast when the client asks for rapid commit",
        OPT_LEASE_TIME | OPT_RENEWAL_TIME | OPT_REBINDING_TIME => "comes from `lease_time`",
        OPT_OVERLOAD => "would make clients read the `sname` and `file` fields as options",
        OPT_CLIENT_ID => "is the client's own, echoed back (RFC 6842)",
        OPT_RELAY_AGENT_INFO => "is added by relay agents only (RFC 3046)",
        OPT_SUBNET_MASK => "comes from `subnet`",
        OPT_ROUTER => "comes from `gateway` and `default_route`",
        OPT_DNS => "comes from `dns`",
        OPT_HOSTNAME => "comes from the NIC's `hostname`",
        OPT_DOMAIN_NAME => "comes from `domain`",
        OPT_INTERFACE_MTU => "comes from `mtu`",
        OPT_NTP => "comes from `ntp`",
        OPT_DOMAIN_SEARCH => "comes from `search`",
        OPT_CLASSLESS_ROUTES => "comes from `routes` and `default_route`",
        OPT_BROADCAST => "comes from `options.broadcast`",
        OPT_NETBIOS_NAME_SERVERS => "comes from `options.netbios_name_servers`",
        OPT_NETBIOS_NODE_TYPE => "comes from `options.netbios_node_type`",
        OPT_IPV6_ONLY_PREFERRED => "comes from `options.ipv6_only_preferred`",
        OPT_CAPTIVE_PORTAL => "comes from `options.captive_portal`",
        OPT_MS_CLASSLESS_ROUTES => "comes from `options.ms_classless_routes`",
        OPT_WPAD => "comes from `options.wpad`",
        // The TFTP server name and boot file name: network boot's fields.
        66 | 67 => "belongs to network boot",
        _ => return None,
    })
}

/// NetBIOS over TCP/IP node types (RFC 1001 §10, RFC 2132 §8.7), by letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetbiosNodeType {
    /// Broadcast.
    B,
    /// Point-to-point (name server only).
    P,
    /// Mixed: broadcast, then the name server.
    M,
    /// Hybrid: the name server, then broadcast.
    H,
}

impl NetbiosNodeType {
    /// The option's byte.
    pub fn code(self) -> u8 {
        match self {
            NetbiosNodeType::B => 0x1,
            NetbiosNodeType::P => 0x2,
            NetbiosNodeType::M => 0x4,
            NetbiosNodeType::H => 0x8,
        }
    }
}

/// An option holdfast knows nothing of: its code and value, sent as they are. In JSON, the
/// value as hex (`"hex": "0a0b"`, colons between bytes allowed) or base64 (`"base64": "Cgs="`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOption {
    pub code: u8,
    pub value: Vec<u8>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawOptionJson {
    code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// Why a raw option's value does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawValueError {
    #[error("give the value as exactly one of `hex` and `base64`")]
    NotOneEncoding,
    #[error("`hex` is not pairs of hex digits (colons between bytes allowed)")]
    BadHex,
    #[error("`base64` is not base64: {0}")]
    BadBase64(String),
}

impl RawOption {
    fn from_json(j: RawOptionJson) -> Result<Self, RawValueError> {
        let value = match (j.hex, j.base64) {
            (Some(h), None) => parse_hex(&h).ok_or(RawValueError::BadHex)?,
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| RawValueError::BadBase64(e.to_string()))?,
            _ => return Err(RawValueError::NotOneEncoding),
        };
        Ok(Self {
            code: j.code,
            value,
        })
    }
}

/// Hex digits in pairs, optionally with a colon between bytes (`0a0b`, `0a:0b`).
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = if s.contains(':') {
        let mut out = Vec::new();
        for pair in s.split(':') {
            if pair.len() != 2 {
                return None;
            }
            out.extend_from_slice(pair.as_bytes());
        }
        out
    } else {
        s.as_bytes().to_vec()
    };
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = char::from(p[0]).to_digit(16)?;
            let lo = char::from(p[1]).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

impl<'de> Deserialize<'de> for RawOption {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawOption::from_json(RawOptionJson::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for RawOption {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawOptionJson {
            code: self.code,
            hex: Some(self.value.iter().map(|b| format!("{b:02x}")).collect()),
            base64: None,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DhcpOptions, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn raw_values_in_hex_or_base64() {
        let o = parse(
            r#"{"raw": [{"code": 224, "hex": "0a0B"}, {"code": 225, "hex": "01:02:ff"},
                        {"code": 226, "base64": "aGY="}, {"code": 227, "hex": ""}]}"#,
        )
        .unwrap();
        let values: Vec<(u8, &[u8])> = o.raw.iter().map(|r| (r.code, &r.value[..])).collect();
        assert_eq!(
            values,
            [
                (224, &[0x0a, 0x0b][..]),
                (225, &[1, 2, 0xff][..]),
                (226, b"hf"),
                (227, &[][..])
            ]
        );
        // The snapshot's form reads back the same.
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains(r#"{"code":226,"hex":"6866"}"#), "{text}");
        assert_eq!(parse(&text).unwrap(), o);
        for bad in [
            r#"{"raw": [{"code": 224, "hex": "0a0"}]}"#,
            r#"{"raw": [{"code": 224, "hex": "zz"}]}"#,
            r#"{"raw": [{"code": 224, "hex": "0a:b"}]}"#,
            r#"{"raw": [{"code": 224, "base64": "a"}]}"#,
            r#"{"raw": [{"code": 224}]}"#,
            r#"{"raw": [{"code": 224, "hex": "00", "base64": "AA=="}]}"#,
            r#"{"raw": [{"code": 256, "hex": "00"}]}"#,
            r#"{"raw": [{"code": 224, "hex": "00", "value": "x"}]}"#,
            r#"{"netbios_node_type": "X"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_nic_overrides_its_network_option_by_option() {
        let net = parse(
            r#"{"wpad": "http://wpad.net/wpad.dat", "netbios_node_type": "H",
                "raw": [{"code": 224, "hex": "01"}, {"code": 225, "hex": "02"}]}"#,
        )
        .unwrap();
        let nic = parse(
            r#"{"wpad": "http://wpad.nic/wpad.dat", "netbios_name_servers": [],
                "raw": [{"code": 225, "hex": "03"}, {"code": 230, "hex": ""}]}"#,
        )
        .unwrap();
        let m = net.overridden_by(&nic);
        assert_eq!(m.wpad.as_deref(), Some("http://wpad.nic/wpad.dat"));
        assert_eq!(m.netbios_node_type, Some(NetbiosNodeType::H));
        assert_eq!(m.netbios_name_servers, Some(vec![]));
        let raw: Vec<(u8, Vec<u8>)> = m.raw.into_iter().map(|r| (r.code, r.value)).collect();
        assert_eq!(raw, [(224, vec![1]), (225, vec![3]), (230, vec![])]);
        assert_eq!(net.overridden_by(&DhcpOptions::default()), net);
    }

    #[test]
    fn reserved_codes_and_bad_values_are_refused() {
        for code in [
            0u8, 1, 3, 6, 12, 15, 26, 28, 42, 44, 46, 51, 52, 53, 54, 58, 59, 61, 66, 67, 80, 82,
            108, 114, 119, 121, 249, 252, 255,
        ] {
            let o = DhcpOptions {
                raw: vec![RawOption {
                    code,
                    value: vec![],
                }],
                ..DhcpOptions::default()
            };
            let r = o.check("network").err().unwrap();
            assert_eq!(r.reason, Reason::OptionCodeReserved, "{code}");
            assert!(
                r.detail
                    .starts_with(&format!("network options.raw: option {code} ")),
                "{}",
                r.detail
            );
        }
        for code in [2u8, 43, 60, 100, 150, 175, 224, 254] {
            let o = DhcpOptions {
                raw: vec![RawOption {
                    code,
                    value: vec![1],
                }],
                ..DhcpOptions::default()
            };
            assert!(o.check("NIC").is_ok(), "{code}");
        }
        for bad in [
            r#"{"raw": [{"code": 224, "hex": "01"}, {"code": 224, "hex": "02"}]}"#,
            r#"{"ipv6_only_preferred": 299}"#,
            r#"{"captive_portal": "http://portal.example/"}"#,
            r#"{"captive_portal": "https://"}"#,
            r#"{"captive_portal": "https://portal example/"}"#,
            r#"{"wpad": "wpad.example/wpad.dat"}"#,
            r#"{"netbios_name_servers": ["10.0.0.5", "255.255.255.255"]}"#,
            r#"{"netbios_name_servers": ["0.0.0.0"]}"#,
        ] {
            let r = parse(bad).unwrap().check("network").err();
            assert_eq!(r.map(|r| r.reason), Some(Reason::InvalidOption), "{bad}");
        }
        for good in [
            r#"{"ipv6_only_preferred": 300}"#,
            r#"{"captive_portal": "https://portal.example/api?x=1"}"#,
            r#"{"captive_portal": "urn:ietf:params:capport:unrestricted"}"#,
            r#"{"wpad": "http://wpad.example/wpad.dat"}"#,
            r#"{"netbios_name_servers": ["10.0.0.5"], "netbios_node_type": "B", "broadcast": true}"#,
        ] {
            assert!(parse(good).unwrap().check("network").is_ok(), "{good}");
        }
    }
}
