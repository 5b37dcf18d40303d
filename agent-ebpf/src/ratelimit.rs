//! Per-port rate limits on what a VM can make the host do on its behalf: answer DHCP, answer
//! ARP, report an event to the agent. GCRA, the virtual-scheduling form of a token bucket: one
//! `u64` per (VM interface, kind) in an LRU hash, as Cilium's `bpf/lib/ratelimit.h` keeps its
//! buckets. CPUs update a state without a lock: a lost update lets one more message through,
//! it never holds one back.

use agent_common::{RateKey, RateKind, RateLimit};
use aya_ebpf::{Global, helpers::bpf_ktime_get_ns};

use crate::maps::RATE;

/// The limits, set by the agent at load time (`rate_limits` in its config).
#[unsafe(no_mangle)]
static RATE_DHCP: Global<RateLimit> = Global::new(agent_common::RateLimits::DEFAULT.dhcp);
#[unsafe(no_mangle)]
static RATE_ARP: Global<RateLimit> = Global::new(agent_common::RateLimits::DEFAULT.arp);
#[unsafe(no_mangle)]
static RATE_EVENTS: Global<RateLimit> = Global::new(agent_common::RateLimits::DEFAULT.events);

/// Whether one more message of `kind` from the VM interface `ifindex` is within its limit;
/// takes it from the bucket when it is.
#[inline(always)]
pub fn allow(ifindex: u32, kind: RateKind) -> bool {
    let limit = match kind {
        RateKind::Dhcp => RATE_DHCP.load(),
        RateKind::Arp => RATE_ARP.load(),
        RateKind::Event => RATE_EVENTS.load(),
    };
    if limit.interval_ns == 0 {
        return true;
    }
    let key = RateKey {
        ifindex,
        kind: kind as u32,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(tat) = RATE.get_ptr_mut(&key) else {
        // A new port (or one evicted): a full bucket, less this message.
        let _ = RATE.insert(&key, &(now + limit.interval_ns), 0);
        return true;
    };
    // SAFETY: map value pointers stay valid for the program run; other CPUs may write the same
    // value meanwhile (see the module's comment).
    let theoretical = unsafe { *tat };
    let start = if theoretical > now { theoretical } else { now };
    if start - now > limit.tolerance_ns {
        return false;
    }
    // SAFETY: as above.
    unsafe { *tat = start + limit.interval_ns };
    true
}
