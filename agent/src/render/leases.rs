//! The DHCP leases this host serves: its own NICs that name their interface, each with its
//! options rendered.

use agent_common::{Binding, BootEntry, BootVariant};

use super::{boot, options::render};
use crate::model::{MacAddr, Model, Nic};

/// A binding to serve on this host, before its interface is resolved to an ifindex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease<'a> {
    pub interface: &'a str,
    pub mac: MacAddr,
    pub binding: Binding,
    /// Its network boot answers, by variant (none without a boot file).
    pub boot: Vec<(BootVariant, BootEntry)>,
}

/// The leases of `nics` (NICs of `model`) that `node` serves: those on `node` that name their
/// interface.
pub fn served<'a>(
    model: &'a Model,
    node: &'a str,
    nics: impl Iterator<Item = &'a Nic> + 'a,
) -> impl Iterator<Item = Lease<'a>> + 'a {
    nics.filter(move |n| *n.node == *node)
        .filter_map(move |nic| {
            let interface = nic.interface.as_deref()?;
            let net = model.networks.get(&*nic.network)?;
            // Validation rendered it once already (the options budget): this cannot fail.
            let binding = render(net, nic).ok()?;
            Some(Lease {
                interface,
                mac: nic.mac,
                binding,
                boot: boot::render(net, nic),
            })
        })
}
