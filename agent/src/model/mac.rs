//! A NIC's Ethernet address: its text form (`02:00:0a:00:00:ff`), parsed and printed.

use std::{fmt, net::Ipv6Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A NIC's Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// The link-local address whose interface identifier is this MAC's modified EUI-64
    /// (RFC 4291 §2.5.1 and appendix A: `ff:fe` inserted in the middle, the universal/local
    /// bit inverted), in `fe80::/64` (RFC 4862 §5.3). The router's address on every network:
    /// derived from `router_mac`, it is the same on every host, so a VM's default route holds
    /// wherever the VM runs.
    pub fn eui64_link_local(&self) -> Ipv6Addr {
        Ipv6Addr::from(agent_common::eui64_link_local(self.0))
    }

    /// The text form, made without the formatting machinery: a snapshot writes two for each
    /// of 100,000 NICs, and `{:02x}` six times was most of its time.
    fn text(&self) -> Text {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        Text(out)
    }
}

/// A MAC's text form: hex digits and colons.
struct Text([u8; 17]);

impl Text {
    fn as_str(&self) -> &str {
        // ASCII by construction: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A text that is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {text:?}: expected six hex octets separated by ':'")]
pub struct MacParseError {
    /// The text as given.
    pub text: String,
    pub problem: MacProblem,
}

/// What is wrong with the text of a MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacProblem {
    /// Fewer or more than six groups separated by `:`.
    GroupCount,
    /// The group at this position (from 0) is not two hex digits.
    Group(usize),
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |problem| MacParseError {
            text: s.to_owned(),
            problem,
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for (i, byte) in out.iter_mut().enumerate() {
            let part = parts.next().ok_or_else(|| fail(MacProblem::GroupCount))?;
            if part.len() != 2 {
                return Err(fail(MacProblem::Group(i)));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| fail(MacProblem::Group(i)))?;
        }
        if parts.next().is_some() {
            return Err(fail(MacProblem::GroupCount));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            "02:00:0A:00:00:ff".parse::<MacAddr>().unwrap().to_string(),
            "02:00:0a:00:00:ff"
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0200.0000.0000",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_parse_error_says_what_is_wrong() {
        let problem = |s: &str| s.parse::<MacAddr>().unwrap_err().problem;
        assert_eq!(problem("02:00:00:00:00"), MacProblem::GroupCount);
        assert_eq!(problem("02:00:00:00:00:00:00"), MacProblem::GroupCount);
        assert_eq!(problem("02:00:0:00:00:00"), MacProblem::Group(2));
        assert_eq!(problem("02:00:00:00:00:zz"), MacProblem::Group(5));
        let err = "zz".parse::<MacAddr>().unwrap_err();
        assert_eq!(err.text, "zz");
        assert_eq!(
            err.to_string(),
            r#"invalid MAC address "zz": expected six hex octets separated by ':'"#
        );
    }

    #[test]
    fn the_text_form_is_lowercase_hex_pairs() {
        for m in [[0; 6], [0xff; 6], [0x02, 0x00, 0x0a, 0x10, 0xab, 0xf9]] {
            let mac = MacAddr(m);
            let want = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
            assert_eq!(mac.to_string(), want);
            assert_eq!(format!("{mac:?}"), want);
            assert_eq!(serde_json::to_string(&mac).unwrap(), format!("\"{want}\""));
            assert_eq!(want.parse::<MacAddr>().unwrap(), mac);
        }
    }

    #[test]
    fn unicast() {
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!MacAddr([1, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!MacAddr([0; 6]).is_unicast());
    }

    #[test]
    fn the_eui64_link_local_address_flips_the_universal_local_bit_and_inserts_fffe() {
        // RFC 4291 appendix A's example: 34-56-78-9A-BC-DE -> 3656:78ff:fe9a:bcde.
        let m: MacAddr = "34:56:78:9a:bc:de".parse().unwrap();
        assert_eq!(
            m.eui64_link_local(),
            "fe80::3656:78ff:fe9a:bcde".parse::<Ipv6Addr>().unwrap()
        );
        // holdfast's default router MAC is locally administered: the bit goes to 0.
        let m: MacAddr = "02:68:66:00:00:01".parse().unwrap();
        assert_eq!(
            m.eui64_link_local(),
            "fe80::68:66ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(m.eui64_link_local().is_unicast_link_local());
    }
}
