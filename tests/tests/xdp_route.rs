//! Routing in the data plane (issue 16) under BPF_PROG_TEST_RUN: what a VM sends to the router
//! MAC, on both hooks (`xdp::<test>`, `tc::<test>`: `holdfast_vm` and tc mode's
//! `holdfast_vm_tc`; xdp mode's skb path `holdfast_tc` in the hand-over test), and the check a
//! receiving host makes of routed frames (the XDP underlay program: the TC underlay program
//! `holdfast_ul_md` runs the same check, `underlay::inner`, but `BPF_PROG_TEST_RUN` cannot give
//! it a tunnel key; the namespace tests cover it).
//!
//! The routing tables are written by hand, as the agent would for this host: a VPC of networks
//! A and B, and network C of another VPC. The programs run inside a namespace holding an
//! underlay interface with a neighbour for the remote VTEP (`xdp::underlay`).

use std::net::Ipv4Addr;

use agent_common::{
    ArpEntry, ArpKey, Binding6, BindingKey, DataplaneConfig, FdbEntry, FdbKey, ForwarderKey,
    RouteEntry, Stat, VniInfo, stats::STATS_COUNT,
};
use holdfast::{dataplane::Desired, model::Network, render::options};
use holdfast_tests::{
    packet::{checksum, udp_frame},
    rng::Rng,
    xdp::*,
};

const VNI_A: u32 = 1001;
const VNI_B: u32 = 1002;
/// Another VPC's network, carried on this host for its own NIC.
const VNI_C: u32 = 1003;
const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01]; // A, on the test interface
const G: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0xfe]; // A, forwarding (a gateway VM), test interface
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03]; // A, remote, behind REMOTE_VTEP
const RG: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0xfd]; // A, remote and forwarding, behind REMOTE_VTEP
const B1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x01]; // B, local on ifindex 77
const B2: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x02]; // B, remote, behind REMOTE_VTEP
const B3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x03]; // B, remote, behind SILENT_VTEP (no neighbour)
const C1: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x01]; // C, local on ifindex 78
const A1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const A3_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const G_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const RG_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 253);
const B1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
const B2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 12);
const B3_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 13);
const C1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 11);
const GW_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW_B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const GW_C: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// Outside every VPC.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
/// Behind the gateway VM G: network A's route 172.16.0.0/12 via G.
const BEHIND_G: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 5);
const MTU_A: u32 = 1450;
const MTU_B: u32 = 1400;
/// The interfaces of B1 and C1 in the fixture's namespace (veths: a program run as if received
/// on an interface needs one that exists).
const B1_PORT: &str = "vb1";
const C1_PORT: &str = "vc1";
const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SILENT_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// A network of the fixture (the shared test network's settings otherwise, so fields added
/// to the model keep their defaults here).
fn net(id: &str, vni: u32, subnet: &str, gateway: Ipv4Addr, mtu: u32) -> Network {
    Network {
        id: id.into(),
        vni,
        subnet: subnet.parse().unwrap(),
        gateway,
        dns: vec![],
        domain: None,
        search: vec![],
        mtu: Some(mtu as u16),
        routes: vec![],
        ..network()
    }
}

fn desired(ul: &Underlay) -> Desired {
    let mut d = Desired {
        prune: true,
        ..Desired::default()
    };
    let nets = [
        (net("a", VNI_A, "10.0.0.0/24", GW_A, MTU_A), GW_A, MTU_A),
        (net("b", VNI_B, "10.0.1.0/24", GW_B, MTU_B), GW_B, MTU_B),
        (net("c", VNI_C, "10.0.2.0/24", GW_C, MTU_A), GW_C, MTU_A),
    ];
    let local = [
        (0, A1, A1_IP, TEST_IFINDEX),
        (0, G, G_IP, TEST_IFINDEX),
        (1, B1, B1_IP, ul.ns.ifindex(B1_PORT)),
        (2, C1, C1_IP, ul.ns.ifindex(C1_PORT)),
    ];
    for (i, mac, ip, ifindex) in local {
        let net = &nets[i].0;
        let mut n = nic(mac, ip);
        n.network = net.id.as_str().into();
        d.bindings.insert(
            BindingKey::new(ifindex, mac),
            options::render(net, &n).unwrap(),
        );
        d.fdb.insert(
            FdbKey::new(net.vni, mac),
            FdbEntry::local(ifindex, be32(ip)),
        );
    }
    for (vni, mac, ip, vtep) in [
        (VNI_A, A3, A3_IP, REMOTE_VTEP),
        (VNI_A, RG, RG_IP, REMOTE_VTEP),
        (VNI_B, B2, B2_IP, REMOTE_VTEP),
        (VNI_B, B3, B3_IP, SILENT_VTEP),
    ] {
        d.fdb.insert(
            FdbKey::new(vni, mac),
            FdbEntry::remote(be32(vtep), be32(ip)),
        );
    }
    for (vni, ip, mac) in [
        (VNI_A, A1_IP, A1),
        (VNI_A, G_IP, G),
        (VNI_A, A3_IP, A3),
        (VNI_A, RG_IP, RG),
        (VNI_A, GW_A, ROUTER_MAC),
        (VNI_B, B1_IP, B1),
        (VNI_B, B2_IP, B2),
        (VNI_B, B3_IP, B3),
        (VNI_B, GW_B, ROUTER_MAC),
        (VNI_C, C1_IP, C1),
        (VNI_C, GW_C, ROUTER_MAC),
    ] {
        d.arp
            .insert(ArpKey { vni, ip: be32(ip) }, ArpEntry { mac, _pad: [0; 2] });
    }
    for (n, gateway, mtu) in &nets {
        d.vnis.insert(
            n.vni,
            VniInfo {
                gateway: be32(*gateway),
                mtu: *mtu,
            },
        );
    }
    for vtep in [REMOTE_VTEP, SILENT_VTEP] {
        d.vteps.insert(be32(vtep), 1);
    }
    d.config = DataplaneConfig {
        vtep: be32(LOCAL_VTEP),
        underlay_ifindex: ul.ifindex,
        fib_ifindex: ul.anchor,
        _pad: 0,
    };
    d
}

fn entry(kind: u32, vni: u32, via: Ipv4Addr) -> RouteEntry {
    RouteEntry {
        kind,
        vni,
        via: be32(via),
        _pad: 0,
    }
}

/// The tables of the design (common16): for A and B, every subnet and gateway of their VPC;
/// A's route 172.16.0.0/12 via the forwarding NIC G; C's own. FORWARDING: G and RG.
/// FORWARDERS: network A from the remote VTEP (it hosts RG).
fn routing(fx: &Fixture) {
    let none = Ipv4Addr::UNSPECIFIED;
    let mut routes = Vec::new();
    for table in [VNI_A, VNI_B] {
        routes.extend([
            (
                table,
                Ipv4Addr::new(10, 0, 0, 0),
                24,
                entry(RouteEntry::SUBNET, VNI_A, none),
            ),
            (
                table,
                Ipv4Addr::new(10, 0, 1, 0),
                24,
                entry(RouteEntry::SUBNET, VNI_B, none),
            ),
            (table, GW_A, 32, entry(RouteEntry::GATEWAY, VNI_A, none)),
            (table, GW_B, 32, entry(RouteEntry::GATEWAY, VNI_B, none)),
        ]);
    }
    routes.extend([
        (
            VNI_A,
            Ipv4Addr::new(172, 16, 0, 0),
            12,
            entry(RouteEntry::VIA, VNI_A, G_IP),
        ),
        (
            VNI_C,
            Ipv4Addr::new(10, 0, 2, 0),
            24,
            entry(RouteEntry::SUBNET, VNI_C, none),
        ),
        (VNI_C, GW_C, 32, entry(RouteEntry::GATEWAY, VNI_C, none)),
    ]);
    fx.insert_routing(
        &routes,
        &[FdbKey::new(VNI_A, G), FdbKey::new(VNI_A, RG)],
        &[ForwarderKey {
            vni: VNI_A,
            vtep: be32(REMOTE_VTEP),
        }],
    );
}

fn fixture() -> (Fixture, Underlay) {
    let ul = underlay();
    for port in [B1_PORT, C1_PORT] {
        let peer = format!("{port}p");
        ul.ns
            .ip(&["link", "add", port, "type", "veth", "peer", "name", &peer]);
        ul.ns.ip(&["link", "set", port, "up"]);
    }
    let fx = Fixture::with(&desired(&ul), Some(ul.ns.path()));
    routing(&fx);
    (fx, ul)
}

/// An Ethernet and IPv4 frame (20-byte header, DF, checksum right) carrying `l4` as `proto`.
#[allow(clippy::too_many_arguments)]
fn ipv4(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// An ICMP message: `kind`, `code`, its checksum, then `rest`.
fn icmp(kind: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(rest);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP echo request (identifier 0x4242, sequence 7) with 56 bytes of data.
fn echo() -> Vec<u8> {
    let mut rest = vec![0x42, 0x42, 0, 7];
    rest.extend((0..56u8).map(|i| i.wrapping_mul(7)));
    icmp(8, 0, &rest)
}

/// UDP from `src` (at `mac`) to `dst` through the router MAC, TTL `ttl`, checksums complete.
fn udp_via_router(mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    with_ttl(
        &udp_frame(mac, ROUTER_MAC, src, dst, 40000, 5201, &[0x5a; 100], false),
        ttl,
    )
}

/// `f` with TTL `ttl`, its header checksum right.
fn with_ttl(f: &[u8], ttl: u8) -> Vec<u8> {
    let mut f = f.to_vec();
    f[22] = ttl;
    fix_ip_checksum(&mut f);
    f
}

fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].fill(0);
    let c = checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn ip(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

/// Asserts that `out` is `sent` routed to the NIC at `mac`: from the router MAC, TTL one less,
/// the header checksum right, every other byte as sent.
fn assert_routed(sent: &[u8], out: &[u8], mac: [u8; 6]) {
    assert_eq!(out.len(), sent.len(), "a routed frame keeps its length");
    assert_eq!(out[0..6], mac, "to the NIC's MAC");
    assert_eq!(out[6..12], ROUTER_MAC, "from the router MAC");
    assert_eq!(out[12..22], sent[12..22]);
    assert_eq!(out[22], sent[22] - 1, "TTL decremented once");
    assert_eq!(out[23], sent[23]);
    assert_eq!(checksum(&out[14..34]), 0, "IPv4 header checksum");
    assert_eq!(out[26..], sent[26..], "addresses and payload as sent");
}

/// Asserts that `out` is `sent` encapsulated toward `vtep` in network `vni`, the inner frame
/// routed to `mac`.
fn assert_encapsulated(
    ul: &Underlay,
    sent: &[u8],
    out: &[u8],
    vtep: Ipv4Addr,
    vni: u32,
    mac: [u8; 6],
) {
    assert_eq!(out.len(), sent.len() + 50, "VXLAN adds 50 bytes");
    if vtep == REMOTE_VTEP {
        assert_eq!(out[0..6], NEIGH_MAC);
        assert_eq!(out[6..12], ul.mac);
    } else {
        assert_eq!(
            out[0..12],
            [0; 12],
            "the neighbour output fills the MACs in"
        );
    }
    assert_eq!(checksum(&out[14..34]), 0, "outer IPv4 checksum");
    assert_eq!((ip(out, 26), ip(out, 30)), (LOCAL_VTEP, vtep));
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 4789);
    let v = vni.to_be_bytes();
    assert_eq!(
        out[42..50],
        [0x08, 0, 0, 0, v[1], v[2], v[3], 0],
        "the destination network's VNI"
    );
    assert_routed(sent, &out[50..], mac);
}

/// Asserts that `out` is the ICMP error (`kind`, `code`) from `from` about `sent`, back to its
/// sender: RFC 792's layout, its IPv4 header and its first 8 bytes of data quoted.
fn assert_icmp_error(sent: &[u8], out: &[u8], from: Ipv4Addr, kind: u8, code: u8) {
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "{out:02x?}");
    assert_eq!(out[0..6], sent[6..12], "back to the sender's MAC");
    assert_eq!(out[6..12], ROUTER_MAC);
    assert_eq!(out[12..14], [0x08, 0x00]);
    assert_eq!(checksum(&out[14..34]), 0, "IPv4 checksum");
    assert_eq!(out[23], 1, "ICMP");
    assert_eq!(ip(out, 26), from, "from the sending network's gateway");
    assert_eq!(ip(out, 30), ip(sent, 26), "to the sender's address");
    assert_eq!((out[34], out[35]), (kind, code), "type and code");
    assert_eq!(checksum(&out[34..]), 0, "ICMP checksum");
    assert_eq!(out[38..42], [0; 4], "unused");
    assert_eq!(out[42..], sent[14..42], "the IP header and 8 bytes quoted");
}

/// The counters' totals.
fn counters(fx: &Fixture) -> Vec<u64> {
    fx.counters()
}

/// Asserts that since `before`, exactly the counters in `moved` moved, each by its count:
/// nothing outside the test's scope was counted.
fn assert_moved(fx: &Fixture, before: &[u64], moved: &[(Stat, u64)]) {
    let after = counters(fx);
    let mut expected = before.to_vec();
    for (s, n) in moved {
        expected[*s as usize] += n;
    }
    let diff: Vec<(usize, u64, u64)> = (0..STATS_COUNT as usize)
        .filter(|i| after[*i] != expected[*i])
        .map(|i| (i, expected[i] - before[i], after[i] - before[i]))
        .collect();
    assert!(
        diff.is_empty(),
        "counters (index, expected, moved): {diff:?}"
    );
}

holdfast_tests::for_each_hook!(
    a_frame_to_another_network_of_the_vpc_is_routed_to_a_local_nic,
    a_frame_to_a_remote_nic_is_encapsulated_in_the_destination_networks_vni,
    the_gateway_answers_echo_and_drops_everything_else,
    an_expiring_ttl_gets_time_exceeded_from_the_gateway,
    destinations_without_a_route_or_a_nic_get_unreachable,
    only_a_forwarding_nic_may_send_a_foreign_source,
    a_route_via_a_forwarding_nic_reaches_it,
    no_icmp_error_answers_an_error_a_later_fragment_or_no_host,
    what_the_router_cannot_route_is_dropped,
    randomized_frames_to_the_router_are_routed_whole_or_answered,
);

fn a_frame_to_another_network_of_the_vpc_is_routed_to_a_local_nic(hook: VmHook) {
    let (fx, ul) = fixture();
    let before = counters(&fx);
    let sent = udp_via_router(A1, A1_IP, B1_IP, 64);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&sent, &out, B1);
    assert_moved(
        &fx,
        &before,
        &[(forward_stats(hook).0, 1), (Stat::Routed, 1)],
    );
    // Within the network, the router MAC routes too (a VM with an on-link route of its own).
    let sent = udp_via_router(A1, A1_IP, G_IP, 2);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&sent, &out, G);
    // And back: B1 to A1.
    let back_sent = with_ttl(
        &udp_frame(B1, ROUTER_MAC, B1_IP, A1_IP, 5201, 40000, &[1; 64], false),
        64,
    );
    let (verdict, out) = fx.run_port_on(hook, ul.ns.ifindex(B1_PORT), &back_sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&back_sent, &out, A1);
}

fn a_frame_to_a_remote_nic_is_encapsulated_in_the_destination_networks_vni(hook: VmHook) {
    let (fx, ul) = fixture();
    let before = counters(&fx);
    let sent = udp_via_router(A1, A1_IP, B2_IP, 64);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_encapsulated(&ul, &sent, &out, REMOTE_VTEP, VNI_B, B2);
    assert_moved(
        &fx,
        &before,
        &[(forward_stats(hook).1, 1), (Stat::Routed, 1)],
    );
    // A TTL of 2 is routed (and arrives with 1).
    let sent = udp_via_router(A1, A1_IP, B2_IP, 2);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_eq!(out[50 + 22], 1);
}

fn the_gateway_answers_echo_and_drops_everything_else(hook: VmHook) {
    let (fx, _ul) = fixture();
    // Its own network's gateway, another network's of the VPC; a TTL of 1 is no matter: the
    // echo is for the router itself.
    for (gw, ttl) in [(GW_A, 64), (GW_B, 64), (GW_A, 1)] {
        let before = counters(&fx);
        let sent = ipv4(A1, ROUTER_MAC, A1_IP, gw, ttl, 1, &echo());
        let (verdict, out) = fx.run_port(hook, &sent);
        assert_eq!(verdict, back(hook), "{gw}");
        assert_eq!(out.len(), sent.len());
        assert_eq!(out[0..6], A1);
        assert_eq!(out[6..12], ROUTER_MAC);
        assert_eq!(checksum(&out[14..34]), 0, "IPv4 checksum");
        assert_eq!((ip(&out, 26), ip(&out, 30)), (gw, A1_IP));
        assert_eq!((out[22], out[23]), (64, 1));
        assert_eq!((out[34], out[35]), (0, 0), "echo reply");
        assert_eq!(checksum(&out[34..]), 0, "ICMP checksum");
        assert_eq!(
            out[38..],
            sent[38..],
            "identifier, sequence and data as sent"
        );
        assert_moved(&fx, &before, &[(Stat::GatewayEchoReply, 1)]);
    }
    // Anything else to a gateway: UDP, TCP, other ICMP (a timestamp request, an echo reply).
    let mut tcp = udp_via_router(A1, A1_IP, GW_A, 64);
    tcp[23] = 6;
    fix_ip_checksum(&mut tcp);
    for (what, f) in [
        ("UDP", udp_via_router(A1, A1_IP, GW_A, 64)),
        ("TCP", tcp),
        (
            "a timestamp request",
            ipv4(A1, ROUTER_MAC, A1_IP, GW_B, 64, 1, &icmp(13, 0, &[0; 16])),
        ),
        (
            "an echo reply",
            ipv4(A1, ROUTER_MAC, A1_IP, GW_A, 64, 1, &icmp(0, 0, &[0; 16])),
        ),
        (
            "an echo request with a code",
            ipv4(A1, ROUTER_MAC, A1_IP, GW_A, 64, 1, &icmp(8, 1, &[0; 16])),
        ),
    ] {
        let before = counters(&fx);
        let (verdict, _) = fx.run_port(hook, &f);
        assert_eq!(verdict, Verdict::Drop, "{what}");
        assert_moved(&fx, &before, &[(Stat::DropToGateway, 1)]);
    }
    // A fragment of an echo: it would have to be reassembled.
    let mut frag = ipv4(A1, ROUTER_MAC, A1_IP, GW_A, 64, 1, &echo());
    frag[20] = 0x20; // more fragments
    fix_ip_checksum(&mut frag);
    dropped_at(&fx, hook, &frag, Stat::DropRouteUnsupported);
    // Another VPC's gateway is no gateway of A's: an unknown destination.
    let sent = ipv4(A1, ROUTER_MAC, A1_IP, GW_C, 64, 1, &echo());
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, back(hook));
    assert_icmp_error(&sent, &out, GW_A, 3, 0);
}

fn an_expiring_ttl_gets_time_exceeded_from_the_gateway(hook: VmHook) {
    let (fx, ul) = fixture();
    for (dst, ttl) in [(B1_IP, 1), (B2_IP, 1), (BEHIND_G, 1), (B1_IP, 0)] {
        let before = counters(&fx);
        let sent = udp_via_router(A1, A1_IP, dst, ttl);
        let (verdict, out) = fx.run_port(hook, &sent);
        assert_eq!(verdict, back(hook), "{dst} TTL {ttl}");
        assert_icmp_error(&sent, &out, GW_A, 11, 0);
        assert_moved(&fx, &before, &[(Stat::IcmpTimeExceeded, 1)]);
    }
    // An echo request is no error: a traceroute by ICMP gets its answer too. From B, B's
    // gateway answers.
    let sent = ipv4(B1, ROUTER_MAC, B1_IP, A1_IP, 1, 1, &echo());
    let (verdict, out) = fx.run_port_on(hook, ul.ns.ifindex(B1_PORT), &sent);
    assert_eq!(verdict, back(hook));
    assert_icmp_error(&sent, &out, GW_B, 11, 0);
}

fn destinations_without_a_route_or_a_nic_get_unreachable(hook: VmHook) {
    let (fx, ul) = fixture();
    for (what, dst, code, stat) in [
        ("outside the VPC", OUTSIDE, 0, Stat::IcmpNetUnreachable),
        (
            "another VPC's NIC, carried on this host",
            C1_IP,
            0,
            Stat::IcmpNetUnreachable,
        ),
        (
            "a subnet's address no NIC has",
            Ipv4Addr::new(10, 0, 1, 99),
            1,
            Stat::IcmpHostUnreachable,
        ),
    ] {
        let before = counters(&fx);
        let sent = udp_via_router(A1, A1_IP, dst, 64);
        let (verdict, out) = fx.run_port(hook, &sent);
        assert_eq!(verdict, back(hook), "{what}");
        assert_icmp_error(&sent, &out, GW_A, 3, code);
        assert_moved(&fx, &before, &[(stat, 1)]);
    }
    // And the other way: C1 reaches nothing of A's VPC, whose addresses are not in its table.
    let sent = with_ttl(
        &udp_frame(C1, ROUTER_MAC, C1_IP, A1_IP, 1, 2, &[3; 40], false),
        64,
    );
    let (verdict, out) = fx.run_port_on(hook, ul.ns.ifindex(C1_PORT), &sent);
    assert_eq!(verdict, back(hook));
    assert_icmp_error(&sent, &out, GW_C, 3, 0);
}

fn only_a_forwarding_nic_may_send_a_foreign_source(hook: VmHook) {
    let (fx, _ul) = fixture();
    // A1 does not forward: another source is dropped, routed or bridged, as before routing.
    dropped_at(
        &fx,
        hook,
        &udp_via_router(A1, OUTSIDE, B1_IP, 64),
        Stat::DropSpoofedIp,
    );
    dropped_at(
        &fx,
        hook,
        &udp_frame(A1, A3, OUTSIDE, A3_IP, 1, 2, &[0; 32], false),
        Stat::DropSpoofedIp,
    );
    // Nor with another port's forwarding MAC: a forwarding NIC's MAC is still enforced.
    dropped_at(
        &fx,
        hook,
        &udp_via_router(RG, OUTSIDE, B1_IP, 64),
        Stat::DropSpoofedMac,
    );
    // G forwards, but never speaks for the VPC: another VM's address, an address of a subnet
    // no NIC holds, a gateway's, routed or bridged, are dropped on its own host as across.
    for src in [A3_IP, B2_IP, Ipv4Addr::new(10, 0, 1, 77), GW_B] {
        dropped_at(
            &fx,
            hook,
            &udp_via_router(G, src, B1_IP, 64),
            Stat::DropSpoofedIp,
        );
        dropped_at(
            &fx,
            hook,
            &udp_frame(G, A3, src, A3_IP, 1, 2, &[0; 32], false),
            Stat::DropSpoofedIp,
        );
    }
    // G forwards: traffic from outside, routed to B1 and bridged to A3, keeps its source.
    let before = counters(&fx);
    let sent = udp_via_router(G, OUTSIDE, B1_IP, 64);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&sent, &out, B1);
    let bridged = udp_frame(G, A3, OUTSIDE, A3_IP, 1, 2, &[0; 32], false);
    let (verdict, out) = fx.run_port(hook, &bridged);
    assert_eq!(verdict, Verdict::Redirect);
    assert_eq!(out.len(), bridged.len() + 50);
    assert_eq!(ip(&out, 30), REMOTE_VTEP);
    assert_eq!(out[50..], bridged[..], "bridged as sent");
    let (local, encap) = forward_stats(hook);
    assert_moved(&fx, &before, &[(local, 1), (encap, 1), (Stat::Routed, 1)]);
}

fn a_route_via_a_forwarding_nic_reaches_it(hook: VmHook) {
    let (fx, ul) = fixture();
    let before = counters(&fx);
    let sent = udp_via_router(A1, A1_IP, BEHIND_G, 64);
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&sent, &out, G);
    assert_moved(
        &fx,
        &before,
        &[(forward_stats(hook).0, 1), (Stat::Routed, 1)],
    );
    // B has no such route: the same destination is unreachable from there.
    let sent = with_ttl(
        &udp_frame(B1, ROUTER_MAC, B1_IP, BEHIND_G, 1, 2, &[3; 40], false),
        64,
    );
    let (verdict, out) = fx.run_port_on(hook, ul.ns.ifindex(B1_PORT), &sent);
    assert_eq!(verdict, back(hook));
    assert_icmp_error(&sent, &out, GW_B, 3, 0);
}

fn no_icmp_error_answers_an_error_a_later_fragment_or_no_host(hook: VmHook) {
    let (fx, _ul) = fixture();
    let quoted = &udp_via_router(A1, A1_IP, OUTSIDE, 64)[14..42];
    let mut later = udp_via_router(A1, A1_IP, OUTSIDE, 64);
    later[20..22].copy_from_slice(&[0x00, 0x10]); // offset 16 (128 bytes), the last fragment
    fix_ip_checksum(&mut later);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(quoted);
    for (what, f) in [
        (
            "a destination unreachable, to nowhere",
            ipv4(A1, ROUTER_MAC, A1_IP, OUTSIDE, 64, 1, &icmp(3, 1, &rest)),
        ),
        (
            "a time exceeded, expiring",
            ipv4(A1, ROUTER_MAC, A1_IP, B1_IP, 1, 1, &icmp(11, 0, &rest)),
        ),
        (
            "a parameter problem, to no NIC",
            ipv4(
                A1,
                ROUTER_MAC,
                A1_IP,
                Ipv4Addr::new(10, 0, 1, 99),
                64,
                1,
                &icmp(12, 0, &rest),
            ),
        ),
        ("a later fragment, to nowhere", later),
        (
            "from 0.0.0.0 (a forwarding NIC may send it)",
            udp_via_router(G, Ipv4Addr::UNSPECIFIED, OUTSIDE, 64),
        ),
        (
            "from a multicast address",
            udp_via_router(G, Ipv4Addr::new(224, 0, 0, 5), B1_IP, 1),
        ),
    ] {
        let before = counters(&fx);
        let (verdict, _) = fx.run_port(hook, &f);
        assert_eq!(verdict, Verdict::Drop, "{what}");
        assert_moved(&fx, &before, &[(Stat::DropRouteSilent, 1)]);
    }
    // An echo request is no error: it gets one.
    let sent = ipv4(A1, ROUTER_MAC, A1_IP, OUTSIDE, 64, 1, &echo());
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, back(hook));
    assert_icmp_error(&sent, &out, GW_A, 3, 0);
    // And an error about to be routed is routed like any datagram.
    let sent = ipv4(A1, ROUTER_MAC, A1_IP, B1_IP, 64, 1, &icmp(3, 3, &rest));
    let (verdict, out) = fx.run_port(hook, &sent);
    assert_eq!(verdict, Verdict::Redirect);
    assert_routed(&sent, &out, B1);
}

fn what_the_router_cannot_route_is_dropped(hook: VmHook) {
    let (fx, _ul) = fixture();
    // IP options (Router Alert, RFC 2113).
    let plain = udp_via_router(A1, A1_IP, B1_IP, 64);
    let mut opts = plain[..34].to_vec();
    opts.extend_from_slice(&[0x94, 0x04, 0, 0]);
    opts.extend_from_slice(&plain[34..]);
    opts[14] = 0x46;
    let total = u16::from_be_bytes([opts[16], opts[17]]) + 4;
    opts[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut opts);
    for (what, f) in [
        ("IP options", opts),
        (
            "a multicast group",
            udp_via_router(A1, A1_IP, Ipv4Addr::new(239, 1, 2, 3), 64),
        ),
        (
            "the limited broadcast",
            udp_via_router(A1, A1_IP, Ipv4Addr::BROADCAST, 64),
        ),
    ] {
        let before = counters(&fx);
        let (verdict, _) = fx.run_port(hook, &f);
        assert_eq!(verdict, Verdict::Drop, "{what}");
        assert_moved(&fx, &before, &[(Stat::DropRouteUnsupported, 1)]);
    }
    // IPv6 to the router MAC, from the NIC's own address: not routed, still `ToRouter`.
    let a1_ip6 = std::net::Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x11);
    fx.insert_v6(
        &[(
            BindingKey::new(TEST_IFINDEX, A1),
            Binding6 {
                ip6: a1_ip6.octets(),
                vni: VNI_A,
                _pad: 0,
            },
        )],
        &[],
        &[],
    );
    let mut v6 = Vec::new();
    v6.extend_from_slice(&ROUTER_MAC);
    v6.extend_from_slice(&A1);
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 17, 64]);
    v6.extend_from_slice(&a1_ip6.octets());
    v6.extend_from_slice(&std::net::Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, 0, 0x11).octets());
    v6.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 16, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7]);
    let before = counters(&fx);
    let (verdict, _) = fx.run_port(hook, &v6);
    assert_eq!(verdict, Verdict::Drop);
    assert_moved(&fx, &before, &[(Stat::ToRouter, 1)]);
}

/// A TC program run on a frame and an skb: its action and the frame it left.
type Run<'a> = dyn Fn(&[u8], &Skb) -> (i32, Vec<u8>) + 'a;

/// What XDP cannot carry whole it hands to the skb path untouched, routed frames included, and
/// both TC programs route it: a frame over the destination network's MTU (B's, below the
/// sender's) gets a fragmentation-needed with that MTU from the sending network's gateway; a
/// next hop the kernel has not resolved goes through its neighbour output, routed.
#[test]
fn what_xdp_hands_over_the_skb_path_routes() {
    let (fx, ul) = fixture();
    // 1,420 bytes of IP: within A's MTU (1,450), over B's (1,400).
    let big = with_ttl(
        &udp_frame(A1, ROUTER_MAC, A1_IP, B1_IP, 1, 2, &[7u8; 1392], false),
        64,
    );
    let to_silent = udp_via_router(A1, A1_IP, B3_IP, 64);
    let before = counters(&fx);
    for f in [&big, &to_silent] {
        let (action, out) = fx.run(f);
        assert_eq!(action, XDP_PASS);
        assert_eq!(&out, f, "handed over untouched");
    }
    assert_moved(&fx, &before, &[(Stat::ToSkbPath, 2)]);
    let runs: [(&str, &Run<'_>); 2] = [
        ("skb path", &|f, skb| fx.run_tc_with(f, skb)),
        ("tc mode", &|f, skb| fx.run_vm_tc_with(f, skb)),
    ];
    for (what, run) in runs {
        let before = counters(&fx);
        let (action, out) = run(&big, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: oversized");
        assert_eq!(out.len(), 70);
        assert_eq!(
            ip(&out, 26),
            GW_A,
            "{what}: from the sending network's gateway"
        );
        assert_eq!((out[34], out[35]), (3, 4), "{what}: fragmentation needed");
        assert_eq!(
            u16::from_be_bytes([out[40], out[41]]) as u32,
            MTU_B,
            "{what}: the destination network's MTU"
        );
        assert_eq!(checksum(&out[34..]), 0);
        assert_eq!(out[42..], big[14..42]);
        let (action, out) = run(&to_silent, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: unresolved");
        assert_encapsulated(&ul, &to_silent, &out, SILENT_VTEP, VNI_B, B3);
        assert_moved(
            &fx,
            &before,
            &[
                (Stat::IcmpFragNeeded, 1),
                (Stat::SkbEncap, 1),
                (Stat::Routed, 1),
            ],
        );
        // Everything else routes there as in XDP (a port whose XDP program is gone): the
        // gateway's echo, an expiring TTL, a local NIC of another network.
        let echo_req = ipv4(A1, ROUTER_MAC, A1_IP, GW_B, 64, 1, &echo());
        let (action, out) = run(&echo_req, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: echo");
        assert_eq!((ip(&out, 26), out[34]), (GW_B, 0), "{what}: echo reply");
        let expiring = udp_via_router(A1, A1_IP, B1_IP, 1);
        let (action, out) = run(&expiring, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: TTL 1");
        assert_icmp_error(&expiring, &out, GW_A, 11, 0);
        let to_b1 = udp_via_router(A1, A1_IP, B1_IP, 64);
        let (action, out) = run(&to_b1, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: to B1");
        assert_routed(&to_b1, &out, B1);
    }
}

/// A routed frame's inner source MAC is the router MAC, so a receiving host cannot check it
/// against the sending NIC's: it checks that the sending VTEP may speak for the inner IPv4
/// source instead. A NIC of the VPC must be behind that VTEP; a source outside the VPC must
/// come from a VTEP hosting a forwarding NIC of it (`FORWARDERS`). Everything else is
/// `DropRoutedSpoof`, and nothing is decapsulated.
#[test]
fn routed_frames_are_delivered_only_from_hosts_that_may_speak_for_their_source() {
    let (fx, _ul) = fixture();
    let routed = |src: Ipv4Addr| {
        with_ttl(
            &udp_frame(ROUTER_MAC, A1, src, A1_IP, 5201, 40000, &[9; 64], false),
            63,
        )
    };
    // Delivered: a NIC of B behind the sending VTEP; sources outside the VPC (one behind A's
    // route via G among them) from the VTEP hosting RG, a forwarding NIC of the VPC; another
    // VPC's address is outside this one.
    for (src, vtep) in [
        (B2_IP, REMOTE_VTEP),
        (OUTSIDE, REMOTE_VTEP),
        (BEHIND_G, REMOTE_VTEP),
        (C1_IP, REMOTE_VTEP),
    ] {
        let inner = routed(src);
        let before = counters(&fx);
        let (action, out) = fx.run_underlay(&vxlan(vtep, LOCAL_VTEP, VNI_A, &inner));
        assert_eq!(action, XDP_REDIRECT, "{src} from {vtep}");
        assert_eq!(out, inner);
        assert_moved(&fx, &before, &[(Stat::VxlanDecap, 1)]);
    }
    // Refused: B2 from a VTEP that is not its host; B3 (behind the silent VTEP) from the remote
    // one; outside sources from a VTEP with no forwarding NIC of the VPC; an address of the
    // VPC's subnets no NIC has, or a gateway's, even from the VTEP with a forwarder; a local
    // NIC's address.
    for (src, vtep) in [
        (B2_IP, SILENT_VTEP),
        (B3_IP, REMOTE_VTEP),
        (OUTSIDE, SILENT_VTEP),
        (BEHIND_G, SILENT_VTEP),
        (Ipv4Addr::new(10, 0, 1, 99), REMOTE_VTEP),
        (GW_B, REMOTE_VTEP),
        (GW_A, REMOTE_VTEP),
        (B1_IP, REMOTE_VTEP),
        (A1_IP, REMOTE_VTEP),
    ] {
        let before = counters(&fx);
        dropped_on_underlay(
            &fx,
            &vxlan(vtep, LOCAL_VTEP, VNI_A, &routed(src)),
            Stat::DropRoutedSpoof,
        );
        assert_moved(&fx, &before, &[(Stat::DropRoutedSpoof, 1)]);
    }
    // Routed TCP goes up for GRO like bridged TCP.
    let mut tcp = routed(B2_IP);
    tcp[23] = 6;
    fix_ip_checksum(&mut tcp);
    let (action, _) = fx.run_underlay(&vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &tcp));
    assert_eq!(action, XDP_PASS);
    // IPv6 is not routed: from the router MAC it is no NIC's frame, as before.
    let mut v6 = Vec::new();
    v6.extend_from_slice(&A1);
    v6.extend_from_slice(&ROUTER_MAC);
    v6.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 17, 64]);
    v6.extend_from_slice(&[0xfd; 16]);
    v6.extend_from_slice(&[0xfd; 16]);
    v6.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 16, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7]);
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &v6),
        Stat::DropInnerSpoof,
    );
}

/// A forwarding NIC's bridged frames carry any inner IPv4 source across the underlay; its MAC
/// is still checked against its host, and any other NIC's source still is its own address.
#[test]
fn a_forwarding_nic_may_send_a_foreign_source_across_the_underlay() {
    let (fx, _ul) = fixture();
    let from =
        |mac: [u8; 6], src: Ipv4Addr| udp_frame(mac, A1, src, A1_IP, 5201, 40000, &[9; 64], false);
    let inner = from(RG, OUTSIDE);
    let before = counters(&fx);
    let (action, out) = fx.run_underlay(&vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &inner));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, inner);
    assert_moved(&fx, &before, &[(Stat::VxlanDecap, 1)]);
    for (what, frame, stat) in [
        (
            "a NIC that does not forward",
            vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &from(A3, OUTSIDE)),
            Stat::DropInnerSpoofedIp,
        ),
        (
            "the forwarding NIC from a VTEP that is not its host",
            vxlan(SILENT_VTEP, LOCAL_VTEP, VNI_A, &from(RG, OUTSIDE)),
            Stat::DropInnerSpoof,
        ),
        (
            "the forwarding NIC with another VM's address",
            vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &from(RG, B1_IP)),
            Stat::DropInnerSpoofedIp,
        ),
        (
            "the forwarding NIC with an address of the VPC no NIC holds",
            vxlan(
                REMOTE_VTEP,
                LOCAL_VTEP,
                VNI_A,
                &from(RG, Ipv4Addr::new(10, 0, 1, 77)),
            ),
            Stat::DropInnerSpoofedIp,
        ),
        (
            "the forwarding NIC with a gateway's address",
            vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &from(RG, GW_A)),
            Stat::DropInnerSpoofedIp,
        ),
        (
            "the forwarding NIC in a network where it does not forward",
            vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_B, &{
                let mut f = from(RG, OUTSIDE);
                f[0..6].copy_from_slice(&B1);
                f
            }),
            Stat::DropInnerSpoof,
        ),
    ] {
        let before = counters(&fx);
        let (action, _) = fx.run_underlay(&frame);
        assert_eq!(action, XDP_DROP, "{what}");
        assert_moved(&fx, &before, &[(stat, 1)]);
    }
}

/// A remote NIC's VTEP and network.
type Remote = (Ipv4Addr, u32);

/// Where the NIC at `dst` is, as the tables of [`routing`] route A's frames: its MAC, and for a
/// remote one its VTEP and network.
fn expected_nic(dst: Ipv4Addr) -> Option<([u8; 6], Option<Remote>)> {
    if u32::from(dst) >> 20 == u32::from(Ipv4Addr::new(172, 16, 0, 0)) >> 20 {
        return Some((G, None));
    }
    Some(match dst {
        A1_IP => (A1, None),
        G_IP => (G, None),
        B1_IP => (B1, None),
        A3_IP => (A3, Some((REMOTE_VTEP, VNI_A))),
        RG_IP => (RG, Some((REMOTE_VTEP, VNI_A))),
        B2_IP => (B2, Some((REMOTE_VTEP, VNI_B))),
        B3_IP => (B3, Some((SILENT_VTEP, VNI_B))),
        _ => return None,
    })
}

/// Asserts that `out` is the (possibly mutated) `sent` routed to `mac`: what [`assert_routed`]
/// checks, but a header checksum that was wrong stays wrong (the router does not repair what
/// it did not break), and XDP completes the TCP or UDP checksum of an unfragmented datagram.
fn assert_routed_as_sent(hook: VmHook, sent: &[u8], out: &[u8], mac: [u8; 6]) {
    assert_eq!(out.len(), sent.len());
    assert_eq!(out[0..6], mac, "to the NIC of the destination");
    assert_eq!(out[6..12], ROUTER_MAC);
    assert_eq!(out[12..22], sent[12..22]);
    assert_eq!((out[22], out[23]), (sent[22] - 1, sent[23]), "TTL");
    if checksum(&sent[14..34]) == 0 {
        assert_eq!(checksum(&out[14..34]), 0, "IPv4 header checksum");
    }
    let fragment = u16::from_be_bytes([sent[20], sent[21]]) & 0x3fff != 0;
    let l4_check = match sent[23] {
        6 if hook == VmHook::Xdp && !fragment => Some(50),
        17 if hook == VmHook::Xdp && !fragment => Some(40),
        _ => None,
    };
    for i in 26..sent.len() {
        if l4_check.is_some_and(|c| i == c || i == c + 1) {
            continue;
        }
        assert_eq!(out[i], sent[i], "byte {i} changed");
    }
}

/// Random mutations of frames to the router MAC (to local, remote and unresolved NICs of the
/// VPC, through a route via a gateway VM, to the gateway, to nowhere; expiring or not; from a
/// NIC and from the forwarding NIC with a foreign source), on each hook. Nothing may crash the
/// programs; tc mode hands nothing on, and XDP only untouched frames; whatever the counters
/// say happened, the frame shows: an echo reply or an ICMP error well-formed back to the sender,
/// a routed frame to the NIC its destination names, whole, or well-formed VXLAN carrying it in
/// that NIC's network. Every outcome is counted once (routed frames twice: `Routed` and their
/// delivery).
fn randomized_frames_to_the_router_are_routed_whole_or_answered(hook: VmHook) {
    let (fx, _ul) = fixture();
    let mut seeds = Vec::new();
    for dst in [B1_IP, B2_IP, B3_IP, A3_IP, G_IP, BEHIND_G, OUTSIDE, C1_IP] {
        for ttl in [64, 1] {
            seeds.push(udp_via_router(A1, A1_IP, dst, ttl));
        }
    }
    seeds.push(udp_via_router(G, OUTSIDE, B2_IP, 9));
    seeds.push(udp_via_router(A1, A1_IP, Ipv4Addr::new(10, 0, 1, 99), 9));
    for gw in [GW_A, GW_B] {
        seeds.push(ipv4(A1, ROUTER_MAC, A1_IP, gw, 64, 1, &echo()));
    }
    seeds.push(ipv4(A1, ROUTER_MAC, A1_IP, OUTSIDE, 64, 1, &echo()));
    let mut rng = Rng::new(0x0016_5eed);
    let (mut routed, mut answered) = (0u64, 0u64);
    for _ in 0..3_000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(3) {
            // Mostly the headers.
            let i = if rng.below(5) == 0 {
                rng.below(f.len())
            } else {
                rng.below(50.min(f.len()))
            };
            f[i] = rng.next_u64() as u8;
        }
        if rng.below(8) != 0 && f[14] >> 4 == 4 && (5..=15).contains(&(f[14] & 0x0f)) {
            fix_ip_checksum(&mut f);
        }
        let before = counters(&fx);
        let Some((verdict, out)) = fx.try_run_port(hook, &f) else {
            continue;
        };
        let after = counters(&fx);
        let moved = |s: Stat| after[s as usize] - before[s as usize];
        let total: u64 = after.iter().sum::<u64>() - before.iter().sum::<u64>();
        let is_routed = moved(Stat::Routed) == 1;
        assert_eq!(
            total,
            1 + u64::from(is_routed) + moved(Stat::NextHopCached),
            "one outcome, counted once: {f:02x?}"
        );
        let error = [
            Stat::IcmpTimeExceeded,
            Stat::IcmpNetUnreachable,
            Stat::IcmpHostUnreachable,
        ]
        .into_iter()
        .any(|s| moved(s) == 1);
        match verdict {
            Verdict::Pass => {
                assert_eq!(hook, VmHook::Xdp, "tc mode hands nothing on: {f:02x?}");
                assert_eq!(out, f, "a frame for the skb path must be untouched");
            }
            Verdict::Drop => {}
            _ if error || moved(Stat::GatewayEchoReply) == 1 => {
                assert_eq!(verdict, back(hook));
                answered += 1;
                assert_eq!(out[0..6], f[6..12], "back to the sender");
                assert_eq!(out[6..12], ROUTER_MAC);
                assert_eq!(checksum(&out[14..34]), 0, "IPv4 checksum: {out:02x?}");
                assert_eq!(ip(&out, 30), ip(&f, 26), "to the sender's address");
                let icmp_ok = |p: &[u8]| {
                    let end = 14 + usize::from(u16::from_be_bytes([p[16], p[17]]));
                    checksum(&p[34..end.clamp(34, p.len())]) == 0
                };
                // The reply's checksum is the request's updated (its data is never read): right
                // if the request's was.
                if error || icmp_ok(&f) {
                    assert!(icmp_ok(&out), "ICMP checksum: {out:02x?}");
                }
                if error {
                    assert_eq!(out.len(), 70);
                    assert_eq!(out[42..], f[14..42], "the quote");
                } else {
                    assert_eq!((out[34], ip(&out, 26)), (0, ip(&f, 30)), "echo reply");
                    assert_eq!(out[38..], f[38..]);
                }
            }
            Verdict::Redirect if is_routed => {
                routed += 1;
                let (mac, remote) = expected_nic(ip(&f, 30))
                    .unwrap_or_else(|| panic!("routed to {} {f:02x?}", ip(&f, 30)));
                match remote {
                    None => assert_routed_as_sent(hook, &f, &out, mac),
                    Some((vtep, vni)) => {
                        assert_eq!(out.len(), f.len() + 50);
                        let v = vni.to_be_bytes();
                        assert_eq!(ip(&out, 30), vtep);
                        assert_eq!(out[42..50], [0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
                        assert_eq!(checksum(&out[14..34]), 0, "outer IPv4 checksum");
                        assert_routed_as_sent(hook, &f, &out[50..], mac);
                    }
                }
            }
            // Mutated into something else: bridged (its own tests: xdp_vpc), or ARP answered.
            _ => {}
        }
    }
    let c = counters(&fx);
    let (local, encap) = forward_stats(hook);
    assert_eq!(
        c[Stat::Routed as usize],
        routed,
        "routed frames counted ({answered} answered)"
    );
    assert_eq!(c[local as usize] + c[encap as usize], routed);
    let answers = c[Stat::GatewayEchoReply as usize]
        + c[Stat::IcmpTimeExceeded as usize]
        + c[Stat::IcmpNetUnreachable as usize]
        + c[Stat::IcmpHostUnreachable as usize];
    assert_eq!(answers, answered, "answers counted");
    // With this seed: 289 routed in XDP (the frames to B3 go to the skb path), 363 on TC, 890
    // answered. A regression that stops routing or answering falls far below.
    assert!(
        routed > 200 && answered > 500,
        "{routed} routed, {answered} answered of 3,000"
    );
}
