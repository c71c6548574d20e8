//! The XenStore client's tests, against the fake xenstored.

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
