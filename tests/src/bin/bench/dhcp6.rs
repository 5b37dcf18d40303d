//! `cargo xtask bench dhcp`, DHCPv6 (issue 15): replies per second over one veth from the
//! DHCPv6 load generator (`loadgen6`: many clients, RFC 8415's four-message exchange), against
//! holdfast in xdp mode and in tc mode, and ISC Kea's DHCPv6 server in the same run, on the same
//! veth with the same addresses. The ns per reply inside the program are taken with the IPv4
//! ones, in `dhcp.rs`.
//!
//! Kea is set up as an operator of VMs with fixed addresses would: memfile lease database
//! (persisted, in the same temporary directory as the DHCPv4 server's), one /64 on the VM
//! port, no pool, one reservation per NIC by hardware address. The operator knows a NIC's MAC
//! before the VM boots, not the DUID its guest will make up, and the MAC is what holdfast's
//! model keys a NIC by; Kea finds it in the client's DUID-LL (its default `mac-sources`).
//! Rapid commit stays off, Kea's default, so both servers answer the four-message exchange
//! that DORA is the IPv4 twin of.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use holdfast_tests::{
    TempDir,
    loadgen::{self, LoadConfig, LoadResult},
    loadgen6,
    netns::{Agent, NO_RATE_LIMITS, Netns, Proc, Vm, mac_str, wait_for},
    rawsock::RawSocket,
};

use crate::dhcp::{CLIENTS, RUN, bpf_stats};

const TAP: &str = "tap0";
const SUBNET6: &str = "fd00:20::/64";
const DNS6: &str = "fd00:20::53";

fn ipam(macs: &[[u8; 6]]) -> String {
    let nics: Vec<String> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                r#"{{"mac":"{}","network":"pn-bench","ip":"{}","ip6":"{}","node":"hv-1","interface":"{TAP}"}}"#,
                mac_str(*m),
                loadgen::client_ip(i),
                loadgen6::client_ip6(i)
            )
        })
        .collect();
    format!(
        r#"{{"networks":[{{"id":"pn-bench","vni":2001,"subnet":"10.20.0.0/16","gateway":"10.20.0.1",
            "dns":["10.20.0.2"],"domain":"bench.internal","search":["bench.internal"],"mtu":1450,
            "lease_time":3600,"subnet6":"{SUBNET6}","dns6":["{DNS6}"]}}],
           "nodes":[{{"name":"hv-1","vtep":"198.18.0.1"}}],"nics":[{}]}}"#,
        nics.join(",")
    )
}

/// Waits until a SOLICIT from client 0 gets an ADVERTISE with the address reserved for it.
fn wait_serving(vm: &Vm, macs: &[[u8; 6]], what: &str, log: &Path) {
    let (mac, reserved) = (macs[0], loadgen6::client_ip6(0).octets());
    let sock = RawSocket::open(&vm.ns.path(), "eth0");
    let mut n = 0u32;
    let ok = wait_for(Duration::from_secs(20), || {
        n += 1;
        let xid = (std::process::id() ^ n.wrapping_mul(0x9e37)) & 0x00ff_ffff;
        sock.send(&loadgen6::frame(mac, loadgen6::SOLICIT, xid, None, None));
        let deadline = Instant::now() + Duration::from_millis(300);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let frame = sock.recv(left)?;
            if loadgen6::parse(&frame).is_some_and(|s| {
                s.xid == xid && s.msg_type == loadgen6::ADVERTISE && s.addr == Some(reserved)
            }) {
                return Some(());
            }
        }
        None
    });
    assert!(
        ok.is_some(),
        "{what} does not answer DHCPv6 with the reserved address:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn load(vm: &Vm, macs: &[[u8; 6]], window: usize) -> LoadResult {
    let cfg = LoadConfig {
        netns: vm.ns.path(),
        interface: "eth0".into(),
        clients: macs.to_vec(),
        window,
        duration: RUN,
        timeout: Duration::from_millis(500),
        threads: 2,
    };
    // Warm up (neighbour caches, lease files, allocations), then measure.
    loadgen6::run(&LoadConfig {
        duration: Duration::from_secs(1),
        ..cfg.clone()
    });
    loadgen6::run(&cfg)
}

fn line(name: &str, r: &LoadResult) {
    println!(
        "  {name:<28} {:>12.0} replies/s  {:>11.0} exchanges/s  ({} timeouts)",
        r.replies_per_sec(),
        r.doras_per_sec(),
        r.timeouts
    );
}

/// holdfast with `extra` configuration: replies per second and its ns per program run under
/// that load (kernel.bpf_stats_enabled).
fn holdfast(
    hv: &Netns,
    vm: &Vm,
    macs: &[[u8; 6]],
    what: &str,
    program: &str,
    extra: &str,
) -> (LoadResult, f64) {
    // Many clients behind one interface: the per-port limits are for one real client.
    let mut agent = Agent::start_with(hv, "hv-1", &ipam(macs), &format!("{NO_RATE_LIMITS}{extra}"));
    wait_for(Duration::from_secs(30), || {
        (agent.metric("holdfast_leases") == macs.len() as f64).then_some(())
    })
    .expect("leases applied");
    wait_serving(vm, macs, what, &agent.log);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (t0, n0) = bpf_stats(program);
    let r = load(vm, macs, macs.len() / 2);
    let (t1, n1) = bpf_stats(program);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    agent.stop();
    drop(agent); // removes its bpffs directory: the program is detached from the tap
    let ns = (t1 - t0).as_nanos() as f64 / (n1 - n0).max(1) as f64;
    (r, ns)
}

/// Kea's DHCPv6 server on `TAP` in `hv`, reservations by hardware address (see the module's
/// comment), its files in `dir`.
fn kea(hv: &Netns, dir: &Path, macs: &[[u8; 6]]) -> Proc {
    // Kea answers from a UDP socket bound to the port's link-local address: wait until it is
    // no longer tentative (duplicate address detection).
    wait_for(Duration::from_secs(10), || {
        let out = hv.query(&["-6", "addr", "show", "dev", TAP, "scope", "link"]);
        let text = String::from_utf8_lossy(&out.stdout);
        (text.contains("inet6") && !text.contains("tentative")).then_some(())
    })
    .expect("the port's link-local address");
    // A kernel UDP socket resolves each client's link-local address before answering. Static
    // entries take neighbour discovery (a once-per-client cost the warm-up would absorb) out of
    // the measurement.
    let neigh = dir.join("neigh6.batch");
    let batch: String = macs
        .iter()
        .map(|m| {
            format!(
                "neigh replace {} lladdr {} dev {TAP} nud permanent\n",
                loadgen6::link_local(*m),
                mac_str(*m)
            )
        })
        .collect();
    std::fs::write(&neigh, batch).expect("neighbour batch");
    hv.ip(&["-batch", neigh.to_str().expect("path")]);

    let reservations: Vec<String> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                r#"{{"hw-address":"{}","ip-addresses":["{}"]}}"#,
                mac_str(*m),
                loadgen6::client_ip6(i)
            )
        })
        .collect();
    let conf = dir.join("kea-dhcp6.conf");
    std::fs::write(
        &conf,
        format!(
            r#"{{"Dhcp6":{{
  "interfaces-config":{{"interfaces":["{TAP}"]}},
  "data-directory":"{data}",
  "lease-database":{{"type":"memfile","persist":true,"name":"{leases}","lfc-interval":3600}},
  "preferred-lifetime":3600,
  "valid-lifetime":3600,
  "host-reservation-identifiers":["hw-address"],
  "option-data":[{{"name":"dns-servers","data":"{DNS6}"}},
                 {{"name":"domain-search","data":"bench.internal"}}],
  "subnet6":[{{"id":1,"subnet":"{SUBNET6}","interface":"{TAP}",
     "reservations":[{res}]}}],
  "loggers":[{{"name":"kea-dhcp6","output_options":[{{"output":"{log}"}}],"severity":"WARN"}}]
}}}}"#,
            data = dir.display(),
            leases = dir.join("kea-leases6.csv").display(),
            res = reservations.join(","),
            log = dir.join("kea6.log").display()
        ),
    )
    .expect("kea conf");
    Proc(
        hv.exec("kea-dhcp6")
            .arg("-c")
            .arg(&conf)
            .env("KEA_PIDFILE_DIR", dir)
            .env("KEA_LOCKFILE_DIR", dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("kea6.out")).expect("log"))
            .spawn()
            .expect("kea-dhcp6"),
    )
}

/// ns per reply in the program (BPF_PROG_TEST_RUN, minus the harness), taken in `dhcp.rs`.
pub struct ProgramNs {
    pub advertise: f64,
    pub reply: f64,
}

/// The DHCPv6 replies per second of holdfast (both hooks) and Kea.
pub fn run(program: &ProgramNs) {
    println!(
        "\n3. DHCPv6 replies per second over one veth (load generator: 2 threads, SOLICIT/ADVERTISE \
         + REQUEST/REPLY, {CLIENTS} clients)"
    );
    let macs = loadgen::client_macs(CLIENTS);
    let hv = Netns::new("b6hv");
    let vm = Vm::new(&hv, TAP, [0x02, 0xbb, 0xff, 0, 0, 1]);
    vm.ns.ip(&["link", "set", "eth0", "promisc", "on"]);

    let (xdp, xdp_ns) = holdfast(
        &hv,
        &vm,
        &macs,
        "holdfast",
        holdfast::dataplane::PROGRAM_VM,
        "",
    );
    line("holdfast (XDP)", &xdp);
    println!(
        "  {:<28} {xdp_ns:>12.0} ns per program run under this load (kernel.bpf_stats_enabled)",
        ""
    );
    let (tc, tc_ns) = holdfast(
        &hv,
        &vm,
        &macs,
        "holdfast in tc mode",
        holdfast::dataplane::PROGRAM_VM_TC,
        "[vm]\nhook = \"tc\"\n",
    );
    line("holdfast (tc mode)", &tc);
    println!(
        "  {:<28} {tc_ns:>12.0} ns per program run under this load (kernel.bpf_stats_enabled)",
        ""
    );
    // The generator's ceiling: SOLICITs from unknown MACs, which no server answers.
    let ceiling = loadgen6::blast(&LoadConfig {
        netns: vm.ns.path(),
        interface: "eth0".into(),
        clients: macs
            .iter()
            .map(|m| {
                let mut m = *m;
                m[1] = 0xcc;
                m
            })
            .collect(),
        window: 0,
        duration: Duration::from_secs(3),
        timeout: Duration::ZERO,
        threads: 2,
    });
    println!(
        "  {:<28} {ceiling:>12.0} frames/s sent with no reply awaited",
        "generator ceiling"
    );

    let dir = TempDir::new("bench6-servers");
    let server = kea(&hv, dir.path(), &macs);
    wait_serving(&vm, &macs, "kea-dhcp6", &dir.path().join("kea6.out"));
    let kea_r = load(&vm, &macs, 64);
    line("ISC Kea (kea-dhcp6)", &kea_r);
    drop(server);

    let ratio = xdp.replies_per_sec() / kea_r.replies_per_sec();
    println!("\nRatios (DHCPv6 replies/s):");
    println!("  holdfast / Kea      {ratio:>8.1}x");
    println!(
        "  holdfast replies / generator send ceiling  {:.2} (near 0.5 or above, the generator \
         limited the figure, not XDP)",
        xdp.replies_per_sec() / ceiling
    );
    println!(
        "dhcp6 advertise ns xdp {:.0}\ndhcp6 reply ns xdp {:.0}",
        program.advertise, program.reply
    );
    println!("dhcp6 reply ns xdp in situ {xdp_ns:.0}\ndhcp6 reply ns tc in situ {tc_ns:.0}");
    println!("dhcp6 holdfast/kea {ratio:.1}x");
}
