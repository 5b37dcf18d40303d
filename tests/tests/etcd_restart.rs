//! SIGKILL an agent under DHCP and VPC load while its IPAM (a real etcd) is down: no DHCP
//! request goes unanswered, no forwarded packet is lost, and the restarted agent adopts its
//! pinned maps, serves from its snapshot without flushing anything, and catches up once etcd
//! is back.
//!
//! Two hypervisors (the `Cloud` of `vpc.rs`) read IPAM from an etcd in a control namespace of
//! its own, reached over a management link each. On hv-1: a VM pinging a VM on hv-2 with
//! `ping -i 0.01` (VXLAN both ways), a VM renewing a 10 s lease with dhclient, and the DHCP load
//! generator doing DORA for 32 clients on a third VM's interface. A thread reads the pinned
//! maps of both hosts every 20 ms to catch any entry going missing.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use agent_common::{FdbKey, Stat};
use holdfast::model::{MacAddr, Nic};
use holdfast_tests::{
    clients,
    loadgen::{self, LoadConfig},
    netns::{Agent, wait_for},
    unix_now,
    vpc::{Cloud, Net, Options, Source, VmSpec},
};

const VNI: u32 = 1001;
const NETS: [Net; 1] = [Net {
    id: "pn-blue",
    vni: VNI,
}];
const A1: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x01];
const A2: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x02];
const LOAD: [u8; 6] = [0x02, 0x0a, 0, 0, 0, 0x03];
const IP_A1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_A2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
/// NICs put into etcd once it is back, one per host: each host must catch up with the other's
/// (a remote NIC lands in its forwarding map).
const LATE: [([u8; 6], &str, Ipv4Addr); 2] = [
    (
        [0x02, 0x0e, 0, 0, 0, 0x02],
        "hv-2",
        Ipv4Addr::new(10, 0, 0, 52),
    ),
    (
        [0x02, 0x0e, 0, 0, 0, 0x01],
        "hv-1",
        Ipv4Addr::new(10, 0, 0, 51),
    ),
];

const LOAD_CLIENTS: usize = 32;
/// DORA transactions in flight at once (one generator thread: the machine has two cores).
const LOAD_WINDOW: usize = 4;
/// A request without a reply for this long is unanswered (XDP answers in microseconds).
const LOAD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the load runs: the kill, the dead agent, the restart, and some time after.
const LOAD_FOR: Duration = Duration::from_secs(16);
const BEFORE_KILL: Duration = Duration::from_secs(3);
const DEAD_FOR: Duration = Duration::from_secs(4);

const fn spec(host: usize, mac: [u8; 6], ip: Ipv4Addr, tap: &'static str) -> VmSpec {
    VmSpec {
        net: "pn-blue",
        host,
        mac,
        ip,
        tap,
        real_tap: false,
    }
}

/// The load generator's clients: NICs of hv-1 on the load VM's interface.
fn load_nics() -> Vec<VmSpec> {
    (0..LOAD_CLIENTS)
        .map(|i| {
            spec(
                0,
                [0x02, 0x0d, 0, 0, 0, i as u8],
                Ipv4Addr::new(10, 0, 0, 100 + i as u8),
                "tap-load",
            )
        })
        .collect()
}

/// Entry counts of one host's pinned maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Counts {
    bindings: usize,
    fdb: usize,
    arp: usize,
    vnis: usize,
    vteps: usize,
}

fn counts(bpffs: &std::path::Path) -> Option<Counts> {
    let bindings = holdfast::dataplane::read_bindings(bpffs).ok()?.len();
    let v = holdfast::dataplane::read_vpc(bpffs).ok()?;
    Some(Counts {
        bindings,
        fdb: v.fdb.len(),
        arp: v.arp.len(),
        vnis: v.vnis.len(),
        vteps: v.vteps.len(),
    })
}

/// What the map sampler saw on one host.
#[derive(Debug, Default)]
struct Seen {
    samples: u32,
    failed_reads: u32,
    /// Field by field, the smallest and largest count.
    min: Option<Counts>,
    max: Option<Counts>,
}

impl Seen {
    fn add(&mut self, c: Counts) {
        self.samples += 1;
        let fold = |a: Option<Counts>, f: fn(usize, usize) -> usize| {
            Some(a.map_or(c, |a| Counts {
                bindings: f(a.bindings, c.bindings),
                fdb: f(a.fdb, c.fdb),
                arp: f(a.arp, c.arp),
                vnis: f(a.vnis, c.vnis),
                vteps: f(a.vteps, c.vteps),
            }))
        };
        self.min = fold(self.min, usize::min);
        self.max = fold(self.max, usize::max);
    }
}

/// Reads the pinned maps of each host every 20 ms until stopped.
fn sample_maps(bpffs: Vec<PathBuf>, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Seen>> {
    thread::spawn(move || {
        let mut seen: Vec<Seen> = bpffs.iter().map(|_| Seen::default()).collect();
        while !stop.load(Ordering::Relaxed) {
            for (path, s) in bpffs.iter().zip(&mut seen) {
                match counts(path) {
                    Some(c) => s.add(c),
                    None => s.failed_reads += 1,
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

/// `ping -i 0.01` with timestamps (`-D`), stopped with SIGINT. Its output is read as it
/// comes: ping blocks, and stops sending, once a pipe nobody reads is full.
struct Pinger {
    child: Child,
    output: thread::JoinHandle<String>,
}

/// What the pinger saw.
struct PingResult {
    transmitted: u32,
    received: u32,
    /// From the first reply to the last.
    span: Duration,
    /// The longest time between two replies, and when it ended (Unix time).
    max_gap: Duration,
    max_gap_at: f64,
    /// Sequence numbers without a reply, each with when the reply before it came (Unix time).
    lost: Vec<(u32, f64)>,
}

impl Pinger {
    fn start(cloud: &Cloud, from: [u8; 6], to: Ipv4Addr) -> Self {
        let mut child = cloud
            .vm_ns(from)
            .exec("ping")
            .args(["-n", "-D", "-i", "0.01", "-W", "1"])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let mut stdout = child.stdout.take().expect("stdout");
        let output = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Self { child, output }
    }

    /// Stops it and reads its lines: every reply, and the summary.
    fn finish(mut self) -> PingResult {
        // SAFETY: kill(2) on our child (`ip netns exec` execs ping in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let text = self.output.join().expect("ping output");
        // "[1795543390.204117] 64 bytes from 10.0.0.12: icmp_seq=7 ttl=64 time=0.081 ms"
        let replies: BTreeMap<u32, f64> = text
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .filter_map(|l| {
                let at = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
                let seq = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("icmp_seq="))?
                    .parse()
                    .ok()?;
                Some((seq, at))
            })
            .collect();
        let transmitted = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted"))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or(0);
        // The last request may still have been in flight when SIGINT came.
        let lost = (1..transmitted)
            .filter(|s| !replies.contains_key(s))
            .map(|s| (s, replies.range(..s).next_back().map_or(0.0, |(_, t)| *t)))
            .collect();
        let times: Vec<f64> = replies.values().copied().collect();
        let (max_gap, max_gap_at) = times
            .windows(2)
            .map(|w| (w[1] - w[0], w[1]))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        let first = replies.values().next().copied().unwrap_or(0.0);
        let last = replies.values().next_back().copied().unwrap_or(0.0);
        PingResult {
            transmitted,
            received: replies.len() as u32,
            span: Duration::from_secs_f64((last - first).max(0.0)),
            max_gap: Duration::from_secs_f64(max_gap.max(0.0)),
            max_gap_at,
            lost,
        }
    }
}

/// REQUEST and ACK lines in a dhclient log. A REQUEST at the very end may be in flight.
fn dhclient_exchanges(log: &str) -> (usize, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("DHCPREQUEST") || l.starts_with("DHCPACK"))
        .collect();
    let mut lines = lines.as_slice();
    if lines.last().is_some_and(|l| l.starts_with("DHCPREQUEST")) {
        lines = &lines[..lines.len() - 1];
    }
    let requests = lines
        .iter()
        .filter(|l| l.starts_with("DHCPREQUEST"))
        .count();
    (requests, lines.len() - requests)
}

/// The log of the agent's latest run.
fn latest_run(agent: &Agent) -> String {
    let logs = agent.logs();
    let start = logs.rfind("holdfast starting").unwrap_or(0);
    logs[logs[..start].rfind('\n').map_or(0, |i| i + 1)..].to_owned()
}

fn dhcp_replies(agent: &Agent) -> u64 {
    dhcp_totals(agent).1
}

/// DHCP requests from bound NICs, and replies, from one read of the counters. XDP counts a
/// request and its reply in the same run, so with no load they are equal when all is well.
fn dhcp_totals(agent: &Agent) -> (u64, u64) {
    let c = agent.counters();
    let requests = [
        Stat::DhcpDiscover,
        Stat::DhcpRequestSelecting,
        Stat::DhcpRequestInitReboot,
        Stat::DhcpRequestRenewing,
        Stat::DhcpRequestRebinding,
    ]
    .iter()
    .map(|s| c[*s as usize])
    .sum();
    let replies = [Stat::DhcpOffer, Stat::DhcpAck, Stat::DhcpNak]
        .iter()
        .map(|s| c[*s as usize])
        .sum();
    (requests, replies)
}

fn in_fdb(agent: &Agent, mac: [u8; 6]) -> bool {
    holdfast::dataplane::pinned_fdb(agent.bpffs.path())
        .map(|m| m.get(&FdbKey::new(VNI, mac), 0).is_ok())
        .unwrap_or(false)
}

#[test]
fn sigkill_under_dhcp_and_vpc_load_during_an_etcd_outage_loses_nothing() {
    let test_started = Instant::now();
    let vms = [
        spec(0, A1, IP_A1, "tap-a1"),
        spec(1, A2, IP_A2, "tap-a2"),
        spec(0, LOAD, Ipv4Addr::new(10, 0, 0, 20), "tap-load"),
    ];
    let extra = load_nics();
    let mut cloud = Cloud::with(
        &NETS,
        &vms,
        &Options {
            lease_time: 10,
            static_addresses: false,
            source: Source::Etcd,
            extra_nics: &extra,
            ..Options::default()
        },
    );
    let a1_client = clients::dhclient(cloud.vm(A1), None);
    let a2_client = clients::dhclient(cloud.vm(A2), None);
    for (mac, ip) in [(A1, IP_A1), (A2, IP_A2)] {
        let got = cloud.vm(mac).wait_address(Duration::from_secs(30));
        assert_eq!(got.map(|a| a.0), Some(ip), "no lease:\n{}", a1_client.log());
    }
    // The MTU comes with the lease, a moment after the address.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(cloud.ping(A1, IP_A2, 3), 3, "no path from A1 to A2");
    let load_ns = cloud.vm(LOAD).ns.path();
    cloud
        .vm(LOAD)
        .ns
        .ip(&["link", "set", "eth0", "promisc", "on"]);
    eprintln!("cloud up, leases bound: {:.1?}", test_started.elapsed());

    // The outage: etcd goes away, both agents notice and keep serving what they hold.
    cloud.etcd().stop();
    let outage = Instant::now();
    for a in &cloud.agents {
        let down = wait_for(Duration::from_secs(10), || {
            (a.metric("holdfast_ipam_up") == 0.0).then_some(())
        });
        assert!(down.is_some(), "the agent did not notice:\n{}", a.logs());
    }
    let before: Vec<Counts> = cloud
        .agents
        .iter()
        .map(|a| counts(a.bpffs.path()).expect("pinned maps"))
        .collect();
    let (leases_before, vpc_before) = (cloud.agents[0].leases(), cloud.agents[0].vpc());
    let metrics_before = (
        cloud.agents[0].metric("holdfast_leases"),
        cloud.agents[0].metric("holdfast_fdb_entries"),
    );
    assert_eq!(
        before[0].bindings,
        2 + LOAD_CLIENTS,
        "hv-1 holds A1, the load VM and its clients"
    );

    // Load: the map sampler, the ping across hosts, the DHCP generator.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_maps(
        cloud.agents.iter().map(|a| a.bpffs.0.clone()).collect(),
        stop.clone(),
    );
    let pinger = Pinger::start(&cloud, A1, IP_A2);
    let cfg = LoadConfig {
        netns: load_ns,
        interface: "eth0".into(),
        clients: extra.iter().map(|n| n.mac).collect(),
        window: LOAD_WINDOW,
        duration: LOAD_FOR,
        timeout: LOAD_TIMEOUT,
        threads: 1,
    };
    let renewals = |a: &Agent| {
        let c = a.counters();
        c[Stat::DhcpRequestRenewing as usize] + c[Stat::DhcpRequestRebinding as usize]
    };
    let renewals_before = renewals(&cloud.agents[0]);
    let totals_before = dhcp_totals(&cloud.agents[0]);
    let load_started = Instant::now();
    let load = thread::spawn(move || {
        // At full speed the generator takes a core; niced, it leaves the ping and the agent
        // their turn on this two-core machine and gets the rest.
        // SAFETY: setpriority(2) on this thread only (a tid is a PRIO_PROCESS target on Linux).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 10) };
        loadgen::run(&cfg)
    });
    thread::sleep(BEFORE_KILL);

    // SIGKILL hv-1's agent, leave it dead, then start it again with etcd still down.
    let replies_at_kill = dhcp_replies(&cloud.agents[0]);
    let killed_at = unix_now();
    cloud.agents[0].kill();
    thread::sleep(DEAD_FOR);
    let replies_dead = dhcp_replies(&cloud.agents[0]) - replies_at_kill;
    let restarted_at = unix_now();
    let restarting = Instant::now();
    let (agents, hosts) = (&mut cloud.agents, &cloud.hosts);
    agents[0].spawn(&hosts[0]);
    let restart_took = restarting.elapsed();
    let ready_at = unix_now();
    assert!(
        load_started.elapsed() + Duration::from_secs(2) < LOAD_FOR,
        "the restart took {restart_took:?}: the load ended before it could be measured after"
    );

    let load = load.join().expect("load generator");
    thread::sleep(Duration::from_millis(300));
    let ping = pinger.finish();
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().expect("map sampler");
    let a1_renewed = renewals(&cloud.agents[0]) - renewals_before;
    let totals = dhcp_totals(&cloud.agents[0]);
    let (requests_xdp, replies_xdp) = (totals.0 - totals_before.0, totals.1 - totals_before.1);
    let (dh_requests, dh_acks) = dhclient_exchanges(&a1_client.log());
    let (dh2_requests, dh2_acks) = dhclient_exchanges(&a2_client.log());
    let logs = latest_run(&cloud.agents[0]);

    eprintln!(
        "DHCP load on hv-1: {} requests sent, {} replies, {} unanswered (timed out after \
         {LOAD_TIMEOUT:?}), {} in flight at the end, {} DORA in {:.1?} ({:.0} replies/s); \
         {replies_dead} replies by XDP while the agent was dead",
        load.sent,
        load.replies,
        load.timeouts,
        load.sent - load.replies - load.timeouts,
        load.doras,
        load.elapsed,
        load.replies_per_sec(),
    );
    eprintln!(
        "hv-1's data plane over the window: {requests_xdp} requests from bound NICs, \
         {replies_xdp} replies"
    );
    eprintln!(
        "dhclient on A1 (10 s leases): {a1_renewed} renewals in the window; {dh_requests} \
         REQUESTs, {dh_acks} ACKs over its life (A2: {dh2_requests}/{dh2_acks})"
    );
    eprintln!(
        "ping A1 -> A2 (-i 0.01): {} sent, one every {:.1?}, {} received, lost {:?}, longest \
         time between replies {:.1?} ending at {:.3} (kill at \
         {killed_at:.3}, restart at {restarted_at:.3}, ready at {ready_at:.3})",
        ping.transmitted,
        ping.span / ping.transmitted.max(1),
        ping.received,
        ping.lost,
        ping.max_gap,
        ping.max_gap_at
    );
    eprintln!(
        "restart with etcd down: ready in {restart_took:?}; pinned maps sampled {} / {} times, \
         before {:?}, min {:?}, max {:?}",
        seen[0].samples, seen[1].samples, before[0], seen[0].min, seen[0].max
    );

    // No DHCP request went unanswered.
    assert!(load.replies > 1000, "hardly any load: {load:?}");
    assert_eq!(load.timeouts, 0, "unanswered DHCP requests: {load:?}");
    assert!(
        load.sent - load.replies <= LOAD_WINDOW as u64,
        "more requests without a reply than in flight: {load:?}"
    );
    assert!(replies_dead > 100, "no load while the agent was dead");
    assert_eq!(
        requests_xdp, replies_xdp,
        "hv-1's program left requests unanswered"
    );
    assert!(a1_renewed >= 2, "A1 renewed {a1_renewed} times");
    assert_eq!(dh_requests, dh_acks, "{}", a1_client.log());
    assert_eq!(dh2_requests, dh2_acks, "{}", a2_client.log());
    assert_eq!(cloud.vm(A1).address().map(|a| a.0), Some(IP_A1));

    // No forwarding gap.
    // Asked every 10 ms, ping sends about every 20 ms here (timer granularity), slower when
    // the machine is busy: the flow must at least have gone on without a pause.
    assert!(
        ping.span > LOAD_FOR && ping.transmitted as f64 > ping.span.as_secs_f64() * 20.0,
        "only {} pings in {:?}",
        ping.transmitted,
        ping.span
    );
    assert!(
        ping.max_gap < Duration::from_millis(500),
        "the flow paused for {:?}",
        ping.max_gap
    );
    assert!(
        ping.lost.is_empty(),
        "{} pings lost across the kill and restart: {:?}",
        ping.lost.len(),
        ping.lost
    );

    // No flush: no entry of either host's maps went missing at any moment, nor came back
    // different; the restarted agent adopted the pinned maps and served its snapshot.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.failed_reads, 0, "hv-{}: unreadable pinned maps", i + 1);
        assert!(s.samples > 100, "hv-{}: {} samples", i + 1, s.samples);
        assert_eq!(s.min, Some(before[i]), "hv-{}: entries went missing", i + 1);
        assert_eq!(
            s.max,
            Some(before[i]),
            "hv-{}: entries came and went",
            i + 1
        );
    }
    assert_eq!(cloud.agents[0].leases(), leases_before);
    assert_eq!(cloud.agents[0].vpc(), vpc_before);
    let a = &cloud.agents[0];
    assert_eq!(
        (
            a.metric("holdfast_leases"),
            a.metric("holdfast_fdb_entries")
        ),
        metrics_before
    );
    for needle in [
        format!("adopted_bindings={}", before[0].bindings),
        format!("adopted_fdb={}", before[0].fdb),
        "serving the persisted IPAM snapshot".into(),
        "replaced the program of the pinned link".into(),
        "IPAM unavailable; the last good state keeps serving".into(),
    ] {
        assert!(logs.contains(&needle), "no {needle:?} in:\n{logs}");
    }
    // It re-attached its links (replacing their programs) and wrote and deleted nothing.
    let reconciled: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("data plane reconciled"))
        .collect();
    assert!(
        reconciled
            .iter()
            .all(|l| l.contains(" upserted=0 deleted=0 ")),
        "the restarted agent changed the data plane:\n{logs}"
    );
    assert_eq!(a.metric("holdfast_ipam_up"), 0.0);
    assert_eq!(a.http("/readyz").0, 200);
    let stale = a.metric("holdfast_ipam_stale_seconds");
    assert!(
        stale >= outage.elapsed().as_secs_f64() - 2.0,
        "stale {stale} s after {:?} of outage",
        outage.elapsed()
    );

    // etcd back: NICs put now reach both data planes.
    let outage_took = outage.elapsed();
    cloud.etcd().restart();
    let back = Instant::now();
    for (mac, node, ip) in LATE {
        cloud.etcd().client().put_nic(Nic {
            mac: MacAddr(mac),
            network: "pn-blue".into(),
            ip,
            hostname: None,
            node: node.into(),
            interface: Some("tap-late".into()),
            default_route: None,
            options: None,
            boot: None,
            ip6: None,
            forwarding: false,
        });
    }
    // Each agent reconnects within seconds of its probes finding etcd back, at the latest at
    // the end of its backoff (capped at 30 s): one deadline.
    let mut caught_up: Vec<Option<Duration>> = vec![None; 2];
    wait_for(Duration::from_secs(35), || {
        for ((a, (mac, _, _)), t) in cloud.agents.iter().zip(LATE).zip(&mut caught_up) {
            if t.is_none() && in_fdb(a, mac) {
                *t = Some(back.elapsed());
            }
        }
        caught_up.iter().all(Option::is_some).then_some(())
    });
    eprintln!(
        "etcd down for {outage_took:.1?}; back: hv-1 (restarted) caught up in {:?}, hv-2 in {:?}; \
         test took {:.1?}",
        caught_up[0],
        caught_up[1],
        test_started.elapsed()
    );
    let a = &cloud.agents[0];
    assert!(
        caught_up[0].is_some(),
        "hv-1 never caught up:\n{}",
        a.logs()
    );
    assert_eq!(a.metric("holdfast_ipam_up"), 1.0);
    assert!(a.metric("holdfast_ipam_stale_seconds") < 5.0);
    assert!(
        a.metric("holdfast_ipam_last_sync_timestamp_seconds") >= unix_now() - 60.0,
        "no sync since etcd came back"
    );
    assert!(
        caught_up[1].is_some(),
        "hv-2 never caught up:\n{}",
        cloud.agents[1].logs()
    );
}
