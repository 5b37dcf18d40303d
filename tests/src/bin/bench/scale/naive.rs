//! The naive design for comparison: `etcdctl watch --prefix` processes, woken by every change,
//! counting the events they print.

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use holdfast_tests::{etcd::Etcd, netns::Netns};

/// `etcdctl watch --prefix`, counting the events it prints (one JSON response per line).
pub(super) struct Naive {
    child: Child,
    pub(super) events: Arc<AtomicU64>,
}

impl Naive {
    pub(super) fn start(ns: &Netns, prefix: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["etcdctl", "--endpoints", &Etcd::url(Ipv4Addr::LOCALHOST)])
            .args(["watch", "--prefix", prefix, "-w", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl (Debian package etcd-client)");
        let out = child.stdout.take().expect("etcdctl stdout");
        let events = Arc::new(AtomicU64::default());
        let counter = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let n = ["Events", "events"]
                    .iter()
                    .find_map(|k| v.get(*k)?.as_array().map(Vec::len))
                    .unwrap_or(0);
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Self { child, events }
    }
}

impl Drop for Naive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
