//! netfront against a fake copy-mode netback that echoes every frame with the MACs swapped.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;

use ring_protocol::abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY, GrantEntryV1};
use ring_protocol::abi::xen::{DomId, XenPfn};
use ring_protocol::ring::BackRing;
use zerocopy::FromZeros;

use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::wait::WaitMode;

const BE: &str = "/local/domain/0/backend/vif/3/0";
const FE: &str = "/local/domain/3/device/vif/0";

#[derive(Default)]
struct Host {
    frames: spin::Mutex<Vec<usize>>,
    ack: spin::Mutex<Option<SharedIrqAck>>,
}

impl XenDeviceHost for Host {
    fn alloc_unbound(&self, _: DomId) -> Result<EvtchnPort> {
        Ok(9)
    }
    fn notify(&self, _: EvtchnPort) -> Result<()> {
        Ok(())
    }
    fn close(&self, _: EvtchnPort) {}
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
        n as XenPfn + 0x2000
    }
}

type TxBack = BackRing<NetifTxRequest, NetifTxResponse>;
type RxBack = BackRing<NetifRxRequest, NetifRxResponse>;

struct World {
    daemon: RefCell<FakeXenStore>,
    host: &'static Host,
    entries: &'static [GrantEntryV1],
    rings: RefCell<Option<(TxBack, RxBack)>>,
    /// Answer the next rx request with this id instead of the real one (hostile backend).
    bogus_rx_id: Cell<Option<u16>>,
    now: Cell<u64>,
    echoed: Cell<u64>,
}

impl World {
    fn page(&self, gref: u32, write: bool) -> *mut u8 {
        let e = self.entries[gref as usize];
        assert_eq!(
            e.flags & GTF_PERMIT_ACCESS,
            GTF_PERMIT_ACCESS,
            "gref {gref} not granted"
        );
        assert!(
            !write || e.flags & GTF_READONLY == 0,
            "write through read-only gref {gref}"
        );
        self.host.frames.lock()[(e.frame - 0x2000) as usize] as *mut u8
    }

    fn read_fe(&self, key: &str) -> Option<u32> {
        let d = self.daemon.borrow();
        d.tree
            .get(&alloc::format!("{FE}/{key}"))
            .map(|v| core::str::from_utf8(v).unwrap().parse().unwrap())
    }

    fn run_backend(&self) {
        if self.rings.borrow().is_none() {
            if self.read_fe("state") == Some(4) {
                let tx = NonNull::new(self.page(self.read_fe("tx-ring-ref").unwrap(), true)).unwrap();
                let rx = NonNull::new(self.page(self.read_fe("rx-ring-ref").unwrap(), true)).unwrap();
                // SAFETY: granted ring pages, used by this back end and the front end only.
                let t = unsafe { BackRing::attach(tx, PAGE_SIZE, 0) }.unwrap();
                // SAFETY: as above.
                let r = unsafe { BackRing::attach(rx, PAGE_SIZE, 0) }.unwrap();
                *self.rings.borrow_mut() = Some((t, r));
                self.daemon
                    .borrow_mut()
                    .external_write(&alloc::format!("{BE}/state"), b"4");
            }
            return;
        }
        if self.read_fe("state") == Some(5) {
            self.daemon
                .borrow_mut()
                .external_write(&alloc::format!("{BE}/state"), b"6");
            return;
        }
        let mut rings = self.rings.borrow_mut();
        let (tx, rx) = rings.as_mut().unwrap();
        let mut notify = false;
        while let Some(req) = tx.read_request().unwrap() {
            let src = self.page(req.gref, false);
            let len = usize::from(req.size);
            // SAFETY: the granted tx page holds `size` bytes at `offset` (within the page).
            let at = src.wrapping_add(usize::from(req.offset));
            // SAFETY: as above.
            let mut frame = unsafe { core::slice::from_raw_parts(at, len) }.to_vec();
            let (dst, srcmac) = frame.split_at_mut(6);
            dst.swap_with_slice(&mut srcmac[..6]);
            tx.write_response(&NetifTxResponse {
                id: req.id,
                status: 0,
            })
            .unwrap();
            let Some(rreq) = rx.read_request().unwrap() else {
                panic!("no rx buffer posted")
            };
            let to = self.page(rreq.gref, true);
            // SAFETY: the granted rx page is a whole page; frames are at most 1514 bytes.
            let at = to.wrapping_add(2);
            // SAFETY: as above.
            unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), at, len) };
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
        if notify && let Some(a) = self.host.ack.lock().as_ref() {
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

fn world(rx_copy: bool, mac: &str) -> (XenStore<NoKick>, World, &'static GrantTable) {
    crate::dma::fake::install();
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/vif/0/backend", BE.as_bytes());
    daemon.external_write("device/vif/0/backend-id", b"0");
    daemon.external_write("device/vif/0/mac", mac.as_bytes());
    daemon.external_write(&alloc::format!("{BE}/state"), b"2");
    if rx_copy {
        daemon.external_write(&alloc::format!("{BE}/feature-rx-copy"), b"1");
    }
    let entries: &'static mut [GrantEntryV1] =
        Box::leak(vec![GrantEntryV1::new_zeroed(); 256].into_boxed_slice());
    let p = NonNull::from(&mut entries[0]);
    // SAFETY: leaked table memory; the fake backend only reads it.
    let grants: &'static GrantTable = Box::leak(Box::new(unsafe { GrantTable::new(p, 256) }));
    // SAFETY: read-only view of the same leaked memory.
    let view: &'static [GrantEntryV1] = unsafe { core::slice::from_raw_parts(p.as_ptr(), 256) };
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            host: Box::leak(Box::default()),
            entries: view,
            rings: RefCell::new(None),
            bogus_rx_id: Cell::new(None),
            now: Cell::new(0),
            echoed: Cell::new(0),
        },
        grants,
    )
}

fn connect(xs: &mut XenStore<NoKick>, w: &World, grants: &'static GrantTable) -> Result<NetFront<Host>> {
    let dev = xenbus::enumerate(xs, w, "vif")?.remove(0);
    NetFront::connect(xs, w, w.host, grants, dev, 1_000_000)
}

#[test]
fn frames_round_trip_through_the_rings_and_buffers_are_reposted() {
    let (mut xs, w, grants) = world(true, "00:16:3e:0a:0b:0c");
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    assert_eq!(dev.mac(), [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]);
    assert_eq!(w.read_fe("request-rx-copy"), Some(1));
    assert_eq!(w.read_fe("feature-rx-notify"), Some(1));
    assert_eq!(w.read_fe("event-channel"), Some(9));
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
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&dev.mac());
        dev.transmit(&f).unwrap();
        let n = crate::wait::wait_for(&w, 100_000, "echo", || dev.receive(&mut buf)).unwrap();
        assert_eq!(n, len);
        assert_eq!(&buf[..6], &dev.mac());
        assert_eq!(&buf[6..12], &[2, 0, 0, 0, 0, 1]);
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
    assert_eq!(grants.stats().active, 0, "every grant ended on disconnect");
}

#[test]
fn a_response_for_a_buffer_never_posted_is_a_protocol_error() {
    let (mut xs, w, grants) = world(true, "00:16:3e:00:00:01");
    let mut dev = connect(&mut xs, &w, grants).unwrap();
    w.bogus_rx_id.set(Some(999));
    dev.transmit(&[0u8; 60]).unwrap();
    let mut buf = [0u8; 1600];
    let e = crate::wait::wait_for(&w, 100_000, "echo", || dev.receive(&mut buf)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "rx response id not posted",
                value: 999,
                ..
            }
        ),
        "{e:?}"
    );
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
    let (mut xs, w, grants) = world(true, "00:16:3e:00:01");
    let e = connect(&mut xs, &w, grants).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                device: "xen-net",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        parse_mac("aa:bb:cc:dd:ee:ff"),
        Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
    );
    assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    assert_eq!(parse_mac("aa:bb:cc:dd:ee:f"), None);
    assert_eq!(parse_mac("zz:bb:cc:dd:ee:ff"), None);
}
