//! Builds the XDP programs (`agent-ebpf`) with the nightly toolchain for the BPF target and puts
//! the objects in `OUT_DIR`, where `dataplane` embeds them. Cargo reruns this whenever the
//! programs, the shared types or the settings of their build (the workspace manifest with their
//! profile, Cargo.lock, .cargo/config.toml) change, so the agent never embeds a stale object.
//!
//! (aya-build does much the same, but passes rustflags of its own, which override the BPF
//! target's in .cargo/config.toml: there they are in one place for this script and
//! `cargo xtask build-ebpf`.)

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const TARGET: &str = "bpfel-unknown-none";
const OBJECTS: [&str; 2] = ["holdfast", "holdfast-pass"];

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../agent-ebpf");
    let common = manifest.join("../agent-common");
    for dir in [&ebpf, &common] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in ["../.cargo/config.toml", "../Cargo.lock", "../Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", manifest.join(file).display());
    }

    // A clear failure instead of a linker error deep in the nested build.
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !linker_ok {
        bail!(
            "bpf-linker is missing or cannot run: `cargo xtask build-ebpf` installs it \
             (README, Building)"
        );
    }

    let out = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "agent-ebpf",
        "--bins",
    ])
    .args(["--release", "--target", TARGET, "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&ebpf);
    // The outer build's settings must not leak into the nested one: the flags for the BPF
    // target come from .cargo/config.toml.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        bail!("building the eBPF programs failed; the compiler's output is above");
    }
    // Surface the compiler's diagnostics about the programs (they point at a source line),
    // not the progress lines.
    for block in stderr.split("\n\n") {
        if block.starts_with("warning") && block.contains("-->") {
            for line in block.lines() {
                println!("cargo:warning={line}");
            }
        }
    }
    for name in OBJECTS {
        let built = target_dir.join(TARGET).join("release").join(name);
        std::fs::copy(&built, out.join(name))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    Ok(())
}
