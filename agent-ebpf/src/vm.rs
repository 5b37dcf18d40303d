//! The program on each VM interface: everything a VM sends meets it first.
//!
//! DHCP and ARP are answered here. Every other frame must come from the NIC bound to this
//! interface with its own MAC and address; it is then forwarded by destination MAC within the
//! NIC's network: to another VM on this host, or encapsulated toward the VTEP of a remote one.
//! What XDP cannot carry whole (GSO super-frames, oversized frames, next hops the kernel has not
//! resolved yet) goes to the skb path (`tc.rs`) untouched.

use agent_common::{BindingKey, FdbEntry, FdbKey, Stat, dhcp::SERVER_PORT};
use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_get_buff_len},
    programs::XdpContext,
};

use crate::{
    ROUTER_MAC, arp,
    csum::be16,
    dhcp, l4csum,
    maps::{BINDINGS, CONFIG, CSUM_WINDOW, FDB},
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_UDP, IPV4_HLEN, Ipv4Hdr, UDP_HLEN, UdpHdr,
        load, mac_eq,
    },
    stats::count,
    vxlan::{self, Hop},
};

/// IPv4 flags: more fragments, and the fragment offset mask.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

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
    if eth.proto == be16(ETH_P_ARP) {
        return arp::from_vm(ctx, &eth);
    }
    if eth.proto != be16(ETH_P_IP) {
        return Err(Stat::DropNotIpv4);
    }
    ipv4(ctx, &eth)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: &EthHdr) -> Result<u32, Stat> {
    let ip: Ipv4Hdr = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Stat::DropMalformed);
    }
    let frag = u16::from_be(ip.frag_off);
    if ip.protocol == IPPROTO_UDP
        && frag & IP_OFFSET == 0
        && let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + ihl)
    {
        if udp.source == be16(SERVER_PORT) {
            // Only holdfast answers DHCP on a VM's network.
            return Err(Stat::DropDhcpRogueServer);
        }
        if udp.dest == be16(SERVER_PORT) {
            if frag & IP_MF != 0 {
                return Err(Stat::DropDhcpMalformed);
            }
            return dhcp::handle_request(ctx, ETH_HLEN + ihl + UDP_HLEN, eth.src, ip.daddr);
        }
    }

    // Anti-spoofing: the frame must come from the NIC bound here, with its own address.
    let ifindex = ctx.ingress_ifindex() as u32;
    let binding = BINDINGS
        .get_ptr(&BindingKey::new(ifindex, eth.src))
        .ok_or(Stat::DropSpoofedMac)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (nic_ip, vni, mtu) = unsafe { ((*binding).ip, (*binding).vni, (*binding).mtu) };
    if ip.saddr != nic_ip {
        return Err(Stat::DropSpoofedIp);
    }
    if mac_eq(&eth.dst, &ROUTER_MAC.load()) {
        // Off the network: routing is the host's business for now.
        return pass(Stat::ToRouter);
    }
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
