//! DHCP end to end: a hypervisor namespace running `holdfast run`, VMs as namespaces on veth
//! pairs, real DHCP clients (ISC dhclient, dhcpcd, busybox udhcpc), and no DHCP server process
//! anywhere: every reply comes from the VM port's program, `holdfast_vm` in XDP (xdp mode) or
//! `holdfast_vm_tc` on the skb (tc mode). The clients' tests run in both modes (`xdp::` and
//! `tc::`).

use std::{
    net::Ipv4Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast_tests::{
    clients,
    netns::{Agent, NO_RATE_LIMITS, Netns, Vm, mac_str, wait_for},
    packet::Request,
    rawsock::RawSocket,
    xdp::VmHook,
};

const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MAC3: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const UNKNOWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

fn ipam(lease_time: u32, nics: &[([u8; 6], &str, &str)]) -> String {
    let nics: Vec<String> = nics
        .iter()
        .map(|(mac, ip, tap)| {
            format!(
                r#"{{ "mac": "{}", "network": "pn-blue", "ip": "{ip}", "hostname": "vm-{}",
                     "node": "hv-1", "interface": "{tap}" }}"#,
                mac_str(*mac),
                mac[5]
            )
        })
        .collect();
    format!(
        r#"{{ "networks": [ {{ "id": "pn-blue", "vni": 1001, "subnet": "10.10.0.0/24",
                 "gateway": "10.10.0.1", "dns": ["10.10.0.2"], "domain": "blue.internal",
                 "search": ["blue.internal"], "mtu": 1450,
                 "routes": [ {{ "to": "172.16.0.0/12", "via": "10.10.0.1" }} ],
                 "ntp": [], "lease_time": {lease_time} }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {} ] }}"#,
        nics.join(",")
    )
}

/// The lease every client must configure: address and prefix, default route, the classless
/// route, MTU and DNS. dhcpcd 9 applies option 26 to its routes, the others to the link.
fn assert_configured(vm: &Vm, ip: &str, with_search: bool) {
    assert_configured_mtu(vm, ip, with_search, false)
}

fn assert_configured_mtu(vm: &Vm, ip: &str, with_search: bool, mtu_on_routes: bool) {
    let (addr, prefix) = vm
        .wait_address(Duration::from_secs(30))
        .expect("no address");
    assert_eq!((addr.to_string().as_str(), prefix), (ip, 24));
    let routes = wait_for(Duration::from_secs(5), || {
        let r = vm.routes();
        (r.contains("default via 10.10.0.1") && r.contains("172.16.0.0/12 via 10.10.0.1"))
            .then_some(r)
    });
    assert!(routes.is_some(), "routes: {}", vm.routes());
    let mtu = wait_for(Duration::from_secs(5), || {
        let ok = if mtu_on_routes {
            vm.routes()
                .lines()
                .filter(|l| l.contains("via 10.10.0.1"))
                .all(|l| l.contains("mtu 1450"))
        } else {
            vm.mtu() == 1450
        };
        ok.then_some(())
    });
    assert!(mtu.is_some(), "mtu {}, routes {}", vm.mtu(), vm.routes());
    let resolv = wait_for(Duration::from_secs(5), || {
        let r = vm.ns.resolv_conf();
        r.contains("nameserver 10.10.0.2").then_some(r)
    })
    .unwrap_or_else(|| panic!("resolv.conf: {:?}", vm.ns.resolv_conf()));
    if with_search {
        assert!(resolv.contains("blue.internal"), "{resolv}");
    }
}

/// The config that puts the VM ports on `hook`.
fn mode(hook: VmHook) -> String {
    format!("[vm]\nhook = \"{hook}\"\n")
}

/// The agent of hypervisor `hv-1`, its VM ports on `hook`.
fn agent_on(hv: &Netns, hook: VmHook, ipam_json: &str) -> Agent {
    Agent::start_with(hv, "hv-1", ipam_json, &mode(hook))
}

/// No process on the hypervisor listens on the DHCP server port.
fn assert_no_dhcp_server(hv: &Netns) {
    let out = hv.exec("ss").args(["-uanp"]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.lines().any(|l| l.contains(":67 ")),
        "something listens on udp/67: {text}"
    );
}

fn dhclient_gets_its_lease(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(3600, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let client = clients::dhclient(&vm, None);
    assert_configured(&vm, "10.10.0.11", true);
    assert_no_dhcp_server(&hv);
    assert!(
        client
            .log()
            .contains("DHCPACK of 10.10.0.11 from 10.10.0.1"),
        "{}",
        client.log()
    );

    let leases = agent.leases();
    let line = leases
        .lines()
        .find(|l| l.contains("02:00:00:00:00:01"))
        .unwrap_or_else(|| panic!("{leases}"));
    for field in [
        "tap-vm1",
        "10.10.0.11/24",
        "10.10.0.1",
        "1001",
        "3600s",
        "vm-1",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(agent.metric("holdfast_dhcp_replies_total{type=\"offer\"}") >= 1.0);
    assert!(agent.metric("holdfast_dhcp_replies_total{type=\"ack\"}") >= 1.0);
    assert_eq!(agent.metric("holdfast_leases"), 1.0);

    // The VM gives its address back: no reply, and the agent logs it.
    let clients::Client { proc, dir, .. } = client;
    drop(proc);
    let release = vm
        .ns
        .exec("dhclient")
        .args(["-r", "-lf"])
        .arg(dir.path().join("dhclient.leases"))
        .arg("-pf")
        .arg(dir.path().join("dhclient.pid"))
        .arg("eth0")
        .output()
        .expect("dhclient -r");
    assert!(release.status.success());
    let logged = wait_for(Duration::from_secs(5), || {
        agent.logs().contains("event=release").then_some(())
    });
    assert!(
        logged.is_some(),
        "release counter {}, dhclient -r: {}{}\n{}",
        agent.counters()[Stat::DhcpRelease as usize],
        String::from_utf8_lossy(&release.stdout),
        String::from_utf8_lossy(&release.stderr),
        agent.logs()
    );
    assert!(
        agent.logs().contains("mac=02:00:00:00:00:01"),
        "{}",
        agent.logs()
    );
    assert!(agent.metric("holdfast_dhcp_events_total{type=\"release\"}") >= 1.0);
}

fn dhcpcd_gets_its_lease_with_rapid_commit(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(3600, &[(MAC2, "10.10.0.12", "tap-vm2")]));
    let vm = Vm::new(&hv, "tap-vm2", MAC2);
    let client = clients::dhcpcd(&vm);
    let configured =
        std::panic::catch_unwind(|| assert_configured_mtu(&vm, "10.10.0.12", true, true));
    assert!(configured.is_ok(), "dhcpcd log:\n{}", client.log());
    // dhcpcd asks for rapid commit (RFC 4039) and gets an ACK straight to its DISCOVER.
    assert!(agent.metric("holdfast_dhcp_rapid_commit_total") >= 1.0);
    assert_eq!(
        agent.metric("holdfast_dhcp_replies_total{type=\"offer\"}"),
        0.0
    );
}

fn udhcpc_gets_its_lease_and_renews(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(10, &[(MAC3, "10.10.0.13", "tap-vm3")]));
    let vm = Vm::new(&hv, "tap-vm3", MAC3);
    // Sees the replies: udhcpc sends a client identifier by default (type 1 and its MAC), and
    // every reply must carry it back unaltered (RFC 6842).
    let capture = RawSocket::open(&vm.ns.path(), "eth0");
    let client = clients::udhcpc(&vm, &[]);
    assert_configured(&vm, "10.10.0.13", true);
    let mut replies = 0;
    while let Some(frame) = capture.recv(Duration::from_millis(200)) {
        if let Ok(r) = holdfast_tests::packet::parse_reply(&frame) {
            let mut id = vec![1];
            id.extend_from_slice(&MAC3);
            assert_eq!(r.option(61), Some(&id[..]), "reply {:?}", r.codes());
            replies += 1;
        }
    }
    assert!(replies >= 2, "saw {replies} replies");
    let events = client.log();
    assert!(
        events.contains("bound ip=10.10.0.13 mask=24 router=10.10.0.1 dns=10.10.0.2"),
        "{events}"
    );
    assert!(events.contains("mtu=1450"), "{events}");
    assert!(
        events.contains("staticroutes=172.16.0.0/12 10.10.0.1 0.0.0.0/0 10.10.0.1"),
        "{events}"
    );
    // busybox 1.35 sends its unicast renew from a short-lived socket connected to the server;
    // an XDP reply arrives within microseconds, lands in that socket and is closed unread, so
    // udhcpc falls back to a broadcast renew (answered too). See README, "Known interactions".
    let renewed = wait_for(Duration::from_secs(40), || {
        (client.log().matches("\nrenew ").count() >= 1).then_some(())
    });
    assert!(renewed.is_some(), "{}", client.log());
    let c = agent.counters();
    assert!(c[Stat::DhcpRequestRenewing as usize] + c[Stat::DhcpRequestRebinding as usize] >= 1);
    assert!(agent.metric("holdfast_arp_replies_total") >= 1.0);
}

fn dhclient_renews(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(10, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let client = clients::dhclient(&vm, None);
    assert_configured(&vm, "10.10.0.11", true);
    let renewed = wait_for(Duration::from_secs(20), || {
        (agent.counters()[Stat::DhcpRequestRenewing as usize] >= 2).then_some(())
    });
    assert!(renewed.is_some(), "{}", client.log());
    assert_eq!(
        vm.address().map(|a| a.0),
        Some(Ipv4Addr::new(10, 10, 0, 11))
    );
}

/// A unicast renewal leaves the client's UDP socket with its checksum left to the NIC
/// (`CHECKSUM_PARTIAL`: the veth offloads it, as a virtio guest does), and so reaches the port's
/// program; its reply then leaves through a port that does not offload checksums (a tap whose
/// guest takes no partial checksums): the kernel must not "complete" a checksum the reply
/// already carries whole. Every renewal is acknowledged, and dhclient, which checks the UDP
/// checksum of what it reads, finds none bad.
fn renewals_with_checksum_offload_are_acknowledged(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(10, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    let ethtool = hv
        .exec("ethtool")
        .args(["-K", "tap-vm1", "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(ethtool.status.success(), "{ethtool:?}");
    let client = clients::dhclient(&vm, None);
    assert_configured(&vm, "10.10.0.11", true);
    // Two renewals (every 5 s with a 10 s lease), each acknowledged: the initial ACK and two.
    let renewed = wait_for(Duration::from_secs(25), || {
        let acks = client.log().matches("DHCPACK of 10.10.0.11").count();
        (agent.counters()[Stat::DhcpRequestRenewing as usize] >= 2 && acks >= 3).then_some(())
    });
    let log = client.log();
    assert!(
        renewed.is_some(),
        "{} renewals, log:\n{log}",
        agent.counters()[Stat::DhcpRequestRenewing as usize]
    );
    assert!(!log.contains("bad udp checksum"), "{log}");
    assert_eq!(
        agent.counters()[Stat::DhcpRequestRebinding as usize],
        0,
        "{log}"
    );
}

fn a_wrong_address_gets_a_nak_and_the_client_recovers(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(3600, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm = Vm::new(&hv, "tap-vm1", MAC1);
    // A lease from elsewhere: dhclient starts in INIT-REBOOT asking for 10.10.0.99.
    let old = "lease {\n  interface \"eth0\";\n  fixed-address 10.10.0.99;\n  \
               option subnet-mask 255.255.255.0;\n  option dhcp-lease-time 3600;\n  \
               renew 4 2099/01/01 00:00:00;\n  rebind 4 2099/01/01 00:00:00;\n  \
               expire 4 2099/01/01 00:00:00;\n}\n";
    let client = clients::dhclient(&vm, Some(old));
    assert_configured(&vm, "10.10.0.11", true);
    assert!(
        agent.counters()[Stat::DhcpNak as usize] >= 1,
        "{}",
        client.log()
    );
    assert!(agent.counters()[Stat::DhcpRequestInitReboot as usize] >= 1);
    assert!(
        client.log().contains("DHCPNAK from 10.10.0.1"),
        "{}",
        client.log()
    );
}

fn an_unknown_mac_gets_nothing(hook: VmHook) {
    let hv = Netns::new("hv");
    let agent = agent_on(&hv, hook, &ipam(3600, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    // A VM on a managed tap, with a MAC IPAM does not know.
    let vm = Vm::new(&hv, "tap-vm1", UNKNOWN_MAC);
    let mut client = clients::udhcpc(&vm, &["-n", "-t", "3", "-T", "1"]);
    let status = client.proc.0.wait().expect("udhcpc");
    assert!(!status.success(), "udhcpc got a lease: {}", client.log());
    assert_eq!(vm.address(), None);
    assert!(agent.counters()[Stat::DhcpMiss as usize] >= 3);
    assert_eq!(
        agent.metric("holdfast_dhcp_misses_total"),
        agent.counters()[Stat::DhcpMiss as usize] as f64
    );
}

fn dhcp_keeps_answering_through_sigkill_and_restart(hook: VmHook) {
    let hv = Netns::new("hv");
    // The prober below asks 50 times a second, ten times what the per-port limit lets a real
    // client ask.
    let mut agent = Agent::start_with(
        &hv,
        "hv-1",
        &ipam(10, &[(MAC3, "10.10.0.13", "tap-vm3")]),
        &format!("{NO_RATE_LIMITS}{}", mode(hook)),
    );
    let vm = Vm::new(&hv, "tap-vm3", MAC3);
    let client = clients::dhclient(&vm, None);
    assert_configured(&vm, "10.10.0.13", false);

    agent.kill();
    let acks_at_kill = agent.counters()[Stat::DhcpAck as usize];
    let renewals = || agent.counters()[Stat::DhcpRequestRenewing as usize];
    let renewals_at_kill = renewals();
    // With no agent at all, renewals (every 5 s) keep being answered from the pinned maps.
    let renewed = wait_for(Duration::from_secs(20), || {
        (renewals() >= renewals_at_kill + 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renewal while the agent is down: {}",
        client.log()
    );
    let acks_while_down = agent.counters()[Stat::DhcpAck as usize];
    assert!(acks_while_down >= acks_at_kill + 2);
    assert_eq!(
        vm.address().map(|a| a.0),
        Some(Ipv4Addr::new(10, 10, 0, 13))
    );

    // Restart while a raw client asks every 20 ms: not one request goes unanswered.
    let sock = RawSocket::open(&vm.ns.path(), "eth0");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let prober = thread::spawn(move || {
        let mut xid = 0x4000_0000u32;
        let (mut sent, mut missed) = (0u32, 0u32);
        while done_rx.try_recv().is_err() {
            xid += 1;
            let mut req = Request::init_reboot(MAC3, Ipv4Addr::new(10, 10, 0, 13));
            req.xid = xid;
            sent += 1;
            match sock.exchange(&req, Duration::from_millis(500)) {
                Some(r) if r.msg_type() == Some(5) => {}
                _ => missed += 1,
            }
            thread::sleep(Duration::from_millis(20));
        }
        (sent, missed)
    });
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    agent.spawn(&hv);
    let restart_took = started.elapsed();
    thread::sleep(Duration::from_millis(500));
    done_tx.send(()).expect("stop prober");
    let (sent, missed) = prober.join().expect("prober");
    assert!(sent > 20, "only {sent} probes in {restart_took:?}");
    assert_eq!(
        missed, 0,
        "{missed} of {sent} requests unanswered across the restart"
    );
    assert!(
        agent
            .logs()
            .contains("replaced the program of the pinned link"),
        "{}",
        agent.logs()
    );
    assert!(
        agent.logs().contains("adopted_bindings=1"),
        "{}",
        agent.logs()
    );

    // The counters continued: the restarted agent reports what happened while it was down.
    let acks = agent.metric("holdfast_dhcp_replies_total{type=\"ack\"}");
    assert!(acks >= (acks_while_down + u64::from(sent)) as f64, "{acks}");
}

#[test]
fn interfaces_are_attached_as_they_appear_and_detached_as_they_go() {
    let hv = Netns::new("hv");
    let agent = Agent::start(
        &hv,
        "hv-1",
        &ipam(
            3600,
            &[
                (MAC1, "10.10.0.11", "tap-vm1"),
                (MAC2, "10.10.0.12", "tap-vm2"),
            ],
        ),
    );
    assert_eq!(agent.metric("holdfast_leases"), 0.0);
    // The taps appear after the agent started, as VMs boot.
    let vm1 = Vm::new(&hv, "tap-vm1", MAC1);
    let vm2 = Vm::new(&hv, "tap-vm2", MAC2);
    let ready = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 2.0).then_some(())
    });
    assert!(ready.is_some(), "{}", agent.logs());
    let _c1 = clients::udhcpc(&vm1, &[]);
    assert_eq!(
        vm1.wait_address(Duration::from_secs(20)).map(|a| a.0),
        Some(Ipv4Addr::new(10, 10, 0, 11))
    );
    // A VM goes away: its binding and link go with it.
    drop(vm2);
    let gone = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 1.0 && agent.metric("holdfast_interfaces") == 1.0)
            .then_some(())
    });
    assert!(gone.is_some(), "{}", agent.logs());
}

#[test]
fn ipam_changes_apply_and_bad_entries_are_rejected_alone() {
    let hv = Netns::new("hv");
    let agent = Agent::start(&hv, "hv-1", &ipam(3600, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let vm1 = Vm::new(&hv, "tap-vm1", MAC1);
    let sock1 = RawSocket::open(&vm1.ns.path(), "eth0");
    let ack = |sock: &RawSocket, ip: [u8; 4], mac| {
        let r = sock.exchange(
            &Request::init_reboot(mac, Ipv4Addr::from(ip)),
            Duration::from_secs(1),
        );
        r.and_then(|r| r.msg_type())
    };
    assert_eq!(ack(&sock1, [10, 10, 0, 11], MAC1), Some(5));

    // Add a NIC, change the first one's address, and add three bad entries.
    let mut doc: serde_json::Value = serde_json::from_str(&ipam(
        3600,
        &[
            (MAC1, "10.10.0.21", "tap-vm1"),
            (MAC2, "10.10.0.12", "tap-vm2"),
        ],
    ))
    .expect("json");
    let nics = doc["nics"].as_array_mut().expect("nics");
    nics.push(serde_json::json!({"mac": "02:00:00:00:00:0a", "network": "pn-blue", "ip": "10.10.0.12", "node": "hv-1", "interface": "tap-x"}));
    nics.push(serde_json::json!({"mac": "02:00:00:00:00:0b", "network": "pn-nope", "ip": "10.10.0.30", "node": "hv-1", "interface": "tap-y"}));
    nics.push(serde_json::json!({"mac": "not-a-mac", "network": "pn-blue", "ip": "10.10.0.31", "node": "hv-1", "interface": "tap-z"}));
    agent.write_ipam(&doc.to_string());
    let vm2 = Vm::new(&hv, "tap-vm2", MAC2);
    let sock2 = RawSocket::open(&vm2.ns.path(), "eth0");
    let applied = wait_for(Duration::from_secs(10), || {
        (ack(&sock1, [10, 10, 0, 21], MAC1) == Some(5)).then_some(())
    });
    assert!(applied.is_some(), "{}", agent.logs());
    assert_eq!(
        ack(&sock1, [10, 10, 0, 11], MAC1),
        Some(6),
        "old address must get a NAK"
    );
    assert_eq!(ack(&sock2, [10, 10, 0, 12], MAC2), Some(5));
    for reason in ["duplicate_ip", "unknown_network", "invalid_mac"] {
        let sample = format!("holdfast_ipam_rejected_entries{{reason=\"{reason}\"}}");
        assert_eq!(agent.metric(&sample), 1.0, "{sample}");
    }
    let logs = agent.logs();
    assert!(
        logs.contains("nics[4]") && logs.contains("invalid_mac"),
        "{logs}"
    );

    // An invalid document changes nothing: the last good state keeps serving.
    agent.write_ipam("{ \"networks\": [ this is not json");
    let seen = wait_for(Duration::from_secs(10), || {
        agent
            .logs()
            .contains("IPAM document rejected")
            .then_some(())
    });
    assert!(seen.is_some(), "{}", agent.logs());
    assert!(agent.logs().contains("line 1 column"), "{}", agent.logs());
    assert_eq!(ack(&sock1, [10, 10, 0, 21], MAC1), Some(5));
    assert_eq!(ack(&sock2, [10, 10, 0, 12], MAC2), Some(5));
    assert_eq!(agent.metric("holdfast_leases"), 2.0);
}

#[test]
fn holdfast_leases_works_with_the_agent_down() {
    let hv = Netns::new("hv");
    let mut agent = Agent::start(&hv, "hv-1", &ipam(3600, &[(MAC1, "10.10.0.11", "tap-vm1")]));
    let _vm = Vm::new(&hv, "tap-vm1", MAC1);
    wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 1.0).then_some(())
    })
    .expect("lease applied");
    agent.stop();
    let out = agent.leases();
    assert!(
        out.contains("tap-vm1") && out.contains("10.10.0.11/24"),
        "{out}"
    );
    // `check` validates without touching anything.
    let check = Command::new(holdfast_tests::workspace_bin("holdfast"))
        .args(["check", "--config"])
        .arg(&agent.config)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// The routes of [`long_routes_ipam`]: 36 /16s and the default route, 257 bytes of option 121.
fn long_routes() -> Vec<String> {
    (0..36).map(|i| format!("10.{}.0.0/16", 100 + i)).collect()
}

/// One network whose classless routes are longer than one option can carry (RFC 3396): the
/// renderer sends 121 as two instances split between routes; the whole blob still fits.
fn long_routes_ipam(nics: &[([u8; 6], &str, &str)]) -> String {
    let routes: Vec<String> = long_routes()
        .iter()
        .map(|to| format!(r#"{{ "to": "{to}", "via": "10.10.0.1" }}"#))
        .collect();
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
                 "gateway": "10.10.0.1", "routes": [ {} ] }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {} ] }}"#,
        routes.join(","),
        nics.join(",")
    )
}

/// Option 121 over 255 bytes (RFC 3396: two consecutive instances) reaches dhclient, dhcpcd and
/// udhcpc, and each installs every route and the default route.
fn every_client_installs_a_121_longer_than_255_bytes(hook: VmHook) {
    let start = Instant::now();
    let hv = Netns::new("hv");
    let agent = agent_on(
        &hv,
        hook,
        &long_routes_ipam(&[
            (MAC1, "10.10.0.11", "tap-vm1"),
            (MAC2, "10.10.0.12", "tap-vm2"),
            (MAC3, "10.10.0.13", "tap-vm3"),
        ]),
    );
    let vms = [
        Vm::new(&hv, "tap-vm1", MAC1),
        Vm::new(&hv, "tap-vm2", MAC2),
        Vm::new(&hv, "tap-vm3", MAC3),
    ];
    let clients = [
        clients::dhclient(&vms[0], None),
        clients::dhcpcd(&vms[1]),
        clients::udhcpc(&vms[2], &[]),
    ];
    for (vm, client) in vms.iter().zip(&clients) {
        let want = long_routes();
        let routes = wait_for(Duration::from_secs(30), || {
            let r = vm.routes();
            (r.contains("default via 10.10.0.1")
                && want
                    .iter()
                    .all(|to| r.contains(&format!("{to} via 10.10.0.1"))))
            .then_some(r)
        });
        assert!(
            routes.is_some(),
            "{} installed {} of {} routes:\n{}\n{}\n{}\n{}\n{}",
            client.name,
            want.iter()
                .filter(|to| vm.routes().contains(&format!("{to} via 10.10.0.1")))
                .count(),
            want.len(),
            vm.routes(),
            client.log(),
            std::fs::read_to_string(client.dir.path().join(format!("{}.log", client.name)))
                .unwrap_or_default(),
            agent
                .http("/metrics")
                .1
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.logs()
        );
    }
    // The reply grows a 342-byte request by about 240 bytes: more than a veth's headroom or
    // its tailroom alone, never dropped for want of room.
    assert_eq!(
        agent.metric("holdfast_dhcp_drops_total{reason=\"no_room\"}"),
        0.0
    );
    eprintln!("a 121 of 257 bytes on three clients: {:?}", start.elapsed());
}

holdfast_tests::for_each_hook!(
    renewals_with_checksum_offload_are_acknowledged,
    dhclient_gets_its_lease,
    dhcpcd_gets_its_lease_with_rapid_commit,
    udhcpc_gets_its_lease_and_renews,
    dhclient_renews,
    a_wrong_address_gets_a_nak_and_the_client_recovers,
    an_unknown_mac_gets_nothing,
    dhcp_keeps_answering_through_sigkill_and_restart,
    every_client_installs_a_121_longer_than_255_bytes,
);
