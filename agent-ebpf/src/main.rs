//! holdfast's data plane: XDP programs serving the VMs of one hypervisor from pinned maps.
#![no_std]
#![no_main]

mod arp;
mod csum;
mod dhcp;
mod maps;
mod parse;
mod stats;
mod vm;

use aya_ebpf::{Global, macros::xdp, programs::XdpContext};

/// The virtual router's MAC: source of DHCP replies and ARP answers for gateways. The same on
/// every host so a VM can move. Set by the agent at load time.
#[unsafe(no_mangle)]
static ROUTER_MAC: Global<[u8; 6]> = Global::new([0; 6]);

/// Attached to each VM interface (a tap on a hypervisor).
#[xdp]
pub fn holdfast_vm(ctx: XdpContext) -> u32 {
    vm::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
