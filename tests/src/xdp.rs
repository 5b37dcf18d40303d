//! The XDP programs loaded for `BPF_PROG_TEST_RUN`, with bindings for a small test network, and
//! the assertions the fixture tests share.

use std::net::Ipv4Addr;

use agent_common::{ArpEntry, ArpKey, BindingKey, BootKey, RateLimits, Stat, stats::STATS_COUNT};
use aya::programs::{TestRun as _, TestRunOptions};
use holdfast::{
    dataplane::{Dataplane, Desired, StatsReader},
    model::{Network, Nic, Route},
    render::{boot, options},
};

use crate::TempDir;

pub const ROUTER_MAC: [u8; 6] = [0x02, 0x68, 0x66, 0, 0, 1];
pub const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// `BPF_PROG_TEST_RUN` runs XDP as if received on the loopback device of the caller's netns.
pub const TEST_IFINDEX: u32 = 1;

pub use agent_common::be32;

pub fn network() -> Network {
    Network {
        id: "pn-blue".into(),
        vni: 1001,
        subnet: "10.10.0.0/24".parse().expect("subnet"),
        gateway: GATEWAY,
        dns: vec![Ipv4Addr::new(10, 10, 0, 2)],
        domain: Some("blue.internal".into()),
        search: vec!["blue.internal".into()],
        mtu: Some(1450),
        routes: vec![Route {
            to: "172.16.0.0/12".parse().expect("route"),
            via: GATEWAY,
        }],
        ntp: vec![],
        lease_time: 3600,
        dhcp_server: None,
        boot: None,
    }
}

pub fn nic(mac: [u8; 6], ip: Ipv4Addr) -> Nic {
    Nic {
        mac: holdfast::model::MacAddr(mac),
        network: "pn-blue".into(),
        ip,
        hostname: Some("vm-1".into()),
        node: "hv-1".into(),
        interface: Some("lo".into()),
        boot: None,
    }
}

pub struct Fixture {
    pub dp: Dataplane,
    pub stats: StatsReader,
    /// Programs run as if received in this namespace (its FIB and neighbours; its loopback is
    /// the ingress device), or in the test's own.
    pub netns: Option<std::path::PathBuf>,
    _dir: TempDir,
}

impl Fixture {
    /// The programs with one binding: `VM_MAC` -> `VM_IP` on the test ifindex.
    pub fn new() -> Self {
        Self::with_nics(&[(VM_MAC, VM_IP)])
    }

    pub fn with_nics(nics: &[([u8; 6], Ipv4Addr)]) -> Self {
        let nics: Vec<Nic> = nics.iter().map(|(mac, ip)| nic(*mac, *ip)).collect();
        Self::with_network(&network(), &nics, &[])
    }

    /// The programs with `nics` of `net` bound on the test ifindex (with their boot answers),
    /// and the ARP answers `arp` in the network.
    pub fn with_network(net: &Network, nics: &[Nic], arp: &[(Ipv4Addr, [u8; 6])]) -> Self {
        Self::with(&desired_for(net, nics, arp), None)
    }

    /// The programs with `desired` written into their maps (no interface attached), and no
    /// rate limits: fixtures send thousands of frames from one interface. The limits have their
    /// own tests (`xdp_vmport`), with [`Fixture::with_limits`].
    pub fn with(desired: &Desired, netns: Option<std::path::PathBuf>) -> Self {
        Self::with_limits(desired, netns, &RateLimits::OFF)
    }

    /// [`Fixture::with`], the programs loaded with `limits`.
    pub fn with_limits(
        desired: &Desired,
        netns: Option<std::path::PathBuf>,
        limits: &RateLimits,
    ) -> Self {
        crate::sweep_stale();
        let dir = TempDir::bpffs("xdp");
        let mut dp =
            Dataplane::open_limited(dir.path(), ROUTER_MAC, limits).expect("load programs");
        let report = dp.reconcile(desired);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let stats = StatsReader::open(dir.path()).expect("stats");
        Self {
            dp,
            stats,
            netns,
            _dir: dir,
        }
    }

    /// Runs the VM program on `frame`; returns the action and the frame it left.
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_prog(self.dp.vm_program().expect("program"), frame)
    }

    /// Runs the VM program on `frame` as received on `ifindex` (an interface of the fixture's
    /// namespace).
    pub fn run_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.vm_program().expect("program");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let go = || {
            let mut out = vec![0u8; 4096];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&md),
                    ..TestRunOptions::default()
                })
                .expect("test_run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        match &self.netns {
            Some(ns) => crate::netns::in_netns(ns, go),
            None => go(),
        }
    }

    /// Runs the underlay program on `frame`.
    pub fn run_underlay(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_prog(self.dp.underlay_program().expect("program"), frame)
    }

    /// Runs the VM interfaces' TC program (the skb path) on `frame`, as received on the test
    /// ifindex; returns its action (`TC_ACT_*`) and the frame it left.
    pub fn run_tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let prog = self.dp.tc_program().expect("program");
        let go = || {
            let mut out = vec![0u8; 4096];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })
                .expect("test_run");
            out.truncate(r.data_size_out as usize);
            (r.return_value as i32, out)
        };
        match &self.netns {
            Some(ns) => crate::netns::in_netns(ns, go),
            None => go(),
        }
    }

    fn run_prog(&self, prog: &aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
        let go = || {
            let mut out = vec![0u8; 4096];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })
                .expect("test_run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        match &self.netns {
            Some(ns) => crate::netns::in_netns(ns, go),
            None => go(),
        }
    }

    /// Counter totals indexed by `Stat`.
    pub fn counters(&self) -> Vec<u64> {
        let v = self.stats.read();
        assert_eq!(v.len(), STATS_COUNT as usize);
        v
    }
}

/// The desired state of [`Fixture::with_network`].
pub fn desired_for(net: &Network, nics: &[Nic], arp: &[(Ipv4Addr, [u8; 6])]) -> Desired {
    let mut desired = Desired {
        prune: true,
        ..Desired::default()
    };
    for nic in nics {
        let b = options::render(net, nic).expect("render");
        desired
            .bindings
            .insert(BindingKey::new(TEST_IFINDEX, nic.mac.0), b);
        for (variant, entry) in boot::render(net, nic) {
            desired
                .boot
                .insert(BootKey::new(TEST_IFINDEX, nic.mac.0, variant), entry);
        }
    }
    for (ip, mac) in arp {
        desired.arp.insert(
            ArpKey {
                vni: net.vni,
                ip: be32(*ip),
            },
            ArpEntry {
                mac: *mac,
                _pad: [0; 2],
            },
        );
    }
    desired
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the VM program on `frame` and asserts that it drops it, counted under `stat`.
pub fn dropped(fx: &Fixture, frame: &[u8], stat: Stat) {
    dropped_by(fx, stat, || fx.run(frame));
}

/// Runs the underlay program on `frame` and asserts that it drops it, counted under `stat`.
pub fn dropped_on_underlay(fx: &Fixture, frame: &[u8], stat: Stat) {
    dropped_by(fx, stat, || fx.run_underlay(frame));
}

fn dropped_by(fx: &Fixture, stat: Stat, run: impl FnOnce() -> (u32, Vec<u8>)) {
    let before = fx.counters()[stat as usize];
    let (action, _) = run();
    assert_eq!(action, XDP_DROP, "expected a drop for {stat:?}");
    assert_eq!(
        fx.counters()[stat as usize],
        before + 1,
        "counter {stat:?} did not move"
    );
}

/// Runs the TC program on `frame` and asserts that it drops it, counted under `stat`.
pub fn dropped_on_skb_path(fx: &Fixture, frame: &[u8], stat: Stat) {
    let before = fx.counters()[stat as usize];
    let (action, _) = fx.run_tc(frame);
    assert_eq!(action, TC_ACT_SHOT, "expected a drop for {stat:?}");
    assert_eq!(
        fx.counters()[stat as usize],
        before + 1,
        "counter {stat:?} did not move"
    );
}

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
