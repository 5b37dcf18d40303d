//! Section 5 of `bench vxlan`, routing (issue 16): two networks of one VPC, a VM in each on
//! different hosts, and what crosses between them goes through the router MAC.
//!
//! - holdfast routes on the sending host (TTL, MACs, the destination network's VNI) and the
//!   receiving host delivers as for a bridged frame;
//! - the kernel's peer is what an operator of a Linux EVPN-style fabric builds (asymmetric
//!   IRB): on each host a bridge per network, with the network's gateway address and the router
//!   MAC, its VXLAN device enslaved, `ip_forward` on, static FDB and neighbour entries (the
//!   control plane's work, outside the measurement).
//!
//! The same run also switches between two VMs of one network in holdfast, so the cost of
//! routing against switching is taken seconds apart.

use std::net::Ipv4Addr;

use holdfast_tests::{
    netns::{self, mac_str},
    packet::udp_frame,
    vpc::{Cloud, Net, Options, Routing, VTEPS, VmSpec},
    xdp::{ROUTER_MAC, VmHook},
};

use super::{
    PAIRED_SECS, SECS, UnderlayHook, alternate, median_range, pps_between, prog_stats, tcp_pairs,
};

const VNI_A: u32 = 1001;
const VNI_B: u32 = 1002;
const SUBNET_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
const SUBNET_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
const NETS: [Net; 2] = [
    Net {
        id: "a",
        vni: VNI_A,
    },
    Net {
        id: "b",
        vni: VNI_B,
    },
];

/// Both networks in VPC `v1`.
const ROUTING: [Routing<'static>; 2] = [
    Routing {
        net: "a",
        subnet: SUBNET_A,
        vpc: Some("v1"),
        default_via: None,
        routes: &[],
    },
    Routing {
        net: "b",
        subnet: SUBNET_B,
        vpc: Some("v1"),
        default_via: None,
        routes: &[],
    },
];

const R1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x01];
const R3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x03];
const IP_R1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_R3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 13);
/// The switched reference: R3's twin in network a, on hv-2 too.
const S3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x13];
const IP_S3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);

const Q1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x21];
const Q3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x23];
const IP_Q1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);
const IP_Q3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 23);

fn spec(net: &'static str, host: usize, mac: [u8; 6], ip: Ipv4Addr, tap: &'static str) -> VmSpec {
    VmSpec {
        net,
        host,
        mac,
        ip,
        tap,
        real_tap: false,
    }
}

/// The small-frame VMs, on veths: R1 (a, hv-1), R3 (b, hv-2), S3 (a, hv-2).
fn veth_specs() -> [VmSpec; 3] {
    [
        spec("a", 0, R1, IP_R1, "tap-r1"),
        spec("b", 1, R3, IP_R3, "tap-r3"),
        spec("a", 1, S3, IP_S3, "tap-s3"),
    ]
}

/// The TCP VMs, on real taps: Q1 (a, hv-1), Q3 (b, hv-2).
fn tap_specs() -> [VmSpec; 2] {
    [
        VmSpec {
            real_tap: true,
            ..spec("a", 0, Q1, IP_Q1, "tap-q1")
        },
        VmSpec {
            real_tap: true,
            ..spec("b", 1, Q3, IP_Q3, "tap-q3")
        },
    ]
}

fn cloud(specs: &[VmSpec], hook: VmHook, underlay: UnderlayHook) -> Cloud {
    Cloud::with(
        &NETS,
        specs,
        &Options {
            hooks: [hook; 2],
            underlay_hooks: [underlay; 2],
            routing: &ROUTING,
            ..Options::default()
        },
    )
}

/// The gateway of `ip`'s network (.1 of its /24).
fn gateway_of(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = ip.octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// Static neighbours in the VMs: the gateway at the router MAC (which the kernel's bridges
/// carry too), and the same-network peer; neither data plane answers ARP during a run.
fn static_neighbours(cloud: &Cloud, vms: &[([u8; 6], Ipv4Addr)]) {
    for &(mac, ip) in vms {
        let ns = cloud.vm_ns(mac);
        let mut entries = vec![(gateway_of(ip), ROUTER_MAC)];
        for &(other, other_ip) in vms {
            if other != mac && gateway_of(other_ip) == gateway_of(ip) {
                entries.push((other_ip, other));
            }
        }
        for (addr, lladdr) in entries {
            ns.ip(&[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac_str(lladdr),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
    }
}

/// The kernel's routing on the same hosts, after holdfast's agents are gone: a bridge per
/// network on each host (`br-<net>`, the gateway address and the router MAC), its VXLAN device
/// (`vx-<net>`) enslaved, each host's VM on its network's bridge, forwarding on, and every VM's
/// MAC and neighbour entry installed as a control plane would.
fn kernel_routed_mode(cloud: &mut Cloud, vms: &[([u8; 6], Ipv4Addr, &str, usize)]) {
    for agent in &mut cloud.agents {
        agent.stop();
    }
    cloud.agents.clear();
    for &(mac, ..) in vms {
        netns::run(
            cloud
                .vm_ns(mac)
                .exec("ip")
                .args(["link", "set", "eth0", "xdp", "off"]),
        );
    }
    let net_of = |ip: Ipv4Addr| if ip.octets()[1] == 0 { "a" } else { "b" };
    for (i, h) in cloud.hosts.iter().enumerate() {
        let local = VTEPS[i].to_string();
        let remote = VTEPS[1 - i].to_string();
        for (net, vni, subnet) in [("a", VNI_A, SUBNET_A), ("b", VNI_B, SUBNET_B)] {
            let (br, vx) = (format!("br-{net}"), format!("vx-{net}"));
            h.ip(&["link", "add", &br, "type", "bridge"]);
            h.ip(&["link", "set", &br, "address", &mac_str(ROUTER_MAC)]);
            h.ip(&[
                "addr",
                "add",
                &format!("{}/24", gateway_of(subnet)),
                "dev",
                &br,
            ]);
            h.ip(&[
                "link",
                "add",
                &vx,
                "type",
                "vxlan",
                "id",
                &vni.to_string(),
                "local",
                &local,
                "dstport",
                "4789",
                "nolearning",
                "dev",
                "ul0",
            ]);
            h.ip(&["link", "set", &vx, "master", &br]);
            for dev in [&br, &vx] {
                h.ip(&["link", "set", dev, "up"]);
            }
        }
        netns::run(h.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        for &(mac, ip, tap, host) in vms {
            let br = format!("br-{}", net_of(ip));
            if host == i {
                h.ip(&["link", "set", tap, "master", &br]);
            } else {
                let vx = format!("vx-{}", net_of(ip));
                let m = mac_str(mac);
                netns::run(h.exec("bridge").args([
                    "fdb",
                    "add",
                    &m,
                    "dev",
                    &vx,
                    "dst",
                    &remote,
                    "self",
                    "permanent",
                ]));
                netns::run(
                    h.exec("bridge")
                        .args(["fdb", "add", &m, "dev", &vx, "master", "static"]),
                );
            }
            h.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac_str(mac),
                "dev",
                &br,
                "nud",
                "permanent",
            ]);
        }
    }
}

/// 60-byte UDP frames from `from` to `to_ip` through `dst_mac` (the router MAC when routed),
/// over 64 source ports.
fn frames(from: ([u8; 6], Ipv4Addr), dst_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| {
            udp_frame(
                from.0,
                dst_mac,
                from.1,
                to_ip,
                40000 + i,
                9,
                &[0xab; 18],
                false,
            )
        })
        .collect()
}

/// What section 5 measured: routed against the kernel, per mode.
pub struct RoutedRatios {
    pub pps_xdp: f64,
    pub pps_tc: f64,
    pub tcp_xdp: f64,
    pub tcp_tc: f64,
}

/// The VM-port program of `hook`, by its name.
fn vm_program(hook: VmHook) -> &'static str {
    match hook {
        VmHook::Xdp => holdfast::dataplane::PROGRAM_VM,
        VmHook::Tc => holdfast::dataplane::PROGRAM_VM_TC,
    }
}

/// Section 5: routed small frames and TCP, holdfast in both modes against the kernel's routing.
pub fn section() -> RoutedRatios {
    println!(
        "\n5. Routing: VMs of two networks of one VPC ({IP_R1} on hv-1 -> {IP_R3} on hv-2), through the router MAC"
    );
    let routed = frames((R1, IP_R1), ROUTER_MAC, IP_R3);
    let switched = frames((R1, IP_R1), S3, IP_S3);
    let specs = veth_specs();
    let vms = [(R1, IP_R1), (R3, IP_R3), (S3, IP_S3)];
    let mut hf = Vec::new();
    for hook in [VmHook::Xdp, VmHook::Tc] {
        let c = cloud(&specs, hook, UnderlayHook::Xdp);
        static_neighbours(&c, &vms);
        assert_eq!(c.ping(R1, IP_R3, 3), 3, "holdfast routed, {hook} mode");
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        let (t0, n0) = prog_stats(vm_program(hook));
        let sw = pps_between(&c, R1, S3, &switched);
        let (t1, n1) = prog_stats(vm_program(hook));
        let ro = pps_between(&c, R1, R3, &routed);
        let (t2, n2) = prog_stats(vm_program(hook));
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        let sw_ns = (t1 - t0).as_nanos() as f64 / (n1 - n0).max(1) as f64;
        let ro_ns = (t2 - t1).as_nanos() as f64 / (n2 - n1).max(1) as f64;
        let routed_count = c.agents[0].counters()[agent_common::Stat::Routed as usize];
        assert!(
            routed_count > 100_000,
            "{hook} mode did not route the frames: {routed_count} routed"
        );
        hf.push((hook, sw, ro, sw_ns, ro_ns));
    }
    let mut c = cloud(&specs, VmHook::Xdp, UnderlayHook::Xdp);
    static_neighbours(&c, &vms);
    kernel_routed_mode(
        &mut c,
        &[
            (R1, IP_R1, "tap-r1", 0),
            (R3, IP_R3, "tap-r3", 1),
            (S3, IP_S3, "tap-s3", 1),
        ],
    );
    assert_eq!(c.ping(R1, IP_R3, 3), 3, "kernel routed");
    let k_ro = pps_between(&c, R1, R3, &routed);
    let k_sw = pps_between(&c, R1, S3, &switched);
    drop(c);
    println!(
        "  small frames from the VM's socket, {SECS} s each: kernel routed {k_ro:.0} pps (switched {k_sw:.0} pps, {:.2}x of it)",
        k_ro / k_sw
    );
    let mut ratios = [0.0; 2];
    for (i, (hook, sw, ro, sw_ns, ro_ns)) in hf.into_iter().enumerate() {
        ratios[i] = ro / k_ro;
        println!(
            "  holdfast {hook} mode: routed {ro:.0} pps ({:.2}x the kernel's routing), switched {sw:.0} pps; routed/switched {:.2}x; {} in situ {ro_ns:.0} ns/run routed, {sw_ns:.0} switched",
            ro / k_ro,
            ro / sw,
            vm_program(hook)
        );
    }

    println!(
        "  TCP between VMs on real taps ({IP_Q1} -> {IP_Q3}), in pairs with the kernel's routing ({} pairs of {PAIRED_SECS} s)",
        tcp_pairs()
    );
    let mut tcp = [0.0; 2];
    for (i, hook) in [VmHook::Xdp, VmHook::Tc].into_iter().enumerate() {
        let r = tcp_paired_routed(hook);
        let shown: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
        let (m, lo, hi) = median_range(r);
        println!(
            "  holdfast {hook} mode routed / kernel routed, per pair: {}; median {m:.2}x ({lo:.2}-{hi:.2}x)",
            shown.join(" ")
        );
        tcp[i] = m;
    }
    RoutedRatios {
        pps_xdp: ratios[0],
        pps_tc: ratios[1],
        tcp_xdp: tcp[0],
        tcp_tc: tcp[1],
    }
}

/// Routed TCP in pairs: holdfast with VM ports on `hook` and the kernel's routing built side by
/// side, runs alternated, a ratio per pair.
fn tcp_paired_routed(hook: VmHook) -> Vec<f64> {
    let specs = tap_specs();
    let vms = [(Q1, IP_Q1), (Q3, IP_Q3)];
    let holdfast = cloud(&specs, hook, UnderlayHook::Xdp);
    static_neighbours(&holdfast, &vms);
    assert_eq!(
        holdfast.ping(Q1, IP_Q3, 3),
        3,
        "holdfast routed TCP, {hook}"
    );
    let mut kernel = cloud(&specs, VmHook::Xdp, UnderlayHook::Xdp);
    static_neighbours(&kernel, &vms);
    kernel_routed_mode(
        &mut kernel,
        &[(Q1, IP_Q1, "tap-q1", 0), (Q3, IP_Q3, "tap-q3", 1)],
    );
    assert_eq!(kernel.ping(Q1, IP_Q3, 3), 3, "kernel routed TCP");
    alternate(tcp_pairs(), &holdfast, &kernel, |c| {
        c.iperf(Q1, Q3, IP_Q3, PAIRED_SECS)
    })
}
