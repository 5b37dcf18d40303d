//! The checks every frame from a VM meets, whichever hook sees it: XDP on the port, or TC when
//! XDP handed the frame to the skb path or is not running at all. They are functions of the
//! headers the hook has read, so that both hooks drop the same frames for the same reasons (a
//! later context abstraction shares them as they are).
//!
//! In order: the ethertype (IPv4 and ARP only, untagged), the IPv4 header, DHCP by its ports,
//! the sender (anti-spoofing), then the destination.

use agent_common::{Binding, BindingKey, FdbKey, Stat, dhcp::SERVER_PORT};

use crate::{
    ROUTER_MAC,
    csum::be16,
    maps::{BINDINGS, FORWARDING},
    parse::{
        ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_HLEN, Ipv4Hdr, UdpHdr, mac_eq,
    },
};

/// IPv4 flags: more fragments, and the fragment offset mask.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// What a frame carries, once its ethertype passed.
pub enum L3 {
    Arp,
    Ipv4,
    Ipv6,
}

/// IPv4, IPv6 and ARP only. `tagged`: the frame's VLAN tag was taken out of the frame into the
/// skb (the kernel does that before TC runs); XDP sees tags in the frame, as an ethertype that
/// is none of them. VLAN and everything else are dropped alike.
#[inline(always)]
pub fn l3(eth: &EthHdr, tagged: bool) -> Result<L3, Stat> {
    if tagged {
        return Err(Stat::DropNotIpv4);
    }
    if eth.proto == be16(ETH_P_ARP) {
        return Ok(L3::Arp);
    }
    if eth.proto == be16(ETH_P_IPV6) {
        return Ok(L3::Ipv6);
    }
    if eth.proto != be16(ETH_P_IP) {
        return Err(Stat::DropNotIpv4);
    }
    Ok(L3::Ipv4)
}

/// The IPv4 header's length in bytes (RFC 791: version 4, at least five 32-bit words).
#[inline(always)]
pub fn ipv4_ihl(ip: &Ipv4Hdr) -> Result<usize, Stat> {
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Stat::DropMalformed);
    }
    Ok(ihl)
}

/// Whether the datagram has UDP ports to look at: UDP, and the first fragment (later ones carry
/// none, RFC 791).
#[inline(always)]
pub fn has_udp_ports(ip: &Ipv4Hdr) -> bool {
    ip.protocol == IPPROTO_UDP && u16::from_be(ip.frag_off) & IP_OFFSET == 0
}

/// Whether a UDP datagram is a request to the DHCP server. Only holdfast answers DHCP on a VM's
/// network: server traffic from a VM is a rogue server; a fragmented request is malformed.
#[inline(always)]
pub fn dhcp_request(ip: &Ipv4Hdr, udp: &UdpHdr) -> Result<bool, Stat> {
    if udp.source == be16(SERVER_PORT) {
        return Err(Stat::DropDhcpRogueServer);
    }
    if udp.dest != be16(SERVER_PORT) {
        return Ok(false);
    }
    if u16::from_be(ip.frag_off) & IP_MF != 0 {
        return Err(Stat::DropDhcpMalformed);
    }
    Ok(true)
}

/// Anti-spoofing: the binding of the NIC on `ifindex` with the frame's source MAC, and the
/// frame's IPv4 source is that NIC's address, unless the NIC forwards (`forwarding: true`, in
/// `FORWARDING`): a gateway VM sends what it forwards with sources outside its VPC, its MAC
/// still enforced, and never with another address of its VPC (`route::foreign_source_allowed`). `FORWARDING` is looked up only for a source that is not the NIC's own, so
/// the frames of every other NIC cost what they did.
#[inline(always)]
pub fn sender(ifindex: u32, eth: &EthHdr, saddr: u32) -> Result<*const Binding, Stat> {
    let binding = BINDINGS
        .get_ptr(&BindingKey::new(ifindex, eth.src))
        .ok_or(Stat::DropSpoofedMac)?;
    // SAFETY: map value pointers stay valid for the program run.
    let (ip, vni) = unsafe { ((*binding).ip, (*binding).vni) };
    if saddr != ip
        && (FORWARDING.get_ptr(&FdbKey::new(vni, eth.src)).is_none()
            || !crate::route::foreign_source_allowed(vni, saddr))
    {
        return Err(Stat::DropSpoofedIp);
    }
    Ok(binding)
}

/// Whether the frame is for the router MAC: the gateway, or anything off the network. Such a
/// frame is routed (`route`) or dropped; nothing hands a VM's frame to the host stack, whose
/// sockets and forwarding would otherwise see it as soon as a port carries the router MAC
/// (host-routed designs), is promiscuous, or the host's sysctls allow it.
#[inline(always)]
pub fn to_router(eth: &EthHdr) -> bool {
    mac_eq(&eth.dst, &ROUTER_MAC.load())
}
