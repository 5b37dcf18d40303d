//! IPv6 from a VM, at either hook (issue 15): neighbour discovery and router solicitations
//! answered on the port (RFC 4861), anti-spoofing, and forwarding by destination MAC as for
//! IPv4.
//!
//! A NIC's IPv6 address is managed (its `ip6`, from IPAM; router advertisements say M=1 and
//! carry the prefix with A=0), so its global source must be that address. A link-local source
//! (guests derive theirs from a secret as often as from the MAC, RFC 7217) is allowed only for
//! what a host does before it has an address: neighbour and router solicitations and DHCPv6,
//! all toward the router or multicast, and all answered here. Nothing to the router or to
//! multicast crosses the port otherwise: no neighbour discovery and no MLD ever reaches the
//! underlay.
//!
//! xdp mode answers in XDP and hands IPv6 data to the skb path, where the kernel keeps the
//! checksum state a guest's offload left (XDP would have to finish TCP and UDP checksums over
//! IPv6 itself); tc mode does all of it on the skb.

use agent_common::{
    Binding6, BindingKey, FdbEntry, FdbKey, Neigh6Key, NextHop, RA_MAX, RateKind, Stat,
    eui64_link_local,
};

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add16, add32, be16, fold},
    ctx::Ctx,
    dhcp6,
    l4csum::IPPROTO_TCP,
    maps::{BINDINGS, BINDINGS6, CONFIG, FDB, NEIGH6, VNIS, VNIS6},
    parse::{
        ETH_HLEN, ETH_P_IPV6, EthHdr, IPPROTO_ICMPV6, IPPROTO_UDP, IPV6_HLEN, Ipv6Hdr, UdpHdr,
        ip6_eq, load, mac_eq,
    },
    ratelimit,
    stats::count,
    vm::pass,
    vxlan::{self, Hop},
};

const ICMP6_OFF: usize = ETH_HLEN + IPV6_HLEN;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
/// Neighbour discovery's hop limit: a message with another was forwarded by a router, and is
/// not from this link (RFC 4861 §6.1, §7.1).
const ND_HOP_LIMIT: u8 = 255;
const DHCP6_SERVER_PORT: u16 = 547;
/// A neighbour advertisement: Ethernet, IPv6, the 24-byte message, a target link-layer
/// address option (RFC 4861 §4.4, §4.6.1).
const NA_LEN: usize = ICMP6_OFF + 24 + 8;
/// A router advertisement's headers before its body (`Ra6::body`): Ethernet, IPv6, and the
/// ICMPv6 type, code and checksum.
const RA_HEAD: usize = ICMP6_OFF + 4;

/// Where a frame's IPv6 source stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The NIC's `ip6`.
    Own,
    /// fe80::/10.
    LinkLocal,
    /// :: (duplicate address detection).
    Unspecified,
}

#[inline(always)]
pub fn from_vm<C: Ctx, const ANSWERS: bool>(ctx: &C, eth: &EthHdr) -> Result<u32, Stat> {
    let ip: Ipv6Hdr = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(Stat::DropMalformed);
    }
    let key = BindingKey::new(ctx.ifindex(), eth.src);
    let Some(b6) = BINDINGS6.get_ptr(&key) else {
        // A NIC of this port without IPv6, or no NIC of this port at all.
        return Err(if BINDINGS.get_ptr(&key).is_some() {
            Stat::DropIpv6NotConfigured
        } else {
            Stat::DropSpoofedMac
        });
    };
    // SAFETY: map value pointers stay valid for the program run.
    let b6: Binding6 = unsafe { *b6 };
    let source = if ip6_eq(&ip.saddr, &b6.ip6) {
        Source::Own
    } else if ip.saddr[0] == 0xfe && ip.saddr[1] & 0xc0 == 0x80 {
        Source::LinkLocal
    } else if ip6_eq(&ip.saddr, &[0; 16]) {
        Source::Unspecified
    } else {
        return Err(Stat::DropSpoofedIp6);
    };
    let to_router = mac_eq(&eth.dst, &ROUTER_MAC.load());
    let multicast = eth.dst[0] & 1 != 0 || ip.daddr[0] == 0xff;
    if to_router || multicast || source != Source::Own {
        return control::<C, ANSWERS>(ctx, eth, &ip, source, &b6, to_router, multicast);
    }
    forward(ctx, eth, &ip, b6.vni)
}

/// What a VM sends to the router, to multicast, or from a link-local or unspecified source:
/// answered if it is neighbour discovery or a router solicitation, dropped otherwise.
#[inline(always)]
fn control<C: Ctx, const ANSWERS: bool>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv6Hdr,
    source: Source,
    b6: &Binding6,
    to_router: bool,
    multicast: bool,
) -> Result<u32, Stat> {
    match ip.nexthdr {
        IPPROTO_ICMPV6 => {
            let kind: u8 = load(ctx, ICMP6_OFF).ok_or(Stat::DropMalformed)?;
            match kind {
                ND_NEIGHBOR_SOLICIT | ND_ROUTER_SOLICIT if !ANSWERS => {
                    return Err(Stat::DropNd6SkbPath);
                }
                ND_NEIGHBOR_SOLICIT => return neighbour_solicit(ctx, eth, ip, source, b6),
                ND_ROUTER_SOLICIT => return router_solicit(ctx, eth, ip, source, b6.vni),
                ND_NEIGHBOR_ADVERT | ND_ROUTER_ADVERT | ND_REDIRECT => {
                    return Err(Stat::DropNd6NoAnswer);
                }
                _ => {}
            }
        }
        IPPROTO_UDP => {
            let udp: UdpHdr = load(ctx, ICMP6_OFF).ok_or(Stat::DropMalformed)?;
            if udp.source == be16(DHCP6_SERVER_PORT) {
                return Err(Stat::DropDhcpRogueServer);
            }
            if udp.dest == be16(DHCP6_SERVER_PORT) {
                // Only XDP answers in xdp mode: here, its program is not running.
                if !ANSWERS {
                    return Err(Stat::Dhcp6Unanswered);
                }
                return dhcp6::handle(ctx, eth, ip, &udp, b6);
            }
        }
        _ if to_router || multicast => return Err(Stat::DropIpv6ExtHeader),
        _ => {}
    }
    if source != Source::Own {
        return Err(Stat::DropIpv6LinkLocal);
    }
    if to_router {
        // IPv6 is not routed (issue 16 routes IPv4 only): dropped, and never handed to the
        // host stack.
        return Err(Stat::ToRouter);
    }
    Err(Stat::DropBcastMcast)
}

/// RFC 4861 §7.2.3-4: a solicitation for an address of the NIC's network (another NIC's, or
/// the router's link-local address) is answered with that address's MAC, solicited; the
/// router's with the router flag. A probe from :: (duplicate address detection) is never
/// answered, and neither is a solicitation for the NIC's own address.
#[inline(always)]
fn neighbour_solicit<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv6Hdr,
    source: Source,
    b6: &Binding6,
) -> Result<u32, Stat> {
    if ip.hop_limit != ND_HOP_LIMIT || (u16::from_be(ip.payload_len) as usize) < 24 {
        return Err(Stat::DropNd6Malformed);
    }
    if source == Source::Unspecified {
        return Err(Stat::Nd6Dad);
    }
    // Each answer costs the host a transmission: ND shares ARP's limit.
    if !ratelimit::allow(ctx.ifindex(), RateKind::Arp) {
        return Err(Stat::DropNd6RateLimited);
    }
    let target: [u8; 16] = load(ctx, ICMP6_OFF + 8).ok_or(Stat::DropNd6Malformed)?;
    if ip6_eq(&target, &b6.ip6) {
        return Err(Stat::DropNd6NoAnswer);
    }
    let entry = NEIGH6
        .get_ptr(&Neigh6Key::new(b6.vni, target))
        .ok_or(Stat::DropNd6Unknown)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (mac, router) = unsafe { ((*entry).mac, (*entry).router) };

    let payload = (NA_LEN - ICMP6_OFF) as u16;
    let (f, mut s) = answer::<NA_LEN>(
        &eth.src,
        &mac,
        &target,
        &ip.saddr,
        payload,
        ND_NEIGHBOR_ADVERT,
    )?;
    // Router (for the router's address), Solicited, Override.
    let flags = if router != 0 { 0xe0 } else { 0x60 };
    f[58] = flags;
    f[62..78].copy_from_slice(&target);
    // Target link-layer address option.
    f[78] = 2;
    f[79] = 1;
    f[80..86].copy_from_slice(&mac);
    s = add_bytes(s, flags, 0);
    s = add16_addr(s, &target);
    s = add_bytes(s, 2, 1);
    s = crate::csum::add_mac(s, &mac);
    f[56..58].copy_from_slice(&fold(s).to_ne_bytes());
    send(ctx, f, Stat::Nd6Reply)
}

/// RFC 4861 §6.2.6: a router solicitation is answered with the network's advertisement, from
/// the router's link-local address, to the solicitor (to all nodes when it has no address
/// yet: it may not be able to receive otherwise).
#[inline(always)]
fn router_solicit<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv6Hdr,
    source: Source,
    vni: u32,
) -> Result<u32, Stat> {
    if ip.hop_limit != ND_HOP_LIMIT || (u16::from_be(ip.payload_len) as usize) < 8 {
        return Err(Stat::DropNd6Malformed);
    }
    if !ratelimit::allow(ctx.ifindex(), RateKind::Arp) {
        return Err(Stat::DropNd6RateLimited);
    }
    let ra = VNIS6.get_ptr(&vni).ok_or(Stat::DropIpv6NotConfigured)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (len, body_csum) = unsafe { ((*ra).len as usize, (*ra).csum) };
    if !(12..=RA_MAX).contains(&len) {
        return Err(Stat::DropMalformed);
    }
    let router = ROUTER_MAC.load();
    let src = eui64_link_local(router);
    let dst = if source == Source::Unspecified {
        ALL_NODES
    } else {
        ip.saddr
    };
    let payload = (4 + len) as u16;
    let (f, mut s) = answer::<RA_HEAD>(&eth.src, &router, &src, &dst, payload, ND_ROUTER_ADVERT)?;
    s += body_csum as u64;
    f[56..58].copy_from_slice(&fold(s).to_ne_bytes());
    // The frame grows only to what the advertisement uses: a solicitation without a source
    // link-layer option (NetworkManager's, 62 bytes) left too little head- and tailroom on a
    // veth for the whole RA_MAX body. `len` is bounded above, which the helper needs.
    ctx.resize((RA_HEAD + len) as u32)?;
    // Checked again where the helper takes it: the verifier must see the bound on the very
    // register passed (the check above may be on a copy the compiler spilled before it).
    let body_len = core::hint::black_box(len as u32);
    if body_len == 0 || body_len > RA_MAX as u32 {
        return Err(Stat::DropMalformed);
    }
    // SAFETY: `f` holds RA_HEAD bytes and the map value's body RA_MAX >= body_len; the helper
    // checks the packet range itself.
    unsafe {
        if ctx.store_bytes(0, f.as_ptr(), RA_HEAD as u32) != 0
            || ctx.store_bytes(RA_HEAD as u32, (*ra).body.as_ptr(), body_len) != 0
        {
            return Err(Stat::DropMalformed);
        }
    }
    count(Stat::Ra6Reply);
    Ok(ctx.tx())
}

/// Unicast IPv6 from the NIC's own address to another NIC of its network, by destination MAC:
/// on the skb (xdp mode hands it there), redirected to a local NIC or encapsulated toward the
/// VTEP of a remote one.
#[inline(always)]
fn forward<C: Ctx>(ctx: &C, eth: &EthHdr, ip: &Ipv6Hdr, vni: u32) -> Result<u32, Stat> {
    let fdb = FDB
        .get_ptr(&FdbKey::new(vni, eth.dst))
        .ok_or(Stat::DropUnknownUnicast)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (kind, dst_ifindex, vtep) = unsafe { ((*fdb).kind, (*fdb).ifindex, (*fdb).vtep) };
    if kind != FdbEntry::LOCAL && kind != FdbEntry::REMOTE {
        return Err(Stat::DropUnknownUnicast);
    }
    if !C::SKB {
        return pass::<C>(Stat::ToSkbPath);
    }
    let info = VNIS.get_ptr(&vni).ok_or(Stat::DropUnknownUnicast)?;
    // SAFETY: as above.
    let mtu = unsafe { (*info).mtu };
    if wire_size(ctx, ip)? > mtu {
        return packet_too_big(ctx, eth, ip, mtu);
    }
    if kind == FdbEntry::LOCAL {
        count(Stat::SkbForwardLocal);
        return Ok(ctx.redirect(dst_ifindex));
    }
    let cfg = CONFIG.get(0).ok_or(Stat::DropNoUnderlay)?;
    if cfg.vtep == 0 || cfg.underlay_ifindex == 0 {
        return Err(Stat::DropNoUnderlay);
    }
    let hop: Option<NextHop> = match vxlan::next_hop(ctx, cfg, vtep)? {
        Hop::Ready(hop) => Some(hop),
        Hop::Unresolved => None,
    };
    let ports: u32 = load(ctx, ICMP6_OFF).unwrap_or(0);
    let hash = vxlan::flow_hash(fold32(&ip.saddr), fold32(&ip.daddr), ports, ip.nexthdr);
    vxlan::encap(ctx, cfg, hop.as_ref(), eth, vtep, vni, hash)?;
    count(Stat::SkbEncap);
    match hop {
        Some(h) => ctx.redirect_encapsulated(h.ifindex),
        None => ctx.redirect_neigh(cfg.underlay_ifindex),
    }
}

/// An answer of `N` bytes begun in this CPU's scratch: the Ethernet and IPv6 headers (to
/// `dst_mac` and `dst`, from `src_mac` and `src`, hop limit 255, `payload` bytes of ICMPv6) and
/// the ICMPv6 type. Returns it, and its checksum's sum so far: the pseudo header and the type.
#[inline(always)]
fn answer<const N: usize>(
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
    src: &[u8; 16],
    dst: &[u8; 16],
    payload: u16,
    kind: u8,
) -> Result<(&'static mut [u8; N], u64), Stat> {
    let f = crate::icmp::scratch::<N>()?;
    f[0..6].copy_from_slice(dst_mac);
    f[6..12].copy_from_slice(src_mac);
    f[12..14].copy_from_slice(&be16(ETH_P_IPV6).to_ne_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&be16(payload).to_ne_bytes());
    f[20] = IPPROTO_ICMPV6;
    f[21] = ND_HOP_LIMIT;
    f[22..38].copy_from_slice(src);
    f[38..54].copy_from_slice(dst);
    f[ICMP6_OFF] = kind;
    Ok((f, add_bytes(pseudo(src, dst, payload), kind, 0)))
}

/// Replaces the frame with the answer `f` and sends it back to the VM, counted as `stat`.
#[inline(always)]
fn send<C: Ctx, const N: usize>(ctx: &C, f: &[u8; N], stat: Stat) -> Result<u32, Stat> {
    ctx.resize(N as u32)?;
    // SAFETY: `f` holds N bytes; the helper checks the packet range itself.
    if unsafe { ctx.store_bytes(0, f.as_ptr(), N as u32) } != 0 {
        return Err(Stat::DropMalformed);
    }
    count(stat);
    Ok(ctx.tx())
}

/// The invoking datagram's IPv6 header and first 8 bytes go back with the error: what the
/// sender's stack needs to find the socket (RFC 4443 §3.2 allows up to the minimum MTU).
const PTB_QUOTED: usize = IPV6_HLEN + 8;
/// The whole answer: Ethernet, IPv6, the ICMPv6 header and MTU, the quoted bytes.
const PTB_LEN: usize = ICMP6_OFF + 8 + PTB_QUOTED;
const ICMP6_PACKET_TOO_BIG: u8 = 2;

/// Rewrites the frame into an ICMPv6 packet-too-big (RFC 4443 §3.2) from the router's
/// link-local address to the VM's address, carrying the network's `mtu`, and sends it back out
/// of the port, so that the VM's path MTU discovery converges (RFC 8201) instead of the
/// datagram vanishing.
#[inline(always)]
fn packet_too_big<C: Ctx>(ctx: &C, eth: &EthHdr, ip: &Ipv6Hdr, mtu: u32) -> Result<u32, Stat> {
    let orig: [u8; PTB_QUOTED] = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    let router = ROUTER_MAC.load();
    let src = eui64_link_local(router);
    let payload = (PTB_LEN - ICMP6_OFF) as u16;
    let (f, mut c) = answer::<PTB_LEN>(
        &eth.src,
        &router,
        &src,
        &ip.saddr,
        payload,
        ICMP6_PACKET_TOO_BIG,
    )?;
    f[58..62].copy_from_slice(&mtu.to_be_bytes());
    f[62..PTB_LEN].copy_from_slice(&orig);
    let mut i = 58;
    while i < PTB_LEN {
        c = add_bytes(c, f[i], f[i + 1]);
        i += 2;
    }
    f[56..58].copy_from_slice(&fold(c).to_ne_bytes());
    send(ctx, f, Stat::Icmp6PacketTooBig)
}

/// The IPv6 length of what goes on the wire: each segment of a GSO frame, or the frame.
/// Extension headers are not walked: a GSO frame from a guest carries none.
#[inline(always)]
fn wire_size<C: Ctx>(ctx: &C, ip: &Ipv6Hdr) -> Result<u32, Stat> {
    let gso_size = ctx.gso_size();
    if gso_size == 0 {
        return Ok(ctx.len() - ETH_HLEN as u32);
    }
    let l4_hdr = if ip.nexthdr == IPPROTO_TCP {
        let off: u8 = load(ctx, ICMP6_OFF + 12).ok_or(Stat::DropMalformed)?;
        ((off >> 4) as u32) * 4
    } else {
        8
    };
    Ok(IPV6_HLEN as u32 + l4_hdr + gso_size)
}

/// ff02::1, all nodes.
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The ICMPv6 pseudo header's sum (RFC 8200 §8.1): addresses, upper-layer length, next header.
#[inline(always)]
fn pseudo(src: &[u8; 16], dst: &[u8; 16], len: u16) -> u64 {
    let s = add16_addr(add16_addr(0, src), dst);
    add_bytes(add16(s, be16(len)), 0, IPPROTO_ICMPV6)
}

/// Adds the eight words of an IPv6 address.
#[inline(always)]
fn add16_addr(mut s: u64, a: &[u8; 16]) -> u64 {
    let mut i = 0;
    while i < 16 {
        s = add32(s, u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]));
        i += 4;
    }
    s
}

/// An IPv6 address folded to 32 bits, for the flow hash.
#[inline(always)]
fn fold32(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12)
}
