//! An IPAM document as a source delivers it ([`RawDocument`], [`RawEntry`]), and the parsing of
//! one entry, which names what is wrong with it.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Value, error::Category, value::RawValue};
use serde_path_to_error::{Path, Segment};

use super::reasons::{Reason, Reject, reject};

/// The largest entry (one network, node or NIC as JSON) the model takes. A legitimate network
/// is under 3 KiB (its DHCP options must fit 296 bytes, and each byte of them is a few bytes of
/// JSON), a NIC under 1 KiB; the rest leaves room for fields a newer IPAM may add. A bigger one
/// is rejected alone (`entry_too_large`), and sources do not keep its value.
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// An IPAM document as a source delivers it: entries still unparsed, so one bad entry cannot
/// spoil the others. Cloning it is cheap (the entries are shared).
#[derive(Clone, Debug, Default)]
pub struct RawDocument {
    pub networks: Vec<RawEntry>,
    pub nodes: Vec<RawEntry>,
    pub nics: Vec<RawEntry>,
}

/// One entry of a document, as its source holds it: its JSON text, parsed when validated.
#[derive(Clone, Debug)]
pub struct RawEntry {
    /// Where the entry comes from, which `id` completes: for example the directory of an
    /// etcd key, shared by the entries under it. `None` in a document, where its position
    /// names it.
    pub dir: Option<Arc<str>>,
    /// The entry's id as its origin names it (the last part of an etcd key): it still names an
    /// entry whose value is too broken to say its own id, so its last good version can serve.
    pub id: Option<Arc<str>>,
    /// The JSON text; empty when the value was too large to keep.
    pub json: Arc<[u8]>,
    /// The size of a value over [`MAX_ENTRY_BYTES`] (at least this many bytes), which is not
    /// kept.
    pub oversize: Option<usize>,
}

impl RawEntry {
    /// An entry of a document.
    pub(super) fn json(text: &[u8]) -> Self {
        Self {
            dir: None,
            id: None,
            json: Arc::from(text),
            oversize: None,
        }
    }

    /// The entry with id `id` under `dir` (an etcd key), holding `json`, or only its size when
    /// it is over [`MAX_ENTRY_BYTES`].
    pub fn at(dir: Arc<str>, id: Arc<str>, json: &[u8]) -> Self {
        let (json, oversize) = if json.len() > MAX_ENTRY_BYTES {
            (Arc::from(&[][..]), Some(json.len()))
        } else {
            (Arc::from(json), None)
        };
        Self {
            dir: Some(dir),
            id: Some(id),
            json,
            oversize,
        }
    }

    /// An entry under `dir` whose value is at least `size` bytes, known only by its key.
    pub fn oversized(dir: Arc<str>, id: Arc<str>, size: usize) -> Self {
        Self {
            dir: Some(dir),
            id: Some(id),
            json: Arc::from(&[][..]),
            oversize: Some(size.max(MAX_ENTRY_BYTES + 1)),
        }
    }

    /// Where the entry comes from (`dir` and `id`), for example an etcd key.
    pub fn origin(&self) -> Option<String> {
        Some(format!("{}{}", self.dir.as_deref()?, self.id.as_deref()?))
    }

    /// How rejections name the entry: its origin, or its position in `list`.
    pub(super) fn label(&self, list: &str, index: usize) -> String {
        self.origin().unwrap_or_else(|| format!("{list}[{index}]"))
    }

    pub(super) fn parse<T: DeserializeOwned + FieldKinds>(&self) -> Result<T, Reject> {
        let size = self.oversize.unwrap_or(self.json.len());
        if size > MAX_ENTRY_BYTES {
            return Err(reject(
                Reason::EntryTooLarge,
                format!("{size} bytes or more, over the {MAX_ENTRY_BYTES} an entry may take"),
            ));
        }
        parse_entry(&self.json)
    }

    /// The entry's key: the string `field` of its value, else the id its origin gives.
    pub(super) fn key(&self, field: &str) -> Option<String> {
        self.field(field)
            .or_else(|| self.id.as_deref().map(str::to_owned))
    }

    /// The string `field` of the entry, read without parsing the rest (a NIC's network).
    pub fn field(&self, field: &str) -> Option<String> {
        if self.json.len() > MAX_ENTRY_BYTES {
            return None;
        }
        serde_json::from_slice::<Value>(&self.json)
            .ok()?
            .get(field)?
            .as_str()
            .map(str::to_owned)
    }
}

impl<'de> Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Plain {
            networks: Vec<Box<RawValue>>,
            nodes: Vec<Box<RawValue>>,
            nics: Vec<Box<RawValue>>,
        }
        let p = Plain::deserialize(d)?;
        let wrap = |v: Vec<Box<RawValue>>| {
            v.iter()
                .map(|r| RawEntry::json(r.get().as_bytes()))
                .collect()
        };
        Ok(Self {
            networks: wrap(p.networks),
            nodes: wrap(p.nodes),
            nics: wrap(p.nics),
        })
    }
}

/// Parses a whole document. Only a document that is not JSON, or lacks one of the three lists,
/// fails here; entries are checked one by one by [`validate`](super::validate()).
pub fn parse_document(bytes: &[u8]) -> Result<RawDocument, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// One step of the way to a field of an entry: a field by name, or an element of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PathStep<'a> {
    Field(&'a str),
    Index,
}

/// What a string in a field stands for, when a bad one has a reason of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldKind {
    Address,
    Mac,
}

/// Where an entry holds addresses and MACs: a string there that does not parse is rejected as
/// what it should have been (`invalid_address`, `invalid_mac`), anything else wrong as an
/// `invalid_field`.
pub(super) trait FieldKinds {
    /// The kind of the field at `path`, when it is one of those.
    fn kind_at(path: &[PathStep<'_>]) -> Option<FieldKind>;
}

/// Deserializes one entry, naming the field that is wrong.
fn parse_entry<T: DeserializeOwned + FieldKinds>(json: &[u8]) -> Result<T, Reject> {
    // Most entries are good: read as they are first. Following the path copies every field's
    // name (a third of validating 100,000 NICs); a bad entry is read again with it, to say
    // which field is wrong.
    let mut de = serde_json::Deserializer::from_slice(json);
    if let Ok(v) = T::deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if parsed.is_ok()
        && let Err(e) = de.end()
    {
        return Err(reject(Reason::InvalidJson, format!("not JSON: {e}")));
    }
    parsed.map_err(|err| {
        let path = err.path().clone();
        let inner = err.into_inner();
        if matches!(inner.classify(), Category::Syntax | Category::Eof) {
            return reject(Reason::InvalidJson, format!("not JSON: {inner}"));
        }
        let reason = field_reason::<T>(json, &path);
        let path = path.to_string();
        let detail = if path == "." {
            inner.to_string()
        } else {
            format!("field `{path}`: {inner}")
        };
        reject(reason, detail)
    })
}

/// Why the value at `path` of the entry `json` did not deserialize: a string where `T` holds an
/// address or a MAC is not one; anything else (a number there, a bad value elsewhere, a missing
/// field) is an invalid field.
fn field_reason<T: FieldKinds>(json: &[u8], path: &Path) -> Reason {
    let steps: Option<Vec<PathStep<'_>>> = path
        .iter()
        .map(|s| match s {
            Segment::Map { key } => Some(PathStep::Field(key)),
            Segment::Seq { .. } => Some(PathStep::Index),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    let Some(kind) = steps.as_deref().and_then(T::kind_at) else {
        return Reason::InvalidField;
    };
    if !value_at(json, path).is_some_and(|v| v.is_string()) {
        return Reason::InvalidField;
    }
    match kind {
        FieldKind::Address => Reason::InvalidAddress,
        FieldKind::Mac => Reason::InvalidMac,
    }
}

/// The value at `path` of the entry `json`; text after the entry is ignored.
fn value_at(json: &[u8], path: &Path) -> Option<Value> {
    let mut value = Value::deserialize(&mut serde_json::Deserializer::from_slice(json)).ok()?;
    for segment in path {
        value = match segment {
            Segment::Map { key } => value.get_mut(key.as_str())?.take(),
            Segment::Seq { index } => value.get_mut(*index)?.take(),
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Network, Nic, Node};

    fn reason<T: DeserializeOwned + FieldKinds>(json: &str) -> Reason {
        match RawEntry::json(json.as_bytes()).parse::<T>() {
            Ok(_) => panic!("{json} parsed"),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn a_document_without_its_lists_is_invalid() {
        let err = parse_document(br#"{"networks": []}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `nodes`"), "{err}");
        assert!(parse_document(b"{not json").is_err());
    }

    #[test]
    fn a_bad_string_in_an_address_or_mac_field_is_named_for_it() {
        let net = r#""id": "blue", "vni": 1, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1""#;
        for bad in [
            r#"{"id": "blue", "vni": 1, "subnet": "10.0.0.0/33", "gateway": "10.0.0.1"}"#,
            r#"{"id": "blue", "vni": 1, "subnet": "10.0.0.0/24", "gateway": "10.0.0.x"}"#,
            &format!(r#"{{{net}, "dns": ["10.0.0.2", "x"]}}"#),
            &format!(r#"{{{net}, "ntp": ["x"]}}"#),
            &format!(r#"{{{net}, "routes": [{{"to": "10.1.0.0", "via": "10.0.0.3"}}]}}"#),
            &format!(r#"{{{net}, "routes": [{{"to": "10.1.0.0/16", "via": "y"}}]}}"#),
        ] {
            assert_eq!(reason::<Network>(bad), Reason::InvalidAddress, "{bad}");
        }
        assert_eq!(
            reason::<Node>(r#"{"name": "hv-1", "vtep": "198.18.0"}"#),
            Reason::InvalidAddress
        );
        let nic = r#""network": "blue", "node": "hv-1""#;
        assert_eq!(
            reason::<Nic>(&format!(
                r#"{{{nic}, "mac": "02:00:00:00:00:01", "ip": "x"}}"#
            )),
            Reason::InvalidAddress
        );
        assert_eq!(
            reason::<Nic>(&format!(
                r#"{{{nic}, "mac": "02:00:00:00:01", "ip": "10.0.0.5"}}"#
            )),
            Reason::InvalidMac
        );
    }

    #[test]
    fn anything_else_wrong_is_an_invalid_field() {
        let nic = r#""network": "blue", "node": "hv-1""#;
        for bad in [
            // Another type where an address or MAC goes.
            format!(r#"{{{nic}, "mac": "02:00:00:00:00:01", "ip": 5}}"#),
            format!(r#"{{{nic}, "mac": 2, "ip": "10.0.0.5"}}"#),
            // A number where a name goes.
            r#"{"network": "blue", "node": 7, "mac": "02:00:00:00:00:01", "ip": "10.0.0.5"}"#
                .to_owned(),
            // A missing field, a repeated one.
            format!(r#"{{{nic}, "mac": "02:00:00:00:00:01"}}"#),
            format!(r#"{{{nic}, "mac": "02:00:00:00:00:01", "ip": "10.0.0.5", "ip": "10.0.0.6"}}"#),
            // Not an object.
            "5".to_owned(),
        ] {
            assert_eq!(reason::<Nic>(&bad), Reason::InvalidField, "{bad}");
        }
        // A list of addresses that is not a list.
        assert_eq!(
            reason::<Network>(
                r#"{"id": "blue", "vni": 1, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "dns": "10.0.0.2"}"#
            ),
            Reason::InvalidField
        );
    }

    #[test]
    fn the_detail_names_the_field() {
        let r = RawEntry::json(br#"{"name": "hv-1", "vtep": "x"}"#)
            .parse::<Node>()
            .err()
            .unwrap();
        assert!(r.detail.starts_with("field `vtep`: "), "{}", r.detail);
        assert!(
            r.detail.contains("invalid IPv4 address syntax"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn text_that_is_not_json_is_invalid_json() {
        for bad in [
            &b"{broken"[..],
            br#"{"name": "hv-1", "vtep": "198.18.0.1"} x"#,
        ] {
            let r = RawEntry::json(bad).parse::<Node>().err().unwrap();
            assert_eq!(r.reason, Reason::InvalidJson);
            assert!(r.detail.starts_with("not JSON: "), "{}", r.detail);
        }
    }

    #[test]
    fn an_entry_over_the_bound_is_too_large_and_not_kept() {
        let pad = "x".repeat(MAX_ENTRY_BYTES);
        let big = format!(r#"{{"name": "hv-1", "vtep": "198.18.0.1", "pad": "{pad}"}}"#);
        for e in [
            RawEntry::json(big.as_bytes()),
            RawEntry::at("/hf/nodes/".into(), "hv-1".into(), big.as_bytes()),
        ] {
            let r = e.parse::<Node>().err().unwrap();
            assert_eq!(r.reason, Reason::EntryTooLarge);
            assert!(
                r.detail.starts_with(&format!("{} bytes", big.len())),
                "{}",
                r.detail
            );
            assert_eq!(e.field("name"), None);
        }
        let kept = RawEntry::at("/hf/nodes/".into(), "hv-1".into(), big.as_bytes());
        assert!(kept.json.is_empty());
        assert_eq!(kept.key("name").as_deref(), Some("hv-1"));
        // Just under the bound: parsed as usual.
        let pad = "x".repeat(MAX_ENTRY_BYTES - 60);
        let fits = format!(r#"{{"name": "hv-1", "vtep": "198.18.0.1", "pad": "{pad}"}}"#);
        assert!(fits.len() <= MAX_ENTRY_BYTES);
        assert!(RawEntry::json(fits.as_bytes()).parse::<Node>().is_ok());
        let r = RawEntry::oversized("/hf/nodes/".into(), "hv-2".into(), 16 << 20)
            .parse::<Node>()
            .err()
            .unwrap();
        assert_eq!(r.reason, Reason::EntryTooLarge);
    }

    #[test]
    fn an_entry_is_keyed_by_its_field_else_by_its_origin() {
        let mut e = RawEntry::json(br#"{"name": "hv-1"}"#);
        assert_eq!(e.key("name").as_deref(), Some("hv-1"));
        assert_eq!(e.key("vtep"), None);
        e.id = Some("hv-9".into());
        e.dir = Some("/holdfast/nodes/".into());
        assert_eq!(e.key("vtep").as_deref(), Some("hv-9"));
        assert_eq!(e.origin().as_deref(), Some("/holdfast/nodes/hv-9"));
        assert_eq!(e.label("nodes", 3), "/holdfast/nodes/hv-9");
        assert_eq!(RawEntry::json(b"{}").label("nodes", 3), "nodes[3]");
    }
}
