//! The secondary console against a fake backend that echoes every byte (as pvkit's daemon does in
//! echo mode), driven by the generic console echo workload, over `ring_protocol`'s fake grant table
//! and this crate's fake event channels.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use ring_protocol::abi::grant_table::GTF_PERMIT_ACCESS;
use ring_protocol::byte_ring::console_backend;
use ring_protocol::platform::fake::FakeGrantTable;

use super::super::evtchn::fake::{FIRST_PORT, FakeEventChannels};
use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::dma::fake::FAKE_DMA;
use crate::wait::WaitMode;
use crate::workload::Recorder;

const BE: &str = "/local/domain/0/backend/console/3/1";
const FE: &str = "/local/domain/3/device/console/1";
/// The backend's domain.
const BACKEND: u16 = 0;

type Con = SecondaryConsole<&'static FakeGrantTable, &'static FakeEventChannels>;

struct World {
    daemon: RefCell<FakeXenStore>,
    grants: &'static FakeGrantTable,
    events: &'static FakeEventChannels,
    ring: RefCell<Option<Duplex>>,
    /// The page's grant while the backend maps it.
    mapped: Cell<Option<u32>>,
    /// Keep the page mapped after the frontend closes.
    keep_page: Cell<bool>,
    /// Bytes read from the guest and not yet written back.
    pending: RefCell<Vec<u8>>,
    /// Flip the n-th byte echoed (a corrupting backend).
    corrupt_at: Cell<Option<usize>>,
    /// Never say Connected.
    silent: bool,
    echoed: Cell<usize>,
    now: Cell<u64>,
}

impl World {
    fn read_fe(&self, key: &str) -> Option<u32> {
        let d = self.daemon.borrow();
        d.tree
            .get(&alloc::format!("{FE}/{key}"))
            .map(|v| core::str::from_utf8(v).unwrap().parse().unwrap())
    }

    fn set_be_state(&self, s: &[u8]) {
        self.daemon
            .borrow_mut()
            .external_write(&alloc::format!("{BE}/state"), s);
    }

    fn run_backend(&self) {
        if self.ring.borrow().is_none() {
            if self.read_fe("state") == Some(3) && !self.silent {
                let gref = self.read_fe("ring-ref").unwrap();
                let page = self
                    .grants
                    .peer_map(BACKEND, gref, Access::ReadWrite)
                    .expect("ring-ref granted to the backend");
                self.mapped.set(Some(gref));
                let intf = page.cast::<XenconsInterface>();
                // SAFETY: the granted console page, mapped (so kept alive by the frontend) while
                // this end exists, used by this backend end and the frontend only.
                *self.ring.borrow_mut() = Some(unsafe { console_backend(intf) }.unwrap());
                self.set_be_state(b"4");
            }
            return;
        }
        if self.read_fe("state") == Some(5) {
            if !self.keep_page.get() {
                *self.ring.borrow_mut() = None;
                if let Some(gref) = self.mapped.take() {
                    self.grants.peer_unmap(BACKEND, gref, Access::ReadWrite).unwrap();
                }
            }
            self.set_be_state(b"6");
            return;
        }
        if self.read_fe("state") == Some(6) {
            return;
        }
        let mut ring = self.ring.borrow_mut();
        let ring = ring.as_mut().unwrap();
        let mut pending = self.pending.borrow_mut();
        let mut buf = [0u8; 700];
        // Bounded: take only what can be held.
        let room = 4096usize.saturating_sub(pending.len()).min(buf.len());
        let n = ring.rx.read(&mut buf[..room]).unwrap().bytes;
        for &b in &buf[..n] {
            let i = self.echoed.get() + pending.len();
            pending.push(if self.corrupt_at.get() == Some(i) {
                b ^ 0x40
            } else {
                b
            });
        }
        let w = ring.tx.write(&pending).unwrap().bytes;
        pending.drain(..w);
        self.echoed.set(self.echoed.get() + w);
        if n > 0 || w > 0 {
            self.events.raise_all();
        }
    }
}

impl Waiter for World {
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
        self.daemon.borrow_mut().step();
        self.run_backend();
        self.daemon.borrow_mut().step();
        ready()
    }
}

struct NoKick;
impl Notify for NoKick {
    fn notify(&self) -> ring_protocol::Result<()> {
        Ok(())
    }
}

fn world(silent: bool) -> (XenStore<NoKick>, World, &'static FakeGrantTable) {
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/console/1/backend", BE.as_bytes());
    daemon.external_write("device/console/1/backend-id", b"0");
    daemon.external_write(&alloc::format!("{BE}/state"), b"2");
    let grants: &'static FakeGrantTable = Box::leak(Box::new(FakeGrantTable::new(64)));
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            grants,
            events: Box::leak(Box::default()),
            ring: RefCell::new(None),
            mapped: Cell::new(None),
            keep_page: Cell::new(false),
            pending: RefCell::new(Vec::new()),
            corrupt_at: Cell::new(None),
            silent,
            echoed: Cell::new(0),
            now: Cell::new(0),
        },
        grants,
    )
}

fn connect(xs: &mut XenStore<NoKick>, w: &World, grants: &'static FakeGrantTable) -> Result<Con> {
    assert!(core::ptr::eq(grants, w.grants));
    let dev = xenbus::enumerate(xs, w, "console")?.remove(0);
    let platform = XenPlatform {
        grants: w.grants,
        events: w.events,
        dma: crate::dma::fake::dma(),
    };
    SecondaryConsole::connect(xs, w, platform, dev, 1_000_000)
}

#[test]
fn the_echo_workload_runs_over_the_secondary_console() {
    let (mut xs, w, grants) = world(false);
    let mut con = connect(&mut xs, &w, grants).unwrap();
    assert_eq!(con.device().id, "1");
    assert_eq!(w.read_fe("port"), Some(FIRST_PORT));
    assert_eq!(
        w.read_fe("state"),
        Some(4),
        "frontend Connected after the backend"
    );
    assert!(w.read_fe("ring-ref").is_some());
    assert_eq!(grants.stats().active, 1, "one page granted");
    assert_eq!(grants.stats().peer_mappings, 1, "the backend maps it");
    let mut rec = Recorder::default();
    // 9000 bytes: more than either ring holds, many times over.
    let r = crate::workload::console::echo(&mut con, &w, 9000, 4, &mut rec).unwrap();
    assert_eq!((r.ops, r.bytes), (9000, 18_000));
    assert_eq!(w.echoed.get(), 9000);
    assert_eq!(rec.phases, [1, 0]);
    assert_eq!(
        r.counters.bytes_copied, 9000,
        "every echoed byte read out of the ring"
    );
    assert!(
        r.counters.interrupts > 0,
        "the backend's notifications reached the hook"
    );
    let (seen, kept) = con.disconnect(&mut xs, &w, 1_000_000).unwrap();
    assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
    assert!(!kept);
    assert_eq!(grants.stats().active, 0, "the page's grant ended");
    assert_eq!(w.events.closed(), 1, "the event channel closed");
}

#[test]
fn xsa396_a_backend_keeping_the_page_after_close_gets_it_abandoned_not_freed() {
    let (mut xs, w, grants) = world(false);
    let mut con = connect(&mut xs, &w, grants).unwrap();
    let mut rec = Recorder::default();
    crate::workload::console::echo(&mut con, &w, 100, 1, &mut rec).unwrap();
    w.keep_page.set(true);
    let gref = w.mapped.get().unwrap();
    let page = grants.peer_map(BACKEND, gref, Access::ReadWrite).unwrap();
    grants.peer_unmap(BACKEND, gref, Access::ReadWrite).unwrap();
    let (_, kept) = con.disconnect(&mut xs, &w, 200_000).unwrap();
    assert!(kept, "the page had to be kept");
    assert_eq!(grants.abandoned(), (1, 1), "abandoned and counted");
    assert!(
        FAKE_DMA.is_live(page.as_ptr()),
        "never freed while the backend maps it"
    );
    let e = grants.entry(gref).unwrap();
    assert_eq!(
        (e.flags & GTF_PERMIT_ACCESS, e.domid),
        (GTF_PERMIT_ACCESS, BACKEND)
    );
    assert_eq!(w.events.closed(), 1);
}

#[test]
fn a_corrupted_echo_is_caught() {
    let (mut xs, w, grants) = world(false);
    let mut con = connect(&mut xs, &w, grants).unwrap();
    w.corrupt_at.set(Some(2500));
    let mut rec = Recorder::default();
    let e = crate::workload::console::echo(&mut con, &w, 4000, 4, &mut rec).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Mismatch {
                what: "console echo byte",
                index: 2500,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_backend_that_never_connects_times_out_and_the_grant_ends() {
    let (mut xs, w, grants) = world(true);
    let e = connect(&mut xs, &w, grants).unwrap_err();
    match e {
        Error::XenbusTimeout(t) => {
            assert_eq!(t.awaited, "Connected");
            assert_eq!(t.frontend, "device/console/1");
        }
        other => panic!("expected a xenbus timeout, got {other:?}"),
    }
    assert_eq!(grants.stats().active, 0, "nothing stays granted");
    assert_eq!(w.events.closed(), 1);
}
