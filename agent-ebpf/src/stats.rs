//! Per-CPU outcome counters (Katran's `PERCPU_ARRAY` stats, Cilium's drop reasons).

use agent_common::Stat;

use crate::maps::STATS;

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
