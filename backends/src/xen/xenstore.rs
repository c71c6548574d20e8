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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::xenstore::{XENSTORE_PAYLOAD_MAX, XsdSockmsg};
use ring_protocol::xenstore::{self as wire, HEADER_LEN, Incoming, Request};

use super::{Error, Result};

/// The kernel's xenbus device in dom0.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// A transaction id; 0 is "no transaction".
pub type TxId = u32;
/// Outside any transaction.
pub const NO_TX: TxId = 0;

/// One fired watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (or the watched path itself when the watch is registered).
    pub path: String,
    /// The token given to [`XenStore::watch`].
    pub token: String,
}

/// Access a domain has to a node; the first entry of a permission list is the owner (who always has
/// full access) and the default for domains not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: both.
    Both,
}

/// One entry of a node's permission list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    fn encode(self) -> String {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        format!("{c}{}", self.domid)
    }

    fn decode(s: &str) -> Option<Perm> {
        let access = match s.chars().next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        Some(Perm {
            domid: s[1..].parse().ok()?,
            access,
        })
    }
}

/// Watch events queued at most per connection.
pub const MAX_QUEUED_EVENTS: usize = 64;

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

#[derive(Debug, Clone)]
struct Watch {
    path: String,
    token: String,
    exact: bool,
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

    fn queue_event(&mut self, path: String, token: String) {
        let count = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        // Ours, and (for an exact watch) for the watched node itself?
        let wanted = self
            .watches
            .iter()
            .any(|w| w.token == token && (!w.exact || w.path == path));
        if !wanted {
            return count(&self.stats.events_filtered);
        }
        if self.events.iter().any(|e| e.path == path && e.token == token) {
            return count(&self.stats.events_coalesced);
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            if !self.events.iter().any(|e| e.token == token) && !self.overflowed.contains(&token) {
                self.overflowed.push(token);
            }
            return count(&self.stats.events_dropped);
        }
        self.events.push_back(WatchEvent { path, token });
        count(&self.stats.events_queued)
    }

    /// Events queued now (at most [`MAX_QUEUED_EVENTS`]).
    pub fn queued_events(&self) -> usize {
        self.events.len() + self.overflowed.len()
    }

    /// The value of `path`, or `None` if it does not exist.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Option<Vec<u8>>> {
        match self.request(Request::Read { path }, tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(Error::XenStore { error, .. }) if error == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value of `path` as text (None if missing).
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<Option<String>> {
        Ok(self
            .read(tx, path)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Writes `value` to `path`, creating it (and its parents).
    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        self.request(Request::Write { path, value }, tx, path).map(drop)
    }

    /// Creates a directory node.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(Request::Mkdir { path }, tx, path).map(drop)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(Request::Rm { path }, tx, path).map(drop)
    }

    /// The names of a node's children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>> {
        self.request(Request::Directory { path }, tx, path)
            .map(|p| split_nul(&p))
    }

    /// Sets a node's permission list (owner first).
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        let perms: Vec<String> = perms.iter().map(|p| p.encode()).collect();
        let perms: Vec<&str> = perms.iter().map(String::as_str).collect();
        self.request(Request::SetPerms { path, perms: &perms }, tx, path)
            .map(drop)
    }

    /// A node's permission list.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        let p = self.request(Request::GetPerms { path }, tx, path)?;
        split_nul(&p)
            .iter()
            .map(|s| {
                Perm::decode(s)
                    .ok_or_else(|| Error::XenStoreProtocol(format!("permission entry {s:?} of {path}")))
            })
            .collect()
    }

    /// Watches `path` (and everything below it); events carry `token`. XenStore fires each new watch
    /// once at registration.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        self.add_watch(path, token, false)
    }

    /// Watches the node `path` only: XenStore also reports changes below it (which whoever owns the
    /// node can create at will), and those events are dropped on arrival, never queued.
    pub fn watch_exact(&mut self, path: &str, token: &str) -> Result<()> {
        self.add_watch(path, token, true)
    }

    fn add_watch(&mut self, path: &str, token: &str, exact: bool) -> Result<()> {
        // Known before the request, so the registration event (which may come first) is kept.
        self.watches.push(Watch {
            path: path.to_owned(),
            token: token.to_owned(),
            exact,
        });
        let r = self
            .request(Request::Watch { path, token }, NO_TX, path)
            .map(drop);
        if r.is_err() {
            self.watches.pop();
        }
        r
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(Request::Unwatch { path, token }, NO_TX, path)?;
        self.watches.retain(|w| !(w.path == path && w.token == token));
        Ok(())
    }

    /// Whether watch events are already queued (so [`next_watch_event`](Self::next_watch_event)
    /// will not block).
    pub fn has_queued_events(&self) -> bool {
        !self.events.is_empty() || !self.overflowed.is_empty()
    }

    /// The next watch event: a queued one, or the next from the stream (blocking).
    pub fn next_watch_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if !self.overflowed.is_empty() {
                let token = self.overflowed.remove(0);
                let path = self
                    .watches
                    .iter()
                    .find(|w| w.token == token)
                    .map(|w| w.path.clone())
                    .unwrap_or_default();
                return Ok(WatchEvent { path, token });
            }
            let (h, p) = self.read_msg()?;
            match wire::classify(&h, &p) {
                Ok(Incoming::WatchEvent { path, token }) => self.queue_event(lossy(path), lossy(token)),
                Ok(Incoming::Reply) | Err(ring_protocol::Error::XsUnknownType { .. }) => {
                    return Err(Error::XenStoreProtocol(format!(
                        "unsolicited message of type {} #{} while waiting for a watch event",
                        h.type_, h.req_id
                    )));
                }
                Err(e) => return Err(Error::XenStoreProtocol(e.to_string())),
            }
        }
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId> {
        let p = self.request(Request::TransactionStart, NO_TX, "")?;
        wire::transaction_id(&p).ok_or_else(|| {
            Error::XenStoreProtocol(format!("transaction id {:?}", lossy(wire::first_string(&p))))
        })
    }

    /// Ends a transaction: commits it (`Ok(true)`), or reports a conflict (`Ok(false)`, `EAGAIN`:
    /// redo it), or aborts it when `commit` is false.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<bool> {
        match self.request(Request::TransactionEnd { commit }, tx, "") {
            Ok(_) => Ok(true),
            Err(Error::XenStore { error, .. }) if error == "EAGAIN" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` in a transaction, redoing it while the commit conflicts (at most `attempts` times).
    pub fn transaction<T>(
        &mut self,
        attempts: usize,
        mut f: impl FnMut(&mut Self, TxId) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..attempts.max(1) {
            let tx = self.transaction_start()?;
            let v = match f(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            if self.transaction_end(tx, true)? {
                return Ok(v);
            }
        }
        Err(Error::XenStoreProtocol(format!(
            "transaction still conflicting after {attempts} attempts"
        )))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A small xenstored for host tests: one store shared by any number of connections (a backend
    //! and a "guest" or "toolstack" writing beside it), nodes, permissions, watches (an event goes
    //! to the watching connection, before the reply of the write that fired it when that is the
    //! same connection), `@releaseDomain`, and transactions whose first commit conflicts. Every
    //! connection's requests are counted.

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use ring_protocol::abi::xenstore::{XsdSockmsg, XsdSockmsgType};
    use zerocopy::{FromBytes, IntoBytes};

    use super::{XenStore, split_nul};

    #[derive(Default)]
    struct State {
        nodes: BTreeMap<String, Vec<u8>>,
        perms: BTreeMap<String, Vec<String>>,
        /// (connection, path, token).
        watches: Vec<(usize, String, String)>,
        conns: Vec<Arc<Mutex<UnixStream>>>,
        commits: u32,
    }

    /// The store.
    #[derive(Clone, Default)]
    pub(crate) struct FakeXenstored {
        state: Arc<Mutex<State>>,
    }

    fn send(s: &Mutex<UnixStream>, ty: u32, req: u32, tx: u32, p: &[u8]) {
        let h = XsdSockmsg {
            type_: ty,
            req_id: req,
            tx_id: tx,
            len: p.len() as u32,
        };
        let mut m = h.as_bytes().to_vec();
        m.extend_from_slice(p);
        // A connection whose client went away just stops receiving.
        let _ = s.lock().unwrap().write_all(&m);
    }

    /// Whether a change of `changed` fires a watch on `watched` (the node, anything below it, or
    /// a removed ancestor).
    fn fires(watched: &str, changed: &str, removed: bool) -> bool {
        let below = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        below(changed, watched) || (removed && below(watched, changed))
    }

    impl FakeXenstored {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        /// A new client connection to the store.
        pub(crate) fn connect(&self) -> XenStore<UnixStream> {
            let (a, b) = UnixStream::pair().unwrap();
            let conn = {
                let mut st = self.state.lock().unwrap();
                st.conns.push(Arc::new(Mutex::new(b.try_clone().unwrap())));
                st.conns.len() - 1
            };
            let store = self.clone();
            std::thread::spawn(move || store.serve(conn, b));
            XenStore::new(a)
        }

        /// Fires `path` for every watch it concerns.
        fn fire(st: &State, path: &str, removed: bool) {
            for (c, w, token) in &st.watches {
                if fires(w, path, removed) {
                    let ev = format!("{path}\0{token}\0");
                    send(
                        &st.conns[*c],
                        XsdSockmsgType::WatchEvent as u32,
                        0,
                        0,
                        ev.as_bytes(),
                    );
                }
            }
        }

        /// The toolstack destroying domain `domid`: its home directory goes, `@releaseDomain` fires.
        pub(crate) fn release_domain(&self, domid: u16) {
            let mut st = self.state.lock().unwrap();
            let home = format!("/local/domain/{domid}");
            st.nodes
                .retain(|k, _| !(k == &home || k.starts_with(&format!("{home}/"))));
            Self::fire(&st, &home, true);
            Self::fire(&st, "@releaseDomain", false);
        }

        /// The value of a node, read directly.
        pub(crate) fn get(&self, path: &str) -> Option<Vec<u8>> {
            self.state.lock().unwrap().nodes.get(path).cloned()
        }

        fn serve(&self, conn: usize, mut s: UnixStream) {
            loop {
                let mut hdr = [0u8; 16];
                if s.read_exact(&mut hdr).is_err() {
                    let mut st = self.state.lock().unwrap();
                    st.watches.retain(|(c, _, _)| *c != conn);
                    return;
                }
                let h = XsdSockmsg::read_from_bytes(&hdr).unwrap();
                let mut p = vec![0; h.len as usize];
                s.read_exact(&mut p).unwrap();
                let parts = split_nul(&p);
                let path = parts.first().cloned().unwrap_or_default();
                let mut st = self.state.lock().unwrap();
                let out = st.conns[conn].clone();
                let ok = |body: &[u8]| {
                    if body.len() > super::XENSTORE_PAYLOAD_MAX {
                        // What xenstored answers when a reply would not fit a message.
                        send(&out, XsdSockmsgType::Error as u32, h.req_id, h.tx_id, b"E2BIG\0");
                    } else {
                        send(&out, h.type_, h.req_id, h.tx_id, body);
                    }
                };
                let err = |name: &str| {
                    send(
                        &out,
                        XsdSockmsgType::Error as u32,
                        h.req_id,
                        h.tx_id,
                        format!("{name}\0").as_bytes(),
                    )
                };
                match XsdSockmsgType::from_wire(h.type_).unwrap() {
                    XsdSockmsgType::Read => match st.nodes.get(&path) {
                        Some(v) => ok(&v.clone()),
                        None => err("ENOENT"),
                    },
                    XsdSockmsgType::Write => {
                        let at = p.iter().position(|&b| b == 0).unwrap() + 1;
                        st.nodes.insert(path.clone(), p[at..].to_vec());
                        Self::fire(&st, &path, false);
                        ok(b"OK\0");
                    }
                    XsdSockmsgType::Mkdir => {
                        st.nodes.entry(path.clone()).or_default();
                        Self::fire(&st, &path, false);
                        ok(b"OK\0");
                    }
                    XsdSockmsgType::Rm => {
                        st.nodes
                            .retain(|k, _| !(k == &path || k.starts_with(&format!("{path}/"))));
                        Self::fire(&st, &path, true);
                        ok(b"OK\0");
                    }
                    XsdSockmsgType::Directory => {
                        let prefix = format!("{path}/");
                        let mut names: Vec<String> = st
                            .nodes
                            .keys()
                            .filter_map(|k| k.strip_prefix(&prefix))
                            .map(|r| r.split('/').next().unwrap().to_owned())
                            .collect();
                        names.dedup();
                        let body: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
                        ok(&body);
                    }
                    XsdSockmsgType::SetPerms => {
                        st.perms.insert(path, parts[1..].to_vec());
                        ok(b"OK\0");
                    }
                    XsdSockmsgType::GetPerms => match st.perms.get(&path) {
                        Some(list) => {
                            let body: Vec<u8> = list.iter().flat_map(|n| n.bytes().chain([0])).collect();
                            ok(&body);
                        }
                        None => err("ENOENT"),
                    },
                    XsdSockmsgType::Watch => {
                        st.watches.push((conn, path.clone(), parts[1].clone()));
                        ok(b"OK\0");
                        let ev = format!("{path}\0{}\0", parts[1]);
                        send(&out, XsdSockmsgType::WatchEvent as u32, 0, 0, ev.as_bytes());
                    }
                    XsdSockmsgType::TransactionStart => ok(b"7\0"),
                    XsdSockmsgType::TransactionEnd => {
                        assert_eq!(h.tx_id, 7, "transaction id carried in the header");
                        st.commits += 1;
                        if st.commits == 1 {
                            err("EAGAIN");
                        } else {
                            ok(b"OK\0");
                        }
                    }
                    _ => err("EINVAL"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ring_protocol::abi::xenstore::XsdSockmsgType;
    use zerocopy::{FromBytes, IntoBytes};

    use super::*;

    fn client() -> XenStore<UnixStream> {
        fake::FakeXenstored::new().connect()
    }

    #[test]
    fn read_write_directory_perms_and_errors() {
        let mut xs = client();
        assert_eq!(
            xs.read(NO_TX, "/local/domain/1/device/vbd/51712/state").unwrap(),
            None
        );
        let be = "/local/domain/0/backend/vbd/1/51712";
        xs.mkdir(NO_TX, be).unwrap();
        xs.write(NO_TX, &format!("{be}/state"), b"2").unwrap();
        xs.write(NO_TX, &format!("{be}/sectors"), b"65536").unwrap();
        assert_eq!(
            xs.read_string(NO_TX, &format!("{be}/state")).unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(xs.directory(NO_TX, be).unwrap(), vec!["sectors", "state"]);
        let perms = [
            Perm {
                domid: 0,
                access: Access::None,
            },
            Perm {
                domid: 1,
                access: Access::Read,
            },
        ];
        xs.set_perms(NO_TX, be, &perms).unwrap();
        assert_eq!(xs.get_perms(NO_TX, be).unwrap(), perms);
        xs.rm(NO_TX, be).unwrap();
        assert!(xs.directory(NO_TX, be).unwrap().is_empty());
        let e = xs.unwatch("/x", "t").unwrap_err();
        assert!(
            e.to_string().contains("EINVAL") && e.to_string().contains("/x"),
            "{e}"
        );
    }

    #[test]
    fn watch_events_interleaved_with_replies_are_kept() {
        let mut xs = client();
        let fe = "/local/domain/1/device/vbd/51712";
        xs.watch(fe, "vbd-fe").unwrap();
        // The registration event, then one per write below the path, each sent before the reply.
        xs.write(NO_TX, &format!("{fe}/ring-ref"), b"8").unwrap();
        xs.write(NO_TX, "/elsewhere", b"x").unwrap();
        xs.write(NO_TX, &format!("{fe}/state"), b"3").unwrap();
        let got: Vec<WatchEvent> = (0..3).map(|_| xs.next_watch_event().unwrap()).collect();
        let want = [fe.to_owned(), format!("{fe}/ring-ref"), format!("{fe}/state")];
        assert_eq!(got.iter().map(|e| e.path.clone()).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|e| e.token == "vbd-fe"));
    }

    #[test]
    fn transactions_retry_on_conflict() {
        let mut xs = client();
        let mut runs = 0;
        let v = xs
            .transaction(3, |xs, tx| {
                runs += 1;
                assert_eq!(tx, 7);
                xs.write(tx, "/t/a", b"1")?;
                Ok(42)
            })
            .unwrap();
        assert_eq!(
            (v, runs),
            (42, 2),
            "first commit conflicted (EAGAIN), second committed"
        );
    }

    #[test]
    fn oversized_replies_and_requests_are_refused() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut xs = XenStore::new(a);
        let t = std::thread::spawn(move || {
            let mut hdr = [0u8; 16];
            b.read_exact(&mut hdr).unwrap();
            let h = XsdSockmsg::read_from_bytes(&hdr).unwrap();
            let mut p = vec![0; h.len as usize];
            b.read_exact(&mut p).unwrap();
            let bad = XsdSockmsg {
                type_: XsdSockmsgType::Read as u32,
                req_id: h.req_id,
                tx_id: 0,
                len: 1 << 20,
            };
            b.write_all(bad.as_bytes()).unwrap();
        });
        let e = xs.read(NO_TX, "/a").unwrap_err();
        assert!(e.to_string().contains("1048576"), "{e}");
        t.join().unwrap();
        let e = xs.write(NO_TX, "/a", &vec![b'x'; 5000]).unwrap_err();
        assert!(matches!(e, Error::XenStoreProtocol(_)), "{e}");
    }

    #[test]
    fn a_nul_in_a_path_or_token_is_refused_before_sending() {
        let store = fake::FakeXenstored::new();
        let mut xs = store.connect();
        let stats = xs.stats();
        for e in [
            xs.write(NO_TX, "/a\0/local/domain/0/x", b"1").unwrap_err(),
            xs.watch("/a", "t\0x").unwrap_err(),
        ] {
            assert!(e.to_string().contains("NUL"), "{e}");
        }
        assert_eq!(stats.requests.load(Ordering::Relaxed), 0, "nothing was sent");
        assert!(store.get("/a").is_none());
        // The connection is still in step.
        xs.write(NO_TX, "/a", b"1").unwrap();
        assert_eq!(xs.read(NO_TX, "/a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// Another domain writing under a watched node 10,000 times while the client is busy: the
    /// client's queue never holds more than [`MAX_QUEUED_EVENTS`], repeated paths merge, an exact
    /// watch drops events below its node on arrival, a token whose events were dropped still gets
    /// one, and everything is counted.
    #[test]
    fn xenstore_watch_flood_is_bounded_coalesced_filtered_and_counted() {
        let store = fake::FakeXenstored::new();
        let mut xs = store.connect();
        let fe = "/local/domain/7/device/vbd/51712";
        xs.watch_exact(&format!("{fe}/state"), "fe").unwrap();
        xs.watch("/local/domain/7/data", "data").unwrap();
        xs.watch("@releaseDomain", "release").unwrap();
        let stats = xs.stats();
        xs.read(NO_TX, "/nothing").unwrap();
        assert_eq!(xs.queued_events(), 3, "one registration event each");
        let guest = std::thread::spawn({
            let store = store.clone();
            move || {
                let mut g = store.connect();
                for i in 0..10_000 {
                    // Below the exact watch: filtered. The same node over and over: merged.
                    g.write(NO_TX, &format!("{fe}/state/junk{i}"), b"x").unwrap();
                    g.write(NO_TX, &format!("{fe}/state"), b"3").unwrap();
                    // Distinct nodes below the plain watch: the queue fills up.
                    g.write(NO_TX, &format!("/local/domain/7/data/n{i}"), b"x")
                        .unwrap();
                }
            }
        });
        // The client's own requests read the interleaved events meanwhile.
        while !guest.is_finished() {
            xs.read(NO_TX, "/nothing").unwrap();
            assert!(xs.queued_events() <= MAX_QUEUED_EVENTS + 1);
        }
        guest.join().unwrap();
        xs.read(NO_TX, "/nothing").unwrap();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert!(xs.queued_events() <= MAX_QUEUED_EVENTS + 1);
        assert_eq!(n(&stats.events_filtered), 10_000, "state/junk*");
        assert!(n(&stats.events_coalesced) >= 9_000, "state written 10,000 times");
        assert!(
            n(&stats.events_dropped) >= 10_000 - MAX_QUEUED_EVENTS as u64,
            "data/n*"
        );
        // The domain goes away while the queue is full: its token still gets an event.
        store.release_domain(7);
        xs.read(NO_TX, "/nothing").unwrap();
        let mut tokens = Vec::new();
        while xs.has_queued_events() {
            tokens.push(xs.next_watch_event().unwrap().token);
        }
        assert!(
            tokens.iter().any(|t| t == "release"),
            "the release survived a full queue"
        );
        assert!(tokens.iter().any(|t| t == "fe"));
        assert!(tokens.len() <= MAX_QUEUED_EVENTS + 1);
        assert!(store.get("/local/domain/7/data/n0").is_none());
    }
}
