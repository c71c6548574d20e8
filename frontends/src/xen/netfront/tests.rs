//! netfront against a fake copy-mode netback that echoes every frame with the MACs swapped, over
//! `ring_protocol`'s fake grant table and this crate's fake event channels. Like Xen, the table marks
//! a grant in use (`GTF_reading`/`GTF_writing`) while the backend holds a mapping (the rings from
//! connect to close); data moves by grant copies. [`Mode`] turns it hostile.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use ring_protocol::abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY};
use ring_protocol::platform::ShareMemory;
use ring_protocol::platform::fake::FakeGrantTable;
use ring_protocol::ring::BackRing;

use super::super::evtchn::fake::{FIRST_PORT, FakeEventChannels};
use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::dma::fake::FAKE_DMA;
use crate::wait::WaitMode;

const BE: &str = "/local/domain/0/backend/vif/3/0";
const FE: &str = "/local/domain/3/device/vif/0";
const TABLE: usize = 256;
/// The backend's domain.
const BACKEND: u16 = 0;

type Dev = NetFront<&'static FakeGrantTable, &'static FakeEventChannels>;

type TxBack = BackRing<NetifTxRequest, NetifTxResponse>;
type RxBack = BackRing<NetifRxRequest, NetifRxResponse>;

/// How the fake backend misbehaves (all off: honest).
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// Not there: stays in InitWait.
    absent: bool,
    /// Maps the rings, then refuses the connection (Closing).
    refuse_after_map: bool,
    /// Never unmaps the ring pages, even once closed.
    keep_rings: bool,
    /// Takes the first posted rx buffer, maps it writable and holds it for good.
    hold_rx: bool,
    /// Leaves tx pages mapped after answering.
    keep_tx: bool,
    /// Answers transmits with this id.
    forge_tx_id: Option<u16>,
    /// Publishes the tx `rsp_prod` this far past its real responses.
    overrun_tx: u32,
}

struct World {
    daemon: RefCell<FakeXenStore>,
    grants: &'static FakeGrantTable,
    events: &'static FakeEventChannels,
    rings: RefCell<Option<(TxBack, RxBack)>>,
    mode: Mode,
    /// Ring grants and pages while mapped.
    ring_refs: RefCell<Vec<u32>>,
    ring_ptrs: RefCell<Vec<*mut u8>>,
    /// The rx buffer held (hold_rx): gref and page.
    held_rx: Cell<Option<(u32, *mut u8)>>,
    /// Tx grants left mapped (keep_tx) and their pages.
    kept_tx: RefCell<Vec<(u32, *mut u8)>>,
    /// Answer the next rx request with this id instead of the real one (hostile backend).
    bogus_rx_id: Cell<Option<u16>>,
    now: Cell<u64>,
    echoed: Cell<u64>,
}

impl World {
    /// A lasting mapping: Xen marks the grant in use until `unmap`.
    fn map(&self, gref: u32, access: Access) -> *mut u8 {
        self.grants
            .peer_map(BACKEND, gref, access)
            .unwrap_or_else(|e| panic!("backend mapping gref {gref}: {e}"))
            .as_ptr()
    }

    fn unmap(&self, gref: u32, access: Access) {
        self.grants.peer_unmap(BACKEND, gref, access).unwrap();
    }

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
        let fe = self.read_fe("state");
        if self.mode.absent {
            return;
        }
        if matches!(fe, Some(5 | 6)) {
            if !self.mode.keep_rings {
                *self.rings.borrow_mut() = None;
                for r in self.ring_refs.take() {
                    self.unmap(r, Access::ReadWrite);
                }
            }
            let d = self.daemon.borrow();
            let closed = d.tree.get(&alloc::format!("{BE}/state")).map(Vec::as_slice) == Some(b"6");
            drop(d);
            if !closed {
                self.set_be_state(b"6");
            }
            return;
        }
        if self.rings.borrow().is_none() {
            if fe == Some(4) && self.ring_refs.borrow().is_empty() {
                let (tr, rr) = (
                    self.read_fe("tx-ring-ref").unwrap(),
                    self.read_fe("rx-ring-ref").unwrap(),
                );
                let tx = NonNull::new(self.map(tr, Access::ReadWrite)).unwrap();
                let rx = NonNull::new(self.map(rr, Access::ReadWrite)).unwrap();
                *self.ring_refs.borrow_mut() = vec![tr, rr];
                *self.ring_ptrs.borrow_mut() = vec![tx.as_ptr(), rx.as_ptr()];
                if self.mode.refuse_after_map {
                    self.set_be_state(b"5");
                    return;
                }
                // SAFETY: granted ring pages, used by this back end and the front end only.
                let t = unsafe { BackRing::attach(tx, PAGE_SIZE, 0) }.unwrap();
                // SAFETY: as above.
                let r = unsafe { BackRing::attach(rx, PAGE_SIZE, 0) }.unwrap();
                *self.rings.borrow_mut() = Some((t, r));
                self.set_be_state(b"4");
            }
            return;
        }
        let mut rings = self.rings.borrow_mut();
        let (tx, rx) = rings.as_mut().unwrap();
        if self.mode.hold_rx
            && self.held_rx.get().is_none()
            && let Some(rreq) = rx.read_request().unwrap()
        {
            self.held_rx
                .set(Some((rreq.gref, self.map(rreq.gref, Access::ReadWrite))));
        }
        let mut notify = false;
        let mut answered = false;
        while let Some(req) = tx.read_request().unwrap() {
            answered = true;
            if self.mode.keep_tx {
                let p = self.map(req.gref, Access::ReadOnly);
                self.kept_tx.borrow_mut().push((req.gref, p));
            }
            let len = usize::from(req.size);
            // A grant copy of the frame out of the tx page.
            let mut frame = vec![0u8; len];
            self.grants
                .peer_read(BACKEND, req.gref, usize::from(req.offset), &mut frame)
                .unwrap();
            let (dst, srcmac) = frame.split_at_mut(6);
            dst.swap_with_slice(&mut srcmac[..6]);
            tx.write_response(&NetifTxResponse {
                id: self.mode.forge_tx_id.unwrap_or(req.id),
                status: 0,
            })
            .unwrap();
            let Some(rreq) = rx.read_request().unwrap() else {
                panic!("no rx buffer posted")
            };
            // A grant copy into the rx page, 2 bytes in (frames are at most 1514 bytes).
            self.grants.peer_write(BACKEND, rreq.gref, 2, &frame).unwrap();
            let id = self.bogus_rx_id.take().unwrap_or(rreq.id);
            rx.write_response(&NetifRxResponse {
                id,
                offset: 2,
                flags: 0,
                status: len as i16,
            })
            .unwrap();
            self.echoed.set(self.echoed.get() + 1);
        }
        notify |= tx.push_responses_and_check_notify().unwrap();
        notify |= rx.push_responses_and_check_notify().unwrap();
        if self.mode.overrun_tx > 0 && answered {
            // SAFETY: `rsp_prod` is the 4-aligned u32 at byte 8 of the mapped tx ring page,
            // accessed atomically by both ends.
            let rsp_prod = unsafe { AtomicU32::from_ptr(self.ring_ptrs.borrow()[0].wrapping_add(8).cast()) };
            rsp_prod.store(tx.rsp_prod_pvt() + self.mode.overrun_tx, Ordering::Release);
        }
        if notify {
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

fn world(rx_copy: bool, mac: &str) -> (XenStore<NoKick>, World, &'static FakeGrantTable) {
    world_with(if rx_copy { "1" } else { "" }, mac, Mode::default())
}

/// `rx_copy` is the backend's `feature-rx-copy` (empty: absent).
fn world_with(rx_copy: &str, mac: &str, mode: Mode) -> (XenStore<NoKick>, World, &'static FakeGrantTable) {
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/vif/0/backend", BE.as_bytes());
    daemon.external_write("device/vif/0/backend-id", b"0");
    daemon.external_write("device/vif/0/mac", mac.as_bytes());
    daemon.external_write(&alloc::format!("{BE}/state"), b"2");
    if !rx_copy.is_empty() {
        daemon.external_write(&alloc::format!("{BE}/feature-rx-copy"), rx_copy.as_bytes());
    }
    let grants: &'static FakeGrantTable = Box::leak(Box::new(FakeGrantTable::new(TABLE)));
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            grants,
            events: Box::leak(Box::default()),
            rings: RefCell::new(None),
            mode,
            ring_refs: RefCell::new(Vec::new()),
            ring_ptrs: RefCell::new(Vec::new()),
            held_rx: Cell::new(None),
            kept_tx: RefCell::new(Vec::new()),
            bogus_rx_id: Cell::new(None),
            now: Cell::new(0),
            echoed: Cell::new(0),
        },
        grants,
    )
}

fn connect(xs: &mut XenStore<NoKick>, w: &World, grants: &'static FakeGrantTable) -> Result<Dev> {
    assert!(core::ptr::eq(grants, w.grants));
    let dev = xenbus::enumerate(xs, w, "vif")?.remove(0);
    let platform = XenPlatform {
        grants: w.grants,
        events: w.events,
        dma: crate::dma::fake::dma(),
    };
    NetFront::connect(xs, w, platform, dev, 200_000)
}

/// (grants active, grants abandoned, pages abandoned with them).
fn stats(g: &FakeGrantTable) -> (usize, usize, usize) {
    let s = g.stats();
    (s.active, s.abandoned, s.abandoned_pages)
}

/// Asserts that `refs` still grant the backend's domain access and are never handed out again.
fn assert_still_granted_and_never_reused(grants: &FakeGrantTable, refs: &[u32]) {
    for &r in refs {
        let e = grants.entry(r).unwrap();
        assert_eq!(
            (e.flags & GTF_PERMIT_ACCESS, e.domid),
            (GTF_PERMIT_ACCESS, BACKEND),
            "abandoned gref {r} still granted"
        );
    }
    #[repr(C, align(4096))]
    struct Page([u8; PAGE_SIZE]);
    let page = NonNull::from(Box::leak(Box::new(Page([0; PAGE_SIZE])))).cast::<u8>();
    let mut fresh = Vec::new();
    // SAFETY: a leaked page, never freed; nothing reads it.
    while let Ok(r) = unsafe { grants.share(BACKEND, page, Access::ReadOnly) } {
        assert!(!refs.contains(&r), "abandoned gref {r} handed out again");
        fresh.push(r);
    }
    for r in fresh {
        grants.revoke(r).unwrap();
    }
}

/// A frame to our peer.
fn frame(dev: &Dev, len: usize, seed: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|j| (j * 7 + seed) as u8).collect();
    f[..6].copy_from_slice(&crate::workload::net::PEER_MAC);
    f[6..12].copy_from_slice(&dev.mac());
    f
}

fn echo(dev: &mut Dev, w: &World, f: &[u8]) -> Result<Vec<u8>> {
    dev.transmit(f)?;
    let mut buf = [0u8; 1600];
    let n = crate::wait::wait_for(w, 100_000, "echo", || dev.receive(&mut buf))?;
    Ok(buf[..n].to_vec())
}

#[test]
fn frames_round_trip_through_the_rings_and_buffers_are_reposted() {
    let (mut xs, w, grants) = world(true, "00:16:3e:0a:0b:0c");
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    assert_eq!(dev.mac(), [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]);
    assert_eq!(w.read_fe("request-rx-copy"), Some(1));
    assert_eq!(w.read_fe("feature-rx-notify"), Some(1));
    assert_eq!(w.read_fe("event-channel"), Some(FIRST_PORT));
    assert_eq!(w.read_fe("state"), Some(4));
    let base_grants = grants.stats().active;
    assert_eq!(
        base_grants,
        2 + RX_BUFFERS,
        "two ring pages and the posted rx pages"
    );
    // 300 frames (more than the rx ring and tx slots) of sizes 14..=1514.
    let mut buf = [0u8; 1600];
    for i in 0..300usize {
        let len = 14 + (i * 97) % 1501;
        let mut f: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        f[..6].copy_from_slice(&crate::workload::net::PEER_MAC);
        f[6..12].copy_from_slice(&dev.mac());
        dev.transmit(&f).unwrap();
        let n = crate::wait::wait_for(&w, 100_000, "echo", || dev.receive(&mut buf)).unwrap();
        assert_eq!(n, len);
        assert_eq!(&buf[..6], &dev.mac());
        assert_eq!(&buf[6..12], &crate::workload::net::PEER_MAC);
        assert_eq!(&buf[12..n], &f[12..]);
    }
    assert_eq!(w.echoed.get(), 300);
    let _ = dev.receive(&mut buf).unwrap();
    assert_eq!(
        grants.stats().active,
        base_grants,
        "tx grants ended, rx pages re-granted one for one"
    );
    assert_eq!(dev.drops(), NetDrops::default());
    let e = dev.transmit(&[0u8; 1515]).unwrap_err();
    assert!(matches!(e, Error::BadLength { len: 1515, .. }), "{e:?}");
    let seen = dev.disconnect(&mut xs, &w, 1_000_000).unwrap();
    assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
    assert_eq!(
        stats(grants),
        (0, 0, 0),
        "every grant ended on disconnect, nothing leaked"
    );
    assert_eq!(w.events.closed(), 1);
}

#[test]
fn xsa155_forged_rx_id_is_refused_and_halts_the_device() {
    for forged in [999u16, 64, u16::MAX] {
        let (mut xs, w, grants) = world(true, "00:16:3e:00:00:01");
        let mut dev = connect(&mut xs, &w, grants).unwrap();
        let f = frame(&dev, 60, 1);
        assert_eq!(echo(&mut dev, &w, &f).unwrap().len(), 60, "honest traffic first");
        w.bogus_rx_id.set(Some(forged));
        let e = echo(&mut dev, &w, &f).unwrap_err();
        assert_eq!(
            e,
            Error::Protocol {
                device: "xen-net",
                what: "rx response id not posted",
                value: u64::from(forged)
            }
        );
        assert_eq!(dev.broken(), Some(&e));
        assert!(!dev.link_up());
        assert_eq!(dev.transmit(&f).unwrap_err(), e, "halted");
        assert_eq!(dev.receive(&mut [0u8; 1600]).unwrap_err(), e);
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0), "every grant still ended");
    }
}

#[test]
fn hostile_backend_forging_a_tx_id_or_overrunning_rsp_prod_halts_the_device() {
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            forge_tx_id: Some(4000),
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    let f = frame(&dev, 100, 2);
    let e = echo(&mut dev, &w, &f).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xen-net",
            what: "tx response id not in flight",
            value: 4000
        }
    );
    assert_eq!(dev.transmit(&f).unwrap_err(), e);
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));

    for overrun in [1u32, 300, u32::MAX / 2] {
        let (mut xs, w, grants) = world_with(
            "1",
            "00:16:3e:00:00:01",
            Mode {
                overrun_tx: overrun,
                ..Mode::default()
            },
        );
        let mut dev = connect(&mut xs, &w, grants).unwrap();
        let f = frame(&dev, 100, 3);
        let e = echo(&mut dev, &w, &f).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Ring(ring_protocol::Error::ResponseOverrun { outstanding: 1, .. })
            ),
            "{overrun}: {e:?}"
        );
        assert_eq!(dev.transmit(&f).unwrap_err(), e);
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0), "{overrun}");
    }
}

#[test]
fn xsa396_rx_buffer_still_mapped_at_disconnect_is_abandoned_not_freed() {
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            hold_rx: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    // The backend sits on one posted buffer; traffic through the others is unaffected.
    for i in 0..100 {
        let f = frame(&dev, 60 + i, i);
        let back = echo(&mut dev, &w, &f).unwrap();
        assert_eq!(&back[12..], &f[12..]);
    }
    let (gref, page) = w.held_rx.get().expect("the backend took a buffer");
    let seen = dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
    assert_eq!(stats(grants), (1, 1, 1), "that one page abandoned and counted");
    assert!(FAKE_DMA.is_live(page), "the writable rx page was not freed");
    assert_eq!(
        grants.entry(gref).unwrap().flags & (GTF_PERMIT_ACCESS | GTF_READONLY),
        GTF_PERMIT_ACCESS,
        "still the writable grant it was"
    );
    assert_still_granted_and_never_reused(grants, &[gref]);
    // SAFETY: the abandoned page is leaked (never freed); writing it is what the backend can still do.
    unsafe { page.write_volatile(0x5a) };
}

#[test]
fn xsa396_connect_failing_after_the_backend_mapped_the_rings_abandons_them_if_it_keeps_them() {
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            refuse_after_map: true,
            keep_rings: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xenbus",
            what: "backend left the handshake (its state shown)",
            value: 5
        }
    );
    assert_eq!(stats(grants), (2, 2, 2), "both ring pages abandoned");
    let refs = w.ring_refs.borrow().clone();
    for &p in w.ring_ptrs.borrow().iter() {
        assert!(FAKE_DMA.is_live(p), "a ring page was freed while mapped");
    }
    assert_still_granted_and_never_reused(grants, &refs);
    assert_eq!(w.events.closed(), 1);

    // The same refusal from a backend that unmaps on close: nothing leaks.
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            refuse_after_map: true,
            ..Mode::default()
        },
    );
    connect(&mut xs, &w, grants).unwrap_err();
    assert!(!w.ring_ptrs.borrow().is_empty(), "the rings had been mapped");
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn xsa396_backend_keeping_a_tx_grant_after_its_response_halts_and_the_page_is_never_freed() {
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            keep_tx: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    let f = frame(&dev, 200, 4);
    let e = echo(&mut dev, &w, &f).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xen-net",
            what: "backend kept a tx grant after its response",
            value: 0
        }
    );
    assert_eq!(dev.stuck_grants(), 1);
    let (gref, page) = w.kept_tx.borrow()[0];
    assert!(FAKE_DMA.is_live(page));
    assert_eq!(dev.transmit(&f).unwrap_err(), e);
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (1, 1, 1));
    assert!(FAKE_DMA.is_live(page));
    assert_still_granted_and_never_reused(grants, &[gref]);
}

#[test]
fn hostile_backend_that_never_connects_times_out_and_releases_everything() {
    let (mut xs, w, grants) = world_with(
        "1",
        "00:16:3e:00:00:01",
        Mode {
            absent: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants).unwrap_err();
    match e {
        Error::XenbusTimeout(t) => assert_eq!((t.state, t.awaited), (2, "Connected")),
        other => panic!("expected a xenbus timeout, got {other:?}"),
    }
    assert_eq!(stats(grants), (0, 0, 0), "ring grants ended, nothing leaked");
    assert_eq!(w.events.closed(), 1, "event channel closed");
    assert_eq!(
        w.read_fe("state"),
        Some(6),
        "frontend gave the device up (Closed)"
    );
    assert!(w.now.get() < 2_000_000, "bounded: {} us", w.now.get());
}

#[test]
fn backend_without_rx_copy_or_a_bad_mac_is_refused() {
    let (mut xs, w, grants) = world(false, "00:16:3e:00:00:01");
    let e = connect(&mut xs, &w, grants).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unsupported {
                device: "xen-net",
                ..
            }
        ),
        "{e:?}"
    );
    for mac in [
        "00:16:3e:00:01",
        "01:16:3e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
        "+0:16:3e:00:00:01",
        "00:16:3e:00:00:01:02",
    ] {
        let (mut xs, w, grants) = world(true, mac);
        let e = connect(&mut xs, &w, grants).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol {
                    device: "xen-net",
                    ..
                }
            ),
            "{mac}: {e:?}"
        );
        assert_eq!(stats(grants), (0, 0, 0));
    }
    let (mut xs, w, grants) = world_with("2", "00:16:3e:00:00:01", Mode::default());
    let e = connect(&mut xs, &w, grants).unwrap_err();
    assert!(format!("{e}").contains("feature-rx-copy"), "{e}");
    assert_eq!(
        parse_mac("aa:bb:cc:dd:ee:ff"),
        Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
    );
    assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    assert_eq!(parse_mac("aa:bb:cc:dd:ee:f"), None);
    assert_eq!(parse_mac("zz:bb:cc:dd:ee:ff"), None);
    assert_eq!(parse_mac("+a:bb:cc:dd:ee:ff"), None);
    assert!(is_unicast_mac([0x00, 0x16, 0x3e, 0, 0, 1]));
    assert!(!is_unicast_mac([0x33, 0x33, 0, 0, 0, 1]));
}
