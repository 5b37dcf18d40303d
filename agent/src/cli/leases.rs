//! `holdfast leases`: the DHCP bindings the data plane holds, read from the pinned maps.

use std::{path::PathBuf, process::ExitCode};

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
    println!(
        "{:<16} {:>7}  {:<17}  {:<18}  {:<15}  {:>8}  {:>6}  HOSTNAME",
        "INTERFACE", "IFINDEX", "MAC", "ADDRESS", "GATEWAY", "VNI", "LEASE"
    );
    for (key, b) in &bindings {
        let s = options::summarize(b);
        let ip = ipv4(b.ip);
        let prefix = s
            .prefix_len
            .map(|p| format!("{ip}/{p}"))
            .unwrap_or(ip.to_string());
        println!(
            "{:<16} {:>7}  {:<17}  {:<18}  {:<15}  {:>8}  {:>6}  {}",
            ifname(key.ifindex).unwrap_or_else(|| "?".into()),
            key.ifindex,
            MacAddr(key.mac).to_string(),
            prefix,
            ipv4(b.server_id).to_string(),
            b.vni,
            s.lease_time.map(|t| format!("{t}s")).unwrap_or_default(),
            s.hostname.unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
