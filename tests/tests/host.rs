//! The host's own surfaces, as a local user or a client of the metrics port would attack them:
//! a bpffs directory created first by someone else, and thousands of idle connections to the
//! metrics port while a VM port appears and its VM asks for a lease.

use std::{
    ffi::CString,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use holdfast_tests::{
    clients,
    netns::{Agent, Netns, Vm, in_netns, mac_str, wait_for},
};

const MAC: [u8; 6] = [0x02, 0x0b, 0, 0, 0, 0x01];

fn ipam(tap: &str) -> String {
    format!(
        r#"{{ "networks": [ {{ "id": "pn-host", "vni": 1101, "subnet": "10.11.0.0/24",
                 "gateway": "10.11.0.1", "mtu": 1450, "lease_time": 3600 }} ],
             "nodes": [ {{ "name": "hv-1", "vtep": "198.18.0.1" }} ],
             "nics": [ {{ "mac": "{}", "network": "pn-host", "ip": "10.11.0.11",
                          "node": "hv-1", "interface": "{tap}" }} ] }}"#,
        mac_str(MAC)
    )
}

/// An agent configured on a file IPAM, not started.
fn configure(hv: &Netns) -> Agent {
    let json = ipam("tap-h1");
    Agent::configure(
        hv,
        "hv-1",
        |path| {
            std::fs::write(path, &json).expect("ipam");
            format!(
                "[ipam]\nsource = \"file\"\npath = \"{}\"\npoll_interval_ms = 200\n",
                path.display()
            )
        },
        "",
    )
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_nobody(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: chown(2) on a NUL-terminated path.
    let rc = unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
    assert_eq!(rc, 0, "chown: {}", std::io::Error::last_os_error());
}

/// Runs `holdfast run` to its exit (it must exit: it refuses to start): status and stderr.
fn run_to_exit(hv: &Netns, agent: &Agent) -> (Option<i32>, String) {
    let log = agent.dir.path().join("refused.log");
    let mut child = hv
        .enter(&agent.binary)
        .args(["run", "--config"])
        .arg(&agent.config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn holdfast");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not refuse to start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_agent_refuses_a_bpffs_dir_another_user_could_write_to_and_starts_on_a_fresh_one() {
    let hv = Netns::new("hv");
    // What a local user can prepare before the agent first starts (bpffs mounted without
    // `mode=` is 1777): bpffs_dir world-writable, bpffs_dir their own, or links/ their own.
    type Prepare = fn(&Path) -> (std::path::PathBuf, &'static str);
    let hostile: [(&str, Prepare); 3] = [
        ("bpffs_dir 0777", |dir| {
            std::fs::create_dir(dir).expect("mkdir");
            chmod(dir, 0o777);
            (dir.to_owned(), "writable by group or others (mode 0777)")
        }),
        ("bpffs_dir owned by nobody", |dir| {
            std::fs::create_dir(dir).expect("mkdir");
            chmod(dir, 0o700);
            chown_nobody(dir);
            (dir.to_owned(), "owned by uid 65534, not root")
        }),
        ("links/ owned by nobody", |dir| {
            std::fs::create_dir(dir).expect("mkdir");
            chmod(dir, 0o700);
            let links = dir.join("links");
            std::fs::create_dir(&links).expect("mkdir");
            chmod(&links, 0o755);
            chown_nobody(&links);
            (links, "owned by uid 65534, not root")
        }),
    ];
    for (what, prepare) in hostile {
        let agent = configure(&hv);
        let dir = agent.bpffs.path();
        let (path, problem) = prepare(dir);
        let before = entries(dir);
        let (code, log) = run_to_exit(&hv, &agent);
        assert_ne!(code, Some(0), "{what}: exited 0:\n{log}");
        let refusal = format!("{} is {problem}", path.display());
        assert!(
            log.contains(&refusal) && log.contains("detach the programs"),
            "{what}: no clear refusal ({refusal:?}):\n{log}"
        );
        // Refused as found: nothing pinned or created in it.
        assert_eq!(
            entries(dir),
            before,
            "{what}: the agent changed the directory"
        );
    }

    // A fresh directory: the agent creates it, 0700, and serves.
    let mut agent = configure(&hv);
    agent.spawn(&hv);
    for d in [
        agent.bpffs.path().to_owned(),
        agent.bpffs.path().join("links"),
    ] {
        let mode = std::fs::metadata(&d).expect("created").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    assert!(
        entries(agent.bpffs.path())
            .iter()
            .any(|e| e.starts_with("maps-v")),
        "{:?}",
        entries(agent.bpffs.path())
    );
}

/// The connections of the attack: as many as systemd's default soft limit, twice over.
const IDLE: usize = 2000;
/// The agent's file limit in this test: systemd's default soft limit.
const NOFILE: u64 = 1024;
/// How much later than the agent's header timeout the test looks.
const SLACK: Duration = Duration::from_secs(3);

/// Raises this process's soft file limit to its hard one: the test holds the attack's sockets.
fn raise_own_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    assert!(
        l.rlim_cur as usize > IDLE + 200,
        "this test needs {} files, the hard limit is {}",
        IDLE + 200,
        l.rlim_cur
    );
}

/// Connections to the metrics port the agent still holds open (a closed one reads EOF or a
/// reset; an open, idle one would block).
fn still_open(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).expect("nonblocking");
            matches!(c.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
        })
        .count()
}

/// One GET on a new connection: status and how long the answer took.
fn timed_get(agent: &Agent, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let (status, _) = agent.http(path);
    (status, t.elapsed())
}

#[test]
fn idle_connections_to_the_metrics_port_cannot_starve_the_agent() {
    raise_own_nofile();
    let hv = Netns::new("hv");
    let mut agent = configure(&hv);
    agent.nofile = Some(NOFILE);
    agent.spawn(&hv);
    let limit = agent.metric("holdfast_http_connections_limit");
    assert!(
        limit >= 16.0 && limit <= NOFILE as f64 / 2.0,
        "connection limit {limit} at a file limit of {NOFILE}"
    );
    let limit = limit as usize;

    // The attack: connections that never send a byte, and one that sends half a request.
    let t = Instant::now();
    let (idle, refused, slow) = in_netns(&hv.path(), || {
        let addr = (Ipv4Addr::LOCALHOST, 9469).into();
        let mut idle = Vec::new();
        let mut refused = 0;
        for _ in 0..IDLE {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(c) => idle.push(c),
                Err(_) => refused += 1,
            }
        }
        let slow = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut c| {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;
            Ok(c)
        });
        (idle, refused, slow)
    });
    let connected_in = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let held = still_open(&idle);
    eprintln!(
        "{} connections made ({refused} not) in {connected_in:?}; the agent holds {held} open \
         (its limit: {limit} at a file limit of {NOFILE})",
        idle.len()
    );
    // Connections made faster than the agent accepts them may find the listen backlog full
    // (their SYN is dropped): refused by the kernel, which is fine. Most must get through to
    // the agent, which closes what is over its limit.
    assert!(refused < IDLE / 10, "{refused} connections never accepted");
    let slow = slow.expect("the slow client's connection");
    assert!(
        held <= limit,
        "the agent holds {held} idle connections, more than its limit of {limit}"
    );

    // Probes and scrapes get through, each closing the oldest idle connection if need be.
    let mut healthz: Vec<Duration> = (0..20)
        .map(|_| {
            let (status, took) = timed_get(&agent, "/healthz");
            assert_eq!(status, 200, "/healthz under the attack:\n{}", agent.logs());
            took
        })
        .collect();
    healthz.sort();
    let (status, scrape) = timed_get(&agent, "/metrics");
    assert_eq!(status, 200, "/metrics under the attack:\n{}", agent.logs());
    eprintln!(
        "/healthz under the attack: median {:?}, max {:?}; /metrics {scrape:?}",
        healthz[healthz.len() / 2],
        healthz[healthz.len() - 1]
    );

    // A VM port appears: it gets its programs, and its VM a lease from XDP.
    let t = Instant::now();
    let vm = Vm::new(&hv, "tap-h1", MAC);
    let ifindex = hv.ifindex("tap-h1");
    let pin = agent.bpffs.path().join(format!("links/vm-{ifindex}"));
    let attached = wait_for(Duration::from_secs(10), || pin.exists().then_some(()));
    assert!(
        attached.is_some(),
        "tap-h1 never got its program:\n{}",
        agent.logs()
    );
    let attached_in = t.elapsed();
    let t = Instant::now();
    let client = clients::udhcpc(&vm, &[]);
    let lease = vm.wait_address(Duration::from_secs(20));
    assert_eq!(
        lease.map(|(a, _)| a),
        Some(Ipv4Addr::new(10, 11, 0, 11)),
        "no lease under the attack:\n{}\n{}",
        client.log(),
        agent.logs()
    );
    eprintln!(
        "the new tap carried the program {attached_in:?} after it appeared; its VM had its \
         lease {:?} after its client started",
        t.elapsed()
    );

    // A keep-alive connection, as a Prometheus keeps between scrapes: answered, then idle.
    let mut keepalive = in_netns(&hv.path(), || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, 9469)).expect("connect")
    });
    keepalive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    keepalive
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.ends_with(b"ok\n") {
        match keepalive.read(&mut buf) {
            Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => panic!("no answer on a keep-alive connection: {answer:?}"),
        }
    }
    assert_eq!(still_open(std::slice::from_ref(&keepalive)), 1);

    // Idle and slow clients are closed once the header timeout passes.
    std::thread::sleep(holdfast::metrics::HEADER_TIMEOUT + SLACK);
    let held = still_open(&idle);
    let slow_open = still_open(std::slice::from_ref(&slow));
    assert_eq!(held, 0, "idle connections outlived the header timeout");
    assert_eq!(slow_open, 0, "half a request outlived the header timeout");
    assert_eq!(
        still_open(std::slice::from_ref(&keepalive)),
        0,
        "an idle keep-alive connection outlived the header timeout"
    );

    let (status, _) = agent.http("/healthz");
    assert_eq!(status, 200);
    let logs = agent.logs();
    assert!(
        !logs.contains("Too many open files") && !logs.contains("os error 24"),
        "the agent ran out of files:\n{logs}"
    );
    let dropped = agent.metric("holdfast_http_connections_closed_total{reason=\"evicted\"}")
        + agent.metric("holdfast_http_connections_closed_total{reason=\"refused\"}");
    eprintln!("connections the agent closed to stay under its limit: {dropped}");
    // Every connection of the attack over the limit was closed for a newer one.
    let made = idle.len() + 1;
    assert!(
        dropped >= (made - limit) as f64,
        "{dropped} closed of {made}"
    );
    let timed_out = agent.metric("holdfast_http_connections_closed_total{reason=\"timeout\"}");
    assert!(
        timed_out >= 1.0,
        "no connection closed by the header timeout"
    );
}
