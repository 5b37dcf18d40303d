//! The data-plane counters: the programs count into the pinned per-CPU STATS map; each scrape
//! reads every slot, sums the CPUs and encodes the sums as Prometheus counters. The map is
//! pinned, so the counters continue across agent restarts.

use std::{
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use agent_common::Stat;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};
use tracing::{info, warn};

use crate::dataplane::StatsReader;

/// A data-plane metric family: one Prometheus counter, each label value the sum of some stats.
struct BpfFamily {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    members: &'static [(&'static str, &'static [Stat])],
}

const BPF_FAMILIES: &[BpfFamily] = &[
    BpfFamily {
        name: "holdfast_dhcp_requests",
        help: "DHCP messages received from bound NICs, by message type",
        label: "type",
        members: &[
            ("discover", &[Stat::DhcpDiscover]),
            (
                "request",
                &[
                    Stat::DhcpRequestSelecting,
                    Stat::DhcpRequestInitReboot,
                    Stat::DhcpRequestRenewing,
                    Stat::DhcpRequestRebinding,
                ],
            ),
            ("inform", &[Stat::DhcpInform]),
            ("release", &[Stat::DhcpRelease]),
            ("decline", &[Stat::DhcpDecline]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_request_states",
        help: "DHCPREQUESTs by client state (RFC 2131 §4.3.2)",
        label: "state",
        members: &[
            ("selecting", &[Stat::DhcpRequestSelecting]),
            ("init_reboot", &[Stat::DhcpRequestInitReboot]),
            ("renewing", &[Stat::DhcpRequestRenewing]),
            ("rebinding", &[Stat::DhcpRequestRebinding]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_replies",
        help: "DHCP replies sent by the XDP responder, by message type",
        label: "type",
        members: &[
            ("offer", &[Stat::DhcpOffer]),
            ("ack", &[Stat::DhcpAck]),
            ("nak", &[Stat::DhcpNak]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp_drops",
        help: "DHCP packets dropped without a reply, by reason",
        label: "reason",
        members: &[
            ("malformed", &[Stat::DropDhcpMalformed]),
            ("bad_options", &[Stat::DropDhcpBadOptions]),
            ("chaddr_mismatch", &[Stat::DropDhcpChaddrMismatch]),
            ("rogue_server", &[Stat::DropDhcpRogueServer]),
            ("relayed", &[Stat::DropDhcpRelayed]),
            ("unknown_type", &[Stat::DropDhcpUnknownType]),
            ("bad_request", &[Stat::DropDhcpBadRequest]),
            ("no_room", &[Stat::DropDhcpNoRoom]),
            ("other_server", &[Stat::DhcpOtherServer]),
            ("rate_limited", &[Stat::DropDhcpRateLimited]),
            ("skb_path", &[Stat::DropDhcpSkbPath]),
            ("declined_hold", &[Stat::DhcpDeclineHeld]),
            ("decline_not_ours", &[Stat::DhcpDeclineIgnored]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp6_requests",
        help: "DHCPv6 messages received from bound NICs, by message type",
        label: "type",
        members: &[
            ("solicit", &[Stat::Dhcp6Solicit]),
            ("request", &[Stat::Dhcp6Request]),
            ("confirm", &[Stat::Dhcp6Confirm]),
            ("renew", &[Stat::Dhcp6Renew]),
            ("rebind", &[Stat::Dhcp6Rebind]),
            ("release", &[Stat::Dhcp6Release]),
            ("decline", &[Stat::Dhcp6Decline]),
            ("information_request", &[Stat::Dhcp6InformationRequest]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp6_replies",
        help: "DHCPv6 replies sent by the data plane, by message type",
        label: "type",
        members: &[
            ("advertise", &[Stat::Dhcp6Advertise]),
            ("reply", &[Stat::Dhcp6Reply]),
        ],
    },
    BpfFamily {
        name: "holdfast_dhcp6_drops",
        help: "DHCPv6 messages dropped without a reply, by reason",
        label: "reason",
        members: &[
            ("malformed", &[Stat::DropDhcp6Malformed]),
            ("unknown_type", &[Stat::DropDhcp6UnknownType]),
            ("other_server", &[Stat::Dhcp6OtherServer]),
            ("no_address_asked", &[Stat::Dhcp6NoAddressAsked]),
            ("skb_path", &[Stat::Dhcp6Unanswered]),
        ],
    },
    BpfFamily {
        name: "holdfast_vxlan_encap",
        help: "Frames from VMs encapsulated toward a remote VTEP, by path (xdp, or skb for GSO and unresolved next hops)",
        label: "path",
        members: &[("xdp", &[Stat::VxlanEncap]), ("skb", &[Stat::SkbEncap])],
    },
    BpfFamily {
        name: "holdfast_forward_local",
        help: "Frames from VMs delivered to another VM on this host, by path",
        label: "path",
        members: &[
            ("xdp", &[Stat::ForwardLocal]),
            ("skb", &[Stat::SkbForwardLocal]),
        ],
    },
    BpfFamily {
        name: "holdfast_drops",
        help: "Frames the VPC data plane dropped, by reason",
        label: "reason",
        members: &[
            ("spoofed_mac", &[Stat::DropSpoofedMac]),
            ("spoofed_ip", &[Stat::DropSpoofedIp]),
            ("arp_spoof", &[Stat::DropArpSpoof]),
            ("arp_unknown", &[Stat::DropArpUnknown]),
            ("arp_no_answer", &[Stat::DropArpNoAnswer]),
            ("bcast_mcast", &[Stat::DropBcastMcast]),
            ("unknown_unicast", &[Stat::DropUnknownUnicast]),
            ("not_ipv4", &[Stat::DropNotIpv4]),
            ("malformed", &[Stat::DropMalformed]),
            ("no_underlay", &[Stat::DropNoUnderlay]),
            ("no_route", &[Stat::DropNoRoute]),
            // Not routable, and RFC 1122 §3.2.2 forbids an ICMP error about it (issue 16).
            ("route_no_icmp_error", &[Stat::DropRouteSilent]),
            ("unknown_vtep", &[Stat::DropUnknownVtep]),
            ("unknown_vni", &[Stat::DropUnknownVni]),
            ("unknown_inner_dst", &[Stat::DropUnknownInnerDst]),
            ("inner_spoof", &[Stat::DropInnerSpoof]),
            ("inner_spoofed_ip", &[Stat::DropInnerSpoofedIp]),
            ("decap_arp", &[Stat::DropDecapArp]),
            ("decap_not_ipv4", &[Stat::DropDecapNotIpv4]),
            ("underlay_ip_options", &[Stat::DropUnderlayIpOptions]),
            ("underlay_fragment", &[Stat::DropUnderlayFragment]),
            ("decap_not_vtep", &[Stat::DropDecapNotVtep]),
            ("spoofed_ip6", &[Stat::DropSpoofedIp6]),
            ("ipv6_not_configured", &[Stat::DropIpv6NotConfigured]),
            ("ipv6_link_local", &[Stat::DropIpv6LinkLocal]),
            ("ipv6_ext_header", &[Stat::DropIpv6ExtHeader]),
            ("nd_unknown", &[Stat::DropNd6Unknown]),
            ("nd_no_answer", &[Stat::DropNd6NoAnswer]),
            ("nd_malformed", &[Stat::DropNd6Malformed]),
            ("nd_skb_path", &[Stat::DropNd6SkbPath]),
            ("nd_rate_limited", &[Stat::DropNd6RateLimited]),
            ("route_blackhole", &[Stat::DropRouteBlackhole]),
            ("route_unreachable", &[Stat::DropRouteUnreachable]),
            ("route_prohibit", &[Stat::DropRouteProhibit]),
            ("to_router", &[Stat::ToRouter]),
            ("arp_rate_limited", &[Stat::DropArpRateLimited]),
            ("arp_skb_path", &[Stat::DropArpSkbPath]),
            ("to_gateway", &[Stat::DropToGateway]),
            ("routed_spoof", &[Stat::DropRoutedSpoof]),
            ("route_unsupported", &[Stat::DropRouteUnsupported]),
        ],
    },
    BpfFamily {
        name: "holdfast_icmp_errors",
        help: "ICMP errors sent back to VMs for frames the data plane could not route, by type",
        label: "type",
        members: &[
            ("time_exceeded", &[Stat::IcmpTimeExceeded]),
            ("net_unreachable", &[Stat::IcmpNetUnreachable]),
            ("host_unreachable", &[Stat::IcmpHostUnreachable]),
        ],
    },
];

/// Data-plane counters without labels.
const BPF_COUNTERS: &[(&str, &str, Stat)] = &[
    (
        "holdfast_dhcp_misses",
        "DHCP requests from an (interface, MAC) with no binding",
        Stat::DhcpMiss,
    ),
    (
        "holdfast_dhcp_rapid_commit",
        "DISCOVERs with rapid commit answered with an ACK (RFC 4039)",
        Stat::DhcpRapidCommit,
    ),
    (
        "holdfast_dhcp_option_overload",
        "Requests carrying option overload (52); sname/file are not parsed",
        Stat::DhcpOverloadIgnored,
    ),
    (
        "holdfast_dhcp_client_id_not_echoed",
        "Replies sent without the request's client identifier (option 61): it did not fit in 576 bytes",
        Stat::DhcpClientIdNotEchoed,
    ),
    (
        "holdfast_dhcp_former_server_id_replies",
        "Replies sent from a server address the client addressed other than its network's identifier now (a former identifier, the gateway)",
        Stat::DhcpFormerServerId,
    ),
    (
        "holdfast_nd_advertisements",
        "IPv6 neighbour advertisements sent to VMs (answers to their solicitations)",
        Stat::Nd6Reply,
    ),
    (
        "holdfast_ra_replies",
        "IPv6 router advertisements sent to VMs in answer to their solicitations",
        Stat::Ra6Reply,
    ),
    (
        "holdfast_nd_dad_probes",
        "IPv6 duplicate address detection probes from VMs (never answered)",
        Stat::Nd6Dad,
    ),
    (
        "holdfast_dhcp6_rapid_commit",
        "DHCPv6 REPLYs to a SOLICIT with rapid commit (also in holdfast_dhcp6_replies, type reply)",
        Stat::Dhcp6RapidCommit,
    ),
    (
        "holdfast_dhcp6_not_on_link",
        "DHCPv6 CONFIRMs answered NotOnLink: the client's address is not on its network's prefix",
        Stat::Dhcp6NotOnLink,
    ),
    (
        "holdfast_dhcp_boot_replies",
        "Replies carrying network boot information (siaddr, sname, file)",
        Stat::DhcpBoot,
    ),
    (
        "holdfast_dhcp_boot_options_not_sent",
        "Replies without the options 66/67 their client asked for: they would not fit 576 bytes (sname and file carry them)",
        Stat::DhcpBootOptionsNotSent,
    ),
    (
        "holdfast_dhcp_events_lost",
        "RELEASE/DECLINE events lost because the ring buffer was full",
        Stat::DhcpEventsLost,
    ),
    (
        "holdfast_dhcp_events_rate_limited",
        "RELEASE/DECLINE events over their VM interface's rate limit, not sent to the agent",
        Stat::DhcpEventsRateLimited,
    ),
    (
        "holdfast_arp_replies",
        "ARP requests answered in XDP",
        Stat::ArpReply,
    ),
    (
        "holdfast_vxlan_decap",
        "VXLAN frames from the underlay decapsulated into local VMs",
        Stat::VxlanDecap,
    ),
    (
        "holdfast_vxlan_decap_gro",
        "Decapsulated TCP handed to the underlay's GRO, then into its VM by TC; with the TC underlay hook, aggregates delivered whole (part of decap)",
        Stat::DecapGro,
    ),
    (
        "holdfast_to_router",
        "Frames from VMs to the router MAC dropped unrouted: IPv6 is not routed yet (also in holdfast_drops, reason to_router)",
        Stat::ToRouter,
    ),
    (
        "holdfast_routed",
        "Frames routed to another network of their VPC or to a gateway VM (also counted in their delivery: holdfast_forward_local or holdfast_vxlan_encap)",
        Stat::Routed,
    ),
    (
        "holdfast_gateway_echo_replies",
        "ICMP echo requests to a gateway address answered by the data plane",
        Stat::GatewayEchoReply,
    ),
    (
        "holdfast_skb_path",
        "Frames XDP handed to the skb path (GSO, oversized, next hop not resolved yet)",
        Stat::ToSkbPath,
    ),
    (
        "holdfast_icmp_frag_needed",
        "ICMP fragmentation-needed sent to VMs for frames too big for their network",
        Stat::IcmpFragNeeded,
    ),
    (
        "holdfast_icmp6_packet_too_big",
        "ICMPv6 packet-too-big sent to VMs for datagrams too big for their network",
        Stat::Icmp6PacketTooBig,
    ),
    (
        "holdfast_nexthop_cached",
        "Encapsulations that used a cached next hop (no kernel neighbour entry)",
        Stat::NextHopCached,
    ),
    (
        "holdfast_underlay_passed",
        "Underlay frames passed to the host stack (not VXLAN to this VTEP)",
        Stat::UnderlayPass,
    ),
];
/// Reads the pinned counters on each scrape.
#[derive(Debug)]
pub(super) struct BpfCollector {
    bpffs_dir: PathBuf,
    stats: Mutex<Stats>,
}

/// The STATS map once opened, and whether opening it failed at the last try.
#[derive(Default)]
struct Stats {
    reader: Option<StatsReader>,
    streak: FailureStreak,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("open", &self.reader.is_some())
            .field("streak", &self.streak)
            .finish()
    }
}

/// Whether the last try to open the STATS pin failed: a failure is logged when a streak
/// begins, not at every scrape.
#[derive(Debug, Default)]
struct FailureStreak {
    failing: bool,
}

impl FailureStreak {
    /// Records one try; true when it begins a streak of failures or ends one.
    fn record(&mut self, ok: bool) -> bool {
        let changed = self.failing == ok;
        self.failing = !ok;
        changed
    }
}

impl BpfCollector {
    pub(super) fn new(bpffs_dir: PathBuf) -> Self {
        Self {
            bpffs_dir,
            stats: Mutex::new(Stats::default()),
        }
    }

    /// One total per `Stat`, or none while the pin cannot be opened (tried again at each
    /// scrape: the data plane may not have pinned it yet).
    fn totals(&self) -> Option<Vec<u64>> {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if stats.reader.is_none() {
            let opened = StatsReader::open(&self.bpffs_dir);
            let changed = stats.streak.record(opened.is_ok());
            match opened {
                Ok(reader) => {
                    if changed {
                        info!(
                            bpffs = %self.bpffs_dir.display(),
                            "pinned STATS map opened: data-plane counters are back in /metrics"
                        );
                    }
                    stats.reader = Some(reader);
                }
                Err(e) => {
                    if changed {
                        warn!(
                            error = %e,
                            bpffs = %self.bpffs_dir.display(),
                            "cannot open the pinned STATS map: /metrics leaves out every \
                             data-plane counter until it opens (tried again at each scrape)"
                        );
                    }
                    return None;
                }
            }
        }
        stats.reader.as_ref().map(StatsReader::read)
    }
}

impl Collector for BpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Fault injection for the stall tests: a collection that blocks for a long time, as
        // the seed's slow periodic task did. Collections run on their own thread, so it must
        // not delay anything but scrapes.
        if let Some(stall) = crate::fault::slow_collect() {
            std::thread::sleep(stall);
        }
        let Some(totals) = self.totals() else {
            return Ok(());
        };
        let get = |s: Stat| totals.get(s as usize).copied().unwrap_or(0);
        for fam in BPF_FAMILIES {
            let c = ConstCounter::new(0u64);
            let mut m = encoder.encode_descriptor(fam.name, fam.help, None, c.metric_type())?;
            for (value, stats) in fam.members {
                let total: u64 = stats.iter().map(|s| get(*s)).sum();
                let labels = [(fam.label, *value)];
                ConstCounter::new(total).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, stat) in BPF_COUNTERS {
            let c = ConstCounter::new(get(*stat));
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_of_the_programs_is_in_a_metric() {
        for i in 0..agent_common::stats::STATS_COUNT {
            let in_family = BPF_FAMILIES.iter().any(|f| {
                f.members
                    .iter()
                    .any(|(_, stats)| stats.iter().any(|s| *s as u32 == i))
            });
            let alone = BPF_COUNTERS.iter().any(|(_, _, s)| *s as u32 == i);
            assert!(in_family || alone, "Stat {i} is in no metric");
        }
    }

    #[test]
    fn a_failure_streak_is_reported_when_it_begins_and_when_it_ends() {
        let mut s = FailureStreak::default();
        assert!(!s.record(true), "success after success");
        assert!(s.record(false), "the first failure");
        assert!(!s.record(false), "the same streak");
        assert!(!s.record(false), "the same streak");
        assert!(s.record(true), "back");
        assert!(!s.record(true), "still fine");
        assert!(s.record(false), "a new streak");
    }

    #[test]
    fn an_unopenable_pin_leaves_every_counter_out() {
        let dir = std::env::temp_dir().join(format!("holdfast-no-bpffs-{}", std::process::id()));
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(BpfCollector::new(dir)));
        for _ in 0..2 {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            assert_eq!(out, "# EOF\n");
        }
    }
}
