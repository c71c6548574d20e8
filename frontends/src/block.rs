//! Block devices.
//!
//! A [`BlockDevice`] takes requests without blocking ([`BlockDevice::submit`]) and hands back
//! completions ([`BlockDevice::poll`]), so several requests can be in flight. Each request owns its
//! [`DmaBuf`] while the device works on it and gives it back in the completion; buffers come from
//! the allocator the device names ([`BlockDevice::dma`]). The free functions [`read()`], [`write()`]
//! and [`flush()`] wrap one request each and wait for it through a [`Waiter`].

use crate::counters::Counters;
use crate::dma::{DmaAllocator, DmaBuf};
use crate::wait::{SharedIrqAck, Waiter, wait_for};
use crate::{Error, Result};

/// What a block device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Size in sectors.
    pub capacity_sectors: u64,
    /// Bytes per sector (512 or 4096).
    pub sector_size: usize,
    /// Requests the device accepts at once (≥ 1).
    pub max_in_flight: usize,
    /// Largest data length of one request, in bytes (a multiple of `sector_size`).
    pub max_request_bytes: usize,
    /// Writes will fail.
    pub read_only: bool,
    /// [`BlockOp::Flush`] is supported (otherwise it completes at once with
    /// [`Error::Unsupported`]).
    pub flush: bool,
}

/// A request's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOp {
    /// Read `buf.len()` bytes at `sector` into `buf`.
    Read,
    /// Write `buf` at `sector`.
    Write,
    /// Make completed writes durable; `sector` and `buf` are ignored.
    Flush,
}

impl BlockOp {
    /// `read`, `write` or `flush`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
        }
    }
}

/// One request.
#[derive(Debug)]
pub struct BlockRequest {
    /// The caller's identifier, returned in the completion.
    pub tag: u64,
    /// What to do.
    pub op: BlockOp,
    /// First sector.
    pub sector: u64,
    /// Data; its length is the request length, a non-zero multiple of the sector size for reads and
    /// writes (use [`DmaBuf::empty`] for a flush).
    pub buf: DmaBuf,
}

/// A finished request.
#[derive(Debug)]
pub struct BlockCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Its operation.
    pub op: BlockOp,
    /// The request's buffer (holding the data, for a successful read).
    pub buf: DmaBuf,
    /// Whether it worked; a device error status comes back as [`Error::DeviceStatus`].
    pub result: Result<()>,
}

/// A request the device did not take, with why. [`Error::QueueFull`] means: retry after a
/// completion.
#[derive(Debug)]
pub struct Rejected {
    /// The request, handed back.
    pub req: BlockRequest,
    /// Why.
    pub error: Error,
}

/// A block device.
pub trait BlockDevice {
    /// Device kind as named on the kernel command line (`virtio-blk`, `ide`, `ahci`, ...).
    fn name(&self) -> &'static str;

    /// Geometry and abilities.
    fn info(&self) -> BlockInfo;

    /// Queues `req` without waiting. Requests the device can never do (out of range, bad length,
    /// write to a read-only device) are rejected here or complete with the error.
    fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected>;

    /// Takes one finished request, if any. `Err` means the device is unusable (it broke the
    /// protocol); requests still in flight are lost.
    fn poll(&mut self) -> Result<Option<BlockCompletion>>;

    /// Requests submitted and not yet returned by [`poll`](Self::poll).
    fn in_flight(&self) -> usize;

    /// Opens (`true`) or closes (`false`) a batch of submissions. While a batch is open a driver may
    /// hold back telling the device about new requests; closing it tells the device about all of them
    /// at once (one notification instead of one per request). Drivers that cannot batch ignore it.
    fn set_batching(&mut self, on: bool) {
        let _ = on;
    }

    /// The interrupt hook, if the device can complete by interrupt. The platform routes the
    /// device's interrupt to a handler that calls it.
    fn irq_ack(&self) -> Option<SharedIrqAck>;

    /// The driver's own counts.
    fn counters(&self) -> Counters;

    /// The DMA memory the device can reach: request buffers should come from it (the platform gave
    /// it to the driver when it opened the device).
    fn dma(&self) -> &'static dyn DmaAllocator;
}

/// Checks a request against `info`; drivers call this first in `submit`.
pub fn validate(info: &BlockInfo, req: &BlockRequest) -> Result<()> {
    if req.op == BlockOp::Flush {
        return Ok(());
    }
    let len = req.buf.len();
    if len == 0 || !len.is_multiple_of(info.sector_size) || len > info.max_request_bytes {
        return Err(Error::BadLength {
            op: req.op.name(),
            len,
            unit: info.sector_size,
            max: info.max_request_bytes,
        });
    }
    let end = req.sector.saturating_add((len / info.sector_size) as u64);
    if end > info.capacity_sectors {
        return Err(Error::OutOfRange {
            sector: req.sector,
            end,
            capacity: info.capacity_sectors,
        });
    }
    Ok(())
}

/// Default time a single blocking request may take.
pub const DEFAULT_TIMEOUT_US: u64 = 5_000_000;

/// Submits `req` (waiting for a free slot if the queue is full) and waits until it completes.
/// Completions of other requests that arrive meanwhile are dropped; use this only on an idle
/// device.
pub fn run_one(dev: &mut dyn BlockDevice, waiter: &dyn Waiter, mut req: BlockRequest) -> Result<DmaBuf> {
    let tag = req.tag;
    loop {
        match dev.submit(req) {
            Ok(()) => break,
            Err(Rejected {
                req: back,
                error: Error::QueueFull { .. },
            }) => {
                req = back;
                wait_for(waiter, DEFAULT_TIMEOUT_US, "a free request slot", || {
                    Ok(dev.poll()?.map(drop))
                })?;
            }
            Err(r) => return Err(r.error),
        }
    }
    let done = wait_for(waiter, DEFAULT_TIMEOUT_US, "a block request", || {
        Ok(dev.poll()?.filter(|c| c.tag == tag))
    })?;
    done.result.map(|()| done.buf)
}

/// Reads `len` bytes at `sector`; returns them in a fresh buffer.
pub fn read(dev: &mut dyn BlockDevice, waiter: &dyn Waiter, sector: u64, len: usize) -> Result<DmaBuf> {
    let buf = DmaBuf::new(dev.dma(), len)?;
    run_one(
        dev,
        waiter,
        BlockRequest {
            tag: 0,
            op: BlockOp::Read,
            sector,
            buf,
        },
    )
}

/// Writes `data` at `sector` (copied into a DMA buffer first).
pub fn write(dev: &mut dyn BlockDevice, waiter: &dyn Waiter, sector: u64, data: &[u8]) -> Result<()> {
    let mut buf = DmaBuf::new(dev.dma(), data.len())?;
    buf.as_mut_slice().copy_from_slice(data);
    run_one(
        dev,
        waiter,
        BlockRequest {
            tag: 0,
            op: BlockOp::Write,
            sector,
            buf,
        },
    )
    .map(drop)
}

/// Flushes the device's write cache.
pub fn flush(dev: &mut dyn BlockDevice, waiter: &dyn Waiter) -> Result<()> {
    let req = BlockRequest {
        tag: 0,
        op: BlockOp::Flush,
        sector: 0,
        buf: DmaBuf::empty(),
    };
    run_one(dev, waiter, req).map(drop)
}

/// An in-memory block device for host tests: completes requests in a chosen order after a number of
/// polls, can fail sectors, counts one notification per submit.
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use alloc::collections::VecDeque;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    /// The in-memory disk.
    #[derive(Debug)]
    pub struct MemDisk {
        /// The contents.
        pub data: Vec<u8>,
        /// Geometry reported.
        pub info: BlockInfo,
        /// Requests accepted, waiting to complete: (polls left, request).
        pending: VecDeque<(u32, BlockRequest)>,
        /// Polls a request waits before completing.
        pub latency_polls: u32,
        /// Complete newest first (tests out-of-order completion).
        pub lifo: bool,
        /// Reads or writes touching this sector fail with status 0xee.
        pub bad_sector: Option<u64>,
        /// Flushes seen.
        pub flushes: u64,
        counters: Counters,
    }

    impl MemDisk {
        /// A zeroed disk of `sectors` × `sector_size` bytes taking `max_in_flight` requests.
        pub fn new(sectors: u64, sector_size: usize, max_in_flight: usize) -> Self {
            Self {
                data: vec![0; sectors as usize * sector_size],
                info: BlockInfo {
                    capacity_sectors: sectors,
                    sector_size,
                    max_in_flight,
                    max_request_bytes: 128 * 1024,
                    read_only: false,
                    flush: true,
                },
                pending: VecDeque::new(),
                latency_polls: 1,
                lifo: false,
                bad_sector: None,
                flushes: 0,
                counters: Counters::default(),
            }
        }

        fn execute(&mut self, req: &mut BlockRequest) -> Result<()> {
            let ss = self.info.sector_size;
            let start = req.sector as usize * ss;
            let range = start..start + req.buf.len();
            let sectors = req.sector..req.sector + (req.buf.len() / ss) as u64;
            if self.bad_sector.is_some_and(|b| sectors.contains(&b)) {
                return Err(Error::DeviceStatus {
                    device: "mem",
                    op: req.op.name(),
                    status: 0xee,
                });
            }
            match req.op {
                BlockOp::Read => req.buf.as_mut_slice().copy_from_slice(&self.data[range]),
                BlockOp::Write if self.info.read_only => {
                    return Err(Error::ReadOnly { device: "mem" });
                }
                BlockOp::Write => self.data[range].copy_from_slice(req.buf.as_slice()),
                BlockOp::Flush => self.flushes += 1,
            }
            Ok(())
        }
    }

    impl BlockDevice for MemDisk {
        fn name(&self) -> &'static str {
            "mem"
        }

        fn info(&self) -> BlockInfo {
            self.info
        }

        fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
            if let Err(error) = validate(&self.info, &req) {
                return Err(Rejected { req, error });
            }
            if self.pending.len() >= self.info.max_in_flight {
                let in_flight = self.pending.len();
                return Err(Rejected {
                    req,
                    error: Error::QueueFull {
                        device: "mem",
                        in_flight,
                    },
                });
            }
            self.counters.notifications += 1;
            self.pending.push_back((self.latency_polls, req));
            Ok(())
        }

        fn poll(&mut self) -> Result<Option<BlockCompletion>> {
            for (left, _) in self.pending.iter_mut() {
                *left = left.saturating_sub(1);
            }
            let ready = if self.lifo {
                self.pending.iter().rposition(|(left, _)| *left == 0)
            } else {
                self.pending.iter().position(|(left, _)| *left == 0)
            };
            let Some(i) = ready else { return Ok(None) };
            let (_, mut req) = self.pending.remove(i).expect("index from position");
            let result = self.execute(&mut req);
            Ok(Some(BlockCompletion {
                tag: req.tag,
                op: req.op,
                buf: req.buf,
                result,
            }))
        }

        fn in_flight(&self) -> usize {
            self.pending.len()
        }

        fn irq_ack(&self) -> Option<SharedIrqAck> {
            None
        }

        fn counters(&self) -> Counters {
            self.counters
        }

        fn dma(&self) -> &'static dyn DmaAllocator {
            crate::dma::fake::dma()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::MemDisk;
    use super::*;
    use crate::wait::fake::StepClock;

    #[test]
    fn blocking_helpers_round_trip_and_check_bounds() {
        let clock = StepClock::new(1);
        let mut d = MemDisk::new(64, 512, 4);
        let data: alloc::vec::Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        write(&mut d, &clock, 10, &data).unwrap();
        assert_eq!(&d.data[10 * 512..12 * 512], &data[..]);
        let back = read(&mut d, &clock, 10, 1024).unwrap();
        assert_eq!(back.as_slice(), &data[..]);
        flush(&mut d, &clock).unwrap();
        assert_eq!(d.flushes, 1);
        assert_eq!(
            read(&mut d, &clock, 63, 1024).unwrap_err(),
            Error::OutOfRange {
                sector: 63,
                end: 65,
                capacity: 64
            }
        );
        assert!(matches!(
            read(&mut d, &clock, 0, 100),
            Err(Error::BadLength { len: 100, .. })
        ));
        d.bad_sector = Some(11);
        assert_eq!(
            read(&mut d, &clock, 10, 1024).unwrap_err(),
            Error::DeviceStatus {
                device: "mem",
                op: "read",
                status: 0xee
            }
        );
        // write, read, flush and the failing read reached the device; the rejected two did not.
        assert_eq!(d.counters().notifications, 4);
    }
}
