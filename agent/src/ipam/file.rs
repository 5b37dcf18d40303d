//! The embedded default source: a JSON document in a local file, reloaded when it changes.
//!
//! The file is polled (metadata first, contents only on change), which works the same for
//! in-place edits, atomic renames and ConfigMap symlink swaps.

use std::{os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tracing::debug;

use super::{DocumentError, Resend, SourceError, Update};
use crate::model::parse_document;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    resend: Resend,
}

impl FileSource {
    /// The document at `path`, looked at every `interval`.
    pub fn new(path: PathBuf, interval: Duration) -> Self {
        Self {
            path,
            interval,
            resend: Resend::default(),
        }
    }

    /// How to ask it for the document again, changed or not.
    pub fn resend(&self) -> Resend {
        self.resend.clone()
    }

    /// Polls the file until `tx` is closed. Every read goes through tokio's blocking pool and
    /// JSON parsing runs on it too, so a huge document never stalls the runtime.
    pub async fn run(self, tx: mpsc::Sender<Update>) {
        let mut last: Option<Stamp> = None;
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                () = self.resend.requested() => true,
            };
            let update = match tokio::fs::metadata(&self.path).await {
                Ok(meta) => {
                    let stamp = Stamp {
                        dev: meta.dev(),
                        ino: meta.ino(),
                        len: meta.len(),
                        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000
                            + i128::from(meta.mtime_nsec()),
                        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000
                            + i128::from(meta.ctime_nsec()),
                    };
                    if !asked && last.as_ref() == Some(&stamp) && last_error.is_none() {
                        continue;
                    }
                    debug!(path = %self.path.display(), "IPAM file changed; reading");
                    last = Some(stamp);
                    self.read().await
                }
                Err(source) => {
                    last = None;
                    Update::Unavailable(SourceError::File {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            // Report an error once, not at every poll: an error that reads as the last one
            // is the same error.
            let error = match &update {
                Update::Document(_) | Update::Partial { .. } | Update::Alive => None,
                Update::Invalid(e) => Some(e.to_string()),
                Update::Unavailable(e) => Some(e.to_string()),
            };
            if error.is_some() && error == last_error {
                continue;
            }
            last_error = error;
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }

    async fn read(&self) -> Update {
        let path = self.path.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(source) => return Update::Unavailable(SourceError::File { path, source }),
            };
            match parse_document(&bytes) {
                Ok(doc) => Update::Document(doc),
                Err(source) => Update::Invalid(DocumentError::File { path, source }),
            }
        })
        .await;
        parsed.unwrap_or_else(|e| Update::Unavailable(SourceError::Reader(e)))
    }
}
