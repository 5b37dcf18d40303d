//! VM ports: the interfaces a NIC may name, the only VM interfaces the programs go on, and the
//! hook that serves each ([`VmHooks`]).
//!
//! An interface is a VM port when its name matches one of `[vm] interfaces` (globs) and it is
//! none of the host's own: not the underlay, not `lo`, not the next-hop lookup anchor, and it
//! carries no host address. Validation rejects a NIC naming anything else, rendering puts the
//! programs on every VM port present (bound or not), and the data plane checks the same rules
//! again before it attaches.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use crate::links::Links;

/// The names QEMU (`tap0`, …) and libvirt (`vnet0`, …) give the taps they create.
pub const DEFAULT_PATTERNS: [&str; 2] = ["tap*", "vnet*"];

/// An interface name pattern: `*` matches any run of characters, `?` any one; everything else
/// stands for itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(String);

impl TryFrom<String> for Pattern {
    type Error = PatternError;

    fn try_from(text: String) -> Result<Self, PatternError> {
        Self::parse(&text)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("{0:?}: an empty pattern matches no interface")]
    Empty(String),
    #[error("{0:?}: longer than an interface name (15 bytes)")]
    TooLong(String),
    #[error("{0:?}: an interface name has no {1:?}")]
    Character(String, char),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty(text.into()));
        }
        // IFNAMSIZ is 16 with the terminating NUL; a `*` may match nothing.
        if text.len() > 15 && !text.contains('*') {
            return Err(PatternError::TooLong(text.into()));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':'))
        {
            return Err(PatternError::Character(text.into(), c));
        }
        Ok(Self(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches: iterative wildcard matching, linear in practice, never
    /// recursive.
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        // Where the last `*` was, and the name position it matches up to so far.
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == n[ni] => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    // The last `*` takes one more character.
                    Some((sp, sn)) => {
                        pi = sp + 1;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an interface whose name matches the patterns is still not a VM port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Excluded {
    Underlay,
    Loopback,
    Anchor,
    /// holdfast's metadata-mode VXLAN device (`[underlay] hook = "tc"`).
    Decap,
    /// It carries this host address.
    HostAddress(IpAddr),
}

impl fmt::Display for Excluded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Excluded::Underlay => f.write_str("it is the underlay"),
            Excluded::Loopback => f.write_str("it is the loopback interface"),
            Excluded::Anchor => f.write_str("it is holdfast's next-hop lookup anchor"),
            Excluded::Decap => f.write_str("it is holdfast's VXLAN decapsulation device"),
            Excluded::HostAddress(a) => write!(f, "it carries the host address {a}"),
        }
    }
}

/// Why an interface is not a VM port.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotVmPort {
    #[error("interface {name:?} is not a VM port: it matches none of [vm] interfaces ({patterns})")]
    NoMatch { name: String, patterns: String },
    #[error("interface {name:?} is not a VM port: {why}")]
    Excluded { name: String, why: Excluded },
}

/// Which interfaces are VM ports now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPorts {
    /// `None`: any name (a document checked on its own, tests).
    patterns: Option<Arc<[Pattern]>>,
    /// Interfaces that match but are the host's own.
    excluded: BTreeMap<String, Excluded>,
}

impl Default for VmPorts {
    fn default() -> Self {
        Self::any()
    }
}

impl VmPorts {
    /// Every interface name is a VM port: a document judged without a host.
    pub fn any() -> Self {
        Self {
            patterns: None,
            excluded: BTreeMap::new(),
        }
    }

    /// The interfaces matching `patterns`, but `lo`, the `underlay`, the `anchor` and the
    /// decapsulation device.
    pub fn new(patterns: &[Pattern], underlay: Option<&str>, anchor: &str) -> Self {
        let mut excluded = BTreeMap::from([
            ("lo".to_owned(), Excluded::Loopback),
            (anchor.to_owned(), Excluded::Anchor),
            (crate::decap::DEVICE.to_owned(), Excluded::Decap),
        ]);
        if let Some(u) = underlay {
            excluded.insert(u.to_owned(), Excluded::Underlay);
        }
        Self {
            patterns: Some(patterns.into()),
            excluded,
        }
    }

    /// These ports, without the interfaces of `links` that match the patterns and carry a
    /// host address. Only matching ones are named, so that addresses coming and going on
    /// the host's other interfaces change nothing here.
    pub fn with_links(mut self, links: &Links) -> Self {
        for l in links.values() {
            if let Some(a) = l.addresses.first()
                && self.matches(&l.name)
            {
                self.excluded
                    .entry(l.name.clone())
                    .or_insert(Excluded::HostAddress(*a));
            }
        }
        self
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(name)))
    }

    /// `Ok` when `name` is a VM port.
    pub fn check(&self, name: &str) -> Result<(), NotVmPort> {
        if let Some(why) = self.excluded.get(name) {
            return Err(NotVmPort::Excluded {
                name: name.into(),
                why: why.clone(),
            });
        }
        if !self.matches(name) {
            let patterns = self
                .patterns
                .iter()
                .flat_map(|ps| ps.iter().map(Pattern::as_str))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(NotVmPort::NoMatch {
                name: name.into(),
                patterns,
            });
        }
        Ok(())
    }

    pub fn is_port(&self, name: &str) -> bool {
        self.check(name).is_ok()
    }
}

/// Which hook serves a VM port. Both run the same VM-port logic (`agent-ebpf/src/vm.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmHook {
    /// XDP answers and forwards before an skb exists; TC on the same port is its skb path (GSO
    /// frames, oversized frames, unresolved next hops). Small frames cost least here.
    #[default]
    Xdp,
    /// TC alone, on the skb: no XDP on the port, so the kernel does not copy a guest's GSO
    /// frames for it. Bulk TCP costs least here.
    Tc,
}

impl fmt::Display for VmHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmHook::Xdp => "xdp",
            VmHook::Tc => "tc",
        })
    }
}

/// A per-interface choice of hook: VM ports whose name matches `interfaces` get `hook`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRule {
    pub interfaces: Vec<Pattern>,
    pub hook: VmHook,
}

/// The hook of each VM port: the first rule whose patterns match its name, else the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmHooks {
    pub host: VmHook,
    pub rules: Vec<HookRule>,
}

impl VmHooks {
    /// Every VM port on `hook`.
    pub fn all(hook: VmHook) -> Self {
        Self {
            host: hook,
            rules: Vec::new(),
        }
    }

    /// The hook that serves the VM port `name`.
    pub fn of(&self, name: &str) -> VmHook {
        self.rules
            .iter()
            .find(|r| r.interfaces.iter().any(|p| p.matches(name)))
            .map_or(self.host, |r| r.hook)
    }

    /// Whether any VM port may be served by `hook`.
    pub fn uses(&self, hook: VmHook) -> bool {
        self.host == hook || self.rules.iter().any(|r| r.hook == hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::LinkInfo;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn globs() {
        for (pattern, yes, no) in [
            (
                "tap*",
                &["tap", "tap0", "tap-vm1"][..],
                &["ta", "xtap0", "vnet0"][..],
            ),
            ("vnet?", &["vnet0"], &["vnet", "vnet10"]),
            ("*", &["a", "eth0"], &[]),
            (
                "a*b*c",
                &["abc", "aXbYc", "abbc", "abcbc"],
                &["ab", "acb", "abcx"],
            ),
            ("t*-*1", &["tap-vm1", "t-1"], &["tap-vm2", "t1"]),
        ] {
            for n in yes {
                assert!(p(pattern).matches(n), "{pattern} {n}");
            }
            for n in no {
                assert!(!p(pattern).matches(n), "{pattern} {n}");
            }
        }
        for bad in ["", "tap/0", "tap:0", "ta p", &"t".repeat(16)] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hosts_own_interfaces_are_never_vm_ports() {
        let all = [p("*")];
        let ports = VmPorts::new(&all, Some("ul0"), "holdfast0");
        let mut links = Links::new();
        let link = |name: &str, addresses: &[&str]| LinkInfo {
            name: name.into(),
            mtu: 1500,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        };
        links.insert(1, link("lo", &["127.0.0.1"]));
        links.insert(2, link("eth0", &["2001:db8::1"]));
        links.insert(3, link("tap1", &[]));
        let ports = ports.with_links(&links);
        for name in ["lo", "ul0", "holdfast0", "eth0"] {
            assert!(
                matches!(ports.check(name), Err(NotVmPort::Excluded { .. })),
                "{name}"
            );
        }
        assert!(ports.is_port("tap1"));
        assert_eq!(
            ports.check("eth0").unwrap_err().to_string(),
            "interface \"eth0\" is not a VM port: it carries the host address 2001:db8::1"
        );

        let ports = VmPorts::new(&[p("tap*"), p("vnet*")], None, "holdfast0").with_links(&links);
        assert!(ports.is_port("tap1") && ports.is_port("vnet3"));
        assert_eq!(
            ports.check("eth0").unwrap_err().to_string(),
            "interface \"eth0\" is not a VM port: it matches none of [vm] interfaces (tap*, vnet*)"
        );
        // An address on an interface that is no VM port anyway is not this policy's business.
        let before = ports.clone();
        links.insert(4, link("eth1", &["10.0.0.1"]));
        assert_eq!(
            VmPorts::new(&[p("tap*"), p("vnet*")], None, "holdfast0").with_links(&links),
            before
        );
    }

    #[test]
    fn the_first_matching_rule_picks_a_ports_hook_else_the_hosts() {
        let hooks = VmHooks {
            host: VmHook::Xdp,
            rules: vec![
                HookRule {
                    interfaces: vec![p("vnet1*"), p("tap-bulk*")],
                    hook: VmHook::Tc,
                },
                HookRule {
                    interfaces: vec![p("vnet*")],
                    hook: VmHook::Xdp,
                },
                HookRule {
                    interfaces: vec![p("vnet*")],
                    hook: VmHook::Tc,
                },
            ],
        };
        for (name, hook) in [
            ("vnet10", VmHook::Tc),
            ("tap-bulk0", VmHook::Tc),
            ("vnet2", VmHook::Xdp),
            ("tap0", VmHook::Xdp),
        ] {
            assert_eq!(hooks.of(name), hook, "{name}");
        }
        assert!(hooks.uses(VmHook::Tc) && hooks.uses(VmHook::Xdp));
        let tc = VmHooks::all(VmHook::Tc);
        assert_eq!(tc.of("tap0"), VmHook::Tc);
        assert!(!tc.uses(VmHook::Xdp));
        assert_eq!(VmHooks::default().of("tap0"), VmHook::Xdp);
    }
}
