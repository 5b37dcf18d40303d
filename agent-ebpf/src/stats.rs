//! Per-CPU outcome counters (Katran's `PERCPU_ARRAY` stats, Cilium's drop reasons).

use agent_common::Stat;

use crate::{ctx::Ctx, maps::STATS};

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The verdict of a handler at hook `C`: its action, or a drop counted under the reason it
/// failed with.
#[inline(always)]
pub fn verdict<C: Ctx>(result: Result<u32, Stat>) -> u32 {
    match result {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            C::DROP
        }
    }
}
