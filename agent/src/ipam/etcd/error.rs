//! What can go wrong talking to etcd.

use std::{path::PathBuf, time::Duration};

use crate::model::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No answer within the configured timeout.
    #[error("etcd {endpoints}: {op}: no answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        op: &'static str,
        timeout: Duration,
    },
    /// etcd or the connection to it answered with an error.
    #[error("etcd {endpoints}: {op}: {source}")]
    Etcd {
        endpoints: String,
        op: &'static str,
        source: etcd_client::Error,
    },
    /// A read or a watch at `revision` found it compacted: list again, at the newest revision.
    #[error("etcd {endpoints}: revision {revision} was compacted")]
    Compacted { endpoints: String, revision: i64 },
    /// Other writers kept changing the NIC's record between a read and the write.
    #[error(
        "etcd {endpoints}: NIC {mac} changed under each of {attempts} attempts to write it; \
         not written"
    )]
    Conflict {
        endpoints: String,
        mac: MacAddr,
        attempts: u32,
    },
    /// A listing transaction came back without the reads it asked for one network.
    #[error("etcd {endpoints}: list networks: no answer for network {network:?}")]
    Unanswered { endpoints: String, network: String },
    /// The watch stream failed.
    #[error("etcd {endpoints}: watch: {failure}")]
    Watch {
        endpoints: String,
        failure: WatchFailure,
    },
    /// A TLS or password file could not be read.
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An entry cannot be written at `key`.
    #[error("{key:?}: {error}")]
    Key { key: String, error: KeyError },
}

/// Why the watch stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchFailure {
    /// etcd closed the stream.
    #[error("the stream ended")]
    Ended,
    /// The stream broke.
    #[error(transparent)]
    Stream(etcd_client::Error),
    /// etcd cancelled a watch the agent did not cancel, for another reason than a compaction
    /// (which is [`EtcdError::Compacted`]); `reason` is etcd's.
    #[error("watch cancelled: {reason}")]
    Cancelled { reason: String },
    /// Neither events nor progress reports for this long.
    #[error("no answer for {0:?}")]
    Silent(Duration),
    /// No range to watch.
    #[error("nothing to watch")]
    Empty,
}

/// Why an entry cannot be written at its key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The entry's name (a network's id, a node's name) cannot be part of its key: empty,
    /// `.`, `..` or with a `/`.
    #[error("{name:?} cannot be part of a key")]
    Name { name: String },
    /// The node a NIC names cannot be part of its index key.
    #[error("node {name:?} cannot be part of a key")]
    Node { name: String },
    /// The network a NIC names cannot be part of its index key.
    #[error("network {name:?} cannot be part of a key")]
    Network { name: String },
    /// The entry cannot be written as JSON.
    #[error(transparent)]
    Json(serde_json::Error),
}

impl EtcdError {
    pub(super) fn is_compacted(&self) -> bool {
        matches!(self, EtcdError::Compacted { .. })
    }

    /// This error as [`EtcdError::Compacted`] when it is etcd refusing a read at `revision`
    /// because the revision was compacted; otherwise unchanged.
    ///
    /// etcd answers such a read with `ErrGRPCCompacted`, gRPC code `OUT_OF_RANGE`. Its only
    /// other `OUT_OF_RANGE` answer to a read is a revision in the future, which a read at a
    /// revision etcd reported cannot get; and listing again would be the way out of that too.
    pub(super) fn at_revision(self, revision: i64) -> Self {
        match self {
            EtcdError::Etcd {
                endpoints,
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } if status.code() == tonic::Code::OutOfRange && !too_large(&status) => {
                EtcdError::Compacted {
                    endpoints,
                    revision,
                }
            }
            e => e,
        }
    }

    /// An answer over the gRPC message limit ([`MAX_MESSAGE`](super::store::MAX_MESSAGE)),
    /// which tonic refused to read: ask for less.
    pub(super) fn is_too_large(&self) -> bool {
        match self {
            EtcdError::Etcd {
                source: etcd_client::Error::GRpcStatus(s),
                ..
            }
            | EtcdError::Watch {
                failure: WatchFailure::Stream(etcd_client::Error::GRpcStatus(s)),
                ..
            } => too_large(s),
            _ => false,
        }
    }
}

/// tonic's own answer to a message over its decoding limit (`OUT_OF_RANGE`, like etcd's
/// compacted revision, so told by its wording: it never comes from etcd).
fn too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(status: tonic::Status) -> EtcdError {
        EtcdError::Etcd {
            endpoints: "e".into(),
            op: "list",
            source: etcd_client::Error::GRpcStatus(status),
        }
    }

    #[test]
    fn a_compacted_revision_is_told_by_its_grpc_code_not_its_wording() {
        // etcd's ErrGRPCCompacted.
        let compacted =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert!(matches!(
            etcd(compacted).at_revision(7),
            EtcdError::Compacted { revision: 7, .. }
        ));
        let reworded = tonic::Status::out_of_range("history gone");
        assert!(etcd(reworded).at_revision(7).is_compacted());
        // Another failure that mentions compaction is not one.
        let other = tonic::Status::unavailable("compacted: no leader");
        assert!(!etcd(other).at_revision(7).is_compacted());
    }

    #[test]
    fn a_message_over_the_limit_is_no_compacted_revision() {
        let big = || {
            tonic::Status::out_of_range(
                "Error, decoded message length too large: found 17000000 bytes, the limit is: \
                 16777216 bytes",
            )
        };
        let e = etcd(big()).at_revision(7);
        assert!(e.is_too_large() && !e.is_compacted());
        let watch = EtcdError::Watch {
            endpoints: "e".into(),
            failure: WatchFailure::Stream(etcd_client::Error::GRpcStatus(big())),
        };
        assert!(watch.is_too_large());
        let compacted =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert!(!etcd(compacted).is_too_large());
    }

    #[test]
    fn typed_errors_keep_their_log_lines() {
        let watch = |failure| EtcdError::Watch {
            endpoints: "e".into(),
            failure,
        };
        assert_eq!(
            watch(WatchFailure::Silent(Duration::from_secs(2))).to_string(),
            "etcd e: watch: no answer for 2s"
        );
        assert_eq!(
            watch(WatchFailure::Cancelled {
                reason: "why".into()
            })
            .to_string(),
            "etcd e: watch: watch cancelled: why"
        );
        let key = EtcdError::Key {
            key: "/p/nics/m".into(),
            error: KeyError::Node { name: "a/b".into() },
        };
        assert_eq!(
            key.to_string(),
            r#""/p/nics/m": node "a/b" cannot be part of a key"#
        );
        let unanswered = EtcdError::Unanswered {
            endpoints: "e".into(),
            network: "blue".into(),
        };
        assert_eq!(
            unanswered.to_string(),
            r#"etcd e: list networks: no answer for network "blue""#
        );
    }
}
