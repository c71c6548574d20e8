//! blkfront: a [`BlockDevice`] over a Xen block backend (Linux blkback).
//!
//! Connection ([`BlkFront::connect`]): wait for the backend to be ready (`InitWait`), allocate the
//! shared ring (one page, or `2^order` pages when the backend offers `max-ring-page-order`), grant
//! its pages, allocate an event channel, publish `ring-ref` (or `ring-page-order` and
//! `ring-ref0..`), `event-channel` and `protocol` in one transaction with state `Initialised`, wait
//! for `Connected`, then read `sectors`, `sector-size`, `info` and the feature keys.
//!
//! Requests: each data page is granted for the request (writable for reads) and ended when the
//! response arrives. Up to 11 segments fit in a request; longer requests use indirect segment pages
//! when the backend offers `feature-max-indirect-segments`. Flush is `BLKIF_OP_FLUSH_DISKCACHE`
//! (`feature-flush-cache`) or else a `WRITE_BARRIER` (`feature-barrier`). Sector numbers on the ring
//! are in 512-byte units whatever the disk's sector size.
//!
//! The driver is generic over the platform ([`XenPlatform`]: a [`GrantMemory`], the
//! [`EventChannels`], a DMA allocator); it names no global.
//!
//! Against a hostile backend:
//! - Every shared page (ring, indirect pages, data) is a [`Granted`], which owns the page and its
//!   grants: no path frees a page the backend can still reach. A connection that fails after the
//!   rings were published runs the close handshake (bounded) before letting the ring go; whatever
//!   the backend still holds then is abandoned to it and counted ([`GrantStats::leaked_pages`]).
//! - Responses are copied out of the ring, then checked: the id must name a request in flight (an
//!   [`IdSlabBox`] id, refused unless in flight) and the operation must be that request's. A
//!   response producer index past the requests outstanding halts the ring. A backend that keeps a
//!   grant after completing its request has broken the protocol too. Any of these halts the device:
//!   requests still in flight come back failed (with their buffers, when their grants end), every
//!   later call fails with the same error; other devices are untouched.
//! - Every key the backend writes is bounded before use: `sector-size` a power of two from 512 to a
//!   page, `sectors` such that the byte size fits 64 bits, `info` 32 bits, flags `0`/`1`, the ring
//!   order and indirect segment count clamped to what we support.
//!
//! [`GrantStats::leaked_pages`]: super::grant::GrantStats::leaked_pages

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, BLKIF_SECTOR_SIZE,
    BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
};
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::{FrontRing, IdSlabBox};
use zerocopy::{FromBytes, IntoBytes};

use super::evtchn::{EventChannels, PortNotify};
use super::grant::{Granted, NotGranted};
use super::xenbus::{self, XenbusDevice, XenbusState};
use super::xenstore::XenStore;
use super::{GrantMemory, XenPlatform};
use crate::block::{BlockCompletion, BlockDevice, BlockInfo, BlockOp, BlockRequest, Rejected, validate};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaAllocator, DmaBuf, PAGE_SIZE};
use crate::wait::{IrqAck, SharedIrqAck, Waiter, wait_for};
use crate::{Error, Result};

mod connect;
#[cfg(feature = "hostile-frontend")]
mod hostile;

/// Connection options.
#[derive(Debug, Clone, Copy)]
pub struct BlkOptions {
    /// Largest ring order to use (the backend's `max-ring-page-order` caps it).
    pub max_ring_order: u32,
    /// Use indirect segments when offered.
    pub indirect: bool,
    /// Timeout for each handshake step.
    pub timeout_us: u64,
}

impl Default for BlkOptions {
    fn default() -> Self {
        Self {
            max_ring_order: 2,
            indirect: true,
            timeout_us: 10_000_000,
        }
    }
}

/// What the connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkFeatures {
    /// Ring pages = 2^order.
    pub ring_order: u32,
    /// Ring slots.
    pub ring_slots: u32,
    /// Segments per indirect request (0 = direct only).
    pub indirect_segments: u32,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `sectors` (512-byte units).
    pub sectors_512: u64,
    /// `info` bits.
    pub info: u32,
}

/// Largest indirect request we build (pages of data).
const MAX_INDIRECT: u32 = 256;
/// Largest ring order we use, whatever the backend offers.
pub const MAX_RING_ORDER: u32 = 4;
/// How long a connection that failed after publishing its rings waits for the backend to let go of
/// them (at most; less if the connect timeout is shorter).
pub const ABORT_TIMEOUT_US: u64 = 1_000_000;

const DEVICE: &str = "xen-blk";

/// A request's data: shared with the backend, or (a flush) kept private.
#[derive(Debug)]
enum Payload<G: GrantMemory> {
    Private(DmaBuf),
    Shared(Granted<G>),
}

#[derive(Debug)]
struct InFlight<G: GrantMemory> {
    tag: u64,
    op: BlockOp,
    /// The request's `operation` on the ring (`BLKIF_OP_INDIRECT` for an indirect one) and the
    /// operation it carries: a response must name one of them.
    wire_op: u8,
    inner_op: u8,
    data: Payload<G>,
    indirect: Option<Granted<G>>,
}

#[derive(Debug, Default)]
struct Irq {
    counters: AtomicCounters,
    events: AtomicU64,
}

impl IrqAck for Irq {
    fn ack(&self) -> bool {
        // Relaxed: a statistic; the ring indices carry the data ordering.
        self.events.fetch_add(1, Ordering::Relaxed);
        self.counters.interrupted();
        true
    }
}

/// A connected block frontend over the platform `XenPlatform<G, E>`.
pub struct BlkFront<G: GrantMemory, E: EventChannels> {
    platform: XenPlatform<G, E>,
    dev: XenbusDevice,
    /// Declared before `ring_mem`: the ring's pointer goes before its memory.
    ring: FrontRing<BlkifRequest, BlkifResponse>,
    ring_mem: Option<Granted<G>>,
    /// `None` once closed.
    port: Option<EvtchnPort>,
    info: BlockInfo,
    features: BlkFeatures,
    /// The requests in flight, by the id on the ring (one per ring slot).
    requests: IdSlabBox<InFlight<G>>,
    batching: bool,
    unpushed: bool,
    /// Grants the backend still held when their request completed: kept (never reused), tried
    /// again at disconnect, abandoned if still held then.
    stuck: Vec<Granted<G>>,
    /// Set once the backend broke the protocol; every later call fails with it.
    broken: Option<Error>,
    irq: Arc<Irq>,
}

impl<G: GrantMemory, E: EventChannels> core::fmt::Debug for BlkFront<G, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkFront")
            .field("dev", &self.dev.frontend)
            .field("features", &self.features)
            .field("in_flight", &self.requests.len())
            .field("broken", &self.broken)
            .finish()
    }
}

fn protocol(what: &'static str, value: u64) -> Error {
    Error::Protocol {
        device: DEVICE,
        what,
        value,
    }
}

impl<G: GrantMemory, E: EventChannels> BlkFront<G, E> {
    /// What was negotiated.
    pub fn features(&self) -> BlkFeatures {
        self.features
    }

    /// The xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// The platform the device was opened on.
    pub fn platform(&self) -> &XenPlatform<G, E> {
        &self.platform
    }

    /// Grants the backend kept after completing their request (never reused).
    pub fn stuck_grants(&self) -> usize {
        self.stuck.iter().map(|g| g.refs().len()).sum()
    }

    /// Why the device stopped, if the backend broke the protocol.
    pub fn broken(&self) -> Option<&Error> {
        self.broken.as_ref()
    }

    fn halt<T>(&mut self, e: Error) -> Result<T> {
        self.broken.get_or_insert(e.clone());
        Err(e)
    }

    fn close_port(&mut self) {
        if let Some(port) = self.port.take() {
            self.platform.events.close(port);
        }
    }

    fn kick(&mut self) -> Result<()> {
        let port = self.port.ok_or(protocol("event channel (already closed)", 0))?;
        if self.ring.push_requests_and_check_notify().map_err(Error::Ring)? {
            PortNotify::new(&self.platform.events, port)
                .notify()
                .map_err(Error::Ring)?;
            self.irq.counters.notified(1);
        }
        self.unpushed = false;
        Ok(())
    }

    /// Builds the ring request for `id`, sharing `buf` (not for a flush); on failure the buffer
    /// comes back (empty if its pages had to be abandoned).
    fn build(
        &mut self,
        id: u32,
        op: BlockOp,
        sector: u64,
        buf: DmaBuf,
    ) -> Result<(BlkifRequest, InFlight<G>), (DmaBuf, Error)> {
        let sector = sector * self.info.sector_size as u64 / BLKIF_SECTOR_SIZE;
        let (wire_op, access) = match op {
            BlockOp::Read => (BLKIF_OP_READ, Access::ReadWrite),
            BlockOp::Write => (BLKIF_OP_WRITE, Access::ReadOnly),
            BlockOp::Flush => {
                let wire_op = if self.features.flush_cache {
                    BLKIF_OP_FLUSH_DISKCACHE
                } else {
                    BLKIF_OP_WRITE_BARRIER
                };
                let r = BlkifRequest {
                    operation: wire_op,
                    nr_segments: 0,
                    handle: 0,
                    id: u64::from(id),
                    sector_number: 0,
                    ..BlkifRequest::default()
                };
                let f = InFlight {
                    tag: 0,
                    op,
                    wire_op,
                    inner_op: wire_op,
                    data: Payload::Private(buf),
                    indirect: None,
                };
                return Ok((r, f));
            }
        };
        let len = buf.len();
        let data = Granted::new(self.platform.grants.clone(), self.dev.backend_id, buf, access)
            .map_err(|NotGranted { buf, error }| (buf, Error::Ring(error)))?;
        let segs: Vec<BlkifRequestSegment> = data
            .refs()
            .iter()
            .enumerate()
            .map(|(i, &gref)| {
                let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
                BlkifRequestSegment {
                    gref,
                    first_sect: 0,
                    last_sect: (bytes / BLKIF_SECTOR_SIZE as usize - 1) as u8,
                    _pad: [0; 2],
                }
            })
            .collect();
        let mut f = InFlight {
            tag: 0,
            op,
            wire_op,
            inner_op: wire_op,
            data: Payload::Shared(data),
            indirect: None,
        };
        if segs.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            let mut r = BlkifRequest {
                operation: wire_op,
                nr_segments: segs.len() as u8,
                handle: 0,
                id: u64::from(id),
                sector_number: sector,
                ..BlkifRequest::default()
            };
            r.seg[..segs.len()].copy_from_slice(&segs);
            return Ok((r, f));
        }
        // Indirect: segment arrays in their own pages, granted read-only.
        let pages = segs.len().div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        let indirect = DmaBuf::new(self.platform.dma, pages * PAGE_SIZE).and_then(|mut ind| {
            ind.as_mut_slice()[..segs.len() * 8].copy_from_slice(segs.as_bytes());
            Granted::new(
                self.platform.grants.clone(),
                self.dev.backend_id,
                ind,
                Access::ReadOnly,
            )
            .map_err(|e| Error::Ring(e.error))
        });
        let indirect = match indirect {
            Ok(g) => g,
            Err(e) => {
                let (buf, _) = self.take_back(f);
                return Err((buf.unwrap_or_else(DmaBuf::empty), e));
            }
        };
        let mut r = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: wire_op,
            nr_segments: segs.len() as u16,
            id: u64::from(id),
            sector_number: sector,
            handle: 0,
            ..BlkifRequestIndirect::default()
        };
        r.indirect_grefs[..pages].copy_from_slice(indirect.refs());
        f.wire_op = BLKIF_OP_INDIRECT;
        f.indirect = Some(indirect);
        let mut slot = [0u8; core::mem::size_of::<BlkifRequest>()];
        slot[..core::mem::size_of::<BlkifRequestIndirect>()].copy_from_slice(r.as_bytes());
        let as_req = BlkifRequest::read_from_bytes(&slot).expect("same size");
        Ok((as_req, f))
    }

    /// Ends a request's grants. Returns its data buffer if the data grants ended, and whether every
    /// grant (indirect pages too) ended; what the backend still holds goes to `stuck`.
    fn take_back(&mut self, f: InFlight<G>) -> (Option<DmaBuf>, bool) {
        let mut all = true;
        if let Some(ind) = f.indirect {
            // An ended indirect page is freed here (dropped with its buffer).
            if let Err(held) = ind.revoke() {
                self.stuck.push(held);
                all = false;
            }
        }
        let buf = match f.data {
            Payload::Private(b) => Some(b),
            Payload::Shared(g) => match g.revoke() {
                Ok(b) => Some(b),
                Err(held) => {
                    self.stuck.push(held);
                    all = false;
                    None
                }
            },
        };
        (buf, all)
    }

    /// On a broken device: hands back the next request still in flight, failed with `e` (its buffer
    /// if its grants end), or returns `e` once none is left.
    fn fail_next(&mut self, e: Error) -> Result<Option<BlockCompletion>> {
        let Some((_, f)) = self.requests.take_first() else {
            return Err(e);
        };
        let (tag, op) = (f.tag, f.op);
        let (buf, _) = self.take_back(f);
        Ok(Some(BlockCompletion {
            tag,
            op,
            buf: buf.unwrap_or_else(DmaBuf::empty),
            result: Err(e),
        }))
    }

    /// Ends every grant still alive (ring, stuck, in flight), retrying while the backend holds some,
    /// up to `timeout_us`; the rest is abandoned to the backend (and counted) when dropped.
    fn release(&mut self, w: &dyn Waiter, timeout_us: u64) {
        let mut held: Vec<Granted<G>> = core::mem::take(&mut self.stuck);
        for (_, f) in self.requests.drain() {
            held.extend(f.indirect);
            if let Payload::Shared(g) = f.data {
                held.push(g);
            }
        }
        held.extend(self.ring_mem.take());
        let _ = wait_for(w, timeout_us, "the backend to let go of its grants", || {
            held = core::mem::take(&mut held)
                .into_iter()
                .filter_map(|g| g.revoke().err())
                .collect();
            Ok(held.is_empty().then_some(()))
        });
        drop(held);
    }
}

impl<G: GrantMemory, E: EventChannels> BlockDevice for BlkFront<G, E> {
    fn name(&self) -> &'static str {
        DEVICE
    }

    fn info(&self) -> BlockInfo {
        self.info
    }

    fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
        if let Some(error) = self.broken.clone() {
            return Err(Rejected { req, error });
        }
        if let Err(error) = validate(&self.info, &req) {
            return Err(Rejected { req, error });
        }
        if req.op == BlockOp::Flush && !self.info.flush {
            return Err(Rejected {
                req,
                error: Error::Unsupported {
                    device: DEVICE,
                    op: "flush",
                },
            });
        }
        if req.op == BlockOp::Write && self.info.read_only {
            return Err(Rejected {
                req,
                error: Error::ReadOnly { device: DEVICE },
            });
        }
        let Some(id) = self.requests.next_id() else {
            return Err(Rejected {
                req,
                error: Error::QueueFull {
                    device: DEVICE,
                    in_flight: self.requests.len(),
                },
            });
        };
        let BlockRequest { tag, op, sector, buf } = req;
        let (r, mut f) = match self.build(id, op, sector, buf) {
            Ok(x) => x,
            Err((buf, error)) => {
                let req = BlockRequest { tag, op, sector, buf };
                return Err(Rejected { req, error });
            }
        };
        f.tag = tag;
        if let Err(e) = self.ring.write_request(&r) {
            let (buf, _) = self.take_back(f);
            let req = BlockRequest {
                tag,
                op,
                sector,
                buf: buf.unwrap_or_else(DmaBuf::empty),
            };
            return Err(Rejected {
                req,
                error: Error::Ring(e),
            });
        }
        // The id `build` wrote into the request: nothing touched the slab since `next_id`.
        let stored = self.requests.insert(f);
        debug_assert_eq!(stored, Ok(id));
        self.unpushed = true;
        if !self.batching {
            // A failed notification leaves the request queued; `poll` pushes and notifies again and
            // reports the error there.
            let _ = self.kick();
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<BlockCompletion>> {
        if let Some(e) = self.broken.clone() {
            return self.fail_next(e);
        }
        if self.unpushed {
            self.kick()?;
        }
        loop {
            let rsp = match self.ring.read_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.ring.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e) => return self.halt(Error::Ring(e)),
                },
                Err(e) => return self.halt(Error::Ring(e)),
            };
            // `rsp` is our copy: validate it before using anything in it.
            let id = rsp.id;
            let Ok(f) = self.requests.get(id) else {
                return self.halt(protocol("response id not in flight", id));
            };
            if rsp.operation != f.wire_op && rsp.operation != f.inner_op {
                // Not the request this id names: the backend's ids cannot be trusted any more.
                return self.halt(protocol(
                    "response operation differs from its request's",
                    u64::from(rsp.operation),
                ));
            }
            let Ok(f) = self.requests.remove(id) else {
                unreachable!("looked up above");
            };
            let result = match rsp.status {
                BLKIF_RSP_OKAY => Ok(()),
                BLKIF_RSP_EOPNOTSUPP => Err(Error::Unsupported {
                    device: DEVICE,
                    op: f.op.name(),
                }),
                s => Err(Error::DeviceStatus {
                    device: DEVICE,
                    status: u32::from(s as u16),
                    op: f.op.name(),
                }),
            };
            let (tag, op) = (f.tag, f.op);
            let (buf, all_ended) = self.take_back(f);
            let result = if all_ended {
                result
            } else {
                // The backend can still reach these pages after saying it was done with them.
                let e = protocol("backend kept a grant after completing the request", id);
                self.broken.get_or_insert(e.clone());
                Err(e)
            };
            return Ok(Some(BlockCompletion {
                tag,
                op,
                buf: buf.unwrap_or_else(DmaBuf::empty),
                result,
            }));
        }
    }

    fn in_flight(&self) -> usize {
        self.requests.len()
    }

    fn set_batching(&mut self, on: bool) {
        self.batching = on;
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.irq.clone())
    }

    fn counters(&self) -> Counters {
        self.irq.counters.snapshot()
    }

    fn dma(&self) -> &'static dyn DmaAllocator {
        self.platform.dma
    }
}

impl<G: GrantMemory, E: EventChannels> BlkFront<G, E> {
    /// Disconnects: the xenbus close handshake, then the event channel is closed and every grant is
    /// ended (the ring's, and those of requests still in flight, whose buffers are freed). Grants the
    /// backend still holds are retried for up to `timeout_us`, then abandoned to it (counted in the
    /// grant table's `leaked_pages`). Resources are released even when the handshake fails.
    ///
    /// # Errors
    /// The handshake's failure ([`Error::XenbusTimeout`] if the backend does not close).
    pub fn disconnect<N: Notify>(
        mut self,
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        timeout_us: u64,
    ) -> Result<XenbusState> {
        let seen = xenbus::close(xs, w, &self.dev, timeout_us);
        self.close_port();
        self.release(w, timeout_us);
        seen
    }
}

impl<G: GrantMemory, E: EventChannels> Drop for BlkFront<G, E> {
    /// Without [`disconnect`](Self::disconnect): closes the event channel; each grant ends, or its
    /// pages are abandoned to the backend if it still holds them.
    fn drop(&mut self) {
        self.close_port();
    }
}

#[cfg(test)]
mod tests;
