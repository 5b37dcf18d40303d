//! Internet checksum (RFC 1071) accumulation.
//!
//! Words are taken in memory order and summed as native `u16`s; the sum stored with native byte
//! order is the right checksum on either endianness. The agent precomputes the sums of the option
//! blobs with the same convention (`agent_common::csum_partial`).

/// Adds a 16-bit word whose memory bytes are `w.to_ne_bytes()`.
#[inline(always)]
pub fn add16(sum: u64, w: u16) -> u64 {
    sum + w as u64
}

/// Adds two consecutive 16-bit words whose memory bytes are `v.to_ne_bytes()`.
#[inline(always)]
pub fn add32(sum: u64, v: u32) -> u64 {
    sum + (v & 0xffff) as u64 + (v >> 16) as u64
}

/// Adds the word made of two consecutive bytes.
#[inline(always)]
pub fn add_bytes(sum: u64, a: u8, b: u8) -> u64 {
    sum + u16::from_ne_bytes([a, b]) as u64
}

/// Adds the three words of a MAC address.
#[inline(always)]
pub fn add_mac(sum: u64, m: &[u8; 6]) -> u64 {
    add_bytes(
        add_bytes(add_bytes(sum, m[0], m[1]), m[2], m[3]),
        m[4],
        m[5],
    )
}

/// Network-order 16-bit value as the native word whose memory bytes are big-endian.
#[inline(always)]
pub const fn be16(v: u16) -> u16 {
    v.to_be()
}

pub use agent_common::csum_fold as fold;
