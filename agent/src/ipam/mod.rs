//! IPAM sources: where documents come from. Each source delivers [`Update`]s on a channel; the
//! agent validates and applies them. Sources know nothing of the data plane.

pub mod etcd;
pub mod file;

use std::{collections::BTreeSet, path::PathBuf};

use crate::model::RawDocument;

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
