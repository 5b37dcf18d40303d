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

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use futures::{StreamExt as _, TryStreamExt as _};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::Update;
use crate::{
    config::IpamConfig,
    model::{MacAddr, Model, RawDocument, RawEntry},
};

/// Keys per page when listing: bounded responses whatever the size of the cloud.
const PAGE: i64 = 2_000;
/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 120;
/// Networks read in one transaction when listing: a thousand networks take 32 requests, not
/// 2,000, and etcd spends its CPU on the keys rather than on requests.
const NETWORKS_PER_TXN: usize = 32;
/// NICs of one network read in that transaction (at most 32 × 250 keys, well under gRPC's
/// 4 MiB message limit); a bigger network is read on by pages.
const NICS_PER_TXN: i64 = 250;
/// Listing transactions in flight at once.
const LOADS_IN_FLIGHT: usize = 4;
/// Listed entries stored into the view between two yields to the runtime.
const FILL_SLICE: usize = 1_000;
/// A session that lasted this long resets the reconnect backoff. A compaction found sooner than
/// this after the last prompt relist waits a backoff instead.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// A compacted watch lists again after a wait uniform in [0, this): enough to spread a fleet's
/// relists after an outage, short enough to leave no agent behind.
const RELIST_JITTER: Duration = Duration::from_secs(1);
/// While disconnected, etcd is probed at intervals uniform in [1/2, 3/2] of this.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe's deadline (the call timeout when that is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Once a probe finds etcd back, the agent reconnects after a wait uniform in [0, this): a
/// fleet that lost etcd together does not come back in the same instant.
const RECONNECT_JITTER: Duration = Duration::from_secs(2);
/// Attempts at writing one NIC whose record other writers keep changing.
const NIC_WRITE_ATTEMPTS: u32 = 10;

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
    fn is_compacted(&self) -> bool {
        matches!(self, EtcdError::Compacted { .. })
    }
}

/// A listed key and its value.
fn key_value(kv: etcd_client::KeyValue) -> (String, Vec<u8>) {
    let (k, v) = kv.into_key_value();
    (String::from_utf8_lossy(&k).into_owned(), v)
}

/// A network as listed: its entry and its NICs' index keys.
struct ListedNetwork {
    id: String,
    key: String,
    entry: Option<Vec<u8>>,
    nics: Vec<(String, Vec<u8>)>,
}

/// Where each kind of entry lives.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn networks(&self) -> String {
        format!("{}/networks/", self.prefix)
    }

    pub fn network(&self, id: &str) -> String {
        format!("{}{id}", self.networks())
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    pub fn nics(&self) -> String {
        format!("{}/nics/", self.prefix)
    }

    pub fn nic(&self, mac: MacAddr) -> String {
        format!("{}{mac}", self.nics())
    }

    pub fn by_nodes(&self) -> String {
        format!("{}/by-node/", self.prefix)
    }

    pub fn by_node(&self, node: &str) -> String {
        format!("{}{node}/", self.by_nodes())
    }

    pub fn by_networks(&self) -> String {
        format!("{}/by-network/", self.prefix)
    }

    pub fn by_network(&self, network: &str) -> String {
        format!("{}{network}/", self.by_networks())
    }

    /// A NIC's key in its node's index.
    fn node_nic(&self, node: &str, mac: MacAddr) -> String {
        format!("{}{mac}", self.by_node(node))
    }

    /// A NIC's key in its network's index.
    fn network_nic(&self, network: &str, mac: MacAddr) -> String {
        format!("{}{mac}", self.by_network(network))
    }

    /// The keys holding one NIC.
    fn nic_keys(&self, mac: MacAddr, node: &str, network: &str) -> [String; 3] {
        [
            self.nic(mac),
            self.node_nic(node, mac),
            self.network_nic(network, mac),
        ]
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's `--prefix`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A name that can sit in a key: no separators, nothing empty.
fn key_safe(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// An etcd client with the deadline and the layout it works with.
pub struct Store {
    client: Client,
    pub layout: Layout,
    timeout: Duration,
    endpoints: String,
}

impl Store {
    /// Connects as `config` says (TLS and credentials included), within its timeout.
    pub async fn connect(config: &IpamConfig) -> Result<Self, EtcdError> {
        let endpoints = config.endpoints.join(",");
        let timeout = config.timeout();
        let options = connect_options(config, timeout, true).await?;
        let client = deadline(
            &endpoints,
            "connect",
            timeout,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await?;
        Ok(Self {
            client,
            layout: Layout::new(&config.prefix),
            timeout,
            endpoints,
        })
    }

    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        deadline(&self.endpoints, op, self.timeout, fut).await
    }

    /// Every key under `prefix` at `revision` (0: the newest), page by page; and the revision
    /// read.
    pub async fn list(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = revision;
        let mut out = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            let mut kv = self.client.kv_client();
            let mut resp = self
                .call("list", kv.get(from.clone(), Some(options)))
                .await
                .map_err(|e| self.compacted(e, revision))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                break;
            };
            from = last.key().to_vec();
            from.push(0);
            out.extend(kvs.into_iter().map(key_value));
            if !more {
                break;
            }
        }
        Ok((out, revision))
    }

    /// Each network's entry and NICs (their by-network index keys) at `revision`, one
    /// transaction for all of them.
    async fn networks_at(
        &self,
        networks: &[String],
        revision: i64,
    ) -> Result<Vec<ListedNetwork>, EtcdError> {
        let l = &self.layout;
        let at = || GetOptions::new().with_revision(revision);
        let mut ops = Vec::with_capacity(networks.len() * 2);
        for n in networks {
            let index = l.by_network(n);
            let end = prefix_end(&index);
            ops.push(TxnOp::get(l.network(n), Some(at())));
            ops.push(TxnOp::get(
                index,
                Some(at().with_range(end).with_limit(NICS_PER_TXN)),
            ));
        }
        let mut kv = self.client.kv_client();
        let resp = self
            .call("list networks", kv.txn(Txn::new().and_then(ops)))
            .await
            .map_err(|e| self.compacted(e, revision))?;
        let mut responses = resp.op_responses().into_iter();
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            let (Some(TxnOpResponse::Get(entry)), Some(TxnOpResponse::Get(mut nics))) =
                (responses.next(), responses.next())
            else {
                return Err(EtcdError::Watch {
                    endpoints: self.endpoints.clone(),
                    message: format!("list networks: no answer for network {n:?}"),
                });
            };
            let entry = entry.kvs().first().map(|kv| kv.value().to_vec());
            let nics = if nics.more() {
                self.list(&l.by_network(n), revision).await?.0
            } else {
                nics.take_kvs().into_iter().map(key_value).collect()
            };
            out.push(ListedNetwork {
                id: n.clone(),
                key: l.network(n),
                entry,
                nics,
            });
        }
        Ok(out)
    }

    /// One key's newest value and the revision it was last written at.
    async fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, EtcdError> {
        let mut kv = self.client.kv_client();
        let mut resp = self.call("get", kv.get(key, None)).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let revision = kv.mod_revision();
            (kv.into_key_value().1, revision)
        }))
    }

    fn compacted(&self, e: EtcdError, revision: i64) -> EtcdError {
        match &e {
            EtcdError::Etcd { source, .. } if source.to_string().contains("compacted") => {
                EtcdError::Compacted {
                    endpoints: self.endpoints.clone(),
                    revision,
                }
            }
            _ => e,
        }
    }

    /// Writes raw bytes at a key (tests and repairs: no validation, no index upkeep).
    pub async fn put_raw(
        &mut self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, EtcdError> {
        let mut kv = self.client.kv_client();
        let resp = self.call("put", kv.put(key, value.into(), None)).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Compacts the history up to `revision`.
    pub async fn compact(&mut self, revision: i64) -> Result<(), EtcdError> {
        let mut kv = self.client.kv_client();
        self.call("compact", kv.compact(revision, None)).await?;
        Ok(())
    }

    async fn txn(&mut self, ops: Vec<TxnOp>) -> Result<i64, EtcdError> {
        let mut kv = self.client.kv_client();
        let resp = self.call("txn", kv.txn(Txn::new().and_then(ops))).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Puts one NIC: its canonical key and both index keys in one transaction, removing the
    /// index keys of where it was before. Returns the revision written.
    ///
    /// Safe against other writers of the same MAC (see [`Store::write_nic`]).
    pub async fn put_nic(&mut self, nic: &crate::model::Nic) -> Result<i64, EtcdError> {
        for (what, name) in [("node", &nic.node), ("network", &nic.network)] {
            if !key_safe(name) {
                return Err(EtcdError::Key {
                    key: self.layout.nic(nic.mac),
                    message: format!("{what} {name:?} cannot be part of a key"),
                });
            }
        }
        let bytes = serde_json::to_vec(nic).map_err(|e| EtcdError::Key {
            key: self.layout.nic(nic.mac),
            message: e.to_string(),
        })?;
        self.write_nic(nic.mac, Some((&nic.node, &nic.network, &bytes)))
            .await
    }

    /// Deletes one NIC and its index keys.
    pub async fn delete_nic(&mut self, mac: MacAddr) -> Result<i64, EtcdError> {
        self.write_nic(mac, None).await
    }

    /// Writes one NIC's three keys (`Some((node, network, value))`) or deletes them (`None`),
    /// removing the index keys of where the NIC was. The transaction holds only if the
    /// canonical key is still as it was read: two writers moving one MAC at once would
    /// otherwise each remove the index keys of the place they read, and leave the other's
    /// behind. A writer that loses reads again, a bounded number of times.
    async fn write_nic(
        &mut self,
        mac: MacAddr,
        now: Option<(&str, &str, &[u8])>,
    ) -> Result<i64, EtcdError> {
        let key = self.layout.nic(mac);
        for _ in 0..NIC_WRITE_ATTEMPTS {
            let (old, unchanged) = match self.get_versioned(&key).await? {
                Some((bytes, rev)) => (
                    Some(bytes),
                    Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
                ),
                None => (
                    None,
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ),
            };
            let mut ops = self.stale_index_ops(mac, old.as_deref(), now.map(|(n, w, _)| (n, w)));
            match now {
                Some((node, network, bytes)) => {
                    for k in self.layout.nic_keys(mac, node, network) {
                        ops.push(TxnOp::put(k, bytes.to_vec(), None));
                    }
                }
                None => ops.push(TxnOp::delete(key.clone(), None)),
            }
            let mut kv = self.client.kv_client();
            let resp = self
                .call("txn", kv.txn(Txn::new().when([unchanged]).and_then(ops)))
                .await?;
            if resp.succeeded() {
                return Ok(resp.header().map_or(0, |h| h.revision()));
            }
            debug!(%mac, "the NIC changed since it was read; reading it again");
        }
        Err(EtcdError::Conflict {
            endpoints: self.endpoints.clone(),
            mac,
            attempts: NIC_WRITE_ATTEMPTS,
        })
    }

    /// Deletions of the index keys of `old` (the NIC's record as read) that `now` (node,
    /// network) does not keep. Only the keys that differ: a put and a delete of one key in a
    /// transaction is an error to etcd ("duplicate key given in txn request").
    fn stale_index_ops(
        &self,
        mac: MacAddr,
        old: Option<&[u8]>,
        now: Option<(&str, &str)>,
    ) -> Vec<TxnOp> {
        let Some(old) = old.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
            return Vec::new();
        };
        // Names that cannot be in a key were never written as index keys.
        let field = |f: &str| {
            old.get(f)
                .and_then(Value::as_str)
                .filter(|n| key_safe(n))
                .map(str::to_owned)
        };
        let mut ops = Vec::new();
        if let Some(node) = field("node")
            && now.map(|(n, _)| n) != Some(node.as_str())
        {
            ops.push(TxnOp::delete(self.layout.node_nic(&node, mac), None));
        }
        if let Some(network) = field("network")
            && now.map(|(_, w)| w) != Some(network.as_str())
        {
            ops.push(TxnOp::delete(self.layout.network_nic(&network, mac), None));
        }
        ops
    }

    /// Writes a network (no index).
    pub async fn put_network(&mut self, network: &crate::model::Network) -> Result<i64, EtcdError> {
        let key = self.layout.network(&network.id);
        let bytes = serde_json::to_vec(network).map_err(|e| EtcdError::Key {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.put_raw(&key, bytes).await
    }

    /// Makes etcd hold exactly `model`: what differs is written, what is absent deleted; each
    /// NIC's keys change in one transaction. Networks and nodes are written before the NICs that
    /// name them, and deleted after.
    pub async fn import(&mut self, model: &Model) -> Result<ImportReport, EtcdError> {
        let l = self.layout.clone();
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let json = |key: &str, v: &dyn erased::Json| {
            v.to_json().map_err(|message| EtcdError::Key {
                key: key.to_owned(),
                message,
            })
        };
        for (id, n) in &model.networks {
            check_key(&l.network(id), id)?;
            want.insert(l.network(id), json(&l.network(id), n)?);
        }
        for (name, n) in &model.nodes {
            check_key(&l.node(name), name)?;
            want.insert(l.node(name), json(&l.node(name), n)?);
        }
        for (mac, n) in &model.nics {
            let bytes = json(&l.nic(*mac), n)?;
            for k in l.nic_keys(*mac, &n.node, &n.network) {
                want.insert(k, bytes.clone());
            }
        }

        let mut have: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for prefix in [
            l.networks(),
            l.nodes(),
            l.nics(),
            l.by_nodes(),
            l.by_networks(),
        ] {
            let (kvs, _) = self.list(&prefix, 0).await?;
            have.extend(kvs);
        }

        // Group the operations: entries first (networks, nodes), then each NIC's keys
        // together, then deletions of NICs, then of networks and nodes.
        let mac_of = |key: &str| key.rsplit('/').next().unwrap_or_default().to_owned();
        let is_nic_key = |key: &str| {
            key.starts_with(&l.nics())
                || key.starts_with(&l.by_nodes())
                || key.starts_with(&l.by_networks())
        };
        let mut first: Vec<TxnOp> = Vec::new();
        let mut nic_groups: BTreeMap<String, Vec<TxnOp>> = BTreeMap::new();
        let mut last: Vec<TxnOp> = Vec::new();
        let mut report = ImportReport::default();
        for (key, bytes) in &want {
            if have.get(key) == Some(bytes) {
                continue;
            }
            report.put += 1;
            let op = TxnOp::put(key.clone(), bytes.clone(), None);
            if is_nic_key(key) {
                nic_groups.entry(mac_of(key)).or_default().push(op);
            } else {
                first.push(op);
            }
        }
        for key in have.keys().filter(|k| !want.contains_key(*k)) {
            report.deleted += 1;
            let op = TxnOp::delete(key.clone(), None::<DeleteOptions>);
            if is_nic_key(key) {
                nic_groups.entry(mac_of(key)).or_default().push(op);
            } else {
                last.push(op);
            }
        }
        let mut batches: Vec<Vec<TxnOp>> = Vec::new();
        for ops in first.chunks(TXN_OPS) {
            batches.push(ops.to_vec());
        }
        let mut batch: Vec<TxnOp> = Vec::new();
        for ops in nic_groups.into_values() {
            if batch.len() + ops.len() > TXN_OPS {
                batches.push(std::mem::take(&mut batch));
            }
            batch.extend(ops);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for ops in last.chunks(TXN_OPS) {
            batches.push(ops.to_vec());
        }
        for ops in batches {
            report.transactions += 1;
            report.revision = self.txn(ops).await?;
        }
        Ok(report)
    }

    /// The IPAM document etcd holds, from the canonical keys. Entries that are not JSON are
    /// left out and counted.
    pub async fn export(&mut self) -> Result<(Value, usize), EtcdError> {
        let l = self.layout.clone();
        let mut skipped = 0;
        let mut doc = serde_json::Map::new();
        for (name, prefix) in [
            ("networks", l.networks()),
            ("nodes", l.nodes()),
            ("nics", l.nics()),
        ] {
            let (kvs, _) = self.list(&prefix, 0).await?;
            let mut entries = Vec::new();
            for (key, v) in kvs {
                match serde_json::from_slice::<Value>(&v) {
                    Ok(v) => entries.push(v),
                    Err(e) => {
                        warn!(key, error = %e, "not JSON; left out of the export");
                        skipped += 1;
                    }
                }
            }
            doc.insert(name.into(), Value::Array(entries));
        }
        Ok((Value::Object(doc), skipped))
    }

    /// Opens a watch stream with its first watch.
    async fn watch(
        &mut self,
        key: String,
        options: WatchOptions,
    ) -> Result<WatchStream, EtcdError> {
        let mut w = self.client.watch_client();
        self.call("watch", w.watch(key, Some(options))).await
    }
}

/// The client options `config` asks for, credentials included when `auth`.
async fn connect_options(
    config: &IpamConfig,
    timeout: Duration,
    auth: bool,
) -> Result<ConnectOptions, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), timeout)
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let read = |path: &PathBuf| {
            let path = path.clone();
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| EtcdError::File { path, source })
            }
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca).await?));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(read(cert).await?, read(key).await?));
        }
        options = options.with_tls(t);
    }
    if auth && let Some(auth) = &config.auth {
        let password = tokio::fs::read_to_string(&auth.password_file)
            .await
            .map_err(|source| EtcdError::File {
                path: auth.password_file.clone(),
                source,
            })?;
        options = options.with_user(auth.username.clone(), password.trim_end().to_owned());
    }
    Ok(options)
}

/// Asks etcd, cheaply, whether it is back while the agent is disconnected: a Status call,
/// which etcd answers without authentication, so a probing fleet never costs etcd a password
/// check (as a reconnect with credentials does). One client per outage: its connection is
/// re-established by the call that finds etcd back, and TLS files are read again at the next.
struct Probe {
    config: IpamConfig,
    client: Option<Client>,
}

/// Says whether etcd answers; a trait so that tests can script the answers.
trait Answers {
    async fn answers(&mut self) -> bool;
}

impl Answers for Probe {
    /// Whether a member answers and knows a leader (without one, reconnecting would fail).
    async fn answers(&mut self) -> bool {
        let config = &self.config;
        let timeout = PROBE_TIMEOUT.min(config.timeout());
        if self.client.is_none() {
            let Ok(options) = connect_options(config, timeout, false).await else {
                return false;
            };
            let endpoints = config.endpoints.join(",");
            let connect = Client::connect(&config.endpoints, Some(options));
            self.client = deadline(&endpoints, "probe", timeout, connect).await.ok();
        }
        let Some(client) = &self.client else {
            return false;
        };
        let mut m = client.maintenance_client();
        match tokio::time::timeout(timeout, m.status()).await {
            Ok(Ok(status)) => {
                debug!(leader = status.leader(), "etcd probe answered");
                status.leader() != 0
            }
            Ok(Err(e)) => {
                debug!(error = %e, "etcd probe failed");
                false
            }
            Err(_) => {
                debug!(?timeout, "etcd probe: no answer");
                false
            }
        }
    }
}

/// How a wait before reconnecting ended.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    /// The backoff delay ran out.
    Backoff,
    /// A probe found etcd back.
    Probe,
}

/// Waits `delay` (the backoff's) before the next attempt, probing etcd meanwhile at a jittered
/// interval. `away`: the last contact with etcd got no answer. When a probe answers and etcd
/// was away (by `away` or an earlier probe), the wait ends after a short jitter instead: an
/// agent whose backoff grew during a long outage is not left behind for up to a backoff
/// ceiling once etcd is back. A probe that answers while etcd was not away means the failure
/// lies elsewhere (auth, load, a stream broken midway): the backoff stands and probing stops.
async fn wait_to_reconnect(delay: Duration, mut away: bool, probe: &mut impl Answers) -> Woken {
    use tokio::time::{Instant, sleep_until};
    let until = Instant::now() + delay;
    loop {
        let next = Instant::now() + PROBE_EVERY.mul_f64(0.5 + fastrand::f64());
        if next >= until {
            sleep_until(until).await;
            return Woken::Backoff;
        }
        sleep_until(next).await;
        if !probe.answers().await {
            away = true;
            continue;
        }
        if !away {
            sleep_until(until).await;
            return Woken::Backoff;
        }
        sleep_until(until.min(Instant::now() + RECONNECT_JITTER.mul_f64(fastrand::f64()))).await;
        return Woken::Probe;
    }
}

/// Lets a compaction relist at once, unless the last prompt relist was less than
/// [`HEALTHY_SESSION`] ago: a store that keeps compacting under the agent then gets the
/// reconnect backoff, never a loop (flannel once relisted on compaction in a hot loop and
/// filled disks with its logs).
#[derive(Debug, Default)]
struct RelistGuard {
    last: Option<Instant>,
}

impl RelistGuard {
    fn prompt(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < HEALTHY_SESSION)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod reconnect_tests {
    use tokio::time::Instant;

    use super::*;

    /// Answers as scripted, then `then` for ever.
    struct Script {
        answers: VecDeque<bool>,
        then: bool,
        asked: usize,
    }

    impl Script {
        fn new(answers: &[bool], then: bool) -> Self {
            Self {
                answers: answers.iter().copied().collect(),
                then,
                asked: 0,
            }
        }
    }

    impl Answers for Script {
        async fn answers(&mut self) -> bool {
            self.asked += 1;
            self.answers.pop_front().unwrap_or(self.then)
        }
    }

    const DELAY: Duration = Duration::from_secs(30);

    fn about(elapsed: Duration, expected: Duration) -> bool {
        elapsed >= expected && elapsed < expected + Duration::from_millis(10)
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_finds_etcd_back_ends_the_wait() {
        let start = Instant::now();
        let mut probe = Script::new(&[false, false], true);
        assert_eq!(
            wait_to_reconnect(DELAY, false, &mut probe).await,
            Woken::Probe
        );
        assert_eq!(probe.asked, 3);
        // Three probes at most 1.5 s apart, then at most 2 s of jitter.
        assert!(start.elapsed() <= Duration::from_millis(3 * 1500 + 2000));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_contact_without_answer_the_first_probe_answering_ends_the_wait() {
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        assert_eq!(
            wait_to_reconnect(DELAY, true, &mut probe).await,
            Woken::Probe
        );
        assert_eq!(probe.asked, 1);
        assert!(start.elapsed() <= Duration::from_millis(1500 + 2000));
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_answering_all_along_leaves_the_backoff_as_it_is() {
        // The failure was not etcd being away (credentials, load): no early reconnect, and
        // one probe is enough to know.
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        assert_eq!(
            wait_to_reconnect(DELAY, false, &mut probe).await,
            Woken::Backoff
        );
        assert_eq!(probe.asked, 1);
        assert!(about(start.elapsed(), DELAY), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_away_throughout_waits_the_backoff_probing_about_every_second() {
        let start = Instant::now();
        let mut probe = Script::new(&[], false);
        assert_eq!(
            wait_to_reconnect(DELAY, true, &mut probe).await,
            Woken::Backoff
        );
        assert!(about(start.elapsed(), DELAY), "{:?}", start.elapsed());
        assert!((20..=60).contains(&probe.asked), "{} probes", probe.asked);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_backoff_is_not_probed() {
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        let delay = Duration::from_millis(300);
        assert_eq!(
            wait_to_reconnect(delay, true, &mut probe).await,
            Woken::Backoff
        );
        assert_eq!(probe.asked, 0);
        assert!(about(start.elapsed(), delay), "{:?}", start.elapsed());
    }

    #[test]
    fn compactions_back_to_back_wait_a_backoff() {
        let mut guard = RelistGuard::default();
        let t = std::time::Instant::now();
        assert!(guard.prompt(t));
        assert!(!guard.prompt(t + Duration::from_secs(1)));
        assert!(!guard.prompt(t + Duration::from_secs(29)));
        // A refusal does not push the window on.
        assert!(guard.prompt(t + Duration::from_secs(30)));
        assert!(!guard.prompt(t + Duration::from_secs(45)));
        assert!(guard.prompt(t + Duration::from_secs(61)));
    }
}

fn check_key(key: &str, name: &str) -> Result<(), EtcdError> {
    if key_safe(name) {
        Ok(())
    } else {
        Err(EtcdError::Key {
            key: key.to_owned(),
            message: format!("{name:?} cannot be part of a key"),
        })
    }
}

/// Serializes the model's entry types without naming each.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>, String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, String> {
            serde_json::to_vec(self).map_err(|e| e.to_string())
        }
    }
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub put: usize,
    pub deleted: usize,
    pub transactions: usize,
    pub revision: i64,
}

async fn deadline<T>(
    endpoints: &str,
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Etcd {
            endpoints: endpoints.to_owned(),
            op,
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            endpoints: endpoints.to_owned(),
            op,
            timeout,
        }),
    }
}

/// What one watch covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Range {
    /// This node's NICs: which networks it needs.
    Own,
    /// Every node (their VTEPs).
    Nodes,
    /// One network's own key.
    Network(String),
    /// One network's NICs.
    NetworkNics(String),
}

impl Range {
    /// The key and whether it is a prefix.
    fn key(&self, l: &Layout, node: &str) -> (String, bool) {
        match self {
            Range::Own => (l.by_node(node), true),
            Range::Nodes => (l.nodes(), true),
            Range::Network(id) => (l.network(id), false),
            Range::NetworkNics(id) => (l.by_network(id), true),
        }
    }
}

/// What this node knows of IPAM: only what it needs. At 100,000 NICs the view is most of the
/// agent's memory, so an entry is its JSON and two shared names: its key's directory (one per
/// range) and its id, which is also its key here.
#[derive(Clone, Debug, Default)]
struct View {
    own: BTreeMap<Arc<str>, RawEntry>,
    nodes: BTreeMap<Arc<str>, RawEntry>,
    networks: BTreeMap<String, RawEntry>,
    nics: BTreeMap<String, BTreeMap<Arc<str>, RawEntry>>,
    /// The network each of this node's NICs names, read once when the NIC changes.
    own_networks: BTreeMap<Arc<str>, Option<String>>,
    /// The directories of the keys held, one copy each.
    dirs: HashSet<Arc<str>>,
}

/// A key's directory (up to its last `/`, included) and its id (after it).
fn split_key(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(i) => key.split_at(i + 1),
        None => ("", key),
    }
}

impl View {
    /// The networks this node has NICs in.
    fn wanted(&self) -> BTreeSet<String> {
        self.own_networks
            .values()
            .flatten()
            .filter(|n| key_safe(n))
            .cloned()
            .collect()
    }

    /// The entry for `key` with value `json`, its names shared with the view's.
    fn entry(&mut self, key: &str, json: Arc<[u8]>) -> (Arc<str>, RawEntry) {
        let (dir, id) = split_key(key);
        let dir = match self.dirs.get(dir) {
            Some(d) => d.clone(),
            None => {
                let d: Arc<str> = Arc::from(dir);
                self.dirs.insert(d.clone());
                d
            }
        };
        let id: Arc<str> = Arc::from(id);
        let entry = RawEntry {
            dir: Some(dir),
            id: Some(id.clone()),
            json,
        };
        (id, entry)
    }

    /// Adds listed keys of `range`, a slice at a time: a list can hold 100,000 NICs, and the
    /// runtime must not stall while they are stored.
    async fn fill(&mut self, range: &Range, kvs: Vec<(String, Vec<u8>)>) {
        for chunk in kvs.chunks(FILL_SLICE) {
            for (key, json) in chunk {
                self.set(range, key, Some(Arc::from(json.as_slice())));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Applies one put (`Some`) or delete (`None`); whether anything changed.
    fn apply(&mut self, range: &Range, key: &str, value: Option<&[u8]>) -> bool {
        self.set(range, key, value.map(Arc::from))
    }

    fn set(&mut self, range: &Range, key: &str, json: Option<Arc<[u8]>>) -> bool {
        let entry = json.map(|j| self.entry(key, j));
        let name = split_key(key).1;
        let map = match range {
            Range::Network(id) => {
                return match entry {
                    Some((_, e)) => {
                        self.networks.insert(id.clone(), e);
                        true
                    }
                    None => self.networks.remove(id).is_some(),
                };
            }
            Range::Own => {
                match &entry {
                    Some((id, e)) => {
                        self.own_networks.insert(id.clone(), e.field("network"));
                    }
                    None => {
                        self.own_networks.remove(name);
                    }
                }
                &mut self.own
            }
            Range::Nodes => &mut self.nodes,
            Range::NetworkNics(id) => self.nics.entry(id.clone()).or_default(),
        };
        match entry {
            Some((id, e)) => {
                map.insert(id, e);
                true
            }
            None => map.remove(name).is_some(),
        }
    }

    /// The keys held, as (directory, id): shared names, nothing copied.
    fn keys(&self) -> BTreeSet<(Arc<str>, Arc<str>)> {
        self.own
            .values()
            .chain(self.nodes.values())
            .chain(self.networks.values())
            .chain(self.nics.values().flat_map(BTreeMap::values))
            .filter_map(|e| Some((e.dir.clone()?, e.id.clone()?)))
            .collect()
    }

    fn len(&self) -> usize {
        self.own.len()
            + self.nodes.len()
            + self.networks.len()
            + self.nics.values().map(BTreeMap::len).sum::<usize>()
    }

    /// The networks (partitions) whose validation depends on the entry at `key` as the view
    /// holds it now; `None` when only a complete document can say (a node changed, or one of
    /// this node's NICs does not name its network).
    fn affected(&self, range: &Range, key: &str) -> Option<BTreeSet<String>> {
        let name = split_key(key).1;
        let mut out = BTreeSet::new();
        match range {
            Range::Nodes => return None,
            Range::Own => {
                if self.own.contains_key(name) {
                    let network = self.own_networks.get(name).cloned().flatten();
                    out.insert(network.filter(|n| key_safe(n))?);
                }
            }
            Range::Network(id) => {
                out.insert(id.clone());
                // Networks sharing its VNI: which one holds it may change.
                if let Some(vni) = self.networks.get(id).and_then(vni_of) {
                    out.extend(
                        self.networks
                            .iter()
                            .filter(|(_, e)| vni_of(e) == Some(vni))
                            .map(|(k, _)| k.clone()),
                    );
                }
                return Some(out);
            }
            Range::NetworkNics(id) => {
                out.insert(id.clone());
            }
        }
        // Networks holding the same MAC: which one gets it may change.
        out.extend(
            self.nics
                .iter()
                .filter(|(_, m)| m.contains_key(name))
                .map(|(k, _)| k.clone()),
        );
        Some(out)
    }

    /// The part of [`View::document`] that `networks` depend on: their entries, their NICs,
    /// and the nodes those NICs and this node are on.
    fn sub_document(&self, networks: &BTreeSet<String>, this_node: &str) -> RawDocument {
        let wanted = self.wanted();
        let mut nics: BTreeMap<&str, &RawEntry> = BTreeMap::new();
        for id in networks.intersection(&wanted) {
            for (mac, e) in self.nics.get(id).into_iter().flatten() {
                if !self.own.contains_key(mac) {
                    nics.insert(mac, e);
                }
            }
        }
        for (mac, e) in &self.own {
            let network = self.own_networks.get(mac).and_then(Option::as_ref);
            if network.is_some_and(|n| networks.contains(n)) {
                nics.insert(mac, e);
            }
        }
        let mut on: BTreeSet<String> = nics.values().filter_map(|e| e.field("node")).collect();
        on.insert(this_node.to_owned());
        RawDocument {
            networks: networks
                .iter()
                .filter(|id| wanted.contains(*id))
                .filter_map(|id| self.networks.get(id).cloned())
                .collect(),
            nodes: self
                .nodes
                .iter()
                .filter(|(name, _)| on.contains(&***name))
                .map(|(_, e)| e.clone())
                .collect(),
            nics: nics.into_values().cloned().collect(),
        }
    }

    /// The document this view amounts to. A NIC of this node comes from its by-node key, the
    /// authority for what runs here; the others from their network's index.
    fn document(&self) -> RawDocument {
        let wanted = self.wanted();
        let mut nics: BTreeMap<&str, &RawEntry> = BTreeMap::new();
        for (network, entries) in &self.nics {
            if wanted.contains(network) {
                for (mac, e) in entries {
                    nics.insert(mac, e);
                }
            }
        }
        for (mac, e) in &self.own {
            nics.insert(mac, e);
        }
        RawDocument {
            networks: self.networks.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            nics: nics.into_values().cloned().collect(),
        }
    }
}

/// A network entry's VNI, when it has one.
fn vni_of(e: &RawEntry) -> Option<u64> {
    serde_json::from_slice::<Value>(&e.json)
        .ok()?
        .get("vni")?
        .as_u64()
}

/// Capped exponential backoff with full jitter: each wait is uniform in [0, min(cap, base·2ⁿ)],
/// so thousands of agents losing etcd at once come back spread out, not in waves.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why a session ended.
enum Stop {
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

pub struct EtcdSource {
    pub config: IpamConfig,
    pub node: String,
    /// Counts connection attempts after the first (not probes, not a relist on the same
    /// connection after a compaction).
    pub reconnects: Counter,
    /// Counts the changes the watches delivered (what etcd sends this agent).
    pub events: Counter,
    /// The agent asks for a complete document (it has nothing to merge a change into, or the
    /// host's limits changed).
    pub resend: Arc<Notify>,
}

/// The source's state across sessions.
struct Sync {
    layout: Layout,
    node: String,
    view: Option<View>,
    slots: BTreeMap<Range, Slot>,
    events: Counter,
    /// The agent needs a complete document.
    dirty_all: bool,
    /// The networks whose entries changed since the last update sent.
    dirty_nets: BTreeSet<String>,
    /// In sync with nothing new to send: the agent may want to know.
    alive: bool,
    /// How often the watch stream is asked to prove it is alive and in sync.
    progress_every: Duration,
    /// etcd answered on the watch stream of this connection.
    watching: bool,
    relists: RelistGuard,
}

impl EtcdSource {
    /// Lists, watches and reconnects until `tx` closes. Never gives up: while etcd is away the
    /// agent keeps serving what it last applied.
    pub async fn run(self, tx: mpsc::Sender<Update>) {
        let mut sync = Sync {
            layout: Layout::new(&self.config.prefix),
            node: self.node.clone(),
            view: None,
            slots: BTreeMap::new(),
            events: self.events.clone(),
            dirty_all: false,
            dirty_nets: BTreeSet::new(),
            alive: false,
            progress_every: self.config.progress_interval(),
            watching: false,
            relists: RelistGuard::default(),
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut first = true;
        let mut probe = Probe {
            config: self.config.clone(),
            client: None,
        };
        // Whether a probe may end the next wait early: once per outage, re-armed by a
        // connection that got as far as its watch stream. A reconnect that a probe brought
        // and that failed again waits its backoff in full (etcd answers but something else
        // fails: credentials, load).
        let mut may_shortcut = true;
        loop {
            if !first {
                self.reconnects.inc();
            }
            first = false;
            let started = Instant::now();
            sync.watching = false;
            let outcome = match Store::connect(&self.config).await {
                Ok(mut store) => sync.session(&mut store, &tx, &self.resend).await,
                Err(e) => Stop::Failed(e),
            };
            let e = match outcome {
                Stop::Closed => return,
                Stop::Failed(e) => e,
            };
            if started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            if sync.watching {
                may_shortcut = true;
                probe.client = None;
            }
            if e.is_compacted() {
                warn!(
                    error = %e,
                    "watch revision compacted again soon after the last relist; \
                     listing again after a backoff"
                );
                // Keep the view: the next list is compared with it to derive the deletions.
                sync.slots.clear();
            } else if tx.send(Update::Unavailable(e.to_string())).await.is_err() {
                return;
            }
            let wait = backoff.next_delay();
            debug!(?wait, "reconnecting to etcd");
            if !may_shortcut {
                tokio::time::sleep(wait).await;
                continue;
            }
            let woken = wait_to_reconnect(wait, !sync.watching, &mut probe).await;
            if woken == Woken::Probe {
                info!("etcd answers again; reconnecting");
                may_shortcut = false;
            }
        }
    }
}

impl Sync {
    /// Runs sessions on one connection. A compacted watch lists again here after a short
    /// jitter: not a failure, no reconnect, no backoff (unless compactions come back to back).
    async fn session(
        &mut self,
        store: &mut Store,
        tx: &mpsc::Sender<Update>,
        resend: &Notify,
    ) -> Stop {
        loop {
            let stop = match self.run_session(store, tx, resend).await {
                Ok(stop) | Err(stop) => stop,
            };
            match stop {
                Stop::Failed(e) if e.is_compacted() && self.relists.prompt(Instant::now()) => {
                    let wait = RELIST_JITTER.mul_f64(fastrand::f64());
                    info!(error = %e, ?wait, "watch revision compacted; listing again");
                    // Keep the view: the next list is compared with it to derive the deletions.
                    self.slots.clear();
                    tokio::time::sleep(wait).await;
                }
                stop => return stop,
            }
        }
    }

    async fn run_session(
        &mut self,
        store: &mut Store,
        tx: &mpsc::Sender<Update>,
        resend: &Notify,
    ) -> Result<Stop, Stop> {
        if self.slots.is_empty() {
            self.relist(store).await?;
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
            return Err(Stop::Failed(EtcdError::Watch {
                endpoints: store.endpoints.clone(),
                message: "nothing to watch".into(),
            }));
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
                    permit.send(self.update());
                    self.dirty_all = false;
                    self.dirty_nets.clear();
                    self.alive = false;
                }
                () = resend.notified() => {
                    debug!("the agent asks for a complete document");
                    self.dirty_all = true;
                }
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(watch_err(store, "the stream ended")),
                        Err(e) => return Err(watch_err(store, &e.to_string())),
                    };
                    heard = Instant::now();
                    self.watching = true;
                    self.on_response(store, &mut stream, resp, &mut pending, &mut by_id, &mut cancelled).await?;
                }
                _ = progress.tick() => {
                    if heard.elapsed() > silence {
                        return Err(watch_err(store, &format!("no answer for {silence:?}")));
                    }
                    let timeout = store.timeout;
                    deadline(&store.endpoints, "request progress", timeout, stream.request_progress()).await?;
                }
            }
        }
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
        let mut slots = BTreeMap::new();
        for r in [Range::Own, Range::Nodes] {
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
                view.set(&Range::Network(n.id.clone()), &n.key, Some(json.into()));
            }
            let range = Range::NetworkNics(n.id.clone());
            view.nics.entry(n.id).or_default();
            view.fill(&range, n.nics).await;
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
            return Err(watch_err(
                store,
                &format!("watch cancelled: {}", resp.cancel_reason()),
            ));
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
        self.events.inc_by(resp.events().len() as u64);
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
        if range == Range::Own {
            self.follow_networks(store, stream, last, pending, cancelled)
                .await?;
        }
        Ok(())
    }

    /// This node's NICs changed: watch the networks it now has NICs in, and stop watching the
    /// ones it left. A new network is read at the revision of the change that brought it.
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
            view.networks.remove(network);
            view.nics.remove(network);
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

fn watch_err(store: &Store, message: &str) -> Stop {
    Stop::Failed(EtcdError::Watch {
        endpoints: store.endpoints.clone(),
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/holdfast/nics/"), b"/holdfast/nics0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn layout() {
        let l = Layout::new("/hf/");
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            l.nic_keys(mac, "hv-1", "blue"),
            [
                "/hf/nics/02:00:00:00:00:01".to_owned(),
                "/hf/by-node/hv-1/02:00:00:00:00:01".to_owned(),
                "/hf/by-network/blue/02:00:00:00:00:01".to_owned(),
            ]
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..30).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[20..].iter().any(|d| *d > Duration::from_millis(200)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_view_follows_the_networks_of_this_nodes_nics() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let nic = br#"{"mac":"02:00:00:00:00:01","network":"blue","ip":"10.0.0.5","node":"hv-1"}"#;
        v.apply(
            &Range::Own,
            &format!("{}02:00:00:00:00:01", l.by_node("hv-1")),
            Some(nic),
        );
        assert_eq!(v.wanted(), BTreeSet::from(["blue".to_owned()]));
        v.apply(
            &Range::NetworkNics("blue".into()),
            &format!("{}02:00:00:00:00:01", l.by_network("blue")),
            Some(nic),
        );
        v.apply(
            &Range::NetworkNics("blue".into()),
            &format!("{}02:00:00:00:00:02", l.by_network("blue")),
            Some(b"{not json"),
        );
        let doc = v.document();
        assert_eq!(doc.nics.len(), 2);
        let bad = doc
            .nics
            .iter()
            .find(|e| serde_json::from_slice::<Value>(&e.json).is_err())
            .unwrap();
        assert_eq!(bad.id.as_deref(), Some("02:00:00:00:00:02"));
        assert!(v.apply(
            &Range::Own,
            &format!("{}02:00:00:00:00:01", l.by_node("hv-1")),
            None
        ));
        assert!(v.wanted().is_empty());
    }

    #[test]
    fn a_change_dirties_only_the_networks_it_touches() {
        let l = Layout::new("/hf");
        let mut v = View::default();
        let own = |mac: &str| format!("{}{mac}", l.by_node("hv-1"));
        let idx = |net: &str, mac: &str| format!("{}{mac}", l.by_network(net));
        let nic = |mac: &str, net: &str, node: &str| {
            format!(r#"{{"mac":"{mac}","network":"{net}","ip":"10.0.0.5","node":"{node}"}}"#)
        };
        let net = |id: &str, vni: u32| {
            format!(r#"{{"id":"{id}","vni":{vni},"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}}"#)
        };
        let (m1, m2, m3) = (
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
            "02:00:00:00:00:03",
        );
        v.apply(
            &Range::Own,
            &own(m1),
            Some(nic(m1, "blue", "hv-1").as_bytes()),
        );
        v.apply(
            &Range::Own,
            &own(m2),
            Some(nic(m2, "red", "hv-1").as_bytes()),
        );
        for (n, vni) in [("blue", 1), ("red", 2)] {
            v.apply(
                &Range::Network(n.into()),
                &l.network(n),
                Some(net(n, vni).as_bytes()),
            );
        }
        let blue = Range::NetworkNics("blue".into());
        v.apply(
            &blue,
            &idx("blue", m1),
            Some(nic(m1, "blue", "hv-1").as_bytes()),
        );
        v.apply(
            &blue,
            &idx("blue", m3),
            Some(nic(m3, "blue", "hv-2").as_bytes()),
        );
        v.apply(
            &Range::Nodes,
            &l.node("hv-2"),
            Some(br#"{"name":"hv-2","vtep":"198.18.0.2"}"#),
        );
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        // A remote NIC of blue: blue only.
        assert_eq!(v.affected(&blue, &idx("blue", m3)), Some(set(&["blue"])));
        // A network's entry: it and the networks sharing its VNI.
        assert_eq!(
            v.affected(&Range::Network("red".into()), &l.network("red")),
            Some(set(&["red"]))
        );
        v.apply(
            &Range::Network("red".into()),
            &l.network("red"),
            Some(net("red", 1).as_bytes()),
        );
        assert_eq!(
            v.affected(&Range::Network("red".into()), &l.network("red")),
            Some(set(&["blue", "red"]))
        );
        // One of this node's NICs: its network, and the networks indexing the same MAC.
        assert_eq!(v.affected(&Range::Own, &own(m1)), Some(set(&["blue"])));
        // A node: only a complete document can say.
        assert_eq!(v.affected(&Range::Nodes, &l.node("hv-2")), None);
        v.apply(&Range::Own, &own(m2), Some(b"{broken"));
        assert_eq!(v.affected(&Range::Own, &own(m2)), None);

        // The sub-document of blue: its network, its NICs (this node's from by-node), the
        // nodes they are on.
        let sub = v.sub_document(&set(&["blue"]), "hv-1");
        assert_eq!(sub.networks.len(), 1);
        assert_eq!(sub.nics.len(), 2);
        assert_eq!(sub.nodes.len(), 1);
        assert_eq!(sub.nics[0].origin(), Some(own(m1)));
    }
}
