//! The report: one cloud's figures as they are measured, then the tables of every cloud.

use super::{
    DOWN, IDLE, NAIVE,
    figures::{Figures, Outage},
};

/// One cloud's figures, printed as soon as it is measured.
pub(super) fn print_one(f: &Figures, idle_received: f64, invalid: u64, alive: u64) {
    let a = f.agents as f64;
    println!(
        "  start: every agent has its document after {:.2?}; etcd used {:.2} CPU s ({:.1} ms per agent)",
        f.start,
        f.start_cpu,
        f.start_cpu * 1000.0 / a
    );
    println!(
        "    per agent: {:.1} Range calls, first document of {} entries; etcd sent {:.1} MiB in all",
        f.ranges_per_agent,
        f.first_entries,
        f.start_sent / 1048576.0
    );
    println!(
        "    etcd holds {} watchers (formula 2 + 2 × networks per node: {}) on {} streams; RSS {:.0} → {:.0} MiB",
        f.watchers, f.watchers_formula, f.streams, f.rss_before, f.rss_agents
    );
    println!(
        "  churn: {} NIC creations in {:.2?}, settled {:.2?} after the first",
        f.puts, f.put_time, f.churn_settled
    );
    println!(
        "    watch events per agent: {}; agents woken: {} of {}",
        f.churn_events, f.churn_woken, f.agents
    );
    println!(
        "    a whole-prefix watcher: {:.0} events ({:.0}× the mean agent); one event per change: {} ({:.0}×)",
        f.naive_events,
        f.naive_events / f.churn_events.mean.max(f64::MIN_POSITIVE),
        f.puts,
        f.puts as f64 / f.churn_events.mean.max(f64::MIN_POSITIVE)
    );
    println!(
        "    updates per agent: partial {}, {:.1} networks validated again; complete documents: {}",
        f.churn_partials, f.churn_partial_networks, f.churn_documents
    );
    println!(
        "    etcd: {:.2} CPU s, {:.0} events sent to all watchers (the {} naive ones included), \
         {:.1} MiB sent; watchers now {} (formula {})",
        f.churn_cpu,
        f.churn_etcd_events,
        NAIVE,
        f.churn_sent / 1048576.0,
        f.churn_watchers_after,
        f.churn_watchers_formula
    );
    println!(
        "  node change: watch events per agent {}; documents per agent {}; whole-prefix watcher {:.0}; \
         settled {:.2?}; etcd {:.2} CPU s, {:.1} KiB sent",
        f.node_events,
        f.node_documents,
        f.node_naive,
        f.node_settled,
        f.node_cpu,
        f.node_sent / 1024.0
    );
    println!(
        "  reconnects {}, unavailable {}, invalid {}, alive updates {}, slow watchers {}",
        f.reconnects, f.unavailable, invalid, alive, f.slow_watchers
    );
    let outage = |what: &str, o: &Outage| {
        println!(
            "  {what} ({DOWN:?} down): every source watching again after {:.2?}; per agent \
             {:.1} Range calls, documents {}, reconnect attempts {}; etcd {:.2} CPU s meanwhile \
             ({:.2} s to start), RSS {:.0} MiB",
            o.back, o.ranges_per_agent, o.documents, o.reconnects, o.cpu, o.start_cpu, o.rss
        );
    };
    println!(
        "  idle {:.0?}: {:.1} watch requests/s (agents/2 = {:.1}), {:.1} watch responses/s, \
         etcd {:.1}% of a core, the agents {:.1}%, etcd sends {:.1} KiB/s, receives {:.1} KiB/s",
        IDLE,
        f.idle_watch_requests,
        a / 2.0,
        f.idle_watch_responses,
        f.idle_cpu * 100.0,
        f.idle_self_cpu * 100.0,
        f.idle_sent / 1024.0,
        idle_received / 1024.0
    );
    if let Some((resume, relist)) = &f.outages {
        outage("etcd away, back", resume);
        outage("etcd away, history compacted meanwhile", relist);
    }
}

/// Every cloud's figures as Markdown tables (docs/scale.md quotes them): start and steady
/// state, churn, outages.
pub(super) fn tables(all: &[Figures], puts: usize) {
    println!("\nStart and steady state (per agent unless said)");
    println!(
        "| agents | networks | NICs | nets/node | all documents | etcd CPU s | etcd MiB sent | Range calls | entries listed | watchers (formula) | streams | progress req/s | idle etcd CPU | etcd RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        println!(
            "| {} | {} | {} | {:.2} | {:.2?} | {:.2} | {:.1} | {:.1} | {:.0} | {} ({}) | {} | {:.1} | {:.1}% | {:.0} |",
            f.agents,
            f.networks,
            f.nics,
            f.networks_per_node,
            f.start,
            f.start_cpu,
            f.start_sent / 1048576.0,
            f.ranges_per_agent,
            f.first_entries.mean,
            f.watchers,
            f.watchers_formula,
            f.streams,
            f.idle_watch_requests,
            f.idle_cpu * 100.0,
            f.rss_agents
        );
    }
    println!("\nChurn: {puts} NIC creations, then one node change");
    println!(
        "| agents | networks | events/agent mean | p99 | max | whole-prefix watcher | ratio | agent events per change, all agents (naive) | partials/agent | documents | etcd CPU s | etcd MiB sent | settled | node change: events, documents per agent |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let total: f64 = f.churn_events.mean * f.agents as f64;
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.0} | {:.0}× | {:.1} ({:.0}) | {:.1} | {} | {:.2} | {:.1} | {:.2?} | {:.2}, {:.2} |",
            f.agents,
            f.networks,
            f.churn_events.mean,
            f.churn_events.p99,
            f.churn_events.max,
            f.naive_events,
            f.naive_events / f.churn_events.mean.max(f64::MIN_POSITIVE),
            total / f.puts as f64,
            f.naive_events / f.puts as f64 * f.agents as f64,
            f.churn_partials.mean,
            f.churn_documents,
            f.churn_cpu,
            f.churn_sent / 1048576.0,
            f.churn_settled,
            f.node_events.mean,
            f.node_documents.mean
        );
    }
    println!("\nOutages: etcd stopped for {DOWN:?} and started again on the same data");
    println!(
        "| agents | networks | history | all watching again after | reconnect attempts/agent mean (max) | Range calls/agent | documents/agent | etcd CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in all {
        let Some((resume, relist)) = &f.outages else {
            continue;
        };
        for (what, o) in [("kept", resume), ("compacted", relist)] {
            println!(
                "| {} | {} | {what} | {:.2?} | {:.1} ({}) | {:.1} | {:.2} | {:.2} |",
                f.agents,
                f.networks,
                o.back,
                o.reconnects.mean,
                o.reconnects.max,
                o.ranges_per_agent,
                o.documents.mean,
                o.cpu
            );
        }
    }
    let reconnects: u64 = all.iter().map(|f| f.reconnects + f.unavailable).sum();
    if reconnects > 0 {
        println!("\nnote: sources reconnected or reported etcd unavailable ({reconnects} times)");
    }
}
