//! Test support for holdfast: DHCP frames, BPF fixtures, network namespaces, real DHCP clients
//! and agent processes. Every resource a test creates carries the test process's pid in its
//! name (`hft-<pid>-…`) and is removed on drop; `sweep_stale` removes what a killed test left.

pub mod clients;
pub mod etcd;
pub mod guest;
pub mod loadgen;
pub mod loadgen6;
pub mod netns;
pub mod packet;
pub mod rawsock;
pub mod rng;
pub mod tap;
pub mod vpc;
pub mod xdp;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Prefix of every resource a test run creates.
pub const PREFIX: &str = "hft";

/// A name unique to this process and call: `hft-<pid>-<n>`.
pub fn unique(role: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}-{}-{n}-{role}", std::process::id())
}

/// Whether a resource named by `unique` belongs to a process that is gone.
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Removes namespaces, bpffs directories and temp directories left by test processes that
/// were killed before they could clean up.
pub fn sweep_stale() {
    netns::sweep_stale();
    for dir in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str()
                && is_stale(name)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(role: &str) -> Self {
        let p = std::env::temp_dir().join(unique(role));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// A directory on bpffs.
    pub fn bpffs(role: &str) -> Self {
        holdfast::dataplane::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("bpffs");
        Self(PathBuf::from("/sys/fs/bpf").join(unique(role)))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seconds since the Unix epoch: the clock of the agent's timestamp metrics and `ping -D`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Path of a binary built by this workspace (`holdfast`), next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    dir.join(name)
}
