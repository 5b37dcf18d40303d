//! The next-hop lookup anchor: a device of holdfast's own (dummy, else ifb, else a bridge with
//! no ports) with IPv4 forwarding on.
//!
//! `bpf_fib_lookup` refuses to answer unless IP forwarding is enabled on the device it looks up
//! from (`BPF_FIB_LKUP_RET_FWD_DISABLED`), output lookups included. Enabling forwarding on the
//! underlay or on the VM interfaces would let the host route traffic arriving there. The anchor
//! has no address and carries no traffic, so forwarding on it opens nothing: the XDP program
//! looks next hops up as if forwarding from it, and the kernel's FIB and neighbour table answer
//! as usual.

use futures::TryStreamExt as _;
use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{InfoKind, LinkAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

/// Device kinds that carry no traffic of their own, in order of preference (kernels differ in
/// which they build).
const KINDS: [InfoKind; 3] = [InfoKind::Dummy, InfoKind::Ifb, InfoKind::Bridge];

pub const DEFAULT_NAME: &str = "holdfast0";

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("netlink: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink: {name} vanished")]
    Vanished { name: String },
    /// The task that writes the sysctl file panicked or was cancelled.
    #[error("enabling IPv4 forwarding on {name}: {source}")]
    Join {
        name: String,
        source: tokio::task::JoinError,
    },
    #[error("starting a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("enabling IPv4 forwarding on {name}: {source}")]
    Sysctl {
        name: String,
        source: std::io::Error,
    },
}

/// Creates the anchor when missing and enables forwarding on it. Returns its ifindex.
pub async fn ensure(name: &str) -> Result<u32, AnchorError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(AnchorError::Connect)?;
    let conn = tokio::spawn(conn);
    let find = || async {
        handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
    };
    let ifindex = match find().await {
        Ok(Some(link)) => link.header.index,
        _ => {
            let mut last = None;
            for kind in KINDS {
                let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(kind)
                    .name(name.to_owned())
                    .build();
                match handle.link().add(msg).execute().await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e.into());
            }
            find()
                .await?
                .ok_or_else(|| AnchorError::Vanished {
                    name: name.to_owned(),
                })?
                .header
                .index
        }
    };
    // Forwarding through netlink (CAP_NET_ADMIN is enough; in a container /proc/sys is
    // read-only), else through the sysctl file.
    let mut msg = LinkMessageBuilder::<LinkUnspec>::new()
        .index(ifindex)
        .build();
    msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
        IFLA_AF_SPEC,
        forwarding_on(),
    )));
    let via_netlink = handle.link().set(msg).execute().await;
    conn.abort();
    if let Err(e) = via_netlink {
        tracing::debug!(error = %e, "enabling forwarding through netlink; trying the sysctl file");
        let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
        tokio::task::spawn_blocking(move || std::fs::write(&path, "1"))
            .await
            .map_err(|source| AnchorError::Join {
                name: name.to_owned(),
                source,
            })?
            .map_err(|source| AnchorError::Sysctl {
                name: name.to_owned(),
                source,
            })?;
    }
    Ok(ifindex)
}

const IFLA_AF_SPEC: u16 = 26;
const AF_INET: u16 = 2;
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_FORWARDING: u16 = 1;

/// The `IFLA_AF_SPEC` payload that sets one IPv4 devconf value, forwarding = 1. Built by hand:
/// netlink-packet-route only writes the whole devconf table, which would reset the rest.
fn forwarding_on() -> Vec<u8> {
    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 4 + payload.len();
        let mut out = Vec::with_capacity(len.next_multiple_of(4));
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(len.next_multiple_of(4), 0);
        out
    }
    let value = nla(IPV4_DEVCONF_FORWARDING, &1u32.to_ne_bytes());
    nla(AF_INET, &nla(IFLA_INET_CONF, &value))
}

/// [`ensure`] from a thread without a runtime (tests, tools).
pub fn ensure_blocking(name: &str) -> Result<u32, AnchorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AnchorError::Runtime)?
        .block_on(ensure(name))
}
