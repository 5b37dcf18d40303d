//! The program on the underlay interface: VXLAN to this host's VTEP is decapsulated into the
//! local NIC it is for, after checking who sent it; everything else passes untouched.

use agent_common::{FdbKey, Stat, VXLAN_OVERHEAD, VXLAN_PORT};
use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};

use crate::{
    csum::be16,
    maps::{CONFIG, FDB, VNIS, VTEPS},
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr, load},
    stats::count,
    vxlan::VXLAN_FLAG_VNI,
};

pub fn handle(ctx: &XdpContext) -> u32 {
    match try_handle(ctx) {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn pass() -> Result<u32, Stat> {
    count(Stat::UnderlayPass);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<u32, Stat> {
    let Some(eth) = load::<EthHdr>(ctx, 0) else {
        return pass();
    };
    if eth.proto != be16(ETH_P_IP) {
        return pass();
    }
    let Some(ip) = load::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return pass();
    };
    if ip.ver_ihl != 0x45 || ip.protocol != IPPROTO_UDP || u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return pass();
    }
    let Some(cfg) = CONFIG.get(0) else {
        return pass();
    };
    if cfg.vtep == 0 || ip.daddr != cfg.vtep {
        return pass();
    }
    let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + 20) else {
        return pass();
    };
    if udp.dest != be16(VXLAN_PORT) {
        return pass();
    }
    // VXLAN to this VTEP: from here on it is delivered to a VM or dropped, never passed.
    if VTEPS.get_ptr(&ip.saddr).is_none() {
        return Err(Stat::DropUnknownVtep);
    }
    let vx: [u8; 8] = load(ctx, ETH_HLEN + 28).ok_or(Stat::DropMalformed)?;
    if vx[0] & VXLAN_FLAG_VNI == 0 {
        return Err(Stat::DropMalformed);
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    if VNIS.get_ptr(&vni).is_none() {
        return Err(Stat::DropUnknownVni);
    }
    let inner: EthHdr = load(ctx, VXLAN_OVERHEAD as usize).ok_or(Stat::DropMalformed)?;
    let dst = FDB
        .get_ptr(&FdbKey::new(vni, inner.dst))
        .ok_or(Stat::DropUnknownInnerDst)?;
    // SAFETY: map value pointers stay valid for the program run.
    let ifindex = unsafe { (*dst).ifindex };
    if ifindex == 0 {
        // A remote NIC: not ours to deliver.
        return Err(Stat::DropUnknownInnerDst);
    }
    // The inner source must be a NIC of that network behind the VTEP that sent it: a host can
    // only speak for its own VMs.
    let src = FDB
        .get_ptr(&FdbKey::new(vni, inner.src))
        .ok_or(Stat::DropInnerSpoof)?;
    // SAFETY: as above.
    if unsafe { (*src).vtep } != ip.saddr {
        return Err(Stat::DropInnerSpoof);
    }
    // SAFETY: our own context; no packet pointer is used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), VXLAN_OVERHEAD as i32) } != 0 {
        return Err(Stat::DropMalformed);
    }
    count(Stat::VxlanDecap);
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
}
