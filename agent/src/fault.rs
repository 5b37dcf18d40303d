//! Fault injection for the stall tests, off unless its environment variables are set. Each
//! fault reproduces a way an agent can freeze, so the tests can show what still works.
//!
//! - `HOLDFAST_FAULT_SLOW_COLLECT_MS=N`: every metrics collection blocks for N ms (the seed's
//!   slow periodic task).
//! - `HOLDFAST_FAULT_STALL_LOOP_AFTER_S=N`: N seconds after start, the main loop blocks for
//!   good (a stuck agent: the watchdog must notice and stop feeding systemd).

use std::{sync::OnceLock, time::Duration};

fn millis(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

pub fn slow_collect() -> Option<Duration> {
    static V: OnceLock<Option<Duration>> = OnceLock::new();
    *V.get_or_init(|| millis("HOLDFAST_FAULT_SLOW_COLLECT_MS"))
}

pub fn stall_loop_after() -> Option<Duration> {
    static V: OnceLock<Option<Duration>> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("HOLDFAST_FAULT_STALL_LOOP_AFTER_S")
            .ok()?
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}
