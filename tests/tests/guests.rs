//! Real guests against holdfast: a VM under QEMU with virtio-net on a real tap, booting
//! Debian's cloud kernel, gets its lease from XDP and keeps it.

use std::time::Duration;

use holdfast_tests::{
    guest::{
        networkd::Networkd,
        nm::{NetworkManager, dhcp_connection},
        qemu::{Boot, GuestNic, QemuVm},
    },
    netns::{Agent, Netns, Vm, mac_str},
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
