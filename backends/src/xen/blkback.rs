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
use super::gntdev::{GntDev, GrantMapping, GrantPiece, PAGE_SIZE};
use super::xenbus::{Backend, DeviceId, Frontend, Rings};
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
        let ring_size = ring.size() as usize;
        tracing::info!(
            device = %id,
            ring_pages = refs.len(),
            slots = ring.size(),
            port,
            local_port = channel.local_port(),
            "ring mapped"
        );
        Ok(Box::new(BlkRings {
            ring,
            _map: map,
            channel,
            domid: id.domid,
            name: id.to_string(),
            core: self.core.clone(),
            gnt: self.gnt.clone(),
            aio: AioQueue::new(self.core.clone(), ring_size).map_err(|e| format!("AIO context: {e}"))?,
            slots: (0..ring_size).map(|_| None).collect(),
            free: (0..ring_size).rev().collect(),
            arena: Pages::new(ring_size * SLOT_BYTES).map_err(|e| format!("buffer arena: {e}"))?,
            counts: Counts::default(),
        }))
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

/// A connected vbd's ring.
struct BlkRings {
    ring: BackRing<BlkifRequest, BlkifResponse>,
    _map: GrantMapping,
    channel: EventChannel,
    domid: DomId,
    name: String,
    core: Arc<BlockCore>,
    gnt: Arc<GntDev>,
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

impl Rings for BlkRings {
    fn channel(&self) -> &EventChannel {
        &self.channel
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.aio.completion_fd())
    }

    fn process(&mut self) -> Result<(), String> {
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
                self.channel.notify().map_err(|e| format!("notify: {e}"))?;
                self.counts.notifies += 1;
            }
            if !self.ring.final_check_for_requests().map_err(halted)? {
                return Ok(());
            }
        }
    }

    fn summary(&self) -> String {
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
            self.channel.events(),
            c.notifies
        )
    }
}

impl BlkRings {
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
