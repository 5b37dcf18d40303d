//! `holdfast.toml`: what an operator configures on each hypervisor.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{RateLimit, RateLimits};
use serde::Deserialize;

use crate::{
    model::MacAddr,
    ports::{self, HookRule, Pattern, VmHook, VmHooks},
};

pub const DEFAULT_CONFIG: &str = "/etc/holdfast/holdfast.toml";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This hypervisor's name, as in the IPAM `nodes` list.
    pub node: String,
    /// Where the agent persists the last applied IPAM state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// bpffs directory holding the pinned maps and links.
    #[serde(default = "default_bpffs_dir")]
    pub bpffs_dir: PathBuf,
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// The virtual router MAC, the same on every host so a VM can move.
    #[serde(default = "default_router_mac")]
    pub router_mac: MacAddr,
    pub ipam: IpamConfig,
    /// Where VXLAN leaves and arrives; without it, VMs only reach VMs on this host.
    #[serde(default)]
    pub underlay: Option<UnderlayConfig>,
    /// What one VM interface may make the host do: answer DHCP and ARP, report DHCP events.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Which interfaces are VM ports.
    #[serde(default)]
    pub vm: VmConfig,
}

/// The VM ports: the only interfaces a NIC may name and the programs may go on, and the hook
/// that serves them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Interface name patterns (`*` any run of characters, `?` one). The underlay, `lo`, the
    /// lookup anchor and any interface with a host address are never VM ports.
    #[serde(default = "default_vm_interfaces")]
    pub interfaces: Vec<Pattern>,
    /// The hook serving this host's VM ports: `xdp` (the default) or `tc`.
    #[serde(default)]
    pub hook: VmHook,
    /// Per-interface exceptions (`[[vm.hook_for]]`, `interfaces` and `hook`): the first whose
    /// patterns match a port's name gives its hook.
    #[serde(default)]
    pub hook_for: Vec<HookRule>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            interfaces: default_vm_interfaces(),
            hook: VmHook::default(),
            hook_for: Vec::new(),
        }
    }
}

impl VmConfig {
    /// The hook of each VM port.
    pub fn hooks(&self) -> VmHooks {
        VmHooks {
            host: self.hook,
            rules: self.hook_for.clone(),
        }
    }
}

fn default_vm_interfaces() -> Vec<Pattern> {
    ports::DEFAULT_PATTERNS
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .collect()
}

/// Per-VM-interface rate limits, applied by the programs (counted drops beyond them). A limit
/// allows `*_per_sec` messages a second on average and `*_burst` back to back; a `*_per_sec`
/// of 0 turns it off. The defaults are far above what real clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    #[serde(default = "default_dhcp_per_sec")]
    pub dhcp_per_sec: u32,
    #[serde(default = "default_dhcp_burst")]
    pub dhcp_burst: u32,
    #[serde(default = "default_arp_per_sec")]
    pub arp_per_sec: u32,
    #[serde(default = "default_arp_burst")]
    pub arp_burst: u32,
    #[serde(default = "default_events_per_sec")]
    pub events_per_sec: u32,
    #[serde(default = "default_events_burst")]
    pub events_burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            dhcp_per_sec: default_dhcp_per_sec(),
            dhcp_burst: default_dhcp_burst(),
            arp_per_sec: default_arp_per_sec(),
            arp_burst: default_arp_burst(),
            events_per_sec: default_events_per_sec(),
            events_burst: default_events_burst(),
        }
    }
}

impl RateLimitsConfig {
    /// The limits as the programs take them.
    pub fn limits(&self) -> RateLimits {
        RateLimits {
            dhcp: RateLimit::per_sec(self.dhcp_per_sec, self.dhcp_burst),
            arp: RateLimit::per_sec(self.arp_per_sec, self.arp_burst),
            events: RateLimit::per_sec(self.events_per_sec, self.events_burst),
        }
    }

    /// Each limit's (name, per second, burst).
    fn each(&self) -> [(&'static str, &'static str, u32, u32); 3] {
        [
            (
                "rate_limits.dhcp_per_sec",
                "rate_limits.dhcp_burst",
                self.dhcp_per_sec,
                self.dhcp_burst,
            ),
            (
                "rate_limits.arp_per_sec",
                "rate_limits.arp_burst",
                self.arp_per_sec,
                self.arp_burst,
            ),
            (
                "rate_limits.events_per_sec",
                "rate_limits.events_burst",
                self.events_per_sec,
                self.events_burst,
            ),
        ]
    }
}

/// Bounds of a rate limit's `*_per_sec` (0 is off) and `*_burst`: beyond a million a second a
/// limit limits nothing a VM can send.
const RATE_PER_SEC_MAX: u32 = 1_000_000;
const RATE_BURST: std::ops::RangeInclusive<u32> = 1..=1_000_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayConfig {
    /// The underlay interface (its address is this node's VTEP, from IPAM's `nodes`).
    pub interface: String,
    /// The underlay MTU networks must fit in with the 50 bytes of VXLAN; default: the
    /// interface's own MTU.
    pub mtu: Option<u32>,
    /// Where VXLAN to this host is decapsulated: `xdp` (default), holdfast's XDP program on
    /// the underlay; `tc`, the kernel's VXLAN device in metadata mode, with holdfast's checks
    /// and delivery on its TC ingress, and no program on the underlay.
    #[serde(default)]
    pub hook: UnderlayHook,
}

/// Where VXLAN to this host is decapsulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayHook {
    /// XDP on the underlay: before any skb exists, with native XDP (a physical NIC's driver).
    #[default]
    Xdp,
    /// The kernel decapsulates into holdfast's metadata-mode VXLAN device (`holdfast-vx`), GRO
    /// included, and holdfast's TC program there checks and delivers. For underlays where XDP
    /// is not native (a veth, a VLAN or bond device, a driver without XDP): there XDP copies
    /// each aggregate, or makes the sender segment it.
    Tc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpamSource {
    /// A JSON document in a local file (the embedded default).
    File,
    /// The central IPAM store.
    Etcd,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    pub source: IpamSource,
    /// The IPAM document (`source = "file"`).
    pub path: Option<PathBuf>,
    /// How often the file is checked for changes, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// etcd client URLs (`source = "etcd"`), e.g. `https://etcd-0.ipam:2379`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The key prefix IPAM lives under.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Deadline of every etcd call (connect, read, write), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often the watch stream is asked for progress (proof that etcd answers and nothing
    /// was missed), in milliseconds. etcd serves agents / interval of these per second.
    #[serde(default = "default_progress_interval_ms")]
    pub progress_interval_ms: u64,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// TLS to etcd: the CA that signed the servers' certificates, and a client certificate when
/// etcd asks for one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// etcd user and password (read from a file, never written in the config).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: String,
    pub password_file: PathBuf,
    /// Sends the credentials to `http://` endpoints, in clear text. Refused unless set.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl IpamConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/holdfast")
}

fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/holdfast")
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9469))
}

fn default_router_mac() -> MacAddr {
    // Locally administered, unicast; "hf" in the middle.
    MacAddr([0x02, 0x68, 0x66, 0x00, 0x00, 0x01])
}

fn default_dhcp_per_sec() -> u32 {
    RateLimits::DEFAULT_DHCP.0
}

fn default_dhcp_burst() -> u32 {
    RateLimits::DEFAULT_DHCP.1
}

fn default_arp_per_sec() -> u32 {
    RateLimits::DEFAULT_ARP.0
}

fn default_arp_burst() -> u32 {
    RateLimits::DEFAULT_ARP.1
}

fn default_events_per_sec() -> u32 {
    RateLimits::DEFAULT_EVENTS.0
}

fn default_events_burst() -> u32 {
    RateLimits::DEFAULT_EVENTS.1
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_prefix() -> String {
    "/holdfast".into()
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_progress_interval_ms() -> u64 {
    2000
}

/// Bounds of `ipam.progress_interval_ms`. Above a minute, a silent stream would go unnoticed
/// for as long, and `holdfast_ipam_stale_seconds` would climb as high between progress reports
/// of an idle cloud.
const PROGRESS_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// Overrides `node` (a DaemonSet sets it from the Kubernetes node name).
pub const NODE_ENV: &str = "HOLDFAST_NODE";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// Something in the config that works but should not be so.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigWarning {
    #[error(
        "ipam.auth.password_file {path}: readable by others than its owner (mode {mode:04o}); \
         chmod 0600 it"
    )]
    PasswordFileExposed { path: PathBuf, mode: u32 },
}

/// The password file's permissions: it should be its owner's alone. Nothing when it cannot be
/// read (connecting reports that).
pub fn check_password_file(path: &Path) -> Option<ConfigWarning> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| ConfigWarning::PasswordFileExposed {
        path: path.to_owned(),
        mode,
    })
}

impl Config {
    /// Reads and checks a config file. Blocking: call it before the runtime starts or on the
    /// blocking pool.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &text)?;
        for w in config.warnings() {
            tracing::warn!(config = %path.display(), "{w}");
        }
        Ok(config)
    }

    /// What works in this config but should not be so (reads the files it names).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let auth = self
            .ipam
            .auth
            .as_ref()
            .filter(|_| self.ipam.source == IpamSource::Etcd);
        auth.and_then(|a| check_password_file(&a.password_file))
            .into_iter()
            .collect()
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_node(path, text, std::env::var(NODE_ENV).ok())
    }

    /// As [`Config::parse`], with `node` replaced when `node_override` is set.
    pub fn parse_with_node(
        path: &Path,
        text: &str,
        node_override: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml names the key and shows the line; keep it on one line for logs.
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if let Some(node) = node_override {
            config.node = node;
        }
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if config.node.is_empty() {
            return Err(invalid("node", "must not be empty".into()));
        }
        if !config.router_mac.is_unicast() {
            return Err(invalid(
                "router_mac",
                format!("{} is not a unicast MAC address", config.router_mac),
            ));
        }
        if !config.bpffs_dir.is_absolute() {
            return Err(invalid("bpffs_dir", "must be an absolute path".into()));
        }
        match config.ipam.source {
            IpamSource::File if config.ipam.path.is_none() => {
                return Err(invalid(
                    "ipam.path",
                    "is required with source = \"file\"".into(),
                ));
            }
            IpamSource::File => {}
            IpamSource::Etcd => {
                if config.ipam.endpoints.is_empty() {
                    return Err(invalid(
                        "ipam.endpoints",
                        "at least one etcd URL is required with source = \"etcd\"".into(),
                    ));
                }
                if let Some(bad) = config
                    .ipam
                    .endpoints
                    .iter()
                    .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
                {
                    return Err(invalid(
                        "ipam.endpoints",
                        format!("{bad:?} is not an http:// or https:// URL"),
                    ));
                }
                if !config.ipam.prefix.starts_with('/') || config.ipam.prefix.ends_with('/') {
                    return Err(invalid(
                        "ipam.prefix",
                        format!(
                            "{:?} must start with / and not end with one",
                            config.ipam.prefix
                        ),
                    ));
                }
                if config.ipam.timeout_ms < 100 {
                    return Err(invalid("ipam.timeout_ms", "must be at least 100".into()));
                }
                if !PROGRESS_INTERVAL_MS.contains(&config.ipam.progress_interval_ms) {
                    return Err(invalid(
                        "ipam.progress_interval_ms",
                        format!(
                            "{} is outside {}..={}",
                            config.ipam.progress_interval_ms,
                            PROGRESS_INTERVAL_MS.start(),
                            PROGRESS_INTERVAL_MS.end()
                        ),
                    ));
                }
                if let Some(t) = &config.ipam.tls
                    && t.cert.is_some() != t.key.is_some()
                {
                    return Err(invalid("ipam.tls", "cert and key go together".into()));
                }
                if let Some(auth) = &config.ipam.auth
                    && !auth.allow_insecure_http
                    && let Some(plain) = config
                        .ipam
                        .endpoints
                        .iter()
                        .find(|e| e.starts_with("http://"))
                {
                    return Err(invalid(
                        "ipam.auth",
                        format!(
                            "the password would cross the network in clear text to {plain:?}: \
                             use https:// endpoints (with [ipam.tls]), or set \
                             ipam.auth.allow_insecure_http = true"
                        ),
                    ));
                }
            }
        }
        if let Some(u) = &config.underlay {
            if u.interface.is_empty() || u.interface.len() > 15 {
                return Err(invalid(
                    "underlay.interface",
                    format!("{:?} is not an interface name", u.interface),
                ));
            }
            if let Some(mtu) = u.mtu
                && !(1280..=65535).contains(&mtu)
            {
                return Err(invalid(
                    "underlay.mtu",
                    format!("{mtu} is outside 1280..=65535"),
                ));
            }
        }
        if config.vm.interfaces.is_empty() {
            return Err(invalid(
                "vm.interfaces",
                "names no pattern: no interface could be a VM port".into(),
            ));
        }
        if config.vm.hook_for.iter().any(|r| r.interfaces.is_empty()) {
            return Err(invalid(
                "vm.hook_for",
                "a rule names no pattern: it would apply to no interface".into(),
            ));
        }
        if config.ipam.poll_interval_ms == 0 {
            return Err(invalid("ipam.poll_interval_ms", "must be positive".into()));
        }
        for (rate, burst, per_sec, n) in config.rate_limits.each() {
            if per_sec > RATE_PER_SEC_MAX {
                return Err(invalid(
                    rate,
                    format!("{per_sec} is above {RATE_PER_SEC_MAX} (0 turns the limit off)"),
                ));
            }
            if per_sec > 0 && !RATE_BURST.contains(&n) {
                return Err(invalid(
                    burst,
                    format!(
                        "{n} is outside {}..={}",
                        RATE_BURST.start(),
                        RATE_BURST.end()
                    ),
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/holdfast/holdfast.toml"), text)
    }

    #[test]
    fn defaults() {
        let c = parse("node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x.json\"\n").unwrap();
        assert_eq!(c.bpffs_dir, Path::new("/sys/fs/bpf/holdfast"));
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9469");
        assert!(c.underlay.is_none());
        let c = parse(
            "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n[underlay]\ninterface = \"eth1\"\n",
        )
        .unwrap();
        let u = c.underlay.unwrap();
        assert_eq!(u.interface, "eth1");
        assert_eq!(u.hook, UnderlayHook::Xdp);
    }

    #[test]
    fn decapsulation_hook_is_xdp_or_tc() {
        let base = "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n[underlay]\ninterface = \"eth1\"\n";
        let c = parse(&format!("{base}hook = \"tc\"\n")).unwrap();
        assert_eq!(c.underlay.unwrap().hook, UnderlayHook::Tc);
        let err = parse(&format!("{base}hook = \"geneve\"\n")).unwrap_err();
        assert!(err.to_string().contains("hook"), "{err}");
    }

    #[test]
    fn rate_limits_default_to_what_no_real_client_meets_and_can_be_turned_off() {
        let base = "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n";
        let c = parse(base).unwrap();
        assert_eq!(c.rate_limits.limits(), RateLimits::DEFAULT);
        let c = parse(&format!(
            "{base}[rate_limits]\ndhcp_per_sec = 0\narp_per_sec = 50\narp_burst = 60\n"
        ))
        .unwrap();
        let l = c.rate_limits.limits();
        assert!(l.dhcp.is_off());
        assert_eq!(l.arp, RateLimit::per_sec(50, 60));
        assert_eq!(l.events, RateLimits::DEFAULT.events);
        for (bad, field) in [
            ("dhcp_per_sec = 2000000", "rate_limits.dhcp_per_sec"),
            ("arp_burst = 0", "rate_limits.arp_burst"),
            ("events_burst = 2000000", "rate_limits.events_burst"),
        ] {
            match parse(&format!("{base}[rate_limits]\n{bad}\n")) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&format!("{base}[rate_limits]\ndhcp = 5\n")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn etcd_source() {
        let c = parse(
            "node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]\n\
             [ipam.tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
             [ipam.auth]\nusername = \"holdfast\"\npassword_file = \"/pw\"\n",
        )
        .unwrap();
        assert_eq!(c.ipam.source, IpamSource::Etcd);
        assert_eq!(c.ipam.prefix, "/holdfast");
        assert_eq!(c.ipam.timeout(), Duration::from_secs(5));
        assert_eq!(c.ipam.progress_interval(), Duration::from_secs(2));
        assert_eq!(c.ipam.auth.unwrap().username, "holdfast");

        let e = parse("node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ipam.endpoints"), "{e}");
        let e =
            parse("node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("not an http"), "{e}");
        let e = parse(
            "node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"http://a:1\"]\nprefix = \"x/\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ipam.prefix"), "{e}");
    }

    #[test]
    fn the_progress_interval_is_configurable_within_bounds() {
        let etcd = |extra: &str| {
            parse(&format!(
                "node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"http://a:1\"]\n{extra}"
            ))
        };
        let c = etcd("progress_interval_ms = 10000\n").unwrap();
        assert_eq!(c.ipam.progress_interval(), Duration::from_secs(10));
        for bad in ["0", "99", "60001"] {
            let e = etcd(&format!("progress_interval_ms = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("field `ipam.progress_interval_ms`"), "{e}");
            assert!(e.contains(&format!("{bad} is outside 100..=60000")), "{e}");
        }
        let e = etcd("progress_interval_ms = \"2s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("progress_interval_ms"), "{e}");
    }

    #[test]
    fn the_node_can_come_from_the_environment() {
        let c = Config::parse_with_node(
            Path::new("/c.toml"),
            "node = \"placeholder\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n",
            Some("hv-7".into()),
        )
        .unwrap();
        assert_eq!(c.node, "hv-7");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = parse(
            "node = \"hv-1\"\nrouter_mac = \"zz\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/etc/holdfast/holdfast.toml"), "{e}");
        assert!(e.contains("router_mac"), "{e}");
        assert!(e.contains("invalid MAC address"), "{e}");

        let e = parse("node = \"hv-1\"\n[ipam]\nsource = \"file\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `ipam.path`"), "{e}");

        let e = parse("node = \"hv-1\"\nnodee = 1\n[ipam]\nsource = \"file\"\npath = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodee"), "{e}");

        let e = parse("node = \"hv-1\"\n[ipam]\nsource = \"zookeeper\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("zookeeper"), "{e}");
    }

    #[test]
    fn vm_ports_are_taps_unless_configured() {
        let base = "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n";
        let names = |c: &Config| -> Vec<String> {
            c.vm.interfaces
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect()
        };
        assert_eq!(names(&parse(base).unwrap()), ["tap*", "vnet*"]);
        let c = parse(&format!("{base}[vm]\ninterfaces = [\"vm-*\", \"tap?\"]\n")).unwrap();
        assert_eq!(names(&c), ["vm-*", "tap?"]);
        let e = parse(&format!("{base}[vm]\ninterfaces = []\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `vm.interfaces`"), "{e}");
        let e = parse(&format!("{base}[vm]\ninterfaces = [\"tap/*\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interfaces") && e.contains("has no '/'"), "{e}");
        let e = parse(&format!("{base}[vm]\ninterface = [\"tap*\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interface"), "{e}");
    }

    #[test]
    fn the_hook_is_xdp_unless_configured_per_host_or_per_interface() {
        let base = "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n";
        let c = parse(base).unwrap();
        assert_eq!(c.vm.hooks(), VmHooks::all(VmHook::Xdp));
        assert!(c.warnings().is_empty());
        let c = parse(&format!("{base}[vm]\nhook = \"tc\"\n")).unwrap();
        assert_eq!(c.vm.hooks().of("tap0"), VmHook::Tc);
        // Both hooks answer DHCP: nothing to warn about.
        assert!(c.warnings().is_empty());
        let c = parse(&format!(
            "{base}[vm]\nhook = \"xdp\"\n[[vm.hook_for]]\ninterfaces = [\"vnet*\"]\nhook = \"tc\"\n"
        ))
        .unwrap();
        let hooks = c.vm.hooks();
        assert_eq!(
            (hooks.of("vnet3"), hooks.of("tap3")),
            (VmHook::Tc, VmHook::Xdp)
        );
        assert!(c.warnings().is_empty());
        for (bad, field) in [
            ("[vm]\nhook = \"bpf\"\n", "unknown variant `bpf`"),
            ("[vm]\nhook = \"TC\"\n", "unknown variant `TC`"),
            (
                "[[vm.hook_for]]\ninterfaces = []\nhook = \"tc\"\n",
                "field `vm.hook_for`",
            ),
            (
                "[[vm.hook_for]]\ninterfaces = [\"vnet*\"]\n",
                "missing field `hook`",
            ),
            (
                "[[vm.hook_for]]\nhook = \"tc\"\n",
                "missing field `interfaces`",
            ),
        ] {
            let e = parse(&format!("{base}{bad}")).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_never_go_over_plain_http_unless_allowed() {
        let etcd = |endpoint: &str, extra: &str| {
            parse(&format!(
                "node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"https://a:1\", \"{endpoint}\"]\n\
                 [ipam.auth]\nusername = \"u\"\npassword_file = \"/pw\"\n{extra}"
            ))
        };
        let e = etcd("http://b:2379", "").unwrap_err().to_string();
        assert!(e.contains("field `ipam.auth`"), "{e}");
        assert!(e.contains("clear text to \"http://b:2379\""), "{e}");
        assert!(e.contains("ipam.auth.allow_insecure_http = true"), "{e}");
        let c = etcd("http://b:2379", "allow_insecure_http = true\n").unwrap();
        assert!(c.ipam.auth.unwrap().allow_insecure_http);
        assert!(etcd("https://b:2379", "").is_ok());
        // Without credentials, plain http is the operator's choice.
        assert!(
            parse("node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"http://a:1\"]\n")
                .is_ok()
        );
    }

    #[test]
    fn a_password_file_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("holdfast-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("password");
        std::fs::write(&pw, "secret\n").unwrap();
        let text = format!(
            "node = \"hv-1\"\n[ipam]\nsource = \"etcd\"\nendpoints = [\"https://a:1\"]\n\
             [ipam.auth]\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let c = parse(&text).unwrap();
        for (mode, warned) in [
            (0o644, true),
            (0o640, true),
            (0o604, true),
            (0o600, false),
            (0o400, false),
        ] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = c.warnings();
            assert_eq!(!w.is_empty(), warned, "mode {mode:o}: {w:?}");
            if warned {
                let text = w[0].to_string();
                assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
                assert!(text.contains("chmod 0600"), "{text}");
            }
        }
        // A file that is not there: connecting says so, not a warning.
        std::fs::remove_file(&pw).unwrap();
        assert!(c.warnings().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
