//! The registry, and the metrics the agent maintains itself: IPAM's state and rejections, the
//! event loop's lag, what the data plane holds, the DHCP events it reported.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        info::Info,
    },
    registry::Registry,
};

use super::bpf::BpfCollector;
use crate::{clock, ipam::SourceStats, model::Reason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Metrics the agent itself maintains.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ipam_rejected: Family<ReasonLabel, Counter>,
    pub ipam_rejected_entries: Family<ReasonLabel, Gauge>,
    pub ipam_last_sync: Gauge<f64, AtomicU64>,
    pub ipam_up: Gauge,
    pub ipam_load_errors: Counter,
    /// When the agent last knew it held IPAM's current state (Unix seconds, as f64 bits).
    pub ipam_in_sync_at: Arc<AtomicU64>,
    /// Event-loop lag the watchdog measured, in seconds (the worst of the last second).
    pub runtime_lag: Gauge<f64, AtomicU64>,
    pub leases: Gauge,
    /// IPv6 addresses (`ip6`) VM ports hold their NICs to.
    pub ipv6_addresses: Gauge,
    pub fdb: Gauge,
    pub interfaces: Gauge,
    pub dataplane_errors: Counter,
    pub dhcp_events: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// DECLINEs of their address (conflicts), by VM interface.
    pub dhcp_declines: Family<Vec<(&'static str, String)>, Counter>,
}

impl Metrics {
    /// Counts the rejections of one load (the counter of every rejection seen).
    pub fn count_rejections(&self, reasons: impl Iterator<Item = Reason>) {
        for r in reasons {
            self.ipam_rejected
                .get_or_create(&ReasonLabel { reason: r.label() })
                .inc();
        }
    }

    /// Sets the gauge of the entries rejected right now.
    pub fn set_rejections(&self, reasons: impl Iterator<Item = Reason>) {
        let mut counts: std::collections::BTreeMap<Reason, i64> =
            Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for r in reasons {
            *counts.entry(r).or_default() += 1;
        }
        for (r, n) in counts {
            self.ipam_rejected_entries
                .get_or_create(&ReasonLabel { reason: r.label() })
                .set(n);
        }
    }

    /// A state from IPAM was validated and applied.
    pub fn synced_now(&self) {
        let now = unix_now();
        self.ipam_last_sync.set(now);
        self.in_sync_at(now);
    }

    /// The agent holds IPAM's current state as of `at` (Unix seconds).
    pub fn in_sync_at(&self, at: f64) {
        self.ipam_in_sync_at.store(at.to_bits(), Ordering::Relaxed);
    }

    /// The agent holds IPAM's current state now.
    pub fn in_sync_now(&self) {
        self.in_sync_at(unix_now());
    }
}

/// Now, in seconds since the Unix epoch.
fn unix_now() -> f64 {
    clock::unix_now().as_secs_f64()
}

/// `holdfast_ipam_stale_seconds`, computed at each scrape.
#[derive(Debug)]
struct StaleCollector {
    in_sync_at: Arc<AtomicU64>,
}

impl Collector for StaleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let at = f64::from_bits(self.in_sync_at.load(Ordering::Relaxed));
        let stale = (unix_now() - at).max(0.0);
        let g = prometheus_client::metrics::gauge::ConstGauge::new(stale);
        let m = encoder.encode_descriptor(
            "holdfast_ipam_stale_seconds",
            "Seconds since the agent last knew it held IPAM's current state (the data plane serves it meanwhile)",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

/// What the IPAM source counts of its own work.
#[derive(Debug)]
struct SourceCollector(Arc<SourceStats>);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "holdfast_ipam_reconnects",
                "Connection attempts to the IPAM store after the first",
                self.0.reconnects(),
            ),
            (
                "holdfast_ipam_watch_events",
                "Changes the IPAM store's watches delivered to this agent",
                self.0.watch_events(),
            ),
        ] {
            let c = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

/// Builds the registry: the agent's metrics and the data-plane collector.
pub fn registry(metrics: &Arc<Metrics>, source: Arc<SourceStats>, bpffs_dir: PathBuf) -> Registry {
    let mut r = Registry::default();
    r.register(
        "holdfast_ipam_rejected",
        "IPAM entries rejected by validation, by reason (counted at each load)",
        metrics.ipam_rejected.clone(),
    );
    r.register(
        "holdfast_ipam_rejected_entries",
        "IPAM entries rejected in the latest load, by reason",
        metrics.ipam_rejected_entries.clone(),
    );
    r.register(
        "holdfast_ipam_last_sync_timestamp_seconds",
        "When the latest IPAM state was validated and applied (Unix time)",
        metrics.ipam_last_sync.clone(),
    );
    r.register(
        "holdfast_ipam_up",
        "Whether the IPAM source answered at its latest read",
        metrics.ipam_up.clone(),
    );
    r.register(
        "holdfast_ipam_load_errors",
        "IPAM reads that failed or returned an invalid document",
        metrics.ipam_load_errors.clone(),
    );
    r.register_collector(Box::new(SourceCollector(source)));
    r.register(
        "holdfast_runtime_lag_seconds",
        "How late the event loop ran the watchdog's timer (the worst of the last second)",
        metrics.runtime_lag.clone(),
    );
    r.register_collector(Box::new(StaleCollector {
        in_sync_at: metrics.ipam_in_sync_at.clone(),
    }));
    r.register(
        "holdfast_leases",
        "DHCP bindings held by the data plane",
        metrics.leases.clone(),
    );
    r.register(
        "holdfast_ipv6_addresses",
        "IPv6 addresses (ip6) of this host's NICs held by the data plane",
        metrics.ipv6_addresses.clone(),
    );
    r.register(
        "holdfast_fdb_entries",
        "Forwarding entries (local and remote NICs of this host's networks) in the data plane",
        metrics.fdb.clone(),
    );
    r.register(
        "holdfast_interfaces",
        "VM interfaces carrying the VM program (XDP in xdp mode, TC in tc mode)",
        metrics.interfaces.clone(),
    );
    r.register(
        "holdfast_dataplane_errors",
        "Data-plane operations that failed (attach, map write)",
        metrics.dataplane_errors.clone(),
    );
    r.register(
        "holdfast_dhcp_events",
        "RELEASE and DECLINE events reported by the data plane and logged",
        metrics.dhcp_events.clone(),
    );
    r.register(
        "holdfast_dhcp_declines",
        "DECLINEs of their own address by DHCP clients (an address conflict), by VM interface; \
         reported to IPAM, the binding silent for 5 minutes",
        metrics.dhcp_declines.clone(),
    );
    r.register(
        "holdfast_build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register_collector(Box::new(BpfCollector::new(bpffs_dir)));
    r
}
