//! A DHCP load generator: many simulated clients doing full DORA exchanges over one interface,
//! with AF_PACKET and batched syscalls (sendmmsg/recvmmsg), one thread per core.
//!
//! Requests carry a zero UDP checksum (valid for IPv4: "no checksum"), so building them costs
//! two field patches. Each simulated client keeps at most one transaction in flight.

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{packet::Request, rawsock::packet_socket};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Namespace the clients live in, and their interface.
    pub netns: PathBuf,
    pub interface: String,
    pub clients: Vec<[u8; 6]>,
    /// Transactions in flight per thread.
    pub window: usize,
    pub duration: Duration,
    /// A transaction without a reply for this long is abandoned (counted, client retried).
    pub timeout: Duration,
    pub threads: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadResult {
    pub sent: u64,
    pub replies: u64,
    pub doras: u64,
    pub timeouts: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn replies_per_sec(&self) -> f64 {
        self.replies as f64 / self.elapsed.as_secs_f64()
    }

    pub fn doras_per_sec(&self) -> f64 {
        self.doras as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn add(&mut self, o: &LoadResult) {
        self.sent += o.sent;
        self.replies += o.replies;
        self.doras += o.doras;
        self.timeouts += o.timeouts;
        self.elapsed = self.elapsed.max(o.elapsed);
    }
}

pub(crate) const BATCH: usize = 64;
pub(crate) const FRAME: usize = 2048;

/// A packet socket with room for a burst, that does not see its own transmissions.
pub(crate) fn open_socket(netns: &Path, interface: &str) -> OwnedFd {
    let fd = packet_socket(netns, interface);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let size: i32 = 16 << 20;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                4,
            )
        };
    }
    let one: i32 = 1;
    // SAFETY: an int option (PACKET_IGNORE_OUTGOING = 23).
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            23,
            (&raw const one).cast(),
            4,
        )
    };
    fd
}

/// Frame templates for one client; xid, message type and options are patched in place.
struct Templates {
    discover: Vec<[u8; 342]>,
    request: Vec<[u8; 342]>,
}

/// Offsets in the 342-byte frames built by `frame`.
const XID: usize = 14 + 20 + 8 + 4;
const REQ_SERVER: usize = 14 + 20 + 8 + 240 + 3 + 2;
const REQ_ADDR: usize = REQ_SERVER + 4 + 2;

fn frame(mac: [u8; 6], msg_type: u8) -> [u8; 342] {
    let mut r = Request::new(mac, msg_type);
    r.options = if msg_type == 3 {
        vec![(53, vec![3]), (54, vec![0; 4]), (50, vec![0; 4])]
    } else {
        vec![(53, vec![1])]
    };
    let mut f = r.frame();
    f[40..42].copy_from_slice(&[0, 0]); // UDP checksum: none
    let mut out = [0u8; 342];
    out.copy_from_slice(&f[..342]);
    out
}

fn templates(clients: &[[u8; 6]]) -> Templates {
    Templates {
        discover: clients.iter().map(|m| frame(*m, 1)).collect(),
        request: clients.iter().map(|m| frame(*m, 3)).collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Discovering,
    Requesting,
}

struct Client {
    phase: Phase,
    generation: u8,
    since: Instant,
}

/// The reply fields the generator needs.
pub struct Seen {
    pub xid: u32,
    pub msg_type: u8,
    pub yiaddr: [u8; 4],
    pub server: [u8; 4],
}

/// Reads a server reply leniently: no checksum check (see the benchmark's readiness probe).
pub fn parse(f: &[u8]) -> Option<Seen> {
    if f.len() < 282 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let b = udp + 8;
    if f.len() < b + 240 || f[udp + 2..udp + 4] != [0, 68] || f[b] != 2 {
        return None;
    }
    let xid = u32::from_be_bytes(f[b + 4..b + 8].try_into().ok()?);
    let mut yiaddr = [0u8; 4];
    yiaddr.copy_from_slice(&f[b + 16..b + 20]);
    let mut server = [0u8; 4];
    server.copy_from_slice(&f[14 + 12..14 + 16]);
    let mut msg_type = 0;
    let mut i = b + 240;
    while i + 1 < f.len() {
        match f[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = usize::from(f[i + 1]);
                let v = f.get(i + 2..i + 2 + len)?;
                if code == 53 && len == 1 {
                    msg_type = v[0];
                } else if code == 54 && len == 4 {
                    server.copy_from_slice(v);
                }
                i += 2 + len;
            }
        }
    }
    Some(Seen {
        xid,
        msg_type,
        yiaddr,
        server,
    })
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu set with one CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `sendmmsg`/`recvmmsg` headers, one per buffer. The buffers must outlive it and stay put.
pub(crate) struct Mmsg {
    _iov: Vec<libc::iovec>,
    pub(crate) msgs: Vec<libc::mmsghdr>,
}

impl Mmsg {
    pub(crate) fn new<F: AsMut<[u8]>>(bufs: &mut [F]) -> Self {
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|f| {
                let f = f.as_mut();
                libc::iovec {
                    iov_base: f.as_mut_ptr().cast(),
                    iov_len: f.len(),
                }
            })
            .collect();
        let msgs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: zeroed header, then pointed at one iovec (its heap slot does not move
                // when the Vec does).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self { _iov: iov, msgs }
    }
}

/// One `sendmmsg` of `frames` on `fd`: how many were sent, or a negative error.
pub(crate) fn send_batch<F: AsMut<[u8]>>(fd: &OwnedFd, frames: &mut [F]) -> i32 {
    let mut m = Mmsg::new(frames);
    // SAFETY: the headers and the buffers they point to live across the call.
    unsafe { libc::sendmmsg(fd.as_raw_fd(), m.msgs.as_mut_ptr(), m.msgs.len() as u32, 0) }
}

struct Sender {
    frames: Vec<[u8; 342]>,
}

impl Sender {
    fn flush(&mut self, fd: &OwnedFd) -> u64 {
        let mut sent = 0;
        while !self.frames.is_empty() {
            let n = self.frames.len().min(BATCH);
            let rc = send_batch(fd, &mut self.frames[..n]);
            if rc <= 0 {
                // ENOBUFS under pressure: drop the rest of this batch (they time out).
                self.frames.clear();
                break;
            }
            sent += rc as u64;
            self.frames.drain(..rc as usize);
        }
        sent
    }
}

fn worker(cfg: &LoadConfig, thread: usize, fd: OwnedFd) -> LoadResult {
    if cfg.threads > 1 {
        pin_to_cpu(thread % num_cpus());
    }
    let macs: Vec<[u8; 6]> = cfg
        .clients
        .iter()
        .enumerate()
        .filter(|(i, _)| i % cfg.threads == thread)
        .map(|(_, m)| *m)
        .collect();
    let mut t = templates(&macs);
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
    let mut out = Sender {
        frames: Vec::with_capacity(BATCH * 2),
    };
    let mut res = LoadResult::default();
    let mut bufs = vec![[0u8; FRAME]; BATCH];
    let start = Instant::now();
    let mut last_sweep = start;
    let xid_of = |i: usize, g: u8| ((thread as u32) << 28) | ((i as u32) << 8) | u32::from(g);

    while start.elapsed() < cfg.duration {
        while inflight < cfg.window {
            let Some(i) = idle.pop_front() else { break };
            let c = &mut clients[i];
            c.generation = c.generation.wrapping_add(1);
            c.phase = Phase::Discovering;
            c.since = Instant::now();
            let f = &mut t.discover[i];
            f[XID..XID + 4].copy_from_slice(&xid_of(i, c.generation).to_be_bytes());
            out.frames.push(*f);
            inflight += 1;
        }
        res.sent += out.flush(&fd);

        let mut m = Mmsg::new(&mut bufs);
        // SAFETY: buffers outlive the call.
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
            let Some(s) = parse(&buf[..msg.msg_len as usize]) else {
                continue;
            };
            if s.xid >> 28 != thread as u32 {
                continue;
            }
            let i = ((s.xid >> 8) & 0x000f_ffff) as usize;
            let Some(c) = clients.get_mut(i) else {
                continue;
            };
            if (s.xid & 0xff) as u8 != c.generation {
                continue;
            }
            match (c.phase, s.msg_type) {
                (Phase::Discovering, 2) => {
                    res.replies += 1;
                    c.phase = Phase::Requesting;
                    c.since = Instant::now();
                    let f = &mut t.request[i];
                    f[XID..XID + 4].copy_from_slice(&s.xid.to_be_bytes());
                    f[REQ_SERVER..REQ_SERVER + 4].copy_from_slice(&s.server);
                    f[REQ_ADDR..REQ_ADDR + 4].copy_from_slice(&s.yiaddr);
                    out.frames.push(*f);
                }
                (Phase::Requesting, 5) => {
                    res.replies += 1;
                    res.doras += 1;
                    c.phase = Phase::Idle;
                    inflight -= 1;
                    idle.push_back(i);
                }
                _ => {}
            }
        }
        res.sent += out.flush(&fd);

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

pub(crate) fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the clients for `cfg.duration` and sums the threads' counts.
pub fn run(cfg: &LoadConfig) -> LoadResult {
    let fds: Vec<OwnedFd> = (0..cfg.threads)
        .map(|_| open_socket(&cfg.netns, &cfg.interface))
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

/// The generator's ceiling: DISCOVERs pushed into the interface as fast as it can, with no
/// replies awaited (frames per second).
pub fn blast(cfg: &LoadConfig) -> f64 {
    let frames: Vec<Vec<u8>> = cfg.clients.iter().map(|m| frame(*m, 1).to_vec()).collect();
    let sent = flood(
        &cfg.netns,
        &cfg.interface,
        &frames,
        cfg.threads,
        cfg.duration,
    );
    sent as f64 / cfg.duration.as_secs_f64()
}

/// `n` client MACs, 02:bb:xx:xx:xx:xx.
pub fn client_macs(n: usize) -> Vec<[u8; 6]> {
    (0..n)
        .map(|i| {
            let b = (i as u32).to_be_bytes();
            [0x02, 0xbb, b[0], b[1], b[2], b[3]]
        })
        .collect()
}

/// The address reserved for client `i` in 10.20.0.0/16.
pub fn client_ip(i: usize) -> Ipv4Addr {
    let n = 10 + i as u32;
    Ipv4Addr::new(10, 20, (n >> 8) as u8, n as u8)
}

/// Sends `frames` round and round on `interface` from `threads` threads (one per core) for
/// `duration`; returns how many were sent.
pub fn flood(
    netns: &Path,
    interface: &str,
    frames: &[Vec<u8>],
    threads: usize,
    duration: Duration,
) -> u64 {
    let fds: Vec<OwnedFd> = (0..threads)
        .map(|_| open_socket(netns, interface))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = fds
            .into_iter()
            .enumerate()
            .map(|(t, fd)| {
                s.spawn(move || {
                    pin_to_cpu(t % num_cpus());
                    let mut own: Vec<Vec<u8>> = frames.to_vec();
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while start.elapsed() < duration {
                        let rc = send_batch(&fd, &mut own);
                        if rc > 0 {
                            sent += rc as u64;
                        }
                    }
                    sent
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("flood")).sum()
    })
}
