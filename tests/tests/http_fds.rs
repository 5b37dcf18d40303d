//! The metrics port when the process is out of files: a failed accept (EMFILE) waits before the
//! next instead of spinning on the runtime, the runtime stays on time, and the port serves again
//! as soon as files are free. In a binary of its own: it lowers this process's file limit.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use holdfast::metrics::{Health, serve_on};
use holdfast_tests::netns::metric;

/// How long the test keeps the process out of files.
const STARVED: Duration = Duration::from_secs(2);

fn set_soft_nofile(n: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct, within the hard limit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        let was = l.rlim_cur;
        l.rlim_cur = n.min(l.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        was
    }
}

/// User and system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage(2) on a zeroed out-struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let status = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body)
}

#[test]
fn out_of_files_the_metrics_port_backs_off_and_serves_again() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Arc::new(Health::default());
    health.beat();
    let registry = holdfast::metrics::registry(
        &Arc::default(),
        Arc::default(),
        std::env::temp_dir().join("holdfast-no-bpffs"),
    );
    rt.spawn(serve_on(listener, registry, health));
    assert_eq!(get(addr, "/healthz").0, 200);

    // How late the runtime runs a 10 ms timer, at worst.
    let lag = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (l, s) = (lag.clone(), stop.clone());
    rt.spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let late = t.elapsed().saturating_sub(Duration::from_millis(10));
            l.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        }
    });

    // Out of files: the soft limit a little above what is open, the rest filled, then one
    // freed for a client, whose connection the server cannot accept.
    let open = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
    let was = set_soft_nofile(open + 32);
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
    }
    assert!(!filler.is_empty(), "nothing to fill");
    filler.pop();
    let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let cpu = cpu_time();
    let t = Instant::now();
    std::thread::sleep(STARVED);
    let cpu = cpu_time() - cpu;
    let starved = t.elapsed();

    // Files again: the waiting client is served within the longest wait between accepts.
    drop(filler);
    let freed = Instant::now();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    let served_in = freed.elapsed();
    set_soft_nofile(was);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the waiting client was not served: {answer:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let lag = Duration::from_micros(lag.load(Ordering::Relaxed));
    let text = get(addr, "/metrics").1;
    let errors = metric(&text, "holdfast_http_accept_errors_total");
    eprintln!(
        "out of files for {starved:?}: {errors} failed accepts, {cpu:?} of CPU, runtime lag at \
         worst {lag:?}; served {served_in:?} after files were free"
    );
    // Backing off from 10 ms to 1 s: about 8 failures in 2 s. A loop that spins fails
    // thousands of times and burns a core.
    assert!((1.0..=20.0).contains(&errors), "{errors} failed accepts");
    assert!(cpu < STARVED / 4, "{cpu:?} of CPU while out of files");
    assert!(lag < Duration::from_millis(200), "runtime lag {lag:?}");
    assert!(served_in < Duration::from_secs(3), "{served_in:?}");
}
