//! ARP answered on the VM port (RFC 826), at either hook: every address of a VM's network
//! resolves here, so no ARP ever crosses the underlay; and no VM can claim an address that is
//! not its own.

use agent_common::{ArpKey, BindingKey, RateKind, Stat};

use crate::{
    ROUTER_MAC,
    csum::be16,
    ctx::Ctx,
    maps::{ARP, BINDINGS},
    parse::{ArpHdr, ETH_HLEN, ETH_P_IP, EthHdr, ip_from, mac_eq, ptr_at},
    ratelimit,
    stats::count,
};

const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

#[inline(always)]
pub fn from_vm<C: Ctx>(ctx: &C, eth: &EthHdr) -> Result<u32, Stat> {
    let ifindex = ctx.ifindex();
    // Each answer costs the host a transmission: a flooding VM gets its port's share, no more.
    if !ratelimit::allow(ifindex, RateKind::Arp) {
        return Err(Stat::DropArpRateLimited);
    }
    let arp = ptr_at::<ArpHdr>(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    // SAFETY: `ptr_at` checked the header is inside the packet.
    let req = unsafe { arp.read_unaligned() };
    if req.htype != be16(ARPHRD_ETHER)
        || req.ptype != be16(ETH_P_IP)
        || req.hlen != 6
        || req.plen != 4
    {
        return Err(Stat::DropMalformed);
    }
    let key = BindingKey::new(ifindex, eth.src);
    let binding = BINDINGS.get_ptr(&key).ok_or(Stat::DropSpoofedMac)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (nic_ip, gateway, vni) = unsafe { ((*binding).ip, (*binding).server_id, (*binding).vni) };
    let spa = ip_from(req.spa);
    // The sender must be this NIC: its MAC, and its address (or none, in a probe, RFC 5227);
    // another sender address may only ask for a server address (below).
    if !mac_eq(&req.sha, &eth.src) {
        return Err(Stat::DropArpSpoof);
    }
    let own = spa == nic_ip || spa == 0;
    let tpa = ip_from(req.tpa);
    if req.op == be16(ARPOP_REPLY) || req.op != be16(ARPOP_REQUEST) || tpa == nic_ip {
        // Replies nobody asked for, and probes or announcements of its own address.
        return Err(Stat::DropArpNoAnswer);
    }
    let router_mac = ROUTER_MAC.load();
    let mac = if tpa == gateway {
        router_mac
    } else {
        let entry = ARP.get_ptr(&ArpKey { vni, ip: tpa }).ok_or(if own {
            Stat::DropArpUnknown
        } else {
            Stat::DropArpSpoof
        })?;
        // SAFETY: as above.
        unsafe { (*entry).mac }
    };
    // A client that IPAM renumbered keeps its old address until its next renewal, which it
    // unicasts to the server identifier its lease names (RFC 2131 §4.4.5): it must resolve
    // that address to hear the NAK. The answer goes back to this NIC alone and nothing is
    // learned from the request, so a server address (one that resolves to the router MAC) is
    // answered whatever the sender address; any other is not.
    if !own && !mac_eq(&mac, &router_mac) {
        return Err(Stat::DropArpSpoof);
    }
    let reply = ArpHdr {
        op: be16(ARPOP_REPLY),
        sha: mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..req
    };
    let frame = ptr_at::<EthHdr>(ctx, 0).ok_or(Stat::DropMalformed)?;
    // SAFETY: both headers were bounds-checked above.
    unsafe {
        frame.write_unaligned(EthHdr {
            dst: eth.src,
            src: mac,
            proto: eth.proto,
        });
        arp.write_unaligned(reply);
    }
    count(Stat::ArpReply);
    Ok(ctx.tx())
}
