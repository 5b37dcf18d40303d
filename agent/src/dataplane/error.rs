//! What goes wrong in the data plane: [`DataplaneError`] stops opening, loading or attaching;
//! [`ReconcileError`] is one item of a reconcile's [`Report`](super::Report), which goes on
//! past it.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{ProgramError, links::LinkError};

use super::Hook;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Its text names the path: the chain (`{:#}`) would say it twice under a prefix.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("loading program {name}: {source}")]
    LoadProgram {
        name: &'static str,
        source: ProgramError,
    },
    #[error("program: {0}")]
    Program(#[from] ProgramError),
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The descriptor of a map, duplicated for batched updates.
    #[error("{map}: {source}")]
    MapFd {
        map: &'static str,
        source: io::Error,
    },
    #[error(
        "pinned map {path} has {found}, this build expects {expected}; \
         the map layout changed without a new LAYOUT_VERSION"
    )]
    Layout {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
}

/// Pins must live on a bpf filesystem to outlive the agent.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem; pins there would not outlive the agent")]
    NotBpffs { path: PathBuf },
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    /// A pin directory another user could write to.
    #[error(
        "{path} is {problem}: another user could unlink the pinned links there and detach the \
         programs; remove it (the agent creates it root's, mode 0700) or fix its owner and mode"
    )]
    Unsafe { path: PathBuf, problem: DirProblem },
    /// A directory above the pin directory another user could write to.
    #[error(
        "{parent}, above {path}, is {problem}: another user could move {path} away and put \
         their own in its place; make {parent} root's and not writable by others"
    )]
    UnsafeParent {
        path: PathBuf,
        parent: PathBuf,
        problem: DirProblem,
    },
}

/// Why a directory is no place for pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("a symbolic link")]
    Symlink,
    #[error("not a directory")]
    NotDirectory,
    #[error("owned by uid {uid}, not root")]
    Owner { uid: u32 },
    #[error("writable by group or others (mode {mode:04o})")]
    Writable { mode: u32 },
}

/// Attaching the veth peer's program through rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("{0}")]
    Request(#[from] rtnetlink::Error),
    #[error("no interface {0}")]
    NoInterface(String),
}

/// One thing a reconcile could not do; the rest of the reconcile goes on.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{map}: write: {source}")]
    Write {
        map: &'static str,
        source: WriteError,
    },
    #[error("{map}: delete: {source}")]
    Delete {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attach {hook:?} to {interface} ({ifindex}): {source}")]
    Attach {
        hook: Hook,
        interface: String,
        ifindex: u32,
        source: DataplaneError,
    },
    #[error("unpin {path}: {source}")]
    Unpin { path: PathBuf, source: io::Error },
    /// Removing the maps of another layout.
    #[error("retiring {path}: {source}")]
    Retire { path: PathBuf, source: io::Error },
    /// Asked to put the VM programs on an interface that is no VM port: refused.
    #[error("refused to attach the VM programs ({ifindex}): {source}")]
    NotVmPort {
        ifindex: u32,
        source: crate::ports::NotVmPort,
    },
}

/// A failed map write: the batch, or one entry where batches are not supported.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Batch(io::Error),
    #[error(transparent)]
    Entry(aya::maps::MapError),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    }
}
