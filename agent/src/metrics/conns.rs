//! The metrics port's connections: how many at once, for how long, and what happens past the
//! limit. Anyone who reaches the port can open connections, and each one holds a file of the
//! agent's, which shares its file limit with what serves VMs (netlink, maps, programs, the etcd
//! connection). So:
//!
//! - at most [`limit`] connections are open at once, well below the file limit;
//! - past it, a new connection closes the oldest idle one (no request in flight): thousands of
//!   idle connections cannot keep a Prometheus or a probe out. When every connection has a
//!   request in flight, the new one is closed at once;
//! - a request's headers must arrive within [`HEADER_TIMEOUT`], which also closes a keep-alive
//!   connection idle that long; an answer must be ready within [`REQUEST_TIMEOUT`]; no
//!   connection lives longer than [`MAX_AGE`] (a client that stops reading its answer);
//! - a failed accept (EMFILE, ENFILE, ENOBUFS) waits before the next, doubling up to a second:
//!   it never spins on the runtime.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{Request, StatusCode},
    response::IntoResponse as _,
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tower_service::Service as _;
use tracing::{debug, info, warn};

/// A request's headers must arrive within this; a keep-alive connection idle this long is
/// closed (a Prometheus reconnects at its next scrape).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request must be answered within this (a scrape waits for the collection thread).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// No connection lives longer: one whose client stopped reading its answer would otherwise
/// hold its file for good.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Files left to the rest of the agent when the limit is derived from the file limit.
const RESERVED_FILES: u64 = 256;
/// The bounds of [`limit`]: the low one leaves room for probes and a few Prometheus servers
/// whatever the file limit; the high one bounds memory (a connection buffers at most
/// [`MAX_BUFFER`]).
const MIN_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS: usize = 1024;
/// A connection's read buffer: a request for these paths is a few hundred bytes.
const MAX_BUFFER: usize = 16 * 1024;
/// The waits after a failed accept: the first, doubled after each failure up to the last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The process's soft file limit.
fn nofile() -> Option<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) on a valid struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0).then_some(l.rlim_cur)
}

/// How many connections the port holds at once: half of what the soft file limit leaves after
/// a reserve for the rest of the agent, within [16, 1024]. 384 at systemd's default soft limit
/// of 1,024; 1,024 at the unit's `LimitNOFILE`.
pub fn limit() -> usize {
    let files = nofile().unwrap_or(1024);
    let half = files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(half)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// What the port counts; exported as `holdfast_http_*`.
#[derive(Debug, Default)]
pub struct ConnStats {
    limit: AtomicU64,
    open: AtomicU64,
    /// Idle connections closed for a newer one.
    evicted: AtomicU64,
    /// New connections closed at once: every open one had a request in flight.
    refused: AtomicU64,
    /// Closed by a timeout: headers, answer, or age.
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

impl ConnStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Exports [`ConnStats`].
#[derive(Debug)]
struct ConnCollector(Arc<ConnStats>);

impl Collector for ConnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "holdfast_http_connections",
                "Connections to the metrics port open now",
                get(&s.open),
            ),
            (
                "holdfast_http_connections_limit",
                "Connections the metrics port holds at once (past it, the oldest idle one is closed)",
                get(&s.limit),
            ),
        ] {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let c = ConstCounter::new(0u64);
        let mut m = encoder.encode_descriptor(
            "holdfast_http_connections_closed",
            "Connections the metrics port closed to stay within its limit or its timeouts, by reason",
            None,
            c.metric_type(),
        )?;
        for (reason, value) in [
            ("evicted", get(&s.evicted)),
            ("refused", get(&s.refused)),
            ("timeout", get(&s.timed_out)),
        ] {
            ConstCounter::new(value).encode(m.encode_family(&[("reason", reason)])?)?;
        }
        let c = ConstCounter::new(get(&s.accept_errors));
        c.encode(encoder.encode_descriptor(
            "holdfast_http_accept_errors",
            "Failed accepts on the metrics port (out of files: each waits before the next)",
            None,
            c.metric_type(),
        )?)
    }
}

/// Registers the port's metrics.
pub fn register(registry: &mut Registry, stats: Arc<ConnStats>) {
    registry.register_collector(Box::new(ConnCollector(stats)));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One open connection, as the tracker sees it.
struct Slot {
    /// Requests in flight on it.
    busy: Arc<AtomicUsize>,
    /// Dropped to close the connection.
    _close: oneshot::Sender<()>,
}

/// The open connections, oldest first.
struct Tracker {
    limit: usize,
    stats: Arc<ConnStats>,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

/// A connection let in: its id, its requests in flight, and what tells it to close.
struct Admitted {
    id: u64,
    busy: Arc<AtomicUsize>,
    evicted: oneshot::Receiver<()>,
}

impl Tracker {
    /// Lets a new connection in, closing the oldest idle one at the limit; `None` when every
    /// open one has a request in flight.
    fn admit(&self) -> Option<Admitted> {
        let mut guard = lock(&self.open);
        let (next, open) = &mut *guard;
        if open.len() >= self.limit {
            let idle = open
                .iter()
                .find(|(_, s)| s.busy.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id);
            match idle {
                Some(id) => {
                    open.remove(&id);
                    ConnStats::inc(&self.stats.evicted);
                }
                None => {
                    ConnStats::inc(&self.stats.refused);
                    return None;
                }
            }
        }
        let id = *next;
        *next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (close, evicted) = oneshot::channel();
        open.insert(
            id,
            Slot {
                busy: busy.clone(),
                _close: close,
            },
        );
        self.stats.open.store(open.len() as u64, Ordering::Relaxed);
        Some(Admitted { id, busy, evicted })
    }

    fn release(&self, id: u64) {
        let mut guard = lock(&self.open);
        guard.1.remove(&id);
        self.stats
            .open
            .store(guard.1.len() as u64, Ordering::Relaxed);
    }
}

/// A request in flight on its connection, until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The peer gave up before its connection was accepted: nothing to wait for.
fn peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Accepts connections on `listener` and serves `app` on them, for good.
pub async fn accept(listener: TcpListener, app: Router, stats: Arc<ConnStats>) {
    let limit = limit();
    stats.limit.store(limit as u64, Ordering::Relaxed);
    let tracker = Arc::new(Tracker {
        limit,
        stats: stats.clone(),
        open: Mutex::default(),
    });
    info!(
        limit,
        header_timeout = ?HEADER_TIMEOUT,
        request_timeout = ?REQUEST_TIMEOUT,
        "metrics endpoint listening"
    );
    let mut wait = ACCEPT_BACKOFF.0;
    let mut failed: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if peer_error(&e) => continue,
            Err(e) => {
                ConnStats::inc(&stats.accept_errors);
                if failed == 0 {
                    warn!(
                        error = %e,
                        "metrics endpoint: cannot accept connections; trying again after a \
                         wait (up to {:?}), counted in holdfast_http_accept_errors_total",
                        ACCEPT_BACKOFF.1
                    );
                }
                failed += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        if failed > 0 {
            info!(failed, "metrics endpoint: accepting connections again");
            failed = 0;
            wait = ACCEPT_BACKOFF.0;
        }
        // Refused: dropping it closes it.
        let Some(admitted) = tracker.admit() else {
            continue;
        };
        tokio::spawn(serve(stream, app.clone(), tracker.clone(), admitted));
    }
}

/// Serves one connection until its client closes it, a timeout passes, or a newer connection
/// takes its place.
async fn serve(stream: TcpStream, app: Router, tracker: Arc<Tracker>, admitted: Admitted) {
    let Admitted { id, busy, evicted } = admitted;
    let stats = tracker.stats.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::new(&busy);
        let mut app = app.clone();
        let stats = stats.clone();
        async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, app.call(req)).await;
            drop(in_flight);
            Ok::<_, Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    ConnStats::inc(&stats.timed_out);
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no answer within {REQUEST_TIMEOUT:?}\n"),
                    )
                        .into_response()
                }
            })
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                if e.is_timeout() {
                    ConnStats::inc(&tracker.stats.timed_out);
                } else {
                    debug!(error = %e, "metrics endpoint: connection");
                }
            }
        }
        // A newer connection took its place (it was idle): dropped, which closes it.
        _ = evicted => {}
        () = tokio::time::sleep(MAX_AGE) => {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(REQUEST_TIMEOUT, conn).await.is_err() {
                ConnStats::inc(&tracker.stats.timed_out);
            }
        }
    }
    tracker.release(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(limit: usize) -> Tracker {
        Tracker {
            limit,
            stats: Arc::default(),
            open: Mutex::default(),
        }
    }

    #[test]
    fn past_the_limit_the_oldest_idle_connection_makes_room() {
        let t = tracker(3);
        let mut a: Vec<Admitted> = (0..3).map(|_| t.admit().expect("room")).collect();
        // The oldest has a request in flight: the next oldest goes.
        let busy = InFlight::new(&a[0].busy);
        let d = t.admit().expect("an idle one makes room");
        assert_eq!(
            a[1].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the second is told to close"
        );
        assert_eq!(
            a[0].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "the busy one stays"
        );
        assert_eq!(t.stats.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(t.stats.open.load(Ordering::Relaxed), 3);
        // Every one busy: the new one is refused.
        let _b2 = InFlight::new(&a[2].busy);
        let _b3 = InFlight::new(&d.busy);
        assert!(t.admit().is_none());
        assert_eq!(t.stats.refused.load(Ordering::Relaxed), 1);
        // A request done: its connection is idle again, and makes room.
        drop(busy);
        assert!(t.admit().is_some());
        assert_eq!(
            a[0].evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
    }

    #[test]
    fn the_limit_stays_well_below_the_file_limit() {
        let l = limit();
        let files = nofile().expect("getrlimit");
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&l), "{l}");
        if files >= 2 * MIN_CONNECTIONS as u64 + RESERVED_FILES {
            assert!((l as u64) * 2 + RESERVED_FILES <= files, "{l} of {files}");
        }
    }
}
