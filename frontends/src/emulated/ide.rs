//! An ATA disk on an IDE channel, driven by programmed I/O: the CPU moves every data word through
//! the data register (`rep insw` / `rep outsw`, or the 32-bit `rep insd` / `rep outsd`), as on a
//! real PC without bus-master DMA.
//!
//! One command at a time (`max_in_flight` = 1). [`BlockDevice::submit`] writes the taskfile and the
//! command; [`BlockDevice::poll`] moves one data block whenever the drive asks for data (DRQ) and
//! completes the request when the drive is done. A data block is one sector (READ/WRITE SECTORS),
//! or up to the block size set with SET MULTIPLE MODE at probe (READ/WRITE MULTIPLE, the default
//! when the drive offers it). The drive raises its interrupt line (ISA IRQ 14 for the primary
//! channel in compatibility mode) after each block of a read, after each but the first block of a
//! write, and at the end of a flush; the [`IrqAck`] reads the status register, which is what lowers
//! that line.

use alloc::sync::Arc;

use super::ata::{self, Direction, Identify, Protocol, TaskFile, status};
use super::io::PortIo;
use crate::block::{self, BlockCompletion, BlockDevice, BlockInfo, BlockOp, BlockRequest, Rejected};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::DmaAllocator;
use crate::wait::{IrqAck, SharedIrqAck};
use crate::{Error, Result};

const NAME: &str = "ide";

// Command block registers, as offsets from the channel's command base (0x1f0 for the primary).
const REG_DATA: u16 = 0;
const REG_ERROR_FEATURES: u16 = 1;
const REG_COUNT: u16 = 2;
const REG_LBA0: u16 = 3;
const REG_LBA1: u16 = 4;
const REG_LBA2: u16 = 5;
const REG_DEVICE: u16 = 6;
const REG_STATUS_COMMAND: u16 = 7;
/// Control block: alternate status (read) / device control (write), at the control base (0x3f6).
const REG_ALT_STATUS_CONTROL: u16 = 0;
/// Device control: interrupt disable.
const CTRL_NIEN: u8 = 0x02;
/// Device control: software reset.
const CTRL_SRST: u8 = 0x04;
/// Device register bit selecting the second drive on the channel.
const DEVICE_DRIVE1: u8 = 0x10;

/// Largest request this driver takes (256 sectors, still one LBA28 command).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;
/// Status reads spent waiting for the drive during probe and IDENTIFY.
const PROBE_SPINS: u32 = 1_000_000;

/// Where an IDE channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdeChannel {
    /// Command block base (primary 0x1f0, secondary 0x170, or a native-mode BAR).
    pub command_base: u16,
    /// Control block base (primary 0x3f6, secondary 0x376, or a native-mode BAR + 2).
    pub control_base: u16,
    /// 0 = master, 1 = slave.
    pub drive: u8,
}

impl IdeChannel {
    /// The primary channel's master in compatibility mode (ports 0x1f0 and 0x3f6, ISA IRQ 14).
    pub const PRIMARY_MASTER: Self = Self {
        command_base: 0x1f0,
        control_base: 0x3f6,
        drive: 0,
    };
}

/// What the interrupt handler shares with the driver.
#[derive(Debug)]
struct Shared<P> {
    io: P,
    channel: IdeChannel,
    counters: AtomicCounters,
}

impl<P: PortIo + Send + Sync> IrqAck for Shared<P> {
    fn ack(&self) -> bool {
        // Reading the status register deasserts INTRQ. The channel's line is edge-triggered and
        // ours alone, so every interrupt on it is ours.
        let _ = self.io.read8(self.channel.command_base + REG_STATUS_COMMAND);
        self.counters.interrupted();
        true
    }
}

#[derive(Debug)]
enum Phase {
    Idle,
    /// A read or write: `done` sectors moved of `total`.
    Transfer {
        req: BlockRequest,
        dir: Direction,
        done: usize,
        total: usize,
    },
    Flush(BlockRequest),
}

/// Width of the data-register accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioWidth {
    /// `rep insw` / `rep outsw`: 256 accesses per sector, what every ATA device takes.
    Bits16,
    /// `rep insd` / `rep outsd`: 128 accesses per sector, the "32-bit I/O" that PCI IDE controllers
    /// (PIIX included) accept on the data port.
    Bits32,
}

/// An ATA disk on an IDE channel, PIO.
#[derive(Debug)]
pub struct IdeDisk<P> {
    shared: Arc<Shared<P>>,
    identify: Identify,
    phase: Phase,
    width: PioWidth,
    /// Sectors per data block set with SET MULTIPLE MODE at probe, and whether reads and writes use it.
    multiple_block: Option<usize>,
    use_multiple: bool,
    /// Where request buffers come from (the driver moves data by PIO: it allocates nothing itself).
    dma: &'static dyn DmaAllocator,
}

impl<P: PortIo> Shared<P> {
    fn cmd_port(&self, reg: u16) -> u16 {
        self.channel.command_base + reg
    }

    fn status(&self) -> u8 {
        self.io.read8(self.cmd_port(REG_STATUS_COMMAND))
    }

    fn alt_status(&self) -> u8 {
        self.io.read8(self.channel.control_base + REG_ALT_STATUS_CONTROL)
    }

    fn set_control(&self, value: u8) {
        self.io
            .write8(self.channel.control_base + REG_ALT_STATUS_CONTROL, value);
    }

    fn device_bits(&self) -> u8 {
        ata::DEVICE_OBSOLETE | if self.channel.drive == 1 { DEVICE_DRIVE1 } else { 0 }
    }

    /// Reads the alternate status (no side effects) until `done` accepts it; `None` if the spin
    /// budget runs out.
    fn spin_until(&self, done: impl Fn(u8) -> bool) -> Option<u8> {
        (0..PROBE_SPINS).map(|_| self.alt_status()).find(|&s| done(s))
    }

    /// The ≥ 400 ns the drive needs after a select or reset before its status is valid.
    fn settle(&self) {
        for _ in 0..4 {
            let _ = self.alt_status();
        }
    }

    fn identify_device(&self) -> Result<Identify> {
        let absent = || Error::Absent { device: NAME };
        // A channel nobody decodes floats high.
        if self.alt_status() == 0xff && self.status() == 0xff {
            return Err(absent());
        }
        // Software reset of the channel, interrupts off while probing.
        self.set_control(CTRL_SRST | CTRL_NIEN);
        self.settle();
        self.set_control(CTRL_NIEN);
        self.spin_until(|s| s & status::BSY == 0).ok_or_else(absent)?;
        self.io.write8(self.cmd_port(REG_DEVICE), self.device_bits());
        self.settle();
        // After a reset an ATA drive's signature is LBA1/LBA2 = 0/0 (ATAPI: 0x14/0xeb).
        let sig = (
            self.io.read8(self.cmd_port(REG_LBA1)),
            self.io.read8(self.cmd_port(REG_LBA2)),
        );
        if sig != (0, 0) {
            return Err(absent());
        }
        self.write_taskfile(&TaskFile::identify());
        let first = self.status();
        if first == 0 || first == 0xff {
            return Err(absent()); // no drive at the selected position
        }
        let s = self
            .spin_until(|s| s & status::BSY == 0 && s & (status::DRQ | status::ERR) != 0)
            .ok_or(Error::Init {
                device: NAME,
                reason: "IDENTIFY DEVICE never delivered data",
            })?;
        if s & status::ERR != 0 {
            return Err(absent()); // the drive aborted IDENTIFY: not an ATA disk
        }
        let mut data = [0u8; 512];
        self.io.read16_rep(self.cmd_port(REG_DATA), &mut data);
        let _ = self.status(); // clears the drive's pending interrupt
        self.set_control(0); // interrupts on from now
        Identify::parse(&data).map_err(|_| Error::Init {
            device: NAME,
            reason: "IDENTIFY data describes no LBA-addressable 512-byte-sector ATA disk",
        })
    }

    fn write_taskfile(&self, tf: &TaskFile) {
        let io = &self.io;
        let lba = tf.lba_bytes();
        io.write8(self.cmd_port(REG_DEVICE), self.device_bits() | tf.device);
        if tf.ext {
            // The "previous" contents first: the high-order bytes.
            let [_, count_hi] = tf.count.to_le_bytes();
            let [_, feat_hi] = tf.features.to_le_bytes();
            io.write8(self.cmd_port(REG_ERROR_FEATURES), feat_hi);
            io.write8(self.cmd_port(REG_COUNT), count_hi);
            io.write8(self.cmd_port(REG_LBA0), lba[3]);
            io.write8(self.cmd_port(REG_LBA1), lba[4]);
            io.write8(self.cmd_port(REG_LBA2), lba[5]);
        }
        let [count_lo, _] = tf.count.to_le_bytes();
        let [feat_lo, _] = tf.features.to_le_bytes();
        io.write8(self.cmd_port(REG_ERROR_FEATURES), feat_lo);
        io.write8(self.cmd_port(REG_COUNT), count_lo);
        io.write8(self.cmd_port(REG_LBA0), lba[0]);
        io.write8(self.cmd_port(REG_LBA1), lba[1]);
        io.write8(self.cmd_port(REG_LBA2), lba[2]);
        io.write8(self.cmd_port(REG_STATUS_COMMAND), tf.command);
        self.counters.notified(1);
    }

    /// SET MULTIPLE MODE to `sectors` per data block (interrupts off meanwhile); whether the
    /// drive accepted it.
    fn set_multiple_mode(&self, sectors: u8) -> bool {
        self.set_control(CTRL_NIEN);
        self.write_taskfile(&TaskFile::set_multiple(sectors));
        let s = self.spin_until(|s| s & status::BSY == 0);
        let _ = self.status(); // clears the drive's pending interrupt
        self.set_control(0);
        s.is_some_and(|s| s & (status::ERR | status::DF) == 0)
    }

    fn device_error(&self, op: BlockOp, status: u8) -> Error {
        let error = self.io.read8(self.cmd_port(REG_ERROR_FEATURES));
        Error::DeviceStatus {
            device: NAME,
            op: op.name(),
            status: u32::from(error) << 8 | u32::from(status),
        }
    }
}

impl<P: PortIo + Clone + Send + Sync + 'static> IdeDisk<P> {
    /// Probes `channel`: resets it, selects the drive, issues IDENTIFY DEVICE and reads the answer
    /// by PIO. [`Error::Absent`] if no controller decodes the ports (status reads 0xff) or no ATA
    /// drive answers. Leaves the drive's interrupt enabled (nIEN clear); the error status the
    /// device reports for a failed command comes back as `(error << 8) | status`. `dma` is the
    /// memory request buffers come from ([`BlockDevice::dma`]).
    pub fn probe(io: P, channel: IdeChannel, dma: &'static dyn DmaAllocator) -> Result<Self> {
        let shared = Shared {
            io,
            channel,
            counters: AtomicCounters::new(),
        };
        let identify = shared.identify_device()?;
        // The largest power of two the drive allows per data block, if it does blocks at all.
        let block = match identify.multiple_max {
            0 | 1 => None,
            m => {
                let n = 1u8 << (7 - m.leading_zeros());
                shared.set_multiple_mode(n).then_some(usize::from(n))
            }
        };
        Ok(Self {
            shared: Arc::new(shared),
            identify,
            phase: Phase::Idle,
            width: PioWidth::Bits16,
            multiple_block: block,
            use_multiple: block.is_some(),
            dma,
        })
    }

    /// Uses READ/WRITE MULTIPLE (one data block, one status read and one interrupt per
    /// [`multiple_block`](Self::multiple_block) sectors) if the drive took SET MULTIPLE MODE at
    /// probe (the default then), or READ/WRITE SECTORS (one per sector).
    pub fn set_multiple(&mut self, on: bool) {
        self.use_multiple = on && self.multiple_block.is_some();
    }

    /// Sectors per data block of READ/WRITE MULTIPLE, if the drive accepted a block size.
    pub fn multiple_block(&self) -> Option<usize> {
        self.multiple_block
    }

    fn block_sectors(&self) -> usize {
        match (self.use_multiple, self.multiple_block) {
            (true, Some(n)) => n,
            _ => 1,
        }
    }

    /// Chooses the data-register access width for reads and writes (16-bit after `probe`).
    pub fn set_pio_width(&mut self, width: PioWidth) {
        self.width = width;
    }

    /// The drive's IDENTIFY data.
    pub fn identify(&self) -> &Identify {
        &self.identify
    }

    /// Moves data while the drive asks for it; returns the finished request, if it finished.
    fn advance(&mut self) -> Option<BlockCompletion> {
        loop {
            let phase = core::mem::replace(&mut self.phase, Phase::Idle);
            match phase {
                Phase::Idle => return None,
                Phase::Flush(req) => {
                    let s = self.shared.status();
                    if s & status::BSY != 0 {
                        self.phase = Phase::Flush(req);
                        return None;
                    }
                    let result = if s & (status::ERR | status::DF) != 0 {
                        Err(self.shared.device_error(req.op, s))
                    } else {
                        Ok(())
                    };
                    return Some(complete(req, result));
                }
                Phase::Transfer {
                    mut req,
                    dir,
                    mut done,
                    total,
                } => {
                    let s = self.shared.status();
                    if s & status::BSY != 0 {
                        self.phase = Phase::Transfer {
                            req,
                            dir,
                            done,
                            total,
                        };
                        return None;
                    }
                    if s & (status::ERR | status::DF) != 0 {
                        let e = self.shared.device_error(req.op, s);
                        return Some(complete(req, Err(e)));
                    }
                    if s & status::DRQ != 0 && done < total {
                        // One data block: a sector, or up to the multiple-mode block size.
                        let n = self.block_sectors().min(total - done);
                        let range = done * ata::SECTOR_SIZE..(done + n) * ata::SECTOR_SIZE;
                        let port = self.shared.cmd_port(REG_DATA);
                        let io = &self.shared.io;
                        match (dir, self.width) {
                            (Direction::Read, PioWidth::Bits16) => {
                                io.read16_rep(port, &mut req.buf.as_mut_slice()[range]);
                            }
                            (Direction::Read, PioWidth::Bits32) => {
                                io.read32_rep(port, &mut req.buf.as_mut_slice()[range]);
                            }
                            (Direction::Write, PioWidth::Bits16) => {
                                io.write16_rep(port, &req.buf.as_slice()[range])
                            }
                            (Direction::Write, PioWidth::Bits32) => {
                                io.write32_rep(port, &req.buf.as_slice()[range])
                            }
                        }
                        self.shared.counters.copied((n * ata::SECTOR_SIZE) as u64);
                        done += n;
                        // A read is complete once its last sector is taken; a write once the drive
                        // has stored the last sector (BSY and DRQ clear again).
                        if dir == Direction::Read && done == total {
                            return Some(complete(req, Ok(())));
                        }
                        self.phase = Phase::Transfer {
                            req,
                            dir,
                            done,
                            total,
                        };
                        continue;
                    }
                    if s & status::DRQ == 0 && done == total {
                        return Some(complete(req, Ok(())));
                    }
                    if s & status::DRQ != 0 {
                        // The drive wants more data than the command asked for.
                        let e = Error::Protocol {
                            device: NAME,
                            what: "DRQ after the last sector",
                            value: u64::from(s),
                        };
                        return Some(complete(req, Err(e)));
                    }
                    self.phase = Phase::Transfer {
                        req,
                        dir,
                        done,
                        total,
                    };
                    return None;
                }
            }
        }
    }
}

fn complete(req: BlockRequest, result: Result<()>) -> BlockCompletion {
    BlockCompletion {
        tag: req.tag,
        op: req.op,
        buf: req.buf,
        result,
    }
}

impl<P: PortIo + Clone + Send + Sync + 'static> BlockDevice for IdeDisk<P> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> BlockInfo {
        BlockInfo {
            capacity_sectors: self.identify.sectors,
            sector_size: ata::SECTOR_SIZE,
            max_in_flight: 1,
            max_request_bytes: MAX_REQUEST_BYTES,
            read_only: false,
            flush: self.identify.flush,
        }
    }

    fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
        if let Err(error) = block::validate(&self.info(), &req) {
            return Err(Rejected { req, error });
        }
        if !matches!(self.phase, Phase::Idle) {
            return Err(Rejected {
                req,
                error: Error::QueueFull {
                    device: NAME,
                    in_flight: 1,
                },
            });
        }
        let dir = match req.op {
            BlockOp::Flush if !self.identify.flush => {
                return Err(Rejected {
                    req,
                    error: Error::Unsupported {
                        device: NAME,
                        op: "flush",
                    },
                });
            }
            BlockOp::Flush => {
                self.shared.write_taskfile(&TaskFile::flush(self.identify.lba48));
                self.phase = Phase::Flush(req);
                return Ok(());
            }
            BlockOp::Read => Direction::Read,
            BlockOp::Write => Direction::Write,
        };
        let total = req.buf.len() / ata::SECTOR_SIZE;
        let protocol = if self.block_sectors() > 1 {
            Protocol::PioMultiple
        } else {
            Protocol::Pio
        };
        let tf = match TaskFile::read_write(dir, protocol, req.sector, total as u32, self.identify.lba48) {
            Ok(tf) => tf,
            Err(_) => {
                let error = Error::OutOfRange {
                    sector: req.sector,
                    end: req.sector + total as u64,
                    capacity: self.identify.sectors,
                };
                return Err(Rejected { req, error });
            }
        };
        self.shared.write_taskfile(&tf);
        self.phase = Phase::Transfer {
            req,
            dir,
            done: 0,
            total,
        };
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<BlockCompletion>> {
        Ok(self.advance())
    }

    fn in_flight(&self) -> usize {
        usize::from(!matches!(self.phase, Phase::Idle))
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.shared.clone())
    }

    fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    fn dma(&self) -> &'static dyn DmaAllocator {
        self.dma
    }
}

#[cfg(test)]
mod tests;
