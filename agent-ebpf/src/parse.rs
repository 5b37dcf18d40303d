//! Bounds-checked packet access and the headers the programs read.

use core::mem::size_of;

use crate::ctx::Ctx;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_UDP: u8 = 17;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// IPv4 `frag_off` (host order): more fragments, and the fragment offset mask.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// Upper bound on any offset a program reads at. Keeps variable offsets verifier-friendly and is
/// well past the largest legitimate DHCP or ARP frame.
pub const MAX_OFFSET: usize = 1536;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network order.
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label, in network order.
    pub vtc_flow: [u8; 4],
    /// Network order.
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpHdr {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// Pointer to a `T` at `off`, if the whole `T` lies inside the directly readable bytes (XDP's
/// first buffer, the skb's linear part).
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Ctx, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &impl Ctx, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the value lies inside the packet; packet memory has no
    // alignment guarantee, hence the unaligned read.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

/// The IPv4 address in an ARP field, as a network-order `u32`.
#[inline(always)]
pub fn ip_from(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// Whether two IPv6 addresses are equal, compared as two 64-bit words (no `bcmp` in BPF).
#[inline(always)]
pub fn ip6_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: 16 bytes each, read unaligned.
    unsafe {
        let (a, b) = (a.as_ptr().cast::<[u64; 2]>(), b.as_ptr().cast::<[u64; 2]>());
        let (a, b) = (a.read_unaligned(), b.read_unaligned());
        a[0] == b[0] && a[1] == b[1]
    }
}
