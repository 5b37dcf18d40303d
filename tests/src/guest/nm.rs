//! NetworkManager as a guest runs it (RHEL, Rocky, Fedora), with its internal DHCP client
//! (n-dhcp4): from a Debian root of its own ([`super::images::nm_root`]), with its own D-Bus,
//! in the VM's network namespace and in mount and PID namespaces of its own, so that killing it
//! ends its D-Bus too. The test's keyfiles are its only connections; `nmcli` reads its state.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::images;
use crate::{
    TempDir,
    netns::{Netns, wait_for},
};

/// A running NetworkManager, killed (with its D-Bus) on drop.
pub struct NetworkManager {
    child: Child,
    dir: TempDir,
}

/// NetworkManager's own configuration: keyfiles only, the internal DHCP client, nothing
/// configured behind the test's back, and its log on stderr.
const CONFIG: &str = "[main]\nplugins=keyfile\ndhcp=internal\nno-auto-default=*\n\n\
                      [logging]\nlevel=DEBUG\ndomains=DHCP4,DHCP6,DEVICE,IP4,IP6,CORE\n";

/// Runs in the new mount and PID namespaces: the root's mounts, then D-Bus and NetworkManager.
const SETUP: &str = r#"set -e
mount --make-rprivate /
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount -t sysfs -o ro sysfs "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
mount --bind "$DIR/run" "$ROOT/run"
mkdir -p "$ROOT/run/dbus"
mount -t tmpfs tmpfs "$ROOT/tmp"
mount --bind "$DIR/connections" "$ROOT/etc/NetworkManager/system-connections"
mount --bind "$DIR/state" "$ROOT/var/lib/NetworkManager"
cp "$DIR/NetworkManager.conf" "$ROOT/run/NetworkManager.conf"
exec chroot "$ROOT" sh -c 'dbus-daemon --system --fork && exec /usr/sbin/NetworkManager --no-daemon --debug --config=/run/NetworkManager.conf'
"#;

/// A keyfile for an Ethernet connection on `interface` with DHCPv4 and no IPv6, plus `extra`
/// lines in its `[ipv4]` section.
pub fn dhcp_connection(interface: &str, extra: &str) -> String {
    format!(
        "[connection]\nid={interface}\ntype=ethernet\ninterface-name={interface}\n\n\
         [ipv4]\nmethod=auto\n{extra}\n\n[ipv6]\nmethod=ignore\n"
    )
}

/// A keyfile for an Ethernet connection on `interface` with DHCPv4 and IPv6 `auto` (router
/// advertisements, and DHCPv6 when they say M=1), plus `extra` lines in its `[ipv6]` section.
pub fn dual_stack_connection(interface: &str, extra: &str) -> String {
    format!(
        "[connection]\nid={interface}\ntype=ethernet\ninterface-name={interface}\n\n\
         [ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n{extra}\n"
    )
}

impl NetworkManager {
    /// Starts NetworkManager in `vm` with `connections`: (keyfile name, contents).
    pub fn start(vm: &Netns, connections: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let root = images::nm_root();
        let dir = TempDir::new("nm");
        for sub in ["run", "connections", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("nm dir");
        }
        std::fs::write(dir.path().join("NetworkManager.conf"), CONFIG).expect("nm conf");
        for (name, text) in connections {
            let p = dir.path().join("connections").join(name);
            std::fs::write(&p, text).expect("keyfile");
            // NetworkManager ignores keyfiles others can read.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let log = std::fs::File::create(dir.path().join("nm.log")).expect("log");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", vm.path().display()))
            .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
            .args(["sh", "-c", SETUP])
            .env("ROOT", root)
            .env("DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        crate::netns::echo(&c);
        let child = c.spawn().expect("NetworkManager");
        Self { child, dir }
    }

    /// What NetworkManager logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nm.log")).unwrap_or_default()
    }

    /// The pid of NetworkManager itself (in the host's PID namespace).
    fn nm_pid(&self) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// `nmcli args…`, run in NetworkManager's namespaces and root.
    pub fn nmcli(&self, args: &[&str]) -> Option<String> {
        let pid = self.nm_pid()?;
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n", "-r"])
            .arg("/usr/bin/nmcli")
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The DHCPv4 options NetworkManager holds for `interface` (`nmcli -f DHCP4`: ip_address,
    /// subnet_mask, routers, domain_name_servers, domain_name, host_name, interface_mtu,
    /// classless_static_routes, dhcp_server_identifier, dhcp_lease_time, ...).
    pub fn dhcp4(&self, interface: &str) -> Option<BTreeMap<String, String>> {
        let text = self.nmcli(&["-t", "-f", "DHCP4", "device", "show", interface])?;
        let options: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':').map(|(_, v)| v))
            .filter_map(|v| v.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        (!options.is_empty()).then_some(options)
    }

    /// Waits until the DHCPv4 options of `interface` satisfy `f`.
    pub fn wait_dhcp4(
        &self,
        interface: &str,
        timeout: Duration,
        mut f: impl FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Option<BTreeMap<String, String>> {
        wait_for(timeout, || self.dhcp4(interface).filter(|o| f(o)))
    }

    /// The DHCPv6 options NetworkManager holds for `interface` (`nmcli -f DHCP6`: ip6_address,
    /// dhcp6_name_servers, dhcp6_domain_search, dhcp6_client_id, iaid, ...).
    pub fn dhcp6(&self, interface: &str) -> Option<BTreeMap<String, String>> {
        let text = self.nmcli(&["-t", "-f", "DHCP6", "device", "show", interface])?;
        let options: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':').map(|(_, v)| v))
            .filter_map(|v| v.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        (!options.is_empty()).then_some(options)
    }

    /// Waits until the DHCPv6 options of `interface` satisfy `f`.
    pub fn wait_dhcp6(
        &self,
        interface: &str,
        timeout: Duration,
        mut f: impl FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Option<BTreeMap<String, String>> {
        wait_for(timeout, || self.dhcp6(interface).filter(|o| f(o)))
    }

    /// `nmcli -t -f IP6 device show interface`: IP6.ADDRESS[n], IP6.ROUTE[n], IP6.DNS[n],
    /// IP6.DOMAIN[n], one `key:value` a line.
    pub fn ip6(&self, interface: &str) -> Option<String> {
        self.nmcli(&["-t", "-f", "IP6", "device", "show", interface])
    }

    /// Kills NetworkManager and its D-Bus (what it configured stays on the interface).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NetworkManager {
    fn drop(&mut self) {
        self.kill();
    }
}
