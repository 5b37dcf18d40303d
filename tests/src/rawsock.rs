//! An AF_PACKET socket on a VM's interface: sends hand-made DHCP requests and collects replies,
//! for tests that need to see every single exchange. The load generator opens its sockets with
//! [`packet_socket`] too.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use crate::{netns::in_netns, packet};

pub struct RawSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;

/// A raw AF_PACKET socket for every protocol, opened inside the namespace at `ns` and bound to
/// `interface` there.
pub fn packet_socket(ns: &Path, interface: &str) -> OwnedFd {
    in_netns(ns, || {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(interface).expect("name");
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {interface}");
        // SAFETY: zeroed sockaddr_ll filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: valid sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    })
}

impl RawSocket {
    /// Opens the socket inside the namespace at `ns`, bound to `interface`.
    pub fn open(ns: &Path, interface: &str) -> Self {
        Self {
            fd: packet_socket(ns, interface),
        }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: sending from a valid buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n as usize,
            frame.len(),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame received (not sent) on the interface, within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_dir(timeout, false)
    }

    /// The next frame the interface sent (`PACKET_OUTGOING`, after the kernel completed what
    /// the device does not offload), within `timeout`.
    pub fn recv_sent(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_dir(timeout, true)
    }

    fn recv_dir(&self, timeout: Duration, outgoing: bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc <= 0 {
                return None;
            }
            // SAFETY: zeroed sockaddr_ll out-parameter.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffer and address out-parameters.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut sll).cast(),
                    &mut len,
                )
            };
            if n <= 0 || (sll.sll_pkttype == libc::PACKET_OUTGOING) != outgoing {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
    }

    /// Sends `req` and waits for the DHCP reply with its xid.
    pub fn exchange(&self, req: &packet::Request, timeout: Duration) -> Option<packet::Reply> {
        self.send(&req.frame());
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let frame = self.recv(left)?;
            if let Ok(r) = packet::parse_reply(&frame)
                && r.xid == req.xid
            {
                return Some(r);
            }
        }
    }
}
