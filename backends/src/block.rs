//! The block core: one image file behind read, write, flush and discard, shared by every protocol
//! adapter, and [`BlockQueue`], a bounded request queue served by a small worker pool.
//!
//! Durability: a write is in the host's page cache when it completes. A flush completes only after
//! `fdatasync` returned, so every write that completed before the flush was submitted is on stable
//! storage when the flush completes. A write with `fua` set (or any write on a core opened with
//! `writethrough`) is synced before it completes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;

use crate::{Error, Result};

/// Bytes per sector, the unit of every block protocol here ([`ring_protocol::abi::SECTOR_SIZE`]).
pub const SECTOR_SIZE: u64 = ring_protocol::abi::SECTOR_SIZE as u64;

/// Alignment of bounce buffers used for `O_DIRECT` when the caller's memory is not aligned.
const DIRECT_ALIGN: usize = 4096;

/// How the image is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockOptions {
    /// Refuse writes, flushes are no-ops, discard refused.
    pub read_only: bool,
    /// Open with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// Every write is synced before it completes (the device has no volatile cache).
    pub writethrough: bool,
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read sectors into the request's buffers.
    Read,
    /// Write the request's buffers; with `fua`, durable before completion.
    Write {
        /// Force unit access: synced before the request completes.
        fua: bool,
    },
    /// Make every write completed so far durable (`fdatasync`).
    Flush,
    /// Deallocate `sectors` sectors (they read back as zeros afterwards).
    Discard {
        /// Length in sectors.
        sectors: u64,
    },
}

/// An [`Op`] without its arguments, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Read.
    Read,
    /// Write.
    Write,
    /// Flush.
    Flush,
    /// Discard.
    Discard,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Discard => "discard",
        })
    }
}

impl Op {
    /// The operation's kind.
    pub fn kind(self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Flush => OpKind::Flush,
            Op::Discard { .. } => OpKind::Discard,
        }
    }
}

/// A piece of memory a request reads into or writes from, not owned by the request (guest memory
/// mapped by an adapter).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Segment is an address range; whoever built it (`Segment::new`) guarantees the memory stays
// valid until the request completes, from whichever thread executes it.
unsafe impl Send for Segment {}

impl Segment {
    /// A segment of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must stay mapped, readable and (for reads) writable until the request holding
    /// this segment has completed. Other parties (a guest) may access it concurrently; the core only
    /// touches it with system calls and byte copies, never through references.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Segment { ptr, len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The data of a request.
#[derive(Debug)]
pub enum Data {
    /// No data (flush, discard).
    None,
    /// A buffer the request owns (tests, console-like users).
    Owned(Vec<u8>),
    /// Memory owned by someone else, e.g. guest memory, as a scatter list.
    Segments(Vec<Segment>),
}

impl Data {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::Owned(v) => v.len(),
            Data::Segments(s) => s.iter().map(|s| s.len).sum(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iovecs(&mut self) -> Vec<libc::iovec> {
        match self {
            Data::None => Vec::new(),
            Data::Owned(v) => vec![libc::iovec {
                iov_base: v.as_mut_ptr().cast(),
                iov_len: v.len(),
            }],
            Data::Segments(s) => s
                .iter()
                .map(|s| libc::iovec {
                    iov_base: s.ptr.cast(),
                    iov_len: s.len,
                })
                .collect(),
        }
    }
}

/// One block request.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// First sector (ignored by flush).
    pub sector: u64,
    /// The bytes read or written.
    pub data: Data,
}

/// Counts of what the core did, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Completed discards.
    pub discards: AtomicU64,
    /// Failed requests.
    pub errors: AtomicU64,
}

/// Where the bytes live: the image file, or a model of one in tests.
pub trait Storage: Send + Sync + 'static {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the storage is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Read exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    ///
    /// Every iovec describes memory writable for its length for the duration of the call.
    unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()>;
    /// Write exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    ///
    /// Every iovec describes memory readable for its length for the duration of the call.
    unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()>;
    /// Make every completed write durable.
    fn sync_data(&self) -> std::io::Result<()>;
    /// Deallocate a range; it reads back as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()>;
}

/// The image file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
}

/// Drops the first `n` bytes from an iovec list in place; returns the index of the first non-empty
/// entry.
fn advance(iov: &mut [libc::iovec], mut n: usize, mut first: usize) -> usize {
    while n > 0 && first < iov.len() {
        let take = n.min(iov[first].iov_len);
        // Stays within the original buffer: take <= iov_len.
        iov[first].iov_base = iov[first].iov_base.wrapping_byte_add(take);
        iov[first].iov_len -= take;
        n -= take;
        if iov[first].iov_len == 0 {
            first += 1;
        }
    }
    while first < iov.len() && iov[first].iov_len == 0 {
        first += 1;
    }
    first
}

impl FileStorage {
    /// Wraps an open image file or block device (whose size is where seeking to the end lands:
    /// its metadata says 0).
    pub fn new(mut file: File) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let len = if file.metadata()?.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            file.metadata()?.len()
        };
        Ok(FileStorage { file, len })
    }

    /// Runs a vectored positional transfer to completion (short transfers continue, EINTR retries).
    ///
    /// # Safety
    ///
    /// As [`Storage::read_vectored_at`] / [`Storage::write_vectored_at`] for `write == false / true`.
    unsafe fn transfer(&self, iov: &mut [libc::iovec], mut offset: u64, write: bool) -> std::io::Result<()> {
        let mut first = advance(iov, 0, 0);
        while first < iov.len() {
            let n = (iov.len() - first).min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let rest = iov[first..].as_ptr();
            let fd = self.file.as_raw_fd();
            let off = offset as libc::off_t;
            let done = if write {
                // SAFETY: `rest` points at `n` valid iovecs whose memory the caller vouches for; the
                // file descriptor is ours and open.
                unsafe { libc::pwritev(fd, rest, n, off) }
            } else {
                // SAFETY: as above.
                unsafe { libc::preadv(fd, rest, n, off) }
            };
            if done < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if done == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("end of image at byte {offset}"),
                ));
            }
            offset += done as u64;
            first = advance(iov, done as usize, first);
        }
        Ok(())
    }
}

impl std::os::fd::AsRawFd for FileStorage {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { self.transfer(iov, offset, false) }
    }

    unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { self.transfer(iov, offset, true) }
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: plain system call on our own descriptor with integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The block core: validates requests against the image and executes them synchronously.
#[derive(Debug)]
pub struct BlockCore<S: Storage = FileStorage> {
    storage: S,
    options: BlockOptions,
    capacity: u64,
    stats: Stats,
}

impl BlockCore<FileStorage> {
    /// Opens an image file. A missing file, a size that is not a whole number of sectors, or a
    /// failed `O_DIRECT` open is an error naming the path.
    pub fn open(path: &Path, options: BlockOptions) -> Result<Self> {
        let mut oo = OpenOptions::new();
        oo.read(true).write(!options.read_only);
        if options.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|error| Error::OpenImage {
            path: path.to_owned(),
            error,
        })?;
        let storage = FileStorage::new(file).map_err(|error| Error::OpenImage {
            path: path.to_owned(),
            error,
        })?;
        if storage.len % SECTOR_SIZE != 0 {
            return Err(Error::ImageSize {
                path: path.to_owned(),
                len: storage.len,
            });
        }
        Ok(Self::with_storage(storage, options))
    }
}

impl<S: Storage> BlockCore<S> {
    /// A core over any storage (tests use an in-memory model).
    pub fn with_storage(storage: S, options: BlockOptions) -> Self {
        let capacity = storage.len() / SECTOR_SIZE;
        BlockCore {
            storage,
            options,
            capacity,
            stats: Stats::default(),
        }
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The options it was opened with.
    pub fn options(&self) -> BlockOptions {
        self.options
    }

    /// What it did so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Checks a read or write the way [`execute`](Self::execute) does before any I/O: not a
    /// write to a read-only device, a whole number of sectors, inside the image. For callers that
    /// do the I/O themselves (the asynchronous queue).
    pub fn check_transfer(&self, write: bool, sector: u64, len: u64) -> Result<()> {
        let op = if write { OpKind::Write } else { OpKind::Read };
        if write && self.options.read_only {
            return Err(Error::ReadOnly { op });
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Unaligned { op, len });
        }
        self.check_range(op, sector, len / SECTOR_SIZE)
    }

    fn check_range(&self, op: OpKind, sector: u64, sectors: u64) -> Result<()> {
        if sector.checked_add(sectors).is_none_or(|end| end > self.capacity) {
            return Err(Error::OutOfRange {
                op,
                sector,
                sectors,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Executes one request on the calling thread; returns the number of data bytes transferred.
    pub fn execute(&self, req: &mut Request) -> Result<usize> {
        let r = self.execute_inner(req);
        let counter = match (&r, req.op) {
            (Err(_), _) => &self.stats.errors,
            (Ok(_), Op::Read) => &self.stats.reads,
            (Ok(_), Op::Write { .. }) => &self.stats.writes,
            (Ok(_), Op::Discard { .. }) => &self.stats.discards,
            (Ok(_), Op::Flush) => return r,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn sync(&self, op: OpKind, sector: u64) -> Result<()> {
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.storage
            .sync_data()
            .map_err(|error| Error::Io { op, sector, error })
    }

    fn execute_inner(&self, req: &mut Request) -> Result<usize> {
        let op = req.op.kind();
        let sector = req.sector;
        let io_err = |error| Error::Io { op, sector, error };
        match req.op {
            Op::Flush => {
                if !self.options.read_only {
                    self.sync(op, sector)?;
                }
                Ok(0)
            }
            Op::Discard { sectors } => {
                if self.options.read_only {
                    return Err(Error::ReadOnly { op });
                }
                self.check_range(op, sector, sectors)?;
                self.storage
                    .punch_hole(sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
                    .map_err(io_err)?;
                Ok(0)
            }
            Op::Read | Op::Write { .. } => {
                let write = matches!(req.op, Op::Write { .. });
                if write && self.options.read_only {
                    return Err(Error::ReadOnly { op });
                }
                let len = req.data.len() as u64;
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(Error::Unaligned { op, len });
                }
                self.check_range(op, sector, len / SECTOR_SIZE)?;
                let offset = sector * SECTOR_SIZE;
                let mut iov = req.data.iovecs();
                let misaligned = iov.iter().any(|v| {
                    !(v.iov_base as usize).is_multiple_of(SECTOR_SIZE as usize)
                        || !v.iov_len.is_multiple_of(SECTOR_SIZE as usize)
                });
                if self.options.direct && misaligned {
                    self.bounce(&mut iov, offset, write).map_err(io_err)?;
                } else if write {
                    // SAFETY: the iovecs come from `req.data`: an owned Vec, or segments whose builder
                    // guaranteed validity until completion (`Segment::new`).
                    unsafe { self.storage.write_vectored_at(&mut iov, offset) }.map_err(io_err)?;
                } else {
                    // SAFETY: as above; reads need writable memory, which `Segment::new` requires.
                    unsafe { self.storage.read_vectored_at(&mut iov, offset) }.map_err(io_err)?;
                }
                if write && (self.options.writethrough || matches!(req.op, Op::Write { fua: true })) {
                    self.sync(op, sector)?;
                }
                Ok(len as usize)
            }
        }
    }

    /// `O_DIRECT` with memory that is not sector aligned: go through an aligned buffer.
    fn bounce(&self, iov: &mut [libc::iovec], offset: u64, write: bool) -> std::io::Result<()> {
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        let buf = AlignedBuf::new(total);
        let mut bv = [libc::iovec {
            iov_base: buf.ptr.cast(),
            iov_len: total,
        }];
        if write {
            let mut at = 0;
            for v in iov.iter() {
                // SAFETY: `v` is readable for its length (request contract); `buf` has `total` bytes
                // and `at + v.iov_len <= total`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        v.iov_base.cast::<u8>(),
                        buf.ptr.wrapping_add(at),
                        v.iov_len,
                    )
                };
                at += v.iov_len;
            }
            // SAFETY: `bv` describes `buf`, alive for the call.
            unsafe { self.storage.write_vectored_at(&mut bv, offset) }
        } else {
            // SAFETY: `bv` describes `buf`, alive and writable for the call.
            unsafe { self.storage.read_vectored_at(&mut bv, offset) }?;
            let mut at = 0;
            for v in iov.iter() {
                // SAFETY: `v` is writable for its length (request contract); `buf` holds `total` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.ptr.wrapping_add(at), v.iov_base.cast(), v.iov_len)
                };
                at += v.iov_len;
            }
            Ok(())
        }
    }
}

/// A zeroed, 4 KiB-aligned heap buffer: `O_DIRECT` bounces, and adapters that keep their request
/// data in memory `O_DIRECT` accepts as is.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain heap memory owned by this value.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// At least `len` zeroed bytes (at least 4096), 4096-aligned.
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN)
            .expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }
}

impl AlignedBuf {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether it is empty (never: at least 4096 bytes).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The bytes, read-only.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `as_mut_slice`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, initialised (zeroed) allocation of `len()` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Called once when a queued request has been executed.
pub type Completion = Box<dyn FnOnce(Request, Result<usize>) + Send>;

struct Job {
    req: Request,
    done: Completion,
}

struct Shared<S: Storage> {
    core: Arc<BlockCore<S>>,
    jobs: ArrayQueue<Job>,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A bounded request queue in front of a [`BlockCore`], served by a fixed pool of worker threads.
///
/// Memory is bounded: at most `capacity` requests wait; `submit` beyond that hands the request back
/// with [`Error::Busy`]. Requests may complete in any order (as in virtio-blk and blkif); flush
/// semantics are those of the core (writes completed before the flush was submitted are durable when
/// it completes).
pub struct BlockQueue<S: Storage = FileStorage> {
    shared: Arc<Shared<S>>,
    workers: Vec<JoinHandle<()>>,
}

impl<S: Storage> fmt::Debug for BlockQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockQueue")
            .field("capacity", &self.shared.jobs.capacity())
            .field("queued", &self.shared.jobs.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl<S: Storage> BlockQueue<S> {
    /// Starts `workers` threads (at least one) serving a queue of `capacity` requests.
    pub fn new(core: Arc<BlockCore<S>>, workers: usize, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            core,
            jobs: ArrayQueue::new(capacity.max(1)),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("blk-worker-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a block worker thread")
            })
            .collect();
        BlockQueue { shared, workers }
    }

    /// The core it serves.
    pub fn core(&self) -> &Arc<BlockCore<S>> {
        &self.shared.core
    }

    /// Queues a request; `done` runs on a worker thread after it executed. A full queue returns the
    /// request and its completion with [`Error::Busy`].
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &self,
        req: Request,
        done: Completion,
    ) -> std::result::Result<(), (Request, Completion, Error)> {
        if let Err(job) = self.shared.jobs.push(Job { req, done }) {
            let capacity = self.shared.jobs.capacity();
            return Err((job.req, job.done, Error::Busy { capacity }));
        }
        // Taking the lock orders this push before a worker's "queue empty, sleep" decision, so the
        // wakeup cannot be lost.
        drop(self.shared.lock.lock().expect("block queue lock"));
        self.shared.wake.notify_one();
        Ok(())
    }
}

fn worker<S: Storage>(shared: &Shared<S>) {
    loop {
        if let Some(mut job) = shared.jobs.pop() {
            let r = shared.core.execute(&mut job.req);
            (job.done)(job.req, r);
            continue;
        }
        let guard = shared.lock.lock().expect("block queue lock");
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if shared.jobs.is_empty() {
            drop(shared.wake.wait(guard).expect("block queue lock"));
        }
    }
}

impl<S: Storage> Drop for BlockQueue<S> {
    fn drop(&mut self) {
        {
            let _g = self.shared.lock.lock().expect("block queue lock");
            // Release: a worker that sees `stop` under the lock exits; jobs still queued are run
            // before it checks (it pops first).
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn pattern(sector: u64, seed: u8, sectors: usize) -> Vec<u8> {
        (0..sectors * SECTOR_SIZE as usize)
            .map(|i| (sector as usize * 7 + i * 13 + seed as usize) as u8)
            .collect()
    }

    fn image(sectors: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
        f
    }

    #[test]
    fn write_read_back_and_bounds() {
        let img = image(64);
        let core = BlockCore::open(img.path(), BlockOptions::default()).unwrap();
        assert_eq!(core.capacity(), 64);
        let data = pattern(5, 1, 3);
        let mut w = Request {
            op: Op::Write { fua: false },
            sector: 5,
            data: Data::Owned(data.clone()),
        };
        assert_eq!(core.execute(&mut w).unwrap(), 3 * 512);
        let mut r = Request {
            op: Op::Read,
            sector: 5,
            data: Data::Owned(vec![0; 3 * 512]),
        };
        core.execute(&mut r).unwrap();
        let Data::Owned(back) = r.data else { panic!() };
        assert_eq!(back, data);
        // The bytes are in the file where a host tool would look.
        let on_disk = std::fs::read(img.path()).unwrap();
        assert_eq!(&on_disk[5 * 512..8 * 512], &data[..]);

        let mut past = Request {
            op: Op::Read,
            sector: 63,
            data: Data::Owned(vec![0; 1024]),
        };
        let e = core.execute(&mut past).unwrap_err();
        assert!(matches!(
            e,
            Error::OutOfRange {
                sector: 63,
                sectors: 2,
                capacity: 64,
                ..
            }
        ));
        let mut odd = Request {
            op: Op::Write { fua: false },
            sector: 0,
            data: Data::Owned(vec![0; 100]),
        };
        assert!(matches!(
            core.execute(&mut odd),
            Err(Error::Unaligned { len: 100, .. })
        ));
        assert_eq!(core.stats().errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn scattered_segments_and_direct_bounce() {
        let img = image(32);
        let core = BlockCore::open(
            img.path(),
            BlockOptions {
                direct: true,
                ..Default::default()
            },
        );
        // tmpfs refuses O_DIRECT; then run the same test buffered.
        let core = core
            .unwrap_or_else(|_| BlockCore::open(img.path(), BlockOptions::default()).expect("buffered open"));
        let data = pattern(2, 9, 4);
        // Misaligned source memory: 3 segments of 1 KiB, 512 B and 512 B, starting at an odd address.
        let mut src = vec![0u8; data.len() + 1];
        src[1..].copy_from_slice(&data);
        let base = src.as_mut_ptr().wrapping_add(1);
        let segs: Vec<Segment> = [(0, 1024), (1024, 512), (1536, 512)]
            .into_iter()
            // SAFETY: every segment lies inside `src`, which outlives the request.
            .map(|(at, len)| unsafe { Segment::new(base.wrapping_add(at), len) })
            .collect();
        let mut w = Request {
            op: Op::Write { fua: true },
            sector: 2,
            data: Data::Segments(segs),
        };
        core.execute(&mut w).unwrap();
        let mut dst = vec![0u8; data.len() + 3];
        let dbase = dst.as_mut_ptr().wrapping_add(3);
        let segs: Vec<Segment> = [(0, 512), (512, 1536)]
            .into_iter()
            // SAFETY: inside `dst`, which outlives the request.
            .map(|(at, len)| unsafe { Segment::new(dbase.wrapping_add(at), len) })
            .collect();
        let mut r = Request {
            op: Op::Read,
            sector: 2,
            data: Data::Segments(segs),
        };
        core.execute(&mut r).unwrap();
        assert_eq!(&dst[3..], &data[..]);
        assert_eq!(core.stats().syncs.load(Ordering::Relaxed), 1, "fua write syncs");
    }

    #[test]
    fn discard_reads_back_zeros_and_read_only_refuses() {
        let img = image(16);
        std::fs::write(img.path(), vec![0xabu8; 16 * 512]).unwrap();
        let core = BlockCore::open(img.path(), BlockOptions::default()).unwrap();
        let mut d = Request {
            op: Op::Discard { sectors: 8 },
            sector: 8,
            data: Data::None,
        };
        core.execute(&mut d).unwrap();
        let back = std::fs::read(img.path()).unwrap();
        assert!(back[..8 * 512].iter().all(|&b| b == 0xab));
        assert!(back[8 * 512..].iter().all(|&b| b == 0));

        let ro = BlockCore::open(
            img.path(),
            BlockOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut w = Request {
            op: Op::Write { fua: false },
            sector: 0,
            data: Data::Owned(vec![1; 512]),
        };
        assert!(matches!(
            ro.execute(&mut w),
            Err(Error::ReadOnly { op: OpKind::Write })
        ));
        assert_eq!(std::fs::read(img.path()).unwrap(), back, "nothing written");
    }

    #[test]
    fn missing_image_is_a_clear_error() {
        let e =
            BlockCore::open(Path::new("/nonexistent/pvkit/disk.img"), BlockOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/pvkit/disk.img"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1000).unwrap();
        let e = BlockCore::open(img.path(), BlockOptions::default()).unwrap_err();
        assert!(matches!(e, Error::ImageSize { len: 1000, .. }));
    }

    /// A disk with a volatile cache: writes land in `cache`, `sync_data` copies it to `durable`.
    struct CachedDisk {
        cache: Mutex<Vec<u8>>,
        durable: Mutex<Vec<u8>>,
    }

    impl CachedDisk {
        fn new(len: usize) -> Self {
            CachedDisk {
                cache: Mutex::new(vec![0; len]),
                durable: Mutex::new(vec![0; len]),
            }
        }
    }

    impl Storage for CachedDisk {
        fn len(&self) -> u64 {
            self.cache.lock().unwrap().len() as u64
        }
        unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
            let c = self.cache.lock().unwrap();
            let mut at = offset as usize;
            for v in iov.iter() {
                // SAFETY: caller contract: writable for its length.
                unsafe { std::ptr::copy_nonoverlapping(c[at..].as_ptr(), v.iov_base.cast(), v.iov_len) };
                at += v.iov_len;
            }
            Ok(())
        }
        unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
            let mut c = self.cache.lock().unwrap();
            let mut at = offset as usize;
            for v in iov.iter() {
                // SAFETY: caller contract: readable for its length.
                unsafe {
                    std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), c[at..].as_mut_ptr(), v.iov_len)
                };
                at += v.iov_len;
            }
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            let c = self.cache.lock().unwrap().clone();
            *self.durable.lock().unwrap() = c;
            Ok(())
        }
        fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
            let mut c = self.cache.lock().unwrap();
            c[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
    }

    fn durable_range(core: &BlockCore<CachedDisk>, sector: u64, sectors: usize) -> Vec<u8> {
        let d = core.storage().durable.lock().unwrap();
        let s = sector as usize * 512;
        d[s..s + sectors * 512].to_vec()
    }

    #[test]
    fn durability_ordering_through_the_worker_pool() {
        const SECTORS: u64 = 256;
        let core = Arc::new(BlockCore::with_storage(
            CachedDisk::new(SECTORS as usize * 512),
            BlockOptions::default(),
        ));
        let queue = BlockQueue::new(core.clone(), 4, 64);

        // Plain writes complete into the volatile cache only.
        let (tx, rx) = mpsc::channel();
        for i in 0..32u64 {
            let tx = tx.clone();
            let req = Request {
                op: Op::Write { fua: false },
                sector: i * 4,
                data: Data::Owned(pattern(i * 4, 3, 4)),
            };
            queue
                .submit(req, Box::new(move |req, r| tx.send((req, r)).unwrap()))
                .map_err(|(_, _, e)| e)
                .unwrap();
        }
        for _ in 0..32 {
            let (_, r) = rx.recv().unwrap();
            r.unwrap();
        }
        assert_ne!(
            durable_range(&core, 0, 4),
            pattern(0, 3, 4),
            "the model must be volatile, or this test proves nothing"
        );

        // A flush submitted after those completions makes every one of them durable before it
        // completes; checked inside its completion.
        let (ftx, frx) = mpsc::channel();
        let c2 = core.clone();
        queue
            .submit(
                Request {
                    op: Op::Flush,
                    sector: 0,
                    data: Data::None,
                },
                Box::new(move |_, r| {
                    r.unwrap();
                    let ok = (0..32u64).all(|i| durable_range(&c2, i * 4, 4) == pattern(i * 4, 3, 4));
                    ftx.send(ok).unwrap();
                }),
            )
            .map_err(|(_, _, e)| e)
            .unwrap();
        assert!(
            frx.recv().unwrap(),
            "flush completed before the writes were durable"
        );

        // FUA writes are durable when they complete, without a flush.
        let (tx, rx) = mpsc::channel();
        for i in 0..16u64 {
            let tx = tx.clone();
            let c2 = core.clone();
            let sector = 128 + i * 8;
            queue
                .submit(
                    Request {
                        op: Op::Write { fua: true },
                        sector,
                        data: Data::Owned(pattern(sector, 77, 8)),
                    },
                    Box::new(move |_, r| {
                        r.unwrap();
                        tx.send(durable_range(&c2, sector, 8) == pattern(sector, 77, 8))
                            .unwrap();
                    }),
                )
                .map_err(|(_, _, e)| e)
                .unwrap();
        }
        let durable_at_completion = (0..16).filter(|_| rx.recv().unwrap()).count();
        assert_eq!(durable_at_completion, 16);
        assert!(core.stats().syncs.load(Ordering::Relaxed) >= 17);
    }

    #[test]
    fn queue_is_bounded() {
        let core = Arc::new(BlockCore::with_storage(
            CachedDisk::new(64 * 512),
            BlockOptions::default(),
        ));
        // Hold the workers inside a completion so nothing drains while we fill the queue.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let queue = BlockQueue::new(core, 1, 4);
        let (tx, rx) = mpsc::channel();
        let g = gate.clone();
        let tx2 = tx.clone();
        queue
            .submit(
                Request {
                    op: Op::Read,
                    sector: 0,
                    data: Data::Owned(vec![0; 512]),
                },
                Box::new(move |_, _| {
                    tx2.send(()).unwrap();
                    let (m, cv) = &*g;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                }),
            )
            .map_err(|(_, _, e)| e)
            .unwrap();
        rx.recv().unwrap(); // the worker is now stuck in the first completion
        let mut accepted = 0;
        let mut refused = None;
        for i in 0..10 {
            let tx = tx.clone();
            match queue.submit(
                Request {
                    op: Op::Read,
                    sector: i,
                    data: Data::Owned(vec![0; 512]),
                },
                Box::new(move |_, r| {
                    r.unwrap();
                    tx.send(()).unwrap();
                }),
            ) {
                Ok(()) => accepted += 1,
                Err((req, _, e)) => {
                    assert_eq!(req.sector, i, "the refused request comes back");
                    refused = Some(e);
                    break;
                }
            }
        }
        assert_eq!(accepted, 4);
        assert!(matches!(refused, Some(Error::Busy { capacity: 4 })));
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
        for _ in 0..4 {
            rx.recv().unwrap();
        }
    }

    /// What the Xen blkback does: each request's data in its own aligned buffer that travels with
    /// the completion, O_DIRECT, several workers; every read returns what was written there.
    #[test]
    fn queue_runs_requests_on_aligned_buffers_owned_by_their_completions() {
        let img = image(2048);
        let options = BlockOptions {
            direct: true,
            ..Default::default()
        };
        let core = match BlockCore::open(img.path(), options) {
            Ok(c) => Arc::new(c),
            // tmpfs refuses O_DIRECT; the same path without it still runs the buffers through.
            Err(_) => Arc::new(BlockCore::open(img.path(), BlockOptions::default()).unwrap()),
        };
        let q = BlockQueue::new(core, 4, 64);
        let (tx, rx) = mpsc::channel::<(u64, AlignedBuf, Result<usize>)>();
        let run = |write: bool, tx: &mpsc::Sender<(u64, AlignedBuf, Result<usize>)>| {
            for i in 0..256u64 {
                let sector = (i * 8) % 2048;
                let len = 4096;
                let mut buf = AlignedBuf::new(len);
                if write {
                    buf.as_mut_slice()[..len].copy_from_slice(&pattern(sector, 3, 8));
                }
                // SAFETY: the buffer moves into the completion, which outlives the request.
                let seg = unsafe { Segment::new(buf.as_ptr(), len) };
                let tx = tx.clone();
                let op = if write { Op::Write { fua: false } } else { Op::Read };
                let req = Request {
                    op,
                    sector,
                    data: Data::Segments(vec![seg]),
                };
                let done: Completion = Box::new(move |_r, res| {
                    tx.send((sector, buf, res)).unwrap();
                });
                assert!(q.submit(req, done).is_ok());
                // Keep at most 32 in flight, like a guest queue.
                if i >= 32 {
                    let (_, _, r) = rx.recv().unwrap();
                    assert_eq!(r.unwrap(), 4096);
                }
            }
            for _ in 0..32 {
                let (sector, mut buf, r) = rx.recv().unwrap();
                assert_eq!(r.unwrap(), 4096);
                if !write {
                    assert_eq!(&buf.as_mut_slice()[..4096], &pattern(sector, 3, 8)[..]);
                }
            }
        };
        run(true, &tx);
        run(false, &tx);
    }
}
