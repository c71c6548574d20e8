//! The console core: a guest console's byte stream written to a log file or a Unix socket.
//!
//! A log file can be capped ([`ConsoleSink::file_capped`]): once the next write would take it past
//! the cap, it is renamed to `PATH.1` (replacing the previous one) and a new `PATH` is started, so a
//! guest that writes without end occupies at most twice the cap on the host's disk and the newest
//! output is always kept. Bytes that do not fit even an empty file (a single write larger than the
//! cap) are dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where console bytes go.
#[derive(Debug)]
pub enum ConsoleSink {
    /// Appended to a log file.
    File(FileSink),
    /// Streamed to a connected Unix socket.
    Socket(UnixStream),
}

/// A console log file, optionally capped.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
    /// Bytes in the current file.
    len: u64,
    cap: Option<u64>,
    rotations: u64,
    dropped: u64,
}

/// What a capped log did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Times the file was renamed to `PATH.1` and started over.
    pub rotations: u64,
    /// Bytes dropped (a single write larger than the cap).
    pub dropped: u64,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| Error::Console {
            what: path.display().to_string(),
            error,
        })
}

impl FileSink {
    /// The rotated file's path: `PATH.1`.
    pub fn rotated_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        p.into()
    }

    fn rotate(&mut self) -> Result<()> {
        let old = self.rotated_path();
        std::fs::rename(&self.path, &old).map_err(|error| Error::Console {
            what: format!("{} -> {}", self.path.display(), old.display()),
            error,
        })?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        self.rotations += 1;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let mut bytes = bytes;
        if let Some(cap) = self.cap {
            let n = bytes.len() as u64;
            if n > cap {
                // Keep the newest `cap` bytes of this write.
                let drop = (n - cap) as usize;
                self.dropped += drop as u64;
                bytes = &bytes[drop..];
            }
            if self.len + bytes.len() as u64 > cap && self.len > 0 {
                self.rotate()?;
            }
        }
        self.file.write_all(bytes).map_err(|error| Error::Console {
            what: self.path.display().to_string(),
            error,
        })?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

impl ConsoleSink {
    /// Appends to (creating) a log file, without a cap.
    pub fn file(path: &Path) -> Result<Self> {
        Self::open_file(path, None)
    }

    /// Appends to (creating) a log file of at most `cap` bytes (at least 1), rotated to `PATH.1`
    /// when full.
    pub fn file_capped(path: &Path, cap: u64) -> Result<Self> {
        Self::open_file(path, Some(cap.max(1)))
    }

    fn open_file(path: &Path, cap: Option<u64>) -> Result<Self> {
        let file = open_append(path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ConsoleSink::File(FileSink {
            file,
            path: path.to_owned(),
            len,
            cap,
            rotations: 0,
            dropped: 0,
        }))
    }

    /// Connects to a listening Unix socket.
    pub fn socket(path: &Path) -> Result<Self> {
        UnixStream::connect(path)
            .map(ConsoleSink::Socket)
            .map_err(|error| Error::Console {
                what: path.display().to_string(),
                error,
            })
    }

    /// Writes all of `bytes` in order (a capped file may rotate first, or keep only the newest
    /// part of a write larger than its cap).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            ConsoleSink::File(f) => f.write(bytes),
            ConsoleSink::Socket(s) => s.write_all(bytes).map_err(|error| Error::Console {
                what: "socket".into(),
                error,
            }),
        }
    }

    /// What a capped log did (zeros for other sinks).
    pub fn counts(&self) -> SinkCounts {
        match self {
            ConsoleSink::File(f) => SinkCounts {
                rotations: f.rotations,
                dropped: f.dropped,
            },
            ConsoleSink::Socket(_) => SinkCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn file_sink_appends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("guest.log");
        let mut s = ConsoleSink::file(&p).unwrap();
        s.write(b"boot ").unwrap();
        s.write(b"ok\n").unwrap();
        let mut again = ConsoleSink::file(&p).unwrap();
        again.write(b"second\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"boot ok\nsecond\n");
        let e = ConsoleSink::file(Path::new("/nonexistent/dir/x.log")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/x.log"));
    }

    /// A guest writing 1 MiB into a console capped at 10,000 bytes: the host holds at most two
    /// files of at most 10,000 bytes, the newest output is in the current one, the one before it in
    /// `.1`, in order.
    #[test]
    fn console_log_cap_rotates_to_one_old_file_and_keeps_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hvc1.log");
        let mut s = ConsoleSink::file_capped(&p, 10_000).unwrap();
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(2048) {
            s.write(chunk).unwrap();
        }
        let (cur, old) = (
            std::fs::read(&p).unwrap(),
            std::fs::read(dir.path().join("hvc1.log.1")).unwrap(),
        );
        assert!(
            cur.len() <= 10_000 && old.len() <= 10_000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no third file");
        let tail = [old.as_slice(), cur.as_slice()].concat();
        assert_eq!(
            &data[data.len() - tail.len()..],
            &tail[..],
            "the newest bytes, in order"
        );
        let c = s.counts();
        assert_eq!(c.dropped, 0);
        assert!(c.rotations >= 100, "{c:?}");
        // A single write larger than the cap keeps its newest 10,000 bytes.
        s.write(&data[..20_000]).unwrap();
        assert_eq!(s.counts().dropped, 10_000);
        assert_eq!(std::fs::read(&p).unwrap(), &data[10_000..20_000]);
    }

    #[test]
    fn socket_sink_streams_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let mut s = ConsoleSink::socket(&p).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31) as u8).collect();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            s.write(&d2).unwrap();
        });
        let mut got = vec![0; data.len()];
        peer.read_exact(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, data);
    }
}
