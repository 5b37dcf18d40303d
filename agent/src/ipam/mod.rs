//! IPAM sources: where documents come from. Each source delivers [`Update`]s on a channel; the
//! agent validates and applies them. Sources know nothing of the data plane, of the agent or
//! of its metrics: what they count ([`SourceStats`]) and what they can be asked ([`Resend`])
//! are their own types, which the agent reads and uses.

pub mod etcd;
pub mod file;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use crate::model::RawDocument;

/// The configured source, made before it runs so that the agent and the metrics can hold
/// what it hands out.
pub enum Source {
    File(file::FileSource),
    Etcd(Box<etcd::EtcdSource>),
}

impl Source {
    /// What it counts, for the metrics (a file source counts nothing).
    pub fn stats(&self) -> Arc<SourceStats> {
        match self {
            Source::File(_) => Arc::default(),
            Source::Etcd(s) => s.stats(),
        }
    }

    /// How to ask it for a complete document.
    pub fn resend(&self) -> Resend {
        match self {
            Source::File(s) => s.resend(),
            Source::Etcd(s) => s.resend(),
        }
    }

    /// Where to report address conflicts for IPAM to see (etcd only: a file is read, never
    /// written).
    pub fn conflicts(&mut self) -> Conflicts {
        match self {
            Source::File(_) => Conflicts::default(),
            Source::Etcd(s) => s.conflicts(),
        }
    }

    /// Delivers updates on `tx` until it closes.
    pub async fn run(self, tx: tokio::sync::mpsc::Sender<Update>) {
        match self {
            Source::File(s) => s.run(tx).await,
            Source::Etcd(s) => (*s).run(tx).await,
        }
    }
}

/// What a source reports.
#[derive(Debug)]
pub enum Update {
    /// A complete document (entries not yet validated).
    Document(RawDocument),
    /// The source could be read but its content is not a document; the last good state stays.
    Invalid(DocumentError),
    /// The source cannot be reached or read; the last good state stays.
    Unavailable(SourceError),
    /// The source confirmed that nothing changed: the state serving is IPAM's current one.
    Alive,
    /// Some networks changed: `sub` holds their entries, all their NICs and every node. The
    /// rest of the last document stands.
    Partial {
        networks: BTreeSet<String>,
        sub: RawDocument,
    },
}

/// What a source counts of its own work; the metrics read it.
#[derive(Debug, Default)]
pub struct SourceStats {
    reconnects: AtomicU64,
    watch_events: AtomicU64,
}

impl SourceStats {
    /// Connection attempts after the first (not probes, not a relist on the same connection
    /// after a compaction).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Changes the store's watches delivered (what the store sends this agent).
    pub fn watch_events(&self) -> u64 {
        self.watch_events.load(Ordering::Relaxed)
    }

    fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn watched(&self, events: usize) {
        self.watch_events
            .fetch_add(events as u64, Ordering::Relaxed);
    }
}

/// Asks a source for a complete document again: the agent has nothing to merge a partial
/// change into, or the host's limits changed and everything must be validated again. Requests
/// made while one is pending are one request; waiting for one is cancel-safe.
#[derive(Clone, Debug, Default)]
pub struct Resend(Arc<Notify>);

impl Resend {
    pub fn request(&self) {
        self.0.notify_one();
    }

    async fn requested(&self) {
        self.0.notified().await;
    }
}

/// An address conflict a DHCP client reported (it declined its address, RFC 2131 §4.3.3):
/// IPAM should give the NIC another address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub mac: crate::model::MacAddr,
    /// The address the client declined: the NIC's address when it did.
    pub ip: std::net::Ipv4Addr,
    /// The VM interface it came in on.
    pub interface: String,
    /// When, in Unix seconds.
    pub at: u64,
}

/// Reports address conflicts to the source, which writes them where IPAM can see them. Never
/// waits: a conflict that finds the queue full is dropped (and counted by the caller), the
/// next DECLINE reports it again.
#[derive(Clone, Debug, Default)]
pub struct Conflicts(Option<tokio::sync::mpsc::Sender<Conflict>>);

/// Conflicts queued for the source's writer at most.
pub const CONFLICT_QUEUE: usize = 64;

impl Conflicts {
    /// Whether the source writes conflicts somewhere.
    pub fn reported(&self) -> bool {
        self.0.is_some()
    }

    /// Queues `c` for the source's writer; false when it has none or its queue is full.
    pub fn report(&self, c: Conflict) -> bool {
        self.0.as_ref().is_some_and(|tx| tx.try_send(c).is_ok())
    }

    pub(crate) fn new() -> (Self, tokio::sync::mpsc::Receiver<Conflict>) {
        let (tx, rx) = tokio::sync::mpsc::channel(CONFLICT_QUEUE);
        (Self(Some(tx)), rx)
    }
}

/// Why what a source holds is not a document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The file is not JSON, or not an IPAM document.
    #[error("ipam document {path}: {source}")]
    File {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Why a source cannot be reached or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file or its metadata cannot be read.
    #[error("ipam document {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking task that reads and parses the file failed.
    #[error("reading the ipam document: {0}")]
    Reader(tokio::task::JoinError),
    /// etcd cannot be reached, or the watch on it failed.
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
}
