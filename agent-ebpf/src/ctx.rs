//! One program source, two hooks: the packet access the VM-port logic needs, over XDP and over
//! TC, the way Cilium's `__ctx_buff` and its `ctx_*` helpers (`bpf/include/bpf/ctx/xdp.h`,
//! `skb.h`) let `bpf/lib` serve both. The logic is written once, generic over [`Ctx`], and
//! monomorphised per hook: every method is `#[inline(always)]`, and `Ctx::SKB` is a constant,
//! so what one hook does not need is compiled out of its program.
//!
//! Where the hooks differ, the trait says what the logic may rely on:
//! - XDP sees bytes only. A frame it redirects loses the skb's checksum state (the TCP or UDP
//!   checksum a guest with offload left unfinished is completed first), and what it cannot
//!   carry whole (GSO super-frames, frames over the MTU, unresolved next hops) it hands to the
//!   skb path untouched ([`Ctx::PASS`]).
//! - TC runs on the skb: the kernel keeps its checksum and GSO state (a 64 KiB TSO frame is
//!   encapsulated whole and segmented on the way out), the kernel moved a VLAN tag out of the
//!   frame before TC, and only the headers pulled into the linear part can be read directly.
//! - "Back out of this port": `XDP_TX`, or a redirect to the ingress interface's egress.

use agent_common::Stat;
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT,
        TC_ACT_STOLEN, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action,
    },
    helpers::{
        bpf_clone_redirect, bpf_l4_csum_replace, bpf_redirect, bpf_redirect_neigh,
        bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
        bpf_skb_store_bytes, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};

use crate::parse::ETH_HLEN;

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header's length.
const ENCAP_L2_ETH_LEN: u64 = (ETH_HLEN as u64) << 56;

/// Headers the VM-port logic reads directly on the skb path: Ethernet, an IPv4 header with the
/// most options it may carry (60 bytes), and the first 20 bytes of TCP or UDP.
const SKB_HEADERS: u32 = (ETH_HLEN + 60 + 20) as u32;

/// What [`Ctx::resize`] takes from XDP's headroom when neither end alone has room: the 216
/// bytes `XDP_PACKET_HEADROOM` leaves once the kernel's `xdp_frame` (40 bytes) is kept.
const XDP_HEAD_PART: i32 = 216;

/// A packet as one hook hands it to a program.
pub trait Ctx: EbpfContext {
    /// The skb path (TC): checksum and GSO state kept beside the frame, any frame carried whole,
    /// and no further path to hand a frame to.
    const SKB: bool;
    /// The verdict that hands the frame on untouched: from XDP to the skb path. A VM port's
    /// program on the skb path never returns it (nothing from a VM reaches the host stack).
    const PASS: u32;
    const DROP: u32;

    /// Start and end of the directly readable bytes (XDP: the first buffer; TC: the linear part).
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length, fragments or paged data included.
    fn len(&self) -> u32;
    /// The interface the frame came in on.
    fn ifindex(&self) -> u32;
    /// Whether the frame had a VLAN tag the kernel took out of it (TC); XDP sees tags in the
    /// frame, as an ethertype.
    fn vlan_tagged(&self) -> bool;
    /// The segment size of a GSO super-frame, 0 for a frame that goes on the wire as it is.
    fn gso_size(&self) -> u32;
    /// Makes the headers the logic reads directly readable and writable (the skb's linear part).
    fn pull_headers(&self);
    /// Makes the frame's first `max` bytes (all of it when shorter) directly readable and
    /// writable (the skb's linear part), for the DHCP responder, which reads a request up to
    /// the end of its options window. Packet pointers taken before it are invalid after it.
    fn pull_up_to(&self, max: u32);
    /// Copies `len` bytes at `off` out of the frame, wherever they are.
    ///
    /// # Safety
    /// `dst` must be writable for `len` bytes.
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64;
    /// Copies `len` bytes into the frame at `off`, wherever they are.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes.
    unsafe fn store_bytes(&self, off: u32, src: *const u8, len: u32) -> i64;
    /// Makes the frame exactly `len` bytes, at its tail (XDP grows into the headroom when the
    /// driver left no tailroom: the caller rewrites the frame from its first byte then).
    fn resize(&self, len: u32) -> Result<(), Stat>;
    /// Room for `len` bytes of outer VXLAN headers (Ethernet, IPv4, UDP, VXLAN) in front of the
    /// frame. After it the frame's first `len + ETH_HLEN` bytes are to be written: the outer
    /// headers, then the inner Ethernet header (TC keeps it at the front, XDP moved it back).
    /// TC records the tunnel on the skb so that a GSO frame is segmented as VXLAN.
    fn encap_room(&self, len: u32) -> Result<(), Stat>;
    /// Sends the frame out of `ifindex`: the same helper and verdict on both hooks.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
    /// Sends the frame out of `ifindex` through the kernel's neighbour subsystem, which
    /// resolves the next hop's MAC (TC only: XDP hands such frames to the skb path first).
    fn redirect_neigh(&self, ifindex: u32) -> Result<u32, Stat>;
    /// Sends an encapsulated frame out of the underlay `ifindex` ([`Ctx::redirect`]). TC: a GSO
    /// frame goes as a clone, the skb itself consumed, so that it leaves without the VM port's
    /// socket. Segmentation hands an skb's socket reference and truesize to its last segment
    /// (`skb_segment`), a veth carries a socket reference into the peer namespace, and GRO there
    /// does not merge packets of different sockets: that segment would be delivered alone,
    /// ahead of the rest of its frame, every frame (measured: half the aggregation at the VM,
    /// three times the ACKs). The kernel's own bridge path hands VXLAN its frames without the
    /// socket too. A clone shares the data: one skb header per 64 KiB frame.
    fn redirect_encapsulated(&self, ifindex: u32) -> Result<u32, Stat>;
    /// Sends the frame back out of the port it came in on, to the VM.
    fn tx(&self) -> u32;
    /// Makes the UDP checksum at packet offset `off` of a reply written whole (its complete
    /// checksum `csum` is there, over the pseudo header whose folded sum is `pseudo`) right
    /// for the checksum state the request left on the frame. XDP: nothing, a frame has no
    /// such state. TC: see the implementation.
    fn reply_udp_csum(&self, off: u32, csum: u16, pseudo: u16) -> Result<(), Stat>;
}

impl Ctx for XdpContext {
    const SKB: bool = false;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: our own context.
        unsafe { bpf_xdp_get_buff_len(self.as_ptr().cast()) as u32 }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        false
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn pull_headers(&self) {}

    #[inline(always)]
    fn pull_up_to(&self, _max: u32) {}

    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: per the caller; the helper checks the packet range itself.
        unsafe { bpf_xdp_load_bytes(self.as_ptr().cast(), off, dst.cast(), len) }
    }

    #[inline(always)]
    unsafe fn store_bytes(&self, off: u32, src: *const u8, len: u32) -> i64 {
        // SAFETY: per the caller; the helper checks the packet range itself.
        unsafe { bpf_xdp_store_bytes(self.as_ptr().cast(), off, src as *mut _, len) }
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), Stat> {
        let delta = len as i32 - (self.data_end() - self.data()) as i32;
        if delta == 0 {
            return Ok(());
        }
        // SAFETY: helpers on our own context; packet pointers are re-derived afterwards.
        unsafe {
            if bpf_xdp_adjust_tail(self.as_ptr().cast(), delta) == 0 {
                return Ok(());
            }
            if delta > 0 && bpf_xdp_adjust_head(self.as_ptr().cast(), -delta) == 0 {
                return Ok(());
            }
            // Neither alone (a DHCP reply near `OPTS_MAX` grows a short request by about 250
            // bytes): part into the headroom, the rest into the tailroom. A veth hands XDP the
            // sender's own buffer when it has `XDP_PACKET_HEADROOM` (256 bytes) in front, of
            // which the kernel keeps its `xdp_frame`, and whatever tailroom the allocation
            // rounded up to.
            if delta > XDP_HEAD_PART
                && bpf_xdp_adjust_head(self.as_ptr().cast(), -XDP_HEAD_PART) == 0
                && bpf_xdp_adjust_tail(self.as_ptr().cast(), delta - XDP_HEAD_PART) == 0
            {
                return Ok(());
            }
        }
        Err(Stat::DropMalformed)
    }

    #[inline(always)]
    fn encap_room(&self, len: u32) -> Result<(), Stat> {
        // SAFETY: our own context; packet pointers are re-derived afterwards.
        if unsafe { bpf_xdp_adjust_head(self.as_ptr().cast(), -(len as i32)) } != 0 {
            return Err(Stat::DropMalformed);
        }
        Ok(())
    }

    #[inline(always)]
    fn redirect_encapsulated(&self, ifindex: u32) -> Result<u32, Stat> {
        Ok(self.redirect(ifindex))
    }

    #[inline(always)]
    fn redirect_neigh(&self, _ifindex: u32) -> Result<u32, Stat> {
        // Never reached: XDP hands frames without a resolved next hop to the skb path before
        // it encapsulates them.
        Err(Stat::DropNoRoute)
    }

    #[inline(always)]
    fn tx(&self) -> u32 {
        xdp_action::XDP_TX
    }

    #[inline(always)]
    fn reply_udp_csum(&self, _off: u32, _csum: u16, _pseudo: u16) -> Result<(), Stat> {
        Ok(())
    }
}

impl Ctx for TcContext {
    const SKB: bool = true;
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn pull_headers(&self) {
        let len = TcContext::len(self);
        let n = if len < SKB_HEADERS { len } else { SKB_HEADERS };
        // A frame shorter than the headers is refused by the bounds checks that follow.
        // SAFETY: our own context; packet pointers are derived afterwards.
        let _ = unsafe { bpf_skb_pull_data(self.skb.skb, n) };
    }

    #[inline(always)]
    fn pull_up_to(&self, max: u32) {
        let len = TcContext::len(self);
        let n = if len < max { len } else { max };
        // A frame that cannot be pulled leaves the linear part short: the responder's bounds
        // checks refuse what it cannot read.
        // SAFETY: our own context; packet pointers are derived afterwards.
        let _ = unsafe { bpf_skb_pull_data(self.skb.skb, n) };
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: per the caller; the helper checks the packet range itself.
        unsafe { bpf_skb_load_bytes(self.as_ptr(), off, dst.cast(), len) }
    }

    #[inline(always)]
    unsafe fn store_bytes(&self, off: u32, src: *const u8, len: u32) -> i64 {
        // SAFETY: per the caller; the helper checks the packet range itself.
        unsafe { bpf_skb_store_bytes(self.skb.skb, off, src.cast(), len, 0) }
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), Stat> {
        // SAFETY: our own context; packet pointers are re-derived afterwards. Shrinking a GSO
        // frame also clears its GSO state.
        if unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) } != 0 {
            return Err(Stat::DropMalformed);
        }
        Ok(())
    }

    #[inline(always)]
    fn encap_room(&self, len: u32) -> Result<(), Stat> {
        // FIXED_GSO: a GSO frame keeps its segment size. Without it the kernel shrinks each
        // segment by the outer headers' 50 bytes, although the network's MTU already leaves
        // room for them (validated: MTU + 50 <= the underlay's) and the caller checked each
        // segment against that MTU: every segment would carry 50 bytes less than the guest's
        // MSS, and a bulk flow about 4% more packets than the kernel's own VXLAN sends.
        let flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
            | BPF_F_ADJ_ROOM_FIXED_GSO) as u64
            | ENCAP_L2_ETH_LEN;
        // SAFETY: our own context; packet pointers are re-derived afterwards.
        if unsafe { bpf_skb_adjust_room(self.skb.skb, len as i32, BPF_ADJ_ROOM_MAC, flags) } != 0 {
            return Err(Stat::DropMalformed);
        }
        Ok(())
    }

    #[inline(always)]
    fn redirect_encapsulated(&self, ifindex: u32) -> Result<u32, Stat> {
        if self.gso_size() == 0 {
            return Ok(self.redirect(ifindex));
        }
        // SAFETY: plain helper call on our own context.
        if unsafe { bpf_clone_redirect(self.skb.skb, ifindex, 0) } != 0 {
            return Err(Stat::DropNoRoute);
        }
        // The original is consumed, not dropped: it has left, as its clone.
        Ok(TC_ACT_STOLEN as u32)
    }

    #[inline(always)]
    fn redirect_neigh(&self, ifindex: u32) -> Result<u32, Stat> {
        // SAFETY: plain helper call; a null parameter block lets the kernel's FIB pick the next
        // hop.
        Ok(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as u32)
    }

    #[inline(always)]
    fn tx(&self) -> u32 {
        // Out of the interface it came in on (egress): to the VM.
        self.redirect(self.ifindex())
    }

    /// A request a guest sent from a UDP socket with checksum offload (a unicast renewal)
    /// arrives `CHECKSUM_PARTIAL`: the skb says that the UDP checksum field holds only the
    /// pseudo header's sum, for whoever finishes it (`skb_checksum_help` on a port that does not
    /// offload checksums, or the guest, told by the virtio header). A complete checksum there
    /// would be summed again: the reply arrives with a wrong one and the client drops it. The
    /// skb's state cannot be read or cleared from here, but `bpf_l4_csum_replace` with
    /// `BPF_F_PSEUDO_HDR` acts on it: it adds a difference to the field when the skb is
    /// `CHECKSUM_PARTIAL` (`inet_proto_csum_replace_by_diff`: the field is a sum), and
    /// subtracts it otherwise (the field is a complemented sum). Writing
    /// `(pseudo + csum) / 2` and applying `(pseudo - csum) / 2` leaves `pseudo` in the first
    /// case and `csum` in the second, halving being a rotation in one's-complement
    /// arithmetic (2^16 = 1 modulo 0xffff). The skb keeps its `csum_start` (the request's UDP
    /// header, where the reply's is when the request had no IP options) and `csum_offset`.
    #[inline(always)]
    fn reply_udp_csum(&self, off: u32, csum: u16, pseudo: u16) -> Result<(), Stat> {
        let add = |a: u16, b: u16| {
            let s = a as u32 + b as u32;
            ((s & 0xffff) + (s >> 16)) as u16
        };
        // Neither is zero: `pseudo` sums the protocol, and a sum of words not all zero never
        // folds to 0x0000, which the helper would take for "no checksum" and leave.
        let field = add(pseudo, csum).rotate_right(1);
        let diff = add(pseudo, !csum).rotate_right(1);
        let flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64;
        // SAFETY: `field` is two readable bytes; helpers on our own context, which check the
        // packet range themselves; packet pointers are re-derived afterwards.
        unsafe {
            if self.store_bytes(off, (&raw const field).cast(), 2) != 0
                || bpf_l4_csum_replace(self.skb.skb, off, 0, diff as u64, flags) != 0
            {
                return Err(Stat::DropMalformed);
            }
        }
        Ok(())
    }
}
