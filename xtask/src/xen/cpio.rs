//! A writer for the "newc" cpio format (magic `070701`), the format Linux unpacks an initramfs from.
//!
//! Layout (Linux `Documentation/driver-api/early-userspace/buffer-format.rst`): each member is a
//! 110-byte ASCII header (the magic, then 13 fields of 8 hex digits: ino, mode, uid, gid, nlink,
//! mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize including its NUL, check), the
//! NUL-terminated name padded to a multiple of 4 bytes (counted from the header start), then the data
//! padded to a multiple of 4. The archive ends with a member named `TRAILER!!!`.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

/// Streams members into a newc archive. Parent directories are added on demand, each once.
pub struct Writer<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            offset: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory (and its parents); `path` is relative (`usr/bin`).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.member(path, S_IFDIR | 0o755, 2, &[], (0, 0))
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = self.parents(path)?;
        self.member(&path, S_IFREG | (perm & 0o7777), 1, data, (0, 0))
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = self.parents(path)?;
        self.member(&path, S_IFCHR | (perm & 0o7777), 1, &[], (major, minor))
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.parents(path)?;
        self.member(&path, S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0))
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.member(TRAILER, 0, 1, &[], (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<String> {
        let path = path.trim_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(path)
    }

    fn member(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8], rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {} bytes do not fit newc's 32-bit size field", data.len()),
            )
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed member: (name, mode, data).
    type Member = (String, u32, Vec<u8>);

    /// `(rdevmajor, rdevminor)` of the member called `name`.
    fn rdev(b: &[u8], name: &str) -> (u32, u32) {
        let at = b
            .windows(name.len() + 1)
            .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
            .unwrap()
            - HEADER_LEN;
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&b[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap(),
                16,
            )
            .unwrap()
        };
        (field(9), field(10))
    }

    /// An independent reader, strict about magic, padding and the trailer.
    fn parse(mut b: &[u8]) -> Vec<Member> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - b.len()) % 4, 0, "member not 4-byte aligned");
            assert_eq!(&b[..6], MAGIC.as_bytes());
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[HEADER_LEN..HEADER_LEN + namesize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(b[HEADER_LEN + namesize - 1], 0, "name not NUL-terminated");
            let data_at = (HEADER_LEN + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).next_multiple_of(4).min(b.len())..];
            if name == TRAILER {
                assert!(b.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn members_round_trip_with_parents_once() {
        let mut w = Writer::new(Vec::new());
        w.file("usr/bin/tool", 0o755, b"12345").unwrap();
        w.file("usr/lib/a.so", 0o644, b"").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("usr/bin").unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(rdev(&bytes, "dev/console"), (5, 1));
        let members = parse(&bytes);
        let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/lib",
                "usr/lib/a.so",
                "bin",
                "bin/sh",
                "init",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(members[9].1, S_IFCHR | 0o600);
        let get = |n: &str| members.iter().find(|m| m.0 == n).unwrap();
        assert_eq!(get("usr/bin/tool").1, S_IFREG | 0o755);
        assert_eq!(get("usr/bin/tool").2, b"12345");
        assert_eq!(get("usr/lib/a.so").2, b"");
        assert_eq!(get("bin/sh").1, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("usr").1, S_IFDIR | 0o755);
        assert_eq!(get("init").2, b"#!/bin/sh\n");
    }

    #[test]
    fn every_name_and_data_length_keeps_alignment() {
        // Name lengths 1..=8 and data lengths 0..=8 cover every padding case of both.
        let mut w = Writer::new(Vec::new());
        let mut want = Vec::new();
        for n in 1..=8 {
            for d in 0..=8u8 {
                let name = format!("{}{d}", "x".repeat(n));
                let data: Vec<u8> = (0..d).collect();
                w.file(&name, 0o600, &data).unwrap();
                want.push((name, S_IFREG | 0o600, data));
            }
        }
        assert_eq!(parse(&w.finish().unwrap()), want);
    }
}
