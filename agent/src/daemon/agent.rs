//! The agent's state machine: what serves now, and how each IPAM update or interface change
//! moves it. Validation and rendering run on the blocking pool, the data plane on its own
//! thread; these methods only move state and messages.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Instant,
};

use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use super::handle::DataplaneHandle;
use crate::{
    anchor,
    config::{Config, UnderlayHook},
    dataplane::Desired,
    decap,
    ipam::{Resend, Update},
    links::{LinkEvent, LinkInfo, Links},
    metrics::{self, Metrics},
    model::{self, Limits, LocalNics, MacAddr, Model, RawDocument, Rejection},
    ports::VmPorts,
    ra,
    render::{
        desired::{self, Inputs, Touched},
        options::Budget,
        vpc::{self, FormerServers},
    },
};

/// What serves now: a validated model and what is derived from it, replaced together so that
/// they never disagree.
struct Serving {
    model: Arc<Model>,
    /// The limits `model` was validated with.
    limits: Limits,
    /// The MACs of each network's NICs in `model`: what a change of a network touches. Shared
    /// with the patch of a change, which reads the NICs of the other networks of its VPCs.
    nics_of: Arc<BTreeMap<String, BTreeSet<MacAddr>>>,
    /// This node's NICs in `model`: what validating a few networks again checks them against,
    /// rather than every NIC.
    local: LocalNics,
    /// The map state rendered from `model` and the links present when it was rendered. A
    /// change in some networks patches it rather than rendering it whole.
    desired: Desired,
}

/// The agent: owns the serving state, and the means to change it.
pub struct Agent {
    config: Config,
    /// The unsolicited router advertisement sender ([`ra`]), and what it was last given.
    ra_tx: Option<std::sync::mpsc::Sender<ra::Plan>>,
    ra_plan: ra::Plan,
    /// The ifindex of holdfast's decapsulation device, once this agent made or found it
    /// (`[underlay] hook = "tc"`): an interface of that name holdfast did not make gets no
    /// program.
    decap_device: Option<u32>,
    /// Whether a decapsulation device left from `[underlay] hook = "tc"` was looked for and
    /// removed (in xdp mode): netlink is asked once, not at every reconcile.
    decap_checked: bool,
    /// The VM ports the config allows, before the interfaces with host addresses are
    /// excluded.
    ports: VmPorts,
    dp: DataplaneHandle,
    metrics: Arc<Metrics>,
    /// The interfaces present now.
    links: Links,
    /// The same, for the event watcher (interface names in logs).
    links_tx: watch::Sender<Links>,
    /// `None` until a model was validated (from IPAM or the snapshot): until then the pinned
    /// state keeps serving untouched.
    serving: Option<Serving>,
    /// The rejections standing now (the last full load's, updated by partial ones).
    rejections: Vec<Rejection>,
    /// Asks the source for a complete document.
    resend: Resend,
    /// The latest adopted model, for the persister.
    persist_tx: watch::Sender<Option<Arc<Model>>>,
    /// Tells the memory trimmer that an adoption freed memory.
    trim: Arc<Notify>,
    /// DHCP server identifiers networks had before, still answered for the clients whose
    /// lease names one (derived at each adoption from the model before and after).
    former_servers: Arc<FormerServers>,
}

/// What the agent is built from; see [`super::run`].
pub struct Parts {
    pub config: Config,
    pub dp: DataplaneHandle,
    pub metrics: Arc<Metrics>,
    pub links: Links,
    pub links_tx: watch::Sender<Links>,
    pub resend: Resend,
    pub persist_tx: watch::Sender<Option<Arc<Model>>>,
    pub trim: Arc<Notify>,
    pub decap_device: Option<u32>,
    pub ra_tx: Option<std::sync::mpsc::Sender<ra::Plan>>,
    /// What the sender was given before the agent (the pinned maps' advertisements).
    pub ra_plan: ra::Plan,
}

impl Agent {
    pub fn new(p: Parts) -> Self {
        Self {
            ports: VmPorts::new(
                &p.config.vm.interfaces,
                p.config.underlay.as_ref().map(|u| u.interface.as_str()),
                anchor::DEFAULT_NAME,
            ),
            config: p.config,
            decap_device: p.decap_device,
            decap_checked: false,
            ra_tx: p.ra_tx,
            ra_plan: p.ra_plan,
            dp: p.dp,
            metrics: p.metrics,
            links: p.links,
            links_tx: p.links_tx,
            serving: None,
            rejections: Vec::new(),
            resend: p.resend,
            persist_tx: p.persist_tx,
            trim: p.trim,
            former_servers: Arc::default(),
        }
    }

    /// The underlay interface, when configured and present.
    fn underlay(&self) -> Option<(u32, &LinkInfo)> {
        let want = &self.config.underlay.as_ref()?.interface;
        self.links
            .iter()
            .find(|(_, l)| &l.name == want)
            .map(|(i, l)| (*i, l))
    }

    /// The metadata-mode VXLAN device, when `[underlay] hook = "tc"` and it is present.
    fn decap(&self) -> Option<(u32, String)> {
        if self.config.underlay.as_ref()?.hook != UnderlayHook::Tc {
            return None;
        }
        let ifindex = self.decap_device?;
        self.links
            .get(&ifindex)
            .filter(|l| l.name == decap::DEVICE)
            .map(|l| (ifindex, l.name.clone()))
    }

    /// What the model asks of the networks this host can carry, with the interfaces present.
    fn limits(&self) -> Limits {
        let configured = self.config.underlay.as_ref().and_then(|u| u.mtu);
        Limits {
            underlay_mtu: configured.or_else(|| self.underlay().map(|(_, l)| l.mtu)),
            ports: self.vm_ports(),
            capacity: desired::CAPACITY,
        }
    }

    /// The VM ports now: the interfaces with a host address are not.
    fn vm_ports(&self) -> VmPorts {
        self.ports.clone().with_links(&self.links)
    }

    /// What the desired state of `model` is rendered from.
    fn inputs(&self, model: Arc<Model>) -> Inputs {
        Inputs {
            model,
            node: self.config.node.clone(),
            router_mac: self.config.router_mac,
            links: self.links.clone(),
            underlay: self.underlay().map(|(i, l)| (i, l.name.clone())),
            decap: self.decap(),
            ports: self.vm_ports(),
            prune: true,
            former_servers: self.former_servers.clone(),
        }
    }

    /// The VTEPs of the other nodes of `model`.
    fn vteps(&self, model: Option<&Model>) -> BTreeSet<Ipv4Addr> {
        model
            .map(|m| vpc::vteps(m, &self.config.node))
            .unwrap_or_default()
    }

    /// Renders the serving model's desired state whole (on the blocking pool) and converges
    /// the data plane to it.
    pub async fn reconcile(&mut self) {
        let Some(model) = self.serving.as_ref().map(|s| s.model.clone()) else {
            // Nothing validated yet: the pinned state keeps serving untouched.
            return;
        };
        let inputs = self.inputs(model);
        let started = Instant::now();
        let Ok(built) = tokio::task::spawn_blocking(move || desired::build(&inputs)).await else {
            error!("rendering the desired state panicked; the data plane keeps its state");
            return;
        };
        debug!(elapsed = ?started.elapsed(), "desired state rendered");
        if let Some(s) = &mut self.serving {
            s.desired = built.clone();
        }
        self.converge(built).await;
    }

    async fn converge(&mut self, desired: Desired) {
        self.advertise(&desired);
        let started = Instant::now();
        match self.dp.reconcile(desired).await {
            Ok(r) => {
                self.metrics.leases.set(r.bindings as i64);
                self.metrics.ipv6_addresses.set(r.bindings6 as i64);
                self.metrics.fdb.set(r.fdb as i64);
                self.metrics.interfaces.set(r.interfaces as i64);
                for e in &r.errors {
                    self.metrics.dataplane_errors.inc();
                    warn!(error = %e, "data plane");
                }
                let decap_left = r.errors.is_empty()
                    && !self.decap_checked
                    && self
                        .config
                        .underlay
                        .as_ref()
                        .is_none_or(|u| u.hook != UnderlayHook::Tc)
                    && self.links.values().any(|l| l.name == decap::DEVICE);
                if decap_left {
                    // Back to `hook = "xdp"` (or no underlay): the underlay's programs are in
                    // place, so the device goes; without its program it would hand what it
                    // decapsulates to the host's stack.
                    match decap::remove().await {
                        Ok(removed) => {
                            // Once is enough: a device of that name made later is not ours
                            // (this agent makes none in this mode).
                            self.decap_checked = true;
                            if removed {
                                info!(device = decap::DEVICE, "decapsulation device removed");
                            }
                        }
                        Err(e) => warn!(error = %e, "removing the decapsulation device"),
                    }
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

    /// Hands the router advertisement sender what each VM port advertises now: the network of
    /// its (first) NIC with IPv6. Sent only when it changed.
    fn advertise(&mut self, desired: &Desired) {
        let Some(tx) = &self.ra_tx else {
            return;
        };
        let plan = ra::plan(
            desired.bindings6.iter().map(|(k, b)| (k.ifindex, b.vni)),
            |vni| desired.ra6.get(&vni).copied(),
        );
        if plan != self.ra_plan {
            self.ra_plan = plan.clone();
            if tx.send(plan).is_err() {
                warn!("the router advertisement sender has stopped");
                self.ra_tx = None;
            }
        }
    }

    /// Adopts a validated model: render, apply, persist (unless it is the snapshot itself).
    pub async fn adopt(&mut self, model: Arc<Model>, limits: Limits, persist: bool) {
        let (m, node) = (model.clone(), self.config.node.clone());
        let indexed =
            tokio::task::spawn_blocking(move || (m.nics_by_network(), LocalNics::of(&m, &node)));
        let Ok((nics_of, local)) = indexed.await else {
            error!("indexing the model panicked; keeping the current state");
            return;
        };
        if self.config.underlay.is_some() && !model.nodes.contains_key(&self.config.node) {
            warn!(node = %self.config.node, "this node is not in IPAM's nodes: no VTEP, VMs reach only VMs on this host");
        }
        let new_vteps =
            self.vteps(Some(&model)) != self.vteps(self.serving.as_ref().map(|s| &*s.model));
        if let Some(prev) = self.serving.as_ref().map(|s| s.model.clone()) {
            let after = vpc::former_after(&self.former_servers, &prev, &model, &nics_of);
            self.note_former_servers(after);
        }
        self.serving = Some(Serving {
            model: model.clone(),
            limits,
            nics_of: Arc::new(nics_of),
            local,
            desired: Desired::default(),
        });
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

    /// Adopts a model in which only the networks of `nics_after` changed (their NICs in it):
    /// their leases and forwarding entries are rendered again, nothing else. `local`: this
    /// node's NICs in `model`.
    async fn adopt_partial(
        &mut self,
        model: Arc<Model>,
        local: LocalNics,
        nics_before: BTreeMap<String, BTreeSet<MacAddr>>,
        nics_after: BTreeMap<String, BTreeSet<MacAddr>>,
    ) {
        let Some(serving) = self.serving.as_mut() else {
            return;
        };
        let prev = std::mem::replace(&mut serving.model, model.clone());
        serving.local = local;
        // Not shared now: the last patch's copy was dropped when it returned.
        let index = Arc::make_mut(&mut serving.nics_of);
        for (id, set) in &nics_after {
            if set.is_empty() {
                index.remove(id);
            } else {
                index.insert(id.clone(), set.clone());
            }
        }
        let after = vpc::former_after_change(
            &self.former_servers,
            &prev,
            &model,
            &serving.nics_of,
            nics_after.keys(),
        );
        self.note_former_servers(after);
        let Some(serving) = self.serving.as_mut() else {
            return;
        };
        let mut patched = serving.desired.clone();
        let index = serving.nics_of.clone();
        let inputs = self.inputs(model.clone());
        let done = tokio::task::spawn_blocking(move || {
            let touched = Touched::new(&prev, &inputs.model, &nics_before, nics_after, &index);
            desired::patch(&mut patched, &inputs, &touched);
            patched
        })
        .await;
        let Ok(patched) = done else {
            error!("patching the desired state panicked; the data plane keeps its state");
            return;
        };
        if let Some(s) = &mut self.serving {
            s.desired = patched.clone();
        }
        self.converge(patched).await;
        self.metrics.synced_now();
        self.persist_tx.send_replace(Some(model));
        self.trim.notify_one();
    }

    /// Remembers the DHCP server identifiers that a change retires (`after`: those of every
    /// network after it).
    fn note_former_servers(&mut self, after: FormerServers) {
        if after != *self.former_servers {
            for (id, list) in &after {
                if self.former_servers.get(id) != Some(list) {
                    info!(network = %id, former = ?list, "DHCP server identifiers still answered for the leases that name them");
                }
            }
            self.former_servers = Arc::new(after);
        }
    }

    /// Resolves the underlay neighbours of every known VTEP ahead of traffic, so that the first
    /// frames take the XDP path rather than the skb path's `bpf_redirect_neigh`. A datagram to
    /// the discard port makes the kernel resolve the next hop; the remote host drops it.
    pub fn warm_neighbours(&self) {
        if self.underlay().is_none() {
            return;
        }
        let vteps: Vec<Ipv4Addr> = self
            .vteps(self.serving.as_ref().map(|s| &*s.model))
            .into_iter()
            .collect();
        tokio::spawn(async move {
            let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
                return;
            };
            for vtep in vteps {
                let _ = sock.send_to(&[], (vtep, 9)).await;
            }
        });
    }

    pub async fn on_ipam(&mut self, update: Update) {
        let doc = match update {
            Update::Document(doc) => doc,
            Update::Alive => {
                self.metrics.ipam_up.set(1);
                self.metrics.in_sync_now();
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
        self.validate(doc).await;
    }

    /// Validates some networks again (a change in etcd) and adopts the result.
    async fn revalidate(&mut self, networks: BTreeSet<String>, sub: RawDocument) {
        let Some(serving) = &self.serving else {
            // Nothing to merge into: a complete document first.
            self.resend.request();
            return;
        };
        let prev = serving.model.clone();
        let limits = serving.limits.clone();
        let nics_before: BTreeMap<String, BTreeSet<MacAddr>> = networks
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    serving.nics_of.get(n).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let old: BTreeSet<MacAddr> = nics_before.values().flatten().copied().collect();
        let local = serving.local.clone();
        let node = self.config.node.clone();
        let scope = networks.clone();
        // The rejections standing that these networks replace: none to look for when none
        // stand (each NIC's key is read from its JSON).
        let standing = !self.rejections.is_empty();
        let done = tokio::task::spawn_blocking(move || {
            let serving = model::Serving {
                model: &prev,
                local: &local,
            };
            let r = model::revalidate(&sub, &scope, &old, serving, &node, &limits, &Budget);
            let now = local.changed(
                &prev,
                &old,
                &r.validated.model,
                r.nics_of.values().flatten(),
                &node,
            );
            // The rejections of these networks replace the ones they had.
            let mut keys: BTreeSet<String> = BTreeSet::new();
            if !standing {
                return (r, keys, now);
            }
            keys.extend(scope);
            keys.extend(old.iter().map(MacAddr::to_string));
            for set in r.nics_of.values() {
                keys.extend(set.iter().map(MacAddr::to_string));
            }
            // A NIC's rejection is keyed by the MAC its value states, else by its key's.
            for e in &sub.nics {
                keys.extend(e.id.as_deref().map(str::to_owned));
                keys.extend(e.field("mac"));
            }
            (r, keys, now)
        })
        .await;
        let Ok((r, keys, local)) = done else {
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
        let mut nics_after = r.nics_of;
        for id in &networks {
            nics_after.entry(id.clone()).or_default();
        }
        self.adopt_partial(Arc::new(r.validated.model), local, nics_before, nics_after)
            .await;
    }

    /// Validates a document against the serving model and this host's limits, and adopts it.
    async fn validate(&mut self, doc: RawDocument) {
        let started = Instant::now();
        let prev = self.serving.as_ref().map(|s| s.model.clone());
        let node = self.config.node.clone();
        let limits = self.limits();
        let judged = limits.clone();
        let validated = tokio::task::spawn_blocking(move || {
            let v = model::validate(&doc, prev.as_deref(), &node, &judged, &Budget);
            (v, metrics::resident_mib())
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
        let changed = self.serving.as_ref().map(|s| &*s.model) != Some(&v.model);
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
            let started = Instant::now();
            self.adopt(Arc::new(v.model), limits, true).await;
            info!(elapsed = ?started.elapsed(), "IPAM state applied");
        } else {
            if let Some(s) = &mut self.serving {
                s.limits = limits;
            }
            self.metrics.synced_now();
        }
    }

    pub async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up { ifindex, mut info } => {
                // A link message carries no addresses: the interface keeps those it had.
                if let Some(known) = self.links.get(&ifindex) {
                    info.addresses = known.addresses.clone();
                }
                if self.links.get(&ifindex) == Some(&info) {
                    return;
                }
                self.links.insert(ifindex, info);
            }
            LinkEvent::Gone { ifindex } => {
                let Some(gone) = self.links.remove(&ifindex) else {
                    return;
                };
                if gone.name == decap::DEVICE
                    && self
                        .config
                        .underlay
                        .as_ref()
                        .is_some_and(|u| u.hook == UnderlayHook::Tc)
                {
                    // Someone removed it: the underlay's XDP program takes decapsulation over
                    // at this reconcile, and the device is made again (the next one moves back).
                    warn!(
                        device = decap::DEVICE,
                        "decapsulation device removed; creating it again"
                    );
                    if let Err(e) = decap::ensure().await {
                        warn!(error = %e, "creating the decapsulation device");
                    }
                }
            }
            LinkEvent::Address {
                ifindex,
                address,
                present,
            } => {
                let Some(link) = self.links.get_mut(&ifindex) else {
                    // Its link comes next, or the next listing has it.
                    return;
                };
                let changed = if present {
                    link.addresses.insert(address)
                } else {
                    link.addresses.remove(&address)
                };
                if !changed {
                    return;
                }
                debug!(interface = %link.name, %address, present, "host address");
            }
        }
        self.links_tx.send_replace(self.links.clone());
        self.relimit().await;
        self.reconcile().await;
    }

    /// Takes the interfaces listed again (a netlink message may have been lost).
    pub fn relink(&mut self, now: Links) {
        if now != self.links {
            self.links = now;
            self.links_tx.send_replace(self.links.clone());
        }
    }

    /// The underlay appeared, went, or changed its MTU, or a VM port gained or lost a host
    /// address: what fits may have changed.
    pub async fn relimit(&mut self) {
        let Some(serving) = &self.serving else {
            return;
        };
        let now = self.limits();
        if now == serving.limits {
            return;
        }
        if now.underlay_mtu != serving.limits.underlay_mtu {
            info!(underlay_mtu = ?now.underlay_mtu, "underlay changed; validating IPAM again");
        } else {
            info!("the VM ports changed (a host address came or went); validating IPAM again");
        }
        // The source holds the document, not the agent: it sends it whole again.
        self.resend.request();
    }

    /// Serves the persisted snapshot before IPAM is reached, validated like any document: a
    /// bad entry is rejected (logged, counted) and never served.
    pub async fn adopt_snapshot(&mut self, doc: RawDocument) {
        let limits = self.limits();
        let judged = limits.clone();
        let node = self.config.node.clone();
        let Ok(v) = tokio::task::spawn_blocking(move || {
            model::validate(&doc, None, &node, &judged, &Budget)
        })
        .await
        else {
            error!("validating the snapshot panicked; the pinned state serves");
            return;
        };
        for r in &v.rejections {
            warn!(rejected = %r, "snapshot entry rejected");
        }
        self.metrics
            .count_rejections(v.rejections.iter().map(|r| r.reason));
        self.metrics
            .set_rejections(v.rejections.iter().map(|r| r.reason));
        self.rejections = v.rejections;
        self.adopt(Arc::new(v.model), limits, false).await;
    }
}
