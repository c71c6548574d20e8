//! blkback: the blkif protocol (`io/blkif.h`) served from the block core.
//!
//! Offered to the frontend: rings of up to [`MAX_RING_PAGE_ORDER`] (16 pages), indirect requests of
//! up to [`MAX_INDIRECT_SEGMENTS`] segments, cache flush, discard (punching holes in the image), and
//! the read-only `info` bit when the image is. Not offered: write barriers, persistent grants,
//! multiple queues.
//!
//! Every request is copied out of the ring once and validated before anything happens (segment
//! counts, sector ranges within a page, the indirect pages' contents, which are copied in too). Data
//! moves with grant copies between the frontend's pages and the request's own buffer ([`IoBuf`],
//! page-aligned `mmap`'d memory, pooled). Every request becomes a block core request and goes
//! through the core's asynchronous executor ([`AioQueue`]: validated, made durable and counted by
//! the core like any other); reads and writes of one ring pass go to the image together through
//! Linux AIO, which owns each buffer until the request's completion has been collected; flushes and
//! discards are finished at once and answered with the next completions. At most
//! [`MAX_IN_FLIGHT_BYTES`] of request data are in flight per ring. A request that is invalid or
//! whose grants Xen refuses gets `BLKIF_RSP_ERROR` (unknown operations `BLKIF_RSP_EOPNOTSUPP`) and
//! the ring goes on; failures are logged at a bounded rate. A frontend that moves the ring's indices
//! impossibly halts this device only.

use std::os::fd::RawFd;
use std::sync::Arc;

use ring_protocol::abi::SECTOR_SIZE;
use ring_protocol::abi::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestDiscard,
    BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, VDISK_READONLY, xenbus_keys as keys,
};
use ring_protocol::abi::xen::{DomId, XEN_IO_PROTO_ABI_X86_64};
use ring_protocol::ring::BackRing;
use zerocopy::{FromBytes, IntoBytes};

use super::Error;
use super::evtchn::EventChannel;
use super::gntdev::{GntDev, GrantCopy, GrantPiece, PAGE_SIZE};
use super::xenbus::{Backend, Connected, DeviceId, Engine, Frontend, Notify};
use crate::block::{AioQueue, BlockCore, Data, Finished, IoBuf, Op, Refused, Request};
use crate::ratelimit::{RateLimit, limited_info, limited_warn};

/// Largest ring offered: 2^4 pages.
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Segments per indirect request offered (Linux's blkback offers 32; its blkfront uses up to 256).
pub const MAX_INDIRECT_SEGMENTS: usize = 256;

const _: () =
    assert!(MAX_INDIRECT_SEGMENTS <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGMENTS_PER_INDIRECT_PAGE);

/// A vbd backed by a block core.
#[derive(Debug)]
pub struct BlkBackend {
    core: Arc<BlockCore>,
    gnt: Arc<GntDev>,
    /// The device's log budget, across its connections.
    log: Arc<RateLimit>,
}

impl BlkBackend {
    /// A vbd serving `core`, reaching the frontend's memory through `gnt`.
    pub fn new(core: Arc<BlockCore>, gnt: Arc<GntDev>) -> Self {
        BlkBackend {
            core,
            gnt,
            log: Arc::new(RateLimit::default()),
        }
    }
}

impl Backend for BlkBackend {
    type Engine = BlkEngine;

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
            (keys::SECTOR_SIZE.into(), SECTOR_SIZE.to_string()),
            (keys::PHYSICAL_SECTOR_SIZE.into(), SECTOR_SIZE.to_string()),
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
                ("discard-granularity".into(), PAGE_SIZE.to_string()),
                ("discard-alignment".into(), "0".into()),
                ("discard-secure".into(), "0".into()),
            ]);
        }
        k
    }

    fn frontend_reads(&self, so_far: &Frontend) -> Vec<String> {
        frontend_reads(so_far)
    }

    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Connected<BlkEngine>, Error> {
        let (refs, port) = ring_keys(front)?;
        let map = self
            .gnt
            .map(id.domid, &refs, true)
            .map_err(|error| Error::GrantMap {
                what: "ring",
                key: keys::RING_REF,
                refs: refs.clone(),
                error,
            })?;
        // SAFETY: the mapping outlives the ring: here (a local declared before it, so dropped after
        // it) and then in the same `Connected` as the engine holding the ring (declared after it);
        // only the ring touches it, with atomics; the frontend is outside the Rust memory model.
        let ring = unsafe { BackRing::<BlkifRequest, BlkifResponse>::new(map.as_ptr(), map.len()) }.map_err(
            |error| Error::RingUnusable {
                what: "ring",
                bytes: map.len(),
                error,
            },
        )?;
        let channel =
            EventChannel::bind_interdomain(id.domid, port).map_err(|error| Error::BindEventChannel {
                key: keys::EVENT_CHANNEL,
                port,
                domid: id.domid,
                error,
            })?;
        limited_info!(
            self.log,
            device = %id,
            ring_pages = refs.len(),
            slots = ring.size(),
            port,
            local_port = channel.local_port(),
            "ring mapped"
        );
        let gnt: Arc<dyn GrantCopy> = self.gnt.clone();
        let engine = BlkRing::new(
            ring,
            id.domid,
            id.to_string(),
            self.core.clone(),
            gnt,
            self.log.clone(),
        )?;
        Ok(Connected::new(BlkEngine(engine), vec![map], channel))
    }
}

/// The frontend keys blkif needs: protocol, ring order, ring reference(s), event channel; the
/// `ring-ref0..N` of a multi-page ring once the order is known.
fn frontend_reads(so_far: &Frontend) -> Vec<String> {
    let mut k: Vec<String> = [
        keys::PROTOCOL,
        keys::RING_PAGE_ORDER,
        keys::RING_REF,
        keys::EVENT_CHANNEL,
    ]
    .map(String::from)
    .into();
    match so_far.opt_number(keys::RING_PAGE_ORDER) {
        Ok(Some(order)) if (1..=u64::from(MAX_RING_PAGE_ORDER)).contains(&order) => {
            k.extend((0..1u32 << order).map(|i| format!("{}{i}", keys::RING_REF)));
        }
        // A one-page ring published as `ring-ref0` (only asked for when `ring-ref` is absent).
        Ok(None | Some(0)) if !so_far.is_empty() && so_far.get(keys::RING_REF).is_none() => {
            k.push(format!("{}0", keys::RING_REF));
        }
        _ => {}
    }
    k
}

/// What `connect` takes from the frontend's keys: the ring's grant references (one per page) and
/// the event channel, each validated.
fn ring_keys(front: &Frontend) -> Result<(Vec<u32>, u32), Error> {
    if let Some(p) = front.get(keys::PROTOCOL)
        && p != XEN_IO_PROTO_ABI_X86_64
    {
        return Err(Error::UnsupportedProtocol { protocol: p.into() });
    }
    let order = front.opt_number(keys::RING_PAGE_ORDER)?.unwrap_or(0);
    if order > u64::from(MAX_RING_PAGE_ORDER) {
        return Err(Error::RingOrder {
            order,
            max: MAX_RING_PAGE_ORDER,
        });
    }
    let refs = ring_refs(front, order as u32)?;
    let port = front.port(keys::EVENT_CHANNEL)?;
    Ok((refs, port))
}

/// `ring-ref`, or `ring-ref0..N` for a multi-page ring.
fn ring_refs(front: &Frontend, order: u32) -> Result<Vec<u32>, Error> {
    if order == 0 && front.get(keys::RING_REF).is_some() {
        return Ok(vec![front.grant_ref(keys::RING_REF)?]);
    }
    (0..1u32 << order)
        .map(|i| front.grant_ref(&format!("{}{i}", keys::RING_REF)))
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
    /// Times the ring was left alone because the bytes in flight reached [`MAX_IN_FLIGHT_BYTES`].
    deferred: u64,
}

/// Requests up to this size take a pooled buffer (bigger ones get one of their own).
const POOLED_BYTES: usize = 128 * 1024;
/// Pooled buffers kept for reuse per ring (4 MiB).
const MAX_POOLED: usize = 32;
/// Data bytes in flight per ring, at most (a request that would go beyond waits on the ring until
/// earlier ones complete; a lone request always goes). A 16-page ring holds 512 requests of up to
/// 1 MiB each: without this bound a guest could make dom0 hold 512 MiB for it.
pub const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// What the engine keeps with a request the AIO queue holds (the queue owns the request and its
/// buffer), handed back with its completion: what the response and a read's copy-out need.
struct Pending {
    id: u64,
    op: u8,
    /// For a read: where its bytes go once it completes.
    copy_out: Option<Vec<GrantPiece>>,
    len: usize,
}

/// Why a request failed.
enum Refusal {
    /// Not offered: `BLKIF_RSP_EOPNOTSUPP`, the ring goes on.
    Unsupported(String),
    /// Invalid or failed: `BLKIF_RSP_ERROR`, the ring goes on.
    Failed(String),
}

/// The blkif protocol engine of one ring, independent of how the ring memory and the frontend's
/// pages are reached (host tests drive it on local memory).
///
/// Buffers: a request's data lives in an [`IoBuf`] taken from `pool` (or made for it), moved into
/// the AIO queue with the request and moved back out with its completion; only then is it copied
/// to the guest and returned to the pool. The engine never holds an address of memory the kernel
/// may still write. Request ids: the AIO queue's (an id slab); the engine keeps no table of its own.
struct BlkRing {
    ring: BackRing<BlkifRequest, BlkifResponse>,
    domid: DomId,
    name: String,
    gnt: Arc<dyn GrantCopy>,
    /// The core's asynchronous executor on the image.
    aio: AioQueue<Pending>,
    pool: Vec<IoBuf>,
    in_flight_bytes: usize,
    /// A request read from the ring that waits for bytes in flight to complete.
    deferred: Option<BlkifRequest>,
    log: Arc<RateLimit>,
    counts: Counts,
}

/// The blkif protocol engine of one ring (its AIO queue, its buffers), independent of how the
/// ring memory and the frontend's pages are reached.
pub struct BlkEngine(BlkRing);

impl BlkEngine {
    /// The blkif engine of a vbd of domain `domid`: it serves `ring` (the backend end of the
    /// frontend's ring, however its memory is reached) from `core`, reading and writing the
    /// frontend's pages through `gnt`.
    ///
    /// Drive it with [`Engine::process`] whenever the frontend sent an event or
    /// [`Engine::extra_fd`] (the AIO completion eventfd) is readable; failed requests are logged
    /// (at a bounded rate) under the name `vbd of domain <domid>`.
    ///
    /// # Errors
    /// [`Error::Aio`] if the AIO context cannot be created.
    pub fn new(
        ring: BackRing<BlkifRequest, BlkifResponse>,
        domid: DomId,
        core: Arc<BlockCore>,
        gnt: Arc<dyn GrantCopy>,
    ) -> Result<Self, Error> {
        let name = format!("vbd of domain {domid}");
        BlkRing::new(ring, domid, name, core, gnt, Arc::new(RateLimit::default())).map(BlkEngine)
    }

    /// Starts over on `ring`, the frontend's new ring after it reconnected, keeping the AIO
    /// context and the buffers (an AIO context's teardown waits for the kernel). The counts start
    /// from zero. Refused, with the ring handed back, while requests are still in flight (their
    /// responses belong to the old ring) or when the new ring has another number of slots than
    /// the queue's depth.
    pub fn restart(
        &mut self,
        ring: BackRing<BlkifRequest, BlkifResponse>,
    ) -> Result<(), BackRing<BlkifRequest, BlkifResponse>> {
        self.0.restart(ring)
    }
}

impl std::fmt::Debug for BlkEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkEngine")
            .field("ring", &self.0.ring)
            .field("counts", &self.0.counts)
            .finish_non_exhaustive()
    }
}

impl Engine for BlkEngine {
    fn process(&mut self, notify: &dyn Notify) -> Result<(), Error> {
        self.0.process(notify)
    }

    fn summary(&self, events: u64) -> String {
        self.0.summary(events)
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.0.aio.completion_fd())
    }
}

/// An upper bound of a request's data bytes, from its (copied) header alone.
fn request_bytes(req: &BlkifRequest) -> usize {
    let segments = match req.operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE => usize::from(req.nr_segments).min(BLKIF_MAX_SEGMENTS_PER_REQUEST),
        BLKIF_OP_INDIRECT => BlkifRequestIndirect::read_from_prefix(req.as_bytes())
            .map(|(ind, _)| usize::from(ind.nr_segments).min(MAX_INDIRECT_SEGMENTS))
            .unwrap_or(0),
        _ => 0,
    };
    segments * PAGE_SIZE
}

impl BlkRing {
    /// See [`BlkEngine::restart`].
    fn restart(
        &mut self,
        ring: BackRing<BlkifRequest, BlkifResponse>,
    ) -> Result<(), BackRing<BlkifRequest, BlkifResponse>> {
        if self.aio.busy() > 0 || self.aio.depth() != ring.size() as usize {
            return Err(ring);
        }
        self.ring = ring;
        self.in_flight_bytes = 0;
        self.deferred = None;
        self.counts = Counts::default();
        Ok(())
    }

    fn new(
        ring: BackRing<BlkifRequest, BlkifResponse>,
        domid: DomId,
        name: String,
        core: Arc<BlockCore>,
        gnt: Arc<dyn GrantCopy>,
        log: Arc<RateLimit>,
    ) -> Result<Self, Error> {
        let ring_size = ring.size() as usize;
        Ok(BlkRing {
            ring,
            domid,
            name,
            aio: AioQueue::new(core, ring_size).map_err(|error| Error::Aio {
                what: "context",
                error,
            })?,
            gnt,
            pool: Vec::new(),
            in_flight_bytes: 0,
            deferred: None,
            log,
            counts: Counts::default(),
        })
    }

    /// Serves everything the ring and the AIO queue hold; `notify` tells the frontend.
    fn process(&mut self, notify: &dyn Notify) -> Result<(), Error> {
        let halted = |error| Error::RingHalted { ring: "ring", error };
        loop {
            for done in self
                .aio
                .reap()
                .map_err(|error| Error::Aio { what: "queue", error })?
            {
                let rsp = self.complete(done);
                self.ring.write_response(&rsp).map_err(halted)?;
            }
            loop {
                let req = match self.deferred.take() {
                    Some(r) => r,
                    None => match self.ring.read_request().map_err(halted)? {
                        Some(r) => r,
                        None => break,
                    },
                };
                // `req` is our copy of the slot: everything below looks at it, never at the ring.
                if self.in_flight_bytes > 0
                    && self.in_flight_bytes.saturating_add(request_bytes(&req)) > MAX_IN_FLIGHT_BYTES
                {
                    self.deferred = Some(req);
                    self.counts.deferred += 1;
                    break;
                }
                if let Some(rsp) = self.handle(&req) {
                    self.ring.write_response(&rsp).map_err(halted)?;
                }
            }
            // One io_submit for everything this batch queued (a lone request runs right away).
            self.aio.submit();
            if self.aio.has_ready() {
                continue;
            }
            if self.ring.push_responses_and_check_notify().map_err(halted)? {
                notify.notify().map_err(Error::Notify)?;
                self.counts.notifies += 1;
            }
            if self.deferred.is_some() {
                // Bytes are in flight; their completions wake us (the AIO eventfd).
                return Ok(());
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
             deferred={} logs_suppressed={} events={} notifies={}",
            c.requests,
            c.reads,
            c.writes,
            c.flushes,
            c.discards,
            c.indirect,
            c.bytes,
            c.failed,
            c.deferred,
            self.log.suppressed_total(),
            events,
            c.notifies
        )
    }

    /// Serves one request (our copy of its slot): `None` if it went to the AIO queue (its
    /// response comes from `complete`), else the error response.
    fn handle(&mut self, req: &BlkifRequest) -> Option<BlkifResponse> {
        self.counts.requests += 1;
        let (id, op, result) = match req.operation {
            BLKIF_OP_DISCARD => {
                let d = BlkifRequestDiscard::read_from_prefix(req.as_bytes())
                    .expect("a ring slot holds a discard")
                    .0;
                (d.id, d.operation, self.discard(&d))
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
                let flush = Request {
                    op: Op::Flush,
                    sector: 0,
                    data: Data::None,
                };
                (
                    req.id,
                    req.operation,
                    self.submit(flush, req.id, req.operation, None),
                )
            }
            other => (
                req.id,
                other,
                Err(Refusal::Unsupported(format!("operation {other} is not offered"))),
            ),
        };
        result.err().map(|r| self.response(id, op, Err(r)))
    }

    /// The response to a request the AIO queue finished (the core completed it); a read's data is
    /// copied out first. The buffer comes back from the queue here and goes back to the pool.
    fn complete(&mut self, done: Finished<Pending>) -> BlkifResponse {
        let Finished { tag: p, req, result } = done;
        self.in_flight_bytes -= p.len;
        let buf = req.data.into_buf();
        let result = match (result, &p.copy_out, &buf) {
            (Err(e), _, _) => Err(Refusal::Failed(e.to_string())),
            (Ok(_), Some(pieces), Some(buf)) => self
                .gnt
                .copy_to_guest(self.domid, pieces, buf.as_slice())
                .map_err(|e| Refusal::Failed(format!("read data: {e}"))),
            (Ok(_), Some(_), None) => Err(Refusal::Failed("read without its buffer".into())),
            (Ok(_), None, _) => Ok(()),
        };
        if let Some(buf) = buf {
            self.put_buf(buf);
        }
        if result.is_ok() {
            self.counts.bytes += p.len as u64;
        }
        self.response(p.id, p.op, result)
    }

    /// Every field written: the padding of a response is zero, never leftover memory (the
    /// XSA-216 class).
    fn response(&mut self, id: u64, op: u8, result: Result<(), Refusal>) -> BlkifResponse {
        let status = match result {
            Ok(()) => BLKIF_RSP_OKAY,
            Err(r) => {
                self.counts.failed += 1;
                let (status, why) = match r {
                    Refusal::Unsupported(w) => (BLKIF_RSP_EOPNOTSUPP, w),
                    Refusal::Failed(w) => (BLKIF_RSP_ERROR, w),
                };
                limited_warn!(self.log, device = %self.name, id, op, "request failed: {why}");
                status
            }
        };
        BlkifResponse {
            id,
            operation: op,
            _pad0: 0,
            status,
            _pad1: [0; 4],
        }
    }

    /// Hands `req` to the AIO queue with what its response needs (`copy_out`: where a read's
    /// bytes go); its response comes from `complete`. A refusal (the core's checks, a full queue)
    /// gives the buffer back to the pool.
    fn submit(
        &mut self,
        req: Request,
        id: u64,
        op: u8,
        copy_out: Option<Vec<GrantPiece>>,
    ) -> Result<(), Refusal> {
        let len = req.data.len();
        match self.aio.push(
            req,
            Pending {
                id,
                op,
                copy_out,
                len,
            },
        ) {
            Ok(_) => {
                self.in_flight_bytes += len;
                Ok(())
            }
            Err(refused) => {
                let Refused { req, error, .. } = *refused;
                if let Some(buf) = req.data.into_buf() {
                    self.put_buf(buf);
                }
                Err(Refusal::Failed(error.to_string()))
            }
        }
    }

    fn discard(&mut self, d: &BlkifRequestDiscard) -> Result<(), Refusal> {
        if d.flag != 0 {
            return Err(Refusal::Unsupported("secure discard is not offered".into()));
        }
        self.counts.discards += 1;
        let req = Request {
            op: Op::Discard {
                sectors: d.nr_sectors,
            },
            sector: d.sector_number,
            data: Data::None,
        };
        self.submit(req, d.id, d.operation, None)
    }

    fn indirect(&mut self, ind: &BlkifRequestIndirect) -> Result<(), Refusal> {
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
        // Copy the segment descriptors in once, then validate and use only our copy (the guest may
        // rewrite its indirect pages at any time).
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

    /// A buffer of `len` bytes: a pooled one for requests up to [`POOLED_BYTES`].
    fn take_buf(&mut self, len: usize) -> std::io::Result<IoBuf> {
        let mut buf = if len <= POOLED_BYTES {
            match self.pool.pop() {
                Some(b) => b,
                None => IoBuf::new(POOLED_BYTES)?,
            }
        } else {
            IoBuf::new(len)?
        };
        buf.set_len(len)?;
        Ok(buf)
    }

    fn put_buf(&mut self, buf: IoBuf) {
        if buf.capacity() == POOLED_BYTES && self.pool.len() < MAX_POOLED {
            self.pool.push(buf);
        }
    }

    /// Queues a read or write of `pieces` (already validated) at `sector`; a write's data is
    /// copied in now, a read's is copied out when it completes.
    fn transfer(&mut self, id: u64, op: u8, sector: u64, pieces: Vec<GrantPiece>) -> Result<(), Refusal> {
        let len: usize = pieces.iter().map(|p| usize::from(p.len)).sum();
        let write = op == BLKIF_OP_WRITE;
        let mut buf = self
            .take_buf(len)
            .map_err(|e| Refusal::Failed(format!("{len}-byte buffer: {e}")))?;
        if write {
            self.counts.writes += 1;
            if let Err(e) = self.gnt.copy_from_guest(self.domid, &pieces, buf.as_mut_slice()) {
                self.put_buf(buf);
                return Err(Refusal::Failed(format!("write data: {e}")));
            }
        } else {
            self.counts.reads += 1;
        }
        let req = Request {
            op: if write { Op::Write { fua: false } } else { Op::Read },
            sector,
            data: Data::Buf(buf),
        };
        self.submit(req, id, op, (!write).then_some(pieces))
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
    const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / SECTOR_SIZE) as u8;
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
                offset: u16::from(s.first_sect) * SECTOR_SIZE as u16,
                len: u16::from(s.last_sect - s.first_sect + 1) * SECTOR_SIZE as u16,
            })
        })
        .collect()
}

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in the default build):
/// the engine over caller-made ring memory and grant copies, and the frontend-key parsing.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// The frontend keys the backend reads next, given those read so far.
    pub fn frontend_reads(so_far: &Frontend) -> Vec<String> {
        super::frontend_reads(so_far)
    }

    /// The ring's grant references and the event channel, from the frontend's keys (what `connect`
    /// validates before mapping anything).
    ///
    /// # Errors
    /// The refusal `connect` would log.
    pub fn ring_keys(front: &Frontend) -> Result<(Vec<u32>, u32), Error> {
        super::ring_keys(front)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_protocol::ring::{FrontRing, SharedPages};

    use crate::block::BlockOptions;
    use crate::xen::gntdev::FakeGrants;
    use ring_protocol::platform::fake::CountingNotifier;

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
        rig_with(PAGE_SIZE, 2048, BlockOptions::default())
    }

    /// A ring of `ring_bytes`, an image of `sectors`, opened with `opts` (`O_DIRECT` falls back to
    /// buffered where the temporary directory's file system refuses it).
    fn rig_with(ring_bytes: usize, sectors: u64, opts: BlockOptions) -> Rig {
        let mem = SharedPages::new(ring_bytes);
        // SAFETY: `mem` outlives both rings (same struct, dropped after them); they access it
        // only atomically.
        let front = unsafe { FrontRing::init(mem.as_ptr(), mem.len()) }.unwrap();
        // SAFETY: as above.
        let ring = unsafe { BackRing::new(mem.as_ptr(), mem.len()) }.unwrap();
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(sectors * 512).unwrap();
        let core = BlockCore::open(img.path(), opts)
            .or_else(|_| BlockCore::open(img.path(), BlockOptions::default()))
            .unwrap();
        let core = Arc::new(core);
        let grants = Arc::new(FakeGrants::new(DOMID));
        let gnt: Arc<dyn GrantCopy> = grants.clone();
        let back = BlkRing::new(
            ring,
            DOMID,
            "vbd test".into(),
            core.clone(),
            gnt,
            Arc::new(RateLimit::default()),
        )
        .unwrap();
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
                self.back.process(&CountingNotifier::new()).unwrap();
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

    /// A reconnecting frontend's new ring: served with the same AIO queue from zero counts; a ring
    /// of another size is handed back.
    #[test]
    fn restart_serves_a_new_ring_and_hands_back_one_of_another_size() {
        let mut rig = rig();
        rig.grants.grant(10, 0x5a);
        rig.grants.grant(11, 0);
        let rsp = rig.run(&[rw(1, BLKIF_OP_WRITE, 8, &[seg(10, 0, 7)])]);
        assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
        let big = SharedPages::new(2 * PAGE_SIZE);
        // SAFETY: `big` outlives the ring (dropped at the end of the test; the ring is handed back
        // and dropped at once) and is touched only atomically.
        let other = unsafe { BackRing::new(big.as_ptr(), big.len()) }.unwrap();
        assert!(rig.back.restart(other).is_err(), "a ring of another size");
        let mem = SharedPages::new(PAGE_SIZE);
        // SAFETY: `mem` replaces the rig's ring memory and is kept in the rig, dropped after the
        // rings over it; both ends touch it only atomically.
        let front = unsafe { FrontRing::init(mem.as_ptr(), mem.len()) }.unwrap();
        // SAFETY: as above.
        let back = unsafe { BackRing::new(mem.as_ptr(), mem.len()) }.unwrap();
        rig.back.restart(back).unwrap();
        rig.front = front;
        let old_mem = std::mem::replace(&mut rig._mem, mem);
        let rsp = rig.run(&[rw(7, BLKIF_OP_READ, 8, &[seg(11, 0, 7)])]);
        assert_eq!((rsp[0].id, rsp[0].status), (7, BLKIF_RSP_OKAY));
        assert_eq!(
            rig.grants.page(11),
            vec![0x5a; 4096],
            "the first ring's write, read on the new one"
        );
        assert_eq!(
            (rig.back.counts.reads, rig.back.counts.writes),
            (1, 0),
            "counts start over"
        );
        drop(old_mem);
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
        let e = rig.back.process(&CountingNotifier::new()).unwrap_err();
        assert!(matches!(e, Error::RingHalted { ring: "ring", .. }), "{e}");
        assert!(e.to_string().starts_with("ring halted"), "{e}");
        assert!(
            rig.back.process(&CountingNotifier::new()).is_err(),
            "stays halted"
        );
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
    fn frontend_reads_name_the_ring_refs_of_the_order_read() {
        let first = frontend_reads(&Frontend::default());
        assert_eq!(
            first,
            ["protocol", "ring-page-order", "ring-ref", "event-channel"]
        );
        let order2 = Frontend::from_keys(vec![("ring-page-order".into(), "2".into())]);
        assert_eq!(
            &frontend_reads(&order2)[4..],
            ["ring-ref0", "ring-ref1", "ring-ref2", "ring-ref3"]
        );
        let too_big = Frontend::from_keys(vec![("ring-page-order".into(), "30".into())]);
        assert_eq!(
            frontend_reads(&too_big).len(),
            4,
            "no 2^30 keys for a refused order"
        );
        let one_page = Frontend::from_keys(vec![("event-channel".into(), "5".into())]);
        assert_eq!(frontend_reads(&one_page)[4], "ring-ref0");
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
        assert!(matches!(ring_refs(&f, 1), Err(Error::MissingKey { key }) if key == "ring-ref1"));
        let f = Frontend::from_keys(vec![("ring-ref".into(), "4294967296".into())]);
        assert!(ring_refs(&f, 0).is_err());
    }

    /// The ring memory's slot `i` (request or response), as the frontend's pages hold it.
    fn slot_addr(rig: &Rig, i: u32) -> usize {
        rig._mem.as_ptr().as_ptr() as usize + 64 + (i % rig.front.size()) as usize * size_of::<BlkifRequest>()
    }

    /// Writes `bytes` (a multiple of 8 long) at `addr` (8-aligned) of ring memory, as the guest
    /// would: word by word, atomically, like the ring's own accesses.
    fn poke_ring(addr: usize, bytes: &[u8]) {
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            // SAFETY: `addr + 8 i` is an 8-aligned word inside the ring memory (slots lie within the
            // pages and start 8-aligned), which lives as long as the rig; all accesses are atomic.
            let word = unsafe { std::sync::atomic::AtomicU64::from_ptr((addr + 8 * i) as *mut u64) };
            word.store(
                u64::from_ne_bytes(w.try_into().unwrap()),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn peek_ring(addr: usize, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|i| {
                // SAFETY: as in `poke_ring`.
                let word = unsafe { std::sync::atomic::AtomicU64::from_ptr((addr + 8 * i) as *mut u64) };
                word.load(std::sync::atomic::Ordering::Relaxed).to_ne_bytes()
            })
            .collect()
    }

    /// XSA-155 class (double fetch): the guest rewrites a request in the ring after the backend
    /// read it (here: while the backend copies the write's data, so after validation). The backend
    /// must act on its one copy: the original sector, length and operation.
    #[test]
    fn xsa155_blkback_acts_on_its_copy_of_a_request_the_guest_rewrites() {
        let mut rig = rig();
        rig.grants.grant(10, 0xa1);
        rig.grants.grant(11, 0xb2);
        let original = rw(1, BLKIF_OP_WRITE, 8, &[seg(10, 0, 7)]);
        // What the guest swaps in: a read of 11 segments at the image's last sectors, from grant 11.
        let mut evil = rw(1, BLKIF_OP_READ, 2040, &[seg(11, 0, 7); 11]);
        evil.id = 0xbad;
        let slot = slot_addr(&rig, rig.front.req_prod_pvt());
        let evil_bytes = evil.as_bytes().to_vec();
        let rewrites = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r2 = rewrites.clone();
        rig.grants.on_copy_from_guest(move || {
            poke_ring(slot, &evil_bytes);
            r2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let rsp = rig.run(&[original]);
        assert!(
            rewrites.load(std::sync::atomic::Ordering::Relaxed) >= 1,
            "the guest did rewrite"
        );
        assert_eq!(
            (rsp[0].id, rsp[0].operation, rsp[0].status),
            (1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY),
            "answered as the request that was read"
        );
        assert_eq!(rig.image(8, 4096), vec![0xa1; 4096], "the original write landed");
        assert_eq!(
            rig.image(2040, 4096),
            vec![0; 4096],
            "nothing of the rewritten request happened"
        );
        assert_eq!((rig.back.counts.writes, rig.back.counts.reads), (1, 0));
    }

    /// XSA-155 class for indirect requests: the segment list is copied in once; the guest
    /// rewriting its indirect page afterwards (while the data is copied) changes nothing.
    #[test]
    fn xsa155_blkback_indirect_segments_are_copied_once() {
        let mut rig = rig();
        for g in 100..104u32 {
            rig.grants.grant(g, g as u8);
        }
        rig.grants.grant(99, 0);
        let segs: Vec<BlkifRequestSegment> = (100..104).map(|g| seg(g, 0, 7)).collect();
        rig.grants.poke(99, 0, segs.as_bytes());
        let ind = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 4,
            id: 5,
            sector_number: 64,
            indirect_grefs: {
                let mut g = [0; 8];
                g[0] = 99;
                g
            },
            ..Default::default()
        };
        let mut slot = BlkifRequest::default();
        slot.as_mut_bytes()[..size_of::<BlkifRequestIndirect>()].copy_from_slice(ind.as_bytes());
        // On every copy the guest points all four segments at grant 103, sectors 0..=0.
        // On the second copy (the data) the guest points all four segments at grant 103, sector 0.
        let evil: Vec<BlkifRequestSegment> = vec![seg(103, 0, 0); 4];
        let table = rig.grants.clone();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c2 = calls.clone();
        let evil_bytes = evil.as_bytes().to_vec();
        rig.grants.on_copy_from_guest(move || {
            if c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1 {
                table.poke(99, 0, &evil_bytes);
            }
        });
        let rsp = rig.run(&[slot]);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "segment list, then data"
        );
        assert_eq!(rsp[0].status, BLKIF_RSP_OKAY);
        let img = rig.image(64, 4 * 4096);
        for (i, page) in img.chunks(4096).enumerate() {
            assert!(
                page.iter().all(|&b| b == 100 + i as u8),
                "page {i} from the original list"
            );
        }
        // Break the cycle table -> hook -> table.
        rig.grants.on_copy_from_guest(|| {});
    }

    /// XSA-216 class: a response's padding must not carry backend memory. The guest fills its
    /// ring with 0xff first; every padding byte of every response comes back zero.
    #[test]
    fn xsa216_blkback_response_padding_is_zero() {
        let mut rig = rig();
        for i in 0..rig.front.size() {
            poke_ring(slot_addr(&rig, i), &[0xff; size_of::<BlkifRequest>()]);
        }
        rig.grants.grant(10, 1);
        let reqs = [
            rw(1, BLKIF_OP_WRITE, 0, &[seg(10, 0, 7)]),
            rw(2, BLKIF_OP_READ, 0, &[seg(10, 0, 7)]),
            BlkifRequest {
                operation: 77,
                id: 3,
                ..Default::default()
            },
            rw(4, BLKIF_OP_WRITE, 1 << 40, &[seg(10, 0, 7)]),
        ];
        let start = rig.front.req_prod_pvt();
        let rsp = rig.run(&reqs);
        assert_eq!(rsp.len(), 4);
        for i in 0..4 {
            let raw = peek_ring(slot_addr(&rig, start + i), 16);
            assert_eq!(raw[9], 0, "response {i}: _pad0 {raw:02x?}");
            assert_eq!(&raw[12..16], &[0; 4], "response {i}: _pad1 {raw:02x?}");
        }
    }

    /// Segment and range checks (the XSA-229 area: how a request's pieces are formed and merged):
    /// every piece stays inside its page, sector arithmetic near the top of u64 is refused rather
    /// than wrapped, and indirect lists with impossible segments are refused as a whole.
    #[test]
    fn xsa229_blkback_segment_and_range_arithmetic_is_checked() {
        let mut rig = rig();
        rig.grants.grant(10, 0x5a);
        rig.grants.grant(99, 0);
        // An indirect list whose third segment ends past its page.
        let mut segs = [seg(10, 0, 7); 4];
        segs[2] = seg(10, 3, 8);
        rig.grants.poke(99, 0, segs.as_bytes());
        let mut ind = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 4,
            id: 6,
            ..Default::default()
        };
        ind.indirect_grefs[0] = 99;
        let mut ind_slot = BlkifRequest::default();
        ind_slot.as_mut_bytes()[..size_of::<BlkifRequestIndirect>()].copy_from_slice(ind.as_bytes());
        let discard = |id, sector_number, nr_sectors| {
            let d = BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                id,
                sector_number,
                nr_sectors,
                ..Default::default()
            };
            let mut slot = BlkifRequest::default();
            slot.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
            slot
        };
        let rsp = rig.run(&[
            rw(1, BLKIF_OP_WRITE, u64::MAX, &[seg(10, 0, 7)]),
            rw(2, BLKIF_OP_READ, u64::MAX / 512, &[seg(10, 0, 7)]),
            rw(3, BLKIF_OP_WRITE, 2040, &[seg(10, 0, 7); 2]),
            discard(4, u64::MAX - 1, 8),
            discard(5, 8, u64::MAX),
            ind_slot,
            rw(7, BLKIF_OP_WRITE, 2040, &[seg(10, 0, 7)]),
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
                (6, BLKIF_RSP_ERROR),
                (7, BLKIF_RSP_OKAY),
            ]
        );
        assert_eq!(rig.image(2040, 4096), vec![0x5a; 4096], "only the last write");
        assert_eq!(
            rig.image(0, 4096),
            vec![0; 4096],
            "the refused indirect write wrote nothing"
        );
    }

    /// A completion the AIO queue cannot match to a request in flight halts the ring (and only
    /// this ring), instead of completing whichever request holds that token now.
    #[test]
    fn blkback_aio_unknown_token_halts_the_ring() {
        let mut rig = rig();
        rig.grants.grant(10, 1);
        assert_eq!(
            rig.run(&[rw(1, BLKIF_OP_WRITE, 0, &[seg(10, 0, 7)])])[0].status,
            BLKIF_RSP_OKAY
        );
        rig.back
            .aio
            .inject_foreign_completion(3, Box::leak(vec![0u8; 512].into_boxed_slice()));
        let mut err = None;
        for _ in 0..2000 {
            match rig.back.process(&CountingNotifier::new()) {
                Ok(()) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let e = err.expect("the ring halts");
        assert!(
            matches!(
                e,
                Error::Aio {
                    error: crate::block::AioError::UnknownToken { token: 3 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("token 3, which is not in flight"), "{e}");
    }

    /// Bytes in flight per ring are bounded: 32 indirect writes of 1 MiB (32 MiB) on a 32-slot
    /// ring never have more than [`MAX_IN_FLIGHT_BYTES`] in flight; the rest wait on the ring and
    /// all complete with the right data.
    #[test]
    fn blkback_bytes_in_flight_are_bounded() {
        let mut rig = rig_with(PAGE_SIZE, 32 * 2048 + 2048, BlockOptions::default());
        assert_eq!(rig.front.size(), 32);
        for g in 0..256u32 {
            rig.grants.grant(1000 + g, g as u8);
        }
        rig.grants.grant(99, 0);
        let segs: Vec<BlkifRequestSegment> = (0..256).map(|g| seg(1000 + g, 0, 7)).collect();
        rig.grants.poke(99, 0, segs.as_bytes());
        let reqs: Vec<BlkifRequest> = (0..32u64)
            .map(|i| {
                let mut ind = BlkifRequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op: BLKIF_OP_WRITE,
                    nr_segments: 256,
                    id: i,
                    sector_number: i * 2048,
                    ..Default::default()
                };
                ind.indirect_grefs[0] = 99;
                let mut slot = BlkifRequest::default();
                slot.as_mut_bytes()[..size_of::<BlkifRequestIndirect>()].copy_from_slice(ind.as_bytes());
                slot
            })
            .collect();
        for r in &reqs {
            rig.front.write_request(r).unwrap();
        }
        rig.front.push_requests().unwrap();
        let mut out = Vec::new();
        let mut most = 0;
        for _ in 0..5000 {
            rig.back.process(&CountingNotifier::new()).unwrap();
            most = most.max(rig.back.in_flight_bytes);
            while let Some(r) = rig.front.read_response().unwrap() {
                out.push(r);
            }
            if out.len() == 32 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(out.len(), 32);
        assert!(out.iter().all(|r| r.status == BLKIF_RSP_OKAY));
        assert!(most <= MAX_IN_FLIGHT_BYTES, "{most} bytes in flight");
        assert!(
            rig.back.counts.deferred > 0,
            "the ring was left alone while the budget was used"
        );
        assert!(rig.back.pool.len() <= MAX_POOLED);
        for i in [0u64, 17, 31] {
            let img = rig.image(i * 2048 + 255 * 8, 4096);
            assert!(img.iter().all(|&b| b == 255), "request {i}'s last page");
        }
    }

    /// blkback's reads and writes go through the core's executor, so the core's durability rule
    /// holds for them: on a writethrough core every write is synced before its response, also
    /// when the writes go to the kernel together (AIO) and not one by one.
    #[test]
    fn blkback_honours_writethrough_through_the_aio_executor() {
        let mut rig = rig_with(
            PAGE_SIZE,
            2048,
            BlockOptions {
                writethrough: true,
                direct: true,
                ..Default::default()
            },
        );
        for g in 0..8u32 {
            rig.grants.grant(100 + g, g as u8 + 1);
        }
        let writes: Vec<BlkifRequest> = (0..8u64)
            .map(|i| rw(i, BLKIF_OP_WRITE, i * 8, &[seg(100 + i as u32, 0, 7)]))
            .collect();
        assert!(rig.run(&writes).iter().all(|r| r.status == BLKIF_RSP_OKAY));
        let s = rig.core.stats();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(s.writes.load(Relaxed), 8);
        assert_eq!(s.syncs.load(Relaxed), 8, "one fdatasync per write");
        for i in 0..8u64 {
            assert_eq!(rig.image(i * 8, 4096), vec![i as u8 + 1; 4096]);
        }
    }

    /// The core counts what blkback served: every read, write, flush and discard, and the
    /// requests it refused (beyond the image), next to blkback's own counts.
    #[test]
    fn blkback_requests_are_counted_by_the_core() {
        let mut rig = rig();
        rig.grants.grant(10, 0x11);
        rig.grants.grant(11, 0);
        let discard = {
            let d = BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                id: 6,
                sector_number: 64,
                nr_sectors: 8,
                ..Default::default()
            };
            let mut slot = BlkifRequest::default();
            slot.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
            slot
        };
        let flush = BlkifRequest {
            operation: BLKIF_OP_FLUSH_DISKCACHE,
            id: 5,
            ..Default::default()
        };
        let rsp = rig.run(&[
            rw(1, BLKIF_OP_WRITE, 0, &[seg(10, 0, 7)]),
            rw(2, BLKIF_OP_WRITE, 8, &[seg(10, 0, 7), seg(10, 0, 3)]),
            rw(3, BLKIF_OP_READ, 0, &[seg(11, 0, 7)]),
            rw(4, BLKIF_OP_READ, 2047, &[seg(11, 0, 7)]),
            flush,
            discard,
        ]);
        let status: Vec<i16> = rsp.iter().map(|r| r.status).collect();
        assert_eq!(status, [0, 0, 0, BLKIF_RSP_ERROR, 0, 0]);
        let s = rig.core.stats();
        use std::sync::atomic::Ordering::Relaxed;
        let counts = [&s.reads, &s.writes, &s.flushes, &s.discards, &s.errors].map(|c| c.load(Relaxed));
        assert_eq!(
            counts,
            [1, 2, 1, 1, 1],
            "reads, writes, flushes, discards, errors"
        );
        assert_eq!(s.syncs.load(Relaxed), 1, "the flush");
        let c = &rig.back.counts;
        assert_eq!((c.requests, c.failed, c.bytes), (6, 1, 4096 + 6144 + 4096));
    }

    /// Many reads and writes in flight at once through `O_DIRECT` AIO, buffers recycled through
    /// the pool round after round: every read returns what the last write of its range wrote.
    #[test]
    fn direct_aio_rounds_return_the_written_bytes_through_recycled_buffers() {
        let mut rig = rig_with(
            PAGE_SIZE,
            2048,
            BlockOptions {
                direct: true,
                ..Default::default()
            },
        );
        for g in 0..256u32 {
            rig.grants.grant(1000 + g, 0);
        }
        for round in 0..20u8 {
            // Writes: request i covers sectors i*64.. with 8 pages filled with (round, i, page).
            let writes: Vec<BlkifRequest> = (0..32u64)
                .map(|i| {
                    let segs: Vec<BlkifRequestSegment> =
                        (0..8).map(|p| seg(1000 + (i * 8 + p) as u32, 0, 7)).collect();
                    for p in 0..8u64 {
                        let fill = round.wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ p as u8;
                        rig.grants.poke(1000 + (i * 8 + p) as u32, 0, &[fill; 4096]);
                    }
                    rw(i, BLKIF_OP_WRITE, i * 64, &segs)
                })
                .collect();
            assert!(rig.run(&writes).iter().all(|r| r.status == BLKIF_RSP_OKAY));
            for g in 0..256u32 {
                rig.grants.poke(1000 + g, 0, &[0; 4096]);
            }
            let reads: Vec<BlkifRequest> = writes
                .iter()
                .map(|w| BlkifRequest {
                    operation: BLKIF_OP_READ,
                    ..*w
                })
                .collect();
            assert!(rig.run(&reads).iter().all(|r| r.status == BLKIF_RSP_OKAY));
            for i in 0..32u64 {
                for p in 0..8u64 {
                    let fill = round.wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ p as u8;
                    let page = rig.grants.page(1000 + (i * 8 + p) as u32);
                    assert!(
                        page.iter().all(|&b| b == fill),
                        "round {round} request {i} page {p}"
                    );
                }
            }
        }
        assert!(!rig.back.pool.is_empty() && rig.back.pool.len() <= MAX_POOLED);
    }
}
