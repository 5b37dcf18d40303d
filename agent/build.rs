//! Builds the XDP programs (`agent-ebpf`) for the BPF target and puts the object in `OUT_DIR`,
//! where `dataplane::EBPF_OBJECT` embeds it. Runs on every build in which the programs or the
//! shared types changed, so the agent never embeds a stale object.

use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    // A friendlier failure than a linker error deep in the nested build.
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !linker_ok {
        bail!(
            "bpf-linker is missing or cannot run; `cargo xtask build-ebpf` installs it \
             (see README: Building)"
        );
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (agent-ebpf)")
}
