//! The etcd key schema: where each kind of entry lives under the configured prefix, and what
//! may be part of a key.

use super::{EtcdError, KeyError};
use crate::model::MacAddr;

/// Where each kind of entry lives.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn networks(&self) -> String {
        format!("{}/networks/", self.prefix)
    }

    pub fn network(&self, id: &str) -> String {
        format!("{}{id}", self.networks())
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    pub fn nics(&self) -> String {
        format!("{}/nics/", self.prefix)
    }

    pub fn nic(&self, mac: MacAddr) -> String {
        format!("{}{mac}", self.nics())
    }

    pub fn by_nodes(&self) -> String {
        format!("{}/by-node/", self.prefix)
    }

    pub fn by_node(&self, node: &str) -> String {
        format!("{}{node}/", self.by_nodes())
    }

    pub fn by_networks(&self) -> String {
        format!("{}/by-network/", self.prefix)
    }

    pub fn by_network(&self, network: &str) -> String {
        format!("{}{network}/", self.by_networks())
    }

    /// Address conflicts agents report, for the central IPAM to watch (`P/conflicts/<mac>`).
    pub fn conflicts(&self) -> String {
        format!("{}/conflicts/", self.prefix)
    }

    pub fn conflict(&self, mac: MacAddr) -> String {
        format!("{}{mac}", self.conflicts())
    }

    /// A NIC's key in its node's index.
    pub(super) fn node_nic(&self, node: &str, mac: MacAddr) -> String {
        format!("{}{mac}", self.by_node(node))
    }

    /// A NIC's key in its network's index.
    pub(super) fn network_nic(&self, network: &str, mac: MacAddr) -> String {
        format!("{}{mac}", self.by_network(network))
    }

    /// The keys holding one NIC.
    pub(super) fn nic_keys(&self, mac: MacAddr, node: &str, network: &str) -> [String; 3] {
        [
            self.nic(mac),
            self.node_nic(node, mac),
            self.network_nic(network, mac),
        ]
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's `--prefix`).
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A name that can sit in a key: no separators, nothing empty.
pub(super) fn key_safe(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// Whether an entry's own `name` can be part of its `key`.
pub(super) fn check_key(key: &str, name: &str) -> Result<(), EtcdError> {
    if key_safe(name) {
        Ok(())
    } else {
        Err(EtcdError::Key {
            key: key.to_owned(),
            error: KeyError::Name {
                name: name.to_owned(),
            },
        })
    }
}

/// The value written at `key`: the entry's JSON.
pub(super) fn json_at(key: &str, entry: &impl serde::Serialize) -> Result<Vec<u8>, EtcdError> {
    serde_json::to_vec(entry).map_err(|e| EtcdError::Key {
        key: key.to_owned(),
        error: KeyError::Json(e),
    })
}

/// A key's directory (up to its last `/`, included) and its id (after it).
pub(super) fn split_key(key: &str) -> (&str, &str) {
    match key.rfind('/') {
        Some(i) => key.split_at(i + 1),
        None => ("", key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/holdfast/nics/"), b"/holdfast/nics0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn layout() {
        let l = Layout::new("/hf/");
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            l.nic_keys(mac, "hv-1", "blue"),
            [
                "/hf/nics/02:00:00:00:00:01".to_owned(),
                "/hf/by-node/hv-1/02:00:00:00:00:01".to_owned(),
                "/hf/by-network/blue/02:00:00:00:00:01".to_owned(),
            ]
        );
    }
}
