//! The data plane on a thread of its own: its calls are system calls (map batches, netlink
//! attachments), which must not run on the async runtime. The runtime sends it a desired
//! state and awaits the report.

use std::sync::mpsc as std_mpsc;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tracing::warn;

use crate::{
    config::Config,
    dataplane::{Dataplane, Desired, Report},
    ports::VmPorts,
};

/// The programs' log records (aya-log).
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The DHCP events the programs report (RELEASE, DECLINE).
pub type Events = aya::maps::RingBuf<aya::maps::MapData>;

/// The data-plane thread is gone (it panicked): nothing can be written any more.
#[derive(Debug, thiserror::Error)]
#[error("the data-plane thread exited")]
pub struct ThreadExited;

/// Requests to the data-plane thread.
enum Command {
    Reconcile(Box<Desired>, oneshot::Sender<Report>),
}

/// The data plane, owned by a dedicated thread.
#[derive(Clone)]
pub struct DataplaneHandle {
    tx: std_mpsc::Sender<Command>,
}

impl DataplaneHandle {
    /// Opens (adopts) the data plane on its thread; returns the handle and the event sources.
    pub async fn spawn(config: &Config) -> anyhow::Result<(Self, Option<Events>, Option<Logger>)> {
        let (tx, rx) = std_mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let bpffs = config.bpffs_dir.clone();
        let router_mac = config.router_mac.0;
        let limits = config.rate_limits.limits();
        let vm_ports = VmPorts::new(
            &config.vm.interfaces,
            config.underlay.as_ref().map(|u| u.interface.as_str()),
            crate::anchor::DEFAULT_NAME,
        );
        let vm_hooks = config.vm.hooks();
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || {
                let mut dp = match Dataplane::open_limited(&bpffs, router_mac, &limits) {
                    Ok(mut dp) => {
                        dp.set_vm_ports(vm_ports);
                        dp.set_vm_hooks(vm_hooks);
                        let events = dp
                            .take_events()
                            .inspect_err(|e| warn!(error = %e, "no DHCP event ring buffer"))
                            .ok();
                        let logger = dp.take_logger();
                        let _ = ready_tx.send(Ok((events, logger)));
                        dp
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::Reconcile(desired, reply) => {
                            let _ = reply.send(dp.reconcile(&desired));
                        }
                    }
                }
            })
            .context("starting the data-plane thread")?;
        let (events, logger) = ready_rx
            .await
            .map_err(|_| ThreadExited)?
            .context("opening the data plane")?;
        Ok((Self { tx }, events, logger))
    }

    /// Converges the maps and links to `desired`.
    pub async fn reconcile(&self, desired: Desired) -> Result<Report, ThreadExited> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reconcile(Box::new(desired), reply))
            .map_err(|_| ThreadExited)?;
        rx.await.map_err(|_| ThreadExited)
    }
}
