//! What the real guests boot from, made once and cached under `target/guests/`: Debian's cloud
//! kernel and a static busybox, taken from Debian's packages without installing them (`apt-get
//! download`, `dpkg-deb -x`), and the initramfs built from them. The first build prints what
//! it makes; later tests find it in the cache. A lock file keeps test processes that start at
//! once from building it twice.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::cpio::Archive;
use crate::netns::run;

/// The kernel modules the guest loads for virtio-net, in dependency order.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];

/// The guest's init: loads virtio-net, then gives the console to a shell that the test drives.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /run
for m in MODULES; do insmod /lib/modules/$m.ko; done
ip link set lo up
echo GUEST-READY
exec setsid cttyhack sh
"#;

/// udhcpc's script: applies what the server sent as a guest's init scripts would, and then
/// records the event on one line of /tmp/dhcp.log (and the console) for the test to read, so a
/// test that sees the line sees its effect. A renewal of the address held keeps it (a flush there
/// would leave the guest without a route for a moment, as no real client does).
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
line="UDHCPC $1 if=$interface ip=$ip mask=$mask router=$router dns=$dns domain=$domain search=$search mtu=$mtu hostname=$hostname serverid=$serverid lease=$lease staticroutes=$staticroutes siaddr=$siaddr boot_file=$boot_file"
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    if ! ip -4 -o addr show dev "$interface" | grep -q "inet $ip/$mask "; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/$mask" dev "$interface"
    fi
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    elif [ -n "$router" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi
    ;;
esac
echo "$line" >> /tmp/dhcp.log
echo "$line" > /dev/console
exit 0
"#;

/// Where guest images are cached: `target/guests/` of this workspace.
pub fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/guests");
    std::fs::create_dir_all(&dir).expect("target/guests");
    dir
}

/// Holds the cache's lock for as long as it lives.
struct Lock(#[expect(dead_code, reason = "held for its flock")] File);

fn lock() -> Lock {
    let f = File::create(cache_dir().join(".lock")).expect("lock file");
    // SAFETY: flock(2) on an fd we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    Lock(f)
}

/// The `.deb` of `package`, downloaded into the cache (once).
fn deb(package: &str) -> PathBuf {
    let dir = cache_dir().join("debs");
    std::fs::create_dir_all(&dir).expect("debs");
    let find = || {
        std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&format!("{package}_")) && name.ends_with(".deb")).then(|| e.path())
        })
    };
    if let Some(p) = find() {
        return p;
    }
    println!("guests: downloading Debian's {package} (first time; cached in target/guests)");
    let mut download = Command::new("apt-get");
    download.current_dir(&dir).args(["download", package]);
    if !download.status().is_ok_and(|s| s.success()) {
        // Package lists older than the archive: refresh them once.
        run(Command::new("apt-get").args(["update", "-qq"]));
        run(&mut download);
    }
    find().unwrap_or_else(|| panic!("apt-get download {package} left no .deb"))
}

/// The package `linux-image-cloud-amd64` stands for now (the kernel of this ABI).
fn cloud_kernel_package() -> String {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|v| format!("linux-image-{v}"))
        .expect("linux-image-cloud-amd64 depends on a kernel")
}

/// Unpacks `deb` into `into` (once).
fn extract(deb: &Path, into: &Path) {
    if into.exists() {
        return;
    }
    let tmp = into.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp));
    std::fs::rename(&tmp, into).expect("rename");
}

/// Debian's cloud kernel: its image, and the directory of its modules.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
    pub release: String,
}

/// The guest kernel, extracted once.
pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let _lock = lock();
        let package = cloud_kernel_package();
        let root = cache_dir().join(&package);
        extract(&deb(&package), &root);
        let release = package.trim_start_matches("linux-image-").to_owned();
        Kernel {
            vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
            modules: root.join(format!("lib/modules/{release}/kernel")),
            release,
        }
    })
}

/// A static busybox, extracted once.
pub fn busybox() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let _lock = lock();
        let root = cache_dir().join("busybox-static");
        extract(&deb("busybox-static"), &root);
        root.join("bin/busybox")
    })
}

/// The guest's initramfs: busybox, the virtio-net modules, init and the DHCP client's script.
/// Its name carries a digest of what goes in, so a changed script makes a new one.
pub fn initramfs() -> &'static PathBuf {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let k = kernel();
        let bb = busybox();
        let init = INIT.replace(
            "MODULES",
            &MODULES
                .iter()
                .map(|m| m.rsplit('/').next().unwrap_or(m))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let digest = fnv(&[
            init.as_bytes(),
            UDHCPC_SCRIPT.as_bytes(),
            k.release.as_bytes(),
        ]);
        let path = cache_dir().join(format!("initramfs-{digest:016x}.cpio"));
        let _lock = lock();
        if path.exists() {
            return path;
        }
        println!("guests: building {} (first time)", path.display());
        let mut a = Archive::default();
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "etc",
            "lib",
            "lib/modules",
        ] {
            a.dir(d);
        }
        a.copy("bin/busybox", bb);
        a.file("init", 0o755, init.as_bytes());
        a.file("bin/udhcpc.sh", 0o755, UDHCPC_SCRIPT.as_bytes());
        for m in MODULES {
            let name = m.rsplit('/').next().unwrap_or(m);
            a.copy(
                &format!("lib/modules/{name}.ko"),
                &k.modules.join(format!("{m}.ko")),
            );
        }
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, a.finish()).expect("initramfs");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    })
}

/// What the NetworkManager guest's root holds besides a minimal Debian.
const NM_PACKAGES: &str = "network-manager,dbus,iproute2,libpam-systemd";

/// A Debian root with NetworkManager and its D-Bus (`debootstrap --variant=minbase`, about a
/// minute and 320 MB), built once. NetworkManager runs from it in a VM's namespace, as in a
/// RHEL, Rocky or Fedora guest.
pub fn nm_root() -> &'static PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let root = cache_dir().join(format!(
            "nm-root-{:08x}",
            fnv(&[NM_PACKAGES.as_bytes()]) as u32
        ));
        let _lock = lock();
        if root.join("usr/sbin/NetworkManager").exists() {
            return root;
        }
        println!(
            "guests: building a Debian root with NetworkManager in {} (first time, about a minute)",
            root.display()
        );
        let tmp = root.with_extension("partial");
        // A partial root from an interrupted build: debootstrap leaves /proc mounted in it.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(tmp.join("proc"))
            .output();
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={NM_PACKAGES}"),
                "bookworm",
            ])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian"));
        std::fs::rename(&tmp, &root).expect("rename");
        root
    })
}

/// FNV-1a over `parts`: names a cached build by what went into it.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
