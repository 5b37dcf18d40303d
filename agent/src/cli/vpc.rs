//! `holdfast vpc`: the forwarding state the data plane holds, read from the pinned maps.

use std::{net::Ipv6Addr, path::PathBuf, process::ExitCode};

use agent_common::{FdbEntry, RouteEntry};
use anyhow::Context as _;

use super::ifname;
use crate::{config::Config, dataplane, model::MacAddr};

pub fn print(config: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let s = dataplane::read_vpc(&config.bpffs_dir).with_context(|| {
        format!(
            "reading the pinned VPC maps under {}",
            config.bpffs_dir.display()
        )
    })?;
    let ip = agent_common::ipv4;
    match s.config {
        Some(c) if c.vtep != 0 => println!(
            "VTEP {} on {} (ifindex {})",
            ip(c.vtep),
            ifname(c.underlay_ifindex).unwrap_or_else(|| "?".into()),
            c.underlay_ifindex
        ),
        _ => println!("no underlay: VMs reach only VMs on this host"),
    }
    println!("\nNETWORKS (VNI, gateway, MTU)");
    for (vni, n) in &s.vnis {
        println!("  {vni:>8}  {:<15}  {}", ip(n.gateway), n.mtu);
    }
    println!("\nFORWARDING (VNI, MAC, address, where)");
    for (k, e) in &s.fdb {
        let at = match e.kind {
            FdbEntry::LOCAL => format!(
                "local {} ({})",
                ifname(e.ifindex).unwrap_or_else(|| "?".into()),
                e.ifindex
            ),
            FdbEntry::REMOTE => format!("remote VTEP {}", ip(e.vtep)),
            // Never written by this build: the programs drop what it would forward.
            other => format!("unusable (kind {other})"),
        };
        println!("  {:>8}  {}  {:<15}  {at}", k.vni, MacAddr(k.mac), ip(e.ip));
    }
    println!("\nARP ANSWERS (VNI, address, MAC)");
    for (k, e) in &s.arp {
        println!("  {:>8}  {:<15}  {}", k.vni, ip(k.ip), MacAddr(e.mac));
    }
    println!("\nKNOWN VTEPS");
    for v in &s.vteps {
        println!("  {}", ip(*v));
    }
    print_routing(&config);
    print_ipv6(&config);
    Ok(ExitCode::SUCCESS)
}

/// The routing state: each network's table, the forwarding NICs (gateway VMs), the VTEPs
/// hosting them.
fn print_routing(config: &Config) {
    let s = match dataplane::read_routing(&config.bpffs_dir) {
        Ok(s) => s,
        // Pins of a build before routing: the next agent makes them.
        Err(e) => {
            println!("\nROUTING: not pinned ({e})");
            return;
        }
    };
    let ip = agent_common::ipv4;
    println!("\nROUTES (from VNI, destination, to)");
    for (k, e) in &s.routes {
        let dst = format!("{}/{}", ip(k.addr), k.len);
        let to = match e.kind {
            RouteEntry::SUBNET => format!("subnet of VNI {}", e.vni),
            RouteEntry::GATEWAY => format!("gateway of VNI {} (answers ping)", e.vni),
            RouteEntry::VIA => format!("via {} in VNI {}", ip(e.via), e.vni),
            // Never written by this build: the programs treat it as no route.
            other => format!("unusable (kind {other})"),
        };
        println!("  {:>8}  {dst:<18}  {to}", k.vni);
    }
    println!("\nFORWARDING NICS (VNI, MAC: any address, MAC enforced)");
    for k in &s.forwarding {
        println!("  {:>8}  {}", k.vni, MacAddr(k.mac));
    }
    println!("\nFORWARDER VTEPS (VNI, VTEP: routed frames from outside the VPC accepted)");
    for k in &s.forwarders {
        println!("  {:>8}  {}", k.vni, ip(k.vtep));
    }
}

/// The IPv6 state: the addresses NICs are held to, the neighbour answers, the advertisements.
fn print_ipv6(config: &Config) {
    let s = match dataplane::read_ipv6(&config.bpffs_dir) {
        Ok(s) => s,
        // Pins of a build before IPv6: the next agent makes them.
        Err(e) => {
            println!("\nIPV6: not pinned ({e})");
            return;
        }
    };
    let ip6 = |o: [u8; 16]| Ipv6Addr::from(o).to_string();
    println!("\nIPV6 ADDRESSES (interface, MAC, address, VNI)");
    for (k, b) in &s.bindings6 {
        println!(
            "  {} ({})  {}  {:<39}  {}",
            ifname(k.ifindex).unwrap_or_else(|| "?".into()),
            k.ifindex,
            MacAddr(k.mac),
            ip6(b.ip6),
            b.vni
        );
    }
    println!("\nIPV6 NEIGHBOUR ANSWERS (VNI, address, MAC)");
    for (k, e) in &s.neigh6 {
        let router = if e.router != 0 { "  router" } else { "" };
        println!(
            "  {:>8}  {:<39}  {}{router}",
            k.vni,
            ip6(k.ip6),
            MacAddr(e.mac)
        );
    }
    println!("\nROUTER ADVERTISEMENTS (VNI, bytes)");
    for (vni, ra) in &s.ra6 {
        println!("  {vni:>8}  {}", ra.len);
    }
}
