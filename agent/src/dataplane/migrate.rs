//! Map layout migration, the last step of an upgrade or a downgrade: once this build's programs
//! run on every pinned link, the maps of the other layout are retired and their counters carried
//! over. Until then the other build's programs keep serving from them, so the change of layout
//! has no gap. (The first steps are [`Dataplane::open`], which pins this layout's maps beside
//! the other's, and the reconcile that fills them before any link is switched.)

use std::{fs, path::Path};

use agent_common::stats::STATS_COUNT;
use aya::maps::{MapData, MapInfo, PerCpuArray};
use tracing::{info, warn};

use super::{
    Dataplane, MAP_STATS, Report,
    error::{DataplaneError, ReconcileError},
};

impl Dataplane {
    /// Once every pinned link runs this build's programs, nothing reads the maps of another
    /// layout (a previous or later build's): their counters are added to this build's, and
    /// their pins removed, which frees them. Until then the other build's programs keep
    /// serving from them: an upgrade has no gap.
    pub(super) fn retire_other_layouts(&mut self, report: &mut Report) {
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
                Err(source) => report.errors.push(ReconcileError::Retire { path, source }),
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
}
