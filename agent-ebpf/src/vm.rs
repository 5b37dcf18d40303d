//! The program on each VM interface, written once for both hooks: everything a VM sends meets
//! it first.
//!
//! DHCP and ARP are answered here. Every other frame must come from the NIC bound to this
//! interface with its own MAC and address (any address for a NIC with `forwarding`, `port`); it
//! is then forwarded by destination MAC within the NIC's network, or routed when it is for the
//! router MAC (`route`: to another network of the VPC or a gateway VM, answered by the gateway,
//! or an ICMP error back). Either way it goes to another VM on this host, or encapsulated toward
//! the VTEP of a remote one (`deliver`). Nothing goes to the host stack. Frames too big for the
//! network get an ICMP fragmentation-needed back.
//!
//! Three programs are built from it (`main.rs`), by hook ([`Ctx`]) and by whether the program
//! answers ARP and DHCP (`ANSWERS`):
//!
//! - **xdp mode**: `holdfast_vm` (XDP) does all of it for what XDP carries whole, and hands
//!   the rest untouched to `holdfast_tc`, the skb path: GSO super-frames (a tap's virtio guest
//!   sends 64 KiB TCP segments, encapsulated whole with `bpf_skb_adjust_room`, which records
//!   the tunnel so the kernel segments them on the way out), frames over the MTU, IP options,
//!   next hops the kernel has not resolved yet (`bpf_redirect_neigh` resolves them). The skb
//!   path also sees everything the VM sends when the port has no XDP program (its attachment
//!   failed, or its link was removed), so it makes every frame meet the same checks, in the
//!   same order and with the same reasons, and hands nothing to the host stack. ARP and DHCP,
//!   which XDP answers, it drops and counts (`DropArpSkbPath`, `DropDhcpSkbPath`): when they
//!   show up there, the port's XDP program is not running.
//! - **tc mode**: `holdfast_vm_tc` alone, on TC ingress: all of it, on the skb. No XDP program
//!   on the port at all: any XDP program on a tap makes the kernel copy every GSO frame before
//!   it runs (generic XDP), which is what bulk TCP pays in xdp mode.
//!
//! On the skb path the kernel keeps the skb's checksum and GSO state, so nothing is
//! recomputed; XDP completes the TCP or UDP checksum a guest left partial before it redirects.

use agent_common::{FdbEntry, FdbKey, NextHop, Stat};

use crate::{
    arp,
    ctx::Ctx,
    icmp, l4csum,
    l4csum::IPPROTO_TCP,
    maps::{CONFIG, CSUM_WINDOW, FDB},
    parse::{ETH_HLEN, EthHdr, IPV4_HLEN, Ipv4Hdr, UDP_HLEN, UdpHdr, load},
    port::{self, L3},
    stats::{count, verdict},
    vxlan::{self, Hop},
};

/// The VM-port program at hook `C`. `ANSWERS`: it answers ARP and DHCP (`holdfast_vm`,
/// `holdfast_vm_tc`); otherwise it is xdp mode's skb path (`holdfast_tc`), which drops them.
#[inline(always)]
pub fn handle<C: Ctx, const ANSWERS: bool>(ctx: &C) -> u32 {
    verdict::<C>(try_handle::<C, ANSWERS>(ctx))
}

/// Hands the frame to the next path untouched: from XDP to the skb path.
#[inline(always)]
pub fn pass<C: Ctx>(stat: Stat) -> Result<u32, Stat> {
    count(stat);
    Ok(C::PASS)
}

#[inline(always)]
fn try_handle<C: Ctx, const ANSWERS: bool>(ctx: &C) -> Result<u32, Stat> {
    ctx.pull_headers();
    let eth: EthHdr = load(ctx, 0).ok_or(Stat::DropMalformed)?;
    // XDP sees a VLAN tag in the frame, as an ethertype it refuses; TC finds it taken out.
    match port::l3(&eth, ctx.vlan_tagged())? {
        L3::Arp if ANSWERS => arp::from_vm(ctx, &eth),
        L3::Arp => Err(Stat::DropArpSkbPath),
        L3::Ipv4 => ipv4::<C, ANSWERS>(ctx, &eth),
        L3::Ipv6 => crate::ip6::from_vm::<C, ANSWERS>(ctx, &eth),
    }
}

#[inline(always)]
fn ipv4<C: Ctx, const ANSWERS: bool>(ctx: &C, eth: &EthHdr) -> Result<u32, Stat> {
    let ip: Ipv4Hdr = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    let ihl = port::ipv4_ihl(&ip)?;
    if port::has_udp_ports(&ip)
        && let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + ihl)
        && port::dhcp_request(&ip, &udp)?
    {
        if !ANSWERS {
            return Err(Stat::DropDhcpSkbPath);
        }
        return crate::dhcp::handle_request(
            ctx,
            ETH_HLEN + ihl + UDP_HLEN,
            u16::from_be(udp.len) as usize,
            eth.src,
            ip.daddr,
        );
    }

    // Anti-spoofing: the frame must come from the NIC bound here, with its own address (any
    // address for a forwarding NIC).
    let binding = port::sender(ctx.ifindex(), eth, ip.saddr)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (vni, mtu, server_id) = unsafe { ((*binding).vni, (*binding).mtu, (*binding).server_id) };
    if port::to_router(eth) {
        return crate::route::from_vm(ctx, eth, &ip, ihl, vni);
    }
    if eth.dst[0] & 1 != 0 {
        // Broadcast and multicast are never flooded.
        return Err(Stat::DropBcastMcast);
    }
    let fdb = FDB
        .get_ptr(&FdbKey::new(vni, eth.dst))
        .ok_or(Stat::DropUnknownUnicast)?;
    // SAFETY: as above.
    let (kind, ifindex, vtep) = unsafe { ((*fdb).kind, (*fdb).ifindex, (*fdb).vtep) };
    if kind != FdbEntry::LOCAL && kind != FdbEntry::REMOTE {
        return Err(Stat::DropUnknownUnicast);
    }
    let to = Delivery {
        kind,
        ifindex,
        vtep,
        vni,
        mtu,
        icmp_src: server_id,
    };
    deliver::<C, false>(ctx, eth, eth, &ip, ihl, &to)
}

/// Where a frame goes once its destination NIC is known: the NIC's FDB entry (`kind`, which is
/// `FdbEntry::LOCAL` or `FdbEntry::REMOTE`, `ifindex`, `vtep`), its network and that network's
/// MTU, and the source of an ICMP fragmentation-needed for a frame over that MTU.
pub struct Delivery {
    pub kind: u32,
    pub ifindex: u32,
    pub vtep: u32,
    pub vni: u32,
    pub mtu: u32,
    pub icmp_src: u32,
}

/// Delivers a frame from a VM to the NIC `to` names, bridged (`ROUTED` false) or routed: to
/// another VM on this host, or encapsulated toward the VTEP of a remote one. One function for
/// both, so that a routed frame meets the same size checks, the same hand-over to the skb
/// path and the same next-hop handling as a bridged one.
///
/// `eth` is the frame's Ethernet header as the VM sent it; `out` the one it leaves with: the
/// same when bridged; from the router MAC to the NIC's when routed, which also decrements the
/// TTL. A routed frame is rewritten only once nothing can hand it over any more: what XDP
/// passes to the skb path is untouched, and routed there again.
#[inline(always)]
pub fn deliver<C: Ctx, const ROUTED: bool>(
    ctx: &C,
    eth: &EthHdr,
    out: &EthHdr,
    ip: &Ipv4Hdr,
    ihl: usize,
    to: &Delivery,
) -> Result<u32, Stat> {
    if C::SKB {
        // The size of what will be on the wire: each segment of a GSO frame, or the frame.
        if wire_size(ctx, ip, ihl)? > to.mtu {
            return icmp::frag_needed(ctx, &eth.src, to.icmp_src, ip.saddr, to.mtu);
        }
    } else {
        // What XDP cannot carry whole goes to the skb path, untouched.
        let len = ctx.data_end() - ctx.data();
        if ctx.len() as usize != len
            || len > to.mtu as usize + ETH_HLEN
            || len > CSUM_WINDOW + ETH_HLEN + IPV4_HLEN
            || ihl != IPV4_HLEN
        {
            return pass::<C>(Stat::ToSkbPath);
        }
    }

    if to.kind == FdbEntry::LOCAL {
        if ROUTED {
            crate::route::rewrite(ctx, out, ip)?;
        }
        if !C::SKB {
            l4csum::complete(ctx, ip)?;
        }
        count(if C::SKB {
            Stat::SkbForwardLocal
        } else {
            Stat::ForwardLocal
        });
        if ROUTED {
            count(Stat::Routed);
        }
        return Ok(ctx.redirect(to.ifindex));
    }

    let cfg = CONFIG.get(0).ok_or(Stat::DropNoUnderlay)?;
    if cfg.vtep == 0 || cfg.underlay_ifindex == 0 {
        return Err(Stat::DropNoUnderlay);
    }
    // The route to the VTEP is obeyed on both hooks (a quarantine drops, counted).
    let hop: Option<NextHop> = match vxlan::next_hop(ctx, cfg, to.vtep)? {
        Hop::Ready(hop) => Some(hop),
        // The kernel resolves the neighbour on the skb path (bpf_redirect_neigh).
        Hop::Unresolved if C::SKB => None,
        Hop::Unresolved => return pass::<C>(Stat::ToSkbPath),
    };
    let ports: u32 = load(ctx, ETH_HLEN + ihl).unwrap_or(0);
    let hash = vxlan::flow_hash(ip.saddr, ip.daddr, ports, ip.protocol);
    if ROUTED {
        crate::route::rewrite(ctx, out, ip)?;
    }
    if !C::SKB {
        l4csum::complete(ctx, ip)?;
    }
    vxlan::encap(ctx, cfg, hop.as_ref(), out, to.vtep, to.vni, hash)?;
    count(if C::SKB {
        Stat::SkbEncap
    } else {
        Stat::VxlanEncap
    });
    if ROUTED {
        count(Stat::Routed);
    }
    match hop {
        Some(h) => ctx.redirect_encapsulated(h.ifindex),
        None => ctx.redirect_neigh(cfg.underlay_ifindex),
    }
}

/// The IP length of what goes on the wire: each segment of a GSO frame (its headers and
/// segment size), or the frame.
#[inline(always)]
fn wire_size<C: Ctx>(ctx: &C, ip: &Ipv4Hdr, ihl: usize) -> Result<u32, Stat> {
    let gso_size = ctx.gso_size();
    if gso_size == 0 {
        return Ok(ctx.len() - ETH_HLEN as u32);
    }
    let l4_hdr = if ip.protocol == IPPROTO_TCP {
        let off: u8 = load(ctx, ETH_HLEN + ihl + 12).ok_or(Stat::DropMalformed)?;
        ((off >> 4) as u32) * 4
    } else {
        8
    };
    Ok(ihl as u32 + l4_hdr + gso_size)
}
