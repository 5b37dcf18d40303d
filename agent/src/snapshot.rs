//! The last applied IPAM state, persisted in `state_dir` so a restarted agent (or a rebooted
//! host) serves it before it reaches IPAM.
//!
//! Written atomically: a temporary file, fsync, rename over the snapshot, fsync the directory.
//! Blocking; the agent calls it on the blocking pool.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{clock::unix_now, model::Model};

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
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    node: String,
    saved_at: u64,
    model: Model,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Persists `model` atomically.
pub fn save(state_dir: &Path, node: &str, model: &Model) -> Result<(), StateError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let snapshot = Snapshot {
        format: FORMAT,
        node: node.to_owned(),
        saved_at: unix_now().as_secs(),
        model: model.clone(),
    };
    // Streamed to the file: a snapshot of 100,000 NICs never sits whole in memory.
    let mut w = std::io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
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

/// Reads the snapshot and when it was saved (Unix seconds).
pub fn load(state_dir: &Path) -> Result<Option<(Model, u64)>, StateError> {
    let path = path(state_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let s: Snapshot = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    if s.format != FORMAT {
        return Err(StateError::Format {
            path,
            found: s.format,
        });
    }
    Ok(Some((s.model, s.saved_at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = std::env::temp_dir().join(format!("holdfast-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_none());
        let mut m = Model::default();
        m.nodes.insert(
            "hv-1".into(),
            crate::model::Node {
                name: "hv-1".into(),
                vtep: "198.18.0.1".parse().unwrap(),
            },
        );
        save(&dir, "hv-1", &m).unwrap();
        assert_eq!(load(&dir).unwrap().map(|(m, _)| m), Some(m));
        fs::write(path(&dir), b"garbage").unwrap();
        assert!(matches!(load(&dir), Err(StateError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
