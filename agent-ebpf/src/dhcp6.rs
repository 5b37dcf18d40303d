//! The DHCPv6 responder (RFC 8415): a VM's request turned into the reply in place, from the
//! router's link-local address, with the NIC's `ip6` as its only address.
//!
//! As for DHCPv4, the request is read whole first (copied into per-CPU scratch and scanned
//! with masked indices); the frame is then resized and rewritten from its first byte. The
//! reply is made of three parts: the headers and the options built here (the IA_NA, rapid
//! commit, a status), the network's options rendered by the agent (`Dhcp6Net::tail`: server
//! identifier, DNS servers, domain list) and last the client's identifier, copied back. The
//! UDP checksum sums the three; the client identifier's sum is byte-swapped when it starts at
//! an odd offset (RFC 1071 §2(B)).
//!
//! What the server does by message (RFC 8415 §18.3), with the silence §16 asks for when a
//! message breaks its rules:
//!
//! - SOLICIT: ADVERTISE with the address; REPLY when the client asked for rapid commit.
//! - REQUEST, RENEW (to this server) and REBIND: REPLY with the address. An address the client
//!   holds that is not its `ip6` any more comes back with lifetimes 0, so the client drops it.
//! - CONFIRM: REPLY with Success when the client's address is its NIC's `ip6`, NotOnLink
//!   otherwise (another NIC's, a former one, another prefix's).
//! - INFORMATION-REQUEST: REPLY with the options only.
//! - RELEASE and DECLINE (to this server): REPLY with Success, counted.
//!
//! The server's DUID is a DUID-LL of the router MAC: the same on every host, so a renewal is
//! answered wherever the VM runs.

use agent_common::{
    Binding6, BindingKey, Dhcp6Net, RateKind, Stat,
    dhcp6::{
        ADVERTISE, CONFIRM, DECLINE, DUID_MAX, EVENT_DHCP6, INFORMATION_REQUEST, OPT_CLIENTID,
        OPT_IA_NA, OPT_IAADDR, OPT_RAPID_COMMIT, OPT_SERVERID, OPT_STATUS_CODE, REBIND, RELAY_FORW,
        RELEASE, RENEW, REPLY, REQUEST, SERVER_ID_LEN, SERVER_PORT, SOLICIT, STATUS_NOT_ON_LINK,
        STATUS_SUCCESS, TAIL_MAX,
    },
};
use aya_ebpf::helpers::bpf_csum_diff;

use crate::{
    ROUTER_MAC,
    csum::{add16, be16, fold},
    ctx::Ctx,
    dhcp,
    maps::{DHCP6, DHCP6_CID_BUF, DHCP6_HEAD, DHCP6_SCRATCH, DHCP6_WINDOW, Dhcp6Scan},
    parse::{
        ETH_HLEN, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV6_HLEN, Ipv6Hdr, UDP_HLEN, UdpHdr, ip6_eq,
    },
    ratelimit,
    stats::count,
};

const UDP_OFF: usize = ETH_HLEN + IPV6_HLEN;
const MSG_OFF: usize = UDP_OFF + UDP_HLEN;
/// Where the options built here start in the reply.
const BUILT_OFF: usize = MSG_OFF + 4;
/// Option TLVs scanned before a request is declared malformed.
const MAX_OPTIONS: usize = 32;
/// What the responder reads of a request: the headers and the message window.
const PULL_MAX: u32 = (MSG_OFF + DHCP6_WINDOW) as u32;
/// An IA_NA's fixed part (IAID, T1, T2) and an IAADDR option (RFC 8415 §21.4, §21.6).
const IA_FIXED: usize = 12;
const IAADDR_TLV: usize = 4 + 24;
/// Where the IA_NA's parts go in the reply.
const IA_OFF: usize = BUILT_OFF;
const ADDR_OFF: usize = IA_OFF + 4 + IA_FIXED;
const AFTER_ADDR: usize = ADDR_OFF + IAADDR_TLV;
/// Offset of the address in the client's IA_NA, when its first option is one.
const HELD_OFF: u32 = (4 + IA_FIXED + 4) as u32;
/// ff02::1:2, All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
const ALL_SERVERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
/// The server identifier option's header and DUID-LL header, before the router MAC (see
/// `server_id_option`).
const SERVER_ID_HEAD: [u8; 8] = [0, 2, 0, 10, 0, 3, 0, 1];
/// Hop limit of the replies, as for the other answers of the router.
const HOP_LIMIT: u8 = 255;

const _: () = assert!(DHCP6_WINDOW.is_power_of_two());
const _: () = assert!(DHCP6_HEAD.is_multiple_of(8));
// The built options at their longest: an IA_NA with two addresses and rapid commit.
const _: () = assert!(BUILT_OFF + 4 + IA_FIXED + 2 * IAADDR_TLV + 4 <= DHCP6_HEAD);

// What a reply carries besides the network's options and the client's identifier, as bits
// over its message type (one register: the responder's stack is the VM program's, and full).
/// An IA_NA with the NIC's address, for the client's IAID.
const P_IA: u32 = 1 << 8;
/// The address the client's IA_NA names is not its `ip6`: sent back with lifetimes 0.
const P_OLD: u32 = 1 << 9;
const P_RAPID: u32 = 1 << 10;
/// A status code option: Success, or NotOnLink with `P_NOT_ON_LINK`.
const P_STATUS: u32 = 1 << 11;
const P_NOT_ON_LINK: u32 = 1 << 12;

// What the request says, as bits.
/// It has a client identifier.
const F_CLIENT: u32 = 1;
/// It names a server identifier, and it is this network's.
const F_NAMED: u32 = 1 << 1;
const F_OURS: u32 = 1 << 2;
/// It has an IA_NA, whose first option is an address (`F_ADDR`), the NIC's `ip6`
/// (`F_CURRENT`).
const F_IA: u32 = 1 << 3;
const F_ADDR: u32 = 1 << 4;
const F_CURRENT: u32 = 1 << 6;
const F_RAPID: u32 = 1 << 7;

/// A DHCPv6 message from the NIC bound as `b6` (its UDP header `udp`): answered, or dropped
/// with the reason.
#[inline(always)]
pub fn handle<C: Ctx>(
    ctx: &C,
    eth: &EthHdr,
    ip: &Ipv6Hdr,
    udp: &UdpHdr,
    b6: &Binding6,
) -> Result<u32, Stat> {
    // Before any parsing: a flooding VM gets its port's share of the responder, no more.
    // DHCPv6 shares DHCPv4's limit: both cost the host a reply.
    if !ratelimit::allow(ctx.ifindex(), RateKind::Dhcp) {
        return Err(Stat::DropDhcpRateLimited);
    }
    // RFC 8415 §13.1: to the servers' multicast address (a client unicasts only when a server
    // said it may, which this one never does; the router's own address is accepted too).
    if !ip6_eq(&ip.daddr, &ALL_SERVERS) && !is_router_ll(&ip.daddr, &ROUTER_MAC.load()) {
        return Err(Stat::DropDhcp6Malformed);
    }
    if ip6_eq(&ip.saddr, &[0; 16]) {
        return Err(Stat::DropDhcp6Malformed);
    }
    let udp_len = u16::from_be(udp.len) as usize;
    if udp_len < UDP_HLEN + 4 || udp_len > u16::from_be(ip.payload_len) as usize {
        return Err(Stat::DropDhcp6Malformed);
    }
    let n = udp_len - UDP_HLEN;
    if n > DHCP6_WINDOW {
        return Err(Stat::DropDhcp6Malformed);
    }
    let net = DHCP6.get_ptr(&b6.vni).ok_or(Stat::DropIpv6NotConfigured)?;
    let scan = DHCP6_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Stat::DropDhcp6Malformed)?;
    // The reply's headers first, while the request's are at hand: nothing of them is kept
    // on the stack past this point.
    begin_head(scan, &eth.src, &ip.saddr, udp.source);
    // On the skb only the headers are in the linear part.
    ctx.pull_up_to(PULL_MAX);
    scan_options(ctx, scan, n as u32)?;
    // SAFETY: the address of a field of `*scan`; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // SAFETY: the index is masked below `DHCP6_WINDOW`, inside `buf`.
    let kind = unsafe { *buf };
    count(match kind {
        SOLICIT => Stat::Dhcp6Solicit,
        REQUEST => Stat::Dhcp6Request,
        RENEW => Stat::Dhcp6Renew,
        REBIND => Stat::Dhcp6Rebind,
        CONFIRM => Stat::Dhcp6Confirm,
        INFORMATION_REQUEST => Stat::Dhcp6InformationRequest,
        RELEASE => Stat::Dhcp6Release,
        DECLINE => Stat::Dhcp6Decline,
        RELAY_FORW => return Err(Stat::DropDhcpRelayed),
        _ => return Err(Stat::DropDhcp6UnknownType),
    });
    // Facts and plan are bits set in branches: each path would carry its own constant, and
    // the verifier walk what follows once per value. Through map memory, which it does not
    // track, they are one unknown each.
    let facts = opaque(scan, facts(scan, b6));
    let plan = opaque(scan, plan(kind, facts)?);
    if kind == RELEASE || kind == DECLINE {
        // Reported like their DHCPv4 twins: a DECLINE is an address conflict IPAM must solve.
        dhcp::report(
            EVENT_DHCP6 | kind as u32,
            &BindingKey::new(ctx.ifindex(), eth.src),
            0,
        );
    }
    reply(ctx, scan, net, b6, plan)
}

/// `v`, written to and read back from the map value `scan`.
#[inline(always)]
fn opaque(scan: *mut Dhcp6Scan, v: u32) -> u32 {
    // SAFETY: a field of `*scan`, this CPU's map value.
    unsafe {
        (&raw mut (*scan).plan).write_volatile(v);
        (&raw const (*scan).plan).read_volatile()
    }
}

/// What the request says (`F_*`), from the scan.
#[inline(always)]
fn facts(scan: *mut Dhcp6Scan, b6: &Binding6) -> u32 {
    // SAFETY: the address of a field of `*scan`; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // SAFETY: the index is masked below `DHCP6_WINDOW`, inside `buf`. The mask must survive
    // optimization: the verifier checks the access, not LLVM's reasoning.
    let at = |i: u32| unsafe { *buf.add(core::hint::black_box(i as usize) & (DHCP6_WINDOW - 1)) };
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let get = |f: *const u32| unsafe { f.read_volatile() };
    let mut f = 0;
    // SAFETY: fields of `*scan`.
    let (client_len, server, server_len, ia, ia_len, rapid) = unsafe {
        (
            get(&raw const (*scan).client_len),
            get(&raw const (*scan).server),
            get(&raw const (*scan).server_len),
            get(&raw const (*scan).ia),
            get(&raw const (*scan).ia_len),
            get(&raw const (*scan).rapid),
        )
    };
    if client_len != 0 {
        f |= F_CLIENT;
    }
    if rapid != 0 {
        f |= F_RAPID;
    }
    if server_len != 0 {
        f |= F_NAMED;
        // Ours: this network's server identifier, compared byte by byte.
        if server_len as usize == SERVER_ID_LEN {
            let router = ROUTER_MAC.load();
            let mut same = true;
            let mut i = 0;
            while i < SERVER_ID_LEN {
                let want = if i < SERVER_ID_HEAD.len() {
                    SERVER_ID_HEAD[i]
                } else {
                    router[i - SERVER_ID_HEAD.len()]
                };
                same &= at(server + i as u32) == want;
                i += 1;
            }
            if same {
                f |= F_OURS;
            }
        }
    }
    if ia_len as usize >= 4 + IA_FIXED {
        f |= F_IA;
    }
    // The IA_NA's first option, when it is an address.
    let held = ia + HELD_OFF;
    if ia_len as usize >= 4 + IA_FIXED + IAADDR_TLV
        && at(held - 4) == 0
        && at(held - 3) == OPT_IAADDR as u8
    {
        f |= F_ADDR;
        let mut current = true;
        let mut i = 0;
        while i < 16 {
            current &= at(held + i as u32) == b6.ip6[i];
            i += 1;
        }
        if current {
            f |= F_CURRENT;
        }
    }
    f
}

/// The reply to a message of type `kind` with facts `f` (`P_*` over the reply's type), or why
/// there is none: RFC 8415 §16 says which identifiers each message must and must not carry,
/// §18.3 what the server answers.
#[inline(always)]
fn plan(kind: u8, f: u32) -> Result<u32, Stat> {
    let has = |bit: u32| f & bit != 0;
    let named_ours = |required: bool| -> Result<(), Stat> {
        match (has(F_NAMED), has(F_OURS)) {
            (false, _) if required => Err(Stat::DropDhcp6Malformed),
            (true, false) => Err(Stat::Dhcp6OtherServer),
            _ => Ok(()),
        }
    };
    let client = || {
        if has(F_CLIENT) {
            Ok(())
        } else {
            Err(Stat::DropDhcp6Malformed)
        }
    };
    let not_named = || {
        if has(F_NAMED) {
            Err(Stat::DropDhcp6Malformed)
        } else {
            Ok(())
        }
    };
    match kind {
        SOLICIT => {
            client()?;
            not_named()?;
            if !has(F_IA) {
                return Err(Stat::Dhcp6NoAddressAsked);
            }
            Ok(if has(F_RAPID) {
                REPLY as u32 | P_IA | P_RAPID
            } else {
                ADVERTISE as u32 | P_IA
            })
        }
        REQUEST | RENEW | REBIND => {
            client()?;
            if kind == REBIND {
                not_named()?;
            } else {
                named_ours(true)?;
            }
            let mut p = REPLY as u32;
            if has(F_IA) {
                p |= P_IA;
                if has(F_ADDR) && !has(F_CURRENT) {
                    p |= P_OLD;
                }
            }
            Ok(p)
        }
        CONFIRM => {
            client()?;
            not_named()?;
            // §18.3.3: no address, no reply.
            if !has(F_ADDR) {
                return Err(Stat::Dhcp6NoAddressAsked);
            }
            // "Appropriate for the link" is this NIC's `ip6`, the only address it may use
            // here: a client confirming another NIC's address or its own former one (a stale
            // lease after IPAM renumbered it) solicits again, as a DHCPv4 INIT-REBOOT with
            // a wrong address gets a NAK; told Success it would keep an address the port drops
            // as spoofed until its T1.
            if has(F_CURRENT) {
                Ok(REPLY as u32 | P_STATUS)
            } else {
                count(Stat::Dhcp6NotOnLink);
                Ok(REPLY as u32 | P_STATUS | P_NOT_ON_LINK)
            }
        }
        INFORMATION_REQUEST => {
            named_ours(false)?;
            Ok(REPLY as u32)
        }
        RELEASE | DECLINE => {
            client()?;
            named_ours(true)?;
            Ok(REPLY as u32 | P_STATUS)
        }
        _ => Err(Stat::DropDhcp6UnknownType),
    }
}

/// Zeroes the reply's head and writes what it takes from the request's headers: the client's
/// MAC, address and port; and the router's MAC and link-local address.
#[inline(always)]
fn begin_head(scan: *mut Dhcp6Scan, client_mac: &[u8; 6], client: &[u8; 16], client_port: u16) {
    // SAFETY: the address of a field of `*scan`, this CPU's map value.
    let head = unsafe { &mut (*scan).head };
    // Zeroed by volatile words: LLVM would otherwise build the zeros on the stack.
    let words = head.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < DHCP6_HEAD / 8 {
        // SAFETY: `head` is DHCP6_HEAD bytes, a multiple of 8; word `i` is inside it.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    let router = ROUTER_MAC.load();
    head[0..6].copy_from_slice(client_mac);
    head[6..12].copy_from_slice(&router);
    head[12..14].copy_from_slice(&be16(ETH_P_IPV6).to_ne_bytes());
    head[14] = 0x60;
    head[20] = IPPROTO_UDP;
    head[21] = HOP_LIMIT;
    // The router's link-local address (`eui64_link_local`), written in place.
    head[22] = 0xfe;
    head[23] = 0x80;
    head[30] = router[0] ^ 0x02;
    head[31] = router[1];
    head[32] = router[2];
    head[33] = 0xff;
    head[34] = 0xfe;
    head[35] = router[3];
    head[36] = router[4];
    head[37] = router[5];
    head[38..54].copy_from_slice(client);
    head[UDP_OFF..UDP_OFF + 2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    // To the port the request came from (RFC 8415 §18.3: 546 from a client).
    head[UDP_OFF + 2..UDP_OFF + 4].copy_from_slice(&client_port.to_ne_bytes());
}

/// Builds the reply `plan` describes in place of the request and sends it to the VM.
#[inline(always)]
fn reply<C: Ctx>(
    ctx: &C,
    scan: *mut Dhcp6Scan,
    net: *const Dhcp6Net,
    b6: &Binding6,
    plan: u32,
) -> Result<u32, Stat> {
    // SAFETY: the address of a field of `*scan`; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // SAFETY: the index is masked below `DHCP6_WINDOW`, inside `buf`.
    let at = |i: u32| unsafe { *buf.add(core::hint::black_box(i as usize) & (DHCP6_WINDOW - 1)) };
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let get = |f: *const u32| unsafe { f.read_volatile() };
    // SAFETY: fields of `*scan`.
    let (client, client_len, ia) = unsafe {
        (
            get(&raw const (*scan).client),
            get(&raw const (*scan).client_len),
            get(&raw const (*scan).ia),
        )
    };
    // The client identifier, copied out before the frame is rewritten.
    let (cid_sum, cid_len) = if client_len != 0 {
        copy_client_id(ctx, scan, MSG_OFF as u32 + client, client_len)?
    } else {
        (0, 0)
    };
    // SAFETY: a map value pointer stays valid for the program run.
    let (tail_len, tail_csum) = unsafe { ((*net).len as usize, (*net).csum) };
    if !(SERVER_ID_LEN..=TAIL_MAX).contains(&tail_len) {
        return Err(Stat::DropMalformed);
    }
    // SAFETY: the address of a field of `*scan`, this CPU's map value.
    let head = unsafe { &mut (*scan).head };
    head[MSG_OFF] = plan as u8;
    head[MSG_OFF + 1] = at(1);
    head[MSG_OFF + 2] = at(2);
    head[MSG_OFF + 3] = at(3);
    // Each option at a constant offset: the plans only combine them as an IA_NA (with a
    // stale address, or with rapid commit after a SOLICIT), or a status alone.
    let mut built = BUILT_OFF;
    if plan & P_IA != 0 {
        let ia_opt_len = IA_FIXED + IAADDR_TLV + if plan & P_OLD != 0 { IAADDR_TLV } else { 0 };
        head[IA_OFF..IA_OFF + 2].copy_from_slice(&OPT_IA_NA.to_be_bytes());
        head[IA_OFF + 2..IA_OFF + 4].copy_from_slice(&(ia_opt_len as u16).to_be_bytes());
        // The client's IAID.
        head[IA_OFF + 4] = at(ia + 4);
        head[IA_OFF + 5] = at(ia + 5);
        head[IA_OFF + 6] = at(ia + 6);
        head[IA_OFF + 7] = at(ia + 7);
        // SAFETY: as above.
        unsafe {
            head[IA_OFF + 8..IA_OFF + 12].copy_from_slice(&(*net).t1);
            head[IA_OFF + 12..IA_OFF + 16].copy_from_slice(&(*net).t2);
        }
        head[ADDR_OFF..ADDR_OFF + 2].copy_from_slice(&OPT_IAADDR.to_be_bytes());
        head[ADDR_OFF + 2..ADDR_OFF + 4].copy_from_slice(&24u16.to_be_bytes());
        head[ADDR_OFF + 4..ADDR_OFF + 20].copy_from_slice(&b6.ip6);
        // SAFETY: as above.
        unsafe {
            head[ADDR_OFF + 20..ADDR_OFF + 24].copy_from_slice(&(*net).preferred);
            head[ADDR_OFF + 24..ADDR_OFF + 28].copy_from_slice(&(*net).valid);
        }
        built = AFTER_ADDR;
        if plan & P_OLD != 0 {
            // RFC 8415 §18.3.4: not appropriate for the link any more, lifetimes 0.
            head[AFTER_ADDR..AFTER_ADDR + 2].copy_from_slice(&OPT_IAADDR.to_be_bytes());
            head[AFTER_ADDR + 2..AFTER_ADDR + 4].copy_from_slice(&24u16.to_be_bytes());
            let held = ia + HELD_OFF;
            let mut i = 0;
            while i < 16 {
                head[AFTER_ADDR + 4 + i] = at(held + i as u32);
                i += 1;
            }
            built = AFTER_ADDR + IAADDR_TLV;
        } else if plan & P_RAPID != 0 {
            head[AFTER_ADDR..AFTER_ADDR + 2].copy_from_slice(&OPT_RAPID_COMMIT.to_be_bytes());
            built = AFTER_ADDR + 4;
        }
    } else if plan & P_STATUS != 0 {
        let code = if plan & P_NOT_ON_LINK != 0 {
            STATUS_NOT_ON_LINK
        } else {
            STATUS_SUCCESS
        };
        head[BUILT_OFF..BUILT_OFF + 2].copy_from_slice(&OPT_STATUS_CODE.to_be_bytes());
        head[BUILT_OFF + 2..BUILT_OFF + 4].copy_from_slice(&2u16.to_be_bytes());
        head[BUILT_OFF + 4..BUILT_OFF + 6].copy_from_slice(&code.to_be_bytes());
        built = BUILT_OFF + 6;
    }
    let total = built + tail_len + cid_len as usize;
    let udp_out = (total - UDP_OFF) as u16;
    head[18..20].copy_from_slice(&udp_out.to_be_bytes());
    head[UDP_OFF + 4..UDP_OFF + 6].copy_from_slice(&udp_out.to_be_bytes());

    // UDP checksum: the pseudo header (addresses, length, next header), then everything
    // after it in `head` (zeros past `built` add nothing), the network's options, the client
    // identifier.
    let mut s = 0;
    let mut i = 22;
    while i < UDP_OFF {
        s = add16(s, u16::from_ne_bytes([head[i], head[i + 1]]));
        i += 2;
    }
    s = add16(s, be16(udp_out));
    s = add16(s, be16(IPPROTO_UDP as u16));
    // The pseudo header's sum alone, uncomplemented: what a partial checksum holds.
    let pseudo = !fold(s);
    let mut i = UDP_OFF;
    while i < DHCP6_HEAD {
        s = add16(s, u16::from_ne_bytes([head[i], head[i + 1]]));
        i += 2;
    }
    s += tail_csum as u64;
    // After an odd-length tail the identifier's bytes sit in the other half of each word.
    s += if tail_len % 2 == 1 {
        (!fold(cid_sum)).swap_bytes() as u64
    } else {
        cid_sum
    };
    let mut check = fold(s);
    if check == 0 {
        // RFC 8200 §8.1: a computed zero is sent as all ones.
        check = 0xffff;
    }
    head[UDP_OFF + 6..UDP_OFF + 8].copy_from_slice(&check.to_ne_bytes());

    ctx.resize(total as u32)?;
    // SAFETY: each source is readable for the most bytes `store` lets through; the helper
    // checks the packet range itself.
    unsafe {
        store(ctx, 0, head.as_ptr(), built, DHCP6_HEAD)?;
        store(ctx, built, (*net).tail.as_ptr(), tail_len, TAIL_MAX)?;
        store(
            ctx,
            built + tail_len,
            (&raw const (*scan).cid).cast(),
            cid_len as usize,
            DHCP6_CID_BUF,
        )?;
    }
    // On the skb, the checksum as the skb's state wants it (see `Ctx::reply_udp_csum`).
    ctx.reply_udp_csum((UDP_OFF + 6) as u32, check, pseudo)?;
    if plan & P_RAPID != 0 {
        count(Stat::Dhcp6RapidCommit);
    }
    count(if plan as u8 == ADVERTISE {
        Stat::Dhcp6Advertise
    } else {
        Stat::Dhcp6Reply
    });
    Ok(ctx.tx())
}

/// Copies the message's `n` bytes (4..=DHCP6_WINDOW) into `scan.buf` and notes where the
/// options acted on are, with a bounded loop over its TLVs (RFC 8415 §21.1). The first of each
/// counts; an option running past the message, or more than `MAX_OPTIONS` of them, makes the
/// message malformed.
#[inline(always)]
fn scan_options<C: Ctx>(ctx: &C, scan: *mut Dhcp6Scan, n: u32) -> Result<(), Stat> {
    // Checked again after a barrier, so the checks the verifier needs are not folded away.
    let n = core::hint::black_box(n);
    if n < 4 || n as usize > DHCP6_WINDOW {
        return Err(Stat::DropDhcp6Malformed);
    }
    // SAFETY: `scan` is this CPU's map value; `buf` holds DHCP6_WINDOW >= n bytes.
    if unsafe { ctx.load_bytes(MSG_OFF as u32, (&raw mut (*scan).buf).cast(), n) } != 0 {
        return Err(Stat::DropDhcp6Malformed);
    }
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let get = |f: *const u32| unsafe { f.read_volatile() };
    // SAFETY: only ever given a pointer to a `u32` field of `*scan`.
    let set = |f: *mut u32, v: u32| unsafe { f.write_volatile(v) };
    // SAFETY: the address of a field of `*scan`; nothing is read.
    let buf = unsafe { (&raw const (*scan).buf).cast::<u8>() };
    // SAFETY: the index is masked below `DHCP6_WINDOW`, inside `buf`.
    let at =
        |i: u32| unsafe { *buf.add(core::hint::black_box(i as usize) & (DHCP6_WINDOW - 1)) } as u32;
    // SAFETY: fields of `*scan`.
    unsafe {
        set(&raw mut (*scan).off, 4);
        set(&raw mut (*scan).client_len, 0);
        set(&raw mut (*scan).server_len, 0);
        set(&raw mut (*scan).ia_len, 0);
        set(&raw mut (*scan).rapid, 0);
    }
    for _ in 0..MAX_OPTIONS {
        // SAFETY: a field of `*scan`.
        let off = unsafe { get(&raw const (*scan).off) };
        if off >= n {
            break;
        }
        if off + 4 > n {
            return Err(Stat::DropDhcp6Malformed);
        }
        let code = (at(off) << 8) | at(off + 1);
        let len = (at(off + 2) << 8) | at(off + 3);
        let next = off + 4 + len;
        if next > n {
            return Err(Stat::DropDhcp6Malformed);
        }
        // SAFETY: fields of `*scan`.
        unsafe {
            let (pos, tlv) = match code as u16 {
                OPT_CLIENTID => (&raw mut (*scan).client, &raw mut (*scan).client_len),
                OPT_SERVERID => (&raw mut (*scan).server, &raw mut (*scan).server_len),
                OPT_IA_NA => (&raw mut (*scan).ia, &raw mut (*scan).ia_len),
                OPT_RAPID_COMMIT => (&raw mut (*scan).rapid, &raw mut (*scan).rapid),
                _ => (core::ptr::null_mut(), core::ptr::null_mut()),
            };
            if !tlv.is_null() && get(tlv) == 0 {
                set(pos, off);
                set(tlv, 4 + len);
            }
            set(&raw mut (*scan).off, next);
        }
    }
    // SAFETY: a field of `*scan`.
    if unsafe { get(&raw const (*scan).off) } != n {
        return Err(Stat::DropDhcp6Malformed);
    }
    Ok(())
}

/// Copies the client identifier option (`tlv` bytes at packet offset `off`) into
/// `scan.cid`, zero-padded to whole words. Returns the sum of its words and its length.
#[inline(always)]
fn copy_client_id<C: Ctx>(
    ctx: &C,
    scan: *mut Dhcp6Scan,
    off: u32,
    tlv: u32,
) -> Result<(u64, u32), Stat> {
    // Bounds checked after barriers, for the verifier (see `scan_options`). A DUID has a type
    // and at least one byte (RFC 8415 §11).
    let n = core::hint::black_box(tlv as usize);
    #[expect(
        clippy::manual_range_contains,
        reason = "`contains` compiles to other instructions: the verified program is kept as it is"
    )]
    if n < 4 + 3 || n > 4 + DUID_MAX {
        return Err(Stat::DropDhcp6Malformed);
    }
    let words = (n + 3) & !3;
    let last = core::hint::black_box(words - 4);
    if last > DHCP6_CID_BUF - 4 {
        return Err(Stat::DropDhcp6Malformed);
    }
    // SAFETY: `scan` is this CPU's map value. The zeroed word is inside `cid`, the load fills
    // its first `n` <= DHCP6_CID_BUF bytes, and the sum reads `words` <= DHCP6_CID_BUF.
    unsafe {
        let dst = (&raw mut (*scan).cid).cast::<u8>();
        dst.add(last).cast::<u32>().write_unaligned(0);
        if ctx.load_bytes(off, dst, n as u32) != 0 {
            return Err(Stat::DropDhcp6Malformed);
        }
        // `last + 4`, not `words`: the verifier bounds the checked value, not its source.
        let sum = bpf_csum_diff(core::ptr::null_mut(), 0, dst.cast(), (last + 4) as u32, 0);
        if sum < 0 {
            return Err(Stat::DropDhcp6Malformed);
        }
        Ok((sum as u64, n as u32))
    }
}

/// Copies `len` bytes (at most `max`) from `src` into the packet at `off`; none when `len` is 0.
///
/// # Safety
/// `src` must be readable for `max` bytes.
#[inline(always)]
unsafe fn store<C: Ctx>(
    ctx: &C,
    off: usize,
    src: *const u8,
    len: usize,
    max: usize,
) -> Result<(), Stat> {
    let len = core::hint::black_box(len);
    if len == 0 {
        return Ok(());
    }
    if len > max {
        return Err(Stat::DropDhcpNoRoom);
    }
    // SAFETY: per the caller; the helper checks the packet range.
    if unsafe { ctx.store_bytes(off as u32, src, len as u32) } != 0 {
        return Err(Stat::DropDhcpNoRoom);
    }
    Ok(())
}

/// Whether `a` is the router's link-local address, the EUI-64 of `router`
/// (`eui64_link_local`), compared in place.
#[inline(always)]
fn is_router_ll(a: &[u8; 16], router: &[u8; 6]) -> bool {
    a[0] == 0xfe
        && a[1] == 0x80
        && a[2..8] == [0; 6]
        && a[8] == router[0] ^ 0x02
        && a[9] == router[1]
        && a[10] == router[2]
        && a[11] == 0xff
        && a[12] == 0xfe
        && a[13] == router[3]
        && a[14] == router[4]
        && a[15] == router[5]
}
