//! Why an entry is rejected ([`Reason`], the metric's label) and how a rejection reads to an
//! operator ([`Rejection`]).

use std::fmt;

/// Why an entry was rejected; the label of `holdfast_ipam_rejected_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidDocument,
    InvalidJson,
    InvalidField,
    InvalidMac,
    InvalidAddress,
    OutsideSubnet,
    ReservedAddress,
    DuplicateIp,
    DuplicateMac,
    DuplicateId,
    DuplicateVni,
    UnknownNetwork,
    UnknownNode,
    MissingInterface,
    MtuOutOfRange,
    MtuExceedsUnderlay,
    DuplicateVtep,
    VniOutOfRange,
    InvalidLeaseTime,
    InvalidName,
    OptionsTooLong,
    InvalidVtep,
    InterfaceNotVmPort,
    InterfaceShared,
    EntryTooLarge,
    OverCapacity,
    RouteViaReserved,
    RouteViaUnowned,
    RouteViaNic,
    RouteOverlapsSubnet,
    DefaultRouteNotGateway,
    InvalidOption,
    OptionCodeReserved,
    Subnet6NotSlash64,
    Subnet6Scope,
    Dns6Unreachable,
    MtuBelowIpv6Minimum,
    Ip6WithoutSubnet6,
    RaTooLong,
    InvalidVpc,
    VpcOverlap,
    DefaultViaInvalid,
    DefaultViaNotForwarding,
}

impl Reason {
    pub const ALL: [Reason; 43] = [
        Reason::InvalidDocument,
        Reason::InvalidJson,
        Reason::InvalidField,
        Reason::InvalidMac,
        Reason::InvalidAddress,
        Reason::OutsideSubnet,
        Reason::ReservedAddress,
        Reason::DuplicateIp,
        Reason::DuplicateMac,
        Reason::DuplicateId,
        Reason::DuplicateVni,
        Reason::UnknownNetwork,
        Reason::UnknownNode,
        Reason::MissingInterface,
        Reason::MtuOutOfRange,
        Reason::MtuExceedsUnderlay,
        Reason::DuplicateVtep,
        Reason::VniOutOfRange,
        Reason::InvalidLeaseTime,
        Reason::InvalidName,
        Reason::OptionsTooLong,
        Reason::InvalidVtep,
        Reason::InterfaceNotVmPort,
        Reason::InterfaceShared,
        Reason::EntryTooLarge,
        Reason::OverCapacity,
        Reason::RouteViaReserved,
        Reason::RouteViaUnowned,
        Reason::RouteViaNic,
        Reason::RouteOverlapsSubnet,
        Reason::DefaultRouteNotGateway,
        Reason::InvalidOption,
        Reason::OptionCodeReserved,
        Reason::Subnet6NotSlash64,
        Reason::Subnet6Scope,
        Reason::Dns6Unreachable,
        Reason::MtuBelowIpv6Minimum,
        Reason::Ip6WithoutSubnet6,
        Reason::RaTooLong,
        Reason::InvalidVpc,
        Reason::VpcOverlap,
        Reason::DefaultViaInvalid,
        Reason::DefaultViaNotForwarding,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidDocument => "invalid_document",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidMac => "invalid_mac",
            Reason::InvalidAddress => "invalid_address",
            Reason::OutsideSubnet => "outside_subnet",
            Reason::ReservedAddress => "reserved_address",
            Reason::DuplicateIp => "duplicate_ip",
            Reason::DuplicateMac => "duplicate_mac",
            Reason::DuplicateId => "duplicate_id",
            Reason::DuplicateVni => "duplicate_vni",
            Reason::UnknownNetwork => "unknown_network",
            Reason::UnknownNode => "unknown_node",
            Reason::MissingInterface => "missing_interface",
            Reason::MtuOutOfRange => "mtu_out_of_range",
            Reason::MtuExceedsUnderlay => "mtu_exceeds_underlay",
            Reason::DuplicateVtep => "duplicate_vtep",
            Reason::VniOutOfRange => "vni_out_of_range",
            Reason::InvalidLeaseTime => "invalid_lease_time",
            Reason::InvalidName => "invalid_name",
            Reason::OptionsTooLong => "options_too_long",
            Reason::InvalidVtep => "invalid_vtep",
            Reason::InterfaceNotVmPort => "interface_not_vm_port",
            Reason::InterfaceShared => "interface_shared",
            Reason::EntryTooLarge => "entry_too_large",
            Reason::OverCapacity => "over_capacity",
            Reason::RouteViaReserved => "route_via_reserved",
            Reason::RouteViaUnowned => "route_via_unowned",
            Reason::RouteViaNic => "route_via_nic",
            Reason::RouteOverlapsSubnet => "route_overlaps_subnet",
            Reason::DefaultRouteNotGateway => "default_route_not_gateway",
            Reason::InvalidOption => "invalid_option",
            Reason::OptionCodeReserved => "option_code_reserved",
            Reason::Subnet6NotSlash64 => "subnet6_not_64",
            Reason::Subnet6Scope => "subnet6_scope",
            Reason::Dns6Unreachable => "dns6_unreachable",
            Reason::MtuBelowIpv6Minimum => "mtu_below_ipv6_minimum",
            Reason::Ip6WithoutSubnet6 => "ip6_without_subnet6",
            Reason::RaTooLong => "ra_too_long",
            Reason::InvalidVpc => "invalid_vpc",
            Reason::VpcOverlap => "vpc_overlap",
            Reason::DefaultViaInvalid => "default_via_invalid",
            Reason::DefaultViaNotForwarding => "default_via_not_forwarding",
        }
    }
}

/// One rejected entry, with what is wrong in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Where the entry sits in the document, for example `nics[3]`.
    pub entry: String,
    /// The entry's key when it could be read (network id, node name, MAC).
    pub key: Option<String>,
    pub reason: Reason,
    pub detail: String,
    /// Whether the entry's last good version keeps serving in its place.
    pub kept_last_good: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.entry)?;
        if let Some(key) = &self.key {
            write!(f, " ({key})")?;
        }
        write!(f, ": {}: {}", self.reason.label(), self.detail)?;
        if self.kept_last_good {
            write!(f, "; its last good version keeps serving")?;
        }
        Ok(())
    }
}

/// What is wrong with an entry, before it is known where the entry sits.
pub(super) struct Reject {
    pub(super) reason: Reason,
    pub(super) detail: String,
}

pub(super) fn reject(reason: Reason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

impl Reject {
    /// The rejection of the entry at `entry`, keyed `key`.
    pub(super) fn at(self, entry: String, key: Option<String>) -> Rejection {
        Rejection {
            entry,
            key,
            reason: self.reason,
            detail: self.detail,
            kept_last_good: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        assert!(labels.iter().all(|l| {
            l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        // A document a source cannot read at all: the agent counts it under this label.
        assert_eq!(Reason::InvalidDocument.label(), "invalid_document");
    }

    #[test]
    fn a_rejection_reads_entry_key_reason_detail() {
        let mut r = reject(Reason::DuplicateIp, "ip 10.0.0.5 is taken")
            .at("nics[2]".into(), Some("02:00:00:00:00:01".into()));
        assert_eq!(
            r.to_string(),
            "nics[2] (02:00:00:00:00:01): duplicate_ip: ip 10.0.0.5 is taken"
        );
        r.key = None;
        r.kept_last_good = true;
        assert_eq!(
            r.to_string(),
            "nics[2]: duplicate_ip: ip 10.0.0.5 is taken; its last good version keeps serving"
        );
    }
}
