//! The IPAM model: networks, nodes and NICs, and their validation.
//!
//! A source delivers a [`RawDocument`] (entries still unparsed, so one bad entry cannot spoil
//! the others); [`validate()`] turns it into a [`Model`] and the [`Rejection`]s of the entries it
//! refused; [`revalidate()`] does the same for a few networks against the model serving now.
//! Validation rejects bad entries one by one and never costs what is already served: an entry
//! that fails keeps its last good version (from the previously applied model) when it had one.
//! The model knows nothing of BPF or of where documents come from.
//!
//! - `types`: networks, nodes, NICs, the [`Model`] and the host's [`Limits`] ([`Capacity`],
//!   the VM ports);
//! - `mac`: [`MacAddr`] and its text form;
//! - `options`: the extra DHCP options of a network or NIC ([`DhcpOptions`]) and their rules;
//! - `document`: [`RawDocument`], [`RawEntry`] and the parsing of one entry;
//! - `reasons`: [`Reason`] and [`Rejection`];
//! - `checks`: the rules of one entry on its own;
//! - `capacity`: the model cut to what the data plane holds, whole networks and nodes;
//! - `validate`: the rules between entries, and last good versions;
//! - `routing`: the rules of VPCs and gateway VMs between entries (overlaps, `via`s);
//! - `revalidate`: some networks again, merged into the model serving now;
//! - `coupling`: which networks validation judges together, for a source that revalidates.

mod capacity;
mod checks;
mod coupling;
mod document;
#[cfg(test)]
mod fixtures;
mod mac;
mod options;
mod reasons;
mod revalidate;
mod routing;
mod types;
mod validate;

pub use coupling::{holding_mac, overlapping_in_vpc, sharing_vni};
pub use document::{MAX_ENTRY_BYTES, RawDocument, RawEntry, parse_document};
pub use mac::{MacAddr, MacParseError, MacProblem};
pub use options::{
    CAPPORT_UNRESTRICTED, DhcpOptions, NetbiosNodeType, RawOption, RawValueError, V6ONLY_WAIT_MIN,
};
pub use reasons::{Reason, Rejection};
pub use revalidate::{LocalNics, Revalidated, Serving, revalidate};
pub use types::{Boot, Capacity, Limits, Model, Network, Nic, Node, Route};
pub use validate::{OptionsBudget, Validated, validate};
