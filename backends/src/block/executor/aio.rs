//! The asynchronous executor: Linux native AIO (`io_submit`) on the core's image. Many requests
//! in flight from one thread, which is what a deep guest queue needs from a backend whose ring is
//! served by a single thread. Most useful with `O_DIRECT` (buffered AIO completes inside
//! `io_submit`).
//!
//! A request goes through the core like any other: [`AioQueue::push`] prepares it
//! ([`BlockCore::prepare`]) and [`AioQueue::reap`] completes it ([`BlockCore::complete`]: a short
//! transfer is an error, writethrough writes and flushes are synced, stats counted) before handing
//! it back. Flushes and discards have no bytes for the kernel to move: they are completed at once
//! and come back from the next `reap`.
//!
//! The queue owns every request, and with it its data buffer ([`Data::Buf`], an
//! [`IoBuf`](crate::block::IoBuf)), from `push` until the request's completion has been collected
//! by `reap`, which hands it back. The kernel may write into a buffer until then, so no other code
//! can reach it in between: there is no raw pointer for a caller to keep, the queue picks the token
//! that names a request to the kernel (an [`IdSlabBox`] id, never reused while the request is the
//! queue's), and dropping the queue waits for everything in flight before the buffers are freed (or
//! leaks them if the wait cannot be confirmed). A completion the kernel reports for a token that is
//! not in flight is a hard error ([`AioError::UnknownToken`]), never a guess. Completions are
//! signalled on an eventfd the owner can poll.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ring_protocol::ring::IdSlabBox;
use vmm_sys_util::eventfd::EventFd;

use super::inline;
use crate::Error;
use crate::block::{BlockCore, Data, FileStorage, Finished, Job, Op, Refused, Request};

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

/// What the queue fails at once requests are in it (refusals of a request are [`Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum AioError {
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

/// Where a token's request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Pushed, not yet handed to the kernel.
    Queued,
    /// Handed to the kernel: only a completion event for this token releases it.
    Submitted,
}

/// A request the queue holds, with its buffer, from `push` until `reap`.
struct Slot<T> {
    job: Job<T>,
    stage: Stage,
}

/// A Linux AIO context on the core's image, for up to `depth` requests at once. `T` is what the
/// submitter keeps with each request (its tag), handed back with the completion.
pub struct AioQueue<T = ()> {
    ctx: libc::c_ulong,
    core: Arc<BlockCore<FileStorage>>,
    done: EventFd,
    /// Requests the kernel has and has not completed yet.
    in_flight: usize,
    /// Tokens pushed and not yet submitted, in order.
    pending: Vec<u32>,
    /// Per token: the request it names, from `push` until the kernel completed it.
    slots: IdSlabBox<Slot<T>>,
    /// Requests finished without the kernel's events (flushes and discards, requests `submit` ran
    /// itself, requests `io_submit` refused), reported by the next `reap`.
    ready: Vec<Finished<T>>,
}

impl<T> std::fmt::Debug for AioQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioQueue")
            .field("depth", &self.slots.capacity())
            .field("queued", &self.pending.len())
            .field("in_flight", &self.in_flight)
            .field("ready", &self.ready.len())
            .finish()
    }
}

fn os(what: &'static str) -> AioError {
    AioError::Os {
        what,
        error: io::Error::last_os_error(),
    }
}

impl<T> AioQueue<T> {
    /// A context for up to `depth` requests at once (at least one).
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
            in_flight: 0,
            pending: Vec::new(),
            slots: IdSlabBox::new(depth),
            ready: Vec::new(),
        })
    }

    /// The core it serves.
    pub fn core(&self) -> &Arc<BlockCore<FileStorage>> {
        &self.core
    }

    /// Requests it holds at once, at most.
    pub fn depth(&self) -> usize {
        self.slots.capacity()
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn completion_fd(&self) -> RawFd {
        self.done.as_raw_fd()
    }

    /// Requests pushed and not yet collected by [`reap`](Self::reap).
    pub fn busy(&self) -> usize {
        self.slots.len() + self.ready.len()
    }

    /// Takes a request (handed to the kernel by [`submit`](Self::submit)) and returns the token
    /// it goes under (`None` for one without bytes to move, finished at once). The core validates
    /// it first. A read or write must own its buffer ([`Data::Buf`]): the queue keeps it until
    /// `reap` returns it. A refusal (the core's, a full queue, data the request does not own) gives
    /// the request and its tag back.
    pub fn push(&mut self, req: Request, tag: T) -> Result<Option<u32>, Box<Refused<T>>> {
        let refuse = |req, tag, error| Err(Box::new(Refused { req, tag, error }));
        if self.busy() >= self.depth() {
            let capacity = self.depth();
            return refuse(req, tag, Error::Busy { capacity });
        }
        let moves_bytes = matches!(req.op, Op::Read | Op::Write { .. });
        if moves_bytes && !matches!(req.data, Data::Buf(_)) {
            let op = req.op.kind();
            return refuse(req, tag, Error::NotOwned { op });
        }
        let job = self.core.prepare(req, tag)?;
        if !job.moves_bytes() {
            // Nothing for the kernel: the core finishes it now (a flush syncs what completed).
            self.ready.push(self.core.complete(job, Ok(0)));
            return Ok(None);
        }
        let token = self
            .slots
            .insert(Slot {
                job,
                stage: Stage::Queued,
            })
            .expect("a free token: fewer requests than the depth");
        self.pending.push(token);
        Ok(Some(token))
    }

    /// Whether [`reap`](Self::reap) has results without waiting for the kernel (flushes,
    /// discards, requests `submit` ran itself or the kernel refused).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The control block for a queued token; its buffer address is that of the buffer the slot
    /// owns, which stays there until the completion is collected.
    fn iocb(&mut self, token: u32) -> Iocb {
        let fd = self.core.storage().as_raw_fd() as u32;
        let resfd = self.done.as_raw_fd() as u32;
        let slot = self
            .slots
            .get_mut(u64::from(token))
            .expect("a pending token has its slot");
        let write = slot.job.is_write();
        // In range: `push` had the core check the transfer against the image, whose size fits an
        // i64.
        let offset = slot.job.offset() as i64;
        let buf = slot.job.buf_mut().expect("push took only requests with a buffer");
        let bytes = buf.as_mut_slice();
        Iocb {
            aio_data: u64::from(token),
            aio_lio_opcode: if write { IOCB_CMD_PWRITE } else { IOCB_CMD_PREAD },
            aio_fildes: fd,
            aio_buf: bytes.as_mut_ptr() as u64,
            aio_nbytes: bytes.len() as u64,
            aio_offset: offset,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: resfd,
            ..Default::default()
        }
    }

    /// Takes `token`'s request out of the queue (it is not the kernel's) and completes it with
    /// `moved`, or with its bytes moved here and now (`None`).
    fn finish_here(&mut self, token: u32, moved: Option<io::Result<usize>>) {
        let mut slot = self
            .slots
            .remove(u64::from(token))
            .expect("a pending token has its slot");
        let moved = moved.unwrap_or_else(|| inline::move_bytes(&self.core, &mut slot.job));
        self.ready.push(self.core.complete(slot.job, moved));
    }

    /// Hands every queued request to the kernel in one `io_submit`; returns how many requests the
    /// kernel has. Requests the kernel refused come back from the next [`reap`](Self::reap) as
    /// errors.
    ///
    /// A lone request with nothing in flight (a queue depth of one) is executed right here with a
    /// plain positional read or write instead: AIO's submit, completion signal and reap cost more
    /// than they save when there is nothing to overlap. Its result is `ready` for `reap`.
    pub fn submit(&mut self) -> usize {
        if self.pending.len() == 1 && self.in_flight == 0 {
            let token = self.pending.pop().expect("one pending");
            self.finish_here(token, None);
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
                self.finish_here(tokens[submitted], Some(Err(e)));
                submitted += 1;
                continue;
            }
            // At most the count given.
            let n = (n as usize).min(ptrs.len());
            for &t in &tokens[submitted..submitted + n] {
                self.slots.get_mut(u64::from(t)).expect("pending slot").stage = Stage::Submitted;
            }
            submitted += n;
            self.in_flight += n;
        }
        if !self.ready.is_empty() {
            // Make the owner's poll come back for the requests finished without the kernel.
            let _ = self.done.write(1);
        }
        self.in_flight
    }

    /// Finished requests, without blocking: each completed by the core, with its tag, its result
    /// and its data (for a read, the bytes read). A completion for a token that is not in flight
    /// is [`AioError::UnknownToken`]; the queue keeps every other request (and its buffer) until
    /// the kernel is done with it or the queue is dropped.
    pub fn reap(&mut self) -> Result<Vec<Finished<T>>, AioError> {
        // Clear the signal before collecting, so a completion after this read signals again. With
        // nothing in flight no signal can be pending for us (saves a system call per request at
        // queue depth 1, where `submit` runs the lone request itself).
        if self.in_flight > 0 {
            let _ = self.done.read();
        }
        let mut out = std::mem::take(&mut self.ready);
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

    /// Releases `token` after the kernel completed it and has the core complete its request. A
    /// token that is not in flight (never pushed, or pushed and not yet submitted) is refused.
    fn finish(&mut self, token: u64, r: io::Result<usize>) -> Result<Finished<T>, AioError> {
        match self.slots.get(token) {
            Ok(Slot {
                stage: Stage::Submitted,
                ..
            }) => {}
            _ => return Err(AioError::UnknownToken { token }),
        }
        let slot = self.slots.remove(token).expect("checked above");
        Ok(self.core.complete(slot.job, r))
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

impl<T> Drop for AioQueue<T> {
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
            for (_, slot) in self.slots.drain() {
                if slot.stage == Stage::Submitted {
                    std::mem::forget(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockOptions, IoBuf};

    fn wait_all<T>(q: &mut AioQueue<T>, n: usize) -> Vec<Finished<T>> {
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

    fn rw(write: bool, sector: u64, buf: IoBuf) -> Request {
        Request {
            op: if write { Op::Write { fua: false } } else { Op::Read },
            sector,
            data: Data::Buf(buf),
        }
    }

    fn buf(f: &Finished<usize>) -> &IoBuf {
        match &f.req.data {
            Data::Buf(b) => b,
            other => panic!("not a buffer: {other:?}"),
        }
    }

    #[test]
    fn many_writes_then_reads_in_flight_return_the_bytes_in_their_own_buffers() {
        let (_img, core) = image(256, true);
        let mut q = AioQueue::new(core.clone(), 16).unwrap();
        for i in 0..16usize {
            q.push(rw(true, i as u64 * 8, filled(4096, i as u8 + 1)), i)
                .unwrap();
        }
        assert_eq!(q.submit(), 16);
        let done = wait_all(&mut q, 16);
        assert!(
            done.iter()
                .all(|d| matches!(d.result, Ok(4096)) && d.req.op.kind() == crate::block::OpKind::Write)
        );
        for i in 0..16usize {
            q.push(rw(false, i as u64 * 8, filled(4096, 0)), i).unwrap();
        }
        q.submit();
        let mut done = wait_all(&mut q, 16);
        done.sort_by_key(|d| d.tag);
        assert_eq!(
            done.iter().map(|d| d.tag).collect::<Vec<_>>(),
            (0..16).collect::<Vec<_>>()
        );
        for d in &done {
            assert!(matches!(d.result, Ok(4096)) && d.req.op == Op::Read);
            assert!(
                buf(d).as_slice().iter().all(|&x| x == d.tag as u8 + 1),
                "block {} read back into its own buffer",
                d.tag
            );
        }
        let s = core.stats();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (s.writes.load(Relaxed), s.reads.load(Relaxed)),
            (16, 16),
            "counted by the core"
        );
    }

    /// Refusals give the request, its buffer and its tag back: the core's (range, read-only), a
    /// full queue (no token is ever handed out twice: there is none to give), and data the
    /// request does not own (the queue must hold the buffer until the kernel is done).
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
        let r = q.push(rw(false, 9, filled(4096, 7)), 1usize).unwrap_err();
        assert!(matches!(r.error, crate::Error::OutOfRange { .. }));
        let Refused { req, tag, .. } = *r;
        let Data::Buf(b) = req.data else {
            panic!("the data comes back")
        };
        assert_eq!(
            (b.as_slice()[0], tag),
            (7, 1),
            "the buffer and tag come back untouched"
        );
        let r = q.push(rw(true, 0, filled(4096, 7)), 2).unwrap_err();
        assert!(matches!(r.error, crate::Error::ReadOnly { .. }));
        let owned = Request {
            op: Op::Read,
            sector: 0,
            data: Data::Owned(vec![0; 512]),
        };
        let r = q.push(owned, 3).unwrap_err();
        assert!(matches!(r.error, crate::Error::NotOwned { .. }), "{}", r.error);
        assert_eq!(q.push(rw(false, 0, filled(4096, 7)), 4).unwrap(), Some(0));
        let r = q.push(rw(false, 8, filled(4096, 7)), 5).unwrap_err();
        assert!(
            matches!(r.error, crate::Error::Busy { capacity: 1 }),
            "{}",
            r.error
        );
        assert_eq!(r.tag, 5);
        // A lone request with nothing in flight runs inside `submit`.
        assert_eq!(q.submit(), 0);
        assert!(q.has_ready());
        let d = wait_all(&mut q, 1).pop().unwrap();
        assert!(matches!((d.tag, &d.result), (4, Ok(4096))));
        assert!(
            buf(&d).as_slice().iter().all(|&b| b == 0),
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
        let mut q = AioQueue::<usize>::new(core.clone(), 4).unwrap();
        q.inject_foreign_completion(99, Box::leak(vec![0u8; 512].into_boxed_slice()));
        let e = q.reap().unwrap_err();
        assert!(matches!(e, AioError::UnknownToken { token: 99 }), "{e}");

        // A pushed request (queued, not submitted) when a completion carrying its token arrives.
        let mut q = AioQueue::new(core, 4).unwrap();
        let token = q.push(rw(false, 0, filled(512, 0)), 0usize).unwrap().unwrap();
        q.inject_foreign_completion(u64::from(token), Box::leak(vec![0u8; 512].into_boxed_slice()));
        let e = q.reap().unwrap_err();
        assert!(
            matches!(e, AioError::UnknownToken { token: t } if t == u64::from(token)),
            "{e}"
        );
        assert_eq!(
            q.busy(),
            1,
            "the queued request and its buffer are still the queue's"
        );
    }
}
