//! Putting this build's programs on their hooks: one pinned link per hook and interface, whose
//! program is replaced atomically when the link exists, created and pinned when not, and
//! unpinned when its interface is no longer wanted (or, moved to the other hook, once the new
//! program is in place: a VM port switching between xdp and tc mode has no gap).

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CStr,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use tracing::{debug, info, warn};

use super::{
    Dataplane, Desired, PROGRAM_TC, PROGRAM_UNDERLAY, PROGRAM_UNDERLAY_MD, PROGRAM_UNDERLAY_TC,
    PROGRAM_VM, PROGRAM_VM_TC, Report,
    error::{DataplaneError, ReconcileError, io_err},
};
use crate::ports::{Excluded, NotVmPort, VmHook};

/// The places holdfast attaches a program. Declared in attach order: on each interface the TC
/// program that takes what XDP hands up is in place before the XDP program.
///
/// A VM port switching hooks carries both for a moment, and is served whole all along: tc
/// mode's program is attached first in the port's TC chain, so while XDP still runs it sees
/// only what XDP hands up (and serves it whole), and the moment XDP goes it sees everything;
/// xdp mode's skb path is attached last, behind it, and takes over when it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tc mode: TC ingress on a VM interface, the only program there (`holdfast_vm_tc`).
    VmTcOnly,
    /// xdp mode: TC ingress on a VM interface, the skb path (`holdfast_tc`).
    VmTc,
    /// xdp mode: XDP on a VM interface: DHCP, ARP, anti-spoofing, forwarding.
    VmXdp,
    /// TC ingress on the underlay: decapsulated TCP, after GRO, into its VM.
    UnderlayTc,
    /// XDP on the underlay: decapsulation.
    Underlay,
    /// `[underlay] hook = "tc"`: TC ingress on the metadata-mode VXLAN device the kernel
    /// decapsulates into; no program on the underlay.
    UnderlayMd,
}

impl Hook {
    pub(super) const ALL: [Hook; 6] = [
        Hook::VmTcOnly,
        Hook::VmTc,
        Hook::VmXdp,
        Hook::UnderlayTc,
        Hook::Underlay,
        Hook::UnderlayMd,
    ];

    /// The start of the link's pin name, `<prefix>-<ifindex>`.
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Hook::VmXdp => "vm",
            Hook::VmTc => "tc",
            Hook::VmTcOnly => "vmtc",
            Hook::Underlay => "ul",
            Hook::UnderlayTc => "ult",
            Hook::UnderlayMd => "ulmd",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Hook::VmXdp => PROGRAM_VM,
            Hook::VmTc => PROGRAM_TC,
            Hook::VmTcOnly => PROGRAM_VM_TC,
            Hook::Underlay => PROGRAM_UNDERLAY,
            Hook::UnderlayTc => PROGRAM_UNDERLAY_TC,
            Hook::UnderlayMd => PROGRAM_UNDERLAY_MD,
        }
    }

    fn is_tc(self) -> bool {
        matches!(
            self,
            Hook::VmTcOnly | Hook::VmTc | Hook::UnderlayTc | Hook::UnderlayMd
        )
    }

    /// Whether this hook decapsulates VXLAN to this host (in either underlay mode).
    fn is_underlay(self) -> bool {
        matches!(self, Hook::UnderlayTc | Hook::Underlay | Hook::UnderlayMd)
    }

    /// Whether this hook's program answers and forwards what a VM sends (in either mode): a
    /// port carrying it is served.
    pub(super) fn is_vm_program(self) -> bool {
        matches!(self, Hook::VmXdp | Hook::VmTcOnly)
    }

    /// Whether this hook is on a VM port.
    fn is_vm(self) -> bool {
        matches!(self, Hook::VmXdp | Hook::VmTc | Hook::VmTcOnly)
    }

    /// Where in the interface's TC chain the program goes.
    fn order(self) -> LinkOrder {
        match self {
            // Before xdp mode's skb path, which a switch to tc mode leaves behind for a moment.
            Hook::VmTcOnly => LinkOrder::first(),
            _ => LinkOrder::default(),
        }
    }
}

/// The interfaces carrying a host address now, as the kernel lists them: every IPv4 address,
/// every IPv6 address but link-local ones (what `links` counts).
fn host_addresses() -> io::Result<BTreeMap<String, IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that is freed below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeMap::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points to a sockaddr of the family it states.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let address = match family {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if a.is_unicast_link_local() {
                    continue;
                }
                IpAddr::V6(a)
            }
            _ => continue,
        };
        // SAFETY: `ifa_name` is a NUL-terminated string of the same list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.entry(name).or_insert(address);
    }
    // SAFETY: the list getifaddrs returned, freed once; nothing refers to it any more.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

impl Dataplane {
    /// The hooks `desired` puts programs on, with the name of each one's interface. The VM
    /// programs go on VM ports only, whatever `desired` asks: the rules validation and
    /// rendering follow are checked again here, host addresses as the kernel lists them.
    /// An interface refused is reported, and loses the programs it carries.
    pub(super) fn wanted<'a>(
        &self,
        desired: &'a Desired,
        report: &mut Report,
    ) -> BTreeMap<(Hook, u32), &'a str> {
        let mut wanted: BTreeMap<(Hook, u32), &str> = BTreeMap::new();
        match (&desired.underlay, &desired.decap) {
            (Some((underlay, underlay_name)), Some((ifindex, name))) => {
                wanted.insert((Hook::UnderlayMd, *ifindex), name);
                // Single frames are decapsulated on the underlay's TC ingress already.
                wanted.insert((Hook::UnderlayTc, *underlay), underlay_name);
            }
            (Some((ifindex, name)), None) => {
                wanted.insert((Hook::UnderlayTc, *ifindex), name);
                wanted.insert((Hook::Underlay, *ifindex), name);
            }
            (None, _) => {}
        }
        // Listed once, and only when a VM port is to get programs it does not carry yet.
        let mut addressed: Option<BTreeMap<String, IpAddr>> = None;
        for (ifindex, name) in &desired.interfaces {
            let refused = if desired
                .underlay
                .as_ref()
                .is_some_and(|(i, n)| i == ifindex || n == name)
            {
                Err(NotVmPort::Excluded {
                    name: name.clone(),
                    why: Excluded::Underlay,
                })
            } else {
                self.vm_ports.check(name)
            };
            let refused = refused.err().or_else(|| {
                if self.current.contains(&(Hook::VmXdp, *ifindex))
                    || self.current.contains(&(Hook::VmTcOnly, *ifindex))
                {
                    return None;
                }
                let addressed = addressed.get_or_insert_with(|| {
                    host_addresses()
                        .inspect_err(|e| warn!(error = %e, "listing host addresses"))
                        .unwrap_or_default()
                });
                addressed.get(name).map(|a| NotVmPort::Excluded {
                    name: name.clone(),
                    why: Excluded::HostAddress(*a),
                })
            });
            if let Some(why) = refused {
                warn!(error = %why, ifindex, "not attaching the VM programs");
                report.errors.push(ReconcileError::NotVmPort {
                    ifindex: *ifindex,
                    source: why,
                });
                continue;
            }
            match self.vm_hooks.of(name) {
                VmHook::Xdp => {
                    wanted.insert((Hook::VmXdp, *ifindex), name);
                    wanted.insert((Hook::VmTc, *ifindex), name);
                }
                VmHook::Tc => {
                    wanted.insert((Hook::VmTcOnly, *ifindex), name);
                }
            }
        }
        wanted
    }

    /// Puts this build's programs on the wanted hooks that do not run them yet.
    pub(super) fn attach_wanted(
        &mut self,
        wanted: &BTreeMap<(Hook, u32), &str>,
        report: &mut Report,
    ) {
        for (&(hook, ifindex), name) in wanted {
            if self.current.contains(&(hook, ifindex)) {
                continue;
            }
            match self.attach(hook, ifindex, name) {
                Ok(how) => {
                    info!(interface = %name, ifindex, ?hook, how, "program attached");
                    if hook == Hook::UnderlayMd
                        && let Err(e) = crate::decap::set_up(name)
                    {
                        // Attached but down: nothing is decapsulated there yet, the
                        // underlay's old hook (if any) stays, and the next reconcile retries.
                        warn!(interface = %name, error = %e, "cannot set the device up");
                        report.errors.push(ReconcileError::Attach {
                            hook,
                            interface: (*name).to_owned(),
                            ifindex,
                            source: DataplaneError::Io {
                                path: std::path::PathBuf::from(format!("/sys/class/net/{name}")),
                                source: e,
                            },
                        });
                        continue;
                    }
                    self.current.insert((hook, ifindex));
                    report.attached.push(format!("{name}/{}", hook.prefix()));
                }
                Err(e) => {
                    warn!(interface = %name, ifindex, ?hook, error = %e, "cannot attach");
                    report.errors.push(ReconcileError::Attach {
                        hook,
                        interface: (*name).to_owned(),
                        ifindex,
                        source: e,
                    });
                }
            }
        }
    }

    /// Unpins the links of hooks no longer wanted, which detaches their programs. A VM port
    /// moving to the other hook keeps its old programs until all of its new ones are in place:
    /// if one failed to attach, the old ones go on serving it (and the next reconcile tries
    /// again).
    pub(super) fn detach_unwanted(
        &mut self,
        wanted: &BTreeMap<(Hook, u32), &str>,
        report: &mut Report,
    ) {
        let incomplete: BTreeSet<u32> = wanted
            .keys()
            .filter(|&&(h, i)| h.is_vm() && !self.current.contains(&(h, i)))
            .map(|&(_, i)| i)
            .collect();
        // The same for decapsulation moving between the underlay's XDP and the VXLAN device.
        let underlay_incomplete = wanted
            .keys()
            .any(|&(h, i)| h.is_underlay() && !self.current.contains(&(h, i)));
        for (hook, ifindex) in self.pins.pinned() {
            if wanted.contains_key(&(hook, ifindex)) {
                continue;
            }
            if hook.is_vm() && incomplete.contains(&ifindex) {
                warn!(
                    ifindex,
                    ?hook,
                    "kept: the port's programs for its new hook are not all attached"
                );
                continue;
            }
            if hook.is_underlay() && underlay_incomplete {
                warn!(
                    ifindex,
                    ?hook,
                    "kept: decapsulation's programs for its new hook are not all attached"
                );
                continue;
            }
            let path = self.pins.link(hook, ifindex);
            match fs::remove_file(&path) {
                Ok(()) => {
                    info!(ifindex, ?hook, "program detached");
                    self.current.remove(&(hook, ifindex));
                    report.detached.push(format!("{}-{ifindex}", hook.prefix()));
                }
                Err(source) => report.errors.push(ReconcileError::Unpin { path, source }),
            }
        }
    }

    /// Puts this build's program on a hook: atomically replaces the program of a pinned link,
    /// or creates and pins a new link.
    fn attach(
        &mut self,
        hook: Hook,
        ifindex: u32,
        name: &str,
    ) -> Result<&'static str, DataplaneError> {
        let path = self.pins.link(hook, ifindex);
        if path.exists() {
            match self.replace(hook, &path) {
                Ok(()) => return Ok("replaced the program of the pinned link"),
                Err(e) => {
                    // The interface this link was for is gone (ENOLINK): start afresh.
                    debug!(path = %path.display(), error = %e, "stale pinned link");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        let link_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataplaneError::Link { path, source }
        };
        let program = self
            .ebpf
            .program_mut(hook.program())
            .ok_or(DataplaneError::Missing(hook.program()))?;
        let fd_link = if hook.is_tc() {
            let program: &mut SchedClassifier = program.try_into()?;
            let id = program.attach_with_options(
                name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(hook.order()),
            )?;
            FdLink::try_from(program.take_link(id)?).map_err(link_err(&path))?
        } else {
            let program: &mut Xdp = program.try_into()?;
            let id = program.attach_to_if_index(ifindex, XdpMode::Default)?;
            FdLink::try_from(program.take_link(id)?).map_err(link_err(&path))?
        };
        fd_link
            .pin(&path)
            .map_err(|source| DataplaneError::Pin { path, source })?;
        Ok("attached and pinned a new link")
    }

    fn replace(&mut self, hook: Hook, path: &Path) -> Result<(), DataplaneError> {
        let link_err = |source| DataplaneError::Link {
            path: path.to_owned(),
            source,
        };
        let fd_link = FdLink::from(PinnedLink::from_pin(path).map_err(link_err)?);
        let program = self
            .ebpf
            .program_mut(hook.program())
            .ok_or(DataplaneError::Missing(hook.program()))?;
        // The pin keeps the link; this process holds no reference of its own.
        if hook.is_tc() {
            let program: &mut SchedClassifier = program.try_into()?;
            let link = SchedClassifierLink::try_from(fd_link).map_err(link_err)?;
            let id = program.attach_to_link(link)?;
            drop(program.take_link(id)?);
        } else {
            let program: &mut Xdp = program.try_into()?;
            let id = program.attach_to_link(XdpLink::try_from(fd_link).map_err(link_err)?)?;
            drop(program.take_link(id)?);
        }
        Ok(())
    }
}
