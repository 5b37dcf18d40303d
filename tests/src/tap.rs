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
