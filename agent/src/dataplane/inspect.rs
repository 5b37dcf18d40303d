//! What the CLI, the metrics and the tests read from the pins, with or without an agent
//! running: bindings, the VPC forwarding state, single FDB entries, the counters, and the
//! records of the event ring buffer.

use std::path::Path;

use agent_common::{
    ArpEntry, ArpKey, Binding, BindingKey, DataplaneConfig, DhcpEvent, FdbEntry, FdbKey, VniInfo,
    stats::STATS_COUNT,
};
use aya::{
    Pod,
    maps::{Array, HashMap, MapData, PerCpuArray},
};

use super::{
    MAP_ARP, MAP_BINDINGS, MAP_CONFIG, MAP_FDB, MAP_STATS, MAP_VNIS, MAP_VTEPS,
    error::DataplaneError,
    pins::{Pins, check_layout},
};

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

/// Reads the forwarding state the data plane holds, from the pinned maps, each sorted by key.
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
