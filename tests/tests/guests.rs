//! Real guests against holdfast: a VM under QEMU with virtio-net on a real tap, booting
//! Debian's cloud kernel, systemd-networkd and NetworkManager get their leases in both modes
//! (`xdp::` and `tc::`); systemd-networkd and NetworkManager renumbered by IPAM, and renewing
//! through a gateway change (both modes); QEMU's iPXE ROM booting from the network.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast_tests::{
    guest::{
        networkd::Networkd,
        nm::{NetworkManager, dhcp_connection},
        qemu::{Boot, GuestNic, QemuVm},
        tftp::Tftp,
    },
    netns::{Agent, Netns, Vm, mac_str, wait_for},
    xdp::VmHook,
};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
const MAC_ND: [u8; 6] = [0x02, 0, 0, 0, 0, 0x52];
const MAC_NM: [u8; 6] = [0x02, 0, 0, 0, 0, 0x53];

fn ipam(lease_time: u32) -> String {
    format!(
        r#"{{ "networks": [ {{ "id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24",
                 "gateway": "10.10.0.1", "dns": ["10.10.0.2"], "domain": "blue.internal",
                 "search": ["blue.internal.", "corp.example"],
                 "mtu": 1450, "routes": [ {{ "to": "172.16.0.0/12", "via": "10.10.0.1" }} ],
                 "lease_time": {lease_time} }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {{ "mac": "{}", "network": "pn-blue", "ip": "10.10.0.51",
                          "hostname": "vm-q1", "node": "hv-1", "interface": "tap-q1" }},
                       {{ "mac": "{}", "network": "pn-blue", "ip": "10.10.0.52",
                          "hostname": "vm-n1", "node": "hv-1", "interface": "tap-n1" }},
                       {{ "mac": "{}", "network": "pn-blue", "ip": "10.10.0.53",
                          "hostname": "vm-m1", "node": "hv-1", "interface": "tap-m1" }} ] }}"#,
        mac_str(MAC),
        mac_str(MAC_ND),
        mac_str(MAC_NM)
    )
}

fn a_qemu_vm_on_a_tap_gets_its_lease(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(3600),
        &format!("[vm]\nhook = \"{hook}\"\n"),
    );
    let mut vm = QemuVm::boot(
        &hv,
        &[GuestNic {
            tap: "tap-q1".into(),
            mac: MAC,
        }],
        Boot::Kernel,
    );
    let out = vm.sh_ok(
        "udhcpc -i eth0 -s /bin/udhcpc.sh -q -n -t 10 -T 2",
        Duration::from_secs(60),
    );
    assert!(out.contains("UDHCPC bound"), "{out}\n{}", agent.logs());
    let addr = vm.sh_ok("ip -4 addr show eth0", Duration::from_secs(10));
    assert!(addr.contains("10.10.0.51/24"), "{addr}");
}

const NETWORK: &str = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nUseHostname=no\n";

fn systemd_networkd_gets_and_applies_its_lease(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(3600),
        &format!("[vm]\nhook = \"{hook}\"\n"),
    );
    let vm = Vm::new(&hv, "tap-n1", MAC_ND);
    let nd = Networkd::start(&vm.ns, &[("50-eth0.network", NETWORK)]);
    let ifindex = vm.ns.ifindex("eth0");
    let lease = nd
        .wait_lease(ifindex, Duration::from_secs(60), |l| {
            l.contains_key("ADDRESS")
        })
        .unwrap_or_else(|| panic!("no lease:\n{}\n{}", nd.logs(), agent.logs()));
    for (key, want) in [
        ("ADDRESS", "10.10.0.52"),
        ("NETMASK", "255.255.255.0"),
        ("SERVER_ADDRESS", "10.10.0.1"),
        ("DNS", "10.10.0.2"),
        ("DOMAINNAME", "blue.internal"),
        // Option 119, its trailing dot dropped on the wire.
        ("DOMAIN_SEARCH_LIST", "blue.internal corp.example"),
        ("ROUTER", "10.10.0.1"),
        ("HOSTNAME", "vm-n1"),
        ("MTU", "1450"),
    ] {
        assert_eq!(
            lease.get(key).map(String::as_str),
            Some(want),
            "{key}: {lease:?}"
        );
    }
    let routes = lease.get("CLASSLESS_ROUTES").cloned().unwrap_or_default();
    assert!(routes.contains("172.16.0.0/12,10.10.0.1"), "{lease:?}");
    let (addr, prefix) = vm
        .wait_address(Duration::from_secs(10))
        .expect("networkd configured no address");
    assert_eq!((addr.to_string(), prefix), ("10.10.0.52".to_owned(), 24));
}

fn network_manager_gets_and_applies_its_lease(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(3600),
        &format!("[vm]\nhook = \"{hook}\"\n"),
    );
    let vm = Vm::new(&hv, "tap-m1", MAC_NM);
    let nm = NetworkManager::start(
        &vm.ns,
        &[("eth0.nmconnection", &dhcp_connection("eth0", ""))],
    );
    let options = nm
        .wait_dhcp4("eth0", Duration::from_secs(90), |o| {
            o.contains_key("ip_address")
        })
        .unwrap_or_else(|| panic!("no lease:\n{}\n{}", nm.logs(), agent.logs()));
    for (key, want) in [
        ("ip_address", "10.10.0.53"),
        ("subnet_mask", "255.255.255.0"),
        ("dhcp_server_identifier", "10.10.0.1"),
        ("domain_name_servers", "10.10.0.2"),
        ("domain_name", "blue.internal"),
        ("domain_search", "blue.internal corp.example"),
        ("routers", "10.10.0.1"),
        ("host_name", "vm-m1"),
        ("interface_mtu", "1450"),
        ("dhcp_lease_time", "3600"),
    ] {
        assert_eq!(
            options.get(key).map(String::as_str),
            Some(want),
            "{key}: {options:?}"
        );
    }
    let routes = options
        .get("rfc3442_classless_static_routes")
        .cloned()
        .unwrap_or_default();
    assert!(routes.contains("172.16.0.0/12 10.10.0.1"), "{options:?}");
    let (addr, prefix) = vm
        .wait_address(Duration::from_secs(10))
        .expect("NetworkManager configured no address");
    assert_eq!((addr.to_string(), prefix), ("10.10.0.53".to_owned(), 24));
}

const MAC_X0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x61];
const MAC_X1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x62];
const MAC_PEER_BLUE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x63];
const MAC_PEER_GREEN: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];

/// Two networks; green's NICs get no default route. One VM with a NIC in each, and a peer VM
/// in each.
fn two_networks() -> String {
    format!(
        r#"{{ "networks": [
               {{ "id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                  "routes": [ {{ "to": "172.16.0.0/12", "via": "10.10.0.1" }} ] }},
               {{ "id": "pn-green", "vni": 1002, "subnet": "10.20.0.0/24", "gateway": "10.20.0.1",
                  "default_route": false,
                  "routes": [ {{ "to": "172.20.0.0/16", "via": "10.20.0.1" }} ] }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {{ "mac": "{}", "network": "pn-blue", "ip": "10.10.0.61", "node": "hv-1",
                          "interface": "tap-x0" }},
                       {{ "mac": "{}", "network": "pn-green", "ip": "10.20.0.61", "node": "hv-1",
                          "interface": "tap-x1" }},
                       {{ "mac": "{}", "network": "pn-blue", "ip": "10.10.0.62", "node": "hv-1",
                          "interface": "tap-pb" }},
                       {{ "mac": "{}", "network": "pn-green", "ip": "10.20.0.62", "node": "hv-1",
                          "interface": "tap-pg" }} ] }}"#,
        mac_str(MAC_X0),
        mac_str(MAC_X1),
        mac_str(MAC_PEER_BLUE),
        mac_str(MAC_PEER_GREEN)
    )
}

const BOTH: &str = "[Match]\nName=eth*\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nUseHostname=no\n";

/// The two-network IPAM running, a VM with `eth0` in blue and `eth1` in green, and a peer VM
/// (with its address) in each network. Fields drop in order: the VMs, the agent, then the
/// hypervisor's namespace.
struct TwoNetworks {
    peers: [Vm; 2],
    vm: Vm,
    agent: Agent,
    _hv: Netns,
}

impl TwoNetworks {
    fn new() -> Self {
        let hv = Netns::new("hv");
        let agent = Agent::start(&hv, "hv-1", &two_networks());
        let vm = Vm::new(&hv, "tap-x0", MAC_X0);
        vm.add_nic(&hv, "tap-x1", MAC_X1, "eth1");
        let peers = [
            Vm::new(&hv, "tap-pb", MAC_PEER_BLUE),
            Vm::new(&hv, "tap-pg", MAC_PEER_GREEN),
        ];
        for (peer, addr) in peers.iter().zip(["10.10.0.62/24", "10.20.0.62/24"]) {
            peer.ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        }
        Self {
            peers,
            vm,
            agent,
            _hv: hv,
        }
    }

    /// The VM ends with one default route, via blue's gateway on eth0, and green's classless
    /// route on eth1; each network's peer and the VM reach each other (a reply leaving by the
    /// other NIC would be dropped as spoofed). `logs` is the client's, for a failure.
    fn assert_one_default_route(&self, logs: impl Fn() -> String) {
        let vm = &self.vm;
        let routes = wait_for(Duration::from_secs(20), || {
            let r = vm.routes();
            (r.contains("172.20.0.0/16 via 10.20.0.1 dev eth1")
                && r.contains("172.16.0.0/12 via 10.10.0.1 dev eth0")
                && r.contains("default"))
            .then_some(r)
        })
        .unwrap_or_else(|| panic!("routes: {}\n{}", vm.routes(), logs()));
        let defaults: Vec<&str> = routes
            .lines()
            .filter(|l| l.starts_with("default"))
            .collect();
        assert_eq!(defaults.len(), 1, "{routes}");
        assert!(
            defaults[0].starts_with("default via 10.10.0.1 dev eth0"),
            "{routes}"
        );
        let get = vm.ns.query(&["-4", "route", "get", "192.0.2.1"]);
        let get = String::from_utf8_lossy(&get.stdout);
        assert!(get.contains("via 10.10.0.1 dev eth0"), "{get}");
        let [blue, green] = &self.peers;
        assert_eq!(blue.ns.ping("10.10.0.61".parse().unwrap(), 5), 5);
        assert_eq!(green.ns.ping("10.20.0.61".parse().unwrap(), 5), 5);
        assert_eq!(vm.ns.ping("10.10.0.62".parse().unwrap(), 5), 5);
        assert_eq!(vm.ns.ping("10.20.0.62".parse().unwrap(), 5), 5);
        let c = self.agent.counters();
        assert_eq!(c[Stat::DropSpoofedIp as usize], 0);
        assert_eq!(c[Stat::DropSpoofedMac as usize], 0);
    }
}

/// A VM with NICs in two networks gets the default route through the one IPAM names (green says
/// `default_route: false`): one default route, the other network's classless route kept, and
/// traffic with a VM of each network flows both ways, nothing dropped as spoofed.
#[test]
fn a_vm_on_two_networks_gets_one_default_route_via_the_nic_ipam_names() {
    let start = Instant::now();
    let t = TwoNetworks::new();
    let nd = Networkd::start(&t.vm.ns, &[("50-eth.network", BOTH)]);
    let (eth0, eth1) = (t.vm.ns.ifindex("eth0"), t.vm.ns.ifindex("eth1"));
    let mut leases = Vec::new();
    for ifindex in [eth0, eth1] {
        leases.push(
            nd.wait_lease(ifindex, Duration::from_secs(60), |l| {
                l.contains_key("ADDRESS")
            })
            .unwrap_or_else(|| panic!("no lease on {ifindex}:\n{}\n{}", nd.logs(), t.agent.logs())),
        );
    }
    assert_eq!(leases[1].get("ROUTER"), None, "green sends no option 3");
    assert_eq!(
        leases[1].get("CLASSLESS_ROUTES").map(String::as_str),
        Some("172.20.0.0/16,10.20.0.1"),
        "green's classless route stays, without 0.0.0.0/0: {:?}",
        leases[1]
    );
    t.assert_one_default_route(|| nd.logs());
    eprintln!("two-NIC VM with systemd-networkd: {:?}", start.elapsed());
}

/// The same VM with NetworkManager (n-dhcp4) on both NICs.
#[test]
fn network_manager_on_two_networks_gets_one_default_route() {
    let start = Instant::now();
    let t = TwoNetworks::new();
    let nm = NetworkManager::start(
        &t.vm.ns,
        &[
            ("eth0.nmconnection", &dhcp_connection("eth0", "")),
            ("eth1.nmconnection", &dhcp_connection("eth1", "")),
        ],
    );
    let mut leases = Vec::new();
    for eth in ["eth0", "eth1"] {
        leases.push(
            nm.wait_dhcp4(eth, Duration::from_secs(90), |o| {
                o.contains_key("ip_address")
            })
            .unwrap_or_else(|| panic!("no lease on {eth}:\n{}\n{}", nm.logs(), t.agent.logs())),
        );
    }
    assert_eq!(
        leases[0].get("routers").map(String::as_str),
        Some("10.10.0.1"),
        "{:?}",
        leases[0]
    );
    assert_eq!(leases[1].get("routers"), None, "green sends no option 3");
    assert_eq!(
        leases[1]
            .get("rfc3442_classless_static_routes")
            .map(String::as_str),
        Some("172.20.0.0/16 10.20.0.1"),
        "green's classless route stays, without 0.0.0.0/0: {:?}",
        leases[1]
    );
    t.assert_one_default_route(|| nm.logs());
    eprintln!("two-NIC VM with NetworkManager: {:?}", start.elapsed());
}

/// A network 10.10.0.0/24 with `gateway`, leases of `lease_time`, and `nics` (MAC, address,
/// interface).
fn blue(lease_time: u32, gateway: &str, nics: &[([u8; 6], &str, &str)]) -> String {
    let nics: Vec<String> = nics
        .iter()
        .map(|(mac, ip, tap)| {
            format!(
                r#"{{ "mac": "{}", "network": "pn-blue", "ip": "{ip}", "node": "hv-1",
                      "interface": "{tap}" }}"#,
                mac_str(*mac)
            )
        })
        .collect();
    format!(
        r#"{{ "networks": [ {{ "id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24",
                 "gateway": "{gateway}", "dns": ["10.10.0.2"], "lease_time": {lease_time} }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {} ] }}"#,
        nics.join(",")
    )
}

/// Leases of the renumbering tests: T1 at 20 s, T2 at 35 s (RFC 2131 §4.4.5).
const SHORT_LEASE: u32 = 40;
const T1: Duration = Duration::from_secs(20);
const T2: Duration = Duration::from_secs(35);
/// After T1, what a client may take to act on the answer to its renewal: well before T2.
const AFTER_T1: Duration = Duration::from_secs(10);

/// The agent's DHCP samples that are not zero, for a failure's message.
fn dhcp_metrics(agent: &Agent) -> String {
    let text = agent.http("/metrics").1;
    text.lines()
        .filter(|l| l.starts_with("holdfast_dhcp") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

/// Waits until `vm` has exactly `want` on eth0.
fn wait_only(vm: &Vm, want: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    wait_for(timeout, || {
        (vm.addresses() == [ip(want)]).then(|| start.elapsed())
    })
}

/// RFC 2131 §4.3.2: IPAM renumbered the NIC, the client's renewal at T1 gets a NAK. networkd
/// listens in RENEWING on a socket bound to its address: the NAK must come unicast to it
/// (broadcast, it is never seen, and the client learns at T2).
#[test]
fn systemd_networkd_renumbered_by_ipam_moves_at_its_first_renewal() {
    let hv = Netns::new("hv");
    let agent = Agent::start(
        &hv,
        "hv-1",
        &blue(
            SHORT_LEASE,
            "10.10.0.1",
            &[(MAC_ND, "10.10.0.52", "tap-n1")],
        ),
    );
    let vm = Vm::new(&hv, "tap-n1", MAC_ND);
    let nd = Networkd::start(&vm.ns, &[("50-eth0.network", NETWORK)]);
    assert!(
        wait_only(&vm, "10.10.0.52", Duration::from_secs(60)).is_some(),
        "no lease:\n{}\n{}",
        nd.logs(),
        agent.logs()
    );
    let leased = Instant::now();
    agent.write_ipam(&blue(
        SHORT_LEASE,
        "10.10.0.1",
        &[(MAC_ND, "10.10.0.62", "tap-n1")],
    ));
    let moved = wait_only(&vm, "10.10.0.62", T1 + AFTER_T1);
    assert!(
        moved.is_some(),
        "not renumbered {:?} after the lease (T1 {T1:?}, T2 {T2:?}): {:?}\n{}\n{}\n{}",
        leased.elapsed(),
        vm.addresses(),
        nd.logs(),
        agent.logs(),
        dhcp_metrics(&agent)
    );
    let c = agent.counters();
    assert!(c[Stat::DhcpRequestRenewing as usize] >= 1);
    assert!(c[Stat::DhcpNak as usize] >= 1);
    assert_eq!(
        c[Stat::DhcpRequestRebinding as usize],
        0,
        "it never got to T2"
    );
    assert!(nd.logs().contains("NAK"), "{}", nd.logs());
}

/// IPAM moves the network's gateway (the DHCP server identifier by default) from .1 to .254.
/// A client's lease names .1: at T1 it renews by unicast to .1, which must still resolve and
/// answer from .1 (NetworkManager's socket is connected to it); the ACK brings the new router.
/// Then IPAM renumbers the NIC: the next renewal, still to .1, gets a NAK from .1, unicast.
fn a_gateway_change_then_a_renumbering(
    hook: VmHook,
    client: &str,
    mac: [u8; 6],
    tap: &str,
    start: impl FnOnce(&Vm) -> Box<dyn Guest>,
) {
    let hv = Netns::new("hv");
    let agent = Agent::start_with(
        &hv,
        "hv-1",
        &blue(SHORT_LEASE, "10.10.0.1", &[(mac, "10.10.0.52", tap)]),
        &format!("[vm]\nhook = \"{hook}\"\n"),
    );
    let vm = Vm::new(&hv, tap, mac);
    let guest = start(&vm);
    assert!(
        wait_only(&vm, "10.10.0.52", Duration::from_secs(90)).is_some(),
        "{client}: no lease:\n{}\n{}",
        guest.logs(),
        agent.logs()
    );
    assert_eq!(guest.server().as_deref(), Some("10.10.0.1"), "{client}");
    let leased = Instant::now();
    agent.write_ipam(&blue(
        SHORT_LEASE,
        "10.10.0.254",
        &[(mac, "10.10.0.52", tap)],
    ));
    // The renewal at T1 succeeds: the lease now names the new router, same address.
    let renewed = wait_for(T1 + AFTER_T1, || {
        (guest.router().as_deref() == Some("10.10.0.254")).then(|| leased.elapsed())
    });
    assert!(
        renewed.is_some(),
        "{client}: no renewal with the new gateway {:?} after the lease (T1 {T1:?}, T2 {T2:?}):\n{}\n{}",
        leased.elapsed(),
        guest.logs(),
        agent.logs()
    );
    assert_eq!(vm.addresses(), [ip("10.10.0.52")], "{client}");
    let c = agent.counters();
    assert_eq!(c[Stat::DhcpNak as usize], 0, "{client}");
    assert_eq!(
        c[Stat::DhcpRequestRebinding as usize],
        0,
        "{client}: it got to T2"
    );
    assert!(c[Stat::DhcpFormerServerId as usize] >= 1, "{client}");

    // Renumbered: the next renewal (T1 after this one) gets a NAK from the former identifier.
    let renewed_at = Instant::now();
    agent.write_ipam(&blue(
        SHORT_LEASE,
        "10.10.0.254",
        &[(mac, "10.10.0.72", tap)],
    ));
    let moved = wait_only(&vm, "10.10.0.72", T1 + AFTER_T1);
    assert!(
        moved.is_some(),
        "{client}: not renumbered {:?} after the renewal: {:?}\n{}\n{}",
        renewed_at.elapsed(),
        vm.addresses(),
        guest.logs(),
        agent.logs()
    );
    let c = agent.counters();
    assert!(c[Stat::DhcpNak as usize] >= 1, "{client}");
    assert!(c[Stat::DhcpFormerServerId as usize] >= 2, "{client}");
    assert_eq!(
        c[Stat::DhcpRequestRebinding as usize],
        0,
        "{client}: it got to T2"
    );
    // Its new lease comes from the identifier of now.
    let new_server = wait_for(Duration::from_secs(10), || {
        (guest.server().as_deref() == Some("10.10.0.254")).then_some(())
    });
    assert!(new_server.is_some(), "{client}: {:?}", guest.server());
}

/// What the gateway test reads of a DHCP client.
trait Guest {
    fn logs(&self) -> String;
    /// The server identifier its lease names.
    fn server(&self) -> Option<String>;
    /// The router its lease names.
    fn router(&self) -> Option<String>;
}

struct NetworkdGuest(Networkd, u32);

impl Guest for NetworkdGuest {
    fn logs(&self) -> String {
        self.0.logs()
    }
    fn server(&self) -> Option<String> {
        self.0.lease(self.1)?.get("SERVER_ADDRESS").cloned()
    }
    fn router(&self) -> Option<String> {
        self.0.lease(self.1)?.get("ROUTER").cloned()
    }
}

struct NmGuest(NetworkManager);

impl Guest for NmGuest {
    fn logs(&self) -> String {
        self.0.logs()
    }
    fn server(&self) -> Option<String> {
        self.0.dhcp4("eth0")?.get("dhcp_server_identifier").cloned()
    }
    fn router(&self) -> Option<String> {
        self.0.dhcp4("eth0")?.get("routers").cloned()
    }
}

fn systemd_networkd_renews_through_a_gateway_change_and_is_renumbered_after(hook: VmHook) {
    a_gateway_change_then_a_renumbering(hook, "networkd", MAC_ND, "tap-n1", |vm| {
        let nd = Networkd::start(&vm.ns, &[("50-eth0.network", NETWORK)]);
        Box::new(NetworkdGuest(nd, vm.ns.ifindex("eth0")))
    });
}

fn network_manager_renews_through_a_gateway_change_and_is_renumbered_after(hook: VmHook) {
    a_gateway_change_then_a_renumbering(hook, "NetworkManager", MAC_NM, "tap-m1", |vm| {
        let nm = NetworkManager::start(
            &vm.ns,
            &[("eth0.nmconnection", &dhcp_connection("eth0", ""))],
        );
        Box::new(NmGuest(nm))
    });
}

const MAC_PXE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x61];
const MAC_TFTP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

/// QEMU's own iPXE ROM (what a diskless VM boots) gets its address and boot file from XDP:
/// being iPXE, the script, not a loader (which would load iPXE again, forever). It fetches
/// the script from the network's boot server over TFTP and runs it; the script fetches a
/// second one, which proves it ran.
#[test]
fn qemus_ipxe_rom_boots_from_the_network_and_runs_its_script() {
    let started = Instant::now();
    let hv = Netns::new("hv");
    let doc = format!(
        r#"{{ "networks": [ {{ "id": "pn-boot", "vni": 1002, "subnet": "10.20.0.0/24",
                 "gateway": "10.20.0.1",
                 "boot": {{ "next_server": "10.20.0.5", "bios": "undionly.kpxe",
                            "uefi": "ipxe.efi", "ipxe": "boot.ipxe" }} }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {{ "mac": "{}", "network": "pn-boot", "ip": "10.20.0.61", "node": "hv-1",
                          "interface": "tap-q2" }},
                       {{ "mac": "{}", "network": "pn-boot", "ip": "10.20.0.5", "node": "hv-1",
                          "interface": "tap-t1" }} ] }}"#,
        mac_str(MAC_PXE),
        mac_str(MAC_TFTP)
    );
    let agent = Agent::start(&hv, "hv-1", &doc);
    // The boot server: a VM of the network, addressed as IPAM says.
    let server = Vm::new(&hv, "tap-t1", MAC_TFTP);
    server
        .ns
        .ip(&["addr", "add", "10.20.0.5/24", "dev", "eth0"]);
    let tftp = Tftp::start(
        &server,
        &[
            (
                "boot.ipxe",
                "#!ipxe\necho HOLDFAST-SCRIPT ${ip} from ${next-server}\n\
                 chain tftp://${next-server}/second.ipxe\n",
            ),
            (
                "second.ipxe",
                "#!ipxe\necho HOLDFAST-SECOND-STAGE\nsleep 600\n",
            ),
        ],
    );
    let vm = QemuVm::boot(
        &hv,
        &[GuestNic {
            tap: "tap-q2".into(),
            mac: MAC_PXE,
        }],
        Boot::Network {
            rom: "/usr/lib/ipxe/qemu/pxe-virtio.rom".into(),
        },
    );
    let second = wait_for(Duration::from_secs(120), || {
        tftp.log().contains("second.ipxe").then_some(())
    });
    assert!(
        second.is_some(),
        "the script did not run:\nTFTP: {}\nconsole: {}\n{}\n{}",
        tftp.log(),
        vm.console(),
        agent.logs(),
        dhcp_metrics(&agent)
    );
    let log = tftp.log();
    assert!(log.contains("boot.ipxe to 10.20.0.61"), "{log}");
    assert!(log.contains("second.ipxe to 10.20.0.61"), "{log}");
    let c = agent.counters();
    assert!(
        c[Stat::DhcpBoot as usize] >= 2,
        "OFFER and ACK carry the file"
    );
    assert!(!log.contains("undionly"), "iPXE got the loader: {log}");
    println!(
        "iPXE boot: script ran {:?} after the test started; console:\n{}",
        started.elapsed(),
        vm.console()
    );
}

holdfast_tests::for_each_hook!(
    a_qemu_vm_on_a_tap_gets_its_lease,
    systemd_networkd_gets_and_applies_its_lease,
    network_manager_gets_and_applies_its_lease,
    systemd_networkd_renews_through_a_gateway_change_and_is_renumbered_after,
    network_manager_renews_through_a_gateway_change_and_is_renumbered_after,
);
