//! The host's own surfaces, as a local user or a client of the metrics port would attack them:
//! a bpffs directory created first by someone else, and thousands of idle connections to the
//! metrics port while a VM port appears and its VM asks for a lease.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use holdfast_tests::netns::{Agent, Netns, mac_str};

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
