//! `holdfast check`: validate the config and an IPAM document the way `run` would, without
//! touching the data plane.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::{
    anchor,
    config::Config,
    model::{self, Limits},
    ports::VmPorts,
    render::{desired, options::Budget},
};

pub fn check(config: PathBuf, ipam: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config)?;
    for w in config.warnings() {
        println!("warning: {w}");
    }
    let Some(path) = ipam.or(config.ipam.path.clone()) else {
        println!("config ok");
        return Ok(ExitCode::SUCCESS);
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("ipam document {}", path.display()))?;
    // This host's interfaces are not looked at: the VM ports are the configured names, but
    // for the underlay, `lo` and the anchor.
    let limits = Limits {
        underlay_mtu: config.underlay.as_ref().and_then(|u| u.mtu),
        ports: VmPorts::new(
            &config.vm.interfaces,
            config.underlay.as_ref().map(|u| u.interface.as_str()),
            anchor::DEFAULT_NAME,
        ),
        capacity: desired::CAPACITY,
    };
    let v = check_document(&bytes, &config.node, &limits)
        .with_context(|| format!("ipam document {}", path.display()))?;
    for r in &v.rejections {
        println!("rejected {r}");
    }
    println!(
        "{}: {} networks, {} nodes, {} NICs accepted; {} entries rejected",
        path.display(),
        v.model.networks.len(),
        v.model.nodes.len(),
        v.model.nics.len(),
        v.rejections.len()
    );
    Ok(if v.rejections.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Exposed for `holdfast check`: validates a document the way `run` would.
pub fn check_document(
    bytes: &[u8],
    node: &str,
    limits: &Limits,
) -> Result<model::Validated, serde_json::Error> {
    let doc = model::parse_document(bytes)?;
    Ok(model::validate(&doc, None, node, limits, &Budget))
}
