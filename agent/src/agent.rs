//! `holdfast run`: keeps the data plane serving the last good IPAM state.
//!
//! Data flows one way: source -> validated model -> rendered leases -> maps. The data plane lives
//! on its own thread (its calls are syscalls); validation and file I/O run on the blocking pool;
//! the runtime only moves messages.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use std::net::Ipv4Addr;

use agent_common::{
    ArpEntry, ArpKey, BindingKey, DataplaneConfig, FdbEntry, FdbKey, VniInfo,
    dhcp::{DHCPDECLINE, DHCPRELEASE},
};
use anyhow::{Context as _, anyhow};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc, oneshot, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    anchor,
    config::{Config, IpamSource},
    dataplane::{self, Dataplane, Desired, Report},
    fault,
    ipam::{Update, etcd::EtcdSource, file::FileSource},
    leases::{self, Budget, Leases},
    links::{self, LinkEvent, LinkInfo, Links},
    metrics::{self, Health, Metrics},
    model::{self, Limits, MacAddr, Model, RawDocument},
    state,
    vpc::{self, Endpoint, Vpc},
    watchdog,
};

/// How often links are dumped again and the data plane reconciled, in case a netlink message
/// was lost (the socket buffer can overflow when thousands of taps change at once).
const RESYNC: Duration = Duration::from_secs(60);

/// Requests to the data-plane thread.
enum Command {
    Reconcile(Box<Desired>, oneshot::Sender<Report>),
}

/// The data plane, owned by a dedicated thread.
#[derive(Clone)]
struct DataplaneHandle {
    tx: std::sync::mpsc::Sender<Command>,
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl DataplaneHandle {
    /// Opens (adopts) the data plane on its thread; returns the handle and the event sources.
    async fn spawn(
        config: &Config,
    ) -> anyhow::Result<(
        Self,
        Option<aya::maps::RingBuf<aya::maps::MapData>>,
        Option<Logger>,
    )> {
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let bpffs = config.bpffs_dir.clone();
        let router_mac = config.router_mac.0;
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || {
                let mut dp = match Dataplane::open(&bpffs, router_mac) {
                    Ok(mut dp) => {
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
            .map_err(|_| anyhow!("the data-plane thread exited"))?
            .context("opening the data plane")?;
        Ok((Self { tx }, events, logger))
    }

    async fn reconcile(&self, desired: Desired) -> anyhow::Result<Report> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reconcile(Box::new(desired), reply))
            .map_err(|_| anyhow!("the data-plane thread exited"))?;
        rx.await
            .map_err(|_| anyhow!("the data-plane thread exited"))
    }
}

struct Agent {
    config: Config,
    dp: DataplaneHandle,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The model serving now, when one was ever validated (from IPAM or the snapshot).
    model: Option<Arc<Model>>,
    /// This node's leases rendered from `model`.
    leases: Leases,
    /// The VTEPs of the other nodes in `model`. The rest of the forwarding state is derived
    /// from `model` when the desired state is built, not kept: at 100,000 NICs a copy costs
    /// more memory than deriving it again costs time.
    vteps: BTreeSet<Ipv4Addr>,
    /// The latest document IPAM delivered, validated again when the underlay MTU changes.
    last_doc: Option<Arc<RawDocument>>,
    /// The limits the model was validated with.
    limits: Limits,
    links: Links,
    links_tx: watch::Sender<Links>,
    /// The latest adopted model, for the persister.
    persist_tx: watch::Sender<Option<Arc<Model>>>,
    /// The MACs of each network's NICs in `model`.
    nics_of: BTreeMap<String, BTreeSet<MacAddr>>,
    /// The state the data plane was last asked to converge to.
    desired: Desired,
    /// The rejections standing now (the last full load's, updated by partial ones).
    rejections: Vec<model::Rejection>,
    /// Asks the source for a complete document (the etcd source; the file source always
    /// sends one).
    resend: Arc<Notify>,
    /// Tells [`trim_memory`] that an adoption freed memory.
    trim: Arc<Notify>,
}

impl Agent {
    /// The underlay interface, when configured and present.
    fn underlay(&self) -> Option<(u32, &LinkInfo)> {
        let want = &self.config.underlay.as_ref()?.interface;
        self.links
            .iter()
            .find(|(_, l)| &l.name == want)
            .map(|(i, l)| (*i, l))
    }

    /// What the model asks of the networks this host can carry.
    fn limits(&self) -> Limits {
        let configured = self.config.underlay.as_ref().and_then(|u| u.mtu);
        Limits {
            underlay_mtu: configured.or_else(|| self.underlay().map(|(_, l)| l.mtu)),
        }
    }

    /// What the desired state is built from: copies of persistent maps, cheap to take.
    fn inputs(&self) -> Inputs {
        Inputs {
            model: self.model.clone().unwrap_or_default(),
            node: self.config.node.clone(),
            router_mac: self.config.router_mac,
            leases: self.leases.clone(),
            links: self.links.clone(),
            underlay: self.underlay().map(|(i, l)| (i, l.name.clone())),
            prune: self.model.is_some(),
        }
    }

    /// Rebuilds the whole desired state (on the blocking pool) and converges the data plane
    /// to it.
    async fn reconcile(&mut self) {
        if self.model.is_none() {
            // Nothing validated yet: the pinned state keeps serving untouched.
            return;
        }
        let inputs = self.inputs();
        let started = std::time::Instant::now();
        let Ok(desired) = tokio::task::spawn_blocking(move || build_desired(&inputs)).await else {
            error!("building the desired state panicked; the data plane keeps its state");
            return;
        };
        debug!(elapsed = ?started.elapsed(), "desired state built");
        self.converge(desired).await;
    }

    /// Changes the desired state for the networks of `nics_of` (VNIs `vnis`) and the bindings
    /// of `macs` only, on the blocking pool, and converges to it: the data plane finds what
    /// differs without looking at the rest.
    async fn reconcile_partial(
        &mut self,
        nics_of: &BTreeMap<String, BTreeSet<MacAddr>>,
        vnis: BTreeSet<u32>,
        macs: BTreeSet<MacAddr>,
    ) {
        let inputs = self.inputs();
        let mut desired = self.desired.clone();
        let networks = nics_of.clone();
        let patched = tokio::task::spawn_blocking(move || {
            let mut part = Vpc::default();
            for (id, set) in &networks {
                vpc::derive_network(
                    &inputs.model,
                    id,
                    set,
                    &inputs.node,
                    inputs.router_mac,
                    &mut part,
                );
            }
            patch_desired(&mut desired, &inputs, &part, &vnis, &macs);
            desired
        })
        .await;
        let Ok(desired) = patched else {
            error!("patching the desired state panicked; the data plane keeps its state");
            return;
        };
        self.converge(desired).await;
    }

    async fn converge(&mut self, desired: Desired) {
        self.desired = desired.clone();
        let started = std::time::Instant::now();
        match self.dp.reconcile(desired).await {
            Ok(r) => {
                self.metrics.leases.set(r.bindings as i64);
                self.metrics.fdb.set(r.fdb as i64);
                self.metrics.interfaces.set(r.interfaces as i64);
                for e in &r.errors {
                    self.metrics.dataplane_errors.inc();
                    warn!(error = %e, "data plane");
                }
                if r.upserted + r.deleted > 0 || !r.attached.is_empty() || !r.detached.is_empty() {
                    info!(
                        upserted = r.upserted,
                        deleted = r.deleted,
                        attached = ?r.attached,
                        detached = ?r.detached,
                        bindings = r.bindings,
                        fdb = r.fdb,
                        retired = ?r.retired,
                        elapsed = ?started.elapsed(),
                        "data plane reconciled"
                    );
                }
            }
            Err(e) => {
                self.metrics.dataplane_errors.inc();
                error!(error = %e, "data plane");
            }
        }
    }

    /// Adopts a validated model: render, apply, persist.
    async fn adopt(&mut self, model: Arc<Model>, persist: bool) {
        let node = self.config.node.clone();
        let m = model.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            (
                leases::for_node(&m, &node),
                vpc::vteps(&m, &node),
                m.nics_by_network(),
            )
        })
        .await;
        let Ok((rendered, vteps, nics_of)) = rendered else {
            error!("rendering leases panicked; keeping the current state");
            return;
        };
        self.nics_of = nics_of;
        if self.config.underlay.is_some() && !model.nodes.contains_key(&self.config.node) {
            warn!(node = %self.config.node, "this node is not in IPAM's nodes: no VTEP, VMs reach only VMs on this host");
        }
        let new_vteps = vteps != self.vteps;
        self.leases = rendered;
        self.vteps = vteps;
        self.model = Some(model.clone());
        self.reconcile().await;
        if new_vteps {
            self.warm_neighbours();
        }
        if persist {
            self.metrics.synced_now();
            self.persist_tx.send_replace(Some(model));
        }
        self.trim.notify_one();
    }

    /// Adopts a model in which only `networks` changed: their leases and forwarding entries
    /// are derived again, nothing else.
    async fn adopt_partial(
        &mut self,
        model: Arc<Model>,
        networks: &BTreeSet<String>,
        nics_of: BTreeMap<String, BTreeSet<MacAddr>>,
    ) {
        let prev = self.model.clone().unwrap_or_default();
        let node = self.config.node.clone();
        let mut vnis = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for id in networks {
            for m in [&prev, &model] {
                if let Some(n) = m.networks.get(id) {
                    vnis.insert(n.vni);
                }
            }
            macs.extend(self.nics_of.get(id).into_iter().flatten().copied());
            macs.extend(nics_of.get(id).into_iter().flatten().copied());
        }
        self.leases.retain(|(_, mac), _| !macs.contains(mac));
        let nics = macs.iter().filter_map(|m| model.nics.get(m));
        leases::add_for_node(&model, &node, nics, &mut self.leases);
        self.model = Some(model.clone());
        self.reconcile_partial(&nics_of, vnis, macs).await;
        for (id, set) in nics_of {
            if set.is_empty() {
                self.nics_of.remove(&id);
            } else {
                self.nics_of.insert(id, set);
            }
        }
        self.metrics.synced_now();
        self.persist_tx.send_replace(Some(model));
        self.trim.notify_one();
    }

    /// Resolves the underlay neighbours of every known VTEP ahead of traffic, so that the first
    /// frames take the XDP path rather than the skb path's `bpf_redirect_neigh`. A datagram to
    /// the discard port makes the kernel resolve the next hop; the remote host drops it.
    fn warm_neighbours(&self) {
        if self.underlay().is_none() {
            return;
        }
        let vteps: Vec<Ipv4Addr> = self.vteps.iter().copied().collect();
        tokio::spawn(async move {
            let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
                return;
            };
            for vtep in vteps {
                let _ = sock.send_to(&[], (vtep, 9)).await;
            }
        });
    }

    async fn on_ipam(&mut self, update: Update) {
        let doc = match update {
            Update::Document(doc) => Arc::new(doc),
            Update::Alive => {
                self.metrics.ipam_up.set(1);
                self.metrics.in_sync_at(unix_now());
                return;
            }
            Update::Partial { networks, sub } => {
                self.metrics.ipam_up.set(1);
                self.revalidate(networks, sub).await;
                return;
            }
            Update::Invalid(e) => {
                self.metrics.ipam_up.set(1);
                self.metrics.ipam_load_errors.inc();
                self.metrics
                    .count_rejections(std::iter::once(model::Reason::InvalidDocument));
                error!(error = %e, "IPAM document rejected; the last good state keeps serving");
                return;
            }
            Update::Unavailable(e) => {
                self.metrics.ipam_up.set(0);
                self.metrics.ipam_load_errors.inc();
                warn!(error = %e, "IPAM unavailable; the last good state keeps serving");
                return;
            }
        };
        self.metrics.ipam_up.set(1);
        if self.config.ipam.source == IpamSource::File {
            // The etcd source keeps its own view and sends it again when asked: holding its
            // documents here too would pin superseded entries.
            self.last_doc = Some(doc.clone());
        }
        self.validate(doc).await;
    }

    /// Validates some networks again (a change in etcd) and adopts the result.
    async fn revalidate(&mut self, networks: BTreeSet<String>, sub: RawDocument) {
        let Some(prev) = self.model.clone() else {
            // Nothing to merge into: a complete document first.
            self.resend.notify_one();
            return;
        };
        let old: BTreeSet<MacAddr> = networks
            .iter()
            .flat_map(|n| self.nics_of.get(n).into_iter().flatten().copied())
            .collect();
        let node = self.config.node.clone();
        let limits = self.limits;
        let scope = networks.clone();
        let done = tokio::task::spawn_blocking(move || {
            let r = model::revalidate(&sub, &scope, &old, &prev, &node, &limits, &Budget);
            // The rejections of these networks replace the ones they had.
            let mut keys: BTreeSet<String> = scope;
            keys.extend(old.iter().map(MacAddr::to_string));
            for set in r.nics_of.values() {
                keys.extend(set.iter().map(MacAddr::to_string));
            }
            // A NIC's rejection is keyed by the MAC its value states, else by its key's.
            for e in &sub.nics {
                keys.extend(e.id.as_deref().map(str::to_owned));
                keys.extend(e.field("mac"));
            }
            (r, keys)
        })
        .await;
        let Ok((r, keys)) = done else {
            error!("validation panicked; keeping the current state");
            return;
        };
        self.rejections
            .retain(|x| x.key.as_ref().is_none_or(|k| !keys.contains(k)));
        for x in &r.validated.rejections {
            warn!(rejected = %x, "IPAM entry rejected");
        }
        self.metrics
            .count_rejections(r.validated.rejections.iter().map(|x| x.reason));
        self.rejections.extend(r.validated.rejections);
        self.metrics
            .set_rejections(self.rejections.iter().map(|x| x.reason));
        debug!(networks = ?networks, "IPAM change validated");
        self.adopt_partial(Arc::new(r.validated.model), &networks, r.nics_of)
            .await;
    }

    /// Validates a document against the serving model and this host's limits, and adopts it.
    async fn validate(&mut self, doc: Arc<RawDocument>) {
        let started = std::time::Instant::now();
        let prev = self.model.clone();
        let node = self.config.node.clone();
        let limits = self.limits();
        self.limits = limits;
        let validated = tokio::task::spawn_blocking(move || {
            let v = model::validate(&doc, prev.as_deref(), &node, &limits, &Budget);
            (v, crate::metrics::resident_mib())
        })
        .await;
        let Ok((v, rss_mib)) = validated else {
            error!("validation panicked; keeping the current state");
            return;
        };
        for r in &v.rejections {
            warn!(rejected = %r, "IPAM entry rejected");
        }
        self.metrics
            .count_rejections(v.rejections.iter().map(|r| r.reason));
        self.metrics
            .set_rejections(v.rejections.iter().map(|r| r.reason));
        self.rejections = v.rejections.clone();
        let changed = self.model.as_deref() != Some(&v.model);
        info!(
            networks = v.model.networks.len(),
            nodes = v.model.nodes.len(),
            nics = v.model.nics.len(),
            rejected = v.rejections.len(),
            changed,
            elapsed = ?started.elapsed(),
            rss_mib,
            "IPAM document validated"
        );
        if changed {
            let started = std::time::Instant::now();
            self.adopt(Arc::new(v.model), true).await;
            info!(elapsed = ?started.elapsed(), "IPAM state applied");
        } else {
            self.metrics.synced_now();
        }
    }

    async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up { ifindex, info } => {
                if self.links.get(&ifindex) == Some(&info) {
                    return;
                }
                self.links.insert(ifindex, info);
            }
            LinkEvent::Gone { ifindex } => {
                if self.links.remove(&ifindex).is_none() {
                    return;
                }
            }
        }
        self.links_tx.send_replace(self.links.clone());
        self.relimit().await;
        self.reconcile().await;
    }

    /// The underlay appeared, went, or changed its MTU: what fits may have changed.
    async fn relimit(&mut self) {
        if self.limits() == self.limits {
            return;
        }
        info!(underlay_mtu = ?self.limits().underlay_mtu, "underlay changed; validating IPAM again");
        match (&self.config.ipam.source, self.last_doc.clone()) {
            (IpamSource::File, Some(doc)) => self.validate(doc).await,
            // The etcd source holds the document: it sends it whole again.
            _ => self.resend.notify_one(),
        }
    }
}

/// What the desired state is built from.
struct Inputs {
    model: Arc<Model>,
    node: String,
    router_mac: MacAddr,
    leases: Leases,
    links: Links,
    underlay: Option<(u32, String)>,
    prune: bool,
}

fn ip_u32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn by_name(links: &Links) -> BTreeMap<&str, u32> {
    links.iter().map(|(i, l)| (l.name.as_str(), *i)).collect()
}

fn fdb_entry(station: &vpc::Station, by_name: &BTreeMap<&str, u32>) -> Option<FdbEntry> {
    Some(match &station.endpoint {
        Endpoint::Local { interface } => FdbEntry {
            ifindex: *by_name.get(interface.as_str())?,
            vtep: 0,
            ip: ip_u32(station.ip),
        },
        Endpoint::Remote { vtep } => FdbEntry {
            ifindex: 0,
            vtep: ip_u32(*vtep),
            ip: ip_u32(station.ip),
        },
    })
}

fn arp_entry(vni: u32, addr: Ipv4Addr, mac: MacAddr) -> (ArpKey, ArpEntry) {
    (
        ArpKey {
            vni,
            ip: ip_u32(addr),
        },
        ArpEntry {
            mac: mac.0,
            _pad: [0; 2],
        },
    )
}

fn vni_info(net: &vpc::LocalNetwork) -> VniInfo {
    VniInfo {
        gateway: ip_u32(net.gateway),
        mtu: net.mtu,
    }
}

/// The whole state the data plane must hold, from the leases and forwarding state of the
/// model and the interfaces present now.
fn build_desired(i: &Inputs) -> Desired {
    let vpc = vpc::derive(&i.model, &i.node, i.router_mac);
    let by_name = by_name(&i.links);
    let mut d = Desired {
        prune: i.prune,
        ..Desired::default()
    };
    add_bindings(&mut d, i.leases.values(), &by_name);
    d.interfaces = interfaces(&i.leases, &by_name);
    for &vni in vpc.vnis.keys() {
        add_vni(&mut d, &vpc, vni, &by_name);
    }
    for vtep in &vpc.vteps {
        d.vteps.insert(ip_u32(*vtep), 1);
    }
    if let Some((ifindex, name)) = &i.underlay {
        d.underlay = Some((*ifindex, name.clone()));
        let fib_ifindex = by_name.get(anchor::DEFAULT_NAME).copied().unwrap_or(0);
        d.config = DataplaneConfig {
            vtep: vpc.vtep.map(ip_u32).unwrap_or(0),
            underlay_ifindex: *ifindex,
            fib_ifindex,
            _pad: 0,
        };
    }
    d
}

/// Brings the entries of `vnis` (whose forwarding state `part` holds) and the bindings of
/// `macs` in `d` up to date with `i`.
fn patch_desired(
    d: &mut Desired,
    i: &Inputs,
    part: &Vpc,
    vnis: &BTreeSet<u32>,
    macs: &BTreeSet<MacAddr>,
) {
    let by_name = by_name(&i.links);
    for &vni in vnis {
        let fdb: Vec<FdbKey> = d
            .fdb
            .range(FdbKey::new(vni, [0; 6])..=FdbKey::new(vni, [0xff; 6]))
            .map(|(k, _)| *k)
            .collect();
        for k in fdb {
            d.fdb.remove(&k);
        }
        let arp: Vec<ArpKey> = d
            .arp
            .range(ArpKey { vni, ip: 0 }..=ArpKey { vni, ip: u32::MAX })
            .map(|(k, _)| *k)
            .collect();
        for k in arp {
            d.arp.remove(&k);
        }
        d.vnis.remove(&vni);
        add_vni(d, part, vni, &by_name);
    }
    if !macs.is_empty() {
        let stale: Vec<BindingKey> = d
            .bindings
            .keys()
            .filter(|k| macs.contains(&MacAddr(k.mac)))
            .copied()
            .collect();
        for k in stale {
            d.bindings.remove(&k);
        }
        let leases = i.leases.values().filter(|l| macs.contains(&l.mac));
        add_bindings(d, leases, &by_name);
        d.interfaces = interfaces(&i.leases, &by_name);
    }
}

/// Adds the forwarding entries of network `vni` that `vpc` holds.
fn add_vni(d: &mut Desired, vpc: &Vpc, vni: u32, by_name: &BTreeMap<&str, u32>) {
    let Some(net) = vpc.vnis.get(&vni) else {
        return;
    };
    d.vnis.insert(vni, vni_info(net));
    for ((v, mac), station) in vpc
        .fdb
        .range((vni, MacAddr([0; 6]))..=(vni, MacAddr([0xff; 6])))
    {
        if let Some(entry) = fdb_entry(station, by_name) {
            d.fdb.insert(FdbKey::new(*v, mac.0), entry);
        }
    }
    for ((v, addr), mac) in vpc
        .arp
        .range((vni, Ipv4Addr::UNSPECIFIED)..=(vni, Ipv4Addr::BROADCAST))
    {
        let (k, e) = arp_entry(*v, *addr, *mac);
        d.arp.insert(k, e);
    }
}

/// Adds the bindings of `leases` whose interface is present.
fn add_bindings<'a>(
    d: &mut Desired,
    leases: impl Iterator<Item = &'a leases::Lease>,
    by_name: &BTreeMap<&str, u32>,
) {
    for lease in leases {
        if let Some(&ifindex) = by_name.get(lease.interface.as_str()) {
            d.bindings
                .insert(BindingKey::new(ifindex, lease.mac.0), lease.binding);
        }
    }
}

/// The interfaces carrying a lease, present now.
fn interfaces(leases: &Leases, by_name: &BTreeMap<&str, u32>) -> BTreeMap<u32, String> {
    leases
        .values()
        .filter_map(|l| Some((*by_name.get(l.interface.as_str())?, l.interface.clone())))
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// How long after an adoption memory is handed back: a burst of changes is trimmed once.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Hands freed memory back to the system after each burst of adoptions. An adoption frees
/// about as much as it allocated (the previous model, parse buffers, the snapshot's stream),
/// and glibc would otherwise keep the peak resident.
async fn trim_memory(adopted: Arc<Notify>) {
    loop {
        adopted.notified().await;
        tokio::time::sleep(TRIM_AFTER).await;
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
            debug!(rss_mib = crate::metrics::resident_mib(), "memory trimmed");
        })
        .await;
    }
}

/// Persists each adopted model, atomically, off the runtime. When models come faster than
/// the disk takes them, the ones in between are skipped: the snapshot is always the latest
/// complete state.
async fn persist(
    mut models: watch::Receiver<Option<Arc<Model>>>,
    state_dir: std::path::PathBuf,
    node: String,
) {
    while models.changed().await.is_ok() {
        let Some(model) = models.borrow_and_update().clone() else {
            continue;
        };
        let (dir, node) = (state_dir.clone(), node.clone());
        match tokio::task::spawn_blocking(move || state::save(&dir, &node, &model)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot persist the IPAM snapshot"),
            Err(e) => warn!(error = %e, "persisting the IPAM snapshot panicked"),
        }
    }
}

/// Waits for the next IPAM update, then takes every one already queued behind it: statuses
/// are handled in order, but of several documents only the latest is validated.
async fn next_ipam(agent: &mut Agent, rx: &mut mpsc::Receiver<Update>) -> Option<Update> {
    let mut latest = rx.recv().await?;
    while let Ok(next) = rx.try_recv() {
        match (&latest, next) {
            (_, doc @ Update::Document(_)) => latest = doc,
            (Update::Document(_), status) => agent.on_ipam(status).await,
            (_, status) => {
                let earlier = std::mem::replace(&mut latest, status);
                agent.on_ipam(earlier).await;
            }
        }
    }
    Some(latest)
}

/// Logs RELEASE and DECLINE reported by the programs.
async fn watch_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    links: watch::Receiver<Links>,
    metrics: Arc<Metrics>,
) {
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
            let addr = std::net::Ipv4Addr::from(ev.addr.to_ne_bytes());
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
async fn watch_logger(logger: Logger) {
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

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    metrics.in_sync_at(unix_now());
    let health = Arc::new(Health::default());
    health.beat();
    tokio::spawn(watchdog::run(metrics.clone(), health.clone()));
    let registry = Arc::new(metrics::registry(&metrics, config.bpffs_dir.clone()));
    let mut http = tokio::spawn(metrics::serve(
        config.metrics_addr,
        registry,
        health.clone(),
    ));
    info!(node = %config.node, bpffs = %config.bpffs_dir.display(), "holdfast starting");

    let (dp, events, logger) = DataplaneHandle::spawn(&config).await?;
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
        tokio::spawn(watch_events(ring, links_rx, metrics.clone()));
    }
    if let Some(logger) = logger {
        tokio::spawn(watch_logger(logger));
    }

    let (persist_tx, persist_rx) = watch::channel(None);
    tokio::spawn(persist(
        persist_rx,
        config.state_dir.clone(),
        config.node.clone(),
    ));
    let mut agent = Agent {
        config: config.clone(),
        dp,
        metrics: metrics.clone(),
        health: health.clone(),
        model: None,
        leases: Leases::new(),
        vteps: BTreeSet::new(),
        last_doc: None,
        limits: Limits::default(),
        links: initial_links,
        links_tx,
        persist_tx,
        nics_of: BTreeMap::new(),
        desired: Desired::default(),
        rejections: Vec::new(),
        resend: Arc::new(Notify::new()),
        trim: Arc::new(Notify::new()),
    };
    tokio::spawn(trim_memory(agent.trim.clone()));
    agent.limits = agent.limits();

    // The snapshot serves before IPAM is reached.
    let dir = config.state_dir.clone();
    match tokio::task::spawn_blocking(move || state::load_dated(&dir)).await? {
        Ok(Some((model, saved_at))) => {
            info!(
                nics = model.nics.len(),
                saved_at, "serving the persisted IPAM snapshot"
            );
            // The snapshot was IPAM's state when it was saved: staleness counts from then.
            metrics.in_sync_at(saved_at as f64);
            agent.adopt(Arc::new(model), false).await;
        }
        Ok(None) => info!("no IPAM snapshot yet; the pinned state serves until IPAM answers"),
        Err(e) => warn!(error = %e, "ignoring the IPAM snapshot; the pinned state serves"),
    }
    health.ready.store(true, Ordering::Relaxed);
    watchdog::ready();

    let (ipam_tx, mut ipam_rx) = mpsc::channel(4);
    match config.ipam.source {
        IpamSource::File => {
            let path = config
                .ipam
                .path
                .clone()
                .ok_or_else(|| anyhow!("ipam.path is required"))?;
            let source = FileSource {
                path,
                interval: config.ipam.poll_interval(),
            };
            tokio::spawn(source.run(ipam_tx));
        }
        IpamSource::Etcd => {
            let source = EtcdSource {
                config: config.ipam.clone(),
                node: config.node.clone(),
                reconnects: metrics.ipam_reconnects.clone(),
                events: metrics.ipam_watch_events.clone(),
                resend: agent.resend.clone(),
            };
            tokio::spawn(source.run(ipam_tx));
        }
    }
    let stall_at = fault::stall_loop_after().map(|d| tokio::time::Instant::now() + d);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            Some(update) = next_ipam(&mut agent, &mut ipam_rx) => agent.on_ipam(update).await,
            Some(event) = link_events.recv() => agent.on_link(event).await,
            _ = resync.tick() => {
                match links::dump(&nl).await {
                    Ok(now) if now != agent.links => {
                        agent.links = now;
                        agent.links_tx.send_replace(agent.links.clone());
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "listing interfaces"),
                }
                agent.relimit().await;
                agent.reconcile().await;
                agent.warm_neighbours();
            }
            _ = heartbeat.tick() => {
                agent.health.beat();
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

/// Exposed for `holdfast check`: validates a document the way `run` would.
pub fn check_document(
    bytes: &[u8],
    node: &str,
    limits: &Limits,
) -> Result<model::Validated, serde_json::Error> {
    let doc = model::parse_document(bytes)?;
    Ok(model::validate(&doc, None, node, limits, &Budget))
}
