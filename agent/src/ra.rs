//! Unsolicited router advertisements (RFC 4861 §6.2.4): the programs answer a VM's router
//! solicitation, but a guest solicits only when its interface comes up, and its default route
//! ends with the router lifetime (9,000 s at most). So this thread advertises each network's
//! router on each VM port with a NIC of it: when the port first has one, and every
//! [`INTERVAL`] after, well inside the lifetime.
//!
//! What an outage does: while the agent runs, with IPAM reachable or not, the advertisements go
//! on from the last good state, so a VM keeps its default route for as long as the host runs.
//! If the agent itself is down longer than the router lifetime (2.5 hours), guests drop the
//! default route through the router (the on-link prefix and their addresses stay: the prefix
//! is advertised with an infinite lifetime); the first advertisement after the agent is back,
//! or the guest's next solicitation (which the programs answer with the agent down), restores
//! it.
//!
//! The thread blocks (a packet socket, sleeps): it is not on the async runtime.

use std::{
    collections::BTreeMap,
    sync::mpsc::{self, RecvTimeoutError},
    time::{Duration, Instant},
};

use agent_common::{RA_MAX, Ra6, csum_fold, csum_partial};
use tracing::{debug, warn};

/// Between two unsolicited advertisements on a port: RFC 4861's default
/// `MaxRtrAdvInterval`, 600 s, against a router lifetime of 9,000 s, so fifteen are missed
/// before a guest's route expires.
pub const INTERVAL: Duration = Duration::from_secs(600);

/// What to advertise on each VM port, by ifindex: the advertisement of the network of its
/// NIC (one per port: several networks on one port advertise the first).
pub type Plan = BTreeMap<u32, Ra6>;

/// The all-nodes group, ff02::1, and its MAC (RFC 2464 §7).
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// The frame of an unsolicited advertisement: from the router's MAC and link-local address to
/// all nodes, hop limit 255, its ICMPv6 checksum complete.
pub fn frame(router_mac: [u8; 6], ra: &Ra6) -> Vec<u8> {
    let len = usize::from(ra.len).min(RA_MAX);
    let src = agent_common::eui64_link_local(router_mac);
    let payload = 4 + len;
    let mut f = Vec::with_capacity(14 + 40 + payload);
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&router_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ALL_NODES);
    f.extend_from_slice(&[134, 0, 0, 0]);
    f.extend_from_slice(&ra.body[..len]);
    // The pseudo header (RFC 8200 §8.1) and the message, in `csum_partial`'s convention.
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&ALL_NODES);
    pseudo.extend_from_slice(&(payload as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let sum = u64::from(csum_partial(&pseudo)) + u64::from(csum_partial(&f[54..]));
    let c = csum_fold(sum);
    f[56..58].copy_from_slice(&c.to_ne_bytes());
    f
}

/// Starts the sender. It takes each new plan from the returned channel: ports new to the
/// plan (or whose advertisement changed) get one at once, every port one each
/// [`INTERVAL`].
pub fn spawn(router_mac: [u8; 6]) -> std::io::Result<mpsc::Sender<Plan>> {
    let (tx, rx) = mpsc::channel::<Plan>();
    std::thread::Builder::new()
        .name("router-adverts".into())
        .spawn(move || run(router_mac, &rx))?;
    Ok(tx)
}

fn run(router_mac: [u8; 6], rx: &mpsc::Receiver<Plan>) {
    let mut plan = Plan::new();
    let mut next = Instant::now() + INTERVAL;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(mut new) => {
                // Only the latest plan counts.
                while let Ok(newer) = rx.try_recv() {
                    new = newer;
                }
                for (ifindex, ra) in &new {
                    if plan.get(ifindex) != Some(ra) {
                        send(*ifindex, &frame(router_mac, ra));
                    }
                }
                plan = new;
            }
            Err(RecvTimeoutError::Timeout) => {
                for (ifindex, ra) in &plan {
                    send(*ifindex, &frame(router_mac, ra));
                }
                next = Instant::now() + INTERVAL;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Sends `frame` out of the interface `ifindex`: to the VM behind it.
fn send(ifindex: u32, frame: &[u8]) {
    // SAFETY: a packet socket for sending only (protocol 0: it receives nothing), closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        warn!(error = %std::io::Error::last_os_error(), "router advertisement: packet socket");
        return;
    }
    // SAFETY: the fd is ours; OwnedFd closes it once.
    let _fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&ALL_NODES_MAC);
    // SAFETY: sending from a valid buffer to a valid sockaddr_ll of the size given.
    let n = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        // A port that went away meanwhile: the next plan drops it.
        debug!(ifindex, error = %std::io::Error::last_os_error(), "router advertisement not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_an_advertisement_to_all_nodes_with_a_right_checksum() {
        let mac = [0x02, 0x68, 0x66, 0, 0, 1];
        let body = [
            64, 0xc0, 0x23, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0x68, 0x66, 0, 0, 1,
        ];
        let mut ra = Ra6 {
            len: body.len() as u16,
            _pad: 0,
            csum: agent_common::csum_partial(&body),
            body: [0; RA_MAX],
        };
        ra.body[..body.len()].copy_from_slice(&body);
        let f = frame(mac, &ra);
        assert_eq!(f.len(), 14 + 40 + 4 + body.len());
        assert_eq!(f[0..6], ALL_NODES_MAC);
        assert_eq!(f[6..12], mac);
        assert_eq!(
            f[22..38],
            [
                0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x66, 0xff, 0xfe, 0, 0, 1
            ]
        );
        assert_eq!(f[38..54], ALL_NODES);
        assert_eq!((f[20], f[21], f[54]), (58, 255, 134));
        assert_eq!(f[58..], body);
        // The checksum over the pseudo header and the message comes out as 0 when right.
        let mut p = Vec::new();
        p.extend_from_slice(&f[22..54]);
        p.extend_from_slice(&((f.len() - 54) as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 58]);
        p.extend_from_slice(&f[54..]);
        let mut sum: u32 = p
            .chunks(2)
            .map(|w| (u32::from(w[0]) << 8) | w.get(1).map_or(0, |b| u32::from(*b)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
