//! Where the data plane lives on bpffs and whether what is pinned there fits this build: the
//! pin paths ([`Pins`]), the map layout version and the check of adopted maps against it, and
//! the bpffs itself (mounted when the host has none).

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use agent_common::{
    ArpEntry, ArpKey, Binding, BindingKey, DataplaneConfig, FdbEntry, FdbKey, VniInfo,
};
use aya::maps::MapInfo;
use tracing::info;

use super::{
    Hook, MAP_ARP, MAP_BINDINGS, MAP_CONFIG, MAP_FDB, MAP_STATS, MAP_VNIS, MAP_VTEPS,
    error::{BpffsError, DataplaneError, io_err},
};

/// The version of the map layout this build pins, in `maps-v<LAYOUT_VERSION>/`. The
/// `layout-next` feature builds the same programs under the next version: the second build of
/// the upgrade test, which proves that a layout change migrates without a gap.
pub(super) const LAYOUT_VERSION: u32 = if cfg!(feature = "layout-next") {
    agent_common::LAYOUT_VERSION + 1
} else {
    agent_common::LAYOUT_VERSION
};

/// Where the data plane is pinned.
#[derive(Clone, Debug)]
pub(super) struct Pins {
    pub(super) maps: PathBuf,
    pub(super) links: PathBuf,
}

impl Pins {
    pub(super) fn new(bpffs_dir: &Path) -> Self {
        Self {
            maps: bpffs_dir.join(format!("maps-v{LAYOUT_VERSION}")),
            links: bpffs_dir.join("links"),
        }
    }

    pub(super) fn link(&self, hook: Hook, ifindex: u32) -> PathBuf {
        self.links.join(format!("{}-{ifindex}", hook.prefix()))
    }

    /// Pinned links, by hook and ifindex.
    pub(super) fn pinned(&self) -> BTreeSet<(Hook, u32)> {
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

/// Magic number of bpffs in `statfs.f_type`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
        let fstype = c"bpf";
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(BpffsError::Mount {
                path: root.to_owned(),
                source: io::Error::last_os_error(),
            }
            .into());
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if statfs_type(dir) != Some(BPF_FS_MAGIC) {
        return Err(BpffsError::NotBpffs {
            path: dir.to_owned(),
        }
        .into());
    }
    Ok(())
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

/// Checks the maps pinned in `maps_dir` against this build's key and value sizes: a map adopted
/// with other sizes would be read and written wrongly.
pub(super) fn check_layout(maps_dir: &Path) -> Result<(), DataplaneError> {
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
