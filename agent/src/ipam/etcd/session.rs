//! The watch session: list what this node needs at one revision, watch it from the next on one
//! gRPC stream, follow the networks this node's NICs enter and leave, and tell the agent what
//! changed. A compacted watch lists again on the same connection.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{
    EtcdError, Store, WatchFailure,
    keys::Layout,
    reconnect::RelistGuard,
    store::{ListedNetwork, deadline},
    view::{Range, View},
};
use crate::{
    config::IpamConfig,
    ipam::{Resend, SourceStats, Update},
};

/// Networks read in one transaction when listing: a thousand networks take 32 requests, not
/// 2,000, and etcd spends its CPU on the keys rather than on requests.
const NETWORKS_PER_TXN: usize = 32;
/// Listing transactions in flight at once.
const LOADS_IN_FLIGHT: usize = 4;
/// A compacted watch lists again after a wait uniform in [0, this): enough to spread a fleet's
/// relists after an outage, short enough to leave no agent behind.
const RELIST_JITTER: Duration = Duration::from_secs(1);

/// Why a session ended.
pub(super) enum Stop {
    /// The agent is gone.
    Closed,
    /// Something failed; reconnect after a backoff.
    Failed(EtcdError),
}

impl From<EtcdError> for Stop {
    fn from(e: EtcdError) -> Self {
        Stop::Failed(e)
    }
}

/// One watch on the stream.
#[derive(Debug)]
struct Slot {
    /// The first revision not yet seen.
    next: i64,
    id: Option<i64>,
}

/// The watch session's state, kept across connections: the view survives a reconnect, and the
/// watches resume from where they were.
pub(super) struct Session {
    layout: Layout,
    node: String,
    view: Option<View>,
    slots: BTreeMap<Range, Slot>,
    stats: Arc<SourceStats>,
    /// The agent needs a complete document.
    dirty_all: bool,
    /// The networks whose entries changed since the last update sent.
    dirty_nets: BTreeSet<String>,
    /// In sync with nothing new to send: the agent may want to know.
    alive: bool,
    /// How often the watch stream is asked to prove it is alive and in sync.
    progress_every: Duration,
    /// etcd answered on the watch stream of this connection.
    pub(super) watching: bool,
    relists: RelistGuard,
}

impl Session {
    pub(super) fn new(config: &IpamConfig, node: String, stats: Arc<SourceStats>) -> Self {
        Self {
            layout: Layout::new(&config.prefix),
            node,
            view: None,
            slots: BTreeMap::new(),
            stats,
            dirty_all: false,
            dirty_nets: BTreeSet::new(),
            alive: false,
            progress_every: config.progress_interval(),
            watching: false,
            relists: RelistGuard::default(),
        }
    }

    /// Lists again at the next session. The view stays: the next list is compared with it to
    /// derive the deletions.
    pub(super) fn relist_next(&mut self) {
        self.slots.clear();
    }

    /// Runs sessions on one connection. A compacted watch lists again here after a short
    /// jitter: not a failure, no reconnect, no backoff (unless compactions come back to back).
    pub(super) async fn serve(
        &mut self,
        store: &mut Store,
        tx: &mpsc::Sender<Update>,
        resend: &Resend,
    ) -> Stop {
        loop {
            let stop = match self.list_and_watch(store, tx, resend).await {
                Ok(stop) | Err(stop) => stop,
            };
            match stop {
                // A watch answer over the message limit (a batch of large values): listing
                // takes them in parts, and the watch starts again from the listed revision.
                Stop::Failed(e)
                    if (e.is_compacted() || e.is_too_large())
                        && self.relists.prompt(Instant::now()) =>
                {
                    let wait = RELIST_JITTER.mul_f64(fastrand::f64());
                    if e.is_compacted() {
                        info!(error = %e, ?wait, "watch revision compacted; listing again");
                    } else {
                        info!(error = %e, ?wait, "watch answer over the message limit; listing again");
                    }
                    self.relist_next();
                    tokio::time::sleep(wait).await;
                }
                stop => return stop,
            }
        }
    }

    async fn list_and_watch(
        &mut self,
        store: &mut Store,
        tx: &mpsc::Sender<Update>,
        resend: &Resend,
    ) -> Result<Stop, Stop> {
        if self.slots.is_empty() {
            self.relist(store).await?;
            // The document goes first: the watches start after the listed revision, so nothing
            // is missed while they are made, and making them waits on etcd (two for each
            // network, and the client's stream holds 100 requests: 1,000 networks took up to
            // a second). The agent validates what was listed meanwhile.
            if let Ok(permit) = tx.try_reserve() {
                self.send(permit);
            }
        }
        // All watches on one stream, each from the first revision it has not seen.
        let ranges: Vec<Range> = self.slots.keys().cloned().collect();
        let mut pending: VecDeque<Range> = VecDeque::new();
        let mut stream: Option<WatchStream> = None;
        for range in ranges {
            let options = self.watch_options(&range);
            let (key, _) = range.key(&self.layout, &self.node);
            match &mut stream {
                None => stream = Some(store.watch(key, options).await?),
                Some(s) => send_watch(store, s, key, options).await?,
            }
            pending.push_back(range);
        }
        let Some(mut stream) = stream else {
            return Err(watch_err(store, WatchFailure::Empty));
        };
        let mut by_id: HashMap<i64, Range> = HashMap::new();
        let mut cancelled: BTreeSet<i64> = BTreeSet::new();
        let mut progress = tokio::time::interval(self.progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = store.timeout + self.progress_every;
        let mut heard = Instant::now();
        loop {
            let ready = self.dirty_all || !self.dirty_nets.is_empty() || self.alive;
            tokio::select! {
                biased;
                permit = tx.reserve(), if ready => {
                    let Ok(permit) = permit else { return Ok(Stop::Closed) };
                    self.send(permit);
                }
                () = resend.requested() => {
                    debug!("the agent asks for a complete document");
                    self.dirty_all = true;
                }
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(watch_err(store, WatchFailure::Ended)),
                        Err(e) => return Err(watch_err(store, WatchFailure::Stream(e))),
                    };
                    heard = Instant::now();
                    self.watching = true;
                    self.on_response(store, &mut stream, resp, &mut pending, &mut by_id, &mut cancelled).await?;
                }
                _ = progress.tick() => {
                    if heard.elapsed() > silence {
                        return Err(watch_err(store, WatchFailure::Silent(silence)));
                    }
                    let timeout = store.timeout;
                    deadline(&store.endpoints, "request progress", timeout, stream.request_progress()).await?;
                }
            }
        }
    }

    /// Tells the agent what changed since it was last told.
    fn send(&mut self, permit: mpsc::Permit<'_, Update>) {
        permit.send(self.update());
        self.dirty_all = false;
        self.dirty_nets.clear();
        self.alive = false;
    }

    /// What to tell the agent: the whole document after a list or when it asked, otherwise
    /// the networks that changed; or that etcd is alive and nothing changed.
    fn update(&self) -> Update {
        let Some(view) = &self.view else {
            return Update::Alive;
        };
        if self.dirty_all {
            Update::Document(view.document())
        } else if !self.dirty_nets.is_empty() {
            Update::Partial {
                networks: self.dirty_nets.clone(),
                sub: view.sub_document(&self.dirty_nets, &self.node),
            }
        } else {
            Update::Alive
        }
    }

    fn watch_options(&self, range: &Range) -> WatchOptions {
        let start = self.slots.get(range).map_or(0, |s| s.next);
        let options = WatchOptions::new()
            .with_start_revision(start)
            .with_progress_notify();
        if range.key(&self.layout, &self.node).1 {
            options.with_prefix()
        } else {
            options
        }
    }

    /// Lists everything this node needs at one revision and replaces the view; the keys the
    /// old view had and the new one lacks were deleted meanwhile.
    async fn relist(&mut self, store: &mut Store) -> Result<(), Stop> {
        let started = Instant::now();
        let mut view = View::default();
        let (own, revision) = store.list(&self.layout.by_node(&self.node), 0).await?;
        view.fill(&Range::Own, own).await;
        let (nodes, _) = store.list(&self.layout.nodes(), revision).await?;
        view.fill(&Range::Nodes, nodes).await;
        // Every network's VPC: the other networks of this node's VPCs are followed too.
        let (catalog, _) = store.list(&self.layout.networks(), revision).await?;
        view.fill(&Range::Catalog, catalog).await;
        let mut slots = BTreeMap::new();
        for r in [Range::Own, Range::Nodes, Range::Catalog] {
            slots.insert(
                r,
                Slot {
                    next: revision + 1,
                    id: None,
                },
            );
        }
        let wanted = view.wanted();
        self.load_networks(store, &mut view, &wanted, revision)
            .await?;
        for network in wanted {
            for r in [Range::Network(network.clone()), Range::NetworkNics(network)] {
                slots.insert(
                    r,
                    Slot {
                        next: revision + 1,
                        id: None,
                    },
                );
            }
        }
        if let Some(old) = &self.view {
            let now = view.keys();
            let gone = old.keys().difference(&now).count();
            if gone > 0 {
                info!(
                    deleted = gone,
                    "entries deleted while the watch was away (derived from the new list)"
                );
            }
        }
        info!(
            revision,
            entries = view.len(),
            networks = view.networks.len(),
            elapsed = ?started.elapsed(),
            "IPAM listed from etcd"
        );
        self.view = Some(view);
        self.slots = slots;
        self.dirty_all = true;
        Ok(())
    }

    /// Reads networks and their NICs at `revision` into `view`, several at a time: an agent
    /// with NICs in a thousand networks lists in a fraction of a second, not a thousand round
    /// trips.
    async fn load_networks(
        &self,
        store: &Store,
        view: &mut View,
        networks: &BTreeSet<String>,
        revision: i64,
    ) -> Result<(), Stop> {
        let names: Vec<String> = networks.iter().cloned().collect();
        let chunks: Vec<Vec<String>> = names.chunks(NETWORKS_PER_TXN).map(<[_]>::to_vec).collect();
        let fetch = |chunk: Vec<String>| async move { store.networks_at(&chunk, revision).await };
        let fetched: Vec<Vec<ListedNetwork>> = futures::stream::iter(chunks)
            .map(fetch)
            .buffer_unordered(LOADS_IN_FLIGHT)
            .try_collect()
            .await?;
        for n in fetched.into_iter().flatten() {
            if let Some(json) = n.entry {
                view.set(&Range::Network(n.id.clone()), &n.key, Some(&json));
            }
            view.add_network(&n.id);
            view.fill(&Range::NetworkNics(n.id), n.nics).await;
        }
        Ok(())
    }

    async fn on_response(
        &mut self,
        store: &mut Store,
        stream: &mut WatchStream,
        resp: WatchResponse,
        pending: &mut VecDeque<Range>,
        by_id: &mut HashMap<i64, Range>,
        cancelled: &mut BTreeSet<i64>,
    ) -> Result<(), Stop> {
        let id = resp.watch_id();
        if resp.created()
            && let Some(range) = pending.pop_front()
        {
            if let Some(slot) = self.slots.get_mut(&range) {
                slot.id = Some(id);
            }
            by_id.insert(id, range);
        }
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(Stop::Failed(EtcdError::Compacted {
                    endpoints: store.endpoints.clone(),
                    revision: resp.compact_revision(),
                }));
            }
            if cancelled.remove(&id) {
                return Ok(());
            }
            let reason = resp.cancel_reason().to_owned();
            return Err(watch_err(store, WatchFailure::Cancelled { reason }));
        }
        let Some(range) = by_id.get(&id).cloned() else {
            // A progress report for the whole stream (watch id -1): alive and in sync.
            if !resp.created() && resp.events().is_empty() {
                self.alive = true;
            }
            return Ok(());
        };
        let Some(view) = self.view.as_mut() else {
            return Ok(());
        };
        if resp.events().is_empty() {
            // Per-watch progress: everything up to the header's revision was delivered.
            if !resp.created()
                && let (Some(h), Some(slot)) = (resp.header(), self.slots.get_mut(&range))
            {
                slot.next = slot.next.max(h.revision() + 1);
            }
            self.alive = true;
            return Ok(());
        }
        let mut last = 0;
        self.stats.watched(resp.events().len());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            // The partitions the key belonged to before the change and after it.
            let before = view.affected(&range, &key);
            view.apply(&range, &key, value);
            match (before, view.affected(&range, &key)) {
                (Some(before), Some(after)) => {
                    self.dirty_nets.extend(before);
                    self.dirty_nets.extend(after);
                }
                _ => self.dirty_all = true,
            }
            last = last.max(kv.mod_revision());
        }
        if let Some(slot) = self.slots.get_mut(&range) {
            slot.next = slot.next.max(last + 1);
        }
        if range == Range::Own || range == Range::Catalog {
            self.follow_networks(store, stream, last, pending, cancelled)
                .await?;
        }
        Ok(())
    }

    /// This node's NICs, or the VPCs of networks, changed: watch the networks it now carries
    /// (those it has NICs in and the other networks of their VPCs), and stop watching the ones
    /// it left. A new network is read at the revision of the change that brought it.
    async fn follow_networks(
        &mut self,
        store: &mut Store,
        stream: &mut WatchStream,
        revision: i64,
        pending: &mut VecDeque<Range>,
        cancelled: &mut BTreeSet<i64>,
    ) -> Result<(), Stop> {
        let Some(mut view) = self.view.take() else {
            return Ok(());
        };
        let wanted = view.wanted();
        let have: BTreeSet<String> = self
            .slots
            .keys()
            .filter_map(|r| match r {
                Range::Network(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let mut result = Ok(());
        let new: BTreeSet<String> = wanted.difference(&have).cloned().collect();
        if let Err(e) = self.load_networks(store, &mut view, &new, revision).await {
            self.view = Some(view);
            return Err(e);
        }
        for network in &new {
            for range in [
                Range::Network(network.clone()),
                Range::NetworkNics(network.clone()),
            ] {
                self.slots.insert(
                    range.clone(),
                    Slot {
                        next: revision + 1,
                        id: None,
                    },
                );
                let (key, _) = range.key(&self.layout, &self.node);
                let options = self.watch_options(&range);
                if let Err(e) = send_watch(store, stream, key, options).await {
                    result = Err(Stop::Failed(e));
                    break;
                }
                pending.push_back(range);
            }
            debug!(network, revision, "now following network");
            self.dirty_nets.insert(network.clone());
        }
        for network in have.difference(&wanted) {
            for range in [
                Range::Network(network.clone()),
                Range::NetworkNics(network.clone()),
            ] {
                if let Some(Slot { id: Some(id), .. }) = self.slots.remove(&range) {
                    cancelled.insert(id);
                    let _ = deadline(
                        &store.endpoints,
                        "cancel watch",
                        store.timeout,
                        stream.cancel(id),
                    )
                    .await;
                }
            }
            view.forget_network(network);
            debug!(network, "no longer following network");
            self.dirty_nets.insert(network.clone());
        }
        self.view = Some(view);
        result
    }
}

async fn send_watch(
    store: &Store,
    stream: &mut WatchStream,
    key: String,
    options: WatchOptions,
) -> Result<(), EtcdError> {
    deadline(
        &store.endpoints,
        "watch",
        store.timeout,
        stream.watch(key, Some(options)),
    )
    .await
}

fn watch_err(store: &Store, failure: WatchFailure) -> Stop {
    Stop::Failed(EtcdError::Watch {
        endpoints: store.endpoints.clone(),
        failure,
    })
}
