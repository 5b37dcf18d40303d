//! The DHCPv4 responder (RFC 2131): turns a client's request into the reply in place.
//!
//! Everything the reply needs from the request is read first; the frame is then resized and
//! rewritten from its first byte, so nothing of the request (IP options, odd sizes, garbage in
//! `sname`/`file`) leaks into the reply.
//!
//! Written once over [`Ctx`]: `holdfast_vm` runs it in XDP (xdp mode), `holdfast_vm_tc` on the
//! skb (tc mode), after `Ctx::pull_up_to` made the request readable up to its options window.

use agent_common::{
    ArpKey, BOOT_OPTS_MAX, Binding, BindingKey, BootEntry, BootKey, BootVariant, DECLINE_HOLD_NS,
    DeclineHold, DhcpEvent, OPTS_MAX, RateKind, Stat,
    dhcp::{
        ARCH_EFI_ARM64, ARCH_EFI_BC, ARCH_EFI_X86_64, ARCH_X86_BIOS, BOOTREPLY, BOOTREQUEST,
        BROADCAST_FLAG, CLIENT_PORT, DHCPACK, DHCPDECLINE, DHCPDISCOVER, DHCPINFORM, DHCPNAK,
        DHCPOFFER, DHCPRELEASE, DHCPREQUEST, FILE_LEN, FIXED_OPTS_LEN, HTYPE_ETHERNET,
        IPXE_USER_CLASS, MAGIC_COOKIE, OPT_BOOTFILE, OPT_CLIENT_ARCH, OPT_CLIENT_ID, OPT_END,
        OPT_IPV6_ONLY_PREFERRED, OPT_IPXE_ENCAP, OPT_MESSAGE_TYPE, OPT_OVERLOAD, OPT_PAD,
        OPT_PARAM_REQUEST, OPT_RAPID_COMMIT, OPT_REQUESTED_IP, OPT_SERVER_ID, OPT_TFTP_SERVER,
        OPT_USER_CLASS, OPTIONS_OFFSET, SERVER_PORT, SNAME_LEN, V6ONLY_OPT_LEN, V6ONLY_OPT_OFF,
    },
};
use aya_ebpf::helpers::{bpf_csum_diff, bpf_ktime_get_ns};

use crate::{
    ROUTER_MAC,
    csum::{add_bytes, add_mac, add16, add32, be16, fold},
    ctx::Ctx,
    maps::{
        ARP, BINDINGS, BOOT, CID_BUF, CID_TLV_MAX, DECLINED, EVENTS, OPTIONS_SCRATCH,
        OPTIONS_WINDOW, OptionsScan,
    },
    parse::{
        ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, MAX_OFFSET, UDP_HLEN, load, mac_eq, ptr_at,
    },
    ratelimit,
    stats::count,
};

/// Option TLVs (pads not counted) scanned before a request is declared malformed.
const MAX_OPTION_TLVS: u32 = 64;
/// Pads a step of the scan skips before the option it reads: a longer run of them costs a
/// step per stride.
const PAD_STRIDE: u32 = 32;
// `zero_run` reads up to a stride past the window's last byte, into `cid` after it.
const _: () = assert!(PAD_STRIDE as usize <= CID_BUF);
/// Steps of the scan: every TLV, END, and runs of pads filling the whole window.
const SCAN_STEPS: usize = MAX_OPTION_TLVS as usize + OPTIONS_WINDOW / PAD_STRIDE as usize + 2;
/// Option 93 absent.
const NO_ARCH: u32 = u32::MAX;
/// Entries of a parameter request list (55) examined.
const PRL_MAX: u32 = 255;

/// What the responder reads of a request: Ethernet, the longest IPv4 header, UDP, the fixed
/// BOOTP fields and the options window.
const PULL_MAX: u32 = (ETH_HLEN + 60 + UDP_HLEN + OPTIONS_OFFSET + OPTIONS_WINDOW) as u32;

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
/// The IPv4 header's Don't Fragment flag, in the first byte of its flags and offset.
const IP_DF: u8 = 0x40;

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
    /// The client's architecture (93), or `NO_ARCH`.
    arch: u32,
    /// iPXE: user class "iPXE" (77), or its encapsulated options (175).
    ipxe: bool,
    /// The parameter request list (55): offset of its values in the scan's buffer, and count.
    prl_off: u32,
    prl_len: u32,
}

impl RequestOpts {
    /// The boot file variant the client asks for, if it is a network boot client.
    #[inline(always)]
    fn boot_variant(&self) -> Option<BootVariant> {
        if self.ipxe {
            return Some(BootVariant::Ipxe);
        }
        match self.arch {
            a if a == ARCH_X86_BIOS as u32 => Some(BootVariant::Bios),
            a if a == ARCH_EFI_BC as u32 || a == ARCH_EFI_X86_64 as u32 => {
                Some(BootVariant::UefiX64)
            }
            a if a == ARCH_EFI_ARM64 as u32 => Some(BootVariant::UefiArm64),
            _ => None,
        }
    }
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

/// Handles a UDP datagram to the server port. `bootp` is the offset of the BOOTP message and
/// `udp_len` the UDP length (header included): bytes past it are no part of the request.
#[inline(always)]
pub fn handle_request<C: Ctx>(
    ctx: &C,
    bootp: usize,
    udp_len: usize,
    src_mac: [u8; 6],
    ip_daddr: u32,
) -> Result<u32, Stat> {
    // Before any parsing: a flooding VM gets its port's share of the responder, no more.
    if !ratelimit::allow(ctx.ifindex(), RateKind::Dhcp) {
        return Err(Stat::DropDhcpRateLimited);
    }
    // On the skb only the headers are in the linear part: the rest of what the responder reads
    // is pulled in, after the limiter (a pull may copy), and never past the options window (a
    // VM may send a 64 KiB GSO frame to the server port).
    ctx.pull_up_to(PULL_MAX);
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
    // RFC 768: the datagram ends where its UDP length says; what the frame has after it
    // (Ethernet padding, garbage) is no part of the options.
    let end = (bootp - UDP_HLEN).wrapping_add(udp_len);
    let opts = parse_options(ctx, bootp + OPTIONS_OFFSET, end)?;
    // Read here, on the one path every request takes: the verifier walks the loop once.
    let boot_options_asked = asks_for_boot_options(&opts);
    if opts.overload {
        // RFC 2131 §4.1 allows options in `sname`/`file`; the ones we act on never need it.
        count(Stat::DhcpOverloadIgnored);
    }

    let key = BindingKey::new(ctx.ifindex(), src_mac);
    let binding = BINDINGS.get_ptr(&key).ok_or(Stat::DhcpMiss)?;
    // SAFETY: a map value pointer stays valid for the program run.
    let b = unsafe { &*binding };
    note_v6only_asked(b);
    // The server address the client addressed, when it is one of this network's: a unicast
    // request (RENEWING, INFORM) goes to the identifier its lease names, and a client gets
    // answers only from that address (n-dhcp4 connects its socket to it).
    let addressed = if ip_daddr != u32::MAX && is_server_address(b, ip_daddr) {
        ip_daddr
    } else {
        b.server_id
    };

    let (reply, sid) = match opts.msg_type {
        DHCPDISCOVER => {
            count(Stat::DhcpDiscover);
            let reply = if opts.rapid_commit {
                // RFC 4039 §4: a server that commits answers a DISCOVER with an ACK.
                count(Stat::DhcpRapidCommit);
                Reply {
                    msg_type: DHCPACK,
                    rapid_commit: true,
                    inform: false,
                }
            } else {
                OFFER
            };
            (reply, b.server_id)
        }
        DHCPREQUEST => request_reply(&opts, &hdr, ip_daddr, addressed, b)?,
        DHCPINFORM => {
            count(Stat::DhcpInform);
            // RFC 2131 §4.3.5: the client already has an address, in `ciaddr`; it must be its own.
            if hdr.ciaddr != b.ip {
                return Err(Stat::DropDhcpBadRequest);
            }
            let reply = Reply {
                msg_type: DHCPACK,
                rapid_commit: false,
                inform: true,
            };
            (reply, addressed)
        }
        DHCPRELEASE => {
            count(Stat::DhcpRelease);
            report(DHCPRELEASE as u32, &key, hdr.ciaddr);
            return Ok(C::DROP);
        }
        DHCPDECLINE => {
            count(Stat::DhcpDecline);
            // RFC 2131 §4.3.3: the client found the address in use. Only the binding's own
            // address is ours: it is held and the conflict reported.
            if opts.requested != b.ip {
                return Err(Stat::DhcpDeclineIgnored);
            }
            hold(&key, b.ip);
            report(DHCPDECLINE as u32, &key, opts.requested);
            return Ok(C::DROP);
        }
        _ => return Err(Stat::DropDhcpUnknownType),
    };
    if !reply.inform && declined(&key, b.ip) {
        // The client declined this address: nothing else to offer it until the hold ends.
        return Err(Stat::DhcpDeclineHeld);
    }
    let boot = if reply.msg_type == DHCPNAK {
        None
    } else {
        opts.boot_variant().and_then(|v| {
            BOOT.get_ptr(&BootKey::new(key.ifindex, src_mac, v))
                .map(|e| (e, boot_options_asked))
        })
    };

    write_reply(ctx, &hdr, &opts, &src_mac, b, binding, reply, sid, boot)?;
    count(match reply.msg_type {
        DHCPOFFER => Stat::DhcpOffer,
        DHCPNAK => Stat::DhcpNak,
        _ => Stat::DhcpAck,
    });
    if sid != b.server_id {
        count(Stat::DhcpFormerServerId);
    }
    if boot.is_some() {
        count(Stat::DhcpBoot);
    }
    Ok(ctx.tx())
}

/// Whether `addr` is a server address of the binding's network: its identifier, or an
/// address the ARP map resolves to the router MAC there (a former identifier, the gateway).
/// A NIC's address never is: no reply ever comes from a VM's address.
#[inline(always)]
fn is_server_address(b: &Binding, addr: u32) -> bool {
    if addr == b.server_id {
        return true;
    }
    if addr == 0 || addr == b.ip {
        return false;
    }
    match ARP.get_ptr(&ArpKey {
        vni: b.vni,
        ip: addr,
    }) {
        // SAFETY: map value pointers stay valid for the program run.
        Some(e) => mac_eq(unsafe { &(*e).mac }, &ROUTER_MAC.load()),
        None => false,
    }
}

/// Holds the binding silent after its client declined `ip` (see `DECLINE_HOLD_NS`).
#[inline(always)]
fn hold(key: &BindingKey, ip: u32) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let h = DeclineHold {
        deadline_ns: now + DECLINE_HOLD_NS,
        ip,
        _pad: 0,
    };
    // A full map evicts its least recently used hold: that client is answered again.
    let _ = DECLINED.insert(key, &h, 0);
}

/// Whether the binding is held after a DECLINE of `ip`, its address now.
#[inline(always)]
fn declined(key: &BindingKey, ip: u32) -> bool {
    let Some(h) = DECLINED.get_ptr(key) else {
        return false;
    };
    // SAFETY: map value pointers stay valid for the program run.
    let (deadline, held) = unsafe { ((*h).deadline_ns, (*h).ip) };
    // SAFETY: plain helper call.
    held == ip && unsafe { bpf_ktime_get_ns() } < deadline
}

/// RFC 2131 §4.3.2: which state the client is in decides what a REQUEST must match. Returns
/// the reply and the server address it comes from.
#[inline(always)]
fn request_reply(
    opts: &RequestOpts,
    hdr: &BootpHdr,
    ip_daddr: u32,
    addressed: u32,
    b: &Binding,
) -> Result<(Reply, u32), Stat> {
    let ack_or_nak = |ok: bool| if ok { ACK } else { NAK };
    if opts.server_id != 0 {
        // SELECTING: answering our OFFER (from this identifier or a former one), or another
        // server's.
        count(Stat::DhcpRequestSelecting);
        if !is_server_address(b, opts.server_id) {
            return Err(Stat::DhcpOtherServer);
        }
        if opts.requested == 0 {
            return Err(Stat::DropDhcpBadRequest);
        }
        Ok((ack_or_nak(opts.requested == b.ip), opts.server_id))
    } else if opts.requested != 0 {
        // INIT-REBOOT: a wrong address (for example from another network) gets a NAK.
        count(Stat::DhcpRequestInitReboot);
        Ok((ack_or_nak(opts.requested == b.ip), b.server_id))
    } else if hdr.ciaddr != 0 {
        // RENEWING is unicast to the server identifier its lease names, REBINDING broadcast.
        count(if ip_daddr != u32::MAX {
            Stat::DhcpRequestRenewing
        } else {
            Stat::DhcpRequestRebinding
        });
        Ok((ack_or_nak(hdr.ciaddr == b.ip), addressed))
    } else {
        Err(Stat::DropDhcpBadRequest)
    }
}

/// Scans the options field, `start` up to packet offset `end` (the end of the UDP payload),
/// with a bounded TLV loop; options may come in any order.
///
/// The field is first copied into a per-CPU scratch buffer with one helper call and parsed there
/// with masked indices: variable offsets into packet memory are where LLVM's optimizations and
/// the verifier's range tracking disagree, a map value has no such trouble. The scan's own
/// state lives in the same map value (see `OptionsScan`). The loop only notes where each
/// option is (its offset, by code); the options acted on are read after it, once: the
/// verifier walks the loop's body once per step, and a small body keeps that cheap.
///
/// Pads (RFC 2132 §3.1) do not count toward the cap of `MAX_OPTION_TLVS` options: a run of
/// them is skipped up to `PAD_STRIDE` at a step, so a request padded across its whole window is
/// still read.
#[inline(always)]
fn parse_options<C: Ctx>(ctx: &C, start: usize, end: usize) -> Result<RequestOpts, Stat> {
    let frame = ctx.data_end() - ctx.data();
    let total = if end < frame { end } else { frame };
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
    let rc = unsafe { ctx.load_bytes(start as u32, (*scan).buf.as_mut_ptr().cast(), n as u32) };
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
    // SAFETY: as above.
    let slots = unsafe { (&raw mut (*scan).slots).cast::<u16>() };
    // The mask must survive optimization: LLVM would drop it as redundant after the range
    // checks below, but the verifier checks the access, not LLVM's reasoning.
    // SAFETY: the index is masked below `OPTIONS_WINDOW`, the length of `buf`.
    let at = |i: u32| unsafe { *buf.add(core::hint::black_box(i as usize) & (OPTIONS_WINDOW - 1)) };
    // Where option `code` is: its offset in `buf` plus one, 0 when the request has none.
    // SAFETY: `slots` has an entry for every code.
    let slot = |code: u8| unsafe { slots.add(code as usize).read_volatile() } as u32;
    let n = n as u32;
    // SAFETY: fields of `*scan`; `slots` has an entry for every code.
    unsafe {
        set(&raw mut (*scan).off, 0);
        set(&raw mut (*scan).tlvs, 0);
        for code in READ_OPTIONS {
            slots.add(code as usize).write_volatile(0);
        }
    }
    let mut ended = false;
    for _ in 0..SCAN_STEPS {
        // SAFETY: a field of `*scan`.
        let off = unsafe { get(&raw const (*scan).off) };
        // Past the pads here (up to a stride). Past `n` the buffer holds stale bytes: a run
        // that goes past `n` ends the scan below, whatever they are. Counted only at a pad:
        // most options follow one another without any, and the count reads a stride of bytes.
        let off = if at(off) == OPT_PAD {
            off + zero_run(scan, off)
        } else {
            off
        };
        if off >= n {
            // Ran off the end without END.
            return Err(Stat::DropDhcpBadOptions);
        }
        let code = at(off);
        if code == OPT_PAD {
            // A longer run: the next step goes on with it.
            // SAFETY: a field of `*scan`.
            unsafe { set(&raw mut (*scan).off, off) };
            continue;
        }
        if code == OPT_END {
            ended = true;
            break;
        }
        // SAFETY: a field of `*scan`.
        let tlvs = unsafe { get(&raw const (*scan).tlvs) } + 1;
        if tlvs > MAX_OPTION_TLVS || off + 1 >= n {
            return Err(Stat::DropDhcpBadOptions);
        }
        let len = at(off + 1) as u32;
        let val = off + 2;
        if val + len > n {
            // The value runs past the end of the packet.
            return Err(Stat::DropDhcpBadOptions);
        }
        // SAFETY: fields of `*scan`; `slots` has an entry for every code. A repeated option:
        // the last one counts.
        unsafe {
            set(&raw mut (*scan).tlvs, tlvs);
            slots.add(code as usize).write_volatile((off + 1) as u16);
            set(&raw mut (*scan).off, val + len);
        }
    }
    if !ended {
        return Err(Stat::DropDhcpBadOptions);
    }

    // The options acted on, each where the scan found it: `v` its value's offset, `len` its
    // length (both within `n`, checked by the scan).
    let found = |code: u8| match slot(code) {
        0 => None,
        s => Some((s + 1, at(s) as u32)),
    };
    let addr = |code: u8| -> Result<u32, Stat> {
        match found(code) {
            None => Ok(0),
            Some((v, 4)) => Ok(u32::from_ne_bytes([at(v), at(v + 1), at(v + 2), at(v + 3)])),
            Some(_) => Err(Stat::DropDhcpBadOptions),
        }
    };
    let msg_type = match found(OPT_MESSAGE_TYPE) {
        None => 0,
        Some((v, 1)) => at(v),
        Some(_) => return Err(Stat::DropDhcpBadOptions),
    };
    if msg_type == 0 {
        // BOOTP, or DHCP without a message type: not ours to answer.
        return Err(Stat::DropDhcpUnknownType);
    }
    let requested = addr(OPT_REQUESTED_IP)?;
    let server_id = addr(OPT_SERVER_ID)?;
    // SAFETY: fields of `*scan`.
    unsafe {
        set(&raw mut (*scan).msg_type, msg_type as u32);
        set(&raw mut (*scan).requested, requested);
        set(&raw mut (*scan).server_id, server_id);
        let mut flags = 0;
        if found(OPT_RAPID_COMMIT).is_some() {
            flags |= FLAG_RAPID_COMMIT;
        }
        if found(OPT_OVERLOAD).is_some() {
            flags |= FLAG_OVERLOAD;
        }
        let [i, p, x, e] = IPXE_USER_CLASS;
        if found(OPT_IPXE_ENCAP).is_some()
            || matches!(found(OPT_USER_CLASS), Some((v, 4))
                if at(v) == i && at(v + 1) == p && at(v + 2) == x && at(v + 3) == e)
        {
            flags |= FLAG_IPXE;
        }
        set(&raw mut (*scan).flags, flags);
        // Echoed in the reply (RFC 6842); the binding stays keyed by MAC.
        let (cid_off, cid_tlv) = match found(OPT_CLIENT_ID) {
            Some((v, len)) => (start as u32 + v - 2, len + 2),
            None => (0, 0),
        };
        set(&raw mut (*scan).cid_off, cid_off);
        set(&raw mut (*scan).cid_tlv, cid_tlv);
        // Read after the scan, for a network boot client only (options 66 and 67).
        let (prl_off, prl_len) = found(OPT_PARAM_REQUEST).unwrap_or((0, 0));
        set(&raw mut (*scan).prl_off, prl_off);
        set(&raw mut (*scan).prl_len, prl_len);
        // RFC 4578 §2.1: a list of 16-bit types, the first the one it boots as.
        let arch = match found(OPT_CLIENT_ARCH) {
            Some((v, len)) if len >= 2 => (at(v) as u32) << 8 | at(v + 1) as u32,
            _ => NO_ARCH,
        };
        set(&raw mut (*scan).arch, arch);
    }
    // Read back: whatever was found, one state from here on.
    // SAFETY: fields of `*scan`.
    Ok(unsafe {
        RequestOpts {
            msg_type: get(&raw const (*scan).msg_type) as u8,
            rapid_commit: get(&raw const (*scan).flags) & FLAG_RAPID_COMMIT != 0,
            overload: get(&raw const (*scan).flags) & FLAG_OVERLOAD != 0,
            requested: get(&raw const (*scan).requested),
            server_id: get(&raw const (*scan).server_id),
            cid_off: get(&raw const (*scan).cid_off),
            cid_tlv: get(&raw const (*scan).cid_tlv),
            arch: get(&raw const (*scan).arch),
            ipxe: get(&raw const (*scan).flags) & FLAG_IPXE != 0,
            prl_off: get(&raw const (*scan).prl_off),
            prl_len: get(&raw const (*scan).prl_len),
        }
    })
}

const FLAG_RAPID_COMMIT: u32 = 1;
const FLAG_OVERLOAD: u32 = 2;
const FLAG_IPXE: u32 = 4;
/// The parameter request list names option 108 (set by `note_v6only_asked`).
const FLAG_V6ONLY_ASKED: u32 = 8;

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

/// How many zero bytes (pads) the scan's buffer has from `off` on, up to `PAD_STRIDE`.
/// Arithmetic only: every comparison is a branch in BPF, and the verifier would walk each path
/// of a byte loop at every step of the scan.
#[inline(always)]
fn zero_run(scan: *const OptionsScan, off: u32) -> u32 {
    // One masked index for all the bytes read: they lie within `buf` and, from index 1,024 on,
    // the `cid` field after it, inside the map value. Bytes past `n` are stale: a run that
    // reaches them goes past `n`, which ends the scan whatever they are.
    let idx = core::hint::black_box(off as usize) & (OPTIONS_WINDOW - 1);
    // SAFETY: `scan` is this CPU's map value; `buf` is followed by `cid` (`CID_BUF` bytes), so
    // `idx + PAD_STRIDE - 1` is inside it.
    let p = unsafe { (&raw const (*scan).buf).cast::<u8>().add(idx) };
    // The eight bytes from `first` as a little-endian word: its trailing zero bits, divided
    // by eight, are its leading zero bytes.
    let word = |first: usize| {
        let mut w = 0u64;
        for i in 0..8 {
            // SAFETY: see above.
            w |= (unsafe { p.add(first + i).read_volatile() } as u64) << (8 * i);
        }
        // The trailing zero bits as a mask (all ones for 0), counted (SWAR).
        let mut x = !w & w.wrapping_sub(1);
        x -= (x >> 1) & 0x5555_5555_5555_5555;
        x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
        x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32 / 8
    };
    // A word counts only when the ones before it are all pads.
    let (w0, w1, w2, w3) = (word(0), word(8), word(16), word(24));
    w0 + (w0 >> 3) * (w1 + (w1 >> 3) * (w2 + (w2 >> 3) * w3))
}

/// The options the responder reads after the scan: their slots are cleared before it.
const READ_OPTIONS: [u8; 10] = [
    OPT_MESSAGE_TYPE,
    OPT_REQUESTED_IP,
    OPT_SERVER_ID,
    OPT_RAPID_COMMIT,
    OPT_OVERLOAD,
    OPT_CLIENT_ID,
    OPT_PARAM_REQUEST,
    OPT_CLIENT_ARCH,
    OPT_USER_CLASS,
    OPT_IPXE_ENCAP,
];

/// Whether the request's parameter request list (55) asks for option 66 or 67. Reads the
/// options the scan left in this CPU's scratch buffer.
#[inline(always)]
fn asks_for_boot_options(opts: &RequestOpts) -> bool {
    let Some(scan) = OPTIONS_SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: the address of a field of this CPU's map value; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // Only a network boot client's list is read: no other gets boot options whatever it asks.
    // The loop stays on every path (the verifier walks it once) and ends at once for the rest.
    let len = core::hint::black_box(if opts.boot_variant().is_some() {
        opts.prl_len
    } else {
        0
    });
    for i in 0..PRL_MAX {
        if i >= len {
            break;
        }
        // SAFETY: the index is masked below `OPTIONS_WINDOW`, the length of `buf`.
        let code = unsafe {
            *buf.add(core::hint::black_box((opts.prl_off + i) as usize) & (OPTIONS_WINDOW - 1))
        };
        if code == OPT_TFTP_SERVER || code == OPT_BOOTFILE {
            return true;
        }
    }
    false
}

/// Tells the agent about a RELEASE or DECLINE (DHCPv4: no reply is sent for either).
#[inline(always)]
pub fn report(kind: u32, key: &BindingKey, addr: u32) {
    // Each event costs the agent a wakeup and a log line.
    if !ratelimit::allow(key.ifindex, RateKind::Event) {
        count(Stat::DhcpEventsRateLimited);
        return;
    }
    let ev = DhcpEvent {
        kind,
        ifindex: key.ifindex,
        mac: key.mac,
        _pad: [0; 2],
        addr,
    };
    if EVENTS.output::<DhcpEvent>(&ev, 0).is_err() {
        count(Stat::DhcpEventsLost);
    }
}

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

/// Rewrites the frame into the reply from server address `server_id`, and fills in both
/// checksums. `boot`: the network boot answer for the client's variant, and whether the
/// client asked for options 66 and 67.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, inlined: a struct would only be unpacked again"
)]
#[inline(always)]
fn write_reply<C: Ctx>(
    ctx: &C,
    req: &BootpHdr,
    opts: &RequestOpts,
    client_mac: &[u8; 6],
    b: &Binding,
    binding: *const Binding,
    reply: Reply,
    server_id: u32,
    boot: Option<(*const BootEntry, bool)>,
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
    let yiaddr = if nak || reply.inform { 0 } else { b.ip };
    // RFC 2131 table 3: `ciaddr` is echoed in an ACK, zero in an OFFER and a NAK.
    let ciaddr = if nak || reply.msg_type == DHCPOFFER {
        0
    } else {
        req.ciaddr
    };
    // RFC 2131 §4.1, with `giaddr` zero: a client with an address gets the reply unicast at
    // `ciaddr`, a NAK too (as Kea does: a RENEWING client listens on a socket bound to its
    // address, and never sees a broadcast); other NAKs are broadcast; a client that asked for
    // broadcast gets it; everyone else is unicast at the offered address and its hardware
    // address.
    let (dst_mac, dst_ip) = if req.ciaddr != 0 {
        (*client_mac, req.ciaddr)
    } else if nak || req.flags & be16(BROADCAST_FLAG) != 0 {
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
    // Network boot: `siaddr`, `sname` and `file` from the variant's entry, and its options 66
    // and 67 after the client identifier for a client that asked for them, room permitting.
    let (siaddr, boot_entry) = match boot {
        // SAFETY: a map value pointer stays valid for the program run.
        Some((e, _)) => (unsafe { (*e).siaddr }, Some(e)),
        None => (0, None),
    };
    let mut boot_room = match boot {
        // SAFETY: as above.
        Some((e, true)) => (unsafe { (*e).opts_len }) as usize & 0x1ff,
        _ => 0,
    };
    if boot_room > BOOT_OPTS_MAX || boot_room % 2 != 0 {
        boot_room = 0;
    }
    if boot_room > 0 && cid_room + boot_room + blob_len > OPTS_MAX {
        count(Stat::DhcpBootOptionsNotSent);
        boot_room = 0;
    }
    let boot_off = BLOB_OFF + cid_room;
    let blob_off = boot_off + boot_room;

    let frame_len = blob_off + blob_len;
    ctx.resize(frame_len as u32)
        .map_err(|_| Stat::DropDhcpNoRoom)?;
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
    // The pseudo header's sum alone, uncomplemented: what a partial checksum holds.
    let pseudo = !fold(s);
    s = add16(s, be16(SERVER_PORT));
    s = add16(s, be16(CLIENT_PORT));
    s = add16(s, be16(udp_len));
    s = add_bytes(s, BOOTREPLY, HTYPE_ETHERNET);
    s = add_bytes(s, 6, 0);
    s = add32(s, xid);
    s = add16(s, flags);
    s = add32(s, ciaddr);
    s = add32(s, yiaddr);
    s = add32(s, siaddr);
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
    if let Some(e) = boot_entry {
        // SAFETY: as above.
        s += unsafe { (*e).fields_csum } as u64;
        if boot_room > 0 {
            // SAFETY: as above.
            s += unsafe { (*e).opts_csum } as u64;
        }
    }
    let mut udp_check = fold(s);
    if udp_check == 0 {
        // RFC 768: a computed zero is sent as all ones; zero means "no checksum".
        udp_check = 0xffff;
    }

    let mut ip_sum = add_bytes(0, 0x45, 0);
    ip_sum = add16(ip_sum, be16(ip_len));
    ip_sum = add_bytes(ip_sum, IP_DF, 0);
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
        // ID 0 and DF: an atomic datagram, whose ID nothing reads (RFC 6864 §4.1).
        put(p, IP_OFF + 4, [0u8, 0, IP_DF, 0]);
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
        put(p, BOOTP_OFF + 20, siaddr);
        put(p, BOOTP_OFF + 24, 0u32); // giaddr
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
    // On the skb, the checksum as the skb's state wants it (see `Ctx::reply_udp_csum`).
    ctx.reply_udp_csum((UDP_OFF + 6) as u32, udp_check, pseudo)
        .map_err(|_| Stat::DropDhcpNoRoom)?;

    if let Some((src, _)) = cid {
        // SAFETY: the copy holds `CID_BUF` bytes and `cid_room` is at most `CID_TLV_MAX + 1`,
        // its bytes past the option zero (pads); the helper checks the packet range itself.
        if unsafe { store(ctx, BLOB_OFF, src, cid_room) } != 0 {
            return Err(Stat::DropDhcpNoRoom);
        }
    }
    if let Some(e) = boot_entry {
        // SAFETY: `e` is a map value holding `fields` (sname and file, 192 bytes) and `opts`
        // (`BOOT_OPTS_MAX` bytes, `boot_room` bounded by it above); the helper checks the
        // packet range itself.
        unsafe {
            if store(ctx, SNAME_OFF, (*e).fields.as_ptr(), SNAME_LEN + FILE_LEN) != 0
                || store(ctx, boot_off, (*e).opts.as_ptr(), boot_room) != 0
            {
                return Err(Stat::DropDhcpNoRoom);
            }
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
        let ret =
            unsafe { ctx.store_bytes(blob_off as u32, INFORM_BLANK.as_ptr(), lease_len as u32) };
        if ret != 0 {
            return Err(Stat::DropDhcpNoRoom);
        }
    }
    // Asked again rather than kept: the verifier need not walk the reply twice.
    if v6only_blanked(b) {
        // SAFETY: `INFORM_BLANK` holds more than `V6ONLY_OPT_LEN` pads; the helper checks the
        // packet range.
        let ret = unsafe {
            ctx.store_bytes(
                (blob_off + V6ONLY_OPT_OFF) as u32,
                INFORM_BLANK.as_ptr(),
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
unsafe fn store<C: Ctx>(ctx: &C, off: usize, src: *const u8, len: usize) -> i64 {
    if len == 0 {
        return 0;
    }
    // SAFETY: per the caller; the helper checks the packet range.
    unsafe { ctx.store_bytes(off as u32, src, len as u32) }
}

/// Copies the option TLV of `tlv` bytes (1..=CID_TLV_MAX) at packet offset `off` into this
/// CPU's scratch, zero-padded to whole words. Returns the copy and the sum of its words.
#[inline(always)]
fn copy_tlv<C: Ctx>(ctx: &C, off: u32, tlv: usize) -> Result<(*const u8, u64), Stat> {
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
        if ctx.load_bytes(off, dst, n as u32) != 0 {
            return Err(Stat::DropDhcpMalformed);
        }
        let sum = bpf_csum_diff(core::ptr::null_mut(), 0, dst.cast(), words as u32, 0);
        if sum < 0 {
            return Err(Stat::DropDhcpMalformed);
        }
        Ok((dst, sum as u64))
    }
}
