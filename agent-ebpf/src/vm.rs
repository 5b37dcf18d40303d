//! The program on each VM interface: everything a VM sends meets it first.
//!
//! DHCP and ARP are answered here. Every other frame must come from the NIC bound to this
//! interface with its own MAC and address (`port`: the checks TC repeats on the skb path); it
//! is then forwarded by destination MAC within the NIC's network: to another VM on this host,
//! or encapsulated toward the VTEP of a remote one. Nothing goes to the host stack: frames to
//! the router MAC are dropped until the data plane routes. What XDP cannot carry whole (GSO
//! super-frames, oversized frames, next hops the kernel has not resolved yet) goes to the skb
//! path (`tc.rs`) untouched.

use agent_common::{FdbEntry, FdbKey, Stat};
use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_get_buff_len},
    programs::XdpContext,
};

use crate::{
    arp, dhcp, l4csum,
    maps::{CONFIG, CSUM_WINDOW, FDB},
    parse::{ETH_HLEN, EthHdr, IPV4_HLEN, Ipv4Hdr, UDP_HLEN, UdpHdr, load},
    port::{self, L3},
    stats::count,
    vxlan::{self, Hop},
};

pub fn handle(ctx: &XdpContext) -> u32 {
    crate::stats::xdp_verdict(try_handle(ctx))
}

/// Hands the frame to the host stack untouched.
#[inline(always)]
pub fn pass(stat: Stat) -> Result<u32, Stat> {
    count(stat);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<u32, Stat> {
    let eth: EthHdr = load(ctx, 0).ok_or(Stat::DropMalformed)?;
    // A VLAN tag is in the frame here: its ethertype is refused.
    match port::l3(&eth, false)? {
        L3::Arp => arp::from_vm(ctx, &eth),
        L3::Ipv4 => ipv4(ctx, &eth),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: &EthHdr) -> Result<u32, Stat> {
    let ip: Ipv4Hdr = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    let ihl = port::ipv4_ihl(&ip)?;
    if port::has_udp_ports(&ip)
        && let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + ihl)
        && port::dhcp_request(&ip, &udp)?
    {
        return dhcp::handle_request(
            ctx,
            ETH_HLEN + ihl + UDP_HLEN,
            u16::from_be(udp.len) as usize,
            eth.src,
            ip.daddr,
        );
    }

    // Anti-spoofing: the frame must come from the NIC bound here, with its own address.
    let binding = port::sender(ctx.ingress_ifindex() as u32, eth, ip.saddr)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (vni, mtu) = unsafe { ((*binding).vni, (*binding).mtu) };
    port::not_to_router(eth)?;
    if eth.dst[0] & 1 != 0 {
        // Broadcast and multicast are never flooded.
        return Err(Stat::DropBcastMcast);
    }
    let fdb = FDB
        .get_ptr(&FdbKey::new(vni, eth.dst))
        .ok_or(Stat::DropUnknownUnicast)?;
    // SAFETY: as above.
    let (kind, dst_ifindex, vtep) = unsafe { ((*fdb).kind, (*fdb).ifindex, (*fdb).vtep) };
    if kind != FdbEntry::LOCAL && kind != FdbEntry::REMOTE {
        return Err(Stat::DropUnknownUnicast);
    }

    // What XDP cannot carry whole goes to the skb path, untouched.
    let len = ctx.data_end() - ctx.data();
    // SAFETY: our own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr().cast()) } as usize;
    if whole != len
        || len > mtu as usize + ETH_HLEN
        || len > CSUM_WINDOW + ETH_HLEN + IPV4_HLEN
        || ihl != IPV4_HLEN
    {
        return pass(Stat::ToSkbPath);
    }

    if kind == FdbEntry::LOCAL {
        l4csum::complete(ctx, &ip)?;
        count(Stat::ForwardLocal);
        // SAFETY: plain helper call.
        return Ok(unsafe { bpf_redirect(dst_ifindex, 0) } as u32);
    }

    let cfg = CONFIG.get(0).ok_or(Stat::DropNoUnderlay)?;
    if cfg.vtep == 0 || cfg.underlay_ifindex == 0 {
        return Err(Stat::DropNoUnderlay);
    }
    let hop = match vxlan::next_hop(ctx, cfg, vtep)? {
        Hop::Ready(hop) => hop,
        // The kernel resolves the neighbour on the skb path (bpf_redirect_neigh).
        Hop::Unresolved => return pass(Stat::ToSkbPath),
    };
    let ports: u32 = load(ctx, ETH_HLEN + IPV4_HLEN).unwrap_or(0);
    let hash = vxlan::flow_hash(ip.saddr, ip.daddr, ports, ip.protocol);
    l4csum::complete(ctx, &ip)?;
    vxlan::encap(ctx, cfg, &hop, vtep, vni, hash)?;
    count(Stat::VxlanEncap);
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(hop.ifindex, 0) } as u32)
}
