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
//! (`feature-flush-cache`) or else a `WRITE_BARRIER` (`feature-barrier`). Request ids are indices
//! into the in-flight slab, checked when a response names them. Sector numbers on the ring are in
//! 512-byte units whatever the disk's sector size.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, BLKIF_SECTOR_SIZE,
    BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
    VDISK_READONLY, xenbus_keys as keys,
};
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::grant_table::GrantRef;
use ring_protocol::abi::xen::{DomId, XEN_IO_PROTO_ABI_X86_64, XenPfn};
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::FrontRing;
use zerocopy::{FromBytes, IntoBytes};

use super::grant::GrantTable;
use super::xenbus::{self, XenbusDevice, XenbusState};
use super::xenstore::{NO_TX, XenStore, XsErrorKind, xs_kind};
use crate::block::{BlockCompletion, BlockDevice, BlockInfo, BlockOp, BlockRequest, Rejected, validate};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::wait::{IrqAck, SharedIrqAck, Waiter};
use crate::{Error, Result};

/// What a Xen frontend needs from its platform besides XenStore and the grant table.
pub trait XenDeviceHost: Sync {
    /// Allocates an event channel port `remote` may bind.
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort>;
    /// Signals the remote end of `port`.
    fn notify(&self, port: EvtchnPort) -> Result<()>;
    /// Closes `port`.
    fn close(&self, port: EvtchnPort);
    /// Routes events on `port` to `ack` (and unmasks it).
    fn bind(&self, port: EvtchnPort, ack: SharedIrqAck) -> Result<()>;
    /// The frame number a peer uses for the page containing `virt` (the machine frame for a PV
    /// guest).
    fn frame_of(&self, virt: *const u8) -> XenPfn;
}

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

#[derive(Debug)]
struct InFlight {
    tag: u64,
    op: BlockOp,
    buf: DmaBuf,
    grefs: Vec<GrantRef>,
    indirect: Option<DmaBuf>,
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

/// A connected block frontend.
pub struct BlkFront<H: XenDeviceHost + 'static> {
    host: &'static H,
    grants: &'static GrantTable,
    dev: XenbusDevice,
    ring: FrontRing<BlkifRequest, BlkifResponse>,
    ring_mem: Option<DmaBuf>,
    ring_grefs: Vec<GrantRef>,
    port: EvtchnPort,
    info: BlockInfo,
    features: BlkFeatures,
    slots: Vec<Option<InFlight>>,
    free_ids: Vec<u32>,
    in_flight: usize,
    batching: bool,
    unpushed: bool,
    /// Grants the backend still held when their request completed: never reused.
    stuck: Vec<GrantRef>,
    irq: Arc<Irq>,
}

impl<H: XenDeviceHost> core::fmt::Debug for BlkFront<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkFront")
            .field("dev", &self.dev.frontend)
            .field("features", &self.features)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

struct PortNotify<'a, H: XenDeviceHost>(&'a H, EvtchnPort);

impl<H: XenDeviceHost> Notify for PortNotify<'_, H> {
    fn notify(&self) -> ring_protocol::Result<()> {
        self.0
            .notify(self.1)
            .map_err(|_| ring_protocol::Error::NotifyFailed { status: -1 })
    }
}

fn read_opt_u64<N: Notify>(xs: &mut XenStore<N>, w: &dyn Waiter, path: &str) -> Result<Option<u64>> {
    match xs.read_u64(w, NO_TX, path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

impl<H: XenDeviceHost> BlkFront<H> {
    /// Connects to the backend of `dev`.
    ///
    /// # Errors
    /// A XenStore failure, [`Error::XenbusTimeout`] if the backend does not get ready or connect in
    /// time, grant or event channel failures.
    pub fn connect<N: Notify>(
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        host: &'static H,
        grants: &'static GrantTable,
        dev: XenbusDevice,
        opts: BlkOptions,
    ) -> Result<Self> {
        xenbus::set_state(xs, w, NO_TX, &dev, XenbusState::Initialising)?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "InitWait (ready for the frontend's details)",
            |s| matches!(s, XenbusState::InitWait | XenbusState::Connected),
            opts.timeout_us,
        )?;
        let offered_order = read_opt_u64(xs, w, &dev.be(keys::MAX_RING_PAGE_ORDER))?.unwrap_or(0) as u32;
        let order = offered_order.min(opts.max_ring_order).min(4);
        let pages = 1usize << order;
        let ring_mem = DmaBuf::new(pages * PAGE_SIZE)?;
        let ptr = core::ptr::NonNull::new(ring_mem.as_ptr().cast_mut()).expect("DMA buffer at null");
        // SAFETY: the ring pages are ours (a zeroed DmaBuf kept in `self` for the ring's life) and are
        // shared only with the backend, through grants, after this point.
        let ring = unsafe { FrontRing::<BlkifRequest, BlkifResponse>::init(ptr, pages * PAGE_SIZE) }
            .map_err(Error::Ring)?;
        let mut ring_grefs = Vec::with_capacity(pages);
        for p in 0..pages {
            let frame = host.frame_of(ring_mem.as_ptr().wrapping_add(p * PAGE_SIZE));
            ring_grefs.push(
                grants
                    .grant(dev.backend_id, frame, Access::ReadWrite)
                    .map_err(Error::Ring)?,
            );
        }
        let port = host.alloc_unbound(dev.backend_id)?;
        let d = &dev;
        let refs = &ring_grefs;
        xs.transaction(w, |xs, tx| {
            if order == 0 {
                xs.write(w, tx, &d.fe(keys::RING_REF), format!("{}", refs[0]).as_bytes())?;
            } else {
                xs.write(w, tx, &d.fe(keys::RING_PAGE_ORDER), format!("{order}").as_bytes())?;
                for (i, r) in refs.iter().enumerate() {
                    xs.write(
                        w,
                        tx,
                        &d.fe(&format!("{}{i}", keys::RING_REF)),
                        format!("{r}").as_bytes(),
                    )?;
                }
            }
            xs.write(w, tx, &d.fe(keys::EVENT_CHANNEL), format!("{port}").as_bytes())?;
            xs.write(w, tx, &d.fe(keys::PROTOCOL), XEN_IO_PROTO_ABI_X86_64.as_bytes())?;
            xenbus::set_state(xs, w, tx, d, XenbusState::Initialised)
        })?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            opts.timeout_us,
        )?;
        let sectors_512 = xs.read_u64(w, NO_TX, &dev.be(keys::SECTORS))?;
        let sector_size =
            read_opt_u64(xs, w, &dev.be(keys::SECTOR_SIZE))?.unwrap_or(BLKIF_SECTOR_SIZE) as usize;
        let info_bits = read_opt_u64(xs, w, &dev.be(keys::INFO))?.unwrap_or(0) as u32;
        let flush_cache = read_opt_u64(xs, w, &dev.be(keys::FEATURE_FLUSH_CACHE))?.unwrap_or(0) == 1;
        let barrier = read_opt_u64(xs, w, &dev.be(keys::FEATURE_BARRIER))?.unwrap_or(0) == 1;
        let max_indirect =
            read_opt_u64(xs, w, &dev.be(keys::FEATURE_MAX_INDIRECT_SEGMENTS))?.unwrap_or(0) as u32;
        let indirect_segments = if opts.indirect {
            max_indirect.min(MAX_INDIRECT)
        } else {
            0
        };
        if sector_size < 512 || !sector_size.is_power_of_two() || sector_size > PAGE_SIZE {
            return Err(Error::Protocol {
                device: "xen-blk",
                what: "sector-size",
                value: sector_size as u64,
            });
        }
        xenbus::set_state(xs, w, NO_TX, &dev, XenbusState::Connected)?;
        let irq = Arc::new(Irq::default());
        host.bind(port, irq.clone())?;
        let slots_n = ring.size();
        let max_pages = if indirect_segments > 0 {
            indirect_segments as usize
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        let info = BlockInfo {
            capacity_sectors: sectors_512 * BLKIF_SECTOR_SIZE / sector_size as u64,
            sector_size,
            max_in_flight: slots_n as usize,
            max_request_bytes: max_pages * PAGE_SIZE,
            read_only: info_bits & VDISK_READONLY != 0,
            flush: flush_cache || barrier,
        };
        Ok(Self {
            host,
            grants,
            dev,
            ring,
            ring_mem: Some(ring_mem),
            ring_grefs,
            port,
            info,
            features: BlkFeatures {
                ring_order: order,
                ring_slots: slots_n,
                indirect_segments,
                flush_cache,
                barrier,
                sectors_512,
                info: info_bits,
            },
            slots: (0..slots_n).map(|_| None).collect(),
            free_ids: (0..slots_n).rev().collect(),
            in_flight: 0,
            batching: false,
            unpushed: false,
            stuck: Vec::new(),
            irq,
        })
    }

    /// Robustness testing of backends only: behaves like a hostile frontend by publishing a request
    /// producer index more than a ring's worth of slots ahead of the last response (no correct
    /// frontend can), then notifies. A correct backend refuses the ring; this device must not be
    /// used for I/O afterwards. Returns the index published.
    pub fn publish_impossible_requests(&mut self) -> Result<u32> {
        let mem = self.ring_mem.as_ref().ok_or(Error::Protocol {
            device: "xen-blk",
            what: "ring (already disconnected)",
            value: 0,
        })?;
        let bogus = self
            .ring
            .req_prod_pvt()
            .wrapping_add(self.ring.size())
            .wrapping_add(7);
        // SAFETY: the ring's first 4 bytes are the shared `req_prod`, 4-byte aligned at the start of
        // our ring page, which stays allocated in `self`; the ring and the backend only access it
        // atomically.
        let req_prod = unsafe { core::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().cast_mut().cast()) };
        // Release: like a real publication, the (garbage) index is seen after everything before it.
        req_prod.store(bogus, core::sync::atomic::Ordering::Release);
        PortNotify(self.host, self.port).notify().map_err(Error::Ring)?;
        Ok(bogus)
    }

    /// What was negotiated.
    pub fn features(&self) -> BlkFeatures {
        self.features
    }

    /// The xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// Grants the backend kept after completing their request (never reused).
    pub fn stuck_grants(&self) -> usize {
        self.stuck.len()
    }

    fn kick(&mut self) -> Result<()> {
        if self.ring.push_requests_and_check_notify().map_err(Error::Ring)? {
            PortNotify(self.host, self.port).notify().map_err(Error::Ring)?;
            self.irq.counters.notified(1);
        }
        self.unpushed = false;
        Ok(())
    }

    fn build(
        &mut self,
        id: u32,
        req: &BlockRequest,
    ) -> Result<(BlkifRequest, Vec<GrantRef>, Option<DmaBuf>)> {
        let sector = req.sector * self.info.sector_size as u64 / BLKIF_SECTOR_SIZE;
        let (op, access) = match req.op {
            BlockOp::Read => (BLKIF_OP_READ, Access::ReadWrite),
            BlockOp::Write => (BLKIF_OP_WRITE, Access::ReadOnly),
            BlockOp::Flush => {
                let op = if self.features.flush_cache {
                    BLKIF_OP_FLUSH_DISKCACHE
                } else {
                    BLKIF_OP_WRITE_BARRIER
                };
                let r = BlkifRequest {
                    operation: op,
                    nr_segments: 0,
                    handle: 0,
                    id: u64::from(id),
                    sector_number: 0,
                    ..BlkifRequest::default()
                };
                return Ok((r, Vec::new(), None));
            }
        };
        let len = req.buf.len();
        let mut segs = Vec::with_capacity(len.div_ceil(PAGE_SIZE));
        let mut grefs = Vec::with_capacity(segs.capacity() + 1);
        let result = (|| -> Result<()> {
            for (i, chunk) in (0..len).step_by(PAGE_SIZE).enumerate() {
                let bytes = (len - chunk).min(PAGE_SIZE);
                let frame = self.host.frame_of(req.buf.as_ptr().wrapping_add(i * PAGE_SIZE));
                let gref = self
                    .grants
                    .grant(self.dev.backend_id, frame, access)
                    .map_err(Error::Ring)?;
                grefs.push(gref);
                segs.push(BlkifRequestSegment {
                    gref,
                    first_sect: 0,
                    last_sect: (bytes / BLKIF_SECTOR_SIZE as usize - 1) as u8,
                    _pad: [0; 2],
                });
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.release(&grefs);
            return Err(e);
        }
        if segs.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            let mut r = BlkifRequest {
                operation: op,
                nr_segments: segs.len() as u8,
                handle: 0,
                id: u64::from(id),
                sector_number: sector,
                ..BlkifRequest::default()
            };
            r.seg[..segs.len()].copy_from_slice(&segs);
            return Ok((r, grefs, None));
        }
        // Indirect: segment arrays in their own pages, granted read-only.
        let pages = segs.len().div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        let mut ind = match DmaBuf::new(pages * PAGE_SIZE) {
            Ok(b) => b,
            Err(e) => {
                self.release(&grefs);
                return Err(e);
            }
        };
        ind.as_mut_slice()[..segs.len() * 8].copy_from_slice(segs.as_bytes());
        let mut r = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: op,
            nr_segments: segs.len() as u16,
            id: u64::from(id),
            sector_number: sector,
            handle: 0,
            ..BlkifRequestIndirect::default()
        };
        for p in 0..pages {
            let frame = self.host.frame_of(ind.as_ptr().wrapping_add(p * PAGE_SIZE));
            match self.grants.grant(self.dev.backend_id, frame, Access::ReadOnly) {
                Ok(g) => {
                    grefs.push(g);
                    r.indirect_grefs[p] = g;
                }
                Err(e) => {
                    self.release(&grefs);
                    return Err(Error::Ring(e));
                }
            }
        }
        let mut slot = [0u8; core::mem::size_of::<BlkifRequest>()];
        slot[..core::mem::size_of::<BlkifRequestIndirect>()].copy_from_slice(r.as_bytes());
        let as_req = BlkifRequest::read_from_bytes(&slot).expect("same size");
        Ok((as_req, grefs, Some(ind)))
    }

    /// Ends `grefs`; those the backend still holds are kept aside for good. Returns whether all ended.
    fn release(&mut self, grefs: &[GrantRef]) -> bool {
        let mut all = true;
        for &g in grefs {
            match self.grants.end_access(g) {
                Ok(()) => {}
                Err(_) => {
                    self.stuck.push(g);
                    all = false;
                }
            }
        }
        all
    }
}

impl<H: XenDeviceHost> BlockDevice for BlkFront<H> {
    fn name(&self) -> &'static str {
        "xen-blk"
    }

    fn info(&self) -> BlockInfo {
        self.info
    }

    fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
        if let Err(error) = validate(&self.info, &req) {
            return Err(Rejected { req, error });
        }
        if req.op == BlockOp::Flush && !self.info.flush {
            return Err(Rejected {
                req,
                error: Error::Unsupported {
                    device: "xen-blk",
                    op: "flush",
                },
            });
        }
        if req.op == BlockOp::Write && self.info.read_only {
            return Err(Rejected {
                req,
                error: Error::ReadOnly { device: "xen-blk" },
            });
        }
        let Some(id) = self.free_ids.pop() else {
            return Err(Rejected {
                req,
                error: Error::QueueFull {
                    device: "xen-blk",
                    in_flight: self.in_flight,
                },
            });
        };
        let (r, grefs, indirect) = match self.build(id, &req) {
            Ok(x) => x,
            Err(error) => {
                self.free_ids.push(id);
                return Err(Rejected { req, error });
            }
        };
        if let Err(e) = self.ring.write_request(&r) {
            self.release(&grefs);
            self.free_ids.push(id);
            return Err(Rejected {
                req,
                error: Error::Ring(e),
            });
        }
        self.slots[id as usize] = Some(InFlight {
            tag: req.tag,
            op: req.op,
            buf: req.buf,
            grefs,
            indirect,
        });
        self.in_flight += 1;
        self.unpushed = true;
        if !self.batching {
            // A failed notification leaves the request queued; `poll` pushes and notifies again and
            // reports the error there.
            let _ = self.kick();
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<BlockCompletion>> {
        if self.unpushed {
            self.kick()?;
        }
        loop {
            let rsp = match self.ring.read_response().map_err(Error::Ring)? {
                Some(r) => r,
                None => {
                    if self.ring.final_check_for_responses().map_err(Error::Ring)? {
                        continue;
                    }
                    return Ok(None);
                }
            };
            let id = rsp.id;
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
                .and_then(Option::take);
            let Some(f) = slot else {
                return Err(Error::Protocol {
                    device: "xen-blk",
                    what: "response id not in flight",
                    value: id,
                });
            };
            self.free_ids.push(id as u32);
            self.in_flight -= 1;
            let all_ended = self.release(&f.grefs);
            let result = match rsp.status {
                BLKIF_RSP_OKAY => Ok(()),
                BLKIF_RSP_EOPNOTSUPP => Err(Error::Unsupported {
                    device: "xen-blk",
                    op: f.op.name(),
                }),
                s => Err(Error::DeviceStatus {
                    device: "xen-blk",
                    status: u32::from(s as u16),
                    op: f.op.name(),
                }),
            };
            let (buf, result) = if all_ended {
                drop(f.indirect);
                (f.buf, result)
            } else {
                // The backend can still reach these pages: never hand them out again.
                core::mem::forget(f.buf);
                core::mem::forget(f.indirect);
                (
                    DmaBuf::empty(),
                    Err(Error::Protocol {
                        device: "xen-blk",
                        what: "backend kept a grant after completing the request",
                        value: id,
                    }),
                )
            };
            return Ok(Some(BlockCompletion {
                tag: f.tag,
                op: f.op,
                buf,
                result,
            }));
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
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
}

impl<H: XenDeviceHost> BlkFront<H> {
    /// Disconnects: xenbus close handshake, then the ring's grants and the event channel are
    /// released. In-flight requests must have completed.
    pub fn disconnect<N: Notify>(
        mut self,
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        timeout_us: u64,
    ) -> Result<XenbusState> {
        let seen = xenbus::close(xs, w, &self.dev, timeout_us)?;
        self.host.close(self.port);
        let grefs = core::mem::take(&mut self.ring_grefs);
        if self.release(&grefs) {
            drop(self.ring_mem.take());
        } else {
            core::mem::forget(self.ring_mem.take());
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests;
