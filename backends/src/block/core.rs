//! The block core: one image behind read, write, flush and discard, and the one place where a
//! request is validated, made durable and counted.
//!
//! Every request takes the same two steps through the core, whichever executor moves its bytes:
//! [`BlockCore::prepare`] checks it (not a write or discard on a read-only device, a whole number
//! of sectors, inside the image) and turns it into a [`Job`]; the executor moves the job's bytes;
//! [`BlockCore::complete`] finishes it (a short transfer is an error; flush and writethrough / FUA
//! writes `fdatasync`; discard punches the hole) and counts it in [`Stats`]. A job's tag, the
//! submitter's handle on its request, comes back only from `complete`, so no executor can answer a
//! request without the core.
//!
//! Durability: a write is in the host's page cache when it completes. A flush completes only after
//! `fdatasync` returned, so every write that completed before the flush was submitted is on stable
//! storage when the flush completes. A write with `fua` set (or any write on a core opened with
//! `writethrough`) is synced before it completes.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::buf::IoBuf;
use super::executor::inline;
use super::{Data, FileStorage, Op, OpKind, Request, SECTOR_SIZE, Storage};
use crate::{Error, Result};

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

/// Counts of what the core did, for logs and tests. Every executor's requests are counted here,
/// by [`BlockCore::prepare`] (refusals) and [`BlockCore::complete`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Completed flushes.
    pub flushes: AtomicU64,
    /// `fdatasync` calls.
    pub syncs: AtomicU64,
    /// Completed discards.
    pub discards: AtomicU64,
    /// Failed requests (refused by validation, or failed in I/O).
    pub errors: AtomicU64,
}

/// The block core: validates requests against the image, finishes them (durability, discard) and
/// counts them. Executors ([`super::executor`]) move the bytes in between.
#[derive(Debug)]
pub struct BlockCore<S: Storage = FileStorage> {
    storage: S,
    options: BlockOptions,
    capacity: u64,
    stats: Stats,
}

/// A request the core accepted ([`BlockCore::prepare`]), on its way through an executor, with the
/// submitter's `tag`. It ends only in [`BlockCore::complete`], which hands the tag back.
#[must_use = "a prepared request ends only in `BlockCore::complete`"]
pub struct Job<T> {
    req: Request,
    tag: T,
}

impl<T> fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("op", &self.req.op)
            .field("sector", &self.req.sector)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> Job<T> {
    /// The operation.
    pub fn op(&self) -> Op {
        self.req.op
    }

    /// The first sector.
    pub fn sector(&self) -> u64 {
        self.req.sector
    }

    /// Whether the executor has bytes to move (a read or a write), or nothing (flush, discard:
    /// the core does those in `complete`).
    pub fn moves_bytes(&self) -> bool {
        matches!(self.req.op, Op::Read | Op::Write { .. })
    }

    /// Whether the bytes go to the image.
    pub fn is_write(&self) -> bool {
        matches!(self.req.op, Op::Write { .. })
    }

    /// Byte offset in the image (inside it: checked by `prepare`).
    pub fn offset(&self) -> u64 {
        self.req.sector * SECTOR_SIZE
    }

    /// Data bytes to move (0 for flush and discard, whatever data they carry).
    pub fn len(&self) -> usize {
        if self.moves_bytes() {
            self.req.data.len()
        } else {
            0
        }
    }

    /// Whether there are no data bytes to move.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data as iovecs, for the executor that moves the bytes.
    pub(crate) fn iovecs(&mut self) -> Vec<libc::iovec> {
        self.req.data.iovecs()
    }

    /// The request's own buffer, if its data is one ([`Data::Buf`]).
    pub(crate) fn buf_mut(&mut self) -> Option<&mut IoBuf> {
        match &mut self.req.data {
            Data::Buf(b) => Some(b),
            _ => None,
        }
    }
}

/// A request the core or an executor did not take; it comes back untouched with its tag.
#[derive(Debug)]
pub struct Refused<T> {
    /// The request, data included.
    pub req: Request,
    /// The submitter's tag.
    pub tag: T,
    /// Why.
    pub error: Error,
}

/// A finished request: its tag, the request (data included: for a read, the bytes read) and the
/// result, as [`BlockCore::complete`] decided it.
#[derive(Debug)]
pub struct Finished<T> {
    /// The submitter's tag.
    pub tag: T,
    /// The request.
    pub req: Request,
    /// Data bytes transferred (the whole length), or what failed.
    pub result: Result<usize>,
}

impl<T> From<Refused<T>> for Finished<T> {
    fn from(r: Refused<T>) -> Self {
        Finished {
            tag: r.tag,
            req: r.req,
            result: Err(r.error),
        }
    }
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
        if storage.len() % SECTOR_SIZE != 0 {
            return Err(Error::ImageSize {
                path: path.to_owned(),
                len: storage.len(),
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

    /// The storage underneath (executors move bytes with it; adapters go through requests).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Validates `req` before any I/O and makes it a job for an executor: not a write or discard
    /// on a read-only device, a whole number of sectors, inside the image. A refusal (counted as
    /// an error) gives the request and the tag back.
    pub fn prepare<T>(&self, req: Request, tag: T) -> std::result::Result<Job<T>, Box<Refused<T>>> {
        match self.validate(&req) {
            Ok(()) => Ok(Job { req, tag }),
            Err(error) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(Box::new(Refused { req, tag, error }))
            }
        }
    }

    /// Finishes a job whose bytes the executor moved (`moved`: how many, or what failed; `Ok(0)`
    /// for a job with none): a short transfer is an error; a flush, or a write with FUA or on a
    /// writethrough core, is synced; a discard punches its hole. Counts the outcome.
    pub fn complete<T>(&self, job: Job<T>, moved: io::Result<usize>) -> Finished<T> {
        let len = job.len();
        let Job { req, tag } = job;
        let result = self.finish(&req, len, moved);
        let counter = match (&result, req.op) {
            (Err(_), _) => &self.stats.errors,
            (Ok(_), Op::Read) => &self.stats.reads,
            (Ok(_), Op::Write { .. }) => &self.stats.writes,
            (Ok(_), Op::Discard { .. }) => &self.stats.discards,
            (Ok(_), Op::Flush) => &self.stats.flushes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Finished { tag, req, result }
    }

    /// Executes one request on the calling thread (the inline executor); returns the number of
    /// data bytes transferred.
    pub fn execute(&self, req: &mut Request) -> Result<usize> {
        let taken = Request {
            op: req.op,
            sector: req.sector,
            data: std::mem::take(&mut req.data),
        };
        let done = inline::run(self, taken, ());
        req.data = done.req.data;
        done.result
    }

    /// Flushes on the calling thread: every write completed so far is durable when this returns
    /// (a no-op on a read-only core).
    pub fn flush(&self) -> Result<()> {
        self.execute(&mut Request {
            op: Op::Flush,
            sector: 0,
            data: Data::None,
        })
        .map(drop)
    }

    /// Whether the core accepts `req`.
    fn validate(&self, req: &Request) -> Result<()> {
        let op = req.op.kind();
        let sector = req.sector;
        match req.op {
            Op::Flush => Ok(()),
            Op::Discard { sectors } => {
                if self.options.read_only {
                    return Err(Error::ReadOnly { op });
                }
                self.check_range(op, sector, sectors)
            }
            Op::Read | Op::Write { .. } => {
                if op == OpKind::Write && self.options.read_only {
                    return Err(Error::ReadOnly { op });
                }
                let len = req.data.len() as u64;
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(Error::Unaligned { op, len });
                }
                self.check_range(op, sector, len / SECTOR_SIZE)
            }
        }
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

    fn sync(&self, op: OpKind, sector: u64) -> Result<()> {
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.storage
            .sync_data()
            .map_err(|error| Error::Io { op, sector, error })
    }

    /// The result of a job whose bytes moved as `moved` says.
    fn finish(&self, req: &Request, len: usize, moved: io::Result<usize>) -> Result<usize> {
        let op = req.op.kind();
        let sector = req.sector;
        let io_err = |error| Error::Io { op, sector, error };
        match moved {
            Ok(n) if n == len => {}
            Ok(n) => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {len} bytes transferred"),
                )));
            }
            Err(e) => return Err(io_err(e)),
        }
        match req.op {
            Op::Flush => {
                if !self.options.read_only {
                    self.sync(op, sector)?;
                }
            }
            Op::Discard { sectors } => {
                // In range: checked by `prepare`.
                self.storage
                    .punch_hole(sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
                    .map_err(io_err)?;
            }
            Op::Read => {}
            Op::Write { fua } => {
                if fua || self.options.writethrough {
                    self.sync(op, sector)?;
                }
            }
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Segment;
    use crate::block::testutil::{image, pattern};

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
}
