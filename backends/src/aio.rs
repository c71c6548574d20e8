//! Asynchronous reads and writes on the block core's image with Linux native AIO (`io_submit`):
//! many requests in flight from one thread, which is what a deep guest queue needs from a backend
//! whose ring is served by a single thread. Most useful with `O_DIRECT` (buffered AIO completes
//! inside `io_submit`).
//!
//! The queue owns every request's data buffer ([`IoBuf`]) from [`AioQueue::push`] until the
//! request's completion has been collected by [`AioQueue::reap`], which hands the buffer back. The
//! kernel may write into a buffer until then, so no other code can reach it in between: there is no
//! raw pointer for a caller to keep, and dropping the queue waits for everything in flight before the
//! buffers are freed (or leaks them if the wait cannot be confirmed). A completion the kernel reports
//! for a token that is not in flight is a hard error ([`AioError::UnknownToken`]), never a guess.
//! Completions are signalled on an eventfd the owner can poll.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::block::{BlockCore, Data, FileStorage, Op, OpKind, Request, SECTOR_SIZE, Segment};

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

/// Size of a page of [`IoBuf`] memory.
const PAGE: usize = ring_protocol::abi::PAGE_SIZE;

/// What the queue refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum AioError {
    /// The block core refused the transfer (range, read-only, alignment) or the queue is full.
    #[error(transparent)]
    Core(#[from] crate::Error),
    /// A token given to [`AioQueue::push`] names a request still queued or in flight.
    #[error("token {token} is in use")]
    TokenInUse {
        /// The token.
        token: usize,
    },
    /// A token at or beyond the queue's depth.
    #[error("token {token} is not below the queue depth {depth}")]
    TokenOutOfRange {
        /// The token.
        token: usize,
        /// The depth.
        depth: usize,
    },
    /// The kernel reported a completion for a token that is not in flight: the queue's bookkeeping
    /// and the kernel disagree, so no buffer can be trusted to be idle. The owner must stop.
    #[error("completion for token {token}, which is not in flight")]
    UnknownToken {
        /// The token the completion carried.
        token: u64,
    },
    /// A system call on the AIO context failed.
    #[error("{what}: {error}")]
    Os {
        /// The call.
        what: &'static str,
        /// What the OS said.
        error: io::Error,
    },
}

/// Page-aligned memory of its own (an anonymous private mapping, never part of the malloc heap)
/// holding one request's data. It has a capacity (whole pages) and a length (the bytes in use).
pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: an anonymous private mapping owned by this value alone; moving it to another thread moves
// the ownership.
unsafe impl Send for IoBuf {}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl IoBuf {
    /// At least `cap` zeroed bytes (rounded up to whole pages, at least one); its length is `cap`.
    pub fn new(cap: usize) -> io::Result<IoBuf> {
        let pages = cap.max(1).div_ceil(PAGE);
        let bytes = pages
            .checked_mul(PAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer size overflows"))?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(IoBuf {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            cap: bytes,
            len: cap,
        })
    }

    /// Bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the bytes in use; refused beyond the capacity.
    pub fn set_len(&mut self, len: usize) -> io::Result<()> {
        if len > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes do not fit a {}-byte buffer", self.cap),
            ));
        }
        self.len = len;
        Ok(())
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes of the live mapping this value owns; initialised (zero-filled
        // by the kernel, then written only through this value).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. Nothing else can be using it: the AIO
        // queue only lets a buffer go after its completion was collected.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

/// A request to queue: a read into or a write from its own buffer (all `buf.len()` bytes, a whole
/// number of sectors).
#[derive(Debug)]
pub struct Transfer {
    /// Write the buffer (else read into it).
    pub write: bool,
    /// First sector.
    pub sector: u64,
    /// The data; owned by the queue until the completion is collected.
    pub buf: IoBuf,
}

/// A request [`AioQueue::push`] did not take: its transfer (buffer included) comes back.
#[derive(Debug)]
pub struct Refused {
    /// The transfer, untouched.
    pub transfer: Transfer,
    /// Why.
    pub error: AioError,
}

/// A collected completion: the request's buffer is the caller's again.
#[derive(Debug)]
pub struct Done {
    /// The token it was pushed under.
    pub token: usize,
    /// Whether it was a write.
    pub write: bool,
    /// Its first sector.
    pub sector: u64,
    /// Bytes transferred (always the whole length), or what failed.
    pub result: crate::Result<usize>,
    /// Its buffer: for a read, the bytes read.
    pub buf: IoBuf,
}

/// Where a token's request is.
#[derive(Debug)]
enum Stage {
    /// Pushed, not yet handed to the kernel.
    Queued,
    /// Handed to the kernel: only a completion event for this token releases it.
    Submitted,
}

#[derive(Debug)]
struct InFlight {
    write: bool,
    sector: u64,
    buf: IoBuf,
    stage: Stage,
}

/// A Linux AIO context on the core's image.
#[derive(Debug)]
pub struct AioQueue {
    ctx: libc::c_ulong,
    core: Arc<BlockCore<FileStorage>>,
    done: EventFd,
    depth: usize,
    /// Requests the kernel has and has not completed yet.
    in_flight: usize,
    /// Tokens pushed and not yet submitted, in order.
    pending: Vec<usize>,
    /// Per token (below `depth`): the request it names and its buffer, from `push` until `reap`.
    slots: Vec<Option<InFlight>>,
    /// Completions known without the kernel's events (requests `submit` ran itself, requests
    /// `io_submit` refused), reported by the next `reap`.
    ready: Vec<(usize, crate::Result<usize>)>,
}

fn os(what: &'static str) -> AioError {
    AioError::Os {
        what,
        error: io::Error::last_os_error(),
    }
}

impl AioQueue {
    /// A context for up to `depth` requests at once (tokens `0..depth`).
    pub fn new(core: Arc<BlockCore<FileStorage>>, depth: usize) -> Result<Self, AioError> {
        let depth = depth.max(1);
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context id into `ctx`.
        if unsafe { libc::syscall(libc::SYS_io_setup, depth as libc::c_long, &mut ctx) } < 0 {
            return Err(os("io_setup"));
        }
        let done = EventFd::new(libc::EFD_NONBLOCK).map_err(|error| AioError::Os {
            what: "eventfd",
            error,
        })?;
        Ok(AioQueue {
            ctx,
            core,
            done,
            depth,
            in_flight: 0,
            pending: Vec::new(),
            slots: (0..depth).map(|_| None).collect(),
            ready: Vec::new(),
        })
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn completion_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Requests pushed and not yet collected by [`reap`](Self::reap).
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Queues a read or write under `token` (handed to the kernel by [`submit`](Self::submit)).
    /// The queue owns the buffer until `reap` returns it. Checks the transfer as the core would;
    /// a refusal gives the transfer back.
    pub fn push(&mut self, token: usize, t: Transfer) -> Result<(), Box<Refused>> {
        let refuse = |transfer, error| Err(Box::new(Refused { transfer, error }));
        if let Err(e) = self.core.check_transfer(t.write, t.sector, t.buf.len() as u64) {
            return refuse(t, e.into());
        }
        match self.slots.get(token) {
            None => {
                let depth = self.depth;
                return refuse(t, AioError::TokenOutOfRange { token, depth });
            }
            Some(Some(_)) => return refuse(t, AioError::TokenInUse { token }),
            Some(None) => {}
        }
        self.slots[token] = Some(InFlight {
            write: t.write,
            sector: t.sector,
            buf: t.buf,
            stage: Stage::Queued,
        });
        self.pending.push(token);
        Ok(())
    }

    /// Whether [`reap`](Self::reap) has results without waiting for the kernel (requests `submit`
    /// ran itself or the kernel refused).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The control block for a queued token; its buffer address is that of the buffer the slot
    /// owns, which stays there until the completion is collected.
    fn iocb(&mut self, token: usize) -> Iocb {
        let fd = self.core.storage().as_raw_fd() as u32;
        let resfd = self.done.as_raw_fd() as u32;
        let f = self.slots[token].as_mut().expect("a pending token has its slot");
        Iocb {
            aio_data: token as u64,
            aio_lio_opcode: if f.write { IOCB_CMD_PWRITE } else { IOCB_CMD_PREAD },
            aio_fildes: fd,
            aio_buf: f.buf.as_mut_slice().as_mut_ptr() as u64,
            aio_nbytes: f.buf.len() as u64,
            // In range: `push` checked the transfer against the image, whose size fits an i64.
            aio_offset: (f.sector * SECTOR_SIZE) as i64,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: resfd,
            ..Default::default()
        }
    }

    /// Hands every queued request to the kernel in one `io_submit`; returns how many were
    /// submitted. Requests the kernel refused come back from the next [`reap`](Self::reap) as errors.
    ///
    /// A lone request with nothing in flight (a queue depth of one) is executed right here with a
    /// plain positional read or write instead: AIO's submit, completion signal and reap cost more
    /// than they save when there is nothing to overlap. Its result is `ready` for `reap`.
    pub fn submit(&mut self) -> usize {
        if self.pending.len() == 1 && self.in_flight == 0 {
            let token = self.pending.pop().expect("one pending");
            let f = self.slots[token].as_mut().expect("a pending token has its slot");
            let op = if f.write {
                Op::Write { fua: false }
            } else {
                Op::Read
            };
            let bytes = f.buf.as_mut_slice();
            // SAFETY: the segment is `bytes`, exclusively borrowed for this whole block; the
            // request holding it is executed and dropped before the borrow ends.
            let seg = unsafe { Segment::new(bytes.as_mut_ptr(), bytes.len()) };
            let mut req = Request {
                op,
                sector: f.sector,
                data: Data::Segments(vec![seg]),
            };
            let r = self.core.execute(&mut req);
            drop(req);
            self.ready.push((token, r));
            return 0;
        }
        let tokens = std::mem::take(&mut self.pending);
        let mut iocbs: Vec<Iocb> = tokens.iter().map(|&t| self.iocb(t)).collect();
        let mut submitted = 0;
        while submitted < iocbs.len() {
            let mut ptrs: Vec<*mut Iocb> = iocbs[submitted..].iter_mut().map(|i| i as *mut Iocb).collect();
            // SAFETY: every pointer is to a live control block in `iocbs`; the kernel copies them
            // during the call. The buffers they name are owned by `self.slots` until their
            // completions are collected (`reap`) or the queue is dropped (which waits for them).
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
                // The first remaining request was refused: it never reached the kernel. Report it
                // as failed and go on with the rest.
                let token = tokens[submitted];
                let f = self.slots[token].as_ref().expect("pending slot");
                let op = if f.write { OpKind::Write } else { OpKind::Read };
                let sector = f.sector;
                self.ready
                    .push((token, Err(crate::Error::Io { op, sector, error: e })));
                submitted += 1;
                continue;
            }
            // At most the count given.
            let n = (n as usize).min(ptrs.len());
            for &t in &tokens[submitted..submitted + n] {
                self.slots[t].as_mut().expect("pending slot").stage = Stage::Submitted;
            }
            submitted += n;
            self.in_flight += n;
        }
        if !self.ready.is_empty() {
            // Make the owner's poll come back for the refused requests' errors.
            let _ = self.done.write(1);
        }
        self.in_flight
    }

    /// Completed requests, without blocking: each with its result and its buffer. A completion
    /// for a token that is not in flight is [`AioError::UnknownToken`]; the queue keeps every
    /// other request (and its buffer) until the kernel is done with it or the queue is dropped.
    pub fn reap(&mut self) -> Result<Vec<Done>, AioError> {
        // Clear the signal before collecting, so a completion after this read signals again. With
        // nothing in flight no signal can be pending for us (saves a system call per request at
        // queue depth 1, where `submit` runs the lone request itself).
        if self.in_flight > 0 {
            let _ = self.done.read();
        }
        let mut out = Vec::new();
        for (token, r) in std::mem::take(&mut self.ready) {
            let f = self.slots[token].take().expect("a ready token has its slot");
            out.push(Done {
                token,
                write: f.write,
                sector: f.sector,
                result: r,
                buf: f.buf,
            });
        }
        loop {
            let events = self.get_events(false)?;
            if events.is_empty() {
                break;
            }
            for ev in events {
                let r = if ev.res < 0 {
                    Err(io::Error::from_raw_os_error(
                        ev.res.unsigned_abs().min(4095) as i32
                    ))
                } else {
                    Ok(ev.res as usize)
                };
                out.push(self.finish(ev.data, r)?);
            }
        }
        Ok(out)
    }

    /// Completion events of requests in flight: those already there, or (`wait`) at least one,
    /// blocking. Empty when nothing is in flight.
    fn get_events(&mut self, wait: bool) -> Result<Vec<IoEvent>, AioError> {
        if self.in_flight == 0 {
            return Ok(Vec::new());
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
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(AioError::Os {
                    what: "io_getevents",
                    error: e,
                });
            }
            // At most the count given.
            let n = (n as usize).min(events.len());
            self.in_flight -= n;
            events.truncate(n);
            return Ok(events);
        }
    }

    /// Releases `token` after the kernel completed it: a short transfer is an error too (the core
    /// checked the range). A token that is not in flight is refused.
    fn finish(&mut self, token: u64, r: io::Result<usize>) -> Result<Done, AioError> {
        let slot = usize::try_from(token)
            .ok()
            .and_then(|t| self.slots.get_mut(t))
            .filter(|s| {
                matches!(
                    s,
                    Some(InFlight {
                        stage: Stage::Submitted,
                        ..
                    })
                )
            })
            .ok_or(AioError::UnknownToken { token })?;
        let f = slot.take().expect("checked above");
        let (op, len) = (if f.write { OpKind::Write } else { OpKind::Read }, f.buf.len());
        let result = match r {
            Ok(n) if n == len => Ok(n),
            Ok(n) => Err(crate::Error::Io {
                op,
                sector: f.sector,
                error: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {len} bytes transferred"),
                ),
            }),
            Err(error) => Err(crate::Error::Io {
                op,
                sector: f.sector,
                error,
            }),
        };
        Ok(Done {
            token: token as usize,
            write: f.write,
            sector: f.sector,
            result,
            buf: f.buf,
        })
    }

    /// Test only: hands the kernel a read whose completion carries `token` without the queue
    /// knowing it (a stale or forged completion, as a bookkeeping bug would produce).
    #[cfg(test)]
    pub(crate) fn inject_foreign_completion(&mut self, token: u64, buf: &'static mut [u8]) {
        let iocb = Iocb {
            aio_data: token,
            aio_lio_opcode: IOCB_CMD_PREAD,
            aio_fildes: self.core.storage().as_raw_fd() as u32,
            aio_buf: buf.as_mut_ptr() as u64,
            aio_nbytes: buf.len() as u64,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: self.done.as_raw_fd() as u32,
            ..Default::default()
        };
        let mut p = [&iocb as *const Iocb];
        // SAFETY: one live control block naming a buffer that lives for the rest of the process.
        let n = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, 1 as libc::c_long, p.as_mut_ptr()) };
        assert_eq!(n, 1, "io_submit: {}", io::Error::last_os_error());
        self.in_flight += 1;
    }
}

impl Drop for AioQueue {
    fn drop(&mut self) {
        // Wait for what is in flight, so that no buffer is written after it is freed.
        while self.in_flight > 0 {
            match self.get_events(true) {
                Ok(ev) if !ev.is_empty() => {}
                _ => break,
            }
        }
        // SAFETY: the context is ours and destroyed once. io_destroy also waits for the requests
        // still in flight.
        let rc = unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
        if self.in_flight > 0 && rc < 0 {
            // Neither the events nor io_destroy confirmed that the kernel is done with the
            // submitted buffers: leak them rather than free memory it may still write.
            tracing::error!(
                in_flight = self.in_flight,
                "AIO context could not be drained: leaking the buffers of requests in flight"
            );
            for f in self.slots.iter_mut().filter_map(Option::take) {
                if matches!(f.stage, Stage::Submitted) {
                    std::mem::forget(f.buf);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockOptions;

    fn wait_all(q: &mut AioQueue, n: usize) -> Vec<Done> {
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
            out.extend(q.reap().unwrap());
        }
        out
    }

    /// An image of `sectors` zeros; with `direct`, opened with `O_DIRECT` where the temporary
    /// directory's file system allows it (else buffered: the same code path, completing sooner).
    fn image(sectors: u64, direct: bool) -> (tempfile::NamedTempFile, Arc<BlockCore<FileStorage>>) {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(sectors * 512).unwrap();
        let opts = BlockOptions {
            direct,
            ..Default::default()
        };
        let core = BlockCore::open(img.path(), opts)
            .or_else(|_| BlockCore::open(img.path(), BlockOptions::default()))
            .unwrap();
        (img, Arc::new(core))
    }

    fn filled(len: usize, fill: u8) -> IoBuf {
        let mut b = IoBuf::new(len).unwrap();
        b.as_mut_slice().fill(fill);
        b
    }

    #[test]
    fn many_writes_then_reads_in_flight_return_the_bytes_in_their_own_buffers() {
        let (_img, core) = image(256, true);
        let mut q = AioQueue::new(core, 16).unwrap();
        for i in 0..16usize {
            let t = Transfer {
                write: true,
                sector: i as u64 * 8,
                buf: filled(4096, i as u8 + 1),
            };
            q.push(i, t).unwrap();
        }
        assert_eq!(q.submit(), 16);
        let done = wait_all(&mut q, 16);
        assert!(done.iter().all(|d| matches!(d.result, Ok(4096)) && d.write));
        for i in 0..16usize {
            let t = Transfer {
                write: false,
                sector: i as u64 * 8,
                buf: filled(4096, 0),
            };
            q.push(i, t).unwrap();
        }
        q.submit();
        let mut done = wait_all(&mut q, 16);
        done.sort_by_key(|d| d.token);
        assert_eq!(
            done.iter().map(|d| d.token).collect::<Vec<_>>(),
            (0..16).collect::<Vec<_>>()
        );
        for d in &done {
            assert!(matches!(d.result, Ok(4096)) && !d.write);
            assert!(
                d.buf.as_slice().iter().all(|&x| x == d.token as u8 + 1),
                "block {} read back into its own buffer",
                d.token
            );
        }
    }

    #[test]
    fn out_of_range_read_only_and_token_misuse_are_refused_with_the_buffer_back() {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(16 * 512).unwrap();
        let ro = BlockOptions {
            read_only: true,
            ..Default::default()
        };
        let core = Arc::new(BlockCore::open(img.path(), ro).unwrap());
        let mut q = AioQueue::new(core, 1).unwrap();
        let t = |write, sector| Transfer {
            write,
            sector,
            buf: filled(4096, 7),
        };
        let r = q.push(0, t(false, 9)).unwrap_err();
        assert!(matches!(r.error, AioError::Core(crate::Error::OutOfRange { .. })));
        assert_eq!(r.transfer.buf.as_slice()[0], 7, "the buffer comes back untouched");
        let r = q.push(0, t(true, 0)).unwrap_err();
        assert!(matches!(r.error, AioError::Core(crate::Error::ReadOnly { .. })));
        q.push(0, t(false, 0)).unwrap();
        let r = q.push(0, t(false, 8)).unwrap_err();
        assert!(
            matches!(r.error, AioError::TokenInUse { token: 0 }),
            "{}",
            r.error
        );
        let r = q.push(1, t(false, 8)).unwrap_err();
        assert!(matches!(
            r.error,
            AioError::TokenOutOfRange { token: 1, depth: 1 }
        ));
        // A lone request with nothing in flight runs inside `submit`.
        assert_eq!(q.submit(), 0);
        assert!(q.has_ready());
        let d = wait_all(&mut q, 1).pop().unwrap();
        assert!(matches!((d.token, &d.result), (0, Ok(4096))));
        assert!(
            d.buf.as_slice().iter().all(|&b| b == 0),
            "the image's zeros were read"
        );
        assert_eq!(q.busy(), 0);
    }

    /// A completion the kernel reports for a token the queue does not have in flight (never
    /// pushed, or pushed but not yet submitted: a reused token) is a hard error, not a completion
    /// of whatever request holds that token now.
    #[test]
    fn blkback_aio_unknown_token_completion_is_a_hard_error() {
        let (_img, core) = image(64, false);
        let mut q = AioQueue::new(core.clone(), 4).unwrap();
        q.inject_foreign_completion(99, Box::leak(vec![0u8; 512].into_boxed_slice()));
        let e = q.reap().unwrap_err();
        assert!(matches!(e, AioError::UnknownToken { token: 99 }), "{e}");

        // Token 2 is pushed (queued, not submitted) when a completion carrying 2 arrives.
        let mut q = AioQueue::new(core, 4).unwrap();
        q.push(
            2,
            Transfer {
                write: false,
                sector: 0,
                buf: filled(512, 0),
            },
        )
        .unwrap();
        q.inject_foreign_completion(2, Box::leak(vec![0u8; 512].into_boxed_slice()));
        let e = q.reap().unwrap_err();
        assert!(matches!(e, AioError::UnknownToken { token: 2 }), "{e}");
        assert_eq!(
            q.busy(),
            1,
            "the queued request and its buffer are still the queue's"
        );
    }

    #[test]
    fn io_buffers_are_whole_pages_and_refuse_lengths_beyond_them() {
        let mut b = IoBuf::new(5000).unwrap();
        assert_eq!((b.capacity(), b.len()), (8192, 5000));
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        b.set_len(8192).unwrap();
        assert!(b.set_len(8193).is_err());
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }
}
