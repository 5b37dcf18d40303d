//! A no-op XDP program for the VM side of a veth pair.
//!
//! The kernel delivers frames sent with XDP_TX on one end of a veth only when the other end
//! runs an XDP program (`veth_xdp_flush` schedules the peer's NAPI only then). A tap needs
//! nothing: this is for VMs or containers connected by veth. `holdfast veth-peer` attaches it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};

/// Frags-aware, so that a GSO super-frame delivered into the veth is passed, not dropped.
#[xdp(frags)]
pub fn holdfast_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Frames the benchmark sinks counted.
#[map]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn sunk() {
    if let Some(n) = SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
}

/// Benchmark sink on a VM's interface where frames arrive as XDP frames: counts and drops, so
/// the figure is the data plane's, not the receiving namespace's stack (a guest's stack runs
/// on its own vCPUs on a hypervisor).
#[xdp(frags)]
pub fn holdfast_sink(_ctx: XdpContext) -> u32 {
    sunk();
    xdp_action::XDP_DROP
}

/// The same sink where frames arrive as skbs (the kernel's bridge delivers skbs).
#[classifier]
pub fn holdfast_sink_tc(_ctx: TcContext) -> i32 {
    sunk();
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
