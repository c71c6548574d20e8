//! The secondary console against a fake backend that echoes every byte (as pvkit's daemon does in
//! echo mode), driven by the generic console echo workload.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, Ordering};

use ring_protocol::abi::grant_table::{GTF_PERMIT_ACCESS, GrantEntryV1};
use ring_protocol::abi::xen::{DomId, XenPfn};
use ring_protocol::byte_ring::console_backend;
use zerocopy::FromZeros;

use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::wait::WaitMode;
use crate::workload::Recorder;

const BE: &str = "/local/domain/0/backend/console/3/1";
const FE: &str = "/local/domain/3/device/console/1";

#[derive(Default)]
struct Host {
    frames: spin::Mutex<Vec<usize>>,
    ack: spin::Mutex<Option<SharedIrqAck>>,
    closed: AtomicU32,
}

impl XenDeviceHost for Host {
    fn alloc_unbound(&self, _: DomId) -> Result<EvtchnPort> {
        Ok(9)
    }
    fn notify(&self, _: EvtchnPort) -> Result<()> {
        Ok(())
    }
    fn close(&self, _: EvtchnPort) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
    fn bind(&self, _: EvtchnPort, ack: SharedIrqAck) -> Result<()> {
        *self.ack.lock() = Some(ack);
        Ok(())
    }
    fn frame_of(&self, virt: *const u8) -> XenPfn {
        let page = virt as usize & !(PAGE_SIZE - 1);
        let mut f = self.frames.lock();
        let n = f.iter().position(|&p| p == page).unwrap_or_else(|| {
            f.push(page);
            f.len() - 1
        });
        n as XenPfn + 0x3000
    }
}

struct World {
    daemon: RefCell<FakeXenStore>,
    host: &'static Host,
    entries: &'static [GrantEntryV1],
    ring: RefCell<Option<Duplex>>,
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
                let e = self.entries[gref as usize];
                assert_eq!(
                    e.flags & GTF_PERMIT_ACCESS,
                    GTF_PERMIT_ACCESS,
                    "ring-ref not granted"
                );
                let page = self.host.frames.lock()[(e.frame - 0x3000) as usize];
                let intf = NonNull::new(page as *mut XenconsInterface).unwrap();
                // SAFETY: the granted console page, used by this backend end and the frontend only.
                *self.ring.borrow_mut() = Some(unsafe { console_backend(intf) }.unwrap());
                self.set_be_state(b"4");
            }
            return;
        }
        if self.read_fe("state") == Some(5) {
            self.set_be_state(b"6");
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
        if (n > 0 || w > 0)
            && let Some(a) = self.host.ack.lock().as_ref()
        {
            a.ack();
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

fn world(silent: bool) -> (XenStore<NoKick>, World, &'static GrantTable) {
    crate::dma::fake::install();
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/console/1/backend", BE.as_bytes());
    daemon.external_write("device/console/1/backend-id", b"0");
    daemon.external_write(&alloc::format!("{BE}/state"), b"2");
    let entries: &'static mut [GrantEntryV1] =
        Box::leak(vec![GrantEntryV1::new_zeroed(); 64].into_boxed_slice());
    let p = NonNull::from(&mut entries[0]);
    // SAFETY: leaked table memory; the fake backend only reads it.
    let grants: &'static GrantTable = Box::leak(Box::new(unsafe { GrantTable::new(p, 64) }));
    // SAFETY: read-only view of the same leaked memory.
    let view: &'static [GrantEntryV1] = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            host: Box::leak(Box::default()),
            entries: view,
            ring: RefCell::new(None),
            pending: RefCell::new(Vec::new()),
            corrupt_at: Cell::new(None),
            silent,
            echoed: Cell::new(0),
            now: Cell::new(0),
        },
        grants,
    )
}

fn connect(
    xs: &mut XenStore<NoKick>,
    w: &World,
    grants: &'static GrantTable,
) -> Result<SecondaryConsole<Host>> {
    let dev = xenbus::enumerate(xs, w, "console")?.remove(0);
    SecondaryConsole::connect(xs, w, w.host, grants, dev, 1_000_000)
}

#[test]
fn the_echo_workload_runs_over_the_secondary_console() {
    let (mut xs, w, grants) = world(false);
    let mut con = connect(&mut xs, &w, grants).unwrap();
    assert_eq!(con.device().id, "1");
    assert_eq!(w.read_fe("port"), Some(9));
    assert_eq!(
        w.read_fe("state"),
        Some(4),
        "frontend Connected after the backend"
    );
    assert!(w.read_fe("ring-ref").is_some());
    assert_eq!(grants.stats().active, 1, "one page granted");
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
    assert_eq!(
        w.host.closed.load(Ordering::Relaxed),
        1,
        "the event channel closed"
    );
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
    assert_eq!(w.host.closed.load(Ordering::Relaxed), 1);
}
