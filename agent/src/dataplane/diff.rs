//! The diff bookkeeping of one map, without I/O: what to write and delete to take the map from
//! what it holds to a desired state ([`Held::plan`]), and how what it holds follows the writes
//! and deletes that succeeded. [`Synced`](super::maps::Synced) does the map I/O around it.

use imbl::{OrdMap, ordmap::DiffItem};

/// The entries a map holds, as far as holdfast wrote and deleted them.
///
/// This mirrors the kernel map, not the desired state: after a failed write or delete, or a
/// reconcile without pruning, the two differ, and the difference is what the next reconcile
/// writes or deletes again. Deriving it from the desired state would lose exactly that.
pub(super) struct Held<K: Clone, V: Clone> {
    entries: OrdMap<K, V>,
}

/// What a map needs to reach a desired state: entries to write, keys to delete.
#[derive(Debug)]
pub(super) struct Plan<K, V> {
    pub(super) upserts: Vec<(K, V)>,
    pub(super) removals: Vec<K>,
}

impl<K: Ord + Copy, V: PartialEq + Copy> Held<K, V> {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The writes and, when pruning, the deletes that take the map from what it holds to
    /// `desired`. The map shares its structure with the last desired state it converged to, so
    /// the diff skips everything the two still share.
    pub(super) fn plan(&self, desired: &OrdMap<K, V>, prune: bool) -> Plan<K, V> {
        let mut plan = Plan {
            upserts: Vec::new(),
            removals: Vec::new(),
        };
        for item in self.entries.diff(desired) {
            match item {
                DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => {
                    plan.upserts.push((*k, *v));
                }
                DiffItem::Remove(k, _) if prune => plan.removals.push(*k),
                DiffItem::Remove(..) => {}
            }
        }
        plan
    }

    /// Records entries the map now holds: those written before a write failed, or all of them.
    pub(super) fn wrote(&mut self, written: &[(K, V)]) {
        for (key, value) in written {
            self.entries.insert(*key, *value);
        }
    }

    /// Records a key the map no longer holds.
    pub(super) fn deleted(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Every write and delete of a pruning reconcile succeeded: the map holds `desired`. Taking
    /// `desired` itself shares its structure, so the next small change diffs in time
    /// proportional to the change.
    pub(super) fn converged(&mut self, desired: &OrdMap<K, V>) {
        self.entries = desired.clone();
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Held<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            entries: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u32, u32)]) -> OrdMap<u32, u32> {
        entries.iter().copied().collect()
    }

    fn held(entries: &[(u32, u32)]) -> Held<u32, u32> {
        entries.iter().copied().collect()
    }

    /// Applies `plan` as a reconcile does when every write and delete succeeds.
    fn succeed(held: &mut Held<u32, u32>, plan: &Plan<u32, u32>) {
        held.wrote(&plan.upserts);
        for key in &plan.removals {
            held.deleted(key);
        }
    }

    fn is_empty(plan: &Plan<u32, u32>) -> bool {
        plan.upserts.is_empty() && plan.removals.is_empty()
    }

    #[test]
    fn an_empty_map_converges_by_writing_every_entry() {
        let desired = map(&[(1, 10), (2, 20), (3, 30)]);
        let mut h = held(&[]);
        let plan = h.plan(&desired, true);
        assert_eq!(plan.upserts, vec![(1, 10), (2, 20), (3, 30)]);
        assert!(plan.removals.is_empty());
        succeed(&mut h, &plan);
        assert_eq!(h.entries, desired);
        assert!(is_empty(&h.plan(&desired, true)));
    }

    #[test]
    fn a_changed_value_is_written_and_nothing_else() {
        let mut h = held(&[(1, 10), (2, 20)]);
        let desired = map(&[(1, 10), (2, 21)]);
        let plan = h.plan(&desired, true);
        assert_eq!(plan.upserts, vec![(2, 21)]);
        assert!(plan.removals.is_empty());
        succeed(&mut h, &plan);
        assert_eq!(h.entries, desired);
    }

    #[test]
    fn an_entry_no_longer_desired_is_deleted() {
        let mut h = held(&[(1, 10), (2, 20)]);
        let desired = map(&[(1, 10)]);
        let plan = h.plan(&desired, true);
        assert!(plan.upserts.is_empty());
        assert_eq!(plan.removals, vec![2]);
        succeed(&mut h, &plan);
        assert_eq!(h.entries, desired);
        assert!(is_empty(&h.plan(&desired, true)));
    }

    #[test]
    fn a_failed_write_leaves_its_entries_not_held_so_the_next_reconcile_retries_them() {
        let mut h = held(&[(1, 10)]);
        let desired = map(&[(1, 11), (2, 20), (3, 30)]);
        let plan = h.plan(&desired, true);
        assert_eq!(plan.upserts, vec![(1, 11), (2, 20), (3, 30)]);
        // The write stopped at the second entry: only the first is in the map.
        h.wrote(&plan.upserts[..1]);
        assert_eq!(h.entries, map(&[(1, 11)]));
        assert_eq!(h.plan(&desired, true).upserts, vec![(2, 20), (3, 30)]);

        // A failed update keeps the old value held, so it is written again too.
        let mut h = held(&[(1, 10)]);
        let desired = map(&[(1, 11)]);
        let plan = h.plan(&desired, true);
        h.wrote(&plan.upserts[..0]);
        assert_eq!(h.entries, map(&[(1, 10)]));
        assert_eq!(h.plan(&desired, true).upserts, vec![(1, 11)]);
    }

    #[test]
    fn a_failed_delete_leaves_the_entry_held_so_the_next_reconcile_retries_it() {
        let mut h = held(&[(1, 10), (2, 20), (3, 30)]);
        let desired = map(&[(1, 10)]);
        let plan = h.plan(&desired, true);
        assert_eq!(plan.removals, vec![2, 3]);
        // The delete of 2 failed, that of 3 succeeded.
        h.deleted(&3);
        assert_eq!(h.entries, map(&[(1, 10), (2, 20)]));
        assert_eq!(h.plan(&desired, true).removals, vec![2]);
    }

    #[test]
    fn without_pruning_entries_not_desired_are_kept_and_held() {
        let mut h = held(&[(1, 10), (2, 20)]);
        let desired = map(&[(1, 11), (3, 30)]);
        let plan = h.plan(&desired, false);
        assert_eq!(plan.upserts, vec![(1, 11), (3, 30)]);
        assert!(plan.removals.is_empty());
        succeed(&mut h, &plan);
        // The map still holds 2, and so does the bookkeeping: a pruning reconcile deletes it.
        assert_eq!(h.entries, map(&[(1, 11), (2, 20), (3, 30)]));
        assert!(is_empty(&h.plan(&desired, false)));
        let prune = h.plan(&desired, true);
        assert!(prune.upserts.is_empty());
        assert_eq!(prune.removals, vec![2]);
    }

    #[test]
    fn after_converging_the_next_change_diffs_to_that_change() {
        let mut h = held(&[(9, 90)]);
        let desired = map(&[(1, 10), (2, 20)]);
        let plan = h.plan(&desired, true);
        succeed(&mut h, &plan);
        h.converged(&desired);
        assert_eq!(h.entries, desired);
        let mut next = desired.clone();
        next.insert(2, 21);
        let plan = h.plan(&next, true);
        assert_eq!(plan.upserts, vec![(2, 21)]);
        assert!(plan.removals.is_empty());
    }
}
