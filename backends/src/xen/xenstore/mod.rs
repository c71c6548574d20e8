//! A XenStore client for dom0 backends, over a byte stream: `/dev/xen/xenbus` (the kernel's xenbus
//! device) or the xenstored Unix socket speak the same wire protocol (`xs_wire.h`, layouts in
//! [`ring_protocol::abi::xenstore`]): a 16-byte header (type, request id, transaction id, payload
//! length) and the payload, replies in request order, watch events interleaved at any point.
//! Messages are framed and checked by the wire codec the guest's client uses too
//! ([`ring_protocol::xenstore`]).
//!
//! Requests are synchronous; watch events that arrive while waiting for a reply are queued and handed
//! out by [`XenStore::next_watch_event`]. What other domains write decides how many events arrive, so
//! the queue is bounded ([`MAX_QUEUED_EVENTS`]): an event equal to one already queued is merged into
//! it, a watch registered with [`XenStore::watch_exact`] drops events for paths below the watched
//! node on arrival, and when the queue is full a token that already has an event queued loses the new
//! one, a token that has none gets one event for its watched path once the queue has drained. Events
//! therefore mean "look again": a consumer re-reads what it watches on each, and then misses no
//! change. Everything dropped or merged is counted ([`ClientStats`]).
//!
//! Layout: here the connection and its one request path (framing, replies, errors); `nodes` the
//! requests on nodes, permissions and transactions; [`watch`] watches and the bounded event queue;
//! [`perms`] permission lists.

mod nodes;
pub mod perms;
pub mod watch;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::xenstore::{XENSTORE_PAYLOAD_MAX, XsdSockmsg};
use ring_protocol::xenstore::{self as wire, HEADER_LEN, Incoming, Request};

pub use perms::{Access, Perm};
use watch::Watch;
pub use watch::{MAX_QUEUED_EVENTS, WatchEvent};

use super::{Error, Result};

/// The kernel's xenbus device in dom0.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// A transaction id; 0 is "no transaction".
pub type TxId = u32;
/// Outside any transaction.
pub const NO_TX: TxId = 0;

/// What a connection did with its requests and the watch events it received.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests sent (each is one round trip to the daemon).
    pub requests: AtomicU64,
    /// Watch events queued for the consumer.
    pub events_queued: AtomicU64,
    /// Events merged into an equal one already queued.
    pub events_coalesced: AtomicU64,
    /// Events dropped because the queue was full (their token is looked at again anyway).
    pub events_dropped: AtomicU64,
    /// Events for paths below an exact watch's node, or for no watch of ours, dropped on arrival.
    pub events_filtered: AtomicU64,
}

/// A XenStore connection.
#[derive(Debug)]
pub struct XenStore<S: Read + Write> {
    stream: S,
    next_req: u32,
    events: VecDeque<WatchEvent>,
    watches: Vec<Watch>,
    /// Tokens whose event was dropped on a full queue while none of theirs was queued: each gets one
    /// event for its watched path once the queue is empty.
    overflowed: Vec<String>,
    stats: Arc<ClientStats>,
}

impl XenStore<File> {
    /// Opens `/dev/xen/xenbus` (dom0 with the xenfs/xenbus driver loaded).
    pub fn open_xenbus() -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(XENBUS_DEVICE)
            .map_err(|error| Error::XenStoreIo {
                what: format!("opening {XENBUS_DEVICE}"),
                error,
            })?;
        Ok(XenStore::new(f))
    }
}

impl XenStore<UnixStream> {
    /// Connects to xenstored's Unix socket (e.g. `/run/xenstored/socket`).
    pub fn connect(socket: &Path) -> Result<Self> {
        let s = UnixStream::connect(socket).map_err(|error| Error::XenStoreIo {
            what: format!("connecting to {}", socket.display()),
            error,
        })?;
        Ok(XenStore::new(s))
    }
}

/// Either way of reaching XenStore from dom0, so one client type serves both.
#[derive(Debug)]
pub enum Connection {
    /// `/dev/xen/xenbus`.
    Device(File),
    /// xenstored's Unix socket.
    Socket(UnixStream),
}

impl std::os::fd::AsRawFd for Connection {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Connection::Device(f) => f.as_raw_fd(),
            Connection::Socket(s) => s.as_raw_fd(),
        }
    }
}

impl<S: Read + Write + std::os::fd::AsRawFd> XenStore<S> {
    /// The connection's descriptor, to poll for incoming messages.
    pub fn stream_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Device(f) => f.read(buf),
            Connection::Socket(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Device(f) => f.write(buf),
            Connection::Socket(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Device(f) => f.flush(),
            Connection::Socket(s) => s.flush(),
        }
    }
}

/// Connects to xenstored's `socket` if given, else opens `/dev/xen/xenbus`.
pub fn open(socket: Option<&Path>) -> Result<XenStore<Connection>> {
    Ok(match socket {
        Some(p) => {
            let xs = XenStore::connect(p)?;
            XenStore::new(Connection::Socket(xs.stream))
        }
        None => XenStore::new(Connection::Device(XenStore::open_xenbus()?.stream)),
    })
}

fn split_nul(payload: &[u8]) -> Vec<String> {
    wire::strings(payload)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

impl<S: Read + Write> XenStore<S> {
    /// A client over an already connected stream.
    pub fn new(stream: S) -> Self {
        XenStore {
            stream,
            next_req: 1,
            events: VecDeque::new(),
            watches: Vec::new(),
            overflowed: Vec::new(),
            stats: Arc::new(ClientStats::default()),
        }
    }

    /// The connection's counts (shared: they stay readable after the client moved elsewhere).
    pub fn stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    fn io(what: &str, error: std::io::Error) -> Error {
        Error::XenStoreIo {
            what: what.to_owned(),
            error,
        }
    }

    /// Reads one message: header, then payload (bounded by the protocol's maximum).
    fn read_msg(&mut self) -> Result<(XsdSockmsg, Vec<u8>)> {
        let mut hdr = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut hdr)
            .map_err(|e| Self::io("reading a reply header", e))?;
        let hdr = match wire::parse_header(&hdr) {
            Ok(h) => h.expect("a whole header"),
            Err(ring_protocol::Error::XsPayloadTooLong { len }) => {
                return Err(Error::XenStoreProtocol(format!(
                    "message type {} claims {len} payload bytes (maximum {XENSTORE_PAYLOAD_MAX})",
                    u32::from_le_bytes(hdr[..4].try_into().expect("4 bytes"))
                )));
            }
            Err(e) => return Err(Error::XenStoreProtocol(e.to_string())),
        };
        let mut payload = vec![0u8; hdr.len as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| Self::io("reading a reply payload", e))?;
        Ok((hdr, payload))
    }

    /// Sends one request and returns its reply's payload; queues watch events met on the way.
    /// `path` names the request in errors.
    fn request(&mut self, req: Request<'_>, tx: TxId, path: &str) -> Result<Vec<u8>> {
        let ty = req.msg_type();
        let req_id = self.next_req;
        let mut msg = Vec::new();
        req.encode(req_id, tx, &mut msg)
            .map_err(|e| Error::XenStoreProtocol(format!("{ty:?} of {path:?}: {e}")))?;
        self.next_req = self.next_req.wrapping_add(1);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        // One write per message: the xenbus device wants whole messages.
        self.stream
            .write_all(&msg)
            .map_err(|e| Self::io("sending a request", e))?;
        loop {
            let (h, p) = self.read_msg()?;
            let proto = |e: ring_protocol::Error| {
                Error::XenStoreProtocol(format!("waiting for the reply to {ty:?} #{req_id}: {e}"))
            };
            match wire::classify(&h, &p).map_err(proto)? {
                Incoming::WatchEvent { path, token } => self.queue_event(lossy(path), lossy(token)),
                Incoming::Reply => {
                    return match wire::reply_result(&h, &p, ty, req_id).map_err(proto)? {
                        Ok(_) => Ok(p),
                        Err(name) => Err(Error::XenStore {
                            op: ty,
                            path: path.to_owned(),
                            error: lossy(name),
                        }),
                    };
                }
            }
        }
    }
}
