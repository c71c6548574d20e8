use alloc::string::String;
use alloc::vec;
use core::cell::{Cell, RefCell};

use ring_protocol::abi::xenstore::XsdSockmsgType;
use ring_protocol::platform::Notify;
use zerocopy::IntoBytes;

use super::fake::FakeXenStore;
use super::*;
use crate::wait::{WaitMode, Waiter};

/// Counts notifications.
#[derive(Debug, Default)]
struct Kicks(Cell<u64>);

impl Notify for &Kicks {
    fn notify(&self) -> ring_protocol::Result<()> {
        self.0.set(self.0.get() + 1);
        Ok(())
    }
}

/// A waiter that runs the fake daemon whenever the client idles; its clock advances 10 us a reading.
struct DaemonWaiter {
    daemon: RefCell<FakeXenStore>,
    now: Cell<u64>,
}

impl Waiter for DaemonWaiter {
    fn now_us(&self) -> u64 {
        let t = self.now.get();
        self.now.set(t + 10);
        t
    }

    fn mode(&self) -> WaitMode {
        WaitMode::Poll
    }

    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        self.daemon.borrow_mut().step();
        ready()
    }
}

/// A message header as a (hostile) daemon writes it, outside any transaction.
fn header(type_: u32, req_id: u32, len: u32) -> XsdSockmsg {
    XsdSockmsg {
        type_,
        req_id,
        tx_id: 0,
        len,
    }
}

fn setup(kicks: &Kicks) -> (XenStore<&Kicks>, DaemonWaiter) {
    let (daemon, ring) = FakeXenStore::new(7);
    (
        XenStore::new(ring, kicks),
        DaemonWaiter {
            daemon: RefCell::new(daemon),
            now: Cell::new(0),
        },
    )
}

#[test]
fn read_write_directory_and_typed_errors() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "device/vbd/768/state", b"1").unwrap();
    xs.write(&w, NO_TX, "device/vbd/832/state", b"1").unwrap();
    xs.write(&w, NO_TX, "/local/domain/7/name", b"guest-seven")
        .unwrap();
    assert_eq!(xs.read(&w, NO_TX, "device/vbd/768/state").unwrap(), b"1");
    assert_eq!(xs.read_string(&w, NO_TX, "name").unwrap(), "guest-seven");
    assert_eq!(xs.read_u64(&w, NO_TX, "device/vbd/832/state").unwrap(), 1);
    assert_eq!(
        xs.directory(&w, NO_TX, "device/vbd").unwrap(),
        vec![String::from("768"), String::from("832")]
    );
    assert_eq!(xs.domain_path(&w, 7).unwrap(), "/local/domain/7");
    match xs.read(&w, NO_TX, "device/vif/0/mac").unwrap_err() {
        Error::XenStore(f) => {
            assert_eq!(
                (f.op, f.path.as_str(), f.kind),
                ("read", "device/vif/0/mac", XsErrorKind::NotFound)
            );
        }
        other => panic!("expected a XenStore error, got {other:?}"),
    }
    xs.rm(&w, NO_TX, "device/vbd/832").unwrap();
    assert_eq!(
        xs.directory(&w, NO_TX, "device/vbd").unwrap(),
        vec![String::from("768")]
    );
    let e = xs.rm(&w, NO_TX, "device/vbd/832").unwrap_err();
    assert!(xs_kind(&e) == Some(&XsErrorKind::NotFound), "{e:?}");
    assert_eq!(xs.stats().requests, 12);
    assert!(kicks.0.get() >= 12, "every request notifies the daemon");
}

#[test]
fn error_names_map_both_ways() {
    for e in XSD_ERRORS {
        let k = XsErrorKind::from_name(e.name);
        assert!(!matches!(k, XsErrorKind::Other(_)), "{} unmapped", e.name);
        assert_eq!(k.name(), e.name);
    }
    assert_eq!(
        XsErrorKind::from_name("EWHATEVER"),
        XsErrorKind::Other(String::from("EWHATEVER"))
    );
}

#[test]
fn watch_fires_on_registration_and_on_a_peer_write() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.watch(&w, "data/ping", "tok-1").unwrap();
    let first = xs.next_watch_event(&w, 1000).unwrap();
    assert_eq!(
        first,
        WatchEvent {
            path: String::from("/local/domain/7/data/ping"),
            token: String::from("tok-1")
        }
    );
    // Nothing more until someone writes.
    assert!(matches!(
        xs.next_watch_event(&w, 1000),
        Err(Error::Timeout { .. })
    ));
    w.daemon.borrow_mut().external_write("data/ping/value", b"pong");
    let ev = xs.next_watch_event(&w, 1000).unwrap();
    assert_eq!(ev.path, "/local/domain/7/data/ping/value");
    assert_eq!(ev.token, "tok-1");
    assert_eq!(xs.read(&w, NO_TX, "data/ping/value").unwrap(), b"pong");
    // A watch event arriving while a request waits for its reply is queued, not lost.
    w.daemon.borrow_mut().external_write("data/ping", b"again");
    assert_eq!(xs.read(&w, NO_TX, "data/ping").unwrap(), b"again");
    assert_eq!(
        xs.next_watch_event(&w, 1000).unwrap().path,
        "/local/domain/7/data/ping"
    );
    xs.unwatch(&w, "data/ping", "tok-1").unwrap();
    w.daemon.borrow_mut().external_write("data/ping", b"ignored");
    assert!(matches!(
        xs.next_watch_event(&w, 1000),
        Err(Error::Timeout { .. })
    ));
    assert_eq!(xs.stats().watch_events, 3);
}

#[test]
fn transaction_retries_on_eagain_and_commits_once() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "counter", b"10").unwrap();
    w.daemon.borrow_mut().fail_commits = 2;
    let mut runs = 0;
    let v = xs
        .transaction(&w, |xs, tx| {
            runs += 1;
            let n = xs.read_u64(&w, tx, "counter")?;
            xs.write(&w, tx, "counter", format!("{}", n + 1).as_bytes())?;
            Ok(n + 1)
        })
        .unwrap();
    assert_eq!((v, runs, xs.stats().retries), (11, 3, 2));
    assert_eq!(xs.read(&w, NO_TX, "counter").unwrap(), b"11");
}

#[test]
fn transaction_sees_a_conflicting_write_and_gives_up_after_the_limit() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "counter", b"0").unwrap();
    // A peer writes between our read and our commit every time: each commit conflicts.
    let e = xs
        .transaction(&w, |xs, tx| {
            let n = xs.read_u64(&w, tx, "counter")?;
            w.daemon.borrow_mut().external_write("counter", b"100");
            xs.write(&w, tx, "counter", format!("{}", n + 1).as_bytes())
        })
        .unwrap_err();
    assert!(xs_kind(&e) == Some(&XsErrorKind::Again), "{e:?}");
    assert_eq!(xs.stats().retries, u64::from(TRANSACTION_RETRIES));
    assert_eq!(
        xs.read(&w, NO_TX, "counter").unwrap(),
        b"100",
        "no aborted write leaked"
    );
    // An error inside the body aborts: nothing of it is committed.
    let e = xs
        .transaction(&w, |xs, tx| {
            xs.write(&w, tx, "half", b"1")?;
            xs.read(&w, tx, "missing").map(|_| ())
        })
        .unwrap_err();
    assert!(xs_kind(&e) == Some(&XsErrorKind::NotFound));
    assert!(xs_kind(&xs.read(&w, NO_TX, "half").unwrap_err()) == Some(&XsErrorKind::NotFound));
}

#[test]
fn messages_longer_than_the_ring_go_through_in_pieces() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    let value: alloc::vec::Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    xs.write(&w, NO_TX, "big", &value).unwrap();
    assert_eq!(xs.read(&w, NO_TX, "big").unwrap(), value);
}

#[test]
fn hostile_daemon_replies_are_rejected_and_silence_times_out() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    // A header claiming 5000 payload bytes.
    let h = header(XsdSockmsgType::Read as u32, 1, 5000);
    w.daemon.borrow_mut().dead = false;
    w.daemon.borrow_mut().inject_raw(h.as_bytes());
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "reply payload length",
                value: 5000,
                ..
            }
        ),
        "{e:?}"
    );

    let (mut xs, w) = setup(&kicks);
    let h = header(XsdSockmsgType::Read as u32, 99, 0);
    w.daemon.borrow_mut().inject_raw(h.as_bytes());
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert!(matches!(e, Error::Protocol { value: 99, .. }), "{e:?}");

    let (mut xs, w) = setup(&kicks);
    w.daemon.borrow_mut().dead = true;
    xs.set_timeout_us(500);
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "a XenStore reply",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn hostile_daemon_oversized_reply_halts_the_client_for_good() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    let h = header(XsdSockmsgType::Read as u32, 1, u32::MAX);
    w.daemon.borrow_mut().inject_raw(h.as_bytes());
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xenstore",
            what: "reply payload length",
            value: u64::from(u32::MAX)
        }
    );
    // The stream cannot be resynchronised: every later call fails the same way, at once.
    assert_eq!(xs.halted(), Some(&e));
    let requests = xs.stats().requests;
    assert_eq!(xs.write(&w, NO_TX, "y", b"1").unwrap_err(), e);
    assert_eq!(xs.next_watch_event(&w, 1000).unwrap_err(), e);
    assert_eq!(xs.stats().requests, requests, "nothing more sent");
}

#[test]
fn hostile_daemon_late_reply_to_a_timed_out_request_is_dropped_not_taken_for_another() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "a", b"first").unwrap();
    xs.write(&w, NO_TX, "b", b"second").unwrap();
    w.daemon.borrow_mut().dead = true;
    xs.set_timeout_us(500);
    assert!(matches!(xs.read(&w, NO_TX, "a"), Err(Error::Timeout { .. })));
    // The daemon wakes up and answers both the old request and the new one.
    w.daemon.borrow_mut().dead = false;
    xs.set_timeout_us(100_000);
    assert_eq!(xs.read(&w, NO_TX, "b").unwrap(), b"second");
    assert_eq!(xs.stats().late_replies, 1);
    assert_eq!(xs.read(&w, NO_TX, "a").unwrap(), b"first");
}

/// Ten requests time out in a row, then the daemon answers all of them: every one of those
/// replies is dropped as late and the next request gets its own answer. (A client that remembered
/// only the last eight failed requests took the ninth and tenth replies as protocol errors of the
/// requests waiting, whose replies were then late in turn, for good: the `xenstore_guest` fuzz
/// target.)
#[test]
fn hostile_daemon_replies_to_many_timed_out_requests_are_all_dropped_as_late() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "a", b"first").unwrap();
    w.daemon.borrow_mut().dead = true;
    xs.set_timeout_us(500);
    for _ in 0..10 {
        assert!(matches!(xs.read(&w, NO_TX, "a"), Err(Error::Timeout { .. })));
    }
    w.daemon.borrow_mut().dead = false;
    xs.set_timeout_us(100_000);
    assert_eq!(xs.read(&w, NO_TX, "a").unwrap(), b"first");
    assert_eq!(xs.stats().late_replies, 10);
    // A reply to a request never sent (a later id) is still refused.
    let h = header(XsdSockmsgType::Read as u32, 1000, 0);
    w.daemon.borrow_mut().inject_raw(h.as_bytes());
    let e = xs.read(&w, NO_TX, "a").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "reply to an unknown request id",
                value: 1000,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn hostile_daemon_reply_of_another_type_or_to_no_request_is_refused() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    // Our first request has id 1; a "directory" reply to our "read".
    let h = header(XsdSockmsgType::Directory as u32, 1, 0);
    w.daemon.borrow_mut().inject_raw(h.as_bytes());
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xenstore",
            what: "reply of another type than the request",
            value: XsdSockmsgType::Directory as u64
        }
    );
    // An unknown message type.
    let (mut xs, w) = setup(&kicks);
    let h = header(999, 1, 3);
    let mut raw = alloc::vec::Vec::from(h.as_bytes());
    raw.extend_from_slice(b"abc");
    w.daemon.borrow_mut().inject_raw(&raw);
    let e = xs.read(&w, NO_TX, "x").unwrap_err();
    assert!(matches!(e, Error::Protocol { value: 999, .. }), "{e:?}");
    // A path with a NUL in it never reaches the wire.
    let (mut xs, w) = setup(&kicks);
    let e = xs.write(&w, NO_TX, "a\0/evil", b"x").unwrap_err();
    assert_eq!(xs_kind(&e), Some(&XsErrorKind::Invalid));
    assert_eq!(xs.stats().requests, 0);
}

#[test]
fn hostile_peer_flooding_watched_nodes_cannot_grow_the_event_queue() {
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.watch(&w, "backend", "tok").unwrap();
    // 1000 distinct nodes, then one node written 500 times, all before we look.
    for i in 0..1000 {
        w.daemon
            .borrow_mut()
            .external_write(&format!("backend/n{i}"), b"x");
    }
    for _ in 0..500 {
        w.daemon.borrow_mut().external_write("backend/state", b"4");
    }
    // A request pumps every event queued before its reply.
    xs.write(&w, NO_TX, "other", b"1").unwrap();
    let st = xs.stats();
    assert_eq!(st.watch_events, 1 + 1000 + 500);
    let mut queued = alloc::vec::Vec::new();
    while let Ok(e) = xs.next_watch_event(&w, 100) {
        queued.push(e.path);
    }
    assert_eq!(queued.len(), MAX_QUEUED_EVENTS);
    assert_eq!(st.watch_events_dropped, 1 + 1000 + 500 - MAX_QUEUED_EVENTS as u64);
    assert_eq!(
        queued.last().map(String::as_str),
        Some("/local/domain/7/backend/state"),
        "the newest event survives"
    );
    assert_eq!(
        queued.iter().filter(|p| p.ends_with("/backend/state")).count(),
        1,
        "repeats merged"
    );
}

#[test]
fn hostile_daemon_stray_message_before_a_reply_fails_that_request_only() {
    // A malformed watch event (no NUL between path and token) arrives before the reply to our
    // read: that read fails, and its reply, arriving after, is taken as late, not as the answer to
    // the next request (which would then fail and orphan its own reply, and so on for good).
    let kicks = Kicks::default();
    let (mut xs, w) = setup(&kicks);
    xs.write(&w, NO_TX, "a", b"first").unwrap();
    let payload = b"no-separator";
    let h = header(XsdSockmsgType::WatchEvent as u32, 0, payload.len() as u32);
    let mut stray = vec![];
    stray.extend_from_slice(h.as_bytes());
    stray.extend_from_slice(payload);
    w.daemon.borrow_mut().inject_raw(&stray);
    let e = xs.read(&w, NO_TX, "a").unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert!(xs.halted().is_none(), "the stream is still framed: no halt");
    for _ in 0..3 {
        assert_eq!(xs.read(&w, NO_TX, "a").unwrap(), b"first");
    }
    assert_eq!(xs.stats().late_replies, 1);
}
