//! IPAM sources: where documents come from. Each source delivers [`Update`]s on a channel; the
//! agent validates and applies them. Sources know nothing of the data plane.

pub mod etcd;
pub mod file;

use std::collections::BTreeSet;

use crate::model::RawDocument;

/// What a source reports.
#[derive(Debug)]
pub enum Update {
    /// A complete document (entries not yet validated).
    Document(RawDocument),
    /// The source could be read but its content is not a document; the last good state stays.
    Invalid(String),
    /// The source cannot be reached or read; the last good state stays.
    Unavailable(String),
    /// The source confirmed that nothing changed: the state serving is IPAM's current one.
    Alive,
    /// Some networks changed: `sub` holds their entries, all their NICs and every node. The
    /// rest of the last document stands.
    Partial {
        networks: BTreeSet<String>,
        sub: RawDocument,
    },
}
