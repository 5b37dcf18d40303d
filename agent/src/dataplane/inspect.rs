//! What the CLI, the metrics and the tests read from the pins, with or without an agent
//! running: bindings, the VPC forwarding state, single FDB entries, the counters, and the
//! records of the event ring buffer.

use std::path::Path;

use agent_common::{
    ArpEntry, ArpKey, Binding, Binding6, BindingKey, DataplaneConfig, DhcpEvent, FdbEntry, FdbKey,
    ForwarderKey, Neigh6Entry, Neigh6Key, Ra6, RouteEntry, VniInfo, stats::STATS_COUNT,
};
use aya::{
    Pod,
    maps::{Array, HashMap, MapData, PerCpuArray},
};

use super::{
    MAP_ARP, MAP_BINDINGS, MAP_BINDINGS6, MAP_CONFIG, MAP_FDB, MAP_FORWARDERS, MAP_FORWARDING,
    MAP_NEIGH6, MAP_ROUTES, MAP_STATS, MAP_VNIS, MAP_VNIS6, MAP_VTEPS, RouteKey,
    error::DataplaneError,
    maps::{Routes, Store as _},
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

/// The IPv6 state the data plane holds: addresses, neighbour answers, router advertisements.
#[derive(Debug, Default)]
pub struct Ipv6State {
    pub bindings6: Vec<(BindingKey, Binding6)>,
    pub neigh6: Vec<(Neigh6Key, Neigh6Entry)>,
    pub ra6: Vec<(u32, Ra6)>,
}

/// Reads the IPv6 state the data plane holds, from the pinned maps, each sorted by key.
pub fn read_ipv6(bpffs_dir: &Path) -> Result<Ipv6State, DataplaneError> {
    let bindings6 = open_pinned::<BindingKey, Binding6>(bpffs_dir, MAP_BINDINGS6)?;
    let neigh6 = open_pinned::<Neigh6Key, Neigh6Entry>(bpffs_dir, MAP_NEIGH6)?;
    let ra6 = open_pinned::<u32, Ra6>(bpffs_dir, MAP_VNIS6)?;
    let mut s = Ipv6State {
        bindings6: bindings6.iter().filter_map(Result::ok).collect(),
        neigh6: neigh6.iter().filter_map(Result::ok).collect(),
        ra6: ra6.iter().filter_map(Result::ok).collect(),
    };
    s.bindings6.sort_by_key(|(k, _)| *k);
    s.neigh6.sort_by_key(|(k, _)| *k);
    s.ra6.sort_by_key(|(k, _)| *k);
    Ok(s)
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

/// The routing state the data plane holds: each network's table, the forwarding NICs, the
/// VTEPs hosting them.
#[derive(Debug, Default)]
pub struct RoutingState {
    pub routes: Vec<(RouteKey, RouteEntry)>,
    pub forwarding: Vec<FdbKey>,
    pub forwarders: Vec<ForwarderKey>,
}

/// Reads the routing state the data plane holds, from the pinned maps, each sorted by key.
pub fn read_routing(bpffs_dir: &Path) -> Result<RoutingState, DataplaneError> {
    let maps = Pins::new(bpffs_dir).maps;
    check_layout(&maps)?;
    let trie = MapData::from_pin(maps.join(MAP_ROUTES))?;
    let routes = Routes::take(aya::maps::Map::LpmTrie(trie), MAP_ROUTES)?;
    let mut s = RoutingState {
        routes: routes.entries(),
        forwarding: open_pinned::<FdbKey, u32>(bpffs_dir, MAP_FORWARDING)?
            .keys()
            .filter_map(Result::ok)
            .collect(),
        forwarders: open_pinned::<ForwarderKey, u32>(bpffs_dir, MAP_FORWARDERS)?
            .keys()
            .filter_map(Result::ok)
            .collect(),
    };
    s.routes.sort_by_key(|(k, _)| *k);
    s.forwarding.sort_unstable();
    s.forwarders.sort_unstable();
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
