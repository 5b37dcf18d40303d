//! `cargo xtask demo`: one hypervisor, three VMs, DHCP answered by XDP, and the agent killed.
//!
//! Everything lives in network namespaces this process creates and removes (also on Ctrl-C:
//! the guards run when the demo unwinds, and the next run sweeps what a kill left).

use std::{
    net::Ipv4Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use agent_common::Stat;
use holdfast_tests::{
    clients,
    netns::{Agent, Netns, VERBOSE, Vm, mac_str, run, wait_for},
};

const VMS: [([u8; 6], &str, &str, &str); 3] = [
    (
        [0x02, 0, 0, 0, 0, 0x01],
        "10.10.0.11",
        "tap-vm1",
        "dhclient (ISC)",
    ),
    ([0x02, 0, 0, 0, 0, 0x02], "10.10.0.12", "tap-vm2", "dhcpcd"),
    (
        [0x02, 0, 0, 0, 0, 0x03],
        "10.10.0.13",
        "tap-vm3",
        "udhcpc (busybox)",
    ),
];

fn say(text: &str) {
    println!("\n\x1b[1;36m### {text}\x1b[0m");
}

fn show(cmd: &mut Command) {
    let out = run(cmd);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn ipam() -> String {
    let nics: Vec<String> = VMS
        .iter()
        .enumerate()
        .map(|(i, (mac, ip, tap, _))| {
            format!(
                "    {{ \"mac\": \"{}\", \"network\": \"pn-blue\", \"ip\": \"{ip}\", \
                 \"hostname\": \"vm-{}\", \"node\": \"hv-1\", \"interface\": \"{tap}\" }}",
                mac_str(*mac),
                i + 1
            )
        })
        .collect();
    format!(
        "{{ \"networks\": [ {{ \"id\": \"pn-blue\", \"vni\": 1001, \"subnet\": \"10.10.0.0/24\",\n\
         \x20   \"gateway\": \"10.10.0.1\", \"dns\": [\"10.10.0.2\"], \"domain\": \"blue.internal\",\n\
         \x20   \"search\": [\"blue.internal\"], \"mtu\": 1450,\n\
         \x20   \"routes\": [ {{ \"to\": \"172.16.0.0/12\", \"via\": \"10.10.0.1\" }} ],\n\
         \x20   \"ntp\": [], \"lease_time\": 20 }} ],\n\
         \x20 \"nodes\": [ {{ \"name\": \"hv-1\", \"vtep\": \"198.18.0.1\" }} ],\n\
         \x20 \"nics\": [\n{}\n  ] }}\n",
        nics.join(",\n")
    )
}

fn main() {
    VERBOSE.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "holdfast demo: a hypervisor whose VMs get DHCP from XDP, with no DHCP server process \
         anywhere,\nand keep renewing when the agent is killed. Every command is printed before \
         it runs."
    );

    say("1. A hypervisor (network namespace hv) with three VMs (namespaces), each on a veth pair");
    let hv = Netns::new("hv");
    let vms: Vec<Vm> = VMS
        .iter()
        .map(|(mac, _, tap, _)| Vm::new(&hv, tap, *mac))
        .collect();
    println!(
        "(on a real hypervisor these are taps; on a veth, `holdfast veth-peer` puts a no-op XDP \
         program on the VM side,\n because the kernel only delivers XDP_TX frames into a veth \
         whose peer runs XDP)"
    );

    say("2. The IPAM document (the local-file source; etcd in production) and the agent's config");
    let agent_ipam = ipam();
    print!("{agent_ipam}");

    say("3. holdfast run: loads the XDP programs, pins maps and links, attaches to the taps");
    let mut agent = Agent::start(&hv, "hv-1", &agent_ipam);
    println!("--- {} ---", agent.config.display());
    print!(
        "{}",
        std::fs::read_to_string(&agent.config).unwrap_or_default()
    );
    wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == 3.0).then_some(())
    })
    .expect("leases applied");
    show(Command::new("ip").args(["-n", &hv.name, "-br", "link", "show", "type", "veth"]));
    show(Command::new("sh").args([
        "-c",
        &format!(
            "ip -n {} link show | grep -o 'tap-vm[0-9].*\\|prog/xdp.*'",
            hv.name
        ),
    ]));

    say("4. A real DHCP client in each VM");
    let started = Instant::now();
    let mut running = Vec::new();
    for (vm, (_, _, _, which)) in vms.iter().zip(VMS) {
        println!("# {} runs {which}", vm.tap);
        running.push(match which {
            w if w.starts_with("dhclient") => clients::dhclient(vm, None),
            w if w.starts_with("dhcpcd") => clients::dhcpcd(vm),
            _ => clients::udhcpc(vm, &[]),
        });
    }
    for (vm, (_, ip, _, which)) in vms.iter().zip(VMS) {
        let got = vm.wait_address(Duration::from_secs(30));
        println!(
            "{} ({which}): {} after {:.1?}",
            vm.tap,
            got.map(|(a, p)| format!("{a}/{p}"))
                .unwrap_or_else(|| "NO ADDRESS".into()),
            started.elapsed()
        );
        assert_eq!(got.map(|a| a.0), Some(ip.parse::<Ipv4Addr>().expect("ip")));
    }
    thread::sleep(Duration::from_secs(1));
    for vm in &vms {
        println!("\n# inside the VM on {}:", vm.tap);
        show(vm.ns.exec("ip").args(["-4", "-br", "addr", "show", "eth0"]));
        show(vm.ns.exec("ip").args(["-4", "route"]));
        show(vm.ns.exec("ip").args(["-o", "link", "show", "eth0"]));
        print!("resolv.conf: {}", vm.ns.resolv_conf().replace('\n', "; "));
        println!();
    }

    say("5. No DHCP server process anywhere: nothing listens on udp/67 on the hypervisor");
    show(hv.exec("ss").args(["-uanp", "sport", "= :67"]));

    say("6. What the data plane holds: holdfast leases (read from the pinned maps)");
    print!("{}", agent.leases());

    say("7. The DHCP metrics (Prometheus, /metrics)");
    for line in agent.http("/metrics").1.lines() {
        if line.starts_with("holdfast_dhcp_")
            || line.starts_with("holdfast_arp_")
            || line.starts_with("holdfast_leases")
        {
            println!("{line}");
        }
    }

    say("8. kill -9 the agent: the XDP programs and maps stay, pinned under bpffs");
    agent.kill();
    show(Command::new("sh").args([
        "-c",
        &format!("ip -n {} link show tap-vm1 | grep -o 'prog/xdp.*'", hv.name),
    ]));
    println!(
        "# leases are 20 s long: dhclient renews every ~10 s (RENEWING: unicast to 10.10.0.1)"
    );
    let before = agent.counters()[Stat::DhcpRequestRenewing as usize];
    let killed = Instant::now();
    let renewed = wait_for(Duration::from_secs(30), || {
        let now = agent.counters()[Stat::DhcpRequestRenewing as usize];
        (now > before).then_some(now)
    });
    match renewed {
        Some(n) => println!(
            "renewals answered with the agent dead: {} (first after {:.1?})",
            n - before,
            killed.elapsed()
        ),
        None => println!("no renewal seen within 30 s"),
    }
    let log = running[0].log();
    for line in log
        .lines()
        .filter(|l| l.contains("DHCPREQUEST") || l.contains("DHCPACK"))
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        println!("vm1 dhclient: {line}");
    }
    print!("{}", agent.leases());

    say("9. Restart the agent: it adopts the pinned state and replaces the program atomically");
    agent.spawn(&hv);
    for line in agent
        .logs()
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        if line.contains("adopted") || line.contains("replaced") || line.contains("snapshot") {
            println!("{line}");
        }
    }
    println!(
        "holdfast_dhcp_replies_total{{type=\"ack\"}} {} (counters continued across the restart)",
        agent.metric("holdfast_dhcp_replies_total{type=\"ack\"}")
    );

    say("10. Cleaning up: namespaces, pins and files are removed");
    drop(running);
    drop(agent);
    drop(vms);
    drop(hv);
    println!("done.");
}
