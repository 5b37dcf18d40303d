//! The etcd client: connecting (TLS and credentials included), listing by pages and by
//! transactions, and writing a NIC's three keys in one transaction that holds only if nobody
//! changed the NIC meanwhile.

use std::{path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{
    EtcdError, KeyError,
    keys::{Layout, json_at, key_safe, prefix_end},
};
use crate::{
    config::IpamConfig,
    model::{MAX_ENTRY_BYTES, MacAddr},
};

/// The largest gRPC message the agent decodes (tonic's default is 4 MiB). A page of entries
/// within the entry bound fits in it by construction; a response that would not (values over
/// the bound, which etcd takes up to its `--max-request-bytes`, 1.5 MiB by default) is asked
/// for again in parts until it does, and a value alone over it is read by its key only.
/// tonic refuses a message over the limit from its length prefix, before reading it.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Keys per page when listing: bounded responses whatever the size of the cloud.
const PAGE: i64 = 1_000;
/// The longest key of a well-formed entry (the prefix, a name and a MAC): a few hundred bytes.
const MAX_KEY_BYTES: usize = 1024;
/// What a key-value adds to its key and value in a response (revisions, version, framing).
const KV_OVERHEAD: usize = 64;
const _: () =
    assert!(PAGE as usize * (MAX_ENTRY_BYTES + MAX_KEY_BYTES + KV_OVERHEAD) <= MAX_MESSAGE);
/// NICs of one network read in the transaction that lists it; a bigger network is read on by
/// pages. 32 networks of 250 NICs of up to 2 KiB each fit a message; a transaction whose
/// answer would not is split.
const NICS_PER_TXN: i64 = 250;
/// Attempts at writing one NIC whose record other writers keep changing.
const NIC_WRITE_ATTEMPTS: u32 = 10;

/// A listed value: its bytes, or only its size (at least) when it is over the entry bound
/// ([`MAX_ENTRY_BYTES`]), which is not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    Value(Vec<u8>),
    Oversize(usize),
}

impl Listed {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Listed::Value(v) => Some(v),
            Listed::Oversize(_) => None,
        }
    }
}

/// A listed key and its value, not kept when it is over the entry bound.
fn key_value(kv: etcd_client::KeyValue) -> (String, Listed) {
    let (k, v) = kv.into_key_value();
    let value = if v.len() > MAX_ENTRY_BYTES {
        Listed::Oversize(v.len())
    } else {
        Listed::Value(v)
    };
    (String::from_utf8_lossy(&k).into_owned(), value)
}

/// A network as listed: its entry and its NICs' index keys.
pub(super) struct ListedNetwork {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) entry: Option<Listed>,
    pub(super) nics: Vec<(String, Listed)>,
}

/// An etcd client with the deadline and the layout it works with.
pub struct Store {
    pub(super) client: Client,
    pub layout: Layout,
    pub(super) timeout: Duration,
    pub(super) endpoints: String,
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

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Every key under `prefix` at `revision` (0: the newest), page by page; and the revision
    /// read. A page whose answer is over [`MAX_MESSAGE`] is asked for again in smaller pages;
    /// a value alone over it is listed by its key only.
    pub async fn list(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<(Vec<(String, Listed)>, i64), EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = revision;
        let mut limit = PAGE;
        let mut out = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(limit)
                .with_revision(revision);
            let mut kv = self.kv();
            let got = self
                .call("list", kv.get(from.clone(), Some(options)))
                .await
                .map_err(|e| e.at_revision(revision));
            let mut resp = match got {
                Ok(resp) => resp,
                Err(e) if e.is_too_large() && limit > 1 => {
                    limit = (limit / 4).max(1);
                    info!(error = %e, limit, "a page is over the message limit; smaller pages");
                    continue;
                }
                Err(e) if e.is_too_large() => {
                    let Some((key, at)) = self.next_key(&from, &end, revision).await? else {
                        break;
                    };
                    warn!(key, "a value is over the gRPC message limit: not read");
                    if revision == 0 {
                        revision = at;
                    }
                    from = key.as_bytes().to_vec();
                    from.push(0);
                    out.push((key, Listed::Oversize(MAX_MESSAGE)));
                    limit = PAGE;
                    continue;
                }
                Err(e) => return Err(e),
            };
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
            limit = PAGE;
        }
        Ok((out, revision))
    }

    /// The first key in `[from, end)` at `revision`, without its value, and the revision read.
    async fn next_key(
        &self,
        from: &[u8],
        end: &[u8],
        revision: i64,
    ) -> Result<Option<(String, i64)>, EtcdError> {
        let options = GetOptions::new()
            .with_range(end.to_vec())
            .with_limit(1)
            .with_keys_only()
            .with_revision(revision);
        let mut kv = self.kv();
        let mut resp = self
            .call("list keys", kv.get(from.to_vec(), Some(options)))
            .await
            .map_err(|e| e.at_revision(revision))?;
        let at = resp.header().map_or(0, |h| h.revision());
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), at)))
    }

    /// Each network's entry and NICs (their by-network index keys) at `revision`, one
    /// transaction for all of them; a transaction whose answer is over [`MAX_MESSAGE`] is
    /// split, down to one network read on its own.
    pub(super) async fn networks_at(
        &self,
        networks: &[String],
        revision: i64,
    ) -> Result<Vec<ListedNetwork>, EtcdError> {
        let mut out = Vec::with_capacity(networks.len());
        let mut todo: Vec<&[String]> = vec![networks];
        while let Some(chunk) = todo.pop() {
            match self.networks_txn(chunk, revision).await {
                Ok(got) => out.extend(got),
                Err(e) if e.is_too_large() && chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b);
                    todo.push(a);
                }
                Err(e) if e.is_too_large() => {
                    out.push(self.network_alone(&chunk[0], revision).await?);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One network whose entry and NICs are too large for one answer: by pages.
    async fn network_alone(&self, n: &str, revision: i64) -> Result<ListedNetwork, EtcdError> {
        let l = &self.layout;
        let key = l.network(n);
        // The network's own key is a range of one: its value, or its size.
        let (mut entry, _) = self.list_key(&key, revision).await?;
        Ok(ListedNetwork {
            id: n.to_owned(),
            key,
            entry: entry.pop().map(|(_, v)| v),
            nics: self.list(&l.by_network(n), revision).await?.0,
        })
    }

    /// One key as a list: its value, or its size when over the bound.
    async fn list_key(
        &self,
        key: &str,
        revision: i64,
    ) -> Result<(Vec<(String, Listed)>, i64), EtcdError> {
        let mut end = key.as_bytes().to_vec();
        end.push(0);
        let mut kv = self.kv();
        let options = GetOptions::new().with_revision(revision);
        match self
            .call("get", kv.get(key, Some(options)))
            .await
            .map_err(|e| e.at_revision(revision))
        {
            Ok(mut resp) => Ok((
                resp.take_kvs().into_iter().map(key_value).collect(),
                revision,
            )),
            Err(e) if e.is_too_large() => {
                let got = self.next_key(key.as_bytes(), &end, revision).await?;
                Ok((
                    got.into_iter()
                        .map(|(k, _)| (k, Listed::Oversize(MAX_MESSAGE)))
                        .collect(),
                    revision,
                ))
            }
            Err(e) => Err(e),
        }
    }

    async fn networks_txn(
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
        let mut kv = self.kv();
        let resp = self
            .call("list networks", kv.txn(Txn::new().and_then(ops)))
            .await
            .map_err(|e| e.at_revision(revision))?;
        let mut responses = resp.op_responses().into_iter();
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            let (Some(TxnOpResponse::Get(mut entry)), Some(TxnOpResponse::Get(mut nics))) =
                (responses.next(), responses.next())
            else {
                return Err(EtcdError::Unanswered {
                    endpoints: self.endpoints.clone(),
                    network: n.clone(),
                });
            };
            let entry = entry
                .take_kvs()
                .into_iter()
                .next()
                .map(|kv| key_value(kv).1);
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
        let mut kv = self.kv();
        let mut resp = self.call("get", kv.get(key, None)).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let revision = kv.mod_revision();
            (kv.into_key_value().1, revision)
        }))
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

    pub(super) async fn txn(&mut self, ops: Vec<TxnOp>) -> Result<i64, EtcdError> {
        let mut kv = self.client.kv_client();
        let resp = self.call("txn", kv.txn(Txn::new().and_then(ops))).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Puts one NIC: its canonical key and both index keys in one transaction, removing the
    /// index keys of where it was before. Returns the revision written.
    ///
    /// Safe against other writers of the same MAC (see [`Store::write_nic`]).
    pub async fn put_nic(&mut self, nic: &crate::model::Nic) -> Result<i64, EtcdError> {
        let key = self.layout.nic(nic.mac);
        // Its index keys name them.
        if !key_safe(&nic.node) {
            let error = KeyError::Node {
                name: nic.node.to_string(),
            };
            return Err(EtcdError::Key { key, error });
        }
        if !key_safe(&nic.network) {
            let error = KeyError::Network {
                name: nic.network.to_string(),
            };
            return Err(EtcdError::Key { key, error });
        }
        let bytes = json_at(&key, nic)?;
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

    /// Opens a watch stream with its first watch.
    pub(super) async fn watch(
        &mut self,
        key: String,
        options: WatchOptions,
    ) -> Result<WatchStream, EtcdError> {
        // A response over the limit breaks the stream; the session lists again then.
        let mut w = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        self.call("watch", w.watch(key, Some(options))).await
    }
}

/// The client options `config` asks for, credentials included when `auth`.
pub(super) async fn connect_options(
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

pub(super) async fn deadline<T>(
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
