//! What can go wrong talking to etcd.

use std::{path::PathBuf, time::Duration};

use crate::model::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {endpoints}: {op}: no answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        op: &'static str,
        timeout: Duration,
    },
    #[error("etcd {endpoints}: {op}: {source}")]
    Etcd {
        endpoints: String,
        op: &'static str,
        source: etcd_client::Error,
    },
    #[error("etcd {endpoints}: revision {revision} was compacted")]
    Compacted { endpoints: String, revision: i64 },
    #[error(
        "etcd {endpoints}: NIC {mac} changed under each of {attempts} attempts to write it; \
         not written"
    )]
    Conflict {
        endpoints: String,
        mac: MacAddr,
        attempts: u32,
    },
    #[error("etcd {endpoints}: watch: {message}")]
    Watch { endpoints: String, message: String },
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key:?}: {message}")]
    Key { key: String, message: String },
}

impl EtcdError {
    pub(super) fn is_compacted(&self) -> bool {
        matches!(self, EtcdError::Compacted { .. })
    }
}
