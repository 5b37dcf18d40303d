//! What the programs report to the agent: DHCP client events (RELEASE, DECLINE) on a ring
//! buffer, counted and logged; and the programs' own log records (aya-log), forwarded.
//!
//! A VM can send RELEASEs as fast as its link allows. The programs limit the events each VM
//! interface may report (`rate_limits.events_*`); here the ring is drained in batches with a
//! yield between them, so a full ring never holds a runtime worker, and the log is summarised:
//! the first event of each (interface, kind) in an interval gets its own line, the others one
//! line with their count when the interval ends.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{
    dhcp::{DHCPDECLINE, DHCPRELEASE},
    dhcp6::{self, EVENT_DHCP6},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
    time::MissedTickBehavior,
};
use tracing::{info, warn};

use super::handle::{Events, Logger};
use crate::{
    clock::unix_now,
    dataplane,
    ipam::{Conflict, Conflicts},
    links::Links,
    metrics::Metrics,
    model::MacAddr,
};

/// Events handled before the task yields to the runtime.
const BATCH: usize = 256;
/// How often the events not logged one by one are summarised.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// A NIC's address conflict is logged and reported at most once in this time: a client
/// declines once per conflict, and its binding is then silent for 5 minutes.
const CONFLICT_INTERVAL: Duration = Duration::from_secs(60);

/// Counts and logs RELEASE and DECLINE reported by the programs; a DECLINE (an address
/// conflict) is also reported to IPAM through `conflicts`.
pub async fn watch_events(
    ring: Events,
    links: watch::Receiver<Links>,
    metrics: Arc<Metrics>,
    conflicts: Conflicts,
) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot watch data-plane events");
            return;
        }
    };
    let name = |ifindex: u32| {
        links
            .borrow()
            .get(&ifindex)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("ifindex {ifindex}"))
    };
    let mut log = EventLog::default();
    let mut reported = ConflictLog::default();
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Both branches are cancel-safe: readiness and a tick; the work is done in the handlers.
        let more = tokio::select! {
            ready = fd.readable_mut() => {
                let Ok(mut guard) = ready else {
                    return;
                };
                let ring = guard.get_inner_mut();
                let mut handled = 0;
                let mut kinds = Tally::default();
                while handled < BATCH
                    && let Some(item) = ring.next()
                {
                    handled += 1;
                    if let Some(ev) = dataplane::parse_event(&item) {
                        on_event(&ev, &mut log, &mut kinds, &name);
                        if u8::try_from(ev.kind) == Ok(DHCPDECLINE) {
                            on_decline(&ev, &metrics, &conflicts, &mut reported, &name);
                        }
                        if ev.kind == EVENT_DHCP6 | u32::from(dhcp6::DECLINE) {
                            on_decline6(&ev, &metrics, &mut reported, &name);
                        }
                    }
                }
                for (kind, n) in kinds.0 {
                    if n > 0 {
                        metrics
                            .dhcp_events
                            .get_or_create(&vec![("type", kind)])
                            .inc_by(n);
                    }
                }
                let more = handled == BATCH;
                if !more {
                    // Drained: wait for the next wakeup. (A record committed meanwhile set
                    // readiness again after the guard was taken; clearing keeps it.)
                    guard.clear_ready();
                }
                more
            }
            _ = summary.tick() => {
                reported.forget_before(Instant::now() - CONFLICT_INTERVAL);
                for s in log.summarise() {
                    info!(
                        interface = %name(s.ifindex),
                        event = %s.kind,
                        count = s.unlogged,
                        over = ?SUMMARY_INTERVAL,
                        "DHCP client events not logged one by one"
                    );
                }
                false
            }
        };
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// A client declined its address (RFC 2131 §4.3.3; XDP reports only the binding's own): the
/// NIC's address conflicts with something. holdfast cannot pick another, IPAM must: counted by
/// interface, logged, and reported where IPAM sees it (with etcd, `P/conflicts/<mac>`), at
/// most once a `CONFLICT_INTERVAL` per NIC.
fn on_decline(
    ev: &agent_common::DhcpEvent,
    metrics: &Metrics,
    conflicts: &Conflicts,
    reported: &mut ConflictLog,
    name: &impl Fn(u32) -> String,
) {
    let Some((interface, mac)) = count_decline(ev, metrics, reported, name) else {
        return;
    };
    let ip = agent_common::ipv4(ev.addr);
    warn!(
        %mac,
        address = %ip,
        %interface,
        to = if conflicts.reported() { "etcd" } else { "this log" },
        "address conflict: the DHCP client declined its address; IPAM should give this NIC \
         another one (its binding is silent for 5 minutes, or until its address changes)"
    );
    let c = Conflict {
        mac,
        ip,
        interface,
        at: unix_now().as_secs(),
    };
    if conflicts.reported() && !conflicts.report(c) {
        warn!(%mac, "address conflicts queued faster than etcd takes them; this one is not reported");
    }
}

/// A DHCPv6 client declined its address (RFC 8415 §18.2.8: duplicate address detection found
/// it in use): the NIC's `ip6` conflicts with something, which IPAM must solve. Counted and
/// logged as a DHCPv4 DECLINE is; not reported to etcd, whose conflict records are IPv4.
fn on_decline6(
    ev: &agent_common::DhcpEvent,
    metrics: &Metrics,
    reported: &mut ConflictLog,
    name: &impl Fn(u32) -> String,
) {
    if let Some((interface, mac)) = count_decline(ev, metrics, reported, name) {
        warn!(
            %mac,
            %interface,
            "address conflict: the DHCPv6 client declined its ip6; IPAM should give this NIC \
             another one"
        );
    }
}

/// Counts a DECLINE on its interface. Its interface and MAC when its NIC's conflict is due to
/// be logged (once a `CONFLICT_INTERVAL`).
fn count_decline(
    ev: &agent_common::DhcpEvent,
    metrics: &Metrics,
    reported: &mut ConflictLog,
    name: &impl Fn(u32) -> String,
) -> Option<(String, MacAddr)> {
    let interface = name(ev.ifindex);
    metrics
        .dhcp_declines
        .get_or_create(&vec![("interface", interface.clone())])
        .inc();
    let mac = MacAddr(ev.mac);
    reported
        .due(mac, Instant::now())
        .then_some((interface, mac))
}

/// When each NIC's conflict was last reported; entries older than the interval are dropped,
/// so its size is bounded by the DECLINEs the programs let through in that time.
#[derive(Debug, Default)]
struct ConflictLog(BTreeMap<MacAddr, Instant>);

impl ConflictLog {
    /// Whether a conflict of `mac` is reported now; records it when it is.
    fn due(&mut self, mac: MacAddr, now: Instant) -> bool {
        match self.0.get(&mac) {
            Some(at) if now.duration_since(*at) < CONFLICT_INTERVAL => false,
            _ => {
                self.0.insert(mac, now);
                true
            }
        }
    }

    fn forget_before(&mut self, before: Instant) {
        self.0.retain(|_, at| *at >= before);
    }
}

/// Events of a batch by kind, counted into the metric once per batch.
struct Tally([(&'static str, u64); 5]);

impl Default for Tally {
    fn default() -> Self {
        Self([
            ("release", 0),
            ("decline", 0),
            ("unknown", 0),
            ("release6", 0),
            ("decline6", 0),
        ])
    }
}

fn on_event(
    ev: &agent_common::DhcpEvent,
    log: &mut EventLog,
    kinds: &mut Tally,
    name: &impl Fn(u32) -> String,
) {
    let v6 = |kind: u8| EVENT_DHCP6 | u32::from(kind);
    let i = match ev.kind {
        k if k == u32::from(DHCPRELEASE) => 0,
        k if k == u32::from(DHCPDECLINE) => 1,
        k if k == v6(dhcp6::RELEASE) => 3,
        k if k == v6(dhcp6::DECLINE) => 4,
        _ => 2,
    };
    let (kind, n) = &mut kinds.0[i];
    *n += 1;
    let kind = *kind;
    if !log.first(ev.ifindex, kind) {
        return;
    }
    if i >= 3 {
        // DHCPv6: the address is the NIC's ip6.
        info!(event = %kind, mac = %MacAddr(ev.mac), interface = %name(ev.ifindex), "DHCP client event");
    } else {
        info!(
            event = %kind,
            mac = %MacAddr(ev.mac),
            interface = %name(ev.ifindex),
            address = %agent_common::ipv4(ev.addr),
            "DHCP client event"
        );
    }
}

/// Events seen in the current interval, by (ifindex, kind). Its size is bounded by the VM
/// interfaces (the programs report the ingress interface, which no VM chooses) times the kinds.
#[derive(Debug, Default)]
struct EventLog {
    seen: BTreeMap<(u32, &'static str), u64>,
}

/// Events of one (interface, kind) not logged one by one in an interval.
#[derive(Debug, PartialEq, Eq)]
struct Unlogged {
    ifindex: u32,
    kind: &'static str,
    unlogged: u64,
}

impl EventLog {
    /// Records an event; whether it is the first of its (interface, kind) in the interval,
    /// the one logged on its own.
    fn first(&mut self, ifindex: u32, kind: &'static str) -> bool {
        let n = self.seen.entry((ifindex, kind)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Ends the interval: the events that were not logged, per (interface, kind).
    fn summarise(&mut self) -> Vec<Unlogged> {
        std::mem::take(&mut self.seen)
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|((ifindex, kind), n)| Unlogged {
                ifindex,
                kind,
                unlogged: n - 1,
            })
            .collect()
    }
}

/// Forwards log records of the programs (aya-log).
pub async fn watch_logger(logger: Logger) {
    struct Fd(Logger);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(Fd(logger), Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().0.flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_is_reported_once_an_interval_per_nic() {
        let mut log = ConflictLog::default();
        let t0 = Instant::now();
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        assert!(log.due(a, t0));
        assert!(!log.due(a, t0 + Duration::from_secs(59)));
        assert!(log.due(b, t0 + Duration::from_secs(1)));
        assert!(log.due(a, t0 + CONFLICT_INTERVAL));
        log.forget_before(t0 + Duration::from_secs(2));
        assert_eq!(log.0.len(), 1, "b's entry is older: dropped");
    }

    #[test]
    fn a_flood_is_one_line_per_interface_and_kind_and_one_summary() {
        let mut log = EventLog::default();
        let mut lines = 0;
        for _ in 0..10_000 {
            lines += usize::from(log.first(7, "release"));
        }
        lines += usize::from(log.first(7, "decline"));
        lines += usize::from(log.first(8, "release"));
        assert_eq!(lines, 3, "the first of each (interface, kind)");
        assert_eq!(
            log.summarise(),
            vec![Unlogged {
                ifindex: 7,
                kind: "release",
                unlogged: 9_999
            }]
        );
        // A new interval logs the first one again, and has nothing to summarise yet.
        assert!(log.first(7, "release"));
        assert!(log.summarise().is_empty());
    }
}
