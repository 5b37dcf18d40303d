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

/// Interfaces by ifindex.
pub type Links = BTreeMap<u32, String>;

#[derive(Debug)]
pub enum LinkEvent {
    /// An interface exists with this name (new, or renamed).
    Up {
        ifindex: u32,
        name: String,
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

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
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
                    let Some(name) = name_of(&link) else { continue };
                    LinkEvent::Up {
                        ifindex: link.header.index,
                        name,
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
        if let Some(name) = name_of(&msg) {
            out.insert(msg.header.index, name);
        }
    }
    Ok(out)
}
