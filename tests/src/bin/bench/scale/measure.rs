//! One cloud, phase by phase: import, start (every source lists and watches), churn (NIC
//! creations), one node change, an idle window, and etcd outages (history kept, then
//! compacted).

use std::{
    net::Ipv4Addr,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use holdfast_tests::{etcd::Etcd, netns::Netns, rng::Rng};

use super::{
    DOWN, IDLE, NAIVE,
    cloud::Cloud,
    etcd_load::{Scrape, cpu_seconds, etcd_pid, rss_mib},
    figures::{Dist, Figures, Outage},
    fleet::{Counts, SimAgent, delta, runtime, settle, start_agents, wait_documents},
    naive::Naive,
    report::print_one,
};

/// Stops etcd for [`DOWN`] and starts it again on the same data; with `compact`, the history
/// is first compacted up to that revision, as a retention policy would during a longer outage.
fn outage(
    etcd: &mut Etcd,
    ns: &Netns,
    sim: &[SimAgent],
    watchers: usize,
    compact: Option<i64>,
) -> Outage {
    if let Some(revision) = compact {
        etcd.client().compact(revision);
    }
    let before = Counts::take(sim, &[]);
    let reconnects: Vec<u64> = sim.iter().map(|a| (a.reconnects)()).collect();
    etcd.stop();
    thread::sleep(DOWN);
    etcd.restart();
    let t = Instant::now();
    let pid = etcd_pid(ns).to_string();
    let cpu0 = cpu_seconds(&pid);
    let mut last = Instant::now();
    loop {
        let relisted = compact.is_none()
            || sim
                .iter()
                .zip(&before.documents)
                .all(|(a, d)| a.seen.documents.load(Ordering::Acquire) > *d);
        if relisted && Scrape::get(ns).watchers() >= watchers as f64 {
            break;
        }
        if last.elapsed() > Duration::from_secs(5) {
            println!(
                "  … {:.0} of {watchers} watchers back after {:.0?}",
                Scrape::get(ns).watchers(),
                t.elapsed()
            );
            last = Instant::now();
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the sources did not come back after the outage"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let back = t.elapsed();
    let scrape = Scrape::get(ns);
    let now = Counts::take(sim, &[]);
    Outage {
        back,
        reconnects: Dist::of(&delta(
            &sim.iter().map(|a| (a.reconnects)()).collect::<Vec<_>>(),
            &reconnects,
        )),
        ranges_per_agent: scrape.ranges() / sim.len() as f64,
        documents: Dist::of(&delta(&now.documents, &before.documents)),
        cpu: cpu_seconds(&pid) - cpu0,
        start_cpu: cpu0,
        rss: rss_mib(pid.parse().unwrap_or(0)),
    }
}

pub(super) fn measure(
    etcd: &mut Etcd,
    ns: &Netns,
    agents: usize,
    networks: usize,
    puts: usize,
    outages: bool,
) -> Figures {
    // A fresh etcd process on the same data: its RSS and CPU are this cloud's alone.
    etcd.restart();
    let process = etcd_pid(ns);
    let pid = process.to_string();
    let mut rng = Rng::new(0x5ca1e ^ ((agents as u64) << 20) ^ networks as u64);
    let (mut cloud, json) = Cloud::new(agents, networks, &mut rng);
    let t = Instant::now();
    let revision = etcd.client().import(&json);
    drop(json);
    // A small history: what the previous cloud left is compacted away.
    etcd.client().compact(revision);
    println!(
        "\n{agents} agents, {networks} networks, {} NICs ({:.2} networks per node): imported in {:.1?}",
        cloud.nics,
        cloud.mean_networks_per_node(),
        t.elapsed()
    );

    let naive: Vec<Naive> = (0..NAIVE).map(|_| Naive::start(ns, "/holdfast/")).collect();
    let base = holdfast_tests::netns::wait_for(Duration::from_secs(20), || {
        let s = Scrape::get(ns);
        (s.watchers() >= NAIVE as f64).then_some(s)
    })
    .expect("the naive watchers are watching");
    let base_watchers = base.watchers();
    let base_streams = base.streams();
    let rss_before = rss_mib(process);

    // Start: every source lists and watches; wait for every first document.
    let rt = runtime(ns);
    let cpu0 = cpu_seconds(&pid);
    let t = Instant::now();
    let sim = start_agents(&rt, agents);
    let start = wait_documents(&sim, 1, t);
    // The watches are created right after the list; wait for etcd to hold them all.
    let formula = cloud.watchers();
    let after_start = holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
        let s = Scrape::get(ns);
        (s.watchers() - base_watchers >= formula as f64).then_some(s)
    })
    .unwrap_or_else(|| Scrape::get(ns));
    let start_cpu = cpu_seconds(&pid) - cpu0;
    let first_entries = Dist::of(
        &sim.iter()
            .map(|a| a.seen.first_entries.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
    );

    // Churn: NIC creations, one at a time, each in a random network on a random node.
    let (nics, networks_per_node) = (cloud.nics, cloud.mean_networks_per_node());
    let before = Counts::take(&sim, &naive);
    let (s2, cpu2) = (Scrape::get(ns), cpu_seconds(&pid));
    let t = Instant::now();
    let client = etcd.client();
    for _ in 0..puts {
        let (network, node) = (rng.below(networks), rng.below(agents));
        client.put_nic(cloud.add(network, node));
    }
    let put_time = t.elapsed();
    let want = before.naive.iter().copied().min().unwrap_or(0) + 3 * puts as u64;
    let (after, churn_settled) = settle(&sim, &naive, want, t);
    let (s3, cpu3) = (Scrape::get(ns), cpu_seconds(&pid));
    let churn_events = delta(&after.events, &before.events);
    let naive_churn = delta(&after.naive, &before.naive);

    // One node changes its VTEP: every agent needs it.
    let t = Instant::now();
    client.put_raw(
        "nodes/hv-0",
        &format!(
            r#"{{"name":"hv-0","vtep":"{}"}}"#,
            Ipv4Addr::new(100, 127, 0, 1)
        ),
    );
    let want = after.naive.iter().copied().min().unwrap_or(0) + 1;
    let (node, node_settled) = settle(&sim, &naive, want, t);
    let (s4, cpu4) = (Scrape::get(ns), cpu_seconds(&pid));
    let rss_agents = rss_mib(process);
    let reconnects = sim.iter().map(|a| (a.reconnects)()).sum();
    let unavailable = sim
        .iter()
        .map(|a| a.seen.unavailable.load(Ordering::Relaxed))
        .sum();

    drop(naive);

    // Idle: only the progress requests (and HTTP/2 keepalives) run.
    let (s0, cpu0, self0) = (Scrape::get(ns), cpu_seconds(&pid), cpu_seconds("self"));
    thread::sleep(IDLE);
    let (s1, cpu1, self1) = (Scrape::get(ns), cpu_seconds(&pid), cpu_seconds("self"));
    let secs = IDLE.as_secs_f64();
    let invalid: u64 = sim
        .iter()
        .map(|a| a.seen.invalid.load(Ordering::Relaxed))
        .sum();
    let alive: u64 = sim
        .iter()
        .map(|a| a.seen.alive.load(Ordering::Relaxed))
        .sum();

    let (mut rt, mut sim) = (rt, sim);
    let outages = outages.then(|| {
        // etcd goes away for a moment and comes back: the sources resume their watches.
        let watchers = cloud.watchers();
        let resume = outage(etcd, ns, &sim, watchers, None);
        // Again with the history compacted meanwhile: they list again. Fresh sources, so that
        // their backoff starts where the first outage's did (a session under 30 s does not
        // reset it). Two writes no source watches put the compaction past every revision
        // they would resume from (etcd refuses a watch from a revision below the compacted one).
        drop(std::mem::take(&mut sim));
        std::mem::replace(&mut rt, runtime(ns)).shutdown_timeout(Duration::from_secs(10));
        sim = start_agents(&rt, agents);
        wait_documents(&sim, 1, Instant::now());
        holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
            (Scrape::get(ns).watchers() >= watchers as f64).then_some(())
        })
        .expect("every source watching");
        etcd.client().put_raw("bench/marker", "1");
        let revision = etcd.client().put_raw("bench/marker", "2");
        let relist = outage(etcd, ns, &sim, watchers, Some(revision));
        (resume, relist)
    });

    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let f = Figures {
        agents,
        networks,
        nics,
        networks_per_node,
        start,
        start_cpu,
        start_sent: after_start.sent_bytes() - base.sent_bytes(),
        ranges_per_agent: (after_start.ranges() - base.ranges()) / agents as f64,
        first_entries,
        watchers: after_start.watchers() - base_watchers,
        watchers_formula: formula,
        streams: after_start.streams() - base_streams,
        rss_before,
        rss_agents,
        idle_watch_requests: (s1.watch_requests() - s0.watch_requests()) / secs,
        idle_watch_responses: (s1.watch_responses() - s0.watch_responses()) / secs,
        idle_cpu: (cpu1 - cpu0) / secs,
        idle_self_cpu: (self1 - self0) / secs,
        idle_sent: (s1.sent_bytes() - s0.sent_bytes()) / secs,
        puts,
        put_time,
        churn_woken: churn_events.iter().filter(|e| **e > 0).count(),
        churn_events: Dist::of(&churn_events),
        naive_events: mean(&naive_churn),
        churn_partials: Dist::of(&delta(&after.partials, &before.partials)),
        churn_documents: delta(&after.documents, &before.documents).iter().sum(),
        churn_partial_networks: mean(&delta(&after.partial_networks, &before.partial_networks)),
        churn_settled,
        churn_cpu: cpu3 - cpu2,
        churn_etcd_events: s3.events() - s2.events(),
        churn_sent: s3.sent_bytes() - s2.sent_bytes(),
        churn_watchers_after: s3.watchers() - base_watchers,
        churn_watchers_formula: cloud.watchers(),
        node_events: Dist::of(&delta(&node.events, &after.events)),
        node_documents: Dist::of(&delta(&node.documents, &after.documents)),
        node_naive: mean(&delta(&node.naive, &after.naive)),
        node_settled,
        node_cpu: cpu4 - cpu3,
        node_sent: s4.sent_bytes() - s3.sent_bytes(),
        reconnects,
        unavailable,
        slow_watchers: s4.slow_watchers(),
        outages,
    };
    print_one(
        &f,
        s1.received_bytes() - s0.received_bytes(),
        invalid,
        alive,
    );

    // Stop: the sources and their connections go with the runtime.
    drop(sim);
    rt.shutdown_timeout(Duration::from_secs(10));
    let gone = holdfast_tests::netns::wait_for(Duration::from_secs(30), || {
        (Scrape::get(ns).streams() == 0.0).then_some(())
    });
    if gone.is_none() {
        println!("  (etcd still counts watch streams 30 s after the agents stopped)");
    }
    f
}
