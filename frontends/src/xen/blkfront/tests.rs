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

#[test]
fn hostile_backend_that_never_connects_times_out_and_releases_everything() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            absent: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    match e {
        Error::XenbusTimeout(t) => {
            assert_eq!(
                (t.frontend.as_str(), t.state, t.awaited),
                ("device/vbd/51712", 2, "Connected")
            );
        }
        other => panic!("expected a xenbus timeout, got {other:?}"),
    }
    assert_eq!(stats(grants), (0, 0, 0), "the ring's grant ended, nothing leaked");
    assert_eq!(w.events.closed(), 1, "event channel closed");
    assert_eq!(w.fe_state(), 6, "frontend gave the device up (Closed)");
    assert!(w.now.get() < 2_000_000, "bounded: {} us", w.now.get());
}

#[test]
fn xsa396_backend_that_maps_the_ring_and_never_connects_gets_the_ring_abandoned_not_freed() {
    let (mut xs, w, grants) = world(
        "2",
        "0",
        Mode {
            silent: true,
            keep_ring: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(matches!(e, Error::XenbusTimeout(_)), "{e:?}");
    let refs = published_ring_refs(&w);
    assert_eq!(refs.len(), 4);
    assert_eq!(
        stats(grants),
        (4, 4, 4),
        "four ring grants abandoned, four pages leaked"
    );
    let ring = w.be.borrow().ring_ptr.unwrap();
    for p in 0..4 {
        assert!(
            FAKE_DMA.is_live(ring.wrapping_add(p * PAGE_SIZE)),
            "ring page {p} freed while mapped"
        );
    }
    assert_still_granted_and_never_reused(grants, &refs);
}

#[test]
fn xsa396_connect_failing_after_the_backend_mapped_the_ring_abandons_it_and_counts() {
    // The backend maps the ring, says Connected with a bad sector-size, and keeps the ring mapped
    // through the close handshake.
    let (mut xs, w, grants) = world_with(
        &[("max-ring-page-order", "1"), ("sector-size", "3000")],
        Mode {
            keep_ring: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "sector-size",
                value: 3000,
                ..
            }
        ),
        "{e:?}"
    );
    let refs = published_ring_refs(&w);
    assert_eq!(stats(grants), (2, 2, 2));
    let ring = w.be.borrow().ring_ptr.unwrap();
    assert!(FAKE_DMA.is_live(ring) && FAKE_DMA.is_live(ring.wrapping_add(PAGE_SIZE)));
    assert_still_granted_and_never_reused(grants, &refs);
    assert_eq!(w.fe_state(), 6, "frontend Closed");
    // The page is still the backend's, untouched by anyone else: what it writes stays.
    // SAFETY: the abandoned ring page is leaked (never freed), so it stays valid.
    unsafe { ring.wrapping_add(100).write_volatile(0xa5) };
    // SAFETY: as above.
    assert_eq!(unsafe { ring.wrapping_add(100).read_volatile() }, 0xa5);
}

#[test]
fn xsa396_connect_failing_after_the_ring_was_mapped_ends_the_grants_once_the_backend_lets_go() {
    // Same failure, but the backend unmaps when asked to close: nothing is leaked.
    let (mut xs, w, grants) = world_with(
        &[("max-ring-page-order", "1"), ("sector-size", "3000")],
        Mode::default(),
    );
    connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(
        w.be.borrow().ring_ptr.is_some(),
        "the backend had mapped the ring"
    );
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_publishing_bad_sizes_and_orders_gets_a_typed_error_or_a_clamped_value() {
    let refused: &[(&str, &str)] = &[
        ("sector-size", "0"),
        ("sector-size", "256"),
        ("sector-size", "1536"),
        ("sector-size", "3000"),
        ("sector-size", "8192"),
        ("sector-size", "18446744073709551615"),
        ("sector-size", "99999999999999999999999"),
        ("sector-size", "-512"),
        ("sector-size", "+512"),
        ("sector-size", "5l2"),
        ("sector-size", ""),
        ("sectors", "18446744073709551615"),
        ("sectors", "36028797018963968"),
        ("sectors", "lots"),
        ("info", "4294967296"),
        ("feature-flush-cache", "2"),
        ("feature-barrier", "yes"),
        ("max-ring-page-order", "-1"),
        ("feature-max-indirect-segments", "1e9"),
    ];
    for &(key, value) in refused {
        let (mut xs, w, grants) = world_with(&[(key, value)], Mode::default());
        let e = connect(&mut xs, &w, grants, quick()).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::Protocol { .. } | Error::XenStore(_)),
            "{key}={value:?}: {e:?}"
        );
        let text = format!("{e}");
        assert!(
            text.contains(key),
            "{key}={value:?}: the message names the key: {text}"
        );
        assert_eq!(stats(grants), (0, 0, 0), "{key}={value:?}: ring released");
    }
    // Absurd offers we can live with are clamped.
    let (mut xs, w, grants) = world_with(
        &[
            ("max-ring-page-order", "4294967298"),
            ("feature-max-indirect-segments", "4294967296"),
            ("sectors", "36028797018963967"),
            ("sector-size", "4096"),
        ],
        Mode::default(),
    );
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let (f, i) = (dev.features(), dev.info());
    assert_eq!((f.ring_order, f.indirect_segments), (2, 256));
    assert_eq!((i.capacity_sectors, i.sector_size), (36028797018963967 / 8, 4096));
    drop(dev);
    let (mut xs, w, grants) = world_with(&[("feature-max-indirect-segments", "5")], Mode::default());
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    assert_eq!(
        (dev.features().indirect_segments, dev.info().max_request_bytes),
        (0, 11 * PAGE_SIZE),
        "fewer indirect segments than a direct request holds: direct only"
    );
}

#[test]
fn xsa155_forged_response_id_is_copied_then_refused_and_halts_only_that_device() {
    for (forged, what) in [
        (1u64 << 40, "out of range"),
        (31, "in range, never issued"),
        (u64::MAX, "all ones"),
        (0, "the id of the request just completed (a duplicate answer)"),
    ] {
        let (mut xs, w, grants) = world(
            "0",
            "0",
            Mode {
                forge_id: Some((1, forged)),
                ..Mode::default()
            },
        );
        w.be.borrow_mut().disk[512..1024].fill(0x42);
        let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
        dev.submit(read_req(7, 1, 512)).map_err(|r| r.error).unwrap();
        dev.submit(read_req(8, 1, 512)).map_err(|r| r.error).unwrap();
        // The honest first answer completes its request with the right data.
        let c = next(&mut dev, &w).unwrap();
        assert_eq!(c.tag, 7, "{what}");
        c.result.unwrap();
        assert!(c.buf.as_slice().iter().all(|&b| b == 0x42), "{what}");
        // The forged one is refused, never used as an index.
        let e = next(&mut dev, &w).unwrap_err();
        assert_eq!(
            e,
            Error::Protocol {
                device: "xen-blk",
                what: "response id not in flight",
                value: forged
            },
            "{what}"
        );
        assert_eq!(dev.broken(), Some(&e));
        // The request it should have answered comes back failed, with its buffer.
        let c = dev.poll().unwrap().unwrap();
        assert_eq!((c.tag, c.buf.len(), c.result), (8, 512, Err(e.clone())), "{what}");
        assert_eq!(dev.poll().unwrap_err(), e);
        let r = dev.submit(read_req(9, 1, 512)).unwrap_err();
        assert_eq!((r.error, r.req.buf.len()), (e.clone(), 512), "{what}");
        assert_eq!(dev.in_flight(), 0);
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0), "{what}");
    }
}

#[test]
fn xsa155_response_naming_another_operation_is_refused() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            forge_op: Some(BLKIF_OP_WRITE),
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
    let e = next(&mut dev, &w).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xen-blk",
            what: "response operation differs from its request's",
            value: u64::from(BLKIF_OP_WRITE)
        }
    );
    let c = dev.poll().unwrap().unwrap();
    assert_eq!((c.tag, c.result), (1, Err(e)));
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_overrunning_rsp_prod_halts_the_ring_with_no_out_of_bounds_read() {
    for overrun in [1u32, 32, 1000, u32::MAX / 2] {
        let (mut xs, w, grants) = world(
            "0",
            "0",
            Mode {
                overrun,
                ..Mode::default()
            },
        );
        let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
        dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
        dev.submit(read_req(2, 0, 512)).map_err(|r| r.error).unwrap();
        let e = next(&mut dev, &w).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Ring(ring_protocol::Error::ResponseOverrun { outstanding: 2, .. })
            ),
            "overrun {overrun}: {e:?}"
        );
        // Both requests come back failed with their buffers (their grants ended), then the error.
        for _ in 0..2 {
            let c = dev.poll().unwrap().unwrap();
            assert_eq!((c.buf.len(), c.result), (512, Err(e.clone())));
        }
        assert_eq!(dev.poll().unwrap_err(), e);
        assert_eq!(grants.stats().active, 1, "only the ring is still granted");
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0));
    }
    // Claiming responses it never wrote (within the requests outstanding): the slots still hold
    // our requests, whose bytes make no valid response id; refused, never used as an index.
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            phantom: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
    let e = next(&mut dev, &w).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "response id not in flight",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(dev.poll().unwrap().unwrap().result, Err(e));
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn xsa396_backend_keeping_a_data_grant_after_its_response_halts_and_the_page_is_never_freed() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            keep_data: true,
            keep_ring: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let req = read_req(5, 0, 2 * PAGE_SIZE);
    let data = req.buf.as_ptr();
    dev.submit(req).map_err(|r| r.error).unwrap();
    let c = next(&mut dev, &w).unwrap();
    let e = Error::Protocol {
        device: "xen-blk",
        what: "backend kept a grant after completing the request",
        value: 0,
    };
    assert_eq!((c.tag, c.buf.len(), c.result), (5, 0, Err(e.clone())));
    assert_eq!(dev.stuck_grants(), 2);
    assert!(FAKE_DMA.is_live(data) && FAKE_DMA.is_live(data.wrapping_add(PAGE_SIZE)));
    assert_eq!(dev.submit(read_req(6, 0, 512)).unwrap_err().error, e);
    let kept = w.be.borrow().kept.clone();
    let ring_refs = published_ring_refs(&w);
    // The backend also keeps everything through the close handshake.
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(
        stats(grants),
        (3, 3, 3),
        "two data pages and the ring page abandoned"
    );
    assert!(FAKE_DMA.is_live(data) && FAKE_DMA.is_live(data.wrapping_add(PAGE_SIZE)));
    let all: Vec<u32> = kept.iter().map(|&(r, _)| r).chain(ring_refs).collect();
    assert_still_granted_and_never_reused(grants, &all);
}

#[test]
fn xsa396_a_backend_that_lets_go_late_gets_its_grants_ended_not_abandoned() {
    // The data grants stay mapped after the response but are unmapped when the device closes
    // (like a slow backend): disconnect retries and ends them; nothing leaks.
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            keep_data: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(5, 0, 512)).map_err(|r| r.error).unwrap();
    assert!(next(&mut dev, &w).unwrap().result.is_err());
    for (r, access) in core::mem::take(&mut w.be.borrow_mut().kept) {
        w.unmap(r, access);
    }
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_flipping_state_while_connecting_is_refused_with_a_typed_error() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            flip_on_connect: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xenbus",
            what: "backend left the handshake (its state shown)",
            value: 5
        }
    );
    assert_eq!(stats(grants), (0, 0, 0), "ring unmapped on close and released");
    assert!(w.now.get() < 2_000_000, "bounded: {} us", w.now.get());
}

#[test]
fn hostile_backend_flipping_state_on_close_cannot_hold_disconnect() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            flip_on_close: true,
            ..Mode::default()
        },
    );
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let before = w.now.get();
    let e = dev.disconnect(&mut xs, &w, 100_000).unwrap_err();
    assert!(matches!(e, Error::XenbusTimeout(_)), "{e:?}");
    assert!(w.be.borrow().flips > 10, "it did flip");
    assert!(w.now.get() - before < 1_000_000, "bounded");
    assert_eq!(w.fe_state(), 6, "frontend Closed anyway");
    // It never unmapped the ring: abandoned, counted.
    assert_eq!(stats(grants), (1, 1, 1));
}

#[cfg(feature = "hostile-frontend")]
#[test]
fn hostile_frontend_publishes_an_index_a_correct_backend_refuses() {
    let (mut xs, w, grants) = world("0", "0", Mode::default());
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    block::write(&mut dev, &w, 0, &[1u8; 512]).unwrap();
    let before = w.events.take_notifies(FIRST_PORT);
    let published = dev.publish_impossible_requests().unwrap();
    assert_eq!(
        published,
        1 + 32 + 7,
        "a ring's worth and more past the one request made"
    );
    assert_eq!(
        w.events.take_notifies(FIRST_PORT),
        1,
        "the backend is told ({before} before)"
    );
    // What the backend's ring says about it (the fake backend is not run: it would stop there).
    let e =
        w.be.borrow_mut()
            .ring
            .as_mut()
            .unwrap()
            .read_request()
            .unwrap_err();
    assert!(matches!(e, ring_protocol::Error::RequestOverrun { .. }), "{e:?}");
    drop(dev);
}
