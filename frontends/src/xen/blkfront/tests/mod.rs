//! blkfront against a fake blkback: the fake runs the backend's half of xenbus in a fake XenStore
//! and serves the ring through `ring_protocol`'s fake grant table, the way Xen would resolve the
//! grants. Like Xen, it marks a grant `GTF_reading`/`GTF_writing` while it has the page mapped (the
//! ring from connect to close, data pages while it serves their request), so a frontend that ends a
//! grant too early sees it refused. [`Mode`] turns it hostile in the ways a real backend domain
//! could.

use alloc::boxed::Box;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use ring_protocol::abi::blkif::{
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BlkifRequestIndirect,
    BlkifRequestSegment,
};
use ring_protocol::abi::grant_table::GTF_PERMIT_ACCESS;
use ring_protocol::platform::fake::FakeGrantTable;
use ring_protocol::platform::{Access, ShareMemory};
use ring_protocol::ring::BackRing;
use zerocopy::{FromBytes, IntoBytes};

use super::super::evtchn::fake::{FIRST_PORT, FakeEventChannels};
use super::super::xenstore::fake::FakeXenStore;
use super::*;
use crate::block;
use crate::dma::fake::FAKE_DMA;
use crate::wait::WaitMode;

const BE: &str = "/local/domain/0/backend/vbd/3/51712";
const FE: &str = "/local/domain/3/device/vbd/51712";
const SECTORS: u64 = 4096;
const TABLE: usize = 64;
/// The backend's domain.
const BACKEND: u16 = 0;

type Dev = BlkFront<&'static FakeGrantTable, &'static FakeEventChannels>;

/// How the fake backend misbehaves (all off: an honest backend).
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// Not there: never maps the ring, never goes past InitWait.
    absent: bool,
    /// Maps the ring on `Initialised` but never says `Connected`.
    silent: bool,
    /// Never unmaps the ring pages, even once closed.
    keep_ring: bool,
    /// Leaves data pages mapped after answering their request.
    keep_data: bool,
    /// Once asked to close, flips Connected/Closing forever instead of reaching Closed.
    flip_on_close: bool,
    /// On `Initialised`, flips Closing/Connected forever (Closing first).
    flip_on_connect: bool,
    /// Answers the request numbered `.0` (counting from 0) with id `.1`.
    forge_id: Option<(usize, u64)>,
    /// Answers every request with this operation.
    forge_op: Option<u8>,
    /// Publishes `rsp_prod` this far past its real responses (after answering).
    overrun: u32,
    /// Publishes `rsp_prod` for every request read without writing any response (the slots still
    /// hold the requests).
    phantom: bool,
}

struct Backend {
    ring: Option<BackRing<BlkifRequest, BlkifResponse>>,
    /// The ring's grant references and its first page, while mapped.
    ring_refs: Vec<u32>,
    ring_ptr: Option<*mut u8>,
    disk: Vec<u8>,
    mode: Mode,
    requests: Vec<u8>,
    answered: usize,
    flips: u64,
    /// Data grants left mapped (keep_data), with the access they were mapped with.
    kept: Vec<(u32, Access)>,
}

struct World {
    daemon: RefCell<FakeXenStore>,
    be: RefCell<Backend>,
    grants: &'static FakeGrantTable,
    events: &'static FakeEventChannels,
    now: Cell<u64>,
}

impl World {
    /// What Xen does when the backend maps `gref`: check the grant, mark it in use.
    fn map(&self, gref: u32, access: Access) -> *mut u8 {
        self.grants
            .peer_map(BACKEND, gref, access)
            .unwrap_or_else(|e| panic!("backend mapping gref {gref}: {e}"))
            .as_ptr()
    }

    fn unmap(&self, gref: u32, access: Access) {
        self.grants.peer_unmap(BACKEND, gref, access).unwrap();
    }

    fn node(&self, path: &str) -> Option<u64> {
        let d = self.daemon.borrow();
        d.tree
            .get(path)
            .map(|v| core::str::from_utf8(v).unwrap().parse().unwrap())
    }

    fn fe_state(&self) -> u64 {
        self.node(&format!("{FE}/state")).unwrap_or(0)
    }

    fn set_be_state(&self, s: &[u8]) {
        self.daemon.borrow_mut().external_write(&format!("{BE}/state"), s);
    }

    fn run_backend(&self) {
        let fe_state = self.fe_state();
        let mut be = self.be.borrow_mut();
        let mode = be.mode;
        if fe_state == 3 && be.ring_ptr.is_none() && !mode.absent {
            let order = self.node(&format!("{FE}/ring-page-order")).unwrap_or(0) as usize;
            let refs: Vec<u32> = if order == 0 {
                vec![self.node(&format!("{FE}/ring-ref")).unwrap() as u32]
            } else {
                (0..1 << order)
                    .map(|i| self.node(&format!("{FE}/ring-ref{i}")).unwrap() as u32)
                    .collect()
            };
            let pages: Vec<*mut u8> = refs.iter().map(|&r| self.map(r, Access::ReadWrite)).collect();
            for (i, p) in pages.iter().enumerate() {
                assert_eq!(*p as usize, pages[0] as usize + i * PAGE_SIZE, "contiguous ring");
            }
            let mem = NonNull::new(pages[0]).unwrap();
            // SAFETY: the ring pages are contiguous DMA memory granted to us; only this back end and the
            // front end touch them, atomically.
            be.ring = Some(unsafe { BackRing::attach(mem, PAGE_SIZE << order, 0) }.unwrap());
            be.ring_refs = refs;
            be.ring_ptr = Some(pages[0]);
            drop(be);
            if !mode.silent {
                self.set_be_state(if mode.flip_on_connect { b"5" } else { b"4" });
            }
            return;
        }
        if mode.flip_on_connect && be.ring_ptr.is_some() && fe_state == 3 {
            // Closing, then Connected, then Closing ... every 20 steps.
            be.flips += 1;
            let s: &[u8] = if (be.flips / 20).is_multiple_of(2) {
                b"5"
            } else {
                b"4"
            };
            drop(be);
            self.set_be_state(s);
            return;
        }
        if fe_state == 5 || fe_state == 6 {
            if mode.flip_on_close {
                be.flips += 1;
                let s: &[u8] = if be.flips.is_multiple_of(2) { b"5" } else { b"4" };
                drop(be);
                self.set_be_state(s);
                return;
            }
            if !mode.keep_ring {
                be.ring = None;
                for r in core::mem::take(&mut be.ring_refs) {
                    self.unmap(r, Access::ReadWrite);
                }
            }
            drop(be);
            if self.node(&format!("{BE}/state")) != Some(6) {
                self.set_be_state(b"6");
            }
            return;
        }
        let Some(ring) = be.ring.as_mut() else { return };
        let mut reqs = Vec::new();
        while let Some(r) = ring.read_request().unwrap() {
            reqs.push(r);
        }
        if mode.phantom {
            if !reqs.is_empty() {
                let claimed = be.answered as u32 + reqs.len() as u32;
                be.answered = claimed as usize;
                self.rsp_prod(&be).store(claimed, Ordering::Release);
                self.events.raise_all();
            }
            return;
        }
        let answered_now = !reqs.is_empty();
        for r in reqs {
            be.requests.push(r.operation);
            let (op, sector, segs): (u8, u64, Vec<BlkifRequestSegment>) = if r.operation == BLKIF_OP_INDIRECT
            {
                let ind = BlkifRequestIndirect::read_from_prefix(r.as_bytes()).unwrap().0;
                let n = ind.nr_segments as usize;
                let mut segs = Vec::new();
                let pages: Vec<u32> = ind.indirect_grefs[..n.div_ceil(512)].to_vec();
                for i in 0..n {
                    // A grant copy of one segment descriptor out of its indirect page.
                    let mut raw = [0u8; 8];
                    self.grants
                        .peer_read(BACKEND, pages[i / 512], (i % 512) * 8, &mut raw)
                        .unwrap();
                    segs.push(BlkifRequestSegment::read_from_bytes(&raw).unwrap());
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
                let access = if op == BLKIF_OP_READ {
                    Access::ReadWrite
                } else {
                    Access::ReadOnly
                };
                let page = self.map(s.gref, access);
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
                if mode.keep_data {
                    be.kept.push((s.gref, access));
                } else {
                    self.unmap(s.gref, access);
                }
            }
            let status = if matches!(op, BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_FLUSH_DISKCACHE) {
                0
            } else {
                -1
            };
            let n = be.answered;
            be.answered += 1;
            let id = match mode.forge_id {
                Some((nth, id)) if nth == n => id,
                _ => r.id,
            };
            let rsp = BlkifResponse {
                id,
                operation: mode.forge_op.unwrap_or(r.operation),
                status,
                ..Default::default()
            };
            be.ring.as_mut().unwrap().write_response(&rsp).unwrap();
        }
        let ring = be.ring.as_mut().unwrap();
        let notify = ring.push_responses_and_check_notify().unwrap();
        if mode.overrun > 0 && answered_now {
            let real = be.ring.as_ref().unwrap().rsp_prod_pvt();
            self.rsp_prod(&be).store(real + mode.overrun, Ordering::Release);
        }
        if notify {
            self.events.raise_all();
        }
    }

    fn rsp_prod(&self, be: &Backend) -> &'static AtomicU32 {
        // SAFETY: `rsp_prod` is the 4-aligned u32 at byte 8 of the mapped (and, in these tests,
        // never freed while used) ring page, accessed atomically by both ends.
        unsafe { AtomicU32::from_ptr(be.ring_ptr.unwrap().wrapping_add(8).cast()) }
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

/// A world whose backend publishes the usual keys, then `keys` over them, and behaves per `mode`.
fn world_with(keys: &[(&str, &str)], mode: Mode) -> (XenStore<NoKick>, World, &'static FakeGrantTable) {
    let (mut daemon, ring) = FakeXenStore::new(3);
    daemon.external_write("device/vbd/51712/backend", BE.as_bytes());
    daemon.external_write("device/vbd/51712/backend-id", b"0");
    for (k, v) in [
        ("state", "2"),
        ("max-ring-page-order", "0"),
        ("feature-max-indirect-segments", "0"),
        ("feature-flush-cache", "1"),
        ("sectors", "4096"),
        ("sector-size", "512"),
        ("info", "0"),
    ]
    .iter()
    .chain(keys)
    {
        daemon.external_write(&format!("{BE}/{k}"), v.as_bytes());
    }
    let grants: &'static FakeGrantTable = Box::leak(Box::new(FakeGrantTable::new(TABLE)));
    let events: &'static FakeEventChannels = Box::leak(Box::default());
    (
        XenStore::new(ring, NoKick),
        World {
            daemon: RefCell::new(daemon),
            be: RefCell::new(Backend {
                ring: None,
                ring_refs: Vec::new(),
                ring_ptr: None,
                disk: vec![0; SECTORS as usize * 512],
                mode,
                requests: Vec::new(),
                answered: 0,
                flips: 0,
                kept: Vec::new(),
            }),
            grants,
            events,
            now: Cell::new(0),
        },
        grants,
    )
}

fn world(max_order: &str, indirect: &str, mode: Mode) -> (XenStore<NoKick>, World, &'static FakeGrantTable) {
    world_with(
        &[
            ("max-ring-page-order", max_order),
            ("feature-max-indirect-segments", indirect),
        ],
        mode,
    )
}

fn platform(w: &World) -> XenPlatform<&'static FakeGrantTable, &'static FakeEventChannels> {
    XenPlatform {
        grants: w.grants,
        events: w.events,
        dma: crate::dma::fake::dma(),
    }
}

fn connect(
    xs: &mut XenStore<NoKick>,
    w: &World,
    grants: &'static FakeGrantTable,
    opts: BlkOptions,
) -> Result<Dev> {
    assert!(core::ptr::eq(grants, w.grants));
    let dev = xenbus::enumerate(xs, w, "vbd")?.remove(0);
    BlkFront::connect(xs, w, platform(w), dev, opts)
}

/// Short timeouts: the hostile tests wait for things that never happen.
fn quick() -> BlkOptions {
    BlkOptions {
        timeout_us: 200_000,
        ..BlkOptions::default()
    }
}

/// (grants active, grants abandoned, pages abandoned with them).
fn stats(g: &FakeGrantTable) -> (usize, usize, usize) {
    let s = g.stats();
    (s.active, s.abandoned, s.abandoned_pages)
}

/// The ring references the frontend published.
fn published_ring_refs(w: &World) -> Vec<u32> {
    match w.node(&format!("{FE}/ring-page-order")) {
        None => vec![w.node(&format!("{FE}/ring-ref")).unwrap() as u32],
        Some(order) => (0..1 << order)
            .map(|i| w.node(&format!("{FE}/ring-ref{i}")).unwrap() as u32)
            .collect(),
    }
}

/// Asserts that `refs` still grant the backend's domain access to the pages they did and are never
/// handed out again while the table fills up.
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

fn read_req(tag: u64, sector: u64, len: usize) -> BlockRequest {
    BlockRequest {
        tag,
        op: BlockOp::Read,
        sector,
        buf: DmaBuf::new(crate::dma::fake::dma(), len).unwrap(),
    }
}

/// Polls until something other than "nothing yet" comes back (bounded).
fn next(dev: &mut Dev, w: &World) -> Result<BlockCompletion> {
    crate::wait::wait_for(w, 100_000, "a completion", || dev.poll())
}

#[test]
fn multi_page_ring_direct_and_indirect_requests_round_trip_and_grants_are_ended() {
    let (mut xs, w, grants) = world("3", "32", Mode::default());
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let f = dev.features();
    assert_eq!(
        (f.ring_order, f.ring_slots, f.indirect_segments, f.flush_cache),
        (2, 128, 32, true)
    );
    {
        let d = &w.daemon.borrow().tree;
        assert_eq!(d[&format!("{FE}/ring-page-order")], b"2");
        assert!(d.contains_key(&format!("{FE}/ring-ref3")));
        assert_eq!(d[&format!("{FE}/protocol")], b"x86_64-abi");
        assert_eq!(d[&format!("{FE}/event-channel")], b"17");
        assert_eq!(d[&format!("{FE}/state")], b"4");
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
        dev.submit(read_req(i, 100 + i % 3, 512))
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
    assert!(w.events.take_notifies(FIRST_PORT) >= 1);

    let seen = dev.disconnect(&mut xs, &w, 1_000_000).unwrap();
    assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
    assert_eq!(w.daemon.borrow().tree[&format!("{FE}/state")], b"6");
    assert_eq!(
        stats(grants),
        (0, 0, 0),
        "ring grants ended on disconnect, nothing leaked"
    );
    assert_eq!(w.events.closed(), 1, "event channel closed once");
    assert!(w.events.is_closed(FIRST_PORT));
}

#[test]
fn single_page_ring_without_indirect_caps_requests_at_11_segments() {
    let (mut xs, w, grants) = world("0", "0", Mode::default());
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    assert_eq!(
        (
            dev.features().ring_order,
            dev.features().ring_slots,
            dev.features().indirect_segments
        ),
        (0, 32, 0)
    );
    assert!(w.daemon.borrow().tree.contains_key(&format!("{FE}/ring-ref")));
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

mod hostile;
