//! `holdfast vpc`: the forwarding state the data plane holds, read from the pinned maps.

use std::{path::PathBuf, process::ExitCode};

use agent_common::FdbEntry;
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
    Ok(ExitCode::SUCCESS)
}
