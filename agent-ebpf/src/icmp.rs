//! ICMP errors back to a VM (RFC 792), at either hook: fragmentation needed for a frame too big
//! for its network (RFC 1191), so that its path MTU discovery converges instead of the frame
//! vanishing; and the router's errors for a frame it cannot route (time exceeded, network and
//! host unreachable, `route`).
//!
//! An error is built in this CPU's scratch, not on the stack (the VM program's other paths fill
//! it), and replaces the frame, which goes back out of the port it came in on.

use agent_common::Stat;

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add16, add32, be16, fold},
    ctx::Ctx,
    maps::{CSUM_SCRATCH, CSUM_WINDOW},
    parse::{ETH_HLEN, ETH_P_IP, IPV4_HLEN},
    stats::count,
};

pub const IPPROTO_ICMP: u8 = 1;
/// Destination unreachable (RFC 792), its codes: network, host, fragmentation needed (RFC
/// 1191).
pub const DEST_UNREACH: u8 = 3;
pub const NET_UNREACH: u8 = 0;
pub const HOST_UNREACH: u8 = 1;
pub const FRAG_NEEDED: u8 = 4;
/// Time exceeded, in transit (RFC 792).
pub const TIME_EXCEEDED: u8 = 11;
pub const ECHO_REPLY: u8 = 0;
pub const ECHO_REQUEST: u8 = 8;
/// The offending datagram's first 28 bytes go back with the error: its IP header and first 8
/// bytes of data (RFC 792) when the header has no options, as a routed datagram's never has
/// (`route` refuses them). A bridged datagram with options that gets a fragmentation-needed
/// has its first 28 bytes quoted, as before routing.
const QUOTED: usize = IPV4_HLEN + 8;
/// The whole answer: Ethernet, IPv4, the ICMP header, the quoted bytes.
const LEN: usize = ETH_HLEN + IPV4_HLEN + 8 + QUOTED;
/// Where the ICMP header starts in the answer.
const ICMP_OFF: usize = ETH_HLEN + IPV4_HLEN;

/// Whether ICMP type `kind` is an error message (RFC 792, RFC 1122 §3.2.2): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem. No error is ever
/// sent in answer to one (RFC 1122 §3.2.2), so that two hosts cannot bounce errors forever.
#[inline(always)]
pub fn is_error(kind: u8) -> bool {
    matches!(kind, 3 | 4 | 5 | 11 | 12)
}

/// Rewrites the frame into an ICMP fragmentation-needed from `src` to the VM's `dst` (at MAC
/// `vm`) carrying the network's `mtu`, and sends it back out of the port.
#[inline(always)]
pub fn frag_needed<C: Ctx>(
    ctx: &C,
    vm: &[u8; 6],
    src: u32,
    dst: u32,
    mtu: u32,
) -> Result<u32, Stat> {
    error(
        ctx,
        vm,
        src,
        dst,
        (DEST_UNREACH, FRAG_NEEDED),
        mtu as u16,
        Stat::IcmpFragNeeded,
    )
}

/// Rewrites the frame into the ICMP error `kind` (type, code) from `src` to `dst` (at MAC
/// `vm`), quoting the frame's IP header and first 8 bytes of data; `mtu` goes into the
/// next-hop MTU field (fragmentation needed), 0 otherwise. Sends it back out of the port,
/// counted as `stat`.
#[inline(always)]
pub fn error<C: Ctx>(
    ctx: &C,
    vm: &[u8; 6],
    src: u32,
    dst: u32,
    kind: (u8, u8),
    mtu: u16,
    stat: Stat,
) -> Result<u32, Stat> {
    let f = scratch::<LEN>()?;
    // SAFETY: `f` has room for the QUOTED bytes from ICMP_OFF + 8 on (LEN is its size); the
    // helper checks the packet range itself.
    if unsafe {
        ctx.load_bytes(
            ETH_HLEN as u32,
            f.as_mut_ptr().add(ICMP_OFF + 8),
            QUOTED as u32,
        )
    } != 0
    {
        return Err(Stat::DropMalformed);
    }
    let router = ROUTER_MAC.load();
    f[0..6].copy_from_slice(vm);
    f[6..12].copy_from_slice(&router);
    f[12..14].copy_from_slice(&be16(ETH_P_IP).to_ne_bytes());
    let ip_len = (IPV4_HLEN + 8 + QUOTED) as u16;
    let mut s = add_bytes(0, 0x45, 0xc0);
    s = add16(s, be16(ip_len));
    s = add_bytes(s, 64, IPPROTO_ICMP);
    s = add32(s, src);
    s = add32(s, dst);
    f[14] = 0x45;
    f[15] = 0xc0;
    f[16..18].copy_from_slice(&be16(ip_len).to_ne_bytes());
    f[22] = 64;
    f[23] = IPPROTO_ICMP;
    f[24..26].copy_from_slice(&fold(s).to_ne_bytes());
    f[26..30].copy_from_slice(&src.to_ne_bytes());
    f[30..34].copy_from_slice(&dst.to_ne_bytes());
    // Type, code, checksum, unused (or the next-hop MTU), then the original header.
    f[ICMP_OFF] = kind.0;
    f[ICMP_OFF + 1] = kind.1;
    f[ICMP_OFF + 6..ICMP_OFF + 8].copy_from_slice(&be16(mtu).to_ne_bytes());
    let mut c = add_bytes(0, kind.0, kind.1);
    c = add16(c, be16(mtu));
    let mut i = ICMP_OFF + 8;
    while i < LEN {
        c = add_bytes(c, f[i], f[i + 1]);
        i += 2;
    }
    f[ICMP_OFF + 2..ICMP_OFF + 4].copy_from_slice(&fold(c).to_ne_bytes());
    ctx.resize(LEN as u32)?;
    // SAFETY: `f` holds the LEN bytes stored; the helper checks the packet range itself.
    if unsafe { ctx.store_bytes(0, f.as_ptr(), LEN as u32) } != 0 {
        return Err(Stat::DropMalformed);
    }
    count(stat);
    Ok(ctx.tx())
}

/// This CPU's scratch buffer as `N` zeroed bytes: answers are built there, not on the stack,
/// which the VM program's other paths already fill.
#[inline(always)]
pub fn scratch<const N: usize>() -> Result<&'static mut [u8; N], Stat> {
    const { assert!(N <= CSUM_WINDOW + 8) };
    let buf = CSUM_SCRATCH.get_ptr_mut(0).ok_or(Stat::DropMalformed)?;
    // SAFETY: this CPU's slot of a per-CPU array, at least N bytes (checked above), used by one
    // program run at a time; nothing else holds it while the answer is built.
    let f = unsafe { &mut *buf.cast::<[u8; N]>() };
    *f = [0; N];
    Ok(f)
}
