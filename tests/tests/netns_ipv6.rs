//! IPv6 end to end (issue 15): two hypervisor namespaces, dual-stack networks, real kernel
//! stacks as the guests. Neighbour discovery is answered on the port, a guest's kernel takes
//! its default route from the router's advertisements (solicited, and unsolicited from the
//! agent), VMs reach each other over IPv6 on the host and across hosts, TCP over IPv6 at full
//! MTU, and a VM spoofing another address is dropped. Both hooks. When IPAM takes IPv6 back
//! (a network's `subnet6` removed or changed, a NIC's `ip6` removed), the guests' kernels drop
//! the on-link prefix and the default route within seconds, and take the new ones; an IPAM
//! flipping `subnet6` back and forth leaves no stale prefix and stalls nothing.

use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast_tests::{
    netns::{Netns, mac_str, wait_for},
    vpc::{Cloud, Net, Options, VmSpec, ip6_for},
    xdp::{ROUTER_MAC, VmHook},
};

holdfast_tests::for_each_hook!(
    vms_reach_each_other_over_ipv6_on_the_host_and_across_hosts,
    a_guest_takes_its_default_route_from_the_routers_advertisement,
    tcp_over_ipv6_at_full_mtu_across_hosts,
    a_vm_spoofing_another_ipv6_address_is_dropped,
    a_withdrawn_prefix_and_router_leave_the_guests_at_once,
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
    // (None yet is fine: the agent's first advertisements come in a burst of three, 3 s apart.)
    let _ = a3
        .exec("ip")
        .args(["-6", "route", "del", "default"])
        .output();
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

/// Both hosts' IPAM documents, changed by `f` (written as an operator's tooling would).
fn change_ipam(cloud: &Cloud, f: impl Fn(&mut serde_json::Value)) {
    for a in &cloud.agents {
        let text = std::fs::read_to_string(&a.ipam).expect("ipam");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("ipam json");
        f(&mut v);
        a.write_ipam(&v.to_string());
    }
}

/// Network "a" on `prefix` (fd00:xxxx::/64) with each NIC's ip6 in it, or IPv4-only
/// (`None`); NICs in `without` get no ip6.
fn set_subnet6(v: &mut serde_json::Value, prefix: Option<&str>, without: &[[u8; 6]]) {
    let net = &mut v["networks"][0];
    match prefix {
        Some(p) => {
            net["subnet6"] = serde_json::json!(format!("{p}/64"));
            net["dns6"] = serde_json::json!([format!("{p}53")]);
        }
        None => {
            let net = net.as_object_mut().expect("network");
            net.remove("subnet6");
            net.remove("dns6");
        }
    }
    for nic in v["nics"].as_array_mut().expect("nics") {
        let ip: std::net::Ipv4Addr = nic["ip"].as_str().expect("ip").parse().expect("ip");
        let mac = nic["mac"].as_str().expect("mac").to_owned();
        let nic = nic.as_object_mut().expect("nic");
        match prefix {
            Some(p) if !without.iter().any(|m| mac_str(*m) == mac) => {
                nic.insert(
                    "ip6".into(),
                    serde_json::json!(format!("{p}{:x}", ip.octets()[3])),
                );
            }
            _ => {
                nic.remove("ip6");
            }
        }
    }
}

/// What the guest's kernel learned from advertisements: its default route (`proto ra`) and
/// its on-link /64s other than the link-local one (the kernel labels an advertised prefix's
/// route `proto kernel`; the guest's address is a /128 and makes none).
fn ra_routes(ns: &Netns) -> String {
    let out = ns.query(&["-6", "route", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("default") || (l.contains("/64") && !l.starts_with("fe80:")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The guest as a DHCPv6 client leaves it: its address a /128 (IA_NA), so that its on-link
/// prefix comes from the advertisement alone; it takes advertisements though nothing
/// forwards for it, and solicits one.
fn managed_guest(ns: &Netns, ip6: Ipv6Addr) {
    for sysctl in [
        "net.ipv6.conf.eth0.accept_ra=2",
        "net.ipv6.conf.eth0.keep_addr_on_down=1",
    ] {
        ns.exec("sysctl")
            .args(["-qw", sysctl])
            .status()
            .expect("sysctl");
    }
    let _ = ns.query(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"]);
    readdress(ns, ip6);
    ns.ip(&["link", "set", "eth0", "down"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

/// The guest's global address replaced by `ip6`/128, as its DHCPv6 client would.
fn readdress(ns: &Netns, ip6: Ipv6Addr) {
    let _ = ns.query(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
}

/// Waits until the guest's advertised routes satisfy `ok`; how long it took.
fn wait_routes(ns: &Netns, what: &str, ok: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    // A bound that catches the lifetimes being waited out (2.5 hours, or never for the
    // prefix), not a busy machine: the sender sends at once, and at most 3 s after its last.
    let got = wait_for(Duration::from_secs(20), || ok(&ra_routes(ns)).then_some(()));
    assert!(got.is_some(), "{what}: {}", ra_routes(ns));
    t.elapsed()
}

fn a_withdrawn_prefix_and_router_leave_the_guests_at_once(hook: VmHook) {
    let mut cloud = cloud(hook);
    let via = format!("default via {} ", router_ll());
    let guests = [(A1, 11), (A2, 12), (A3, 13)];
    for (mac, last) in guests {
        managed_guest(cloud.vm_ns(mac), ip6(last));
    }
    let on = |p: &str| format!("{p}/64 ");
    for (mac, _) in guests {
        wait_routes(cloud.vm_ns(mac), "learned", |r| {
            r.contains(&on("fd00:3e9::")) && r.contains(&via)
        });
    }

    // The network loses IPv6: the prefix (advertised with an infinite lifetime) and the
    // default route (9,000 s) go within seconds, on both hosts.
    change_ipam(&cloud, |v| set_subnet6(v, None, &[]));
    for (mac, _) in guests {
        let took = wait_routes(cloud.vm_ns(mac), "subnet6 removed", |r| r.trim().is_empty());
        eprintln!("subnet6 removed: {} routes gone in {took:?}", mac_str(mac));
    }

    // It gets IPv6 back on another prefix: the guests take it (their DHCPv6 clients would
    // take the new address).
    change_ipam(&cloud, |v| set_subnet6(v, Some("fd00:beef::"), &[]));
    for (mac, last) in guests {
        let ns = cloud.vm_ns(mac);
        readdress(ns, format!("fd00:beef::{last:x}").parse().expect("ip6"));
        wait_routes(ns, "the new prefix", |r| {
            r.contains(&on("fd00:beef::")) && r.contains(&via)
        });
    }
    assert_eq!(
        cloud
            .vm_ns(A1)
            .ping6("fd00:beef::d".parse().expect("ip6"), 3),
        3,
        "across hosts on the new prefix"
    );

    // subnet6 changes: the old prefix goes, the new one comes, the default route stays.
    change_ipam(&cloud, |v| set_subnet6(v, Some("fd00:cafe::"), &[]));
    for (mac, last) in guests {
        let ns = cloud.vm_ns(mac);
        let took = wait_routes(ns, "subnet6 changed", |r| {
            r.contains(&on("fd00:cafe::")) && !r.contains("fd00:beef::")
        });
        eprintln!(
            "subnet6 changed: {} old prefix gone in {took:?}",
            mac_str(mac)
        );
        assert!(ra_routes(ns).contains(&via), "{}", ra_routes(ns));
        readdress(ns, format!("fd00:cafe::{last:x}").parse().expect("ip6"));
    }

    // A1's NIC loses its ip6: A1's guest stops using the router and the prefix; A2, on the
    // same host and network, keeps them.
    change_ipam(&cloud, |v| set_subnet6(v, Some("fd00:cafe::"), &[A1]));
    let took = wait_routes(cloud.vm_ns(A1), "ip6 removed", |r| r.trim().is_empty());
    eprintln!("ip6 removed: routes gone in {took:?}");
    let a2 = ra_routes(cloud.vm_ns(A2));
    assert!(a2.contains(&via) && a2.contains(&on("fd00:cafe::")), "{a2}");
    assert_eq!(
        cloud
            .vm_ns(A3)
            .ping(std::net::Ipv4Addr::new(10, 0, 0, 11), 2),
        2,
        "IPv4 serves on"
    );

    // A change made while hv-1's agent is down is withdrawn when it starts, even without its
    // IPAM snapshot (whose model would be the first plan): its sender starts from what the
    // pinned maps advertise, and the first model no longer holds it.
    cloud.agents[0].stop();
    std::fs::remove_dir_all(cloud.agents[0].dir.path().join("state")).expect("state_dir");
    change_ipam(&cloud, |v| set_subnet6(v, None, &[]));
    let agent = &mut cloud.agents[0];
    agent.spawn(&cloud.hosts[0]);
    let took = wait_routes(cloud.vm_ns(A2), "removed while the agent was down", |r| {
        r.trim().is_empty()
    });
    eprintln!("subnet6 removed while the agent was down: routes gone {took:?} after its start");
}

/// A hostile IPAM flips `subnet6` between two prefixes ten times a second: the agent stays
/// responsive, the guest hears at most one advertisement per 3 s, and once it settles the
/// guest holds the last prefix and not the other.
#[test]
fn a_subnet6_flipping_back_and_forth_stalls_nothing_and_leaves_no_stale_prefix() {
    let cloud = cloud(VmHook::Xdp);
    let via = format!("default via {} ", router_ll());
    let a1 = cloud.vm_ns(A1);
    managed_guest(a1, ip6(11));
    wait_routes(a1, "learned", |r| r.contains(&via));
    let adverts = |ns: &Netns| -> u64 {
        let out = ns
            .exec("cat")
            .arg("/proc/net/snmp6")
            .output()
            .expect("snmp6");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InRouterAdvertisements"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = adverts(a1);
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let p = if flips % 2 == 0 {
            "fd00:beef::"
        } else {
            "fd00:cafe::"
        };
        change_ipam(&cloud, |v| set_subnet6(v, Some(p), &[]));
        flips += 1;
        assert_eq!(cloud.agents[0].http("/healthz").0, 200, "the agent answers");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Meanwhile IPv4 serves as ever.
    assert_eq!(cloud.ping(A1, std::net::Ipv4Addr::new(10, 0, 0, 13), 3), 3);
    // It settles on beef.
    change_ipam(&cloud, |v| set_subnet6(v, Some("fd00:beef::"), &[]));
    let settled = Instant::now();
    let took = wait_routes(a1, "settled", |r| {
        r.contains("fd00:beef::/64") && !r.contains("fd00:cafe::") && !r.contains("fd00:3e9::")
    });
    eprintln!("{flips} flips; settled {took:?} after the last");
    // The bursts after it end (3 each 3 s), and nothing that arrives later brings back a
    // stale prefix or takes the current one away.
    std::thread::sleep(Duration::from_secs(8));
    let r = ra_routes(a1);
    assert!(
        r.contains("fd00:beef::/64") && r.contains(&via) && !r.contains("fd00:cafe::"),
        "{r}"
    );
    // At most one advertisement per 3 s reached the guest (and a few for the data plane's
    // answers to solicitations, which this guest did not send).
    let heard = adverts(a1) - before;
    let window = (started.elapsed().as_secs_f64() / 3.0).ceil() as u64 + 1;
    eprintln!("{heard} advertisements in {:?}", started.elapsed());
    assert!(
        heard <= window,
        "{heard} advertisements, more than {window}"
    );
    assert!(settled.elapsed() < Duration::from_secs(60));
    // The agent took the last document: its metrics answer, its port holds beef.
    let vpc = cloud.agents[0].vpc();
    assert!(vpc.contains("fd00:beef::b"), "{vpc}");
}
