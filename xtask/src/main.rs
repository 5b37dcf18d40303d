//! `cargo xtask …`: build the eBPF object, run every test, the demo and the benchmarks.
//! Installs what is missing first and prints every command it runs.

mod cmd;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    cmd::{run, step},
    setup::Scope,
};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain when missing and build the XDP programs.
    BuildEbpf,
    /// Run every test: unit, BPF_PROG_TEST_RUN fixtures and namespace integration tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// A hypervisor with three VMs getting DHCP from XDP, narrated.
    Demo,
    /// Benchmarks (not timed tests): figures and ratios against the named peers.
    Bench {
        #[arg(value_enum)]
        which: Bench,
    },
    /// Install what the build, the tests, the demo and the benchmarks need (the other
    /// commands install what they need themselves).
    Setup {
        /// List what is missing, checked by what the build and the tests use; install nothing.
        #[arg(long, conflicts_with = "purge")]
        check: bool,
        /// Remove what set-up installs (its Debian packages, bpf-linker, rust-src, the venv):
        /// the fresh-machine procedure in the README.
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    /// XDP DHCP responder: ns per reply, and replies/s against dnsmasq and Kea.
    Dhcp,
    /// VXLAN forwarding: packets/s and TCP against the kernel's vxlan + bridge, encap/decap ns.
    Vxlan,
    /// IPAM from etcd into the maps: load time, put-to-map latency, memory, at 10k and 100k NICs.
    Sync,
    /// Many agents against one etcd: watch events per agent against a naive design, etcd load.
    Scale,
    /// Live migration: 100 agents, one NIC moved, until every agent's map points at its new VTEP.
    Migrate,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `cargo` with the environment of the outer cargo removed, so the toolchain is chosen afresh.
fn cargo(toolchain: Option<&str>) -> Command {
    let mut c = match toolchain {
        Some(t) => {
            let mut c = Command::new("rustup");
            c.args(["run", t, "cargo"]);
            c
        }
        None => Command::new("cargo"),
    };
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    c.current_dir(root());
    c
}

fn build_ebpf() -> anyhow::Result<()> {
    setup::ensure(Scope::Build)?;
    step("Building the XDP programs (agent-ebpf) for bpfel-unknown-none");
    // Flags for the BPF target come from .cargo/config.toml, as for the agent's build script.
    run(cargo(Some("nightly"))
        .args(["build", "--package", "agent-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"]))?;
    let dir = root().join("target/bpfel-unknown-none/release");
    for name in ["holdfast", "holdfast-pass"] {
        let p = dir.join(name);
        let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        println!("eBPF object: {} ({size} bytes)", p.display());
    }
    println!(
        "The agent embeds its own copy, rebuilt by its build script whenever the programs \
         change: a plain `cargo build` never embeds a stale object."
    );
    Ok(())
}

fn test(filter: Option<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    let venv = setup::ensure(Scope::Test)?.unwrap_or_else(setup::venv);

    step("Formatting and lints");
    run(cargo(Some("nightly")).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(None).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The programs are no default member: clippy checks them as they are built.
    run(cargo(Some("nightly"))
        .args(["clippy", "--package", "agent-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))?;

    step("Building the agent with the next map layout: the upgrade test's second build");
    run(cargo(None).args([
        "build",
        "-p",
        "holdfast",
        "--bin",
        "holdfast",
        "--features",
        "layout-next",
    ]))?;
    let debug = root().join("target/debug");
    std::fs::copy(debug.join("holdfast"), debug.join("holdfast-layout-next"))
        .context("copying the layout-next build")?;

    step("Building (the agent's build script builds and embeds the XDP programs)");
    run(cargo(None).args(["build", "--bins"]))?;

    step("Unit tests, BPF_PROG_TEST_RUN fixtures, namespace tests with real DHCP clients");
    let mut c = cargo(None);
    c.arg("test").env("HOLDFAST_VENV", &venv);
    c.arg("--").args(["--test-threads", "4"]);
    if let Some(f) = filter {
        c.arg(f);
    }
    run(&mut c)?;
    println!("\nall tests passed in {:.0?}", started.elapsed());
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    setup::ensure(Scope::Test)?;
    step("Building holdfast and the demo");
    run(cargo(None).args(["build", "--bins"]))?;
    run(&mut Command::new(root().join("target/debug/holdfast-demo")))
}

fn bench(which: Bench) -> anyhow::Result<()> {
    setup::ensure(Scope::Bench)?;
    step("Building in release mode");
    run(cargo(None).args(["build", "--release", "--bins"]))?;
    let name = match which {
        Bench::Dhcp => "dhcp",
        Bench::Vxlan => "vxlan",
        Bench::Sync => "sync",
        Bench::Scale => "scale",
        Bench::Migrate => "migrate",
    };
    run(Command::new(root().join("target/release/holdfast-bench")).arg(name))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::BuildEbpf => build_ebpf(),
        Task::Test { filter } => test(filter),
        Task::Demo => demo(),
        Task::Bench { which } => bench(which),
        Task::Setup { check: true, .. } => setup::check(),
        Task::Setup { purge: true, .. } => setup::purge(),
        Task::Setup { .. } => setup::ensure(Scope::Bench).map(drop),
    };
    match result.context("cargo xtask") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}
