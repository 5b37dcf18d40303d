//! IPv6 end to end (issue 15): two hypervisor namespaces, dual-stack networks, real kernel
//! stacks as the guests. Neighbour discovery is answered on the port, a guest's kernel takes
//! its default route from the router's advertisements (solicited, and unsolicited from the
//! agent), VMs reach each other over IPv6 on the host and across hosts, TCP over IPv6 at full
//! MTU, and a VM spoofing another address is dropped. Both hooks.

use std::{net::Ipv6Addr, time::Duration};

use agent_common::Stat;
use holdfast_tests::{
    netns::{Netns, wait_for},
    vpc::{Cloud, Net, Options, VmSpec, ip6_for},
    xdp::{ROUTER_MAC, VmHook},
};

holdfast_tests::for_each_hook!(
    vms_reach_each_other_over_ipv6_on_the_host_and_across_hosts,
    a_guest_takes_its_default_route_from_the_routers_advertisement,
    tcp_over_ipv6_at_full_mtu_across_hosts,
    a_vm_spoofing_another_ipv6_address_is_dropped,
);

const VNI: u32 = 1001;
const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
const A2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02];
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];

fn specs() -> Vec<VmSpec> {
    [
        (A1, 11, 0, "tap-a1"),
        (A2, 12, 0, "tap-a2"),
        (A3, 13, 1, "tap-a3"),
    ]
    .into_iter()
    .map(|(mac, last, host, tap)| VmSpec {
        net: "a",
        host,
        mac,
        ip: std::net::Ipv4Addr::new(10, 0, 0, last),
        tap,
        real_tap: false,
    })
    .collect()
}

fn ip6(last: u8) -> Ipv6Addr {
    ip6_for(VNI, std::net::Ipv4Addr::new(10, 0, 0, last))
}

fn cloud(hook: VmHook) -> Cloud {
    use holdfast::config::UnderlayHook;

    Cloud::with(
        &[Net { id: "a", vni: VNI }],
        &specs(),
        &Options {
            hooks: [hook; 2],
            underlay_hooks: match hook {
                VmHook::Xdp => [UnderlayHook::Xdp; 2],
                VmHook::Tc => [UnderlayHook::Xdp, UnderlayHook::Tc],
            },
            ipv6: true,
            ..Options::default()
        },
    )
}

fn vms_reach_each_other_over_ipv6_on_the_host_and_across_hosts(hook: VmHook) {
    let cloud = cloud(hook);
    let a1 = cloud.vm_ns(A1);
    assert_eq!(a1.ping6(ip6(12), 5), 5, "same host");
    assert_eq!(a1.ping6(ip6(13), 5), 5, "across hosts");
    assert_eq!(cloud.vm_ns(A3).ping6(ip6(11), 5), 5, "back");
    // The neighbours were resolved by the ports' answers, not by each other.
    assert!(cloud.agents[0].counters()[Stat::Nd6Reply as usize] >= 2);
    assert!(cloud.agents[1].counters()[Stat::Nd6Reply as usize] >= 1);
    let neigh = a1.query(&["-6", "neigh", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&neigh.stdout);
    assert!(text.contains("02:0a:00:00:00:03"), "{text}");
    assert!(cloud.agents[1].counters()[Stat::VxlanDecap as usize] >= 5);
}

/// The router's link-local address, from its MAC (EUI-64).
fn router_ll() -> String {
    let m = ROUTER_MAC;
    format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([m[0] ^ 2, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]])
    )
}

fn default_route(ns: &Netns) -> String {
    let out = ns.query(&["-6", "route", "show", "default"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn a_guest_takes_its_default_route_from_the_routers_advertisement(hook: VmHook) {
    let cloud = cloud(hook);
    let via = format!("via {} dev eth0", router_ll());
    // Solicited: the guest's kernel sends a router solicitation when its link comes up.
    let a1 = cloud.vm_ns(A1);
    // Keep the address IPAM gave across the link flap (IPv6 drops addresses on down).
    for sysctl in [
        "net.ipv6.conf.eth0.accept_ra=2",
        "net.ipv6.conf.eth0.keep_addr_on_down=1",
    ] {
        a1.exec("sysctl")
            .args(["-qw", sysctl])
            .status()
            .expect("sysctl");
    }
    a1.ip(&["link", "set", "eth0", "down"]);
    a1.ip(&["link", "set", "eth0", "up"]);
    let got = wait_for(Duration::from_secs(10), || {
        default_route(a1).contains(&via).then_some(())
    });
    assert!(got.is_some(), "no default route: {}", default_route(a1));
    assert!(cloud.agents[0].counters()[Stat::Ra6Reply as usize] >= 1);
    // The prefix is on-link with A=0: no address of the guest's own making.
    let addrs = a1.query(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    let text = String::from_utf8_lossy(&addrs.stdout);
    assert_eq!(
        text.matches("inet6 ").count(),
        1,
        "only the address IPAM gave: {text}"
    );
    // Unsolicited: a guest that never solicits gets the agent's advertisement when the agent
    // starts (and every 600 s after).
    let a3 = cloud.vm_ns(A3);
    for sysctl in [
        "net.ipv6.conf.eth0.accept_ra=2",
        "net.ipv6.conf.eth0.router_solicitations=0",
    ] {
        a3.exec("sysctl")
            .args(["-qw", sysctl])
            .status()
            .expect("sysctl");
    }
    // Whatever route it learned so far goes; only an advertisement it did not ask for can
    // bring it back.
    let _ = a3.query(&["-6", "route", "del", "default"]);
    assert!(!default_route(a3).contains("via"), "{}", default_route(a3));
    let mut cloud = cloud;
    let agent = &mut cloud.agents[1];
    agent.stop();
    agent.spawn(&cloud.hosts[1]);
    let a3 = cloud.vm_ns(A3);
    let got = wait_for(Duration::from_secs(15), || {
        default_route(a3).contains(&via).then_some(())
    });
    assert!(
        got.is_some(),
        "no unsolicited advertisement: {}\n{}",
        default_route(a3),
        cloud.agents[1].logs()
    );
}

fn tcp_over_ipv6_at_full_mtu_across_hosts(hook: VmHook) {
    let cloud = cloud(hook);
    let a3 = cloud.vm_ns(A3);
    let _server = a3.iperf3_server(5202);
    let out = cloud
        .vm_ns(A1)
        .exec("iperf3")
        .args([
            "-6",
            "-c",
            &ip6(13).to_string(),
            "-p",
            "5202",
            "-t",
            "2",
            "-J",
        ])
        .output()
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        bps > 100e6,
        "TCP over IPv6 at {:.0} Mbit/s: {}",
        bps / 1e6,
        String::from_utf8_lossy(&out.stdout)
    );
    // Full-size segments: MSS 1390 on a 1450 MTU (40 bytes of IPv6, 20 of TCP).
    let mss = v["start"]["tcp_mss_default"].as_u64().unwrap_or(0);
    assert!(mss >= 1378, "MSS {mss}");
}

fn a_vm_spoofing_another_ipv6_address_is_dropped(hook: VmHook) {
    let cloud = cloud(hook);
    let a1 = cloud.vm_ns(A1);
    assert_eq!(a1.ping6(ip6(13), 1), 1);
    // A2's address, on A1.
    a1.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", ip6(12)),
        "dev",
        "eth0",
        "nodad",
    ]);
    let spoofed = a1
        .exec("ping")
        .args(["-n", "-c", "3", "-i", "0.1", "-W", "1", "-I"])
        .arg(ip6(12).to_string())
        .arg(ip6(13).to_string())
        .output()
        .expect("ping");
    assert!(
        !spoofed.status.success(),
        "a spoofed IPv6 source got through"
    );
    assert!(cloud.agents[0].counters()[Stat::DropSpoofedIp6 as usize] >= 3);
    a1.ip(&[
        "-6",
        "addr",
        "del",
        &format!("{}/64", ip6(12)),
        "dev",
        "eth0",
    ]);
    assert_eq!(a1.ping6(ip6(13), 2), 2, "its own address still works");
}
