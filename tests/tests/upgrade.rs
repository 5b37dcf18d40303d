//! A map layout upgrade, with two builds: the workspace's `holdfast` (layout N) and
//! `holdfast-layout-next` (the same programs under layout N+1, built by `cargo xtask test` with
//! the `layout-next` feature). The new build fills its own maps from the snapshot before it
//! swaps the programs of the pinned links, then retires the old maps; DHCP and forwarding never
//! stop, and the counters continue. Going back is the same migration the other way.
//!
//! Both hooks are on the host across it (issue 14): tap-a is in tc mode (`[[vm.hook_for]]`), its
//! peer tap-b and the DHCP clients' tap-l in xdp mode, so the pings cross one port of each mode
//! and the swap covers every kind of pinned link (`vmtc-`, `vm-`, `tc-`).

use std::{path::PathBuf, process::Stdio, thread, time::Duration};

use holdfast_tests::{
    loadgen::{self, LoadConfig},
    netns::{Agent, NO_RATE_LIMITS, Netns, Vm, mac_str, wait_for},
    workspace_bin,
};

const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const B: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const CLIENTS: usize = 32;

fn ipam(clients: &[[u8; 6]]) -> String {
    let mut nics = vec![
        format!(
            r#"{{"mac":"{}","network":"pn-up","ip":"10.20.200.11","node":"hv-1","interface":"tap-a"}}"#,
            mac_str(A)
        ),
        format!(
            r#"{{"mac":"{}","network":"pn-up","ip":"10.20.200.12","node":"hv-1","interface":"tap-b"}}"#,
            mac_str(B)
        ),
    ];
    for (i, m) in clients.iter().enumerate() {
        nics.push(format!(
            r#"{{"mac":"{}","network":"pn-up","ip":"{}","node":"hv-1","interface":"tap-l"}}"#,
            mac_str(*m),
            loadgen::client_ip(i)
        ));
    }
    format!(
        r#"{{"networks":[{{"id":"pn-up","vni":3001,"subnet":"10.20.0.0/16","gateway":"10.20.0.1",
            "mtu":1450,"lease_time":3600}}],
           "nodes":[{{"name":"hv-1","vtep":"198.18.0.1"}}],"nics":[{}]}}"#,
        nics.join(",")
    )
}

fn layouts(agent: &Agent) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(agent.bpffs.path())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("maps-v"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The pinned links of each VM port, by hook prefix: `tap-a: vmtc`.
fn links(agent: &Agent, hv: &Netns) -> Vec<String> {
    let dir = agent.bpffs.path().join("links");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ["tap-a", "tap-b", "tap-l"]
        .iter()
        .map(|tap| {
            let suffix = format!("-{}", hv.ifindex(tap));
            let mut hooks: Vec<&str> = names
                .iter()
                .filter_map(|n| n.strip_suffix(&suffix))
                .collect();
            hooks.sort_unstable();
            format!("{tap}: {}", hooks.join(" "))
        })
        .collect()
}

/// Replaces the running build with `binary` and waits until the old layout is retired.
fn upgrade(agent: &mut Agent, hv: &Netns, binary: PathBuf) -> Vec<String> {
    let before = layouts(agent);
    agent.stop();
    agent.binary = binary;
    agent.spawn(hv);
    let retired = wait_for(Duration::from_secs(15), || {
        let now = layouts(agent);
        (now.len() == 1 && now != before).then_some(now)
    });
    retired.unwrap_or_else(|| {
        panic!(
            "the old layout was not retired ({:?}):\n{}",
            layouts(agent),
            agent.logs()
        )
    })
}

#[test]
fn a_new_map_layout_migrates_without_a_gap_and_back() {
    let next = workspace_bin("holdfast-layout-next");
    assert!(
        next.exists(),
        "{} is missing: `cargo xtask test` builds it (cargo build -p holdfast --features layout-next)",
        next.display()
    );
    let hv = Netns::new("hv");
    let a = Vm::new(&hv, "tap-a", A);
    let b = Vm::new(&hv, "tap-b", B);
    let l = Vm::new(&hv, "tap-l", [0x02, 0xcc, 0, 0, 0, 1]);
    a.ns.ip(&["addr", "add", "10.20.200.11/16", "dev", "eth0"]);
    b.ns.ip(&["addr", "add", "10.20.200.12/16", "dev", "eth0"]);
    let clients = loadgen::client_macs(CLIENTS);
    // 32 clients behind one interface: the per-port limits are for one real client. tap-a on
    // the tc hook, the others on XDP: both kinds of link cross the migration.
    let config =
        format!("{NO_RATE_LIMITS}[[vm.hook_for]]\ninterfaces = [\"tap-a\"]\nhook = \"tc\"\n");
    let mut agent = Agent::start_with(&hv, "hv-1", &ipam(&clients), &config);
    let up = wait_for(Duration::from_secs(10), || {
        (agent.metric("holdfast_leases") == (CLIENTS + 2) as f64).then_some(())
    });
    assert!(up.is_some(), "{}", agent.logs());
    let (old, new) = (
        format!("maps-v{}", agent_common::LAYOUT_VERSION),
        format!("maps-v{}", agent_common::LAYOUT_VERSION + 1),
    );
    assert_eq!(layouts(&agent), vec![old.clone()]);
    let links = links(&agent, &hv);
    assert_eq!(
        links,
        vec![
            "tap-a: vmtc".to_string(),
            "tap-b: tc vm".to_string(),
            "tap-l: tc vm".to_string()
        ]
    );
    // The first ping resolves the neighbour (answered in XDP) before the measured run.
    assert_eq!(
        a.ns.exec("ping")
            .args(["-c", "1", "-W", "2", "10.20.200.12"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .ok(),
        Some(true),
        "{}",
        agent.logs()
    );

    // VPC: 100 pings a second between the two VMs; DHCP: full DORAs from 32 clients. Both run
    // across the upgrade.
    let pings = 1_000;
    let ping =
        a.ns.exec("ping")
            .args(["-q", "-i", "0.01", "-c", &pings.to_string(), "-W", "1"])
            .arg("10.20.200.12")
            .stdout(Stdio::piped())
            .spawn()
            .expect("ping");
    let cfg = LoadConfig {
        netns: l.ns.path(),
        interface: "eth0".into(),
        clients: clients.clone(),
        window: 4,
        duration: Duration::from_secs(9),
        timeout: Duration::from_millis(500),
        threads: 1,
    };
    let load = thread::spawn(move || loadgen::run(&cfg));
    thread::sleep(Duration::from_secs(2));
    let acks_before = agent.metric("holdfast_dhcp_replies_total{type=\"ack\"}");
    assert!(acks_before > 0.0);

    let now = upgrade(&mut agent, &hv, next);
    assert_eq!(now, vec![new]);
    let logs = agent.logs();
    assert!(
        logs.contains("serving the persisted IPAM snapshot"),
        "{logs}"
    );
    assert!(logs.contains("counters carried over"), "{logs}");
    assert_eq!(
        self::links(&agent, &hv),
        links,
        "the links of each mode, swapped in place"
    );

    let result = load.join().expect("load");
    let out = ping.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("DHCP across the upgrade: {result:?}\nping: {summary}");
    assert!(result.doras > 100, "{result:?}");
    assert_eq!(
        result.timeouts, 0,
        "a DHCP request went unanswered: {result:?}"
    );
    assert!(
        summary.contains(&format!("{pings} packets transmitted, {pings} received")),
        "forwarding had a gap: {summary}"
    );
    // The counters continue from the old layout's.
    assert!(
        agent.metric("holdfast_dhcp_replies_total{type=\"ack\"}") >= acks_before,
        "{}",
        agent.http("/metrics").1
    );
    assert_eq!(agent.metric("holdfast_leases"), (CLIENTS + 2) as f64);

    // And back: the previous build migrates the same way.
    let now = upgrade(&mut agent, &hv, workspace_bin("holdfast"));
    assert_eq!(now, vec![old]);
    assert_eq!(self::links(&agent, &hv), links);
    assert_eq!(agent.metric("holdfast_leases"), (CLIENTS + 2) as f64);
    let ok =
        a.ns.exec("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", "10.20.200.12"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .ok();
    assert_eq!(ok, Some(true), "{}", agent.logs());
}
