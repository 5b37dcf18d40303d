//! A real VM: QEMU (TCG: no KVM here) booting Debian's cloud kernel with the busybox
//! initramfs of [`super::images`], its NICs virtio-net on taps that QEMU creates in the
//! hypervisor's namespace, as libvirt or a cloud's VMM does. The test drives the guest's shell
//! on the serial console and reads what it prints.

use std::{
    io::{Read as _, Write as _},
    process::{Child, ChildStdin, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::images;
use crate::netns::{Netns, mac_str};

/// A NIC of the VM: the tap QEMU creates for it in the hypervisor's namespace, and its MAC.
#[derive(Clone, Debug)]
pub struct GuestNic {
    pub tap: String,
    pub mac: [u8; 6],
}

/// How the VM boots.
#[derive(Clone, Debug, Default)]
pub enum Boot {
    /// The cloud kernel and the test's initramfs, directly (`-kernel`): a shell on the console.
    #[default]
    Kernel,
    /// From the network, with the option ROM of the first NIC (QEMU's iPXE): what a bare VM
    /// without a disk does.
    Network { rom: String },
}

/// How long a guest may take to boot under TCG on a busy machine (about 6 s when quiet).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A running VM, killed on drop.
pub struct QemuVm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    seq: u32,
}

impl QemuVm {
    /// Starts a VM in `hv` with `nics` and waits for its shell (for [`Boot::Kernel`]).
    pub fn boot(hv: &Netns, nics: &[GuestNic], boot: Boot) -> Self {
        let mut c = hv.enter(std::path::Path::new("qemu-system-x86_64"));
        c.args(["-machine", "q35,accel=tcg", "-m", "256", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-no-reboot", "-nodefaults"]);
        for (i, nic) in nics.iter().enumerate() {
            c.arg("-netdev").arg(format!(
                "tap,id=n{i},ifname={},script=no,downscript=no",
                nic.tap
            ));
            let rom = match (&boot, i) {
                // Debian's iPXE ROMs name the modern virtio-net device (1af4:1041) in their
                // PCI header, and SeaBIOS runs a ROM only for the device it names: without
                // the legacy interface the NIC is that device (a transitional one is 1af4:1000).
                (Boot::Network { rom }, 0) => {
                    format!(",romfile={rom},bootindex=1,disable-legacy=on")
                }
                // No option ROM: nothing to boot from it, and the VM starts faster.
                _ => ",romfile=".to_owned(),
            };
            c.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n{i},mac={}{rom}",
                mac_str(nic.mac)
            ));
        }
        if let Boot::Kernel = boot {
            c.arg("-kernel")
                .arg(&images::kernel().vmlinuz)
                .arg("-initrd")
                .arg(images::initramfs())
                .args(["-append", "console=ttyS0 panic=-1 quiet"]);
        }
        crate::netns::echo(&c);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let stdin = child.stdin.take().expect("stdin");
        let console = Arc::new(Mutex::new(String::new()));
        for mut out in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let console = console.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    console.lock().expect("console").push_str(&text);
                }
            });
        }
        let mut vm = Self {
            child,
            stdin,
            console,
            seq: 0,
        };
        for nic in nics {
            vm.wait_tap(hv, &nic.tap);
        }
        if let Boot::Kernel = boot {
            assert!(
                vm.wait_console("GUEST-READY", 0, BOOT_TIMEOUT).is_some(),
                "the guest did not boot:\n{}",
                vm.console()
            );
        }
        vm
    }

    /// Waits for QEMU to create `tap`, then brings it up (QEMU leaves it down without a script).
    fn wait_tap(&mut self, hv: &Netns, tap: &str) {
        let started = Instant::now();
        while !hv.has_link(tap) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("qemu exited ({status}):\n{}", self.console());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "qemu made no tap {tap}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        hv.ip(&["link", "set", tap, "up"]);
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().expect("console").clone()
    }

    /// Waits until `needle` appears in the console after byte `from`; returns where it ends.
    pub fn wait_console(&self, needle: &str, from: usize, timeout: Duration) -> Option<usize> {
        let started = Instant::now();
        loop {
            {
                let text = self.console.lock().expect("console");
                if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
                    return Some(from + i + needle.len());
                }
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `cmd` in the guest's shell and returns what it printed (and its exit status).
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> (String, i32) {
        self.seq += 1;
        let from = self.console.lock().expect("console").len();
        // The console echoes the typed line: the marker is split there, whole in the output.
        let marker = format!("@@END{}@@", self.seq);
        writeln!(self.stdin, "{cmd}; echo \"@@EN\"\"D{}@@ $?\"", self.seq).expect("guest console");
        let end = self
            .wait_console(&marker, from, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "guest command `{cmd}` did not finish in {timeout:?}:\n{}",
                    self.console()
                )
            });
        let text = self.console();
        let status: i32 = text[end..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        let out = &text[from..end - marker.len()];
        // Drop the echoed command line.
        let out = out.split_once('\n').map_or("", |(_, rest)| rest);
        (out.to_owned(), status)
    }

    /// Runs `cmd` and asserts it succeeds; returns its output.
    pub fn sh_ok(&mut self, cmd: &str, timeout: Duration) -> String {
        let (out, status) = self.sh(cmd, timeout);
        assert_eq!(status, 0, "guest `{cmd}` failed ({status}):\n{out}");
        out
    }

    /// Kills the VM at once (a host losing power, as far as the guest knows).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        self.kill();
    }
}
