//! VPC forwarding end to end: two hypervisor namespaces joined by an underlay link, VMs on both,
//! two private networks with the same subnet on different VNIs, an agent on each host.

use std::net::Ipv4Addr;

use agent_common::Stat;
use holdfast_tests::{
    vpc::{Cloud, Net, VmSpec},
    xdp::{VmHook, forward_stats},
};

const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
const A2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02];
const A3: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];
const B1: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x01];
const B3: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x03];
const IP11: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP12: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const IP13: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 13);

// What a VM port's program does runs on both hooks (`xdp::<test>`, `tc::<test>`); what only
// the underlay's does, once.
holdfast_tests::for_each_hook!(
    vms_reach_each_other_on_the_same_host_and_across_hosts,
    tenants_with_the_same_subnet_never_see_each_other,
    tcp_at_full_mtu_with_offloads_on,
    spoofed_frames_are_dropped,
    arp_is_answered_on_the_host_and_never_crosses_the_underlay,
    established_traffic_keeps_flowing_with_the_agents_killed,
    an_oversized_frame_gets_icmp_fragmentation_needed,
    a_tap_vm_sending_gso_super_frames_takes_the_skb_path,
    vpc_changes_apply_at_runtime_and_holdfast_vpc_shows_them,
    a_blackhole_route_to_a_vtep_quarantines_it,
);

const NETS: [Net; 2] = [Net { id: "a", vni: 1001 }, Net { id: "b", vni: 1002 }];

/// A1, A2 on hv-1 and A3 on hv-2 in network a; in network b, B3 on hv-2 with A1's address and
/// B1 on hv-1 with A3's.
fn specs() -> Vec<VmSpec> {
    vec![
        VmSpec {
            net: "a",
            host: 0,
            mac: A1,
            ip: IP11,
            tap: "tap-a1",
            real_tap: false,
        },
        VmSpec {
            net: "a",
            host: 0,
            mac: A2,
            ip: IP12,
            tap: "tap-a2",
            real_tap: false,
        },
        VmSpec {
            net: "a",
            host: 1,
            mac: A3,
            ip: IP13,
            tap: "tap-a3",
            real_tap: false,
        },
        VmSpec {
            net: "b",
            host: 1,
            mac: B3,
            ip: IP11,
            tap: "tap-b3",
            real_tap: false,
        },
        VmSpec {
            net: "b",
            host: 0,
            mac: B1,
            ip: IP13,
            tap: "tap-b1",
            real_tap: false,
        },
    ]
}

fn vms_reach_each_other_on_the_same_host_and_across_hosts(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    assert_eq!(cloud.ping(A1, IP12, 5), 5, "same host");
    assert_eq!(cloud.ping(A1, IP13, 5), 5, "across hosts");
    assert_eq!(cloud.ping(A3, IP11, 5), 5, "back");
    let hv1 = cloud.agents[0].counters();
    let hv2 = cloud.agents[1].counters();
    let (local, encap) = forward_stats(hook);
    assert!(hv1[local as usize] >= 10);
    assert!(hv1[encap as usize] >= 5);
    assert!(hv2[Stat::VxlanDecap as usize] >= 5);
    assert!(hv1[Stat::ArpReply as usize] >= 1);
}

/// A counter of a VM's IP stack, from `/proc/net/snmp` (`table`: `Icmp`, `Udp`…).
fn snmp(cloud: &Cloud, mac: [u8; 6], table: &str, counter: &str) -> u64 {
    cloud.vm(mac).ns.proc_counter("snmp", table, counter)
}

/// ICMP echo requests a VM's IP stack received so far (IPv6 neighbour discovery from the
/// host's side of the veth does not count).
fn echoes_in(cloud: &Cloud, mac: [u8; 6]) -> u64 {
    snmp(cloud, mac, "Icmp", "InEchos")
}

/// UDP datagrams a VM's IP stack received so far.
fn udp_in(cloud: &Cloud, mac: [u8; 6]) -> u64 {
    snmp(cloud, mac, "Udp", "InDatagrams") + snmp(cloud, mac, "Udp", "NoPorts")
}

fn tenants_with_the_same_subnet_never_see_each_other(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let b3_before = echoes_in(&cloud, B3);
    let a1_before = echoes_in(&cloud, A1);
    // A3 talks to 10.0.0.11 in network a: A1 answers; B3, with the same address in b, hears
    // nothing.
    assert_eq!(cloud.ping(A3, IP11, 10), 10);
    assert_eq!(echoes_in(&cloud, A1), a1_before + 10);
    assert_eq!(
        echoes_in(&cloud, B3),
        b3_before,
        "network b received network a's traffic"
    );
    // And the other way around: B1 reaches B3 (10.0.0.11 in b), A1 hears nothing.
    let a1_before = echoes_in(&cloud, A1);
    assert_eq!(cloud.ping(B1, IP11, 10), 10);
    assert_eq!(echoes_in(&cloud, B3), b3_before + 10);
    assert_eq!(
        echoes_in(&cloud, A1),
        a1_before,
        "network a received network b's traffic"
    );
}

fn tcp_at_full_mtu_with_offloads_on(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let a3 = cloud.vm(A3);
    // Offloads as a guest has them by default.
    let features = a3
        .ns
        .exec("ethtool")
        .args(["-k", "eth0"])
        .output()
        .expect("ethtool");
    assert!(String::from_utf8_lossy(&features.stdout).contains("tx-checksumming: on"));
    let _server = a3.ns.iperf3_server(5201);
    let out = cloud
        .vm(A1)
        .ns
        .exec("iperf3")
        .args(["-c", "10.0.0.13", "-p", "5201", "-t", "3", "-J"])
        .output()
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    assert!(
        bps > 200e6,
        "TCP across hosts at {:.0} Mbit/s: {}",
        bps / 1e6,
        String::from_utf8_lossy(&out.stdout)
    );
    // Full-size segments: MSS 1410 on a 1450 MTU.
    let mss = v["start"]["tcp_mss_default"].as_u64().unwrap_or(0);
    assert!(mss >= 1398, "MSS {mss}");
    // The receiving host hands decapsulated TCP to the underlay's GRO; its TC program then
    // delivers the aggregated segments.
    let gro = cloud.agents[1].counters()[Stat::DecapGro as usize];
    assert!(
        gro > 1000,
        "only {gro} decapsulated TCP frames went through GRO"
    );
    eprintln!(
        "iperf3 across hosts: {:.0} Mbit/s, {retrans} retransmits, MSS {mss}, {gro} frames via GRO",
        bps / 1e6
    );
}

fn spoofed_frames_are_dropped(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let a1 = cloud.vm(A1);
    // The neighbour is known (so the spoofed datagrams are sent, not stopped at ARP).
    assert_eq!(cloud.ping(A1, IP13, 1), 1);
    // Another address on the same NIC.
    a1.ns.ip(&["addr", "add", "10.0.0.99/24", "dev", "eth0"]);
    let spoofed = a1
        .ns
        .exec("ping")
        .args([
            "-n",
            "-c",
            "3",
            "-i",
            "0.1",
            "-W",
            "1",
            "-I",
            "10.0.0.99",
            "10.0.0.13",
        ])
        .output()
        .expect("ping");
    assert!(
        !spoofed.status.success(),
        "a spoofed source address got through"
    );
    assert!(cloud.agents[0].counters()[Stat::DropSpoofedIp as usize] >= 3);
    // Claiming the address in ARP is refused too.
    a1.ns.ip(&["neigh", "flush", "dev", "eth0"]);
    let _ = a1
        .ns
        .exec("ping")
        .args(["-n", "-c", "1", "-W", "1", "-I", "10.0.0.99", "10.0.0.12"])
        .output();
    assert!(cloud.agents[0].counters()[Stat::DropArpSpoof as usize] >= 1);
    a1.ns.ip(&["addr", "del", "10.0.0.99/24", "dev", "eth0"]);
    // Another MAC on the same interface.
    a1.ns
        .ip(&["link", "set", "eth0", "address", "02:0a:00:00:00:77"]);
    assert_eq!(cloud.ping(A1, IP13, 3), 0, "a spoofed MAC got through");
    assert!(cloud.agents[0].counters()[Stat::DropSpoofedMac as usize] >= 1);
    // Its own again: it works.
    a1.ns
        .ip(&["link", "set", "eth0", "address", "02:0a:00:00:00:01"]);
    a1.ns.ip(&["neigh", "flush", "dev", "eth0"]);
    assert_eq!(cloud.ping(A1, IP13, 3), 3);
}

fn arp_is_answered_on_the_host_and_never_crosses_the_underlay(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let hv1 = &cloud.hosts[0];
    let capture = holdfast_tests::netns::Proc(
        hv1.exec("tcpdump")
            .args(["-n", "-l", "-i", "ul0", "-w"])
            .arg(cloud.agents[0].dir.path().join("ul0.pcap"))
            .arg("arp or (udp port 4789 and udp[8+12:2] = 0x0806)")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    for vm in [A1, A2] {
        cloud.vm(vm).ns.ip(&["neigh", "flush", "dev", "eth0"]);
    }
    assert_eq!(cloud.ping(A1, IP13, 3), 3);
    assert_eq!(cloud.ping(A2, IP13, 3), 3);
    assert_eq!(cloud.ping(A1, IP12, 3), 3);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(capture);
    let read = hv1
        .exec("tcpdump")
        .args(["-n", "-r"])
        .arg(cloud.agents[0].dir.path().join("ul0.pcap"))
        .output()
        .expect("tcpdump -r");
    let lines = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        !lines.contains("10.0.0."),
        "VM ARP on the underlay:\n{lines}"
    );
    assert!(cloud.agents[0].counters()[Stat::ArpReply as usize] >= 3);
}

/// A VXLAN frame from hv-2's underlay interface, as a misbehaving host could send it.
fn forged_vxlan(src: Ipv4Addr, vni: u32, inner_dst: [u8; 6], inner_src: [u8; 6]) -> Vec<u8> {
    let inner =
        holdfast_tests::packet::udp_frame(inner_src, inner_dst, IP13, IP11, 1, 2, &[7; 64], false);
    let mut payload = vec![0x08, 0, 0, 0];
    let v = vni.to_be_bytes();
    payload.extend_from_slice(&[v[1], v[2], v[3], 0]);
    payload.extend_from_slice(&inner);
    holdfast_tests::packet::udp_frame(
        [0x02, 0x99, 0, 0, 0, 2],
        [0xff; 6],
        src,
        Ipv4Addr::new(198, 18, 0, 1),
        50000,
        4789,
        &payload,
        false,
    )
}

#[test]
fn forged_vxlan_is_dropped() {
    let cloud = Cloud::new(&NETS, &specs());
    let a1_before = udp_in(&cloud, A1);
    let sock = holdfast_tests::rawsock::RawSocket::open(&cloud.hosts[1].path(), "ul0");
    let hv1 = &cloud.agents[0];
    let cases = [
        (
            forged_vxlan(Ipv4Addr::new(198, 18, 0, 66), 1001, A1, A3),
            Stat::DropUnknownVtep,
        ),
        // Network b's VNI (it has a NIC here) aimed at network a's VM.
        (
            forged_vxlan(Ipv4Addr::new(198, 18, 0, 2), 1002, A1, B3),
            Stat::DropUnknownInnerDst,
        ),
        (
            forged_vxlan(Ipv4Addr::new(198, 18, 0, 2), 7777, A1, A3),
            Stat::DropUnknownVni,
        ),
        // hv-2 speaking for a NIC of hv-1.
        (
            forged_vxlan(Ipv4Addr::new(198, 18, 0, 2), 1001, A1, A2),
            Stat::DropInnerSpoof,
        ),
    ];
    for (frame, stat) in cases {
        let before = hv1.counters()[stat as usize];
        sock.send(&frame);
        let seen = holdfast_tests::netns::wait_for(std::time::Duration::from_secs(2), || {
            (hv1.counters()[stat as usize] > before).then_some(())
        });
        assert!(seen.is_some(), "{stat:?} not counted");
    }
    assert_eq!(
        udp_in(&cloud, A1),
        a1_before,
        "a forged frame reached the VM"
    );
}

#[test]
fn the_hosts_own_traffic_on_the_underlay_still_works() {
    let cloud = Cloud::new(&NETS, &specs());
    let hv1 = &cloud.hosts[0];
    let ping = hv1
        .exec("ping")
        .args(["-n", "-c", "3", "-i", "0.1", "198.18.0.2"])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let _server = cloud.hosts[1].iperf3_server(5202);
    let out = hv1
        .exec("iperf3")
        .args(["-c", "198.18.0.2", "-p", "5202", "-t", "1"])
        .output()
        .expect("iperf3");
    assert!(
        out.status.success(),
        "iperf3 over the underlay failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cloud.agents[1].counters()[Stat::UnderlayPass as usize] > 10);
}

fn established_traffic_keeps_flowing_with_the_agents_killed(hook: VmHook) {
    let mut cloud = Cloud::in_mode(&NETS, &specs(), hook);
    assert_eq!(cloud.ping(A1, IP13, 3), 3);
    let a1 = cloud.vm(A1).ns.name.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &a1,
                "ping",
                "-n",
                "-q",
                "-c",
                "100",
                "-i",
                "0.02",
                "-W",
                "1",
                "10.0.0.13",
            ])
            .output()
            .expect("ping")
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    for agent in &mut cloud.agents {
        agent.kill();
    }
    let out = pinger.join().expect("pinger");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("100 received"), "{text}");
    // Still fine long after, and a new flow too.
    assert_eq!(cloud.ping(A2, IP13, 5), 5);
    assert_eq!(cloud.ping(B1, IP11, 5), 5);
}

fn an_oversized_frame_gets_icmp_fragmentation_needed(hook: VmHook) {
    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let a1 = cloud.vm(A1);
    // The VM ignores the network's MTU (1450) and sends 1500-byte datagrams with DF set.
    a1.ns.ip(&["link", "set", "eth0", "mtu", "1500"]);
    let out = a1
        .ns
        .exec("ping")
        .args([
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1472",
            "10.0.0.13",
        ])
        .output()
        .expect("ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "no fragmentation-needed with the network's MTU: {text}"
    );
    assert!(cloud.agents[0].counters()[Stat::IcmpFragNeeded as usize] >= 1);
    // With the MTU it learned, it gets through.
    let ok = a1
        .ns
        .exec("ping")
        .args(["-n", "-c", "2", "-s", "1400", "10.0.0.13"])
        .output()
        .expect("ping");
    assert!(ok.status.success());
}

const T1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x21];
const IP21: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);

fn a_tap_vm_sending_gso_super_frames_takes_the_skb_path(hook: VmHook) {
    let mut s = specs();
    s.push(VmSpec {
        net: "a",
        host: 0,
        mac: T1,
        ip: IP21,
        tap: "tap-t1",
        real_tap: true,
    });
    let cloud = Cloud::in_mode(&NETS, &s, hook);
    assert_eq!(cloud.ping(T1, IP13, 3), 3, "tap VM to a remote VM");
    assert_eq!(cloud.ping(A3, IP21, 3), 3, "remote VM to the tap VM");
    assert_eq!(cloud.ping(T1, IP11, 3), 3, "tap VM to a VM on its host");
    // Guest TCP with TSO: 64 KiB segments reach the hypervisor and are encapsulated whole on
    // the skb path, then segmented by the kernel on the way out (the underlay is wire-like).
    let ofo_before = cloud
        .vm_ns(A3)
        .proc_counter("netstat", "TcpExt", "TCPOFOQueue");
    let bps = cloud.iperf(T1, A3, IP13, 3);
    let c = cloud.agents[0].counters();
    // Every segment of a frame reaches the receiving VM in order. The segments leave without
    // the tap's socket: otherwise the last one of each frame carries it across the veth
    // underlay, GRO on hv-2 (its TC underlay in tc mode) will not merge it with the others,
    // and it reaches the VM ahead of them, once per frame.
    let ofo = cloud
        .vm_ns(A3)
        .proc_counter("netstat", "TcpExt", "TCPOFOQueue")
        - ofo_before;
    assert!(
        ofo * 100 < c[Stat::SkbEncap as usize],
        "{ofo} segments reached the receiving VM out of order, for {} frames",
        c[Stat::SkbEncap as usize]
    );
    assert!(
        bps > 100e6,
        "tap VM TCP across hosts at {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(
        c[Stat::SkbEncap as usize] > 100,
        "GSO frames did not take the skb path: {}",
        c[Stat::SkbEncap as usize]
    );
    eprintln!(
        "tap VM (TSO) to a remote VM: {:.0} Mbit/s, {} skb-path encapsulations",
        bps / 1e6,
        c[Stat::SkbEncap as usize]
    );
    // And the other way, into the tap.
    let back = cloud.iperf(A3, T1, IP21, 2);
    assert!(
        back > 100e6,
        "remote VM to the tap VM at {:.0} Mbit/s",
        back / 1e6
    );
}

fn vpc_changes_apply_at_runtime_and_holdfast_vpc_shows_them(hook: VmHook) {
    let s = specs();
    let cloud = Cloud::in_mode(&NETS, &s, hook);
    // A new VM in network a on hv-2, unknown to IPAM at first.
    let a4_mac = [0x02, 0x0a, 0, 0, 0, 0x04];
    let a4_ip = Ipv4Addr::new(10, 0, 0, 14);
    let a4 = holdfast_tests::netns::Vm::new(&cloud.hosts[1], "tap-a4", a4_mac);
    a4.ns.ip(&["addr", "add", "10.0.0.14/24", "dev", "eth0"]);
    assert_eq!(
        cloud.ping(A1, a4_ip, 2),
        0,
        "a VM IPAM does not know must not be reachable"
    );
    let mut more = s.clone();
    more.push(VmSpec {
        net: "a",
        host: 1,
        mac: a4_mac,
        ip: a4_ip,
        tap: "tap-a4",
        real_tap: false,
    });
    let doc = holdfast_tests::vpc::ipam(&NETS, &more, 3600);
    for a in &cloud.agents {
        a.write_ipam(&doc);
    }
    let reachable = holdfast_tests::netns::wait_for(std::time::Duration::from_secs(10), || {
        (cloud.ping(A1, a4_ip, 1) == 1).then_some(())
    });
    assert!(reachable.is_some(), "{}", cloud.agents[0].logs());

    // What hv-1's data plane holds, read from the pinned maps, with its agent down.
    let mut cloud = cloud;
    cloud.agents[0].stop();
    let text = cloud.agents[0].vpc();
    assert!(text.contains("VTEP 198.18.0.1 on ul0"), "{text}");
    assert!(
        text.contains("02:0a:00:00:00:04  10.0.0.14        remote VTEP 198.18.0.2"),
        "{text}"
    );
    assert!(
        text.contains("02:0a:00:00:00:01  10.0.0.11        local tap-a1"),
        "{text}"
    );
    assert!(
        text.contains("10.0.0.1         02:68:66:00:00:01"),
        "{text}"
    );

    // Removed from IPAM (hv-2's agent applies it): unreachable again.
    for a in &cloud.agents[1..] {
        a.write_ipam(&holdfast_tests::vpc::ipam(&NETS, &s, 3600));
    }
    let gone = holdfast_tests::netns::wait_for(std::time::Duration::from_secs(10), || {
        (cloud.agents[1].metric("holdfast_leases") == 2.0).then_some(())
    });
    assert!(gone.is_some());
    assert_eq!(cloud.ping(A1, a4_ip, 2), 0);
}

/// Issue 12 A2, the scenario as reported: IPAM names a third node with VTEP 0.0.0.0, and hv-2's
/// underlay sends 20 forged VXLAN frames with outer source 0.0.0.0 whose inner frame goes from
/// A1 to A2, both VMs of hv-1. The node is rejected (`invalid_vtep`), so 0.0.0.0 is no known
/// VTEP; and a known VTEP's address as outer source does no better, since a local NIC is no
/// NIC of any VTEP. None of the 40 is delivered, each is counted.
#[test]
fn forged_vxlan_from_0_0_0_0_between_local_vms_is_never_delivered() {
    use std::time::Duration;

    use holdfast_tests::netns::wait_for;

    let cloud = Cloud::new(&NETS, &specs());
    let doc = holdfast_tests::vpc::ipam(&NETS, &specs(), 3600).replace(
        r#""nodes":["#,
        r#""nodes":[{"name":"hv-3","vtep":"0.0.0.0"},"#,
    );
    for a in &cloud.agents {
        a.write_ipam(&doc);
    }
    let hv1 = &cloud.agents[0];
    let rejected = wait_for(Duration::from_secs(10), || {
        (hv1.metric("holdfast_ipam_rejected_entries{reason=\"invalid_vtep\"}") == 1.0).then_some(())
    });
    assert!(rejected.is_some(), "{}", hv1.logs());
    assert!(
        hv1.logs().contains("vtep 0.0.0.0 is in 0.0.0.0/8"),
        "{}",
        hv1.logs()
    );
    // A1 and A2 know each other (and the VMs still talk).
    assert_eq!(cloud.ping(A1, IP12, 1), 1);

    let inner = holdfast_tests::packet::udp_frame(A1, A2, IP11, IP12, 1, 2, &[7; 64], false);
    let forged = |src: Ipv4Addr| {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0x03, 0xe9, 0]; // VNI 1001
        payload.extend_from_slice(&inner);
        holdfast_tests::packet::udp_frame(
            [0x02, 0x99, 0, 0, 0, 2],
            [0xff; 6],
            src,
            Ipv4Addr::new(198, 18, 0, 1),
            50000,
            4789,
            &payload,
            false,
        )
    };
    let a2_before = udp_in(&cloud, A2);
    let sock = holdfast_tests::rawsock::RawSocket::open(&cloud.hosts[1].path(), "ul0");
    for (src, stat) in [
        (Ipv4Addr::UNSPECIFIED, Stat::DropUnknownVtep),
        (Ipv4Addr::new(198, 18, 0, 2), Stat::DropInnerSpoof),
    ] {
        let before = hv1.counters();
        for _ in 0..20 {
            sock.send(&forged(src));
        }
        let counted = wait_for(Duration::from_secs(5), || {
            (hv1.counters()[stat as usize] >= before[stat as usize] + 20).then_some(())
        });
        let after = hv1.counters();
        assert!(
            counted.is_some(),
            "from {src}: {stat:?} counted {} of 20",
            after[stat as usize] - before[stat as usize]
        );
        assert_eq!(
            after[Stat::VxlanDecap as usize],
            before[Stat::VxlanDecap as usize],
            "from {src}: a forged frame was decapsulated"
        );
    }
    // Give a delivered frame time to arrive before looking.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(udp_in(&cloud, A2), a2_before, "a forged frame reached A2");
}

/// Issue 12 B9 on a live host: A1 pings A3 across the underlay; hv-1's operator installs a
/// blackhole route to hv-2's VTEP. Pings stop within the next-hop TTL (1 s), counted as
/// `route_blackhole` in `/metrics`, though the cached next hop is still there; removing the
/// route brings them back.
fn a_blackhole_route_to_a_vtep_quarantines_it(hook: VmHook) {
    use std::time::Duration;

    use holdfast_tests::netns::wait_for;

    let cloud = Cloud::in_mode(&NETS, &specs(), hook);
    let hv1 = &cloud.hosts[0];
    let agent = &cloud.agents[0];
    assert_eq!(cloud.ping(A1, IP13, 3), 3, "before");
    hv1.ip(&["route", "add", "blackhole", "198.18.0.2/32"]);
    std::thread::sleep(Duration::from_millis(1100));
    let sample = "holdfast_drops_total{reason=\"route_blackhole\"}";
    let before = agent.metric(sample);
    assert_eq!(
        cloud.ping(A1, IP13, 5),
        0,
        "pings crossed a blackhole route"
    );
    assert!(
        agent.metric(sample) >= before + 5.0,
        "{}",
        agent.http("/metrics").1
    );
    hv1.ip(&["route", "del", "blackhole", "198.18.0.2/32"]);
    let back = wait_for(Duration::from_secs(5), || {
        (cloud.ping(A1, IP13, 1) == 1).then_some(())
    });
    assert!(back.is_some(), "forwarding did not come back");
}

/// A ping stream from `mac` to `ip`, one every 20 ms for `count`: started now, joined for its
/// (transmitted, received).
fn ping_stream(
    cloud: &Cloud,
    mac: [u8; 6],
    ip: Ipv4Addr,
    count: u32,
) -> std::thread::JoinHandle<(u32, u32)> {
    let ns = cloud.vm(mac).ns.name.clone();
    std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-n", "-q", "-i", "0.02", "-W", "1", "-c",
            ])
            .arg(count.to_string())
            .arg(ip.to_string())
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |suffix: &str| {
            text.split(',')
                .find_map(|p| p.trim().strip_suffix(suffix))
                .and_then(|n| n.split_whitespace().last()?.parse().ok())
                .unwrap_or_else(|| panic!("no {suffix:?} in {text}"))
        };
        (field(" packets transmitted"), field(" received"))
    })
}

/// Restarts hv-1's agent with its VM ports on `hook`, and waits until each of its ports carries
/// that hook's programs alone.
fn switch_hv1(cloud: &mut Cloud, to: VmHook) -> std::time::Duration {
    use std::time::{Duration, Instant};

    let started = Instant::now();
    let agent = &mut cloud.agents[0];
    let config = std::fs::read_to_string(&agent.config).expect("config");
    let (from, into) = match to {
        VmHook::Xdp => ("hook = \"tc\"", "hook = \"xdp\""),
        VmHook::Tc => ("hook = \"xdp\"", "hook = \"tc\""),
    };
    assert!(config.contains(from), "{config}");
    std::fs::write(&agent.config, config.replace(from, into)).expect("config");
    agent.stop();
    agent.spawn(&cloud.hosts[0]);
    let links = agent.bpffs.path().join("links");
    for tap in ["tap-a1", "tap-a2", "tap-b1"] {
        let ifindex = cloud.hosts[0].ifindex(tap);
        let (want, gone): (&[&str], &[&str]) = match to {
            VmHook::Xdp => (&["vm", "tc"], &["vmtc"]),
            VmHook::Tc => (&["vmtc"], &["vm", "tc"]),
        };
        let pin = |prefix: &&str| links.join(format!("{prefix}-{ifindex}")).exists();
        let done = holdfast_tests::netns::wait_for(Duration::from_secs(10), || {
            (want.iter().all(pin) && !gone.iter().any(pin)).then_some(())
        });
        assert!(
            done.is_some(),
            "{tap} not switched to {to}:\n{}",
            agent.logs()
        );
    }
    started.elapsed()
}

/// A live host switches its VM ports from xdp to tc mode and back, by restarting its agent with
/// the other `[vm] hook`: the new programs are attached before the old ones go, so a ping every
/// 20 ms to a VM on the same host and to one across hosts, ARP every 20 ms, and a DHCP renewal
/// every 250 ms (unicast to the server, as a RENEWING client sends it; the port's DHCP rate
/// limit allows 5 a second), lose nothing.
#[test]
fn a_live_host_switches_hooks_without_losing_a_frame() {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use holdfast_tests::{
        packet::{Request, arp_request},
        rawsock::RawSocket,
        xdp::ROUTER_MAC,
    };

    let mut cloud = Cloud::new(&NETS, &specs());
    assert_eq!(cloud.ping(A1, IP13, 2), 2);
    assert_eq!(cloud.ping(A1, IP12, 2), 2);
    // 1,000 pings every 20 ms: 20 s, for two agent restarts.
    let count = 1000;
    let began = Instant::now();
    let across = ping_stream(&cloud, A1, IP13, count);
    let local = ping_stream(&cloud, A1, IP12, count);
    // A2 asks for A3's address every 20 ms; the program on its port answers.
    let stop = Arc::new(AtomicBool::new(false));
    let arp = {
        let sock = RawSocket::open(&cloud.vm(A2).ns.path(), "eth0");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut asked, mut answered) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                sock.send(&arp_request(A2, IP12, IP13));
                asked += 1;
                let deadline = Instant::now() + Duration::from_secs(1);
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    match sock.recv(left) {
                        Some(f)
                            if f.len() >= 42
                                && f[12..14] == [0x08, 0x06]
                                && f[20..22] == [0, 2]
                                && f[28..32] == IP13.octets() =>
                        {
                            answered += 1;
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (asked, answered)
        })
    };
    // A1 renews its lease every 250 ms, unicast to the gateway (the server identifier).
    let dhcp = {
        let sock = RawSocket::open(&cloud.vm(A1).ns.path(), "eth0");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut asked, mut acked) = (0u32, 0u32);
            let mut xid = 0x1400_0000u32;
            while !stop.load(Ordering::Relaxed) {
                xid += 1;
                let mut req = Request::renewing(A1, IP11, Ipv4Addr::new(10, 0, 0, 1), ROUTER_MAC);
                req.xid = xid;
                asked += 1;
                match sock.exchange(&req, Duration::from_secs(1)) {
                    Some(r) if r.msg_type() == Some(5) && r.yiaddr == IP11 => acked += 1,
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (asked, acked)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = cloud.agents[0].counters();
    let to_tc = switch_hv1(&mut cloud, VmHook::Tc);
    std::thread::sleep(Duration::from_secs(1));
    let in_tc = cloud.agents[0].counters();
    let to_xdp = switch_hv1(&mut cloud, VmHook::Xdp);
    let switched = began.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = cloud.agents[0].counters();
    stop.store(true, Ordering::Relaxed);
    let (asked, answered) = arp.join().expect("arp");
    let (renewals, acked) = dhcp.join().expect("dhcp");
    let across = across.join().expect("ping");
    let local = local.join().expect("ping");
    eprintln!(
        "xdp -> tc in {to_tc:?}, tc -> xdp in {to_xdp:?}; pings across {across:?}, local \
         {local:?}, ARP {answered}/{asked}, DHCP renewals {acked}/{renewals}"
    );
    assert!(
        switched < Duration::from_millis(20 * u64::from(count)),
        "the switches ({switched:?}) outlasted the pings: nothing was tested"
    );
    assert_eq!(across, (count, count), "pings across hosts lost");
    assert_eq!(local, (count, count), "pings on the host lost");
    assert_eq!(answered, asked, "ARP requests unanswered");
    assert!(asked > 100, "{asked} ARP requests");
    assert_eq!(acked, renewals, "DHCP renewals unanswered");
    assert!(renewals >= 10, "{renewals} DHCP renewals");
    // Each mode carried traffic: tc mode on the skb, then xdp mode in XDP again.
    let moved = |a: &[u64], b: &[u64], s: Stat| a[s as usize] - b[s as usize];
    assert!(
        moved(&in_tc, &before, Stat::SkbEncap) > 10,
        "tc mode encapsulated nothing"
    );
    assert!(moved(&in_tc, &before, Stat::SkbForwardLocal) > 10);
    // A second in each mode after its switch: four renewals or so.
    assert!(
        moved(&in_tc, &before, Stat::DhcpAck) >= 3,
        "tc mode answered no renewal"
    );
    assert!(moved(&after, &in_tc, Stat::DhcpAck) >= 3);
    assert!(
        moved(&after, &in_tc, Stat::VxlanEncap) > 10,
        "xdp mode encapsulated nothing"
    );
}

/// The MAC of `interface` in `ns`.
fn mac_of(ns: &holdfast_tests::netns::Netns, interface: &str) -> [u8; 6] {
    let out = ns.query(&["-j", "link", "show", interface]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    let text = v[0]["address"].as_str().expect("address");
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

/// `[underlay] hook = "tc"`, live: the kernel decapsulates into holdfast's metadata-mode VXLAN
/// device, and its TC program refuses what the underlay's XDP program refuses (issue 12 B7's
/// cases, and `xdp_vpc.rs`'s fixtures for XDP). Forged VXLAN from a hostile underlay peer
/// reaches no VM, and nothing decapsulated reaches the host's own stack, even addressed to the
/// device itself. The genuine frame is delivered.
#[test]
fn the_tc_underlay_refuses_forged_vxlan_as_the_xdp_underlay_does() {
    use holdfast::{config::UnderlayHook, decap};
    use holdfast_tests::{
        packet::{arp_request, udp_frame},
        rawsock::RawSocket,
        vpc::{Options, VTEPS},
    };

    let cloud = Cloud::with(
        &NETS,
        &specs(),
        &Options {
            underlay_hooks: [UnderlayHook::Xdp, UnderlayHook::Tc],
            ..Options::default()
        },
    );
    let (hv1, hv2) = (&cloud.hosts[0], &cloud.hosts[1]);
    assert_eq!(cloud.ping(A1, IP13, 3), 3, "genuine traffic");
    // hv-2 carries no XDP on its underlay: its program on the device, and on the underlay's TC
    // ingress the shortcut for single frames.
    let links = cloud.agents[1].bpffs.path().join("links");
    let ul0 = hv2.ifindex("ul0");
    let vx = hv2.ifindex(decap::DEVICE);
    assert!(links.join(format!("ulmd-{vx}")).exists());
    assert!(links.join(format!("ult-{ul0}")).exists());
    assert!(!links.join(format!("ul-{ul0}")).exists());
    // Another address of hv-2's, not its VTEP.
    hv2.ip(&["addr", "add", "198.18.0.77/24", "dev", "ul0"]);
    let sock = RawSocket::open(&hv1.path(), "ul0");
    let (ul1_mac, ul2_mac, vx_mac) = (
        mac_of(hv1, "ul0"),
        mac_of(hv2, "ul0"),
        mac_of(hv2, decap::DEVICE),
    );
    let vxlan = |src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]| {
        let mut payload = vec![0x08, 0, 0, 0];
        let v = vni.to_be_bytes();
        payload.extend_from_slice(&[v[1], v[2], v[3], 0]);
        payload.extend_from_slice(inner);
        udp_frame(ul1_mac, ul2_mac, src, dst, 50000, 4789, &payload, false)
    };
    let genuine = |src: [u8; 6], dst: [u8; 6], ip_src: Ipv4Addr, ip_dst: Ipv4Addr| {
        udp_frame(src, dst, ip_src, ip_dst, 40000, 9, &[7; 64], false)
    };
    let (from, to) = (VTEPS[0], VTEPS[1]);
    let host_icmp_before = hv2.proc_counter("snmp", "Icmp", "InEchos");
    // An ICMP echo to hv-2's VTEP, to the device's own MAC: were it handed to the host's
    // stack, the host would answer it.
    let to_host = icmp_echo(A1, vx_mac, IP11, to);
    let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
        (
            "from a VTEP nobody knows",
            vxlan(
                Ipv4Addr::new(198, 18, 0, 66),
                to,
                1001,
                &genuine(A1, A3, IP11, IP13),
            ),
            Stat::DropUnknownVtep,
        ),
        (
            "a VNI nobody uses",
            vxlan(from, to, 4242, &genuine(A1, A3, IP11, IP13)),
            Stat::DropUnknownVni,
        ),
        (
            "to a NIC that is not on hv-2",
            vxlan(from, to, 1001, &genuine(A1, A2, IP11, IP12)),
            Stat::DropUnknownInnerDst,
        ),
        (
            "to the device itself, for the host's stack",
            vxlan(from, to, 1001, &to_host),
            Stat::DropUnknownInnerDst,
        ),
        (
            "hv-1 speaking for hv-2's own NIC",
            vxlan(from, to, 1001, &genuine(A3, A3, IP13, IP13)),
            Stat::DropInnerSpoof,
        ),
        (
            "A1's MAC with another address",
            vxlan(
                from,
                to,
                1001,
                &genuine(A1, A3, Ipv4Addr::new(10, 0, 0, 99), IP13),
            ),
            Stat::DropInnerSpoofedIp,
        ),
        (
            "ARP",
            vxlan(from, to, 1001, &arp_request(A1, IP11, IP13)),
            Stat::DropDecapArp,
        ),
        (
            "neither IPv4 nor IPv6 (LLDP)",
            vxlan(from, to, 1001, &{
                let mut f = genuine(A1, A3, IP11, IP13);
                f[12..14].copy_from_slice(&[0x88, 0xcc]);
                f
            }),
            Stat::DropDecapNotIpv4,
        ),
        (
            "an IPv4 header labelled IPv6",
            vxlan(from, to, 1001, &{
                let mut f = genuine(A1, A3, IP11, IP13);
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                f
            }),
            Stat::DropMalformed,
        ),
        (
            "to another address of hv-2's than its VTEP",
            vxlan(
                from,
                Ipv4Addr::new(198, 18, 0, 77),
                1001,
                &genuine(A1, A3, IP11, IP13),
            ),
            Stat::DropDecapNotVtep,
        ),
    ];
    let a3_before = udp_in(&cloud, A3);
    for (what, frame, stat) in &cases {
        let before = cloud.agents[1].counters()[*stat as usize];
        for _ in 0..3 {
            sock.send(frame);
        }
        let counted = holdfast_tests::netns::wait_for(std::time::Duration::from_secs(5), || {
            (cloud.agents[1].counters()[*stat as usize] >= before + 3).then_some(())
        });
        assert!(counted.is_some(), "{what}: not counted as {stat:?}");
    }
    assert_eq!(udp_in(&cloud, A3), a3_before, "a forged frame reached A3");
    assert_eq!(
        hv2.proc_counter("snmp", "Icmp", "InEchos"),
        host_icmp_before,
        "a decapsulated frame reached hv-2's own stack"
    );
    // Every forged frame went the full way, through the kernel's VXLAN socket and the device's
    // checks: the underlay's TC shortcut takes only what passes them all.
    // The genuine frame, the same way: delivered, by the shortcut (the device sees nothing).
    let decap_before = cloud.agents[1].counters()[Stat::VxlanDecap as usize];
    let vx_rx_before = hv2
        .link_counter(decap::DEVICE, "rx_packets")
        .expect("holdfast-vx");
    sock.send(&vxlan(from, to, 1001, &genuine(A1, A3, IP11, IP13)));
    let delivered = holdfast_tests::netns::wait_for(std::time::Duration::from_secs(5), || {
        (udp_in(&cloud, A3) > a3_before).then_some(())
    });
    assert!(delivered.is_some(), "the genuine frame was not delivered");
    assert!(cloud.agents[1].counters()[Stat::VxlanDecap as usize] > decap_before);
    assert_eq!(
        hv2.link_counter(decap::DEVICE, "rx_packets")
            .expect("holdfast-vx"),
        vx_rx_before,
        "a single genuine frame went through the kernel's VXLAN socket"
    );
}

/// An ICMP echo request frame, checksums complete.
fn icmp_echo(src: [u8; 6], dst: [u8; 6], ip_src: Ipv4Addr, ip_dst: Ipv4Addr) -> Vec<u8> {
    use holdfast_tests::packet::checksum;

    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&[0x5a; 56]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&ip_src.octets());
    ip.extend_from_slice(&ip_dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Restarts hv-2's agent with decapsulation on `to`, and waits until it is there alone (and,
/// back in XDP, until the device is gone).
fn switch_hv2_underlay(
    cloud: &mut Cloud,
    to: holdfast::config::UnderlayHook,
) -> std::time::Duration {
    use std::time::{Duration, Instant};

    use holdfast::{config::UnderlayHook, decap};

    let started = Instant::now();
    let agent = &mut cloud.agents[1];
    let config = std::fs::read_to_string(&agent.config).expect("config");
    let (from, into) = match to {
        UnderlayHook::Xdp => (
            "interface = \"ul0\"\nhook = \"tc\"",
            "interface = \"ul0\"\nhook = \"xdp\"",
        ),
        UnderlayHook::Tc => (
            "interface = \"ul0\"\nhook = \"xdp\"",
            "interface = \"ul0\"\nhook = \"tc\"",
        ),
    };
    assert!(config.contains(from), "{config}");
    std::fs::write(&agent.config, config.replace(from, into)).expect("config");
    agent.stop();
    agent.spawn(&cloud.hosts[1]);
    let hv2 = &cloud.hosts[1];
    let links = agent.bpffs.path().join("links");
    let ul0 = hv2.ifindex("ul0");
    let pinned = |name: String| links.join(name).exists();
    let done = holdfast_tests::netns::wait_for(Duration::from_secs(10), || {
        let md =
            hv2.has_link(decap::DEVICE) && pinned(format!("ulmd-{}", hv2.ifindex(decap::DEVICE)));
        let xdp = pinned(format!("ul-{ul0}")) && pinned(format!("ult-{ul0}"));
        let there = match to {
            UnderlayHook::Tc => md && !xdp,
            UnderlayHook::Xdp => xdp && !hv2.has_link(decap::DEVICE),
        };
        there.then_some(())
    });
    assert!(
        done.is_some(),
        "decapsulation not switched to {to:?}:\n{}",
        agent.logs()
    );
    started.elapsed()
}

/// A live host moves decapsulation from the underlay's XDP program to the kernel's VXLAN
/// device with holdfast's TC program, and back, by restarting its agent with the other
/// `[underlay] hook`: the new hook is in place before the old one goes, so pings every 20 ms
/// across hosts, both ways, lose nothing; back in XDP the device is removed.
#[test]
fn a_live_host_switches_decapsulation_hooks_without_losing_a_frame() {
    use std::time::{Duration, Instant};

    use holdfast::config::UnderlayHook;

    let mut cloud = Cloud::new(&NETS, &specs());
    assert_eq!(cloud.ping(A1, IP13, 2), 2);
    assert_eq!(cloud.ping(A3, IP11, 2), 2);
    let count = 750;
    let began = Instant::now();
    let there = ping_stream(&cloud, A1, IP13, count);
    let back = ping_stream(&cloud, A3, IP11, count);
    std::thread::sleep(Duration::from_secs(1));
    let before = cloud.agents[1].counters();
    let to_tc = switch_hv2_underlay(&mut cloud, UnderlayHook::Tc);
    std::thread::sleep(Duration::from_secs(1));
    let in_tc = cloud.agents[1].counters();
    let to_xdp = switch_hv2_underlay(&mut cloud, UnderlayHook::Xdp);
    let switched = began.elapsed();
    let there = there.join().expect("ping");
    let back = back.join().expect("ping");
    let after = cloud.agents[1].counters();
    eprintln!(
        "xdp -> tc in {to_tc:?}, tc -> xdp in {to_xdp:?}; pings hv-1 -> hv-2 {there:?}, \
         hv-2 -> hv-1 {back:?}"
    );
    assert!(
        switched < Duration::from_millis(20 * u64::from(count)),
        "the switches ({switched:?}) outlasted the pings: nothing was tested"
    );
    assert_eq!(there, (count, count), "pings to hv-2 lost");
    assert_eq!(back, (count, count), "pings from hv-2 lost");
    // Each hook decapsulated: the TC program while in tc mode, XDP after.
    let moved = |a: &[u64], b: &[u64], s: Stat| a[s as usize] - b[s as usize];
    assert!(moved(&in_tc, &before, Stat::VxlanDecap) > 10);
    assert!(moved(&after, &in_tc, Stat::VxlanDecap) > 10);
}

/// An interface named like holdfast's decapsulation device that holdfast did not make (here a
/// bridge) is left alone: `[underlay] hook = "tc"` then keeps decapsulating in XDP, says why, and
/// neither attaches to the impostor nor removes it.
#[test]
fn an_impostor_decapsulation_device_gets_no_program_and_xdp_keeps_decapsulating() {
    use std::time::Duration;

    use holdfast::decap;

    let mut cloud = Cloud::new(&NETS, &specs());
    let hv2 = &cloud.hosts[1];
    hv2.ip(&["link", "add", decap::DEVICE, "type", "bridge"]);
    let impostor = hv2.ifindex(decap::DEVICE);
    let agent = &mut cloud.agents[1];
    let config = std::fs::read_to_string(&agent.config).expect("config");
    let tc = config.replace(
        "interface = \"ul0\"\nhook = \"xdp\"",
        "interface = \"ul0\"\nhook = \"tc\"",
    );
    assert_ne!(config, tc);
    std::fs::write(&agent.config, tc).expect("config");
    agent.stop();
    agent.spawn(&cloud.hosts[1]);
    let said = holdfast_tests::netns::wait_for(Duration::from_secs(10), || {
        agent
            .logs()
            .contains("no decapsulation device")
            .then_some(())
    });
    assert!(said.is_some(), "{}", agent.logs());
    assert_eq!(cloud.ping(A1, IP13, 3), 3);
    assert_eq!(cloud.ping(A3, IP11, 3), 3);
    let hv2 = &cloud.hosts[1];
    let links = cloud.agents[1].bpffs.path().join("links");
    assert!(!links.join(format!("ulmd-{impostor}")).exists());
    assert!(links.join(format!("ul-{}", hv2.ifindex("ul0"))).exists());
    assert_eq!(
        hv2.ifindex(decap::DEVICE),
        impostor,
        "the impostor was touched"
    );
    assert!(
        cloud.agents[1]
            .logs()
            .contains("is not a VXLAN device in metadata mode")
    );
}
