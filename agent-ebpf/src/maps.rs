//! The maps the programs share with the agent. All are pinned by name under the agent's
//! `maps-v<LAYOUT_VERSION>` directory so they outlive the agent and are adopted by the next one.

use agent_common::{
    ArpEntry, ArpKey, Binding, Binding6, BindingKey, BootEntry, BootKey, DataplaneConfig,
    DeclineHold, Dhcp6Net, FdbEntry, FdbKey, ForwarderKey, MAX_ARP, MAX_BINDINGS, MAX_BOOT,
    MAX_FDB, MAX_NEIGH6, MAX_RATE_STATES, MAX_ROUTES, MAX_VNIS, MAX_VTEPS, Neigh6Entry, Neigh6Key,
    NextHop, Ra6, RateKey, RouteDst, RouteEntry, VniInfo, dhcp6::DUID_MAX,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Counter slots. Sized beyond `Stat::Count` so new counters do not change the pinned layout.
pub const STATS_SLOTS: u32 = 256;

/// DHCP bindings of the VMs on this host, keyed by (VM interface, MAC).
#[map]
pub static BINDINGS: HashMap<BindingKey, Binding> = HashMap::pinned(MAX_BINDINGS, 0);

/// IPv6 addresses of the VMs' NICs on this host (`ip6`), keyed as `BINDINGS`.
#[map]
pub static BINDINGS6: HashMap<BindingKey, Binding6> = HashMap::pinned(MAX_BINDINGS, 0);

/// IPv6 neighbour answers: every `ip6` of the networks with NICs here, and each network's
/// router link-local address.
#[map]
pub static NEIGH6: HashMap<Neigh6Key, Neigh6Entry> = HashMap::pinned(MAX_NEIGH6, BPF_F_NO_PREALLOC);

/// Router advertisements of the networks with IPv6 and NICs here, by VNI.
#[map]
pub static VNIS6: HashMap<u32, Ra6> = HashMap::pinned(MAX_VNIS, BPF_F_NO_PREALLOC);

/// What the DHCPv6 replies of the networks with IPv6 and NICs here carry, by VNI.
#[map]
pub static DHCP6: HashMap<u32, Dhcp6Net> = HashMap::pinned(MAX_VNIS, BPF_F_NO_PREALLOC);

/// Bytes of a DHCPv6 message examined (a power of two: indices are masked with it). Longer
/// messages are refused.
pub const DHCP6_WINDOW: usize = 1024;
/// A DHCPv6 reply's headers (Ethernet, IPv6, UDP, the message's type and transaction) and the
/// options the responder builds, rounded up to whole 64-bit words.
pub const DHCP6_HEAD: usize = 152;
/// The client identifier option (code, length, DUID), rounded up to whole words.
pub const DHCP6_CID_BUF: usize = (4 + DUID_MAX + 3) & !3;

/// Per-CPU state of the DHCPv6 responder: the request copied out of the packet and the
/// positions of the options acted on (offset in `buf`, and TLV length, 0 when absent), read
/// and written volatile like `OptionsScan`; then the reply's parts.
#[repr(C)]
pub struct Dhcp6Scan {
    pub off: u32,
    pub client: u32,
    pub client_len: u32,
    pub server: u32,
    pub server_len: u32,
    pub ia: u32,
    pub ia_len: u32,
    pub rapid: u32,
    /// What the request says, then the reply's plan (`dhcp6::F_*`, `dhcp6::P_*`), kept
    /// where the verifier does not track them.
    pub plan: u32,
    pub _pad: u32,
    /// The message; the slack after the window keeps every masked read inside.
    pub buf: [u8; DHCP6_WINDOW + 8],
    pub head: [u8; DHCP6_HEAD],
    pub cid: [u8; DHCP6_CID_BUF],
}

#[map]
pub static DHCP6_SCRATCH: PerCpuArray<Dhcp6Scan> = PerCpuArray::with_max_entries(1, 0);

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
    /// Option TLVs (not pads) seen so far.
    pub tlvs: u32,
    /// What the responder acts on, read from where the scan found it: kept here and read back,
    /// so that the verifier sees one state after the scan, not one per combination of
    /// options present.
    pub msg_type: u32,
    pub requested: u32,
    pub server_id: u32,
    pub flags: u32,
    /// Packet offset of the client identifier option (61), and its length with code and
    /// length bytes; 0 when the request has none.
    pub cid_off: u32,
    pub cid_tlv: u32,
    /// The client's architecture (option 93, its first type), or `NO_ARCH`.
    pub arch: u32,
    /// Offset in `buf` of the parameter request list's values (55), and their count (0: none).
    pub prl_off: u32,
    pub prl_len: u32,
    pub _pad: u32,
    /// Where the scan found each option, by code: its offset in `buf` plus one (0: not
    /// found; only the slots of the options read are cleared before a scan).
    pub slots: [u16; 256],
    pub buf: [u8; OPTIONS_WINDOW],
    /// The client identifier option copied for the reply, zero-padded to whole 32-bit words
    /// (what `bpf_csum_diff` sums; the zero after an odd length is the reply's pad).
    pub cid: [u8; CID_BUF],
}

/// The longest option TLV: code, length, 255 bytes of value.
pub const CID_TLV_MAX: usize = 257;
/// `CID_TLV_MAX` rounded up to whole words.
pub const CID_BUF: usize = 260;

#[map]
pub static OPTIONS_SCRATCH: PerCpuArray<OptionsScan> = PerCpuArray::with_max_entries(1, 0);

/// Network boot answers, by binding and variant: only for NICs with a boot file.
#[map]
pub static BOOT: HashMap<BootKey, BootEntry> = HashMap::pinned(MAX_BOOT, BPF_F_NO_PREALLOC);

/// Bindings held silent after their client declined the address, written by XDP. Pinned, so
/// that an agent restart does not end a hold; least recently used holds go first when full.
#[map]
pub static DECLINED: LruHashMap<BindingKey, DeclineHold> = LruHashMap::pinned(MAX_BINDINGS, 0);

/// Where each NIC of this host's networks is, by (VNI, MAC).
#[map]
pub static FDB: HashMap<FdbKey, FdbEntry> = HashMap::pinned(MAX_FDB, BPF_F_NO_PREALLOC);

/// ARP answers, by (VNI, address).
#[map]
pub static ARP: HashMap<ArpKey, ArpEntry> = HashMap::pinned(MAX_ARP, BPF_F_NO_PREALLOC);

/// Known VTEPs: VXLAN from anything else is dropped.
#[map]
pub static VTEPS: HashMap<u32, u32> = HashMap::pinned(MAX_VTEPS, 0);

/// Networks with NICs on this host, by VNI.
#[map]
pub static VNIS: HashMap<u32, VniInfo> = HashMap::pinned(MAX_VNIS, 0);

/// This host's VTEP and underlay interface.
/// Routing tables, one per network a frame comes from (`RouteDst`): the VPC's subnets and
/// gateways, the network's routes and `default_via`. Filled by the agent.
#[map]
pub static ROUTES: LpmTrie<RouteDst, RouteEntry> = LpmTrie::pinned(MAX_ROUTES, BPF_F_NO_PREALLOC);

/// The NICs with `forwarding: true` of the networks here, local and remote (by network and
/// MAC): they may send and receive any address, their MAC still enforced.
#[map]
pub static FORWARDING: HashMap<FdbKey, u32> = HashMap::pinned(MAX_FDB, BPF_F_NO_PREALLOC);

/// Which VTEPs host a forwarding NIC of the VPC of a network (`ForwarderKey`): routed frames
/// from there may carry sources outside the VPC.
#[map]
pub static FORWARDERS: HashMap<ForwarderKey, u32> = HashMap::pinned(MAX_VTEPS, BPF_F_NO_PREALLOC);

#[map]
pub static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

/// Underlay next hops by VTEP, learned from `bpf_fib_lookup`.
#[map]
pub static NEXTHOPS: LruHashMap<u32, NextHop> = LruHashMap::pinned(4096, 0);

/// Largest L4 segment whose checksum XDP recomputes; larger frames take the skb path.
pub const CSUM_WINDOW: usize = 2048;

/// Per-CPU copy of an L4 segment being checksummed (plus room for zero padding).
#[map]
pub static CSUM_SCRATCH: PerCpuArray<[u8; CSUM_WINDOW + 8]> = PerCpuArray::with_max_entries(1, 0);

/// Rate limiter states by (VM interface, kind): see `ratelimit`. Not pinned: a new load starts
/// with full buckets, so an agent restart grants each port one more burst, nothing more.
#[map]
pub static RATE: LruHashMap<RateKey, u64> = LruHashMap::with_max_entries(MAX_RATE_STATES, 0);
