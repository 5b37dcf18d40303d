//! `cargo xtask demo`: two hypervisors, one per mode (hv-1 in xdp mode, hv-2 in tc mode), two
//! dual-stack private networks with the same subnet, VMs that get DHCP from the data plane, their
//! IPv6 default route and on-link prefix from its router advertisements, and reach each other
//! over VXLAN in both families, tenants that never see each other, both
//! agents killed while traffic and renewals go on, and, when etcd is installed, IPAM in etcd
//! going down while VMs keep renewing and talking, then coming back with a new VM the agents
//! catch up with.
//!
//! Everything lives in network namespaces this process creates and removes (also on Ctrl-C:
//! the guards run when the demo unwinds, and the next run sweeps what a kill left).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::{FdbKey, Stat};
use holdfast::config::UnderlayHook;
use holdfast_tests::{
    clients::{self, Client},
    netns::{Agent, VERBOSE, Vm, run, wait_for},
    vpc::{
        CONTROL, Cloud, Net, Options, Routing, Source, VmSpec, dual_stack, ip6_for, ipam, routed,
    },
    xdp::VmHook,
};

const NETS: [Net; 3] = [
    Net {
        id: "pn-blue",
        vni: 1001,
    },
    Net {
        id: "pn-red",
        vni: 1002,
    },
    Net {
        id: "pn-green",
        vni: 1003,
    },
];

/// pn-blue and pn-green form VPC `blue` (10.0.0.0/24 and 10.1.0.0/24): routed to each other.
/// pn-red, with pn-blue's addresses, is a VPC of its own.
const ROUTING: [Routing<'static>; 2] = [
    Routing {
        net: "pn-blue",
        subnet: Ipv4Addr::new(10, 0, 0, 0),
        vpc: Some("blue"),
        default_via: None,
        routes: &[],
    },
    Routing {
        net: "pn-green",
        subnet: Ipv4Addr::new(10, 1, 0, 0),
        vpc: Some("blue"),
        default_via: None,
        routes: &[],
    },
];

/// green-1's address, in pn-green.
const GREEN1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 31);

/// Name, spec and DHCP client of each VM. blue-3 and red-1 share 10.0.0.13, on different hosts
/// and networks. green-1 is in pn-green, pn-blue's VPC.
const VMS: [(&str, VmSpec, &str); 6] = [
    (
        "blue-1",
        vm("pn-blue", 0, 0x0b, 1, 11, "tap-b1"),
        "dhclient",
    ),
    ("blue-2", vm("pn-blue", 0, 0x0b, 2, 12, "tap-b2"), "dhcpcd"),
    ("red-1", vm("pn-red", 0, 0x0c, 1, 13, "tap-r1"), "udhcpc"),
    ("blue-3", vm("pn-blue", 1, 0x0b, 3, 13, "tap-b3"), "udhcpc"),
    ("red-2", vm("pn-red", 1, 0x0c, 2, 21, "tap-r2"), "dhclient"),
    (
        "green-1",
        VmSpec {
            ip: GREEN1,
            ..vm("pn-green", 1, 0x0d, 1, 31, "tap-g1")
        },
        "dhcpcd",
    ),
];

/// A VM booted while etcd is down, on hv-2, and put into IPAM once etcd is back.
const BLUE4: (&str, VmSpec) = ("blue-4", vm("pn-blue", 1, 0x0b, 4, 14, "tap-b4"));

/// Lease time: clients renew every 10 s, so renewals are seen within the demo.
const LEASE: u32 = 20;

const fn vm(
    net: &'static str,
    host: usize,
    tenant: u8,
    n: u8,
    ip: u8,
    tap: &'static str,
) -> VmSpec {
    VmSpec {
        net,
        host,
        mac: [0x02, tenant, 0, 0, 0, n],
        ip: Ipv4Addr::new(10, 0, 0, ip),
        tap,
        real_tap: false,
    }
}

fn say(text: &str) {
    println!("\n\x1b[1;36m### {text}\x1b[0m");
}

fn show(cmd: &mut Command) {
    let out = run(cmd);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn named<'a>(cloud: &'a Cloud, name: &str) -> &'a Vm {
    let (_, spec, _) = VMS.iter().find(|(n, _, _)| *n == name).expect("vm");
    cloud.vm(spec.mac)
}

fn rx_packets(vm: &Vm) -> u64 {
    vm.ns.link_counter("eth0", "rx_packets").unwrap_or(0)
}

/// `ping` from `from`, printing the summary; how many replies came back.
fn ping(cloud: &Cloud, from: &str, to: Ipv4Addr, count: u32) -> u32 {
    let spec = VMS.iter().find(|(n, _, _)| *n == from).expect("vm").1;
    let got = cloud.ping(spec.mac, to, count);
    println!("{from} ({}) -> {to}: {got}/{count} replies", spec.ip);
    got
}

/// The `ip6` IPAM gives the VM `spec` (its network's fd00:<vni>::/64).
fn ip6_of(spec: &VmSpec) -> Ipv6Addr {
    let vni = NETS.iter().find(|n| n.id == spec.net).expect("net").vni;
    ip6_for(vni, spec.ip)
}

/// `ping -6` from `from`, printing the summary; how many replies came back.
fn ping6(cloud: &Cloud, from: &str, to: Ipv6Addr, count: u32) -> u32 {
    let spec = VMS.iter().find(|(n, _, _)| *n == from).expect("vm").1;
    let got = cloud.vm_ns(spec.mac).ping6(to, count);
    println!("{from} ({}) -> {to}: {got}/{count} replies", ip6_of(&spec));
    got
}

/// The VM's IPv6 default route, once its kernel took it from an advertisement.
fn default6(vm: &Vm) -> Option<String> {
    let out = run(vm.ns.exec("ip").args(["-6", "route", "show", "default"]));
    let text = String::from_utf8_lossy(&out.stdout);
    let route = text.lines().find(|l| l.contains("via fe80:"))?;
    // "default via fe80::.. dev eth0 proto ra metric 1024 expires 8997sec ...": up to the
    // protocol, and its lifetime.
    let mut words = route.split_whitespace();
    let head: Vec<&str> = words.by_ref().take_while(|w| *w != "metric").collect();
    let expires = words.skip_while(|w| *w != "expires").nth(1).unwrap_or("?");
    Some(format!("{} (expires {expires})", head.join(" ")))
}

fn neighbour(vm: &Vm, ip: &str) -> String {
    let out = run(vm.ns.exec("ip").args(["neigh", "show", ip, "dev", "eth0"]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether `etcd` runs here (Debian's etcd-server).
fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The IPAM health metrics of `agent`, and its readiness.
fn show_ipam_health(host: &str, agent: &Agent) {
    let text = agent.http("/metrics").1;
    println!("# {host}: /metrics");
    for line in text.lines() {
        if [
            "holdfast_ipam_up ",
            "holdfast_ipam_stale_seconds ",
            "holdfast_ipam_last_sync_timestamp_seconds ",
            "holdfast_ipam_reconnects_total ",
        ]
        .iter()
        .any(|m| line.starts_with(m))
        {
            println!("{line}");
        }
    }
    println!(
        "# {host}: /readyz {}, /healthz {}",
        agent.http("/readyz").0,
        agent.http("/healthz").0
    );
}

/// The latest line of `agent`'s log that contains `needle`, shortened.
fn last_log(agent: &Agent, needle: &str) -> Option<String> {
    let logs = agent.logs();
    let line = logs.lines().rev().find(|l| l.contains(needle))?;
    Some(line.chars().take(260).collect())
}

/// Whether `agent`'s data plane forwards to `mac` in `vni` (read from the pinned map).
fn forwards_to(agent: &Agent, vni: u32, mac: [u8; 6]) -> bool {
    holdfast::dataplane::pinned_fdb(agent.bpffs.path())
        .is_ok_and(|m| m.get(&FdbKey::new(vni, mac), 0).is_ok())
}

fn renewals(c: &Cloud) -> u64 {
    c.agents
        .iter()
        .map(|a| {
            let n = a.counters();
            n[Stat::DhcpRequestRenewing as usize] + n[Stat::DhcpRequestRebinding as usize]
        })
        .sum()
}

fn main() {
    VERBOSE.store(true, std::sync::atomic::Ordering::Relaxed);
    holdfast_tests::sweep_stale();
    let with_etcd = etcd_installed();
    println!(
        "holdfast demo: two hypervisors (hv-1 in xdp mode, hv-2 in tc mode) whose VMs get DHCP \
         from the data plane,\nIPv6 routes from its router advertisements, and reach each other over VXLAN in both families, two tenants with the same subnet that never see each other, a network routed to in the first tenant's VPC, both agents \
         killed while\ntraffic and lease renewals go on, and, with etcd installed, IPAM down \
         while VMs keep renewing\nand talking. Every command is printed before it runs."
    );

    if with_etcd {
        say(
            "1. Two hypervisors (namespaces hv1, hv2) on an underlay link, six VMs on veth \
             pairs, and etcd, the IPAM store, in a control namespace",
        );
    } else {
        say("1. Two hypervisors (namespaces hv1, hv2) on an underlay link, six VMs on veth pairs");
        println!(
            "note: etcd is not installed (Debian package etcd-server): the agents read IPAM \
             from a local file,\nand the etcd outage (steps 12 to 14) is skipped"
        );
    }
    let specs: Vec<VmSpec> = VMS.iter().map(|(_, s, _)| *s).collect();
    let mut cloud = Cloud::with(
        &NETS,
        &specs,
        &Options {
            lease_time: LEASE,
            static_addresses: false,
            source: if with_etcd {
                Source::Etcd
            } else {
                Source::File
            },
            extra_nics: &[],
            // One host per mode: the same logic in XDP on hv-1, on TC ingress on hv-2, which
            // also decapsulates on TC (the kernel's VXLAN device in metadata mode).
            hooks: [VmHook::Xdp, VmHook::Tc],
            underlay_hooks: [UnderlayHook::Xdp, UnderlayHook::Tc],
            // Dual-stack: each network a subnet6 (fd00:<vni in hex>::/64) and dns6, each NIC
            // an ip6.
            ipv6: true,
            routing: &ROUTING,
            ..Options::default()
        },
    );
    for (name, s, _) in VMS {
        println!(
            "{name:<7} on hv-{}  {:<8} network {:<8} address {:<10} ip6 {}",
            s.host + 1,
            s.tap,
            s.net,
            s.ip,
            ip6_of(&s)
        );
    }
    println!(
        "(pn-blue is VNI 1001, pn-red VNI 1002, both 10.0.0.0/24; their subnet6 fd00:3e9::/64 and \
         fd00:3ea::/64;\npn-green is VNI 1003, 10.1.0.0/24, in VPC blue with pn-blue; on a real \
         hypervisor the VM interfaces are taps)"
    );
    if let Some(control) = &cloud.control {
        println!(
            "etcd listens in the control namespace on {} (hv-1) and {} (hv-2), each host \
             reaching it over\nits own management link (mgmt0): the underlay carries only \
             VXLAN and the hosts' own traffic",
            CONTROL[0], CONTROL[1]
        );
        print!("{}", control.seeded);
    }

    if let Some(control) = &cloud.control {
        say("2. The IPAM document, imported into etcd before the agents started, read back");
        println!(
            "(`holdfast ipam import` validates {} then writes each NIC with its index keys \
             in one transaction;\n`holdfast ipam export` prints what etcd holds)",
            control.document().display()
        );
        print!("{}", control.export());
    } else {
        say("2. The IPAM document both agents read (the local-file source)");
        let doc: serde_json::Value =
            serde_json::from_str(&dual_stack(&ipam(&NETS, &specs, LEASE))).expect("ipam");
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    }

    say("3. holdfast run on each host: programs on the VM interfaces and on the underlay");
    for i in 0..2 {
        println!("--- hv-{}: {} ---", i + 1, cloud.agents[i].config.display());
        print!(
            "{}",
            std::fs::read_to_string(&cloud.agents[i].config).unwrap_or_default()
        );
        show(Command::new("sh").args([
            "-c",
            &format!(
                "ip -n {} -d link show | grep -o '^[0-9]*: [^:]*\\|prog/xdp id [0-9]* name [a-z_]*'",
                cloud.hosts[i].name
            ),
        ]));
        show(Command::new("ls").arg(cloud.agents[i].bpffs.path().join("links")));
    }
    println!(
        "# hv-1 (xdp mode): holdfast_vm in XDP on each VM port (vm-IFINDEX), its skb path on TC \
         (tc-IFINDEX);\n# hv-2 (tc mode): no XDP on its VM ports, holdfast_vm_tc alone on TC \
         ingress (vmtc-IFINDEX).\n# hv-1 decapsulates with holdfast_ul in XDP on the underlay (ul-IFINDEX, ult-IFINDEX); hv-2 \
         with holdfast_ul_md on TC\n# ingress of holdfast-vx, the kernel's VXLAN device in metadata \
         mode (ulmd-IFINDEX), and nothing on its underlay."
    );
    if with_etcd {
        println!("# hv-1 listed IPAM from etcd, then watches it:");
        if let Some(line) = last_log(&cloud.agents[0], "IPAM listed from etcd") {
            println!("{line}");
        }
    }

    say("4. A real DHCP client in each VM; nothing listens on udp/67 on either host");
    let started = Instant::now();
    let mut running: Vec<Client> = Vec::new();
    for (name, spec, client) in VMS {
        let vm = cloud.vm(spec.mac);
        println!("# {name} runs {client}");
        running.push(match client {
            "dhclient" => clients::dhclient(vm, None),
            "dhcpcd" => clients::dhcpcd(vm),
            _ => clients::udhcpc(vm, &[]),
        });
    }
    for (name, spec, client) in VMS {
        let got = cloud.vm(spec.mac).wait_address(Duration::from_secs(30));
        println!(
            "{name} ({client}): {}",
            got.map(|(a, p)| format!("{a}/{p}"))
                .unwrap_or_else(|| "NO ADDRESS".into()),
        );
        assert_eq!(got.map(|a| a.0), Some(spec.ip), "{name} got no lease");
    }
    println!("all six leased within {:.1?}", started.elapsed());
    thread::sleep(Duration::from_secs(1));
    let b1 = named(&cloud, "blue-1");
    println!("\n# inside blue-1:");
    show(b1.ns.exec("ip").args(["-4", "-br", "addr", "show", "eth0"]));
    show(b1.ns.exec("ip").args(["-4", "route"]));
    show(b1.ns.exec("ip").args(["-o", "link", "show", "eth0"]));
    for h in &cloud.hosts {
        show(h.exec("ss").args(["-uanp", "sport", "= :67"]));
    }
    println!(
        "\n# IPv6: each VM's kernel takes its default route (router lifetime 9000 s) and the \
         on-link prefix\n# (L=1, A=0: no address of its own making) from the router \
         advertisements of its port; its address\n# is the ip6 IPAM gave, set as a DHCPv6 \
         client sets an IA_NA (a /128)"
    );
    for (name, spec, _) in VMS {
        let vm = cloud.vm(spec.mac);
        run(vm.ns.exec("ip").args([
            "-6",
            "addr",
            "add",
            &format!("{}/128", ip6_of(&spec)),
            "dev",
            "eth0",
            "nodad",
        ]));
        let route = wait_for(Duration::from_secs(10), || default6(vm));
        println!(
            "{name:<7} {:<16} {}",
            ip6_of(&spec),
            route.unwrap_or_else(|| "NO DEFAULT ROUTE".into())
        );
    }

    say(
        "5. What hv-1's data plane holds: holdfast leases and holdfast vpc (read from the pinned maps)",
    );
    print!("{}", cloud.agents[0].leases());
    println!();
    print!("{}", cloud.agents[0].vpc());

    say("6. VMs of pn-blue reach each other on the same host and across hosts");
    let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
    assert_eq!(ping(&cloud, "blue-1", ip(12), 3), 3, "same host");
    assert_eq!(ping(&cloud, "blue-1", ip(13), 3), 3, "across hosts");
    assert_eq!(ping(&cloud, "red-2", ip(13), 3), 3, "red across hosts");
    let ip6 = |name: &str| ip6_of(&VMS.iter().find(|(n, _, _)| *n == name).expect("vm").1);
    assert_eq!(
        ping6(&cloud, "blue-1", ip6("blue-2"), 3),
        3,
        "IPv6 on the same host"
    );
    assert_eq!(
        ping6(&cloud, "blue-1", ip6("blue-3"), 3),
        3,
        "IPv6 across hosts"
    );
    assert_eq!(
        ping6(&cloud, "red-2", ip6("red-1"), 3),
        3,
        "red IPv6 across hosts"
    );
    println!(
        "# neighbour discovery was answered on the port too: {}",
        neighbour(b1, &ip6("blue-3").to_string())
    );
    println!(
        "# ARP was answered on each host, by its VM ports' program: blue-1 sees 10.0.0.13 at {}",
        neighbour(b1, "10.0.0.13")
    );

    say("7. Tenants never see each other, even with the same addresses");
    let red1 = named(&cloud, "red-1");
    let red1_before = rx_packets(red1);
    ping(&cloud, "blue-1", ip(13), 5);
    println!(
        "red-1 (10.0.0.13 in pn-red, on blue-1's own host) received {} frames meanwhile: \
         blue-1 reached blue-3 ({})",
        rx_packets(red1) - red1_before,
        neighbour(b1, "10.0.0.13")
    );
    println!(
        "red-2 reaches red-1 at the same address: {}",
        neighbour(named(&cloud, "red-2"), "10.0.0.13")
    );
    let got = ping(&cloud, "blue-1", ip(21), 3);
    assert_eq!(got, 0, "blue reached red");
    println!("(10.0.0.21 is red-2's address: pn-blue has no such NIC, so nothing answers)");

    say(
        "8. pn-green is in pn-blue's VPC: routed by the sending host's program, one hop; pn-red (another VPC) is not",
    );
    assert_eq!(ping(&cloud, "blue-1", GREEN1, 3), 3, "routed across hosts");
    assert_eq!(
        ping(&cloud, "blue-1", Ipv4Addr::new(10, 0, 0, 1), 3),
        3,
        "the gateway"
    );
    println!("# blue-1's traceroute: its gateway (10.0.0.1), then green-1");
    show(b1.ns.exec("busybox").args([
        "traceroute",
        "-n",
        "-q",
        "1",
        "-w",
        "2",
        "-m",
        "4",
        &GREEN1.to_string(),
    ]));
    println!("# red-1, in another VPC with pn-blue's addresses, gets no route to pn-green:");
    let out = red1
        .ns
        .exec("ping")
        .args(["-n", "-c", "2", "-W", "1", &GREEN1.to_string()])
        .output()
        .expect("ping");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Destination Net Unreachable"),
        "red-1 reached pn-green"
    );

    say("9. The forwarding metrics of hv-1 (Prometheus, /metrics)");
    for line in cloud.agents[0].http("/metrics").1.lines() {
        if line.starts_with("holdfast_vxlan_")
            || line.starts_with("holdfast_forward_local")
            || line.starts_with("holdfast_routed")
            || line.starts_with("holdfast_gateway_echo")
            || line.starts_with("holdfast_icmp_errors")
            || line.starts_with("holdfast_arp_")
            || line.starts_with("holdfast_nd_advertisements")
            || line.starts_with("holdfast_ra_replies")
            || line.starts_with("holdfast_drops_total")
            || line.starts_with("holdfast_fdb_entries")
            || line.starts_with("holdfast_leases")
        {
            println!("{line}");
        }
    }

    say("10. kill -9 both agents while blue-1 pings blue-3 every 100 ms");
    let pinger = {
        let mut cmd = b1.ns.exec("ping");
        cmd.args(["-n", "-q", "-i", "0.1", "-c", "50", "10.0.0.13"]);
        thread::spawn(move || cmd.output().expect("ping"))
    };
    thread::sleep(Duration::from_secs(1));
    for agent in &mut cloud.agents {
        agent.kill();
    }
    println!("both agents killed; the programs, maps and links stay, pinned under bpffs");
    let out = pinger.join().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout);
    for line in summary.lines().filter(|l| l.contains("transmitted")) {
        println!("blue-1 -> blue-3 across the kill: {line}");
    }
    println!(
        "# leases are 20 s long: the clients renew every ~10 s, answered by the pinned programs \
         alone"
    );
    let before = renewals(&cloud);
    let killed = Instant::now();
    match wait_for(Duration::from_secs(30), || {
        let now = renewals(&cloud);
        (now >= before + 3).then_some(now)
    }) {
        Some(n) => println!(
            "renewals answered with both agents dead: {} within {:.1?}",
            n - before,
            killed.elapsed()
        ),
        None => println!("fewer than 3 renewals seen within 30 s"),
    }
    assert_eq!(ping(&cloud, "red-2", ip(13), 3), 3, "red after the kill");

    say("11. Restart the agents: they adopt the pinned state and replace the programs atomically");
    for (agent, host) in cloud.agents.iter_mut().zip(&cloud.hosts) {
        agent.spawn(host);
    }
    for line in cloud.agents[0]
        .logs()
        .lines()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        if line.contains("adopted") || line.contains("replaced") || line.contains("snapshot") {
            println!("{line}");
        }
    }
    println!(
        "holdfast_vxlan_encap_total on hv-1: {} (counters continued across the restart)",
        metric_sum(
            &cloud.agents[0].http("/metrics").1,
            "holdfast_vxlan_encap_total"
        )
    );

    if with_etcd {
        etcd_outage(&mut cloud, &mut running);
    }

    say("15. Cleaning up: namespaces, pins and files are removed");
    drop(running);
    drop(cloud);
    println!("done.");
}

/// Steps 11 to 13: etcd goes down, VMs keep renewing and talking, a VM boots meanwhile; etcd
/// comes back with the new VM in IPAM, and the agents catch up.
fn etcd_outage(cloud: &mut Cloud, running: &mut Vec<Client>) {
    let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
    say("12. etcd goes down: the agents keep serving what they last applied");
    cloud.etcd().stop();
    let down = Instant::now();
    println!("# etcd killed (SIGKILL); its data stays on disk");
    for (i, a) in cloud.agents.iter().enumerate() {
        let noticed = wait_for(Duration::from_secs(10), || {
            (a.metric("holdfast_ipam_up") == 0.0).then_some(())
        });
        println!(
            "hv-{} noticed in {:.1?}",
            i + 1,
            noticed.map(|()| down.elapsed()).unwrap_or_default()
        );
    }
    if let Some(line) = last_log(&cloud.agents[0], "IPAM unavailable") {
        println!("{line}");
    }
    show_ipam_health("hv-1", &cloud.agents[0]);

    say("13. With etcd down, the VMs keep renewing their 20 s leases and talking across hosts");
    let before = renewals(cloud);
    match wait_for(Duration::from_secs(25), || {
        let now = renewals(cloud);
        (now >= before + 5).then_some(now)
    }) {
        Some(n) => println!(
            "renewals answered by the data plane with etcd down: {} within {:.1?}",
            n - before,
            down.elapsed()
        ),
        None => println!("fewer than 5 renewals seen within 25 s"),
    }
    for (name, spec, _) in VMS {
        let got = cloud.vm(spec.mac).address();
        println!(
            "{name}: {}; IPv6 {}",
            got.map(|(a, p)| format!("{a}/{p}, still leased"))
                .unwrap_or_else(|| "NO ADDRESS".into()),
            default6(cloud.vm(spec.mac)).unwrap_or_else(|| "NO DEFAULT ROUTE".into())
        );
    }
    assert_eq!(ping(cloud, "blue-1", ip(13), 3), 3, "blue across hosts");
    assert_eq!(ping(cloud, "red-2", ip(13), 3), 3, "red across hosts");
    println!(
        "# staleness is what the metrics report: IPAM has not been heard from for {:.0?}",
        down.elapsed()
    );
    show_ipam_health("hv-1", &cloud.agents[0]);

    say("14. A VM boots on hv-2 while etcd is down; etcd comes back with it; the agents catch up");
    let (name, spec) = BLUE4;
    let blue4 = Vm::new(&cloud.hosts[1], spec.tap, spec.mac);
    cloud.vms.push(blue4);
    cloud.etcd().restart();
    let back = Instant::now();
    println!(
        "# etcd is back after {:.1?}; the operator adds {name}:",
        down.elapsed()
    );
    let mut with_blue4 = cloud.specs.clone();
    with_blue4.push(spec);
    let report = cloud.control.as_ref().expect("etcd").import(&routed(
        &dual_stack(&ipam(&NETS, &with_blue4, LEASE)),
        &ROUTING,
        &[],
    ));
    print!("{report}");
    println!(
        "# while they wait out their reconnect backoff, the agents probe etcd about every \
         second;\n# once it answers, each reconnects within 0-2 s, a jitter that spreads \
         thousands of agents out"
    );
    let mut caught_up = [None, None];
    wait_for(Duration::from_secs(45), || {
        for (i, a) in cloud.agents.iter().enumerate() {
            // hv-1 forwards to blue-4 over VXLAN; hv-2 holds it locally.
            if caught_up[i].is_none() && forwards_to(a, 1001, spec.mac) {
                caught_up[i] = Some(back.elapsed());
            }
        }
        caught_up.iter().all(Option::is_some).then_some(())
    });
    for (i, t) in caught_up.iter().enumerate() {
        match t {
            Some(t) => println!("hv-{} caught up {t:.1?} after etcd came back", i + 1),
            None => println!("hv-{} had not caught up after 45 s", i + 1),
        }
    }
    show_ipam_health("hv-1", &cloud.agents[0]);
    println!("# hv-1's data plane now forwards to {name} (holdfast vpc):");
    let mac = holdfast_tests::netns::mac_str(spec.mac);
    for line in cloud.agents[0].vpc().lines().filter(|l| l.contains(&mac)) {
        println!("{line}");
    }
    running.push(clients::dhclient(cloud.vm(spec.mac), None));
    let got = cloud.vm(spec.mac).wait_address(Duration::from_secs(30));
    println!(
        "{name} (dhclient): {}",
        got.map(|(a, p)| format!("{a}/{p}"))
            .unwrap_or_else(|| "NO ADDRESS".into())
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(ping(cloud, "blue-1", spec.ip, 3), 3, "blue-1 to blue-4");
}

/// The sum of every sample of `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
