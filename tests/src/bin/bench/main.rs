//! `holdfast-bench <name>`: the benchmarks `cargo xtask bench` runs, one per module: `dhcp`
//! (the XDP responder against dnsmasq and Kea; its DHCPv6 half in `dhcp6`), `vxlan` (VPC
//! forwarding against the kernel's vxlan and bridge), `sync` (IPAM from etcd into the maps),
//! `scale` (many agents against one etcd), `migrate` (a NIC moving between nodes: how long
//! until every agent's map points at its new VTEP).

mod dhcp;
mod dhcp6;
mod migrate;
mod scale;
mod sync;
mod vxlan;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("dhcp") => dhcp::run(),
        Some("vxlan") => vxlan::run(),
        Some("sync") => sync::run(),
        Some("scale") => scale::run(),
        Some("migrate") => migrate::run(),
        other => {
            eprintln!("usage: holdfast-bench dhcp|vxlan|sync|scale|migrate (got {other:?})");
            std::process::exit(2);
        }
    }
}
