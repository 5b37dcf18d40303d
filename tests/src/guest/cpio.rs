//! A `newc` cpio archive, the format the kernel unpacks as its initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst). Uncompressed: the kernel
//! takes it as it is, and the archive is a few MiB.

use std::path::Path;

/// An archive being written in memory.
#[derive(Default)]
pub struct Archive {
    buf: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Archive {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, S_IFREG | mode, data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes());
    }

    /// Adds the file at `from` as `name`, with its permission bits.
    pub fn copy(&mut self, name: &str, from: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        let mode = std::fs::metadata(from)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        self.file(name, mode, &data);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_trailed() {
        let mut a = Archive::default();
        a.dir("bin");
        a.file("bin/x", 0o755, b"abc");
        let out = a.finish();
        assert_eq!(&out[..6], b"070701");
        assert!(out.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
    }
}
