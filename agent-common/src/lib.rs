//! The vocabulary the XDP programs and the agent share.
//!
//! Every type here crosses the kernel boundary: `#[repr(C)]`, explicit fields for what would
//! otherwise be implicit padding, and `aya::Pod` behind the `user` feature. IPv4 addresses are
//! `u32` values holding the address bytes in network order, like the kernel's `__be32`
//! (`u32::from_ne_bytes(addr.octets())`).
#![no_std]

pub mod dhcp;
pub mod dhcp6;
pub mod stats;

pub use stats::Stat;

/// An IPv4 address as the programs hold it: its bytes in network order, read as a native `u32`
/// (what a packet's `__be32` field compares to).
pub const fn be32(ip: core::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address a [`be32`] value holds.
pub const fn ipv4(be32: u32) -> core::net::Ipv4Addr {
    let [a, b, c, d] = be32.to_ne_bytes();
    core::net::Ipv4Addr::new(a, b, c, d)
}

/// Version of the pinned map layout. Bump it when a map's key or value changes shape; the agent
/// pins each layout in its own directory (`maps-v<N>`) so a new build never reads an old layout.
pub const LAYOUT_VERSION: u32 = 4;

/// Upper bound on DHCP bindings (VM NICs) one hypervisor serves.
pub const MAX_BINDINGS: u32 = 16_384;

/// Upper bound on forwarding entries: every NIC (local or remote) of the networks this host has
/// NICs in. Allocated on demand (`BPF_F_NO_PREALLOC`).
pub const MAX_FDB: u32 = 262_144;

/// Upper bound on ARP answers: every address of the networks this host has NICs in, gateways
/// included.
pub const MAX_ARP: u32 = 262_144;

/// Upper bound on known VTEPs (hypervisors) and on networks with NICs here.
pub const MAX_VTEPS: u32 = 65_536;
pub const MAX_VNIS: u32 = 16_384;

/// The IANA VXLAN port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN adds to an inner Ethernet frame: outer Ethernet, IPv4, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 14 + 20 + 8 + 8;

/// Size of the rendered DHCP options blob carried in each binding.
///
/// The reply is `Ethernet (14) + IPv4 (20) + UDP (8) + BOOTP (236) + cookie (4) + fixed options
/// (12) + blob`. RFC 2131 §2 lets a client refuse IP datagrams over 576 bytes unless it announced a
/// larger maximum (option 57), so the blob is sized to keep every reply within 576.
pub const OPTS_MAX: usize = 296;

// Every reply fits in a 576-byte IP datagram (IPv4 + UDP + BOOTP + cookie + fixed options).
const _: () = assert!(20 + 8 + 236 + 4 + dhcp::FIXED_OPTS_LEN + OPTS_MAX <= 576);

/// Key of a DHCP binding: the VM interface the request came in on and the NIC's MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl BindingKey {
    pub const fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        Self {
            ifindex,
            mac,
            _pad: [0; 2],
        }
    }
}

/// A VM NIC as the data plane serves it: its address, network and pre-rendered DHCP options.
///
/// The agent renders `opts` once per binding; XDP copies it after the fixed options (53, 54 and
/// the rapid-commit slot), so per-packet work is a copy and a few patched fields. `opts` starts
/// with the lease-time options (51, 58, 59) so an INFORM reply can blank exactly those bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The NIC's address (yiaddr).
    pub ip: u32,
    /// The network's DHCP server address (its `dhcp_server`, else its gateway): the server
    /// identifier (option 54) and IPv4 source of replies. A request addressed to another
    /// server address of the network (one the ARP map resolves to the router MAC: a former
    /// identifier, the gateway) is answered from that address instead.
    pub server_id: u32,
    /// The network's VXLAN network identifier.
    pub vni: u32,
    /// The network's IP MTU (option 26, or 1500 when not set): larger frames take the skb path.
    pub mtu: u32,
    /// Bytes of `opts` in use, END option included; even, at most [`OPTS_MAX`].
    pub opts_len: u16,
    /// Leading bytes of `opts` holding options 51, 58 and 59.
    pub lease_opts_len: u16,
    /// One's-complement sum (16-bit words in memory order, unfolded) of `opts[..opts_len]`.
    pub opts_csum: u32,
    /// The same sum with the lease-time options blanked to pads, for INFORM replies.
    pub inform_opts_csum: u32,
    pub opts: [u8; OPTS_MAX],
}

/// Which boot file a network boot client gets, by what its request says it is: iPXE (user
/// class 77 "iPXE", or its options 175), else its architecture (option 93, RFC 4578). A client
/// that says neither boots nothing.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BootVariant {
    /// Option 93 type 0: x86 BIOS (a PXE ROM).
    Bios = 0,
    /// Types 7 and 9: x86-64 UEFI.
    UefiX64 = 1,
    /// Type 11: ARM64 UEFI.
    UefiArm64 = 2,
    /// iPXE itself, whatever its architecture: given a script, so it does not chainload
    /// itself again (the loop a PXE ROM handed an iPXE binary falls into).
    Ipxe = 3,
}

impl BootVariant {
    pub const ALL: [BootVariant; 4] = [
        BootVariant::Bios,
        BootVariant::UefiX64,
        BootVariant::UefiArm64,
        BootVariant::Ipxe,
    ];
}

/// Key of a network boot answer: a binding's key, with the variant in its padding byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A [`BootVariant`].
    pub variant: u8,
    pub _pad: u8,
}

impl BootKey {
    pub const fn new(ifindex: u32, mac: [u8; 6], variant: BootVariant) -> Self {
        Self {
            ifindex,
            mac,
            variant: variant as u8,
            _pad: 0,
        }
    }
}

/// Upper bound on boot answers: one per variant for each binding.
pub const MAX_BOOT: u32 = MAX_BINDINGS * BootVariant::ALL.len() as u32;

/// Bytes of [`BootEntry::opts`]: option 66 (a name of up to 63 bytes) and option 67 (a file
/// of up to 127), with their code and length bytes, padded to an even length.
pub const BOOT_OPTS_MAX: usize = 196;

/// What a network boot client of one variant gets, besides its binding's options: rendered
/// by the agent, copied by XDP. `sname` and `file` always carry the server name and the boot
/// file (RFC 2131 §2); options 66 and 67 carry them too for a client that asks for either in
/// its parameter request list (RFC 2132 §9.4, §9.5).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The next server (`siaddr`): where the boot file is fetched from; 0 when not set.
    pub siaddr: u32,
    /// One's-complement sum (16-bit words in memory order, unfolded) of `fields`.
    pub fields_csum: u32,
    /// Bytes of `opts` in use: options 66 and 67 and a pad to an even length; at most
    /// [`BOOT_OPTS_MAX`].
    pub opts_len: u16,
    pub _pad: u16,
    /// The same sum of `opts[..opts_len]`.
    pub opts_csum: u32,
    /// `sname` (64 bytes), then `file` (128 bytes), each zero-padded.
    pub fields: [u8; dhcp::SNAME_LEN + dhcp::FILE_LEN],
    pub opts: [u8; BOOT_OPTS_MAX],
}

/// A binding whose client declined its address (RFC 2131 §4.3.3): DISCOVERs and REQUESTs
/// from it get no answer until `deadline_ns` (`bpf_ktime_get_ns`), as long as the binding
/// still has the declined address (IPAM renumbering it ends the hold). Written by XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclineHold {
    pub deadline_ns: u64,
    /// The declined address, as the binding held it.
    pub ip: u32,
    pub _pad: u32,
}

/// How long a binding stays silent after its client declined its address: 5 minutes.
///
/// holdfast cannot offer another address (IPAM owns it), so an answer would hand the client
/// the same conflict again. A client waits at least 10 s after a DECLINE (RFC 2131 §3.1.5),
/// then sends DISCOVERs at backoffs of 4 to 64 s: in 5 minutes it meets silence several times
/// instead of looping through DORA, conflict detection and DECLINE every 10 s, while a
/// conflict that clears by itself (the other holder goes away) costs it at most about 6
/// minutes. IPAM renumbering the NIC ends the hold at once.
pub const DECLINE_HOLD_NS: u64 = 300 * 1_000_000_000;

/// What the data plane reports to the agent through the event ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpEvent {
    /// [`dhcp::DHCPRELEASE`] or [`dhcp::DHCPDECLINE`]; for DHCPv6,
    /// [`dhcp6::EVENT_DHCP6`] plus [`dhcp6::RELEASE`] or [`dhcp6::DECLINE`].
    pub kind: u32,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `ciaddr` of a RELEASE, the requested address (option 50) of a DECLINE: always the
    /// binding's address (the DECLINE of any other is counted, not reported).
    pub addr: u32,
}

/// Key of a forwarding entry: a NIC's MAC within its network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl FdbKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self {
            vni,
            mac,
            _pad: [0; 2],
        }
    }
}

/// Where a NIC is: on a local interface (`ifindex`), or behind a remote VTEP (`vtep`).
///
/// Which one is said by `kind`, never by a zero address or ifindex: a value a packet can carry
/// (an outer source of 0.0.0.0) must not be able to match a local NIC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// [`FdbEntry::LOCAL`] or [`FdbEntry::REMOTE`]; any other value is no usable entry (the
    /// programs drop what it would forward).
    pub kind: u32,
    /// The local VM interface, for a local NIC (0 for a remote one).
    pub ifindex: u32,
    /// The remote hypervisor's VTEP address, for a remote NIC (0 for a local one).
    pub vtep: u32,
    /// The NIC's address.
    pub ip: u32,
}

impl FdbEntry {
    /// A NIC on this host, on a VM interface.
    pub const LOCAL: u32 = 1;
    /// A NIC behind another hypervisor's VTEP.
    pub const REMOTE: u32 = 2;

    pub const fn local(ifindex: u32, ip: u32) -> Self {
        Self {
            kind: Self::LOCAL,
            ifindex,
            vtep: 0,
            ip,
        }
    }

    pub const fn remote(vtep: u32, ip: u32) -> Self {
        Self {
            kind: Self::REMOTE,
            ifindex: 0,
            vtep,
            ip,
        }
    }
}

/// Key of an ARP answer: an address within a network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArpKey {
    pub vni: u32,
    pub ip: u32,
}

/// The MAC an address resolves to (the router MAC for gateways).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The link-local address whose interface identifier is `mac`'s modified EUI-64 (RFC 4291
/// §2.5.1 and appendix A: `ff:fe` inserted in the middle, the universal/local bit inverted), in
/// `fe80::/64`: the router's address on every network, derived from `router_mac` by the
/// programs and the agent alike.
pub const fn eui64_link_local(mac: [u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// Upper bound on IPv6 neighbour answers: every `ip6` of the networks this host has NICs in,
/// and each network's router (its link-local address).
pub const MAX_NEIGH6: u32 = MAX_ARP;

/// A VM-port NIC's IPv6 address (`ip6`), by the same key as its DHCPv4 binding
/// (`BINDINGS6`): the only global source address the NIC may send from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding6 {
    pub ip6: [u8; 16],
    pub vni: u32,
    pub _pad: u32,
}

/// Key of an IPv6 neighbour answer (`NEIGH6`): an address within a network. Also what
/// decapsulation checks an inner IPv6 source against.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neigh6Key {
    pub vni: u32,
    pub ip6: [u8; 16],
}

impl Neigh6Key {
    pub const fn new(vni: u32, ip6: [u8; 16]) -> Self {
        Self { vni, ip6 }
    }
}

/// The MAC an IPv6 address resolves to; `router` set for the router's link-local address
/// (the NA's router flag, RFC 4861 §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neigh6Entry {
    pub mac: [u8; 6],
    pub router: u8,
    pub _pad: u8,
}

/// Room for a router advertisement's body after its 4-byte ICMPv6 header: the 12 bytes of
/// RFC 4861 §4.2 and the options (source link-layer address 8, MTU 8, prefix 32, RDNSS
/// 8 + 16 per server, DNSSL 8 + the search list, RFC 8106).
pub const RA_MAX: usize = 256;

/// A network with IPv6 and NICs on this host (`VNIS6`, by VNI): its router advertisement,
/// built by the agent, sent by the programs to a solicitation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ra6 {
    /// Bytes of `body` in use (a multiple of 8 after the first 12).
    pub len: u16,
    pub _pad: u16,
    /// [`csum_partial`] of `body[..len]`: the program adds its header and the pseudo header,
    /// and folds.
    pub csum: u32,
    pub body: [u8; RA_MAX],
}

/// A network with IPv6 and NICs on this host (`DHCP6`, by VNI): what its DHCPv6 replies
/// carry, rendered by the agent. The program builds the message header, the client's
/// identifier and the IA_NA with the NIC's `ip6`; the rest is `tail`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dhcp6Net {
    /// Bytes of `tail` in use.
    pub len: u16,
    pub _pad: u16,
    /// [`csum_partial`] of `tail[..len]`, as if it started at an even offset.
    pub csum: u32,
    /// The IA_NA's T1 and T2 and the address's preferred and valid lifetimes (RFC 8415
    /// §21.4, §21.6), in seconds, big-endian as they go on the wire.
    pub t1: [u8; 4],
    pub t2: [u8; 4],
    pub preferred: [u8; 4],
    pub valid: [u8; 4],
    /// The server identifier, DNS servers and domain list options, zero after `len`.
    pub tail: [u8; dhcp6::TAIL_MAX],
}

/// A network with NICs on this host: frames of its VNI may be decapsulated here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VniInfo {
    pub gateway: u32,
    pub mtu: u32,
}

/// Routing (between the networks of a VPC, and to gateway VMs): the data of a key of the
/// `ROUTES` longest-prefix-match trie. Each network a frame may come from has its own table:
/// `vni` is the network the frame comes from, `addr` the destination (network order). The
/// key's prefix length counts `vni` too: `32 +` the destination prefix's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteDst {
    pub vni: u32,
    pub addr: u32,
}

/// Where a routed frame goes: what the longest prefix of its destination in the sending
/// network's table says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// [`RouteEntry::SUBNET`], [`RouteEntry::VIA`] or [`RouteEntry::GATEWAY`]; any other value
    /// is no route.
    pub kind: u32,
    /// The network the next hop is in: the destination's network for a subnet, the gateway
    /// VM's for a `via`.
    pub vni: u32,
    /// For [`RouteEntry::VIA`]: the address (network order) of the forwarding NIC the frame goes
    /// to, resolved in network `vni` like a destination (`ARP`, then `FDB`). 0 otherwise.
    pub via: u32,
    pub _pad: u32,
}

impl RouteEntry {
    /// The destination is in network `vni` of the same VPC (the sending network's own subnet
    /// included): resolved there by its address.
    pub const SUBNET: u32 = 1;
    /// A route or the network's `default_via`: to the forwarding NIC at `via` in network
    /// `vni`.
    pub const VIA: u32 = 2;
    /// A gateway address of the VPC (one per network, a /32): ICMP echo is answered, anything
    /// else dropped and counted.
    pub const GATEWAY: u32 = 3;
}

/// Entries the `ROUTES` trie holds: every network of the host's VPCs has a table of its VPC's
/// subnets and gateways and its own routes.
pub const MAX_ROUTES: u32 = 262_144;

/// Key of the `FORWARDERS` map: VTEP `vtep` (network order) hosts a NIC with `forwarding` in
/// the VPC of network `vni`: routed frames from it into network `vni` may carry any source
/// outside the VPC's subnets (a gateway VM's return traffic).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwarderKey {
    pub vni: u32,
    pub vtep: u32,
}

/// This host's place in the overlay; one entry, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// This host's VTEP address (outer source); 0 when no underlay is configured.
    pub vtep: u32,
    /// The underlay interface VXLAN leaves by.
    pub underlay_ifindex: u32,
    /// The device next hops are looked up from (`bpf_fib_lookup` requires IP forwarding on it):
    /// a dummy device of holdfast's own, so no real interface has to forward.
    pub fib_ifindex: u32,
    pub _pad: u32,
}

/// An underlay next hop learned from `bpf_fib_lookup`. Used without asking the FIB again for
/// [`NEXTHOP_TTL_NS`], and kept for when the kernel's neighbour entry is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// `bpf_ktime_get_ns` when the FIB last confirmed it.
    pub confirmed_ns: u64,
}

/// How long a learned next hop is used before the FIB is asked again: a route or neighbour
/// change is picked up within this time.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

/// What the underlay's XDP program leaves in the frame's metadata for its TC program: the VM
/// interface a decapsulated frame goes to once GRO has aggregated it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecapMeta {
    pub magic: u32,
    pub ifindex: u32,
}

impl DecapMeta {
    pub const MAGIC: u32 = 0x4846_0001;
}

/// A rate limit as the programs apply it: GCRA (the virtual-scheduling form of a token bucket),
/// one message per `interval_ns` on average and up to `tolerance_ns / interval_ns` more at once.
/// An `interval_ns` of 0 turns the limit off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl RateLimit {
    pub const OFF: Self = Self {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `per_sec` messages a second on average, `burst` of them back to back (at least one);
    /// `per_sec` 0 is no limit. `per_sec` above a billion is taken as a billion.
    pub const fn per_sec(per_sec: u32, burst: u32) -> Self {
        if per_sec == 0 {
            return Self::OFF;
        }
        let per_sec = if per_sec > 1_000_000_000 {
            1_000_000_000
        } else {
            per_sec
        };
        let interval_ns = 1_000_000_000 / per_sec as u64;
        let burst = if burst == 0 { 1 } else { burst };
        Self {
            interval_ns,
            tolerance_ns: interval_ns * (burst as u64 - 1),
        }
    }

    pub const fn is_off(&self) -> bool {
        self.interval_ns == 0
    }
}

/// What one VM interface may send to the host's slow paths, per kind; set at load time (the
/// programs' `RATE_DHCP`, `RATE_ARP` and `RATE_EVENTS` globals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// DHCP messages answered (or dropped after parsing): 5/s, bursts of 40.
    pub dhcp: RateLimit,
    /// ARP requests answered: 200/s, bursts of 1,000.
    pub arp: RateLimit,
    /// RELEASE and DECLINE events sent to the agent: 1/s, bursts of 10.
    pub events: RateLimit,
}

impl RateLimits {
    /// Far above what a real client sends, far below what a flooding VM can (about a million
    /// frames a second): a DORA is two messages and retries back off from 4 s (RFC 2131
    /// §4.1); Linux resolves at most `gc_thresh3` (1,024) neighbours and re-probes each at most
    /// every few seconds; a client releases once when it stops, declines once per conflict.
    pub const DEFAULT: Self = Self {
        dhcp: RateLimit::per_sec(Self::DEFAULT_DHCP.0, Self::DEFAULT_DHCP.1),
        arp: RateLimit::per_sec(Self::DEFAULT_ARP.0, Self::DEFAULT_ARP.1),
        events: RateLimit::per_sec(Self::DEFAULT_EVENTS.0, Self::DEFAULT_EVENTS.1),
    };
    /// The defaults as (per second, burst).
    pub const DEFAULT_DHCP: (u32, u32) = (5, 40);
    pub const DEFAULT_ARP: (u32, u32) = (200, 1000);
    pub const DEFAULT_EVENTS: (u32, u32) = (1, 10);

    pub const OFF: Self = Self {
        dhcp: RateLimit::OFF,
        arp: RateLimit::OFF,
        events: RateLimit::OFF,
    };
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a rate limiter's state counts, in [`RateKey::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateKind {
    Dhcp = 1,
    Arp = 2,
    Event = 3,
}

/// Key of a rate limiter's state (its theoretical arrival time, a `u64` of
/// `bpf_ktime_get_ns`): the VM interface the frames come in on, and what is limited.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateKey {
    pub ifindex: u32,
    pub kind: u32,
}

/// States of the rate limiters: three kinds for each VM interface, with room to spare. Least
/// recently used states go first; a state evicted or lost at a restart starts afresh (a full
/// burst), which only ever lets a burst more through.
pub const MAX_RATE_STATES: u32 = 65_536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with every byte covered by a field (no implicit padding).
    unsafe impl aya::Pod for super::FdbKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdbEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ArpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ArpEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VniInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DataplaneConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NextHop {}
    // SAFETY: plain `#[repr(C)]` data with every byte covered by a field (no implicit padding).
    unsafe impl aya::Pod for super::BindingKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Binding {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DhcpEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateLimit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BootKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BootEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeclineHold {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Binding6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Neigh6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Neigh6Entry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ra6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Dhcp6Net {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForwarderKey {}
}

/// One's-complement sum of `bytes` taken as 16-bit words in memory order, unfolded; an odd
/// trailing byte is summed as if followed by a zero byte. This is the convention of
/// [`Binding::opts_csum`]: the XDP program adds it to the sum of the fields it writes itself.
pub fn csum_partial(bytes: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_ne_bytes([*last, 0]));
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it (the checksum field value,
/// to be stored with `to_ne_bytes`).
pub const fn csum_fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<BindingKey>(), 12);
        assert_eq!(size_of::<Binding>(), 28 + OPTS_MAX);
        assert_eq!(size_of::<FdbKey>(), 12);
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(size_of::<ArpKey>(), 8);
        assert_eq!(size_of::<ArpEntry>(), 8);
        assert_eq!(size_of::<VniInfo>(), 8);
        assert_eq!(size_of::<RouteDst>(), 8);
        assert_eq!(size_of::<RouteEntry>(), 16);
        assert_eq!(size_of::<ForwarderKey>(), 8);
        assert_eq!(size_of::<DataplaneConfig>(), 16);
        assert_eq!(size_of::<NextHop>(), 24);
        assert_eq!(size_of::<DhcpEvent>(), 20);
        assert_eq!(size_of::<RateLimit>(), 16);
        assert_eq!(size_of::<RateKey>(), 8);
        assert_eq!(size_of::<BootKey>(), 12);
        assert_eq!(size_of::<BootEntry>(), 16 + 192 + BOOT_OPTS_MAX);
        assert_eq!(size_of::<DeclineHold>(), 16);
        assert_eq!(size_of::<Binding6>(), 24);
        assert_eq!(size_of::<Neigh6Key>(), 20);
        assert_eq!(size_of::<Neigh6Entry>(), 8);
        assert_eq!(size_of::<Ra6>(), 8 + RA_MAX);
        assert_eq!(size_of::<Dhcp6Net>(), 24 + dhcp6::TAIL_MAX);
    }

    #[test]
    fn rate_limits_allow_their_burst_back_to_back() {
        let l = RateLimit::per_sec(5, 40);
        assert_eq!(l.interval_ns, 200_000_000);
        assert_eq!(
            l.tolerance_ns / l.interval_ns,
            39,
            "40 at once: the first and 39 more"
        );
        assert!(RateLimit::per_sec(0, 10).is_off());
        assert_eq!(RateLimit::per_sec(10, 0).tolerance_ns, 0, "a burst of one");
        assert_eq!(RateLimit::per_sec(u32::MAX, 1).interval_ns, 1);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (big-endian view).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let folded = !csum_fold(u64::from(csum_partial(&bytes)));
        assert_eq!(u16::from_be_bytes(folded.to_ne_bytes()), 0xddf2);
    }
}
