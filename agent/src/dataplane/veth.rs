//! The VM side of a veth pair: the kernel delivers XDP_TX and XDP_REDIRECT frames into a veth
//! only when its peer runs an XDP program, so that peer gets a no-op one, through rtnetlink.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::programs::Xdp;
use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkXdp};

use super::{
    PROGRAM_PASS,
    error::{DataplaneError, NetlinkError},
};

/// The no-op program for the VM side of a veth (see [`attach_veth_peer`]).
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/holdfast-pass"));

/// Attaches the no-op XDP program to `interface` in the current network namespace, through
/// netlink so that it stays attached (without a pin) for as long as the interface exists.
///
/// Needed on the VM side of a veth pair: the kernel delivers XDP_TX and XDP_REDIRECT frames
/// into a veth only when its peer runs an XDP program. A tap needs nothing.
pub async fn attach_veth_peer(interface: &str) -> Result<(), DataplaneError> {
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_PASS)
        .ok_or(DataplaneError::Missing(PROGRAM_PASS))?
        .try_into()?;
    program
        .load()
        .map_err(|source| DataplaneError::LoadProgram {
            name: PROGRAM_PASS,
            source,
        })?;
    let fd = program.fd()?.as_fd().as_raw_fd();

    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    let conn = tokio::spawn(conn);
    let link = handle
        .link()
        .get()
        .match_name(interface.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(NetlinkError::Request)?
        .ok_or_else(|| NetlinkError::NoInterface(interface.to_owned()))?;
    let msg = rtnetlink::LinkUnspec::new_with_index(link.header.index)
        .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(fd), LinkXdp::Flags(0)]))
        .build();
    let result = handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::Request(e).into());
    conn.abort();
    result
}
