//! etcd as the IPAM store.
//!
//! Keys under the configured prefix `P`; every value is the JSON object of the IPAM document:
//!
//! ```text
//! P/networks/<id>                 a network
//! P/nodes/<name>                  a hypervisor and its VTEP
//! P/nics/<mac>                    a NIC: the canonical record, one per MAC
//! P/by-node/<node>/<mac>          the same NIC, indexed by the node it is on
//! P/by-network/<network>/<mac>    the same NIC, indexed by its network
//! P/conflicts/<mac>               an address conflict an agent reported (written by agents)
//! ```
//!
//! A NIC's three keys are written in one transaction ([`Store::put_nic`], [`Store::import`]). An
//! agent reads and watches only what its node needs: its own NICs (`by-node/<node>/`), the
//! nodes (for their VTEPs), and for each network it has a NIC in, that network's key and its
//! NICs (`by-network/<network>/`). A change in one network wakes only the agents with a NIC in
//! it. `docs/scale.md` has the reasoning and the numbers.
//!
//! The source lists everything at one revision, then watches from the next one, all watches on
//! one gRPC stream. A broken stream resumes each watch from the revision after the last one it
//! saw. When that revision was compacted, the source lists again (after a short jitter, on the
//! same connection) and derives the deletions that happened meanwhile by comparing the two
//! views: it never loops on the same compacted revision. Reconnects back off exponentially with
//! full jitter, capped; while disconnected, a cheap probe ends the wait soon after etcd is back.
//!
//! | file | what |
//! |---|---|
//! | `error.rs` | what can go wrong ([`EtcdError`]) |
//! | `keys.rs` | the key schema above ([`Layout`]) |
//! | `store.rs` | the client ([`Store`]): connect, list, NIC writes |
//! | `import_export.rs` | `holdfast ipam import` and `export` |
//! | `view.rs` | what this node holds of IPAM, and which networks a change touches |
//! | `session.rs` | the watch session: list, watch, follow networks, tell the agent |
//! | `reconnect.rs` | backoff, probes, and the relist guard |
//! | `conflicts.rs` | address conflicts written for the central IPAM |

mod conflicts;
mod error;
mod import_export;
mod keys;
mod reconnect;
mod session;
mod store;
mod view;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use self::{
    error::{EtcdError, KeyError, WatchFailure},
    import_export::ImportReport,
    keys::Layout,
    reconnect::Backoff,
    store::Store,
};
use self::{
    reconnect::{HEALTHY_SESSION, Probe, Woken, wait_to_reconnect},
    session::{Session, Stop},
};
use super::{Conflict, Conflicts, Resend, SourceStats, Update};
use crate::config::IpamConfig;

/// The etcd IPAM source: lists and watches what this node needs, and reconnects when etcd is
/// away.
pub struct EtcdSource {
    config: IpamConfig,
    node: String,
    stats: Arc<SourceStats>,
    resend: Resend,
    /// What the conflict writer reads, once the agent asked where to report conflicts.
    conflicts: Option<mpsc::Receiver<Conflict>>,
}

impl EtcdSource {
    /// The source of `node`'s IPAM in the etcd `config` names.
    pub fn new(config: IpamConfig, node: String) -> Self {
        Self {
            config,
            node,
            stats: Arc::default(),
            resend: Resend::default(),
            conflicts: None,
        }
    }

    /// Where to report address conflicts: written under `P/conflicts/` by a task of their own
    /// (on their own connection), so that a slow etcd never holds the agent or the watch.
    pub fn conflicts(&mut self) -> Conflicts {
        let (handle, rx) = Conflicts::new();
        self.conflicts = Some(rx);
        handle
    }

    /// What it counts, for the metrics.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// How to ask it for a complete document.
    pub fn resend(&self) -> Resend {
        self.resend.clone()
    }

    /// Lists, watches and reconnects until `tx` closes. Never gives up: while etcd is away the
    /// agent keeps serving what it last applied.
    pub async fn run(mut self, tx: mpsc::Sender<Update>) {
        if let Some(rx) = self.conflicts.take() {
            tokio::spawn(conflicts::write(self.config.clone(), self.node.clone(), rx));
        }
        let mut session = Session::new(&self.config, self.node.clone(), self.stats.clone());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut first = true;
        let mut probe = Probe::new(self.config.clone());
        // Whether a probe may end the next wait early: once per outage, re-armed by a
        // connection that got as far as its watch stream. A reconnect that a probe brought
        // and that failed again waits its backoff in full (etcd answers but something else
        // fails: credentials, load).
        let mut may_shortcut = true;
        loop {
            if !first {
                self.stats.reconnected();
            }
            first = false;
            let started = Instant::now();
            session.watching = false;
            let outcome = match Store::connect(&self.config).await {
                Ok(mut store) => session.serve(&mut store, &tx, &self.resend).await,
                Err(e) => Stop::Failed(e),
            };
            let e = match outcome {
                Stop::Closed => return,
                Stop::Failed(e) => e,
            };
            if started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            if session.watching {
                may_shortcut = true;
                probe.reset();
            }
            if e.is_compacted() || e.is_too_large() {
                warn!(
                    error = %e,
                    "the watch broke again soon after the last relist; \
                     listing again after a backoff"
                );
                session.relist_next();
            } else if tx.send(Update::Unavailable(e.into())).await.is_err() {
                return;
            }
            let wait = backoff.next_delay();
            debug!(?wait, "reconnecting to etcd");
            if !may_shortcut {
                tokio::time::sleep(wait).await;
                continue;
            }
            let woken = wait_to_reconnect(wait, !session.watching, &mut probe).await;
            if woken == Woken::Probe {
                info!("etcd answers again; reconnecting");
                may_shortcut = false;
            }
        }
    }
}
