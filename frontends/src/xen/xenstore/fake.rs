//! A fake XenStore daemon on the daemon end of a ring page, for host tests: a tree of nodes,
//! transactions (with injectable `EAGAIN` conflicts), watches (fired on registration and on every
//! change below the watched path) and `XS_ERROR` replies, stepped explicitly by the test's waiter.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

use ring_protocol::abi::xenstore::{XenstoreDomainInterface, XsdSockmsg, XsdSockmsgType};
use ring_protocol::byte_ring::{Duplex, xenstore_daemon, xenstore_guest};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The fake daemon.
#[derive(Debug)]
pub struct FakeXenStore {
    end: Duplex,
    inbuf: Vec<u8>,
    outbuf: VecDeque<u8>,
    /// The committed tree: absolute path -> value.
    pub tree: BTreeMap<String, Vec<u8>>,
    generation: u64,
    txs: BTreeMap<u32, (BTreeMap<String, Vec<u8>>, u64)>,
    next_tx: u32,
    watches: Vec<(String, String)>,
    /// The client's domain id (relative paths live under `/local/domain/<domid>`).
    pub domid: u16,
    /// Commits to fail with `EAGAIN` before letting one through.
    pub fail_commits: u32,
    /// Requests handled.
    pub handled: u64,
    /// When set, the daemon stops answering.
    pub dead: bool,
}

impl FakeXenStore {
    /// A daemon for domain `domid` and the client's end of its (leaked, test-only) ring page.
    pub fn new(domid: u16) -> (Self, Duplex) {
        let page: &'static mut XenstoreDomainInterface =
            Box::leak(Box::new(XenstoreDomainInterface::new_zeroed()));
        let p = NonNull::from(page);
        // SAFETY: the page is leaked (lives forever) and accessed only through this end and the
        // daemon end below.
        let guest = unsafe { xenstore_guest(p) }.expect("guest end");
        // SAFETY: as above; the only daemon end.
        let end = unsafe { xenstore_daemon(p) }.expect("daemon end");
        let mut tree = BTreeMap::new();
        tree.insert(format!("/local/domain/{domid}"), Vec::new());
        (
            Self {
                end,
                inbuf: Vec::new(),
                outbuf: VecDeque::new(),
                tree,
                generation: 0,
                txs: BTreeMap::new(),
                next_tx: 1,
                watches: Vec::new(),
                domid,
                fail_commits: 0,
                handled: 0,
                dead: false,
            },
            guest,
        )
    }

    fn abs(&self, path: &str) -> String {
        if path.starts_with('/') {
            String::from(path)
        } else {
            format!("/local/domain/{}/{path}", self.domid)
        }
    }

    /// Queues raw bytes for the client (hostile-peer tests).
    pub fn inject_raw(&mut self, bytes: &[u8]) {
        self.outbuf.extend(bytes);
    }

    fn reply(&mut self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        let h = XsdSockmsg {
            type_: ty,
            req_id,
            tx_id,
            len: payload.len() as u32,
        };
        self.outbuf.extend(h.as_bytes());
        self.outbuf.extend(payload);
    }

    fn error(&mut self, req_id: u32, tx_id: u32, name: &str) {
        let mut p = Vec::from(name.as_bytes());
        p.push(0);
        self.reply(XsdSockmsgType::Error as u32, req_id, tx_id, &p);
    }

    fn fire(&mut self, path: &str) {
        let hits: Vec<(String, String)> = self
            .watches
            .iter()
            .filter(|(w, _)| path == w || path.starts_with(&format!("{w}/")))
            .cloned()
            .collect();
        for (_, token) in hits {
            self.event(path, &token);
        }
    }

    fn event(&mut self, path: &str, token: &str) {
        let p = format!("{path}\0{token}\0");
        self.reply(XsdSockmsgType::WatchEvent as u32, 0, 0, p.as_bytes());
    }

    /// Writes a node as another domain would (fires watches).
    pub fn external_write(&mut self, path: &str, value: &[u8]) {
        let path = self.abs(path);
        self.tree.insert(path.clone(), Vec::from(value));
        self.generation += 1;
        self.fire(&path);
    }

    fn tree_for(&mut self, tx: u32) -> Option<&mut BTreeMap<String, Vec<u8>>> {
        if tx == 0 {
            Some(&mut self.tree)
        } else {
            self.txs.get_mut(&tx).map(|(t, _)| t)
        }
    }

    fn handle(&mut self, h: XsdSockmsg, payload: &[u8]) {
        self.handled += 1;
        let mut parts = payload.split(|&b| b == 0);
        let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let ty = XsdSockmsgType::from_wire(h.type_);
        let (req, tx) = (h.req_id, h.tx_id);
        if tx != 0 && !self.txs.contains_key(&tx) {
            return self.error(req, tx, "ENOENT");
        }
        match ty {
            Some(XsdSockmsgType::Read) => {
                let path = self.abs(&first);
                match self.tree_for(tx).and_then(|t| t.get(&path).cloned()) {
                    Some(v) => self.reply(h.type_, req, tx, &v),
                    None => self.error(req, tx, "ENOENT"),
                }
            }
            Some(XsdSockmsgType::Write | XsdSockmsgType::Mkdir) => {
                let path = self.abs(&first);
                let value = if ty == Some(XsdSockmsgType::Write) {
                    Vec::from(&payload[first.len() + 1..])
                } else {
                    Vec::new()
                };
                let t = self.tree_for(tx).expect("checked");
                t.insert(path.clone(), value);
                if tx == 0 {
                    self.generation += 1;
                    self.fire(&path);
                }
                self.reply(h.type_, req, tx, b"OK\0");
            }
            Some(XsdSockmsgType::Rm) => {
                let path = self.abs(&first);
                let t = self.tree_for(tx).expect("checked");
                let prefix = format!("{path}/");
                let before = t.len();
                t.retain(|k, _| *k != path && !k.starts_with(&prefix));
                if before == t.len() {
                    return self.error(req, tx, "ENOENT");
                }
                if tx == 0 {
                    self.generation += 1;
                    self.fire(&path);
                }
                self.reply(h.type_, req, tx, b"OK\0");
            }
            Some(XsdSockmsgType::Directory) => {
                let path = self.abs(&first);
                let t = self.tree_for(tx).expect("checked");
                let prefix = format!("{path}/");
                let mut names: Vec<String> = t
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(|rest| String::from(rest.split('/').next().unwrap_or_default()))
                    .collect();
                names.dedup();
                let exists = t.contains_key(&path) || !names.is_empty();
                if !exists {
                    return self.error(req, tx, "ENOENT");
                }
                let mut p = Vec::new();
                for n in names {
                    p.extend_from_slice(n.as_bytes());
                    p.push(0);
                }
                self.reply(h.type_, req, tx, &p);
            }
            Some(XsdSockmsgType::Watch) => {
                let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let path = self.abs(&first);
                self.watches.push((path.clone(), token.clone()));
                self.reply(h.type_, req, tx, b"OK\0");
                self.event(&path, &token);
            }
            Some(XsdSockmsgType::Unwatch) => {
                let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let path = self.abs(&first);
                self.watches.retain(|(p, t)| !(*p == path && *t == token));
                self.reply(h.type_, req, tx, b"OK\0");
            }
            Some(XsdSockmsgType::TransactionStart) => {
                let id = self.next_tx;
                self.next_tx += 1;
                self.txs.insert(id, (self.tree.clone(), self.generation));
                self.reply(h.type_, req, 0, format!("{id}\0").as_bytes());
            }
            Some(XsdSockmsgType::TransactionEnd) => {
                let (snapshot, gen0) = self.txs.remove(&tx).expect("checked");
                if first == "T" {
                    if self.fail_commits > 0 || gen0 != self.generation {
                        self.fail_commits = self.fail_commits.saturating_sub(1);
                        return self.error(req, 0, "EAGAIN");
                    }
                    let changed: Vec<String> = snapshot
                        .iter()
                        .filter(|(k, v)| self.tree.get(*k) != Some(*v))
                        .map(|(k, _)| k.clone())
                        .collect();
                    self.tree = snapshot;
                    self.generation += 1;
                    for c in changed {
                        self.fire(&c);
                    }
                }
                self.reply(h.type_, req, 0, b"OK\0");
            }
            Some(XsdSockmsgType::GetDomainPath) => {
                self.reply(h.type_, req, 0, format!("/local/domain/{first}\0").as_bytes());
            }
            _ => self.error(req, tx, "EINVAL"),
        }
    }

    /// Handles every complete request that arrived and sends what fits of the replies.
    pub fn step(&mut self) {
        if self.dead {
            return;
        }
        let mut buf = [0u8; 512];
        while let Ok(t) = self.end.rx.read(&mut buf) {
            if t.bytes == 0 {
                break;
            }
            self.inbuf.extend_from_slice(&buf[..t.bytes]);
        }
        while self.inbuf.len() >= 16 {
            let h = XsdSockmsg::read_from_bytes(&self.inbuf[..16]).expect("16 bytes");
            let len = h.len as usize;
            if self.inbuf.len() < 16 + len {
                break;
            }
            let payload: Vec<u8> = self.inbuf[16..16 + len].to_vec();
            self.inbuf.drain(..16 + len);
            self.handle(h, &payload);
        }
        while !self.outbuf.is_empty() {
            let chunk: Vec<u8> = self.outbuf.iter().copied().take(512).collect();
            let n = self.end.tx.write(&chunk).map(|t| t.bytes).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.outbuf.drain(..n);
        }
    }
}
