//! Per-CPU counters of the data plane, one slot per outcome.
//!
//! The agent sums the slots over CPUs and exports them as Prometheus metrics; the mapping from
//! slot to metric name and labels lives in the agent's `metrics` module.

/// Index into the `STATS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    // DHCP requests received from a bound NIC, by message type and client state.
    DhcpDiscover,
    DhcpRequestSelecting,
    DhcpRequestInitReboot,
    DhcpRequestRenewing,
    DhcpRequestRebinding,
    DhcpInform,
    DhcpRelease,
    DhcpDecline,
    // Replies sent.
    DhcpOffer,
    DhcpAck,
    DhcpNak,
    /// ACKs that answered a DISCOVER carrying rapid commit (also counted in `DhcpAck`).
    DhcpRapidCommit,
    /// A DHCP request from an (interface, MAC) with no binding.
    DhcpMiss,
    /// A REQUEST that selected another server (option 54 is not ours): silence, RFC 2131 §4.3.2.
    DhcpOtherServer,
    /// Option overload (52) present: counted, the `sname`/`file` fields are not parsed.
    DhcpOverloadIgnored,
    // Dropped DHCP packets, by reason.
    DropDhcpMalformed,
    DropDhcpBadOptions,
    DropDhcpChaddrMismatch,
    DropDhcpRogueServer,
    DropDhcpRelayed,
    DropDhcpUnknownType,
    DropDhcpBadRequest,
    DropDhcpNoRoom,
    /// RELEASE/DECLINE events lost because the ring buffer was full.
    DhcpEventsLost,
    // ARP answered locally.
    ArpReply,
    /// Frames handed to the host stack untouched.
    VmPass,
    Count,
}

pub const STATS_COUNT: u32 = Stat::Count as u32;
