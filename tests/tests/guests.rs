//! Real guests against holdfast: a VM under QEMU with virtio-net on a real tap, booting
//! Debian's cloud kernel, gets its lease from XDP and keeps it.

use std::time::{Duration, Instant};

use agent_common::Stat;
use holdfast_tests::{
    guest::{
        networkd::Networkd,
        nm::{NetworkManager, dhcp_connection},
        qemu::{Boot, GuestNic, QemuVm},
    },
    netns::{Agent, Netns, Vm, mac_str, wait_for},
};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
const MAC_ND: [u8; 6] = [0x02, 0, 0, 0, 0, 0x52];
const MAC_NM: [u8; 6] = [0x02, 0, 0, 0, 0, 0x53];

fn ipam(lease_time: u32) -> String {
    format!(
        r#"{{ "networks": [ {{ "id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24",
                 "gateway": "10.10.0.1", "dns": ["10.10.0.2"], "domain": "blue.internal",
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

#[test]
fn a_qemu_vm_on_a_tap_gets_its_lease_from_xdp() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &ipam(3600));
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

#[test]
fn systemd_networkd_gets_and_applies_its_lease_from_xdp() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &ipam(3600));
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

#[test]
fn network_manager_gets_and_applies_its_lease_from_xdp() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &ipam(3600));
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
