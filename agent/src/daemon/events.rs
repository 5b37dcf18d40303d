//! What the programs report to the agent: DHCP client events (RELEASE, DECLINE) on a ring
//! buffer, logged and counted; and the programs' own log records (aya-log), forwarded.

use std::{os::fd::AsRawFd, sync::Arc};

use agent_common::dhcp::{DHCPDECLINE, DHCPRELEASE};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};
use tracing::{info, warn};

use super::handle::{Events, Logger};
use crate::{dataplane, links::Links, metrics::Metrics, model::MacAddr};

/// Logs and counts RELEASE and DECLINE reported by the programs.
pub async fn watch_events(ring: Events, links: watch::Receiver<Links>, metrics: Arc<Metrics>) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot watch data-plane events");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = dataplane::parse_event(&item) else {
                continue;
            };
            let kind = match u8::try_from(ev.kind) {
                Ok(DHCPRELEASE) => "release",
                Ok(DHCPDECLINE) => "decline",
                _ => "unknown",
            };
            let interface = links
                .borrow()
                .get(&ev.ifindex)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("ifindex {}", ev.ifindex));
            let addr = agent_common::ipv4(ev.addr);
            metrics
                .dhcp_events
                .get_or_create(&vec![("type", kind)])
                .inc();
            info!(
                event = %kind,
                mac = %MacAddr(ev.mac),
                interface = %interface,
                address = %addr,
                "DHCP client event"
            );
        }
        guard.clear_ready();
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
