//! A DHCPv6 load generator, the twin of [`crate::loadgen`]: many simulated clients doing RFC
//! 8415's four-message exchange (SOLICIT -> ADVERTISE, REQUEST -> REPLY, §18.2.1 and §18.2.2)
//! over one interface, with AF_PACKET and batched syscalls, one thread per core.
//!
//! Each client looks on the wire like a guest's DHCPv6 client: its own MAC, its EUI-64
//! link-local source address, a DUID-LL made of its MAC (RFC 8415 §11.4), one IA_NA, an
//! elapsed time and an option request for DNS servers (23) and the domain search list (24),
//! sent to ff02::1:2 with hop limit 1. IPv6 makes the UDP checksum mandatory (RFC 8200 §8.1):
//! every frame carries a complete one. A reply counts only when it is the right one: the
//! client's transaction id, the client's own DUID echoed, no error status, and an IA_NA that
//! holds an address. Each simulated client keeps at most one transaction in flight.

use std::{
    collections::VecDeque,
    net::Ipv6Addr,
    ops::Range,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::loadgen::{self, BATCH, FRAME, LoadConfig, LoadResult, Mmsg};

/// DHCPv6 message types (RFC 8415 §7.3).
pub const SOLICIT: u8 = 1;
pub const ADVERTISE: u8 = 2;
pub const REQUEST: u8 = 3;
pub const REPLY: u8 = 7;

/// Option codes (RFC 8415 §21, RFC 3646 for 23 and 24).
const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_ORO: u16 = 6;
const OPT_ELAPSED_TIME: u16 = 8;
const OPT_STATUS_CODE: u16 = 13;
const OPT_DNS_SERVERS: u16 = 23;
const OPT_DOMAIN_LIST: u16 = 24;

const CLIENT_PORT: u16 = 546;
const SERVER_PORT: u16 = 547;

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1), and its MAC (RFC 2464 §7).
pub const ALL_DHCP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const ALL_DHCP_MAC: [u8; 6] = [0x33, 0x33, 0, 1, 0, 2];

/// The IAID of the one IA_NA each client asks for (a guest derives it from its interface).
const IAID: [u8; 4] = [0, 0, 0, 1];

/// Ethernet, IPv6 and UDP headers before the DHCPv6 message.
const HEADERS: usize = 14 + 40 + 8;

/// A DUID-LL (RFC 8415 §11.4): type 3, hardware type 1 (Ethernet), the MAC.
pub fn duid_ll(mac: [u8; 6]) -> [u8; 10] {
    let mut d = [0, 3, 0, 1, 0, 0, 0, 0, 0, 0];
    d[4..].copy_from_slice(&mac);
    d
}

/// The EUI-64 link-local address of `mac` (RFC 4291 appendix A), as the programs derive it.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from(agent_common::eui64_link_local(mac))
}

/// The address reserved for client `i` in fd00:20::/64 (the IPv4 generator's 10.20.x.y twin).
pub fn client_ip6(i: usize) -> Ipv6Addr {
    let n = 10 + i as u32;
    Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, (n >> 16) as u16, n as u16)
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// A client message from `mac`, as a frame ready to send: a SOLICIT (no server, no address) or
/// a REQUEST naming the server's DUID and the address it offered (RFC 8415 §18.2.2).
pub fn frame(
    mac: [u8; 6],
    msg_type: u8,
    xid: u32,
    server_id: Option<&[u8]>,
    addr: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut d = Vec::with_capacity(128);
    d.push(msg_type);
    d.extend_from_slice(&xid.to_be_bytes()[1..]);
    option(&mut d, OPT_CLIENTID, &duid_ll(mac));
    if let Some(s) = server_id {
        option(&mut d, OPT_SERVERID, s);
    }
    // T1 and T2 zero: the server's choice (RFC 8415 §21.4); in a REQUEST, the address offered,
    // lifetimes zero (§21.6: the client's preferences, which it has none of).
    let mut ia = Vec::with_capacity(12 + 28);
    ia.extend_from_slice(&IAID);
    ia.extend_from_slice(&[0; 8]);
    if let Some(a) = addr {
        let mut v = a.to_vec();
        v.extend_from_slice(&[0; 8]);
        option(&mut ia, OPT_IAADDR, &v);
    }
    option(&mut d, OPT_IA_NA, &ia);
    option(&mut d, OPT_ELAPSED_TIME, &[0, 0]);
    let mut oro = Vec::with_capacity(4);
    oro.extend_from_slice(&OPT_DNS_SERVERS.to_be_bytes());
    oro.extend_from_slice(&OPT_DOMAIN_LIST.to_be_bytes());
    option(&mut d, OPT_ORO, &oro);

    let udp_len = 8 + d.len();
    let mut f = Vec::with_capacity(14 + 40 + udp_len);
    f.extend_from_slice(&ALL_DHCP_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[17, 1]);
    f.extend_from_slice(&link_local(mac).octets());
    f.extend_from_slice(&ALL_DHCP.octets());
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&d);
    finish(&mut f);
    f
}

/// Sets the transaction id of a frame built by [`frame`] and completes its checksum again.
pub fn set_xid(f: &mut [u8], xid: u32) {
    f[HEADERS + 1..HEADERS + 4].copy_from_slice(&xid.to_be_bytes()[1..]);
    finish(f);
}

/// Fills in the UDP checksum of an IPv6 frame without extension headers (RFC 8200 §8.1).
fn finish(f: &mut [u8]) {
    f[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
    let udp = &f[14 + 40..];
    let mut sum: u32 = 17 + udp.len() as u32;
    // Source and destination addresses, then the UDP header and payload.
    for w in f[14 + 8..14 + 40].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    for w in udp.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    f[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&c.to_be_bytes());
}

/// What the generator reads from a server's message.
pub struct Seen6 {
    pub xid: u32,
    pub msg_type: u8,
    /// The Client Identifier echoed, as a range of the frame.
    pub client_id: Option<Range<usize>>,
    /// The Server Identifier, as a range of the frame (a REQUEST must name it).
    pub server_id: Option<Range<usize>>,
    /// The address of the IA_NA, when the message holds one with no error status.
    pub addr: Option<[u8; 16]>,
}

fn options(b: &[u8], base: usize) -> impl Iterator<Item = (u16, Range<usize>)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let h = b.get(i..i + 4)?;
        let code = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let start = i + 4;
        b.get(start..start + len)?;
        i = start + len;
        Some((code, base + start..base + start + len))
    })
}

fn status_ok(v: &[u8]) -> bool {
    v.len() >= 2 && v[..2] == [0, 0]
}

/// Reads a server's message to a client (UDP port 546) leniently about checksums, like the
/// IPv4 generator: a reply from a socket-based server crosses the veth with checksum offload
/// and a packet socket sees it unfinished.
pub fn parse(f: &[u8]) -> Option<Seen6> {
    if f.len() < HEADERS + 4 || f[12..14] != [0x86, 0xdd] || f[14 + 6] != 17 {
        return None;
    }
    if f[14 + 40 + 2..14 + 40 + 4] != CLIENT_PORT.to_be_bytes() {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([f[14 + 40 + 4], f[14 + 40 + 5]]));
    let end = (14 + 40 + udp_len).min(f.len());
    let m = f.get(HEADERS..end)?;
    if m.len() < 4 {
        return None;
    }
    let mut seen = Seen6 {
        xid: u32::from_be_bytes([0, m[1], m[2], m[3]]),
        msg_type: m[0],
        client_id: None,
        server_id: None,
        addr: None,
    };
    let mut ok = true;
    let mut addr = None;
    for (code, r) in options(&m[4..], HEADERS + 4) {
        let v = &f[r.clone()];
        match code {
            OPT_CLIENTID => seen.client_id = Some(r),
            OPT_SERVERID => seen.server_id = Some(r),
            OPT_STATUS_CODE => ok &= status_ok(v),
            OPT_IA_NA if v.len() >= 12 => {
                for (sub, sr) in options(&v[12..], 0) {
                    let sv = &v[12..][sr];
                    match sub {
                        OPT_STATUS_CODE => ok &= status_ok(sv),
                        // An address with a valid lifetime (RFC 8415 §21.6).
                        OPT_IAADDR if sv.len() >= 24 && sv[20..24] != [0; 4] => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(&sv[..16]);
                            addr = Some(a);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if ok {
        seen.addr = addr;
    }
    Some(seen)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Soliciting,
    Requesting,
}

struct Client {
    phase: Phase,
    generation: u8,
    since: Instant,
}

/// Transaction ids are 24 bits (RFC 8415 §8): 2 for the thread, 14 for the client, 8 for the
/// client's generation.
const THREAD_SHIFT: u32 = 22;
const MAX_CLIENTS_PER_THREAD: usize = 1 << 14;

fn xid_of(thread: usize, i: usize, g: u8) -> u32 {
    ((thread as u32) << THREAD_SHIFT) | ((i as u32) << 8) | u32::from(g)
}

fn send_all(fd: &OwnedFd, frames: &mut Vec<Vec<u8>>) -> u64 {
    let mut sent = 0;
    while !frames.is_empty() {
        let n = frames.len().min(BATCH);
        let rc = loadgen::send_batch(fd, &mut frames[..n]);
        if rc <= 0 {
            // ENOBUFS under pressure: drop the rest of this batch (they time out).
            frames.clear();
            break;
        }
        sent += rc as u64;
        frames.drain(..rc as usize);
    }
    sent
}

fn worker(cfg: &LoadConfig, thread: usize, fd: OwnedFd) -> LoadResult {
    if cfg.threads > 1 {
        loadgen::pin_to_cpu(thread % loadgen::num_cpus());
    }
    let macs: Vec<[u8; 6]> = cfg
        .clients
        .iter()
        .enumerate()
        .filter(|(i, _)| i % cfg.threads == thread)
        .map(|(_, m)| *m)
        .collect();
    assert!(
        macs.len() <= MAX_CLIENTS_PER_THREAD && thread < 4,
        "transaction ids hold 4 threads of 16384 clients"
    );
    let duids: Vec<[u8; 10]> = macs.iter().map(|m| duid_ll(*m)).collect();
    let mut solicits: Vec<Vec<u8>> = macs
        .iter()
        .map(|m| frame(*m, SOLICIT, 0, None, None))
        .collect();
    let now = Instant::now();
    let mut clients: Vec<Client> = macs
        .iter()
        .map(|_| Client {
            phase: Phase::Idle,
            generation: 0,
            since: now,
        })
        .collect();
    let mut idle: VecDeque<usize> = (0..macs.len()).collect();
    let mut inflight = 0usize;
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(BATCH * 2);
    let mut res = LoadResult::default();
    let mut bufs = vec![[0u8; FRAME]; BATCH];
    let start = Instant::now();
    let mut last_sweep = start;

    while start.elapsed() < cfg.duration {
        while inflight < cfg.window {
            let Some(i) = idle.pop_front() else { break };
            let c = &mut clients[i];
            c.generation = c.generation.wrapping_add(1);
            c.phase = Phase::Soliciting;
            c.since = Instant::now();
            set_xid(&mut solicits[i], xid_of(thread, i, c.generation));
            out.push(solicits[i].clone());
            inflight += 1;
        }
        res.sent += send_all(&fd, &mut out);

        let mut m = Mmsg::new(&mut bufs);
        // SAFETY: the buffers outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                m.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1) };
        }
        for (buf, msg) in bufs.iter().zip(&m.msgs).take(n.max(0) as usize) {
            let f = &buf[..msg.msg_len as usize];
            let Some(s) = parse(f) else { continue };
            if s.xid >> THREAD_SHIFT != thread as u32 {
                continue;
            }
            let i = ((s.xid >> 8) & (MAX_CLIENTS_PER_THREAD as u32 - 1)) as usize;
            let Some(c) = clients.get_mut(i) else {
                continue;
            };
            if (s.xid & 0xff) as u8 != c.generation
                || s.client_id.map(|r| &f[r]) != Some(&duids[i][..])
            {
                continue;
            }
            let Some(addr) = s.addr else { continue };
            match (c.phase, s.msg_type) {
                (Phase::Soliciting, ADVERTISE) => {
                    let Some(server) = s.server_id else { continue };
                    res.replies += 1;
                    c.phase = Phase::Requesting;
                    c.since = Instant::now();
                    out.push(frame(
                        macs[i],
                        REQUEST,
                        s.xid,
                        Some(&f[server]),
                        Some(&addr),
                    ));
                }
                (Phase::Requesting, REPLY) => {
                    res.replies += 1;
                    res.doras += 1;
                    c.phase = Phase::Idle;
                    inflight -= 1;
                    idle.push_back(i);
                }
                _ => {}
            }
        }
        res.sent += send_all(&fd, &mut out);

        if last_sweep.elapsed() > Duration::from_millis(20) {
            last_sweep = Instant::now();
            for (i, c) in clients.iter_mut().enumerate() {
                if c.phase != Phase::Idle && c.since.elapsed() > cfg.timeout {
                    c.phase = Phase::Idle;
                    res.timeouts += 1;
                    inflight -= 1;
                    idle.push_back(i);
                }
            }
        }
    }
    res.elapsed = start.elapsed();
    res
}

/// Runs the clients for `cfg.duration` and sums the threads' counts (`doras` counts complete
/// four-message exchanges).
pub fn run(cfg: &LoadConfig) -> LoadResult {
    let fds: Vec<OwnedFd> = (0..cfg.threads)
        .map(|_| loadgen::open_socket(&cfg.netns, &cfg.interface))
        .collect();
    let mut total = LoadResult::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = fds
            .into_iter()
            .enumerate()
            .map(|(t, fd)| s.spawn(move || worker(cfg, t, fd)))
            .collect();
        for h in handles {
            total.add(&h.join().expect("worker"));
        }
    });
    total
}

/// The generator's ceiling: SOLICITs pushed into the interface as fast as it can, with no
/// replies awaited (frames per second).
pub fn blast(cfg: &LoadConfig) -> f64 {
    let frames: Vec<Vec<u8>> = cfg
        .clients
        .iter()
        .map(|m| frame(*m, SOLICIT, 0, None, None))
        .collect();
    let sent = loadgen::flood(
        &cfg.netns,
        &cfg.interface,
        &frames,
        cfg.threads,
        cfg.duration,
    );
    sent as f64 / cfg.duration.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_valid_checksum_and_parse_back() {
        let mac = [0x02, 0xbb, 0, 0, 0, 7];
        let mut f = frame(mac, SOLICIT, 0x12_3456, None, None);
        set_xid(&mut f, 0xab_cdef);
        // The checksum over the pseudo-header and the datagram, checksum included, is zero.
        let mut pseudo = f[22..54].to_vec();
        pseudo.extend_from_slice(&[0, 0, f[58], f[59], 0, 0, 0, 17]);
        pseudo.extend_from_slice(&f[54..]);
        assert_eq!(crate::packet::checksum(&pseudo), 0);
        assert_eq!(&f[22..38], &link_local(mac).octets());
        assert_eq!(
            link_local(mac),
            "fe80::bb:ff:fe00:7".parse::<Ipv6Addr>().expect("addr")
        );
        // A server's answer, built by turning the request around.
        let addr = client_ip6(3).octets();
        let mut reply = frame(mac, REQUEST, 0xab_cdef, Some(&duid_ll([2; 6])), Some(&addr));
        reply[HEADERS] = REPLY;
        reply[14 + 40..14 + 40 + 4].copy_from_slice(&[2, 35, 2, 34]);
        // The IAADDR's valid lifetime, so that it counts.
        let valid = reply.len() - 8 - 6 - 4;
        reply[valid..valid + 4].copy_from_slice(&[0, 0, 0x0e, 0x10]);
        let s = parse(&reply).expect("parses");
        assert_eq!((s.msg_type, s.xid), (REPLY, 0xab_cdef));
        assert_eq!(s.addr, Some(addr));
        assert_eq!(&reply[s.client_id.expect("client id")], &duid_ll(mac));
        assert_eq!(&reply[s.server_id.expect("server id")], &duid_ll([2; 6]));

        // What does not count: an address with no valid lifetime, an error status (here
        // NoAddrsAvail, RFC 8415 §21.13), a message to the server's port.
        let mut expired = reply.clone();
        expired[valid..valid + 4].copy_from_slice(&[0; 4]);
        assert_eq!(parse(&expired).expect("parses").addr, None);
        let mut refused = reply.clone();
        refused.extend_from_slice(&[0, 13, 0, 2, 0, 2]);
        let udp_len = (refused.len() - 14 - 40) as u16;
        refused[18..20].copy_from_slice(&udp_len.to_be_bytes());
        refused[58..60].copy_from_slice(&udp_len.to_be_bytes());
        assert_eq!(parse(&refused).expect("parses").addr, None);
        assert!(parse(&f).is_none(), "a client's own SOLICIT");
    }
}
