//! The dom0 XenStore client's wire parsing (`backends/src/xen/xenstore/`) against a hostile
//! daemon: each reply, decided by the input when the client reads, is an honest answer, an error,
//! a watch event (for our tokens or not, for the watched node or below it), a reply of another
//! type or id, a header claiming any length, a short message, or the end of the stream; delivered
//! in pieces of any size.
//!
//! Invariants: no call panics or allocates what a header claims (payloads over 4096 bytes are a
//! protocol error before anything is read); an honest reply's payload comes back exactly (values,
//! directory entries, permission lists that round-trip through their encoding, transaction ids);
//! a reply of another type or id is a protocol error, never taken for the answer; watch events
//! handed out carry a token we registered (and the watched node itself for an exact watch); the
//! event queue never holds more than its bound plus one pending look per token.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use pvkit_backends::xen::Error;
use pvkit_backends::xen::xenstore::{Access, MAX_QUEUED_EVENTS, NO_TX, XenStore};
use pvkit_fuzz::Input;
use ring_protocol::abi::xenstore::XsdSockmsgType as T;

const PATHS: [&str; 4] = [
    "/local/domain/3/device/vbd/51712/state",
    "/local/domain/3/device/vbd/51712/state/x",
    "@releaseDomain",
    "/other",
];
const TOKENS: [&str; 3] = ["fe", "release", "nobody"];

/// What the client expects back from the honest daemon, per request.
#[derive(Debug, Clone, Default)]
struct Last {
    ty: u32,
    req_id: u32,
}

struct Daemon<'a> {
    input: Input<'a>,
    /// Bytes of the current reply not yet read.
    out: Vec<u8>,
    at: usize,
    /// Requests written by the client (parsed from its writes).
    written: Vec<u8>,
    last: Last,
    /// The honest payload of the reply being sent, when it is an honest one.
    honest: Option<Vec<u8>>,
    /// A reply of another type or id, or a header of any length, was sent for this request: what
    /// the client takes as its answer is not known here.
    tainted: bool,
    eof: bool,
}

fn msg(ty: u32, req_id: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    for v in [ty, req_id, 0, len] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

impl Daemon<'_> {
    fn next_reply(&mut self) {
        self.at = 0;
        self.honest = None;
        let Last { ty, req_id } = self.last.clone();
        let i = &mut self.input;
        self.out = match i.u8() % 10 {
            0..=3 => {
                let p = i.chunk(200).to_vec();
                self.honest = Some(p.clone());
                msg(ty, req_id, p.len() as u32, &p)
            }
            4 => {
                let name = ["ENOENT", "EAGAIN", "EACCES", "EINVAL"][i.below(4)];
                msg(
                    T::Error as u32,
                    req_id,
                    name.len() as u32 + 1,
                    format!("{name}\0").as_bytes(),
                )
            }
            5 | 6 => {
                let path = PATHS[i.below(PATHS.len())];
                let token = TOKENS[i.below(TOKENS.len())];
                let p = format!("{path}\0{token}\0");
                msg(T::WatchEvent as u32, 0, p.len() as u32, p.as_bytes())
            }
            7 => {
                // Another type or another id.
                self.tainted = true;
                let p = i.chunk(16).to_vec();
                let (t, id) = if i.bool() {
                    (u32::from(i.u8()), req_id)
                } else {
                    (ty, req_id.wrapping_add(1 + u32::from(i.u8())))
                };
                msg(t, id, p.len() as u32, &p)
            }
            8 => {
                // A header claiming anything, with what follows.
                self.tainted = true;
                let len = if i.bool() {
                    i.u32()
                } else {
                    4000 + u32::from(i.u16() % 200)
                };
                let p = i.chunk(64).to_vec();
                msg(
                    u32::from(i.u8() % 24),
                    if i.bool() { req_id } else { i.u32() },
                    len,
                    &p,
                )
            }
            _ => {
                self.eof = true;
                Vec::new()
            }
        };
    }
}

/// The stream the client owns; the harness keeps another handle to see what the daemon sent.
struct Stream<'a>(Rc<RefCell<Daemon<'a>>>);

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Daemon<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.out.len() {
            if self.eof {
                return Ok(0);
            }
            self.next_reply();
            if self.eof {
                return Ok(0);
            }
        }
        // In pieces: the stream may deliver any amount at a time.
        let piece = 1 + usize::from(self.input.u8() % 32) * 8;
        let n = buf.len().min(self.out.len() - self.at).min(piece);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Daemon<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        // One whole message per write (the client's contract with the xenbus device).
        assert!(buf.len() >= 16, "a request written in pieces");
        let ty = u32::from_le_bytes(buf[0..4].try_into().expect("4"));
        let req_id = u32::from_le_bytes(buf[4..8].try_into().expect("4"));
        let len = u32::from_le_bytes(buf[12..16].try_into().expect("4")) as usize;
        assert_eq!(buf.len(), 16 + len, "a request's length field");
        assert!(len <= 4096, "request payload over the maximum");
        self.last = Last { ty, req_id };
        self.tainted = false;
        // Whatever was left of the previous reply is not delivered any more.
        self.out.clear();
        self.at = 0;
        Ok(buf.len())
    }
}

fn split(p: &[u8]) -> Vec<String> {
    let body = p.strip_suffix(&[0]).unwrap_or(p);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut script = Input::new(data);
    let n_calls = script.u8() % 24;
    let calls: Vec<u8> = (0..n_calls).map(|_| script.u8()).collect();
    let daemon = Rc::new(RefCell::new(Daemon {
        input: script,
        out: Vec::new(),
        at: 0,
        written: Vec::new(),
        last: Last::default(),
        honest: None,
        tainted: false,
        eof: false,
    }));
    let mut xs = XenStore::new(Stream(daemon.clone()));
    let mut watched: Vec<(&str, &str, bool)> = Vec::new();
    let mut ever: BTreeSet<&str> = BTreeSet::new();
    for c in calls {
        let path = PATHS[usize::from(c >> 4) % PATHS.len()];
        let token = TOKENS[usize::from(c >> 6) % 2];
        // Each call is checked against the reply the daemon chose for it, when honest.
        let honest = |_: &XenStore<Stream<'_>>| -> Option<Vec<u8>> {
            let d = daemon.borrow();
            if d.tainted { None } else { d.honest.clone() }
        };
        match c % 9 {
            0 => {
                let r = xs.read(NO_TX, path);
                if let (Ok(Some(v)), Some(h)) = (&r, honest(&xs)) {
                    assert!(
                        v == &h,
                        "read returns the reply's payload ({} bytes, {} sent)",
                        v.len(),
                        h.len()
                    );
                }
            }
            1 => {
                let _ = xs.write(NO_TX, path, b"4");
            }
            2 => {
                let r = xs.directory(NO_TX, path);
                if let (Ok(v), Some(h)) = (&r, honest(&xs)) {
                    assert_eq!(v, &split(&h));
                }
            }
            3 => match xs.get_perms(NO_TX, path) {
                Ok(perms) if honest(&xs).is_some() => {
                    // Each entry is a letter and a domain id, as the reply said.
                    let entries = split(&honest(&xs).expect("checked"));
                    assert_eq!(perms.len(), entries.len());
                    for (p, e) in perms.iter().zip(&entries) {
                        let c = match p.access {
                            Access::None => 'n',
                            Access::Read => 'r',
                            Access::Write => 'w',
                            Access::Both => 'b',
                        };
                        assert!(e.starts_with(c), "{p:?} from {e:?}");
                        assert_eq!(e[1..].parse::<u16>().ok(), Some(p.domid), "{p:?} from {e:?}");
                    }
                }
                Ok(_)
                | Err(Error::XenStoreProtocol(_) | Error::XenStore { .. } | Error::XenStoreIo { .. }) => {}
                Err(e) => panic!("get_perms: unexpected error {e}"),
            },
            4 | 5 => {
                let exact = c % 9 == 5;
                ever.insert(token);
                let r = if exact {
                    xs.watch_exact(path, token)
                } else {
                    xs.watch(path, token)
                };
                if r.is_ok() {
                    watched.push((path, token, exact));
                }
            }
            6 => {
                if xs.unwatch(path, token).is_ok() {
                    watched.retain(|w| !(w.0 == path && w.1 == token));
                }
            }
            7 => {
                if let Ok(tx) = xs.transaction_start()
                    && let Some(h) = honest(&xs)
                {
                    assert_eq!(
                        split(&h).first().and_then(|t| t.parse().ok()),
                        Some(tx),
                        "transaction id parsed"
                    );
                    let _ = xs.transaction_end(tx, c & 0x10 != 0);
                }
            }
            _ => {
                if xs.has_queued_events()
                    && let Ok(e) = xs.next_watch_event()
                {
                    // Only for tokens we registered.
                    assert!(
                        ever.contains(e.token.as_str()),
                        "event for a token never registered: {e:?}"
                    );
                }
            }
        }
        assert!(
            xs.queued_events() <= MAX_QUEUED_EVENTS + ever.len(),
            "{} events queued",
            xs.queued_events()
        );
    }
});
