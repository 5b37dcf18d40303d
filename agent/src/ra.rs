//! Unsolicited router advertisements (RFC 4861 §6.2.4): the programs answer a VM's router
//! solicitation, but a guest solicits only when its interface comes up, and its default route
//! ends with the router lifetime (9,000 s at most). So this thread advertises each network's
//! router on each VM port with a NIC of it: [`BURST`] times when the port first has one or its
//! advertisement changes, and every [`INTERVAL`] after, well inside the lifetime.
//!
//! Withdrawal: what a port advertised and no longer does (its network lost or changed its
//! `subnet6`, its NIC lost its `ip6`, its resolvers changed) is taken back with lifetime 0
//! ([`ra6::withdrawing`]), [`BURST`] times, in the same messages as the port's advertisement
//! now: the old prefix (whose lifetime is infinite) and, on a port left without IPv6, the
//! default route (router lifetime 0, RFC 4861 §6.2.5) leave the guest at once. What the
//! sender took back stays remembered until it has sent that, so a change undone and redone
//! before anything was sent still withdraws what the guest holds. A port sends at most one
//! message (or one split set) each [`MIN_GAP`]: an IPAM that flips a prefix back and forth
//! costs its VMs one advertisement each 3 s, each saying the latest state.
//!
//! What an outage does: while the agent runs, with IPAM reachable or not, the advertisements go
//! on from the last good state, so a VM keeps its default route for as long as the host runs.
//! If the agent itself is down longer than the router lifetime (2.5 hours), guests drop the
//! default route through the router (the on-link prefix and their addresses stay: the prefix
//! is advertised with an infinite lifetime); the first advertisement after the agent is back,
//! or the guest's next solicitation (which the programs answer with the agent down), restores
//! it. A change made while the agent was down is not withdrawn: a restarted sender knows only
//! what it advertised itself.
//!
//! The thread blocks (a packet socket, sleeps): it is not on the async runtime. The agent
//! hands it plans over a channel and never waits for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::mpsc::{self, RecvTimeoutError},
    time::{Duration, Instant},
};

use agent_common::{RA_MAX, Ra6, csum_fold, csum_partial};
use tracing::{debug, warn};

use crate::{
    model::MacAddr,
    render::ra6::{self, Learned},
};

/// Between two unsolicited advertisements on a port: RFC 4861's default
/// `MaxRtrAdvInterval`, 600 s, against a router lifetime of 9,000 s, so fifteen are missed
/// before a guest's route expires.
pub const INTERVAL: Duration = Duration::from_secs(600);

/// Advertisements sent after a change, and withdrawals of what it took back: RFC 4861 §10's
/// `MAX_INITIAL_RTR_ADVERTISEMENTS` and `MAX_FINAL_RTR_ADVERTISEMENTS`, so that one lost
/// frame loses nothing.
pub const BURST: u8 = 3;

/// The least time between two advertisements on a port (RFC 4861 §10
/// `MIN_DELAY_BETWEEN_RAS`): the pace of a burst, and what bounds a flapping IPAM.
pub const MIN_GAP: Duration = Duration::from_secs(3);

/// What to advertise on each VM port, by ifindex: the advertisement of the network of its
/// NIC (one per port: several networks on one port advertise the first).
pub type Plan = BTreeMap<u32, Ra6>;

/// The plan of VM ports holding `addresses` (ifindex, VNI), in key order: each port advertises
/// the network of its first address that has an advertisement.
pub fn plan(
    addresses: impl IntoIterator<Item = (u32, u32)>,
    advert: impl Fn(u32) -> Option<Ra6>,
) -> Plan {
    let mut plan = Plan::new();
    for (ifindex, vni) in addresses {
        if !plan.contains_key(&ifindex)
            && let Some(ra) = advert(vni)
        {
            plan.insert(ifindex, ra);
        }
    }
    plan
}

/// The all-nodes group, ff02::1, and its MAC (RFC 2464 §7).
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// The body of `ra` in use.
fn body(ra: &Ra6) -> &[u8] {
    &ra.body[..usize::from(ra.len).min(RA_MAX)]
}

/// The frame of an unsolicited advertisement: from the router's MAC and link-local address to
/// all nodes, hop limit 255, its ICMPv6 checksum complete.
pub fn frame(router_mac: [u8; 6], ra: &Ra6) -> Vec<u8> {
    frame_of(router_mac, body(ra))
}

/// The same, of an advertisement body of any length (a withdrawal can pass [`RA_MAX`]).
pub fn frame_of(router_mac: [u8; 6], body: &[u8]) -> Vec<u8> {
    let src = agent_common::eui64_link_local(router_mac);
    let payload = 4 + body.len();
    let mut f = Vec::with_capacity(14 + 40 + payload);
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&router_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ALL_NODES);
    f.extend_from_slice(&[134, 0, 0, 0]);
    f.extend_from_slice(body);
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
/// plan, or whose advertisement changed or went, get a burst at once (as [`MIN_GAP`]
/// allows); every port one each [`INTERVAL`].
pub fn spawn(router_mac: [u8; 6]) -> std::io::Result<mpsc::Sender<Plan>> {
    let (tx, rx) = mpsc::channel::<Plan>();
    std::thread::Builder::new()
        .name("router-adverts".into())
        .spawn(move || run(router_mac, &rx))?;
    Ok(tx)
}

/// One VM port's advertising.
#[derive(Debug)]
struct Port {
    /// What it advertises now; `None` once its NIC or network has no IPv6.
    current: Option<Ra6>,
    /// What its guest may hold: advertised with a lifetime (by this sender, or by the
    /// programs' answers to its solicitations) and not yet withdrawn [`BURST`] times.
    held: BTreeSet<Learned>,
    /// What is taken back, with the withdrawals left to send.
    gone: BTreeMap<Learned, u8>,
    /// Advertisements left of the burst after a change.
    burst: u8,
    /// When it sends next.
    due: Instant,
    /// When it last sent.
    last: Option<Instant>,
}

impl Port {
    fn new(now: Instant) -> Self {
        Self {
            current: None,
            held: BTreeSet::new(),
            gone: BTreeMap::new(),
            burst: 0,
            due: now,
            last: None,
        }
    }

    /// The port is to advertise `next` from now on.
    fn change(&mut self, next: Option<Ra6>, now: Instant) {
        if self.current == next {
            return;
        }
        let keep = next
            .as_ref()
            .map(|ra| ra6::learned(body(ra)))
            .unwrap_or_default();
        for item in self.held.difference(&keep) {
            self.gone.insert(item.clone(), BURST);
        }
        self.gone.retain(|item, _| !keep.contains(item));
        // Held from now on, sent or not: the programs answer a solicitation with the same
        // advertisement as soon as the map holds it.
        self.held.extend(keep);
        self.current = next;
        self.burst = if self.current.is_some() { BURST } else { 0 };
        self.due = self.last.map_or(now, |last| (last + MIN_GAP).max(now));
    }

    /// Whether it has nothing left to send, ever.
    fn idle(&self) -> bool {
        self.current.is_none() && self.gone.is_empty()
    }

    /// The messages to send now; marks them sent and says when the next is due.
    fn send(&mut self, router_mac: MacAddr, now: Instant) -> Vec<Vec<u8>> {
        let gone: BTreeSet<Learned> = self.gone.keys().cloned().collect();
        let bodies = ra6::withdrawing(self.current.as_ref().map(body), &gone, router_mac);
        let held = &mut self.held;
        self.gone.retain(|item, left| {
            *left = left.saturating_sub(1);
            if *left == 0 {
                held.remove(item);
            }
            *left > 0
        });
        self.burst = self.burst.saturating_sub(1);
        self.last = Some(now);
        self.due = now
            + if self.burst > 0 || !self.gone.is_empty() {
                MIN_GAP
            } else {
                INTERVAL
            };
        bodies
    }
}

/// Every port's advertising, moved by plans and by time. No I/O: [`run`] sends what it says.
#[derive(Debug, Default)]
struct Sender {
    ports: BTreeMap<u32, Port>,
}

impl Sender {
    /// Takes a new plan: each port it changes (added, changed, gone) is due as soon as
    /// [`MIN_GAP`] allows.
    fn plan(&mut self, plan: &Plan, now: Instant) {
        for (ifindex, ra) in plan {
            self.ports
                .entry(*ifindex)
                .or_insert_with(|| Port::new(now))
                .change(Some(*ra), now);
        }
        for (ifindex, port) in &mut self.ports {
            if !plan.contains_key(ifindex) {
                port.change(None, now);
            }
        }
        self.ports.retain(|_, p| !p.idle());
    }

    /// When the next port is due.
    fn next_due(&self) -> Option<Instant> {
        self.ports.values().map(|p| p.due).min()
    }

    /// The messages of every port due by `now`, by ifindex.
    fn due(&mut self, router_mac: MacAddr, now: Instant) -> Vec<(u32, Vec<Vec<u8>>)> {
        let mut out = Vec::new();
        for (ifindex, port) in &mut self.ports {
            if port.due <= now {
                out.push((*ifindex, port.send(router_mac, now)));
            }
        }
        self.ports.retain(|_, p| !p.idle());
        out
    }
}

fn run(router_mac: [u8; 6], rx: &mpsc::Receiver<Plan>) {
    let mut sender = Sender::default();
    loop {
        let now = Instant::now();
        for (ifindex, bodies) in sender.due(MacAddr(router_mac), now) {
            for b in bodies {
                send(ifindex, &frame_of(router_mac, &b));
            }
        }
        let wait = sender.next_due().map_or(INTERVAL, |due| {
            due.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(new) => {
                // Each plan in order, none skipped: what an intermediate one advertised (the
                // maps held it, the programs may have answered a solicitation with it) is
                // withdrawn too. A plan only moves state; what is sent waits for the gap.
                let now = Instant::now();
                sender.plan(&new, now);
                while let Ok(newer) = rx.try_recv() {
                    sender.plan(&newer, now);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
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

    const ROUTER: MacAddr = MacAddr([0x02, 0x68, 0x66, 0, 0, 1]);

    fn advert(subnet6: Option<&str>, dns6: &[&str]) -> Option<Ra6> {
        let net: crate::model::Network = serde_json::from_value(serde_json::json!({
            "id": "blue", "vni": 1001, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
            "subnet6": subnet6, "dns6": dns6}))
        .unwrap();
        ra6::render(&net, ROUTER)
    }

    fn a() -> Ra6 {
        advert(Some("fd00:a::/64"), &["fd00:a::53"]).unwrap()
    }

    fn b() -> Ra6 {
        advert(Some("fd00:b::/64"), &["fd00:a::53"]).unwrap()
    }

    fn prefix(s: &str) -> Learned {
        Learned::Prefix(s.parse::<std::net::Ipv6Addr>().unwrap().octets(), 64)
    }

    /// What one message says: its router lifetime, and what it gives and takes back.
    fn read(msg: &[u8]) -> (u16, BTreeSet<Learned>, BTreeSet<Learned>) {
        let given = ra6::learned(msg);
        // The same message with every lifetime read as given: what it names at all.
        let mut all = msg.to_vec();
        all[2] = 1;
        let mut at = 12;
        while at < all.len() {
            let len = usize::from(all[at + 1]) * 8;
            match all[at] {
                3 => all[at + 4..at + 8].copy_from_slice(&[0, 0, 0, 1]),
                25 | 31 => all[at + 4..at + 8].copy_from_slice(&[0, 0, 0, 1]),
                _ => {}
            }
            at += len;
        }
        let mut named = ra6::learned(&all);
        named.remove(&Learned::Router);
        let taken = named.difference(&given).cloned().collect();
        (u16::from_be_bytes([msg[2], msg[3]]), given, taken)
    }

    fn plan(entries: &[(u32, Ra6)]) -> Plan {
        entries.iter().copied().collect()
    }

    #[test]
    fn a_new_port_gets_a_burst_of_three_then_one_each_interval() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.plan(&plan(&[(7, a())]), t0);
        assert_eq!(s.next_due(), Some(t0));
        for k in 0..u32::from(BURST) {
            let at = t0 + MIN_GAP * k;
            assert_eq!(s.next_due(), Some(at));
            let out = s.due(ROUTER, at);
            assert_eq!(out, [(7, vec![body(&a()).to_vec()])]);
        }
        let last = t0 + MIN_GAP * 2;
        assert_eq!(s.next_due(), Some(last + INTERVAL));
        // Nothing is due before then; an unchanged plan changes nothing.
        assert!(s.due(ROUTER, last + MIN_GAP).is_empty());
        s.plan(&plan(&[(7, a())]), last + MIN_GAP);
        assert_eq!(s.next_due(), Some(last + INTERVAL));
    }

    #[test]
    fn a_port_left_without_ipv6_withdraws_router_prefix_and_resolvers_three_times() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.plan(&plan(&[(7, a()), (8, a())]), t0);
        s.due(ROUTER, t0);
        // Port 7's NIC loses its ip6, 1 s later: due when MIN_GAP after the last send allows.
        let t1 = t0 + Duration::from_secs(1);
        s.plan(&plan(&[(8, a())]), t1);
        assert_eq!(s.next_due(), Some(t0 + MIN_GAP));
        let mut sent = 0;
        while let Some(at) = s.next_due().filter(|d| *d < t0 + Duration::from_secs(60)) {
            for (ifindex, msgs) in s.due(ROUTER, at) {
                if ifindex != 7 {
                    continue;
                }
                sent += 1;
                assert_eq!(msgs.len(), 1);
                let (lifetime, given, taken) = read(&msgs[0]);
                assert_eq!(lifetime, 0, "router lifetime 0");
                assert!(given.is_empty(), "{given:?}");
                let resolver =
                    Learned::Resolver("fd00:a::53".parse::<std::net::Ipv6Addr>().unwrap().octets());
                assert_eq!(taken, BTreeSet::from([prefix("fd00:a::"), resolver]));
            }
        }
        assert_eq!(sent, BURST, "the final advertisements");
        // Then the port is forgotten; port 8 goes on.
        assert_eq!(s.ports.keys().copied().collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn a_changed_prefix_is_withdrawn_in_the_messages_that_give_the_new_one() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.plan(&plan(&[(7, a())]), t0);
        s.due(ROUTER, t0);
        let t1 = t0 + Duration::from_secs(10);
        s.plan(&plan(&[(7, b())]), t1);
        for k in 0..u32::from(BURST) {
            let out = s.due(ROUTER, t1 + MIN_GAP * k);
            assert_eq!(out.len(), 1);
            let (lifetime, given, taken) = read(&out[0].1[0]);
            assert_eq!(lifetime, ra6::ROUTER_LIFETIME, "the router stays");
            assert!(given.contains(&prefix("fd00:b::")), "{given:?}");
            // The resolver is the same: not taken back.
            assert_eq!(taken, BTreeSet::from([prefix("fd00:a::")]));
        }
        let out = s.due(ROUTER, t1 + INTERVAL * 2);
        assert_eq!(
            out,
            [(7, vec![body(&b()).to_vec()])],
            "withdrawn three times, then not"
        );
    }

    #[test]
    fn a_change_undone_before_it_was_sent_still_withdraws_what_the_guest_may_hold() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.plan(&plan(&[(7, a())]), t0);
        s.due(ROUTER, t0);
        // A -> B -> A -> B inside one gap: nothing sent meanwhile.
        for (i, ra) in [b(), a(), b()].into_iter().enumerate() {
            s.plan(
                &plan(&[(7, ra)]),
                t0 + Duration::from_millis(100 * (i as u64 + 1)),
            );
        }
        let out = s.due(ROUTER, t0 + MIN_GAP);
        let (_, given, taken) = read(&out[0].1[0]);
        assert!(given.contains(&prefix("fd00:b::")));
        assert_eq!(taken, BTreeSet::from([prefix("fd00:a::")]));
        // And back to A: B, which the programs may have answered a solicitation with, goes.
        s.plan(&plan(&[(7, a())]), t0 + MIN_GAP);
        let out = s.due(ROUTER, t0 + MIN_GAP * 2);
        let (_, given, taken) = read(&out[0].1[0]);
        assert!(given.contains(&prefix("fd00:a::")));
        assert_eq!(taken, BTreeSet::from([prefix("fd00:b::")]));
    }

    #[test]
    fn a_flapping_plan_costs_a_port_one_advertisement_per_gap() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        let mut sent = 0;
        // 10 s of a plan flipping every 10 ms.
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(10 * u64::from(i));
            s.plan(&plan(&[(7, if i % 2 == 0 { a() } else { b() })]), now);
            sent += s.due(ROUTER, now).len();
        }
        assert!(sent <= 4, "{sent} advertisements in 10 s");
        // Its end: the last state given, the other prefix taken back.
        let end = t0 + Duration::from_secs(11);
        s.plan(&plan(&[(7, a())]), end);
        let mut last = None;
        while let Some(at) = s.next_due().filter(|d| *d < end + Duration::from_secs(60)) {
            if let Some((_, msgs)) = s.due(ROUTER, at).pop() {
                last = Some(read(&msgs[0]));
            }
        }
        let (_, given, taken) = last.unwrap();
        assert!(given.contains(&prefix("fd00:a::")));
        assert!(!given.contains(&prefix("fd00:b::")));
        assert_eq!(taken, BTreeSet::from([prefix("fd00:b::")]));
        assert_eq!(
            s.ports[&7].held,
            ra6::learned(body(&a())),
            "nothing else held"
        );
    }
}
