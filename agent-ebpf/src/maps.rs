//! The maps the programs share with the agent. All are pinned by name under the agent's
//! `maps-v<LAYOUT_VERSION>` directory so they outlive the agent and are adopted by the next one.

use agent_common::{Binding, BindingKey, MAX_BINDINGS};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};

/// Counter slots. Sized beyond `Stat::Count` so new counters do not change the pinned layout.
pub const STATS_SLOTS: u32 = 256;

/// DHCP bindings of the VMs on this host, keyed by (VM interface, MAC).
#[map]
pub static BINDINGS: HashMap<BindingKey, Binding> = HashMap::pinned(MAX_BINDINGS, 0);

/// Per-CPU outcome counters, indexed by `agent_common::Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STATS_SLOTS, 0);

/// RELEASE and DECLINE events for the agent to log.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(64 * 1024, 0);

/// Bytes of a request's options field examined (a power of two: indices are masked with it).
pub const OPTIONS_WINDOW: usize = 1024;

/// Per-CPU state of the option scan. Kept in map memory, read and written volatile: the
/// verifier does not track map contents, so every iteration of the bounded loop reaches the
/// same state and verification stays linear in the iteration count.
#[repr(C)]
pub struct OptionsScan {
    pub off: u32,
    pub msg_type: u32,
    pub requested: u32,
    pub server_id: u32,
    pub flags: u32,
    pub _pad: u32,
    pub buf: [u8; OPTIONS_WINDOW],
}

#[map]
pub static OPTIONS_SCRATCH: PerCpuArray<OptionsScan> = PerCpuArray::with_max_entries(1, 0);
