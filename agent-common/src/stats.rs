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
    // VPC forwarding (VXLAN issue).
    /// Frames from a VM encapsulated toward a remote VTEP in XDP.
    VxlanEncap,
    /// Frames from the underlay decapsulated into a local VM.
    VxlanDecap,
    /// Decapsulated TCP handed up for GRO, then redirected into the VM by the underlay's TC
    /// program; with `[underlay] hook = "tc"`, decapsulated aggregates (GRO or GSO) delivered
    /// whole (also counted in `VxlanDecap`).
    DecapGro,
    /// Frames from a VM redirected to another VM on this host.
    ForwardLocal,
    /// Frames to the router MAC, dropped: nothing is routed until the data plane routes, and
    /// the host stack must never see a VM's frames (a host socket, the host's forwarding).
    /// Counted among the drops (`to_router`) too.
    ToRouter,
    /// Frames XDP handed to the skb (TC) path: GSO super-frames, oversized frames, next hops
    /// not resolved yet.
    ToSkbPath,
    /// Encapsulated on the skb path (`bpf_skb_adjust_room`).
    SkbEncap,
    /// Forwarded to a local VM on the skb path.
    SkbForwardLocal,
    /// ICMP fragmentation-needed sent back to a VM for a frame too big for the network.
    IcmpFragNeeded,
    /// Encapsulations that used a cached next hop (the kernel had no neighbour entry).
    NextHopCached,
    // Dropped by the VPC data plane, by reason.
    DropSpoofedMac,
    DropSpoofedIp,
    DropArpSpoof,
    DropArpUnknown,
    /// ARP that needs no answer: replies (nobody asked, every request is answered here),
    /// announcements and probes for the VM's own address.
    DropArpNoAnswer,
    DropBcastMcast,
    DropUnknownUnicast,
    /// Neither IPv4 nor ARP (IPv6 included).
    DropNotIpv4,
    DropMalformed,
    /// A remote destination while no underlay is configured.
    DropNoUnderlay,
    DropUnknownVtep,
    DropUnknownVni,
    DropUnknownInnerDst,
    /// The inner source is not a NIC of the sending VTEP in that network.
    DropInnerSpoof,
    /// No route or next hop toward a VTEP.
    DropNoRoute,
    /// Frames the underlay program passed: not VXLAN to this VTEP (the host's own traffic).
    UnderlayPass,
    /// Replies sent without the client identifier (option 61) the request carried, because
    /// echoing it would have pushed the reply past 576 bytes (RFC 2131's guaranteed size).
    /// Appended last: slots keep their index across versions, the counters are pinned.
    DhcpClientIdNotEchoed,
    /// ARP inside VXLAN: ARP is answered locally on both sides, so none ever crosses the
    /// underlay; any is forged.
    DropDecapArp,
    /// Inside VXLAN, an ethertype holdfast does not forward (only IPv4 and IPv6 are delivered).
    DropDecapNotIpv4,
    /// Inside VXLAN, an IPv4 or IPv6 source that is not the address of the NIC the source MAC
    /// names.
    DropInnerSpoofedIp,
    /// UDP to this VTEP's VXLAN port with IPv4 options: holdfast's peers never send them.
    DropUnderlayIpOptions,
    /// A fragment of UDP to this VTEP: VXLAN is sent with DF, and a later fragment carries no
    /// port to tell VXLAN from anything else.
    DropUnderlayFragment,
    /// The kernel's route to a VTEP is a blackhole, unreachable or prohibit route: an
    /// operator's quarantine, obeyed (the cached next hop is not used).
    DropRouteBlackhole,
    DropRouteUnreachable,
    DropRouteProhibit,
    /// ARP on the skb path: only XDP answers ARP, so the port's XDP program is not running.
    /// Dropped, never handed to the host.
    DropArpSkbPath,
    /// DHCP to the server port on the skb path: as for ARP.
    DropDhcpSkbPath,
    /// DHCP messages over the port's rate limit (`rate_limits.dhcp_*`), dropped unparsed.
    DropDhcpRateLimited,
    /// ARP requests over the port's rate limit (`rate_limits.arp_*`), dropped unanswered.
    DropArpRateLimited,
    /// RELEASE/DECLINE events over the port's rate limit (`rate_limits.events_*`): counted in
    /// `DhcpRelease`/`DhcpDecline`, not sent to the agent.
    DhcpEventsRateLimited,
    /// DECLINEs of an address that is not the binding's (RFC 2131 §4.3.3 names the declined
    /// address in option 50): not ours to hold or report.
    DhcpDeclineIgnored,
    /// DISCOVERs and REQUESTs left unanswered because the client declined its address (a
    /// conflict) and the hold after its DECLINE has not ended: the client waits and tries
    /// again instead of looping through DORA (RFC 2131 §3.1.5).
    DhcpDeclineHeld,
    /// Replies sent from a server address of the network other than its current identifier,
    /// because the client addressed it (a RENEWING request to a former identifier): the
    /// client's lease names that address and it accepts answers only from it.
    DhcpFormerServerId,
    /// Replies carrying network boot information (siaddr, `sname`/`file`).
    DhcpBoot,
    /// Replies that left out options 66/67 although the client asked for them: with its
    /// other options they would not fit 576 bytes (`sname` and `file` still carry them).
    DhcpBootOptionsNotSent,
    /// VXLAN that holdfast's metadata-mode VXLAN device (`[underlay] hook = "tc"`) received
    /// for an address of this host other than its VTEP: not this VTEP's to deliver.
    DropDecapNotVtep,
    /// IPv6 from a NIC whose global source is not its `ip6`.
    DropSpoofedIp6,
    /// IPv6 from a NIC without an `ip6` (its network has no `subnet6`): IPv4 only.
    DropIpv6NotConfigured,
    /// IPv6 with a link-local source that is not neighbour discovery, a router solicitation
    /// or DHCPv6 toward the router: guests may pick any link-local address (RFC 8981, RFC
    /// 7217), so it is allowed for nothing else.
    DropIpv6LinkLocal,
    /// IPv6 to the router or to multicast whose first header after IPv6 is not ICMPv6 or UDP:
    /// a hop-by-hop or fragment header hiding what the datagram is (RFC 6980: neighbour
    /// discovery is never fragmented). MLD (behind hop-by-hop) is dropped this way.
    DropIpv6ExtHeader,
    /// Duplicate address detection probes (a neighbour solicitation from ::, RFC 4862 §5.4):
    /// never answered, so a VM's own address is never reported as taken.
    Nd6Dad,
    /// Neighbour solicitations for an address no NIC of the network has.
    DropNd6Unknown,
    /// Neighbour discovery messages that get no answer: a VM's solicitation for its own
    /// address, advertisements and redirects a VM sends.
    DropNd6NoAnswer,
    /// Neighbour discovery or router solicitations with a hop limit other than 255, or too
    /// short (RFC 4861 §6.1.1, §7.1.1).
    DropNd6Malformed,
    /// Neighbour advertisements sent to a VM.
    Nd6Reply,
    /// Router advertisements sent to a VM (answers to its solicitations).
    Ra6Reply,
    /// Neighbour discovery on xdp mode's skb path: only XDP answers it there, so the port's
    /// XDP program is not running.
    DropNd6SkbPath,
    /// DHCPv6 requests on xdp mode's skb path: only XDP answers them there, so the port's XDP
    /// program is not running.
    Dhcp6Unanswered,
    /// Neighbour solicitations or router solicitations over the port's ARP rate limit.
    DropNd6RateLimited,
    /// ICMPv6 packet-too-big sent back to a VM for a datagram over its network's MTU.
    Icmp6PacketTooBig,
    /// DHCPv6 messages from bound NICs, by type (RFC 8415 §7.3).
    Dhcp6Solicit,
    Dhcp6Request,
    Dhcp6Confirm,
    Dhcp6Renew,
    Dhcp6Rebind,
    Dhcp6Release,
    Dhcp6Decline,
    Dhcp6InformationRequest,
    /// DHCPv6 replies sent to a VM.
    Dhcp6Advertise,
    Dhcp6Reply,
    /// REPLYs that answered a SOLICIT carrying rapid commit (also counted in `Dhcp6Reply`).
    Dhcp6RapidCommit,
    /// CONFIRMs answered NotOnLink: the client's address is not its NIC's `ip6`.
    Dhcp6NotOnLink,
    /// DHCPv6 messages naming a server identifier other than this network's: another
    /// server's, silence (RFC 8415 §16.4).
    Dhcp6OtherServer,
    /// SOLICITs and CONFIRMs without an IA_NA address to act on (a client asking only for
    /// temporary addresses or prefixes): no answer.
    Dhcp6NoAddressAsked,
    /// DHCPv6 messages that break RFC 8415 §16 (a missing or forbidden identifier, options
    /// running past the message, more options than are scanned, a message over the window).
    DropDhcp6Malformed,
    /// DHCPv6 message types a client does not send, or relayed messages.
    DropDhcp6UnknownType,
    // Routing (issue 16): frames to the router MAC.
    /// A frame routed to another network of its VPC or to a gateway VM (as well as its
    /// delivery's own count: forwarded locally or encapsulated).
    Routed,
    /// An ICMP echo to a gateway address answered.
    GatewayEchoReply,
    /// Anything else to a gateway address: dropped.
    DropToGateway,
    /// TTL 1 or 0 on a frame to be routed: ICMP time exceeded sent back.
    IcmpTimeExceeded,
    /// No route for the destination: ICMP network unreachable sent back.
    IcmpNetUnreachable,
    /// A route, but no NIC at the destination or next hop: ICMP host unreachable sent back.
    IcmpHostUnreachable,
    /// Decapsulated, routed (inner source the router MAC), from a source the sending VTEP cannot
    /// speak for: not a NIC of the VPC behind it, nor from outside the VPC through a forwarding
    /// NIC behind it.
    DropRoutedSpoof,
    /// A frame to be routed that is neither IPv4 nor answerable (IPv6 is not routed yet, IP
    /// options, fragments of ICMP to the gateway): dropped.
    DropRouteUnsupported,
    /// A frame that could not be routed (TTL expired, no route, no NIC) dropped without an
    /// ICMP error, which RFC 1122 §3.2.2 forbids there: it is an ICMP error itself, a fragment
    /// other than the first, or from a source that is no single host.
    DropRouteSilent,
    Count,
}

pub const STATS_COUNT: u32 = Stat::Count as u32;
