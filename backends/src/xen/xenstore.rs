//! A XenStore client for dom0 backends, over a byte stream: `/dev/xen/xenbus` (the kernel's xenbus
//! device) or the xenstored Unix socket speak the same wire protocol (`xs_wire.h`, layouts in
//! [`ring_protocol::abi::xenstore`]): a 16-byte header (type, request id, transaction id, payload
//! length) and the payload, replies in request order, watch events interleaved at any point.
//!
//! Requests are synchronous; watch events that arrive while waiting for a reply are queued and handed
//! out by [`XenStore::next_watch_event`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use ring_protocol::abi::xenstore::{XENSTORE_PAYLOAD_MAX, XsdSockmsg, XsdSockmsgType};
use zerocopy::{FromBytes, IntoBytes};

use crate::{Error, Result};

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

/// A XenStore connection.
#[derive(Debug)]
pub struct XenStore<S: Read + Write> {
    stream: S,
    next_req: u32,
    events: VecDeque<WatchEvent>,
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
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl<S: Read + Write> XenStore<S> {
    /// A client over an already connected stream.
    pub fn new(stream: S) -> Self {
        XenStore {
            stream,
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    fn io(what: &str, error: std::io::Error) -> Error {
        Error::XenStoreIo {
            what: what.to_owned(),
            error,
        }
    }

    /// Reads one message: header, then payload (bounded by the protocol's maximum).
    fn read_msg(&mut self) -> Result<(XsdSockmsg, Vec<u8>)> {
        let mut hdr = [0u8; 16];
        self.stream
            .read_exact(&mut hdr)
            .map_err(|e| Self::io("reading a reply header", e))?;
        let hdr = XsdSockmsg::read_from_bytes(&hdr).expect("16 bytes");
        let len = hdr.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(Error::XenStoreProtocol(format!(
                "message type {} claims {len} payload bytes (maximum {XENSTORE_PAYLOAD_MAX})",
                hdr.type_
            )));
        }
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| Self::io("reading a reply payload", e))?;
        Ok((hdr, payload))
    }

    /// Sends one request and returns its reply's payload; queues watch events met on the way.
    fn request(&mut self, ty: XsdSockmsgType, tx: TxId, payload: &[u8], path: &str) -> Result<Vec<u8>> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(Error::XenStoreProtocol(format!(
                "{ty:?} of {path}: request payload of {} bytes exceeds {XENSTORE_PAYLOAD_MAX}",
                payload.len()
            )));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let hdr = XsdSockmsg {
            type_: ty as u32,
            req_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let mut msg = hdr.as_bytes().to_vec();
        msg.extend_from_slice(payload);
        // One write per message: the xenbus device wants whole messages.
        self.stream
            .write_all(&msg)
            .map_err(|e| Self::io("sending a request", e))?;
        loop {
            let (h, p) = self.read_msg()?;
            match XsdSockmsgType::from_wire(h.type_) {
                Some(XsdSockmsgType::WatchEvent) => self.queue_event(&p)?,
                Some(XsdSockmsgType::Error) if h.req_id == req_id => {
                    return Err(Error::XenStore {
                        op: ty,
                        path: path.to_owned(),
                        error: split_nul(&p).into_iter().next().unwrap_or_default(),
                    });
                }
                Some(t) if t == ty && h.req_id == req_id => return Ok(p),
                _ => {
                    return Err(Error::XenStoreProtocol(format!(
                        "expected the reply to {ty:?} #{req_id}, got type {} #{}",
                        h.type_, h.req_id
                    )));
                }
            }
        }
    }

    fn queue_event(&mut self, payload: &[u8]) -> Result<()> {
        let mut parts = split_nul(payload).into_iter();
        match (parts.next(), parts.next()) {
            (Some(path), Some(token)) => {
                self.events.push_back(WatchEvent { path, token });
                Ok(())
            }
            _ => Err(Error::XenStoreProtocol(format!(
                "watch event without path and token: {payload:?}"
            ))),
        }
    }

    fn path0(path: &str) -> Vec<u8> {
        let mut v = path.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// The value of `path`, or `None` if it does not exist.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Option<Vec<u8>>> {
        match self.request(XsdSockmsgType::Read, tx, &Self::path0(path), path) {
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
        let mut p = Self::path0(path);
        p.extend_from_slice(value);
        self.request(XsdSockmsgType::Write, tx, &p, path).map(drop)
    }

    /// Creates a directory node.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(XsdSockmsgType::Mkdir, tx, &Self::path0(path), path)
            .map(drop)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.request(XsdSockmsgType::Rm, tx, &Self::path0(path), path)
            .map(drop)
    }

    /// The names of a node's children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>> {
        self.request(XsdSockmsgType::Directory, tx, &Self::path0(path), path)
            .map(|p| split_nul(&p))
    }

    /// Sets a node's permission list (owner first).
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<()> {
        let mut p = Self::path0(path);
        for perm in perms {
            p.extend_from_slice(perm.encode().as_bytes());
            p.push(0);
        }
        self.request(XsdSockmsgType::SetPerms, tx, &p, path).map(drop)
    }

    /// A node's permission list.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>> {
        let p = self.request(XsdSockmsgType::GetPerms, tx, &Self::path0(path), path)?;
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
        let mut p = Self::path0(path);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.request(XsdSockmsgType::Watch, NO_TX, &p, path).map(drop)
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        let mut p = Self::path0(path);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        self.request(XsdSockmsgType::Unwatch, NO_TX, &p, path).map(drop)
    }

    /// Whether watch events are already queued (so [`next_watch_event`](Self::next_watch_event)
    /// will not block).
    pub fn has_queued_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next watch event: a queued one, or the next from the stream (blocking).
    pub fn next_watch_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let (h, p) = self.read_msg()?;
            if XsdSockmsgType::from_wire(h.type_) != Some(XsdSockmsgType::WatchEvent) {
                return Err(Error::XenStoreProtocol(format!(
                    "unsolicited message of type {} #{} while waiting for a watch event",
                    h.type_, h.req_id
                )));
            }
            self.queue_event(&p)?;
        }
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId> {
        let p = self.request(XsdSockmsgType::TransactionStart, NO_TX, b"\0", "")?;
        let s = split_nul(&p).into_iter().next().unwrap_or_default();
        s.parse()
            .map_err(|_| Error::XenStoreProtocol(format!("transaction id {s:?}")))
    }

    /// Ends a transaction: commits it (`Ok(true)`), or reports a conflict (`Ok(false)`, `EAGAIN`:
    /// redo it), or aborts it when `commit` is false.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<bool> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        match self.request(XsdSockmsgType::TransactionEnd, tx, arg, "") {
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
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A small xenstored: a flat map of nodes, permissions, watches (fired before the reply of the
    /// write that triggers them, the order a real daemon may use), transactions whose first commit
    /// conflicts.
    fn fake_daemon(mut s: UnixStream) {
        let mut nodes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut perms: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut watches: Vec<(String, String)> = Vec::new();
        let mut commits = 0;
        let send = |s: &mut UnixStream, ty: u32, req: u32, tx: u32, p: &[u8]| {
            let h = XsdSockmsg {
                type_: ty,
                req_id: req,
                tx_id: tx,
                len: p.len() as u32,
            };
            let mut m = h.as_bytes().to_vec();
            m.extend_from_slice(p);
            s.write_all(&m).unwrap();
        };
        loop {
            let mut hdr = [0u8; 16];
            if s.read_exact(&mut hdr).is_err() {
                return;
            }
            let h = XsdSockmsg::read_from_bytes(&hdr).unwrap();
            let mut p = vec![0; h.len as usize];
            s.read_exact(&mut p).unwrap();
            let parts = split_nul(&p);
            let path = parts.first().cloned().unwrap_or_default();
            let ok = |s: &mut UnixStream, body: &[u8]| send(s, h.type_, h.req_id, h.tx_id, body);
            let err = |s: &mut UnixStream, name: &str| {
                send(
                    s,
                    XsdSockmsgType::Error as u32,
                    h.req_id,
                    h.tx_id,
                    format!("{name}\0").as_bytes(),
                )
            };
            match XsdSockmsgType::from_wire(h.type_).unwrap() {
                XsdSockmsgType::Read => match nodes.get(&path) {
                    Some(v) => ok(&mut s, &v.clone()),
                    None => err(&mut s, "ENOENT"),
                },
                XsdSockmsgType::Write => {
                    let at = p.iter().position(|&b| b == 0).unwrap() + 1;
                    nodes.insert(path.clone(), p[at..].to_vec());
                    for (w, token) in &watches {
                        if path.starts_with(w.as_str()) {
                            send(
                                &mut s,
                                XsdSockmsgType::WatchEvent as u32,
                                0,
                                0,
                                format!("{path}\0{token}\0").as_bytes(),
                            );
                        }
                    }
                    ok(&mut s, b"OK\0");
                }
                XsdSockmsgType::Mkdir => {
                    nodes.entry(path).or_default();
                    ok(&mut s, b"OK\0");
                }
                XsdSockmsgType::Rm => {
                    nodes.retain(|k, _| !(k == &path || k.starts_with(&format!("{path}/"))));
                    ok(&mut s, b"OK\0");
                }
                XsdSockmsgType::Directory => {
                    let prefix = format!("{path}/");
                    let mut names: Vec<String> = nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(&prefix))
                        .map(|r| r.split('/').next().unwrap().to_owned())
                        .collect();
                    names.dedup();
                    let body: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
                    ok(&mut s, &body);
                }
                XsdSockmsgType::SetPerms => {
                    perms.insert(path, parts[1..].to_vec());
                    ok(&mut s, b"OK\0");
                }
                XsdSockmsgType::GetPerms => match perms.get(&path) {
                    Some(list) => {
                        let body: Vec<u8> = list.iter().flat_map(|n| n.bytes().chain([0])).collect();
                        ok(&mut s, &body);
                    }
                    None => err(&mut s, "ENOENT"),
                },
                XsdSockmsgType::Watch => {
                    watches.push((path.clone(), parts[1].clone()));
                    ok(&mut s, b"OK\0");
                    send(
                        &mut s,
                        XsdSockmsgType::WatchEvent as u32,
                        0,
                        0,
                        format!("{path}\0{}\0", parts[1]).as_bytes(),
                    );
                }
                XsdSockmsgType::TransactionStart => ok(&mut s, b"7\0"),
                XsdSockmsgType::TransactionEnd => {
                    assert_eq!(h.tx_id, 7, "transaction id carried in the header");
                    commits += 1;
                    if commits == 1 {
                        err(&mut s, "EAGAIN");
                    } else {
                        ok(&mut s, b"OK\0");
                    }
                }
                _ => err(&mut s, "EINVAL"),
            }
        }
    }

    fn client() -> XenStore<UnixStream> {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || fake_daemon(b));
        XenStore::new(a)
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
}
