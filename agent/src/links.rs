//! The interfaces of this host, from rtnetlink: a dump, then RTM_NEWLINK/RTM_DELLINK as taps
//! come and go with VMs.

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::{Handle, constants::RTMGRP_LINK, new_connection};
use tokio::sync::mpsc;

/// An interface as far as holdfast cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub mtu: u32,
}

/// Interfaces by ifindex.
pub type Links = BTreeMap<u32, LinkInfo>;

#[derive(Debug)]
pub enum LinkEvent {
    /// An interface exists (new, renamed, or its MTU changed).
    Up {
        ifindex: u32,
        info: LinkInfo,
    },
    Gone {
        ifindex: u32,
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
    Some(LinkInfo { name, mtu })
}

/// Subscribes to link changes, then returns a handle for dumps and the event stream. Subscribing
/// first means no change between the dump and the subscription is missed.
pub fn watch() -> Result<(Handle, mpsc::Receiver<LinkEvent>), LinksError> {
    let (mut conn, handle, mut messages) = new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
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
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok((handle, rx))
}

/// All interfaces now.
pub async fn dump(handle: &Handle) -> Result<Links, LinksError> {
    let mut out = Links::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        if let Some(info) = info_of(&msg) {
            out.insert(msg.header.index, info);
        }
    }
    Ok(out)
}
