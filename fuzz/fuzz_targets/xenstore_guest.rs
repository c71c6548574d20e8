//! The guest's XenStore client (`frontends/src/xen/xenstore.rs`) and the xenbus key readers built on
//! it (`frontends/src/xen/xenbus.rs`: `enumerate`, `read_state`, `read_number`, `read_flag`) against a
//! hostile daemon on the other end of the ring page: replies of any type, id and length, watch
//! events, errors, replies for requests that timed out, silence; delivered in pieces as ring space
//! allows.
//!
//! Invariants: nothing panics, every wait ends (the clock advances on each look); a header
//! claiming more than 4096 bytes halts the client and every later call fails; an honest reply's
//! payload comes back exactly (and a number or flag parses exactly when `parse_number` /
//! `parse_flag` accept its text); devices `enumerate` returns have an absolute backend path of at
//! most 256 bytes and a backend id below the reserved range; at most 64 watch events are ever
//! queued; and unless the byte stream was desynchronised or the client halted, a later honest
//! request gets its answer.
#![no_main]

use std::cell::{Cell, RefCell};

use libfuzzer_sys::fuzz_target;
use pvkit_frontends::wait::{WaitMode, Waiter};
use pvkit_frontends::xen::xenbus::{self, MAX_BACKEND_PATH, parse_flag, parse_number};
use pvkit_frontends::xen::xenstore::{NO_TX, XenStore};
use pvkit_fuzz::{Input, SharedMem};
use ring_protocol::abi::xen::DOMID_FIRST_RESERVED;
use ring_protocol::abi::xenstore::{XenstoreDomainInterface, XsdSockmsgType as T};
use ring_protocol::byte_ring::{Duplex, xenstore_daemon, xenstore_guest};
use ring_protocol::platform::Notify;

struct NoKick;

impl Notify for NoKick {
    fn notify(&self) -> ring_protocol::Result<()> {
        Ok(())
    }
}

/// The hostile daemon: answers each request the client wrote with what the input says.
struct Daemon<'a> {
    end: Duplex,
    input: Input<'a>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Bytes of the first message in `out` already written to the ring (a message cut there by
    /// [`Daemon::drop_pending`] breaks the framing).
    front_written: usize,
    /// Lengths of the messages in `out`, in order.
    out_lens: std::collections::VecDeque<usize>,
    /// The honest payload of the reply to the request in progress, if it got one.
    honest: Option<Vec<u8>>,
    /// Framing broken (a partial message, a header claiming more than follows): a later honest
    /// request may not get its answer.
    desync: bool,
    /// Answer everything honestly from now on.
    honest_mode: bool,
}

fn msg(ty: u32, req_id: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    for v in [ty, req_id, 0, len] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

const VALUES: [&[u8]; 8] = [
    b"4",
    b"1",
    b"0",
    b"/local/domain/0/backend/vbd/3/51712",
    b"51712\0",
    b" 7 ",
    b"18446744073709551616",
    b"0x10",
];

impl Daemon<'_> {
    /// Queues one message (or, for raw bytes, one piece) for the ring.
    fn send(&mut self, m: &[u8]) {
        self.out.extend_from_slice(m);
        self.out_lens.push_back(m.len());
    }

    /// Drops what is not written yet. A message already partly in the ring is cut: the stream is
    /// desynchronised from then on.
    fn drop_pending(&mut self) {
        if self.front_written > 0 {
            self.desync = true;
        }
        self.out.clear();
        self.out_lens.clear();
        self.front_written = 0;
    }

    fn answer(&mut self, ty: u32, req_id: u32) {
        if self.honest_mode {
            let p: &[u8] = if ty == T::Directory as u32 {
                b"51712\0"
            } else {
                b"4"
            };
            self.honest = Some(p.to_vec());
            self.send(&msg(ty, req_id, p.len() as u32, p));
            return;
        }
        let i = &mut self.input;
        match i.u8() % 12 {
            0..=3 => {
                let p = if i.bool() {
                    VALUES[i.below(VALUES.len())].to_vec()
                } else {
                    i.chunk(100).to_vec()
                };
                self.honest = Some(p.clone());
                self.send(&msg(ty, req_id, p.len() as u32, &p));
            }
            4 => {
                let name = ["ENOENT", "EAGAIN", "EACCES", "EWHAT"][i.below(4)];
                let m = msg(
                    T::Error as u32,
                    req_id,
                    name.len() as u32 + 1,
                    format!("{name}\0").as_bytes(),
                );
                self.send(&m);
            }
            5 | 6 => {
                let p = if i.bool() {
                    format!("/local/domain/3/x\0xenbus:{}\0", i.u8())
                } else {
                    String::from_utf8_lossy(i.chunk(30)).into_owned()
                };
                self.send(&msg(T::WatchEvent as u32, 0, p.len() as u32, p.as_bytes()));
                // The answer itself comes on a later look.
                self.answer(ty, req_id);
            }
            7 => {
                let p = i.chunk(8).to_vec();
                let t = if i.bool() { u32::from(i.u8() % 30) } else { ty };
                let id = if i.bool() {
                    req_id.wrapping_sub(u32::from(i.u8() % 3))
                } else {
                    i.u32()
                };
                self.send(&msg(t, id, p.len() as u32, &p));
            }
            8 => {
                // A header claiming anything.
                let len = if i.bool() {
                    i.u32()
                } else {
                    4090 + u32::from(i.u8() % 16)
                };
                let p = i.chunk(32).to_vec();
                if p.len() as u32 != len {
                    self.desync = true;
                }
                self.send(&msg(ty, req_id, len, &p));
            }
            9 => {
                // Raw bytes.
                self.desync = true;
                let raw = i.chunk(40).to_vec();
                self.send(&raw);
            }
            _ => {} // Silence: the request times out (its reply may come later: a late reply).
        }
    }

    /// Reads requests, answers them, and writes what fits of the answers.
    fn step(&mut self) {
        let mut buf = [0u8; 512];
        while let Ok(t) = self.end.rx.read(&mut buf) {
            if t.bytes == 0 {
                break;
            }
            self.inbuf.extend_from_slice(&buf[..t.bytes]);
        }
        while self.inbuf.len() >= 16 {
            let ty = u32::from_le_bytes(self.inbuf[0..4].try_into().expect("4"));
            let req_id = u32::from_le_bytes(self.inbuf[4..8].try_into().expect("4"));
            let len = u32::from_le_bytes(self.inbuf[12..16].try_into().expect("4")) as usize;
            assert!(len <= 4096, "the client sent a payload over the maximum");
            if self.inbuf.len() < 16 + len {
                break;
            }
            self.inbuf.drain(..16 + len);
            self.honest = None;
            self.answer(ty, req_id);
        }
        if !self.out.is_empty() {
            let n = self.end.tx.write(&self.out).map(|t| t.bytes).unwrap_or(0);
            self.out.drain(..n);
            // Account the written bytes to the queued messages.
            self.front_written += n;
            while let Some(&len) = self.out_lens.front() {
                if self.front_written < len {
                    break;
                }
                self.front_written -= len;
                self.out_lens.pop_front();
            }
        }
    }
}

/// A clock that advances on every reading, and runs the daemon whenever the client idles.
struct W<'a> {
    d: RefCell<Daemon<'a>>,
    now: Cell<u64>,
}

impl Waiter for W<'_> {
    fn now_us(&self) -> u64 {
        let t = self.now.get();
        self.now.set(t + 50);
        t
    }
    fn mode(&self) -> WaitMode {
        WaitMode::Poll
    }
    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        self.d.borrow_mut().step();
        ready()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n_calls = 1 + input.u8() % 12;
    let calls: Vec<u8> = (0..n_calls).map(|_| input.u8()).collect();
    let mem = SharedMem::new(size_of::<XenstoreDomainInterface>());
    // SAFETY: `mem` outlives both ends (dropped after them, at the end of this closure) and is
    // accessed only through them.
    let (guest, daemon) = unsafe {
        (
            xenstore_guest(mem.ptr().cast()),
            xenstore_daemon(mem.ptr().cast()),
        )
    };
    let w = W {
        d: RefCell::new(Daemon {
            end: daemon.expect("daemon end"),
            input,
            inbuf: Vec::new(),
            out: Vec::new(),
            front_written: 0,
            out_lens: std::collections::VecDeque::new(),
            honest: None,
            desync: false,
            honest_mode: false,
        }),
        now: Cell::new(0),
    };
    let mut xs = XenStore::new(guest.expect("guest end"), NoKick);
    xs.set_timeout_us(2_000);
    let honest = |w: &W<'_>| w.d.borrow().honest.clone();
    for c in calls {
        match c % 8 {
            0 => {
                if let (Ok(v), Some(h)) = (xs.read(&w, NO_TX, "device/vbd/51712/backend"), honest(&w)) {
                    assert_eq!(v, h, "read returns the reply's payload");
                }
            }
            1 => {
                let r = xenbus::read_number(&mut xs, &w, NO_TX, "device/vbd/51712/backend-id");
                if let (Ok(Some(n)), Some(h)) = (&r, honest(&w)) {
                    assert_eq!(parse_number(&h), Some(*n));
                }
                if let (Err(pvkit_frontends::Error::XenStore(f)), Some(h)) = (&r, honest(&w))
                    && f.op == "parse"
                {
                    assert_eq!(parse_number(&h), None, "a number refused");
                }
            }
            2 => {
                let r = xenbus::read_flag(&mut xs, &w, NO_TX, "backend/feature-x");
                if let (Ok(f), Some(h)) = (&r, honest(&w)) {
                    assert_eq!(parse_flag(&h), Some(*f));
                }
            }
            3 => {
                if let Ok(devs) = xenbus::enumerate(&mut xs, &w, "vbd") {
                    for d in devs {
                        assert!(
                            d.backend.starts_with('/')
                                && d.backend.len() <= MAX_BACKEND_PATH
                                && !d.backend.contains('\0')
                        );
                        assert!(d.backend_id < DOMID_FIRST_RESERVED);
                    }
                }
            }
            4 => {
                let _ = xenbus::read_state(&mut xs, &w, NO_TX, "backend/state");
            }
            5 => {
                let _ = xs.watch(&w, "backend/state", "xenbus:1");
            }
            6 => {
                let _ = xs.write(&w, NO_TX, "device/vbd/51712/state", b"3");
            }
            _ => {
                let _ = xs.transaction(&w, |xs, tx| xs.read(&w, tx, "x").map(drop));
            }
        }
        if let Some(e) = xs.halted().cloned() {
            assert!(
                xs.read(&w, NO_TX, "x").is_err(),
                "a halted client stays halted: {e}"
            );
        }
    }
    // The queue holds at most 64 events, whatever was sent.
    let mut queued = 0;
    xs.set_timeout_us(0);
    {
        let mut d = w.d.borrow_mut();
        d.honest_mode = true;
        d.drop_pending();
    }
    while xs.next_watch_event(&w, 0).is_ok() {
        queued += 1;
        assert!(queued <= 64 + 1, "{queued} watch events queued");
    }
    // Then an honest request is answered, unless the stream was broken or the client halted.
    if xs.halted().is_some() || w.d.borrow().desync {
        return;
    }
    xs.set_timeout_us(100_000);
    let mut ok = false;
    for _ in 0..80 {
        if xs
            .read(&w, NO_TX, "device/vbd/51712/state")
            .is_ok_and(|v| v == b"4")
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "an honest request after the input was never answered");
});
