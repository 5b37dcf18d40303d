//! Wall-clock time, for what is compared across processes and restarts: IPAM staleness, the
//! snapshot's date, the health heartbeat an HTTP probe reads.

use std::time::{Duration, SystemTime};

/// Time since the Unix epoch (zero if the clock is set before it).
pub fn unix_now() -> Duration {
    SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default()
}
