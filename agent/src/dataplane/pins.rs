//! Where the data plane lives on bpffs and whether what is pinned there fits this build: the
//! pin paths ([`Pins`]), the map layout version and the check of adopted maps against it, and
//! the bpffs itself (mounted when the host has none, mode 0700).
//!
//! Whoever can write to `bpffs_dir` or its `links/` can unlink the link pins, which detaches
//! the programs from the VM ports, or plant names before the agent pins there. So the agent
//! creates what is missing 0700 and refuses ([`BpffsError::Unsafe`]) a directory, or a parent
//! of it, that another user owns or may write to.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use agent_common::{
    ArpEntry, ArpKey, Binding, Binding6, BindingKey, BootEntry, BootKey, DataplaneConfig,
    DeclineHold, Dhcp6Net, FdbEntry, FdbKey, ForwarderKey, Neigh6Entry, Neigh6Key, Ra6, RouteDst,
    RouteEntry, VniInfo,
};
use aya::maps::MapInfo;
use tracing::info;

use super::{
    Hook, MAP_ARP, MAP_BINDINGS, MAP_BINDINGS6, MAP_BOOT, MAP_CONFIG, MAP_DECLINED, MAP_DHCP6,
    MAP_FDB, MAP_FORWARDERS, MAP_FORWARDING, MAP_NEIGH6, MAP_ROUTES, MAP_STATS, MAP_VNIS,
    MAP_VNIS6, MAP_VTEPS,
    error::{BpffsError, DataplaneError, DirProblem},
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

    /// Creates the pin directories that are missing (0700) and checks that no other user can
    /// write to them, or to a directory above them. What exists is checked before anything is
    /// created in it: a refused directory is left as it was found.
    pub(super) fn secure(&self) -> Result<(), BpffsError> {
        let root = self.maps.parent().unwrap_or(&self.maps);
        if fs::symlink_metadata(root).is_err() {
            create_private(root)?;
        }
        check_parents(root)?;
        let dirs = [root, &self.maps, &self.links];
        for dir in dirs {
            if fs::symlink_metadata(dir).is_ok() {
                check_private(dir)?;
            }
        }
        for dir in dirs {
            create_private(dir)?;
            check_private(dir)?;
        }
        Ok(())
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
/// none there (containers and `ip netns exec` often start without it), and creates it (0700)
/// when missing.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && statfs_type(root) != Some(BPF_FS_MAGIC) {
        info!(path = %root.display(), "no bpffs mounted; mounting one (mode 0700)");
        let fstype = c"bpf";
        // Without `mode=`, the root of a bpffs is world-writable (1777).
        let options = c"mode=0700";
        // SAFETY: valid NUL-terminated strings; bpffs reads its options as a C string.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
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
    create_private(dir)?;
    if statfs_type(dir) != Some(BPF_FS_MAGIC) {
        return Err(BpffsError::NotBpffs {
            path: dir.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// Creates `dir` and its missing parents, each 0700.
fn create_private(dir: &Path) -> Result<(), BpffsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BpffsError::Create {
            path: dir.to_owned(),
            source,
        })
}

/// Whether `uid` may own a directory the agent pins in: root, or the user the agent runs as.
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// What is wrong with `dir` as a directory the agent pins in, if anything: it must be a real
/// directory (not a symbolic link), owned by root (or the agent's user), and writable by its
/// owner only.
pub fn private_dir_problem(dir: &Path) -> Result<Option<DirProblem>, io::Error> {
    let meta = fs::symlink_metadata(dir)?;
    Ok(if meta.file_type().is_symlink() {
        Some(DirProblem::Symlink)
    } else if !meta.is_dir() {
        Some(DirProblem::NotDirectory)
    } else if !trusted_owner(meta.uid()) {
        Some(DirProblem::Owner { uid: meta.uid() })
    } else if meta.mode() & 0o022 != 0 {
        Some(DirProblem::Writable {
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    })
}

/// Refuses `dir` when [`private_dir_problem`] finds something wrong with it.
pub(super) fn check_private(dir: &Path) -> Result<(), BpffsError> {
    match private_dir_problem(dir) {
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(BpffsError::Unsafe {
            path: dir.to_owned(),
            problem,
        }),
        Err(source) => Err(BpffsError::Inspect {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Refuses a parent of `dir` (symbolic links resolved) that another user owns, or that others
/// may write to without the sticky bit: they could rename `dir` away and put their own in its
/// place. bpffs mounted without `mode=` is 1777: sticky, so it passes.
fn check_parents(dir: &Path) -> Result<(), BpffsError> {
    let real = fs::canonicalize(dir).map_err(|source| BpffsError::Inspect {
        path: dir.to_owned(),
        source,
    })?;
    for parent in real.ancestors().skip(1) {
        let meta = fs::metadata(parent).map_err(|source| BpffsError::Inspect {
            path: parent.to_owned(),
            source,
        })?;
        let problem = if !trusted_owner(meta.uid()) {
            Some(DirProblem::Owner { uid: meta.uid() })
        } else if meta.mode() & 0o022 != 0 && meta.mode() & libc::S_ISVTX == 0 {
            Some(DirProblem::Writable {
                mode: meta.mode() & 0o7777,
            })
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(BpffsError::UnsafeParent {
                path: dir.to_owned(),
                parent: parent.to_owned(),
                problem,
            });
        }
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
    (MAP_BOOT, size_of::<BootKey>(), size_of::<BootEntry>()),
    (
        MAP_DECLINED,
        size_of::<BindingKey>(),
        size_of::<DeclineHold>(),
    ),
    (
        MAP_BINDINGS6,
        size_of::<BindingKey>(),
        size_of::<Binding6>(),
    ),
    (MAP_NEIGH6, size_of::<Neigh6Key>(), size_of::<Neigh6Entry>()),
    (MAP_VNIS6, 4, size_of::<Ra6>()),
    (MAP_DHCP6, 4, size_of::<Dhcp6Net>()),
    // The trie's key is its prefix length (a u32) and the data.
    (
        MAP_ROUTES,
        4 + size_of::<RouteDst>(),
        size_of::<RouteEntry>(),
    ),
    (MAP_FORWARDING, size_of::<FdbKey>(), 4),
    (MAP_FORWARDERS, size_of::<ForwarderKey>(), 4),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    /// A directory under the temp dir (root's, 1777, sticky), removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(role: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("holdfast-pins-{}-{role}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            create_private(&p).expect("scratch dir");
            Self(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Gives `path` to `nobody`; false when this process may not (not root).
    fn give_away(path: &Path) -> bool {
        let c = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: chown(2) on a NUL-terminated path.
        unsafe { libc::chown(c.as_ptr(), 65534, 65534) == 0 }
    }

    #[test]
    fn a_fresh_directory_is_private() {
        let s = Scratch::new("fresh");
        let dir = s.0.join("bpffs/holdfast");
        let pins = Pins::new(&dir);
        pins.secure().expect("a fresh directory passes");
        for d in [&dir, &pins.maps, &pins.links] {
            let mode = fs::metadata(d).expect("created").mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // And again: what exists and is right passes as it is.
        pins.secure().expect("an existing private directory passes");
    }

    #[test]
    fn a_directory_others_may_write_to_is_refused_with_its_path_and_mode() {
        let s = Scratch::new("writable");
        let dir = s.0.join("holdfast");
        let pins = Pins::new(&dir);
        pins.secure().expect("fresh");
        for (path, mode) in [(&dir, 0o777), (&pins.links, 0o770), (&pins.maps, 0o1777)] {
            chmod(path, mode);
            let e = pins.secure().expect_err("refused");
            assert!(
                matches!(&e, BpffsError::Unsafe { path: p, problem: DirProblem::Writable { mode: m } }
                    if p == path && *m == mode),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string())
                    && text.contains(&format!("mode {mode:04o}"))
                    && text.contains("detach"),
                "{text}"
            );
            chmod(path, 0o700);
        }
        // 0755 (what an agent created under umask 022 before) is not writable by others.
        chmod(&pins.links, 0o755);
        pins.secure().expect("0755 passes");
    }

    #[test]
    fn a_directory_another_user_owns_is_refused() {
        let s = Scratch::new("owner");
        let dir = s.0.join("holdfast");
        let pins = Pins::new(&dir);
        pins.secure().expect("fresh");
        if !give_away(&pins.links) {
            eprintln!("not root: cannot give a directory away; skipped");
            return;
        }
        let e = pins.secure().expect_err("refused");
        assert!(
            matches!(&e, BpffsError::Unsafe { path, problem: DirProblem::Owner { uid: 65534 } }
                if *path == pins.links),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("owned by uid 65534, not root"),
            "{e}"
        );
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let s = Scratch::new("symlink");
        let elsewhere = s.0.join("elsewhere");
        create_private(&elsewhere).expect("dir");
        let dir = s.0.join("holdfast");
        symlink(&elsewhere, &dir).expect("symlink");
        let e = Pins::new(&dir).secure().expect_err("refused");
        assert!(
            matches!(
                &e,
                BpffsError::Unsafe {
                    problem: DirProblem::Symlink,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_parent_others_may_write_to_is_refused_unless_sticky() {
        let s = Scratch::new("parent");
        let parent = s.0.join("shared");
        let dir = parent.join("holdfast");
        let pins = Pins::new(&dir);
        pins.secure().expect("fresh");
        chmod(&parent, 0o777);
        let e = pins.secure().expect_err("refused");
        assert!(
            matches!(&e, BpffsError::UnsafeParent { parent: p, problem: DirProblem::Writable { mode: 0o777 }, .. }
                if *p == parent),
            "{e:?}"
        );
        assert!(e.to_string().contains(&parent.display().to_string()), "{e}");
        // The sticky bit keeps others from renaming what they do not own (bpffs without
        // `mode=` is 1777).
        chmod(&parent, 0o1777);
        pins.secure().expect("a sticky parent passes");
    }
}
