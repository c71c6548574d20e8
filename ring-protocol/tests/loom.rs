//! Loom model checks of the shared ring's memory ordering. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ring-protocol --test loom --release`.
//!
//! Under `--cfg loom` the ring's shared words are loom atomics (see `SharedPages`), so loom explores
//! every interleaving and every weak-memory outcome the C11 model allows for the index and slot
//! accesses and the `SeqCst` fences.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use ring_protocol::ring::{BackRing, FrontRing, RING_HEADER_SIZE, SharedPages};
use zerocopy::{FromBytes, Immutable, IntoBytes};

#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Entry {
    a: u32,
    b: u32,
}

/// A two-slot ring of 8-byte entries, with a front and a back over it.
fn ring() -> (Arc<SharedPages>, FrontRing<Entry, Entry>, BackRing<Entry, Entry>) {
    let pages = Arc::new(SharedPages::new(RING_HEADER_SIZE + 2 * 8));
    // SAFETY: `pages` is kept alive (an Arc clone goes to every thread) for the rings' lifetime, and is
    // accessed only through the rings.
    let front = unsafe { FrontRing::init(pages.as_ptr(), pages.len()).unwrap() };
    // SAFETY: as above.
    let back = unsafe { BackRing::new(pages.as_ptr(), pages.len()).unwrap() };
    assert_eq!(front.size(), 2);
    (pages, front, back)
}

/// A backend that sees a published request index sees the request's slot contents.
#[test]
fn published_request_is_fully_visible() {
    loom::model(|| {
        let (pages, mut front, mut back) = ring();
        let keep = Arc::clone(&pages);
        let producer = thread::spawn(move || {
            let _keep = keep;
            front.write_request(&Entry { a: 0x1111, b: 0x2222 }).unwrap();
            front.push_requests().unwrap();
        });
        if let Some(req) = back.read_request().unwrap() {
            assert_eq!(req, Entry { a: 0x1111, b: 0x2222 });
        }
        producer.join().unwrap();
    });
}

/// A frontend that sees a published response index sees the response, and a slot is reused for a new
/// request only after its response was read (no torn or stale entry either way).
#[test]
fn response_then_slot_reuse_is_ordered() {
    loom::model(|| {
        let (pages, mut front, mut back) = ring();
        // One request already delivered to the backend.
        front.write_request(&Entry { a: 1, b: 1 }).unwrap();
        front.push_requests().unwrap();
        let keep = Arc::clone(&pages);
        let backend = thread::spawn(move || {
            let _keep = keep;
            let req = back.read_request().unwrap().unwrap();
            back.write_response(&Entry { a: req.a, b: 0xAAAA }).unwrap();
            back.push_responses().unwrap();
            back
        });
        if let Some(rsp) = front.read_response().unwrap() {
            assert_eq!(rsp, Entry { a: 1, b: 0xAAAA });
            // Slots are free again: fill both, including the one the response used.
            front.write_request(&Entry { a: 2, b: 2 }).unwrap();
            front.write_request(&Entry { a: 3, b: 3 }).unwrap();
            front.push_requests().unwrap();
        }
        let mut back = backend.join().unwrap();
        let mut seen = Vec::new();
        while let Some(r) = back.read_request().unwrap() {
            seen.push(r);
        }
        assert!(
            seen.is_empty() || seen == [Entry { a: 2, b: 2 }, Entry { a: 3, b: 3 }],
            "{seen:?}"
        );
    });
}

/// Event re-arm, request direction: the frontend publishes a request and checks whether to notify while
/// the backend, having drained the ring, does its final check. Either the backend finds the request
/// or the frontend decides to notify; never neither (a lost wake-up).
#[test]
fn no_lost_wakeup_for_requests() {
    loom::model(|| {
        let (pages, mut front, mut back) = ring();
        // One earlier exchange, so req_event (1) is stale: the next push notifies only if re-armed.
        front.write_request(&Entry { a: 0, b: 0 }).unwrap();
        assert!(front.push_requests_and_check_notify().unwrap());
        back.read_request().unwrap().unwrap();
        back.write_response(&Entry { a: 0, b: 0 }).unwrap();
        back.push_responses().unwrap();
        front.read_response().unwrap().unwrap();

        let keep = Arc::clone(&pages);
        let producer = thread::spawn(move || {
            let _keep = keep;
            front.write_request(&Entry { a: 7, b: 7 }).unwrap();
            front.push_requests_and_check_notify().unwrap()
        });
        let work = back.final_check_for_requests().unwrap();
        let notified = producer.join().unwrap();
        assert!(
            work || notified,
            "backend went to sleep and the frontend did not notify"
        );
    });
}

/// Event re-arm, response direction.
#[test]
fn no_lost_wakeup_for_responses() {
    loom::model(|| {
        let (pages, mut front, mut back) = ring();
        front.write_request(&Entry { a: 0, b: 0 }).unwrap();
        front.write_request(&Entry { a: 1, b: 1 }).unwrap();
        front.push_requests().unwrap();
        back.read_request().unwrap().unwrap();
        back.read_request().unwrap().unwrap();
        // First response consumed, so rsp_event (1) is stale.
        back.write_response(&Entry { a: 0, b: 0 }).unwrap();
        assert!(back.push_responses_and_check_notify().unwrap());
        front.read_response().unwrap().unwrap();

        let keep = Arc::clone(&pages);
        let backend = thread::spawn(move || {
            let _keep = keep;
            back.write_response(&Entry { a: 1, b: 9 }).unwrap();
            back.push_responses_and_check_notify().unwrap()
        });
        let work = front.final_check_for_responses().unwrap();
        let notified = backend.join().unwrap();
        assert!(
            work || notified,
            "frontend went to sleep and the backend did not notify"
        );
        if work {
            assert_eq!(front.read_response().unwrap(), Some(Entry { a: 1, b: 9 }));
        }
    });
}

/// An event channel stand-in for the model: a flag under a mutex with a condition variable. A waiter
/// that is never rung blocks forever, which loom reports as a deadlock.
struct Doorbell {
    rung: loom::sync::Mutex<bool>,
    cv: loom::sync::Condvar,
}

impl Doorbell {
    fn new() -> Self {
        Self {
            rung: loom::sync::Mutex::new(false),
            cv: loom::sync::Condvar::new(),
        }
    }

    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.cv.wait(rung).unwrap();
        }
        *rung = false;
    }
}

/// The whole sleep/wake protocol: the frontend sends two requests in two batches, ringing the doorbell
/// only when the push says so; the backend drains, final-checks, and otherwise sleeps until rung. In
/// every execution the backend must receive both requests; a lost wake-up would leave it blocked
/// forever, which loom reports as a deadlock.
#[test]
fn backend_sleeping_on_the_event_gets_every_request() {
    loom::model(|| {
        let (pages, mut front, mut back) = ring();
        let bell = Arc::new(Doorbell::new());
        let (keep, bell2) = (Arc::clone(&pages), Arc::clone(&bell));
        let producer = thread::spawn(move || {
            let _keep = keep;
            for i in 0..2 {
                front.write_request(&Entry { a: i, b: i }).unwrap();
                if front.push_requests_and_check_notify().unwrap() {
                    bell2.ring();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            while let Some(req) = back.read_request().unwrap() {
                got.push(req.a);
            }
            if got.len() < 2 && !back.final_check_for_requests().unwrap() {
                bell.wait();
            }
        }
        assert_eq!(got, [0, 1]);
        producer.join().unwrap();
    });
}
