//! VXLAN (RFC 7348): the outer headers, the underlay next hop, the flow hash.

use agent_common::{DataplaneConfig, NEXTHOP_TTL_NS, NextHop, Stat, VXLAN_OVERHEAD, VXLAN_PORT};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LKUP_RET_UNSUPP_LWT, bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
};

use crate::{
    csum::{add_bytes, add16, add32, be16, fold},
    ctx::Ctx,
    maps::NEXTHOPS,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_UDP, ptr_at},
    stats::count,
};

const AF_INET: u8 = 2;
/// VXLAN header flags: the VNI is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// Outcome of resolving the underlay next hop toward a VTEP.
pub enum Hop {
    Ready(NextHop),
    /// The kernel has no neighbour entry yet and none is cached, or the FIB cannot be asked
    /// from the anchor: the skb path hands the frame to the kernel, which looks the route up
    /// and resolves the neighbour itself (`bpf_redirect_neigh`).
    Unresolved,
}

/// The next hop toward `vtep`: one the FIB confirmed less than [`NEXTHOP_TTL_NS`] ago, as is;
/// otherwise what the kernel's FIB and neighbour table say. The last one learned stands in only
/// when the kernel has a route but no neighbour entry, out of the same interface (a neighbour
/// being refreshed or flushed must not stop traffic). Every other verdict is obeyed: a
/// blackhole, unreachable or prohibit route (an operator quarantining a VTEP) drops, counted
/// under its own reason, within [`NEXTHOP_TTL_NS`] of being installed.
#[inline(always)]
pub fn next_hop<C: EbpfContext>(ctx: &C, cfg: &DataplaneConfig, vtep: u32) -> Result<Hop, Stat> {
    let cached = NEXTHOPS.get_ptr(&vtep);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(c) = cached {
        // SAFETY: map value pointer, valid for the program run.
        let hop = unsafe { *c };
        if now.wrapping_sub(hop.confirmed_ns) < NEXTHOP_TTL_NS {
            return Ok(Hop::Ready(hop));
        }
    }
    if cfg.fib_ifindex == 0 {
        // No lookup anchor: the skb path's bpf_redirect_neigh does the lookup.
        return Ok(Hop::Unresolved);
    }
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid input once the fields below are set.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    // Looked up as if forwarded from the anchor device: the kernel insists on IP forwarding on
    // the lookup's device, and the anchor is the one device where that opens nothing.
    p.ifindex = cfg.fib_ifindex;
    p.__bindgen_anon_3.ipv4_src = cfg.vtep;
    p.__bindgen_anon_4.ipv4_dst = vtep;
    // SAFETY: valid context and parameter struct of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let hop = NextHop {
                ifindex: p.ifindex,
                smac: p.smac,
                dmac: p.dmac,
                confirmed_ns: now,
            };
            let _ = NEXTHOPS.insert(&vtep, &hop, 0);
            Ok(Hop::Ready(hop))
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            // The route stands (the kernel filled in its interface); only the neighbour is
            // missing.
            if let Some(c) = cached {
                // SAFETY: as above.
                let hop = unsafe { *c };
                if hop.ifindex == p.ifindex {
                    count(Stat::NextHopCached);
                    return Ok(Hop::Ready(hop));
                }
            }
            Ok(Hop::Unresolved)
        }
        BPF_FIB_LKUP_RET_BLACKHOLE => Err(Stat::DropRouteBlackhole),
        BPF_FIB_LKUP_RET_UNREACHABLE => Err(Stat::DropRouteUnreachable),
        BPF_FIB_LKUP_RET_PROHIBIT => Err(Stat::DropRouteProhibit),
        // Forwarding was turned off on the anchor (a host-wide `ip_forward=0` does that), or
        // the route needs an encapsulation XDP cannot do: the kernel's own output path, on the
        // skb path, still obeys the routes.
        BPF_FIB_LKUP_RET_FWD_DISABLED | BPF_FIB_LKUP_RET_UNSUPP_LWT => Ok(Hop::Unresolved),
        // No route at all, a route that is not unicast (the VTEP is a local address), or
        // anything a newer kernel adds.
        _ => Err(Stat::DropNoRoute),
    }
}

/// A hash of the inner flow, for the outer UDP source port (RFC 7348 §5: so underlay ECMP
/// spreads flows). Addresses and, for TCP and UDP, ports.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, ports: u32, proto: u8) -> u32 {
    let mut h = saddr ^ 0x9e37_79b9;
    h = mix(h ^ daddr.rotate_left(13));
    h = mix(h ^ ports.rotate_left(7));
    mix(h ^ proto as u32)
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    // murmur3's finalizer.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The outer UDP source port for a flow hash, in the ephemeral range 49152–65535.
#[inline(always)]
pub fn source_port(hash: u32) -> u16 {
    49152 + (hash % 16384) as u16
}

/// Writes the 50 outer bytes (Ethernet, IPv4, UDP, VXLAN) at `p`.
///
/// # Safety
/// `p` must point at 50 writable bytes.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per header field; inlined, so nothing is passed on the BPF stack"
)]
#[inline(always)]
pub unsafe fn write_outer(
    p: *mut u8,
    dmac: [u8; 6],
    smac: [u8; 6],
    saddr: u32,
    daddr: u32,
    inner_len: u16,
    sport: u16,
    vni: u32,
) {
    let ip_len = 20 + 8 + 8 + inner_len;
    let udp_len = 8 + 8 + inner_len;
    let mut s = add_bytes(0, 0x45, 0);
    s = add16(s, be16(ip_len));
    s = add16(s, be16(IP_DF));
    s = add_bytes(s, 64, IPPROTO_UDP);
    s = add32(s, saddr);
    s = add32(s, daddr);
    let vni_b = vni.to_be_bytes();
    // SAFETY: the caller guarantees 50 writable bytes.
    unsafe {
        p.cast::<[u8; 6]>().write_unaligned(dmac);
        p.add(6).cast::<[u8; 6]>().write_unaligned(smac);
        p.add(12).cast::<u16>().write_unaligned(be16(ETH_P_IP));
        p.add(14).cast::<[u8; 2]>().write_unaligned([0x45, 0]);
        p.add(16).cast::<u16>().write_unaligned(be16(ip_len));
        p.add(18).cast::<u16>().write_unaligned(0);
        p.add(20).cast::<u16>().write_unaligned(be16(IP_DF));
        p.add(22)
            .cast::<[u8; 2]>()
            .write_unaligned([64, IPPROTO_UDP]);
        p.add(24).cast::<u16>().write_unaligned(fold(s));
        p.add(26).cast::<u32>().write_unaligned(saddr);
        p.add(30).cast::<u32>().write_unaligned(daddr);
        p.add(34).cast::<u16>().write_unaligned(be16(sport));
        p.add(36).cast::<u16>().write_unaligned(be16(VXLAN_PORT));
        p.add(38).cast::<u16>().write_unaligned(be16(udp_len));
        // RFC 7348 §5: the outer UDP checksum SHOULD be zero for IPv4.
        p.add(40).cast::<u16>().write_unaligned(0);
        p.add(42)
            .cast::<[u8; 4]>()
            .write_unaligned([VXLAN_FLAG_VNI, 0, 0, 0]);
        p.add(46)
            .cast::<[u8; 4]>()
            .write_unaligned([vni_b[1], vni_b[2], vni_b[3], 0]);
    }
}

/// Encapsulates the frame in place, at either hook: the outer headers toward `vtep`, from
/// `hop`'s MACs, or zero MACs for the kernel's neighbour output to fill in (TC only).
#[inline(always)]
pub fn encap<C: Ctx>(
    ctx: &C,
    cfg: &DataplaneConfig,
    hop: Option<&NextHop>,
    inner: &EthHdr,
    vtep: u32,
    vni: u32,
    hash: u32,
) -> Result<(), Stat> {
    let inner_len = ctx.len() as u16;
    ctx.encap_room(VXLAN_OVERHEAD)?;
    let p = ptr_at::<[u8; VXLAN_OVERHEAD as usize + ETH_HLEN]>(ctx, 0)
        .ok_or(Stat::DropMalformed)?
        .cast::<u8>();
    let (dmac, smac) = match hop {
        Some(h) => (h.dmac, h.smac),
        None => ([0; 6], [0; 6]),
    };
    // SAFETY: `ptr_at` checked the outer headers and the inner Ethernet header behind them.
    unsafe {
        write_outer(
            p,
            dmac,
            smac,
            cfg.vtep,
            vtep,
            inner_len,
            source_port(hash),
            vni,
        );
        p.add(VXLAN_OVERHEAD as usize)
            .cast::<EthHdr>()
            .write_unaligned(*inner);
    }
    Ok(())
}
