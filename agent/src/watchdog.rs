//! The runtime watchdog: measures how late the event loop runs a timer, exports it as
//! `holdfast_runtime_lag_seconds`, and feeds systemd's watchdog (`WatchdogSec=`) only while
//! the event loop is on time and the agent's main loop is alive. A stuck agent then stops
//! feeding it and systemd restarts it; the data plane keeps serving from its pinned maps
//! meanwhile. This is the failure of the seed post-mortem: a slow task on the async runtime
//! froze the IPAM, and nothing restarted it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::metrics::{Health, Metrics};

/// How often the lag is measured.
const TICK: Duration = Duration::from_millis(100);
/// The gauge shows the worst lag of this many ticks.
const WINDOW: u32 = 10;
/// Beyond this lag the loop counts as stuck, and systemd is not fed.
pub const LAG_LIMIT: Duration = Duration::from_secs(2);
/// The main loop beats every second; silent this long, it is stuck.
const MAIN_LOOP_LIMIT: Duration = Duration::from_secs(5);

/// Runs until the task is dropped. `WATCHDOG_USEC` (set by systemd with `WatchdogSec=`) turns
/// the feeding on; without it the watchdog only measures.
pub async fn run(metrics: Arc<Metrics>, health: Arc<Health>) {
    let feed_every = sd_notify::watchdog_enabled().map(|d| d / 2);
    if let Some(every) = feed_every {
        debug!(?every, "feeding the systemd watchdog");
    }
    let mut fed = Instant::now();
    let mut worst = Duration::ZERO;
    let mut ticks = 0;
    let mut starving = false;
    loop {
        let due = tokio::time::Instant::now() + TICK;
        tokio::time::sleep_until(due).await;
        let lag = tokio::time::Instant::now().saturating_duration_since(due);
        worst = worst.max(lag);
        ticks += 1;
        if ticks >= WINDOW {
            metrics.runtime_lag.set(worst.as_secs_f64());
            worst = Duration::ZERO;
            ticks = 0;
        }
        let Some(every) = feed_every else {
            continue;
        };
        let healthy = lag < LAG_LIMIT && health.stale_for() <= MAIN_LOOP_LIMIT;
        if !healthy {
            if !starving {
                warn!(
                    lag = ?lag,
                    main_loop_silent = ?health.stale_for(),
                    "event loop late or main loop silent: no longer feeding the systemd watchdog"
                );
            }
            starving = true;
            continue;
        }
        starving = false;
        if fed.elapsed() >= every {
            // A datagram to systemd's socket: it does not block.
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                warn!(error = %e, "feeding the systemd watchdog");
            }
            fed = Instant::now();
        }
    }
}

/// Tells systemd (`Type=notify`) that the agent serves.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")]) {
        warn!(error = %e, "notifying systemd");
    }
}
