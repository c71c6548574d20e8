//! Block workloads: integrity (pattern written, flushed, read back, compared), throughput (random
//! 4 KiB and sequential 64 KiB at a queue depth) and error surfacing.

use alloc::vec::Vec;

use ring_protocol::ring::IdSlabBox;

use super::{Histogram, Observer, Perf, Report, Rng, crc32, mix};
use crate::block::{BlockCompletion, BlockDevice, BlockOp, BlockRequest, Rejected};
use crate::dma::DmaBuf;
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// Longest a single completion may take before the workload gives up.
pub const COMPLETION_TIMEOUT_US: u64 = 5_000_000;

/// One request of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Operation.
    pub op: BlockOp,
    /// First sector.
    pub sector: u64,
    /// Sectors (0 for a flush).
    pub sectors: u32,
}

/// Counts of one pipelined run.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    ops: u64,
    bytes: u64,
}

/// Runs jobs from `next` keeping up to `qd` in flight, with buffers of `buf_bytes` from a pool (in
/// the device's DMA memory). Tags are [`IdSlabBox`] ids: a completion whose tag is not in flight is
/// refused. `prepare` fills a write's buffer; `check` looks at each completed request; `latency`
/// gets each request's time from submission to the completion this loop saw.
#[allow(clippy::too_many_arguments, reason = "one private helper of the workloads")]
fn pipeline(
    dev: &mut dyn BlockDevice,
    waiter: &dyn Waiter,
    qd: usize,
    buf_bytes: usize,
    next: &mut dyn FnMut() -> Option<Job>,
    prepare: &mut dyn FnMut(&Job, &mut [u8]),
    check: &mut dyn FnMut(&Job, &[u8]) -> Result<()>,
    latency: &mut Histogram,
) -> Result<Moved> {
    let ss = dev.info().sector_size;
    let dma = dev.dma();
    let mut pool = (0..qd)
        .map(|_| DmaBuf::new(dma, buf_bytes))
        .collect::<Result<Vec<_>>>()?;
    // Per tag: the job and when it was submitted (ns).
    let mut slots: IdSlabBox<(Job, u64)> = IdSlabBox::new(qd);
    let mut pending: Option<Job> = None;
    let mut exhausted = false;
    let mut moved = Moved::default();
    let mut finish =
        |c: BlockCompletion, slots: &mut IdSlabBox<(Job, u64)>, pool: &mut Vec<DmaBuf>| -> Result<()> {
            let (job, submitted) = slots.remove(c.tag).map_err(|_| Error::Protocol {
                device: "workload",
                what: "completion with unknown tag",
                value: c.tag,
            })?;
            latency.record(waiter.now_ns().saturating_sub(submitted));
            c.result?;
            check(&job, c.buf.as_slice())?;
            moved.ops += 1;
            moved.bytes += c.buf.len() as u64;
            pool.push(c.buf);
            Ok(())
        };
    loop {
        // Fill the queue, telling the device about the new requests once at the end.
        dev.set_batching(true);
        let filled: Result<()> = 'fill: {
            while !slots.is_full() {
                let job = match pending.take() {
                    Some(j) => j,
                    None if exhausted => break,
                    None => match next() {
                        Some(j) => j,
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                let mut buf = if job.op == BlockOp::Flush {
                    DmaBuf::empty()
                } else {
                    let mut b = pool.pop().expect("one buffer per free slot");
                    assert!(
                        b.set_len(job.sectors as usize * ss),
                        "job longer than the pool's buffers"
                    );
                    b
                };
                if job.op == BlockOp::Write {
                    prepare(&job, buf.as_mut_slice());
                }
                let submitted = waiter.now_ns();
                // Recorded before the submit: a device may complete it at once.
                let tag = slots.insert((job, submitted)).map_err(Error::Ring)?;
                match dev.submit(BlockRequest {
                    tag: u64::from(tag),
                    op: job.op,
                    sector: job.sector,
                    buf,
                }) {
                    Ok(()) => {}
                    Err(Rejected {
                        req,
                        error: Error::QueueFull { .. },
                    }) if slots.len() > 1 => {
                        let _ = slots.remove(u64::from(tag));
                        if !req.buf.is_empty() || req.buf.capacity() > 0 {
                            pool.push(req.buf);
                        }
                        pending = Some(job);
                        break;
                    }
                    Err(r) => {
                        let _ = slots.remove(u64::from(tag));
                        break 'fill Err(r.error);
                    }
                }
            }
            Ok(())
        };
        dev.set_batching(false);
        filled?;
        if slots.is_empty() {
            return Ok(moved);
        }
        let c = wait_for(waiter, COMPLETION_TIMEOUT_US, "a block completion", || dev.poll())?;
        finish(c, &mut slots, &mut pool)?;
        while let Some(c) = dev.poll()? {
            finish(c, &mut slots, &mut pool)?;
        }
    }
}

/// The byte pattern of `sector` under `key`.
pub fn fill_sector(key: u64, sector: u64, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = mix(key ^ sector.rotate_left(20) ^ i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Parameters of [`integrity`].
#[derive(Debug, Clone, Copy)]
pub struct IntegrityParams {
    /// Seed for offsets and pattern.
    pub seed: u64,
    /// Mixed into the pattern so data left by an earlier run never matches.
    pub nonce: u64,
    /// Requests in flight (capped at the device's maximum).
    pub qd: usize,
    /// Random extents written.
    pub random_extents: usize,
}

impl Default for IntegrityParams {
    fn default() -> Self {
        Self {
            seed: super::defaults::SEED,
            nonce: 0,
            qd: super::defaults::INTEGRITY_QD,
            random_extents: super::defaults::INTEGRITY_EXTENTS,
        }
    }
}

/// Largest extent in sectors.
const MAX_EXTENT: u32 = 32;

/// The extents [`integrity`] writes: a sequential run of mixed lengths from sector 0, then
/// `random_extents` extents in distinct 32-sector blocks above it.
pub fn integrity_extents(capacity: u64, p: &IntegrityParams) -> Result<Vec<Job>> {
    let seq_len = (capacity / 4).min(256);
    let blocks = capacity.saturating_sub(seq_len) / u64::from(MAX_EXTENT);
    if seq_len < 64 || blocks < p.random_extents as u64 * 2 {
        return Err(Error::OutOfRange {
            sector: 0,
            end: seq_len + p.random_extents as u64 * 64,
            capacity,
        });
    }
    let mut jobs = Vec::new();
    let lengths = [1u32, 8, 16, 3, 32, 7];
    let mut s = 0;
    for i in 0.. {
        let n = u64::from(lengths[i % lengths.len()]).min(seq_len - s);
        if n == 0 {
            break;
        }
        jobs.push(Job {
            op: BlockOp::Write,
            sector: s,
            sectors: n as u32,
        });
        s += n;
    }
    let mut rng = Rng::new(p.seed);
    let mut used: Vec<u64> = Vec::new();
    let first_block = seq_len.div_ceil(u64::from(MAX_EXTENT));
    while used.len() < p.random_extents {
        let b = first_block + rng.below(blocks - 1);
        if (b + 1) * u64::from(MAX_EXTENT) > capacity || used.contains(&b) {
            continue;
        }
        used.push(b);
        let len = 1 + rng.below(u64::from(MAX_EXTENT)) as u32;
        let off = rng.below(u64::from(MAX_EXTENT - len) + 1);
        jobs.push(Job {
            op: BlockOp::Write,
            sector: b * u64::from(MAX_EXTENT) + off,
            sectors: len,
        });
    }
    Ok(jobs)
}

/// Writes a pattern at sequential and random offsets, flushes, reads everything back and compares
/// each sector's CRC-32 with the expected one.
pub fn integrity(dev: &mut dyn BlockDevice, waiter: &dyn Waiter, p: &IntegrityParams) -> Result<Report> {
    let info = dev.info();
    let ss = info.sector_size;
    let qd = p.qd.clamp(1, info.max_in_flight.max(1));
    let buf_bytes = MAX_EXTENT as usize * ss;
    if buf_bytes > info.max_request_bytes {
        return Err(Error::BadLength {
            op: "write",
            len: buf_bytes,
            unit: ss,
            max: info.max_request_bytes,
        });
    }
    let writes = integrity_extents(info.capacity_sectors, p)?;
    let key = mix(p.seed ^ mix(p.nonce));
    let mut latency = Histogram::new();
    let before = dev.counters();
    let t0 = waiter.now_us();

    let mut it = writes.iter().copied();
    let mut prepare = |j: &Job, buf: &mut [u8]| {
        for (i, sector) in buf.chunks_mut(ss).enumerate() {
            fill_sector(key, j.sector + i as u64, sector);
        }
    };
    let mut w = pipeline(
        dev,
        waiter,
        qd,
        buf_bytes,
        &mut || it.next(),
        &mut prepare,
        &mut |_, _| Ok(()),
        &mut latency,
    )?;

    if info.flush {
        let mut once = Some(Job {
            op: BlockOp::Flush,
            sector: 0,
            sectors: 0,
        });
        let f = pipeline(
            dev,
            waiter,
            1,
            0,
            &mut || once.take(),
            &mut |_, _| {},
            &mut |_, _| Ok(()),
            &mut latency,
        )?;
        w.ops += f.ops;
    }

    let mut reads = writes.iter().rev().map(|j| Job {
        op: BlockOp::Read,
        ..*j
    });
    let mut expected = alloc::vec![0u8; ss];
    let mut check = |j: &Job, data: &[u8]| -> Result<()> {
        for (i, got) in data.chunks(ss).enumerate() {
            let sector = j.sector + i as u64;
            fill_sector(key, sector, &mut expected);
            let (want, have) = (crc32(&expected), crc32(got));
            if want != have {
                return Err(Error::Mismatch {
                    what: "sector crc32",
                    index: sector,
                    expected: want.into(),
                    found: have.into(),
                });
            }
        }
        Ok(())
    };
    let r = pipeline(
        dev,
        waiter,
        qd,
        buf_bytes,
        &mut || reads.next(),
        &mut |_, _| {},
        &mut check,
        &mut latency,
    )?;
    Ok(Report {
        ops: w.ops + r.ops,
        bytes: w.bytes + r.bytes,
        guest_us: waiter.now_us().saturating_sub(t0),
        counters: dev.counters().since(&before),
        latency: latency.summary(),
    })
}

/// Parameters of [`throughput`].
#[derive(Debug, Clone, Copy)]
pub struct ThroughputParams {
    /// Seed for random offsets.
    pub seed: u64,
    /// Length of each phase in guest microseconds.
    pub phase_us: u64,
    /// The deep queue depth (the shallow one is 1).
    pub qd: usize,
    /// Size of the random requests: 4096 (`randread4k`, `randwrite4k`) or 512 (`randread512`,
    /// `randwrite512`).
    pub random_bytes: usize,
}

impl Default for ThroughputParams {
    fn default() -> Self {
        Self {
            seed: super::defaults::SEED,
            phase_us: super::defaults::PHASE_MS * 1000,
            qd: super::defaults::THROUGHPUT_QD,
            random_bytes: super::defaults::RANDOM_BYTES,
        }
    }
}

/// The phases: (pattern, op, sectors per request, random, deep queue).
const PHASES: [(&str, BlockOp, u32, bool, bool); 6] = [
    ("randread4k", BlockOp::Read, 8, true, false),
    ("randwrite4k", BlockOp::Write, 8, true, false),
    ("randread4k", BlockOp::Read, 8, true, true),
    ("randwrite4k", BlockOp::Write, 8, true, true),
    ("seqread64k", BlockOp::Read, 128, false, false),
    ("seqwrite64k", BlockOp::Write, 128, false, false),
];

/// Random 4 KiB reads and writes at queue depth 1 and `qd`, then 64 KiB sequential reads and
/// writes; one [`Perf`] per phase, bracketed by phase markers 1..=6 and 0 at the end. The deep
/// phases are left out for a device that takes one request at a time (and for `qd` 1).
pub fn throughput(
    dev: &mut dyn BlockDevice,
    waiter: &dyn Waiter,
    p: &ThroughputParams,
    obs: &mut dyn Observer,
) -> Result<Vec<Perf>> {
    let info = dev.info();
    let ss = info.sector_size as u64;
    let mut out = Vec::new();
    let mut rng = Rng::new(p.seed);
    for (n, &(pattern, op, sectors, random, deep)) in PHASES.iter().enumerate() {
        let (pattern, sectors) = match (random, p.random_bytes) {
            (true, 512) if ss == 512 => (
                if op == BlockOp::Read {
                    "randread512"
                } else {
                    "randwrite512"
                },
                1,
            ),
            _ => (pattern, sectors),
        };
        let bytes = sectors as usize * ss as usize;
        if bytes > info.max_request_bytes || u64::from(sectors) * 2 > info.capacity_sectors {
            continue;
        }
        let qd = if deep { p.qd } else { 1 }.clamp(1, info.max_in_flight.max(1));
        if deep && qd == 1 {
            // The device cannot go deeper (IDE): this phase would repeat the depth-1 one.
            continue;
        }
        let slots = info.capacity_sectors / u64::from(sectors);
        let mut seq = 0u64;
        let mut latency = Histogram::new();
        let before = dev.counters();
        obs.phase(n as u8 + 1);
        let t0 = waiter.now_us();
        let deadline = t0 + p.phase_us;
        let mut next = || {
            (waiter.now_us() < deadline).then(|| {
                let slot = if random {
                    rng.below(slots)
                } else {
                    seq = (seq + 1) % slots;
                    seq
                };
                Job {
                    op,
                    sector: slot * u64::from(sectors),
                    sectors,
                }
            })
        };
        let m = pipeline(
            dev,
            waiter,
            qd,
            bytes,
            &mut next,
            &mut |_, _| {},
            &mut |_, _| Ok(()),
            &mut latency,
        )?;
        let guest_us = waiter.now_us().saturating_sub(t0);
        obs.phase(0);
        let perf = Perf {
            pattern,
            qd,
            report: Report {
                ops: m.ops,
                bytes: m.bytes,
                guest_us,
                counters: dev.counters().since(&before),
                latency: latency.summary(),
            },
        };
        obs.perf(&perf);
        out.push(perf);
    }
    Ok(out)
}

/// Writes one sector to a device that should refuse it (a read-only disk) and returns the error it
/// surfaced; a write that succeeds is itself an error.
pub fn expect_write_error(dev: &mut dyn BlockDevice, waiter: &dyn Waiter) -> Result<Error> {
    let ss = dev.info().sector_size;
    let data = alloc::vec![0x5au8; ss];
    match crate::block::write(dev, waiter, 0, &data) {
        Ok(()) => Err(Error::Mismatch {
            what: "status of a write the device should refuse (0 = it succeeded)",
            index: 0,
            expected: 1,
            found: 0,
        }),
        Err(e @ (Error::DeviceStatus { .. } | Error::ReadOnly { .. })) => Ok(e),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::fake::MemDisk;
    use crate::block::{BlockInfo, Rejected};
    use crate::counters::Counters;
    use crate::wait::SharedIrqAck;
    use crate::wait::fake::StepClock;
    use crate::workload::Recorder;

    /// Loses the contents of `sector` as soon as the first read completes (a lost write, as seen
    /// by the later read of that sector); counts the deepest queue it saw.
    struct Corrupting {
        disk: MemDisk,
        sector: u64,
        max_seen: usize,
    }

    impl BlockDevice for Corrupting {
        fn name(&self) -> &'static str {
            "corrupting"
        }
        fn info(&self) -> BlockInfo {
            self.disk.info()
        }
        fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
            self.disk.submit(req)?;
            self.max_seen = self.max_seen.max(self.disk.in_flight());
            Ok(())
        }
        fn poll(&mut self) -> Result<Option<BlockCompletion>> {
            let c = self.disk.poll()?;
            if c.as_ref().is_some_and(|c| c.op == BlockOp::Read) {
                let ss = self.disk.info.sector_size;
                let at = self.sector as usize * ss;
                self.disk.data[at..at + ss].fill(0);
            }
            Ok(c)
        }
        fn in_flight(&self) -> usize {
            self.disk.in_flight()
        }
        fn irq_ack(&self) -> Option<SharedIrqAck> {
            None
        }
        fn counters(&self) -> Counters {
            self.disk.counters()
        }
        fn dma(&self) -> &'static dyn crate::dma::DmaAllocator {
            self.disk.dma()
        }
    }

    fn disk() -> MemDisk {
        let mut d = MemDisk::new(8192, 512, 16);
        d.latency_polls = 3;
        d.lifo = true;
        d
    }

    #[test]
    fn integrity_passes_on_a_good_disk_out_of_order() {
        let mut plain = disk();
        let clock = StepClock::new(1);
        let p = IntegrityParams {
            seed: 3,
            nonce: 9,
            qd: 8,
            random_extents: 16,
        };
        let extents = integrity_extents(8192, &p).unwrap();
        let sectors: u64 = extents.iter().map(|j| u64::from(j.sectors)).sum();
        // Extents never overlap, so the order of completion cannot change the result.
        let mut covered = alloc::collections::BTreeSet::new();
        for j in &extents {
            for s in j.sector..j.sector + u64::from(j.sectors) {
                assert!(covered.insert(s), "sector {s} written twice");
            }
        }
        let r = integrity(&mut plain, &clock, &p).unwrap();
        assert_eq!(r.ops, 2 * extents.len() as u64 + 1, "writes + reads + one flush");
        assert_eq!(r.bytes, 2 * sectors * 512);
        assert_eq!(plain.flushes, 1);
        assert_eq!(r.counters.notifications, r.ops);
        // The disk holds the pattern where it was written.
        let mut want = [0u8; 512];
        fill_sector(mix(3 ^ mix(9)), extents[5].sector, &mut want);
        let at = extents[5].sector as usize * 512;
        assert_eq!(&plain.data[at..at + 512], &want);
    }

    #[test]
    fn integrity_catches_a_bad_sector_and_lost_data() {
        let clock = StepClock::new(1);
        let p = IntegrityParams {
            seed: 5,
            nonce: 1,
            qd: 4,
            random_extents: 8,
        };
        let extents = integrity_extents(8192, &p).unwrap();
        // A device error on one sector is surfaced with its status.
        let mut d = disk();
        d.bad_sector = Some(extents[2].sector);
        let e = integrity(&mut d, &clock, &p).unwrap_err();
        assert_eq!(
            e,
            Error::DeviceStatus {
                device: "mem",
                op: "write",
                status: 0xee
            }
        );
        // Data that changes after being written is reported with the sector it sits in.
        let target = extents[0].sector; // the last extent read back (reads run in reverse)
        let mut c = Corrupting {
            disk: disk(),
            sector: target,
            max_seen: 0,
        };
        match integrity(&mut c, &clock, &p).unwrap_err() {
            Error::Mismatch {
                what: "sector crc32",
                index,
                expected,
                found,
            } => {
                assert_eq!(index, target);
                assert_ne!(expected, found);
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(
            c.max_seen <= 4 && c.max_seen >= 2,
            "queue depth honoured: {}",
            c.max_seen
        );
    }

    #[test]
    fn throughput_reports_every_phase_with_markers() {
        let mut d = disk();
        d.info.max_in_flight = 12;
        let clock = StepClock::new(10);
        let mut rec = Recorder::default();
        let p = ThroughputParams {
            seed: 1,
            phase_us: 2000,
            qd: 32,
            random_bytes: 4096,
        };
        let perfs = throughput(&mut d, &clock, &p, &mut rec).unwrap();
        assert_eq!(rec.phases, [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]);
        let names: Vec<_> = perfs.iter().map(|p| (p.pattern, p.qd)).collect();
        assert_eq!(
            names,
            [
                ("randread4k", 1),
                ("randwrite4k", 1),
                ("randread4k", 12),
                ("randwrite4k", 12),
                ("seqread64k", 1),
                ("seqwrite64k", 1)
            ]
        );
        for p in &perfs {
            assert!(p.report.ops > 0, "{p:?}");
            let per_op = if p.pattern.contains("64k") { 65536 } else { 4096 };
            assert_eq!(p.report.bytes, p.report.ops * per_op);
            assert_eq!(p.report.counters.notifications, p.report.ops);
            let l = p.report.latency;
            assert_eq!(l.count, p.report.ops, "every request timed: {p:?}");
            assert!(
                l.p50_ns > 0 && l.p50_ns <= l.p99_ns && l.p99_ns <= l.max_ns,
                "{l:?}"
            );
        }
    }

    /// A device that takes more polls per request shows a higher latency; integrity runs time
    /// every request (writes, the flush, reads).
    #[test]
    fn latency_follows_the_device() {
        let clock = StepClock::new(1);
        let p = IntegrityParams {
            seed: 2,
            nonce: 3,
            qd: 1,
            random_extents: 8,
        };
        let mut fast = disk();
        fast.latency_polls = 1;
        let quick = integrity(&mut fast, &clock, &p).unwrap();
        let mut slow = disk();
        slow.latency_polls = 40;
        let slow = integrity(&mut slow, &clock, &p).unwrap();
        assert_eq!(quick.latency.count, quick.ops);
        assert_eq!(slow.latency.count, slow.ops);
        assert!(
            slow.latency.p50_ns >= quick.latency.p50_ns + 20_000,
            "quick {:?} slow {:?}",
            quick.latency,
            slow.latency
        );
    }

    #[test]
    fn write_error_is_surfaced_and_success_is_a_failure() {
        let clock = StepClock::new(1);
        let mut d = disk();
        d.info.read_only = true;
        assert_eq!(
            expect_write_error(&mut d, &clock).unwrap(),
            Error::ReadOnly { device: "mem" }
        );
        let mut ok = disk();
        assert!(matches!(
            expect_write_error(&mut ok, &clock),
            Err(Error::Mismatch { .. })
        ));
    }
}
