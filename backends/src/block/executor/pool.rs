//! The worker pool executor: [`BlockQueue`], a bounded request queue served by a fixed pool of
//! threads, each running the inline executor ([`super::inline::run`]) and then the request's
//! completion callback.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;

use super::inline;
use crate::Error;
use crate::block::{BlockCore, FileStorage, Request, Storage};

/// Called once when a queued request has been executed.
pub type Completion = Box<dyn FnOnce(Request, crate::Result<usize>) + Send>;

struct Queued {
    req: Request,
    done: Completion,
}

struct Shared<S: Storage> {
    core: Arc<BlockCore<S>>,
    jobs: ArrayQueue<Queued>,
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
        if let Err(job) = self.shared.jobs.push(Queued { req, done }) {
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
        if let Some(job) = shared.jobs.pop() {
            let done = inline::run(&shared.core, job.req, job.done);
            (done.tag)(done.req, done.result);
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

    use crate::Result;
    use crate::block::testutil::{CachedDisk, durable_range, image, pattern};
    use crate::block::{AlignedBuf, BlockOptions, Data, Op, Segment};

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
