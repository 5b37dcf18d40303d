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
use netlink_packet_route::link::InfoKind;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

/// Device kinds that carry no traffic of their own, in order of preference (kernels differ in
/// which they build).
const KINDS: [InfoKind; 3] = [InfoKind::Dummy, InfoKind::Ifb, InfoKind::Bridge];

pub const DEFAULT_NAME: &str = "holdfast0";

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("enabling IPv4 forwarding on {name}: {source}")]
    Sysctl {
        name: String,
        source: std::io::Error,
    },
}

/// Creates the anchor when missing and enables forwarding on it. Returns its ifindex.
pub async fn ensure(name: &str) -> Result<u32, AnchorError> {
    let nl = |e: rtnetlink::Error| AnchorError::Netlink(e.to_string());
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| AnchorError::Netlink(e.to_string()))?;
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
                return Err(nl(e));
            }
            find()
                .await
                .map_err(nl)?
                .ok_or_else(|| AnchorError::Netlink(format!("{name} vanished")))?
                .header
                .index
        }
    };
    conn.abort();
    let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || std::fs::write(&path, "1"))
        .await
        .map_err(|e| AnchorError::Netlink(e.to_string()))?
        .map_err(|source| AnchorError::Sysctl {
            name: owned,
            source,
        })?;
    Ok(ifindex)
}

/// [`ensure`] from a thread without a runtime (tests, tools).
pub fn ensure_blocking(name: &str) -> Result<u32, AnchorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AnchorError::Netlink(e.to_string()))?
        .block_on(ensure(name))
}
