//! `holdfast leases`: the DHCP bindings the data plane holds, read from the pinned maps, each
//! with the IPv6 address its NIC is held to (DHCPv6's IA_NA) when it has one.

use std::{collections::BTreeMap, net::Ipv6Addr, path::PathBuf, process::ExitCode};

use agent_common::ipv4;
use anyhow::Context as _;

use super::ifname;
use crate::{config::Config, dataplane, model::MacAddr, render::options};

pub fn print(config: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    let mut bindings = dataplane::read_bindings(&config.bpffs_dir).with_context(|| {
        format!(
            "reading the pinned bindings under {}",
            config.bpffs_dir.display()
        )
    })?;
    bindings.sort_by_key(|(k, _)| (k.ifindex, k.mac));
    // Pins of a build before IPv6 have no BINDINGS6: every NIC shows none.
    let ip6: BTreeMap<_, _> = dataplane::read_ipv6(&config.bpffs_dir)
        .map(|s| {
            s.bindings6
                .into_iter()
                .map(|(k, b)| ((k.ifindex, k.mac), Ipv6Addr::from(b.ip6)))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{:<16} {:>7}  {:<17}  {:<18}  {:<24}  {:<15}  {:>8}  {:>6}  HOSTNAME",
        "INTERFACE", "IFINDEX", "MAC", "ADDRESS", "ADDRESS6", "GATEWAY", "VNI", "LEASE"
    );
    for (key, b) in &bindings {
        let s = options::summarize(b);
        let ip = ipv4(b.ip);
        let prefix = s
            .prefix_len
            .map(|p| format!("{ip}/{p}"))
            .unwrap_or(ip.to_string());
        let address6 = ip6
            .get(&(key.ifindex, key.mac))
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!(
            "{:<16} {:>7}  {:<17}  {:<18}  {:<24}  {:<15}  {:>8}  {:>6}  {}",
            ifname(key.ifindex).unwrap_or_else(|| "?".into()),
            key.ifindex,
            MacAddr(key.mac).to_string(),
            prefix,
            address6,
            ipv4(b.server_id).to_string(),
            b.vni,
            s.lease_time.map(|t| format!("{t}s")).unwrap_or_default(),
            s.hostname.unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
