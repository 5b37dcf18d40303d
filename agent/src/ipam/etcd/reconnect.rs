//! When to reconnect to etcd: a capped, jittered backoff; a cheap probe that ends the wait soon
//! after etcd is back; and the guard that keeps compactions from relisting in a loop.

use std::time::{Duration, Instant};

use etcd_client::Client;
use tracing::debug;

use super::store::{connect_options, deadline};
use crate::config::IpamConfig;

/// A session that lasted this long resets the reconnect backoff. A compaction found sooner than
/// this after the last prompt relist waits a backoff instead.
pub(super) const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// While disconnected, etcd is probed at intervals uniform in [1/2, 3/2] of this.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe's deadline (the call timeout when that is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Once a probe finds etcd back, the agent reconnects after a wait uniform in [0, this): a
/// fleet that lost etcd together does not come back in the same instant.
const RECONNECT_JITTER: Duration = Duration::from_secs(2);

/// Capped exponential backoff with full jitter: each wait is uniform in [0, min(cap, base·2ⁿ)],
/// so thousands of agents losing etcd at once come back spread out, not in waves.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Asks etcd, cheaply, whether it is back while the agent is disconnected: a Status call,
/// which etcd answers without authentication, so a probing fleet never costs etcd a password
/// check (as a reconnect with credentials does). One client per outage: its connection is
/// re-established by the call that finds etcd back, and TLS files are read again at the next.
pub(super) struct Probe {
    config: IpamConfig,
    client: Option<Client>,
}

impl Probe {
    pub(super) fn new(config: IpamConfig) -> Self {
        Self {
            config,
            client: None,
        }
    }

    /// Drops the client: the next outage probes on a connection of its own.
    pub(super) fn reset(&mut self) {
        self.client = None;
    }
}

/// Says whether etcd answers; a trait so that tests can script the answers.
pub(super) trait Answers {
    async fn answers(&mut self) -> bool;
}

impl Answers for Probe {
    /// Whether a member answers and knows a leader (without one, reconnecting would fail).
    async fn answers(&mut self) -> bool {
        let config = &self.config;
        let timeout = PROBE_TIMEOUT.min(config.timeout());
        if self.client.is_none() {
            let Ok(options) = connect_options(config, timeout, false).await else {
                return false;
            };
            let endpoints = config.endpoints.join(",");
            let connect = Client::connect(&config.endpoints, Some(options));
            self.client = deadline(&endpoints, "probe", timeout, connect).await.ok();
        }
        let Some(client) = &self.client else {
            return false;
        };
        let mut m = client.maintenance_client();
        match tokio::time::timeout(timeout, m.status()).await {
            Ok(Ok(status)) => {
                debug!(leader = status.leader(), "etcd probe answered");
                status.leader() != 0
            }
            Ok(Err(e)) => {
                debug!(error = %e, "etcd probe failed");
                false
            }
            Err(_) => {
                debug!(?timeout, "etcd probe: no answer");
                false
            }
        }
    }
}

/// How a wait before reconnecting ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Woken {
    /// The backoff delay ran out.
    Backoff,
    /// A probe found etcd back.
    Probe,
}

/// Waits `delay` (the backoff's) before the next attempt, probing etcd meanwhile at a jittered
/// interval. `away`: the last contact with etcd got no answer. When a probe answers and etcd
/// was away (by `away` or an earlier probe), the wait ends after a short jitter instead: an
/// agent whose backoff grew during a long outage is not left behind for up to a backoff
/// ceiling once etcd is back. A probe that answers while etcd was not away means the failure
/// lies elsewhere (auth, load, a stream broken midway): the backoff stands and probing stops.
pub(super) async fn wait_to_reconnect(
    delay: Duration,
    mut away: bool,
    probe: &mut impl Answers,
) -> Woken {
    use tokio::time::{Instant, sleep_until};
    let until = Instant::now() + delay;
    loop {
        let next = Instant::now() + PROBE_EVERY.mul_f64(0.5 + fastrand::f64());
        if next >= until {
            sleep_until(until).await;
            return Woken::Backoff;
        }
        sleep_until(next).await;
        if !probe.answers().await {
            away = true;
            continue;
        }
        if !away {
            sleep_until(until).await;
            return Woken::Backoff;
        }
        sleep_until(until.min(Instant::now() + RECONNECT_JITTER.mul_f64(fastrand::f64()))).await;
        return Woken::Probe;
    }
}

/// Lets a compaction relist at once, unless the last prompt relist was less than
/// [`HEALTHY_SESSION`] ago: a store that keeps compacting under the agent then gets the
/// reconnect backoff, never a loop (flannel once relisted on compaction in a hot loop and
/// filled disks with its logs).
#[derive(Debug, Default)]
pub(super) struct RelistGuard {
    last: Option<Instant>,
}

impl RelistGuard {
    pub(super) fn prompt(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < HEALTHY_SESSION)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::time::Instant;

    use super::*;

    /// Answers as scripted, then `then` for ever.
    struct Script {
        answers: VecDeque<bool>,
        then: bool,
        asked: usize,
    }

    impl Script {
        fn new(answers: &[bool], then: bool) -> Self {
            Self {
                answers: answers.iter().copied().collect(),
                then,
                asked: 0,
            }
        }
    }

    impl Answers for Script {
        async fn answers(&mut self) -> bool {
            self.asked += 1;
            self.answers.pop_front().unwrap_or(self.then)
        }
    }

    const DELAY: Duration = Duration::from_secs(30);

    fn about(elapsed: Duration, expected: Duration) -> bool {
        elapsed >= expected && elapsed < expected + Duration::from_millis(10)
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_finds_etcd_back_ends_the_wait() {
        let start = Instant::now();
        let mut probe = Script::new(&[false, false], true);
        assert_eq!(
            wait_to_reconnect(DELAY, false, &mut probe).await,
            Woken::Probe
        );
        assert_eq!(probe.asked, 3);
        // Three probes at most 1.5 s apart, then at most 2 s of jitter.
        assert!(start.elapsed() <= Duration::from_millis(3 * 1500 + 2000));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_contact_without_answer_the_first_probe_answering_ends_the_wait() {
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        assert_eq!(
            wait_to_reconnect(DELAY, true, &mut probe).await,
            Woken::Probe
        );
        assert_eq!(probe.asked, 1);
        assert!(start.elapsed() <= Duration::from_millis(1500 + 2000));
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_answering_all_along_leaves_the_backoff_as_it_is() {
        // The failure was not etcd being away (credentials, load): no early reconnect, and
        // one probe is enough to know.
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        assert_eq!(
            wait_to_reconnect(DELAY, false, &mut probe).await,
            Woken::Backoff
        );
        assert_eq!(probe.asked, 1);
        assert!(about(start.elapsed(), DELAY), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn etcd_away_throughout_waits_the_backoff_probing_about_every_second() {
        let start = Instant::now();
        let mut probe = Script::new(&[], false);
        assert_eq!(
            wait_to_reconnect(DELAY, true, &mut probe).await,
            Woken::Backoff
        );
        assert!(about(start.elapsed(), DELAY), "{:?}", start.elapsed());
        assert!((20..=60).contains(&probe.asked), "{} probes", probe.asked);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_backoff_is_not_probed() {
        let start = Instant::now();
        let mut probe = Script::new(&[], true);
        let delay = Duration::from_millis(300);
        assert_eq!(
            wait_to_reconnect(delay, true, &mut probe).await,
            Woken::Backoff
        );
        assert_eq!(probe.asked, 0);
        assert!(about(start.elapsed(), delay), "{:?}", start.elapsed());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..30).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[20..].iter().any(|d| *d > Duration::from_millis(200)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn compactions_back_to_back_wait_a_backoff() {
        let mut guard = RelistGuard::default();
        let t = std::time::Instant::now();
        assert!(guard.prompt(t));
        assert!(!guard.prompt(t + Duration::from_secs(1)));
        assert!(!guard.prompt(t + Duration::from_secs(29)));
        // A refusal does not push the window on.
        assert!(guard.prompt(t + Duration::from_secs(30)));
        assert!(!guard.prompt(t + Duration::from_secs(45)));
        assert!(guard.prompt(t + Duration::from_secs(61)));
    }
}
