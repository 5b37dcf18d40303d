//! Prometheus metrics and the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
//!
//! Data-plane counters live in a pinned per-CPU map; they are read and summed on each scrape, on
//! the blocking pool, so they continue across agent restarts and cost nothing per packet beyond
//! the increment.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::Stat;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
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

use crate::{dataplane::StatsReader, model::Reason};

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
    pub ipam_reconnects: Counter,
    pub ipam_watch_events: Counter,
    /// When the agent last knew it held IPAM's current state (Unix seconds, as f64 bits).
    pub ipam_in_sync_at: Arc<AtomicU64>,
    /// Event-loop lag the watchdog measured, in seconds (the worst of the last second).
    pub runtime_lag: Gauge<f64, AtomicU64>,
    pub leases: Gauge,
    pub fdb: Gauge,
    pub interfaces: Gauge,
    pub dataplane_errors: Counter,
    pub dhcp_events: Family<Vec<(&'static str, &'static str)>, Counter>,
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
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
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

/// A data-plane metric family: one Prometheus counter, each label value the sum of some stats.
struct BpfFamily {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    members: &'static [(&'static str, &'static [Stat])],
}

const BPF_FAMILIES: &[BpfFamily] = &[
    BpfFamily {
        name: "holdfast_dhcp_requests",
        help: "DHCP messages received from bound NICs, by message type",
        label: "type",
        members: &[
            ("discover", &[Stat::DhcpDiscover]),
            (
                "request",
                &[
                    Stat::DhcpRequestSelecting,
                    Stat::DhcpRequestInitReboot,
                    Stat::DhcpRequestRenewing,
                    Stat::DhcpRequestRebinding,
                ],
            ),
            ("inform", &[Stat::DhcpInform]),
            ("release", &[Stat::DhcpRelease]),
            ("decline", &[Stat::DhcpDecline]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_request_states",
        help: "DHCPREQUESTs by client state (RFC 2131 §4.3.2)",
        label: "state",
        members: &[
            ("selecting", &[Stat::DhcpRequestSelecting]),
            ("init_reboot", &[Stat::DhcpRequestInitReboot]),
            ("renewing", &[Stat::DhcpRequestRenewing]),
            ("rebinding", &[Stat::DhcpRequestRebinding]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_replies",
        help: "DHCP replies sent by the XDP responder, by message type",
        label: "type",
        members: &[
            ("offer", &[Stat::DhcpOffer]),
            ("ack", &[Stat::DhcpAck]),
            ("nak", &[Stat::DhcpNak]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_drops",
        help: "DHCP packets dropped without a reply, by reason",
        label: "reason",
        members: &[
            ("malformed", &[Stat::DropDhcpMalformed]),
            ("bad_options", &[Stat::DropDhcpBadOptions]),
            ("chaddr_mismatch", &[Stat::DropDhcpChaddrMismatch]),
            ("rogue_server", &[Stat::DropDhcpRogueServer]),
            ("relayed", &[Stat::DropDhcpRelayed]),
            ("unknown_type", &[Stat::DropDhcpUnknownType]),
            ("bad_request", &[Stat::DropDhcpBadRequest]),
            ("no_room", &[Stat::DropDhcpNoRoom]),
            ("other_server", &[Stat::DhcpOtherServer]),
        ],
    },
    BpfFamily {
        name: "holdfast_vxlan_encap",
        help: "Frames from VMs encapsulated toward a remote VTEP, by path (xdp, or skb for GSO and unresolved next hops)",
        label: "path",
        members: &[("xdp", &[Stat::VxlanEncap]), ("skb", &[Stat::SkbEncap])],
    },
    BpfFamily {
        name: "holdfast_forward_local",
        help: "Frames from VMs delivered to another VM on this host, by path",
        label: "path",
        members: &[
            ("xdp", &[Stat::ForwardLocal]),
            ("skb", &[Stat::SkbForwardLocal]),
        ],
    },
    BpfFamily {
        name: "holdfast_drops",
        help: "Frames the VPC data plane dropped, by reason",
        label: "reason",
        members: &[
            ("spoofed_mac", &[Stat::DropSpoofedMac]),
            ("spoofed_ip", &[Stat::DropSpoofedIp]),
            ("arp_spoof", &[Stat::DropArpSpoof]),
            ("arp_unknown", &[Stat::DropArpUnknown]),
            ("arp_no_answer", &[Stat::DropArpNoAnswer]),
            ("bcast_mcast", &[Stat::DropBcastMcast]),
            ("unknown_unicast", &[Stat::DropUnknownUnicast]),
            ("not_ipv4", &[Stat::DropNotIpv4]),
            ("malformed", &[Stat::DropMalformed]),
            ("no_underlay", &[Stat::DropNoUnderlay]),
            ("no_route", &[Stat::DropNoRoute]),
            ("unknown_vtep", &[Stat::DropUnknownVtep]),
            ("unknown_vni", &[Stat::DropUnknownVni]),
            ("unknown_inner_dst", &[Stat::DropUnknownInnerDst]),
            ("inner_spoof", &[Stat::DropInnerSpoof]),
        ],
    },
];

/// Data-plane counters without labels.
const BPF_COUNTERS: &[(&str, &str, Stat)] = &[
    (
        "holdfast_dhcp_misses",
        "DHCP requests from an (interface, MAC) with no binding",
        Stat::DhcpMiss,
    ),
    (
        "holdfast_dhcp_rapid_commit",
        "DISCOVERs with rapid commit answered with an ACK (RFC 4039)",
        Stat::DhcpRapidCommit,
    ),
    (
        "holdfast_dhcp_option_overload",
        "Requests carrying option overload (52); sname/file are not parsed",
        Stat::DhcpOverloadIgnored,
    ),
    (
        "holdfast_dhcp_client_id_not_echoed",
        "Replies sent without the request's client identifier (option 61): it did not fit in 576 bytes",
        Stat::DhcpClientIdNotEchoed,
    ),
    (
        "holdfast_dhcp_events_lost",
        "RELEASE/DECLINE events lost because the ring buffer was full",
        Stat::DhcpEventsLost,
    ),
    (
        "holdfast_arp_replies",
        "ARP requests answered in XDP",
        Stat::ArpReply,
    ),
    (
        "holdfast_vxlan_decap",
        "VXLAN frames from the underlay decapsulated into local VMs",
        Stat::VxlanDecap,
    ),
    (
        "holdfast_vxlan_decap_gro",
        "Decapsulated TCP handed to the underlay's GRO, then into its VM by TC (part of decap)",
        Stat::DecapGro,
    ),
    (
        "holdfast_to_router",
        "Frames from VMs to the router MAC, handed to the host stack",
        Stat::ToRouter,
    ),
    (
        "holdfast_skb_path",
        "Frames XDP handed to the skb path (GSO, oversized, next hop not resolved yet)",
        Stat::ToSkbPath,
    ),
    (
        "holdfast_icmp_frag_needed",
        "ICMP fragmentation-needed sent to VMs for frames too big for their network",
        Stat::IcmpFragNeeded,
    ),
    (
        "holdfast_nexthop_cached",
        "Encapsulations that used a cached next hop (no kernel neighbour entry)",
        Stat::NextHopCached,
    ),
    (
        "holdfast_underlay_passed",
        "Underlay frames passed to the host stack (not VXLAN to this VTEP)",
        Stat::UnderlayPass,
    ),
];

/// Reads the pinned counters on each scrape.
#[derive(Debug)]
struct BpfCollector {
    bpffs_dir: PathBuf,
    reader: Mutex<Option<ReaderCell>>,
}

struct ReaderCell(StatsReader);

impl std::fmt::Debug for ReaderCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsReader")
    }
}

impl BpfCollector {
    fn totals(&self) -> Option<Vec<u64>> {
        let mut guard = self.reader.lock().ok()?;
        if guard.is_none() {
            *guard = StatsReader::open(&self.bpffs_dir).ok().map(ReaderCell);
        }
        guard.as_ref().map(|r| r.0.read())
    }
}

impl Collector for BpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Fault injection for the stall tests: a collection that blocks for a long time, as
        // the seed's slow periodic task did. It runs on the blocking pool, so it must not
        // delay anything else.
        if let Some(stall) = crate::fault::slow_collect() {
            std::thread::sleep(stall);
        }
        let Some(totals) = self.totals() else {
            return Ok(());
        };
        let get = |s: Stat| totals.get(s as usize).copied().unwrap_or(0);
        for fam in BPF_FAMILIES {
            let c = ConstCounter::new(0u64);
            let mut m = encoder.encode_descriptor(fam.name, fam.help, None, c.metric_type())?;
            for (value, stats) in fam.members {
                let total: u64 = stats.iter().map(|s| get(*s)).sum();
                let labels = [(fam.label, *value)];
                ConstCounter::new(total).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, stat) in BPF_COUNTERS {
            let c = ConstCounter::new(get(*stat));
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

/// Builds the registry: the agent's metrics and the data-plane collector.
pub fn registry(metrics: &Arc<Metrics>, bpffs_dir: PathBuf) -> Registry {
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
    r.register(
        "holdfast_ipam_reconnects",
        "Connection attempts to the IPAM store after the first",
        metrics.ipam_reconnects.clone(),
    );
    r.register(
        "holdfast_ipam_watch_events",
        "Changes the IPAM store's watches delivered to this agent",
        metrics.ipam_watch_events.clone(),
    );
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
        "holdfast_fdb_entries",
        "Forwarding entries (local and remote NICs of this host's networks) in the data plane",
        metrics.fdb.clone(),
    );
    r.register(
        "holdfast_interfaces",
        "VM interfaces carrying the XDP program",
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
        "holdfast_build",
        "Build information",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register_collector(Box::new(BpfCollector {
        bpffs_dir,
        reader: Mutex::new(None),
    }));
    r
}

/// Liveness and readiness as the HTTP endpoint reports them.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the data plane is loaded and the first state (IPAM, snapshot or pinned) serves.
    pub ready: AtomicBool,
    /// Last time the agent's main loop ran, in seconds since the Unix epoch.
    pub heartbeat: AtomicU64,
}

impl Health {
    pub fn beat(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.heartbeat.store(now, Ordering::Relaxed);
    }

    /// How long since the main loop last beat.
    pub fn stale_for(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(now.saturating_sub(self.heartbeat.load(Ordering::Relaxed)))
    }
}

/// The main loop beats at least this often; older means it is stuck.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // Reading the pinned counters is a syscall per slot: keep it off the runtime.
    let registry = s.registry.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).map(|()| out)
    })
    .await;
    match body {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let stale = s.health.stale_for();
    if stale > HEARTBEAT_TIMEOUT {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("main loop stuck for {}s\n", stale.as_secs()),
        )
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { registry, health });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
    axum::serve(listener, app)
        .await
        .context("serving the metrics endpoint")
}

/// The process's resident memory in MiB (`/proc/self/statm`), for logs at load milestones.
pub fn resident_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    (pages * page) as f64 / (1024.0 * 1024.0)
}
