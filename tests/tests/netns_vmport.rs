//! A VM port as a hostile VM sees it, end to end: a hypervisor namespace running `holdfast run`,
//! VMs on veth pairs sending hand-made frames from raw sockets.
//!
//! - Frames to the router MAC reach no host socket and are not forwarded by the host, on a host
//!   set up to let them (`ip_forward=1`, `rp_filter=0`, the router MAC on the VM's port).
//! - A port whose XDP program is gone (only TC left) drops what XDP would, for the same reasons,
//!   and hands nothing to the host: ARP, IPv6, VLAN tags, runts, the router MAC, spoofing.
//! - One VM flooding DHCP, ARP and RELEASEs at its maximum rate: another VM still gets its DHCP
//!   answers at once and the agent's runtime stays on time.

use std::{
    net::{Ipv4Addr, UdpSocket},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast_tests::{
    loadgen,
    netns::{Agent, NO_RATE_LIMITS, Netns, Vm, in_netns, mac_str, wait_for},
    packet::{Reply, Request, arp_request, checksum, parse_reply, udp_frame},
    rawsock::RawSocket,
    tap::{RawTap, VnetHdr},
    xdp::{ROUTER_MAC, VmHook},
};

const X: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x11];
const Y: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x12];
const STRANGER: [u8; 6] = [0x02, 0x0c, 0, 0, 0, 0x99];
const X_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
const Y_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 12);
const GW: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// A network behind the hypervisor, which it would route to.
const OUT_HV: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OUT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const PORT: u16 = 7777;

fn ipam(nics: &[([u8; 6], Ipv4Addr, &str)]) -> String {
    let nics: Vec<String> = nics
        .iter()
        .map(|(mac, ip, tap)| {
            format!(
                r#"{{ "mac": "{}", "network": "pn-port", "ip": "{ip}", "node": "hv-1",
                     "interface": "{tap}" }}"#,
                mac_str(*mac)
            )
        })
        .collect();
    format!(
        r#"{{ "networks": [ {{ "id": "pn-port", "vni": 1001, "subnet": "10.10.0.0/24",
                 "gateway": "10.10.0.1", "dns": [], "search": [], "mtu": 1450, "routes": [],
                 "ntp": [], "lease_time": 3600 }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {} ] }}"#,
        nics.join(",")
    )
}

/// A UDP socket bound to `PORT` on every address of the namespace at `ns`.
fn listen(ns: PathBuf) -> UdpSocket {
    in_netns(&ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        s
    })
}

/// Datagrams waiting on `s`, with their sources.
fn received(s: &UdpSocket) -> Vec<std::net::SocketAddr> {
    let mut buf = [0u8; 2048];
    let mut from = Vec::new();
    while let Ok((_, addr)) = s.recv_from(&mut buf) {
        from.push(addr);
    }
    from
}

/// One IPv6 counter of an interface, from `/proc/net/dev_snmp6/<interface>`.
fn snmp6(ns: &Netns, interface: &str, counter: &str) -> u64 {
    let out = ns
        .exec("cat")
        .arg(format!("/proc/net/dev_snmp6/{interface}"))
        .output()
        .expect("snmp6");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(counter)).then(|| w.next()?.parse().ok())?
        })
        .expect(counter)
}

fn udp(src: [u8; 6], dst: [u8; 6], ip_src: Ipv4Addr, ip_dst: Ipv4Addr) -> Vec<u8> {
    udp_frame(src, dst, ip_src, ip_dst, 40000, PORT, b"from a VM", false)
}

/// A hypervisor whose VM port for X carries the router MAC (the gateway's address is the
/// host's, on `lo`), which
/// forwards (`ip_forward=1`, `rp_filter=0`: a Kubernetes node's settings) to a network behind
/// it; VMs X and Y; a UDP listener on the hypervisor, on Y and behind the hypervisor.
struct Lab {
    agent: Agent,
    _x: Vm,
    _y: Vm,
    hv: Netns,
    out: Netns,
    x_sock: RawSocket,
    on_host: UdpSocket,
    on_y: UdpSocket,
    behind: UdpSocket,
}

impl Lab {
    /// The lab, its VM ports on `hook`.
    fn new(hook: VmHook) -> Self {
        let hv = Netns::new("hv");
        let agent = Agent::start_with(
            &hv,
            "hv-1",
            &ipam(&[(X, X_IP, "tap-x"), (Y, Y_IP, "tap-y")]),
            &format!("[vm]\nhook = \"{hook}\"\n"),
        );
        let x = Vm::new(&hv, "tap-x", X);
        let y = Vm::new(&hv, "tap-y", Y);
        y.ns.ip(&["addr", "add", "10.10.0.12/24", "dev", "eth0"]);
        let attached = wait_for(Duration::from_secs(10), || {
            (agent.metric("holdfast_interfaces") == 2.0).then_some(())
        });
        assert!(attached.is_some(), "{}", agent.logs());

        // The host-routed design: the VM's port carries the router MAC, and the gateway's
        // address is the host's. Not on the port itself: a port with a host address is no VM
        // port (it gets no programs), so the address sits on `lo`, and the host's weak-host
        // model delivers it whatever interface a packet arrives on.
        hv.ip(&["link", "set", "tap-x", "address", &mac_str(ROUTER_MAC)]);
        hv.ip(&["addr", "add", "10.10.0.1/32", "dev", "lo"]);
        let out = Netns::new("out");
        hv.ip(&[
            "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", &out.name,
        ]);
        hv.ip(&["addr", "add", "192.168.77.1/24", "dev", "out0"]);
        hv.ip(&["link", "set", "out0", "up"]);
        out.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"]);
        out.ip(&["link", "set", "eth0", "up"]);
        out.ip(&["route", "add", "default", "via", "192.168.77.1"]);
        let sysctl = hv
            .exec("sysctl")
            .args([
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.tap-x.rp_filter=0",
            ])
            .status()
            .expect("sysctl");
        assert!(sysctl.success());

        let lab = Self {
            x_sock: RawSocket::open(&x.ns.path(), "eth0"),
            on_host: listen(hv.path()),
            on_y: listen(y.ns.path()),
            behind: listen(out.path()),
            agent,
            _x: x,
            _y: y,
            hv,
            out,
        };
        lab.listeners_work();
        lab
    }

    /// The listeners receive what the host's stack delivers and forwards: the hypervisor's
    /// from the network behind it, and the network behind from the hypervisor's forwarding.
    fn listeners_work(&self) {
        let ping = self
            .hv
            .exec("ping")
            .args(["-c", "1", "-W", "2", "192.168.77.2"])
            .output()
            .expect("ping");
        assert!(ping.status.success(), "the network behind is not routed");
        in_netns(&self.out.path(), || {
            let s = UdpSocket::bind((OUT_IP, 0)).expect("bind");
            s.send_to(b"hello", (GW, PORT)).expect("send");
        });
        in_netns(&self.hv.path(), || {
            let s = UdpSocket::bind((OUT_HV, 0)).expect("bind");
            s.send_to(b"hello", (OUT_IP, PORT)).expect("send");
        });
        let got = wait_for(Duration::from_secs(2), || {
            let (h, b) = (received(&self.on_host), received(&self.behind));
            (!h.is_empty() && !b.is_empty()).then_some(())
        });
        assert!(got.is_some(), "the listeners do not receive");
    }

    fn counter(&self, stat: Stat) -> u64 {
        self.agent.counters()[stat as usize]
    }

    /// Sends `frame` from X and waits until `stat` counts it.
    fn dropped(&self, what: &str, frame: &[u8], stat: Stat) {
        let before = self.counter(stat);
        self.x_sock.send(frame);
        let seen = wait_for(Duration::from_secs(2), || {
            (self.counter(stat) > before).then_some(())
        });
        assert!(seen.is_some(), "{what}: not counted as {stat:?}");
    }

    /// Nothing X sent reached a socket on the host, behind it, or on Y.
    fn nothing_delivered(&self, what: &str) {
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            received(&self.on_host),
            vec![],
            "{what}: a host socket got it"
        );
        assert_eq!(
            received(&self.behind),
            vec![],
            "{what}: the host forwarded it"
        );
        assert_eq!(received(&self.on_y), vec![], "{what}: Y got it");
    }
}

holdfast_tests::for_each_hook!(router_mac_traffic_reaches_no_host_socket_and_is_not_forwarded);

fn router_mac_traffic_reaches_no_host_socket_and_is_not_forwarded(hook: VmHook) {
    let lab = Lab::new(hook);
    // Routed in the data plane (issue 16): UDP to the gateway is dropped, and the network
    // behind the host is no route of the VM's network, so X gets ICMP net unreachable back;
    // neither reaches the host.
    lab.dropped(
        "to the gateway's address",
        &udp(X, ROUTER_MAC, X_IP, GW),
        Stat::DropToGateway,
    );
    lab.dropped(
        "to the network behind the host",
        &udp(X, ROUTER_MAC, X_IP, OUT_IP),
        Stat::IcmpNetUnreachable,
    );
    lab.nothing_delivered("to the router MAC");
    assert_eq!(
        lab.agent
            .metric("holdfast_drops_total{reason=\"to_gateway\"}"),
        1.0
    );
    assert_eq!(
        lab.agent
            .metric("holdfast_icmp_errors_total{type=\"net_unreachable\"}"),
        1.0
    );
    assert_eq!(lab.agent.metric("holdfast_to_router_total"), 0.0);
}

/// An IPv6 UDP datagram from X to all nodes (ff02::1).
fn ipv6() -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&X);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 17, 64]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11]);
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x9c, 0x40, 0x1e, 0x61, 0, 16, 0, 0]);
    f.extend_from_slice(&[7; 8]);
    f
}

/// `frame` with an 802.1Q tag (VLAN `vid`) after the MACs.
fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// A DHCP reply X got (checked by the independent parser: lengths, both checksums), if any.
fn dhcp_reply_to(sock: &RawSocket) -> Option<Reply> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sock.recv(left) {
            Some(f) if f.len() > 42 && f[12..14] == [0x08, 0x00] && f[36..38] == [0, 68] => {
                return Some(parse_reply(&f).unwrap_or_else(|e| panic!("malformed reply: {e}")));
            }
            Some(_) => {}
            None => return None,
        }
    }
    None
}

/// Whether X got an ARP reply.
fn arp_reply_to_x(sock: &RawSocket) -> bool {
    arp_reply_from(sock).is_some()
}

/// The sender hardware address of an ARP reply X got, if any.
fn arp_reply_from(sock: &RawSocket) -> Option<[u8; 6]> {
    let deadline = Instant::now() + Duration::from_millis(300);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match sock.recv(left) {
            Some(f) if f.len() >= 28 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] => {
                return f[22..28].try_into().ok();
            }
            Some(_) => {}
            None => return None,
        }
    }
    None
}

#[test]
fn a_port_with_only_tc_drops_what_xdp_would_and_hands_nothing_to_the_host() {
    let mut lab = Lab::new(VmHook::Xdp);
    // The agent is gone (the data plane keeps serving from its pins), and so is the XDP link
    // of X's port: its TC program is all that is left there.
    lab.agent.stop();
    let ifindex = lab.hv.ifindex("tap-x");
    let links = lab.agent.bpffs.path().join("links");
    std::fs::remove_file(links.join(format!("vm-{ifindex}"))).expect("unpin the XDP link");
    assert!(links.join(format!("tc-{ifindex}")).exists(), "TC stays");
    let link = lab.hv.query(&["-d", "link", "show", "tap-x"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP still on the port: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    lab.hv.ip(&["neigh", "flush", "dev", "tap-x"]);
    let ip6_in = snmp6(&lab.hv, "tap-x", "Ip6InReceives");
    let ip_in = lab.hv.proc_counter("snmp", "Ip", "InReceives");

    // ARP for the host's own address on the port: the host would answer it.
    lab.dropped("ARP", &arp_request(X, X_IP, GW), Stat::DropArpSkbPath);
    assert!(!arp_reply_to_x(&lab.x_sock), "the host answered ARP");
    let neigh = lab.hv.query(&["neigh", "show", "dev", "tap-x"]);
    assert!(
        !String::from_utf8_lossy(&neigh.stdout).contains("10.10.0.11"),
        "the host learned X from its ARP: {}",
        String::from_utf8_lossy(&neigh.stdout)
    );
    // DHCP: only XDP answers it.
    lab.dropped("DHCP", &Request::discover(X).frame(), Stat::DropDhcpSkbPath);
    hands_nothing_to_the_host(&lab, "a port with only TC", ip6_in, ip_in);
}

/// In tc mode the port carries `holdfast_vm_tc` alone (no XDP at all): it answers ARP and DHCP
/// itself (the host does not), drops the rest of what XDP would, for the same reasons, and
/// hands nothing to the host.
#[test]
fn a_port_in_tc_mode_answers_arp_and_dhcp_and_hands_nothing_to_the_host() {
    let lab = Lab::new(VmHook::Tc);
    let ifindex = lab.hv.ifindex("tap-x");
    let links = lab.agent.bpffs.path().join("links");
    assert!(
        links.join(format!("vmtc-{ifindex}")).exists(),
        "tc mode's link"
    );
    assert!(!links.join(format!("vm-{ifindex}")).exists(), "an XDP link");
    assert!(
        !links.join(format!("tc-{ifindex}")).exists(),
        "xdp mode's skb path"
    );
    let link = lab.hv.query(&["-d", "link", "show", "tap-x"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP on a port in tc mode: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    lab.hv.ip(&["neigh", "flush", "dev", "tap-x"]);
    let ip6_in = snmp6(&lab.hv, "tap-x", "Ip6InReceives");
    let ip_in = lab.hv.proc_counter("snmp", "Ip", "InReceives");

    let before = lab.counter(Stat::ArpReply);
    lab.x_sock.send(&arp_request(X, X_IP, GW));
    assert_eq!(
        arp_reply_from(&lab.x_sock),
        Some(ROUTER_MAC),
        "the gateway's ARP answered with the router MAC"
    );
    assert_eq!(lab.counter(Stat::ArpReply), before + 1);
    let neigh = lab.hv.query(&["neigh", "show", "dev", "tap-x"]);
    assert!(
        !String::from_utf8_lossy(&neigh.stdout).contains("10.10.0.11"),
        "the host learned X from its ARP: {}",
        String::from_utf8_lossy(&neigh.stdout)
    );
    // DHCP: answered on the skb, from the router MAC, with the bound address.
    let before = lab.counter(Stat::DhcpOffer);
    lab.x_sock.send(&Request::discover(X).frame());
    let offer = dhcp_reply_to(&lab.x_sock).expect("no OFFER in tc mode");
    assert_eq!(offer.msg_type(), Some(2));
    assert_eq!(offer.eth_src, ROUTER_MAC);
    assert_eq!(offer.yiaddr, X_IP);
    assert_eq!(lab.counter(Stat::DhcpOffer), before + 1);
    assert_eq!(lab.counter(Stat::DropDhcpSkbPath), 0);
    hands_nothing_to_the_host(&lab, "a port in tc mode", ip6_in, ip_in);
}

/// Lines of the kernel log that report a warning (a `WARN_ON` splat, `skb_checksum_help`'s
/// complaint about a checksum offset): none may come from a VM's input.
fn kernel_warnings() -> usize {
    Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("WARNING") || l.contains("skb_checksum_help"))
                .count()
        })
        .unwrap_or(0)
}

/// The DHCP reply the tap hands its guest after `frame`, written with `hdr`.
fn reply_on_tap(tap: &RawTap, hdr: &VnetHdr, frame: &[u8]) -> Option<(VnetHdr, Vec<u8>)> {
    tap.send(hdr, frame).expect("write to the tap");
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let (h, f) = tap.recv(left)?;
        if f.len() > 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[34..36] == [0, 67] {
            return Some((h, f));
        }
    }
    None
}

/// A guest writes its own virtio-net header, and in tc mode the checksum state it asks for
/// stays on the skb the DHCP reply is written into. A partial checksum where a guest's UDP
/// socket leaves it (a unicast renewal) gets a reply right for either kind of tap: finished by
/// the guest, which the header tells where, or completed by the host before the tap. Hostile
/// headers (a partial checksum past the end of the reply, or over the IP header) cost that
/// guest at most its own replies: no kernel warning, and its next request is answered.
#[test]
fn tc_mode_replies_keep_to_the_checksum_state_of_the_virtio_header() {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(&[(X, X_IP, "tap-v"), (Y, Y_IP, "tap-w")]),
        &format!("{NO_RATE_LIMITS}[vm]\nhook = \"tc\"\n"),
    );
    // X's guest takes partial checksums (TUN_F_CSUM), Y's does not.
    let offloading = RawTap::open(&hv, "tap-v", true);
    let completing = RawTap::open(&hv, "tap-w", false);
    let attached = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_interfaces") == 2.0).then_some(())
    });
    assert!(attached.is_some(), "{}", agent.logs());
    let warnings = kernel_warnings();
    let partial = VnetHdr {
        flags: VnetHdr::NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let honest = |what: &str| {
        let (h, mut f) = reply_on_tap(&offloading, &partial, &Request::discover(X).frame())
            .unwrap_or_else(|| panic!("{what}: X got no reply"));
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (VnetHdr::NEEDS_CSUM, 34, 6),
            "{what}: the reply's checksum is not left to X"
        );
        // What X's virtio-net does: the sum from `csum_start`, the pseudo header's in it.
        let c = checksum(&f[34..]);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        let r = parse_reply(&f).unwrap_or_else(|e| panic!("{what}: X's reply: {e}"));
        assert_eq!(r.yiaddr, X_IP);
        let (h, f) = reply_on_tap(&completing, &partial, &Request::discover(Y).frame())
            .unwrap_or_else(|| panic!("{what}: Y got no reply"));
        assert_eq!(
            h.flags & VnetHdr::NEEDS_CSUM,
            0,
            "{what}: Y takes no partial checksum"
        );
        let r = parse_reply(&f).unwrap_or_else(|e| panic!("{what}: Y's reply: {e}"));
        assert_eq!(r.yiaddr, Y_IP);
    };
    honest("a partial checksum where UDP leaves it");

    let mut padded = Request::discover(X);
    padded.pad_to = 1200;
    let mut padded_y = Request::discover(Y);
    padded_y.pad_to = 1200;
    let mut taken = 0;
    for (start, offset) in [(1100, 0), (1200, 6), (14, 10), (0, 0), (40, 300)] {
        let hdr = VnetHdr {
            flags: VnetHdr::NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        };
        for (tap, frames) in [
            (&offloading, [padded.frame(), Request::discover(X).frame()]),
            (
                &completing,
                [padded_y.frame(), Request::discover(Y).frame()],
            ),
        ] {
            for f in frames {
                // The kernel refuses a header that points outside the frame; what it takes
                // reaches the program.
                if tap.send(&hdr, &f).is_ok() {
                    taken += 1;
                }
            }
        }
    }
    eprintln!("hostile headers taken by the kernel: {taken} of 20");
    assert!(
        taken >= 8,
        "only {taken} hostile headers reached the program"
    );
    thread::sleep(Duration::from_millis(300));
    while offloading.recv(Duration::from_millis(50)).is_some() {}
    while completing.recv(Duration::from_millis(50)).is_some() {}
    honest("after hostile headers");
    assert_eq!(kernel_warnings(), warnings, "the kernel warned");
}

/// What a VM port's TC program drops, for XDP's reasons, and hands to nobody; then a valid
/// frame goes through (on the skb: no XDP ran on any of them).
fn hands_nothing_to_the_host(lab: &Lab, what: &str, ip6_in: u64, ip_in: u64) {
    lab.dropped(
        "IPv6 from a NIC without ip6",
        &ipv6(),
        Stat::DropIpv6NotConfigured,
    );
    // The kernel takes a VLAN tag out of the frame before TC: a priority tag (VLAN 0) would
    // then be delivered to the host as untagged.
    lab.dropped(
        "priority-tagged, to the host",
        &tagged(&udp(X, ROUTER_MAC, X_IP, GW), 0),
        Stat::DropNotIpv4,
    );
    lab.dropped(
        "VLAN-tagged, to Y",
        &tagged(&udp(X, Y, X_IP, Y_IP), 5),
        Stat::DropNotIpv4,
    );
    let runt = udp(X, ROUTER_MAC, X_IP, GW)[..24].to_vec();
    lab.dropped("a runt", &runt, Stat::DropMalformed);
    lab.dropped(
        "to the router MAC",
        &udp(X, ROUTER_MAC, X_IP, GW),
        Stat::DropToGateway,
    );
    lab.dropped(
        "to the router MAC, for the network behind",
        &udp(X, ROUTER_MAC, X_IP, OUT_IP),
        Stat::IcmpNetUnreachable,
    );
    lab.dropped(
        "a spoofed address",
        &udp(X, Y, Ipv4Addr::new(10, 10, 0, 99), Y_IP),
        Stat::DropSpoofedIp,
    );
    lab.dropped(
        "a spoofed MAC",
        &udp(STRANGER, Y, X_IP, Y_IP),
        Stat::DropSpoofedMac,
    );
    lab.nothing_delivered(what);
    assert_eq!(
        snmp6(&lab.hv, "tap-x", "Ip6InReceives"),
        ip6_in,
        "IPv6 reached the host"
    );
    assert_eq!(
        lab.hv.proc_counter("snmp", "Ip", "InReceives"),
        ip_in,
        "IPv4 (the runt, the tagged frames, the router's) reached the host's IP stack"
    );

    // A valid frame still goes through.
    let before = lab.counter(Stat::SkbForwardLocal);
    lab.x_sock.send(&udp(X, Y, X_IP, Y_IP));
    let got = wait_for(Duration::from_secs(2), || {
        let r = received(&lab.on_y);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        got,
        Some(vec![std::net::SocketAddr::from((X_IP, 40000))]),
        "Y did not get X's datagram"
    );
    assert_eq!(lab.counter(Stat::SkbForwardLocal), before + 1);
    assert_eq!(
        lab.counter(Stat::ToSkbPath),
        0,
        "XDP never ran on the frames"
    );
}

const F: [u8; 6] = [0x02, 0x0f, 0, 0, 0, 0x01];
const G: [u8; 6] = [0x02, 0x0f, 0, 0, 0, 0x02];
const F_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 21);
const G_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 22);
const FLOOD_FOR: Duration = Duration::from_secs(6);

/// What one run of the flood measured.
#[derive(Debug)]
struct Flood {
    sent_per_sec: f64,
    /// G's DHCP exchanges during the flood, each a reply's latency (None: unanswered in 1 s).
    latencies: Vec<Option<Duration>>,
    worst_lag: f64,
}

/// VM F floods DHCP DISCOVERs, ARP requests and RELEASEs from one thread at its maximum rate;
/// VM G asks for DHCP four times a second meanwhile, and the runtime lag is sampled.
fn flood(agent: &Agent, f: &Vm, g: &Vm) -> Flood {
    let mut release = Request::new(F, 7);
    release.ciaddr = F_IP;
    release.ip_src = F_IP;
    release.ip_dst = GW;
    release.eth_dst = ROUTER_MAC;
    let frames = vec![
        Request::discover(F).frame(),
        arp_request(F, F_IP, GW),
        release.frame(),
    ];
    let g_sock = RawSocket::open(&g.ns.path(), "eth0");
    let f_ns = f.ns.path();
    let flooder = thread::spawn(move || loadgen::flood(&f_ns, "eth0", &frames, 1, FLOOD_FOR));
    thread::sleep(Duration::from_millis(500));
    let mut latencies = Vec::new();
    let mut worst_lag: f64 = 0.0;
    let mut xid = 0x6000_0000u32;
    let start = Instant::now();
    while start.elapsed() + Duration::from_millis(500) < FLOOD_FOR {
        xid += 1;
        let mut req = Request::discover(G);
        req.xid = xid;
        let t = Instant::now();
        let r = g_sock.exchange(&req, Duration::from_secs(1));
        latencies.push(r.map(|_| t.elapsed()));
        if latencies.len() % 2 == 0 {
            worst_lag = worst_lag.max(agent.metric("holdfast_runtime_lag_seconds"));
        }
        thread::sleep(Duration::from_millis(250));
    }
    let sent = flooder.join().expect("flooder");
    // The gauge is the worst of the last second: the flood's last second included.
    worst_lag = worst_lag.max(agent.metric("holdfast_runtime_lag_seconds"));
    Flood {
        sent_per_sec: sent as f64 / FLOOD_FOR.as_secs_f64(),
        latencies,
        worst_lag,
    }
}

fn flood_lab(extra_config: &str) -> (Netns, Agent, Vm, Vm) {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(&[(F, F_IP, "tap-f"), (G, G_IP, "tap-g")]),
        extra_config,
    );
    let f = Vm::new(&hv, "tap-f", F);
    let g = Vm::new(&hv, "tap-g", G);
    let sock = RawSocket::open(&g.ns.path(), "eth0");
    let served = wait_for(Duration::from_secs(10), || {
        sock.exchange(&Request::discover(G), Duration::from_millis(200))
    });
    assert!(served.is_some(), "{}", agent.logs());
    (hv, agent, f, g)
}

/// Asserts the other VM's answers and the runtime lag, and prints the figures.
fn check(what: &str, r: &Flood) -> (Duration, Duration) {
    let mut answered: Vec<Duration> = r.latencies.iter().flatten().copied().collect();
    answered.sort();
    let unanswered = r.latencies.len() - answered.len();
    let p50 = answered
        .get(answered.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = answered.last().copied().unwrap_or_default();
    eprintln!(
        "{what}: flood {:.0} frames/s; the other VM: {} DHCP exchanges, {unanswered} \
         unanswered, p50 {p50:?}, max {max:?}; runtime lag at most {:.1} ms",
        r.sent_per_sec,
        r.latencies.len(),
        r.worst_lag * 1e3
    );
    assert!(r.latencies.len() >= 10, "{r:?}");
    assert_eq!(unanswered, 0, "the other VM went unanswered: {r:?}");
    assert!(
        p50 < Duration::from_millis(10),
        "the other VM's answers took {p50:?} (median)"
    );
    assert!(r.worst_lag < 0.05, "runtime lag {:.3} s", r.worst_lag);
    (p50, max)
}

#[test]
fn a_flooding_vm_is_limited_and_its_neighbour_still_served() {
    let (_hv, agent, f, g) = flood_lab("");
    let r = flood(&agent, &f, &g);
    check("default limits", &r);
    let c = agent.counters();
    let limited = |s: Stat| c[s as usize];
    eprintln!(
        "  limited: {} DHCP, {} ARP, {} events; answered: {} OFFERs, {} ARP; {} events sent",
        limited(Stat::DropDhcpRateLimited),
        limited(Stat::DropArpRateLimited),
        limited(Stat::DhcpEventsRateLimited),
        limited(Stat::DhcpOffer),
        limited(Stat::ArpReply),
        agent.metric("holdfast_dhcp_events_total{type=\"release\"}"),
    );
    assert!(limited(Stat::DropDhcpRateLimited) > 1000);
    assert!(limited(Stat::DropArpRateLimited) > 1000);
    assert!(limited(Stat::DhcpEventsRateLimited) > 0);
    // Within the limits, not more: bursts plus the rates over the flood (and G's own asking).
    let secs = FLOOD_FOR.as_secs() + 2;
    assert!(limited(Stat::ArpReply) <= 1000 + 200 * secs);
    assert!(limited(Stat::DhcpRelease) + limited(Stat::DhcpDiscover) <= 2 * (40 + 5 * secs));
    // The log has a line for F's first RELEASE, not one per event.
    let lines = agent.logs().matches("DHCP client event ").count();
    assert!(lines <= 2, "{lines} event lines:\n{}", agent.logs());
}

/// The agent's own defence, with the programs' limits off: events reach it at the flood's
/// rate, it drains them in batches and logs a summary, and its runtime stays on time.
#[test]
fn with_the_limits_off_the_agent_drains_a_release_flood_on_time() {
    let (_hv, agent, f, g) = flood_lab(holdfast_tests::netns::NO_RATE_LIMITS);
    let r = flood(&agent, &f, &g);
    check("limits off", &r);
    let events = agent.metric("holdfast_dhcp_events_total{type=\"release\"}");
    let lost = agent.metric("holdfast_dhcp_events_lost_total");
    eprintln!("  {events} events read by the agent, {lost} lost to a full ring");
    assert!(events > 1000.0, "{events} events");
    let lines = agent.logs().matches("DHCP client event ").count();
    assert!(lines <= 2, "{lines} event lines");
    let summarised = wait_for(Duration::from_secs(12), || {
        agent
            .logs()
            .contains("DHCP client events not logged one by one")
            .then_some(())
    });
    assert!(summarised.is_some(), "no summary:\n{}", agent.logs());
}
