//! ARP answered in XDP: a bound NIC asking for its gateway gets the router MAC.

use agent_common::{BindingKey, Stat};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    ROUTER_MAC,
    csum::be16,
    maps::BINDINGS,
    parse::{ArpHdr, ETH_HLEN, ETH_P_IP, EthHdr, ip_from, mac_eq, ptr_at},
    stats::count,
    vm::pass,
};

const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

#[inline(always)]
pub fn handle(ctx: &XdpContext, eth: &EthHdr) -> Result<u32, Stat> {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
        return pass();
    };
    // SAFETY: `ptr_at` checked the header is inside the packet.
    let req = unsafe { arp.read_unaligned() };
    if req.htype != be16(ARPHRD_ETHER)
        || req.ptype != be16(ETH_P_IP)
        || req.hlen != 6
        || req.plen != 4
        || req.op != be16(ARPOP_REQUEST)
        || !mac_eq(&req.sha, &eth.src)
    {
        return pass();
    }
    let key = BindingKey::new(ctx.ingress_ifindex() as u32, eth.src);
    let Some(binding) = BINDINGS.get_ptr(&key) else {
        return pass();
    };
    // SAFETY: map value pointers stay valid for the program run.
    let gateway = unsafe { (*binding).server_id };
    if ip_from(req.tpa) != gateway {
        return pass();
    }
    let router_mac = ROUTER_MAC.load();
    let reply = ArpHdr {
        op: be16(ARPOP_REPLY),
        sha: router_mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..req
    };
    let frame = ptr_at::<EthHdr>(ctx, 0).ok_or(Stat::DropDhcpMalformed)?;
    // SAFETY: both headers were bounds-checked above.
    unsafe {
        frame.write_unaligned(EthHdr {
            dst: eth.src,
            src: router_mac,
            proto: eth.proto,
        });
        arp.write_unaligned(reply);
    }
    count(Stat::ArpReply);
    Ok(xdp_action::XDP_TX)
}
