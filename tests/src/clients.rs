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
}

impl Client {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
