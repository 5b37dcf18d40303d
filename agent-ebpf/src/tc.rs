//! The skb path on each VM interface (TC ingress): what XDP handed over untouched.
//!
//! - GSO super-frames (a tap's virtio guest sends 64 KiB TCP segments) are encapsulated with
//!   `bpf_skb_adjust_room`, which records the tunnel so the kernel segments them on the way out.
//! - Frames too big for the network get an ICMP fragmentation-needed back (RFC 1191), not a
//!   silent drop.
//! - Next hops the kernel has not resolved yet: `bpf_redirect_neigh` hands the frame to the
//!   neighbour subsystem, which resolves it and sends.
//!
//! This program also sees everything the VM sends when the port has no XDP program (its
//! attachment failed, or its link was removed), so it makes every frame meet the same checks
//! as XDP (`port`), in the same order and with the same reasons, and hands nothing to the host
//! stack. ARP and DHCP, which only XDP answers, are dropped and counted (`DropArpSkbPath`,
//! `DropDhcpSkbPath`): when they show up here, the port's XDP program is not running.
//!
//! The kernel keeps the skb's checksum state here, so nothing is recomputed.

use agent_common::{Binding, FdbEntry, FdbKey, Stat, VXLAN_OVERHEAD};
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail},
    programs::TcContext,
};

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add16, add32, be16, fold},
    l4csum::IPPROTO_TCP,
    maps::{CONFIG, FDB},
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPV4_HLEN, Ipv4Hdr, UdpHdr},
    port::{self, L3},
    stats::count,
    vxlan::{flow_hash, next_hop, source_port, write_outer},
};

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header's length.
const ENCAP_L2_ETH_LEN: u64 = (ETH_HLEN as u64) << 56;
const IPPROTO_ICMP: u8 = 1;

pub fn handle(ctx: &TcContext) -> i32 {
    match try_handle(ctx) {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, Stat> {
    // Headers the checks below read must be in the linear part.
    let _ = ctx.pull_data((ETH_HLEN + IPV4_HLEN + 20) as u32);
    let eth: EthHdr = ctx.load(0).map_err(|_| Stat::DropMalformed)?;
    // SAFETY: reading fields of the program's own context.
    let (ifindex, gso_size, tagged) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).ifindex, (*skb).gso_size, (*skb).vlan_present != 0)
    };
    // The kernel moved a VLAN tag out of the frame before TC: `tagged` says it had one.
    match port::l3(&eth, tagged)? {
        L3::Arp => return Err(Stat::DropArpSkbPath),
        L3::Ipv4 => {}
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Stat::DropMalformed)?;
    let ihl = port::ipv4_ihl(&ip)?;
    if port::has_udp_ports(&ip)
        && let Ok(udp) = ctx.load::<UdpHdr>(ETH_HLEN + ihl)
        && port::dhcp_request(&ip, &udp)?
    {
        return Err(Stat::DropDhcpSkbPath);
    }
    let binding = port::sender(ifindex, &eth, ip.saddr)?;
    // SAFETY: map value pointers stay valid for the program run.
    let b: Binding = unsafe { *binding };
    port::not_to_router(&eth)?;
    if eth.dst[0] & 1 != 0 {
        return Err(Stat::DropBcastMcast);
    }
    let fdb = FDB
        .get_ptr(&FdbKey::new(b.vni, eth.dst))
        .ok_or(Stat::DropUnknownUnicast)?;
    // SAFETY: as above.
    let (kind, dst_ifindex, vtep) = unsafe { ((*fdb).kind, (*fdb).ifindex, (*fdb).vtep) };
    if kind != FdbEntry::LOCAL && kind != FdbEntry::REMOTE {
        return Err(Stat::DropUnknownUnicast);
    }

    // The size of what will be on the wire: each segment of a GSO frame, or the frame.
    let ihl = ((ip.ver_ihl & 0x0f) as u32) * 4;
    let packet = if gso_size > 0 {
        let l4_hdr = if ip.protocol == IPPROTO_TCP {
            let off: u8 = ctx
                .load(ETH_HLEN + ihl as usize + 12)
                .map_err(|_| Stat::DropMalformed)?;
            ((off >> 4) as u32) * 4
        } else {
            8
        };
        ihl + l4_hdr + gso_size
    } else {
        ctx.len() - ETH_HLEN as u32
    };
    if packet > b.mtu {
        return frag_needed(ctx, &eth, &b, ifindex);
    }

    if kind == FdbEntry::LOCAL {
        count(Stat::SkbForwardLocal);
        // SAFETY: plain helper call.
        return Ok(unsafe { bpf_redirect(dst_ifindex, 0) } as i32);
    }
    let cfg = CONFIG.get(0).ok_or(Stat::DropNoUnderlay)?;
    if cfg.vtep == 0 || cfg.underlay_ifindex == 0 {
        return Err(Stat::DropNoUnderlay);
    }
    // The route to the VTEP is obeyed here too (a quarantine drops, counted); the kernel's
    // neighbour output below picks the next hop itself.
    next_hop(ctx, cfg, vtep)?;
    let ports: u32 = ctx.load(ETH_HLEN + ihl as usize).unwrap_or(0);
    let hash = flow_hash(ip.saddr, ip.daddr, ports, ip.protocol);
    let inner_len = ctx.len() as u16;
    ctx.adjust_room(
        VXLAN_OVERHEAD as i32,
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
            as u64
            | ENCAP_L2_ETH_LEN,
    )
    .map_err(|_| Stat::DropMalformed)?;
    // The outer headers, then the inner Ethernet header behind them. The outer MACs stay zero:
    // the neighbour subsystem fills them in.
    let mut hdr = [0u8; 64];
    // SAFETY: `hdr` has the 50 bytes `write_outer` writes.
    unsafe {
        write_outer(
            hdr.as_mut_ptr(),
            [0; 6],
            [0; 6],
            cfg.vtep,
            vtep,
            inner_len,
            source_port(hash),
            b.vni,
        )
    };
    hdr[50..56].copy_from_slice(&eth.dst);
    hdr[56..62].copy_from_slice(&eth.src);
    hdr[62..64].copy_from_slice(&eth.proto.to_ne_bytes());
    ctx.store(0, &hdr, 0).map_err(|_| Stat::DropMalformed)?;
    count(Stat::SkbEncap);
    // SAFETY: plain helper call; a null parameter block lets the kernel's FIB pick the next hop.
    Ok(unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// Rewrites the frame into an ICMP fragmentation-needed from the gateway, carrying the network's
/// MTU, and sends it back to the VM (RFC 792, RFC 1191).
#[inline(always)]
fn frag_needed(ctx: &TcContext, eth: &EthHdr, b: &Binding, ifindex: u32) -> Result<i32, Stat> {
    // The offending datagram's IP header and first 8 bytes go back with the error.
    let orig: [u8; 28] = ctx.load(ETH_HLEN).map_err(|_| Stat::DropMalformed)?;
    const LEN: u32 = (ETH_HLEN + IPV4_HLEN + 8 + 28) as u32;
    // SAFETY: our own context. Shrinking also clears the skb's GSO state.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN, 0) } != 0 {
        return Err(Stat::DropMalformed);
    }
    let router = ROUTER_MAC.load();
    let mtu = b.mtu as u16;
    let mut f = [0u8; LEN as usize];
    f[0..6].copy_from_slice(&eth.src);
    f[6..12].copy_from_slice(&router);
    f[12..14].copy_from_slice(&be16(ETH_P_IP).to_ne_bytes());
    let ip_len = (IPV4_HLEN + 8 + 28) as u16;
    let mut s = add_bytes(0, 0x45, 0xc0);
    s = add16(s, be16(ip_len));
    s = add_bytes(s, 64, IPPROTO_ICMP);
    s = add32(s, b.server_id);
    s = add32(s, b.ip);
    f[14] = 0x45;
    f[15] = 0xc0;
    f[16..18].copy_from_slice(&be16(ip_len).to_ne_bytes());
    f[22] = 64;
    f[23] = IPPROTO_ICMP;
    f[24..26].copy_from_slice(&fold(s).to_ne_bytes());
    f[26..30].copy_from_slice(&b.server_id.to_ne_bytes());
    f[30..34].copy_from_slice(&b.ip.to_ne_bytes());
    // ICMP type 3 code 4, checksum, unused, next-hop MTU, then the original header.
    f[34] = 3;
    f[35] = 4;
    f[40..42].copy_from_slice(&be16(mtu).to_ne_bytes());
    f[42..70].copy_from_slice(&orig);
    let mut c = add_bytes(0, 3, 4);
    c = add16(c, be16(mtu));
    let mut i = 42;
    while i < 70 {
        c = add_bytes(c, f[i], f[i + 1]);
        i += 2;
    }
    f[36..38].copy_from_slice(&fold(c).to_ne_bytes());
    ctx.store(0, &f, 0).map_err(|_| Stat::DropMalformed)?;
    count(Stat::IcmpFragNeeded);
    // Back out of the interface it came in on: to the VM.
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
