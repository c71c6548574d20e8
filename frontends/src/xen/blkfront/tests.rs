//! blkfront against a fake blkback: the fake runs the backend's half of xenbus in a fake XenStore
//! and serves the ring through the grant table's entries, the way Xen would resolve them.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;

use ring_protocol::abi::blkif::{
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BlkifRequestIndirect,
};
use ring_protocol::abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READONLY, GrantEntryV1};
use ring_protocol::ring::BackRing;
use zerocopy::FromZeros;

use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::block;
use crate::wait::WaitMode;

const BE: &str = "/local/domain/0/backend/vbd/3/51712";
const SECTORS: u64 = 4096;

/// Page frames handed out by `frame_of` (frame n = index n), so the fake backend can find pages.
#[derive(Default)]
struct Host {
    frames: spin::Mutex<Vec<usize>>,
    notifies: spin::Mutex<u64>,
    ack: spin::Mutex<Option<SharedIrqAck>>,
}

impl XenDeviceHost for Host {
    fn alloc_unbound(&self, _: DomId) -> Result<EvtchnPort> {
        Ok(17)
    }
    fn notify(&self, port: EvtchnPort) -> Result<()> {
        assert_eq!(port, 17);
        *self.notifies.lock() += 1;
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
        n as XenPfn + 0x1000
    }
}

struct Backend {
    ring: Option<BackRing<BlkifRequest, BlkifResponse>>,
    disk: Vec<u8>,
    /// Never go past InitWait.
    stall: bool,
    requests: Vec<u8>,
}

struct World {
    daemon: RefCell<FakeXenStore>,
    be: RefCell<Backend>,
    host: &'static Host,
    entries: &'static [GrantEntryV1],
    now: Cell<u64>,
}

impl World {
    fn page(&self, gref: u32, write: bool) -> *mut u8 {
        let e = self.entries[gref as usize];
        assert_eq!(
            e.flags & GTF_PERMIT_ACCESS,
            GTF_PERMIT_ACCESS,
            "gref {gref} not granted"
        );
        assert_eq!(e.domid, 0, "granted to the backend's domain");
        if write {
            assert_eq!(
                e.flags & GTF_READONLY,
                0,
                "backend write through a read-only grant {gref}"
            );
        }
        let frames = self.host.frames.lock();
        frames[(e.frame - 0x1000) as usize] as *mut u8
    }

    fn state(&self, path: &str) -> u64 {
        let d = self.daemon.borrow();
        d.tree
            .get(path)
            .map_or(0, |v| core::str::from_utf8(v).unwrap().parse().unwrap())
    }

    fn run_backend(&self) {
        let fe_state = self.state("/local/domain/3/device/vbd/51712/state");
        let mut be = self.be.borrow_mut();
        if fe_state == 3 && be.ring.is_none() && !be.stall {
            let d = self.daemon.borrow();
            let order: usize = d
                .tree
                .get("/local/domain/3/device/vbd/51712/ring-page-order")
                .map_or(0, |v| core::str::from_utf8(v).unwrap().parse().unwrap());
            let r0 = if order == 0 { "ring-ref" } else { "ring-ref0" };
            let gref: u32 = core::str::from_utf8(&d.tree[&format!("/local/domain/3/device/vbd/51712/{r0}")])
                .unwrap()
                .parse()
                .unwrap();
            drop(d);
            let mem = NonNull::new(self.page(gref, true)).unwrap();
            // SAFETY: the ring pages are contiguous DMA memory granted to us; only this back end and the
            // front end touch them, atomically.
            be.ring = Some(unsafe { BackRing::attach(mem, PAGE_SIZE << order, 0) }.unwrap());
            drop(be);
            self.daemon
                .borrow_mut()
                .external_write(&format!("{BE}/state"), b"4");
            return;
        }
        if fe_state == 5 {
            drop(be);
            self.daemon
                .borrow_mut()
                .external_write(&format!("{BE}/state"), b"6");
            return;
        }
        let Some(ring) = be.ring.as_mut() else { return };
        let mut reqs = Vec::new();
        while let Some(r) = ring.read_request().unwrap() {
            reqs.push(r);
        }
        for r in reqs {
            be.requests.push(r.operation);
            let (op, sector, segs): (u8, u64, Vec<BlkifRequestSegment>) = if r.operation == BLKIF_OP_INDIRECT
            {
                let ind = BlkifRequestIndirect::read_from_prefix(r.as_bytes()).unwrap().0;
                let n = ind.nr_segments as usize;
                let mut segs = Vec::new();
                for i in 0..n {
                    let page = self.page(ind.indirect_grefs[i / 512], false);
                    // SAFETY: a granted indirect page holds up to 512 segment descriptors.
                    let at = page.wrapping_add((i % 512) * 8).cast::<BlkifRequestSegment>();
                    // SAFETY: as above.
                    let s = unsafe { core::ptr::read_unaligned(at) };
                    segs.push(s);
                }
                (ind.indirect_op, ind.sector_number, segs)
            } else {
                (
                    r.operation,
                    r.sector_number,
                    r.seg[..r.nr_segments as usize].to_vec(),
                )
            };
            let mut at = sector as usize * 512;
            for s in &segs {
                let page = self.page(s.gref, op == BLKIF_OP_READ);
                let off = s.first_sect as usize * 512;
                let len = (s.last_sect as usize - s.first_sect as usize + 1) * 512;
                // SAFETY: the page is a granted 4 KiB page; off + len <= 4096.
                let start = page.wrapping_add(off);
                // SAFETY: as above; nothing else touches the page while the request is ours.
                let data = unsafe { core::slice::from_raw_parts_mut(start, len) };
                match op {
                    BLKIF_OP_READ => data.copy_from_slice(&be.disk[at..at + len]),
                    BLKIF_OP_WRITE => be.disk[at..at + len].copy_from_slice(data),
                    _ => {}
                }
                at += len;
            }
            let status = if matches!(op, BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_FLUSH_DISKCACHE) {
                0
            } else {
                -1
            };
            let ring = be.ring.as_mut().unwrap();
            ring.write_response(&BlkifResponse {
                id: r.id,
                operation: r.operation,
                status,
                ..Default::default()
            })
            .unwrap();
        }
        let ring = be.ring.as_mut().unwrap();
        if ring.push_responses_and_check_notify().unwrap()
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

fn world(max_order: &str, indirect: &str, stall: bool) -> (XenStore<NoKick>, World, &'static GrantTable) {
    crate::dma::fake::install();
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/vbd/51712/backend", BE.as_bytes());
    daemon.external_write("device/vbd/51712/backend-id", b"0");
    for (k, v) in [
        ("state", "2"),
        ("max-ring-page-order", max_order),
        ("feature-max-indirect-segments", indirect),
        ("feature-flush-cache", "1"),
        ("sectors", "4096"),
        ("sector-size", "512"),
        ("info", "0"),
    ] {
        daemon.external_write(&format!("{BE}/{k}"), v.as_bytes());
    }
    let entries: &'static mut [GrantEntryV1] =
        Box::leak(vec![GrantEntryV1::new_zeroed(); 64].into_boxed_slice());
    let p = NonNull::from(&mut entries[0]);
    // SAFETY: leaked table memory; the fake backend only reads it (as Xen would).
    let grants: &'static GrantTable = Box::leak(Box::new(unsafe { GrantTable::new(p, 64) }));
    // SAFETY: same leaked memory, read-only view for the fake backend.
    let view: &'static [GrantEntryV1] = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
    let host: &'static Host = Box::leak(Box::default());
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            be: RefCell::new(Backend {
                ring: None,
                disk: vec![0; SECTORS as usize * 512],
                stall,
                requests: Vec::new(),
            }),
            host,
            entries: view,
            now: Cell::new(0),
        },
        grants,
    )
}

fn connect(
    xs: &mut XenStore<NoKick>,
    w: &World,
    grants: &'static GrantTable,
    opts: BlkOptions,
) -> Result<BlkFront<Host>> {
    let dev = xenbus::enumerate(xs, w, "vbd")?.remove(0);
    BlkFront::connect(xs, w, w.host, grants, dev, opts)
}

#[test]
fn multi_page_ring_direct_and_indirect_requests_round_trip_and_grants_are_ended() {
    let (mut xs, w, grants) = world("3", "32", false);
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let f = dev.features();
    assert_eq!(
        (f.ring_order, f.ring_slots, f.indirect_segments, f.flush_cache),
        (2, 128, 32, true)
    );
    {
        let d = &w.daemon.borrow().tree;
        assert_eq!(d["/local/domain/3/device/vbd/51712/ring-page-order"], b"2");
        assert!(d.contains_key("/local/domain/3/device/vbd/51712/ring-ref3"));
        assert_eq!(d["/local/domain/3/device/vbd/51712/protocol"], b"x86_64-abi");
        assert_eq!(d["/local/domain/3/device/vbd/51712/event-channel"], b"17");
        assert_eq!(d["/local/domain/3/device/vbd/51712/state"], b"4");
    }
    let info = dev.info();
    assert_eq!(
        (info.capacity_sectors, info.sector_size, info.max_request_bytes),
        (SECTORS, 512, 32 * PAGE_SIZE)
    );
    assert_eq!(grants.stats().active, 4, "only the ring pages stay granted");

    // Direct (3 sectors) and indirect (16 pages = 64 KiB > 11 segments) writes and reads.
    let small: Vec<u8> = (0..1536u32).map(|i| (i * 13 % 251) as u8).collect();
    block::write(&mut dev, &w, 100, &small).unwrap();
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 253) as u8).collect();
    block::write(&mut dev, &w, 1000, &big).unwrap();
    block::flush(&mut dev, &w).unwrap();
    assert_eq!(&w.be.borrow().disk[100 * 512..100 * 512 + 1536], &small[..]);
    assert_eq!(&w.be.borrow().disk[1000 * 512..1000 * 512 + 65536], &big[..]);
    assert_eq!(
        block::read(&mut dev, &w, 100, 1536).unwrap().as_slice(),
        &small[..]
    );
    assert_eq!(
        block::read(&mut dev, &w, 1000, 65536).unwrap().as_slice(),
        &big[..]
    );
    let ops = w.be.borrow().requests.clone();
    assert_eq!(
        ops,
        [
            BLKIF_OP_WRITE,
            BLKIF_OP_INDIRECT,
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_READ,
            BLKIF_OP_INDIRECT
        ]
    );
    assert_eq!(grants.stats().active, 4, "every data and indirect grant ended");
    assert_eq!(dev.stuck_grants(), 0);

    // Queue depth > 1: 20 one-sector reads in flight at once, completed in any order.
    for i in 0..20u64 {
        let buf = DmaBuf::new(512).unwrap();
        dev.submit(BlockRequest {
            tag: i,
            op: BlockOp::Read,
            sector: 100 + i % 3,
            buf,
        })
        .map_err(|r| r.error)
        .unwrap();
    }
    assert_eq!(dev.in_flight(), 20);
    let mut tags = Vec::new();
    while tags.len() < 20 {
        w.idle(&mut || false);
        while let Some(c) = dev.poll().unwrap() {
            c.result.unwrap();
            let s = (c.tag % 3) as usize * 512;
            assert_eq!(c.buf.as_slice(), &small[s..s + 512]);
            tags.push(c.tag);
        }
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..20).collect::<Vec<_>>());
    assert!(*w.host.notifies.lock() >= 1);

    let seen = dev.disconnect(&mut xs, &w, 1_000_000).unwrap();
    assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
    assert_eq!(
        w.daemon.borrow().tree["/local/domain/3/device/vbd/51712/state"],
        b"6"
    );
    assert_eq!(grants.stats().active, 0, "ring grants ended on disconnect");
}

#[test]
fn single_page_ring_without_indirect_caps_requests_at_11_segments() {
    let (mut xs, w, grants) = world("0", "0", false);
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    assert_eq!(
        (
            dev.features().ring_order,
            dev.features().ring_slots,
            dev.features().indirect_segments
        ),
        (0, 32, 0)
    );
    assert!(
        w.daemon
            .borrow()
            .tree
            .contains_key("/local/domain/3/device/vbd/51712/ring-ref")
    );
    assert_eq!(dev.info().max_request_bytes, 11 * PAGE_SIZE);
    let data = vec![0x5au8; 11 * PAGE_SIZE];
    block::write(&mut dev, &w, 0, &data).unwrap();
    assert_eq!(
        block::read(&mut dev, &w, 0, data.len()).unwrap().as_slice(),
        &data[..]
    );
    let e = block::write(&mut dev, &w, 0, &vec![0u8; 12 * PAGE_SIZE]).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e:?}");
}

#[test]
fn a_backend_that_never_connects_times_out_with_the_device_named() {
    let (mut xs, w, grants) = world("0", "0", true);
    let opts = BlkOptions {
        timeout_us: 200_000,
        ..BlkOptions::default()
    };
    let e = connect(&mut xs, &w, grants, opts).unwrap_err();
    match e {
        Error::XenbusTimeout(t) => {
            assert_eq!(
                (t.frontend.as_str(), t.state, t.awaited),
                ("device/vbd/51712", 2, "Connected")
            );
        }
        other => panic!("expected a xenbus timeout, got {other:?}"),
    }
}
