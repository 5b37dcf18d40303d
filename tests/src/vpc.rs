//! Two hypervisors joined by an underlay link, VMs on both, an agent on each: the VPC as the
//! namespace tests, the demo and the benchmark build it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use holdfast::{config::UnderlayHook, ports::VmHook};

use crate::{
    TempDir,
    etcd::Etcd,
    netns::{Agent, Netns, Vm, mac_str, run, wait_for},
    tap::TapVm,
    workspace_bin,
};

/// One private network.
pub struct Net {
    pub id: &'static str,
    pub vni: u32,
}

/// Routing (issue 16) for one network of a cloud: its own /24, its VPC, where what leaves the
/// VPC goes, its routes. A network without one keeps what every cloud had before: 10.0.0.0/24,
/// a VPC of its own, VMs without a default route.
#[derive(Clone, Copy)]
pub struct Routing<'a> {
    pub net: &'static str,
    /// The network's /24 (its network address): the gateway is .1, DNS .2.
    pub subnet: Ipv4Addr,
    /// `vpc`: networks naming the same one reach each other.
    pub vpc: Option<&'a str>,
    /// `default_via`: the address of a forwarding NIC of the network.
    pub default_via: Option<Ipv4Addr>,
    /// `routes` (`{to, via}`): forwarded in the data plane when `via` is a forwarding NIC.
    pub routes: &'a [(&'a str, Ipv4Addr)],
}

impl Routing<'_> {
    /// The network's gateway: .1 of its /24.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }
}

/// One VM NIC: network, host (0 or 1), MAC, address, tap name.
#[derive(Clone, Copy)]
pub struct VmSpec {
    pub net: &'static str,
    pub host: usize,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub tap: &'static str,
    /// On a real tap with a virtio-net header (GSO super-frames), not a veth.
    pub real_tap: bool,
}

pub const VTEPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
pub const NETWORK_MTU: u32 = 1450;

/// With an etcd source: the address each host reaches etcd at, over its management link
/// (`mgmt0` on the host, 198.19.<host>.0/24), never over the underlay.
pub const CONTROL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 2, 1)];

/// Where the agents read IPAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// A document in each agent's directory (`Agent::write_ipam`).
    #[default]
    File,
    /// A real etcd in a control namespace of its own ([`Control`]), seeded with
    /// `holdfast ipam import`.
    Etcd,
}

/// How a [`Cloud`] is built.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    pub lease_time: u32,
    /// Give each VM its address statically, with the network's MTU (DHCP has its own tests);
    /// otherwise the VMs are left for a DHCP client.
    pub static_addresses: bool,
    pub source: Source,
    /// NICs in IPAM for which no VM is made: several on one VM's interface are the DHCP load
    /// generator's clients.
    pub extra_nics: &'a [VmSpec],
    /// The hook serving each host's VM ports (`[vm] hook`), by host.
    pub hooks: [VmHook; 2],
    /// Where each host decapsulates VXLAN (`[underlay] hook`), by host.
    pub underlay_hooks: [UnderlayHook; 2],
    /// Dual-stack: each network gets `subnet6` (see [`ip6_for`]) and each NIC its `ip6` (and,
    /// with `static_addresses`, the VM that address).
    pub ipv6: bool,
    /// Networks given their own subnet, a VPC, `default_via` or `routes` ([`routed`]); with
    /// `static_addresses` their VMs get a default route via the gateway, as DHCP would give.
    pub routing: &'a [Routing<'a>],
    /// The MACs of NICs marked `forwarding: true` (gateway VMs: any source and destination).
    pub forwarding: &'a [[u8; 6]],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            lease_time: 3600,
            static_addresses: true,
            source: Source::File,
            extra_nics: &[],
            hooks: [VmHook::Xdp; 2],
            underlay_hooks: [UnderlayHook::Xdp; 2],
            ipv6: false,
            routing: &[],
            forwarding: &[],
        }
    }
}

/// The control plane of an etcd-sourced cloud: etcd in its own namespace, linked to each
/// host by a veth (`mgmt0` there), and a config for `holdfast ipam` run beside it.
pub struct Control {
    // Dropped in this order: etcd, then its files, then its namespace.
    pub etcd: Etcd,
    dir: TempDir,
    pub ns: Netns,
    /// What `holdfast ipam import` reported when the cloud seeded etcd.
    pub seeded: String,
}

impl Control {
    fn new(hosts: &[Netns]) -> Self {
        let ns = Netns::new("ctl");
        for (i, h) in hosts.iter().enumerate() {
            let peer = format!("hv{}", i + 1);
            h.ip(&[
                "link", "add", "mgmt0", "type", "veth", "peer", "name", &peer, "netns", &ns.name,
            ]);
            let [a, b, c, _] = CONTROL[i].octets();
            h.ip(&["addr", "add", &format!("{a}.{b}.{c}.2/24"), "dev", "mgmt0"]);
            h.ip(&["link", "set", "mgmt0", "up"]);
            ns.ip(&["addr", "add", &format!("{}/24", CONTROL[i]), "dev", &peer]);
            ns.ip(&["link", "set", &peer, "up"]);
        }
        let etcd = Etcd::start(&ns, &CONTROL);
        let dir = TempDir::new("ctl");
        std::fs::write(
            dir.path().join("holdfast.toml"),
            format!(
                "node = \"control\"\n{}",
                crate::etcd::ipam_section(&Etcd::url(Ipv4Addr::LOCALHOST), 5000)
            ),
        )
        .expect("control config");
        Self {
            etcd,
            dir,
            ns,
            seeded: String::new(),
        }
    }

    /// The config `holdfast ipam` uses in the control namespace (etcd on its loopback).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("holdfast.toml")
    }

    /// The document file `import` writes and imports.
    pub fn document(&self) -> PathBuf {
        self.dir.path().join("ipam.json")
    }

    /// `holdfast ipam import` of `json` (written to [`Control::document`]): its report.
    pub fn import(&self, json: &str) -> String {
        let doc = self.document();
        std::fs::write(&doc, json).expect("ipam document");
        let out = run(self
            .ns
            .exec(workspace_bin("holdfast").to_str().expect("path"))
            .args(["ipam", "import"])
            .arg(&doc)
            .arg("--config")
            .arg(self.config()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `holdfast ipam export`: the document etcd holds.
    pub fn export(&self) -> String {
        let out = run(self
            .ns
            .exec(workspace_bin("holdfast").to_str().expect("path"))
            .args(["ipam", "export", "--config"])
            .arg(self.config()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub struct Cloud {
    pub hosts: Vec<Netns>,
    pub agents: Vec<Agent>,
    pub vms: Vec<Vm>,
    pub taps: Vec<TapVm>,
    pub specs: Vec<VmSpec>,
    /// NICs in IPAM without a VM of their own (`Options::extra_nics`).
    pub extra_nics: Vec<VmSpec>,
    /// With an etcd source, etcd and its namespace (dropped after the hosts and their agents).
    pub control: Option<Control>,
    /// The IPAM document the agents started with (written to their files, or imported into
    /// etcd): a test changing IPAM at runtime starts from it.
    pub doc: String,
}

/// The IPAM document for `nets` and `vms` on nodes hv-1 and hv-2.
pub fn ipam(nets: &[Net], vms: &[VmSpec], lease_time: u32) -> String {
    let networks: Vec<String> = nets
        .iter()
        .map(|n| {
            format!(
                r#"{{"id":"{}","vni":{},"subnet":"10.0.0.0/24","gateway":"10.0.0.1","dns":["10.0.0.2"],
                    "mtu":{NETWORK_MTU},"lease_time":{lease_time}}}"#,
                n.id, n.vni
            )
        })
        .collect();
    let nics: Vec<String> = vms
        .iter()
        .map(|v| {
            format!(
                r#"{{"mac":"{}","network":"{}","ip":"{}","node":"hv-{}","interface":"{}"}}"#,
                mac_str(v.mac),
                v.net,
                v.ip,
                v.host + 1,
                v.tap
            )
        })
        .collect();
    format!(
        r#"{{"networks":[{}],"nodes":[{{"name":"hv-1","vtep":"{}"}},{{"name":"hv-2","vtep":"{}"}}],"nics":[{}]}}"#,
        networks.join(","),
        VTEPS[0],
        VTEPS[1],
        nics.join(",")
    )
}

/// A NIC's `ip6` in a dual-stack cloud: fd00:<vni>::<last byte of its IPv4 address>, in the
/// network's `subnet6` fd00:<vni>::/64.
pub fn ip6_for(vni: u32, ip: Ipv4Addr) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, vni as u16, 0, 0, 0, 0, 0, u16::from(ip.octets()[3]))
}

/// `doc` made dual-stack: `subnet6` and `dns6` on every network, `ip6` on every NIC.
pub fn dual_stack(doc: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(doc).expect("ipam json");
    let mut vnis = std::collections::BTreeMap::new();
    for n in v["networks"].as_array_mut().expect("networks") {
        let vni = n["vni"].as_u64().expect("vni") as u32;
        vnis.insert(n["id"].as_str().expect("id").to_owned(), vni);
        n["subnet6"] = serde_json::json!(format!("fd00:{vni:x}::/64"));
        n["dns6"] = serde_json::json!([format!("fd00:{vni:x}::53")]);
    }
    for nic in v["nics"].as_array_mut().expect("nics") {
        let vni = vnis[nic["network"].as_str().expect("network")];
        let ip: Ipv4Addr = nic["ip"].as_str().expect("ip").parse().expect("ip");
        nic["ip6"] = serde_json::json!(ip6_for(vni, ip).to_string());
    }
    v.to_string()
}

/// `doc` with routing (issue 16): each network of `routing` gets its subnet, gateway and DNS,
/// and its `vpc`, `default_via` and `routes` when set; each NIC whose MAC is in `forwarding`
/// gets `forwarding: true`. Fields left unset are not written, so a document without routing
/// stays what older agents read.
pub fn routed(doc: &str, routing: &[Routing<'_>], forwarding: &[[u8; 6]]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(doc).expect("ipam json");
    for n in v["networks"].as_array_mut().expect("networks") {
        let Some(r) = routing.iter().find(|r| n["id"] == r.net) else {
            continue;
        };
        let [a, b, c, _] = r.subnet.octets();
        n["subnet"] = serde_json::json!(format!("{}/24", r.subnet));
        n["gateway"] = serde_json::json!(r.gateway().to_string());
        n["dns"] = serde_json::json!([Ipv4Addr::new(a, b, c, 2).to_string()]);
        if let Some(vpc) = r.vpc {
            n["vpc"] = serde_json::json!(vpc);
        }
        if let Some(via) = r.default_via {
            n["default_via"] = serde_json::json!(via.to_string());
        }
        if !r.routes.is_empty() {
            let routes: Vec<serde_json::Value> = r
                .routes
                .iter()
                .map(|(to, via)| serde_json::json!({"to": to, "via": via.to_string()}))
                .collect();
            n["routes"] = serde_json::json!(routes);
        }
    }
    for nic in v["nics"].as_array_mut().expect("nics") {
        if forwarding.iter().any(|m| nic["mac"] == mac_str(*m)) {
            nic["forwarding"] = serde_json::json!(true);
        }
    }
    v.to_string()
}

/// Makes an interface behave like a physical port on the wire: the frames it sends are
/// MTU-sized with complete checksums (no TSO, GSO or checksum offload crossing it), and what
/// it receives goes through GRO, as on a NIC.
pub fn wire_like(ns: &Netns, interface: &str) {
    if std::env::var_os("HOLDFAST_UNDERLAY_OFFLOADS").is_some() {
        return;
    }
    run(ns.exec("ethtool").args([
        "-K", interface, "tso", "off", "gso", "off", "tx", "off", "gro", "on",
    ]));
}

impl Cloud {
    /// Builds the hosts, the underlay and the VMs, starts both agents, and gives each VM its
    /// address statically (DHCP has its own tests), with the network's MTU.
    pub fn new(nets: &[Net], vms: &[VmSpec]) -> Self {
        Self::with(nets, vms, &Options::default())
    }

    /// [`Cloud::new`] with the VM ports of both hosts on `hook`. In tc mode hv-2 also
    /// decapsulates on TC (`[underlay] hook = "tc"`) and hv-1 in XDP, so that every tc-mode
    /// test crosses both decapsulation hooks.
    pub fn in_mode(nets: &[Net], vms: &[VmSpec], hook: VmHook) -> Self {
        let underlay_hooks = match hook {
            VmHook::Xdp => [UnderlayHook::Xdp; 2],
            VmHook::Tc => [UnderlayHook::Xdp, UnderlayHook::Tc],
        };
        Self::with(
            nets,
            vms,
            &Options {
                hooks: [hook; 2],
                underlay_hooks,
                ..Options::default()
            },
        )
    }

    /// [`Cloud::new`] with both hosts' VM ports on `vm` and decapsulation on `underlay`.
    pub fn in_modes(nets: &[Net], vms: &[VmSpec], vm: VmHook, underlay: UnderlayHook) -> Self {
        Self::with(
            nets,
            vms,
            &Options {
                hooks: [vm; 2],
                underlay_hooks: [underlay; 2],
                ..Options::default()
            },
        )
    }

    /// The same, with leases of `lease_time` seconds, and static addresses only if
    /// `static_addresses` (otherwise the VMs are left for a DHCP client).
    pub fn build(nets: &[Net], vms: &[VmSpec], lease_time: u32, static_addresses: bool) -> Self {
        Self::with(
            nets,
            vms,
            &Options {
                lease_time,
                static_addresses,
                ..Options::default()
            },
        )
    }

    /// The same, as `options` say: the IPAM source, the leases, extra NICs.
    pub fn with(nets: &[Net], vms: &[VmSpec], options: &Options<'_>) -> Self {
        let hosts = vec![Netns::new("hv1"), Netns::new("hv2")];
        hosts[0].ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            &hosts[1].name,
        ]);
        for (i, h) in hosts.iter().enumerate() {
            h.ip(&["addr", "add", &format!("{}/24", VTEPS[i]), "dev", "ul0"]);
            h.ip(&["link", "set", "ul0", "up"]);
            wire_like(h, "ul0");
        }
        let all: Vec<VmSpec> = vms.iter().chain(options.extra_nics).copied().collect();
        let mut doc = ipam(nets, &all, options.lease_time);
        if options.ipv6 {
            doc = dual_stack(&doc);
        }
        if !options.routing.is_empty() || !options.forwarding.is_empty() {
            doc = routed(&doc, options.routing, options.forwarding);
        }
        let mut limits = String::new();
        if !options.extra_nics.is_empty() {
            // The load generator's clients share one interface: limits sized for one real
            // client would throttle them.
            limits.push_str(crate::netns::NO_RATE_LIMITS);
        }
        let config = |i: usize| {
            let decap = match options.underlay_hooks[i] {
                UnderlayHook::Xdp => "xdp",
                UnderlayHook::Tc => "tc",
            };
            format!(
                "[underlay]\ninterface = \"ul0\"\nhook = \"{decap}\"\n{limits}[vm]\nhook = \"{}\"\n",
                options.hooks[i]
            )
        };
        let control = (options.source == Source::Etcd).then(|| {
            let mut control = Control::new(&hosts);
            control.seeded = control.import(&doc);
            control
        });
        let agents: Vec<Agent> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let node = format!("hv-{}", i + 1);
                match options.source {
                    Source::File => Agent::start_with(h, &node, &doc, &config(i)),
                    Source::Etcd => Agent::start_etcd(h, &node, &Etcd::url(CONTROL[i]), &config(i)),
                }
            })
            .collect();
        let mut vm_ns = Vec::new();
        let mut taps = Vec::new();
        for v in vms {
            let ns = if v.real_tap {
                taps.push(TapVm::new(&hosts[v.host], v.tap, v.mac));
                &taps.last().expect("tap").ns
            } else {
                vm_ns.push(Vm::new(&hosts[v.host], v.tap, v.mac));
                &vm_ns.last().expect("vm").ns
            };
            if options.static_addresses {
                ns.ip(&["addr", "add", &format!("{}/24", v.ip), "dev", "eth0"]);
                ns.ip(&["link", "set", "eth0", "mtu", &NETWORK_MTU.to_string()]);
                if let Some(r) = options.routing.iter().find(|r| r.net == v.net) {
                    ns.ip(&[
                        "route",
                        "add",
                        "default",
                        "via",
                        &r.gateway().to_string(),
                        "dev",
                        "eth0",
                    ]);
                }
                if options.ipv6 {
                    let vni = nets.iter().find(|n| n.id == v.net).expect("net").vni;
                    ns.ip(&[
                        "-6",
                        "addr",
                        "add",
                        &format!("{}/64", ip6_for(vni, v.ip)),
                        "dev",
                        "eth0",
                        "nodad",
                    ]);
                }
            }
        }
        let cloud = Self {
            hosts,
            agents,
            vms: vm_ns,
            taps,
            specs: vms.to_vec(),
            extra_nics: options.extra_nics.to_vec(),
            control,
            doc,
        };
        cloud.wait_applied();
        cloud
    }

    /// The etcd of an etcd-sourced cloud.
    pub fn etcd(&mut self) -> &mut Etcd {
        &mut self.control.as_mut().expect("an etcd source").etcd
    }

    /// Waits until both data planes hold every NIC of their networks whose interface exists
    /// (a VM's NIC whose tap is not made yet, by QEMU for example, is bound once it is).
    pub fn wait_applied(&self) {
        for (i, a) in self.agents.iter().enumerate() {
            let local = self
                .specs
                .iter()
                .chain(&self.extra_nics)
                .filter(|s| s.host == i && self.hosts[i].has_link(s.tap))
                .count() as f64;
            let ok = wait_for(Duration::from_secs(20), || {
                (a.metric("holdfast_leases") == local && a.metric("holdfast_fdb_entries") > 0.0)
                    .then_some(())
            });
            assert!(ok.is_some(), "agent {i} did not apply:\n{}", a.logs());
        }
    }

    /// The namespace of the VM with `mac` (on a veth or a tap).
    pub fn vm_ns(&self, mac: [u8; 6]) -> &Netns {
        self.vms
            .iter()
            .find(|v| v.mac == mac)
            .map(|v| &v.ns)
            .or_else(|| self.taps.iter().find(|t| t.mac == mac).map(|t| &t.ns))
            .expect("vm")
    }

    pub fn vm(&self, mac: [u8; 6]) -> &Vm {
        self.vms.iter().find(|v| v.mac == mac).expect("vm")
    }

    /// iperf3 TCP for `secs` from the VM `client` to the VM `server` (at `server_ip`): bits per
    /// second received, 0 when the transfer failed.
    pub fn iperf(&self, client: [u8; 6], server: [u8; 6], server_ip: Ipv4Addr, secs: u32) -> f64 {
        self.iperf_to(client, server, &[&server_ip.to_string()], 5210, secs)
    }

    /// [`Cloud::iperf`] over IPv6, to the server VM's `ip6`.
    pub fn iperf6(&self, client: [u8; 6], server: [u8; 6], server_ip6: Ipv6Addr, secs: u32) -> f64 {
        self.iperf_to(client, server, &["-6", &server_ip6.to_string()], 5211, secs)
    }

    /// iperf3 from `client` to a server on `server` at `port`; `to`: the client's address
    /// arguments, the server's address last.
    fn iperf_to(&self, client: [u8; 6], server: [u8; 6], to: &[&str], port: u16, secs: u32) -> f64 {
        iperf_between(self.vm_ns(client), self.vm_ns(server), to, port, secs)
    }

    /// `ping` from the VM with `mac` to `ip`: how many of `count` replies came back.
    pub fn ping(&self, mac: [u8; 6], ip: Ipv4Addr, count: u32) -> u32 {
        self.vm_ns(mac).ping(ip, count)
    }
}

/// iperf3 TCP for `secs` from namespace `client` to a one-shot server in `server` at `port`
/// (a VM, or a namespace behind a gateway VM); `to`: the client's address arguments, the
/// server's address last. Bits per second received, 0 when the transfer failed.
pub fn iperf_between(client: &Netns, server: &Netns, to: &[&str], port: u16, secs: u32) -> f64 {
    let _server = server.iperf3_server(port);
    let (family, addr) = to.split_at(to.len() - 1);
    let out = client
        .exec("iperf3")
        .args(family)
        .args([
            "-c",
            addr[0],
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// Where a gateway VM's outside namespace lives: 203.0.113.0/24 (TEST-NET-3), outside every
/// VPC a test builds.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The gateway VM's own address toward [`OUTSIDE`].
pub const OUTSIDE_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);

/// A namespace outside the VPC behind a gateway VM (a NIC with `forwarding: true`): linked to
/// the VM by a veth (`out0` in the VM at [`OUTSIDE_GW`], `eth0` here at [`OUTSIDE`]), the VM
/// forwarding between the two (ip_forward on, no reverse-path filter), and a route back to
/// `inside` (the VPC's addresses) via the VM. No NAT: the VPC's addresses go out as they are
/// and come back the same way, which asks of holdfast what a NAT gateway would (a frame from
/// the gateway VM with a source outside the VPC) without iptables or nft.
pub struct Outside {
    pub ns: Netns,
}

impl Outside {
    pub fn behind(gateway_vm: &Netns, inside: &str) -> Self {
        Self::behind_at(gateway_vm, inside, OUTSIDE, OUTSIDE_GW, "out0")
    }

    /// [`Outside::behind`] with other addresses: `outside` here, `gateway` on the VM's end
    /// (`interface`), both in one /24.
    pub fn behind_at(
        gateway_vm: &Netns,
        inside: &str,
        outside: Ipv4Addr,
        gateway: Ipv4Addr,
        interface: &str,
    ) -> Self {
        let ns = Netns::new("out");
        gateway_vm.ip(&[
            "link", "add", interface, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        gateway_vm.ip(&["addr", "add", &format!("{gateway}/24"), "dev", interface]);
        gateway_vm.ip(&["link", "set", interface, "up"]);
        ns.ip(&["addr", "add", &format!("{outside}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", inside, "via", &gateway.to_string()]);
        // What a gateway VM's image sets: it routes, and takes back what it routed even when
        // its reverse path is another interface.
        run(gateway_vm.exec("sh").args([
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && \
             echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && \
             echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter && \
             echo 0 > /proc/sys/net/ipv4/conf/eth0/rp_filter",
        ]));
        Self { ns }
    }
}
