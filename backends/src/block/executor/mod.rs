//! The executors: what moves a prepared request's bytes between its data and the image.
//!
//! There is one interface, the core's: an executor receives a request only as a [`Job`] made by
//! [`BlockCore::prepare`] (validated: range, alignment, read-only) and gives it back only through
//! [`BlockCore::complete`] (short transfers, durability, discard, statistics), which is the only way
//! to get the submitter's tag back. An executor moves bytes and nothing else, so every request is
//! validated, made durable and counted in one place, whichever executor ran it. They differ in how
//! requests are submitted and how completions come back, to fit their callers:
//!
//! - [`inline`]: on the calling thread; the result is returned ([`BlockCore::execute`]).
//!   vhost-user-blk without workers.
//! - [`pool`]: [`BlockQueue`], a bounded queue served by worker threads; the result is handed to
//!   the request's completion callback on the worker. vhost-user-blk with `--workers`.
//! - [`aio`]: [`AioQueue`], Linux native AIO; requests queued with a tag, handed to the kernel in
//!   one `io_submit`, completions signalled on an eventfd and collected by `reap`, each request's
//!   buffer owned by the queue until then. blkback.
//!
//! [`Job`]: crate::block::Job
//! [`BlockCore::prepare`]: crate::block::BlockCore::prepare
//! [`BlockCore::complete`]: crate::block::BlockCore::complete
//! [`BlockCore::execute`]: crate::block::BlockCore::execute

pub mod aio;
pub mod inline;
pub mod pool;

pub use aio::{AioError, AioQueue};
pub use pool::{BlockQueue, Completion};

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, mpsc};

    use super::{AioQueue, BlockQueue};
    use crate::block::testutil::{image, pattern};
    use crate::block::{BlockCore, BlockOptions, Data, FileStorage, IoBuf, Op, Request};

    /// What a request came back with: its result (errors as their message) and its bytes.
    type Outcome = (Result<usize, String>, Vec<u8>);

    fn buf(bytes: &[u8]) -> Data {
        let mut b = IoBuf::new(bytes.len()).unwrap();
        b.as_mut_slice().copy_from_slice(bytes);
        Data::Buf(b)
    }

    fn outcome(req: Request, r: crate::Result<usize>) -> Outcome {
        let bytes = req
            .data
            .into_buf()
            .map(|b| b.as_slice().to_vec())
            .unwrap_or_default();
        (r.map_err(|e| e.to_string()), bytes)
    }

    /// Batches of requests on distinct sectors, each batch submitted at once and finished before
    /// the next: writes (one FUA), refused requests, reads across earlier writes, a flush, a
    /// discard, the last sector.
    fn batches() -> Vec<Vec<Request>> {
        let rq = |op, sector, data| Request { op, sector, data };
        let w = Op::Write { fua: false };
        vec![
            vec![
                rq(w, 0, buf(&pattern(0, 1, 8))),
                rq(Op::Write { fua: true }, 8, buf(&pattern(8, 2, 16))),
                rq(w, 40, buf(&[1; 100])),
                rq(Op::Read, 60, buf(&[0; 8 * 512])),
            ],
            vec![
                rq(Op::Read, 4, buf(&[0; 8 * 512])),
                rq(Op::Flush, 0, Data::None),
                rq(w, 63, buf(&pattern(63, 3, 1))),
                rq(Op::Discard { sectors: 2 }, 63, Data::None),
            ],
            vec![
                rq(Op::Discard { sectors: 8 }, 0, Data::None),
                rq(Op::Read, 63, buf(&[0; 512])),
                rq(Op::Read, 24, buf(&[7; 8 * 512])),
            ],
            vec![rq(Op::Read, 0, buf(&[0; 16 * 512]))],
        ]
    }

    fn core(img: &tempfile::NamedTempFile) -> Arc<BlockCore<FileStorage>> {
        let opts = BlockOptions {
            direct: true,
            writethrough: true,
            ..Default::default()
        };
        // tmpfs refuses O_DIRECT; the same path without it.
        let core = BlockCore::open(img.path(), opts).or_else(|_| {
            BlockCore::open(
                img.path(),
                BlockOptions {
                    writethrough: true,
                    ..Default::default()
                },
            )
        });
        Arc::new(core.unwrap())
    }

    /// Runs every batch with `run_batch` (requests numbered in order; it returns their outcomes
    /// by number, in any order) and puts the outcomes in request order.
    fn each_batch(mut run_batch: impl FnMut(Vec<(usize, Request)>) -> Vec<(usize, Outcome)>) -> Vec<Outcome> {
        let mut out = Vec::new();
        for batch in batches() {
            let first = out.len();
            let numbered: Vec<_> = batch
                .into_iter()
                .enumerate()
                .map(|(i, r)| (first + i, r))
                .collect();
            let len = numbered.len();
            let mut done = run_batch(numbered);
            assert_eq!(done.len(), len, "one outcome per request");
            done.sort_by_key(|d| d.0);
            out.extend(done.into_iter().map(|d| d.1));
        }
        out
    }

    fn inline(core: &Arc<BlockCore<FileStorage>>) -> Vec<Outcome> {
        each_batch(|batch| {
            batch
                .into_iter()
                .map(|(i, mut req)| {
                    let r = core.execute(&mut req);
                    (i, outcome(req, r))
                })
                .collect()
        })
    }

    fn pool(core: &Arc<BlockCore<FileStorage>>) -> Vec<Outcome> {
        let q = BlockQueue::new(core.clone(), 2, 8);
        let (tx, rx) = mpsc::channel();
        each_batch(|batch| {
            let len = batch.len();
            for (i, req) in batch {
                let tx = tx.clone();
                q.submit(
                    req,
                    Box::new(move |req, r| tx.send((i, outcome(req, r))).unwrap()),
                )
                .map_err(|(_, _, e)| e)
                .unwrap();
            }
            (0..len).map(|_| rx.recv().unwrap()).collect()
        })
    }

    fn aio(core: &Arc<BlockCore<FileStorage>>) -> Vec<Outcome> {
        let mut q = AioQueue::new(core.clone(), 8).unwrap();
        let mut via_kernel = 0;
        let out = each_batch(|batch| {
            let len = batch.len();
            let mut done = Vec::new();
            for (i, req) in batch {
                if let Err(r) = q.push(req, i) {
                    let r = *r;
                    done.push((r.tag, outcome(r.req, Err(r.error))));
                }
            }
            via_kernel += q.submit();
            while done.len() < len {
                let mut p = libc::pollfd {
                    fd: q.completion_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                if !q.has_ready() {
                    // SAFETY: one valid pollfd.
                    assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "no completion in 5 s");
                }
                done.extend(
                    q.reap()
                        .unwrap()
                        .into_iter()
                        .map(|f| (f.tag, outcome(f.req, f.result))),
                );
            }
            done
        });
        assert!(
            via_kernel >= 4,
            "the batches went through the kernel ({via_kernel})"
        );
        out
    }

    /// The three executors, each on its own copy of the same image, run the same requests: the
    /// same results, bytes, image contents and core statistics (validation, durability and counts
    /// are the core's, whichever executor moved the bytes), and the results are the right ones.
    #[test]
    fn every_executor_gives_the_same_results_for_the_same_requests() {
        type Run = fn(&Arc<BlockCore<FileStorage>>) -> Vec<Outcome>;
        let runs: [(&str, Run); 3] = [("inline", inline), ("pool", pool), ("aio", aio)];
        let mut seen = Vec::new();
        for (name, run) in runs {
            let img = image(64);
            let core = core(&img);
            let out = run(&core);
            let s = core.stats();
            let stats =
                [&s.reads, &s.writes, &s.flushes, &s.syncs, &s.discards, &s.errors].map(|c| c.load(Relaxed));
            seen.push((name, out, std::fs::read(img.path()).unwrap(), stats));
        }
        let (_, out, disk, stats) = &seen[0];
        let ok = |n: usize| Ok::<usize, String>(n);
        let results: Vec<_> = out.iter().map(|o| o.0.clone()).collect();
        assert_eq!(&results[..2], [ok(4096), ok(8192)]);
        assert!(results[2].as_ref().unwrap_err().contains("not a multiple of 512"));
        assert!(
            results[3]
                .as_ref()
                .unwrap_err()
                .contains("beyond the image's 64 sectors")
        );
        assert_eq!(&results[4..7], [ok(4096), ok(0), ok(512)]);
        assert!(results[7].as_ref().unwrap_err().contains("beyond the image"));
        assert_eq!(&results[8..], [ok(0), ok(512), ok(4096), ok(8192)]);
        let a = pattern(0, 1, 8);
        let b = pattern(8, 2, 16);
        assert_eq!(
            out[4].1,
            [&a[4 * 512..], &b[..4 * 512]].concat(),
            "read across two writes"
        );
        assert_eq!(out[9].1, pattern(63, 3, 1));
        assert_eq!(out[10].1, vec![0; 8 * 512], "never written");
        assert_eq!(
            out[11].1,
            [&[0; 8 * 512][..], &b[..8 * 512]].concat(),
            "discarded sectors are zeros"
        );
        assert_eq!(&disk[63 * 512..], &pattern(63, 3, 1)[..]);
        // reads, writes, flushes, syncs (writethrough: one per write, and the flush), discards,
        // errors.
        assert_eq!(*stats, [4, 3, 1, 4, 1, 3]);
        for (name, o, d, s) in &seen[1..] {
            assert_eq!(o, out, "{name}: results and bytes as inline");
            assert!(d == disk, "{name}: image as inline");
            assert_eq!(s, stats, "{name}: core statistics as inline");
        }
    }
}
