//! The data plane: the XDP and TC programs, their pinned maps and links.
//!
//! Everything lives under `bpffs_dir` so it outlives the agent: maps in `maps-v<layout>/`, one
//! link per hook and interface in `links/` (`vm-<ifindex>` and `tc-<ifindex>` on VM interfaces,
//! `ul-<ifindex>` on the underlay). Opening adopts what is pinned (the maps keep their entries,
//! the links keep their interfaces served); attaching replaces the program of a pinned link
//! atomically. Nothing is flushed: entries and links are removed only by
//! [`Dataplane::reconcile`] when asked to prune after a complete, validated load.
//!
//! All calls here are blocking syscalls; the agent runs them on a dedicated thread.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use agent_common::{
    ArpEntry, ArpKey, Binding, BindingKey, DataplaneConfig, DhcpEvent, FdbEntry, FdbKey, VniInfo,
    stats::STATS_COUNT,
};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use imbl::{OrdMap, ordmap::DiffItem};
use tracing::{debug, info, warn};

/// The eBPF object, built from `agent-ebpf` by this crate's build script on every build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast"));

/// The no-op program for the VM side of a veth (see `attach_veth_peer`).
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast-pass"));

pub const PROGRAM_VM: &str = "holdfast_vm";
pub const PROGRAM_TC: &str = "holdfast_tc";
pub const PROGRAM_UNDERLAY: &str = "holdfast_ul";
pub const PROGRAM_UNDERLAY_TC: &str = "holdfast_ul_tc";
pub const PROGRAM_PASS: &str = "holdfast_pass";
pub const MAP_BINDINGS: &str = "BINDINGS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_FDB: &str = "FDB";
pub const MAP_ARP: &str = "ARP";
pub const MAP_VTEPS: &str = "VTEPS";
pub const MAP_VNIS: &str = "VNIS";
pub const MAP_CONFIG: &str = "CONFIG";

/// Magic number of bpffs in `statfs.f_type`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program: {0}")]
    Program(#[from] ProgramError),
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error(
        "pinned map {path} has {found}, this build expects {expected}; \
         the map layout changed without a new LAYOUT_VERSION"
    )]
    Layout {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("link {path}: {source}")]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("netlink: {0}")]
    Netlink(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The places holdfast attaches a program. Declared in attach order: on each interface the TC
/// program that takes what XDP hands up is in place before the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress on a VM interface: the skb path.
    VmTc,
    /// XDP on a VM interface: DHCP, ARP, anti-spoofing, forwarding.
    VmXdp,
    /// TC ingress on the underlay: decapsulated TCP, after GRO, into its VM.
    UnderlayTc,
    /// XDP on the underlay: decapsulation.
    Underlay,
}

impl Hook {
    const ALL: [Hook; 4] = [Hook::VmTc, Hook::VmXdp, Hook::UnderlayTc, Hook::Underlay];

    fn prefix(self) -> &'static str {
        match self {
            Hook::VmXdp => "vm",
            Hook::VmTc => "tc",
            Hook::Underlay => "ul",
            Hook::UnderlayTc => "ult",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Hook::VmXdp => PROGRAM_VM,
            Hook::VmTc => PROGRAM_TC,
            Hook::Underlay => PROGRAM_UNDERLAY,
            Hook::UnderlayTc => PROGRAM_UNDERLAY_TC,
        }
    }

    fn is_tc(self) -> bool {
        matches!(self, Hook::VmTc | Hook::UnderlayTc)
    }
}

/// The version of the map layout this build pins, in `maps-v<LAYOUT_VERSION>/`. The
/// `layout-next` feature builds the same programs under the next version: the second build of
/// the upgrade test, which proves that a layout change migrates without a gap.
pub const LAYOUT_VERSION: u32 = if cfg!(feature = "layout-next") {
    agent_common::LAYOUT_VERSION + 1
} else {
    agent_common::LAYOUT_VERSION
};

/// Where the data plane is pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    pub maps: PathBuf,
    pub links: PathBuf,
}

impl Pins {
    pub fn new(bpffs_dir: &Path) -> Self {
        Self {
            maps: bpffs_dir.join(format!("maps-v{LAYOUT_VERSION}")),
            links: bpffs_dir.join("links"),
        }
    }

    fn link(&self, hook: Hook, ifindex: u32) -> PathBuf {
        self.links.join(format!("{}-{ifindex}", hook.prefix()))
    }

    /// Pinned links, by hook and ifindex.
    pub fn pinned(&self) -> BTreeSet<(Hook, u32)> {
        let Ok(dir) = fs::read_dir(&self.links) else {
            return BTreeSet::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let (prefix, ifindex) = name.split_once('-')?;
                let hook = Hook::ALL.into_iter().find(|h| h.prefix() == prefix)?;
                Some((hook, ifindex.parse().ok()?))
            })
            .collect()
    }
}

fn statfs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed out-struct for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-struct.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Makes sure `dir` can be created on a bpffs, mounting one at `/sys/fs/bpf` when the host has
/// none there (containers and `ip netns exec` often start without it).
pub fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && statfs_type(root) != Some(BPF_FS_MAGIC) {
        info!(path = %root.display(), "no bpffs mounted; mounting one");
        let src = CString::new("bpf").map_err(|e| DataplaneError::Bpffs(e.to_string()))?;
        let target =
            CString::new("/sys/fs/bpf").map_err(|e| DataplaneError::Bpffs(e.to_string()))?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DataplaneError::Bpffs(format!(
                "mounting bpffs at /sys/fs/bpf: {}",
                io::Error::last_os_error()
            )));
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if statfs_type(dir) != Some(BPF_FS_MAGIC) {
        return Err(DataplaneError::Bpffs(format!(
            "{} is not on a bpf filesystem; pins there would not outlive the agent",
            dir.display()
        )));
    }
    Ok(())
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

/// Key and value sizes of the maps this build pins, to check adopted maps against.
const LAYOUTS: &[(&str, usize, usize)] = &[
    (MAP_BINDINGS, size_of::<BindingKey>(), size_of::<Binding>()),
    (MAP_STATS, 4, 8),
    (MAP_FDB, size_of::<FdbKey>(), size_of::<FdbEntry>()),
    (MAP_ARP, size_of::<ArpKey>(), size_of::<ArpEntry>()),
    (MAP_VTEPS, 4, 4),
    (MAP_VNIS, 4, size_of::<VniInfo>()),
    (MAP_CONFIG, 4, size_of::<DataplaneConfig>()),
];

fn check_layout(maps_dir: &Path) -> Result<(), DataplaneError> {
    for (name, key, value) in LAYOUTS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)?;
        if info.key_size() as usize != *key || info.value_size() as usize != *value {
            return Err(DataplaneError::Layout {
                path,
                found: format!("key {} B, value {} B", info.key_size(), info.value_size()),
                expected: format!("key {key} B, value {value} B"),
            });
        }
    }
    Ok(())
}

/// What [`Dataplane::reconcile`] is asked to converge to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// VM interfaces to carry the programs, by ifindex (name for logs and TC attachment).
    pub interfaces: BTreeMap<u32, String>,
    /// The underlay interface.
    pub underlay: Option<(u32, String)>,
    pub bindings: OrdMap<BindingKey, Binding>,
    pub fdb: OrdMap<FdbKey, FdbEntry>,
    pub arp: OrdMap<ArpKey, ArpEntry>,
    pub vteps: OrdMap<u32, u32>,
    pub vnis: OrdMap<u32, VniInfo>,
    pub config: DataplaneConfig,
    /// Remove links and entries that are not desired. Only after a complete, validated load.
    pub prune: bool,
}

/// What a reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub upserted: usize,
    pub deleted: usize,
    pub bindings: usize,
    pub fdb: usize,
    pub interfaces: usize,
    /// Map directories of other layouts removed (every hook runs this build's programs).
    pub retired: Vec<String>,
    pub errors: Vec<String>,
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6): one system call per few thousand entries rather than
/// one per entry; 100,000 NICs are 200,000 entries. Entries are written in order; on an error,
/// how many were written before it.
fn update_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(K, V)],
) -> Result<(), (usize, io::Error)> {
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const CHUNK: usize = 4096;
    let mut done = 0;
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at `count` keys and values of the map's sizes (checked against
        // the pinned map by `check_layout`), alive for the call; the kernel writes back `count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err((done + (attr.count as usize).min(chunk.len()), e));
        }
        done += chunk.len();
    }
    Ok(())
}

/// A pinned hash map and what it holds, kept in step with every write so that a reconcile
/// writes only what differs. `held` shares its structure with the last desired state it was
/// converged to, so finding what a small change to a large state differs in skips everything
/// the two share.
struct Synced<K: Clone, V: Clone> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    /// The map's descriptor, for batched updates (aya has none).
    fd: OwnedFd,
    held: OrdMap<K, V>,
}

/// What a map needs to reach a desired state: entries to write, keys to delete.
struct Plan<K, V> {
    upserts: Vec<(K, V)>,
    removals: Vec<K>,
}

impl<K: Pod + Ord + Clone, V: Pod + PartialEq + Clone> Synced<K, V> {
    fn open(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, DataplaneError> {
        let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
        let fd = match &map {
            aya::maps::Map::HashMap(data) => {
                data.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| DataplaneError::Io {
                        path: PathBuf::from(name),
                        source,
                    })?
            }
            _ => return Err(DataplaneError::Missing(name)),
        };
        let map: HashMap<MapData, K, V> = HashMap::try_from(map)?;
        let held = map.iter().filter_map(Result::ok).collect();
        Ok(Self {
            name,
            map,
            fd,
            held,
        })
    }

    fn plan(&self, desired: &OrdMap<K, V>) -> Plan<K, V> {
        let mut plan = Plan {
            upserts: Vec::new(),
            removals: Vec::new(),
        };
        for item in self.held.diff(desired) {
            match item {
                DiffItem::Add(k, v) | DiffItem::Update { new: (k, v), .. } => {
                    plan.upserts.push((*k, *v));
                }
                DiffItem::Remove(k, _) => plan.removals.push(*k),
            }
        }
        plan
    }

    /// Writes entries in order, in batches; how many were written (all of them, or those
    /// before the first that failed). [`Synced::record`] must follow with what was written.
    fn write(&mut self, upserts: &[(K, V)], report: &mut Report) -> usize {
        let written = match update_batch(self.fd.as_fd(), upserts) {
            Ok(()) => upserts.len(),
            Err((n, e)) if e.raw_os_error() == Some(libc::EINVAL) && n == 0 => {
                // A kernel without batched updates for this map: one at a time.
                let mut n = 0;
                for (key, value) in upserts {
                    if let Err(e) = self.map.insert(key, value, 0) {
                        report.errors.push(format!("{}: write: {e}", self.name));
                        break;
                    }
                    n += 1;
                }
                n
            }
            Err((n, e)) => {
                report.errors.push(format!("{}: write: {e}", self.name));
                n
            }
        };
        report.upserted += written;
        written
    }

    /// Records written entries as held.
    fn record(&mut self, written: &[(K, V)]) {
        for (key, value) in written {
            self.held.insert(*key, *value);
        }
    }

    /// Deletes entries; whether every delete succeeded.
    fn remove(&mut self, keys: &[K], report: &mut Report) -> bool {
        let mut ok = true;
        for key in keys {
            match self.map.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                    self.held.remove(key);
                    report.deleted += 1;
                }
                Err(e) => {
                    ok = false;
                    report.errors.push(format!("{}: delete: {e}", self.name));
                }
            }
        }
        ok
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    pins: Pins,
    bindings: Synced<BindingKey, Binding>,
    fdb: Synced<FdbKey, FdbEntry>,
    arp: Synced<ArpKey, ArpEntry>,
    vteps: Synced<u32, u32>,
    vnis: Synced<u32, VniInfo>,
    config: Array<MapData, DataplaneConfig>,
    held_config: Option<DataplaneConfig>,
    /// Hooks whose pinned link carries this build's program.
    current: BTreeSet<(Hook, u32)>,
}

impl Dataplane {
    /// Loads the programs, adopting the pinned maps (their entries keep serving).
    pub fn open(bpffs_dir: &Path, router_mac: [u8; 6]) -> Result<Self, DataplaneError> {
        let pins = Pins::new(bpffs_dir);
        ensure_bpffs(&pins.maps)?;
        fs::create_dir_all(&pins.links).map_err(io_err(&pins.links))?;
        check_layout(&pins.maps)?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.maps)
            .override_global("ROUTER_MAC", &router_mac, true)
            .load(EBPF_OBJECT)?;
        for name in [PROGRAM_VM, PROGRAM_UNDERLAY] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            retry_eagain(|| program.load())?;
        }
        for name in [PROGRAM_TC, PROGRAM_UNDERLAY_TC] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            retry_eagain(|| program.load())?;
        }

        let bindings = Synced::open(&mut ebpf, MAP_BINDINGS)?;
        let fdb = Synced::open(&mut ebpf, MAP_FDB)?;
        let arp = Synced::open(&mut ebpf, MAP_ARP)?;
        let vteps = Synced::open(&mut ebpf, MAP_VTEPS)?;
        let vnis = Synced::open(&mut ebpf, MAP_VNIS)?;
        let config = ebpf
            .take_map(MAP_CONFIG)
            .ok_or(DataplaneError::Missing(MAP_CONFIG))?;
        let config: Array<MapData, DataplaneConfig> = Array::try_from(config)?;
        let held_config = config.get(&0, 0).ok();
        info!(
            maps = %pins.maps.display(),
            adopted_bindings = bindings.held.len(),
            adopted_fdb = fdb.held.len(),
            pinned_links = pins.pinned().len(),
            "data plane loaded"
        );
        Ok(Self {
            ebpf,
            pins,
            bindings,
            fdb,
            arp,
            vteps,
            vnis,
            config,
            held_config,
            current: BTreeSet::new(),
        })
    }

    /// The ring buffer of DHCP RELEASE and DECLINE events.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DataplaneError> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(DataplaneError::Missing(MAP_EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Records logged by the programs (aya-log).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Converges maps and links to `desired`. Additions and changes come first, so that a new
    /// entry is in place before anything refers to it; removals come last.
    pub fn reconcile(&mut self, desired: &Desired) -> Report {
        let mut report = Report::default();
        // What each map needs, found by diffing against what it holds.
        let vnis = self.vnis.plan(&desired.vnis);
        let vteps = self.vteps.plan(&desired.vteps);
        let fdb = self.fdb.plan(&desired.fdb);
        let arp = self.arp.plan(&desired.arp);
        let bindings = self.bindings.plan(&desired.bindings);
        // Referenced entries before the entries that refer to them: a NIC's forwarding entry
        // before the ARP answer that sends traffic to it, both before its binding.
        let written = [
            self.vnis.write(&vnis.upserts, &mut report),
            self.vteps.write(&vteps.upserts, &mut report),
            self.fdb.write(&fdb.upserts, &mut report),
            self.arp.write(&arp.upserts, &mut report),
            self.bindings.write(&bindings.upserts, &mut report),
        ];
        let mut ok = written
            == [
                vnis.upserts.len(),
                vteps.upserts.len(),
                fdb.upserts.len(),
                arp.upserts.len(),
                bindings.upserts.len(),
            ];
        if self.held_config != Some(desired.config) {
            match self.config.set(0, desired.config, 0) {
                Ok(()) => {
                    self.held_config = Some(desired.config);
                    report.upserted += 1;
                }
                Err(e) => report.errors.push(format!("{MAP_CONFIG}: write: {e}")),
            }
        }

        let mut wanted: BTreeMap<(Hook, u32), &str> = BTreeMap::new();
        if let Some((ifindex, name)) = &desired.underlay {
            wanted.insert((Hook::UnderlayTc, *ifindex), name);
            wanted.insert((Hook::Underlay, *ifindex), name);
        }
        for (ifindex, name) in &desired.interfaces {
            wanted.insert((Hook::VmXdp, *ifindex), name);
            wanted.insert((Hook::VmTc, *ifindex), name);
        }
        for (&(hook, ifindex), name) in &wanted {
            if self.current.contains(&(hook, ifindex)) {
                continue;
            }
            match self.attach(hook, ifindex, name) {
                Ok(how) => {
                    info!(interface = %name, ifindex, ?hook, how, "program attached");
                    self.current.insert((hook, ifindex));
                    report.attached.push(format!("{name}/{}", hook.prefix()));
                }
                Err(e) => {
                    warn!(interface = %name, ifindex, ?hook, error = %e, "cannot attach");
                    report
                        .errors
                        .push(format!("attach {hook:?} to {name} ({ifindex}): {e}"));
                }
            }
        }

        if desired.prune {
            // Removals in the reverse order: nothing is left referring to what goes.
            ok &= self.bindings.remove(&bindings.removals, &mut report);
            ok &= self.arp.remove(&arp.removals, &mut report);
            ok &= self.fdb.remove(&fdb.removals, &mut report);
            ok &= self.vteps.remove(&vteps.removals, &mut report);
            ok &= self.vnis.remove(&vnis.removals, &mut report);
            if ok {
                // Converged: share structure with the desired state again, so the next small
                // change diffs in time proportional to the change.
                self.bindings.held = desired.bindings.clone();
                self.fdb.held = desired.fdb.clone();
                self.arp.held = desired.arp.clone();
                self.vteps.held = desired.vteps.clone();
                self.vnis.held = desired.vnis.clone();
            }
            for (hook, ifindex) in self.pins.pinned() {
                if wanted.contains_key(&(hook, ifindex)) {
                    continue;
                }
                let path = self.pins.link(hook, ifindex);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        info!(ifindex, ?hook, "program detached");
                        self.current.remove(&(hook, ifindex));
                        report.detached.push(format!("{}-{ifindex}", hook.prefix()));
                    }
                    Err(e) => report.errors.push(format!("unpin {}: {e}", path.display())),
                }
            }
        }
        if !(desired.prune && ok) {
            // Not converged: what was written is held, entry by entry.
            self.vnis.record(&vnis.upserts[..written[0]]);
            self.vteps.record(&vteps.upserts[..written[1]]);
            self.fdb.record(&fdb.upserts[..written[2]]);
            self.arp.record(&arp.upserts[..written[3]]);
            self.bindings.record(&bindings.upserts[..written[4]]);
        }
        if desired.prune && report.errors.is_empty() {
            self.retire_other_layouts(&mut report);
        }
        report.bindings = self.bindings.held.len();
        report.fdb = self.fdb.held.len();
        report.interfaces = self
            .pins
            .pinned()
            .iter()
            .filter(|(h, _)| *h == Hook::VmXdp)
            .count();
        report
    }

    /// Once every pinned link runs this build's programs, nothing reads the maps of another
    /// layout (a previous or later build's): their counters are added to this build's, and
    /// their pins removed, which frees them. Until then the other build's programs keep
    /// serving from them: an upgrade has no gap.
    fn retire_other_layouts(&mut self, report: &mut Report) {
        if !self.pins.pinned().is_subset(&self.current) {
            return;
        }
        let Some(root) = self.pins.maps.parent() else {
            return;
        };
        let Ok(dir) = fs::read_dir(root) else {
            return;
        };
        for e in dir.filter_map(Result::ok) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("maps-v") || path == self.pins.maps {
                continue;
            }
            match self.carry_stats(&path.join(MAP_STATS)) {
                Ok(true) => {
                    info!(from = %path.display(), "counters carried over from the other layout")
                }
                Ok(false) => warn!(
                    from = %path.display(),
                    "the other layout's counters do not match this build's; they restart from zero"
                ),
                Err(e) => warn!(from = %path.display(), error = %e, "cannot carry counters over"),
            }
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    info!(maps = %path.display(), "maps of another layout retired");
                    report.retired.push(name);
                }
                Err(e) => report
                    .errors
                    .push(format!("retiring {}: {e}", path.display())),
            }
        }
    }

    /// Adds the per-CPU counters pinned at `old` to this build's; false when their layouts
    /// differ (then they are not comparable).
    fn carry_stats(&mut self, old: &Path) -> Result<bool, DataplaneError> {
        if !old.exists() {
            return Ok(true);
        }
        let info = MapInfo::from_pin(old)?;
        let ours = MapInfo::from_pin(self.pins.maps.join(MAP_STATS))?;
        if info.max_entries() != ours.max_entries() || info.value_size() != ours.value_size() {
            return Ok(false);
        }
        let old =
            PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(MapData::from_pin(old)?))?;
        let map = self
            .ebpf
            .map_mut(MAP_STATS)
            .ok_or(DataplaneError::Missing(MAP_STATS))?;
        let mut new = PerCpuArray::<_, u64>::try_from(map)?;
        for i in 0..STATS_COUNT {
            let (Ok(a), Ok(b)) = (old.get(&i, 0), new.get(&i, 0)) else {
                continue;
            };
            let sum: Vec<u64> = a.iter().zip(b.iter()).map(|(x, y)| x + y).collect();
            new.set(
                i,
                aya::maps::PerCpuValues::try_from(sum).map_err(|e| DataplaneError::Io {
                    path: self.pins.maps.join(MAP_STATS),
                    source: e,
                })?,
                0,
            )?;
        }
        Ok(true)
    }

    /// Puts this build's program on a hook: atomically replaces the program of a pinned link,
    /// or creates and pins a new link.
    fn attach(
        &mut self,
        hook: Hook,
        ifindex: u32,
        name: &str,
    ) -> Result<&'static str, DataplaneError> {
        let path = self.pins.link(hook, ifindex);
        if path.exists() {
            match self.replace(hook, &path) {
                Ok(()) => return Ok("replaced the program of the pinned link"),
                Err(e) => {
                    // The interface this link was for is gone (ENOLINK): start afresh.
                    debug!(path = %path.display(), error = %e, "stale pinned link");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        let link_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataplaneError::Link { path, source }
        };
        let program = self
            .ebpf
            .program_mut(hook.program())
            .ok_or(DataplaneError::Missing(hook.program()))?;
        let fd_link = if hook.is_tc() {
            let program: &mut SchedClassifier = program.try_into()?;
            let id = program.attach_with_options(
                name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            FdLink::try_from(program.take_link(id)?).map_err(link_err(&path))?
        } else {
            let program: &mut Xdp = program.try_into()?;
            let id = program.attach_to_if_index(ifindex, XdpMode::Default)?;
            FdLink::try_from(program.take_link(id)?).map_err(link_err(&path))?
        };
        fd_link
            .pin(&path)
            .map_err(|source| DataplaneError::Pin { path, source })?;
        Ok("attached and pinned a new link")
    }

    fn replace(&mut self, hook: Hook, path: &Path) -> Result<(), DataplaneError> {
        let link_err = |source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        };
        let fd_link = FdLink::from(PinnedLink::from_pin(path).map_err(link_err)?);
        let program = self
            .ebpf
            .program_mut(hook.program())
            .ok_or(DataplaneError::Missing(hook.program()))?;
        // The pin keeps the link; this process holds no reference of its own.
        if hook.is_tc() {
            let program: &mut SchedClassifier = program.try_into()?;
            let link = SchedClassifierLink::try_from(fd_link).map_err(link_err)?;
            let id = program.attach_to_link(link)?;
            drop(program.take_link(id)?);
        } else {
            let program: &mut Xdp = program.try_into()?;
            let id = program.attach_to_link(XdpLink::try_from(fd_link).map_err(link_err)?)?;
            drop(program.take_link(id)?);
        }
        Ok(())
    }

    pub fn held_bindings(&self) -> &OrdMap<BindingKey, Binding> {
        &self.bindings.held
    }

    /// The VM program, for `BPF_PROG_TEST_RUN` (tests and benchmarks).
    pub fn vm_program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp_program(PROGRAM_VM)
    }

    /// The underlay program, for `BPF_PROG_TEST_RUN`.
    pub fn underlay_program(&self) -> Result<&Xdp, DataplaneError> {
        self.xdp_program(PROGRAM_UNDERLAY)
    }

    fn xdp_program(&self, name: &'static str) -> Result<&Xdp, DataplaneError> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()?)
    }
}

fn open_pinned<K: Pod, V: Pod>(
    bpffs_dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    let maps = Pins::new(bpffs_dir).maps;
    check_layout(&maps)?;
    let map = MapData::from_pin(maps.join(name))?;
    Ok(HashMap::try_from(aya::maps::Map::HashMap(map))?)
}

/// The pinned forwarding map, for lookups of single entries (tests, tools).
pub fn pinned_fdb(bpffs_dir: &Path) -> Result<HashMap<MapData, FdbKey, FdbEntry>, DataplaneError> {
    open_pinned(bpffs_dir, MAP_FDB)
}

/// Reads the bindings the data plane holds, from the pinned map (works with the agent down).
pub fn read_bindings(bpffs_dir: &Path) -> Result<Vec<(BindingKey, Binding)>, DataplaneError> {
    let map = open_pinned::<BindingKey, Binding>(bpffs_dir, MAP_BINDINGS)?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// The forwarding state the data plane holds, read from the pinned maps.
#[derive(Debug, Default)]
pub struct VpcState {
    pub config: Option<DataplaneConfig>,
    pub vnis: Vec<(u32, VniInfo)>,
    pub fdb: Vec<(FdbKey, FdbEntry)>,
    pub arp: Vec<(ArpKey, ArpEntry)>,
    pub vteps: Vec<u32>,
}

pub fn read_vpc(bpffs_dir: &Path) -> Result<VpcState, DataplaneError> {
    let maps = Pins::new(bpffs_dir).maps;
    let config = MapData::from_pin(maps.join(MAP_CONFIG))
        .ok()
        .and_then(|m| Array::<_, DataplaneConfig>::try_from(aya::maps::Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    let mut s = VpcState {
        config,
        vnis: open_pinned::<u32, VniInfo>(bpffs_dir, MAP_VNIS)?
            .iter()
            .filter_map(Result::ok)
            .collect(),
        fdb: open_pinned::<FdbKey, FdbEntry>(bpffs_dir, MAP_FDB)?
            .iter()
            .filter_map(Result::ok)
            .collect(),
        arp: open_pinned::<ArpKey, ArpEntry>(bpffs_dir, MAP_ARP)?
            .iter()
            .filter_map(Result::ok)
            .collect(),
        vteps: open_pinned::<u32, u32>(bpffs_dir, MAP_VTEPS)?
            .keys()
            .filter_map(Result::ok)
            .collect(),
    };
    s.vnis.sort_by_key(|(k, _)| *k);
    s.fdb.sort_by_key(|(k, _)| *k);
    s.arp.sort_by_key(|(k, _)| *k);
    s.vteps.sort_unstable();
    Ok(s)
}

/// Reads the per-CPU counters from the pinned map, summed over CPUs.
pub struct StatsReader {
    map: PerCpuArray<MapData, u64>,
}

impl StatsReader {
    pub fn open(bpffs_dir: &Path) -> Result<Self, DataplaneError> {
        let path = Pins::new(bpffs_dir).maps.join(MAP_STATS);
        let map = MapData::from_pin(&path)?;
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))?;
        Ok(Self { map })
    }

    /// One total per `agent_common::Stat`.
    pub fn read(&self) -> Vec<u64> {
        (0..STATS_COUNT)
            .map(|i| {
                self.map
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Decodes a ring buffer record.
pub fn parse_event(bytes: &[u8]) -> Option<DhcpEvent> {
    (bytes.len() >= size_of::<DhcpEvent>())
        // SAFETY: `DhcpEvent` is plain old data and the record is long enough.
        .then(|| unsafe { bytes.as_ptr().cast::<DhcpEvent>().read_unaligned() })
}

/// Attaches the no-op XDP program to `interface` in the current network namespace, through
/// netlink so that it stays attached (without a pin) for as long as the interface exists.
///
/// Needed on the VM side of a veth pair: the kernel delivers XDP_TX and XDP_REDIRECT frames
/// into a veth only when its peer runs an XDP program. A tap needs nothing.
pub async fn attach_veth_peer(interface: &str) -> Result<(), DataplaneError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use futures::TryStreamExt as _;
    use netlink_packet_route::link::{LinkAttribute, LinkXdp};

    let mut ebpf = aya::Ebpf::load(PASS_OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_PASS)
        .ok_or(DataplaneError::Missing(PROGRAM_PASS))?
        .try_into()?;
    program.load()?;
    let fd = program.fd()?.as_fd().as_raw_fd();

    let netlink = |e: rtnetlink::Error| DataplaneError::Netlink(e.to_string());
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| DataplaneError::Io {
        path: PathBuf::from("netlink"),
        source,
    })?;
    let conn = tokio::spawn(conn);
    let link = handle
        .link()
        .get()
        .match_name(interface.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(netlink)?
        .ok_or_else(|| DataplaneError::Netlink(format!("no interface {interface}")))?;
    let msg = rtnetlink::LinkUnspec::new_with_index(link.header.index)
        .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(0)]))
        .build();
    let result = handle.link().set(msg).execute().await.map_err(netlink);
    conn.abort();
    result
}
