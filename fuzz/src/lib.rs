//! Helpers shared by the fuzz targets: a cursor over the fuzzer's bytes and shared memory that is
//! only ever touched atomically (as a peer in another domain would touch it), with canaries around
//! it so that an access outside the region given to the code under test is caught.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Reads values off the front of the fuzzer's input; past its end every read is zero, so each
/// input is a complete script.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The next byte (0 at the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A boolean from the next byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A value in `0..n` (`n > 0`) from the next byte.
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes (at most `max`).
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u8()).min(max);
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.data;
        self.data = &[];
        r
    }
}

/// Bytes of canary before and after the region handed to the code under test.
pub const CANARY: usize = 64;
const CANARY_BYTE: u8 = 0xa5;

/// 8-byte-aligned memory of `len` bytes with canaries on both sides, accessed only through atomics.
#[derive(Debug)]
pub struct SharedMem {
    words: Box<[AtomicU64]>,
    len: usize,
}

impl SharedMem {
    /// `len` bytes of zeroed memory, 8-byte aligned (what the ring code needs for its 64-bit slot
    /// copies), canaries around it.
    pub fn new(len: usize) -> Self {
        let total = CANARY + len.div_ceil(8) * 8 + CANARY;
        let words: Box<[AtomicU64]> = (0..total / 8).map(|_| AtomicU64::new(0)).collect();
        let m = SharedMem { words, len };
        for i in 0..CANARY {
            m.byte_raw(i).store(CANARY_BYTE, Ordering::Relaxed);
        }
        for i in CANARY + len..m.words.len() * 8 {
            m.byte_raw(i).store(CANARY_BYTE, Ordering::Relaxed);
        }
        m
    }

    /// Length of the region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the region (8-byte aligned).
    pub fn ptr(&self) -> NonNull<u8> {
        let base = NonNull::from(&self.words[0]).cast::<u8>();
        // SAFETY: CANARY bytes in, still inside the allocation of `words`.
        unsafe { base.add(CANARY) }
    }

    fn byte_raw(&self, at: usize) -> &AtomicU8 {
        assert!(at < self.words.len() * 8);
        let base = NonNull::from(&self.words[0]).cast::<AtomicU8>();
        // SAFETY: `at` is inside the allocation (asserted); AtomicU8 has alignment 1 and the
        // memory is only ever accessed atomically.
        unsafe { base.add(at).as_ref() }
    }

    /// The byte at offset `at` of the region.
    pub fn byte(&self, at: usize) -> &AtomicU8 {
        assert!(at < self.len);
        self.byte_raw(CANARY + at)
    }

    /// The 32-bit word at byte offset `at` (4-byte aligned) of the region.
    pub fn word(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= self.len);
        let base = NonNull::from(&self.words[0]).cast::<u8>();
        // SAFETY: inside the allocation (asserted), 4-byte aligned (the allocation is 8-aligned,
        // CANARY and `at` are multiples of 4); only ever accessed atomically.
        unsafe { base.add(CANARY + at).cast::<AtomicU32>().as_ref() }
    }

    /// The 64-bit word at byte offset `at` (8-byte aligned) of the region.
    pub fn dword(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= self.len);
        &self.words[(CANARY + at) / 8]
    }

    /// Panics if a canary byte changed: the code under test wrote outside its region.
    pub fn check_canaries(&self) {
        for i in (0..CANARY).chain(CANARY + self.len..self.words.len() * 8) {
            assert_eq!(
                self.byte_raw(i).load(Ordering::Relaxed),
                CANARY_BYTE,
                "write outside the shared region at byte {i} of the allocation"
            );
        }
    }

    /// A copy of `n` bytes at `at`.
    pub fn read(&self, at: usize, n: usize) -> Vec<u8> {
        (at..at + n)
            .map(|i| self.byte(i).load(Ordering::Relaxed))
            .collect()
    }

    /// Writes `bytes` at `at`.
    pub fn write(&self, at: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.byte(at + i).store(b, Ordering::Relaxed);
        }
    }
}

/// Counts the process's open file descriptors (to check that nothing leaks one).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

pub mod ring;

/// The frontend's side of a Xen shared ring in [`SharedMem`], written by hand (the fuzz targets
/// play a frontend that may break every rule): slots are written in the access sizes the ring code
/// uses (64-bit words when the stride is a multiple of 8), indices as 32-bit words.
#[derive(Debug)]
pub struct RawFront<'a> {
    /// The ring memory.
    pub mem: &'a SharedMem,
    /// Slots.
    pub size: u32,
    /// Slot stride in bytes.
    pub stride: usize,
    /// Next request slot to fill.
    pub req_pvt: u32,
    /// Next response to read.
    pub rsp_cons: u32,
}

impl<'a> RawFront<'a> {
    /// A front over `mem` with slots of `stride` bytes; shared header initialised (events 1).
    pub fn new(mem: &'a SharedMem, stride: usize) -> Self {
        let fit = (mem.len() - 64) / stride;
        let size = 1u32 << (usize::BITS - 1 - fit.leading_zeros());
        for at in (0..64).step_by(4) {
            mem.word(at).store(0, Ordering::Relaxed);
        }
        mem.word(4).store(1, Ordering::Relaxed);
        mem.word(12).store(1, Ordering::Relaxed);
        RawFront {
            mem,
            size,
            stride,
            req_pvt: 0,
            rsp_cons: 0,
        }
    }

    fn slot_at(&self, idx: u32) -> usize {
        64 + (idx & (self.size - 1)) as usize * self.stride
    }

    /// Writes `bytes` (at most a slot) into slot `idx`, the rest of the slot zero.
    pub fn write_slot(&self, idx: u32, bytes: &[u8]) {
        let at = self.slot_at(idx);
        let mut slot = vec![0u8; self.stride];
        let n = bytes.len().min(self.stride);
        slot[..n].copy_from_slice(&bytes[..n]);
        if self.stride.is_multiple_of(8) {
            for (i, c) in slot.chunks_exact(8).enumerate() {
                self.mem
                    .dword(at + 8 * i)
                    .store(u64::from_ne_bytes(c.try_into().expect("8")), Ordering::Relaxed);
            }
        } else {
            for (i, c) in slot.chunks_exact(4).enumerate() {
                self.mem
                    .word(at + 4 * i)
                    .store(u32::from_ne_bytes(c.try_into().expect("4")), Ordering::Relaxed);
            }
        }
    }

    /// The first `n` bytes of slot `idx`.
    pub fn read_slot(&self, idx: u32, n: usize) -> Vec<u8> {
        let at = self.slot_at(idx);
        let mut out = Vec::with_capacity(self.stride);
        if self.stride.is_multiple_of(8) {
            for i in 0..self.stride / 8 {
                out.extend_from_slice(&self.mem.dword(at + 8 * i).load(Ordering::Relaxed).to_ne_bytes());
            }
        } else {
            for i in 0..self.stride / 4 {
                out.extend_from_slice(&self.mem.word(at + 4 * i).load(Ordering::Relaxed).to_ne_bytes());
            }
        }
        out.truncate(n);
        out
    }

    /// A front over a ring already in use, at these indices (the header is left as it is).
    pub fn resume(mem: &'a SharedMem, stride: usize, req_pvt: u32, rsp_cons: u32) -> Self {
        let fit = (mem.len() - 64) / stride;
        let size = 1u32 << (usize::BITS - 1 - fit.leading_zeros());
        RawFront {
            mem,
            size,
            stride,
            req_pvt,
            rsp_cons,
        }
    }

    /// Queues one request (not yet published).
    pub fn push_slot(&mut self, bytes: &[u8]) {
        self.write_slot(self.req_pvt, bytes);
        self.req_pvt = self.req_pvt.wrapping_add(1);
    }

    /// Publishes the queued requests.
    pub fn publish(&self) {
        self.mem.word(0).store(self.req_pvt, Ordering::Release);
    }

    /// Publishes any request producer index.
    pub fn publish_raw(&self, req_prod: u32) {
        self.mem.word(0).store(req_prod, Ordering::Release);
    }

    /// The backend's response producer index.
    pub fn rsp_prod(&self) -> u32 {
        self.mem.word(8).load(Ordering::Acquire)
    }

    /// Takes every published response (first `n` bytes of each); panics if the backend published
    /// more responses than `outstanding` requests.
    pub fn take_responses(&mut self, n: usize, outstanding: u32) -> Vec<Vec<u8>> {
        let prod = self.rsp_prod();
        let ahead = prod.wrapping_sub(self.rsp_cons);
        assert!(
            ahead <= outstanding,
            "backend published {ahead} responses for {outstanding} outstanding requests"
        );
        (0..ahead)
            .map(|_| {
                let r = self.read_slot(self.rsp_cons, n);
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
                r
            })
            .collect()
    }
}

/// Waits up to `ms` for `fd` to become readable.
pub fn poll_readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}
pub mod vq;

/// A block core over a fresh image of `sectors` sectors on tmpfs (the file is unlinked at once;
/// the core keeps it open).
pub fn image(name: &str, sectors: u64) -> std::sync::Arc<pvkit_backends::block::BlockCore> {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("pvkit-fuzz-{name}-{}.img", std::process::id()));
    let f = std::fs::File::create(&path).expect("image");
    f.set_len(sectors * 512).expect("image size");
    let core = pvkit_backends::block::BlockCore::open(&path, pvkit_backends::block::BlockOptions::default())
        .expect("open image");
    let _ = std::fs::remove_file(&path);
    std::sync::Arc::new(core)
}
pub mod relay;

/// Runs `peer` on a long-lived second thread while `consumer` runs on this one: the peer starts
/// before the consumer does and is told to stop (through the flag it is given) once the consumer
/// is done; this returns after both. One thread for every input: spawning one per input costs more
/// than the input, and a thread still exiting when the input ends looks like a leak to
/// LeakSanitizer.
pub fn concurrently(
    peer: impl FnOnce(&std::sync::atomic::AtomicBool) + Send + 'static,
    consumer: impl FnOnce(),
) {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex, OnceLock, mpsc};
    type Job = (
        Box<dyn FnOnce(&AtomicBool) + Send>,
        Arc<AtomicBool>,
        Arc<AtomicBool>,
        mpsc::Sender<()>,
    );
    static WORKER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (job, started, stop, done) in rx {
                started.store(true, Ordering::Release);
                job(&stop);
                let _ = done.send(());
            }
        });
        Mutex::new(tx)
    });
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel();
    worker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((Box::new(peer), started.clone(), stop.clone(), done_tx))
        .expect("peer thread");
    while !started.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(consumer));
    stop.store(true, Ordering::Relaxed);
    let _ = done_rx.recv();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
