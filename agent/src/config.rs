//! `holdfast.toml`: what an operator configures on each hypervisor.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::model::MacAddr;

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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayConfig {
    /// The underlay interface (its address is this node's VTEP, from IPAM's `nodes`).
    pub interface: String,
    /// The underlay MTU networks must fit in with the 50 bytes of VXLAN; default: the
    /// interface's own MTU.
    pub mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpamSource {
    File,
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
}

impl IpamConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
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

fn default_poll_ms() -> u64 {
    1000
}

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

impl Config {
    /// Reads and checks a config file. Blocking: call it before the runtime starts or on the
    /// blocking pool.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml names the key and shows the line; keep it on one line for logs.
            message: e.to_string().trim().replace('\n', " "),
        })?;
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
        if config.ipam.poll_interval_ms == 0 {
            return Err(invalid("ipam.poll_interval_ms", "must be positive".into()));
        }
        Ok(config)
    }

    /// Directory of the pinned maps of this build's layout.
    pub fn maps_dir(&self) -> PathBuf {
        self.bpffs_dir
            .join(format!("maps-v{}", agent_common::LAYOUT_VERSION))
    }

    /// Directory of the pinned XDP links, one per VM interface.
    pub fn links_dir(&self) -> PathBuf {
        self.bpffs_dir.join("links")
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
        assert_eq!(c.maps_dir(), Path::new("/sys/fs/bpf/holdfast/maps-v3"));
        assert!(c.underlay.is_none());
        let c = parse(
            "node = \"hv-1\"\n[ipam]\nsource = \"file\"\npath = \"/x\"\n[underlay]\ninterface = \"eth1\"\n",
        )
        .unwrap();
        assert_eq!(c.underlay.unwrap().interface, "eth1");
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
}
