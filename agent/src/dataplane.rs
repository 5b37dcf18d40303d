//! The data plane: the XDP programs, their pinned maps and links.
//!
//! Everything lives under `bpffs_dir` so it outlives the agent: maps in `maps-v<layout>/`, one
//! link per VM interface in `links/`. Opening adopts what is pinned (the maps keep their
//! entries, the links keep their interfaces served); attaching replaces the program of a pinned
//! link atomically. Nothing is flushed: entries and links are removed only by [`Dataplane::reconcile`]
//! when asked to prune after a complete, validated load.
//!
//! All calls here are blocking syscalls; the agent runs them on a dedicated thread.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use agent_common::{Binding, BindingKey, DhcpEvent, stats::STATS_COUNT};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use tracing::{debug, info, warn};

/// The eBPF object, built from `agent-ebpf` by this crate's build script on every build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast"));

/// The no-op program for the VM side of a veth (see `attach_veth_peer`).
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast-pass"));

pub const PROGRAM_VM: &str = "holdfast_vm";
pub const PROGRAM_PASS: &str = "holdfast_pass";
pub const MAP_BINDINGS: &str = "BINDINGS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_EVENTS: &str = "EVENTS";

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
    #[error("program {PROGRAM_VM}: {0}")]
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
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the data plane is pinned.
#[derive(Clone, Debug)]
pub struct Pins {
    pub maps: PathBuf,
    pub links: PathBuf,
}

impl Pins {
    pub fn new(bpffs_dir: &Path) -> Self {
        Self {
            maps: bpffs_dir.join(format!("maps-v{}", agent_common::LAYOUT_VERSION)),
            links: bpffs_dir.join("links"),
        }
    }

    fn link(&self, ifindex: u32) -> PathBuf {
        self.links.join(format!("vm-{ifindex}"))
    }
}

fn statfs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-struct.
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

/// The map definitions this build pins, to check adopted maps against.
fn expected_layout(name: &str) -> Option<(u32, u32)> {
    match name {
        MAP_BINDINGS => Some((size_of::<BindingKey>() as u32, size_of::<Binding>() as u32)),
        MAP_STATS => Some((4, 8)),
        _ => None,
    }
}

fn check_layout(maps_dir: &Path) -> Result<(), DataplaneError> {
    for name in [MAP_BINDINGS, MAP_STATS] {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)?;
        let Some((key, value)) = expected_layout(name) else {
            continue;
        };
        if info.key_size() != key || info.value_size() != value {
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
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// VM interfaces to carry the program, by ifindex (name for logs).
    pub interfaces: BTreeMap<u32, String>,
    pub bindings: BTreeMap<BindingKey, Binding>,
    /// Remove links and entries that are not desired. Only after a complete, validated load.
    pub prune: bool,
}

/// What a reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub attached: Vec<String>,
    pub detached: Vec<u32>,
    pub upserted: usize,
    pub deleted: usize,
    pub bindings: usize,
    pub interfaces: usize,
    pub errors: Vec<String>,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pins: Pins,
    bindings: HashMap<MapData, BindingKey, Binding>,
    /// What the BINDINGS map holds, read once at open and kept in step with every write.
    held: BTreeMap<BindingKey, Binding>,
    /// Interfaces whose pinned link carries this build's program.
    current: BTreeSet<u32>,
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
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_VM)
            .ok_or(DataplaneError::Missing(PROGRAM_VM))?
            .try_into()?;
        program.load()?;

        let map = ebpf
            .take_map(MAP_BINDINGS)
            .ok_or(DataplaneError::Missing(MAP_BINDINGS))?;
        let bindings: HashMap<MapData, BindingKey, Binding> = HashMap::try_from(map)?;
        let held = bindings
            .iter()
            .filter_map(Result::ok)
            .collect::<BTreeMap<_, _>>();
        info!(
            maps = %pins.maps.display(),
            adopted_bindings = held.len(),
            pinned_links = pinned_links(&pins).len(),
            "data plane loaded"
        );
        Ok(Self {
            ebpf,
            pins,
            bindings,
            held,
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

    /// Converges links and bindings to `desired`.
    pub fn reconcile(&mut self, desired: &Desired) -> Report {
        let mut report = Report::default();

        for (&ifindex, name) in &desired.interfaces {
            if self.current.contains(&ifindex) {
                continue;
            }
            match self.attach(ifindex) {
                Ok(how) => {
                    info!(interface = %name, ifindex, how, "program attached");
                    self.current.insert(ifindex);
                    report.attached.push(name.clone());
                }
                Err(e) => {
                    warn!(interface = %name, ifindex, error = %e, "cannot attach");
                    report
                        .errors
                        .push(format!("attach {name} ({ifindex}): {e}"));
                }
            }
        }

        // Bindings: write what differs, then (only when pruning) delete what is not desired.
        for (key, value) in &desired.bindings {
            if self.held.get(key) == Some(value) {
                continue;
            }
            match self.bindings.insert(key, value, 0) {
                Ok(()) => {
                    self.held.insert(*key, *value);
                    report.upserted += 1;
                }
                Err(e) => report.errors.push(format!("binding {key:?}: {e}")),
            }
        }
        if desired.prune {
            let stale: Vec<BindingKey> = self
                .held
                .keys()
                .filter(|k| !desired.bindings.contains_key(k))
                .copied()
                .collect();
            for key in stale {
                match self.bindings.remove(&key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {
                        self.held.remove(&key);
                        report.deleted += 1;
                    }
                    Err(e) => report.errors.push(format!("delete {key:?}: {e}")),
                }
            }
            for ifindex in pinned_links(&self.pins) {
                if desired.interfaces.contains_key(&ifindex) {
                    continue;
                }
                let path = self.pins.link(ifindex);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        info!(ifindex, "program detached");
                        self.current.remove(&ifindex);
                        report.detached.push(ifindex);
                    }
                    Err(e) => report.errors.push(format!("unpin {}: {e}", path.display())),
                }
            }
        }
        report.bindings = self.held.len();
        report.interfaces = pinned_links(&self.pins).len();
        report
    }

    /// Puts this build's program on `ifindex`: atomically replaces the program of a pinned link,
    /// or creates and pins a new link.
    fn attach(&mut self, ifindex: u32) -> Result<&'static str, DataplaneError> {
        let path = self.pins.link(ifindex);
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_VM)
            .ok_or(DataplaneError::Missing(PROGRAM_VM))?
            .try_into()?;
        if path.exists() {
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|source| DataplaneError::Link {
                    path: path.clone(),
                    source,
                })
                .and_then(|pinned| {
                    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| {
                        DataplaneError::Link {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    let id = program.attach_to_link(link)?;
                    // The pin keeps the link; this process holds no reference of its own.
                    drop(program.take_link(id)?);
                    Ok(())
                });
            match replaced {
                Ok(()) => return Ok("replaced the program of the pinned link"),
                Err(e) => {
                    // The interface this link was for is gone (ENOLINK): start afresh.
                    debug!(path = %path.display(), error = %e, "stale pinned link");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        let id = program.attach_to_if_index(ifindex, XdpMode::Default)?;
        let link = program.take_link(id)?;
        let fd_link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: path.clone(),
            source,
        })?;
        fd_link
            .pin(&path)
            .map_err(|source| DataplaneError::Pin { path, source })?;
        Ok("attached and pinned a new link")
    }

    pub fn held(&self) -> &BTreeMap<BindingKey, Binding> {
        &self.held
    }

    /// The VM program, for `BPF_PROG_TEST_RUN` (tests and benchmarks).
    pub fn vm_program(&self) -> Result<&Xdp, DataplaneError> {
        Ok(self
            .ebpf
            .program(PROGRAM_VM)
            .ok_or(DataplaneError::Missing(PROGRAM_VM))?
            .try_into()?)
    }
}

/// Interfaces with a pinned link, by ifindex.
pub fn pinned_links(pins: &Pins) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(&pins.links) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vm-"))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// Reads the bindings the data plane holds, from the pinned map (works with the agent down).
pub fn read_bindings(bpffs_dir: &Path) -> Result<Vec<(BindingKey, Binding)>, DataplaneError> {
    let path = Pins::new(bpffs_dir).maps.join(MAP_BINDINGS);
    check_layout(path.parent().unwrap_or(&path))?;
    let map = MapData::from_pin(&path)?;
    let map: HashMap<MapData, BindingKey, Binding> =
        HashMap::try_from(aya::maps::Map::HashMap(map))?;
    Ok(map.iter().filter_map(Result::ok).collect())
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

    let netlink = |e: rtnetlink::Error| DataplaneError::Bpffs(format!("netlink: {e}"));
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
        .ok_or_else(|| DataplaneError::Bpffs(format!("no interface {interface}")))?;
    let msg = rtnetlink::LinkUnspec::new_with_index(link.header.index)
        .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(0)]))
        .build();
    let result = handle.link().set(msg).execute().await.map_err(netlink);
    conn.abort();
    result
}
