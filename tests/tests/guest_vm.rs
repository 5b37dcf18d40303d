//! A real VM on a real tap, as a hypervisor runs one: QEMU with virtio-net on a tap the agent
//! attaches to, booting Debian's cloud kernel, leases from the port's program (XDP in xdp mode,
//! TC in tc mode), renews while its host's agent is dead, and reaches a VM on the other host
//! over VXLAN. Both modes (`xdp::` and `tc::`).

use std::{net::Ipv4Addr, time::Duration};

use holdfast_tests::{
    guest::qemu::{Boot, GuestNic, QemuVm},
    packet::parse_reply,
    rawsock::RawSocket,
    vpc::{Cloud, Net, Options, VmSpec},
    xdp::VmHook,
};

const NETS: [Net; 1] = [Net {
    id: "pn-blue",
    vni: 1001,
}];

/// The QEMU VM's NIC on hv-1: in IPAM, its tap made by QEMU, not by the cloud.
const GUEST: VmSpec = VmSpec {
    net: "pn-blue",
    host: 0,
    mac: [0x02, 0x0a, 0, 0, 0, 0x11],
    ip: Ipv4Addr::new(10, 0, 0, 11),
    tap: "tap-q1",
    real_tap: false,
};

/// A VM on hv-2 (a namespace with its address set), for the guest to reach over VXLAN.
const FAR: VmSpec = VmSpec {
    net: "pn-blue",
    host: 1,
    mac: [0x02, 0x0a, 0, 0, 0, 0x12],
    ip: Ipv4Addr::new(10, 0, 0, 12),
    tap: "tap-f1",
    real_tap: false,
};

/// The guest's DHCP client, run as its init system would: in the background, for good.
const UDHCPC: &str = "udhcpc -i eth0 -s /bin/udhcpc.sh -S -t 30 -T 1 -A 1 -b >/tmp/udhcpc.out 2>&1";

/// The guest's UDP checksum errors (`/proc/net/snmp`, `Udp: ... InCsumErrors`).
fn udp_csum_errors(vm: &mut QemuVm) -> u64 {
    let snmp = vm.sh_ok("grep '^Udp:' /proc/net/snmp", Duration::from_secs(10));
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no InCsumErrors in {snmp}"))
}

/// The guest renews with its kernel's UDP socket: virtio-net's checksum offload leaves the
/// request's checksum to the host (`CHECKSUM_PARTIAL` on the tap). The tap does not offload
/// checksums toward the guest here (`ethtool -K tap tx off`: the host completes them before the
/// tap, where a packet socket sees them), so a reply that kept a complete checksum under a
/// partial state would reach the guest with a wrong one. In tc mode every reply the tap sends
/// is checked there (XDP's `XDP_TX` passes no packet socket); in both, the guest's UDP
/// checksum errors stay at zero.
fn a_real_vm_leases_renews_through_an_agent_sigkill_and_reaches_the_other_host(hook: VmHook) {
    let lease = 20;
    let mut cloud = Cloud::with(
        &NETS,
        &[FAR],
        &Options {
            lease_time: lease,
            extra_nics: &[GUEST],
            hooks: [hook; 2],
            ..Options::default()
        },
    );
    let mut vm = QemuVm::boot(
        &cloud.hosts[0],
        &[GuestNic {
            tap: GUEST.tap.into(),
            mac: GUEST.mac,
        }],
        Boot::Kernel,
    );
    let ethtool = cloud.hosts[0]
        .exec("ethtool")
        .args(["-K", GUEST.tap, "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(ethtool.status.success(), "{ethtool:?}");
    let on_tap = RawSocket::open(&cloud.hosts[0].path(), GUEST.tap);
    let booted = vm.console().len();
    vm.sh_ok(UDHCPC, Duration::from_secs(10));
    let bound = vm
        .wait_console("UDHCPC bound", booted, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no lease:\n{}\n{}", vm.console(), cloud.agents[0].logs()));
    let line = vm.console()[bound..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("ip=10.0.0.11 mask=24"), "{line}");
    assert!(line.contains("mtu=1450"), "{line}");
    assert!(line.contains(&format!("lease={lease}")), "{line}");
    let addr = vm.sh_ok("ip -4 addr show eth0", Duration::from_secs(10));
    assert!(addr.contains("10.0.0.11/24"), "{addr}");

    // Over the underlay to hv-2's VM, and back.
    let ping = format!("ping -c 3 -W 2 {}", FAR.ip);
    let out = vm.sh_ok(&ping, Duration::from_secs(30));
    assert!(out.contains("3 packets received"), "{out}");

    // The agent dies; the data plane keeps serving from its pins: the guest renews at T1 (half
    // the lease) and still reaches the other host.
    cloud.agents[0].kill();
    let killed = vm.console().len();
    let renewed = vm.wait_console(
        "UDHCPC renew",
        killed,
        Duration::from_secs(u64::from(lease) * 2),
    );
    assert!(
        renewed.is_some(),
        "no renewal while the agent was dead:\n{}",
        &vm.console()[killed..]
    );
    let out = vm.sh_ok(&ping, Duration::from_secs(30));
    assert!(out.contains("3 packets received"), "{out}");
    let addr = vm.sh_ok("ip -4 addr show eth0", Duration::from_secs(10));
    assert!(addr.contains("10.0.0.11/24"), "{addr}");
    assert_eq!(
        udp_csum_errors(&mut vm),
        0,
        "replies with a bad UDP checksum"
    );
    // What the tap sent the guest from the server port: every reply whole, checksums right.
    let (mut replies, mut renewals) = (0, 0);
    while let Some(f) = on_tap.recv_sent(Duration::from_millis(100)) {
        if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[23] != 17 || f[34..36] != [0, 67] {
            continue;
        }
        let r = parse_reply(&f).unwrap_or_else(|e| panic!("{hook}: a bad reply ({e}): {f:02x?}"));
        replies += 1;
        if r.ciaddr == GUEST.ip && r.ip_dst == GUEST.ip {
            renewals += 1;
        }
    }
    if hook == VmHook::Tc {
        assert!(
            replies >= 3 && renewals >= 1,
            "{replies} replies, {renewals} renewals"
        );
    }
}

holdfast_tests::for_each_hook!(
    a_real_vm_leases_renews_through_an_agent_sigkill_and_reaches_the_other_host
);
