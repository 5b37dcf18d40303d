//! The pinned hash maps a reconcile writes, each with what it holds ([`Synced`]): the map I/O
//! around the bookkeeping of [`diff`](super::diff).

use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, MapData},
};
use imbl::OrdMap;

use super::{
    Report,
    batch::update_batch,
    diff::{Held, Plan},
    error::{DataplaneError, ReconcileError, WriteError},
};

/// A pinned hash map and what it holds, kept in step with every write so that a reconcile
/// writes only what differs.
pub(super) struct Synced<K: Clone, V: Clone> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    /// The map's descriptor, for batched updates (aya has none).
    fd: OwnedFd,
    /// What the kernel map holds, which after a failed write is not the desired state: kept,
    /// not derived from the desired state, so that what failed is written again next time.
    pub(super) held: Held<K, V>,
}

impl<K: Pod + Ord, V: Pod + PartialEq> Synced<K, V> {
    /// Takes the map `name` from the loaded object; what it holds (adopted from its pin) is
    /// read once, here.
    pub(super) fn open(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, DataplaneError> {
        let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
        let fd = match &map {
            aya::maps::Map::HashMap(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::MapFd { map: name, source })?,
            _ => return Err(DataplaneError::Missing(name)),
        };
        let map: HashMap<MapData, K, V> = HashMap::try_from(map)?;
        let held = map.iter().filter_map(Result::ok).collect();
        Ok(Self {
            name,
            map,
            fd,
            held,
        })
    }

    pub(super) fn plan(&self, desired: &OrdMap<K, V>, prune: bool) -> Plan<K, V> {
        self.held.plan(desired, prune)
    }

    /// Writes entries in order, in batches; how many were written (all of them, or those
    /// before the first that failed). [`Synced::record`] must follow with what was written.
    pub(super) fn write(&mut self, upserts: &[(K, V)], report: &mut Report) -> usize {
        let written = match update_batch(self.fd.as_fd(), upserts) {
            Ok(()) => upserts.len(),
            Err((n, e)) if e.raw_os_error() == Some(libc::EINVAL) && n == 0 => {
                // A kernel without batched updates for this map: one at a time.
                let mut n = 0;
                for (key, value) in upserts {
                    if let Err(e) = self.map.insert(key, value, 0) {
                        report.errors.push(ReconcileError::Write {
                            map: self.name,
                            source: WriteError::Entry(e),
                        });
                        break;
                    }
                    n += 1;
                }
                n
            }
            Err((n, e)) => {
                report.errors.push(ReconcileError::Write {
                    map: self.name,
                    source: WriteError::Batch(e),
                });
                n
            }
        };
        report.upserted += written;
        written
    }

    /// Records written entries as held.
    pub(super) fn record(&mut self, written: &[(K, V)]) {
        self.held.wrote(written);
    }

    /// Deletes entries; whether every delete succeeded.
    pub(super) fn remove(&mut self, keys: &[K], report: &mut Report) -> bool {
        let mut ok = true;
        for key in keys {
            match self.map.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    self.held.deleted(key);
                    report.deleted += 1;
                }
                Err(e) => {
                    ok = false;
                    report.errors.push(ReconcileError::Delete {
                        map: self.name,
                        source: e,
                    });
                }
            }
        }
        ok
    }

    /// Every write and delete succeeded: the map holds `desired`.
    pub(super) fn converged(&mut self, desired: &OrdMap<K, V>) {
        self.held.converged(desired);
    }
}
