//! The program on the underlay interface: VXLAN to this host's VTEP is decapsulated into the
//! local NIC it is for, after checking who sent it; everything else passes untouched.

use agent_common::{DecapMeta, FdbEntry, FdbKey, Neigh6Key, Stat, VXLAN_OVERHEAD, VXLAN_PORT};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key, xdp_action,
    },
    helpers::{
        bpf_redirect, bpf_skb_adjust_room, bpf_skb_get_tunnel_key, bpf_xdp_adjust_head,
        bpf_xdp_adjust_meta,
    },
    programs::{TcContext, XdpContext},
};

use crate::{
    ROUTER_MAC,
    csum::be16,
    ctx::Ctx,
    l4csum::IPPROTO_TCP,
    maps::{CONFIG, FDB, FORWARDING, NEIGH6, VNIS, VTEPS},
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_MF, IP_OFFSET, IPPROTO_UDP,
        IPV4_HLEN, Ipv4Hdr, Ipv6Hdr, UdpHdr, load, mac_eq,
    },
    stats::{count, verdict},
    vxlan::VXLAN_FLAG_VNI,
};

pub fn handle(ctx: &XdpContext) -> u32 {
    verdict::<XdpContext>(try_handle(ctx))
}

#[inline(always)]
fn pass() -> Result<u32, Stat> {
    crate::vm::pass::<XdpContext>(Stat::UnderlayPass)
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<u32, Stat> {
    // VXLAN to this VTEP is delivered to a VM or dropped, never passed.
    let Some((vtep, vni)) = outer(ctx)? else {
        return pass();
    };
    let Inner { ifindex, tcp, .. } = inner(ctx, VXLAN_OVERHEAD as usize, vni, vtep)?;
    // Inner TCP goes up for GRO: the VM then gets aggregated segments (as the kernel's vxlan
    // device gives it, through gro_cells) instead of one MTU-sized frame per wakeup.
    // SAFETY: our own context; packet pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), VXLAN_OVERHEAD as i32) } != 0 {
        return Err(Stat::DropMalformed);
    }
    count(Stat::VxlanDecap);
    if tcp && to_stack_for_gro(ctx, ifindex) {
        count(Stat::DecapGro);
        return Ok(xdp_action::XDP_PASS);
    }
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
}

/// The outer headers of a frame on the underlay, at either hook: `Ok(None)` when it is not
/// VXLAN to this host's VTEP (the host's own traffic, passed on); VXLAN to it that these
/// checks refuse, an error; otherwise the sending VTEP (network order) and the VNI, the inner
/// frame starting at `VXLAN_OVERHEAD`.
#[inline(always)]
fn outer<C: Ctx>(ctx: &C) -> Result<Option<(u32, u32)>, Stat> {
    let Some(eth) = load::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    if eth.proto != be16(ETH_P_IP) {
        return Ok(None);
    }
    let Some(ip) = load::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Ok(None);
    };
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN || ip.protocol != IPPROTO_UDP {
        // Not UDP, or not IPv4 the kernel would accept: not ours.
        return Ok(None);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(None);
    };
    if cfg.vtep == 0 || ip.daddr != cfg.vtep {
        return Ok(None);
    }
    // UDP to this VTEP. A fragment is refused whatever its port: a later fragment has no UDP
    // header to tell VXLAN from the host's own traffic, and reassembled VXLAN would reach the
    // host's stack (a kernel VXLAN socket there) past every check below. The first fragment
    // goes too: its datagram can never be completed, and holdfast's peers set DF on VXLAN
    // (RFC 7348 §4.3: VTEPs must not fragment).
    if u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0 {
        return Err(Stat::DropUnderlayFragment);
    }
    let Some(udp) = load::<UdpHdr>(ctx, ETH_HLEN + ihl) else {
        return Ok(None);
    };
    if udp.dest != be16(VXLAN_PORT) {
        return Ok(None);
    }
    if ihl != IPV4_HLEN {
        // Options: holdfast's peers send none, and the headers below sit at fixed offsets.
        return Err(Stat::DropUnderlayIpOptions);
    }
    if VTEPS.get_ptr(&ip.saddr).is_none() {
        return Err(Stat::DropUnknownVtep);
    }
    let vx: [u8; 8] = load(ctx, ETH_HLEN + 28).ok_or(Stat::DropMalformed)?;
    if vx[0] & VXLAN_FLAG_VNI == 0 {
        return Err(Stat::DropMalformed);
    }
    Ok(Some((
        ip.saddr,
        u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
    )))
}

/// A decapsulated frame that passed [`inner`]'s checks.
struct Inner {
    /// The local NIC's interface.
    ifindex: u32,
    /// Whether it carries TCP.
    tcp: bool,
    /// Its Ethernet header.
    eth: EthHdr,
}

/// The checks on a decapsulated frame at `off`, which VTEP `vtep` (network order) sent for
/// network `vni`: a known network, ARP and anything but IPv4 refused, a local NIC as the
/// destination, and a source that is a NIC of that network behind that VTEP, with its own
/// address (a host can only speak for its own VMs; a forwarding NIC, for any address). A frame
/// from the router MAC was routed on the sending host: its IPv4 source must be one that host
/// may speak for (`route::routed_source`).
#[inline(always)]
fn inner<C: Ctx>(ctx: &C, off: usize, vni: u32, vtep: u32) -> Result<Inner, Stat> {
    if VNIS.get_ptr(&vni).is_none() {
        return Err(Stat::DropUnknownVni);
    }
    let inner: EthHdr = load(ctx, off).ok_or(Stat::DropMalformed)?;
    if inner.proto == be16(ETH_P_ARP) {
        // ARP is answered on the sender's host; none crosses the underlay.
        return Err(Stat::DropDecapArp);
    }
    let v6 = inner.proto == be16(ETH_P_IPV6);
    if inner.proto != be16(ETH_P_IP) && !v6 {
        return Err(Stat::DropDecapNotIpv4);
    }
    let dst = FDB
        .get_ptr(&FdbKey::new(vni, inner.dst))
        .ok_or(Stat::DropUnknownInnerDst)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (dst_kind, ifindex) = unsafe { ((*dst).kind, (*dst).ifindex) };
    if dst_kind != FdbEntry::LOCAL {
        // A remote NIC: not ours to deliver.
        return Err(Stat::DropUnknownInnerDst);
    }
    if !v6 && mac_eq(&inner.src, &ROUTER_MAC.load()) {
        // Routed on the sending host (IPv4 only: IPv6 is not routed, and the router MAC is no
        // NIC's, so a routed IPv6 frame fails the check below).
        let inner_ip = inner_ipv4(ctx, off)?;
        crate::route::routed_source(vni, inner_ip.saddr, vtep)?;
        return Ok(Inner {
            ifindex,
            tcp: inner_ip.protocol == IPPROTO_TCP,
            eth: inner,
        });
    }
    let src = FDB
        .get_ptr(&FdbKey::new(vni, inner.src))
        .ok_or(Stat::DropInnerSpoof)?;
    // SAFETY: as above.
    let (src_kind, src_vtep, src_ip) = unsafe { ((*src).kind, (*src).vtep, (*src).ip) };
    if src_kind != FdbEntry::REMOTE || src_vtep != vtep {
        return Err(Stat::DropInnerSpoof);
    }
    if v6 {
        // The inner IPv6 source must be the `ip6` of the NIC its MAC names (link-local
        // sources never leave a port).
        let ip6: Ipv6Hdr = load(ctx, off + ETH_HLEN).ok_or(Stat::DropMalformed)?;
        if ip6.vtc_flow[0] >> 4 != 6 {
            return Err(Stat::DropMalformed);
        }
        let owner = NEIGH6
            .get_ptr(&Neigh6Key::new(vni, ip6.saddr))
            .ok_or(Stat::DropInnerSpoofedIp)?;
        // SAFETY: as above.
        let (owner_mac, router) = unsafe { ((*owner).mac, (*owner).router) };
        if router != 0 || !mac_eq(&owner_mac, &inner.src) {
            return Err(Stat::DropInnerSpoofedIp);
        }
        return Ok(Inner {
            ifindex,
            tcp: ip6.nexthdr == IPPROTO_TCP,
            eth: inner,
        });
    }
    let inner_ip = inner_ipv4(ctx, off)?;
    // A forwarding NIC (a gateway VM) sends what it forwards with the sources of others; its
    // MAC was checked above like any NIC's. `FORWARDING` is looked up only then.
    // Never another address of the VPC (`route::foreign_source_allowed`), as on its own host.
    if inner_ip.saddr != src_ip
        && (FORWARDING.get_ptr(&FdbKey::new(vni, inner.src)).is_none()
            || !crate::route::foreign_source_allowed(vni, inner_ip.saddr))
    {
        return Err(Stat::DropInnerSpoofedIp);
    }
    Ok(Inner {
        ifindex,
        tcp: inner_ip.protocol == IPPROTO_TCP,
        eth: inner,
    })
}

/// The inner IPv4 header of a decapsulated frame at `off`, if it is one.
#[inline(always)]
fn inner_ipv4<C: Ctx>(ctx: &C, off: usize) -> Result<Ipv4Hdr, Stat> {
    let ip: Ipv4Hdr = load(ctx, off + ETH_HLEN).ok_or(Stat::DropMalformed)?;
    if ip.ver_ihl >> 4 != 4 || ((ip.ver_ihl & 0x0f) as usize) * 4 < IPV4_HLEN {
        return Err(Stat::DropMalformed);
    }
    Ok(ip)
}

/// Leaves the target interface in the frame's metadata for the underlay's TC program. False
/// when the driver has no room for metadata: the frame is then redirected directly.
#[inline(always)]
fn to_stack_for_gro(ctx: &XdpContext, ifindex: u32) -> bool {
    let size = size_of::<DecapMeta>() as i32;
    // SAFETY: our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.as_ptr().cast(), -size) } != 0 {
        return false;
    }
    let meta = ctx.metadata();
    if meta + size as usize > ctx.data() {
        return false;
    }
    // SAFETY: the metadata area was just checked to hold a `DecapMeta`.
    unsafe {
        (meta as *mut DecapMeta).write_unaligned(DecapMeta {
            magic: DecapMeta::MAGIC,
            ifindex,
        })
    };
    true
}

/// TC ingress on the underlay: the decapsulated TCP the XDP program handed up, now aggregated
/// by GRO, goes to the VM interface named in its metadata. Everything else goes on untouched.
pub fn tc_handle(ctx: &TcContext) -> i32 {
    // SAFETY: reading fields of the program's own context.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + size_of::<DecapMeta>() <= data {
        // SAFETY: the metadata area holds a `DecapMeta`, bounds checked above.
        let m = unsafe { (meta as *const DecapMeta).read_unaligned() };
        if m.magic == DecapMeta::MAGIC {
            // SAFETY: plain helper call.
            return unsafe { bpf_redirect(m.ifindex, 0) as i32 };
        }
    }
    match tc_decap(ctx) {
        Ok(Some(ifindex)) => {
            count(Stat::VxlanDecap);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Ok(None) => TC_ACT_OK,
        Err(stat) => {
            count(stat);
            TC_ACT_SHOT
        }
    }
}

/// `[underlay] hook = "tc"`: a single IPv4 frame (not a GRO aggregate) that passes every
/// check is decapsulated here, on the underlay's TC ingress, and goes straight into its VM,
/// instead of through the kernel's UDP socket and VXLAN device, which cost small frames a
/// socket lookup and a device each. Anything else, and anything a check refuses, is left to
/// that path (`Ok(None)`), where `holdfast_ul_md` checks it again and drops or delivers it,
/// counted: this shortcut never drops a frame the full path would deliver, nor delivers one
/// it would drop. An aggregate GRO built goes that way whole, decapsulated once.
#[inline(always)]
fn tc_decap(ctx: &TcContext) -> Result<Option<u32>, Stat> {
    if ctx.gso_size() != 0 {
        return Ok(None);
    }
    // What a check refuses goes the full way, to be refused again there and counted.
    let Ok(Some((vtep, vni))) = outer(ctx) else {
        return Ok(None);
    };
    let Ok(Inner { ifindex, eth, .. }) = inner(ctx, VXLAN_OVERHEAD as usize, vni, vtep) else {
        return Ok(None);
    };
    if eth.proto != be16(ETH_P_IP) {
        // The skb keeps the outer protocol: IPv6 goes the full way.
        return Ok(None);
    }
    // The outer IPv4, UDP and VXLAN headers and the inner Ethernet header go (the 50 bytes
    // behind the outer Ethernet header), then the inner Ethernet header takes the outer's
    // place. The checksum state follows (`bpf_skb_net_shrink`).
    // SAFETY: our own context; packet pointers are not used after it.
    if unsafe { bpf_skb_adjust_room(ctx.skb.skb, -(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, 0) }
        != 0
    {
        return Ok(None);
    }
    // SAFETY: `eth` is readable; the helper checks the packet range.
    if unsafe { ctx.store_bytes(0, (&raw const eth).cast(), ETH_HLEN as u32) } != 0 {
        // Headers gone and no Ethernet header to replace them: nothing left to deliver.
        return Err(Stat::DropMalformed);
    }
    Ok(Some(ifindex))
}

/// `[underlay] hook = "tc"`: TC ingress on holdfast's VXLAN device in metadata mode, which the
/// kernel decapsulates into (and aggregates by GRO, as its own VXLAN data path does). The
/// frame arrives inner Ethernet first, the outer header in its tunnel key: the same checks as
/// the XDP program's, then into the VM. Nothing that arrives here goes anywhere else: the
/// device has no address, no bridge, and this program drops what it does not deliver.
pub fn md_handle(ctx: &TcContext) -> i32 {
    match try_md(ctx) {
        Ok(ifindex) => {
            count(Stat::VxlanDecap);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Err(stat) => {
            count(stat);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_md(ctx: &TcContext) -> Result<u32, Stat> {
    // SAFETY: an all-zero tunnel key is a valid value of this plain C struct.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the helper fills `key`, whose size it is given.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc != 0 {
        // Not from the tunnel (nothing else should reach the device).
        return Err(Stat::DropMalformed);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Stat::DropDecapNotVtep);
    };
    // The key holds addresses and the VNI in host order; the maps hold what the wire has.
    // SAFETY: IPv4 keys (the device is IPv4): the union's IPv4 members are the ones set.
    let (remote, local) = unsafe {
        (
            key.__bindgen_anon_1.remote_ipv4.to_be(),
            key.__bindgen_anon_3.local_ipv4.to_be(),
        )
    };
    if cfg.vtep == 0 || local != cfg.vtep {
        // VXLAN to another of the host's addresses: not this VTEP's.
        return Err(Stat::DropDecapNotVtep);
    }
    if VTEPS.get_ptr(&remote).is_none() {
        return Err(Stat::DropUnknownVtep);
    }
    let Inner { ifindex, .. } = inner(ctx, 0, key.tunnel_id, remote)?;
    if ctx.gso_size() != 0 {
        count(Stat::DecapGro);
    }
    Ok(ifindex)
}
