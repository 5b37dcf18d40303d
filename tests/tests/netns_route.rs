//! Routing in the data plane end to end (issue 16): two hypervisor namespaces, an agent on each,
//! two networks of one VPC (a: 10.0.0.0/24, b: 10.1.0.0/24) with VMs on both hosts, a gateway VM
//! in b (`forwarding: true`, b's `default_via`) with a namespace outside the VPC behind it, and a
//! network c in another VPC with a's addresses. Each test builds the topology once and checks
//! everything it covers on it, then again with both agents SIGKILLed (the pinned data plane
//! keeps routing).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast::config::UnderlayHook;
use holdfast_tests::{
    netns::{Netns, wait_for},
    vpc::{Cloud, Net, OUTSIDE, Options, Outside, Routing, Source, VmSpec, iperf_between},
    xdp::{ROUTER_MAC, VmHook, forward_stats},
};

holdfast_tests::for_each_hook!(
    networks_of_a_vpc_route_to_each_other_and_to_the_gateway_vm,
    hostile_sources_through_the_router_are_dropped,
);

const NETS: [Net; 4] = [
    Net { id: "a", vni: 1001 },
    Net { id: "b", vni: 1002 },
    Net { id: "c", vni: 1003 },
    Net { id: "d", vni: 1004 },
];

const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];
const B1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x01];
const B3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x03];
const G: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0xfe];
const GA: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0xfe];
const C1: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x01];
const C3: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x03];
const D3: [u8; 6] = [0x02, 0x0d, 0, 0, 0, 0x03];
/// A VM of b on a real tap (TSO: GSO super-frames, the skb path in both modes), on hv-1.
const T1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x21];
const IP_T1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 21);

const IP_A1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_A3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const IP_B1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
const IP_B3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 13);
/// d's one VM, on hv-2: hv-1 has no NIC of d, yet carries it (a network of its VPC).
const IP_D3: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 13);
const IP_G: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 254);
const IP_GA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
/// Behind GA, a's route (not its default: a has none) leads there.
const ROUTED_OUT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GW_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// In b's subnet, held by no NIC.
const NOBODY_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 99);

const ROUTING: [Routing<'static>; 4] = [
    Routing {
        net: "a",
        subnet: Ipv4Addr::new(10, 0, 0, 0),
        vpc: Some("v1"),
        default_via: None,
        routes: &[("198.51.100.0/24", IP_GA)],
    },
    Routing {
        net: "b",
        subnet: Ipv4Addr::new(10, 1, 0, 0),
        vpc: Some("v1"),
        default_via: Some(IP_G),
        routes: &[],
    },
    // Another VPC, with a's addresses.
    Routing {
        net: "c",
        subnet: Ipv4Addr::new(10, 0, 0, 0),
        vpc: Some("v2"),
        default_via: None,
        routes: &[],
    },
    Routing {
        net: "d",
        subnet: Ipv4Addr::new(10, 2, 0, 0),
        vpc: Some("v1"),
        default_via: None,
        routes: &[],
    },
];

fn vm(net: &'static str, host: usize, mac: [u8; 6], ip: Ipv4Addr, tap: &'static str) -> VmSpec {
    VmSpec {
        net,
        host,
        mac,
        ip,
        tap,
        real_tap: false,
    }
}

/// On hv-1: A1, B1, C1 (with A3's address) and GA, the gateway VM a's route leads to; on hv-2:
/// A3, B3, the gateway VM G (b's default_via), C3 (with A1's address) and D3, d's only VM. A
/// VM of c thus sits beside each VM of the VPC that holds its address elsewhere.
fn specs() -> Vec<VmSpec> {
    vec![
        vm("a", 0, A1, IP_A1, "tap-a1"),
        vm("b", 0, B1, IP_B1, "tap-b1"),
        vm("c", 0, C1, IP_A3, "tap-c1"),
        vm("a", 0, GA, IP_GA, "tap-ga"),
        vm("a", 1, A3, IP_A3, "tap-a3"),
        vm("b", 1, B3, IP_B3, "tap-b3"),
        vm("b", 1, G, IP_G, "tap-g"),
        vm("c", 1, C3, IP_A1, "tap-c3"),
        vm("d", 1, D3, IP_D3, "tap-d3"),
    ]
}

fn build(options: Options<'_>) -> Cloud {
    build_with(options, &specs())
}

fn build_with(options: Options<'_>, specs: &[VmSpec]) -> Cloud {
    let started = Instant::now();
    let cloud = Cloud::with(
        &NETS,
        specs,
        &Options {
            routing: &ROUTING,
            forwarding: &[G, GA],
            ..options
        },
    );
    eprintln!("topology up in {:.1?}", started.elapsed());
    cloud
}

fn in_mode(hook: VmHook) -> Cloud {
    in_mode_with(hook, &specs())
}

fn in_mode_with(hook: VmHook, specs: &[VmSpec]) -> Cloud {
    let underlay_hooks = match hook {
        VmHook::Xdp => [UnderlayHook::Xdp; 2],
        VmHook::Tc => [UnderlayHook::Xdp, UnderlayHook::Tc],
    };
    build_with(
        Options {
            hooks: [hook; 2],
            underlay_hooks,
            ..Options::default()
        },
        specs,
    )
}

/// `ping` from `ns` with `args` before the address: its stdout and stderr.
fn ping_text(ns: &Netns, args: &[&str], ip: Ipv4Addr) -> String {
    let out = ns
        .exec("ping")
        .args(["-n", "-W", "1"])
        .args(args)
        .arg(ip.to_string())
        .output()
        .expect("ping");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The TTL of the echo reply one ping from `ns` to `ip` received (`ttl=` in ping's line).
fn reply_ttl(ns: &Netns, ip: Ipv4Addr) -> Option<u8> {
    let text = ping_text(ns, &["-c", "1"], ip);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
}

/// ICMP echo requests a VM received so far.
fn echoes_in(cloud: &Cloud, mac: [u8; 6]) -> u64 {
    cloud.vm_ns(mac).proc_counter("snmp", "Icmp", "InEchos")
}

/// UDP datagrams a VM's IP stack received so far (to a socket or to no port).
fn udp_in(cloud: &Cloud, mac: [u8; 6]) -> u64 {
    let ns = cloud.vm_ns(mac);
    ns.proc_counter("snmp", "Udp", "InDatagrams") + ns.proc_counter("snmp", "Udp", "NoPorts")
}

/// `stat` on host `host` now.
fn count(cloud: &Cloud, host: usize, stat: Stat) -> u64 {
    cloud.agents[host].counters()[stat as usize]
}

/// Everything routing does, checked on a built cloud (`phase` names the moment in failures):
/// subnets reach each other on one host and across, the other VPC is never reached and reaches
/// nothing, the TTL goes down by one, TTL 1 gets time exceeded from the gateway, gateways answer
/// ping, the gateway VM carries b's traffic out and back, the rest gets unreachable.
fn routes_everything(cloud: &Cloud, outside: &Outside, routed_out: &Outside, phase: &str) {
    // Between subnets, on one host (A1, B1 on hv-1; A3, B3 on hv-2) and across.
    for (from, to, ip, what) in [
        (A1, B1, IP_B1, "a to b on hv-1"),
        (B1, A1, IP_A1, "b to a on hv-1"),
        (B3, A3, IP_A3, "b to a on hv-2"),
        (B1, A3, IP_A3, "b on hv-1 to a on hv-2"),
        (A1, B3, IP_B3, "a on hv-1 to b on hv-2"),
        (A3, B1, IP_B1, "a on hv-2 to b on hv-1"),
        (A1, D3, IP_D3, "a on hv-1 (no NIC of d) to d on hv-2"),
        (D3, B1, IP_B1, "d on hv-2 to b on hv-1 (no NIC of d)"),
    ] {
        let before = echoes_in(cloud, to);
        assert_eq!(cloud.ping(from, ip, 3), 3, "{phase}: ping {what}");
        assert!(
            echoes_in(cloud, to) >= before + 3,
            "{phase}: {what}: the echoes reached someone else"
        );
    }

    // c holds A3's address beside B1 (C1) and A1's beside B3 (C3): a's VMs answer, c's hear
    // nothing; and c reaches nothing of the VPC.
    let (c1, c3) = (echoes_in(cloud, C1), echoes_in(cloud, C3));
    assert_eq!(cloud.ping(B1, IP_A3, 5), 5, "{phase}: b to a");
    assert_eq!(cloud.ping(B3, IP_A1, 5), 5, "{phase}: b to a");
    assert_eq!(cloud.ping(C1, IP_A1, 3), 3, "{phase}: c works (C1 to C3)");
    assert_eq!(
        (echoes_in(cloud, C1), echoes_in(cloud, C3)),
        (c1, c3 + 3),
        "{phase}: (C1, C3) echoes: the VPC's traffic reached the other VPC"
    );
    let (b1, b3) = (echoes_in(cloud, B1), echoes_in(cloud, B3));
    for ip in [IP_B1, IP_B3] {
        let text = ping_text(cloud.vm_ns(C1), &["-c", "2", "-i", "0.2"], ip);
        assert!(
            text.contains("From 10.0.0.1") && text.contains("Destination Net Unreachable"),
            "{phase}: C1 (other VPC) to {ip}: {text}"
        );
    }
    assert_eq!(
        (echoes_in(cloud, B1), echoes_in(cloud, B3)),
        (b1, b3),
        "{phase}: the other VPC reached b"
    );

    // The TTL: 64 from a VM, 63 routed once, 64 within a network.
    for (from, ip, ttl, what) in [
        (B1, IP_A3, 63, "routed across hosts"),
        (A3, IP_B1, 63, "routed across hosts, back"),
        (A1, IP_B1, 63, "routed on one host"),
        (B1, IP_B3, 64, "within b"),
    ] {
        assert_eq!(
            reply_ttl(cloud.vm_ns(from), ip),
            Some(ttl),
            "{phase}: reply TTL {what}"
        );
    }
    // What traceroute does: TTL 1 dies at the gateway, TTL 2 arrives.
    let text = ping_text(cloud.vm_ns(B1), &["-c", "1", "-t", "1"], IP_A3);
    assert!(
        text.contains("From 10.1.0.1") && text.contains("Time to live exceeded"),
        "{phase}: TTL 1 from b to a: {text}"
    );
    let text = ping_text(cloud.vm_ns(B1), &["-c", "1", "-t", "2"], IP_A3);
    assert!(
        text.contains("bytes from 10.0.0.13"),
        "{phase}: TTL 2 from b to a: {text}"
    );
    // And traceroute itself (busybox's, UDP probes): the gateway, then the VM, nothing more.
    let out = cloud
        .vm_ns(B1)
        .exec("busybox")
        .args(["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4"])
        .arg(IP_A3.to_string())
        .output()
        .expect("busybox traceroute");
    let text = String::from_utf8_lossy(&out.stdout);
    let hops: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(
        hops.len() == 2 && hops[0].contains(" 10.1.0.1 ") && hops[1].contains(" 10.0.0.13 "),
        "{phase}: traceroute from b to a: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Gateways answer: a VM's own, and its VPC's other network's.
    assert_eq!(cloud.ping(B1, GW_B, 3), 3, "{phase}: B1 to its gateway");
    assert_eq!(cloud.ping(A3, GW_A, 3), 3, "{phase}: A3 to its gateway");
    assert_eq!(cloud.ping(B1, GW_A, 3), 3, "{phase}: B1 to a's gateway");

    // Out of the VPC through the gateway VM (b's default_via, on hv-2): from hv-1 and from
    // beside it; and the gateway VM itself is a NIC like any other.
    assert_eq!(cloud.ping(B1, OUTSIDE, 3), 3, "{phase}: B1 to the outside");
    assert_eq!(cloud.ping(B3, OUTSIDE, 3), 3, "{phase}: B3 to the outside");
    assert_eq!(cloud.ping(A1, IP_G, 3), 3, "{phase}: A1 to the gateway VM");
    assert_eq!(
        outside.ns.ping(IP_B1, 3),
        3,
        "{phase}: the outside to B1 through the gateway VM"
    );

    // a's route (198.51.100.0/24 via GA, on hv-1), from beside GA and from hv-2, and back;
    // b's traffic there would take b's default_via instead.
    assert_eq!(
        cloud.ping(A1, ROUTED_OUT, 3),
        3,
        "{phase}: A1 along a's route"
    );
    assert_eq!(
        cloud.ping(A3, ROUTED_OUT, 3),
        3,
        "{phase}: A3 along a's route"
    );
    assert_eq!(
        routed_out.ns.ping(IP_A3, 3),
        3,
        "{phase}: behind GA to A3 through GA"
    );

    // No route: a has no default_via. Nobody at the address: host unreachable.
    let text = ping_text(cloud.vm_ns(A1), &["-c", "1"], OUTSIDE);
    assert!(
        text.contains("From 10.0.0.1") && text.contains("Destination Net Unreachable"),
        "{phase}: A1 (no default_via) to the outside: {text}"
    );
    let text = ping_text(cloud.vm_ns(A1), &["-c", "1"], NOBODY_B);
    assert!(
        text.contains("From 10.0.0.1") && text.contains("Destination Host Unreachable"),
        "{phase}: A1 to an address of b no NIC holds: {text}"
    );
}

fn networks_of_a_vpc_route_to_each_other_and_to_the_gateway_vm(hook: VmHook) {
    let started = Instant::now();
    let mut with_tap = specs();
    with_tap.push(VmSpec {
        real_tap: true,
        ..vm("b", 0, T1, IP_T1, "tap-t1")
    });
    let mut cloud = in_mode_with(hook, &with_tap);
    let outside = Outside::behind(cloud.vm_ns(G), "10.0.0.0/8");
    let routed_out = Outside::behind_at(
        cloud.vm_ns(GA),
        "10.0.0.0/8",
        ROUTED_OUT,
        Ipv4Addr::new(198, 51, 100, 254),
        "out0",
    );

    routes_everything(&cloud, &outside, &routed_out, "agents up");

    // The counters of what was just done, on hv-1 (A1, B1, C1).
    let hv1 = cloud.agents[0].counters();
    let (local, encap) = forward_stats(hook);
    for (stat, least) in [
        (Stat::Routed, 20),
        (local, 1),
        (encap, 1),
        (Stat::GatewayEchoReply, 6),
        (Stat::IcmpTimeExceeded, 1),
        (Stat::IcmpNetUnreachable, 5),
        (Stat::IcmpHostUnreachable, 1),
    ] {
        assert!(
            hv1[stat as usize] >= least,
            "hv-1 {stat:?}: {} (at least {least})",
            hv1[stat as usize]
        );
    }

    // TCP between subnets, on one host and across, and out through the gateway VM.
    for (from, to, ip, what) in [
        (A1, B1, IP_B1, "a to b on hv-1"),
        (B1, A3, IP_A3, "b on hv-1 to a on hv-2"),
    ] {
        let bps = cloud.iperf(from, to, ip, 1);
        eprintln!("TCP {what}: {:.0} Mbit/s", bps / 1e6);
        assert!(bps > 10e6, "TCP {what}: {:.1} Mbit/s", bps / 1e6);
    }
    let bps = iperf_between(
        cloud.vm_ns(B1),
        &outside.ns,
        &[&OUTSIDE.to_string()],
        5212,
        1,
    );
    eprintln!("TCP b on hv-1 to the outside: {:.0} Mbit/s", bps / 1e6);
    assert!(bps > 10e6, "TCP to the outside: {:.1} Mbit/s", bps / 1e6);

    // A tap VM's TCP (64 KiB GSO super-frames, the skb path in both modes) routed across
    // hosts, both ways.
    let skb = count(&cloud, 0, Stat::SkbEncap);
    let bps = cloud.iperf(T1, A3, IP_A3, 1);
    eprintln!(
        "TCP tap VM (TSO) in b on hv-1 to a on hv-2: {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(bps > 10e6, "TCP tap VM to a: {:.1} Mbit/s", bps / 1e6);
    assert!(
        count(&cloud, 0, Stat::SkbEncap) > skb + 100,
        "the tap VM's routed GSO frames did not take the skb path"
    );
    let bps = cloud.iperf(A3, T1, IP_T1, 1);
    assert!(bps > 10e6, "TCP a to the tap VM: {:.1} Mbit/s", bps / 1e6);

    // Too big for the destination's MTU (the VM ignores its own, 1450): fragmentation needed.
    let a1 = cloud.vm_ns(A1);
    a1.ip(&["link", "set", "eth0", "mtu", "1500"]);
    let text = ping_text(
        a1,
        &["-c", "2", "-i", "0.2", "-M", "do", "-s", "1472"],
        IP_B3,
    );
    a1.ip(&["link", "set", "eth0", "mtu", "1450"]);
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "routed, 1500 bytes with DF: no fragmentation needed with the MTU: {text}"
    );

    // A gateway answers ping and nothing else.
    let before = count(&cloud, 0, Stat::DropToGateway);
    let _ = cloud
        .vm_ns(B1)
        .exec("bash")
        .args([
            "-c",
            "echo x > /dev/udp/10.1.0.1/9; echo x > /dev/udp/10.0.0.1/9",
        ])
        .output();
    let dropped = wait_for(Duration::from_secs(2), || {
        (count(&cloud, 0, Stat::DropToGateway) >= before + 2).then_some(())
    });
    assert!(
        dropped.is_some(),
        "UDP to the gateways: DropToGateway not counted twice"
    );

    // Both agents SIGKILLed: the pinned programs and maps keep routing, a flow running
    // meanwhile loses nothing.
    let b1 = cloud.vm_ns(B1).name.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &b1, "ping", "-n", "-q", "-c", "50", "-i", "0.02", "-W", "1",
            ])
            .arg(IP_A3.to_string())
            .output()
            .expect("ping")
    });
    std::thread::sleep(Duration::from_millis(200));
    for agent in &mut cloud.agents {
        agent.kill();
    }
    let out = pinger.join().expect("pinger");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(" 50 received"),
        "routed flow while the agents died: {text}"
    );
    routes_everything(&cloud, &outside, &routed_out, "agents killed");
    let bps = cloud.iperf(B1, A3, IP_A3, 1);
    assert!(
        bps > 10e6,
        "agents killed: TCP b on hv-1 to a on hv-2: {:.1} Mbit/s",
        bps / 1e6
    );
    eprintln!("{hook:?}: {:.1?}", started.elapsed());
}

fn hostile_sources_through_the_router_are_dropped(hook: VmHook) {
    let started = Instant::now();
    let cloud = in_mode(hook);
    let a1 = cloud.vm_ns(A1);
    // The router's MAC is known to A1 (the spoofed datagrams are sent, not stopped at ARP),
    // and the VPC routes.
    assert_eq!(cloud.ping(A1, IP_B1, 1), 1);
    assert_eq!(cloud.ping(A1, IP_B3, 1), 1);

    // A1 (not forwarding) sends through the router with sources that are not its own: one of
    // its subnet, one of b's held by B3, one outside the VPC.
    for (spoofed, to, target) in [
        ("10.0.0.99", IP_B1, B1),
        ("10.1.0.13", IP_B1, B1),
        ("203.0.113.1", IP_B3, B3),
    ] {
        a1.ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
        let echoes = echoes_in(&cloud, target);
        let before = cloud.agents[0].counters();
        let text = ping_text(a1, &["-c", "3", "-i", "0.1", "-I", spoofed], to);
        a1.ip(&["addr", "del", &format!("{spoofed}/32"), "dev", "eth0"]);
        let after = cloud.agents[0].counters();
        assert!(
            !text.contains("bytes from"),
            "from {spoofed}: answered: {text}"
        );
        assert_eq!(
            echoes_in(&cloud, target),
            echoes,
            "from {spoofed}: the spoofed echoes reached {to}"
        );
        assert!(
            after[Stat::DropSpoofedIp as usize] >= before[Stat::DropSpoofedIp as usize] + 3,
            "from {spoofed}: DropSpoofedIp {} -> {}",
            before[Stat::DropSpoofedIp as usize],
            after[Stat::DropSpoofedIp as usize]
        );
        assert_eq!(
            after[Stat::Routed as usize],
            before[Stat::Routed as usize],
            "from {spoofed}: a spoofed frame was routed"
        );
    }

    // C1, in the other VPC, sends to the router MAC (its default route) toward b and toward
    // b's gateway: unreachable, nothing delivered, nothing routed.
    let (b1, b3) = (echoes_in(&cloud, B1), echoes_in(&cloud, B3));
    let before = cloud.agents[0].counters();
    for ip in [IP_B1, IP_B3, GW_B] {
        let text = ping_text(cloud.vm_ns(C1), &["-c", "2", "-i", "0.1"], ip);
        assert!(
            text.contains("From 10.0.0.1") && text.contains("Destination Net Unreachable"),
            "C1 (other VPC) to {ip}: {text}"
        );
    }
    let after = cloud.agents[0].counters();
    assert_eq!(
        (echoes_in(&cloud, B1), echoes_in(&cloud, B3)),
        (b1, b3),
        "the other VPC reached b"
    );
    assert_eq!(
        after[Stat::Routed as usize],
        before[Stat::Routed as usize],
        "a frame of the other VPC was routed"
    );
    assert!(
        after[Stat::IcmpNetUnreachable as usize] >= before[Stat::IcmpNetUnreachable as usize] + 6,
        "IcmpNetUnreachable {} -> {}",
        before[Stat::IcmpNetUnreachable as usize],
        after[Stat::IcmpNetUnreachable as usize]
    );

    // A forwarding NIC may send any source from outside the VPC (G, on hv-2, to A1 on hv-1:
    // routed, and accepted on hv-1 because a forwarding NIC of the VPC is behind hv-2); never
    // an address of the VPC's subnets, even one no NIC holds: its own host drops it
    // (`DropSpoofedIp`), as hv-1 would (`DropRoutedSpoof`, the fixtures of xdp_route).
    let g = cloud.vm_ns(G);
    // Its ARP for the router from its own address (ARP names the sender's source address,
    // which only the NIC's own may be), as a gateway VM forwarding others' packets does.
    assert_eq!(cloud.ping(G, GW_B, 1), 1, "G to its gateway");
    for (source, reaches) in [("192.0.2.77", true), ("10.1.0.77", false)] {
        g.ip(&["addr", "add", &format!("{source}/32"), "dev", "eth0"]);
        let a1_echoes = echoes_in(&cloud, A1);
        let spoofs = count(&cloud, 1, Stat::DropSpoofedIp);
        let _ = ping_text(g, &["-c", "3", "-i", "0.1", "-I", source], IP_A1);
        g.ip(&["addr", "del", &format!("{source}/32"), "dev", "eth0"]);
        if reaches {
            assert!(
                echoes_in(&cloud, A1) >= a1_echoes + 3,
                "the gateway VM's echoes from {source} did not reach A1"
            );
        } else {
            assert_eq!(
                echoes_in(&cloud, A1),
                a1_echoes,
                "the gateway VM's echoes from {source} reached A1"
            );
            assert!(
                count(&cloud, 1, Stat::DropSpoofedIp) >= spoofs + 3,
                "from {source}: DropSpoofedIp on hv-2 {spoofs} -> {}",
                count(&cloud, 1, Stat::DropSpoofedIp)
            );
        }
    }
    let before = count(&cloud, 1, Stat::DropSpoofedMac);
    g.ip(&["link", "set", "eth0", "address", "02:0b:00:00:00:77"]);
    // Routed (to A1): one ping is enough, its ARP for the router already dropped.
    assert_eq!(
        cloud.ping(G, IP_A1, 2),
        0,
        "the gateway VM with another MAC"
    );
    g.ip(&["link", "set", "eth0", "address", "02:0b:00:00:00:fe"]);
    g.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(
        count(&cloud, 1, Stat::DropSpoofedMac) > before,
        "the gateway VM's other MAC: DropSpoofedMac {before} -> {}",
        count(&cloud, 1, Stat::DropSpoofedMac)
    );

    // Nothing else changed: A1, C1 and G still reach what they reach.
    assert_eq!(cloud.ping(G, IP_A1, 3), 3, "G to A1 after");
    assert_eq!(cloud.ping(A1, IP_B1, 3), 3, "A1 to B1 after");
    assert_eq!(cloud.ping(C1, IP_A1, 3), 3, "C1 to C3 after");
    eprintln!("{hook:?}: {:.1?}", started.elapsed());
}

/// The MAC of `interface` in `ns`.
fn mac_of(ns: &Netns, interface: &str) -> [u8; 6] {
    let out = ns.query(&["-j", "link", "show", interface]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    let text = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// A VXLAN frame from hv-2's underlay to hv-1 (`outer`: their MACs), VNI `vni`, carrying a
/// routed UDP datagram (inner source the router MAC) from `src` to the VM `dst_mac` at `dst`.
fn routed_vxlan(
    outer: ([u8; 6], [u8; 6]),
    vni: u32,
    src: Ipv4Addr,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
) -> Vec<u8> {
    let inner =
        holdfast_tests::packet::udp_frame(ROUTER_MAC, dst_mac, src, dst, 1, 9, &[7; 64], false);
    let mut payload = vec![0x08, 0, 0, 0];
    let v = vni.to_be_bytes();
    payload.extend_from_slice(&[v[1], v[2], v[3], 0]);
    payload.extend_from_slice(&inner);
    holdfast_tests::packet::udp_frame(
        outer.0,
        outer.1,
        Ipv4Addr::new(198, 18, 0, 2),
        Ipv4Addr::new(198, 18, 0, 1),
        50000,
        4789,
        &payload,
        false,
    )
}

/// hv-2's underlay sends hv-1 routed frames: those whose source hv-2 can speak for (a NIC of
/// the VPC behind it, or outside the VPC when a forwarding NIC of it is behind hv-2) are
/// delivered; the others are dropped as `DropRoutedSpoof` and reach no VM.
fn forged_routed_vxlan(underlay: UnderlayHook) {
    let cloud = build(Options {
        underlay_hooks: [underlay; 2],
        ..Options::default()
    });
    // Both hosts know every VM (so a frame is judged, not dropped for an unknown MAC).
    assert_eq!(cloud.ping(B3, IP_A1, 1), 1);
    let sock = holdfast_tests::rawsock::RawSocket::open(&cloud.hosts[1].path(), "ul0");
    let outer = (
        mac_of(&cloud.hosts[1], "ul0"),
        mac_of(&cloud.hosts[0], "ul0"),
    );
    let cases = [
        // A1's address, but A1 is on hv-1.
        (1002, IP_A1, B1, IP_B1, false),
        // From outside v2, which has no forwarding NIC at all.
        (1003, OUTSIDE, C1, IP_A3, false),
        // A3 is behind hv-2: genuine.
        (1002, IP_A3, B1, IP_B1, true),
        // From outside v1, whose gateway VM is behind hv-2: genuine.
        (1002, OUTSIDE, B1, IP_B1, true),
    ];
    for (vni, src, mac, dst, delivered) in cases {
        let before = count(&cloud, 0, Stat::DropRoutedSpoof);
        let received = udp_in(&cloud, mac);
        for _ in 0..5 {
            sock.send(&routed_vxlan(outer, vni, src, mac, dst));
        }
        let what = format!("VNI {vni} from {src} to {dst}");
        if delivered {
            let got = wait_for(Duration::from_secs(3), || {
                (udp_in(&cloud, mac) >= received + 5).then_some(())
            });
            assert!(
                got.is_some(),
                "{what}: not delivered ({underlay:?} underlay)"
            );
            assert_eq!(count(&cloud, 0, Stat::DropRoutedSpoof), before, "{what}");
        } else {
            let seen = wait_for(Duration::from_secs(3), || {
                (count(&cloud, 0, Stat::DropRoutedSpoof) >= before + 5).then_some(())
            });
            assert!(
                seen.is_some(),
                "{what}: DropRoutedSpoof {} -> {} ({underlay:?} underlay)",
                before,
                count(&cloud, 0, Stat::DropRoutedSpoof)
            );
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(udp_in(&cloud, mac), received, "{what}: delivered");
        }
    }
    assert_eq!(cloud.ping(B3, IP_A1, 3), 3, "genuine traffic after");
}

#[test]
fn forged_routed_vxlan_is_dropped_xdp_underlay() {
    forged_routed_vxlan(UnderlayHook::Xdp);
}

#[test]
fn forged_routed_vxlan_is_dropped_tc_underlay() {
    forged_routed_vxlan(UnderlayHook::Tc);
}

/// The routed pair with both hosts decapsulating on TC (`[underlay] hook = "tc"`), VM ports on
/// XDP: between subnets across hosts, the TTL, and out through the gateway VM.
#[test]
fn routed_traffic_crosses_the_tc_underlay() {
    let cloud = build(Options {
        underlay_hooks: [UnderlayHook::Tc; 2],
        ..Options::default()
    });
    let outside = Outside::behind(cloud.vm_ns(G), "10.0.0.0/8");
    assert_eq!(cloud.ping(B1, IP_A3, 3), 3, "b on hv-1 to a on hv-2");
    assert_eq!(cloud.ping(A3, IP_B1, 3), 3, "a on hv-2 to b on hv-1");
    assert_eq!(reply_ttl(cloud.vm_ns(B1), IP_A3), Some(63));
    assert_eq!(cloud.ping(B1, OUTSIDE, 3), 3, "B1 to the outside");
    assert_eq!(outside.ns.ping(IP_B1, 3), 3, "the outside to B1");
    let bps = cloud.iperf(B1, A3, IP_A3, 1);
    assert!(
        bps > 10e6,
        "TCP b on hv-1 to a on hv-2: {:.1} Mbit/s",
        bps / 1e6
    );
    assert!(count(&cloud, 0, Stat::Routed) >= 6);
}

/// The same VPC read from etcd: `vpc`, `default_via` and `forwarding` go through `holdfast ipam
/// import` and the watch.
#[test]
fn routing_from_an_etcd_source() {
    let cloud = build(Options {
        source: Source::Etcd,
        ..Options::default()
    });
    let exported = cloud.control.as_ref().expect("control").export();
    for field in [r#""vpc""#, r#""default_via""#, r#""forwarding""#] {
        assert!(exported.contains(field), "{field} not in etcd: {exported}");
    }
    let outside = Outside::behind(cloud.vm_ns(G), "10.0.0.0/8");
    assert_eq!(cloud.ping(B1, IP_A3, 3), 3, "b on hv-1 to a on hv-2");
    assert_eq!(cloud.ping(A1, IP_B1, 3), 3, "a to b on hv-1");
    assert_eq!(
        cloud.ping(A1, IP_D3, 3),
        3,
        "a on hv-1 (no NIC of d) to d on hv-2"
    );
    assert_eq!(cloud.ping(B1, OUTSIDE, 3), 3, "B1 to the outside");
    assert_eq!(outside.ns.ping(IP_B1, 1), 1);
    let text = ping_text(cloud.vm_ns(C1), &["-c", "1"], IP_B1);
    assert!(
        text.contains("Destination Net Unreachable"),
        "C1 (other VPC) to B1: {text}"
    );
}

/// `doc` with network `net`'s `field` set to `value` (`null` removes it).
fn with_field(doc: &str, net: &str, field: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(doc).expect("ipam json");
    for n in v["networks"].as_array_mut().expect("networks") {
        if n["id"] == net {
            if value.is_null() {
                n.as_object_mut().expect("network").remove(field);
            } else {
                n[field] = value.clone();
            }
        }
    }
    v.to_string()
}

/// Gives both agents `doc`: in their files, or imported into etcd.
fn apply(cloud: &Cloud, doc: &str) {
    match &cloud.control {
        Some(control) => {
            control.import(doc);
        }
        None => {
            for a in &cloud.agents {
                a.write_ipam(doc);
            }
        }
    }
}

/// Waits until `f` holds, or panics with `what` and how long it waited.
fn converges(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    let ok = wait_for(Duration::from_secs(15), || f().then_some(()));
    assert!(ok.is_some(), "{what}: not within 15 s");
    started.elapsed()
}

/// IPAM changes apply at runtime: d leaves the VPC (hv-1, which has no NIC of d, stops
/// carrying it: unreachable both ways) and b loses its default_via (the outside unreachable);
/// put back, both work again. Each step's time to converge is printed.
fn routing_changes_apply_at_runtime(source: Source) {
    let cloud = build(Options {
        source,
        ..Options::default()
    });
    let _outside = Outside::behind(cloud.vm_ns(G), "10.0.0.0/8");
    assert_eq!(cloud.ping(A1, IP_D3, 2), 2, "A1 to D3 before");
    assert_eq!(cloud.ping(B1, OUTSIDE, 2), 2, "B1 to the outside before");
    let unreachable = |mac: [u8; 6], ip: Ipv4Addr| {
        ping_text(cloud.vm_ns(mac), &["-c", "1"], ip).contains("Destination Net Unreachable")
    };
    let changed = with_field(&cloud.doc, "d", "vpc", serde_json::json!("v3"));
    let changed = with_field(&changed, "b", "default_via", serde_json::Value::Null);
    apply(&cloud, &changed);
    let t = converges("d out of the VPC: A1 to D3 unreachable", || {
        unreachable(A1, IP_D3)
    });
    eprintln!("{source:?}: d out of the VPC seen on hv-1 in {t:.1?}");
    // hv-2 reads its own copy: it may apply the change a poll later than hv-1.
    converges("d out of the VPC: D3 to A1 unreachable", || {
        unreachable(D3, IP_A1)
    });
    converges(
        "b without default_via: B1 to the outside unreachable",
        || unreachable(B1, OUTSIDE),
    );
    assert_eq!(cloud.ping(A1, IP_B1, 2), 2, "a and b still route");
    apply(&cloud, &cloud.doc);
    let t = converges("d back in the VPC: A1 to D3", || {
        cloud.ping(A1, IP_D3, 1) == 1
    });
    eprintln!("{source:?}: d back in the VPC on hv-1 in {t:.1?}");
    converges("b's default_via back: B1 to the outside", || {
        cloud.ping(B1, OUTSIDE, 1) == 1
    });
    converges("d back in the VPC: D3 to A1", || {
        cloud.ping(D3, IP_A1, 1) == 1
    });
}

#[test]
fn routing_changes_apply_at_runtime_from_a_file() {
    routing_changes_apply_at_runtime(Source::File);
}

#[test]
fn routing_changes_apply_at_runtime_from_etcd() {
    routing_changes_apply_at_runtime(Source::Etcd);
}
