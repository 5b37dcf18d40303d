//! The XDP programs loaded for `BPF_PROG_TEST_RUN`, with bindings for a small test network, and
//! the assertions the fixture tests share.

use std::net::Ipv4Addr;

use agent_common::{ArpEntry, ArpKey, BindingKey, BootKey, RateLimits, Stat, stats::STATS_COUNT};
use aya::programs::{TestRun as _, TestRunOptions};
pub use holdfast::ports::VmHook;
use holdfast::{
    dataplane::{Dataplane, Desired, StatsReader},
    model::{Network, Nic, Route},
    render::{boot, options},
};

use crate::{TempDir, netns::Netns, packet::udp_frame};

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
        default_route: true,
        options: Default::default(),
        dhcp_server: None,
        boot: None,
        subnet6: None,
        dns6: vec![],
        vpc: None,
        default_via: None,
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
        default_route: None,
        options: None,
        boot: None,
        ip6: None,
        forwarding: false,
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

    /// Instructions the kernel's verifier walked to load the VM program.
    pub fn verified_instructions(&self) -> u32 {
        self.dp
            .vm_program()
            .expect("program")
            .info()
            .expect("info")
            .verified_instruction_count()
            .unwrap_or(0)
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

    /// Runs the VM interfaces' TC program of xdp mode (the skb path) on `frame`, as received
    /// on the test ifindex; returns its action (`TC_ACT_*`) and the frame it left.
    pub fn run_tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        self.run_sched_cls(
            self.dp.tc_program().expect("program"),
            frame,
            &Skb::default(),
        )
    }

    /// Runs tc mode's VM program (`holdfast_vm_tc`) on `frame`, as received on the test
    /// ifindex; returns its action (`TC_ACT_*`) and the frame it left.
    pub fn run_vm_tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        self.run_vm_tc_with(frame, &Skb::default())
    }

    /// [`Fixture::run_vm_tc`], the skb as `skb` says.
    pub fn run_vm_tc_with(&self, frame: &[u8], skb: &Skb) -> (i32, Vec<u8>) {
        self.run_sched_cls(self.dp.vm_tc_program().expect("program"), frame, skb)
    }

    /// [`Fixture::run_tc`], the skb as `skb` says.
    pub fn run_tc_with(&self, frame: &[u8], skb: &Skb) -> (i32, Vec<u8>) {
        self.run_sched_cls(self.dp.tc_program().expect("program"), frame, skb)
    }

    /// Runs the program serving a VM port on `hook` (`holdfast_vm` or `holdfast_vm_tc`) on
    /// `frame`, as received on the test ifindex: its verdict and the frame it left.
    pub fn run_port(&self, hook: VmHook, frame: &[u8]) -> (Verdict, Vec<u8>) {
        match hook {
            VmHook::Xdp => {
                let (action, out) = self.run(frame);
                (Verdict::of_xdp(action), out)
            }
            VmHook::Tc => {
                let (action, out) = self.run_vm_tc(frame);
                (Verdict::of_tc(action), out)
            }
        }
    }

    /// [`Fixture::run_port`] as received on `ifindex` (an interface of the fixture's namespace).
    pub fn run_port_on(&self, hook: VmHook, ifindex: u32, frame: &[u8]) -> (Verdict, Vec<u8>) {
        match hook {
            VmHook::Xdp => {
                let (action, out) = self.run_on(ifindex, frame);
                (Verdict::of_xdp(action), out)
            }
            VmHook::Tc => {
                let skb = Skb {
                    ifindex,
                    ..Skb::default()
                };
                let (action, out) = self.run_vm_tc_with(frame, &skb);
                (Verdict::of_tc(action), out)
            }
        }
    }

    /// [`Fixture::run_port`], or `None` when `BPF_PROG_TEST_RUN` refuses to build the input
    /// (on TC: an IPv4 frame too short for its IP header, which `bpf_prog_test_run_skb`
    /// rejects with `EINVAL` before the program runs).
    pub fn try_run_port(&self, hook: VmHook, frame: &[u8]) -> Option<(Verdict, Vec<u8>)> {
        match hook {
            VmHook::Xdp => Some(self.run_port(hook, frame)),
            VmHook::Tc => self
                .try_run_sched_cls(
                    self.dp.vm_tc_program().expect("program"),
                    frame,
                    &Skb::default(),
                )
                .map(|(action, out)| (Verdict::of_tc(action), out)),
        }
    }

    fn run_sched_cls(
        &self,
        prog: &aya::programs::SchedClassifier,
        frame: &[u8],
        skb: &Skb,
    ) -> (i32, Vec<u8>) {
        self.try_run_sched_cls(prog, frame, skb)
            .expect("test_run refused the frame")
    }

    fn try_run_sched_cls(
        &self,
        prog: &aya::programs::SchedClassifier,
        frame: &[u8],
        skb: &Skb,
    ) -> Option<(i32, Vec<u8>)> {
        let ctx = skb.ctx();
        let go = || {
            let mut out = vec![0u8; 4096];
            match prog.test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ctx.as_deref(),
                ..TestRunOptions::default()
            }) {
                Ok(r) => {
                    out.truncate(r.data_size_out as usize);
                    Some((r.return_value as i32, out))
                }
                Err(aya::programs::ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
                {
                    None
                }
                Err(e) => panic!("test_run: {e}"),
            }
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

    /// Writes IPv6 entries straight into the pinned maps (`BINDINGS6`, `NEIGH6`, `VNIS6`).
    pub fn insert_v6(
        &self,
        bindings6: &[(BindingKey, agent_common::Binding6)],
        neigh6: &[(agent_common::Neigh6Key, agent_common::Neigh6Entry)],
        ra6: &[(u32, agent_common::Ra6)],
    ) {
        use aya::maps::{HashMap, Map, MapData};

        let maps = self
            ._dir
            .path()
            .join(format!("maps-v{}", agent_common::LAYOUT_VERSION));
        let open = |name: &str| MapData::from_pin(maps.join(name)).expect(name);
        let mut b: HashMap<_, BindingKey, agent_common::Binding6> =
            HashMap::try_from(Map::HashMap(open("BINDINGS6"))).expect("BINDINGS6");
        for (k, v) in bindings6 {
            b.insert(k, v, 0).expect("insert");
        }
        let mut n: HashMap<_, agent_common::Neigh6Key, agent_common::Neigh6Entry> =
            HashMap::try_from(Map::HashMap(open("NEIGH6"))).expect("NEIGH6");
        for (k, v) in neigh6 {
            n.insert(k, v, 0).expect("insert");
        }
        let mut r: HashMap<_, u32, agent_common::Ra6> =
            HashMap::try_from(Map::HashMap(open("VNIS6"))).expect("VNIS6");
        for (k, v) in ra6 {
            r.insert(k, v, 0).expect("insert");
        }
    }

    /// Writes routing entries straight into the pinned maps (issue 16): `routes` into
    /// `ROUTES` (in network `vni`'s table, `to/len` -> the entry), `forwarding` NICs into
    /// `FORWARDING`, `forwarders` into `FORWARDERS`. Keys and values go as their bytes, the
    /// layout the programs read (`RouteDst`, `RouteEntry`, `FdbKey`, `ForwarderKey`).
    pub fn insert_routing(
        &self,
        routes: &[(u32, Ipv4Addr, u8, agent_common::RouteEntry)],
        forwarding: &[agent_common::FdbKey],
        forwarders: &[agent_common::ForwarderKey],
    ) {
        use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key};

        let maps = self
            ._dir
            .path()
            .join(format!("maps-v{}", agent_common::LAYOUT_VERSION));
        let open = |name: &str| MapData::from_pin(maps.join(name)).expect(name);
        let words = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|v| v.to_ne_bytes()).collect() };
        let mut r: LpmTrie<_, [u8; 8], [u8; 16]> =
            LpmTrie::try_from(Map::LpmTrie(open("ROUTES"))).expect("ROUTES");
        for (vni, to, len, e) in routes {
            let data: [u8; 8] = words(&[*vni, be32(*to)]).try_into().expect("8 bytes");
            let value: [u8; 16] = words(&[e.kind, e.vni, e.via, 0])
                .try_into()
                .expect("16 bytes");
            r.insert(&Key::new(32 + u32::from(*len), data), value, 0)
                .expect("insert");
        }
        let mut f: HashMap<_, [u8; 12], u32> =
            HashMap::try_from(Map::HashMap(open("FORWARDING"))).expect("FORWARDING");
        for k in forwarding {
            let mut key = [0u8; 12];
            key[..4].copy_from_slice(&k.vni.to_ne_bytes());
            key[4..10].copy_from_slice(&k.mac);
            f.insert(key, 1, 0).expect("insert");
        }
        let mut g: HashMap<_, [u8; 8], u32> =
            HashMap::try_from(Map::HashMap(open("FORWARDERS"))).expect("FORWARDERS");
        for k in forwarders {
            let key: [u8; 8] = words(&[k.vni, k.vtep]).try_into().expect("8 bytes");
            g.insert(key, 1, 0).expect("insert");
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

/// What a TC program's `BPF_PROG_TEST_RUN` starts from besides the frame: the fields of
/// `struct __sk_buff` the kernel lets a test set (`convert___skb_to_skb`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Skb {
    /// The interface the frame arrives on (its namespace's); 0: the loopback.
    pub ifindex: u32,
    /// A GSO super-frame's segment size, 0 for a plain frame.
    pub gso_size: u32,
    pub gso_segs: u32,
}

impl Skb {
    /// `struct __sk_buff` (192 bytes on 6.x, `include/uapi/linux/bpf.h`) with the fields set,
    /// or none when nothing is.
    fn ctx(&self) -> Option<Vec<u8>> {
        if self.ifindex == 0 && self.gso_size == 0 {
            return None;
        }
        let mut c = vec![0u8; 192];
        c[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        c[164..168].copy_from_slice(&self.gso_segs.to_ne_bytes());
        c[176..180].copy_from_slice(&self.gso_size.to_ne_bytes());
        Some(c)
    }
}

/// A verdict, whichever hook gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Handed on untouched: from XDP to the skb path.
    Pass,
    /// Back out of the port it came in on: XDP_TX (TC's shows as a redirect, see [`back`]).
    Tx,
    Redirect,
    Other(i64),
}

impl Verdict {
    pub fn of_xdp(action: u32) -> Self {
        match action {
            XDP_DROP => Verdict::Drop,
            XDP_PASS => Verdict::Pass,
            XDP_TX => Verdict::Tx,
            XDP_REDIRECT => Verdict::Redirect,
            other => Verdict::Other(other.into()),
        }
    }

    pub fn of_tc(action: i32) -> Self {
        match action {
            TC_ACT_SHOT => Verdict::Drop,
            TC_ACT_OK => Verdict::Pass,
            TC_ACT_REDIRECT => Verdict::Redirect,
            other => Verdict::Other(other.into()),
        }
    }
}

/// The verdict of a frame sent back to the VM on `hook`: XDP_TX, or on TC a redirect (to the
/// ingress interface, which `BPF_PROG_TEST_RUN` does not show).
pub fn back(hook: VmHook) -> Verdict {
    match hook {
        VmHook::Xdp => Verdict::Tx,
        VmHook::Tc => Verdict::Redirect,
    }
}

/// The counters of frames forwarded to a local VM and encapsulated on `hook`, by the hook that
/// did it: XDP's, or the skb path's (where tc mode does all of it).
pub fn forward_stats(hook: VmHook) -> (Stat, Stat) {
    match hook {
        VmHook::Xdp => (Stat::ForwardLocal, Stat::VxlanEncap),
        VmHook::Tc => (Stat::SkbForwardLocal, Stat::SkbEncap),
    }
}

/// Runs the VM program on `frame` and asserts that it drops it, counted under `stat`.
pub fn dropped(fx: &Fixture, frame: &[u8], stat: Stat) {
    dropped_by(fx, stat, || fx.run(frame));
}

/// Runs the program serving a VM port on `hook` on `frame` and asserts that it drops it,
/// counted under `stat`.
pub fn dropped_at(fx: &Fixture, hook: VmHook, frame: &[u8], stat: Stat) {
    let before = fx.counters()[stat as usize];
    let (verdict, _) = fx.run_port(hook, frame);
    assert_eq!(
        verdict,
        Verdict::Drop,
        "{hook}: expected a drop for {stat:?}"
    );
    assert_eq!(
        fx.counters()[stat as usize],
        before + 1,
        "{hook}: counter {stat:?} did not move"
    );
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

/// Defines each named test function (which takes a [`VmHook`]) as two tests, one per hook:
/// `xdp::<name>` and `tc::<name>`, so a run can pick a mode (`cargo test -- tc::`).
#[macro_export]
macro_rules! for_each_hook {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::xdp::VmHook::Xdp)
                }
            )*
        }
        mod tc {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::xdp::VmHook::Tc)
                }
            )*
        }
    };
}

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The MAC of the underlay neighbour [`underlay`] sets up for the remote VTEP.
pub const NEIGH_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x02];

/// An underlay namespace: `ul0` with the local VTEP address (198.18.0.1/24) and a permanent
/// neighbour ([`NEIGH_MAC`]) for the remote VTEP 198.18.0.2; 198.18.0.3 has none.
pub struct Underlay {
    pub ns: Netns,
    _peer: Netns,
    pub ifindex: u32,
    /// The FIB lookup anchor, as the agent sets it up.
    pub anchor: u32,
    pub mac: [u8; 6],
}

pub fn underlay() -> Underlay {
    let ns = Netns::new("ul");
    let peer = Netns::new("ulpeer");
    ns.ip(&[
        "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &peer.name,
    ]);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "ul0"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    peer.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.2",
        "lladdr",
        "02:ee:00:00:00:02",
        "dev",
        "ul0",
        "nud",
        "permanent",
    ]);
    // The lookup anchor, as the agent sets it up.
    crate::netns::in_netns(&ns.path(), || {
        holdfast::anchor::ensure_blocking(holdfast::anchor::DEFAULT_NAME).unwrap()
    });
    let anchor = ns.ifindex(holdfast::anchor::DEFAULT_NAME);
    let ifindex = ns.ifindex("ul0");
    let out = ns.query(&["-o", "link", "show", "ul0"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac_s = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap()
        .to_owned();
    let mac: Vec<u8> = mac_s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    Underlay {
        ns,
        _peer: peer,
        ifindex,
        anchor,
        mac: mac.try_into().unwrap(),
    }
}

/// A VXLAN frame from `vtep` to `dst` for network `vni`, carrying `inner`.
pub fn vxlan(vtep: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    let v = vni.to_be_bytes();
    payload.extend_from_slice(&[v[1], v[2], v[3], 0]);
    payload.extend_from_slice(inner);
    udp_frame(
        NEIGH_MAC,
        [0x02, 0x11, 0, 0, 0, 1],
        vtep,
        dst,
        50000,
        4789,
        &payload,
        false,
    )
}
