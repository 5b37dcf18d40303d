//! The program on each VM interface: what a VM sends is looked at here first.

use agent_common::{Stat, dhcp::SERVER_PORT};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    arp,
    csum::be16,
    dhcp,
    parse::{ETH_HLEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, UDP_HLEN, UdpHdr, load},
    stats::count,
};

/// IPv4 flags: more fragments, and the fragment offset mask.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

pub fn handle(ctx: &XdpContext) -> u32 {
    match try_handle(ctx) {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            xdp_action::XDP_DROP
        }
    }
}

/// Hands the frame to the host stack untouched.
#[inline(always)]
pub fn pass() -> Result<u32, Stat> {
    count(Stat::VmPass);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_handle(ctx: &XdpContext) -> Result<u32, Stat> {
    let Some(eth) = load::<EthHdr>(ctx, 0) else {
        return pass();
    };
    if eth.proto == be16(ETH_P_ARP) {
        return arp::handle(ctx, &eth);
    }
    if eth.proto == be16(ETH_P_IP) {
        return ipv4(ctx, &eth);
    }
    pass()
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: &EthHdr) -> Result<u32, Stat> {
    let Some(ip) = load::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return pass();
    };
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.protocol != IPPROTO_UDP || ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return pass();
    }
    let frag = u16::from_be(ip.frag_off);
    if frag & IP_OFFSET != 0 {
        // Later fragments carry no UDP header.
        return pass();
    }
    let udp_off = ETH_HLEN + ihl;
    let Some(udp) = load::<UdpHdr>(ctx, udp_off) else {
        return pass();
    };
    if udp.source == be16(SERVER_PORT) {
        // Only holdfast answers DHCP on a VM's network.
        return Err(Stat::DropDhcpRogueServer);
    }
    if udp.dest == be16(SERVER_PORT) {
        if frag & IP_MF != 0 {
            return Err(Stat::DropDhcpMalformed);
        }
        return dhcp::handle_request(ctx, udp_off + UDP_HLEN, eth.src, ip.daddr);
    }
    pass()
}
