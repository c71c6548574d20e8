//! An ATA disk behind an AHCI host bus adapter (q35's ICH9 AHCI, 8086:2922), by DMA.
//!
//! The driver takes the first port with an ATA drive attached, gives it a command list (32 command
//! headers), a received-FIS area and one command table per slot (command FIS + a short PRDT), and
//! moves data by the HBA's DMA straight into the request's [`DmaBuf`]: the CPU copies nothing.
//! If the HBA and the drive both support native command queuing, reads and writes go out as READ /
//! WRITE FPDMA QUEUED with up to the drive's queue depth in flight; otherwise one READ / WRITE DMA
//! (EXT) at a time. Completion is seen in PxSACT (NCQ) or PxCI; the [`IrqAck`] clears the port's and
//! the HBA's interrupt status (which lowers the level-triggered INTx line) and keeps the bits for
//! the driver, which turns a task-file error into [`Error::DeviceStatus`] with the port's task-file
//! data (`error << 8 | status`) and restarts the port.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering, fence};

use super::ata::{self, Direction, Identify, Protocol, TaskFile};
use super::io::Mmio;
use crate::block::{self, BlockCompletion, BlockDevice, BlockInfo, BlockOp, BlockRequest, Rejected};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaAllocator, DmaBuf};
use crate::wait::{IrqAck, SharedIrqAck};
use crate::{Error, Result};
use ring_protocol::ring::IdSlabBox;

const NAME: &str = "ahci";

/// Generic host control registers (offsets in ABAR, PCI BAR 5).
pub mod hba {
    /// Host capabilities.
    pub const CAP: usize = 0x00;
    /// Global host control.
    pub const GHC: usize = 0x04;
    /// Interrupt status (one bit per port).
    pub const IS: usize = 0x08;
    /// Ports implemented.
    pub const PI: usize = 0x0c;
    /// CAP: 64-bit addressing.
    pub const CAP_S64A: u32 = 1 << 31;
    /// CAP: native command queuing.
    pub const CAP_SNCQ: u32 = 1 << 30;
    /// GHC: AHCI enable.
    pub const GHC_AE: u32 = 1 << 31;
    /// GHC: interrupt enable.
    pub const GHC_IE: u32 = 1 << 1;
    /// GHC: HBA reset.
    pub const GHC_HR: u32 = 1 << 0;
    /// Where port `n`'s registers start.
    pub const fn port(n: usize) -> usize {
        0x100 + 0x80 * n
    }
}

/// Port registers (offsets from [`hba::port`]).
pub mod port {
    /// Command list base (low, high).
    pub const CLB: usize = 0x00;
    /// Command list base, high 32 bits.
    pub const CLBU: usize = 0x04;
    /// FIS receive base.
    pub const FB: usize = 0x08;
    /// FIS receive base, high 32 bits.
    pub const FBU: usize = 0x0c;
    /// Interrupt status.
    pub const IS: usize = 0x10;
    /// Interrupt enable.
    pub const IE: usize = 0x14;
    /// Command and status.
    pub const CMD: usize = 0x18;
    /// Task file data: status (7:0), error (15:8).
    pub const TFD: usize = 0x20;
    /// Device signature.
    pub const SIG: usize = 0x24;
    /// SATA status (DET in 3:0).
    pub const SSTS: usize = 0x28;
    /// SATA error.
    pub const SERR: usize = 0x30;
    /// SATA active (NCQ tags outstanding).
    pub const SACT: usize = 0x34;
    /// Command issue.
    pub const CI: usize = 0x38;

    /// CMD: start.
    pub const CMD_ST: u32 = 1 << 0;
    /// CMD: spin-up device.
    pub const CMD_SUD: u32 = 1 << 1;
    /// CMD: power on device.
    pub const CMD_POD: u32 = 1 << 2;
    /// CMD: FIS receive enable.
    pub const CMD_FRE: u32 = 1 << 4;
    /// CMD: FIS receive running.
    pub const CMD_FR: u32 = 1 << 14;
    /// CMD: command list running.
    pub const CMD_CR: u32 = 1 << 15;

    /// IS/IE: device-to-host register FIS.
    pub const IS_DHRS: u32 = 1 << 0;
    /// IS/IE: PIO setup FIS.
    pub const IS_PSS: u32 = 1 << 1;
    /// IS/IE: DMA setup FIS.
    pub const IS_DSS: u32 = 1 << 2;
    /// IS/IE: set device bits FIS (NCQ completions).
    pub const IS_SDBS: u32 = 1 << 3;
    /// IS/IE: overflow.
    pub const IS_OFS: u32 = 1 << 24;
    /// IS/IE: interface non-fatal error.
    pub const IS_INFS: u32 = 1 << 26;
    /// IS/IE: interface fatal error.
    pub const IS_IFS: u32 = 1 << 27;
    /// IS/IE: host bus data error.
    pub const IS_HBDS: u32 = 1 << 28;
    /// IS/IE: host bus fatal error.
    pub const IS_HBFS: u32 = 1 << 29;
    /// IS/IE: task file error.
    pub const IS_TFES: u32 = 1 << 30;
    /// The bits that end the running commands with an error.
    pub const IS_ERRORS: u32 = IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_OFS;

    /// SSTS.DET: device present and communication established.
    pub const DET_PRESENT: u32 = 3;
    /// Signature of an ATA (not ATAPI) device.
    pub const SIG_ATA: u32 = 0x0000_0101;
}

/// Bytes of one command header in the command list.
pub const HEADER_SIZE: usize = 32;
/// Offset of the received-FIS area in the command-list page.
const FIS_OFFSET: usize = 0x400;
/// Bytes reserved per command table (the FIS area plus [`PRDT_ENTRIES`] PRDT entries).
pub const TABLE_SIZE: usize = 0x100;
/// Offset of the PRDT in a command table.
pub const PRDT_OFFSET: usize = 0x80;
/// PRDT entries per command table.
pub const PRDT_ENTRIES: usize = (TABLE_SIZE - PRDT_OFFSET) / 16;
/// Most bytes one PRDT entry describes.
pub const PRDT_MAX_BYTES: usize = 4 << 20;
/// Largest request the driver takes.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;
// Command tables are 128-byte aligned and hold the PRDT; the command list (32 headers) and the
// 256-byte received-FIS area share one page.
const _: () = assert!(PRDT_OFFSET + PRDT_ENTRIES * 16 == TABLE_SIZE && TABLE_SIZE.is_multiple_of(128));
const _: () = assert!(FIS_OFFSET >= 32 * HEADER_SIZE && FIS_OFFSET + 256 <= crate::dma::PAGE_SIZE);
/// H2D register FIS type.
const FIS_TYPE_REG_H2D: u8 = 0x27;
/// Command header: FIS length of a register FIS in dwords.
const CFL_REG_H2D: u32 = 5;
/// Command header: write (host to device).
const HEADER_WRITE: u32 = 1 << 6;
/// Register reads spent waiting for the HBA during bring-up and recovery.
const SPINS: u32 = 1_000_000;

/// One PRDT entry: data base address, and byte count - 1 (bit 0 set: the count is even).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrdtEntry {
    /// Bus address of the data.
    pub addr: u64,
    /// Bytes (even, 2..=4 MiB).
    pub bytes: u32,
}

impl PrdtEntry {
    /// The entry as the HBA reads it (16 bytes, little-endian dwords).
    pub fn encode(&self) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&self.addr.to_le_bytes());
        // DW3: byte count - 1 in bits 21:0; bit 31 would ask for an interrupt per entry (not used:
        // the command's completion interrupts anyway).
        e[12..16].copy_from_slice(&(self.bytes - 1).to_le_bytes());
        e
    }
}

/// Splits `len` bytes of contiguous bus memory at `addr` into PRDT entries of at most
/// [`PRDT_MAX_BYTES`]; `None` if it needs more than `max_entries`, or if `len` is zero or odd.
pub fn build_prdt(addr: u64, len: usize, max_entries: usize) -> Option<Vec<PrdtEntry>> {
    if len == 0 || !len.is_multiple_of(2) || len.div_ceil(PRDT_MAX_BYTES) > max_entries {
        return None;
    }
    Some(
        (0..len.div_ceil(PRDT_MAX_BYTES))
            .map(|i| {
                let off = i * PRDT_MAX_BYTES;
                PrdtEntry {
                    addr: addr + off as u64,
                    bytes: (len - off).min(PRDT_MAX_BYTES) as u32,
                }
            })
            .collect(),
    )
}

/// The host-to-device register FIS carrying `tf` (20 bytes, the command FIS of a command table).
pub fn h2d_fis(tf: &TaskFile) -> [u8; 20] {
    let lba = tf.lba_bytes();
    let [feat_lo, feat_hi] = tf.features.to_le_bytes();
    let [count_lo, count_hi] = tf.count.to_le_bytes();
    [
        FIS_TYPE_REG_H2D,
        0x80, // C: this FIS carries a command
        tf.command,
        feat_lo,
        lba[0],
        lba[1],
        lba[2],
        tf.device,
        lba[3],
        lba[4],
        lba[5],
        feat_hi,
        count_lo,
        count_hi,
        0, // ICC
        0, // control
        0,
        0,
        0,
        0,
    ]
}

/// A command header: flags/PRDT length, bytes transferred (written by the HBA), table address.
pub fn command_header(write: bool, prdt_len: usize, table: u64) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    let flags = CFL_REG_H2D | if write { HEADER_WRITE } else { 0 } | (prdt_len as u32) << 16;
    h[0..4].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&table.to_le_bytes());
    h
}

/// What the interrupt handler shares with the driver.
#[derive(Debug)]
struct Shared<M> {
    mmio: M,
    port: usize,
    /// Port interrupt-status bits the handler cleared and the driver has not looked at yet.
    pending: AtomicU32,
    counters: AtomicCounters,
}

impl<M: Mmio> Shared<M> {
    fn read(&self, reg: usize) -> u32 {
        self.mmio.read32(hba::port(self.port) + reg)
    }

    fn write(&self, reg: usize, value: u32) {
        self.mmio.write32(hba::port(self.port) + reg, value);
    }

    /// Clears the port's interrupt status and returns it, plus what the handler collected.
    fn take_status(&self) -> u32 {
        let is = self.read(port::IS);
        if is != 0 {
            self.write(port::IS, is);
        }
        // Relaxed: a plain mailbox of bits on one CPU; the handler's own register accesses order it.
        is | self.pending.swap(0, Ordering::Relaxed)
    }

    fn spin_until(&self, reg: usize, done: impl Fn(u32) -> bool) -> Option<u32> {
        (0..SPINS).map(|_| self.read(reg)).find(|&v| done(v))
    }
}

impl<M: Mmio + Send + Sync> IrqAck for Shared<M> {
    fn ack(&self) -> bool {
        let bit = 1u32 << self.port;
        if self.mmio.read32(hba::IS) & bit == 0 {
            return false;
        }
        // Port status first, then the HBA's summary bit, or the line would stay asserted.
        let is = self.read(port::IS);
        self.write(port::IS, is);
        self.mmio.write32(hba::IS, bit);
        // Relaxed: see take_status.
        self.pending.fetch_or(is, Ordering::Relaxed);
        self.counters.interrupted();
        true
    }
}

/// An ATA disk on an AHCI port.
#[derive(Debug)]
pub struct AhciDisk<M> {
    shared: Arc<Shared<M>>,
    identify: Identify,
    mem: Memory,
    /// The request in each slot (NCQ tag = slot), one id per command slot the drive may use.
    requests: IdSlabBox<BlockRequest>,
    /// Slots with a command outstanding, and whether they are queued (NCQ) commands.
    active: u32,
    queued: bool,
    /// Slots prepared but not yet handed to the HBA (a batch is open).
    unissued: u32,
    batching: bool,
    ncq: bool,
    done: VecDeque<BlockCompletion>,
    /// Set when a port restart failed: the port is stopped, every request fails.
    broken: bool,
    dma: &'static dyn DmaAllocator,
}

impl<M: Mmio + Clone + Send + Sync + 'static> AhciDisk<M> {
    /// Resets and enables the HBA behind `mmio` (its ABAR), takes the first implemented port with
    /// an ATA drive, starts it and identifies the drive. [`Error::Absent`] if no port has a drive.
    /// Interrupts are enabled at the HBA (GHC.IE and the port's PxIE). With `allow_ncq` false,
    /// reads and writes are non-queued DMA commands, one at a time, even if NCQ is available. The
    /// command list, tables and IDENTIFY buffer come from `dma`, as request buffers should.
    pub fn probe(mmio: M, dma: &'static dyn DmaAllocator, allow_ncq: bool) -> Result<Self> {
        let init = |reason| Error::Init { device: NAME, reason };
        // An HBA reset leaves every register at its default (and the ports idle).
        mmio.write32(hba::GHC, hba::GHC_AE);
        mmio.write32(hba::GHC, hba::GHC_AE | hba::GHC_HR);
        if !(0..SPINS).any(|_| mmio.read32(hba::GHC) & hba::GHC_HR == 0) {
            return Err(init("HBA reset did not complete"));
        }
        mmio.write32(hba::GHC, hba::GHC_AE);
        let cap = mmio.read32(hba::CAP);
        let pi = mmio.read32(hba::PI);
        // A drive whose link is up; its signature is only known once FIS receive runs (below).
        let found = (0..32)
            .filter(|p| pi & (1 << p) != 0)
            .find(|&p| mmio.read32(hba::port(p) + port::SSTS) & 0xf == port::DET_PRESENT);
        let Some(port_no) = found else {
            return Err(Error::Absent { device: NAME });
        };
        let slots = ((cap >> 8) & 0x1f) as usize + 1;
        let list = DmaBuf::new(dma, crate::dma::PAGE_SIZE)?;
        let tables = DmaBuf::new(dma, 32 * TABLE_SIZE)?;
        let needs64 = |b: &DmaBuf| b.bus_addr() + b.capacity() as u64 > 1 << 32;
        if cap & hba::CAP_S64A == 0 && (needs64(&list) || needs64(&tables)) {
            return Err(init("HBA has 32-bit DMA only and memory is above 4 GiB"));
        }
        let shared = Shared {
            mmio: mmio.clone(),
            port: port_no,
            pending: AtomicU32::new(0),
            counters: AtomicCounters::new(),
        };
        // The port must be idle before its bases change.
        shared.write(
            port::CMD,
            shared.read(port::CMD) & !(port::CMD_ST | port::CMD_FRE),
        );
        shared
            .spin_until(port::CMD, |c| c & (port::CMD_CR | port::CMD_FR) == 0)
            .ok_or(init("port did not stop"))?;
        let clb = list.bus_addr();
        let fb = clb + FIS_OFFSET as u64;
        shared.write(port::CLB, clb as u32);
        shared.write(port::CLBU, (clb >> 32) as u32);
        shared.write(port::FB, fb as u32);
        shared.write(port::FBU, (fb >> 32) as u32);
        shared.write(port::SERR, !0);
        shared.write(port::IS, !0);
        shared.write(
            port::IE,
            port::IS_DHRS | port::IS_PSS | port::IS_SDBS | port::IS_DSS | port::IS_ERRORS,
        );
        mmio.write32(hba::IS, !0);
        let cmd = shared.read(port::CMD) | port::CMD_SUD | port::CMD_POD | port::CMD_FRE;
        shared.write(port::CMD, cmd);
        shared
            .spin_until(port::TFD, |t| {
                t & u32::from(ata::status::BSY | ata::status::DRQ) == 0
            })
            .ok_or(init("drive stayed busy"))?;
        // The drive's first register FIS set the signature: ATAPI and port multipliers are not
        // disks this driver handles.
        let sig = shared.read(port::SIG);
        if sig != port::SIG_ATA {
            shared.write(port::CMD, cmd & !port::CMD_FRE);
            return Err(Error::Absent { device: NAME });
        }
        shared.write(port::CMD, cmd | port::CMD_ST);
        mmio.write32(hba::GHC, hba::GHC_AE | hba::GHC_IE);

        let mut mem = Memory { list, tables };
        let identify = identify_device(&shared, &mut mem, dma)?;
        let mut disk = Self {
            shared: Arc::new(shared),
            identify,
            mem,
            requests: IdSlabBox::new(0),
            active: 0,
            queued: false,
            unissued: 0,
            batching: false,
            ncq: false,
            done: VecDeque::new(),
            broken: false,
            dma,
        };
        disk.ncq =
            allow_ncq && cap & hba::CAP_SNCQ != 0 && disk.identify.ncq_depth.is_some() && disk.identify.lba48;
        let depth = if disk.ncq {
            slots.min(usize::from(disk.identify.ncq_depth.unwrap_or(1)))
        } else {
            1
        };
        disk.requests = IdSlabBox::new(depth);
        Ok(disk)
    }

    /// The drive's IDENTIFY data.
    pub fn identify(&self) -> &Identify {
        &self.identify
    }

    /// Whether reads and writes use native command queuing.
    pub fn uses_ncq(&self) -> bool {
        self.ncq
    }

    /// Hands slot `slot` to the HBA.
    fn issue(&mut self, slot: usize, queued: bool) {
        let bit = 1u32 << slot;
        self.active |= bit;
        self.queued = queued;
        self.unissued |= bit;
        if !self.batching {
            self.ring_doorbell();
        }
    }

    /// Hands every prepared slot to the HBA: one PxSACT write (queued commands) and one PxCI write
    /// for all of them.
    fn ring_doorbell(&mut self) {
        if self.unissued == 0 {
            return;
        }
        // Release: the command headers, tables and (for writes) data must be in memory before the
        // HBA sees the slots' bits and fetches them.
        fence(Ordering::Release);
        if self.queued {
            self.shared.write(port::SACT, self.unissued);
        }
        self.shared.write(port::CI, self.unissued);
        self.shared.counters.notified(1);
        self.unissued = 0;
    }

    /// Stops and restarts the port after an error (AHCI 1.3 §6.2.2): ST off, wait for CR to clear,
    /// clear SERR and IS, ST on.
    fn restart_port(&mut self) {
        let s = &self.shared;
        let cmd = s.read(port::CMD);
        s.write(port::CMD, cmd & !port::CMD_ST);
        let stopped = s.spin_until(port::CMD, |c| c & port::CMD_CR == 0).is_some();
        s.write(port::SERR, !0);
        s.write(port::IS, !0);
        let idle = s
            .spin_until(port::TFD, |t| {
                t & u32::from(ata::status::BSY | ata::status::DRQ) == 0
            })
            .is_some();
        s.write(port::CMD, s.read(port::CMD) | port::CMD_ST);
        self.broken = !(stopped && idle);
    }

    fn finish_slot(&mut self, slot: usize, result: Result<()>) {
        if let Ok(req) = self.requests.remove(slot as u64) {
            self.done.push_back(BlockCompletion {
                tag: req.tag,
                op: req.op,
                buf: req.buf,
                result,
            });
        }
        self.active &= !(1 << slot);
    }

    fn collect(&mut self) {
        if self.active == 0 {
            return;
        }
        let status = self.shared.take_status();
        if status & port::IS_ERRORS != 0 {
            let tfd = self.shared.read(port::TFD);
            for slot in 0..self.requests.capacity() {
                if self.active & (1 << slot) == 0 {
                    continue;
                }
                let op = self.requests.get(slot as u64).map_or("command", |r| r.op.name());
                // Every outstanding command ends: a queued error aborts the whole queue.
                let error = Error::DeviceStatus {
                    device: NAME,
                    op,
                    status: tfd & 0xffff,
                };
                self.finish_slot(slot, Err(error));
            }
            self.restart_port();
            return;
        }
        let still = if self.queued {
            self.shared.read(port::SACT)
        } else {
            self.shared.read(port::CI)
        };
        let finished = self.active & !still;
        if finished != 0 {
            // Acquire: the HBA wrote read data before clearing the slot's bit we just saw.
            fence(Ordering::Acquire);
        }
        for slot in 0..self.requests.capacity() {
            if finished & (1 << slot) != 0 {
                self.finish_slot(slot, Ok(()));
            }
        }
    }
}

/// The command list, received-FIS area and command tables the HBA reads.
#[derive(Debug)]
struct Memory {
    /// Command list (1 KiB) and received-FIS area (256 B at 0x400).
    list: DmaBuf,
    /// One [`TABLE_SIZE`] command table per slot.
    tables: DmaBuf,
}

impl Memory {
    /// Writes slot `slot`'s command header and table for `tf` over `data`.
    fn prepare(&mut self, slot: usize, tf: &TaskFile, write: bool, data: Option<&DmaBuf>) -> Result<()> {
        let prdt = match data {
            Some(buf) => build_prdt(buf.bus_addr(), buf.len(), PRDT_ENTRIES).ok_or(Error::BadLength {
                op: if write { "write" } else { "read" },
                len: buf.len(),
                unit: 2,
                max: PRDT_ENTRIES * PRDT_MAX_BYTES,
            })?,
            None => Vec::new(),
        };
        let table_bus = self.tables.bus_addr() + (slot * TABLE_SIZE) as u64;
        let table = &mut self.tables.as_mut_slice()[slot * TABLE_SIZE..(slot + 1) * TABLE_SIZE];
        table.fill(0);
        table[..20].copy_from_slice(&h2d_fis(tf));
        for (i, e) in prdt.iter().enumerate() {
            let at = PRDT_OFFSET + 16 * i;
            table[at..at + 16].copy_from_slice(&e.encode());
        }
        let header = command_header(write, prdt.len(), table_bus);
        self.list.as_mut_slice()[slot * HEADER_SIZE..(slot + 1) * HEADER_SIZE].copy_from_slice(&header);
        Ok(())
    }
}

/// Issues IDENTIFY DEVICE in slot 0 of a started port and waits for its data.
fn identify_device<M: Mmio>(
    s: &Shared<M>,
    mem: &mut Memory,
    dma: &'static dyn DmaAllocator,
) -> Result<Identify> {
    let fail = Error::Init {
        device: NAME,
        reason: "IDENTIFY DEVICE failed",
    };
    let buf = DmaBuf::new(dma, 512)?;
    mem.prepare(0, &TaskFile::identify(), false, Some(&buf))?;
    // Release: the command header and table are in memory before the HBA sees the slot's bit.
    fence(Ordering::Release);
    s.write(port::CI, 1);
    s.counters.notified(1);
    let finished = s.spin_until(port::CI, |ci| {
        ci & 1 == 0 || s.read(port::IS) & port::IS_ERRORS != 0
    });
    let status = s.take_status();
    if finished.is_none() || status & port::IS_ERRORS != 0 || s.read(port::CI) & 1 != 0 {
        return Err(fail);
    }
    // Acquire: the HBA's DMA into `buf` completed before it cleared the CI bit we saw.
    fence(Ordering::Acquire);
    Identify::parse(buf.as_slice()).map_err(|_| Error::Init {
        device: NAME,
        reason: "IDENTIFY data describes no LBA-addressable 512-byte-sector ATA disk",
    })
}

impl<M: Mmio + Clone + Send + Sync + 'static> BlockDevice for AhciDisk<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> BlockInfo {
        BlockInfo {
            capacity_sectors: self.identify.sectors,
            sector_size: ata::SECTOR_SIZE,
            max_in_flight: self.requests.capacity(),
            max_request_bytes: MAX_REQUEST_BYTES,
            read_only: false,
            flush: self.identify.flush,
        }
    }

    fn submit(&mut self, req: BlockRequest) -> Result<(), Rejected> {
        if let Err(error) = block::validate(&self.info(), &req) {
            return Err(Rejected { req, error });
        }
        if self.broken {
            return Err(Rejected {
                req,
                error: Error::Init {
                    device: NAME,
                    reason: "port could not be restarted after an error",
                },
            });
        }
        let queued = self.ncq && req.op != BlockOp::Flush;
        let in_flight = self.active.count_ones() as usize;
        // Queued and non-queued commands never mix; a non-queued command runs alone.
        let free = self.requests.next_id().map(|s| s as usize);
        let slot = match free {
            Some(s) if in_flight == 0 || (queued && self.queued) => s,
            _ => {
                return Err(Rejected {
                    req,
                    error: Error::QueueFull {
                        device: NAME,
                        in_flight,
                    },
                });
            }
        };
        let (tf, write) = match req.op {
            BlockOp::Flush if !self.identify.flush => {
                let error = Error::Unsupported {
                    device: NAME,
                    op: "flush",
                };
                return Err(Rejected { req, error });
            }
            BlockOp::Flush => (TaskFile::flush(self.identify.lba48), false),
            BlockOp::Read | BlockOp::Write => {
                let dir = if req.op == BlockOp::Read {
                    Direction::Read
                } else {
                    Direction::Write
                };
                let protocol = if queued {
                    Protocol::Ncq(slot as u8)
                } else {
                    Protocol::Dma
                };
                let count = (req.buf.len() / ata::SECTOR_SIZE) as u32;
                match TaskFile::read_write(dir, protocol, req.sector, count, self.identify.lba48) {
                    Ok(tf) => (tf, dir == Direction::Write),
                    Err(_) => {
                        let error = Error::OutOfRange {
                            sector: req.sector,
                            end: req.sector + u64::from(count),
                            capacity: self.identify.sectors,
                        };
                        return Err(Rejected { req, error });
                    }
                }
            }
        };
        let data = (req.op != BlockOp::Flush).then_some(&req.buf);
        if let Err(error) = self.mem.prepare(slot, &tf, write, data) {
            return Err(Rejected { req, error });
        }
        // The slot `next_id` named: nothing touched the slab since.
        let stored = self.requests.insert(req);
        debug_assert_eq!(stored, Ok(slot as u32));
        self.issue(slot, queued);
        Ok(())
    }

    fn poll(&mut self) -> Result<Option<BlockCompletion>> {
        // Whoever polls wants progress: commands held back by an open batch go out now.
        self.ring_doorbell();
        if self.done.is_empty() {
            self.collect();
        }
        Ok(self.done.pop_front())
    }

    fn in_flight(&self) -> usize {
        self.active.count_ones() as usize + self.done.len()
    }

    fn set_batching(&mut self, on: bool) {
        self.batching = on;
        if !on {
            self.ring_doorbell();
        }
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
mod hba_model;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prdt_splits_at_4_mib_and_rejects_odd_or_oversized() {
        let p = build_prdt(0x1_0000_0000, 4096, 8).unwrap();
        assert_eq!(
            p,
            [PrdtEntry {
                addr: 0x1_0000_0000,
                bytes: 4096
            }]
        );
        assert_eq!(p[0].encode()[12..16], 4095u32.to_le_bytes());
        assert_eq!(&p[0].encode()[0..8], &0x1_0000_0000u64.to_le_bytes());
        let p = build_prdt(0x1000, PRDT_MAX_BYTES + 512, 8).unwrap();
        assert_eq!(
            p,
            [
                PrdtEntry {
                    addr: 0x1000,
                    bytes: PRDT_MAX_BYTES as u32
                },
                PrdtEntry {
                    addr: 0x1000 + PRDT_MAX_BYTES as u64,
                    bytes: 512
                }
            ]
        );
        assert_eq!(build_prdt(0x1000, 3 * PRDT_MAX_BYTES, 2), None);
        assert_eq!(build_prdt(0x1000, 511, 8), None);
        assert_eq!(build_prdt(0x1000, 0, 8), None);
        assert_eq!(PRDT_ENTRIES, 8);
    }

    #[test]
    fn fis_carries_lba48_ncq_fields_in_place() {
        let tf =
            TaskFile::read_write(Direction::Write, Protocol::Ncq(9), 0x0102_0304_0506, 16, true).unwrap();
        let f = h2d_fis(&tf);
        assert_eq!(&f[..4], &[0x27, 0x80, ata::cmd::WRITE_FPDMA_QUEUED, 16]);
        assert_eq!(&f[4..7], &[0x06, 0x05, 0x04]);
        assert_eq!(f[7], ata::DEVICE_LBA);
        assert_eq!(&f[8..11], &[0x03, 0x02, 0x01]);
        assert_eq!((f[11], f[12], f[13]), (0, 9 << 3, 0));
    }

    #[test]
    fn header_has_fis_length_write_bit_prdt_count_and_table() {
        let h = command_header(true, 2, 0x1234_5680);
        assert_eq!(
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            5 | 1 << 6 | 2 << 16
        );
        assert_eq!(
            u32::from_le_bytes(h[4..8].try_into().unwrap()),
            0,
            "PRDBC starts at 0"
        );
        assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), 0x1234_5680);
        let h = command_header(false, 0, 0x100);
        assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), 5);
    }
}
