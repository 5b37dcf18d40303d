//! Prometheus metrics and the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
//!
//! - [`registry()`]: the registry, and the metrics the agent maintains itself ([`Metrics`]).
//! - `bpf`: the data-plane counters, read from the pinned per-CPU STATS map and summed at each
//!   scrape, so they continue across agent restarts and cost nothing per packet beyond the
//!   increment.
//! - `scrape`: collections on a dedicated thread, one at a time, off the runtime and off its
//!   blocking pool.
//! - `http`: the endpoint ([`serve`]) and what `/healthz` and `/readyz` report ([`Health`]).
//! - `conns`: its connections: a limit below the file limit, the oldest idle one closed for a
//!   new one past it, timeouts, and accepts that back off when files run out.
//! - `process`: figures of the process itself ([`resident_mib`]).

mod bpf;
mod conns;
mod http;
mod process;
mod registry;
mod scrape;

pub use conns::{HEADER_TIMEOUT, MAX_AGE, REQUEST_TIMEOUT, limit as connection_limit};
pub use http::{HEARTBEAT_TIMEOUT, Health, serve, serve_on};
pub use process::resident_mib;
pub use registry::{Metrics, ReasonLabel, registry};
