//! The DHCPv6 responder (issue 15, RFC 8415) through `BPF_PROG_TEST_RUN` on both hooks: every
//! message a client sends, each reply decoded field by field with its checksum, and the
//! malformed and hostile versions, each dropped with its reason.

use std::net::Ipv6Addr;

use agent_common::{Binding6, BindingKey, Stat};
use holdfast::{model::MacAddr, render::dhcp6};
use holdfast_tests::{
    packet::checksum,
    xdp::{
        Fixture, ROUTER_MAC, TEST_IFINDEX, VM_IP, VM_MAC, Verdict, VmHook, back, desired_for,
        dropped_at, network, nic,
    },
};

holdfast_tests::for_each_hook!(
    a_solicit_gets_an_advertise_with_the_nics_address,
    a_solicit_with_rapid_commit_gets_a_reply,
    request_renew_and_rebind_get_the_address,
    a_stale_address_comes_back_with_lifetimes_zero,
    messages_for_another_server_get_silence,
    confirm_says_whether_the_address_is_on_link,
    information_request_release_and_decline_are_answered,
    checksums_hold_for_odd_and_even_lengths,
    malformed_and_hostile_messages_are_dropped_with_their_reason,
);

const VNI: u32 = 1001;
const VM_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x11);
/// A link-local address not derived from the MAC, as guests with stable privacy addresses have.
const VM_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1234, 0x5678, 0x9abc, 0xdef0);
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const ALL_SERVERS_MAC: [u8; 6] = [0x33, 0x33, 0, 1, 0, 2];
const TXID: [u8; 3] = [0xab, 0xcd, 0xef];
const IAID: [u8; 4] = [0, 0, 0x12, 0x34];

const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const REPLY: u8 = 7;
const RELEASE: u8 = 8;
const DECLINE: u8 = 9;
const INFORMATION_REQUEST: u8 = 11;
const RELAY_FORW: u8 = 12;

/// The router's link-local address, EUI-64 from `ROUTER_MAC`.
fn router_ll() -> Ipv6Addr {
    MacAddr(ROUTER_MAC).eui64_link_local()
}

/// This network's DUID option as the responder sends it (DUID-LL of the router MAC).
fn server_id() -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&ROUTER_MAC);
    d
}

/// The client's DUID-LL (10 bytes).
fn duid() -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&VM_MAC);
    d
}

/// VM_MAC bound with VM_IP6 in a dual-stack network whose options are `search` and one
/// resolver, rendered by the agent's own renderer.
fn fixture_with(search: &[&str]) -> Fixture {
    let mut net = network();
    net.subnet6 = Some("fd00:b1::/64".parse().expect("subnet6"));
    net.dns6 = vec!["fd00:b1::53".parse().expect("dns6")];
    net.search = search.iter().map(|s| s.to_string()).collect();
    let mut desired = desired_for(&net, &[nic(VM_MAC, VM_IP)], &[]);
    desired.bindings6.insert(
        BindingKey::new(TEST_IFINDEX, VM_MAC),
        Binding6 {
            ip6: VM_IP6.octets(),
            vni: VNI,
            _pad: 0,
        },
    );
    let opts = dhcp6::render(&net, MacAddr(ROUTER_MAC)).expect("dual stack");
    desired.dhcp6.insert(VNI, opts);
    Fixture::with(&desired, None)
}

/// The search list "blue.internal": the network's options end on an odd byte.
fn fixture() -> Fixture {
    fixture_with(&["blue.internal"])
}

fn tlv(code: u16, value: &[u8]) -> Vec<u8> {
    let mut t = code.to_be_bytes().to_vec();
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// An IA_NA for IAID with T1 = T2 = 0, holding `addr` if any.
fn ia_na(addr: Option<Ipv6Addr>) -> Vec<u8> {
    let mut v = IAID.to_vec();
    v.extend_from_slice(&[0; 8]);
    if let Some(a) = addr {
        let mut ia = a.octets().to_vec();
        ia.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&tlv(5, &ia));
    }
    tlv(3, &v)
}

/// A DHCPv6 message of `kind` with the options `opts` (TLVs, in order).
fn message(kind: u8, opts: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&TXID);
    for o in opts {
        m.extend_from_slice(o);
    }
    m
}

/// The message in UDP 546 -> 547 from VM_MAC at `src` to `dst`, with a complete checksum.
fn frame_to(src: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], msg: &[u8]) -> Vec<u8> {
    let mut udp = 546u16.to_be_bytes().to_vec();
    udp.extend_from_slice(&547u16.to_be_bytes());
    udp.extend_from_slice(&((8 + msg.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(msg);
    let c = udp6_checksum(src, dst, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[17, 1]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&udp);
    f
}

/// The message multicast to the servers from the VM's link-local address, as clients send.
fn frame(msg: &[u8]) -> Vec<u8> {
    frame_to(VM_LL, ALL_SERVERS, ALL_SERVERS_MAC, msg)
}

fn udp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 17]);
    p.extend_from_slice(udp);
    checksum(&p)
}

/// A reply decoded: its type, and its options in order.
struct Reply {
    kind: u8,
    options: Vec<(u16, Vec<u8>)>,
}

impl Reply {
    fn option(&self, code: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    fn status(&self) -> Option<u16> {
        self.option(13).map(|v| u16::from_be_bytes([v[0], v[1]]))
    }
}

/// Checks the reply's headers (to the VM from the router, UDP 547 -> 546, lengths, checksum
/// over the pseudo header) and decodes its message, which must echo the transaction.
fn decode(out: &[u8]) -> Reply {
    assert_eq!(&out[0..6], &VM_MAC, "to the client's MAC");
    assert_eq!(&out[6..12], &ROUTER_MAC, "from the router MAC");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(out[14] >> 4, 6);
    let payload = u16::from_be_bytes([out[18], out[19]]) as usize;
    assert_eq!(payload, out.len() - 54, "IPv6 payload length");
    assert_eq!(out[20], 17);
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&out[22..38]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
    assert_eq!(src, router_ll(), "from the router's link-local address");
    assert_eq!(dst, VM_LL, "to the client's address");
    let udp = &out[54..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 547);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 546);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
    assert_ne!(&udp[6..8], &[0, 0], "UDP over IPv6 always has a checksum");
    assert_eq!(udp6_checksum(src, dst, udp), 0, "UDP checksum");
    let m = &udp[8..];
    assert_eq!(&m[1..4], &TXID, "transaction id echoed");
    let mut options = Vec::new();
    let mut i = 4;
    while i < m.len() {
        let code = u16::from_be_bytes([m[i], m[i + 1]]);
        let len = u16::from_be_bytes([m[i + 2], m[i + 3]]) as usize;
        assert!(
            i + 4 + len <= m.len(),
            "option {code} runs past the message"
        );
        options.push((code, m[i + 4..i + 4 + len].to_vec()));
        i += 4 + len;
    }
    Reply {
        kind: m[0],
        options,
    }
}

/// Runs the frame on `hook`; it must come back to the VM as a reply, decoded.
fn answered(fx: &Fixture, hook: VmHook, frame: &[u8]) -> Reply {
    let (verdict, out) = fx.run_port(hook, frame);
    assert_eq!(verdict, back(hook), "not answered");
    decode(&out)
}

/// An address of an IA_NA with its preferred and valid lifetimes.
type IaAddr = (Ipv6Addr, u32, u32);

/// The IA_NA of a reply: its IAID, T1, T2, and its addresses.
fn ia_of(r: &Reply) -> ([u8; 4], u32, u32, Vec<IaAddr>) {
    let v = r.option(3).expect("IA_NA");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut addrs = Vec::new();
    let mut i = 12;
    while i < v.len() {
        let code = u16::from_be_bytes([v[i], v[i + 1]]);
        let len = u16::from_be_bytes([v[i + 2], v[i + 3]]) as usize;
        assert_eq!((code, len), (5, 24), "IAADDR");
        let a = &v[i + 4..i + 4 + len];
        addrs.push((
            Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap()),
            be(&a[16..20]),
            be(&a[20..24]),
        ));
        i += 4 + len;
    }
    (
        v[..4].try_into().unwrap(),
        be(&v[4..8]),
        be(&v[8..12]),
        addrs,
    )
}

/// What every reply carries: the client's identifier, this server's, the resolver and the
/// search list.
fn assert_common(r: &Reply, client: &[u8]) {
    assert_eq!(r.option(1), Some(client), "client identifier echoed");
    assert_eq!(
        r.option(2),
        Some(server_id().as_slice()),
        "server identifier"
    );
    assert_eq!(
        r.option(23),
        Some(&"fd00:b1::53".parse::<Ipv6Addr>().unwrap().octets()[..]),
        "DNS servers"
    );
    assert_eq!(
        r.option(24),
        Some(&b"\x04blue\x08internal\x00"[..]),
        "domain list"
    );
}

fn a_solicit_gets_an_advertise_with_the_nics_address(hook: VmHook) {
    let fx = fixture();
    let solicit = message(
        SOLICIT,
        &[
            tlv(1, &duid()),
            tlv(8, &[0, 0]),
            tlv(6, &[0, 23, 0, 24]),
            ia_na(None),
        ],
    );
    let r = answered(&fx, hook, &frame(&solicit));
    assert_eq!(r.kind, ADVERTISE);
    assert_common(&r, &duid());
    let (iaid, t1, t2, addrs) = ia_of(&r);
    assert_eq!(iaid, IAID, "the client's IAID");
    // The network's lease time (3600 s) as the lifetimes, T1 and T2 at 0.5 and 0.8.
    assert_eq!((t1, t2), (1800, 2880));
    assert_eq!(addrs, vec![(VM_IP6, 3600, 3600)]);
    assert_eq!(r.option(14), None, "no rapid commit unasked");
    let c = fx.counters();
    assert_eq!(c[Stat::Dhcp6Solicit as usize], 1);
    assert_eq!(c[Stat::Dhcp6Advertise as usize], 1);
}

fn a_solicit_with_rapid_commit_gets_a_reply(hook: VmHook) {
    let fx = fixture();
    let solicit = message(SOLICIT, &[tlv(1, &duid()), tlv(14, &[]), ia_na(None)]);
    let r = answered(&fx, hook, &frame(&solicit));
    assert_eq!(r.kind, REPLY);
    assert_eq!(r.option(14), Some(&[][..]), "rapid commit in the reply");
    assert_common(&r, &duid());
    assert_eq!(ia_of(&r).3, vec![(VM_IP6, 3600, 3600)]);
    let c = fx.counters();
    assert_eq!(c[Stat::Dhcp6Reply as usize], 1);
    assert_eq!(c[Stat::Dhcp6RapidCommit as usize], 1);
}

fn request_renew_and_rebind_get_the_address(hook: VmHook) {
    let fx = fixture();
    for (kind, stat) in [
        (REQUEST, Stat::Dhcp6Request),
        (RENEW, Stat::Dhcp6Renew),
        (REBIND, Stat::Dhcp6Rebind),
    ] {
        let mut opts = vec![tlv(1, &duid())];
        if kind != REBIND {
            opts.push(tlv(2, &server_id()));
        }
        opts.push(ia_na(Some(VM_IP6)));
        let r = answered(&fx, hook, &frame(&message(kind, &opts)));
        assert_eq!(r.kind, REPLY, "{kind}");
        assert_common(&r, &duid());
        assert_eq!(ia_of(&r).0, IAID);
        assert_eq!(ia_of(&r).3, vec![(VM_IP6, 3600, 3600)], "{kind}");
        assert_eq!(fx.counters()[stat as usize], 1);
    }
    // From the NIC's own address too (a client renewing from its address), and to the
    // router's link-local address rather than the multicast group.
    let renew = message(
        RENEW,
        &[tlv(1, &duid()), tlv(2, &server_id()), ia_na(Some(VM_IP6))],
    );
    let (verdict, out) = fx.run_port(hook, &frame_to(VM_LL, router_ll(), ROUTER_MAC, &renew));
    assert_eq!(verdict, back(hook));
    assert_eq!(decode(&out).kind, REPLY);
    // Without an IA_NA: the options only.
    let r = answered(
        &fx,
        hook,
        &frame(&message(REQUEST, &[tlv(1, &duid()), tlv(2, &server_id())])),
    );
    assert_eq!((r.kind, r.option(3)), (REPLY, None));
}

/// RFC 8415 §18.3.4: an address the client holds that is not its `ip6` any more (IPAM
/// renumbered the NIC) comes back with lifetimes 0, beside the current one.
fn a_stale_address_comes_back_with_lifetimes_zero(hook: VmHook) {
    let fx = fixture();
    let old = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x99);
    for kind in [RENEW, REBIND, REQUEST] {
        let mut opts = vec![tlv(1, &duid())];
        if kind != REBIND {
            opts.push(tlv(2, &server_id()));
        }
        opts.push(ia_na(Some(old)));
        let r = answered(&fx, hook, &frame(&message(kind, &opts)));
        assert_eq!(
            ia_of(&r).3,
            vec![(VM_IP6, 3600, 3600), (old, 0, 0)],
            "{kind}"
        );
    }
}

/// RFC 8415 §16: a REQUEST, RENEW, RELEASE or DECLINE for another server, or an
/// INFORMATION-REQUEST naming one, is that server's to answer.
fn messages_for_another_server_get_silence(hook: VmHook) {
    let fx = fixture();
    let mut other = server_id();
    other[9] ^= 0xff;
    for kind in [REQUEST, RENEW, RELEASE, DECLINE, INFORMATION_REQUEST] {
        let m = message(
            kind,
            &[tlv(1, &duid()), tlv(2, &other), ia_na(Some(VM_IP6))],
        );
        dropped_at(&fx, hook, &frame(&m), Stat::Dhcp6OtherServer);
    }
    // A DUID of another type or length is another server's too.
    let llt = [0u8, 1, 0, 1, 0, 0, 0, 1, 2, 0x68, 0x66, 0, 0, 1];
    let m = message(RENEW, &[tlv(1, &duid()), tlv(2, &llt), ia_na(Some(VM_IP6))]);
    dropped_at(&fx, hook, &frame(&m), Stat::Dhcp6OtherServer);
}

fn confirm_says_whether_the_address_is_on_link(hook: VmHook) {
    let fx = fixture();
    // Its own address: Success.
    let r = answered(
        &fx,
        hook,
        &frame(&message(CONFIRM, &[tlv(1, &duid()), ia_na(Some(VM_IP6))])),
    );
    assert_eq!((r.kind, r.status()), (REPLY, Some(0)), "Success");
    assert_eq!(r.option(3), None, "no IA in a CONFIRM's reply");
    assert_common(&r, &duid());
    // Another address of the same /64 (another NIC's, or its own before IPAM renumbered it):
    // NotOnLink, so that it solicits again instead of using an address the port drops.
    let near = Ipv6Addr::new(0xfd00, 0xb1, 0, 0, 0, 0, 0, 0x42);
    let r = answered(
        &fx,
        hook,
        &frame(&message(CONFIRM, &[tlv(1, &duid()), ia_na(Some(near))])),
    );
    assert_eq!((r.kind, r.status()), (REPLY, Some(4)), "NotOnLink");
    // A VM moved from another network: NotOnLink.
    let far = Ipv6Addr::new(0xfd00, 0xb2, 0, 0, 0, 0, 0, 0x11);
    let r = answered(
        &fx,
        hook,
        &frame(&message(CONFIRM, &[tlv(1, &duid()), ia_na(Some(far))])),
    );
    assert_eq!(r.status(), Some(4), "NotOnLink");
    assert_eq!(fx.counters()[Stat::Dhcp6NotOnLink as usize], 2);
    // No address to confirm: no reply (§18.3.3).
    dropped_at(
        &fx,
        hook,
        &frame(&message(CONFIRM, &[tlv(1, &duid()), ia_na(None)])),
        Stat::Dhcp6NoAddressAsked,
    );
}

fn information_request_release_and_decline_are_answered(hook: VmHook) {
    let mut fx = fixture();
    let mut ring = fx.dp.take_events().expect("event ring");
    // Stateless configuration: the options alone, with or without a client identifier.
    let r = answered(
        &fx,
        hook,
        &frame(&message(INFORMATION_REQUEST, &[tlv(1, &duid())])),
    );
    assert_eq!((r.kind, r.option(3), r.status()), (REPLY, None, None));
    assert_common(&r, &duid());
    let r = answered(
        &fx,
        hook,
        &frame(&message(INFORMATION_REQUEST, &[tlv(8, &[0, 0])])),
    );
    assert_eq!((r.kind, r.option(1)), (REPLY, None));
    assert_eq!(r.option(2), Some(server_id().as_slice()));
    // RELEASE and DECLINE: Success, counted (RFC 8415 §18.3.7, §18.3.8).
    for (kind, stat) in [(RELEASE, Stat::Dhcp6Release), (DECLINE, Stat::Dhcp6Decline)] {
        let m = message(
            kind,
            &[tlv(1, &duid()), tlv(2, &server_id()), ia_na(Some(VM_IP6))],
        );
        let r = answered(&fx, hook, &frame(&m));
        assert_eq!((r.kind, r.status(), r.option(3)), (REPLY, Some(0), None));
        assert_eq!(fx.counters()[stat as usize], 1);
    }
    // Both reported to the agent, as their DHCPv4 twins are.
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(holdfast::dataplane::parse_event(&item).expect("event"));
    }
    let kinds: Vec<(u32, u32, [u8; 6])> =
        events.iter().map(|e| (e.kind, e.ifindex, e.mac)).collect();
    let v6 = agent_common::dhcp6::EVENT_DHCP6;
    assert_eq!(
        kinds,
        vec![
            (v6 | u32::from(RELEASE), TEST_IFINDEX, VM_MAC),
            (v6 | u32::from(DECLINE), TEST_IFINDEX, VM_MAC)
        ]
    );
}

/// The client identifier is the reply's last option: after an odd-length list of the
/// network's options its words straddle the checksum's; both parities of both, and the
/// longest DUID.
fn checksums_hold_for_odd_and_even_lengths(hook: VmHook) {
    for search in [&["blue.internal"][..], &["blue.internal", "x"][..]] {
        let fx = fixture_with(search);
        for len in [3usize, 4, 9, 10, 17, 130] {
            let id: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let m = message(SOLICIT, &[tlv(1, &id), ia_na(None)]);
            let r = answered(&fx, hook, &frame(&m));
            assert_eq!(r.option(1), Some(id.as_slice()), "DUID of {len} bytes");
        }
    }
}

fn malformed_and_hostile_messages_are_dropped_with_their_reason(hook: VmHook) {
    let fx = fixture();
    let cid = tlv(1, &duid());
    let drop = |m: Vec<u8>, stat: Stat| dropped_at(&fx, hook, &frame(&m), stat);
    // RFC 8415 §16: identifiers a message must carry, and must not.
    drop(message(SOLICIT, &[ia_na(None)]), Stat::DropDhcp6Malformed);
    drop(
        message(SOLICIT, &[cid.clone(), tlv(2, &server_id()), ia_na(None)]),
        Stat::DropDhcp6Malformed,
    );
    drop(
        message(REQUEST, &[cid.clone(), ia_na(None)]),
        Stat::DropDhcp6Malformed,
    );
    drop(
        message(REBIND, &[cid.clone(), tlv(2, &server_id()), ia_na(None)]),
        Stat::DropDhcp6Malformed,
    );
    drop(
        message(RELEASE, &[cid.clone(), ia_na(Some(VM_IP6))]),
        Stat::DropDhcp6Malformed,
    );
    // A SOLICIT asking for no address (temporary addresses or a prefix only).
    drop(
        message(SOLICIT, &[cid.clone(), tlv(25, &[0; 12])]),
        Stat::Dhcp6NoAddressAsked,
    );
    // TLVs that do not add up: an option running past the message, a truncated header.
    let mut past = message(SOLICIT, &[cid.clone(), ia_na(None)]);
    past.extend_from_slice(&[0, 8, 0, 10, 0]);
    drop(past, Stat::DropDhcp6Malformed);
    let mut short = message(SOLICIT, &[cid.clone(), ia_na(None)]);
    short.extend_from_slice(&[0, 8]);
    drop(short, Stat::DropDhcp6Malformed);
    // More options than are scanned.
    let mut many = vec![cid.clone(), ia_na(None)];
    many.extend((0..40).map(|_| tlv(8, &[0, 0])));
    drop(message(SOLICIT, &many), Stat::DropDhcp6Malformed);
    // A message over the window, and an identifier over RFC 8415's 130 bytes.
    drop(
        message(SOLICIT, &[cid.clone(), ia_na(None), tlv(16, &[7; 1100])]),
        Stat::DropDhcp6Malformed,
    );
    drop(
        message(SOLICIT, &[tlv(1, &[9; 131]), ia_na(None)]),
        Stat::DropDhcp6Malformed,
    );
    drop(
        message(SOLICIT, &[tlv(1, &[0, 3]), ia_na(None)]),
        Stat::DropDhcp6Malformed,
    );
    // Server messages and relayed ones from a VM.
    drop(
        message(ADVERTISE, &[cid.clone(), ia_na(None)]),
        Stat::DropDhcp6UnknownType,
    );
    drop(
        message(REPLY, &[cid.clone(), ia_na(None)]),
        Stat::DropDhcp6UnknownType,
    );
    drop(
        message(RELAY_FORW, &[cid.clone(), ia_na(None)]),
        Stat::DropDhcpRelayed,
    );
    // A message too short to have a header.
    let mut tiny = frame(&message(SOLICIT, &[]));
    tiny.truncate(tiny.len() - 2);
    tiny[18..20].copy_from_slice(&10u16.to_be_bytes());
    tiny[58..60].copy_from_slice(&10u16.to_be_bytes());
    dropped_at(&fx, hook, &tiny, Stat::DropDhcp6Malformed);
    // From the unspecified address, or to an address that is neither the servers' group nor
    // the router.
    let ok = message(SOLICIT, &[cid.clone(), ia_na(None)]);
    dropped_at(
        &fx,
        hook,
        &frame_to(Ipv6Addr::UNSPECIFIED, ALL_SERVERS, ALL_SERVERS_MAC, &ok),
        Stat::DropDhcp6Malformed,
    );
    let elsewhere = Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 1, 3);
    dropped_at(
        &fx,
        hook,
        &frame_to(VM_LL, elsewhere, [0x33, 0x33, 0, 1, 0, 3], &ok),
        Stat::DropDhcp6Malformed,
    );
    // A UDP length past the IPv6 payload.
    let mut long = frame(&ok);
    long[58..60].copy_from_slice(&500u16.to_be_bytes());
    dropped_at(&fx, hook, &long, Stat::DropDhcp6Malformed);
    // Another VM's DUID changes nothing: the reply holds this NIC's address.
    let mut theirs = vec![0, 3, 0, 1];
    theirs.extend_from_slice(&[2, 0, 0, 0, 0, 0x77]);
    let r = answered(
        &fx,
        hook,
        &frame(&message(SOLICIT, &[tlv(1, &theirs), ia_na(None)])),
    );
    assert_eq!(ia_of(&r).3, vec![(VM_IP6, 3600, 3600)]);
    // The same request still answered after all of it.
    let r = answered(&fx, hook, &frame(&ok));
    assert_eq!(r.kind, ADVERTISE);
    // A NIC without IPv6 is not answered.
    let fx = Fixture::new();
    dropped_at(&fx, hook, &frame(&ok), Stat::DropIpv6NotConfigured);
}

/// xdp mode answers DHCPv6 only in XDP: on its skb path requests are dropped and counted,
/// which means the port's XDP program is not running.
#[test]
fn dhcpv6_on_the_skb_path_is_dropped() {
    let fx = fixture();
    let m = message(SOLICIT, &[tlv(1, &duid()), ia_na(None)]);
    let (action, _) = fx.run_tc(&frame(&m));
    assert_eq!(Verdict::of_tc(action), Verdict::Drop);
    assert_eq!(fx.counters()[Stat::Dhcp6Unanswered as usize], 1);
}
