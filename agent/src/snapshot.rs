//! The last applied IPAM state, persisted in `state_dir` so a restarted agent (or a rebooted
//! host) serves it before it reaches IPAM.
//!
//! It holds every tenant's MACs, addresses and hostnames: the file is written 0600 in a 0700
//! directory owned by the agent's user (an existing directory's mode is fixed), and one that
//! another user owns or could have written is not read. Written atomically: a temporary file,
//! fsync, rename over the snapshot, fsync the directory. Read back as a document, entry by
//! entry, for the agent to validate like any other: a bad entry is rejected, never served.
//! Blocking; the agent calls it on the blocking pool.

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::{
    clock::unix_now,
    model::{Model, RawDocument, RawEntry},
};

const FILE: &str = "ipam-snapshot.json";
/// Version of the snapshot format.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a holdfast snapshot: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: snapshot format {found}, this build reads {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    /// Another user owns it, or could have written it: what it says cannot be trusted.
    #[error(
        "{path}: owned by uid {uid} with mode {mode:04o}; the snapshot must be this user's \
         (uid {me}) and writable by it alone"
    )]
    NotOwn {
        path: PathBuf,
        uid: u32,
        mode: u32,
        me: u32,
    },
}

#[derive(Serialize)]
struct Snapshot<'a> {
    format: u32,
    node: &'a str,
    saved_at: u64,
    model: &'a Model,
}

/// A snapshot as read back: its entries unparsed, so one bad entry cannot spoil the rest.
#[derive(Deserialize)]
struct Stored {
    format: u32,
    saved_at: u64,
    model: StoredModel,
}

#[derive(Deserialize)]
struct StoredModel {
    networks: BTreeMap<String, Box<RawValue>>,
    nodes: BTreeMap<String, Box<RawValue>>,
    nics: BTreeMap<String, Box<RawValue>>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// `path` is this user's and no one else may write it.
fn check_own(path: &Path, meta: &fs::Metadata) -> Result<(), StateError> {
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != euid() || mode & 0o022 != 0 {
        return Err(StateError::NotOwn {
            path: path.to_owned(),
            uid: meta.uid(),
            mode,
            me: euid(),
        });
    }
    Ok(())
}

/// Creates `dir` 0700, or makes an existing one 0700 when it is this user's.
fn private_dir(dir: &Path) -> Result<(), StateError> {
    let io_err = |source| StateError::Io {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    let meta = fs::metadata(dir).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != euid() {
        return Err(StateError::NotOwn {
            path: dir.to_owned(),
            uid: meta.uid(),
            mode,
            me: euid(),
        });
    }
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        info!(dir = %dir.display(), was = format!("{mode:04o}"), "state_dir made 0700: the snapshot holds tenants' addresses");
    }
    Ok(())
}

/// Persists `model` atomically, readable by this user alone.
pub fn save(state_dir: &Path, node: &str, model: &Model) -> Result<(), StateError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    private_dir(state_dir)?;
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let snapshot = Snapshot {
        format: FORMAT,
        node,
        saved_at: unix_now().as_secs(),
        model,
    };
    // A leftover of a crash may have another mode: created afresh, 0600 from the start.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // Streamed to the file: a snapshot of 100,000 NICs never sits whole in memory. In writes
    // of 256 KiB: 40 for a snapshot of 10 MiB, not 1,300.
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
    serde_json::to_writer(&mut w, &snapshot).map_err(|source| StateError::Parse {
        path: target.clone(),
        source,
    })?;
    let f = w.into_inner().map_err(|e| StateError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(state_dir))?;
    Ok(())
}

/// Reads the snapshot as a document to validate, and when it was saved (Unix seconds). A
/// snapshot that is not this user's, or that others could have written, is not read.
pub fn load(state_dir: &Path) -> Result<Option<(RawDocument, u64)>, StateError> {
    let path = path(state_dir);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let io_err = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    let dir_meta = fs::metadata(state_dir).map_err(|source| StateError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    check_own(state_dir, &dir_meta)?;
    let meta = file.metadata().map_err(io_err)?;
    check_own(&path, &meta)?;
    if meta.permissions().mode() & 0o077 != 0 {
        // Written by an older build: 0600 from now on.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
        warn!(path = %path.display(), "the snapshot was readable by others; made 0600");
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err)?;
    let s: Stored = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    if s.format != FORMAT {
        return Err(StateError::Format {
            path,
            found: s.format,
        });
    }
    let entries = |list: &str, map: BTreeMap<String, Box<RawValue>>| -> Vec<RawEntry> {
        let dir: Arc<str> = Arc::from(format!("{}:{list}/", path.display()));
        map.into_iter()
            .map(|(id, v)| RawEntry::at(dir.clone(), Arc::from(id), v.get().as_bytes()))
            .collect()
    };
    let doc = RawDocument {
        networks: entries("networks", s.model.networks),
        nodes: entries("nodes", s.model.nodes),
        nics: entries("nics", s.model.nics),
    };
    Ok(Some((doc, s.saved_at)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::chown;

    use super::*;
    use crate::{
        model::{Limits, Reason, parse_document, validate},
        ports::{Pattern, VmPorts},
        render::options::Budget,
    };

    struct Dir(PathBuf);

    impl Dir {
        fn new(role: &str) -> Self {
            let d = std::env::temp_dir().join(format!("holdfast-{role}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn model() -> Model {
        let doc = parse_document(
            br#"{"networks": [{"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                                "subnet6": "fd00:10:10::/64", "dns6": ["fd00:10:10::53"]}],
                 "nodes": [{"name": "hv-1", "vtep": "198.18.0.1"}],
                 "nics": [
                   {"mac": "02:00:00:00:00:01", "network": "blue", "ip": "10.10.0.11", "ip6": "fd00:10:10::11", "node": "hv-1", "interface": "tap1"},
                   {"mac": "02:00:00:00:00:02", "network": "blue", "ip": "10.10.0.12", "node": "hv-1", "interface": "tap2"}]}"#,
        )
        .unwrap();
        let v = validate(&doc, None, "hv-1", &Limits::default(), &Budget);
        assert!(v.rejections.is_empty());
        v.model
    }

    fn limits() -> Limits {
        Limits {
            ports: VmPorts::new(&[Pattern::parse("tap*").unwrap()], Some("ul0"), "holdfast0"),
            ..Limits::default()
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = Dir::new("state");
        assert!(load(&dir.0).unwrap().is_none());
        let m = model();
        save(&dir.0, "hv-1", &m).unwrap();
        let (doc, _) = load(&dir.0).unwrap().unwrap();
        let v = validate(&doc, None, "hv-1", &limits(), &Budget);
        assert!(v.rejections.is_empty(), "{:?}", v.rejections);
        // IPv6 fields included.
        assert!(v.model.networks["blue"].subnet6.is_some());
        assert_eq!(v.model.nics.values().filter(|n| n.ip6.is_some()).count(), 1);
        assert_eq!(v.model, m);
        fs::write(path(&dir.0), b"garbage").unwrap();
        assert!(matches!(load(&dir.0), Err(StateError::Parse { .. })));
    }

    #[test]
    fn only_this_user_reads_the_snapshot() {
        let dir = Dir::new("state-modes");
        // A directory made by someone else's tooling, open to all: closed at the first save.
        fs::create_dir_all(&dir.0).unwrap();
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
        save(&dir.0, "hv-1", &model()).unwrap();
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&path(&dir.0)), 0o600);
        // A snapshot an older build left readable by all: read, and made 0600.
        fs::set_permissions(path(&dir.0), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&dir.0).unwrap().is_some());
        assert_eq!(mode(&path(&dir.0)), 0o600);
        // One that others could have written, or that another user owns, is not read.
        fs::set_permissions(path(&dir.0), fs::Permissions::from_mode(0o620)).unwrap();
        let e = load(&dir.0).err().unwrap();
        assert!(matches!(e, StateError::NotOwn { .. }), "{e}");
        assert!(e.to_string().contains("mode 0620"), "{e}");
        fs::set_permissions(path(&dir.0), fs::Permissions::from_mode(0o600)).unwrap();
        chown(path(&dir.0), Some(65534), None).unwrap();
        let e = load(&dir.0).err().unwrap();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        // Nor is a directory of another user written to.
        chown(&dir.0, Some(65534), None).unwrap();
        assert!(matches!(
            save(&dir.0, "hv-1", &model()),
            Err(StateError::NotOwn { .. })
        ));
    }

    /// A snapshot changed behind the agent's back is judged entry by entry: the bad entries are
    /// rejected, the good ones serve.
    #[test]
    fn a_tampered_snapshot_serves_only_its_good_entries() {
        let dir = Dir::new("state-bad");
        save(&dir.0, "hv-1", &model()).unwrap();
        let text = fs::read_to_string(path(&dir.0)).unwrap();
        // The second NIC now names the underlay; a third is not even a NIC.
        let bad = text
            .replace(r#""interface":"tap2""#, r#""interface":"ul0""#)
            .replace(
                r#""nics":{"#,
                r#""nics":{"02:00:00:00:00:03":{"mac":"zz","pad":[1,2,3]},"#,
            );
        assert_ne!(bad, text);
        fs::write(path(&dir.0), bad).unwrap();
        let (doc, _) = load(&dir.0).unwrap().unwrap();
        let v = validate(&doc, None, "hv-1", &limits(), &Budget);
        let reasons: Vec<_> = v.rejections.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [Reason::InterfaceNotVmPort, Reason::InvalidMac],
            "{:?}",
            v.rejections
        );
        assert!(
            v.rejections[0]
                .entry
                .ends_with("ipam-snapshot.json:nics/02:00:00:00:00:02"),
            "{}",
            v.rejections[0]
        );
        assert_eq!(v.model.nics.len(), 1);
        assert!(
            v.model
                .nics
                .keys()
                .all(|m| m.to_string() == "02:00:00:00:00:01")
        );
    }
}
