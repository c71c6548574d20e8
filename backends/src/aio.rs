//! Asynchronous reads and writes on the block core's image with Linux native AIO (`io_submit`):
//! many requests in flight from one thread, which is what a deep guest queue needs from a backend
//! whose ring is served by a single thread. Most useful with `O_DIRECT` (buffered AIO completes
//! inside `io_submit`).
//!
//! The kernel copies each control block at `io_submit`; the data buffers must stay valid until the
//! request's completion has been returned by [`AioQueue::reap`] (or the queue is dropped: dropping
//! waits for every request in flight). Completions are signalled on an eventfd the owner can poll.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::block::{BlockCore, Data, FileStorage, Op, OpKind, Request, SECTOR_SIZE, Segment};
use crate::{Error, Result};

/// `struct iocb` (`linux/aio_abi.h`), little-endian field order.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const _: () = {
    assert!(size_of::<Iocb>() == 64);
    assert!(core::mem::offset_of!(Iocb, aio_lio_opcode) == 16);
    assert!(core::mem::offset_of!(Iocb, aio_fildes) == 20);
    assert!(core::mem::offset_of!(Iocb, aio_buf) == 24);
    assert!(core::mem::offset_of!(Iocb, aio_flags) == 56);
    assert!(core::mem::offset_of!(Iocb, aio_resfd) == 60);
    assert!(size_of::<IoEvent>() == 32);
    assert!(cfg!(target_endian = "little"));
};

const IOCB_CMD_PREAD: u16 = 0;
const IOCB_CMD_PWRITE: u16 = 1;
/// Completion is signalled on `aio_resfd`.
const IOCB_FLAG_RESFD: u32 = 1;

/// A request to queue: one contiguous buffer.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Read into or write from the buffer.
    pub write: bool,
    /// First sector.
    pub sector: u64,
    /// The buffer.
    pub buf: *mut u8,
    /// Its length in bytes (a whole number of sectors).
    pub len: usize,
}

/// A Linux AIO context on the core's image.
#[derive(Debug)]
pub struct AioQueue {
    ctx: libc::c_ulong,
    core: Arc<BlockCore<FileStorage>>,
    done: EventFd,
    depth: usize,
    in_flight: usize,
    pending: Vec<Iocb>,
    /// What each queued or in-flight token is: (write, first sector, length).
    /// Indexed by token (below `depth`).
    meta: Vec<Option<(bool, u64, usize)>>,
    /// Requests `io_submit` refused, reported by the next `reap`.
    refused: Vec<(usize, io::Error)>,
    /// Requests executed synchronously by `submit`, reported by the next `reap`.
    ready: Vec<(usize, Result<usize>)>,
}

fn os(what: &str) -> Error {
    Error::Daemon {
        what: what.to_owned(),
        detail: io::Error::last_os_error().to_string(),
    }
}

impl AioQueue {
    /// A context for up to `depth` requests in flight.
    pub fn new(core: Arc<BlockCore<FileStorage>>, depth: usize) -> Result<Self> {
        let depth = depth.max(1);
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context id into `ctx`.
        if unsafe { libc::syscall(libc::SYS_io_setup, depth as libc::c_long, &mut ctx) } < 0 {
            return Err(os("io_setup"));
        }
        let done = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Daemon {
            what: "eventfd".into(),
            detail: e.to_string(),
        })?;
        Ok(AioQueue {
            ctx,
            core,
            done,
            depth,
            in_flight: 0,
            pending: Vec::new(),
            meta: vec![None; depth],
            refused: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn completion_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Requests queued or in flight.
    pub fn busy(&self) -> usize {
        self.in_flight + self.pending.len() + self.ready.len()
    }

    /// Queues a read or write under `token` (submitted by [`submit`](Self::submit)). Checks it as
    /// the core would; a full queue is [`Error::Busy`].
    ///
    /// # Safety
    ///
    /// `t.buf..t.buf+t.len` must stay valid (and, for a read, writable and otherwise untouched) until
    /// [`reap`](Self::reap) has returned `token`'s completion or the queue is dropped.
    pub unsafe fn push(&mut self, token: usize, t: Transfer) -> Result<()> {
        self.core.check_transfer(t.write, t.sector, t.len as u64)?;
        if self.busy() >= self.depth {
            return Err(Error::Busy { capacity: self.depth });
        }
        let iocb = Iocb {
            aio_data: token as u64,
            aio_lio_opcode: if t.write { IOCB_CMD_PWRITE } else { IOCB_CMD_PREAD },
            aio_fildes: self.core.storage().as_raw_fd() as u32,
            aio_buf: t.buf as u64,
            aio_nbytes: t.len as u64,
            aio_offset: (t.sector * SECTOR_SIZE) as i64,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: self.done.as_raw_fd() as u32,
            ..Default::default()
        };
        match self.meta.get_mut(token) {
            Some(m @ None) => *m = Some((t.write, t.sector, t.len)),
            _ => {
                return Err(Error::Daemon {
                    what: "AIO queue".into(),
                    detail: format!("token {token} is in use or not below the depth {}", self.depth),
                });
            }
        }
        self.pending.push(iocb);
        Ok(())
    }

    /// Whether [`reap`](Self::reap) has results without waiting for the kernel (requests `submit`
    /// ran itself or the kernel refused).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.refused.is_empty()
    }

    /// Hands every queued request to the kernel in one `io_submit`; returns how many were
    /// submitted. Requests the kernel refused come back from the next [`reap`](Self::reap) as errors.
    ///
    /// A lone request with nothing in flight (a queue depth of one) is executed right here with a
    /// plain positional read or write instead: AIO's submit, completion signal and reap cost more
    /// than they save when there is nothing to overlap. Its result is `ready` for `reap`.
    pub fn submit(&mut self) -> Result<usize> {
        if self.pending.len() == 1 && self.in_flight == 0 {
            let iocb = self.pending.pop().expect("one pending");
            let token = iocb.aio_data as usize;
            let (write, sector, len) = self.meta[token].take().expect("pushed");
            let op = if write { Op::Write { fua: false } } else { Op::Read };
            // SAFETY: `push`'s contract keeps the buffer valid until this token's completion is
            // reaped, which is after this call.
            let seg = unsafe { Segment::new(iocb.aio_buf as *mut u8, len) };
            let mut req = Request {
                op,
                sector,
                data: Data::Segments(vec![seg]),
            };
            let r = self.core.execute(&mut req);
            self.ready.push((token, r));
            return Ok(0);
        }
        let mut submitted = 0;
        while submitted < self.pending.len() {
            let mut ptrs: Vec<*mut Iocb> = self.pending[submitted..]
                .iter_mut()
                .map(|i| i as *mut Iocb)
                .collect();
            // SAFETY: every pointer is to a live control block in `pending`; the kernel copies them
            // during the call. The buffers they name are valid per `push`'s contract.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    ptrs.len() as libc::c_long,
                    ptrs.as_mut_ptr(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first remaining request was refused: report it as failed, go on with the rest.
                let iocb = self.pending.remove(submitted);
                self.refused.push((iocb.aio_data as usize, e));
                continue;
            }
            submitted += n as usize;
            self.in_flight += n as usize;
        }
        self.pending.clear();
        if !self.refused.is_empty() {
            // Their errors wait in `refused`; make the owner's poll come back for them.
            let _ = self.done.write(1);
        }
        Ok(submitted)
    }

    /// Completed requests: `(token, Ok(bytes))` (always the whole length) or the error, without
    /// blocking.
    pub fn reap(&mut self) -> Vec<(usize, Result<usize>)> {
        // Clear the signal before collecting, so a completion after this read signals again. With
        // nothing in flight no signal can be pending for us (saves a system call per request at
        // queue depth 1, where `submit` runs the lone request itself).
        if self.in_flight > 0 {
            let _ = self.done.read();
        }
        let refused: Vec<(usize, io::Error)> = self.refused.drain(..).collect();
        let mut out: Vec<(usize, Result<usize>)> = self.ready.drain(..).collect();
        out.extend(
            refused
                .into_iter()
                .map(|(token, e)| (token, self.finish(token, Err(e)))),
        );
        loop {
            let events = self.get_events(false);
            if events.is_empty() {
                break;
            }
            for ev in events {
                let token = ev.data as usize;
                let r = if ev.res < 0 {
                    Err(io::Error::from_raw_os_error((-ev.res) as i32))
                } else {
                    Ok(ev.res as usize)
                };
                out.push((token, self.finish(token, r)));
            }
        }
        out
    }

    /// Completion events of requests in flight: those already there, or (`wait`) at least one,
    /// blocking. Empty when nothing is in flight (or on an error other than an interrupted wait).
    fn get_events(&mut self, wait: bool) -> Vec<IoEvent> {
        if self.in_flight == 0 {
            return Vec::new();
        }
        let mut events = vec![IoEvent::default(); self.in_flight];
        let mut zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout: *mut libc::timespec = if wait { std::ptr::null_mut() } else { &mut zero };
        loop {
            // SAFETY: `events` has room for `in_flight` entries, the count given; the timeout is a
            // valid timespec or null (block).
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    libc::c_long::from(wait),
                    events.len() as libc::c_long,
                    events.as_mut_ptr(),
                    timeout,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let n = n.max(0) as usize;
            self.in_flight -= n;
            events.truncate(n);
            return events;
        }
    }

    /// The outcome of `token`: a short transfer is an error too (the core checked the range).
    fn finish(&mut self, token: usize, r: io::Result<usize>) -> Result<usize> {
        let (write, sector, len) = self
            .meta
            .get_mut(token)
            .and_then(Option::take)
            .unwrap_or((false, 0, 0));
        let op = if write { OpKind::Write } else { OpKind::Read };
        match r {
            Ok(n) if n == len => Ok(n),
            Ok(n) => Err(Error::Io {
                op,
                sector,
                error: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {len} bytes transferred"),
                ),
            }),
            Err(error) => Err(Error::Io { op, sector, error }),
        }
    }
}

impl Drop for AioQueue {
    fn drop(&mut self) {
        // Wait for what is in flight, so that no buffer is written after its owner let it go
        // (`io_destroy` would wait too).
        while !self.get_events(true).is_empty() {}
        // SAFETY: the context is ours and destroyed once.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{AlignedBuf, BlockOptions};

    fn wait_all(q: &mut AioQueue, n: usize) -> Vec<(usize, Result<usize>)> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut p = libc::pollfd {
                fd: q.completion_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if !q.has_ready() {
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut p, 1, 5000) };
                assert_eq!(n, 1, "no completion within 5 s");
            }
            out.extend(q.reap());
        }
        out
    }

    #[test]
    fn many_writes_then_reads_in_flight_return_the_bytes() {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(256 * 512).unwrap();
        let core = Arc::new(BlockCore::open(img.path(), BlockOptions::default()).unwrap());
        let mut q = AioQueue::new(core, 16).unwrap();
        let mut bufs: Vec<AlignedBuf> = (0..16).map(|_| AlignedBuf::new(4096)).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as u8 + 1);
            let t = Transfer {
                write: true,
                sector: i as u64 * 8,
                buf: b.as_ptr(),
                len: 4096,
            };
            // SAFETY: `bufs` outlives the completions awaited below.
            unsafe { q.push(i, t) }.unwrap();
        }
        assert_eq!(q.submit().unwrap(), 16);
        let done = wait_all(&mut q, 16);
        assert!(done.iter().all(|(_, r)| matches!(r, Ok(4096))));
        for (i, b) in bufs.iter_mut().enumerate() {
            b.as_mut_slice().fill(0);
            let t = Transfer {
                write: false,
                sector: i as u64 * 8,
                buf: b.as_ptr(),
                len: 4096,
            };
            // SAFETY: as above.
            unsafe { q.push(i, t) }.unwrap();
        }
        q.submit().unwrap();
        let mut tokens: Vec<usize> = wait_all(&mut q, 16)
            .into_iter()
            .map(|(t, r)| {
                assert!(matches!(r, Ok(4096)));
                t
            })
            .collect();
        tokens.sort_unstable();
        assert_eq!(tokens, (0..16).collect::<Vec<_>>());
        for (i, b) in bufs.iter().enumerate() {
            assert!(
                b.as_slice()[..4096].iter().all(|&x| x == i as u8 + 1),
                "block {i}"
            );
        }
    }

    #[test]
    fn out_of_range_read_only_and_full_queue_are_refused() {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(16 * 512).unwrap();
        let ro = BlockOptions {
            read_only: true,
            ..Default::default()
        };
        let core = Arc::new(BlockCore::open(img.path(), ro).unwrap());
        let mut q = AioQueue::new(core, 1).unwrap();
        let b = AlignedBuf::new(4096);
        let t = |write, sector| Transfer {
            write,
            sector,
            buf: b.as_ptr(),
            len: 4096,
        };
        // Nothing is submitted that could outlive `b`, except the one read awaited below.
        // SAFETY: as said.
        let refused = unsafe { q.push(0, t(false, 9)) };
        assert!(matches!(refused, Err(Error::OutOfRange { .. })));
        // SAFETY: as above.
        let refused = unsafe { q.push(0, t(true, 0)) };
        assert!(matches!(refused, Err(Error::ReadOnly { .. })));
        // SAFETY: as above.
        unsafe { q.push(0, t(false, 0)) }.unwrap();
        // SAFETY: as above.
        let refused = unsafe { q.push(1, t(false, 8)) };
        assert!(matches!(refused, Err(Error::Busy { .. })));
        // A lone request with nothing in flight runs inside `submit`.
        assert_eq!(q.submit().unwrap(), 0);
        assert!(q.has_ready());
        assert!(matches!(wait_all(&mut q, 1)[0], (0, Ok(4096))));
    }
}
