//! holdfast's data plane: XDP and TC programs serving the VMs of one hypervisor from pinned
//! maps.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys go by reference: by value, LLVM lays the BPF stack out differently, and \
              the programs are kept as verified"
)]

mod arp;
mod csum;
mod ctx;
mod dhcp;
mod dhcp6;
mod icmp;
mod ip6;
mod l4csum;
mod maps;
mod parse;
mod port;
mod ratelimit;
mod route;
mod stats;
mod underlay;
mod vm;
mod vxlan;

use aya_ebpf::{
    Global,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// The virtual router's MAC: source of DHCP replies and ARP answers for gateways. The same on
/// every host so a VM can move. Set by the agent at load time.
#[unsafe(no_mangle)]
static ROUTER_MAC: Global<[u8; 6]> = Global::new([0; 6]);

/// xdp mode, on each VM interface (a tap on a hypervisor): DHCP, ARP, anti-spoofing,
/// forwarding. Frags-aware so that a jumbo or GSO frame reaches it (and goes to the skb path)
/// instead of being dropped by the driver.
#[xdp(frags)]
pub fn holdfast_vm(ctx: XdpContext) -> u32 {
    vm::handle::<_, true>(&ctx)
}

/// xdp mode, TC ingress on each VM interface: the skb path for what XDP hands over.
#[classifier]
pub fn holdfast_tc(ctx: TcContext) -> i32 {
    vm::handle::<_, false>(&ctx) as i32
}

/// tc mode, TC ingress on each VM interface, with no XDP program there: the same as
/// `holdfast_vm` and `holdfast_tc` together, on the skb.
#[classifier]
pub fn holdfast_vm_tc(ctx: TcContext) -> i32 {
    vm::handle::<_, true>(&ctx) as i32
}

/// Attached to the underlay interface: VXLAN to this VTEP is decapsulated into local VMs.
#[xdp(frags)]
pub fn holdfast_ul(ctx: XdpContext) -> u32 {
    underlay::handle(&ctx)
}

/// TC ingress on the underlay: decapsulated TCP, aggregated by GRO, into its VM. With
/// `[underlay] hook = "tc"`, also single frames decapsulated here into their VM (GRO's
/// aggregates, and whatever a check refuses, go on to the kernel's VXLAN device).
#[classifier]
pub fn holdfast_ul_tc(ctx: TcContext) -> i32 {
    underlay::tc_handle(&ctx)
}

/// `[underlay] hook = "tc"`: TC ingress on holdfast's VXLAN device in metadata mode, which
/// the kernel decapsulates into: who sent it checked, then into its VM. For underlays where
/// XDP is not native (a veth, a VLAN or bond device, a driver without XDP), where it would
/// copy or segment every aggregate the kernel's own data path keeps whole.
#[classifier]
pub fn holdfast_ul_md(ctx: TcContext) -> i32 {
    underlay::md_handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
