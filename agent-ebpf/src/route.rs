//! Routing between the networks of a VPC and to gateway VMs (issue 16), at either hook: what a
//! VM sends to the router MAC, and the check of routed frames arriving from the underlay.
//!
//! Every host routes what its own VMs send (no central router): `ROUTES` holds, for each
//! network a frame may come from, its VPC's subnets and gateway addresses and its own routes;
//! the destination's NIC is then found as a bridged frame's is (`ARP`, `FDB`) and the frame
//! goes through the same delivery (`vm::deliver`): to a local VM, or encapsulated toward the
//! VTEP of a remote one, in the destination network's VNI.
//!
//! A frame to the router MAC, in order:
//! 1. IPv4 with a 20-byte header only (IPv6 is not routed: `ip6` drops it as `ToRouter`; IP
//!    options are not routed), to a unicast destination (RFC 1812 §5.3.5: a limited broadcast
//!    is never forwarded; multicast needs a multicast router).
//! 2. The longest prefix of (sending network, destination) in `ROUTES`:
//!    - `GATEWAY`: the router itself. An ICMP echo request is answered from that address;
//!      anything else is dropped (`DropToGateway`).
//!    - A TTL of 1 or 0: ICMP time exceeded (RFC 792, RFC 1812 §5.3.1), so that traceroute
//!      shows the hop.
//!    - `SUBNET`: the destination's NIC in that network; `VIA`: the forwarding NIC at `via`.
//!      No NIC there: ICMP host unreachable.
//!    - Nothing: ICMP network unreachable (another VPC's subnets are in no table).
//! 3. The frame leaves from the router MAC to the NIC's MAC, its TTL decremented (its header
//!    checksum updated, RFC 1624), in the destination network's VNI, checked against that
//!    network's MTU (frag-needed as for a bridged frame).
//!
//! ICMP errors come from the sending network's gateway and go back out of the port. None is
//! sent about an ICMP error, a fragment other than the first, or a datagram whose source is no
//! single host (RFC 1122 §3.2.2); such frames are dropped, counted (`DropRouteSilent`).

use agent_common::{ArpKey, FdbEntry, FdbKey, ForwarderKey, RouteDst, RouteEntry, Stat};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add16, add32, fold},
    ctx::Ctx,
    icmp::{
        self, DEST_UNREACH, ECHO_REPLY, ECHO_REQUEST, HOST_UNREACH, IPPROTO_ICMP, NET_UNREACH,
        TIME_EXCEEDED,
    },
    maps::{ARP, FDB, FORWARDERS, ROUTES, VNIS},
    parse::{ETH_HLEN, EthHdr, IP_MF, IP_OFFSET, IPV4_HLEN, Ipv4Hdr, load, ptr_at},
    stats::count,
    vm::{Delivery, deliver, pass},
};

/// The key of `ROUTES` that finds the longest prefix of `addr` in network `vni`'s table: all
/// of `vni`, all of the address.
#[inline(always)]
fn key(vni: u32, addr: u32) -> Key<RouteDst> {
    Key::new(64, RouteDst { vni, addr })
}

/// The route of `addr` in network `vni`'s table: its kind, network and `via` (kind 0: none).
#[inline(always)]
fn lookup(vni: u32, addr: u32) -> (u32, u32, u32) {
    match ROUTES.get(&key(vni, addr)) {
        Some(r) => (r.kind, r.vni, r.via),
        None => (0, 0, 0),
    }
}

/// Whether a forwarding NIC of network `vni` may send from `saddr`, which is not its own: an
/// address outside its VPC (what a gateway VM forwards: the internet, its `routes`), never one
/// of the VPC's subnets or gateways, which belong to other NICs and to the router. The
/// receiving host refuses the same for routed frames (`routed_source`), so a gateway VM speaks
/// for the world outside the VPC and never for another VM of it, on its own host as across.
#[inline(always)]
pub fn foreign_source_allowed(vni: u32, saddr: u32) -> bool {
    let (kind, _, _) = lookup(vni, saddr);
    kind != RouteEntry::SUBNET && kind != RouteEntry::GATEWAY
}

/// Whether an IPv4 address (network order) is one host's: not 0.0.0.0/8 ("this network"), and
/// not multicast, reserved or the limited broadcast (224.0.0.0/3).
#[inline(always)]
fn unicast(addr: u32) -> bool {
    let first = addr.to_ne_bytes()[0];
    first != 0 && first < 224
}

/// A frame from a VM (network `vni`) to the router MAC; its sender already checked.
#[inline(always)]
pub fn from_vm<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    ihl: usize,
    vni: u32,
) -> Result<u32, Stat> {
    if ihl != IPV4_HLEN || !unicast(ip.daddr) {
        return Err(Stat::DropRouteUnsupported);
    }
    if !C::SKB && ctx.len() as usize != ctx.data_end() - ctx.data() {
        // Not in one buffer: the skb path routes it, from the start.
        return pass::<C>(Stat::ToSkbPath);
    }
    let (kind, to_vni, via) = lookup(vni, ip.daddr);
    if kind == RouteEntry::GATEWAY {
        return gateway(ctx, eth, ip);
    }
    let info = VNIS.get_ptr(&vni).ok_or(Stat::DropUnknownVni)?;
    // SAFETY: map value pointers stay valid for the program run.
    let gw = unsafe { (*info).gateway };
    let (error, stat) = if ip.ttl <= 1 {
        ((TIME_EXCEEDED, 0), Stat::IcmpTimeExceeded)
    } else if kind == RouteEntry::SUBNET || kind == RouteEntry::VIA {
        let target = if kind == RouteEntry::VIA {
            via
        } else {
            ip.daddr
        };
        if let Some(to) = nic(to_vni, target, gw) {
            let out = EthHdr {
                dst: to.1,
                src: ROUTER_MAC.load(),
                proto: eth.proto,
            };
            return deliver::<C, true>(ctx, eth, &out, ip, ihl, &to.0);
        }
        ((DEST_UNREACH, HOST_UNREACH), Stat::IcmpHostUnreachable)
    } else {
        ((DEST_UNREACH, NET_UNREACH), Stat::IcmpNetUnreachable)
    };
    unroutable(ctx, eth, ip, gw, error, stat)
}

/// The NIC at `addr` in network `vni`, where a routed frame to it goes, and its MAC; `gw` is
/// the source of a fragmentation-needed. None when no NIC of the network has that address.
#[inline(always)]
fn nic(vni: u32, addr: u32, gw: u32) -> Option<(Delivery, [u8; 6])> {
    let arp = ARP.get_ptr(&ArpKey { vni, ip: addr })?;
    // SAFETY: map value pointers stay valid for the program run.
    let mac = unsafe { (*arp).mac };
    let fdb = FDB.get_ptr(&FdbKey::new(vni, mac))?;
    // SAFETY: as above.
    let (kind, ifindex, vtep) = unsafe { ((*fdb).kind, (*fdb).ifindex, (*fdb).vtep) };
    // A MAC that is no NIC's (the router MAC of a gateway address) has no entry; one of no kind
    // this build writes forwards nothing.
    if kind != FdbEntry::LOCAL && kind != FdbEntry::REMOTE {
        return None;
    }
    let info = VNIS.get_ptr(&vni)?;
    // SAFETY: as above.
    let mtu = unsafe { (*info).mtu };
    Some((
        Delivery {
            kind,
            ifindex,
            vtep,
            vni,
            mtu,
            icmp_src: gw,
        },
        mac,
    ))
}

/// The ICMP error `error` (type, code) from the sending network's gateway `gw` back to the
/// sender, counted as `stat`; or, where RFC 1122 §3.2.2 forbids an error, a silent drop.
#[inline(always)]
fn unroutable<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    gw: u32,
    error: (u8, u8),
    stat: Stat,
) -> Result<u32, Stat> {
    // No error about a fragment other than the first (its sender could not match it to a
    // socket: it has no transport header), nor to a source that is no single host.
    if u16::from_be(ip.frag_off) & IP_OFFSET != 0 || !unicast(ip.saddr) {
        return Err(Stat::DropRouteSilent);
    }
    // Never an error about an error: two hosts could bounce them forever.
    if ip.protocol == IPPROTO_ICMP {
        let kind: u8 = load(ctx, ETH_HLEN + IPV4_HLEN).ok_or(Stat::DropMalformed)?;
        if icmp::is_error(kind) {
            return Err(Stat::DropRouteSilent);
        }
    }
    icmp::error(ctx, &eth.src, gw, ip.saddr, error, 0, stat)
}

/// A frame to a gateway address of the VPC (`ip.daddr`): an ICMP echo request is answered from
/// that address, in place, back out of the port; anything else is dropped.
#[inline(always)]
fn gateway<C: Ctx>(ctx: &C, eth: &EthHdr, ip: &Ipv4Hdr) -> Result<u32, Stat> {
    if ip.protocol != IPPROTO_ICMP {
        return Err(Stat::DropToGateway);
    }
    if u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0 {
        // A fragmented echo would have to be reassembled to be answered.
        return Err(Stat::DropRouteUnsupported);
    }
    let p = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN + 4]>(ctx, 0)
        .ok_or(Stat::DropMalformed)?
        .cast::<u8>();
    // SAFETY: `ptr_at` checked the headers and the ICMP type, code and checksum are inside the
    // directly readable (and writable) bytes.
    let (kind, code, check) = unsafe {
        (
            *p.add(ETH_HLEN + IPV4_HLEN),
            *p.add(ETH_HLEN + IPV4_HLEN + 1),
            p.add(ETH_HLEN + IPV4_HLEN + 2)
                .cast::<u16>()
                .read_unaligned(),
        )
    };
    if kind != ECHO_REQUEST || code != 0 {
        return Err(Stat::DropToGateway);
    }
    // The reply: the addresses swapped, a fresh TTL, the header's checksum computed anew (not
    // updated: a request with a wrong one must still get a well-formed reply); the
    // ICMP message as it came but for its type, its checksum updated for that (RFC 1624), so
    // the payload is never read.
    let reply = Ipv4Hdr {
        ttl: 64,
        check: 0,
        saddr: ip.daddr,
        daddr: ip.saddr,
        ..*ip
    };
    let mut s = add_bytes(0, reply.ver_ihl, reply.tos);
    s = add16(s, reply.tot_len);
    s = add16(s, reply.id);
    s = add16(s, reply.frag_off);
    s = add_bytes(s, reply.ttl, reply.protocol);
    s = add32(s, reply.saddr);
    s = add32(s, reply.daddr);
    let reply = Ipv4Hdr {
        check: fold(s),
        ..reply
    };
    let check = update(
        check,
        u16::from_ne_bytes([ECHO_REQUEST, 0]),
        u16::from_ne_bytes([ECHO_REPLY, 0]),
    );
    // SAFETY: as above.
    unsafe {
        p.cast::<EthHdr>().write_unaligned(EthHdr {
            dst: eth.src,
            src: ROUTER_MAC.load(),
            proto: eth.proto,
        });
        p.add(ETH_HLEN).cast::<Ipv4Hdr>().write_unaligned(reply);
        *p.add(ETH_HLEN + IPV4_HLEN) = ECHO_REPLY;
        p.add(ETH_HLEN + IPV4_HLEN + 2)
            .cast::<u16>()
            .write_unaligned(check);
    }
    count(Stat::GatewayEchoReply);
    Ok(ctx.tx())
}

/// A checksum `check` after one of the words it covers changed from `old` to `new` (RFC 1624
/// eqn. 3: `HC' = ~(~HC + ~m + m')`, which never yields the -0 of eqn. 2). Words as read from
/// memory, in any byte order as long as all three share it.
#[inline(always)]
fn update(check: u16, old: u16, new: u16) -> u16 {
    let mut s = (!check) as u32 + (!old) as u32 + new as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Rewrites a frame being routed: from the router MAC to the NIC's (`out`), its TTL one less
/// and its header checksum updated for that (RFC 1624; RFC 1812 §5.3.1). The TTL was checked
/// above 1.
#[inline(always)]
pub fn rewrite<C: Ctx>(ctx: &C, out: &EthHdr, ip: &Ipv4Hdr) -> Result<(), Stat> {
    let p = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN]>(ctx, 0)
        .ok_or(Stat::DropMalformed)?
        .cast::<u8>();
    let ttl = ip.ttl - 1;
    let check = update(
        ip.check,
        u16::from_ne_bytes([ip.ttl, ip.protocol]),
        u16::from_ne_bytes([ttl, ip.protocol]),
    );
    // SAFETY: `ptr_at` checked that the Ethernet and IPv4 headers are inside the directly
    // readable (and writable) bytes.
    unsafe {
        p.cast::<EthHdr>().write_unaligned(*out);
        *p.add(ETH_HLEN + 8) = ttl;
        p.add(ETH_HLEN + 10).cast::<u16>().write_unaligned(check);
    }
    Ok(())
}

/// The receiving host's check of a routed frame (its inner source MAC is the router MAC) that
/// VTEP `vtep` sent into network `vni` with inner IPv4 source `saddr`: that host may speak for
/// the source. A source in a subnet of the VPC must be a NIC behind that VTEP (the host routed
/// what its own VM sent); a source outside the VPC must come from a host with a forwarding NIC
/// of the VPC (a gateway VM's traffic from outside, `FORWARDERS`). A gateway address is never
/// a routed frame's source: the router answers for it on the sender's own host.
#[inline(always)]
pub fn routed_source(vni: u32, saddr: u32, vtep: u32) -> Result<(), Stat> {
    let (kind, src_vni, _) = lookup(vni, saddr);
    if kind == RouteEntry::SUBNET {
        let arp = ARP
            .get_ptr(&ArpKey {
                vni: src_vni,
                ip: saddr,
            })
            .ok_or(Stat::DropRoutedSpoof)?;
        // SAFETY: map value pointers stay valid for the program run.
        let mac = unsafe { (*arp).mac };
        let src = FDB
            .get_ptr(&FdbKey::new(src_vni, mac))
            .ok_or(Stat::DropRoutedSpoof)?;
        // SAFETY: as above.
        let (src_kind, src_vtep) = unsafe { ((*src).kind, (*src).vtep) };
        if src_kind != FdbEntry::REMOTE || src_vtep != vtep {
            return Err(Stat::DropRoutedSpoof);
        }
        return Ok(());
    }
    if kind == RouteEntry::GATEWAY || FORWARDERS.get_ptr(&ForwarderKey { vni, vtep }).is_none() {
        return Err(Stat::DropRoutedSpoof);
    }
    Ok(())
}
