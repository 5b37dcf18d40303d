//! A VM on a real tap, the way a hypervisor runs one: the VM namespace's `eth0` is itself a
//! tap with TSO offload on, so its kernel hands whole 64 KiB GSO super-frames (with a
//! virtio-net header) to userspace, and a relay writes them, header included, into the
//! hypervisor's tap, as vhost or QEMU would. Frames the hypervisor sends to the tap go back the
//! same way.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::netns::{Netns, in_netns, mac_str};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens tap `name` in the namespace at `ns`, with a virtio-net header and the given offloads.
fn open_tap(ns: &std::path::Path, name: &str, offloads: libc::c_ulong) -> OwnedFd {
    in_netns(ns, || {
        let path = CString::new("/dev/net/tun").expect("path");
        // SAFETY: open(2) on a NUL-terminated path.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            raw >= 0,
            "/dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF with a valid ifreq.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
        assert_eq!(
            rc,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads) };
        assert_eq!(rc, 0, "TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
        fd
    })
}

/// Copies frames from `from` to `to` until `stop`.
fn relay(from: Arc<OwnedFd>, to: Arc<OwnedFd>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            // SAFETY: writing what was read; a failed write is a dropped frame, as on a wire.
            unsafe { libc::write(to.as_raw_fd(), buf.as_ptr().cast(), n as usize) };
        }
    })
}

/// A VM whose NIC is a tap on the hypervisor.
pub struct TapVm {
    pub ns: Netns,
    pub mac: [u8; 6],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _fds: (Arc<OwnedFd>, Arc<OwnedFd>),
}

impl TapVm {
    pub fn new(hv: &Netns, tap: &str, mac: [u8; 6]) -> Self {
        let ns = Netns::new("tapvm");
        // The hypervisor's tap: it may hand the relay GSO frames and partial checksums too.
        let host = Arc::new(open_tap(
            &hv.path(),
            tap,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        ));
        // The VM's NIC: TSO on, so its kernel sends 64 KiB segments like a virtio guest.
        let guest = Arc::new(open_tap(
            &ns.path(),
            "eth0",
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        ));
        ns.ip(&["link", "set", "eth0", "address", &mac_str(mac)]);
        ns.ip(&["link", "set", "eth0", "up"]);
        hv.ip(&["link", "set", tap, "up"]);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            relay(guest.clone(), host.clone(), stop.clone()),
            relay(host.clone(), guest.clone(), stop.clone()),
        ];
        Self {
            ns,
            mac,
            stop,
            threads,
            _fds: (host, guest),
        }
    }
}

impl Drop for TapVm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The virtio-net header a tap carries in front of each frame (`struct virtio_net_hdr`, the
/// tap's default 10 bytes, little-endian fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
    pub const NEEDS_CSUM: u8 = 1;

    fn bytes(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }
}

/// The hypervisor's end of a tap as a guest's virtio-net device sees it: frames written with
/// the virtio-net header a guest chooses (hostile ones included), frames read with the header
/// the host gives them.
pub struct RawTap {
    fd: OwnedFd,
}

impl RawTap {
    /// Tap `name` in `hv`, up; `csum`: the guest takes partial checksums (`TUN_F_CSUM`), else
    /// the host completes them before the tap.
    pub fn open(hv: &Netns, name: &str, csum: bool) -> Self {
        let fd = open_tap(&hv.path(), name, if csum { TUN_F_CSUM } else { 0 });
        hv.ip(&["link", "set", name, "up"]);
        Self { fd }
    }

    /// Writes `frame` as the guest, with header `hdr`: the kernel's verdict on the header
    /// (`EINVAL` for one it refuses) is returned.
    pub fn send(&self, hdr: &VnetHdr, frame: &[u8]) -> std::io::Result<()> {
        let mut buf = hdr.bytes().to_vec();
        buf.extend_from_slice(frame);
        // SAFETY: writing from a valid buffer.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame the host sends the guest, with its header, within `timeout`.
    pub fn recv(&self, timeout: std::time::Duration) -> Option<(VnetHdr, Vec<u8>)> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().max(1) as i32) } <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 70_000];
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 10 {
            return None;
        }
        Some((VnetHdr::parse(&buf[..10]), buf[10..n as usize].to_vec()))
    }
}
