//! A no-op XDP program for the VM side of a veth pair.
//!
//! The kernel delivers frames sent with XDP_TX on one end of a veth only when the other end
//! runs an XDP program (`veth_xdp_flush` schedules the peer's NAPI only then). A tap needs
//! nothing: this is for VMs or containers connected by veth. `holdfast veth-peer` attaches it.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn holdfast_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
