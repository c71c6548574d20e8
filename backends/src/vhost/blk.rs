//! vhost-user-blk: virtio-blk requests from the vrings, executed by the block core.
//!
//! A request is a descriptor chain: a 16-byte header (type u32, reserved u32, sector u64, all
//! little-endian) in the driver-readable part, the data, and a one-byte status in the last,
//! device-writable descriptor. Data moves between the image and guest memory with `preadv`/`pwritev`
//! straight on the mapped guest pages (no bounce copy). With a worker pool the vring thread parses and
//! queues, the workers execute and complete; without one (`workers == 0`) the vring thread executes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_blk as vb;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use super::{DaemonBackend, ExitEvents, Memory, Vring, features};
use crate::block::{BlockCore, BlockQueue, Data, Op, Request, SECTOR_SIZE, Segment};

/// Largest virtqueue the device offers.
pub const QUEUE_SIZE: usize = 256;
/// Serial number returned for GET_ID (20 bytes, zero padded).
const SERIAL: &[u8] = b"pvkit-vhost-user-blk";
/// Size of `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` + padding.
const CONFIG_LEN: usize = 60;
/// Largest discard / write-zeroes in sectors.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The vhost-user-blk backend for one connection.
pub struct VhostBlk {
    core: Arc<BlockCore>,
    pool: Option<Arc<BlockQueue>>,
    mem: Memory,
    queues: usize,
    event_idx: AtomicBool,
    exit: ExitEvents,
}

impl std::fmt::Debug for VhostBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostBlk")
            .field("capacity", &self.core.capacity())
            .field("queues", &self.queues)
            .field("pool", &self.pool)
            .finish()
    }
}

/// Why a chain could not become a request (answered with `VIRTIO_BLK_S_IOERR`): no status byte,
/// header too short, wrong direction, address outside guest memory.
#[derive(Debug)]
struct Bad(&'static str);

/// One parsed chain.
struct Parsed {
    /// Data descriptors after the header, before the status byte.
    data: Vec<(GuestAddress, usize, bool)>,
    req_type: u32,
    sector: u64,
}

type Guard = GuestMemoryLoadGuard<GuestMemoryMmap<()>>;

fn parse(
    chain: DescriptorChain<Guard>,
    mem: &GuestMemoryMmap<()>,
) -> (u16, Result<Parsed, Bad>, Option<GuestAddress>) {
    let head = chain.head_index();
    let descs: Vec<_> = chain.collect();
    let Some(last) = descs.last() else {
        return (head, Err(Bad("empty chain")), None);
    };
    if !last.is_write_only() || last.len() < 1 {
        return (head, Err(Bad("no writable status byte")), None);
    }
    let status = GuestAddress(last.addr().0 + u64::from(last.len()) - 1);
    // Header: the first 16 driver-readable bytes, possibly spread over descriptors.
    let mut header = [0u8; 16];
    let mut got = 0usize;
    let mut data = Vec::new();
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let mut addr = d.addr().0;
        let mut len = d.len() as usize;
        if i == n - 1 {
            len -= 1; // the status byte
        }
        if got < 16 && len > 0 {
            if d.is_write_only() {
                return (
                    head,
                    Err(Bad("header in a device-writable descriptor")),
                    Some(status),
                );
            }
            let take = (16 - got).min(len);
            if mem
                .read_slice(&mut header[got..got + take], GuestAddress(addr))
                .is_err()
            {
                return (head, Err(Bad("header outside guest memory")), Some(status));
            }
            got += take;
            addr += take as u64;
            len -= take;
        }
        if len > 0 {
            data.push((GuestAddress(addr), len, d.is_write_only()));
        }
    }
    if got < 16 {
        return (head, Err(Bad("header shorter than 16 bytes")), Some(status));
    }
    let req_type = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    (
        head,
        Ok(Parsed {
            data,
            req_type,
            sector,
        }),
        Some(status),
    )
}

/// Host-virtual segments for guest ranges; every descriptor must have the direction `write`.
fn segments(
    mem: &GuestMemoryMmap<()>,
    data: &[(GuestAddress, usize, bool)],
    device_writes: bool,
) -> Result<Vec<Segment>, Bad> {
    let mut out = Vec::with_capacity(data.len());
    for &(addr, len, w) in data {
        if w != device_writes {
            return Err(Bad("data descriptor with the wrong direction"));
        }
        for s in GuestMemoryBackend::get_slices(mem, addr, len) {
            let s = s.map_err(|_| Bad("data outside guest memory"))?;
            // SAFETY: the slice lies in a region of `mem`; the request keeps a load guard of that
            // memory (so the mapping stays) until it completes.
            out.push(unsafe { Segment::new(s.ptr_guard_mut().as_ptr(), s.len()) });
        }
    }
    Ok(out)
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
    Io(Request, u32),
    Discard(Vec<(u64, u64)>),
    Done(u8, u32),
}

impl VhostBlk {
    /// A backend for one connection over `core`, sharing `pool` if given.
    pub fn new(core: Arc<BlockCore>, pool: Option<Arc<BlockQueue>>, mem: Memory, queues: usize) -> Self {
        VhostBlk {
            core,
            pool,
            mem,
            queues: queues.max(1),
            event_idx: AtomicBool::new(false),
            exit: ExitEvents::default(),
        }
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.core.capacity().to_le_bytes());
        c[12..16].copy_from_slice(&((QUEUE_SIZE - 2) as u32).to_le_bytes()); // seg_max
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        c[34..36].copy_from_slice(&(self.queues as u16).to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        c[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment (4 KiB)
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    fn prepare(&self, parsed: Result<Parsed, Bad>, mem: &Guard) -> Kind {
        let p = match parsed {
            Ok(p) => p,
            Err(Bad(why)) => {
                tracing::warn!("vhost-user-blk: refusing a request: {why}");
                return Kind::Done(vb::VIRTIO_BLK_S_IOERR as u8, 0);
            }
        };
        let fail = |why: &str| {
            tracing::warn!("vhost-user-blk: refusing request type {}: {why}", p.req_type);
            Kind::Done(vb::VIRTIO_BLK_S_IOERR as u8, 0)
        };
        match p.req_type {
            vb::VIRTIO_BLK_T_IN | vb::VIRTIO_BLK_T_OUT => {
                let read = p.req_type == vb::VIRTIO_BLK_T_IN;
                match segments(mem, &p.data, read) {
                    Ok(segs) => {
                        let len: usize = segs.iter().map(Segment::len).sum();
                        let op = if read { Op::Read } else { Op::Write { fua: false } };
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
                    Err(Bad(why)) => fail(why),
                }
            }
            vb::VIRTIO_BLK_T_FLUSH => Kind::Io(
                Request {
                    op: Op::Flush,
                    sector: 0,
                    data: Data::None,
                },
                0,
            ),
            vb::VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; vb::VIRTIO_BLK_ID_BYTES as usize];
                id[..SERIAL.len()].copy_from_slice(SERIAL);
                let Some(&(addr, len, true)) = p.data.first() else {
                    return fail("GET_ID without a writable buffer");
                };
                let n = len.min(id.len());
                if mem.write_slice(&id[..n], addr).is_err() {
                    return fail("GET_ID buffer outside guest memory");
                }
                Kind::Done(vb::VIRTIO_BLK_S_OK as u8, n as u32)
            }
            vb::VIRTIO_BLK_T_DISCARD | vb::VIRTIO_BLK_T_WRITE_ZEROES => {
                let mut ranges = Vec::new();
                for &(addr, len, w) in &p.data {
                    if w || len % 16 != 0 {
                        return fail("discard segments malformed");
                    }
                    for k in 0..len / 16 {
                        let mut seg = [0u8; 16];
                        if mem
                            .read_slice(&mut seg, GuestAddress(addr.0 + 16 * k as u64))
                            .is_err()
                        {
                            return fail("discard segment outside guest memory");
                        }
                        let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8"));
                        let n = u32::from_le_bytes(seg[8..12].try_into().expect("4"));
                        ranges.push((sector, u64::from(n)));
                    }
                }
                Kind::Discard(ranges)
            }
            t => {
                tracing::debug!("vhost-user-blk: unsupported request type {t}");
                Kind::Done(vb::VIRTIO_BLK_S_UNSUPP as u8, 0)
            }
        }
    }

    fn execute(core: &BlockCore, kind: Kind) -> (u8, u32) {
        match kind {
            Kind::Done(s, used) => (s, used),
            Kind::Io(mut req, used) => io_status(core.execute(&mut req), used),
            Kind::Discard(ranges) => {
                for (sector, sectors) in ranges {
                    let mut req = Request {
                        op: Op::Discard { sectors },
                        sector,
                        data: Data::None,
                    };
                    if let Err(e) = core.execute(&mut req) {
                        tracing::warn!("vhost-user-blk: {e}");
                        return (vb::VIRTIO_BLK_S_IOERR as u8, 0);
                    }
                }
                (vb::VIRTIO_BLK_S_OK as u8, 0)
            }
        }
    }

    /// Writes the status, puts the chain on the used ring, and interrupts the driver if it asked.
    fn complete(vring: &Vring, mem: &Guard, head: u16, status: Option<GuestAddress>, st: u8, used: u32) {
        let mut used = used;
        if let Some(addr) = status
            && mem.write_obj(st, addr).is_ok()
        {
            used += 1;
        }
        if let Err(e) = vring.add_used(head, used) {
            tracing::warn!("vhost-user-blk: add_used({head}) failed: {e}");
        }
        if vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    fn process_queue(&self, vring: &Vring) -> io::Result<bool> {
        let mem = self.mem.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            let Ok(iter) = state.get_queue_mut().iter(mem.clone()) else {
                return Ok(false);
            };
            iter.collect()
        };
        let any = !chains.is_empty();
        for chain in chains {
            let (head, parsed, status) = parse(chain, &mem);
            let Some(status) = status else {
                // No status byte to write: complete with nothing written.
                tracing::warn!("vhost-user-blk: chain {head} has no status byte");
                Self::complete(vring, &mem, head, None, 0, 0);
                continue;
            };
            let kind = self.prepare(parsed, &mem);
            let pending = Pending {
                head,
                status,
                kind,
                mem: mem.clone(),
            };
            self.dispatch(vring, pending);
        }
        Ok(any)
    }

    fn dispatch(&self, vring: &Vring, p: Pending) {
        let Pending {
            head,
            status,
            kind,
            mem,
        } = p;
        let kind = match (kind, &self.pool) {
            (Kind::Io(req, used), Some(pool)) => {
                let (v, m) = (vring.clone(), mem.clone());
                let done: crate::block::Completion = Box::new(move |_req, r| {
                    let (st, used) = io_status(r, used);
                    Self::complete(&v, &m, head, Some(status), st, used);
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
        let (st, used) = Self::execute(&self.core, kind);
        Self::complete(vring, &mem, head, Some(status), st, used);
    }
}

fn io_status(r: crate::Result<usize>, used: u32) -> (u8, u32) {
    match r {
        Ok(_) => (vb::VIRTIO_BLK_S_OK as u8, used),
        Err(e) => {
            tracing::warn!("vhost-user-blk: {e}");
            (vb::VIRTIO_BLK_S_IOERR as u8, 0)
        }
    }
}

impl DaemonBackend for VhostBlk {
    fn exit_events(&self) -> &ExitEvents {
        &self.exit
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
            | bit(vb::VIRTIO_BLK_F_SEG_MAX)
            | bit(vb::VIRTIO_BLK_F_BLK_SIZE)
            | bit(vb::VIRTIO_BLK_F_FLUSH)
            | bit(vb::VIRTIO_BLK_F_MQ);
        if self.core.options().read_only {
            f |= bit(vb::VIRTIO_BLK_F_RO);
        } else {
            f |= bit(vb::VIRTIO_BLK_F_DISCARD) | bit(vb::VIRTIO_BLK_F_WRITE_ZEROES);
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
        let c = self.config_space();
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize + size as usize).min(CONFIG_LEN);
        let mut v = c[start..end].to_vec();
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
        let Some(vring) = vrings.get(device_event as usize) else {
            return Err(io::Error::other(format!("unknown device event {device_event}")));
        };
        if self.event_idx.load(Ordering::Relaxed) {
            // Drain, re-enable notifications, and drain again if the driver queued meanwhile
            // (the re-enable publishes avail_event; a request added before it would be missed).
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process_queue(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
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
    fn backend(&mut self, mem: &Memory) -> crate::Result<Arc<VhostBlk>> {
        Ok(Arc::new(VhostBlk::new(
            self.core.clone(),
            self.pool.clone(),
            mem.clone(),
            self.queues,
        )))
    }
}
