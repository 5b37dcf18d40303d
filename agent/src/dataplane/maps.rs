//! The pinned maps a reconcile writes, each with what it holds ([`Synced`]): the map I/O
//! around the bookkeeping of [`diff`](super::diff). Hash maps, and the routing trie
//! ([`Routes`]).

use std::os::fd::{AsFd as _, OwnedFd};

use agent_common::{RouteDst, RouteEntry};
use aya::{
    Ebpf, Pod,
    maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use imbl::OrdMap;

use super::{
    Report, RouteKey,
    batch::update_batch,
    diff::{Held, Plan},
    error::{DataplaneError, ReconcileError, WriteError},
};

/// The kernel side of a [`Synced`] map: how its entries are read, written and deleted.
pub(super) trait Store<K, V>: Sized {
    /// The map taken from the loaded object.
    fn take(map: aya::maps::Map, name: &'static str) -> Result<Self, DataplaneError>;
    /// Every entry it holds.
    fn entries(&self) -> Vec<(K, V)>;
    /// Writes entries in order with `BPF_MAP_UPDATE_BATCH`; on an error, how many were
    /// written before it. `EINVAL` with none written: the map takes no batched updates.
    fn batch(&self, entries: &[(K, V)]) -> Result<(), (usize, std::io::Error)>;
    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    fn remove(&mut self, key: &K) -> Result<(), MapError>;
}

/// A pinned hash map, with its descriptor for batched updates (aya has none).
pub(super) struct Hash<K, V> {
    map: HashMap<MapData, K, V>,
    fd: OwnedFd,
}

impl<K: Pod, V: Pod> Store<K, V> for Hash<K, V> {
    fn take(map: aya::maps::Map, name: &'static str) -> Result<Self, DataplaneError> {
        let fd = match &map {
            aya::maps::Map::HashMap(data) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::MapFd { map: name, source })?,
            _ => return Err(DataplaneError::Missing(name)),
        };
        Ok(Hash {
            map: HashMap::try_from(map)?,
            fd,
        })
    }

    fn entries(&self) -> Vec<(K, V)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    fn batch(&self, entries: &[(K, V)]) -> Result<(), (usize, std::io::Error)> {
        update_batch(self.fd.as_fd(), entries)
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.map.insert(key, value, 0)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        self.map.remove(key)
    }
}

/// `ROUTES`, the longest-prefix-match trie of routing tables: keyed by [`RouteKey`] on this
/// side (ordered by network, so a network's table is a range), by `Key<RouteDst>` in the
/// kernel, whose prefix length counts the VNI's 32 bits. The kernel's trie takes no batched
/// updates: entries are written one at a time.
pub(super) struct Routes(LpmTrie<MapData, RouteDst, RouteEntry>);

impl RouteKey {
    fn to_kernel(self) -> Key<RouteDst> {
        Key::new(
            32 + u32::from(self.len),
            RouteDst {
                vni: self.vni,
                addr: self.addr,
            },
        )
    }

    fn from_kernel(k: &Key<RouteDst>) -> Option<Self> {
        let len = k.prefix_len().checked_sub(32)?;
        let dst = k.data();
        Some(Self {
            vni: dst.vni,
            addr: dst.addr,
            len: u8::try_from(len).ok().filter(|l| *l <= 32)?,
        })
    }
}

impl Store<RouteKey, RouteEntry> for Routes {
    fn take(map: aya::maps::Map, _: &'static str) -> Result<Self, DataplaneError> {
        Ok(Routes(LpmTrie::try_from(map)?))
    }

    fn batch(&self, entries: &[(RouteKey, RouteEntry)]) -> Result<(), (usize, std::io::Error)> {
        if entries.is_empty() {
            return Ok(());
        }
        Err((0, std::io::Error::from_raw_os_error(libc::EINVAL)))
    }

    fn entries(&self) -> Vec<(RouteKey, RouteEntry)> {
        // A key this build cannot have written (a prefix under 32) is not held: a pruning
        // reconcile leaves it, and it matches nothing the programs look up short of a VNI.
        self.0
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((RouteKey::from_kernel(&k)?, v)))
            .collect()
    }

    fn insert(&mut self, key: &RouteKey, value: &RouteEntry) -> Result<(), MapError> {
        self.0.insert(&key.to_kernel(), value, 0)
    }

    fn remove(&mut self, key: &RouteKey) -> Result<(), MapError> {
        self.0.remove(&key.to_kernel())
    }
}

/// A pinned map and what it holds, kept in step with every write so that a reconcile writes
/// only what differs.
pub(super) struct Synced<K: Clone, V: Clone, S = Hash<K, V>> {
    name: &'static str,
    map: S,
    /// What the kernel map holds, which after a failed write is not the desired state: kept,
    /// not derived from the desired state, so that what failed is written again next time.
    pub(super) held: Held<K, V>,
}

impl<K: Copy + Ord, V: Copy + PartialEq, S: Store<K, V>> Synced<K, V, S> {
    /// Takes the map `name` from the loaded object; what it holds (adopted from its pin) is
    /// read once, here.
    pub(super) fn open(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, DataplaneError> {
        let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
        let map = S::take(map, name)?;
        let held = map.entries().into_iter().collect();
        Ok(Self { name, map, held })
    }

    pub(super) fn plan(&self, desired: &OrdMap<K, V>, prune: bool) -> Plan<K, V> {
        self.held.plan(desired, prune)
    }

    /// Writes entries in order, in batches; how many were written (all of them, or those
    /// before the first that failed). [`Synced::record`] must follow with what was written.
    pub(super) fn write(&mut self, upserts: &[(K, V)], report: &mut Report) -> usize {
        let written = match self.map.batch(upserts) {
            Ok(()) => upserts.len(),
            Err((n, e)) if e.raw_os_error() == Some(libc::EINVAL) && n == 0 => {
                // A kernel (or map) without batched updates: one at a time.
                let mut n = 0;
                for (key, value) in upserts {
                    if let Err(e) = self.map.insert(key, value) {
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
                Ok(()) | Err(MapError::KeyNotFound) => {
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
