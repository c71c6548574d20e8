//! A hand-built split virtqueue in a small guest memory, for the vhost-user device targets: the
//! fuzzer plays the guest driver (descriptors, the available ring, buffer contents, anywhere in
//! guest memory, including the rings themselves).

use pvkit_backends::vhost::{Memory, Vring};
use vhost_user_backend::VringT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory size.
pub const MEM: u64 = 0x10000;
/// Where the data buffers the fuzzer builds go (the rings are below).
pub const DATA: u64 = 0x5000;
/// A region the fuzzer's buffers do not point at on purpose, for the honest requests.
pub const HONEST: u64 = 0xe000;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable.
pub const F_WRITE: u16 = 2;
/// Indirect table.
pub const F_INDIRECT: u16 = 4;

/// One queue's rings, at fixed places per queue index.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl Queue {
    /// The rings of queue `q` (0 or 1) of `size` entries.
    pub fn new(q: u64, size: u16) -> Self {
        Queue {
            size,
            desc: q * 0x1000,
            avail: 0x2000 + q * 0x800,
            used: 0x3000 + q * 0x1000,
        }
    }
}

/// Fresh zeroed guest memory (one region at 0).
pub fn memory() -> Memory {
    GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("guest memory"),
    )
}

/// A vring over `q`, ready and enabled (as a frontend leaves it after SET_VRING_ADDR/KICK/ENABLE).
pub fn vring(mem: &Memory, q: &Queue, event_idx: bool) -> Vring {
    let v = Vring::new(mem.clone(), 256).expect("vring");
    v.set_queue_size(q.size);
    v.set_queue_info(q.desc, q.avail, q.used).expect("ring addresses");
    v.set_queue_event_idx(event_idx);
    v.set_queue_ready(true);
    v.set_enabled(true);
    v
}

/// The guest driver's view of one queue.
#[derive(Debug)]
pub struct Driver<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap<()>,
    /// The rings.
    pub q: Queue,
    /// Next available index the driver will publish.
    pub avail_idx: u16,
}

impl<'a> Driver<'a> {
    /// A driver over `q` in `mem`.
    pub fn new(mem: &'a GuestMemoryMmap<()>, q: Queue) -> Self {
        Driver { mem, q, avail_idx: 0 }
    }

    /// Writes descriptor `i` (the index is taken modulo the table).
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.q.desc + 16 * u64::from(i % self.q.size);
        self.mem
            .write_slice(&d, GuestAddress(at))
            .expect("descriptor in memory");
    }

    /// Puts `head` in the next available slot (not yet published).
    pub fn offer(&mut self, head: u16) {
        let at = self.q.avail + 4 + 2 * u64::from(self.avail_idx % self.q.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(at))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index (any value).
    pub fn publish(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.q.avail + 2))
            .expect("avail idx");
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.q.used + 2))
            .expect("used idx")
    }

    /// Used element `k` (modulo the ring): (descriptor head, length).
    pub fn used(&self, k: u16) -> (u32, u32) {
        let at = self.q.used + 4 + 8 * u64::from(k % self.q.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used elem");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used elem");
        (id, len)
    }

    /// Writes bytes anywhere in guest memory (ignored outside).
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// Reads `n` bytes.
    pub fn peek(&self, addr: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("in memory");
        v
    }
}
