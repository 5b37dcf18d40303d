//! The `holdfast` command line: one file per subcommand. `run` starts the daemon
//! ([`crate::daemon`]); the others read the pinned maps, move IPAM documents into and out of
//! etcd, or check a document, and never change the data plane.

mod check;
mod ipam;
mod leases;
mod run;
mod vpc;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

pub use self::check::check_document;
use crate::{config::DEFAULT_CONFIG, dataplane};

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Statically stable DHCP and VPC data plane for a hypervisor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: load the XDP programs, keep their maps in step with IPAM.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the DHCP bindings the data plane holds (read from the pinned maps).
    Leases {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the VPC forwarding state the data plane holds (read from the pinned maps).
    Vpc {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Attach the no-op XDP program the kernel requires on the VM side of a veth pair (run it in
    /// the VM's namespace). Not needed for taps.
    VethPeer {
        /// The VM-side interface.
        interface: String,
    },
    /// Move the IPAM document into and out of the etcd the config names.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Validate the config and an IPAM document without touching the data plane.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The IPAM document to check (default: the one the config names).
        #[arg(long)]
        ipam: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum IpamCommand {
    /// Validate a document, then make etcd hold exactly it (what differs is written, what is
    /// absent deleted; each NIC's keys in one transaction).
    Import {
        /// The IPAM document (JSON).
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the document etcd holds (JSON, on stdout).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Runs the subcommand `cli` names.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run { config } => run::run(config),
        Command::Leases { config } => leases::print(config),
        Command::Vpc { config } => vpc::print(config),
        Command::Check { config, ipam } => check::check(config, ipam),
        Command::VethPeer { interface } => veth_peer(&interface),
        Command::Ipam { command } => ipam::ipam(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("holdfast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn veth_peer(interface: &str) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime
        .block_on(dataplane::attach_veth_peer(interface))
        .with_context(|| format!("attaching the veth peer program to {interface}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The name of interface `ifindex` in this namespace.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
