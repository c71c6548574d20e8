//! virtio-blk on the crate's split `VirtQueue`, with up to [`MAX_IN_FLIGHT`] requests in flight.
//!
//! Each request is a three-descriptor chain (header, data, status; two for a flush) pointing into
//! [`DmaBuf`]s: the caller's data buffer is handed to the device as is (no copy), the 16-byte
//! headers and status bytes live in one page owned by the driver, one slot per request.
//!
//! Two id tables, both [`IdSlab`]s: request slots (the slot picks the header and status bytes) and
//! descriptor heads (the token the queue library chose when the chain was added, which is what the
//! device names in the used ring). A used entry is accepted only if its head is in flight.

use alloc::sync::Arc;
use core::sync::atomic::{Ordering, fence};

use bitflags::bitflags;
use ring_protocol::abi::virtio::{
    Le32, Le64, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VirtioBlkConfig, VirtioBlkOuthdr, feature,
};
use ring_protocol::ring::IdSlab;
use virtio_drivers::queue::VirtQueue;
use zerocopy::IntoBytes;

use super::transport::{VirtioPci, VirtioTransport, need_event};
use super::{VirtioHal, VirtioPlatform};
use crate::block::{BlockCompletion, BlockDevice, BlockInfo, BlockOp, BlockRequest, Rejected, validate};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaAllocator, DmaBuf};
use crate::wait::SharedIrqAck;
use crate::{Error, Result};

const NAME: &str = "virtio-blk";
/// Descriptors in the queue (QEMU's virtio-blk offers 256).
pub const QUEUE_SIZE: usize = 128;
/// Requests in flight at most: three descriptors each.
pub const MAX_IN_FLIGHT: usize = QUEUE_SIZE / 3;
/// virtio-blk sectors are always 512 bytes.
pub use ring_protocol::abi::SECTOR_SIZE;
/// Largest request we issue (one data descriptor).
const MAX_REQUEST_BYTES: usize = 128 * 1024;
const HEADER_LEN: usize = size_of::<VirtioBlkOuthdr>();
/// Offset of the status bytes in the metadata page.
const STATUS_BASE: usize = 2048;

/// Written before submission; a device that completes without writing the status is caught.
const STATUS_UNSET: u8 = 0xff;

// Offsets in the config space.
const CONFIG_CAPACITY: usize = core::mem::offset_of!(VirtioBlkConfig, capacity);
const CONFIG_SIZE_MAX: usize = core::mem::offset_of!(VirtioBlkConfig, size_max);

bitflags! {
    /// virtio-blk feature bits we care about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const SIZE_MAX = feature(VIRTIO_BLK_F_SIZE_MAX);
        const RO = feature(VIRTIO_BLK_F_RO);
        const FLUSH = feature(VIRTIO_BLK_F_FLUSH);
        const RING_EVENT_IDX = feature(VIRTIO_RING_F_EVENT_IDX);
        const VERSION_1 = feature(VIRTIO_F_VERSION_1);
    }
}

const _: () = assert!(STATUS_BASE + MAX_IN_FLIGHT <= crate::dma::PAGE_SIZE);
const _: () = assert!(MAX_IN_FLIGHT * HEADER_LEN <= STATUS_BASE);

#[derive(Debug)]
struct Slot {
    req: BlockRequest,
    token: u16,
}

/// A virtio-blk device on the platform `P` (over virtio-pci unless a test gives it a fake
/// transport).
pub struct VirtioBlk<P: VirtioPlatform, T: VirtioTransport = VirtioPci> {
    transport: T,
    queue: VirtQueue<VirtioHal<P>, QUEUE_SIZE>,
    info: BlockInfo,
    event_idx: bool,
    /// Request headers at `slot * 16`, status bytes at `STATUS_BASE + slot`.
    meta: DmaBuf,
    /// The requests in flight by slot.
    slots: IdSlab<Slot, MAX_IN_FLIGHT>,
    /// Descriptor head (token) in flight → its slot.
    tokens: IdSlab<u16, QUEUE_SIZE>,
    /// Our copy of the avail index (the crate's is private): advanced on every add.
    avail_idx: u16,
    /// The avail index when the open batch started (see `BlockDevice::set_batching`).
    batch_start: Option<u16>,
    counters: Arc<AtomicCounters>,
    /// Set when the device broke the protocol; every later call fails with it.
    broken: Option<Error>,
}

impl<P: VirtioPlatform, T: VirtioTransport> core::fmt::Debug for VirtioBlk<P, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("info", &self.info)
            .field("event_idx", &self.event_idx)
            .field("in_flight", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<P: VirtioPlatform> VirtioBlk<P, VirtioPci> {
    /// Sends the request queue's interrupts to MSI-X table entry `entry` (see
    /// [`VirtioPci::use_msix`]).
    pub fn use_msix(&mut self, entry: u16) -> bool {
        self.transport.use_msix(1, entry)
    }
}

impl<P: VirtioPlatform, T: VirtioTransport> VirtioBlk<P, T> {
    /// Initialises the device behind `transport` (reset, feature negotiation, one request queue).
    pub fn new(mut transport: T) -> Result<Self> {
        let wanted = Features::SIZE_MAX
            | Features::RO
            | Features::FLUSH
            | Features::RING_EVENT_IDX
            | Features::VERSION_1;
        let features = transport.begin_init(wanted);
        if !features.contains(Features::VERSION_1) {
            return Err(Error::Init {
                device: NAME,
                reason: "device does not offer VIRTIO_F_VERSION_1",
            });
        }
        let capacity = transport.read_consistent(|| {
            let lo: u32 = transport.read_config_space(CONFIG_CAPACITY)?;
            let hi: u32 = transport.read_config_space(CONFIG_CAPACITY + 4)?;
            Ok((u64::from(hi) << 32) | u64::from(lo))
        })?;
        let mut max_request_bytes = MAX_REQUEST_BYTES;
        if features.contains(Features::SIZE_MAX) {
            let size_max: u32 = transport.read_config_space(CONFIG_SIZE_MAX)?;
            let limit = (size_max as usize) / SECTOR_SIZE * SECTOR_SIZE;
            if limit >= SECTOR_SIZE {
                max_request_bytes = max_request_bytes.min(limit);
            }
        }
        let event_idx = features.contains(Features::RING_EVENT_IDX);
        let queue = VirtQueue::new(&mut transport, 0, false, event_idx)?;
        transport.finish_init();
        let counters = transport.counters();
        Ok(Self {
            transport,
            queue,
            info: BlockInfo {
                capacity_sectors: capacity,
                sector_size: SECTOR_SIZE,
                max_in_flight: MAX_IN_FLIGHT,
                max_request_bytes,
                read_only: features.contains(Features::RO),
                flush: features.contains(Features::FLUSH),
            },
            event_idx,
            meta: DmaBuf::new(P::dma(), crate::dma::PAGE_SIZE)?,
            slots: IdSlab::new(),
            tokens: IdSlab::new(),
            avail_idx: 0,
            batch_start: None,
            counters,
            broken: None,
        })
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// A one-line description of the queue state, for reports after a timeout: requests in flight,
    /// our avail index, the device's avail_event (if known), free descriptors, whether a completion
    /// is waiting.
    pub fn queue_state(&self) -> alloc::string::String {
        alloc::format!(
            "in_flight={} avail_idx={} avail_event={:?} free_desc={} used_pending={} batching={}",
            self.slots.len(),
            self.avail_idx,
            self.transport.avail_event(0),
            self.queue.available_desc(),
            self.queue.can_pop(),
            self.batch_start.is_some()
        )
    }

    /// The transport (for its notify mode).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The request's descriptor buffers: (header, data, status) slices into `meta` and the request
    /// buffer.
    ///
    /// # Safety
    /// The slices alias memory the device may access while the request is in flight; the caller
    /// passes them only to `VirtQueue::add` / `pop_used` for this slot and reads nothing through
    /// them in between.
    unsafe fn parts<'a>(
        meta: &DmaBuf,
        slot: usize,
        buf: &'a mut DmaBuf,
    ) -> (&'a [u8], &'a mut [u8], &'a mut [u8]) {
        let base = meta.as_ptr().cast_mut();
        let hdr = base.wrapping_add(slot * HEADER_LEN);
        let status = base.wrapping_add(STATUS_BASE + slot);
        // SAFETY: slot < MAX_IN_FLIGHT, so the header lies inside the metadata page (const asserts
        // above), disjoint from other slots'; the caller upholds the aliasing rule.
        let hdr = unsafe { core::slice::from_raw_parts(hdr, HEADER_LEN) };
        // SAFETY: as above, for the status byte.
        let status = unsafe { core::slice::from_raw_parts_mut(status, 1) };
        (hdr, buf.as_mut_slice(), status)
    }

    /// Kicks the device if it asked to hear about the requests added since avail index `old`.
    fn kick_since(&mut self, old: u16) {
        // SeqCst fence: our store of the new avail index must be visible to the device before we read
        // its avail_event / used flags (store→load order, which Release/Acquire alone does not give),
        // or a device going idle at that moment would miss the kick.
        fence(Ordering::SeqCst);
        let kick = match self.transport.avail_event(0).filter(|_| self.event_idx) {
            Some(event) => need_event(event, self.avail_idx, old),
            None => self.queue.should_notify(),
        };
        if kick {
            self.transport.notify(0);
        }
    }

    fn fail(&mut self, what: &'static str, value: u64) -> Error {
        let e = Error::Protocol {
            device: NAME,
            what,
            value,
        };
        self.broken = Some(e.clone());
        e
    }
}

impl<P: VirtioPlatform, T: VirtioTransport> BlockDevice for VirtioBlk<P, T> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> BlockInfo {
        self.info
    }

    fn submit(&mut self, mut req: BlockRequest) -> Result<(), Rejected> {
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
                    device: NAME,
                    op: "flush",
                },
            });
        }
        let Some(slot) = self.slots.next_id().map(|s| s as usize) else {
            let in_flight = self.slots.len();
            return Err(Rejected {
                req,
                error: Error::QueueFull {
                    device: NAME,
                    in_flight,
                },
            });
        };
        let kind = match req.op {
            BlockOp::Read => VIRTIO_BLK_T_IN,
            BlockOp::Write => VIRTIO_BLK_T_OUT,
            BlockOp::Flush => VIRTIO_BLK_T_FLUSH,
        };
        let sector = if req.op == BlockOp::Flush { 0 } else { req.sector };
        {
            let header = VirtioBlkOuthdr {
                type_: Le32::new(kind),
                ioprio: Le32::ZERO,
                sector: Le64::new(sector),
            };
            let m = self.meta.as_mut_slice();
            m[slot * HEADER_LEN..(slot + 1) * HEADER_LEN].copy_from_slice(header.as_bytes());
            m[STATUS_BASE + slot] = STATUS_UNSET;
        }
        let op = req.op;
        // SAFETY: the header, data and status memory stay untouched by us until pop_used for this
        // token (the request sits in `slots` and `meta` is only written for free slots).
        // SAFETY: the slices are only handed to add() below and to pop_used() for this token.
        let (hdr, data, status) = unsafe { Self::parts(&self.meta, slot, &mut req.buf) };
        // SAFETY (all three): the header, data and status memory stay untouched by us until pop_used
        // for this token (the request sits in `slots`, and `meta` is only written for free slots).
        let added = match op {
            BlockOp::Read => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.add(&[hdr], &mut [data, status]) }
            }
            BlockOp::Write => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.add(&[hdr, data], &mut [status]) }
            }
            BlockOp::Flush => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.add(&[hdr], &mut [status]) }
            }
        };
        let token = match added {
            Ok(t) => t,
            Err(virtio_drivers::Error::QueueFull) => {
                let in_flight = self.slots.len();
                return Err(Rejected {
                    req,
                    error: Error::QueueFull {
                        device: NAME,
                        in_flight,
                    },
                });
            }
            Err(e) => return Err(Rejected { req, error: e.into() }),
        };
        let claimed = self.tokens.insert_at(u64::from(token), slot as u16);
        // The slot `next_id` named: nothing touched the slab since.
        let stored = self.slots.insert(Slot { req, token });
        debug_assert_eq!(stored, Ok(slot as u32));
        if claimed.is_err() {
            // The queue handed out a head already in flight: its bookkeeping is broken. The buffer
            // stays with the slot (the device may still write it); the device is unusable.
            let error = self.fail("queue reused a descriptor head in flight", token.into());
            let req = BlockRequest {
                tag: 0,
                op,
                sector: 0,
                buf: DmaBuf::empty(),
            };
            return Err(Rejected { req, error });
        }
        let old = self.avail_idx;
        self.avail_idx = old.wrapping_add(1);
        match self.batch_start {
            Some(_) => {}
            None => self.kick_since(old),
        }
        Ok(())
    }

    fn set_batching(&mut self, on: bool) {
        match (on, self.batch_start) {
            (true, None) => self.batch_start = Some(self.avail_idx),
            (false, Some(old)) => {
                self.batch_start = None;
                if old != self.avail_idx {
                    self.kick_since(old);
                }
            }
            _ => {}
        }
    }

    fn poll(&mut self) -> Result<Option<BlockCompletion>> {
        if let Some(e) = self.broken.clone() {
            return Err(e);
        }
        let Some(token) = self.queue.peek_used() else {
            return Ok(None);
        };
        let Ok(slot) = self.tokens.remove(u64::from(token)) else {
            return Err(self.fail("used ring names a descriptor with no request", token.into()));
        };
        let slot = usize::from(slot);
        let Ok(mut s) = self.slots.remove(slot as u64) else {
            return Err(self.fail("used ring names a free request slot", slot as u64));
        };
        debug_assert_eq!(s.token, token);
        let op = s.req.op;
        // SAFETY: the same buffers as passed to add() for this token.
        // SAFETY: the slices go only to pop_used() for the token they were added under.
        let (hdr, data, status) = unsafe { Self::parts(&self.meta, slot, &mut s.req.buf) };
        // SAFETY (all three): the same buffers as passed to add() for this token.
        let popped = match op {
            BlockOp::Read => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.pop_used(token, &[hdr], &mut [data, status]) }
            }
            BlockOp::Write => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.pop_used(token, &[hdr, data], &mut [status]) }
            }
            BlockOp::Flush => {
                // SAFETY: see above; the chain for this op.
                unsafe { self.queue.pop_used(token, &[hdr], &mut [status]) }
            }
        };
        if let Err(e) = popped {
            let e = Error::Virtio(e);
            self.broken = Some(e.clone());
            return Err(e);
        }
        // Copy, then check: one read of the status byte the device wrote.
        let status = self.meta.as_slice()[STATUS_BASE + slot];
        let result = match status {
            VIRTIO_BLK_S_OK => Ok(()),
            other => Err(Error::DeviceStatus {
                device: NAME,
                op: op.name(),
                status: other.into(),
            }),
        };
        Ok(Some(BlockCompletion {
            tag: s.req.tag,
            op,
            buf: s.req.buf,
            result,
        }))
    }

    fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.transport.irq_ack())
    }

    fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    fn dma(&self) -> &'static dyn DmaAllocator {
        P::dma()
    }
}
