//! DHCPv6 end to end (issue 15) with the clients guests run: ISC dhclient -6, dhcpcd,
//! systemd-networkd and NetworkManager, each in a VM's namespace on a VM port of a dual-stack
//! network, on both hooks (`xdp::` and `tc::`), and no DHCPv6 server anywhere but the port's
//! program. Each client gets its `ip6` (IA_NA, a /128), the on-link /64 and the default route
//! via the router's link-local address from the advertisement (M=1, O=1, A=0: no address of
//! its own making), and DNS from DHCPv6; its renewals are answered with IPAM down and then with
//! the agent killed. Hostile: each client asking with another VM's DUID, dhclient with another
//! VM's lease, and hand-made messages naming another server or another VM's address.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agent_common::{Stat, eui64_link_local};
use holdfast_tests::{
    clients,
    guest::{
        networkd::{Networkd, dual_stack_network},
        nm::{NetworkManager, dual_stack_connection},
    },
    netns::{Agent, Netns, Vm, in_netns, mac_str, wait_for},
    packet::checksum,
    rawsock::RawSocket,
    vpc::{dual_stack, ip6_for},
    xdp::{ROUTER_MAC, VmHook},
};

holdfast_tests::for_each_hook!(
    dhclient_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed,
    dhcpcd_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed,
    systemd_networkd_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed,
    network_manager_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed,
    dhclient_with_another_vms_lease_gets_only_its_own_ip6,
    dhcpcd_with_another_vms_duid_gets_only_its_own_ip6,
    systemd_networkd_with_another_vms_duid_gets_only_its_own_ip6,
    network_manager_with_another_vms_duid_gets_only_its_own_ip6,
    requests_naming_another_server_or_another_vms_address_get_nothing_of_it,
    a_router_solicitation_without_a_link_layer_option_is_answered,
);

const VNI: u32 = 1001;
/// The VM under test (every test has a hypervisor of its own) and another VM of its network,
/// whose DUID and address the hostile cases use.
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x11];
const IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x06, 0x22];
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 22);
/// Lifetimes of 10 s (the model's least `lease_time`): T1 5 s, T2 8 s.
const LEASE: u32 = 10;
/// Lifetimes for the clients built on systemd's sd-dhcp6-client (networkd, NetworkManager):
/// it arms its T1 and T2 timers with 10 s of accuracy (coalescing), so that T1 may fire 10 s
/// late; with 10 s lifetimes it loses the lease before it renews (seen: "Timeout T1", then
/// "DHCPv6 lease lost"). 30 s: T1 15 s, at the latest 25 s, inside the lifetime.
const LEASE_SD: u32 = 30;

fn ip6() -> Ipv6Addr {
    ip6_for(VNI, IP)
}

fn other_ip6() -> Ipv6Addr {
    ip6_for(VNI, OTHER_IP)
}

fn dns6() -> Ipv6Addr {
    "fd00:3e9::53".parse().expect("dns6")
}

fn router_ll() -> Ipv6Addr {
    Ipv6Addr::from(eui64_link_local(ROUTER_MAC))
}

/// DUID-LL (RFC 8415 §11.4) of `mac`.
fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The network dual-stack (`subnet6` fd00:3e9::/64, `dns6` fd00:3e9::53), with a search list;
/// this VM on `tap` and the other VM on `tap-o`.
fn ipam(tap: &str, lease: u32) -> String {
    dual_stack(&format!(
        r#"{{ "networks": [ {{ "id": "pn-blue", "vni": {VNI}, "subnet": "10.10.0.0/24",
                 "gateway": "10.10.0.1", "dns": ["10.10.0.2"], "domain": "blue.internal",
                 "search": ["blue.internal", "corp.example"], "mtu": 1450,
                 "lease_time": {lease} }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {{ "mac": "{}", "network": "pn-blue", "ip": "{IP}", "node": "hv-1",
                          "interface": "{tap}" }},
                       {{ "mac": "{}", "network": "pn-blue", "ip": "{OTHER_IP}", "node": "hv-1",
                          "interface": "tap-o" }} ] }}"#,
        mac_str(MAC),
        mac_str(OTHER_MAC)
    ))
}

/// A hypervisor with its agent (VM ports on `hook`), the VM under test on `tap` and the other
/// VM. Fields drop in order: the VMs, the agent, the hypervisor.
struct Host {
    lease: u32,
    vm: Vm,
    _other: Vm,
    agent: Agent,
    _hv: Netns,
}

impl Host {
    fn new(hook: VmHook, tap: &str) -> Self {
        Self::with_lease(hook, tap, LEASE)
    }

    fn with_lease(hook: VmHook, tap: &str, lease: u32) -> Self {
        let hv = Netns::new("hv");
        let agent = Agent::start_with(
            &hv,
            "hv-1",
            &ipam(tap, lease),
            &format!("[vm]\nhook = \"{hook}\"\n"),
        );
        let vm = Vm::new(&hv, tap, MAC);
        let other = Vm::new(&hv, "tap-o", OTHER_MAC);
        let bound = wait_for(Duration::from_secs(20), || {
            (agent.metric("holdfast_leases") == 2.0).then_some(())
        });
        assert!(bound.is_some(), "ports not bound:\n{}", agent.logs());
        Self {
            lease,
            vm,
            _other: other,
            agent,
            _hv: hv,
        }
    }

    /// The DHCPv6 counters that are not zero, for a failure's message, and the agent's
    /// non-zero samples while it runs.
    fn counters(&self) -> String {
        let c = self.agent.counters();
        let mut text = DHCP6_STATS
            .iter()
            .filter(|s| c[**s as usize] != 0)
            .map(|s| format!("{s:?}={}", c[*s as usize]))
            .collect::<Vec<_>>()
            .join(" ");
        if self.agent.pid().is_some() {
            let metrics = self.agent.http("/metrics").1;
            for l in metrics.lines() {
                if l.starts_with("holdfast_") && l.contains("_total") && !l.ends_with(" 0") {
                    text.push('\n');
                    text.push_str(l);
                }
            }
        }
        text
    }

    /// Renewals the port received so far: RENEWs, and REBINDs (a client whose RENEW went out
    /// late, at T2: with T1 5 s and T2 8 s, a busy host's client may send none between them).
    fn renewals(&self) -> u64 {
        let c = self.agent.counters();
        c[Stat::Dhcp6Renew as usize] + c[Stat::Dhcp6Rebind as usize]
    }
}

/// The counters a failure reports.
const DHCP6_STATS: &[Stat] = &[
    Stat::Dhcp6Solicit,
    Stat::Dhcp6Request,
    Stat::Dhcp6Confirm,
    Stat::Dhcp6Renew,
    Stat::Dhcp6Rebind,
    Stat::Dhcp6Release,
    Stat::Dhcp6Decline,
    Stat::Dhcp6InformationRequest,
    Stat::Dhcp6Advertise,
    Stat::Dhcp6Reply,
    Stat::Dhcp6RapidCommit,
    Stat::Dhcp6NotOnLink,
    Stat::Dhcp6OtherServer,
    Stat::Dhcp6NoAddressAsked,
    Stat::DropDhcp6Malformed,
    Stat::DropDhcp6UnknownType,
    Stat::Dhcp6Unanswered,
    Stat::Ra6Reply,
    Stat::Nd6Reply,
    Stat::Nd6Dad,
    Stat::DropIpv6LinkLocal,
    Stat::DropSpoofedIp6,
    Stat::DropIpv6ExtHeader,
    Stat::DropDhcpRogueServer,
];

/// The global addresses on eth0 with their prefix lengths.
fn globals(vm: &Vm) -> Vec<(Ipv6Addr, u8)> {
    let out = vm
        .ns
        .query(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
            let (a, p) = cidr.split_once('/')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

fn routes6(vm: &Vm) -> String {
    String::from_utf8_lossy(&vm.ns.query(&["-6", "route", "show"]).stdout).into_owned()
}

/// The valid lifetime (seconds) eth0's `ip6` has left, as the kernel counts it.
fn valid_lft(vm: &Vm) -> Option<u32> {
    let out = vm
        .ns
        .query(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lft = text
        .split_whitespace()
        .skip_while(|w| *w != "valid_lft")
        .nth(1)?;
    lft.trim_end_matches("sec").parse().ok()
}

/// Waits until eth0 holds the VM's `ip6` as a /128 and nothing else global (A=0: no SLAAC),
/// the on-link /64 and the default route via the router's link-local address; returns how
/// long it took. `logs` is the client's, for a failure.
fn assert_ip6_configured(host: &Host, logs: &dyn Fn() -> String) -> Duration {
    let start = Instant::now();
    let vm = &host.vm;
    let got = wait_for(Duration::from_secs(60), || {
        globals(vm).iter().any(|(a, _)| *a == ip6()).then_some(())
    });
    assert!(
        got.is_some(),
        "no ip6 on eth0: {:?}\nrenewals {}, {}\n{}\n{}",
        globals(vm),
        host.renewals(),
        host.counters(),
        logs(),
        host.agent.logs()
    );
    let took = start.elapsed();
    assert_eq!(globals(vm), [(ip6(), 128)], "{}", logs());
    let via = format!("default via {} dev eth0", router_ll());
    let routes = wait_for(Duration::from_secs(20), || {
        let r = routes6(vm);
        (r.contains(&via) && r.contains("fd00:3e9::/64 dev eth0")).then_some(r)
    });
    assert!(
        routes.is_some(),
        "routes: {}\n{}\n{}",
        routes6(vm),
        host.counters(),
        logs()
    );
    took
}

/// Kills IPAM (its file made garbage: the agent keeps what serves), then the agent: `count`
/// renewals answered in each phase, and the address kept with its lifetimes refreshed (10 s
/// of lifetime would have run out twice over).
fn assert_renews_with_ipam_down_and_the_agent_killed(
    host: &mut Host,
    count: u64,
    logs: &dyn Fn() -> String,
) {
    for phase in ["IPAM down", "agent killed"] {
        match phase {
            "IPAM down" => host.agent.write_ipam("{ \"networks\": [ this is not json"),
            _ => host.agent.kill(),
        }
        let start = Instant::now();
        let before = host.renewals();
        let replies = host.agent.counters()[Stat::Dhcp6Reply as usize];
        // Each renewal at T1 (half the lifetime), late by up to as much again on a busy host.
        let wait = Duration::from_secs(u64::from(host.lease) * (count + 1) + 10);
        let renewed = wait_for(wait, || (host.renewals() >= before + count).then_some(()));
        assert!(
            renewed.is_some(),
            "{phase}: {} renewals in {:?}; {:?}, {}\n{}",
            host.renewals() - before,
            start.elapsed(),
            globals(&host.vm),
            host.counters(),
            logs()
        );
        assert_eq!(
            globals(&host.vm),
            [(ip6(), 128)],
            "{phase}: {}\n{}",
            host.counters(),
            logs()
        );
        // Each one answered.
        let now = host.agent.counters()[Stat::Dhcp6Reply as usize];
        assert!(
            now >= replies + count,
            "{phase}: {} replies: {}\n{}",
            now - replies,
            host.counters(),
            logs()
        );
        let lft = valid_lft(&host.vm).unwrap_or(0);
        assert!(
            (1..=host.lease).contains(&lft),
            "{phase}: valid_lft {lft}: {}",
            logs()
        );
        eprintln!("{phase}: {count} renewals in {:?}", start.elapsed());
    }
    let via = format!("default via {} dev eth0", router_ll());
    assert!(routes6(&host.vm).contains(&via), "{}", routes6(&host.vm));
}

/// The resolv.conf a client wrote holds the network's `dns6` and search list.
fn assert_resolv_conf(host: &Host, logs: &dyn Fn() -> String) {
    let want = format!("nameserver {}", dns6());
    let resolv = wait_for(Duration::from_secs(10), || {
        let r = host.vm.ns.resolv_conf();
        r.contains(&want).then_some(r)
    })
    .unwrap_or_else(|| panic!("resolv.conf: {:?}\n{}", host.vm.ns.resolv_conf(), logs()));
    assert!(
        resolv.contains("blue.internal") && resolv.contains("corp.example"),
        "{resolv}"
    );
}

fn dhclient_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed(
    hook: VmHook,
) {
    let start = Instant::now();
    let mut host = Host::new(hook, "tap-d1");
    let client = clients::dhclient6(&host.vm, None);
    let logs = || client.log();
    let took = assert_ip6_configured(&host, &logs);
    assert_resolv_conf(&host, &logs);
    assert!(logs().contains("Bound to lease"), "{}", logs());
    assert_renews_with_ipam_down_and_the_agent_killed(&mut host, 2, &logs);
    eprintln!(
        "dhclient -6 ({hook}): ip6 in {took:?}, test {:?}",
        start.elapsed()
    );
}

fn dhcpcd_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed(hook: VmHook) {
    let start = Instant::now();
    let mut host = Host::new(hook, "tap-c1");
    let client = clients::dhcpcd6(&host.vm, None);
    let logs = || format!("{}\nevents:\n{}", client.log(), client.events());
    let took = assert_ip6_configured(&host, &logs);
    assert_resolv_conf(&host, &logs);
    // What DHCPv6 itself gave (the advertisement's RDNSS and DNSSL carry the same): its hook
    // runs after the address is set.
    let bound = wait_for(Duration::from_secs(10), || {
        let e = client.events();
        e.lines()
            .find(|l| l.starts_with("BOUND6") || l.starts_with("REBOOT6"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no BOUND6 event: {}", logs()));
    for want in [
        format!("new_dhcp6_ia_na1_ia_addr1={}", ip6()),
        format!("new_dhcp6_name_servers={}", dns6()),
        "new_dhcp6_domain_search=blue.internal corp.example".to_owned(),
        format!(
            "new_dhcp6_server_id={}",
            hex(&duid_ll(ROUTER_MAC)).replace(':', "")
        ),
    ] {
        assert!(bound.contains(&want), "{want}: {bound}");
    }
    assert_renews_with_ipam_down_and_the_agent_killed(&mut host, 2, &logs);
    eprintln!(
        "dhcpcd -6 ({hook}): ip6 in {took:?}, test {:?}",
        start.elapsed()
    );
}

/// networkd's state for eth0: the DNS and domains it holds from DHCPv6 (the advertisement's are
/// off in its config).
fn assert_networkd_dns(nd: &Networkd, ifindex: u32) {
    let link = wait_for(Duration::from_secs(10), || {
        nd.link(ifindex).filter(|l| {
            l.get("DNS")
                .is_some_and(|d| d.contains(&dns6().to_string()))
        })
    })
    .unwrap_or_else(|| panic!("link state: {:?}\n{}", nd.link(ifindex), nd.logs()));
    let domains = link.get("DOMAINS").cloned().unwrap_or_default();
    assert!(
        domains.contains("blue.internal") && domains.contains("corp.example"),
        "{link:?}"
    );
}

fn systemd_networkd_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed(
    hook: VmHook,
) {
    let start = Instant::now();
    let mut host = Host::with_lease(hook, "tap-n1", LEASE_SD);
    let nd = Networkd::start(&host.vm.ns, &[("50-eth0.network", &dual_stack_network(""))]);
    let ifindex = host.vm.ns.ifindex("eth0");
    let logs = || nd.logs();
    let took = assert_ip6_configured(&host, &logs);
    assert_networkd_dns(&nd, ifindex);
    // Dual stack: its DHCPv4 lease as well.
    assert!(
        nd.wait_lease(ifindex, Duration::from_secs(20), |l| l
            .get("ADDRESS")
            .is_some_and(|a| a == "10.10.0.11"))
            .is_some(),
        "{}",
        nd.logs()
    );
    assert_renews_with_ipam_down_and_the_agent_killed(&mut host, 2, &logs);
    eprintln!(
        "systemd-networkd ({hook}): ip6 in {took:?}, test {:?}",
        start.elapsed()
    );
}

fn network_manager_gets_its_ip6_route_and_dns_and_renews_with_ipam_down_and_the_agent_killed(
    hook: VmHook,
) {
    let start = Instant::now();
    let mut host = Host::with_lease(hook, "tap-m1", LEASE_SD);
    let nm = NetworkManager::start(
        &host.vm.ns,
        &[("eth0.nmconnection", &dual_stack_connection("eth0", ""))],
    );
    let logs = || nm.logs();
    let took = assert_ip6_configured(&host, &logs);
    let options = nm
        .wait_dhcp6("eth0", Duration::from_secs(20), |o| {
            o.contains_key("dhcp6_name_servers")
        })
        .unwrap_or_else(|| panic!("DHCP6: {:?}\n{}", nm.dhcp6("eth0"), nm.logs()));
    assert_eq!(
        options.get("ip6_address").map(String::as_str),
        Some(ip6().to_string().as_str()),
        "{options:?}"
    );
    assert_eq!(
        options.get("dhcp6_name_servers").map(String::as_str),
        Some(dns6().to_string().as_str()),
        "{options:?}"
    );
    assert_eq!(
        options.get("dhcp6_domain_search").map(String::as_str),
        Some("blue.internal corp.example"),
        "{options:?}"
    );
    let ip6_state = nm.ip6("eth0").unwrap_or_default();
    assert!(
        ip6_state.contains(&dns6().to_string()),
        "IP6.DNS: {ip6_state}"
    );
    assert_renews_with_ipam_down_and_the_agent_killed(&mut host, 2, &logs);
    eprintln!(
        "NetworkManager ({hook}): ip6 in {took:?}, test {:?}",
        start.elapsed()
    );
}

/// While a client settles, the other VM's `ip6` is never on eth0, and in the end only the VM's
/// own is.
fn assert_only_own_ip6(host: &Host, logs: &dyn Fn() -> String) {
    let got = wait_for(Duration::from_secs(60), || {
        let g = globals(&host.vm);
        assert!(
            !g.iter().any(|(a, _)| *a == other_ip6()),
            "the other VM's ip6 on eth0: {g:?}\n{}\n{}",
            host.counters(),
            logs()
        );
        (g == [(ip6(), 128)]).then_some(())
    });
    assert!(
        got.is_some(),
        "{:?}\n{}\n{}",
        globals(&host.vm),
        host.counters(),
        logs()
    );
    // A few seconds more: nothing takes it back.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(globals(&host.vm), [(ip6(), 128)], "{}", logs());
    }
}

/// dhclient starts with the other VM's lease (its DUID, its address, unexpired): it confirms
/// it (RFC 8415 §18.2.3), and must end with its own address only.
fn dhclient_with_another_vms_lease_gets_only_its_own_ip6(hook: VmHook) {
    let start = Instant::now();
    let host = Host::new(hook, "tap-d2");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let octal: String = duid_ll(OTHER_MAC)
        .iter()
        .map(|b| format!("\\{b:03o}"))
        .collect();
    let lease = format!(
        "default-duid \"{octal}\";\n\
         lease6 {{\n  interface \"eth0\";\n  ia-na 06:22:00:01 {{\n    starts {now};\n    \
         renew 3000;\n    rebind 4000;\n    iaaddr {} {{\n      starts {now};\n      \
         preferred-life 5000;\n      max-life 7200;\n    }}\n  }}\n  \
         option dhcp6.client-id {};\n  option dhcp6.server-id {};\n}}\n",
        other_ip6(),
        hex(&duid_ll(OTHER_MAC)),
        hex(&duid_ll(ROUTER_MAC)),
    );
    let client = clients::dhclient6(&host.vm, Some(&lease));
    let logs = || client.log();
    assert_only_own_ip6(&host, &logs);
    eprintln!(
        "dhclient -6 with another VM's lease ({hook}): {:?}",
        start.elapsed()
    );
}

fn dhcpcd_with_another_vms_duid_gets_only_its_own_ip6(hook: VmHook) {
    let start = Instant::now();
    let host = Host::new(hook, "tap-c2");
    let client = clients::dhcpcd6(&host.vm, Some(&hex(&duid_ll(OTHER_MAC))));
    let logs = || format!("{}\nevents:\n{}", client.log(), client.events());
    assert_only_own_ip6(&host, &logs);
    // It did ask as the other VM.
    let events = client.events();
    assert!(
        events.contains(&format!(
            "new_dhcp6_client_id={}",
            duid_ll(OTHER_MAC)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )),
        "{events}"
    );
    eprintln!(
        "dhcpcd with another VM's DUID ({hook}): {:?}",
        start.elapsed()
    );
}

fn systemd_networkd_with_another_vms_duid_gets_only_its_own_ip6(hook: VmHook) {
    let start = Instant::now();
    let host = Host::with_lease(hook, "tap-n2", LEASE_SD);
    // DUID-LL: hardware type 1, the other VM's MAC.
    let raw = format!("00:01:{}", mac_str(OTHER_MAC));
    let nd = Networkd::start(
        &host.vm.ns,
        &[(
            "50-eth0.network",
            &dual_stack_network(&format!("DUIDType=link-layer\nDUIDRawData={raw}")),
        )],
    );
    let logs = || nd.logs();
    assert_only_own_ip6(&host, &logs);
    let ifindex = host.vm.ns.ifindex("eth0");
    let duid = nd
        .link(ifindex)
        .and_then(|l| l.get("DHCP6_CLIENT_DUID").cloned())
        .unwrap_or_default();
    // networkd writes it as `DUID-LL:…` or in hex with colons, by version.
    let digits: String = duid.to_lowercase().replace(':', "");
    assert!(
        digits.contains(&hex(&OTHER_MAC).replace(':', "")),
        "DUID {duid:?}: {:?}",
        nd.link(ifindex)
    );
    eprintln!(
        "systemd-networkd with another VM's DUID ({hook}): {:?}",
        start.elapsed()
    );
}

fn network_manager_with_another_vms_duid_gets_only_its_own_ip6(hook: VmHook) {
    let start = Instant::now();
    let host = Host::with_lease(hook, "tap-m2", LEASE_SD);
    let nm = NetworkManager::start(
        &host.vm.ns,
        &[(
            "eth0.nmconnection",
            &dual_stack_connection("eth0", &format!("dhcp-duid={}", hex(&duid_ll(OTHER_MAC)))),
        )],
    );
    let logs = || nm.logs();
    assert_only_own_ip6(&host, &logs);
    let options = nm.dhcp6("eth0").unwrap_or_default();
    assert_eq!(
        options.get("dhcp6_client_id").map(String::as_str),
        Some(hex(&duid_ll(OTHER_MAC)).as_str()),
        "{options:?}"
    );
    eprintln!(
        "NetworkManager with another VM's DUID ({hook}): {:?}",
        start.elapsed()
    );
}

// DHCPv6 by hand (RFC 8415 §8, §21), over a UDP socket in the VM's namespace: the kernel
// checks the UDP checksum of every reply it hands over.
const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REPLY: u8 = 7;
const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_ORO: u16 = 6;
const OPT_ELAPSED_TIME: u16 = 8;
const OPT_STATUS_CODE: u16 = 13;
const STATUS_NOT_ON_LINK: u16 = 4;

fn option(code: u16, value: &[u8]) -> Vec<u8> {
    let mut o = code.to_be_bytes().to_vec();
    o.extend_from_slice(&(value.len() as u16).to_be_bytes());
    o.extend_from_slice(value);
    o
}

/// An IA_NA (IAID 1, T1 and T2 left to the server) asking for `addr`.
fn ia_na(addr: Ipv6Addr) -> Vec<u8> {
    let mut iaaddr = addr.octets().to_vec();
    iaaddr.extend_from_slice(&[0; 8]);
    let mut v = vec![0, 0, 0, 1];
    v.extend_from_slice(&[0; 8]);
    v.extend(option(OPT_IAADDR, &iaaddr));
    option(OPT_IA_NA, &v)
}

struct Message {
    kind: u8,
    xid: [u8; 3],
    options: Vec<u8>,
}

impl Message {
    fn new(kind: u8, xid: u32, client: &[u8]) -> Self {
        let x = xid.to_be_bytes();
        let mut m = Self {
            kind,
            xid: [x[1], x[2], x[3]],
            options: Vec::new(),
        };
        m.add(OPT_CLIENTID, client)
            .add(OPT_ELAPSED_TIME, &[0, 0])
            .add(OPT_ORO, &[0, 23, 0, 24]);
        m
    }

    fn add(&mut self, code: u16, value: &[u8]) -> &mut Self {
        self.options.extend(option(code, value));
        self
    }

    fn ia(&mut self, addr: Ipv6Addr) -> &mut Self {
        self.options.extend(ia_na(addr));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.kind];
        b.extend_from_slice(&self.xid);
        b.extend_from_slice(&self.options);
        b
    }
}

/// Options of a reply (or of an option's contents): (code, value), in order.
fn options(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let code = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let Some(value) = b.get(4..4 + len) else {
            break;
        };
        out.push((code, value.to_vec()));
        b = &b[4 + len..];
    }
    out
}

/// The addresses of a reply's IA_NAs with their valid lifetimes.
fn leased(reply: &[u8]) -> Vec<(Ipv6Addr, u32)> {
    let mut out = Vec::new();
    for (code, v) in options(&reply[4..]) {
        if code != OPT_IA_NA || v.len() < 12 {
            continue;
        }
        for (sub, a) in options(&v[12..]) {
            if sub == OPT_IAADDR && a.len() >= 24 {
                let addr: [u8; 16] = a[..16].try_into().expect("16 bytes");
                let valid = u32::from_be_bytes(a[20..24].try_into().expect("4 bytes"));
                out.push((Ipv6Addr::from(addr), valid));
            }
        }
    }
    out
}

fn status(reply: &[u8]) -> Option<u16> {
    options(&reply[4..])
        .into_iter()
        .find(|(c, v)| *c == OPT_STATUS_CODE && v.len() >= 2)
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
}

/// A DHCPv6 client socket on the VM's eth0: its link-local address, port 546.
struct Client6 {
    sock: UdpSocket,
    ifindex: u32,
}

impl Client6 {
    fn open(vm: &Vm) -> Self {
        let ll = link_local(vm);
        let ifindex = vm.ns.ifindex("eth0");
        let sock = in_netns(&vm.ns.path(), || {
            UdpSocket::bind(SocketAddrV6::new(ll, 546, 0, ifindex)).expect("bind [ll]:546")
        });
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self { sock, ifindex }
    }

    /// Sends `m` to All_DHCP_Relay_Agents_and_Servers and returns the answer with its
    /// transaction id, if one comes within `timeout`.
    fn exchange(&self, m: &Message, timeout: Duration) -> Option<Vec<u8>> {
        let to = SocketAddrV6::new("ff02::1:2".parse().expect("group"), 547, 0, self.ifindex);
        self.sock.send_to(&m.bytes(), to).expect("send");
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf)
                && n >= 4
                && buf[1..4] == m.xid
            {
                return Some(buf[..n].to_vec());
            }
        }
        None
    }
}

/// Hand-made messages from the VM: a REQUEST or RENEW naming another server's DUID gets
/// silence (RFC 8415 §16.4, §16.6); asking for the other VM's address, as the other VM (its
/// DUID), gets the VM's own address, and the other's never with a lifetime; a CONFIRM of an
/// address off the link gets NotOnLink (§18.3.3).
fn requests_naming_another_server_or_another_vms_address_get_nothing_of_it(hook: VmHook) {
    let start = Instant::now();
    let host = Host::new(hook, "tap-r1");
    let client = Client6::open(&host.vm);
    let server = duid_ll(ROUTER_MAC);
    let as_other = duid_ll(OTHER_MAC);
    let wait = Duration::from_secs(1);
    let only_own = |reply: &[u8], what: &str| {
        let got = leased(reply);
        assert!(
            got.contains(&(ip6(), LEASE)),
            "{what}: {got:?}, {}",
            host.counters()
        );
        assert!(
            got.iter().all(|(a, valid)| *a == ip6() || *valid == 0),
            "{what}: {got:?}"
        );
    };

    // SOLICIT as the other VM, for its address: the VM's own.
    let mut solicit = Message::new(SOLICIT, 0x0611, &as_other);
    solicit.ia(other_ip6());
    let advertise = client
        .exchange(&solicit, wait)
        .unwrap_or_else(|| panic!("no ADVERTISE: {}", host.counters()));
    assert_eq!(advertise[0], ADVERTISE);
    only_own(&advertise, "ADVERTISE");
    let server_ids: Vec<Vec<u8>> = options(&advertise[4..])
        .into_iter()
        .filter(|(c, _)| *c == OPT_SERVERID)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        server_ids,
        std::slice::from_ref(&server),
        "DUID-LL of the router MAC"
    );

    // REQUEST and RENEW naming another server: silence.
    for (kind, xid) in [(REQUEST, 0x0612), (RENEW, 0x0613)] {
        let mut m = Message::new(kind, xid, &duid_ll(MAC));
        m.add(OPT_SERVERID, &duid_ll([0x02, 0, 0, 0, 0x06, 0x99]))
            .ia(ip6());
        assert_eq!(
            client.exchange(&m, wait),
            None,
            "message {kind} to another server was answered"
        );
        // The same naming this server: answered (the silence was for the DUID).
        let mut m = Message::new(kind, xid + 0x100, &duid_ll(MAC));
        m.add(OPT_SERVERID, &server).ia(ip6());
        let reply = client
            .exchange(&m, wait)
            .unwrap_or_else(|| panic!("message {kind}: no REPLY, {}", host.counters()));
        assert_eq!(reply[0], REPLY);
        only_own(&reply, "REPLY");
    }

    assert_eq!(
        host.agent.counters()[Stat::Dhcp6OtherServer as usize],
        2,
        "{}",
        host.counters()
    );

    // REQUEST and RENEW as the other VM, for its address: the VM's own, the other's never
    // with a lifetime.
    for (kind, xid) in [(REQUEST, 0x0621), (RENEW, 0x0622)] {
        let mut m = Message::new(kind, xid, &as_other);
        m.add(OPT_SERVERID, &server).ia(other_ip6());
        let reply = client
            .exchange(&m, wait)
            .unwrap_or_else(|| panic!("message {kind}: no REPLY, {}", host.counters()));
        assert_eq!(reply[0], REPLY);
        only_own(
            &reply,
            &format!("message {kind} for the other VM's address"),
        );
    }

    // CONFIRM of an address off the link: NotOnLink.
    let mut confirm = Message::new(CONFIRM, 0x0631, &duid_ll(MAC));
    confirm.ia("fd00:bad::11".parse().expect("addr"));
    let reply = client
        .exchange(&confirm, wait)
        .unwrap_or_else(|| panic!("CONFIRM: no REPLY, {}", host.counters()));
    assert_eq!(reply[0], REPLY);
    assert_eq!(status(&reply), Some(STATUS_NOT_ON_LINK), "{reply:?}");
    eprintln!(
        "hand-made DHCPv6 ({hook}): {:?}; {}",
        start.elapsed(),
        host.counters()
    );
}

/// The link-local address of the VM's eth0, once duplicate address detection let it be used.
fn link_local(vm: &Vm) -> Ipv6Addr {
    let ready = wait_for(Duration::from_secs(10), || {
        let out = vm
            .ns
            .query(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("tentative") {
            return None;
        }
        text.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|c| c.split_once('/'))
            .and_then(|(a, _)| a.parse().ok())
    });
    ready.expect("no usable link-local address on eth0")
}

/// NetworkManager (libndp) solicits without a source link-layer option (RFC 4861 §4.1 makes
/// it optional): 62 bytes on the wire, the shortest solicitation there is. On a veth, XDP got
/// too little room to grow that frame to the whole advertisement body before cutting it, and
/// dropped it as `malformed`: NetworkManager never got its default route in xdp mode.
fn a_router_solicitation_without_a_link_layer_option_is_answered(hook: VmHook) {
    let host = Host::new(hook, "tap-s1");
    // The kernel's own solicitations (with the option) stop: every advertisement seen below
    // answers one of the test's.
    host.vm
        .ns
        .exec("sysctl")
        .args(["-qw", "net.ipv6.conf.eth0.router_solicitations=0"])
        .status()
        .expect("sysctl");
    std::thread::sleep(Duration::from_millis(300));
    let ll = link_local(&host.vm);
    let all_routers: Ipv6Addr = "ff02::2".parse().expect("group");
    let mut icmp = vec![133u8, 0, 0, 0, 0, 0, 0, 0];
    let mut pseudo = ll.octets().to_vec();
    pseudo.extend_from_slice(&all_routers.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    icmp[2..4].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    let mut frame = vec![0x33, 0x33, 0, 0, 0, 2];
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]);
    frame.extend_from_slice(&ll.octets());
    frame.extend_from_slice(&all_routers.octets());
    frame.extend_from_slice(&icmp);
    assert_eq!(frame.len(), 62);
    let sock = RawSocket::open(&host.vm.ns.path(), "eth0");
    for attempt in 0..3 {
        let before = host.agent.counters()[Stat::Ra6Reply as usize];
        sock.send(&frame);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut answered = false;
        while let Some(f) = sock.recv(deadline.saturating_duration_since(Instant::now())) {
            // An advertisement from the router to the solicitor.
            if f.len() > 58 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 134 {
                assert_eq!(f[38..54], ll.octets(), "to the solicitor");
                answered = true;
                break;
            }
        }
        assert!(
            answered,
            "attempt {attempt}: no advertisement; Ra6Reply {before} -> {}; {}",
            host.agent.counters()[Stat::Ra6Reply as usize],
            host.counters()
        );
    }
}
