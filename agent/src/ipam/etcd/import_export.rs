//! `holdfast ipam import` and `export`: a whole IPAM document into etcd, in as few
//! transactions as etcd allows, and back out of it.

use std::collections::BTreeMap;

use etcd_client::{DeleteOptions, TxnOp};
use serde_json::Value;
use tracing::warn;

use super::{
    EtcdError, Store,
    keys::{check_key, json_at},
};
use crate::model::Model;

/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 120;

/// What an import wrote.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub put: usize,
    pub deleted: usize,
    pub transactions: usize,
    pub revision: i64,
}

impl Store {
    /// Makes etcd hold exactly `model`: what differs is written, what is absent deleted; each
    /// NIC's keys change in one transaction. Networks and nodes are written before the NICs that
    /// name them, and deleted after.
    pub async fn import(&mut self, model: &Model) -> Result<ImportReport, EtcdError> {
        let l = self.layout.clone();
        let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (id, n) in &model.networks {
            check_key(&l.network(id), id)?;
            want.insert(l.network(id), json_at(&l.network(id), n)?);
        }
        for (name, n) in &model.nodes {
            check_key(&l.node(name), name)?;
            want.insert(l.node(name), json_at(&l.node(name), n)?);
        }
        for (mac, n) in &model.nics {
            let bytes = json_at(&l.nic(*mac), n)?;
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
            // A value over the entry bound is never what is wanted: it is written over.
            have.extend(
                kvs.into_iter()
                    .map(|(k, v)| (k, v.bytes().map(<[u8]>::to_vec).unwrap_or_default())),
            );
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
                let Some(v) = v.bytes() else {
                    warn!(key, "over the entry bound; left out of the export");
                    skipped += 1;
                    continue;
                };
                match serde_json::from_slice::<Value>(v) {
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
}
