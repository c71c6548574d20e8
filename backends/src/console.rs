//! The console core: a guest console's byte stream written to a log file or a Unix socket.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{Error, Result};

/// Where console bytes go.
#[derive(Debug)]
pub enum ConsoleSink {
    /// Appended to a log file.
    File(File),
    /// Streamed to a connected Unix socket.
    Socket(UnixStream),
}

impl ConsoleSink {
    /// Appends to (creating) a log file.
    pub fn file(path: &Path) -> Result<Self> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(ConsoleSink::File)
            .map_err(|error| Error::Console {
                what: path.display().to_string(),
                error,
            })
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

    /// Writes all of `bytes` in order.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (r, what) = match self {
            ConsoleSink::File(f) => (f.write_all(bytes), "file"),
            ConsoleSink::Socket(s) => (s.write_all(bytes), "socket"),
        };
        r.map_err(|error| Error::Console {
            what: what.into(),
            error,
        })
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
