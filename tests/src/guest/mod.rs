//! Real guests, for the DHCP clients that clouds actually boot: a VM under QEMU on a real tap
//! ([`qemu`]), booting from Debian's cloud kernel and a small busybox initramfs or from the
//! network, with its images made once and cached ([`images`], [`cpio`]); systemd-networkd
//! ([`networkd`]) and NetworkManager ([`nm`]) in a VM's namespace; a TFTP server for network
//! boot ([`tftp`]).

pub mod cpio;
pub mod images;
pub mod networkd;
pub mod nm;
pub mod qemu;
pub mod tftp;
