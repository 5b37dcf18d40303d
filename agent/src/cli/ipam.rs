//! `holdfast ipam import|export`: move the IPAM document into and out of etcd.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{IpamCommand, check::check_document};
use crate::config::{Config, IpamSource};

pub fn ipam(command: IpamCommand) -> anyhow::Result<ExitCode> {
    let (IpamCommand::Import { config, .. } | IpamCommand::Export { config }) = &command;
    let config = Config::load(config)?;
    if config.ipam.source != IpamSource::Etcd {
        anyhow::bail!("the config's [ipam] source is not etcd");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let mut store = crate::ipam::etcd::Store::connect(&config.ipam).await?;
        match command {
            IpamCommand::Import { file, .. } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("ipam document {}", file.display()))?;
                let limits = crate::model::Limits::default();
                // Validated as no node in particular: every entry on its own merits.
                let v = check_document(&bytes, "", &limits)
                    .with_context(|| format!("ipam document {}", file.display()))?;
                if !v.rejections.is_empty() {
                    for r in &v.rejections {
                        eprintln!("rejected {r}");
                    }
                    eprintln!(
                        "{}: {} entries rejected; nothing imported",
                        file.display(),
                        v.rejections.len()
                    );
                    return Ok(ExitCode::from(2));
                }
                let r = store.import(&v.model).await?;
                println!(
                    "imported {}: {} networks, {} nodes, {} NICs; {} keys written, {} deleted, \
                     in {} transactions (revision {})",
                    file.display(),
                    v.model.networks.len(),
                    v.model.nodes.len(),
                    v.model.nics.len(),
                    r.put,
                    r.deleted,
                    r.transactions,
                    r.revision
                );
                Ok(ExitCode::SUCCESS)
            }
            IpamCommand::Export { .. } => {
                let (doc, skipped) = store.export().await?;
                println!("{}", serde_json::to_string_pretty(&doc)?);
                if skipped > 0 {
                    eprintln!("{skipped} entries are not JSON and were left out");
                    return Ok(ExitCode::from(2));
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
