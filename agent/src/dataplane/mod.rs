//! The data plane: the XDP and TC programs, their pinned maps and links.
//!
//! Everything lives under `bpffs_dir` so it outlives the agent: maps in `maps-v<layout>/`, one
//! link per hook and interface in `links/` (`vm-<ifindex>` and `tc-<ifindex>` on a VM interface
//! in xdp mode, `vmtc-<ifindex>` in tc mode, `ul-<ifindex>` and `ult-<ifindex>` on the
//! underlay). Opening adopts what is pinned (the maps keep their entries,
//! the links keep their interfaces served); attaching replaces the program of a pinned link
//! atomically. Nothing is flushed: entries and links are removed only by
//! [`Dataplane::reconcile`] when asked to prune after a complete, validated load.
//!
//! Here: loading and adopting ([`Dataplane::open`]) and converging ([`Dataplane::reconcile`]).
//! Beside it: `pins` (paths, layout version and check, bpffs), `maps` and `diff` (what each map
//! holds and what a reconcile writes), `batch` (batched updates), `attach` (hooks and links),
//! `migrate` (retiring another layout's maps), `inspect` (reading the pins for the CLI and
//! metrics), `veth` (the veth peer's no-op program), `error`.
//!
//! All calls here are blocking syscalls; the agent runs them on a dedicated thread.

mod attach;
mod batch;
mod diff;
mod error;
mod inspect;
mod maps;
mod migrate;
mod pins;
mod veth;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use agent_common::{
    ArpEntry, ArpKey, Binding, Binding6, BindingKey, BootEntry, BootKey, DataplaneConfig,
    DeclineHold, Dhcp6Net, FdbEntry, FdbKey, ForwarderKey, Neigh6Entry, Neigh6Key, Ra6, RateLimits,
    RouteEntry, VniInfo,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use imbl::OrdMap;
use tracing::{info, warn};

pub use self::{
    attach::Hook,
    error::{BpffsError, DataplaneError, DirProblem, NetlinkError, ReconcileError, WriteError},
    inspect::{
        Ipv6State, RoutingState, StatsReader, VpcState, parse_event, pinned_fdb, read_bindings,
        read_ipv6, read_routing, read_vpc,
    },
    pins::{ensure_bpffs, private_dir_problem},
    veth::{PASS_OBJECT, attach_veth_peer},
};
use self::{
    maps::{Routes, Synced},
    pins::{Pins, check_layout},
};
use crate::ports::{DEFAULT_PATTERNS, Pattern, VmHooks, VmPorts};

fn default_patterns() -> Vec<Pattern> {
    DEFAULT_PATTERNS
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .collect()
}

/// The eBPF object, built from `agent-ebpf` by this crate's build script on every build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast"));

pub const PROGRAM_VM: &str = "holdfast_vm";
pub const PROGRAM_TC: &str = "holdfast_tc";
pub const PROGRAM_VM_TC: &str = "holdfast_vm_tc";
pub const PROGRAM_UNDERLAY: &str = "holdfast_ul";
pub const PROGRAM_UNDERLAY_TC: &str = "holdfast_ul_tc";
pub const PROGRAM_UNDERLAY_MD: &str = "holdfast_ul_md";
pub const PROGRAM_PASS: &str = "holdfast_pass";
const MAP_BINDINGS: &str = "BINDINGS";
const MAP_STATS: &str = "STATS";
const MAP_EVENTS: &str = "EVENTS";
const MAP_FDB: &str = "FDB";
const MAP_ARP: &str = "ARP";
const MAP_VTEPS: &str = "VTEPS";
const MAP_VNIS: &str = "VNIS";
const MAP_CONFIG: &str = "CONFIG";
const MAP_BOOT: &str = "BOOT";
const MAP_DECLINED: &str = "DECLINED";
const MAP_BINDINGS6: &str = "BINDINGS6";
const MAP_NEIGH6: &str = "NEIGH6";
const MAP_VNIS6: &str = "VNIS6";
const MAP_DHCP6: &str = "DHCP6";
const MAP_ROUTES: &str = "ROUTES";
const MAP_FORWARDING: &str = "FORWARDING";
const MAP_FORWARDERS: &str = "FORWARDERS";

/// A key of the `ROUTES` trie as the agent orders it: a network's table (`vni`, the network
/// frames come from) is a range. `addr` is the destination in network order (as the kernel
/// key holds it), `len` its prefix length; the kernel key's prefix length is `32 + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub vni: u32,
    pub addr: u32,
    pub len: u8,
}

impl RouteKey {
    pub fn new(vni: u32, dst: ipnet::Ipv4Net) -> Self {
        Self {
            vni,
            addr: agent_common::be32(dst.network()),
            len: dst.prefix_len(),
        }
    }

    /// The first and last keys of network `vni`'s table.
    pub const fn first(vni: u32) -> Self {
        Self {
            vni,
            addr: 0,
            len: 0,
        }
    }

    pub const fn last(vni: u32) -> Self {
        Self {
            vni,
            addr: u32::MAX,
            len: u8::MAX,
        }
    }
}

/// What [`Dataplane::reconcile`] is asked to converge to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// VM interfaces to carry the programs, by ifindex (name for logs and TC attachment).
    pub interfaces: BTreeMap<u32, String>,
    /// The underlay interface.
    pub underlay: Option<(u32, String)>,
    /// With `[underlay] hook = "tc"`, the metadata-mode VXLAN device ([`crate::decap`]):
    /// decapsulation is checked and delivered there, and the underlay carries no program.
    pub decap: Option<(u32, String)>,
    pub bindings: OrdMap<BindingKey, Binding>,
    /// Network boot answers of the bindings whose NIC has a boot file, by variant.
    pub boot: OrdMap<BootKey, BootEntry>,
    pub fdb: OrdMap<FdbKey, FdbEntry>,
    pub arp: OrdMap<ArpKey, ArpEntry>,
    pub vteps: OrdMap<u32, u32>,
    pub vnis: OrdMap<u32, VniInfo>,
    /// The `ip6` of every VM-port NIC on this node that has one, by its binding's key.
    pub bindings6: OrdMap<BindingKey, Binding6>,
    /// IPv6 neighbour answers of the networks with `subnet6` and NICs here: every NIC's `ip6`
    /// (local or remote) and the router's link-local address (`router: 1`).
    pub neigh6: OrdMap<Neigh6Key, Neigh6Entry>,
    /// The router advertisement of each of those networks, by VNI.
    pub ra6: OrdMap<u32, Ra6>,
    /// What each of those networks' DHCPv6 replies carry, by VNI.
    pub dhcp6: OrdMap<u32, Dhcp6Net>,
    /// The routing table of each network carried (`ROUTES`).
    pub routes: OrdMap<RouteKey, RouteEntry>,
    /// The forwarding NICs of the networks carried, local and remote (`FORWARDING`).
    pub forwarding: OrdMap<FdbKey, u32>,
    /// The VTEPs hosting a forwarding NIC of each carried network's VPC (`FORWARDERS`).
    pub forwarders: OrdMap<ForwarderKey, u32>,
    pub config: DataplaneConfig,
    /// Remove links and entries that are not desired. Only after a complete, validated load.
    pub prune: bool,
}

/// What a reconcile did.
#[derive(Debug, Default)]
pub struct Report {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub upserted: usize,
    pub deleted: usize,
    pub bindings: usize,
    pub fdb: usize,
    /// IPv6 addresses held (`BINDINGS6`).
    pub bindings6: usize,
    pub interfaces: usize,
    /// Map directories of other layouts removed (every hook runs this build's programs).
    pub retired: Vec<String>,
    pub errors: Vec<ReconcileError>,
}

/// `BPF_PROG_LOAD` can fail with EAGAIN after a successful verification when the kernel is
/// short of memory for the program for a moment (a busy host loading many programs); libbpf
/// retries it five times, and so does holdfast.
fn retry_eagain(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 5 =>
            {
                warn!(attempt, "loading a program: EAGAIN; trying again");
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            other => return other,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    pins: Pins,
    bindings: Synced<BindingKey, Binding>,
    boot: Synced<BootKey, BootEntry>,
    fdb: Synced<FdbKey, FdbEntry>,
    arp: Synced<ArpKey, ArpEntry>,
    vteps: Synced<u32, u32>,
    vnis: Synced<u32, VniInfo>,
    bindings6: Synced<BindingKey, Binding6>,
    neigh6: Synced<Neigh6Key, Neigh6Entry>,
    ra6: Synced<u32, Ra6>,
    dhcp6: Synced<u32, Dhcp6Net>,
    routes: Synced<RouteKey, RouteEntry, Routes>,
    forwarding: Synced<FdbKey, u32>,
    forwarders: Synced<ForwarderKey, u32>,
    config: Array<MapData, DataplaneConfig>,
    held_config: Option<DataplaneConfig>,
    /// Hooks whose pinned link carries this build's program.
    current: BTreeSet<(Hook, u32)>,
    /// The only interfaces the VM programs may go on (host addresses are checked as well).
    vm_ports: VmPorts,
    /// The hook serving each VM port.
    vm_hooks: VmHooks,
}

impl Dataplane {
    /// Loads the programs, adopting the pinned maps (their entries keep serving), with the
    /// default rate limits.
    pub fn open(bpffs_dir: &Path, router_mac: [u8; 6]) -> Result<Self, DataplaneError> {
        Self::open_limited(bpffs_dir, router_mac, &RateLimits::DEFAULT)
    }

    /// [`Dataplane::open`] with the given per-port rate limits.
    pub fn open_limited(
        bpffs_dir: &Path,
        router_mac: [u8; 6],
        limits: &RateLimits,
    ) -> Result<Self, DataplaneError> {
        let pins = Pins::new(bpffs_dir);
        ensure_bpffs(bpffs_dir)?;
        pins.secure()?;
        check_layout(&pins.maps)?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.maps)
            .override_global("ROUTER_MAC", &router_mac, true)
            .override_global("RATE_DHCP", &limits.dhcp, true)
            .override_global("RATE_ARP", &limits.arp, true)
            .override_global("RATE_EVENTS", &limits.events, true)
            .load(EBPF_OBJECT)?;
        let load_failed = |name| move |source| DataplaneError::LoadProgram { name, source };
        for name in [PROGRAM_VM, PROGRAM_UNDERLAY] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            retry_eagain(|| program.load()).map_err(load_failed(name))?;
        }
        for name in [
            PROGRAM_TC,
            PROGRAM_VM_TC,
            PROGRAM_UNDERLAY_TC,
            PROGRAM_UNDERLAY_MD,
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            retry_eagain(|| program.load()).map_err(load_failed(name))?;
        }

        let bindings = Synced::open(&mut ebpf, MAP_BINDINGS)?;
        let boot = Synced::open(&mut ebpf, MAP_BOOT)?;
        let fdb = Synced::open(&mut ebpf, MAP_FDB)?;
        let arp = Synced::open(&mut ebpf, MAP_ARP)?;
        let vteps = Synced::open(&mut ebpf, MAP_VTEPS)?;
        let vnis = Synced::open(&mut ebpf, MAP_VNIS)?;
        let bindings6 = Synced::open(&mut ebpf, MAP_BINDINGS6)?;
        let neigh6 = Synced::open(&mut ebpf, MAP_NEIGH6)?;
        let ra6 = Synced::open(&mut ebpf, MAP_VNIS6)?;
        let dhcp6 = Synced::open(&mut ebpf, MAP_DHCP6)?;
        let routes = Synced::open(&mut ebpf, MAP_ROUTES)?;
        let forwarding = Synced::open(&mut ebpf, MAP_FORWARDING)?;
        let forwarders = Synced::open(&mut ebpf, MAP_FORWARDERS)?;
        let config = ebpf
            .take_map(MAP_CONFIG)
            .ok_or(DataplaneError::Missing(MAP_CONFIG))?;
        let config: Array<MapData, DataplaneConfig> = Array::try_from(config)?;
        let held_config = config.get(&0, 0).ok();
        info!(
            maps = %pins.maps.display(),
            adopted_bindings = bindings.held.len(),
            adopted_fdb = fdb.held.len(),
            adopted_routes = routes.held.len(),
            pinned_links = pins.pinned().len(),
            "data plane loaded"
        );
        Ok(Self {
            ebpf,
            pins,
            bindings,
            boot,
            fdb,
            arp,
            vteps,
            vnis,
            bindings6,
            neigh6,
            ra6,
            dhcp6,
            routes,
            forwarding,
            forwarders,
            config,
            held_config,
            current: BTreeSet::new(),
            vm_ports: VmPorts::new(&default_patterns(), None, crate::anchor::DEFAULT_NAME),
            vm_hooks: VmHooks::default(),
        })
    }

    /// The only interfaces the VM programs may go on (the config's `[vm] interfaces`, not the
    /// underlay): whatever a desired state asks, they go nowhere else.
    pub fn set_vm_ports(&mut self, ports: VmPorts) {
        self.vm_ports = ports;
    }

    /// The hook serving each VM port (the config's `[vm] hook` and `hook_for`). A port moved to
    /// another hook gets the new program before the old one goes, at the next reconcile.
    pub fn set_vm_hooks(&mut self, hooks: VmHooks) {
        self.vm_hooks = hooks;
    }

    /// The ring buffer of DHCP RELEASE and DECLINE events.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(DataplaneError::Missing(MAP_EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The holds XDP keeps after a DECLINE, by binding (tests end them early).
    pub fn decline_holds(
        &mut self,
    ) -> Result<HashMap<&mut MapData, BindingKey, DeclineHold>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_DECLINED)
            .ok_or(DataplaneError::Missing(MAP_DECLINED))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Records logged by the programs (aya-log).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Converges maps and links to `desired`. Additions and changes come first, so that a new
    /// entry is in place before anything refers to it; removals come last.
    pub fn reconcile(&mut self, desired: &Desired) -> Report {
        let mut report = Report::default();
        let prune = desired.prune;
        // What each map needs, found by diffing against what it holds.
        let vnis = self.vnis.plan(&desired.vnis, prune);
        let vteps = self.vteps.plan(&desired.vteps, prune);
        let fdb = self.fdb.plan(&desired.fdb, prune);
        let arp = self.arp.plan(&desired.arp, prune);
        let boot = self.boot.plan(&desired.boot, prune);
        let bindings = self.bindings.plan(&desired.bindings, prune);
        let ra6 = self.ra6.plan(&desired.ra6, prune);
        let dhcp6 = self.dhcp6.plan(&desired.dhcp6, prune);
        let neigh6 = self.neigh6.plan(&desired.neigh6, prune);
        let bindings6 = self.bindings6.plan(&desired.bindings6, prune);
        let forwarding = self.forwarding.plan(&desired.forwarding, prune);
        let forwarders = self.forwarders.plan(&desired.forwarders, prune);
        let routes = self.routes.plan(&desired.routes, prune);
        // Referenced entries before the entries that refer to them, and a NIC able to speak
        // before anything is delivered to it. Its ARP answer and boot answers before its
        // binding; IPv6 the same way: a network's advertisement and its neighbour answers
        // before the addresses NICs are held to. Its forwarding entry only after both
        // bindings: a VM that arrives with flows running (a live migration) answers the first
        // frame delivered to it, and if it must first resolve the sender, its ARP request or
        // neighbour solicitation has to find its binding, or the guest waits a whole
        // retransmission (a second) before it asks again. Routing last: a route leads to ARP
        // and FDB entries, and a forwarding NIC is marked before a route names it. Removals
        // run in the reverse order, so a leaving NIC stops receiving before it stops speaking.
        let written = [
            self.vnis.write(&vnis.upserts, &mut report),
            self.vteps.write(&vteps.upserts, &mut report),
            self.arp.write(&arp.upserts, &mut report),
            self.boot.write(&boot.upserts, &mut report),
            self.bindings.write(&bindings.upserts, &mut report),
            self.ra6.write(&ra6.upserts, &mut report),
            self.dhcp6.write(&dhcp6.upserts, &mut report),
            self.neigh6.write(&neigh6.upserts, &mut report),
            self.bindings6.write(&bindings6.upserts, &mut report),
            self.fdb.write(&fdb.upserts, &mut report),
            self.forwarding.write(&forwarding.upserts, &mut report),
            self.forwarders.write(&forwarders.upserts, &mut report),
            self.routes.write(&routes.upserts, &mut report),
        ];
        let mut ok = written
            == [
                vnis.upserts.len(),
                vteps.upserts.len(),
                arp.upserts.len(),
                boot.upserts.len(),
                bindings.upserts.len(),
                ra6.upserts.len(),
                dhcp6.upserts.len(),
                neigh6.upserts.len(),
                bindings6.upserts.len(),
                fdb.upserts.len(),
                forwarding.upserts.len(),
                forwarders.upserts.len(),
                routes.upserts.len(),
            ];
        if self.held_config != Some(desired.config) {
            match self.config.set(0, desired.config, 0) {
                Ok(()) => {
                    self.held_config = Some(desired.config);
                    report.upserted += 1;
                }
                Err(e) => report.errors.push(ReconcileError::Write {
                    map: MAP_CONFIG,
                    source: WriteError::Entry(e),
                }),
            }
        }

        let wanted = self.wanted(desired, &mut report);
        self.attach_wanted(&wanted, &mut report);

        if prune {
            // Removals in the reverse order: nothing is left referring to what goes.
            ok &= self.routes.remove(&routes.removals, &mut report);
            ok &= self.forwarders.remove(&forwarders.removals, &mut report);
            ok &= self.forwarding.remove(&forwarding.removals, &mut report);
            ok &= self.fdb.remove(&fdb.removals, &mut report);
            ok &= self.bindings6.remove(&bindings6.removals, &mut report);
            ok &= self.neigh6.remove(&neigh6.removals, &mut report);
            ok &= self.dhcp6.remove(&dhcp6.removals, &mut report);
            ok &= self.ra6.remove(&ra6.removals, &mut report);
            ok &= self.bindings.remove(&bindings.removals, &mut report);
            ok &= self.boot.remove(&boot.removals, &mut report);
            ok &= self.arp.remove(&arp.removals, &mut report);
            ok &= self.vteps.remove(&vteps.removals, &mut report);
            ok &= self.vnis.remove(&vnis.removals, &mut report);
            if ok {
                // Converged: share structure with the desired state again, so the next small
                // change diffs in time proportional to the change.
                self.bindings.converged(&desired.bindings);
                self.boot.converged(&desired.boot);
                self.fdb.converged(&desired.fdb);
                self.arp.converged(&desired.arp);
                self.vteps.converged(&desired.vteps);
                self.vnis.converged(&desired.vnis);
                self.bindings6.converged(&desired.bindings6);
                self.neigh6.converged(&desired.neigh6);
                self.ra6.converged(&desired.ra6);
                self.dhcp6.converged(&desired.dhcp6);
                self.routes.converged(&desired.routes);
                self.forwarding.converged(&desired.forwarding);
                self.forwarders.converged(&desired.forwarders);
            }
            self.detach_unwanted(&wanted, &mut report);
        }
        if !(prune && ok) {
            // Not converged: what was written is held, entry by entry.
            self.vnis.record(&vnis.upserts[..written[0]]);
            self.vteps.record(&vteps.upserts[..written[1]]);
            self.arp.record(&arp.upserts[..written[2]]);
            self.boot.record(&boot.upserts[..written[3]]);
            self.bindings.record(&bindings.upserts[..written[4]]);
            self.ra6.record(&ra6.upserts[..written[5]]);
            self.dhcp6.record(&dhcp6.upserts[..written[6]]);
            self.neigh6.record(&neigh6.upserts[..written[7]]);
            self.bindings6.record(&bindings6.upserts[..written[8]]);
            self.fdb.record(&fdb.upserts[..written[9]]);
            self.forwarding.record(&forwarding.upserts[..written[10]]);
            self.forwarders.record(&forwarders.upserts[..written[11]]);
            self.routes.record(&routes.upserts[..written[12]]);
        }
        if prune && report.errors.is_empty() {
            self.retire_other_layouts(&mut report);
        }
        report.bindings = self.bindings.held.len();
        report.fdb = self.fdb.held.len();
        report.bindings6 = self.bindings6.held.len();
        // A port switching hooks carries both programs for a moment: counted once.
        report.interfaces = self
            .pins
            .pinned()
            .iter()
            .filter(|(h, _)| h.is_vm_program())
            .map(|(_, ifindex)| *ifindex)
            .collect::<BTreeSet<_>>()
            .len();
        report
    }

    /// The VM program, for `BPF_PROG_TEST_RUN` (tests and benchmarks).
    pub fn vm_program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp_program(PROGRAM_VM)
    }

    /// The underlay program, for `BPF_PROG_TEST_RUN`.
    pub fn underlay_program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp_program(PROGRAM_UNDERLAY)
    }

    /// The VM interfaces' TC program in xdp mode (the skb path), for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> Result<&SchedClassifier, DataplaneError> {
        self.tc(PROGRAM_TC)
    }

    /// The VM interfaces' TC program in tc mode (all of the VM-port logic), for
    /// `BPF_PROG_TEST_RUN`.
    pub fn vm_tc_program(&self) -> Result<&SchedClassifier, DataplaneError> {
        self.tc(PROGRAM_VM_TC)
    }

    fn tc(&self, name: &'static str) -> Result<&SchedClassifier, DataplaneError> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()?)
    }

    fn xdp_program(&self, name: &'static str) -> Result<&Xdp, DataplaneError> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()?)
    }
}
