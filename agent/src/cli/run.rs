//! `holdfast run`: logging, the allocator's tuning and the runtime, then the daemon.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use crate::{config::Config, daemon};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // netlink-packet-route warns about every attribute newer than itself: noise.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(config: PathBuf) -> anyhow::Result<ExitCode> {
    init_logging();
    let config = Config::load(&config)?;
    // glibc gives a thread that allocates under contention its own arena, up to eight per
    // core, and an arena keeps what is freed in it: a burst of validation on the blocking pool
    // would hold its peak for good. Two arenas keep the footprint near the live data.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("holdfast")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}
