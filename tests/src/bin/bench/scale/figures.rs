//! What the benchmark reports: per-agent distributions, one cloud's figures, an outage's.

use std::time::Duration;

/// Mean, p50, p99 and max of a per-agent figure.
#[derive(Clone, Copy, Default)]
pub(super) struct Dist {
    pub(super) mean: f64,
    pub(super) p50: u64,
    pub(super) p99: u64,
    pub(super) max: u64,
}

impl Dist {
    pub(super) fn of(values: &[u64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:.1}, p50 {}, p99 {}, max {}",
            self.mean, self.p50, self.p99, self.max
        )
    }
}

/// What one cloud measured.
pub(super) struct Figures {
    pub(super) agents: usize,
    pub(super) networks: usize,
    pub(super) nics: usize,
    pub(super) networks_per_node: f64,
    pub(super) start: Duration,
    pub(super) start_cpu: f64,
    pub(super) start_sent: f64,
    pub(super) ranges_per_agent: f64,
    pub(super) first_entries: Dist,
    pub(super) watchers: f64,
    pub(super) watchers_formula: usize,
    pub(super) streams: f64,
    pub(super) rss_before: f64,
    pub(super) rss_agents: f64,
    pub(super) idle_watch_requests: f64,
    pub(super) idle_watch_responses: f64,
    pub(super) idle_cpu: f64,
    pub(super) idle_self_cpu: f64,
    pub(super) idle_sent: f64,
    pub(super) puts: usize,
    pub(super) put_time: Duration,
    pub(super) churn_events: Dist,
    pub(super) churn_woken: usize,
    pub(super) naive_events: f64,
    pub(super) churn_partials: Dist,
    pub(super) churn_documents: u64,
    pub(super) churn_partial_networks: f64,
    pub(super) churn_settled: Duration,
    pub(super) churn_cpu: f64,
    pub(super) churn_etcd_events: f64,
    pub(super) churn_sent: f64,
    pub(super) churn_watchers_after: f64,
    pub(super) churn_watchers_formula: usize,
    pub(super) node_events: Dist,
    pub(super) node_documents: Dist,
    pub(super) node_naive: f64,
    pub(super) node_settled: Duration,
    pub(super) node_cpu: f64,
    pub(super) node_sent: f64,
    pub(super) reconnects: u64,
    pub(super) unavailable: u64,
    pub(super) slow_watchers: f64,
    /// Resumed, then listed again after a compaction.
    pub(super) outages: Option<(Outage, Outage)>,
}

/// What an etcd outage cost once etcd was back.
pub(super) struct Outage {
    /// From etcd accepting connections again to every source watching again (and, after a
    /// compaction, every source having listed again).
    pub(super) back: Duration,
    pub(super) reconnects: Dist,
    pub(super) ranges_per_agent: f64,
    pub(super) documents: Dist,
    /// etcd's CPU seconds from accepting connections until then.
    pub(super) cpu: f64,
    /// etcd's CPU seconds from its start until it accepted connections (replaying its log).
    pub(super) start_cpu: f64,
    pub(super) rss: f64,
}
