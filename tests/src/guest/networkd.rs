//! systemd-networkd as a guest runs it (Ubuntu, Fedora CoreOS, Flatcar): the host's own
//! networkd binary, in the VM's network namespace and a mount namespace of its own. There it
//! sees only the test's `.network` files, keeps its state in a directory the test reads, and
//! finds `/sys` read-only, which tells it no udev will announce devices, so it does not wait
//! for one (udev does not run here).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    TempDir,
    netns::{Netns, wait_for},
};

/// The networkd binary of the host's systemd.
pub const BINARY: &str = "/lib/systemd/systemd-networkd";

/// A running networkd, killed on drop.
pub struct Networkd {
    child: Child,
    dir: TempDir,
}

/// What runs in the private mount namespace before networkd: its own /run, its configuration,
/// a read-only sysfs of the VM's network namespace.
const SETUP: &str = r#"set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd
mount --bind "$DIR/state" /run/systemd
mount -t tmpfs tmpfs /etc/systemd/network
cp "$DIR"/config/*.network /etc/systemd/network/
umount /sys 2>/dev/null || true
mount -t sysfs -o ro sysfs /sys
exec "$NETWORKD"
"#;

/// A `.network` for `eth0` with DHCPv4 and DHCPv6 (started by the router's M=1), DNS servers
/// and domains taken from DHCPv6 only (not from the advertisement's RDNSS and DNSSL, so that
/// the link's state tells what DHCPv6 gave), plus `dhcp6` lines in its `[DHCPv6]` section.
pub fn dual_stack_network(dhcp6: &str) -> String {
    format!(
        "[Match]\nName=eth0\n\n[Network]\nDHCP=yes\nIPv6AcceptRA=yes\n\n\
         [DHCPv4]\nUseHostname=no\n\n\
         [DHCPv6]\nUseDNS=yes\nUseDomains=yes\n{dhcp6}\n\n\
         [IPv6AcceptRA]\nUseDNS=no\nUseDomains=no\n"
    )
}

impl Networkd {
    /// Starts networkd in `vm` with `networks`: (file name, contents) of `.network` files.
    pub fn start(vm: &Netns, networks: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("networkd");
        let config = dir.path().join("config");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&config).expect("config dir");
        std::fs::create_dir_all(state.join("netif")).expect("state dir");
        for (name, text) in networks {
            std::fs::write(config.join(name), text).expect("network file");
        }
        // networkd drops to its own user and writes its state there.
        crate::netns::run(
            Command::new("chown")
                .args(["-R", "systemd-network:systemd-network"])
                .arg(state.join("netif")),
        );
        let log = std::fs::File::create(dir.path().join("networkd.log")).expect("log");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", vm.path().display()))
            .args(["unshare", "--mount", "sh", "-c", SETUP])
            .env("DIR", dir.path())
            .env("NETWORKD", BINARY)
            .env("SYSTEMD_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        crate::netns::echo(&c);
        let child = c.spawn().expect("systemd-networkd");
        Self { child, dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state/netif")
    }

    /// What networkd logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("networkd.log")).unwrap_or_default()
    }

    /// The lease networkd holds for interface `ifindex` (its `leases/<ifindex>` file: ADDRESS,
    /// ROUTER, SERVER_ADDRESS, DNS, DOMAINNAME, HOSTNAME, ROUTES, MTU, LIFETIME, ...).
    pub fn lease(&self, ifindex: u32) -> Option<BTreeMap<String, String>> {
        read_env(&self.state().join(format!("leases/{ifindex}")))
    }

    /// The state of link `ifindex` (`links/<ifindex>`: ADMIN_STATE, OPER_STATE, DNS, DOMAINS...).
    pub fn link(&self, ifindex: u32) -> Option<BTreeMap<String, String>> {
        read_env(&self.state().join(format!("links/{ifindex}")))
    }

    /// Waits until the lease of `ifindex` satisfies `f`.
    pub fn wait_lease(
        &self,
        ifindex: u32,
        timeout: Duration,
        mut f: impl FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Option<BTreeMap<String, String>> {
        wait_for(timeout, || self.lease(ifindex).filter(|l| f(l)))
    }

    /// Kills networkd (the lease it applied stays on the interface, as when a guest's networkd
    /// crashes).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `KEY=value` file, as networkd writes its state.
fn read_env(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}
