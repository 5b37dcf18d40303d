//! `holdfast run`: keeps the data plane serving the last good IPAM state.
//!
//! Data flows one way: source -> validated model -> rendered desired state -> maps. The data
//! plane lives on its own thread ([`handle`]), validation and rendering run on the blocking
//! pool, and the runtime only moves messages:
//!
//! - [`agent`]: the state machine (what serves, and how updates and interface changes move it);
//! - [`handle`]: the data-plane thread;
//! - [`events`]: what the programs report (DHCP events, their log records);
//! - [`persist`]: the snapshot writer and the memory trimmer;
//! - this file: the wiring, and the loop that receives what happens and hands it to the agent.

pub mod agent;
pub mod events;
pub mod handle;
pub mod persist;
pub mod queue;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc, watch},
};
use tracing::{debug, error, info, warn};

use self::{
    agent::{Agent, Parts},
    handle::DataplaneHandle,
    queue::Queue,
};
use crate::{
    anchor,
    config::{Config, IpamSource, UnderlayHook},
    decap, fault,
    ipam::{Source, Update, etcd::EtcdSource, file::FileSource},
    links,
    metrics::{self, Health, Metrics},
    snapshot, watchdog,
};

/// How often links are dumped again and the data plane reconciled, in case a netlink message
/// was lost (the socket buffer can overflow when thousands of taps change at once).
const RESYNC: Duration = Duration::from_secs(60);

/// Applies the oldest IPAM update received, after queueing what the source sent meanwhile (a
/// document supersedes what came before it). One update per turn of the loop: interface
/// changes and the heartbeat are served between them.
async fn apply_next(agent: &mut Agent, queue: &mut Queue, rx: &mut mpsc::Receiver<Update>) {
    while let Ok(update) = rx.try_recv() {
        queue.push(update);
    }
    if let Some(update) = queue.pop() {
        agent.on_ipam(update).await;
    }
}

/// Raises the soft file limit to the hard one: systemd's default soft limit (1,024) is kept
/// low for programs that use select(2), which this one does not. The metrics port's
/// connection limit is derived from what this leaves (`metrics::connection_limit`).
fn raise_file_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) on a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return;
    }
    let was = l.rlim_cur;
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit(2) on a valid struct, within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            l.rlim_cur = was;
        }
    }
    info!(
        soft = l.rlim_cur,
        hard = l.rlim_max,
        raised_from = was,
        metrics_connections = metrics::connection_limit(),
        "file limit"
    );
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_file_limit();
    let metrics = Arc::new(Metrics::default());
    metrics.in_sync_now();
    let health = Arc::new(Health::default());
    health.beat();
    tokio::spawn(watchdog::run(metrics.clone(), health.clone()));
    // The source is made first, and runs once the snapshot serves: the metrics read what it
    // counts, the agent holds how to ask it for a complete document.
    let mut source = match config.ipam.source {
        IpamSource::File => {
            let path = config
                .ipam
                .path
                .clone()
                .ok_or_else(|| anyhow!("ipam.path is required"))?;
            Source::File(FileSource::new(path, config.ipam.poll_interval()))
        }
        IpamSource::Etcd => Source::Etcd(Box::new(EtcdSource::new(
            config.ipam.clone(),
            config.node.clone(),
        ))),
    };
    let registry = metrics::registry(&metrics, source.stats(), config.bpffs_dir.clone());
    let mut http = tokio::spawn(metrics::serve(
        config.metrics_addr,
        registry,
        health.clone(),
    ));
    info!(node = %config.node, bpffs = %config.bpffs_dir.display(), "holdfast starting");

    let (dp, events, logger) = DataplaneHandle::spawn(&config).await?;
    let mut decap_device = None;
    if let Some(u) = &config.underlay
        && u.hook == UnderlayHook::Tc
    {
        // Down until its program is attached; without it the underlay's XDP decapsulates.
        match decap::ensure().await {
            Ok(ifindex) => {
                info!(
                    device = decap::DEVICE,
                    ifindex, "decapsulation device ready"
                );
                decap_device = Some(ifindex);
            }
            Err(e) => warn!(
                error = %e,
                "no decapsulation device: the underlay's XDP program decapsulates instead"
            ),
        }
    }
    if config.underlay.is_some() {
        match anchor::ensure(anchor::DEFAULT_NAME).await {
            Ok(ifindex) => info!(
                device = anchor::DEFAULT_NAME,
                ifindex, "next-hop lookup anchor ready"
            ),
            Err(e) => {
                warn!(error = %e, "no next-hop lookup anchor: remote traffic takes the skb path")
            }
        }
    }

    // The netlink subscription comes before the dump so no change falls between them.
    let (nl, mut link_events) = links::watch().context("watching interfaces")?;
    let initial_links = links::dump(&nl).await.context("listing interfaces")?;
    let (links_tx, links_rx) = watch::channel(initial_links.clone());

    if let Some(ring) = events {
        tokio::spawn(events::watch_events(
            ring,
            links_rx,
            metrics.clone(),
            source.conflicts(),
        ));
    }
    if let Some(logger) = logger {
        tokio::spawn(events::watch_logger(logger));
    }

    let (persist_tx, persist_rx) = watch::channel(None);
    tokio::spawn(persist::persist(
        persist_rx,
        config.state_dir.clone(),
        config.node.clone(),
    ));
    let trim = Arc::new(Notify::new());
    tokio::spawn(persist::trim_memory(trim.clone()));
    // What the pinned maps advertise (the programs answer solicitations with it): the router
    // advertisement sender starts from it, so that it advertises at once what serves, before
    // any model (IPAM unreachable, no snapshot), and withdraws whatever the first model no
    // longer holds, changes made while this agent was down included.
    let ra_tx = crate::ra::spawn(config.router_mac.0)
        .inspect_err(|e| warn!(error = %e, "no unsolicited router advertisements"))
        .ok();
    let mut ra_plan = crate::ra::Plan::new();
    if let Some(tx) = &ra_tx {
        let dir = config.bpffs_dir.clone();
        let pinned = tokio::task::spawn_blocking(move || crate::dataplane::read_ipv6(&dir)).await?;
        match pinned {
            Ok(state) => {
                ra_plan = pinned_plan(&state);
                let _ = tx.send(ra_plan.clone());
            }
            Err(e) => debug!(error = %e, "no pinned router advertisements to start from"),
        }
    }
    let mut agent = Agent::new(Parts {
        config: config.clone(),
        dp,
        metrics: metrics.clone(),
        links: initial_links,
        links_tx,
        resend: source.resend(),
        persist_tx,
        trim,
        decap_device,
        ra_tx,
        ra_plan,
    });

    // The snapshot serves before IPAM is reached.
    let dir = config.state_dir.clone();
    match tokio::task::spawn_blocking(move || snapshot::load(&dir)).await? {
        Ok(Some((model, saved_at))) => {
            info!(
                nics = model.nics.len(),
                saved_at, "serving the persisted IPAM snapshot"
            );
            // The snapshot was IPAM's state when it was saved: staleness counts from then.
            metrics.in_sync_at(saved_at as f64);
            agent.adopt_snapshot(model).await;
        }
        Ok(None) => info!("no IPAM snapshot yet; the pinned state serves until IPAM answers"),
        Err(e) => warn!(error = %e, "ignoring the IPAM snapshot; the pinned state serves"),
    }
    health.ready.store(true, Ordering::Relaxed);
    watchdog::ready();

    let (ipam_tx, mut ipam_rx) = mpsc::channel(4);
    tokio::spawn(source.run(ipam_tx));
    let stall_at = fault::stall_loop_after().map(|d| tokio::time::Instant::now() + d);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut ipam = Queue::default();

    loop {
        // Branch futures only receive (cancel-safe): what a branch takes is handled by it.
        tokio::select! {
            Some(update) = ipam_rx.recv() => {
                ipam.push(update);
                apply_next(&mut agent, &mut ipam, &mut ipam_rx).await;
            }
            () = std::future::ready(()), if !ipam.is_empty() => {
                apply_next(&mut agent, &mut ipam, &mut ipam_rx).await;
            }
            Some(event) = link_events.recv() => agent.on_link(event).await,
            _ = resync.tick() => {
                match links::dump(&nl).await {
                    Ok(now) => agent.relink(now),
                    Err(e) => warn!(error = %e, "listing interfaces"),
                }
                agent.relimit().await;
                agent.reconcile().await;
                agent.warm_neighbours();
            }
            _ = heartbeat.tick() => {
                health.beat();
                if stall_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    error!("fault injection: the main loop blocks for good");
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            r = &mut http => {
                return match r {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow!("the metrics endpoint stopped")),
                };
            }
        }
    }
    info!("stopping; the data plane keeps serving from its pinned state");
    Ok(())
}

/// What the pinned maps advertise on each VM port.
fn pinned_plan(state: &crate::dataplane::Ipv6State) -> crate::ra::Plan {
    let ra6: std::collections::BTreeMap<u32, agent_common::Ra6> =
        state.ra6.iter().copied().collect();
    crate::ra::plan(
        state.bindings6.iter().map(|(k, b)| (k.ifindex, b.vni)),
        |vni| ra6.get(&vni).copied(),
    )
}
