//! The IPAM updates received and not yet applied, in the order they apply.
//!
//! The loop only receives into it (a channel's `recv` is cancel-safe; an update taken inside a
//! `select!` branch future and then dropped is lost for good, because the etcd source clears
//! what it sent). One place applies, oldest first. Coalescing never loses or reorders what
//! applies: a document holds everything the source knew when it sent it, so it supersedes the
//! documents and partial changes queued before it; a partial change after a document applies
//! after it; statuses keep their place.

use std::collections::VecDeque;

use crate::ipam::Update;

#[derive(Debug, Default)]
pub struct Queue(VecDeque<Update>);

impl Queue {
    /// Adds the update received last.
    pub fn push(&mut self, update: Update) {
        if matches!(update, Update::Document(_)) {
            self.0
                .retain(|u| !matches!(u, Update::Document(_) | Update::Partial { .. }));
        }
        self.0.push_back(update);
    }

    /// The oldest update not yet applied.
    pub fn pop(&mut self) -> Option<Update> {
        self.0.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        ipam::SourceError,
        model::{RawDocument, RawEntry},
    };

    /// A document whose one network is `tag`: tells the updates apart.
    fn document(tag: &str) -> Update {
        Update::Document(doc(tag))
    }

    fn doc(tag: &str) -> RawDocument {
        let json = format!(r#"{{"networks":[{{"id":"{tag}"}}],"nodes":[],"nics":[]}}"#);
        crate::model::parse_document(json.as_bytes()).expect("document")
    }

    fn partial(tag: &str) -> Update {
        Update::Partial {
            networks: BTreeSet::from([tag.to_owned()]),
            sub: doc(tag),
        }
    }

    fn unavailable() -> Update {
        Update::Unavailable(SourceError::File {
            path: "ipam.json".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// What each update is, in order: `D:x`, `P:x`, `alive`, `down`.
    fn order(mut q: Queue) -> Vec<String> {
        let tag = |d: &RawDocument| {
            d.networks
                .first()
                .and_then(|e: &RawEntry| e.field("id"))
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        while let Some(u) = q.pop() {
            out.push(match u {
                Update::Document(d) => format!("D:{}", tag(&d)),
                Update::Partial { sub, .. } => format!("P:{}", tag(&sub)),
                Update::Alive => "alive".into(),
                Update::Unavailable(_) => "down".into(),
                Update::Invalid(_) => "invalid".into(),
            });
        }
        out
    }

    fn queue(updates: impl IntoIterator<Item = Update>) -> Queue {
        let mut q = Queue::default();
        for u in updates {
            q.push(u);
        }
        q
    }

    #[test]
    fn a_partial_after_a_document_applies_after_it() {
        // The bug this replaces applied P:2 first, then the older document over it.
        let q = queue([document("1"), partial("2")]);
        assert_eq!(order(q), ["D:1", "P:2"]);
    }

    #[test]
    fn a_document_supersedes_the_documents_and_partials_before_it() {
        let q = queue([
            partial("1"),
            document("2"),
            partial("3"),
            document("4"),
            partial("5"),
        ]);
        assert_eq!(order(q), ["D:4", "P:5"]);
    }

    #[test]
    fn statuses_keep_their_place() {
        let q = queue([
            partial("1"),
            unavailable(),
            Update::Alive,
            document("2"),
            Update::Alive,
            partial("3"),
            unavailable(),
        ]);
        assert_eq!(order(q), ["down", "alive", "D:2", "alive", "P:3", "down"]);
    }

    #[test]
    fn partials_alone_are_never_merged_or_dropped() {
        let q = queue([partial("1"), partial("2"), partial("1")]);
        assert_eq!(order(q), ["P:1", "P:2", "P:1"]);
    }
}
