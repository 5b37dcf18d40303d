//! The DHCPv4 responder (RFC 2131): turns a client's request into the reply in place.
//!
//! Everything the reply needs from the request is read first; the frame is then resized and
//! rewritten from its first byte, so nothing of the request (IP options, odd sizes, garbage in
//! `sname`/`file`) leaks into the reply.

use agent_common::{
    Binding, BindingKey, DhcpEvent, OPTS_MAX, RateKind, Stat,
    dhcp::{
        BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, CLIENT_PORT, DHCPACK, DHCPDECLINE, DHCPDISCOVER,
        DHCPINFORM, DHCPNAK, DHCPOFFER, DHCPRELEASE, DHCPREQUEST, FIXED_OPTS_LEN, HTYPE_ETHERNET,
        MAGIC_COOKIE, OPT_CLIENT_ID, OPT_END, OPT_IPV6_ONLY_PREFERRED, OPT_MESSAGE_TYPE,
        OPT_OVERLOAD, OPT_PAD, OPT_PARAM_REQUEST, OPT_RAPID_COMMIT, OPT_REQUESTED_IP,
        OPT_SERVER_ID, OPTIONS_OFFSET, SERVER_PORT, V6ONLY_OPT_LEN, V6ONLY_OPT_OFF,
    },
};
use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::{
        bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add_mac, add16, add32, be16, fold},
    maps::{BINDINGS, CID_BUF, CID_TLV_MAX, EVENTS, OPTIONS_SCRATCH, OPTIONS_WINDOW},
    parse::{
        ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, MAX_OFFSET, UDP_HLEN, load, mac_eq, ptr_at,
    },
    ratelimit,
    stats::count,
};

/// Option TLVs (pads included) scanned before a request is declared malformed.
const MAX_OPTION_TLVS: usize = 64;

/// Offsets of the reply, which always has a 20-byte IPv4 header.
const IP_OFF: usize = ETH_HLEN;
const UDP_OFF: usize = IP_OFF + IPV4_HLEN;
const BOOTP_OFF: usize = UDP_OFF + UDP_HLEN;
const CHADDR_OFF: usize = BOOTP_OFF + 28;
const SNAME_OFF: usize = BOOTP_OFF + 44;
const COOKIE_OFF: usize = BOOTP_OFF + 236;
const OPTS_OFF: usize = BOOTP_OFF + OPTIONS_OFFSET;
const BLOB_OFF: usize = OPTS_OFF + FIXED_OPTS_LEN;
/// A NAK carries no blob: END and zeros up to the 300-byte BOOTP minimum (RFC 1542 §2.1).
const NAK_BLOB_LEN: usize = 48;

/// The fixed part of a BOOTP message up to the client hardware address.
#[repr(C)]
#[derive(Clone, Copy)]
struct BootpHdr {
    op: u8,
    htype: u8,
    hlen: u8,
    hops: u8,
    xid: u32,
    secs: u16,
    flags: u16,
    ciaddr: u32,
    yiaddr: u32,
    siaddr: u32,
    giaddr: u32,
    chaddr: [u8; 6],
    chaddr_rest: [u8; 2],
}

/// The options of a request the responder acts on. An absent address is 0.0.0.0, which no
/// client may legitimately request or name as a server.
#[derive(Clone, Copy, Default)]
struct RequestOpts {
    msg_type: u8,
    rapid_commit: bool,
    overload: bool,
    requested: u32,
    server_id: u32,
    /// The client identifier (61) as a TLV in the request: packet offset, and length with code
    /// and length bytes (0: none).
    cid_off: u32,
    cid_tlv: u32,
}

/// The reply to build.
#[derive(Clone, Copy)]
struct Reply {
    msg_type: u8,
    /// ACK to a DISCOVER with rapid commit: carries option 80.
    rapid_commit: bool,
    /// ACK to an INFORM: no address, no lease-time options.
    inform: bool,
}

const OFFER: Reply = Reply {
    msg_type: DHCPOFFER,
    rapid_commit: false,
    inform: false,
};
const ACK: Reply = Reply {
    msg_type: DHCPACK,
    rapid_commit: false,
    inform: false,
};
const NAK: Reply = Reply {
    msg_type: DHCPNAK,
    rapid_commit: false,
    inform: false,
};

/// Handles a UDP datagram to the server port. `bootp` is the offset of the BOOTP message.
#[inline(always)]
pub fn handle_request(
    ctx: &XdpContext,
    bootp: usize,
    src_mac: [u8; 6],
    ip_daddr: u32,
) -> Result<u32, Stat> {
    // Before any parsing: a flooding VM gets its port's share of the responder, no more.
    if !ratelimit::allow(ctx.ingress_ifindex() as u32, RateKind::Dhcp) {
        return Err(Stat::DropDhcpRateLimited);
    }
    if bootp > MAX_OFFSET {
        return Err(Stat::DropDhcpMalformed);
    }
    let hdr: BootpHdr = load(ctx, bootp).ok_or(Stat::DropDhcpMalformed)?;
    let cookie: [u8; 4] = load(ctx, bootp + 236).ok_or(Stat::DropDhcpMalformed)?;
    if hdr.op != BOOTREQUEST || hdr.htype != HTYPE_ETHERNET || hdr.hlen != 6 {
        return Err(Stat::DropDhcpMalformed);
    }
    if cookie != MAGIC_COOKIE {
        // Plain BOOTP: not served.
        return Err(Stat::DropDhcpUnknownType);
    }
    // A VM relaying for someone else: its clients are not ours to address.
    if hdr.giaddr != 0 {
        return Err(Stat::DropDhcpRelayed);
    }
    // The binding is keyed by the frame's source; a request for another chaddr is not this NIC's.
    if !mac_eq(&hdr.chaddr, &src_mac) {
        return Err(Stat::DropDhcpChaddrMismatch);
    }
    let opts = parse_options(ctx, bootp + OPTIONS_OFFSET)?;
    if opts.overload {
        // RFC 2131 §4.1 allows options in `sname`/`file`; the ones we act on never need it.
        count(Stat::DhcpOverloadIgnored);
    }

    let key = BindingKey::new(ctx.ingress_ifindex() as u32, src_mac);
    let binding = BINDINGS.get_ptr(&key).ok_or(Stat::DhcpMiss)?;
    // SAFETY: a map value pointer stays valid for the whole program run.
    let b = unsafe { &*binding };
    note_v6only_asked(b);

    let reply = match opts.msg_type {
        DHCPDISCOVER => {
            count(Stat::DhcpDiscover);
            if opts.rapid_commit {
                // RFC 4039 §4: a server that commits answers a DISCOVER with an ACK.
                count(Stat::DhcpRapidCommit);
                Reply {
                    msg_type: DHCPACK,
                    rapid_commit: true,
                    inform: false,
                }
            } else {
                OFFER
            }
        }
        DHCPREQUEST => request_reply(&opts, &hdr, ip_daddr, b)?,
        DHCPINFORM => {
            count(Stat::DhcpInform);
            // RFC 2131 §4.3.5: the client already has an address, in `ciaddr`; it must be its own.
            if hdr.ciaddr != b.ip {
                return Err(Stat::DropDhcpBadRequest);
            }
            Reply {
                msg_type: DHCPACK,
                rapid_commit: false,
                inform: true,
            }
        }
        DHCPRELEASE => {
            count(Stat::DhcpRelease);
            report(DHCPRELEASE, &key, hdr.ciaddr);
            return Ok(xdp_action::XDP_DROP);
        }
        DHCPDECLINE => {
            count(Stat::DhcpDecline);
            report(DHCPDECLINE, &key, opts.requested);
            return Ok(xdp_action::XDP_DROP);
        }
        _ => return Err(Stat::DropDhcpUnknownType),
    };

    write_reply(ctx, &hdr, &opts, &src_mac, b, binding, reply)?;
    count(match reply.msg_type {
        DHCPOFFER => Stat::DhcpOffer,
        DHCPNAK => Stat::DhcpNak,
        _ => Stat::DhcpAck,
    });
    Ok(xdp_action::XDP_TX)
}

/// RFC 2131 §4.3.2: which state the client is in decides what a REQUEST must match.
#[inline(always)]
fn request_reply(
    opts: &RequestOpts,
    hdr: &BootpHdr,
    ip_daddr: u32,
    b: &Binding,
) -> Result<Reply, Stat> {
    let ack_or_nak = |ok: bool| if ok { ACK } else { NAK };
    if opts.server_id != 0 {
        // SELECTING: answering our OFFER, or another server's.
        count(Stat::DhcpRequestSelecting);
        if opts.server_id != b.server_id {
            return Err(Stat::DhcpOtherServer);
        }
        if opts.requested == 0 {
            return Err(Stat::DropDhcpBadRequest);
        }
        Ok(ack_or_nak(opts.requested == b.ip))
    } else if opts.requested != 0 {
        // INIT-REBOOT: a wrong address (for example from another network) gets a NAK.
        count(Stat::DhcpRequestInitReboot);
        Ok(ack_or_nak(opts.requested == b.ip))
    } else if hdr.ciaddr != 0 {
        // RENEWING is unicast to the server identifier, REBINDING is broadcast.
        count(if ip_daddr == b.server_id {
            Stat::DhcpRequestRenewing
        } else {
            Stat::DhcpRequestRebinding
        });
        Ok(ack_or_nak(hdr.ciaddr == b.ip))
    } else {
        Err(Stat::DropDhcpBadRequest)
    }
}

/// Scans the options field with a bounded TLV loop; options may come in any order.
///
/// The field is first copied into a per-CPU scratch buffer with one helper call and parsed there
/// with masked indices: variable offsets into packet memory are where LLVM's optimizations and
/// the verifier's range tracking disagree, a map value has no such trouble. The scan's own
/// state lives in the same map value (see `OptionsScan`).
#[inline(always)]
fn parse_options(ctx: &XdpContext, start: usize) -> Result<RequestOpts, Stat> {
    let total = ctx.data_end() - ctx.data();
    let mut n = total.wrapping_sub(start);
    if n == 0 || n > total {
        // No options at all: not even END.
        return Err(Stat::DropDhcpBadOptions);
    }
    if n > OPTIONS_WINDOW {
        n = OPTIONS_WINDOW;
    }
    // Checked again after a barrier, so the checks the verifier needs are not folded away.
    let n = core::hint::black_box(n);
    if n == 0 || n > OPTIONS_WINDOW {
        return Err(Stat::DropDhcpBadOptions);
    }
    let scan = OPTIONS_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Stat::DropDhcpBadOptions)?;
    // SAFETY: `scan` is this CPU's map value; `buf` is OPTIONS_WINDOW bytes, 1 <= n <= that.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            start as u32,
            (*scan).buf.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if rc != 0 {
        return Err(Stat::DropDhcpBadOptions);
    }
    // `scan` is this CPU's map value: alive for the whole program run, and no one else writes it
    // while the program runs. Every pointer to one of its fields is valid for reads and writes.
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let get = |f: *const u32| unsafe { f.read_volatile() };
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let set = |f: *mut u32, v: u32| unsafe { f.write_volatile(v) };
    // SAFETY: the address of a field of `*scan`; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // The mask must survive optimization: LLVM would drop it as redundant after the range
    // checks below, but the verifier checks the access, not LLVM's reasoning.
    // SAFETY: the index is masked below `OPTIONS_WINDOW`, the length of `buf`.
    let at = |i: u32| unsafe { *buf.add(core::hint::black_box(i as usize) & (OPTIONS_WINDOW - 1)) };
    let n = n as u32;
    // SAFETY: fields of `*scan`.
    unsafe {
        set(&raw mut (*scan).off, 0);
        set(&raw mut (*scan).msg_type, 0);
        set(&raw mut (*scan).requested, 0);
        set(&raw mut (*scan).server_id, 0);
        set(&raw mut (*scan).flags, 0);
        set(&raw mut (*scan).cid_off, 0);
        set(&raw mut (*scan).cid_tlv, 0);
        set(&raw mut (*scan).prl_len, 0);
    }
    for _ in 0..MAX_OPTION_TLVS {
        // SAFETY: a field of `*scan`.
        let off = unsafe { get(&raw const (*scan).off) };
        if off >= n {
            // Ran off the end without END.
            return Err(Stat::DropDhcpBadOptions);
        }
        let code = at(off);
        if code == OPT_END {
            // SAFETY: fields of `*scan`.
            let o = unsafe {
                RequestOpts {
                    msg_type: get(&raw const (*scan).msg_type) as u8,
                    rapid_commit: get(&raw const (*scan).flags) & FLAG_RAPID_COMMIT != 0,
                    overload: get(&raw const (*scan).flags) & FLAG_OVERLOAD != 0,
                    requested: get(&raw const (*scan).requested),
                    server_id: get(&raw const (*scan).server_id),
                    cid_off: get(&raw const (*scan).cid_off),
                    cid_tlv: get(&raw const (*scan).cid_tlv),
                }
            };
            if o.msg_type == 0 {
                // BOOTP, or DHCP without a message type: not ours to answer.
                return Err(Stat::DropDhcpUnknownType);
            }
            return Ok(o);
        }
        if code == OPT_PAD {
            // SAFETY: a field of `*scan`.
            unsafe { set(&raw mut (*scan).off, off + 1) };
            continue;
        }
        if off + 1 >= n {
            return Err(Stat::DropDhcpBadOptions);
        }
        let len = at(off + 1) as u32;
        let val = off + 2;
        if val + len > n {
            // The value runs past the end of the packet.
            return Err(Stat::DropDhcpBadOptions);
        }
        match code {
            OPT_MESSAGE_TYPE => {
                if len != 1 {
                    return Err(Stat::DropDhcpBadOptions);
                }
                // SAFETY: a field of `*scan`.
                unsafe { set(&raw mut (*scan).msg_type, at(val) as u32) };
            }
            OPT_REQUESTED_IP | OPT_SERVER_ID => {
                if len != 4 {
                    return Err(Stat::DropDhcpBadOptions);
                }
                let addr = u32::from_ne_bytes([at(val), at(val + 1), at(val + 2), at(val + 3)]);
                // SAFETY: fields of `*scan`.
                unsafe {
                    if code == OPT_REQUESTED_IP {
                        set(&raw mut (*scan).requested, addr);
                    } else {
                        set(&raw mut (*scan).server_id, addr);
                    }
                }
            }
            // SAFETY: a field of `*scan`.
            OPT_RAPID_COMMIT => unsafe {
                set(
                    &raw mut (*scan).flags,
                    get(&raw const (*scan).flags) | FLAG_RAPID_COMMIT,
                )
            },
            // SAFETY: a field of `*scan`.
            OPT_OVERLOAD => unsafe {
                set(
                    &raw mut (*scan).flags,
                    get(&raw const (*scan).flags) | FLAG_OVERLOAD,
                )
            },
            // Echoed in the reply (RFC 6842); the binding stays keyed by MAC.
            // SAFETY: fields of `*scan`.
            OPT_CLIENT_ID => unsafe {
                set(&raw mut (*scan).cid_off, start as u32 + off);
                set(&raw mut (*scan).cid_tlv, len + 2);
            },
            // Every configured option is sent, but 108 only when asked for (`asked_for`).
            // SAFETY: fields of `*scan`.
            OPT_PARAM_REQUEST => unsafe {
                set(&raw mut (*scan).prl_off, val);
                set(&raw mut (*scan).prl_len, len);
            },
            _ => {}
        }
        // SAFETY: a field of `*scan`.
        unsafe { set(&raw mut (*scan).off, val + len) };
    }
    Err(Stat::DropDhcpBadOptions)
}

const FLAG_RAPID_COMMIT: u32 = 1;
const FLAG_OVERLOAD: u32 = 2;
/// The parameter request list names option 108 (set by `note_v6only_asked`).
const FLAG_V6ONLY_ASKED: u32 = 4;

/// Whether `b` carries option 108 where the agent renders it (`V6ONLY_OPT_OFF`).
#[inline(always)]
fn has_v6only(b: &Binding) -> bool {
    b.opts[V6ONLY_OPT_OFF] == OPT_IPV6_ONLY_PREFERRED && b.opts[V6ONLY_OPT_OFF + 1] == 4
}

/// Notes in the scan's flags whether the client asked for option 108, when `b` has it: the
/// list is read once per request, before the reply is chosen. The flag lives in map memory,
/// which the verifier does not track, so the paths after it are walked once, not once per
/// answer.
#[inline(always)]
fn note_v6only_asked(b: &Binding) {
    if !has_v6only(b) || !asked_for(OPT_IPV6_ONLY_PREFERRED) {
        return;
    }
    if let Some(scan) = OPTIONS_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a field of this CPU's map value, alive for the program run.
        unsafe {
            let flags = &raw mut (*scan).flags;
            flags.write_volatile(flags.read_volatile() | FLAG_V6ONLY_ASKED);
        }
    }
}

/// RFC 8925 §3.3: whether option 108 of `b` must be blanked, the client not having asked.
#[inline(always)]
fn v6only_blanked(b: &Binding) -> bool {
    if !has_v6only(b) {
        return false;
    }
    let Some(scan) = OPTIONS_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a field of this CPU's map value, alive for the program run.
    unsafe { (&raw const (*scan).flags).read_volatile() & FLAG_V6ONLY_ASKED == 0 }
}

/// Whether the request's parameter request list (55, RFC 2132 §9.8) names `code`. Reads the
/// copy of the options `parse_options` left in this CPU's scratch, one byte per iteration of a
/// loop bounded by the longest list an option holds. The loop has no branch but its bound:
/// matches are counted with arithmetic, so the verifier walks it once, not once per exit.
#[inline(always)]
fn asked_for(code: u8) -> bool {
    let Some(scan) = OPTIONS_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let mut found = 0u32;
    // SAFETY: `scan` is this CPU's map value, alive for the program run, left by
    // `parse_options`; the fields are read volatile for the verifier (see there), and the
    // index into `buf` is masked below its length.
    unsafe {
        let off = (&raw const (*scan).prl_off).read_volatile();
        let len = core::hint::black_box((&raw const (*scan).prl_len).read_volatile() & 0xff);
        let buf = (&raw const (*scan).buf).cast::<u8>();
        for i in 0..255u32 {
            let at = core::hint::black_box(off.wrapping_add(i) as usize) & (OPTIONS_WINDOW - 1);
            // Barriers: LLVM would see through the arithmetic to a comparison, and a comparison
            // is a branch in BPF.
            let diff = core::hint::black_box((*buf.add(at) ^ code) as u32);
            // 1 when the byte is `code` (0 - 1 wraps to all ones), else 0.
            let hit = (diff.wrapping_sub(1) >> 8) & 1;
            // 1 while `i` is inside the list (both below 256).
            let inside = (core::hint::black_box(i).wrapping_sub(len) >> 31) & 1;
            found |= hit & inside;
        }
    }
    found != 0
}

/// Tells the agent about a RELEASE or DECLINE; no reply is sent for either.
#[inline(always)]
fn report(kind: u8, key: &BindingKey, addr: u32) {
    // Each event costs the agent a wakeup and a log line.
    if !ratelimit::allow(key.ifindex, RateKind::Event) {
        count(Stat::DhcpEventsRateLimited);
        return;
    }
    let ev = DhcpEvent {
        kind: kind as u32,
        ifindex: key.ifindex,
        mac: key.mac,
        _pad: [0; 2],
        addr,
    };
    if EVENTS.output::<DhcpEvent>(&ev, 0).is_err() {
        count(Stat::DhcpEventsLost);
    }
}

/// Makes the frame exactly `len` bytes: shrinks or grows the tail, or grows into the headroom
/// when the driver left no tailroom (a tap's native XDP buffer is sized to the frame).
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Result<(), Stat> {
    let delta = len as i32 - (ctx.data_end() - ctx.data()) as i32;
    if delta == 0 {
        return Ok(());
    }
    // SAFETY: helpers on our own context; packet pointers are re-derived afterwards.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta) == 0 {
            return Ok(());
        }
        if delta > 0 && bpf_xdp_adjust_head(ctx.as_ptr().cast(), -delta) == 0 {
            return Ok(());
        }
        // Neither alone (a reply near `OPTS_MAX` grows a short request by about 250 bytes):
        // part into the headroom, the rest into the tailroom. A veth hands XDP the sender's
        // own buffer when it has `XDP_PACKET_HEADROOM` (256 bytes) in front, of which the
        // kernel keeps its `xdp_frame`, and whatever tailroom the allocation rounded up to.
        if delta > HEAD_PART
            && bpf_xdp_adjust_head(ctx.as_ptr().cast(), -HEAD_PART) == 0
            && bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta - HEAD_PART) == 0
        {
            return Ok(());
        }
    }
    Err(Stat::DropDhcpNoRoom)
}

/// What [`resize`] takes from the headroom when neither end alone has room: the 216
/// bytes `XDP_PACKET_HEADROOM` leaves once the kernel's `xdp_frame` (40 bytes) is kept.
const HEAD_PART: i32 = 216;

/// Writes `v` at `p + off`, unaligned (packet memory has no alignment guarantee).
///
/// # Safety
/// `p + off .. p + off + size_of::<T>()` must be writable: inside the packet, checked against
/// its end.
#[inline(always)]
unsafe fn put<T>(p: *mut u8, off: usize, v: T) {
    // SAFETY: per the caller.
    unsafe { p.add(off).cast::<T>().write_unaligned(v) }
}

/// Rewrites the frame into the reply and fills in both checksums.
#[inline(always)]
fn write_reply(
    ctx: &XdpContext,
    req: &BootpHdr,
    opts: &RequestOpts,
    client_mac: &[u8; 6],
    b: &Binding,
    binding: *const Binding,
    reply: Reply,
) -> Result<(), Stat> {
    let nak = reply.msg_type == DHCPNAK;
    let blob_len = if nak {
        NAK_BLOB_LEN
    } else {
        b.opts_len as usize
    };
    #[expect(
        clippy::manual_range_contains,
        reason = "`contains` compiles to other instructions: the verified program is kept as it is"
    )]
    if blob_len < 2 || blob_len > OPTS_MAX || blob_len % 2 != 0 {
        // The agent never writes such a binding: say so loudly, it means a corrupted map.
        aya_log_ebpf::error!(
            ctx,
            "binding for {:mac} has an options length of {} bytes; not answering",
            *client_mac,
            blob_len
        );
        return Err(Stat::DropDhcpMalformed);
    }
    let lease_len = b.lease_opts_len as usize;
    if reply.inform && lease_len > INFORM_BLANK.len() {
        return Err(Stat::DropDhcpMalformed);
    }
    let server_id = b.server_id;
    let yiaddr = if nak || reply.inform { 0 } else { b.ip };
    // RFC 2131 table 3: `ciaddr` is echoed in an ACK, zero in an OFFER and a NAK.
    let ciaddr = if nak || reply.msg_type == DHCPOFFER {
        0
    } else {
        req.ciaddr
    };
    // RFC 2131 §4.1, with `giaddr` zero: NAKs are broadcast; a client with an address gets it
    // unicast at `ciaddr`; a client that asked for broadcast gets it; everyone else is unicast
    // at the offered address and its hardware address.
    let (dst_mac, dst_ip) = if nak {
        ([0xff; 6], u32::MAX)
    } else if req.ciaddr != 0 {
        (*client_mac, req.ciaddr)
    } else if req.flags & be16(BROADCAST_FLAG) != 0 {
        ([0xff; 6], u32::MAX)
    } else {
        (*client_mac, b.ip)
    };
    let rapid = if reply.rapid_commit {
        OPT_RAPID_COMMIT
    } else {
        OPT_PAD
    };
    let opts_csum = if nak {
        u16::from_ne_bytes([OPT_END, 0]) as u32
    } else if reply.inform {
        b.inform_opts_csum
    } else {
        b.opts_csum
    };
    // RFC 8925 §3.3: option 108 goes only to a client that asked for it. The agent renders it
    // right after the lease times, a whole option on even offsets: for any other client its
    // bytes become pads and its three words leave the sum.
    let v6only_words = if !nak && v6only_blanked(b) {
        let o = &b.opts;
        let at = V6ONLY_OPT_OFF;
        // One's-complement subtraction: adding each word's complement.
        (!u16::from_ne_bytes([o[at], o[at + 1]])) as u64
            + (!u16::from_ne_bytes([o[at + 2], o[at + 3]])) as u64
            + (!u16::from_ne_bytes([o[at + 4], o[at + 5]])) as u64
    } else {
        0
    };
    let router_mac = ROUTER_MAC.load();
    let xid = req.xid;
    let flags = req.flags;

    // RFC 6842: the client identifier goes back unaltered, right after the fixed options. It is
    // padded to an even length so the blob behind it keeps the word alignment its precomputed
    // sum assumes. A reply it would push past 576 bytes goes without it (and is counted).
    let mut cid_tlv = opts.cid_tlv as usize & 0x1ff;
    if cid_tlv > CID_TLV_MAX {
        cid_tlv = 0;
    }
    let mut cid_room = (cid_tlv + 1) & !1;
    if cid_room + blob_len > OPTS_MAX {
        count(Stat::DhcpClientIdNotEchoed);
        cid_tlv = 0;
        cid_room = 0;
    }
    // Copied before the request is overwritten.
    let cid = if cid_tlv > 0 {
        Some(copy_tlv(ctx, opts.cid_off, cid_tlv)?)
    } else {
        None
    };
    let blob_off = BLOB_OFF + cid_room;

    let frame_len = blob_off + blob_len;
    resize(ctx, frame_len)?;
    let p = ptr_at::<[u8; BLOB_OFF]>(ctx, 0).ok_or(Stat::DropDhcpNoRoom)? as *mut u8;

    let udp_len = (frame_len - UDP_OFF) as u16;
    let ip_len = (frame_len - IP_OFF) as u16;
    let sid = server_id.to_ne_bytes();

    // UDP checksum: pseudo header, UDP header, the BOOTP fields that are not zero, the fixed
    // options, and the blob's precomputed sum.
    let mut s = add32(0, server_id);
    s = add32(s, dst_ip);
    s = add16(s, be16(IPPROTO_UDP as u16));
    s = add16(s, be16(udp_len));
    s = add16(s, be16(SERVER_PORT));
    s = add16(s, be16(CLIENT_PORT));
    s = add16(s, be16(udp_len));
    s = add_bytes(s, BOOTREPLY, HTYPE_ETHERNET);
    s = add_bytes(s, 6, 0);
    s = add32(s, xid);
    s = add16(s, flags);
    s = add32(s, ciaddr);
    s = add32(s, yiaddr);
    s = add_mac(s, client_mac);
    s = add_bytes(s, MAGIC_COOKIE[0], MAGIC_COOKIE[1]);
    s = add_bytes(s, MAGIC_COOKIE[2], MAGIC_COOKIE[3]);
    s = add_bytes(s, OPT_MESSAGE_TYPE, 1);
    s = add_bytes(s, reply.msg_type, OPT_SERVER_ID);
    s = add_bytes(s, 4, sid[0]);
    s = add_bytes(s, sid[1], sid[2]);
    s = add_bytes(s, sid[3], rapid);
    s += opts_csum as u64 + v6only_words;
    if let Some((_, sum)) = cid {
        s += sum;
    }
    let mut udp_check = fold(s);
    if udp_check == 0 {
        // RFC 768: a computed zero is sent as all ones; zero means "no checksum".
        udp_check = 0xffff;
    }

    let mut ip_sum = add_bytes(0, 0x45, 0);
    ip_sum = add16(ip_sum, be16(ip_len));
    ip_sum = add_bytes(ip_sum, 64, IPPROTO_UDP);
    ip_sum = add32(ip_sum, server_id);
    ip_sum = add32(ip_sum, dst_ip);

    // SAFETY: `ptr_at` checked that the first `BLOB_OFF` bytes are inside the packet.
    unsafe {
        // Ethernet
        put(p, 0, dst_mac);
        put(p, 6, router_mac);
        put(p, 12, be16(ETH_P_IP));
        // IPv4
        put(p, IP_OFF, [0x45u8, 0]);
        put(p, IP_OFF + 2, be16(ip_len));
        put(p, IP_OFF + 4, 0u32);
        put(p, IP_OFF + 8, [64u8, IPPROTO_UDP]);
        put(p, IP_OFF + 10, fold(ip_sum));
        put(p, IP_OFF + 12, server_id);
        put(p, IP_OFF + 16, dst_ip);
        // UDP
        put(p, UDP_OFF, be16(SERVER_PORT));
        put(p, UDP_OFF + 2, be16(CLIENT_PORT));
        put(p, UDP_OFF + 4, be16(udp_len));
        put(p, UDP_OFF + 6, udp_check);
        // BOOTP
        put(p, BOOTP_OFF, [BOOTREPLY, HTYPE_ETHERNET, 6, 0]);
        put(p, BOOTP_OFF + 4, xid);
        put(p, BOOTP_OFF + 8, 0u16);
        put(p, BOOTP_OFF + 10, flags);
        put(p, BOOTP_OFF + 12, ciaddr);
        put(p, BOOTP_OFF + 16, yiaddr);
        put(p, BOOTP_OFF + 20, 0u64); // siaddr, giaddr
        put(p, CHADDR_OFF, *client_mac);
        put(p, CHADDR_OFF + 6, 0u16);
        put(p, CHADDR_OFF + 8, 0u64);
        // sname and file. Volatile stores: LLVM would otherwise turn the loop into a call to
        // `memset`, a byte loop the verifier walks once per path into it.
        let mut i = 0;
        while i < 192 {
            p.add(SNAME_OFF + i).cast::<u64>().write_volatile(0);
            i += 8;
        }
        put(p, COOKIE_OFF, MAGIC_COOKIE);
        // Fixed options
        put(
            p,
            OPTS_OFF,
            [OPT_MESSAGE_TYPE, 1, reply.msg_type, OPT_SERVER_ID],
        );
        put(p, OPTS_OFF + 4, [4u8, sid[0], sid[1], sid[2]]);
        put(p, OPTS_OFF + 8, [sid[3], rapid, OPT_PAD, OPT_PAD]);
    }

    if let Some((src, _)) = cid {
        // SAFETY: the copy holds `CID_BUF` bytes and `cid_room` is at most `CID_TLV_MAX + 1`,
        // its bytes past the option zero (pads); the helper checks the packet range itself.
        if unsafe { store(ctx, BLOB_OFF, src, cid_room) } != 0 {
            return Err(Stat::DropDhcpNoRoom);
        }
    }
    let (src, len) = if nak {
        (NAK_BLOB.as_ptr(), NAK_BLOB_LEN)
    } else {
        // SAFETY: `binding` is a map value of `size_of::<Binding>()` bytes and `blob_len` was
        // bounded by `OPTS_MAX` above.
        (unsafe { (*binding).opts.as_ptr() }, blob_len)
    };
    // SAFETY: `src` holds `len` bytes (above); the helper checks the packet range itself.
    if unsafe { store(ctx, blob_off, src, len) } != 0 {
        return Err(Stat::DropDhcpNoRoom);
    }
    if nak {
        return Ok(());
    }
    if reply.inform && lease_len > 0 {
        // RFC 2131 §4.3.5: no lease time in an ACK to an INFORM. Pads keep the layout.
        // SAFETY: `lease_len` is bounded by the size of `INFORM_BLANK`.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                ctx.as_ptr().cast(),
                blob_off as u32,
                INFORM_BLANK.as_ptr() as *mut _,
                lease_len as u32,
            )
        };
        if ret != 0 {
            return Err(Stat::DropDhcpNoRoom);
        }
    }
    // Asked again rather than kept: the verifier need not walk the reply twice.
    if v6only_blanked(b) {
        // SAFETY: `INFORM_BLANK` holds more than `V6ONLY_OPT_LEN` pads; the helper checks the
        // packet range.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                ctx.as_ptr().cast(),
                (blob_off + V6ONLY_OPT_OFF) as u32,
                INFORM_BLANK.as_ptr() as *mut _,
                V6ONLY_OPT_LEN as u32,
            )
        };
        if ret != 0 {
            return Err(Stat::DropDhcpNoRoom);
        }
    }
    Ok(())
}

/// Pads that overwrite the lease-time options (three 6-byte options) in an INFORM reply, and
/// option 108 in a reply to a client that did not ask for it.
static INFORM_BLANK: [u8; 24] = [OPT_PAD; 24];

/// A NAK's options after the fixed ones: END, then zeros up to the BOOTP minimum.
static NAK_BLOB: [u8; NAK_BLOB_LEN] = {
    let mut b = [0u8; NAK_BLOB_LEN];
    b[0] = OPT_END;
    b
};

/// Copies `len` bytes from `src` into the packet at `off`; none when `len` is 0.
///
/// # Safety
/// `src` must be readable for `len` bytes.
#[inline(always)]
unsafe fn store(ctx: &XdpContext, off: usize, src: *const u8, len: usize) -> i64 {
    if len == 0 {
        return 0;
    }
    // SAFETY: per the caller; the helper checks the packet range.
    unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), off as u32, src as *mut _, len as u32) }
}

/// Copies the option TLV of `tlv` bytes (1..=CID_TLV_MAX) at packet offset `off` into this
/// CPU's scratch, zero-padded to whole words. Returns the copy and the sum of its words.
#[inline(always)]
fn copy_tlv(ctx: &XdpContext, off: u32, tlv: usize) -> Result<(*const u8, u64), Stat> {
    let scan = OPTIONS_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Stat::DropDhcpMalformed)?;
    // Bounds checked after barriers, for the verifier (see `parse_options`).
    let n = core::hint::black_box(tlv);
    if n == 0 || n > CID_TLV_MAX {
        return Err(Stat::DropDhcpMalformed);
    }
    let words = (n + 3) & !3;
    let last = core::hint::black_box(words - 4);
    if last > CID_BUF - 4 {
        return Err(Stat::DropDhcpMalformed);
    }
    // SAFETY: `scan` is this CPU's map value, alive for the program run. The zeroed word is
    // inside `cid` (last <= CID_BUF - 4), the load fills its first `n` bytes, and the sum reads
    // `words` <= CID_BUF of them.
    unsafe {
        let dst = (&raw mut (*scan).cid).cast::<u8>();
        dst.add(last).cast::<u32>().write_unaligned(0);
        if bpf_xdp_load_bytes(ctx.as_ptr().cast(), off, dst.cast(), n as u32) != 0 {
            return Err(Stat::DropDhcpMalformed);
        }
        let sum = bpf_csum_diff(core::ptr::null_mut(), 0, dst.cast(), words as u32, 0);
        if sum < 0 {
            return Err(Stat::DropDhcpMalformed);
        }
        Ok((dst, sum as u64))
    }
}
