//! Real DHCP clients run inside VM namespaces: ISC dhclient, dhcpcd and busybox udhcpc.
//!
//! Each runs in the foreground as a child killed on drop, with its state files in a private
//! directory; whatever it writes to /etc/resolv.conf lands in the namespace's own copy.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{
    TempDir,
    netns::{Proc, Vm},
};

pub struct Client {
    pub name: &'static str,
    pub proc: Proc,
    pub dir: TempDir,
    pub log: PathBuf,
    /// What the client's event script logged, for clients run with one of the harness's.
    pub events: Option<PathBuf>,
}

impl Client {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the event script logged (empty without one).
    pub fn events(&self) -> String {
        self.events
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

fn spawn(vm: &Vm, name: &'static str, dir: TempDir, mut cmd: Command) -> Client {
    let log = dir.path().join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    crate::netns::echo(&cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = vm;
    Client {
        name,
        proc: Proc(child),
        dir,
        log,
        events: None,
    }
}

/// ISC dhclient with Debian's dhclient-script (address, routes, RFC 3442 routes, MTU, DNS).
/// `lease_file` may hold a lease from before (to start in INIT-REBOOT).
pub fn dhclient(vm: &Vm, lease_file: Option<&str>) -> Client {
    let dir = TempDir::new("dhclient");
    let leases = dir.path().join("dhclient.leases");
    std::fs::write(&leases, lease_file.unwrap_or("")).expect("leases");
    let mut cmd = vm.ns.exec("dhclient");
    cmd.args(["-d", "-v", "-4", "-lf"])
        .arg(&leases)
        .arg("-pf")
        .arg(dir.path().join("dhclient.pid"))
        .arg("eth0");
    spawn(vm, "dhclient", dir, cmd)
}

/// dhcpcd 9 in the foreground, with a config that asks for what a cloud image asks for (rapid
/// commit included) and without the hooks that would touch the host (hostname, NTP). Its
/// state directories are private tmpfs mounts of the namespace's mount namespace.
pub fn dhcpcd(vm: &Vm) -> Client {
    let dir = TempDir::new("dhcpcd");
    let conf = dir.path().join("dhcpcd.conf");
    std::fs::write(
        &conf,
        "clientid\n\
         option domain_name_servers, domain_name, domain_search\n\
         option classless_static_routes\n\
         option interface_mtu\n\
         option rapid_commit\n\
         require dhcp_server_identifier\n\
         nohook hostname, ntp-common.conf, chrony.conf, timesyncd.conf, openntpd.conf\n\
         noipv4ll\n\
         ipv4only\n",
    )
    .expect("conf");
    let script = format!(
        "mount -t tmpfs tmpfs /run/dhcpcd 2>/dev/null || (mkdir -p /run/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd); \
         mkdir -p /var/lib/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd; \
         exec dhcpcd -B -d -f {} eth0",
        conf.display()
    );
    let mut cmd = vm.ns.exec("sh");
    cmd.args(["-c", &script]);
    spawn(vm, "dhcpcd", dir, cmd)
}

/// busybox udhcpc with an event script that applies the lease with ip(8) and logs every event.
pub fn udhcpc(vm: &Vm, extra: &[&str]) -> Client {
    let dir = TempDir::new("udhcpc");
    let events = dir.path().join("events");
    let script = dir.path().join("udhcpc.script");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
echo "$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain search=$search mtu=$mtu staticroutes=$staticroutes lease=$lease serverid=$serverid" >> {events}
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    elif [ -n "$router" ]; then
      ip route replace default via "${{router%% *}}" dev "$interface"
    fi
    : > /etc/resolv.conf
    [ -n "$search" ] && echo "search $search" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"#,
            events = events.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = vm.ns.exec("busybox");
    cmd.args(["udhcpc", "-f", "-i", "eth0", "-s"])
        .arg(&script)
        .args([
            "-O",
            "staticroutes",
            "-O",
            "mtu",
            "-O",
            "search",
            "-t",
            "5",
            "-T",
            "2",
        ])
        .args(extra);
    let mut c = spawn(vm, "udhcpc", dir, cmd);
    c.log = events;
    c
}

/// Waits until eth0's link-local address has passed duplicate address detection: a DHCPv6
/// client binds its socket to it (dhclient gives up on a tentative one).
fn wait_link_local(vm: &Vm) {
    let ready = crate::netns::wait_for(std::time::Duration::from_secs(10), || {
        let out = vm
            .ns
            .query(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
        let text = String::from_utf8_lossy(&out.stdout);
        (text.contains("inet6 fe80:") && !text.contains("tentative")).then_some(())
    });
    assert!(ready.is_some(), "eth0 has no usable link-local address");
}

/// ISC dhclient in DHCPv6 mode (`-6`: IA_NA) with Debian's dhclient-script: the address as a
/// /128 with the lifetimes of the lease, DNS and the search list in resolv.conf. Routes come
/// from router advertisements, to the VM's kernel. `lease_file` may hold a lease from before
/// (dhclient then starts with a CONFIRM of it, RFC 8415 §18.2.3), and names the DUID it uses.
pub fn dhclient6(vm: &Vm, lease_file: Option<&str>) -> Client {
    wait_link_local(vm);
    let dir = TempDir::new("dhclient6");
    let leases = dir.path().join("dhclient6.leases");
    std::fs::write(&leases, lease_file.unwrap_or("")).expect("leases");
    let mut cmd = vm.ns.exec("dhclient");
    cmd.args(["-d", "-v", "-6", "-lf"])
        .arg(&leases)
        .arg("-pf")
        .arg(dir.path().join("dhclient6.pid"))
        .arg("eth0");
    spawn(vm, "dhclient6", dir, cmd)
}

/// dhcpcd 9 for IPv6 only (`ipv6only`): it solicits and reads router advertisements itself
/// (the default route via the router, the on-link prefix) and, told by M=1, asks DHCPv6 for an
/// IA_NA. Every event's DHCPv6 variables go to `events` (the client's log) before Debian's
/// hooks run (resolv.conf), so that a test tells what DHCPv6 gave from what the advertisement
/// gave. `duid` (hex, `00:03:00:01:...`) replaces the DUID dhcpcd would make.
pub fn dhcpcd6(vm: &Vm, duid: Option<&str>) -> Client {
    let dir = TempDir::new("dhcpcd6");
    let events = dir.path().join("events");
    let script = dir.path().join("dhcpcd6.script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"$reason $(env | grep '^new_dhcp6_' | sort | tr '\\n' ' ')\" >> {}\n\
             exec /usr/lib/dhcpcd/dhcpcd-run-hooks\n",
            events.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let conf = dir.path().join("dhcpcd.conf");
    std::fs::write(
        &conf,
        format!(
            "ipv6only\n\
             option dhcp6_name_servers, dhcp6_domain_search\n\
             nohook hostname, ntp-common.conf, chrony.conf, timesyncd.conf, openntpd.conf\n\
             script {}\n{}",
            script.display(),
            duid.map(|d| format!("duid {d}\n")).unwrap_or_default()
        ),
    )
    .expect("conf");
    let run = format!(
        "mount -t tmpfs tmpfs /run/dhcpcd 2>/dev/null || (mkdir -p /run/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd); \
         mkdir -p /var/lib/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd; \
         exec dhcpcd -B -d -f {} eth0",
        conf.display()
    );
    let mut cmd = vm.ns.exec("sh");
    cmd.args(["-c", &run]);
    let mut c = spawn(vm, "dhcpcd6", dir, cmd);
    c.events = Some(events);
    c
}
