//! `[underlay] hook = "tc"`: holdfast's VXLAN device in metadata mode (`external`, what Cilium
//! calls collect_md), which the kernel decapsulates VXLAN into, with GRO, as its own VXLAN data
//! path does. It has no address, no bridge and no FDB: holdfast's TC program on its ingress
//! (`holdfast_ul_md`) checks every frame against the maps and delivers it into its VM, or drops
//! it. Single frames (not aggregates) that pass every check are taken earlier, on the
//! underlay's TC ingress (`holdfast_ul_tc`), which spares them the kernel's UDP socket and
//! this device; what they refuse comes here and is refused again, counted.
//!
//! Why: XDP on a device without native XDP costs bulk traffic dearly. A veth underlay with an
//! XDP program makes its peer give up GSO (`veth_fix_features`), so the sender segments every
//! aggregate; generic XDP copies every aggregate GRO built (`netif_receive_generic_xdp`). The
//! kernel's VXLAN socket takes the aggregate whole.
//!
//! The device is created down and goes up only once its program is attached
//! ([`crate::dataplane`]): until then nothing it would decapsulate could reach the host's
//! stack. It is removed when the host goes back to `hook = "xdp"`, once the underlay's XDP
//! program is attached.

use agent_common::VXLAN_PORT;
use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::LinkVxlan;

/// The device's name.
pub const DEVICE: &str = "holdfast-vx";

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("netlink: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink: {DEVICE} vanished")]
    Vanished,
    #[error(
        "{DEVICE} exists but is not a VXLAN device in metadata mode on port {VXLAN_PORT}: \
         remove it (ip link del {DEVICE})"
    )]
    Foreign,
}

/// Finds `DEVICE`: its ifindex and whether it is what holdfast creates.
async fn find(handle: &rtnetlink::Handle) -> Result<Option<(u32, bool)>, DecapError> {
    let found = handle
        .link()
        .get()
        .match_name(DEVICE.to_owned())
        .execute()
        .try_next()
        .await;
    let link = match found {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(None),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let ours = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => {
            let kind = infos
                .iter()
                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
            let data = infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
                _ => None,
            });
            kind && data.is_some_and(|d| {
                d.contains(&InfoVxlan::CollectMetadata(true))
                    && d.contains(&InfoVxlan::Port(VXLAN_PORT))
            })
        }
        _ => false,
    });
    Ok(Some((link.header.index, ours)))
}

/// Creates the device when missing (down, see the module's comment). Returns its ifindex.
pub async fn ensure() -> Result<u32, DecapError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(DecapError::Connect)?;
    let conn = tokio::spawn(conn);
    let result = async {
        match find(&handle).await? {
            Some((ifindex, true)) => return Ok(ifindex),
            Some((_, false)) => return Err(DecapError::Foreign),
            None => {}
        }
        // VNI 0 is not sent: in metadata mode the VNI comes with each frame.
        let msg = LinkVxlan::new(DEVICE, 0)
            .collect_metadata(true)
            .port(VXLAN_PORT)
            .learning(false)
            .build();
        handle.link().add(msg).execute().await?;
        match find(&handle).await? {
            Some((ifindex, true)) => Ok(ifindex),
            Some((_, false)) => Err(DecapError::Foreign),
            None => Err(DecapError::Vanished),
        }
    }
    .await;
    conn.abort();
    result
}

/// Removes the device if it is there and holdfast's. Returns whether it was removed.
pub async fn remove() -> Result<bool, DecapError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(DecapError::Connect)?;
    let conn = tokio::spawn(conn);
    let result = async {
        let Some((ifindex, true)) = find(&handle).await? else {
            return Ok(false);
        };
        handle.link().del(ifindex).execute().await?;
        Ok(true)
    }
    .await;
    conn.abort();
    result
}

/// Sets the device up, from the data-plane thread once its program is attached (an ioctl: no
/// runtime there).
pub fn set_up(name: &str) -> std::io::Result<()> {
    // SAFETY: a plain socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd is ours; OwnedFd closes it once.
    let _fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq naming the interface.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
