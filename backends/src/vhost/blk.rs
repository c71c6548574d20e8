//! vhost-user-blk: virtio-blk requests from the vrings, executed by the block core.
//!
//! A request is a descriptor chain: a 16-byte header ([`VirtioBlkOuthdr`]: type, reserved, sector,
//! little-endian) in the driver-readable part, the data, and a one-byte status in the last,
//! device-writable descriptor. Each chain becomes one block core request (read, write, flush,
//! discard; write-zeroes punches a hole like discard) whose result becomes the status byte: the
//! core validates, syncs and counts it. Data moves between the image and guest memory with
//! `preadv`/`pwritev` straight on the mapped guest pages (no bounce copy). With a worker pool
//! ([`BlockQueue`]) the vring thread parses and queues, the workers execute and complete; without one
//! (`workers == 0`) the vring thread executes (the inline executor, [`BlockCore::execute`]).
//!
//! Everything in a chain is the guest's word and is bounded before it costs anything: at most
//! [`MAX_CHAIN`] descriptors (an indirect table may claim 65535), [`SEG_MAX`] data descriptors (the
//! advertised `seg_max`), [`MAX_REQUEST_BYTES`] of data, discard and write-zeroes limited to the
//! advertised segment and sector counts; address arithmetic is checked. A refused request gets
//! `VIRTIO_BLK_S_IOERR` (or `UNSUPP` where the spec says so) and a rate-limited warning; a broken ring
//! stops its queue ([`Health`]).

use std::io;
use std::mem::offset_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ring_protocol::abi::virtio::{
    Le16, Le32, Le64, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VirtioBlkConfig, VirtioBlkDiscardWriteZeroes, VirtioBlkOuthdr,
    feature,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use zerocopy::{FromBytes, IntoBytes};

use super::{
    DaemonBackend, Drive, ExitEvents, ExtraEvent, Health, Memory, QueueFault, Vring, drive, features,
};
use crate::block::{BlockCore, BlockQueue, Data, Op, Request, SECTOR_SIZE, Segment};
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// Largest virtqueue the device offers.
pub const QUEUE_SIZE: usize = 256;
/// Data descriptors one request may have (advertised as `seg_max`): a chain is a header, at most
/// this many data descriptors and a status byte.
pub const SEG_MAX: usize = QUEUE_SIZE - 2;
/// Most descriptors one chain may have; longer chains (an indirect table of up to 65535 entries)
/// are refused without collecting them.
pub const MAX_CHAIN: usize = QUEUE_SIZE;
/// Most data bytes of one read or write. Not advertised (virtio-blk has no such field); Linux sends
/// at most `max_sectors_kb` (1280 KiB by default), pvkit's guest 128 KiB. Bounds the `O_DIRECT`
/// bounce buffer the core allocates for misaligned guest memory.
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Largest discard in sectors (advertised as `max_discard_sectors`).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Segments per discard request (advertised as `max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 1;
/// Largest write-zeroes in sectors (advertised as `max_write_zeroes_sectors`).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// Segments per write-zeroes request (advertised as `max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// `discard_sector_alignment` advertised: 4 KiB.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Serial number returned for GET_ID (20 bytes, zero padded).
const SERIAL: &[u8] = b"pvkit-vhost-user-blk";
/// The config space this device offers: `struct virtio_blk_config` up to and including
/// `write_zeroes_may_unmap` and its padding (no secure erase).
const CONFIG_LEN: usize = offset_of!(VirtioBlkConfig, max_secure_erase_sectors);
/// The request header.
const HEADER_LEN: usize = size_of::<VirtioBlkOuthdr>();
/// One discard / write-zeroes segment.
const DWZ_LEN: usize = size_of::<VirtioBlkDiscardWriteZeroes>();
/// The most segments any request type takes (sizes the parse buffer).
const MAX_DWZ_SEG: usize = if MAX_DISCARD_SEG > MAX_WRITE_ZEROES_SEG {
    MAX_DISCARD_SEG as usize
} else {
    MAX_WRITE_ZEROES_SEG as usize
};

const S_OK: u8 = VIRTIO_BLK_S_OK;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP;

/// What completions need, shared with the worker pool's threads.
#[derive(Debug)]
struct Shared {
    health: Health,
    log: Arc<RateLimit>,
}

/// The vhost-user-blk backend for one connection.
pub struct VhostBlk {
    core: Arc<BlockCore>,
    pool: Option<Arc<BlockQueue>>,
    mem: Memory,
    queues: usize,
    event_idx: AtomicBool,
    exit: ExitEvents,
    /// One per queue: written when a handler yields with work left, so that it runs again after the
    /// worker's other events (the exit event among them).
    resume: Vec<EventFd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VhostBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostBlk")
            .field("capacity", &self.core.capacity())
            .field("queues", &self.queues)
            .field("pool", &self.pool)
            .field("health", &self.shared.health)
            .finish()
    }
}

/// Why a chain could not become a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Answered `VIRTIO_BLK_S_IOERR`: malformed (no status byte, short header, wrong direction,
    /// outside guest memory, too long, an address that overflows).
    IoErr(&'static str),
    /// Answered `VIRTIO_BLK_S_UNSUPP`: well formed, but not something this device does (more
    /// discard segments than advertised, unknown flags).
    Unsupp(&'static str),
}

/// One parsed chain.
struct Parsed {
    /// Data descriptors after the header, before the status byte: (address, length, device-writable).
    data: Vec<(GuestAddress, usize, bool)>,
    req_type: u32,
    sector: u64,
}

type Guard = GuestMemoryLoadGuard<GuestMemoryMmap<()>>;

/// Splits a chain into header, data and status byte. Returns the head index, the request (or why
/// not), and the status byte's address if there is one to write.
fn parse(
    chain: DescriptorChain<Guard>,
    mem: &GuestMemoryMmap<()>,
) -> (u16, Result<Parsed, Bad>, Option<GuestAddress>) {
    let head = chain.head_index();
    let mut descs = Vec::with_capacity(4);
    for d in chain {
        if descs.len() == MAX_CHAIN {
            // No status byte is trusted from a chain we did not read to its end.
            return (head, Err(Bad::IoErr("chain longer than the queue")), None);
        }
        descs.push(d);
    }
    let Some(last) = descs.last() else {
        return (head, Err(Bad::IoErr("empty chain")), None);
    };
    if !last.is_write_only() || last.len() < 1 {
        return (head, Err(Bad::IoErr("no writable status byte")), None);
    }
    let Some(status) = last.addr().checked_add(u64::from(last.len()) - 1) else {
        return (head, Err(Bad::IoErr("status byte address overflows")), None);
    };
    let status = Some(status);
    // Header: the first 16 driver-readable bytes, possibly spread over descriptors.
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0usize;
    let mut data = Vec::new();
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let mut addr = d.addr();
        let mut len = d.len() as usize;
        if i == n - 1 {
            len -= 1; // the status byte
        }
        if got < HEADER_LEN && len > 0 {
            if d.is_write_only() {
                return (
                    head,
                    Err(Bad::IoErr("header in a device-writable descriptor")),
                    status,
                );
            }
            let take = (HEADER_LEN - got).min(len);
            if mem.read_slice(&mut header[got..got + take], addr).is_err() {
                return (head, Err(Bad::IoErr("header outside guest memory")), status);
            }
            got += take;
            let Some(next) = addr.checked_add(take as u64) else {
                return (head, Err(Bad::IoErr("header address overflows")), status);
            };
            addr = next;
            len -= take;
        }
        if len > 0 {
            if addr.checked_add(len as u64).is_none() {
                return (head, Err(Bad::IoErr("data address overflows")), status);
            }
            data.push((addr, len, d.is_write_only()));
        }
    }
    if got < HEADER_LEN {
        return (head, Err(Bad::IoErr("header shorter than 16 bytes")), status);
    }
    let header = VirtioBlkOuthdr::read_from_bytes(&header).expect("a whole header");
    let (req_type, sector) = (header.type_.get(), header.sector.get());
    (
        head,
        Ok(Parsed {
            data,
            req_type,
            sector,
        }),
        status,
    )
}

/// Host-virtual segments for guest ranges; every descriptor must have the direction `write`, there
/// may be at most [`SEG_MAX`] of them and [`MAX_REQUEST_BYTES`] in all.
fn segments(
    mem: &GuestMemoryMmap<()>,
    data: &[(GuestAddress, usize, bool)],
    device_writes: bool,
) -> Result<(Vec<Segment>, u64), Bad> {
    if data.len() > SEG_MAX {
        return Err(Bad::IoErr("more data descriptors than seg_max"));
    }
    let mut total = 0u64;
    for &(_, len, w) in data {
        if w != device_writes {
            return Err(Bad::IoErr("data descriptor with the wrong direction"));
        }
        total = total
            .checked_add(len as u64)
            .filter(|&t| t <= MAX_REQUEST_BYTES)
            .ok_or(Bad::IoErr("more data than one request may carry"))?;
    }
    let mut out = Vec::with_capacity(data.len());
    for &(addr, len, _) in data {
        for s in GuestMemoryBackend::get_slices(mem, addr, len) {
            let s = s.map_err(|_| Bad::IoErr("data outside guest memory"))?;
            // SAFETY: the slice lies in a region of `mem`; the request keeps a load guard of that
            // memory (so the mapping stays) until it completes.
            out.push(unsafe { Segment::new(s.ptr_guard_mut().as_ptr(), s.len()) });
        }
    }
    Ok((out, total))
}

/// The ranges of a discard or write-zeroes request, checked against the advertised limits.
/// At most [`MAX_DWZ_SEG`] segments are read, whatever the descriptors claim.
fn dwz_ranges(
    mem: &GuestMemoryMmap<()>,
    data: &[(GuestAddress, usize, bool)],
    write_zeroes: bool,
) -> Result<Vec<(u64, u64)>, Bad> {
    let (max_seg, max_sectors) = if write_zeroes {
        (MAX_WRITE_ZEROES_SEG as usize, MAX_WRITE_ZEROES_SECTORS)
    } else {
        (MAX_DISCARD_SEG as usize, MAX_DISCARD_SECTORS)
    };
    let mut total = 0usize;
    for &(_, len, w) in data {
        if w {
            return Err(Bad::IoErr("discard segments in a device-writable descriptor"));
        }
        total = total
            .checked_add(len)
            .ok_or(Bad::IoErr("discard segments overflow"))?;
    }
    if total == 0 || !total.is_multiple_of(DWZ_LEN) {
        return Err(Bad::IoErr(
            "discard data is not a whole number of 16-byte segments",
        ));
    }
    if total / DWZ_LEN > max_seg {
        return Err(Bad::Unsupp("more discard/write-zeroes segments than advertised"));
    }
    // Gather the (at most MAX_DWZ_SEG) segments, however the driver split them over descriptors.
    let mut raw = [0u8; DWZ_LEN * MAX_DWZ_SEG];
    let raw = &mut raw[..total];
    let mut at = 0usize;
    for &(addr, len, _) in data {
        if mem.read_slice(&mut raw[at..at + len], addr).is_err() {
            return Err(Bad::IoErr("discard segment outside guest memory"));
        }
        at += len;
    }
    let mut ranges = Vec::with_capacity(total / DWZ_LEN);
    for seg in raw.chunks_exact(DWZ_LEN) {
        let seg = VirtioBlkDiscardWriteZeroes::read_from_bytes(seg).expect("a whole segment");
        let (sector, sectors, flags) = (seg.sector.get(), seg.num_sectors.get(), seg.flags.get());
        // virtio 1.2, 5.2.6.2: unknown flags, and the unmap flag on a discard, are UNSUPP.
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(Bad::Unsupp("unknown discard/write-zeroes flags"));
        }
        if !write_zeroes && flags != 0 {
            return Err(Bad::Unsupp("unmap flag on a discard"));
        }
        if sectors > max_sectors {
            return Err(Bad::IoErr("more sectors than max_discard/write_zeroes_sectors"));
        }
        ranges.push((sector, u64::from(sectors)));
    }
    Ok(ranges)
}

/// A request ready to execute, plus what completing it needs.
struct Pending {
    head: u16,
    status: GuestAddress,
    kind: Kind,
    /// Keeps the guest memory mapped while workers use raw pointers into it.
    mem: Guard,
}

enum Kind {
    /// A core request, and the used length to report on success (data bytes the device wrote,
    /// without the status byte).
    Io(Request, u32),
    /// Answered without the core: the status and the used length.
    Done(u8, u32),
}

// A discard or write-zeroes request carries one segment (advertised), so it is one core request.
const _: () = assert!(MAX_DWZ_SEG == 1);

impl VhostBlk {
    /// A backend for one connection over `core`, sharing `pool` if given; `log` limits its
    /// peer-triggered warnings.
    pub fn new(
        core: Arc<BlockCore>,
        pool: Option<Arc<BlockQueue>>,
        mem: Memory,
        queues: usize,
        log: Arc<RateLimit>,
    ) -> crate::Result<Self> {
        let queues = queues.clamp(1, 64);
        let resume = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| crate::Error::Daemon {
                what: "creating the resume eventfds".into(),
                detail: e.to_string(),
            })?;
        Ok(VhostBlk {
            core,
            pool,
            mem,
            queues,
            event_idx: AtomicBool::new(false),
            exit: ExitEvents::default(),
            resume,
            shared: Arc::new(Shared {
                health: Health::new(queues),
                log,
            }),
        })
    }

    /// Which queues are stopped.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// Event id of queue `q`'s resume eventfd (ids up to the number of queues are the library's).
    fn resume_id(&self, q: usize) -> u16 {
        (self.queues + 1 + q) as u16
    }

    fn config_space(&self) -> VirtioBlkConfig {
        VirtioBlkConfig {
            capacity: Le64::new(self.core.capacity()),
            seg_max: Le32::new(SEG_MAX as u32),
            blk_size: Le32::new(SECTOR_SIZE as u32),
            // At most 64 (clamped in `new`).
            num_queues: Le16::new(self.queues as u16),
            max_discard_sectors: Le32::new(MAX_DISCARD_SECTORS),
            max_discard_seg: Le32::new(MAX_DISCARD_SEG),
            discard_sector_alignment: Le32::new(DISCARD_ALIGNMENT_SECTORS),
            max_write_zeroes_sectors: Le32::new(MAX_WRITE_ZEROES_SECTORS),
            max_write_zeroes_seg: Le32::new(MAX_WRITE_ZEROES_SEG),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        }
    }

    fn prepare(&self, parsed: Result<Parsed, Bad>, mem: &Guard) -> Kind {
        let refuse = |req_type: Option<u32>, bad: Bad| {
            let (status, why) = match bad {
                Bad::IoErr(why) => (S_IOERR, why),
                Bad::Unsupp(why) => (S_UNSUPP, why),
            };
            match req_type {
                Some(t) => warn_limited!(
                    self.shared.log,
                    "vhost-user-blk: refusing request type {t}: {why}"
                ),
                None => warn_limited!(self.shared.log, "vhost-user-blk: refusing a request: {why}"),
            }
            Kind::Done(status, 0)
        };
        let p = match parsed {
            Ok(p) => p,
            Err(bad) => return refuse(None, bad),
        };
        let t = Some(p.req_type);
        match p.req_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let read = p.req_type == VIRTIO_BLK_T_IN;
                match segments(mem, &p.data, read) {
                    Ok((segs, len)) => {
                        let op = if read { Op::Read } else { Op::Write { fua: false } };
                        // Fits: len <= MAX_REQUEST_BYTES < u32::MAX.
                        let used = if read { len as u32 } else { 0 };
                        Kind::Io(
                            Request {
                                op,
                                sector: p.sector,
                                data: Data::Segments(segs),
                            },
                            used,
                        )
                    }
                    Err(bad) => refuse(t, bad),
                }
            }
            VIRTIO_BLK_T_FLUSH => Kind::Io(
                Request {
                    op: Op::Flush,
                    sector: 0,
                    data: Data::None,
                },
                0,
            ),
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
                id[..SERIAL.len()].copy_from_slice(SERIAL);
                let Some(&(addr, len, true)) = p.data.first() else {
                    return refuse(t, Bad::IoErr("GET_ID without a writable buffer"));
                };
                let n = len.min(id.len());
                if mem.write_slice(&id[..n], addr).is_err() {
                    return refuse(t, Bad::IoErr("GET_ID buffer outside guest memory"));
                }
                Kind::Done(S_OK, n as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.core.options().read_only {
                    // Not offered on a read-only device.
                    return Kind::Done(S_UNSUPP, 0);
                }
                match dwz_ranges(mem, &p.data, p.req_type == VIRTIO_BLK_T_WRITE_ZEROES).as_deref() {
                    Ok(&[(sector, sectors)]) => Kind::Io(
                        Request {
                            op: Op::Discard { sectors },
                            sector,
                            data: Data::None,
                        },
                        0,
                    ),
                    Ok(_) => refuse(
                        t,
                        Bad::Unsupp("more discard/write-zeroes segments than advertised"),
                    ),
                    Err(&bad) => refuse(t, bad),
                }
            }
            other => {
                tracing::debug!("vhost-user-blk: unsupported request type {other}");
                Kind::Done(S_UNSUPP, 0)
            }
        }
    }

    fn execute(core: &BlockCore, shared: &Shared, kind: Kind) -> (u8, u32) {
        match kind {
            Kind::Done(s, used) => (s, used),
            Kind::Io(mut req, used) => io_status(shared, core.execute(&mut req), used),
        }
    }

    /// Writes the status, puts the chain on the used ring, and interrupts the driver if it asked.
    /// A used ring that cannot be written stops queue `q`.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        shared: &Shared,
        q: usize,
        vring: &Vring,
        mem: &Guard,
        head: u16,
        status: Option<GuestAddress>,
        st: u8,
        used: u32,
    ) {
        let mut used = used;
        if let Some(addr) = status
            && mem.write_obj(st, addr).is_ok()
        {
            used = used.saturating_add(1);
        }
        if let Err(e) = vring.add_used(head, used) {
            shared.health.stop(
                "vhost-user-blk",
                q,
                &QueueFault::Ring {
                    op: "adding to the used ring",
                    error: e,
                },
                &shared.log,
            );
            return;
        }
        if vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// One batch: every chain the driver has made available, at most a ring's worth.
    fn process_queue(&self, q: usize, vring: &Vring) -> Result<bool, QueueFault> {
        self.shared.health.count_round();
        let mem = self.mem.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            match state.get_queue_mut().iter(mem.clone()) {
                Ok(iter) => iter.collect(),
                // Stopped by the frontend meanwhile: nothing to do.
                Err(virtio_queue::Error::QueueNotReady) => return Ok(false),
                Err(e) => return Err(QueueFault::ring("reading the available ring")(e)),
            }
        };
        let any = !chains.is_empty();
        for chain in chains {
            if self.shared.health.is_broken(q) {
                break;
            }
            let (head, parsed, status) = parse(chain, &mem);
            let Some(status) = status else {
                // No status byte to write: complete with nothing written.
                if let Err(Bad::IoErr(why) | Bad::Unsupp(why)) = parsed {
                    warn_limited!(self.shared.log, "vhost-user-blk: chain {head}: {why}");
                }
                Self::complete(&self.shared, q, vring, &mem, head, None, 0, 0);
                continue;
            };
            let kind = self.prepare(parsed, &mem);
            let pending = Pending {
                head,
                status,
                kind,
                mem: mem.clone(),
            };
            self.dispatch(q, vring, pending);
        }
        Ok(any)
    }

    fn dispatch(&self, q: usize, vring: &Vring, p: Pending) {
        let Pending {
            head,
            status,
            kind,
            mem,
        } = p;
        let kind = match (kind, &self.pool) {
            (Kind::Io(req, used), Some(pool)) => {
                let (v, m, shared) = (vring.clone(), mem.clone(), self.shared.clone());
                let done: crate::block::Completion = Box::new(move |_req, r| {
                    let (st, used) = io_status(&shared, r, used);
                    Self::complete(&shared, q, &v, &m, head, Some(status), st, used);
                });
                if let Err((mut req, done, _busy)) = pool.submit(req, done) {
                    // Queue full: execute on this thread; the completion does the rest.
                    let r = self.core.execute(&mut req);
                    done(req, r);
                }
                return;
            }
            (kind, _) => kind,
        };
        let (st, used) = Self::execute(&self.core, &self.shared, kind);
        Self::complete(&self.shared, q, vring, &mem, head, Some(status), st, used);
    }
}

fn io_status(shared: &Shared, r: crate::Result<usize>, used: u32) -> (u8, u32) {
    match r {
        Ok(_) => (S_OK, used),
        Err(e) => {
            warn_limited!(shared.log, "vhost-user-blk: {e}");
            (S_IOERR, 0)
        }
    }
}

impl DaemonBackend for VhostBlk {
    fn exit_events(&self) -> &ExitEvents {
        &self.exit
    }

    fn listeners(&self) -> Vec<ExtraEvent> {
        use std::os::fd::AsRawFd;
        // Queue q is served by worker thread q (queues_per_thread).
        (0..self.queues)
            .map(|q| ExtraEvent {
                thread: q,
                fd: self.resume[q].as_raw_fd(),
                id: self.resume_id(q),
            })
            .collect()
    }
}

impl VhostUserBackend for VhostBlk {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::INDIRECT_DESC
            | features::EVENT_IDX
            | features::PROTOCOL_FEATURES
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_MQ);
        if self.core.options().read_only {
            f |= feature(VIRTIO_BLK_F_RO);
        } else {
            f |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // `size` is bounded by the message size the library accepted (4 KiB).
        let config = self.config_space();
        let c = &config.as_bytes()[..CONFIG_LEN];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize).saturating_add(size as usize).min(CONFIG_LEN);
        let mut v = c[start..end.max(start)].to_vec();
        v.resize(size as usize, 0);
        v
    }

    fn update_memory(&self, _mem: Memory) -> io::Result<()> {
        // `self.mem` is the same GuestMemoryAtomic the handler updates.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One vring thread per queue, so multi-queue spreads over cores.
        (0..self.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.create()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the frontend stops (resets) this ring; a stopped queue may start again.
        self.shared.health.restart(queue_index as usize);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let e = usize::from(device_event);
        let q = if e < self.queues {
            e
        } else if let Some(q) = e.checked_sub(self.queues + 1).filter(|&q| q < self.queues) {
            // A resume event: reset it (level-triggered) before anything else.
            let _ = self.resume[q].read();
            q
        } else {
            return Err(io::Error::other(format!("unknown device event {device_event}")));
        };
        let Some(vring) = vrings.get(q) else {
            return Err(io::Error::other(format!("no vring {q}")));
        };
        if self.shared.health.is_broken(q) {
            // Stopped: the kick was consumed by the library; nothing is processed.
            return Ok(());
        }
        match drive(vring, self.event_idx.load(Ordering::Relaxed), |v| {
            self.process_queue(q, v)
        }) {
            Ok(Drive::Idle) => {}
            Ok(Drive::Yield) => {
                let _ = self.resume[q].write(1);
            }
            Err(fault) => {
                self.shared
                    .health
                    .stop("vhost-user-blk", q, &fault, &self.shared.log);
            }
        }
        Ok(())
    }
}

/// Builds a [`VhostBlk`] per connection over one core (and one worker pool).
#[derive(Debug)]
pub struct BlkConnections {
    /// The image.
    pub core: Arc<BlockCore>,
    /// Shared worker pool, if requests are executed off the vring threads.
    pub pool: Option<Arc<BlockQueue>>,
    /// Request queues offered.
    pub queues: usize,
}

impl super::Connection<VhostBlk> for BlkConnections {
    fn backend(&mut self, mem: &Memory, log: &Arc<RateLimit>) -> crate::Result<Arc<VhostBlk>> {
        Ok(Arc::new(VhostBlk::new(
            self.core.clone(),
            self.pool.clone(),
            mem.clone(),
            self.queues,
            log.clone(),
        )?))
    }
}
