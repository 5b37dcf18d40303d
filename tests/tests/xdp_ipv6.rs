//! IPv6 on a VM port (issue 15), through `BPF_PROG_TEST_RUN` on both hooks: neighbour
//! solicitations and router solicitations answered on the port, anti-spoofing for IPv6, what
//! never crosses a port (MLD, extension-header tricks, DHCPv6 server traffic), and forwarding.

use std::net::Ipv6Addr;

use agent_common::{
    Binding6, BindingKey, FdbEntry, FdbKey, Neigh6Entry, Neigh6Key, RA_MAX, Ra6, Stat, VniInfo,
};
use holdfast_tests::{
    packet::checksum,
    xdp::{
        Fixture, ROUTER_MAC, TEST_IFINDEX, VM_IP, VM_MAC, Verdict, VmHook, back, be32, desired_for,
        dropped_at, nic,
    },
};

holdfast_tests::for_each_hook!(
    a_solicitation_for_another_nic_is_answered_with_its_mac,
    a_solicitation_for_the_router_is_answered_with_the_router_flag,
    duplicate_address_detection_and_own_address_get_no_answer,
    neighbour_discovery_that_did_not_come_from_the_link_is_dropped,
    a_router_solicitation_gets_the_networks_advertisement,
    ipv6_sources_other_than_the_nics_own_are_dropped,
    mld_and_extension_header_tricks_never_cross_the_port,
    dhcpv6_servers_are_refused,
    unicast_to_another_nic_is_forwarded,
);

const VNI: u32 = 1001;
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const VM_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x11);
const OTHER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x12);
/// The VM's link-local address: not EUI-64, as a guest with stable privacy addresses has.
const VM_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1234, 0x5678, 0x9abc, 0xdef0);

/// The router's link-local address, EUI-64 from `ROUTER_MAC`.
fn router_ll() -> Ipv6Addr {
    Ipv6Addr::from(agent_common::eui64_link_local(ROUTER_MAC))
}

/// An advertisement body: the RFC 4861 §4.2 fields and a source link-layer address option.
fn ra_body() -> Vec<u8> {
    let mut b = vec![64, 0xc0, 0x23, 0x28, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&ROUTER_MAC);
    b
}

/// VM_MAC (with VM_IP6) and OTHER_MAC (with OTHER_IP6, on this host) in one dual-stack
/// network; the router's link-local address; the network's advertisement.
fn fixture() -> Fixture {
    let other_ip = std::net::Ipv4Addr::new(10, 10, 0, 12);
    let mut desired = desired_for(
        &holdfast_tests::xdp::network(),
        &[nic(VM_MAC, VM_IP), nic(OTHER_MAC, other_ip)],
        &[],
    );
    // OTHER_MAC is a NIC on this host (its port is the test's ifindex too).
    desired.fdb.insert(
        FdbKey::new(VNI, OTHER_MAC),
        FdbEntry::local(TEST_IFINDEX, be32(other_ip)),
    );
    desired.vnis.insert(
        VNI,
        VniInfo {
            gateway: be32(holdfast_tests::xdp::GATEWAY),
            mtu: 1450,
        },
    );
    let fx = Fixture::with(&desired, None);
    let body = ra_body();
    let mut ra = Ra6 {
        len: body.len() as u16,
        _pad: 0,
        csum: agent_common::csum_partial(&body),
        body: [0; RA_MAX],
    };
    ra.body[..body.len()].copy_from_slice(&body);
    fx.insert_v6(
        &[
            (
                BindingKey::new(TEST_IFINDEX, VM_MAC),
                Binding6 {
                    ip6: VM_IP6.octets(),
                    vni: VNI,
                    _pad: 0,
                },
            ),
            (
                BindingKey::new(TEST_IFINDEX, OTHER_MAC),
                Binding6 {
                    ip6: OTHER_IP6.octets(),
                    vni: VNI,
                    _pad: 0,
                },
            ),
        ],
        &[
            (
                Neigh6Key::new(VNI, VM_IP6.octets()),
                Neigh6Entry {
                    mac: VM_MAC,
                    router: 0,
                    _pad: 0,
                },
            ),
            (
                Neigh6Key::new(VNI, OTHER_IP6.octets()),
                Neigh6Entry {
                    mac: OTHER_MAC,
                    router: 0,
                    _pad: 0,
                },
            ),
            (
                Neigh6Key::new(VNI, router_ll().octets()),
                Neigh6Entry {
                    mac: ROUTER_MAC,
                    router: 1,
                    _pad: 0,
                },
            ),
        ],
        &[(VNI, ra)],
    );
    fx
}

/// An IPv6 frame carrying `payload` under next header `nh`.
fn ip6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[nh, hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// An ICMPv6 message with its checksum.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> Vec<u8> {
    let mut m = body.to_vec();
    m[2] = 0;
    m[3] = 0;
    let c = icmp6_checksum(src, dst, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn icmp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, m: &[u8]) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(m.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 58]);
    p.extend_from_slice(m);
    checksum(&p)
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1), and its MAC.
fn solicited(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = a.octets();
    let s = Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ]);
    (s, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// A neighbour solicitation from VM_MAC at `src` for `target`, multicast to its solicited-node
/// address, with a source link-layer address option unless `src` is ::.
fn ns(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let (dst, dst_mac) = solicited(target);
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&VM_MAC);
    }
    ip6_frame(
        VM_MAC,
        dst_mac,
        src,
        dst,
        58,
        hop_limit,
        &icmp6(src, dst, &body),
    )
}

/// Checks a neighbour advertisement sent back to VM_MAC at `to`: from `mac` for `target`,
/// solicited and override, with the router flag if `router`, a target link-layer address
/// option, and a right checksum.
fn assert_na(out: &[u8], to: Ipv6Addr, target: Ipv6Addr, mac: [u8; 6], router: bool) {
    assert_eq!(out.len(), 86, "{out:02x?}");
    assert_eq!(out[0..6], VM_MAC);
    assert_eq!(out[6..12], mac);
    assert_eq!(out[12..14], [0x86, 0xdd]);
    assert_eq!(out[14] >> 4, 6);
    assert_eq!(u16::from_be_bytes([out[18], out[19]]), 32);
    assert_eq!((out[20], out[21]), (58, 255));
    assert_eq!(out[22..38], target.octets(), "source: the target");
    assert_eq!(out[38..54], to.octets());
    assert_eq!((out[54], out[55]), (136, 0));
    let flags = if router { 0xe0 } else { 0x60 };
    assert_eq!(out[58], flags);
    assert_eq!(out[62..78], target.octets());
    assert_eq!(out[78..80], [2, 1]);
    assert_eq!(out[80..86], mac);
    assert_eq!(
        icmp6_checksum(target, to, &out[54..]),
        0,
        "checksum of the advertisement"
    );
}

fn a_solicitation_for_another_nic_is_answered_with_its_mac(hook: VmHook) {
    let fx = fixture();
    for src in [VM_LL, VM_IP6] {
        let (verdict, out) = fx.run_port(hook, &ns(src, OTHER_IP6, 255));
        assert_eq!(verdict, back(hook));
        assert_na(&out, src, OTHER_IP6, OTHER_MAC, false);
    }
    assert_eq!(fx.counters()[Stat::Nd6Reply as usize], 2);
}

fn a_solicitation_for_the_router_is_answered_with_the_router_flag(hook: VmHook) {
    let fx = fixture();
    let (verdict, out) = fx.run_port(hook, &ns(VM_LL, router_ll(), 255));
    assert_eq!(verdict, back(hook));
    assert_na(&out, VM_LL, router_ll(), ROUTER_MAC, true);
}

fn duplicate_address_detection_and_own_address_get_no_answer(hook: VmHook) {
    let fx = fixture();
    dropped_at(
        &fx,
        hook,
        &ns(Ipv6Addr::UNSPECIFIED, VM_IP6, 255),
        Stat::Nd6Dad,
    );
    // Probing another NIC's address must not be told it is taken either.
    dropped_at(
        &fx,
        hook,
        &ns(Ipv6Addr::UNSPECIFIED, OTHER_IP6, 255),
        Stat::Nd6Dad,
    );
    dropped_at(&fx, hook, &ns(VM_LL, VM_IP6, 255), Stat::DropNd6NoAnswer);
    let nobody = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x99);
    dropped_at(&fx, hook, &ns(VM_LL, nobody, 255), Stat::DropNd6Unknown);
}

fn neighbour_discovery_that_did_not_come_from_the_link_is_dropped(hook: VmHook) {
    let fx = fixture();
    // RFC 4861 §7.1.1: a hop limit other than 255 means a router forwarded it.
    dropped_at(&fx, hook, &ns(VM_LL, OTHER_IP6, 64), Stat::DropNd6Malformed);
    // Too short for its target.
    let (dst, dst_mac) = solicited(OTHER_IP6);
    let short = ip6_frame(
        VM_MAC,
        dst_mac,
        VM_LL,
        dst,
        58,
        255,
        &icmp6(VM_LL, dst, &[135, 0, 0, 0, 0, 0, 0, 0]),
    );
    dropped_at(&fx, hook, &short, Stat::DropNd6Malformed);
    // Advertisements and redirects from a VM are never passed on.
    let mut na = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    na.extend_from_slice(&OTHER_IP6.octets());
    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let unsolicited = ip6_frame(
        VM_MAC,
        [0x33, 0x33, 0, 0, 0, 1],
        VM_LL,
        all,
        58,
        255,
        &icmp6(VM_LL, all, &na),
    );
    dropped_at(&fx, hook, &unsolicited, Stat::DropNd6NoAnswer);
}

fn rs(src: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let mut body = vec![133, 0, 0, 0, 0, 0, 0, 0];
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&VM_MAC);
    }
    ip6_frame(
        VM_MAC,
        [0x33, 0x33, 0, 0, 0, 2],
        src,
        dst,
        58,
        255,
        &icmp6(src, dst, &body),
    )
}

fn a_router_solicitation_gets_the_networks_advertisement(hook: VmHook) {
    let fx = fixture();
    let body = ra_body();
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    for (src, to) in [(VM_LL, VM_LL), (Ipv6Addr::UNSPECIFIED, all_nodes)] {
        let (verdict, out) = fx.run_port(hook, &rs(src));
        assert_eq!(verdict, back(hook), "from {src}");
        assert_eq!(out.len(), 14 + 40 + 4 + body.len(), "{out:02x?}");
        assert_eq!(out[0..6], VM_MAC);
        assert_eq!(out[6..12], ROUTER_MAC);
        assert_eq!((out[20], out[21]), (58, 255));
        assert_eq!(
            u16::from_be_bytes([out[18], out[19]]) as usize,
            4 + body.len()
        );
        assert_eq!(out[22..38], router_ll().octets());
        assert_eq!(out[38..54], to.octets());
        assert_eq!((out[54], out[55]), (134, 0));
        assert_eq!(out[58..], body[..]);
        assert_eq!(icmp6_checksum(router_ll(), to, &out[54..]), 0, "checksum");
    }
    assert_eq!(fx.counters()[Stat::Ra6Reply as usize], 2);
    // From a NIC of a network without IPv6: nothing to advertise.
    let fx = Fixture::new();
    dropped_at(&fx, hook, &rs(VM_LL), Stat::DropIpv6NotConfigured);
}

/// A UDP datagram from VM_MAC at `src` to OTHER_MAC at `dst`.
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], dport: u16) -> Vec<u8> {
    let mut udp = vec![0x9c, 0x40];
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&16u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&[7; 8]);
    ip6_frame(VM_MAC, dst_mac, src, dst, 17, 64, &udp)
}

fn ipv6_sources_other_than_the_nics_own_are_dropped(hook: VmHook) {
    let fx = fixture();
    // Another NIC's address, and one nobody has.
    for src in [OTHER_IP6, Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x77)] {
        dropped_at(
            &fx,
            hook,
            &udp6(src, OTHER_IP6, OTHER_MAC, 9),
            Stat::DropSpoofedIp6,
        );
    }
    // A link-local source is for ND, RS and DHCPv6 toward the router only.
    dropped_at(
        &fx,
        hook,
        &udp6(VM_LL, OTHER_IP6, OTHER_MAC, 9),
        Stat::DropIpv6LinkLocal,
    );
    // A MAC bound to no NIC here.
    let mut stranger = udp6(VM_IP6, OTHER_IP6, OTHER_MAC, 9);
    stranger[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x66]);
    dropped_at(&fx, hook, &stranger, Stat::DropSpoofedMac);
    // A NIC without IPv6 (an IPv4-only network's).
    let v4_only = Fixture::new();
    dropped_at(
        &v4_only,
        hook,
        &udp6(VM_IP6, OTHER_IP6, OTHER_MAC, 9),
        Stat::DropIpv6NotConfigured,
    );
    // An IPv6 header that is not one.
    let mut bad = udp6(VM_IP6, OTHER_IP6, OTHER_MAC, 9);
    bad[14] = 0x45;
    dropped_at(&fx, hook, &bad, Stat::DropMalformed);
}

fn mld_and_extension_header_tricks_never_cross_the_port(hook: VmHook) {
    let fx = fixture();
    // An MLDv2 report: behind a hop-by-hop header with router alert (RFC 3810 §5).
    let mld_dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    let mut hbh = vec![58, 0, 5, 2, 0, 0, 1, 0];
    hbh.extend_from_slice(&icmp6(VM_LL, mld_dst, &[143, 0, 0, 0, 0, 0, 0, 0]));
    let mld = ip6_frame(
        VM_MAC,
        [0x33, 0x33, 0, 0, 0, 0x16],
        VM_LL,
        mld_dst,
        0,
        1,
        &hbh,
    );
    dropped_at(&fx, hook, &mld, Stat::DropIpv6ExtHeader);
    // A neighbour solicitation hidden behind a fragment header (RFC 6980), to the router.
    let mut frag = vec![58, 0, 0, 1, 0, 0, 0, 9];
    frag.extend_from_slice(&icmp6(VM_IP6, router_ll(), &[135, 0, 0, 0, 0, 0, 0, 0]));
    let hidden = ip6_frame(VM_MAC, ROUTER_MAC, VM_IP6, router_ll(), 44, 255, &frag);
    dropped_at(&fx, hook, &hidden, Stat::DropIpv6ExtHeader);
    // Other multicast, and anything else to the router, are dropped as for IPv4.
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
    dropped_at(
        &fx,
        hook,
        &udp6(VM_IP6, group, [0x33, 0x33, 0, 0, 0, 0xfb], 5353),
        Stat::DropBcastMcast,
    );
    dropped_at(
        &fx,
        hook,
        &udp6(
            VM_IP6,
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            ROUTER_MAC,
            53,
        ),
        Stat::ToRouter,
    );
}

/// DHCPv6 server traffic from a VM is refused (the responder's own tests: xdp_dhcp6.rs).
fn dhcpv6_servers_are_refused(hook: VmHook) {
    let fx = fixture();
    let mut rogue = udp6(VM_LL, VM_LL, [0x33, 0x33, 0, 1, 0, 2], 546);
    rogue[54..56].copy_from_slice(&547u16.to_be_bytes());
    dropped_at(&fx, hook, &rogue, Stat::DropDhcpRogueServer);
}

fn unicast_to_another_nic_is_forwarded(hook: VmHook) {
    let fx = fixture();
    let frame = udp6(VM_IP6, OTHER_IP6, OTHER_MAC, 9);
    let (verdict, out) = fx.run_port(hook, &frame);
    match hook {
        // xdp mode hands IPv6 data to the skb path, untouched.
        VmHook::Xdp => {
            assert_eq!(verdict, Verdict::Pass);
            assert_eq!(out, frame);
            let (action, out) = fx.run_tc(&frame);
            assert_eq!(Verdict::of_tc(action), Verdict::Redirect);
            assert_eq!(out, frame);
        }
        VmHook::Tc => {
            assert_eq!(verdict, Verdict::Redirect);
            assert_eq!(out, frame);
        }
    }
    assert_eq!(fx.counters()[Stat::SkbForwardLocal as usize], 1);
    // Over the network's MTU (1450): an ICMPv6 packet-too-big back to the VM, from the
    // router's link-local address, carrying the MTU and the datagram's first 48 bytes.
    let mut big = frame[..62].to_vec();
    big.resize(14 + 40 + 1420, 0);
    let payload = (big.len() - 54) as u16;
    big[18..20].copy_from_slice(&payload.to_be_bytes());
    let (verdict, out) = match hook {
        VmHook::Xdp => {
            let (a, o) = fx.run_tc(&big);
            (Verdict::of_tc(a), o)
        }
        VmHook::Tc => fx.run_port(hook, &big),
    };
    assert_eq!(verdict, Verdict::Redirect, "back to the VM");
    assert_eq!(out.len(), 14 + 40 + 8 + 48, "{out:02x?}");
    assert_eq!(out[0..6], VM_MAC);
    assert_eq!(out[6..12], ROUTER_MAC);
    assert_eq!(out[22..38], router_ll().octets());
    assert_eq!(out[38..54], VM_IP6.octets());
    assert_eq!((out[54], out[55]), (2, 0));
    assert_eq!(u32::from_be_bytes(out[58..62].try_into().unwrap()), 1450);
    assert_eq!(out[62..110], big[14..62]);
    assert_eq!(
        icmp6_checksum(router_ll(), VM_IP6, &out[54..]),
        0,
        "checksum"
    );
    assert_eq!(fx.counters()[Stat::Icmp6PacketTooBig as usize], 1);
}

/// xdp mode answers ND only in XDP: on its skb path, solicitations are dropped and counted,
/// which means the port's XDP program is not running.
#[test]
fn neighbour_discovery_on_the_skb_path_is_dropped() {
    let fx = fixture();
    let before = fx.counters()[Stat::DropNd6SkbPath as usize];
    let (action, _) = fx.run_tc(&ns(VM_LL, OTHER_IP6, 255));
    assert_eq!(Verdict::of_tc(action), Verdict::Drop);
    let (action, _) = fx.run_tc(&rs(VM_LL));
    assert_eq!(Verdict::of_tc(action), Verdict::Drop);
    assert_eq!(fx.counters()[Stat::DropNd6SkbPath as usize], before + 2);
}
