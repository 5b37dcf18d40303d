//! Recomputing the TCP/UDP checksum of a frame a VM sent.
//!
//! A VM with checksum offload (every virtio and veth guest by default) leaves the L4 checksum
//! unfinished: the kernel carries "compute it later" beside the skb, and XDP only sees the bytes.
//! A frame XDP redirects loses that note, so the checksum is completed here. For a checksum that
//! was already complete, the result is the same bytes.

use agent_common::Stat;
use aya_ebpf::helpers::bpf_csum_diff;

use crate::{
    csum::{add16, add32, be16, fold},
    ctx::Ctx,
    maps::{CSUM_SCRATCH, CSUM_WINDOW},
    parse::{ETH_HLEN, IPPROTO_UDP, IPV4_HLEN, Ipv4Hdr, ptr_at},
};

pub const IPPROTO_TCP: u8 = 6;

/// Completes the checksum of the TCP or UDP segment behind the 20-byte IPv4 header at
/// `ETH_HLEN`. Other protocols, and fragments, are left alone. Only a hook that loses the
/// skb's checksum state needs it (XDP): on the skb path the kernel finishes the checksum.
#[inline(always)]
pub fn complete(ctx: &impl Ctx, ip: &Ipv4Hdr) -> Result<(), Stat> {
    let check_off = match ip.protocol {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return Ok(()),
    };
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        // A fragment's checksum covers the whole datagram; the sender's stack finished it.
        return Ok(());
    }
    let tot = u16::from_be(ip.tot_len) as usize;
    let l4 = tot.wrapping_sub(IPV4_HLEN);
    // The length must cover the header holding the checksum; the caller checked the frame.
    let l4 = core::hint::black_box(l4);
    if l4 < check_off + 2 || l4 > CSUM_WINDOW {
        return Err(Stat::DropMalformed);
    }
    let buf = CSUM_SCRATCH.get_ptr_mut(0).ok_or(Stat::DropMalformed)?;
    let base = buf.cast::<u8>();
    // SAFETY: `buf` is this CPU's scratch of CSUM_WINDOW + 8 bytes; 1 <= l4 <= CSUM_WINDOW.
    let rc = unsafe { ctx.load_bytes((ETH_HLEN + IPV4_HLEN) as u32, base, l4 as u32) };
    if rc != 0 {
        return Err(Stat::DropMalformed);
    }
    // The checksum field counts as zero; pad to a whole word with zeros. The end is checked
    // again behind a barrier so the verifier sees the bound on the register it indexes with.
    let end = core::hint::black_box(l4);
    if end > CSUM_WINDOW {
        return Err(Stat::DropMalformed);
    }
    // SAFETY: check_off + 1 < l4 <= CSUM_WINDOW and end + 2 < CSUM_WINDOW + 8.
    unsafe {
        *base.add(check_off) = 0;
        *base.add(check_off + 1) = 0;
        for i in 0..3 {
            *base.add(end + i) = 0;
        }
    }
    let padded = (l4 + 3) & !3;
    let mut sum = add32(0, ip.saddr);
    sum = add32(sum, ip.daddr);
    sum = add16(sum, be16(ip.protocol as u16));
    sum = add16(sum, be16(l4 as u16));
    let mut wsum = fold_to_u32(sum);
    let mut off = 0usize;
    for _ in 0..(CSUM_WINDOW / 512) {
        if off >= padded {
            break;
        }
        let chunk = core::hint::black_box(if padded - off > 512 {
            512
        } else {
            padded - off
        });
        if chunk == 0 || chunk > 512 || off > CSUM_WINDOW - 512 {
            break;
        }
        // SAFETY: `base + off .. + chunk` lies inside the scratch value.
        let r = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                base.add(off).cast(),
                chunk as u32,
                wsum,
            )
        };
        if r < 0 {
            return Err(Stat::DropMalformed);
        }
        wsum = r as u32;
        off += chunk;
    }
    let mut check = fold(wsum as u64);
    if ip.protocol == IPPROTO_UDP && check == 0 {
        check = 0xffff;
    }
    let p = ptr_at::<u16>(ctx, ETH_HLEN + IPV4_HLEN + check_off).ok_or(Stat::DropMalformed)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { p.write_unaligned(check) };
    Ok(())
}

#[inline(always)]
fn fold_to_u32(mut s: u64) -> u32 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s as u32
}
