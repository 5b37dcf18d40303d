//! What etcd does and costs: its Prometheus metrics (watchers, streams, Range calls, bytes,
//! events), and from /proc its process's CPU time and memory.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::unix::fs::MetadataExt as _,
    time::Duration,
};

use holdfast_tests::{etcd::CLIENT_PORT, netns::Netns};

/// etcd's Prometheus metrics, read from its client URL.
pub(super) struct Scrape(String);

impl Scrape {
    pub(super) fn get(ns: &Netns) -> Self {
        let text = holdfast_tests::netns::in_netns(&ns.path(), || {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, CLIENT_PORT)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            // HTTP/1.0: the body comes whole, not chunked, and ends when the server closes.
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        Self(text.expect("etcd /metrics"))
    }

    /// The sum of the samples of `name` whose labels contain every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub(super) fn watchers(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_watcher_total", &[])
    }

    pub(super) fn streams(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_watch_stream_total", &[])
    }

    /// Events etcd sent to all watchers.
    pub(super) fn events(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_events_total", &[])
    }

    pub(super) fn sent_bytes(&self) -> f64 {
        self.sum("etcd_network_client_grpc_sent_bytes_total", &[])
    }

    pub(super) fn received_bytes(&self) -> f64 {
        self.sum("etcd_network_client_grpc_received_bytes_total", &[])
    }

    /// Range calls etcd answered (lists and gets).
    pub(super) fn ranges(&self) -> f64 {
        self.sum(
            "grpc_server_handled_total",
            &["grpc_method=\"Range\"", "etcdserverpb.KV"],
        )
    }

    /// Messages received on watch streams: watch creations, cancellations and progress
    /// requests.
    pub(super) fn watch_requests(&self) -> f64 {
        self.sum(
            "grpc_server_msg_received_total",
            &["grpc_method=\"Watch\"", "etcdserverpb.Watch"],
        )
    }

    pub(super) fn watch_responses(&self) -> f64 {
        self.sum(
            "grpc_server_msg_sent_total",
            &["grpc_method=\"Watch\"", "etcdserverpb.Watch"],
        )
    }

    pub(super) fn slow_watchers(&self) -> f64 {
        self.sum("etcd_debugging_mvcc_slow_watcher_total", &[])
    }
}

/// The pid of the etcd running in `ns` (nsenter execs it, but other tests may run their own
/// etcd: the namespace tells them apart).
pub(super) fn etcd_pid(ns: &Netns) -> u32 {
    let ino = std::fs::metadata(ns.path()).expect("netns").ino();
    let want = format!("net:[{ino}]");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "etcd")
                && std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == want)
        })
        .expect("the etcd process in the benchmark's namespace")
}

/// CPU seconds (user + system) a process has used.
pub(super) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command.
    (ticks(11) + ticks(12)) as f64 / hz
}

pub(super) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
