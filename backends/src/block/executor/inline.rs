//! The inline executor: a job's bytes move on the calling thread, with `preadv`/`pwritev` straight
//! on the request's memory (through an aligned bounce buffer only when the image is open with
//! `O_DIRECT` and the memory is not sector aligned). [`BlockCore::execute`] is this executor; the
//! worker pool runs it on its threads, and the AIO queue for a lone request.

use std::io;

use crate::block::buf::AlignedBuf;
use crate::block::{BlockCore, Finished, Job, Request, SECTOR_SIZE, Storage};

/// Runs `req` to its end on this thread: prepared, its bytes moved, completed.
pub fn run<S: Storage, T>(core: &BlockCore<S>, req: Request, tag: T) -> Finished<T> {
    match core.prepare(req, tag) {
        Ok(mut job) => {
            let moved = move_bytes(core, &mut job);
            core.complete(job, moved)
        }
        Err(refused) => (*refused).into(),
    }
}

/// Moves a job's bytes between its data and the image; returns how many moved (0 for a job
/// without data bytes).
pub(crate) fn move_bytes<S: Storage, T>(core: &BlockCore<S>, job: &mut Job<T>) -> io::Result<usize> {
    if !job.moves_bytes() {
        return Ok(0);
    }
    let (offset, write) = (job.offset(), job.is_write());
    let mut iov = job.iovecs();
    let total = iov.iter().map(|v| v.iov_len).sum();
    let misaligned = iov.iter().any(|v| {
        !(v.iov_base as usize).is_multiple_of(SECTOR_SIZE as usize)
            || !v.iov_len.is_multiple_of(SECTOR_SIZE as usize)
    });
    let storage = core.storage();
    if core.options().direct && misaligned {
        bounce(storage, &mut iov, offset, write)?;
    } else if write {
        // SAFETY: the iovecs come from the job's data: an owned buffer, or segments whose builder
        // guaranteed validity until completion (`Segment::new`).
        unsafe { storage.write_vectored_at(&mut iov, offset) }?;
    } else {
        // SAFETY: as above; reads need writable memory, which `Segment::new` requires.
        unsafe { storage.read_vectored_at(&mut iov, offset) }?;
    }
    Ok(total)
}

/// `O_DIRECT` with memory that is not sector aligned: go through an aligned buffer.
fn bounce<S: Storage>(storage: &S, iov: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<()> {
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let buf = AlignedBuf::new(total);
    let mut bv = [libc::iovec {
        iov_base: buf.as_ptr().cast(),
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
                    buf.as_ptr().wrapping_add(at),
                    v.iov_len,
                )
            };
            at += v.iov_len;
        }
        // SAFETY: `bv` describes `buf`, alive for the call.
        unsafe { storage.write_vectored_at(&mut bv, offset) }
    } else {
        // SAFETY: `bv` describes `buf`, alive and writable for the call.
        unsafe { storage.read_vectored_at(&mut bv, offset) }?;
        let mut at = 0;
        for v in iov.iter() {
            // SAFETY: `v` is writable for its length (request contract); `buf` holds `total` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(buf.as_ptr().wrapping_add(at), v.iov_base.cast(), v.iov_len)
            };
            at += v.iov_len;
        }
        Ok(())
    }
}
