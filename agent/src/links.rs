//! The interfaces of this host and their host addresses, from rtnetlink: a dump, then
//! RTM_NEWLINK/RTM_DELLINK as taps come and go with VMs, and RTM_NEWADDR/RTM_DELADDR as
//! addresses do (an interface with a host address is never a VM port).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::{
    Handle,
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK},
    new_connection,
};
use tokio::sync::mpsc;

/// An interface as far as holdfast cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub mtu: u32,
    /// Its host addresses: every IPv4 address, and every IPv6 address but link-local ones,
    /// which the kernel gives every interface that is up (taps included).
    pub addresses: BTreeSet<IpAddr>,
}

/// Interfaces by ifindex.
pub type Links = BTreeMap<u32, LinkInfo>;

#[derive(Debug)]
pub enum LinkEvent {
    /// An interface exists (new, renamed, or its MTU changed). Its `addresses` are empty: a
    /// link message does not carry them.
    Up {
        ifindex: u32,
        info: LinkInfo,
    },
    Gone {
        ifindex: u32,
    },
    /// A host address appeared on an interface (`present`) or left it.
    Address {
        ifindex: u32,
        address: IpAddr,
        present: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("rtnetlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtnetlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

fn info_of(msg: &LinkMessage) -> Option<LinkInfo> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let mtu = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0);
    Some(LinkInfo {
        name,
        mtu,
        addresses: BTreeSet::new(),
    })
}

/// The host address an address message is about, if it is one (see [`LinkInfo::addresses`]).
fn host_address(msg: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on a point-to-point link, where IFA_ADDRESS is
    // the peer's; elsewhere they are equal or only IFA_ADDRESS is set.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(a) => Some(*a),
        _ => None,
    });
    let address = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(a) => Some(*a),
            _ => None,
        })
    })?;
    let link_local_v6 = match address {
        IpAddr::V6(a) => a.is_unicast_link_local() || msg.header.scope == AddressScope::Link,
        IpAddr::V4(_) => false,
    };
    (!link_local_v6).then_some(address)
}

fn address_event(msg: &AddressMessage, present: bool) -> Option<LinkEvent> {
    Some(LinkEvent::Address {
        ifindex: msg.header.index,
        address: host_address(msg)?,
        present,
    })
}

/// Subscribes to link and address changes, then returns a handle for dumps and the event
/// stream. Subscribing first means no change between the dump and the subscription is missed.
pub fn watch() -> Result<(Handle, mpsc::Receiver<LinkEvent>), LinksError> {
    let (mut conn, handle, mut messages) = new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
    ))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    let Some(info) = info_of(&link) else { continue };
                    LinkEvent::Up {
                        ifindex: link.header.index,
                        info,
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    LinkEvent::Gone {
                        ifindex: link.header.index,
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                    let Some(e) = address_event(&a, true) else {
                        continue;
                    };
                    e
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
                    let Some(e) = address_event(&a, false) else {
                        continue;
                    };
                    e
                }
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok((handle, rx))
}

/// All interfaces now, with their host addresses.
pub async fn dump(handle: &Handle) -> Result<Links, LinksError> {
    let mut out = Links::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        if let Some(info) = info_of(&msg) {
            out.insert(msg.header.index, info);
        }
    }
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await? {
        if let Some(a) = host_address(&msg)
            && let Some(l) = out.get_mut(&msg.header.index)
        {
            l.addresses.insert(a);
        }
    }
    Ok(out)
}
