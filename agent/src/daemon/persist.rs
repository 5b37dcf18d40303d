//! Persisting each adopted model as the snapshot the next start serves from, off the runtime,
//! and handing back the memory each adoption freed.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::{model::Model, snapshot};

/// Persists each adopted model, atomically, off the runtime. When models come faster than
/// the disk takes them, the ones in between are skipped: the snapshot is always the latest
/// complete state. After each write the writer rests as long as the write took before it
/// takes the next model: a lone change is persisted at once, and a burst of them costs at
/// most half a core and half the disk. (At 100,000 NICs a snapshot is about 10 MiB and an
/// fsync; without the rest one followed another for as long as a burst lasted, taking CPU
/// from the work that serves and the disk from etcd's own fsyncs beside it.)
pub async fn persist(
    mut models: watch::Receiver<Option<Arc<Model>>>,
    state_dir: PathBuf,
    node: String,
) {
    while models.changed().await.is_ok() {
        let Some(model) = models.borrow_and_update().clone() else {
            continue;
        };
        let (dir, node) = (state_dir.clone(), node.clone());
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || snapshot::save(&dir, &node, &model)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot persist the IPAM snapshot"),
            Err(e) => warn!(error = %e, "persisting the IPAM snapshot panicked"),
        }
        tokio::time::sleep(started.elapsed()).await;
    }
}

/// How long after an adoption memory is handed back: a burst of changes is trimmed once.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Hands freed memory back to the system after each burst of adoptions. An adoption frees
/// about as much as it allocated (the previous model, parse buffers, the snapshot's stream),
/// and glibc would otherwise keep the peak resident.
pub async fn trim_memory(adopted: Arc<Notify>) {
    loop {
        adopted.notified().await;
        tokio::time::sleep(TRIM_AFTER).await;
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
            debug!(rss_mib = crate::metrics::resident_mib(), "memory trimmed");
        })
        .await;
    }
}
