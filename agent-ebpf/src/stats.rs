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

/// The XDP verdict of a handler: its action, or a drop counted under the reason it failed with.
#[inline(always)]
pub fn xdp_verdict(result: Result<u32, Stat>) -> u32 {
    match result {
        Ok(action) => action,
        Err(stat) => {
            count(stat);
            aya_ebpf::bindings::xdp_action::XDP_DROP
        }
    }
}
