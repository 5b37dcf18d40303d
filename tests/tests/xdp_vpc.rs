//! The VPC paths under BPF_PROG_TEST_RUN: ARP answered for any address of the network,
//! anti-spoofing, local forwarding with checksum completion, VXLAN encapsulation against a real
//! FIB and neighbour table, the next-hop cache, the hand-over to the skb path, decapsulation
//! and what it refuses.
//!
//! What a VM port's program does runs for both hooks (`xdp::<test>`, `tc::<test>`): XDP's
//! `holdfast_vm` and tc mode's `holdfast_vm_tc`, the same logic built for each.
//!
//! The programs run inside a namespace holding an underlay interface `ul0` (198.18.0.1/24) with
//! a permanent neighbour for the remote VTEP; its loopback plays the VM interface.

use std::net::Ipv4Addr;

use agent_common::{
    ArpEntry, ArpKey, BindingKey, DataplaneConfig, DecapMeta, FdbEntry, FdbKey, Stat, VniInfo,
};
use holdfast::{dataplane::Desired, model::Network, render::options};
use holdfast_tests::{
    packet::{self, Request, arp_request, checksum, udp_checksum_ok, udp_frame},
    rng::Rng,
    xdp::*,
};

const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01]; // local, on the test interface
const A2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02]; // local, on ifindex 77
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03]; // remote, behind 198.18.0.2
const A4: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x04]; // remote, behind 198.18.0.3 (no neighbour)
const B3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x03]; // network B, remote, same address as A1
const VNI_A: u32 = 1001;
const VNI_B: u32 = 1002;
const A1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const A2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const A3_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);
const A4_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 14);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SILENT_VTEP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const A2_IFINDEX: u32 = 77;

fn net(id: &str, vni: u32) -> Network {
    Network {
        id: id.into(),
        vni,
        subnet: "10.0.0.0/24".parse().unwrap(),
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

fn desired(ul: &Underlay) -> Desired {
    let mut d = Desired {
        prune: true,
        ..Desired::default()
    };
    let a = net("a", VNI_A);
    for (mac, ip, ifindex) in [(A1, A1_IP, TEST_IFINDEX), (A2, A2_IP, A2_IFINDEX)] {
        let mut n = nic(mac, ip);
        n.network = "a".into();
        d.bindings.insert(
            BindingKey::new(ifindex, mac),
            options::render(&a, &n).unwrap(),
        );
        d.fdb
            .insert(FdbKey::new(VNI_A, mac), FdbEntry::local(ifindex, be32(ip)));
    }
    for (vni, mac, ip, vtep) in [
        (VNI_A, A3, A3_IP, REMOTE_VTEP),
        (VNI_A, A4, A4_IP, SILENT_VTEP),
        (VNI_B, B3, A1_IP, REMOTE_VTEP),
    ] {
        d.fdb.insert(
            FdbKey::new(vni, mac),
            FdbEntry::remote(be32(vtep), be32(ip)),
        );
    }
    for (ip, mac) in [
        (A1_IP, A1),
        (A2_IP, A2),
        (A3_IP, A3),
        (A4_IP, A4),
        (GW, ROUTER_MAC),
    ] {
        d.arp.insert(
            ArpKey {
                vni: VNI_A,
                ip: be32(ip),
            },
            ArpEntry { mac, _pad: [0; 2] },
        );
    }
    d.arp.insert(
        ArpKey {
            vni: VNI_B,
            ip: be32(A1_IP),
        },
        ArpEntry {
            mac: B3,
            _pad: [0; 2],
        },
    );
    for vtep in [REMOTE_VTEP, SILENT_VTEP] {
        d.vteps.insert(be32(vtep), 1);
    }
    d.vnis.insert(
        VNI_A,
        VniInfo {
            gateway: be32(GW),
            mtu: 1450,
        },
    );
    d.config = DataplaneConfig {
        vtep: be32(LOCAL_VTEP),
        underlay_ifindex: ul.ifindex,
        fib_ifindex: ul.anchor,
        _pad: 0,
    };
    d
}

fn fixture() -> (Fixture, Underlay) {
    let ul = underlay();
    let fx = Fixture::with(&desired(&ul), Some(ul.ns.path()));
    (fx, ul)
}

fn from_a1_to(mac: [u8; 6], ip: Ipv4Addr, partial: bool) -> Vec<u8> {
    udp_frame(A1, mac, A1_IP, ip, 40000, 5201, &[0x5a; 100], partial)
}

holdfast_tests::for_each_hook!(
    arp_is_answered_for_every_address_of_the_network,
    arp_cannot_claim_another_address,
    spoofed_sources_are_dropped,
    unknown_and_flooded_destinations_are_dropped,
    a_local_destination_is_redirected_with_a_complete_checksum,
    a_remote_destination_is_encapsulated_toward_its_vtep,
    the_outer_source_port_follows_the_flow,
    a_learned_next_hop_keeps_serving_when_the_neighbour_goes,
    randomized_frames_never_produce_malformed_vxlan,
    a_route_that_quarantines_a_vtep_is_obeyed_within_the_next_hop_ttl,
);

fn arp_is_answered_for_every_address_of_the_network(hook: VmHook) {
    let (fx, _ul) = fixture();
    for (target, mac) in [(A3_IP, A3), (A2_IP, A2), (GW, ROUTER_MAC)] {
        let (verdict, out) = fx.run_port(hook, &arp_request(A1, A1_IP, target));
        assert_eq!(verdict, back(hook), "{target}");
        assert_eq!(out[22..28], mac, "sender MAC for {target}");
        assert_eq!(out[6..12], mac);
        assert_eq!(out[28..32], target.octets());
        assert_eq!(out[32..38], A1);
    }
    // Network B's address is not answered in network A.
    dropped_at(
        &fx,
        hook,
        &arp_request(A1, A1_IP, Ipv4Addr::new(10, 0, 0, 99)),
        Stat::DropArpUnknown,
    );
}

fn arp_cannot_claim_another_address(hook: VmHook) {
    let (fx, _ul) = fixture();
    let mut forged = arp_request(A1, A2_IP, A3_IP);
    dropped_at(&fx, hook, &forged, Stat::DropArpSpoof);
    forged = arp_request(A1, A1_IP, A3_IP);
    forged[22..28].copy_from_slice(&A2); // sender hardware address of another NIC
    dropped_at(&fx, hook, &forged, Stat::DropArpSpoof);
    dropped(&fx, &forged, Stat::DropArpSpoof);
    // A NIC that IPAM renumbered still has its old address until its next DHCP renewal: it
    // may resolve the server it renews with (a router address), nothing else.
    let old_ip = Ipv4Addr::new(10, 0, 0, 99);
    let (action, out) = fx.run(&arp_request(A1, old_ip, GW));
    assert_eq!(action, XDP_TX);
    assert_eq!(out[22..28], ROUTER_MAC);
    assert_eq!(out[0..6], A1, "back to the asking NIC alone");
    assert_eq!(out[38..42], old_ip.octets());
    dropped(&fx, &arp_request(A1, old_ip, A3_IP), Stat::DropArpSpoof);
    dropped(
        &fx,
        &arp_request(A1, old_ip, Ipv4Addr::new(10, 0, 0, 98)),
        Stat::DropArpSpoof,
    );
    // A reply nobody asked for, and a probe for its own address (RFC 5227), need no answer.
    let mut reply = arp_request(A1, A1_IP, A3_IP);
    reply[21] = 2;
    dropped_at(&fx, hook, &reply, Stat::DropArpNoAnswer);
    dropped_at(
        &fx,
        hook,
        &arp_request(A1, Ipv4Addr::UNSPECIFIED, A1_IP),
        Stat::DropArpNoAnswer,
    );
}

fn spoofed_sources_are_dropped(hook: VmHook) {
    let (fx, _ul) = fixture();
    let mut f = from_a1_to(A3, A3_IP, false);
    f[6..12].copy_from_slice(&[0x02, 0x66, 0, 0, 0, 1]);
    dropped_at(&fx, hook, &f, Stat::DropSpoofedMac);
    let f = udp_frame(A1, A3, A2_IP, A3_IP, 1, 2, &[0; 20], false);
    dropped_at(&fx, hook, &f, Stat::DropSpoofedIp);
    // Another VM's MAC, sent from this interface.
    let f = udp_frame(A2, A3, A2_IP, A3_IP, 1, 2, &[0; 20], false);
    dropped_at(&fx, hook, &f, Stat::DropSpoofedMac);
}

fn unknown_and_flooded_destinations_are_dropped(hook: VmHook) {
    let (fx, _ul) = fixture();
    // Network B's NIC is unknown in network A: tenants never meet.
    dropped_at(
        &fx,
        hook,
        &from_a1_to(B3, A1_IP, false),
        Stat::DropUnknownUnicast,
    );
    dropped_at(
        &fx,
        hook,
        &from_a1_to([0x02, 0x0a, 0, 0, 0, 0x99], A3_IP, false),
        Stat::DropUnknownUnicast,
    );
    dropped_at(
        &fx,
        hook,
        &from_a1_to([0xff; 6], A3_IP, false),
        Stat::DropBcastMcast,
    );
    dropped_at(
        &fx,
        hook,
        &from_a1_to([0x01, 0x00, 0x5e, 0, 0, 1], A3_IP, false),
        Stat::DropBcastMcast,
    );
}

/// XDP completes the checksum a guest with offload left partial (a redirected frame loses the
/// skb's note to finish it); on the skb path the note stays, the frame goes as it came.
fn a_local_destination_is_redirected_with_a_complete_checksum(hook: VmHook) {
    let (fx, _ul) = fixture();
    let frame = from_a1_to(A2, A2_IP, true);
    assert!(
        !udp_checksum_ok(&frame),
        "the test frame must carry a partial checksum"
    );
    let (verdict, out) = fx.run_port(hook, &frame);
    assert_eq!(verdict, Verdict::Redirect);
    assert_carried(hook, &frame, &out);
    assert_eq!(fx.counters()[forward_stats(hook).0 as usize], 1);
    if hook == VmHook::Xdp {
        assert!(udp_checksum_ok(&out), "checksum not completed");
    }
    // A complete checksum stays as it was.
    let good = from_a1_to(A2, A2_IP, false);
    assert_eq!(fx.run_port(hook, &good).1, good);
}

/// Asserts that `carried` is the frame `sent` as the VM program on `hook` forwards it: on the
/// skb path, as sent; in XDP, the same bytes but for the TCP or UDP checksum, which it
/// completes, and which must then be right.
fn assert_carried(hook: VmHook, sent: &[u8], carried: &[u8]) {
    if hook == VmHook::Tc {
        assert_eq!(carried, sent, "the skb path forwards a frame as it came");
        return;
    }
    assert_eq!(
        carried.len(),
        sent.len(),
        "a forwarded frame keeps its length"
    );
    assert_eq!(
        sent[14], 0x45,
        "only a 20-byte IPv4 header is forwarded by XDP"
    );
    let ip = &sent[14..34];
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let check = match ip[9] {
        6 => 34 + 16,
        17 => 34 + 6,
        _ => 0,
    };
    if check == 0 || fragment {
        assert_eq!(
            carried, sent,
            "nothing to complete: the frame goes as it came"
        );
        return;
    }
    assert_eq!(carried[..check], sent[..check]);
    assert_eq!(carried[check + 2..], sent[check + 2..]);
    // Over the datagram as the IPv4 header delimits it, with the pseudo-header.
    let end = 14 + u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert!(end <= sent.len(), "forwarded with a length past the frame");
    let mut summed = carried[26..34].to_vec();
    summed.extend_from_slice(&[0, ip[9]]);
    summed.extend_from_slice(&((end - 34) as u16).to_be_bytes());
    summed.extend_from_slice(&carried[34..end]);
    assert_eq!(checksum(&summed), 0, "L4 checksum of the forwarded frame");
}

/// Asserts that `out` is `sent` (from A1's network) encapsulated on `hook` toward the remote
/// VTEP.
fn assert_encapsulated(hook: VmHook, ul: &Underlay, sent: &[u8], out: &[u8]) {
    assert_eq!(out.len(), sent.len() + 50, "VXLAN adds 50 bytes");
    // Outer Ethernet: the neighbour's MAC from the kernel, from the underlay's own.
    assert_eq!(out[0..6], NEIGH_MAC);
    assert_eq!(out[6..12], ul.mac);
    assert_eq!(out[12..14], [0x08, 0x00]);
    // Outer IPv4: VTEP to VTEP, DF set, valid header checksum.
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, sent.len() + 36);
    assert_eq!(ip[6] & 0x40, 0x40, "DF");
    assert_eq!(ip[9], 17);
    assert_eq!(checksum(ip), 0, "outer IPv4 checksum");
    assert_eq!(ip[12..16], LOCAL_VTEP.octets());
    assert_eq!(ip[16..20], REMOTE_VTEP.octets());
    // Outer UDP: from the ephemeral range to 4789, length, checksum zero (RFC 7348 §5).
    let udp = &out[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(sport >= 49152, "source port {sport}");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        sent.len() + 16
    );
    assert_eq!(udp[6..8], [0, 0]);
    // VXLAN: I flag and network A's VNI.
    let vni = VNI_A.to_be_bytes();
    assert_eq!(out[42..50], [0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
    // The frame as sent, its checksum completed (XDP).
    assert_carried(hook, sent, &out[50..]);
}

fn a_remote_destination_is_encapsulated_toward_its_vtep(hook: VmHook) {
    let (fx, ul) = fixture();
    let inner = from_a1_to(A3, A3_IP, true);
    let (verdict, out) = fx.run_port(hook, &inner);
    let moved: Vec<(usize, u64)> = fx
        .counters()
        .into_iter()
        .enumerate()
        .filter(|(_, v)| *v > 0)
        .collect();
    assert_eq!(verdict, Verdict::Redirect, "counters {moved:?}");
    assert_encapsulated(hook, &ul, &inner, &out);
    assert_eq!(fx.counters()[forward_stats(hook).1 as usize], 1);
}

fn the_outer_source_port_follows_the_flow(hook: VmHook) {
    let (fx, _ul) = fixture();
    let port = |sport: u16| {
        let f = udp_frame(A1, A3, A1_IP, A3_IP, sport, 5201, &[1; 32], false);
        let (verdict, out) = fx.run_port(hook, &f);
        assert_eq!(verdict, Verdict::Redirect);
        u16::from_be_bytes([out[34], out[35]])
    };
    assert_eq!(port(40000), port(40000), "one flow, one path");
    let distinct: std::collections::BTreeSet<u16> = (0..64).map(|i| port(40000 + i)).collect();
    assert!(
        distinct.len() > 32,
        "flows should spread: {} ports",
        distinct.len()
    );
}

#[test]
fn frames_xdp_cannot_carry_whole_go_to_the_skb_path_untouched() {
    let (fx, _ul) = fixture();
    // Bigger than the network's MTU (1450): the skb path answers with ICMP.
    let big = from_a1_to(A3, A3_IP, true);
    let mut big_frame = udp_frame(A1, A3, A1_IP, A3_IP, 1, 2, &vec![7u8; 1450], true);
    let (action, out) = fx.run(&big_frame);
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        out, big_frame,
        "an skb-path frame must be untouched (its checksum too)"
    );
    // No neighbour for 198.18.0.3 and nothing cached: the kernel resolves it on the skb path.
    let f = from_a1_to(A4, A4_IP, true);
    let (action, out) = fx.run(&f);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, f);
    assert_eq!(fx.counters()[Stat::ToSkbPath as usize], 2);
    let _ = (big, &mut big_frame);
}

/// Asserts that `out` is an ICMP fragmentation-needed from the gateway to A1 carrying the
/// network's MTU and the start of `sent` (RFC 792, RFC 1191).
fn assert_frag_needed(sent: &[u8], out: &[u8]) {
    assert_eq!(out.len(), 14 + 20 + 8 + 28, "{out:02x?}");
    assert_eq!(out[0..6], A1);
    assert_eq!(out[6..12], ROUTER_MAC);
    let ip = &out[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 checksum");
    assert_eq!(
        (ip[9], &ip[12..16], &ip[16..20]),
        (1, &GW.octets()[..], &A1_IP.octets()[..])
    );
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "type 3 code 4");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450, "next-hop MTU");
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!(icmp[8..], sent[14..42], "the offending header and 8 bytes");
}

/// A TC program run on a frame and an skb: its action and the frame it left.
type Run<'a> = dyn Fn(&[u8], &Skb) -> (i32, Vec<u8>) + 'a;

/// What XDP hands over, both TC programs serve: xdp mode's skb path and tc mode's program.
/// A frame or a GSO frame's segments over the network's MTU get an ICMP fragmentation-needed
/// back; a next hop the kernel has not resolved goes encapsulated (outer MACs left to the
/// kernel) through its neighbour output; a GSO frame within the MTU passes the size check.
#[test]
fn what_xdp_hands_over_both_tc_programs_serve() {
    let (fx, _ul) = fixture();
    let big = udp_frame(A1, A3, A1_IP, A3_IP, 1, 2, &[7u8; 1450], true);
    let to_silent = from_a1_to(A4, A4_IP, true);
    let gso = |size| Skb {
        gso_size: size,
        gso_segs: 2,
        ..Skb::default()
    };
    // 28 bytes of headers and 1,500 of payload per segment: over 1,450.
    let super_frame = udp_frame(A1, A3, A1_IP, A3_IP, 1, 2, &[9u8; 3000], true);
    let runs: [(&str, &Run<'_>); 2] = [
        ("skb path", &|f, skb| fx.run_tc_with(f, skb)),
        ("tc mode", &|f, skb| fx.run_vm_tc_with(f, skb)),
    ];
    for (what, run) in runs {
        let before = fx.counters();
        let (action, out) = run(&big, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: oversized");
        assert_frag_needed(&big, &out);
        let (action, out) = run(&super_frame, &gso(1500));
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: GSO over the MTU");
        assert_frag_needed(&super_frame, &out);

        let (action, out) = run(&to_silent, &Skb::default());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: unresolved");
        assert_eq!(out.len(), to_silent.len() + 50);
        assert_eq!(
            out[0..12],
            [0; 12],
            "{what}: the neighbour output fills the MACs in"
        );
        assert_eq!(
            out[26..34],
            [LOCAL_VTEP.octets(), SILENT_VTEP.octets()].concat()
        );
        assert_eq!(out[50..], to_silent, "{what}: the frame as sent");

        // A GSO frame within the MTU passes the size check: no fragmentation-needed (counted
        // below). Its encapsulation cannot run here: BPF_PROG_TEST_RUN sets gso_size but not
        // gso_type, and bpf_skb_adjust_room refuses a GSO skb that is neither TCP nor UDP-L4
        // typed (-ENOTSUPP); real TSO frames are encapsulated in netns_vpc and the bench.
        let _ = run(&super_frame, &gso(1000));
        let after = fx.counters();
        let moved = |s: Stat| after[s as usize] - before[s as usize];
        assert_eq!(moved(Stat::IcmpFragNeeded), 2, "{what}");
        assert_eq!(moved(Stat::SkbEncap), 1, "{what}");
        assert_eq!(moved(Stat::ToSkbPath), 0, "{what}");
    }
}

fn a_learned_next_hop_keeps_serving_when_the_neighbour_goes(hook: VmHook) {
    let (fx, ul) = fixture();
    let f = from_a1_to(A3, A3_IP, false);
    assert_eq!(fx.run_port(hook, &f).0, Verdict::Redirect);
    ul.ns.ip(&["neigh", "del", "198.18.0.2", "dev", "ul0"]);
    // Past the time a learned next hop is used without asking the FIB again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (verdict, out) = fx.run_port(hook, &f);
    assert_eq!(verdict, Verdict::Redirect);
    assert_eq!(out[0..6], NEIGH_MAC);
    assert_eq!(fx.counters()[Stat::NextHopCached as usize], 1);
}

#[test]
fn vxlan_from_a_known_vtep_is_decapsulated_into_the_local_nic() {
    let (fx, _ul) = fixture();
    let inner = udp_frame(A3, A1, A3_IP, A1_IP, 5201, 40000, &[9; 64], false);
    let (action, out) = fx.run_underlay(&vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &inner));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, inner);
    assert_eq!(fx.counters()[Stat::VxlanDecap as usize], 1);
}

#[test]
fn decapsulated_tcp_goes_up_for_gro_with_its_vm_in_the_metadata() {
    let (fx, _ul) = fixture();
    let mut inner = udp_frame(A3, A1, A3_IP, A1_IP, 5201, 40000, &[9; 64], false);
    // TCP: the program looks at the protocol only.
    inner[14 + 9] = 6;
    let (action, out) = fx.run_underlay(&vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &inner));
    assert_eq!(action, XDP_PASS);
    // The test run's output starts at the metadata: magic, then the VM's ifindex.
    let meta = size_of::<DecapMeta>();
    assert_eq!(out.len(), meta + inner.len());
    assert_eq!(
        u32::from_ne_bytes(out[0..4].try_into().unwrap()),
        DecapMeta::MAGIC
    );
    assert_eq!(
        u32::from_ne_bytes(out[4..8].try_into().unwrap()),
        TEST_IFINDEX
    );
    assert_eq!(out[meta..], inner);
    let c = fx.counters();
    assert_eq!(
        (c[Stat::VxlanDecap as usize], c[Stat::DecapGro as usize]),
        (1, 1)
    );
}

#[test]
fn vxlan_that_is_not_for_a_local_nic_of_its_network_is_dropped() {
    let (fx, _ul) = fixture();
    let inner = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
    // From a host nobody knows.
    dropped_on_underlay(
        &fx,
        &vxlan(Ipv4Addr::new(198, 18, 0, 66), LOCAL_VTEP, VNI_A, &inner),
        Stat::DropUnknownVtep,
    );
    // Another tenant's VNI (network B has no NIC here).
    let inner_b = udp_frame(B3, A1, A1_IP, A1_IP, 1, 2, &[9; 64], false);
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_B, &inner_b),
        Stat::DropUnknownVni,
    );
    // A VNI nobody uses.
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, 4242, &inner),
        Stat::DropUnknownVni,
    );
    // For a NIC that is not on this host, or a broadcast (no ARP crosses the underlay).
    let to_remote = udp_frame(A3, A4, A3_IP, A4_IP, 1, 2, &[9; 64], false);
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &to_remote),
        Stat::DropUnknownInnerDst,
    );
    let arp = arp_request(A3, A3_IP, A1_IP);
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &arp),
        Stat::DropDecapArp,
    );
    // A host speaking for a NIC that is not its own (A4 lives behind 198.18.0.3).
    let forged = udp_frame(A4, A1, A4_IP, A1_IP, 1, 2, &[9; 64], false);
    dropped_on_underlay(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &forged),
        Stat::DropInnerSpoof,
    );
}

#[test]
fn the_hosts_own_traffic_passes_the_underlay_untouched() {
    let (fx, _ul) = fixture();
    let inner = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
    for frame in [
        // VXLAN for another address.
        vxlan(REMOTE_VTEP, Ipv4Addr::new(198, 18, 0, 9), VNI_A, &inner),
        // Not VXLAN.
        udp_frame(
            NEIGH_MAC,
            [2, 0x11, 0, 0, 0, 1],
            REMOTE_VTEP,
            LOCAL_VTEP,
            5000,
            53,
            &[1; 40],
            false,
        ),
        packet::arp_request(NEIGH_MAC, REMOTE_VTEP, LOCAL_VTEP),
    ] {
        let (action, out) = fx.run_underlay(&frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(out, frame);
    }
    assert_eq!(fx.counters()[Stat::UnderlayPass as usize], 3);
}

#[test]
fn dhcp_still_answers_on_a_vpc_interface() {
    let (fx, _ul) = fixture();
    let (action, out) = fx.run(&Request::discover(A1).frame());
    assert_eq!(action, XDP_TX);
    let r = packet::parse_reply(&out).unwrap();
    assert_eq!(r.yiaddr, A1_IP);
}

/// Random mutations of forwarding frames: nothing may crash the programs, every frame they
/// encapsulate is well-formed VXLAN carrying the frame as sent, every frame forwarded on this
/// host is the frame as sent, and what goes to the skb path is untouched.
///
/// What a redirected frame must look like follows from the frame sent, not from the output: it
/// was forwarded by its destination MAC, and of the NICs of A1's network, A1 and A2 are on this
/// host and only A3 is behind a VTEP with a neighbour (A4's has none: the skb path). The
/// counters must agree, so no encapsulation goes unchecked.
fn randomized_frames_never_produce_malformed_vxlan(hook: VmHook) {
    let (fx, ul) = fixture();
    let seeds = [
        from_a1_to(A3, A3_IP, true),
        from_a1_to(A2, A2_IP, false),
        arp_request(A1, A1_IP, A3_IP),
    ];
    let mut rng = Rng::new(0x00c0_ffee);
    let (mut encapsulated, mut local) = (0u64, 0u64);
    for _ in 0..5_000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next_u64() as u8;
        }
        if f.len() < 14 {
            continue;
        }
        let (verdict, out) = fx.run_port(hook, &f);
        // On TC an answer sent back to the VM shows as a redirect: ARP's, or an ICMP error.
        let answered = out.len() >= 14
            && out[..6] == f[6..12]
            && (out[12..14] == [0x08, 0x06] || out.get(23) == Some(&1));
        match verdict {
            Verdict::Redirect if hook == VmHook::Tc && answered => {}
            Verdict::Redirect => match <[u8; 6]>::try_from(&f[..6]).expect("a MAC") {
                A3 => {
                    encapsulated += 1;
                    assert_encapsulated(hook, &ul, &f, &out);
                }
                A1 | A2 => {
                    local += 1;
                    assert_carried(hook, &f, &out);
                }
                dst => panic!("redirected toward {dst:02x?}, which is no NIC of the network"),
            },
            Verdict::Pass => {
                assert_eq!(hook, VmHook::Xdp, "tc mode hands nothing on: {f:02x?}");
                assert_eq!(out, f, "a frame for the skb path must be untouched");
            }
            _ => {}
        }
    }
    let c = fx.counters();
    let (local_stat, encap_stat) = forward_stats(hook);
    assert_eq!(
        c[encap_stat as usize], encapsulated,
        "encapsulations counted"
    );
    assert_eq!(c[local_stat as usize], local, "local forwards counted");
    // A third of the runs start from the frame to A3 and most mutations leave it sendable: 1,142
    // with this seed. A regression that stops encapsulating falls far below.
    assert!(
        encapsulated >= 1_000,
        "only {encapsulated} of 5,000 mutated frames encapsulated ({local} forwarded locally)"
    );
}

/// Runs the underlay program on `frame` and asserts that it drops it, counted under `stat`,
/// and that nothing was decapsulated.
fn refused(fx: &Fixture, frame: &[u8], stat: Stat) {
    let decap = fx.counters()[Stat::VxlanDecap as usize];
    dropped_on_underlay(fx, frame, stat);
    assert_eq!(
        fx.counters()[Stat::VxlanDecap as usize],
        decap,
        "{stat:?}: a refused frame was decapsulated"
    );
}

/// Makes the IPv4 header checksum of the Ethernet frame `f` right again.
fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].fill(0);
    let c = checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// `frame` with four bytes of IPv4 options in its (outer) header: Router Alert (RFC 2113).
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[0x94, 0x04, 0, 0]);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

/// `frame` as an IPv4 fragment at `offset` (in 8-byte units), more to follow if `more`.
fn as_fragment(frame: &[u8], more: bool, offset: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let field = (u16::from(more) << 13) | offset;
    f[20..22].copy_from_slice(&field.to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

/// `frame` with another IP protocol number.
fn with_protocol(frame: &[u8], protocol: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[23] = protocol;
    fix_ip_checksum(&mut f);
    f
}

/// Issue 12 A2. A host whose model accepted a node with VTEP 0.0.0.0 (as before VTEPs were
/// validated) holds 0.0.0.0 among its known VTEPs. A frame with that outer source, or any known
/// VTEP's, whose inner frame goes from one VM of this host to another must still not be
/// delivered: an FDB entry says "local" by its kind, never by a VTEP address of 0 that a
/// packet can carry.
#[test]
fn forged_vxlan_between_two_local_vms_is_dropped_whatever_its_outer_source() {
    let ul = underlay();
    let mut d = desired(&ul);
    d.vteps.insert(0, 1);
    let fx = Fixture::with(&d, Some(ul.ns.path()));
    // A2 (on ifindex 77) to A1 (on the test interface), both of this host.
    let inner = udp_frame(A2, A1, A2_IP, A1_IP, 1, 2, &[7; 64], false);
    for src in [Ipv4Addr::UNSPECIFIED, REMOTE_VTEP, SILENT_VTEP] {
        refused(
            &fx,
            &vxlan(src, LOCAL_VTEP, VNI_A, &inner),
            Stat::DropInnerSpoof,
        );
    }
    // This host's own VTEP address is no known VTEP.
    refused(
        &fx,
        &vxlan(LOCAL_VTEP, LOCAL_VTEP, VNI_A, &inner),
        Stat::DropUnknownVtep,
    );
    // The genuine frame from A3's host still goes.
    let genuine = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[7; 64], false);
    let (action, out) = fx.run_underlay(&vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &genuine));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, genuine);
}

/// An FDB entry of no kind this build writes (an all-zero one, a future kind) forwards
/// nothing, on either path, and is no source or destination for decapsulation.
#[test]
fn an_fdb_entry_of_no_known_kind_forwards_nothing() {
    const A5: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x05];
    const A6: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x06];
    let a5_ip = Ipv4Addr::new(10, 0, 0, 15);
    let a6_ip = Ipv4Addr::new(10, 0, 0, 16);
    let ul = underlay();
    let mut d = desired(&ul);
    d.fdb.insert(
        FdbKey::new(VNI_A, A5),
        FdbEntry {
            kind: 0,
            ifindex: A2_IFINDEX,
            vtep: 0,
            ip: be32(a5_ip),
        },
    );
    d.fdb.insert(
        FdbKey::new(VNI_A, A6),
        FdbEntry {
            kind: 7,
            ifindex: 0,
            vtep: be32(REMOTE_VTEP),
            ip: be32(a6_ip),
        },
    );
    let fx = Fixture::with(&d, Some(ul.ns.path()));
    for (mac, ip) in [(A5, a5_ip), (A6, a6_ip)] {
        for hook in [VmHook::Xdp, VmHook::Tc] {
            dropped_at(
                &fx,
                hook,
                &from_a1_to(mac, ip, false),
                Stat::DropUnknownUnicast,
            );
        }
        dropped_on_skb_path(&fx, &from_a1_to(mac, ip, false), Stat::DropUnknownUnicast);
    }
    let to_a5 = udp_frame(A3, A5, A3_IP, a5_ip, 1, 2, &[7; 64], false);
    refused(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &to_a5),
        Stat::DropUnknownInnerDst,
    );
    let from_a6 = udp_frame(A6, A1, a6_ip, A1_IP, 1, 2, &[7; 64], false);
    refused(
        &fx,
        &vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &from_a6),
        Stat::DropInnerSpoof,
    );
}

/// Issue 12 B7: a host can only deliver frames its own NICs sent, as IPv4 from their own
/// addresses; ARP never crosses the underlay (both sides answer it locally), and nothing but
/// IPv4 and IPv6 (its own test, issue 15) is forwarded.
#[test]
fn decapsulation_delivers_only_ipv4_from_the_sending_nics_own_address() {
    let (fx, _ul) = fixture();
    let vx = |inner: &[u8]| vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, inner);
    // A3's MAC, another address: A4's (behind another VTEP), a local VM's, one nobody has.
    for ip in [A4_IP, A1_IP, Ipv4Addr::new(10, 0, 0, 99)] {
        let forged = udp_frame(A3, A1, ip, A1_IP, 1, 2, &[9; 64], false);
        refused(&fx, &vx(&forged), Stat::DropInnerSpoofedIp);
    }
    // ARP: a request, the same sent to a local NIC's MAC, a reply.
    let mut arp = arp_request(A3, A3_IP, A1_IP);
    refused(&fx, &vx(&arp), Stat::DropDecapArp);
    arp[0..6].copy_from_slice(&A1);
    refused(&fx, &vx(&arp), Stat::DropDecapArp);
    arp[21] = 2;
    refused(&fx, &vx(&arp), Stat::DropDecapArp);
    // VLAN-tagged, anything but IPv4 and IPv6, from a genuine sender to a local NIC (IPv6 has
    // its own test; an IPv4 header labelled IPv6 is malformed).
    for ethertype in [[0x81, 0x00], [0x88, 0xcc]] {
        let mut other = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
        other[12..14].copy_from_slice(&ethertype);
        refused(&fx, &vx(&other), Stat::DropDecapNotIpv4);
    }
    let mut labelled = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
    labelled[12..14].copy_from_slice(&[0x86, 0xdd]);
    refused(&fx, &vx(&labelled), Stat::DropMalformed);
    // An inner header that is no IPv4 header.
    let mut bad = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
    bad[14] = 0x65;
    refused(&fx, &vx(&bad), Stat::DropMalformed);
    // The genuine frame is delivered.
    let genuine = udp_frame(A3, A1, A3_IP, A1_IP, 1, 2, &[9; 64], false);
    let (action, out) = fx.run_underlay(&vx(&genuine));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, genuine);
    assert_eq!(fx.counters()[Stat::VxlanDecap as usize], 1);
}

/// Issue 12 B7: UDP to this VTEP with IPv4 options, or fragmented, is dropped, not passed to
/// the host (where a kernel VXLAN socket would take it past every check). A later fragment
/// has no UDP header to tell VXLAN by; the first fragment of any UDP datagram goes with it,
/// as its datagram could never be completed. The host's own other traffic still passes.
#[test]
fn outer_ip_options_and_fragments_to_the_vtep_are_dropped_not_passed() {
    let (fx, _ul) = fixture();
    let inner = udp_frame(A3, A1, A3_IP, A1_IP, 5201, 40000, &[9; 64], false);
    let good = vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, &inner);
    refused(&fx, &with_ip_options(&good), Stat::DropUnderlayIpOptions);
    refused(
        &fx,
        &as_fragment(&good, true, 0),
        Stat::DropUnderlayFragment,
    );
    refused(
        &fx,
        &as_fragment(&good, true, 8),
        Stat::DropUnderlayFragment,
    );
    refused(
        &fx,
        &as_fragment(&good, false, 185),
        Stat::DropUnderlayFragment,
    );
    refused(
        &fx,
        &as_fragment(&with_ip_options(&good), false, 185),
        Stat::DropUnderlayFragment,
    );
    // From a host nobody knows: the same, before anything else is looked at.
    let stranger = vxlan(Ipv4Addr::new(198, 18, 0, 66), LOCAL_VTEP, VNI_A, &inner);
    refused(
        &fx,
        &with_ip_options(&stranger),
        Stat::DropUnderlayIpOptions,
    );
    refused(
        &fx,
        &as_fragment(&stranger, true, 0),
        Stat::DropUnderlayFragment,
    );
    // The first fragment of the host's own UDP to the VTEP address.
    let dns = udp_frame(
        NEIGH_MAC,
        [2, 0x11, 0, 0, 0, 1],
        REMOTE_VTEP,
        LOCAL_VTEP,
        5000,
        53,
        &[1; 40],
        false,
    );
    refused(&fx, &as_fragment(&dns, true, 0), Stat::DropUnderlayFragment);

    // The host's own traffic passes untouched: UDP to another port with options; TCP and ICMP
    // to the VTEP, options or fragments; UDP to another address, options or fragments.
    let elsewhere = vxlan(REMOTE_VTEP, Ipv4Addr::new(198, 18, 0, 9), VNI_A, &inner);
    let own = [
        with_ip_options(&dns),
        with_protocol(&with_ip_options(&dns), 6),
        as_fragment(&with_protocol(&dns, 6), true, 0),
        as_fragment(&with_protocol(&dns, 1), false, 185),
        as_fragment(&elsewhere, false, 185),
        with_ip_options(&elsewhere),
    ];
    for frame in &own {
        let (action, out) = fx.run_underlay(frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(&out, frame);
    }
    assert_eq!(fx.counters()[Stat::UnderlayPass as usize], own.len() as u64);
    // And VXLAN as holdfast sends it is still delivered.
    let (action, out) = fx.run_underlay(&good);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, inner);
}

/// Issue 12 B9: an operator quarantines a VTEP with a blackhole, unreachable or prohibit route
/// after traffic to it flowed (its next hop learned and cached). Frames to it stop within the
/// time a learned next hop is used without asking the FIB (`NEXTHOP_TTL_NS`, 1 s), on the XDP
/// and the skb path, each counted under its route's reason; removing the route restores
/// forwarding at the next frame.
fn a_route_that_quarantines_a_vtep_is_obeyed_within_the_next_hop_ttl(hook: VmHook) {
    use std::time::{Duration, Instant};

    let (fx, ul) = fixture();
    let f = from_a1_to(A3, A3_IP, false);
    let ttl = Duration::from_nanos(agent_common::NEXTHOP_TTL_NS);
    for (kind, stat) in [
        ("blackhole", Stat::DropRouteBlackhole),
        ("unreachable", Stat::DropRouteUnreachable),
        ("prohibit", Stat::DropRouteProhibit),
    ] {
        // Traffic flows; the next hop is learned (again) from the FIB.
        assert_eq!(fx.run_port(hook, &f).0, Verdict::Redirect, "{kind}: before");
        assert_eq!(fx.run_tc(&f).0, TC_ACT_REDIRECT, "{kind}: before, skb path");
        ul.ns.ip(&["route", "add", kind, "198.18.0.2/32"]);
        let installed = Instant::now();
        // Frames every 10 ms until one is dropped. The bound catches a cache that outlives
        // the route (that never stops); the figure is the TTL's.
        let took = holdfast_tests::netns::wait_for(Duration::from_secs(5), || {
            (fx.run_port(hook, &f).0 == Verdict::Drop).then(|| installed.elapsed())
        })
        .unwrap_or_else(|| panic!("{kind}: frames still sent 5 s after the route"));
        eprintln!("{kind} route obeyed after {took:?} (TTL {ttl:?})");
        assert!(took < ttl + Duration::from_secs(2), "{kind}: {took:?}");
        // From then on every frame is dropped and counted, on both paths; the cached next
        // hop does not stand in.
        for _ in 0..3 {
            dropped_at(&fx, hook, &f, stat);
            dropped_on_skb_path(&fx, &f, stat);
        }
        assert_eq!(fx.counters()[Stat::NextHopCached as usize], 0);
        ul.ns.ip(&["route", "del", kind, "198.18.0.2/32"]);
        let (verdict, out) = fx.run_port(hook, &f);
        assert_eq!(
            verdict,
            Verdict::Redirect,
            "{kind}: after the route is removed"
        );
        assert_eq!(out[0..6], NEIGH_MAC);
    }
    // A VTEP with no route at all: dropped as no_route, not sent to a cached next hop.
    ul.ns.ip(&["route", "del", "198.18.0.0/24", "dev", "ul0"]);
    std::thread::sleep(ttl + Duration::from_millis(100));
    dropped_at(&fx, hook, &f, Stat::DropNoRoute);
    dropped_on_skb_path(&fx, &f, Stat::DropNoRoute);
}

/// Issue 15: IPv6 inside VXLAN is delivered like IPv4, only from the `ip6` of the NIC its
/// source MAC names (the NIC behind the sending VTEP): another NIC's address, an address
/// nobody has, the router's or a link-local one are refused; inner TCP goes up for GRO.
#[test]
fn decapsulation_delivers_ipv6_only_from_the_sending_nics_own_ip6() {
    use std::net::Ipv6Addr;

    use agent_common::{Neigh6Entry, Neigh6Key};

    let (fx, _ul) = fixture();
    let a1_ip6 = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x11);
    let a3_ip6 = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x13);
    let router_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x68, 0x66ff, 0xfe00, 1);
    let entry = |mac, router| Neigh6Entry {
        mac,
        router,
        _pad: 0,
    };
    fx.insert_v6(
        &[],
        &[
            (Neigh6Key::new(VNI_A, a1_ip6.octets()), entry(A1, 0)),
            (Neigh6Key::new(VNI_A, a3_ip6.octets()), entry(A3, 0)),
            (Neigh6Key::new(VNI_A, router_ll.octets()), entry(A3, 1)),
        ],
        &[],
    );
    let inner6 = |src: Ipv6Addr, nh: u8| {
        let mut f = Vec::new();
        f.extend_from_slice(&A1);
        f.extend_from_slice(&A3);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, nh, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&a1_ip6.octets());
        f.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 16, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7]);
        f
    };
    let vx = |inner: &[u8]| vxlan(REMOTE_VTEP, LOCAL_VTEP, VNI_A, inner);
    let genuine = inner6(a3_ip6, 17);
    let (action, out) = fx.run_underlay(&vx(&genuine));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, genuine);
    let (action, _) = fx.run_underlay(&vx(&inner6(a3_ip6, 6)));
    assert_eq!(action, XDP_PASS, "inner TCP goes up for GRO");
    for src in [
        a1_ip6,
        Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x99),
        router_ll,
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x13),
    ] {
        refused(&fx, &vx(&inner6(src, 17)), Stat::DropInnerSpoofedIp);
    }
}
