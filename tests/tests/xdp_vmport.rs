//! A VM port's guard under BPF_PROG_TEST_RUN: the skb path (TC) drops what XDP drops, for the
//! same reasons, whether or not XDP ran first; nothing goes to the host stack (frames to the
//! router MAC included); and the per-port rate limits hold a flood of DHCP, ARP and events to
//! their burst and rate while another port is served.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent_common::{
    ArpEntry, ArpKey, BindingKey, FdbEntry, FdbKey, RateLimit, RateLimits, RouteEntry, Stat,
    VniInfo,
};
use holdfast::{dataplane::Desired, model::Network, render::options};
use holdfast_tests::{
    netns::Netns,
    packet::{BROADCAST_MAC, Request, arp_request, parse_reply, udp_frame},
    xdp::*,
};

const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01]; // on the test interface
const A2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02]; // on ifindex 77
const STRANGER: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x99]; // no binding, no FDB entry
const A1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const A2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VNI: u32 = 1001;
const A2_IFINDEX: u32 = 77;
/// The shortest IPv4 frame `BPF_PROG_TEST_RUN` makes an skb of: Ethernet and IPv4 headers.
const MIN_SKB: usize = 14 + 20;

/// Whether `BPF_PROG_TEST_RUN` makes an skb of `f`: it refuses IPv4 and IPv6 frames without a
/// whole network header. The namespace test (netns_vmport) sends such runts to TC through a
/// real interface.
fn test_run_takes(f: &[u8]) -> bool {
    match f[12..14] {
        [0x08, 0x00] => f.len() >= MIN_SKB,
        [0x86, 0xdd] => f.len() >= 14 + 40,
        _ => true,
    }
}

fn net() -> Network {
    Network {
        id: "pn-a".into(),
        vni: VNI,
        subnet: "10.0.0.0/24".parse().expect("subnet"),
        gateway: GW,
        dns: vec![],
        domain: None,
        search: vec![],
        mtu: Some(1450),
        routes: vec![],
        ntp: vec![],
        lease_time: 3600,
        default_route: true,
        options: Default::default(),
        dhcp_server: None,
        boot: None,
        subnet6: None,
        dns6: vec![],
        vpc: None,
        default_via: None,
    }
}

/// A1 on `a1_ifindex`, A2 on ifindex 77, both local; ARP answers for both and the gateway.
fn desired(a1_ifindex: u32) -> Desired {
    let net = net();
    let mut d = Desired {
        prune: true,
        ..Desired::default()
    };
    for (mac, ip, ifindex) in [(A1, A1_IP, a1_ifindex), (A2, A2_IP, A2_IFINDEX)] {
        let mut n = nic(mac, ip);
        n.network = net.id.clone().into();
        let b = options::render(&net, &n).expect("render");
        d.bindings.insert(BindingKey::new(ifindex, mac), b);
        d.fdb
            .insert(FdbKey::new(VNI, mac), FdbEntry::local(ifindex, be32(ip)));
        d.arp.insert(
            ArpKey {
                vni: VNI,
                ip: be32(ip),
            },
            ArpEntry { mac, _pad: [0; 2] },
        );
    }
    d.arp.insert(
        ArpKey {
            vni: VNI,
            ip: be32(GW),
        },
        ArpEntry {
            mac: ROUTER_MAC,
            _pad: [0; 2],
        },
    );
    d.vnis.insert(
        VNI,
        VniInfo {
            gateway: be32(GW),
            mtu: 1450,
        },
    );
    d
}

/// `fx` with its network's routing table (issue 16): the subnet and the gateway.
fn routing(fx: Fixture) -> Fixture {
    let subnet = RouteEntry {
        kind: RouteEntry::SUBNET,
        vni: VNI,
        via: 0,
        _pad: 0,
    };
    let gateway = RouteEntry {
        kind: RouteEntry::GATEWAY,
        ..subnet
    };
    fx.insert_routing(
        &[
            (VNI, Ipv4Addr::new(10, 0, 0, 0), 24, subnet),
            (VNI, GW, 32, gateway),
        ],
        &[],
        &[],
    );
    fx
}

fn udp(src: [u8; 6], dst: [u8; 6], ip_src: Ipv4Addr, ip_dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    udp_frame(src, dst, ip_src, ip_dst, 40000, dport, &[7; 32], false)
}

/// A1 to A2: what both hooks forward.
fn valid() -> Vec<u8> {
    udp(A1, A2, A1_IP, A2_IP, 9)
}

/// `frame` with an 802.1Q tag (TPID `tpid`, VLAN `vid`) after the MACs.
fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv6 UDP datagram from A1 to A2's MAC (fe80::1 to ff02::1).
fn ipv6() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&A2);
    f.extend_from_slice(&A1);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 17, 64]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 16, 0, 0]);
    f.extend_from_slice(&[7; 8]);
    f
}

/// Every frame XDP drops, with its reason; the skb path must drop each for the same reason.
fn hostile() -> Vec<(&'static str, Vec<u8>, Stat)> {
    let mut bad_version = valid();
    bad_version[14] = 0x65;
    let mut short_ihl = valid();
    short_ihl[14] = 0x44;
    let mut rogue = udp(A1, BROADCAST_MAC, A1_IP, Ipv4Addr::BROADCAST, 68);
    rogue[34..36].copy_from_slice(&67u16.to_be_bytes());
    let mut fragmented = Request::discover(A1).frame();
    fragmented[20] = 0x20; // more fragments
    vec![
        (
            "IPv6 from a NIC without ip6",
            ipv6(),
            Stat::DropIpv6NotConfigured,
        ),
        (
            "VLAN-tagged",
            tagged(&valid(), 0x8100, 5),
            Stat::DropNotIpv4,
        ),
        (
            "priority-tagged (VLAN 0)",
            tagged(&valid(), 0x8100, 0),
            Stat::DropNotIpv4,
        ),
        ("QinQ", tagged(&valid(), 0x88a8, 5), Stat::DropNotIpv4),
        (
            "runt (header only)",
            valid()[..14].to_vec(),
            Stat::DropMalformed,
        ),
        (
            "runt (truncated IPv4 header)",
            valid()[..24].to_vec(),
            Stat::DropMalformed,
        ),
        (
            "IP version 6 in an IPv4 frame",
            bad_version,
            Stat::DropMalformed,
        ),
        ("IHL under 5", short_ihl, Stat::DropMalformed),
        ("a rogue DHCP server", rogue, Stat::DropDhcpRogueServer),
        (
            "a fragmented DHCP request",
            fragmented,
            Stat::DropDhcpMalformed,
        ),
        (
            "a spoofed MAC",
            udp(STRANGER, A2, A1_IP, A2_IP, 9),
            Stat::DropSpoofedMac,
        ),
        (
            "a spoofed address",
            udp(A1, A2, Ipv4Addr::new(10, 0, 0, 99), A2_IP, 9),
            Stat::DropSpoofedIp,
        ),
        (
            "a spoofed address to the router",
            udp(A1, ROUTER_MAC, Ipv4Addr::new(10, 0, 0, 99), GW, 9),
            Stat::DropSpoofedIp,
        ),
        // Routed since issue 16 (xdp_route), never handed to the host: what the router
        // neither forwards nor answers is dropped.
        (
            "to the router MAC, UDP for the gateway",
            udp(A1, ROUTER_MAC, A1_IP, GW, 9),
            Stat::DropToGateway,
        ),
        (
            "to the router MAC, for a multicast group",
            udp(A1, ROUTER_MAC, A1_IP, Ipv4Addr::new(239, 1, 2, 3), 9),
            Stat::DropRouteUnsupported,
        ),
        (
            "broadcast",
            udp(A1, BROADCAST_MAC, A1_IP, Ipv4Addr::BROADCAST, 9),
            Stat::DropBcastMcast,
        ),
        (
            "unknown unicast",
            udp(A1, STRANGER, A1_IP, A2_IP, 9),
            Stat::DropUnknownUnicast,
        ),
    ]
}

#[test]
fn the_skb_path_drops_what_xdp_drops_for_the_same_reasons() {
    let fx = routing(Fixture::with(&desired(TEST_IFINDEX), None));
    for (what, frame, stat) in hostile() {
        let before = fx.counters()[stat as usize];
        assert_eq!(fx.run(&frame).0, XDP_DROP, "XDP, {what}");
        let mut expected = before + 1;
        if test_run_takes(&frame) {
            assert_eq!(fx.run_tc(&frame).0, TC_ACT_SHOT, "TC, {what}");
            expected += 1;
        }
        assert_eq!(
            fx.counters()[stat as usize],
            expected,
            "{what}: not counted as {stat:?} by each hook"
        );
    }
    // Nothing was handed to the host stack, by either hook.
    let c = fx.counters();
    assert_eq!(c[Stat::ToSkbPath as usize], 0);

    // What XDP answers, the skb path cannot: dropped, counted as a port without XDP.
    let arp = arp_request(A1, A1_IP, A2_IP);
    assert_eq!(fx.run(&arp).0, XDP_TX);
    dropped_on_skb_path(&fx, &arp, Stat::DropArpSkbPath);
    let discover = Request::discover(A1).frame();
    assert_eq!(fx.run(&discover).0, XDP_TX);
    dropped_on_skb_path(&fx, &discover, Stat::DropDhcpSkbPath);
    // Unanswerable as it is, a DHCP request from an unbound MAC is dropped the same way.
    dropped_on_skb_path(
        &fx,
        &Request::discover(STRANGER).frame(),
        Stat::DropDhcpSkbPath,
    );

    // A valid frame is forwarded by both.
    let before = fx.counters();
    assert_eq!(fx.run(&valid()).0, XDP_REDIRECT);
    assert_eq!(fx.run_tc(&valid()).0, TC_ACT_REDIRECT);
    let after = fx.counters();
    assert_eq!(
        after[Stat::ForwardLocal as usize],
        before[Stat::ForwardLocal as usize] + 1
    );
    assert_eq!(
        after[Stat::SkbForwardLocal as usize],
        before[Stat::SkbForwardLocal as usize] + 1
    );
}

/// Every hostile frame, mutated at random, through the skb path alone (a port whose XDP
/// program is gone): never handed to the host stack, every drop counted.
#[test]
fn the_skb_path_never_passes_a_frame_up() {
    let fx = routing(Fixture::with(&desired(TEST_IFINDEX), None));
    let mut seeds: Vec<Vec<u8>> = hostile().into_iter().map(|(_, f, _)| f).collect();
    seeds.push(valid());
    seeds.push(arp_request(A1, A1_IP, GW));
    seeds.push(Request::discover(A1).frame());
    let mut rng = holdfast_tests::rng::Rng::new(0x5eed_0006_0008_0010);
    let drops_before: u64 = fx.counters().iter().sum();
    let (mut shot, mut redirected) = (0u64, 0u64);
    for _ in 0..5_000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 && f.len() > MIN_SKB {
            let keep = MIN_SKB + rng.below(f.len() - MIN_SKB + 1);
            f.truncate(keep);
        }
        if !test_run_takes(&f) {
            continue;
        }
        let (action, _) = fx.run_tc(&f);
        match action {
            TC_ACT_SHOT => shot += 1,
            TC_ACT_REDIRECT => redirected += 1,
            other => panic!("TC returned {other} (not a drop or a redirect) for {f:02x?}"),
        }
    }
    let counted: u64 = fx.counters().iter().sum::<u64>() - drops_before;
    assert_eq!(counted, shot + redirected, "every outcome is counted once");
    assert!(
        shot > 3_000 && redirected > 0,
        "{shot} dropped, {redirected} forwarded"
    );
}

/// tc mode's program (`holdfast_vm_tc`, alone on the port) drops every hostile frame for the
/// reason XDP gives, answers ARP and DHCP (back out of the port: a redirect), forwards a valid
/// frame, and, over every hostile frame mutated at random, never hands one up to the host stack.
#[test]
fn tc_mode_drops_what_xdp_drops_and_never_passes_a_frame_up() {
    let fx = routing(Fixture::with(&desired(TEST_IFINDEX), None));
    for (what, frame, stat) in hostile() {
        if !test_run_takes(&frame) {
            continue;
        }
        let before = fx.counters()[stat as usize];
        assert_eq!(fx.run_vm_tc(&frame).0, TC_ACT_SHOT, "tc mode, {what}");
        assert_eq!(
            fx.counters()[stat as usize],
            before + 1,
            "{what}: not counted as {stat:?}"
        );
    }
    let before = fx.counters();
    let (action, out) = fx.run_vm_tc(&arp_request(A1, A1_IP, GW));
    assert_eq!(action, TC_ACT_REDIRECT, "ARP answered");
    assert_eq!(out[0..6], A1, "to the asker");
    assert_eq!(out[22..28], ROUTER_MAC, "the gateway is the router MAC");
    assert_eq!(fx.run_vm_tc(&valid()).0, TC_ACT_REDIRECT);
    let after = fx.counters();
    let moved = |s: Stat| after[s as usize] - before[s as usize];
    assert_eq!(
        (moved(Stat::ArpReply), moved(Stat::SkbForwardLocal)),
        (1, 1)
    );
    // DHCP is answered in tc mode too: back to the VM, from the router MAC.
    let (verdict, out) = fx.run_port(VmHook::Tc, &Request::discover(A1).frame());
    assert_eq!(verdict, back(VmHook::Tc));
    let offer = parse_reply(&out).expect("well-formed OFFER");
    assert_eq!((offer.msg_type(), offer.eth_src), (Some(2), ROUTER_MAC));

    let mut seeds: Vec<Vec<u8>> = hostile().into_iter().map(|(_, f, _)| f).collect();
    seeds.push(valid());
    seeds.push(arp_request(A1, A1_IP, GW));
    let mut rng = holdfast_tests::rng::Rng::new(0x5eed_0014_0007_0003);
    let counted_before: u64 = fx.counters().iter().sum();
    let (mut shot, mut redirected) = (0u64, 0u64);
    for _ in 0..5_000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 && f.len() > MIN_SKB {
            let keep = MIN_SKB + rng.below(f.len() - MIN_SKB + 1);
            f.truncate(keep);
        }
        if !test_run_takes(&f) {
            continue;
        }
        match fx.run_vm_tc(&f).0 {
            TC_ACT_SHOT => shot += 1,
            TC_ACT_REDIRECT => redirected += 1,
            other => panic!("tc mode returned {other} (not a drop or a redirect) for {f:02x?}"),
        }
    }
    let counted: u64 = fx.counters().iter().sum::<u64>() - counted_before;
    // ARP answers count once (ArpReply); every other outcome once too.
    assert_eq!(counted, shot + redirected, "every outcome is counted once");
    assert!(
        shot > 3_000 && redirected > 0,
        "{shot} dropped, {redirected} answered or forwarded"
    );
}

#[test]
fn rate_limits_hold_a_port_to_its_burst_and_leave_other_ports_alone() {
    // Two interfaces: the namespace's loopback (A1 floods) and a veth (A2 asks).
    let ns = Netns::new("rl");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    let other = ns.ifindex("v0");
    let mut d = desired(TEST_IFINDEX);
    let b = options::render(&net(), &{
        let mut n = nic(A2, A2_IP);
        n.network = "pn-a".into();
        n
    })
    .expect("render");
    d.bindings.insert(BindingKey::new(other, A2), b);
    let limits = RateLimits {
        dhcp: RateLimit::per_sec(1, 3),
        arp: RateLimit::per_sec(1, 5),
        events: RateLimit::per_sec(1000, 1000),
    };
    let fx = Fixture::with_limits(&d, Some(ns.path()), &limits);
    let started = Instant::now();
    let discover = Request::discover(A1).frame();
    let arp = arp_request(A1, A1_IP, GW);
    let (mut offers, mut arp_replies) = (0, 0);
    for _ in 0..20 {
        offers += u32::from(fx.run_on(TEST_IFINDEX, &discover).0 == XDP_TX);
        arp_replies += u32::from(fx.run_on(TEST_IFINDEX, &arp).0 == XDP_TX);
    }
    // One token a second refills: a slow machine may earn one or two more.
    let refilled = started.elapsed().as_secs() as u32 + 1;
    assert!((3..=3 + refilled).contains(&offers), "{offers} OFFERs");
    assert!(
        (5..=5 + refilled).contains(&arp_replies),
        "{arp_replies} ARP replies"
    );
    let c = fx.counters();
    assert_eq!(u64::from(offers), c[Stat::DhcpOffer as usize]);
    assert_eq!(
        c[Stat::DropDhcpRateLimited as usize],
        20 - u64::from(offers),
        "every DHCP over the limit counted"
    );
    assert_eq!(
        c[Stat::DropArpRateLimited as usize],
        20 - u64::from(arp_replies)
    );
    assert_eq!(
        c[Stat::DhcpDiscover as usize],
        u64::from(offers),
        "limited requests are dropped before they are parsed"
    );

    // The other port is served while A1's buckets are empty.
    let theirs = Request::discover(A2).frame();
    for _ in 0..3 {
        assert_eq!(
            fx.run_on(other, &theirs).0,
            XDP_TX,
            "the other port is limited too"
        );
    }
    assert_eq!(
        fx.run_on(other, &arp_request(A2, A2_IP, GW)).0,
        XDP_TX,
        "ARP on the other port"
    );
}

#[test]
fn rate_limited_events_are_counted_and_never_reach_the_ring() {
    let limits = RateLimits {
        dhcp: RateLimit::OFF,
        arp: RateLimit::OFF,
        events: RateLimit::per_sec(1, 2),
    };
    let mut fx = Fixture::with_limits(&desired(TEST_IFINDEX), None, &limits);
    let mut release = Request::new(A1, 7);
    release.ciaddr = A1_IP;
    release.ip_src = A1_IP;
    release.ip_dst = GW;
    release.eth_dst = ROUTER_MAC;
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            fx.run(&release.frame()).0,
            XDP_DROP,
            "a RELEASE gets no reply"
        );
    }
    let refilled = started.elapsed().as_secs() + 1;
    let c = fx.counters();
    assert_eq!(
        c[Stat::DhcpRelease as usize],
        10,
        "every RELEASE is counted"
    );
    let limited = c[Stat::DhcpEventsRateLimited as usize];
    let sent = 10 - limited;
    assert!((2..=2 + refilled).contains(&sent), "{sent} events sent");
    let mut ring = fx.dp.take_events().expect("ring");
    let mut read = 0;
    while ring.next().is_some() {
        read += 1;
    }
    assert_eq!(
        read, sent,
        "the ring holds exactly the events within the limit"
    );
    assert_eq!(c[Stat::DhcpEventsLost as usize], 0);
}

/// Default limits with every kind at once, as a real port would carry them, to make sure the
/// program with the limiter on passes the verifier and answers a real client's exchange.
#[test]
fn a_real_clients_exchange_is_within_the_default_limits() {
    let fx = Fixture::with_limits(&desired(TEST_IFINDEX), None, &RateLimits::DEFAULT);
    let deadline = Instant::now() + Duration::from_secs(5);
    // A DORA, an ARP for the gateway and each peer, a renewal, a RELEASE: all answered.
    assert_eq!(fx.run(&Request::discover(A1).frame()).0, XDP_TX);
    assert_eq!(fx.run(&Request::selecting(A1, GW, A1_IP).frame()).0, XDP_TX);
    for target in [GW, A2_IP] {
        assert_eq!(fx.run(&arp_request(A1, A1_IP, target)).0, XDP_TX);
    }
    assert_eq!(
        fx.run(&Request::renewing(A1, A1_IP, GW, ROUTER_MAC).frame())
            .0,
        XDP_TX
    );
    assert!(Instant::now() < deadline);
    let c = fx.counters();
    for s in [
        Stat::DropDhcpRateLimited,
        Stat::DropArpRateLimited,
        Stat::DhcpEventsRateLimited,
    ] {
        assert_eq!(c[s as usize], 0, "{s:?}");
    }
}
