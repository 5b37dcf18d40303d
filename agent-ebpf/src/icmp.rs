//! ICMP fragmentation-needed back to a VM for a frame too big for its network (RFC 792, RFC
//! 1191), so that its path MTU discovery converges instead of the frame vanishing.

use agent_common::Stat;

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add16, add32, be16, fold},
    ctx::Ctx,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IPV4_HLEN, load},
    stats::count,
};

const IPPROTO_ICMP: u8 = 1;
/// The offending datagram's IP header (20 bytes, options are not quoted) and first 8 bytes go
/// back with the error.
const QUOTED: usize = IPV4_HLEN + 8;
/// The whole answer: Ethernet, IPv4, the ICMP header, the quoted bytes.
const LEN: usize = ETH_HLEN + IPV4_HLEN + 8 + QUOTED;

/// Rewrites the frame into an ICMP fragmentation-needed from the gateway `server_id` to the
/// VM at `ip` carrying the network's `mtu`, and sends it back out of the port.
#[inline(always)]
pub fn frag_needed<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    server_id: u32,
    ip: u32,
    mtu: u32,
) -> Result<u32, Stat> {
    let orig: [u8; QUOTED] = load(ctx, ETH_HLEN).ok_or(Stat::DropMalformed)?;
    ctx.resize(LEN as u32)?;
    let router = ROUTER_MAC.load();
    let mtu = mtu as u16;
    let mut f = [0u8; LEN];
    f[0..6].copy_from_slice(&eth.src);
    f[6..12].copy_from_slice(&router);
    f[12..14].copy_from_slice(&be16(ETH_P_IP).to_ne_bytes());
    let ip_len = (IPV4_HLEN + 8 + QUOTED) as u16;
    let mut s = add_bytes(0, 0x45, 0xc0);
    s = add16(s, be16(ip_len));
    s = add_bytes(s, 64, IPPROTO_ICMP);
    s = add32(s, server_id);
    s = add32(s, ip);
    f[14] = 0x45;
    f[15] = 0xc0;
    f[16..18].copy_from_slice(&be16(ip_len).to_ne_bytes());
    f[22] = 64;
    f[23] = IPPROTO_ICMP;
    f[24..26].copy_from_slice(&fold(s).to_ne_bytes());
    f[26..30].copy_from_slice(&server_id.to_ne_bytes());
    f[30..34].copy_from_slice(&ip.to_ne_bytes());
    // ICMP type 3 code 4, checksum, unused, next-hop MTU, then the original header.
    f[34] = 3;
    f[35] = 4;
    f[40..42].copy_from_slice(&be16(mtu).to_ne_bytes());
    f[42..LEN].copy_from_slice(&orig);
    let mut c = add_bytes(0, 3, 4);
    c = add16(c, be16(mtu));
    let mut i = 42;
    while i < LEN {
        c = add_bytes(c, f[i], f[i + 1]);
        i += 2;
    }
    f[36..38].copy_from_slice(&fold(c).to_ne_bytes());
    // SAFETY: `f` holds the LEN bytes stored; the helper checks the packet range itself.
    if unsafe { ctx.store_bytes(0, f.as_ptr(), LEN as u32) } != 0 {
        return Err(Stat::DropMalformed);
    }
    count(Stat::IcmpFragNeeded);
    Ok(ctx.tx())
}
