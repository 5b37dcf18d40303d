//! Address conflicts, written where the central IPAM can watch them: `P/conflicts/<mac>`, a
//! JSON object with the NIC's MAC, the address its client declined, the node and VM interface
//! it was reported on, and when (Unix seconds). The next report of the same MAC overwrites it;
//! IPAM deletes it once it has given the NIC another address (agents never delete it).
//!
//! One write at a time, each within the configured timeout, on a connection of its own made
//! when there is something to write: a slow or absent etcd costs the queue its conflicts
//! (logged), never the agent's loop or its watch.

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Store;
use crate::{config::IpamConfig, ipam::Conflict};

/// The value of a conflict key.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(flatten)]
    conflict: &'a Conflict,
    node: &'a str,
}

/// Writes each conflict `rx` delivers under `config`'s prefix, as reported by `node`.
pub(super) async fn write(config: IpamConfig, node: String, mut rx: mpsc::Receiver<Conflict>) {
    let mut store: Option<Store> = None;
    while let Some(c) = rx.recv().await {
        let mut s = match store.take() {
            Some(s) => s,
            None => match Store::connect(&config).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(mac = %c.mac, error = %e, "cannot report an address conflict to etcd");
                    continue;
                }
            },
        };
        let key = s.layout.conflict(c.mac);
        let value = match serde_json::to_vec(&Record {
            conflict: &c,
            node: &node,
        }) {
            Ok(v) => v,
            Err(e) => {
                warn!(mac = %c.mac, error = %e, "cannot encode an address conflict");
                store = Some(s);
                continue;
            }
        };
        match s.put_raw(&key, value).await {
            Ok(_) => {
                info!(key, ip = %c.ip, "address conflict reported to IPAM");
                store = Some(s);
            }
            // The connection is dropped: the next conflict connects again.
            Err(e) => warn!(key, error = %e, "cannot report an address conflict to etcd"),
        }
    }
}
