//! A TFTP server for network boot clients: dnsmasq serving TFTP only (`--port=0`: no DNS, no
//! DHCP, which holdfast answers), in a VM's namespace. A VM's frames never reach the
//! hypervisor's own stack (holdfast forwards them to other VMs only), so the boot server is a
//! VM of the network like any other, as it would be in a cloud.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
};

use crate::{TempDir, netns::Vm};

/// Debian's dnsmasq (package `dnsmasq-base`).
pub const BINARY: &str = "/usr/sbin/dnsmasq";

/// A running dnsmasq, killed on drop.
pub struct Tftp {
    child: Child,
    dir: TempDir,
}

impl Tftp {
    /// Serves `files` (name, contents) over TFTP from `vm`'s namespace.
    pub fn start(vm: &Vm, files: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("tftp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("tftp root");
        for (name, text) in files {
            std::fs::write(root.join(name), text).expect("tftp file");
        }
        let mut c = vm.ns.exec(BINARY);
        c.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--enable-tftp",
            "--user=root",
        ])
        .arg(format!("--tftp-root={}", root.display()))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .arg(format!(
            "--log-facility={}",
            dir.path().join("log").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        crate::netns::echo(&c);
        let child = c.spawn().expect("dnsmasq");
        Self { child, dir }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// What dnsmasq logged: a line `sent <path> to <address>` per file served.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
