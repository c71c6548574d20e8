//! blkback: the blkif protocol (`io/blkif.h`) served from the block core.
//!
//! Offered to the frontend: rings of up to [`MAX_RING_PAGE_ORDER`] (16 pages), indirect requests of
//! up to [`MAX_INDIRECT_SEGMENTS`] segments, cache flush, discard (punching holes in the image), and
//! the read-only `info` bit when the image is. Not offered: write barriers, persistent grants,
//! multiple queues.
//!
//! Every request is copied out of the ring once and validated before anything happens (segment
//! counts, sector ranges within a page, the indirect pages' contents, which are copied in too). Data
//! moves with grant copies between the frontend's pages and the request's slot in an `mmap`'d
//! arena; reads and writes of one ring pass go to the image together through Linux AIO
//! ([`crate::aio`]), flushes and discards run in place. A request that is invalid or whose grants Xen
//! refuses gets `BLKIF_RSP_ERROR` (unknown operations `BLKIF_RSP_EOPNOTSUPP`) and the ring goes on. A
//! frontend that moves the ring's indices impossibly halts this device only.

use std::os::fd::RawFd;
use std::sync::Arc;

use ring_protocol::abi::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestDiscard,
    BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, VDISK_READONLY, xenbus_keys as keys,
};
use ring_protocol::abi::xen::{DomId, XEN_IO_PROTO_ABI_X86_64};
use ring_protocol::ring::BackRing;
use zerocopy::{FromBytes, IntoBytes};

use super::evtchn::EventChannel;
use super::gntdev::{GntDev, GrantCopy, GrantPiece, PAGE_SIZE};
use super::xenbus::{Backend, Connected, DeviceId, Engine, Frontend, Rings};
use crate::aio::{AioQueue, Transfer};
use crate::block::{BlockCore, Data, Op, Request};

/// Largest ring offered: 2^4 pages.
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Segments per indirect request offered (Linux's blkback offers 32; its blkfront uses up to 256).
pub const MAX_INDIRECT_SEGMENTS: usize = 256;
/// Failed requests logged one by one before the log only counts them.
const LOGGED_FAILURES: u64 = 16;

const _: () =
    assert!(MAX_INDIRECT_SEGMENTS <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGMENTS_PER_INDIRECT_PAGE);

/// A vbd backed by a block core.
#[derive(Debug)]
pub struct BlkBackend {
    core: Arc<BlockCore>,
    gnt: Arc<GntDev>,
}

impl BlkBackend {
    /// A vbd serving `core`, reaching the frontend's memory through `gnt`.
    pub fn new(core: Arc<BlockCore>, gnt: Arc<GntDev>) -> Self {
        BlkBackend { core, gnt }
    }
}

impl Backend for BlkBackend {
    fn frontend_keys(&self, id: &DeviceId) -> Vec<(String, String)> {
        vec![
            ("virtual-device".into(), id.devid.to_string()),
            ("device-type".into(), "disk".into()),
        ]
    }

    fn backend_keys(&self, id: &DeviceId) -> Vec<(String, String)> {
        let ro = self.core.options().read_only;
        let mut k: Vec<(String, String)> = vec![
            ("dev".into(), format!("xvd-{}", id.devid)),
            ("type".into(), "pvkit".into()),
            ("mode".into(), if ro { "r" } else { "w" }.into()),
            (keys::SECTORS.into(), self.core.capacity().to_string()),
            (keys::SECTOR_SIZE.into(), "512".into()),
            (keys::PHYSICAL_SECTOR_SIZE.into(), "512".into()),
            (keys::INFO.into(), if ro { VDISK_READONLY } else { 0 }.to_string()),
            (keys::MAX_RING_PAGE_ORDER.into(), MAX_RING_PAGE_ORDER.to_string()),
            (
                keys::FEATURE_MAX_INDIRECT_SEGMENTS.into(),
                MAX_INDIRECT_SEGMENTS.to_string(),
            ),
            (keys::FEATURE_FLUSH_CACHE.into(), "1".into()),
            (keys::FEATURE_BARRIER.into(), "0".into()),
            (keys::FEATURE_PERSISTENT.into(), "0".into()),
        ];
        if !ro {
            k.extend([
                (keys::FEATURE_DISCARD.into(), "1".into()),
                ("discard-granularity".into(), "4096".into()),
                ("discard-alignment".into(), "0".into()),
                ("discard-secure".into(), "0".into()),
            ]);
        }
        k
    }

    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Box<dyn Rings>, String> {
        if let Some(p) = front.get(keys::PROTOCOL)
            && p != XEN_IO_PROTO_ABI_X86_64
        {
            return Err(format!(
                "protocol {p:?} is not supported (only {XEN_IO_PROTO_ABI_X86_64})"
            ));
        }
        let order = front.opt_number(keys::RING_PAGE_ORDER)?.unwrap_or(0);
        if order > u64::from(MAX_RING_PAGE_ORDER) {
            return Err(format!(
                "ring-page-order {order} exceeds the offered {MAX_RING_PAGE_ORDER}"
            ));
        }
        let refs = ring_refs(front, order as u32)?;
        let port = front.number(keys::EVENT_CHANNEL)?;
        let port = u32::try_from(port).map_err(|_| format!("event-channel {port} is out of range"))?;
        let map = self
            .gnt
            .map(id.domid, &refs, true)
            .map_err(|e| format!("cannot map the ring (ring-ref {refs:?}): {e}"))?;
        // SAFETY: the mapping stays alive in the same `BlkRings` as the ring (declared after it, so
        // dropped after it); only the ring touches it, with atomics; the frontend is outside the Rust
        // memory model.
        let ring = unsafe { BackRing::<BlkifRequest, BlkifResponse>::new(map.as_ptr(), map.len()) }
            .map_err(|e| format!("ring of {} bytes unusable: {e}", map.len()))?;
        let channel = EventChannel::bind_interdomain(id.domid, port)
            .map_err(|e| format!("cannot bind event-channel {port} of domain {}: {e}", id.domid))?;
        tracing::info!(
            device = %id,
            ring_pages = refs.len(),
            slots = ring.size(),
            port,
            local_port = channel.local_port(),
            "ring mapped"
        );
        let gnt: Arc<dyn GrantCopy> = self.gnt.clone();
        let engine = BlkRing::new(ring, id.domid, id.to_string(), self.core.clone(), gnt)?;
        Ok(Connected::new(engine, vec![map], channel))
    }
}

/// `ring-ref`, or `ring-ref0..N` for a multi-page ring.
fn ring_refs(front: &Frontend, order: u32) -> Result<Vec<u32>, String> {
    let grant = |key: &str| -> Result<u32, String> {
        let v = front.number(key)?;
        u32::try_from(v).map_err(|_| format!("{key} {v} is not a grant reference"))
    };
    if order == 0 && front.get(keys::RING_REF).is_some() {
        return Ok(vec![grant(keys::RING_REF)?]);
    }
    (0..1u32 << order)
        .map(|i| grant(&format!("{}{i}", keys::RING_REF)))
        .collect()
}

#[derive(Debug, Default)]
struct Counts {
    requests: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    indirect: u64,
    bytes: u64,
    failed: u64,
    notifies: u64,
}

/// The blkif protocol engine of one ring, independent of how the ring memory and the frontend's
/// pages are reached (host tests drive it on local memory).
struct BlkRing {
    ring: BackRing<BlkifRequest, BlkifResponse>,
    domid: DomId,
    name: String,
    core: Arc<BlockCore>,
    gnt: Arc<dyn GrantCopy>,
    /// Reads and writes in flight. Declared before `slots`, so dropping the rings first waits for
    /// them and only then frees their buffers.
    aio: AioQueue,
    /// Per AIO token: the request in flight, with its data buffer (4 KiB-aligned, so `O_DIRECT`
    /// images need no bounce).
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// One [`SLOT_BYTES`] buffer per ring slot, mapped once for the connection (requests larger
    /// than that get pages of their own).
    arena: Pages,
    counts: Counts,
}

/// Requests up to this size use their slot's buffer in the arena.
const SLOT_BYTES: usize = 128 * 1024;

/// Page-granular anonymous memory of its own (`mmap`), never shared with the heap: request data
/// that Xen (grant copy) and the kernel (`O_DIRECT`) write into directly.
struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an anonymous private mapping owned by this value.
unsafe impl Send for Pages {}

impl Pages {
    fn new(len: usize) -> std::io::Result<Pages> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Pages { ptr: ptr.cast(), len })
    }

    /// Slot `i`'s buffer in an arena of [`SLOT_BYTES`] slots.
    fn slot(&self, i: usize) -> *mut u8 {
        assert!((i + 1) * SLOT_BYTES <= self.len, "slot {i} outside the arena");
        self.ptr.wrapping_add(i * SLOT_BYTES)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; everything that wrote into it (the AIO
        // queue) is gone first (field order of `BlkRings`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where one request's data lives.
enum DataBuf {
    /// Its ring slot's buffer in the arena.
    Slot(*mut u8),
    /// Pages of its own.
    Own(Pages),
}

// SAFETY: a slot pointer is only used by the ring's thread, which owns the arena.
unsafe impl Send for DataBuf {}

impl DataBuf {
    fn ptr(&self) -> *mut u8 {
        match self {
            DataBuf::Slot(p) => *p,
            DataBuf::Own(p) => p.ptr,
        }
    }

    /// The first `len` bytes (at most the buffer's size: checked by the caller's choice of buffer).
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the buffer holds at least `len` bytes (slot: `len <= SLOT_BYTES`; own pages:
        // allocated for `len`), only this request uses it, and no I/O is in flight on it while the
        // ring's thread holds this borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), len) }
    }

    fn bytes_ref(&self, len: usize) -> &[u8] {
        // SAFETY: as `bytes`; the request's I/O has completed.
        unsafe { std::slice::from_raw_parts(self.ptr(), len) }
    }
}

/// A read or write handed to the AIO queue.
struct InFlight {
    id: u64,
    op: u8,
    buf: DataBuf,
    /// For a read: where its bytes go once it completes.
    copy_out: Option<Vec<GrantPiece>>,
    len: usize,
}

/// Why a request failed (after which the ring goes on).
enum Refusal {
    Unsupported(String),
    Failed(String),
}

impl Engine for BlkRing {
    fn process(&mut self, notify: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
        BlkRing::process(self, notify)
    }

    fn summary(&self, events: u64) -> String {
        BlkRing::summary(self, events)
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.aio.completion_fd())
    }
}

impl BlkRing {
    fn new(
        ring: BackRing<BlkifRequest, BlkifResponse>,
        domid: DomId,
        name: String,
        core: Arc<BlockCore>,
        gnt: Arc<dyn GrantCopy>,
    ) -> Result<Self, String> {
        let ring_size = ring.size() as usize;
        Ok(BlkRing {
            ring,
            domid,
            name,
            aio: AioQueue::new(core.clone(), ring_size).map_err(|e| format!("AIO context: {e}"))?,
            core,
            gnt,
            slots: (0..ring_size).map(|_| None).collect(),
            free: (0..ring_size).rev().collect(),
            arena: Pages::new(ring_size * SLOT_BYTES).map_err(|e| format!("buffer arena: {e}"))?,
            counts: Counts::default(),
        })
    }

    /// Serves everything the ring and the AIO queue hold; `notify` tells the frontend.
    fn process(&mut self, notify: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
        let halted = |e| format!("ring halted: {e}");
        loop {
            for (token, r) in self.aio.reap() {
                let rsp = self.complete(token, r);
                self.ring.write_response(&rsp).map_err(halted)?;
            }
            while let Some(req) = self.ring.read_request().map_err(halted)? {
                if let Some(rsp) = self.handle(&req) {
                    self.ring.write_response(&rsp).map_err(halted)?;
                }
            }
            // One io_submit for everything this batch queued (a lone request runs right away).
            self.aio.submit().map_err(|e| format!("io_submit: {e}"))?;
            if self.aio.has_ready() {
                continue;
            }
            if self.ring.push_responses_and_check_notify().map_err(halted)? {
                notify()?;
                self.counts.notifies += 1;
            }
            if !self.ring.final_check_for_requests().map_err(halted)? {
                return Ok(());
            }
        }
    }

    fn summary(&self, events: u64) -> String {
        let c = &self.counts;
        format!(
            "requests={} reads={} writes={} flushes={} discards={} indirect={} bytes={} failed={} \
             events={} notifies={}",
            c.requests,
            c.reads,
            c.writes,
            c.flushes,
            c.discards,
            c.indirect,
            c.bytes,
            c.failed,
            events,
            c.notifies
        )
    }
    /// Serves one request: `None` if it was queued (its response comes from `complete`).
    fn handle(&mut self, req: &BlkifRequest) -> Option<BlkifResponse> {
        self.counts.requests += 1;
        let (id, op, result) = match req.operation {
            BLKIF_OP_DISCARD => {
                let d = BlkifRequestDiscard::read_from_prefix(req.as_bytes())
                    .expect("a ring slot holds a discard")
                    .0;
                (d.id, d.operation, self.discard(&d).map(|()| false))
            }
            BLKIF_OP_INDIRECT => {
                let ind = BlkifRequestIndirect::read_from_prefix(req.as_bytes())
                    .expect("a ring slot holds an indirect request")
                    .0;
                self.counts.indirect += 1;
                (ind.id, ind.indirect_op, self.indirect(&ind))
            }
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let r = direct_pieces(req)
                    .and_then(|p| self.transfer(req.id, req.operation, req.sector_number, p));
                (req.id, req.operation, r)
            }
            BLKIF_OP_FLUSH_DISKCACHE => {
                self.counts.flushes += 1;
                (
                    req.id,
                    req.operation,
                    self.execute(Op::Flush, 0, Data::None).map(|_| false),
                )
            }
            other => (
                req.id,
                other,
                Err(Refusal::Unsupported(format!("operation {other} is not offered"))),
            ),
        };
        match result {
            Ok(true) => None,
            Ok(false) => Some(self.response(id, op, Ok(()))),
            Err(r) => Some(self.response(id, op, Err(r))),
        }
    }

    /// The response to a queued read or write that completed; a read's data is copied out first.
    fn complete(&mut self, token: usize, r: crate::Result<usize>) -> BlkifResponse {
        let f = self.slots[token]
            .take()
            .expect("a completion for a token in flight");
        self.free.push(token);
        let result = match (r, &f.copy_out) {
            (Err(e), _) => Err(Refusal::Failed(e.to_string())),
            (Ok(_), Some(pieces)) => self
                .gnt
                .copy_to_guest(self.domid, pieces, f.buf.bytes_ref(f.len))
                .map_err(|e| Refusal::Failed(format!("read data: {e}"))),
            (Ok(_), None) => Ok(()),
        };
        if result.is_ok() {
            self.counts.bytes += f.len as u64;
        }
        self.response(f.id, f.op, result)
    }

    fn response(&mut self, id: u64, op: u8, result: Result<(), Refusal>) -> BlkifResponse {
        let status = match result {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(r) => {
                self.counts.failed += 1;
                let (status, why) = match r {
                    Refusal::Unsupported(w) => (BLKIF_RSP_EOPNOTSUPP, w),
                    Refusal::Failed(w) => (BLKIF_RSP_ERROR, w),
                };
                if self.counts.failed <= LOGGED_FAILURES {
                    tracing::warn!(device = %self.name, id, op, "request failed: {why}");
                }
                status
            }
        };
        BlkifResponse {
            id,
            operation: op,
            status,
            ..Default::default()
        }
    }

    fn execute(&mut self, op: Op, sector: u64, data: Data) -> Result<usize, Refusal> {
        let mut req = Request { op, sector, data };
        self.core
            .execute(&mut req)
            .map_err(|e| Refusal::Failed(e.to_string()))
    }

    fn discard(&mut self, d: &BlkifRequestDiscard) -> Result<(), Refusal> {
        if d.flag != 0 {
            return Err(Refusal::Unsupported("secure discard is not offered".into()));
        }
        self.counts.discards += 1;
        self.execute(
            Op::Discard {
                sectors: d.nr_sectors,
            },
            d.sector_number,
            Data::None,
        )
        .map(drop)
    }

    fn indirect(&mut self, ind: &BlkifRequestIndirect) -> Result<bool, Refusal> {
        if ind.indirect_op != BLKIF_OP_READ && ind.indirect_op != BLKIF_OP_WRITE {
            return Err(Refusal::Failed(format!(
                "indirect operation {} is not read or write",
                ind.indirect_op
            )));
        }
        let n = usize::from(ind.nr_segments);
        if n == 0 || n > MAX_INDIRECT_SEGMENTS {
            return Err(Refusal::Failed(format!(
                "{n} indirect segments (1 to {MAX_INDIRECT_SEGMENTS} offered)"
            )));
        }
        // Copy the segment descriptors in, then validate our copy.
        let mut raw = vec![0u8; n * size_of::<BlkifRequestSegment>()];
        let pieces: Vec<GrantPiece> = raw
            .chunks(PAGE_SIZE)
            .zip(ind.indirect_grefs)
            .map(|(chunk, gref)| GrantPiece {
                gref,
                offset: 0,
                len: chunk.len() as u16,
            })
            .collect();
        self.gnt
            .copy_from_guest(self.domid, &pieces, &mut raw)
            .map_err(|e| Refusal::Failed(format!("indirect pages: {e}")))?;
        let segs = <[BlkifRequestSegment]>::ref_from_bytes(&raw).expect("whole segments");
        let pieces = segment_pieces(segs)?;
        self.transfer(ind.id, ind.indirect_op, ind.sector_number, pieces)
    }

    /// Queues a read or write of `pieces` (already validated) at `sector`; a write's data is
    /// copied in now, a read's is copied out when it completes. `Ok(true)`: queued.
    fn transfer(&mut self, id: u64, op: u8, sector: u64, pieces: Vec<GrantPiece>) -> Result<bool, Refusal> {
        let len: usize = pieces.iter().map(|p| usize::from(p.len)).sum();
        let write = op == BLKIF_OP_WRITE;
        let Some(token) = self.free.pop() else {
            return Err(Refusal::Failed(format!(
                "{} requests already in flight",
                self.slots.len()
            )));
        };
        let mut buf = if len <= SLOT_BYTES {
            DataBuf::Slot(self.arena.slot(token))
        } else {
            match Pages::new(len) {
                Ok(p) => DataBuf::Own(p),
                Err(e) => {
                    self.free.push(token);
                    return Err(Refusal::Failed(format!("{len}-byte buffer: {e}")));
                }
            }
        };
        if write {
            self.counts.writes += 1;
            if let Err(e) = self.gnt.copy_from_guest(self.domid, &pieces, buf.bytes(len)) {
                self.free.push(token);
                return Err(Refusal::Failed(format!("write data: {e}")));
            }
        } else {
            self.counts.reads += 1;
        }
        let t = Transfer {
            write,
            sector,
            buf: buf.ptr(),
            len,
        };
        // SAFETY: the buffer lives in `slots[token]` until `complete` takes it after the queue
        // returned the token's completion, or until the rings are dropped, which drops the queue
        // (waiting for everything in flight) before `slots`.
        if let Err(e) = unsafe { self.aio.push(token, t) } {
            self.free.push(token);
            return Err(Refusal::Failed(e.to_string()));
        }
        self.slots[token] = Some(InFlight {
            id,
            op,
            buf,
            copy_out: (!write).then_some(pieces),
            len,
        });
        Ok(true)
    }
}

/// The pieces of a direct read or write (1 to 11 segments).
fn direct_pieces(req: &BlkifRequest) -> Result<Vec<GrantPiece>, Refusal> {
    let n = usize::from(req.nr_segments);
    if n == 0 || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Err(Refusal::Failed(format!(
            "{n} segments (1 to {BLKIF_MAX_SEGMENTS_PER_REQUEST} allowed)"
        )));
    }
    segment_pieces(&req.seg[..n])
}

/// Each segment covers sectors `first_sect..=last_sect` of its page.
fn segment_pieces(segs: &[BlkifRequestSegment]) -> Result<Vec<GrantPiece>, Refusal> {
    const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / 512) as u8;
    segs.iter()
        .enumerate()
        .map(|(i, s)| {
            if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
                return Err(Refusal::Failed(format!(
                    "segment {i}: sectors {}..={} do not fit a page",
                    s.first_sect, s.last_sect
                )));
            }
            Ok(GrantPiece {
                gref: s.gref,
                offset: u16::from(s.first_sect) * 512,
                len: u16::from(s.last_sect - s.first_sect + 1) * 512,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_protocol::ring::{FrontRing, SharedPages};

    use crate::block::BlockOptions;
    use crate::xen::gntdev::FakeGrants;

    const DOMID: DomId = 7;

    /// Our frontend ring and the backend engine on one local ring page, a 1 MiB image.
    struct Rig {
        front: FrontRing<BlkifRequest, BlkifResponse>,
        back: BlkRing,
        grants: Arc<FakeGrants>,
        core: Arc<BlockCore>,
        _img: tempfile::NamedTempFile,
        _mem: SharedPages,
    }

    fn rig() -> Rig {
        let mem = SharedPages::new(PAGE_SIZE);
        // SAFETY: `mem` outlives both rings (same struct, dropped after them); they access it
        // only atomically.
        let front = unsafe { FrontRing::init(mem.as_ptr(), mem.len()) }.unwrap();
        // SAFETY: as above.
        let ring = unsafe { BackRing::new(mem.as_ptr(), mem.len()) }.unwrap();
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(2048 * 512).unwrap();
        let core = Arc::new(BlockCore::open(img.path(), BlockOptions::default()).unwrap());
        let grants = Arc::new(FakeGrants::new(DOMID));
        let gnt: Arc<dyn GrantCopy> = grants.clone();
        let back = BlkRing::new(ring, DOMID, "vbd test".into(), core.clone(), gnt).unwrap();
        Rig {
            front,
            back,
            grants,
            core,
            _img: img,
            _mem: mem,
        }
    }

    impl Rig {
        /// Pushes `reqs`, serves them, and collects their responses (AIO completions included).
        fn run(&mut self, reqs: &[BlkifRequest]) -> Vec<BlkifResponse> {
            for r in reqs {
                self.front.write_request(r).unwrap();
            }
            self.front.push_requests().unwrap();
            let mut out = Vec::new();
            for _ in 0..2000 {
                self.back.process(&mut || Ok(())).unwrap();
                while let Some(r) = self.front.read_response().unwrap() {
                    out.push(r);
                }
                if out.len() >= reqs.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(out.len(), reqs.len(), "responses");
            out.sort_by_key(|r| r.id);
            out
        }

        fn image(&self, sector: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            let mut req = Request {
                op: Op::Read,
                sector,
                data: Data::Owned(std::mem::take(&mut buf)),
            };
            self.core.execute(&mut req).unwrap();
            match req.data {
                Data::Owned(v) => v,
                _ => unreachable!(),
            }
        }
    }

    fn rw(id: u64, op: u8, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
        let mut r = BlkifRequest {
            operation: op,
            nr_segments: segs.len() as u8,
            id,
            sector_number: sector,
            ..Default::default()
        };
        r.seg[..segs.len()].copy_from_slice(segs);
        r
    }

    #[test]
    fn writes_reach_the_image_and_reads_come_back_through_the_grants() {
        let mut rig = rig();
        rig.grants.grant(10, 0xa1);
        rig.grants.grant(11, 0xb2);
        rig.grants.grant(12, 0);
        // Write a whole page and sectors 2..=3 of another, then read both extents back into page 12.
        let rsp = rig.run(&[
            rw(1, BLKIF_OP_WRITE, 8, &[seg(10, 0, 7)]),
            rw(2, BLKIF_OP_WRITE, 100, &[seg(11, 2, 3)]),
        ]);
        assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsp:?}");
        assert_eq!(rig.image(8, 4096), vec![0xa1; 4096]);
        assert_eq!(rig.image(100, 1024), vec![0xb2; 1024]);
        let rsp = rig.run(&[rw(3, BLKIF_OP_READ, 100, &[seg(12, 4, 5)])]);
        assert_eq!(
            (rsp[0].id, rsp[0].status, rsp[0].operation),
            (3, BLKIF_RSP_OKAY, BLKIF_OP_READ)
        );
        let page = rig.grants.page(12);
        assert_eq!(&page[2048..3072], &[0xb2; 1024][..]);
        assert!(
            page[..2048].iter().chain(&page[3072..]).all(|&b| b == 0),
            "only the segment"
        );
        assert!(rig.back.counts.reads == 1 && rig.back.counts.writes == 2 && rig.back.counts.failed == 0);
    }

    #[test]
    fn indirect_flush_and_discard() {
        let mut rig = rig();
        // 20 data pages granted as 100..120, the segment list in page 99.
        for g in 100..120u32 {
            rig.grants.grant(g, g as u8);
        }
        let segs: Vec<BlkifRequestSegment> = (100..120).map(|g| seg(g, 0, 7)).collect();
        rig.grants.grant(99, 0);
        rig.grants
            .copy_to_guest(
                DOMID,
                &[GrantPiece {
                    gref: 99,
                    offset: 0,
                    len: 160,
                }],
                segs.as_bytes(),
            )
            .unwrap();
        let mut ind = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 20,
            id: 5,
            sector_number: 16,
            ..Default::default()
        };
        ind.indirect_grefs[0] = 99;
        let mut slot = BlkifRequest::default();
        slot.as_mut_bytes()[..size_of::<BlkifRequestIndirect>()].copy_from_slice(ind.as_bytes());
        let flush = BlkifRequest {
            operation: BLKIF_OP_FLUSH_DISKCACHE,
            id: 6,
            ..Default::default()
        };
        let rsp = rig.run(&[slot, flush]);
        assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY), "{rsp:?}");
        assert_eq!(
            rsp[0].operation, BLKIF_OP_WRITE,
            "indirect answers with the real operation"
        );
        let img = rig.image(16, 20 * 4096);
        for (i, page) in img.chunks(4096).enumerate() {
            assert!(page.iter().all(|&b| b == 100 + i as u8), "page {i}");
        }
        let mut d = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            id: 7,
            sector_number: 16,
            nr_sectors: 8,
            ..Default::default()
        };
        let mut slot = BlkifRequest::default();
        slot.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
        assert_eq!(rig.run(&[slot])[0].status, BLKIF_RSP_OKAY);
        assert_eq!(
            rig.image(16, 4096),
            vec![0; 4096],
            "discarded sectors read as zeros"
        );
        d.flag = 1;
        slot.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
        assert_eq!(rig.run(&[slot])[0].status, BLKIF_RSP_EOPNOTSUPP, "secure discard");
    }

    #[test]
    fn bad_requests_get_errors_and_the_ring_goes_on() {
        let mut rig = rig();
        rig.grants.grant(10, 0x5a);
        let mut zero_segs = rw(1, BLKIF_OP_READ, 0, &[]);
        zero_segs.nr_segments = 0;
        let mut twelve = rw(2, BLKIF_OP_READ, 0, &[seg(10, 0, 7)]);
        twelve.nr_segments = 12;
        let bad_ind = {
            let ind = BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: BLKIF_OP_READ,
                nr_segments: 257,
                id: 7,
                ..Default::default()
            };
            let mut slot = BlkifRequest::default();
            slot.as_mut_bytes()[..size_of::<BlkifRequestIndirect>()].copy_from_slice(ind.as_bytes());
            slot
        };
        let rsp = rig.run(&[
            zero_segs,
            twelve,
            rw(3, BLKIF_OP_WRITE, 0, &[seg(10, 5, 4)]),
            rw(4, BLKIF_OP_WRITE, 0, &[seg(999, 0, 7)]),
            rw(5, BLKIF_OP_WRITE, 2047, &[seg(10, 0, 7)]),
            BlkifRequest {
                operation: 9,
                id: 6,
                ..Default::default()
            },
            bad_ind,
            rw(8, BLKIF_OP_WRITE, 0, &[seg(10, 0, 7)]),
        ]);
        let status: Vec<(u64, i16)> = rsp.iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(
            status,
            vec![
                (1, BLKIF_RSP_ERROR),
                (2, BLKIF_RSP_ERROR),
                (3, BLKIF_RSP_ERROR),
                (4, BLKIF_RSP_ERROR),
                (5, BLKIF_RSP_ERROR),
                (6, BLKIF_RSP_EOPNOTSUPP),
                (7, BLKIF_RSP_ERROR),
                (8, BLKIF_RSP_OKAY),
            ]
        );
        assert_eq!(
            rig.image(0, 4096),
            vec![0x5a; 4096],
            "the good write after the bad ones"
        );
        assert_eq!(rig.back.counts.failed, 7);
    }

    #[test]
    fn an_impossible_producer_index_halts_the_ring() {
        let mut rig = rig();
        let mem = rig._mem.as_ptr();
        // SAFETY: req_prod is the ring's first word, accessed atomically by both rings.
        let req_prod = unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().cast()) };
        req_prod.store(rig.front.size() + 5, std::sync::atomic::Ordering::Release);
        let e = rig.back.process(&mut || Ok(())).unwrap_err();
        assert!(e.contains("ring halted"), "{e}");
        assert!(rig.back.process(&mut || Ok(())).is_err(), "stays halted");
    }

    fn seg(gref: u32, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
        BlkifRequestSegment {
            gref,
            first_sect,
            last_sect,
            _pad: [0; 2],
        }
    }

    #[test]
    fn segments_become_byte_ranges_of_their_pages() {
        let p = segment_pieces(&[seg(3, 0, 7), seg(4, 2, 2)]).ok().unwrap();
        assert_eq!(
            p[0],
            GrantPiece {
                gref: 3,
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            p[1],
            GrantPiece {
                gref: 4,
                offset: 1024,
                len: 512
            }
        );
    }

    #[test]
    fn impossible_segments_and_counts_are_refused() {
        assert!(segment_pieces(&[seg(3, 5, 4)]).is_err());
        assert!(segment_pieces(&[seg(3, 0, 8)]).is_err());
        let mut req = BlkifRequest {
            operation: BLKIF_OP_READ,
            nr_segments: 0,
            ..Default::default()
        };
        assert!(direct_pieces(&req).is_err());
        req.nr_segments = 12;
        assert!(direct_pieces(&req).is_err());
        req.nr_segments = 11;
        assert_eq!(direct_pieces(&req).ok().unwrap().len(), 11);
    }

    #[test]
    fn ring_refs_single_and_multi_page() {
        let f = Frontend::from_keys(vec![("ring-ref".into(), "8".into())]);
        assert_eq!(ring_refs(&f, 0).unwrap(), vec![8]);
        let f = Frontend::from_keys(vec![
            ("ring-ref0".into(), "8".into()),
            ("ring-ref1".into(), "9".into()),
        ]);
        assert_eq!(ring_refs(&f, 1).unwrap(), vec![8, 9]);
        let f = Frontend::from_keys(vec![("ring-ref0".into(), "8".into())]);
        assert!(ring_refs(&f, 1).unwrap_err().contains("ring-ref1"));
        let f = Frontend::from_keys(vec![("ring-ref".into(), "4294967296".into())]);
        assert!(ring_refs(&f, 0).is_err());
    }
}
