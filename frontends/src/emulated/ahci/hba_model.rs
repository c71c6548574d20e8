//! The AHCI driver against a model of a one-port HBA with an NCQ-capable ATA disk: it walks the
//! command list, command tables and PRDTs the driver built in (fake) DMA memory, moves the data,
//! completes one command each time the driver looks at PxCI / PxSACT (newest first, to exercise
//! out-of-order completion), and can fail writes to one sector with a task-file error.

extern crate std;

use core::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::block::{read, write};
use crate::dma::fake::BUS_OFFSET;
use crate::wait::fake::StepClock;

const SECTORS: u64 = 4096;
const P0: usize = 0x100;

#[derive(Debug, Default)]
struct Hba {
    ghc: u32,
    is: u32,
    clb: u64,
    fb: u64,
    pis: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sig: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    disk: Vec<u8>,
    /// Slots issued and not yet executed.
    issued: Vec<usize>,
    /// Writes touching this LBA fail with ABRT.
    fail_write_lba: Option<u64>,
    /// Register writes to PxCI, commands seen (opcode, lba, sectors), port restarts.
    ci_writes: u32,
    commands: Vec<(u8, u64, u32)>,
    restarts: u32,
    halted: bool,
}

/// Reads or writes fake DMA memory at a bus address.
fn dma<'a>(bus: u64, len: usize) -> &'a mut [u8] {
    let virt = (bus - BUS_OFFSET) as *mut u8;
    // SAFETY: the fake allocator hands out heap memory at `bus - BUS_OFFSET`; the driver gave the
    // model these addresses for exactly these lengths and does not touch the memory meanwhile
    // (single thread, and the model only runs inside the driver's register accesses).
    unsafe { core::slice::from_raw_parts_mut(virt, len) }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Hba {
    fn new() -> Self {
        Self {
            disk: vec![0; SECTORS as usize * 512],
            tfd: 0x7f,
            sig: !0,
            ..Self::default()
        }
    }

    fn identify() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let mut w = |i: usize, v: u16| b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        w(49, 1 << 9);
        w(60, SECTORS as u16);
        w(75, 31);
        w(76, 1 << 8);
        w(83, (1 << 10) | (1 << 13));
        w(100, SECTORS as u16);
        b
    }

    /// Executes the command in `slot`; false if it failed (the port halts).
    fn execute(&mut self, slot: usize) -> bool {
        let header = dma(self.clb + (slot * HEADER_SIZE) as u64, HEADER_SIZE).to_vec();
        let flags = le32(&header, 0);
        let prdtl = (flags >> 16) as usize;
        let table_bus = u64::from(le32(&header, 8)) | u64::from(le32(&header, 12)) << 32;
        let table = dma(table_bus, PRDT_OFFSET + 16 * prdtl).to_vec();
        let fis = &table[..20];
        assert_eq!((fis[0], fis[1]), (0x27, 0x80), "a command FIS");
        let lba = u64::from_le_bytes([fis[4], fis[5], fis[6], fis[8], fis[9], fis[10], 0, 0]);
        let (command, count) = match fis[2] {
            c @ (ata::cmd::READ_FPDMA_QUEUED | ata::cmd::WRITE_FPDMA_QUEUED) => {
                assert_eq!(usize::from(fis[12] >> 3), slot, "NCQ tag = slot");
                (c, u32::from(u16::from_le_bytes([fis[3], fis[11]])))
            }
            c => (c, u32::from(u16::from_le_bytes([fis[12], fis[13]]))),
        };
        self.commands.push((command, lba, count));
        let mut data = Vec::new();
        let prdt: Vec<(u64, usize)> = (0..prdtl)
            .map(|i| {
                let e = &table[PRDT_OFFSET + 16 * i..PRDT_OFFSET + 16 * i + 16];
                let addr = u64::from(le32(e, 0)) | u64::from(le32(e, 4)) << 32;
                (addr, (le32(e, 12) & 0x3f_ffff) as usize + 1)
            })
            .collect();
        let write = flags & HEADER_WRITE != 0;
        let range = lba as usize * 512..(lba as usize + count as usize) * 512;
        match command {
            ata::cmd::IDENTIFY => data = Self::identify(),
            ata::cmd::READ_FPDMA_QUEUED | ata::cmd::READ_DMA_EXT | ata::cmd::READ_DMA => {
                assert!(!write);
                data = self.disk[range].to_vec();
            }
            ata::cmd::WRITE_FPDMA_QUEUED | ata::cmd::WRITE_DMA_EXT | ata::cmd::WRITE_DMA => {
                assert!(write, "write commands carry the W bit");
                if self
                    .fail_write_lba
                    .is_some_and(|f| range.contains(&(f as usize * 512)))
                {
                    self.tfd = 0x0441;
                    self.pis |= port::IS_TFES;
                    self.is |= 1;
                    self.halted = true;
                    return false;
                }
                let mut off = range.start;
                for &(addr, len) in &prdt {
                    self.disk[off..off + len].copy_from_slice(dma(addr, len));
                    off += len;
                }
                assert_eq!(off, range.end, "PRDT covers the transfer");
            }
            ata::cmd::FLUSH_CACHE_EXT => {}
            other => panic!("unexpected command {other:#x}"),
        }
        let mut off = 0;
        for &(addr, len) in &prdt {
            if off < data.len() {
                dma(addr, len).copy_from_slice(&data[off..off + len]);
            }
            off += len;
        }
        self.pis |= if command == ata::cmd::READ_FPDMA_QUEUED || command == ata::cmd::WRITE_FPDMA_QUEUED {
            port::IS_SDBS
        } else {
            port::IS_DHRS
        };
        self.is |= 1;
        true
    }

    /// Runs the newest issued command (one per look at PxCI / PxSACT, so completions trickle in
    /// newest first).
    fn progress(&mut self) {
        if self.halted {
            return;
        }
        if let Some(slot) = self.issued.pop()
            && self.execute(slot)
        {
            self.ci &= !(1 << slot);
            self.sact &= !(1 << slot);
        }
    }
}

#[derive(Debug, Clone)]
struct FakeMmio(Rc<RefCell<Hba>>);

// SAFETY: the tests are single-threaded; Send/Sync only satisfy the IrqAck bound.
unsafe impl Send for FakeMmio {}
// SAFETY: as above.
unsafe impl Sync for FakeMmio {}

impl Mmio for FakeMmio {
    fn read32(&self, offset: usize) -> u32 {
        let mut h = self.0.borrow_mut();
        match offset {
            hba::CAP => hba::CAP_S64A | hba::CAP_SNCQ | 31 << 8,
            hba::GHC => h.ghc,
            hba::IS => h.is,
            hba::PI => 1,
            o if o == P0 + port::IS => h.pis,
            o if o == P0 + port::CMD => h.cmd,
            o if o == P0 + port::TFD => h.tfd,
            o if o == P0 + port::SIG => h.sig,
            o if o == P0 + port::SSTS => port::DET_PRESENT,
            o if o == P0 + port::SACT => {
                h.progress();
                h.sact
            }
            o if o == P0 + port::CI => {
                h.progress();
                h.ci
            }
            o => panic!("read of unexpected register {o:#x}"),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut h = self.0.borrow_mut();
        match offset {
            hba::GHC => h.ghc = value & !hba::GHC_HR, // reset completes at once
            hba::IS => h.is &= !value,
            o if o == P0 + port::CLB => h.clb = h.clb & !0xffff_ffff | u64::from(value),
            o if o == P0 + port::CLBU => h.clb = h.clb & 0xffff_ffff | u64::from(value) << 32,
            o if o == P0 + port::FB => h.fb = h.fb & !0xffff_ffff | u64::from(value),
            o if o == P0 + port::FBU => h.fb = h.fb & 0xffff_ffff | u64::from(value) << 32,
            o if o == P0 + port::IS => h.pis &= !value,
            o if o == P0 + port::IE => h.ie = value,
            o if o == P0 + port::SERR => h.serr &= !value,
            o if o == P0 + port::CMD => {
                let was_running = h.cmd & port::CMD_ST != 0;
                let fr = if value & port::CMD_FRE != 0 {
                    port::CMD_FR
                } else {
                    0
                };
                let cr = if value & port::CMD_ST != 0 {
                    port::CMD_CR
                } else {
                    0
                };
                if value & port::CMD_FRE != 0 && h.sig == !0 {
                    h.sig = port::SIG_ATA;
                    h.tfd = 0x50;
                }
                if was_running && value & port::CMD_ST == 0 {
                    // Stopping the port clears what was outstanding, and the error state.
                    h.ci = 0;
                    h.sact = 0;
                    h.issued.clear();
                    h.halted = false;
                    h.tfd = 0x50;
                    h.restarts += 1;
                }
                h.cmd = value & !(port::CMD_FR | port::CMD_CR) | fr | cr;
            }
            o if o == P0 + port::SACT => h.sact |= value,
            o if o == P0 + port::CI => {
                assert!(h.cmd & port::CMD_ST != 0, "command issued on a stopped port");
                h.ci_writes += 1;
                h.ci |= value;
                for slot in 0..32 {
                    if value & (1 << slot) != 0 {
                        h.issued.push(slot);
                    }
                }
            }
            o => panic!("write of unexpected register {o:#x}"),
        }
    }
}

fn disk(ncq: bool) -> (AhciDisk<FakeMmio>, Rc<RefCell<Hba>>) {
    let hba = Rc::new(RefCell::new(Hba::new()));
    let disk = AhciDisk::probe(FakeMmio(hba.clone()), crate::dma::fake::dma(), ncq).unwrap();
    (disk, hba)
}

fn req(tag: u64, op: BlockOp, sector: u64, fill: u8) -> BlockRequest {
    let mut buf = DmaBuf::new(crate::dma::fake::dma(), 4096).unwrap();
    buf.as_mut_slice().fill(fill);
    BlockRequest { tag, op, sector, buf }
}

#[test]
fn probe_identifies_and_enables_ncq() {
    let (disk, hba) = disk(true);
    let info = disk.info();
    assert_eq!((info.capacity_sectors, info.max_in_flight), (SECTORS, 32));
    assert!(disk.uses_ncq() && info.flush);
    let h = hba.borrow();
    assert_eq!(h.commands, [(ata::cmd::IDENTIFY, 0, 0)]);
    assert!(h.cmd & port::CMD_ST != 0 && h.ghc & hba::GHC_IE != 0);
}

#[test]
fn round_trip_uses_queued_commands_and_no_cpu_copies() {
    let (mut disk, hba) = disk(true);
    let clock = StepClock::new(1);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    write(&mut disk, &clock, 100, &data).unwrap();
    assert_eq!(&hba.borrow().disk[100 * 512..116 * 512], &data[..]);
    assert_eq!(read(&mut disk, &clock, 100, 8192).unwrap().as_slice(), &data[..]);
    crate::block::flush(&mut disk, &clock).unwrap();
    let h = hba.borrow();
    assert_eq!(
        h.commands[1..],
        [
            (ata::cmd::WRITE_FPDMA_QUEUED, 100, 16),
            (ata::cmd::READ_FPDMA_QUEUED, 100, 16),
            (ata::cmd::FLUSH_CACHE_EXT, 0, 0)
        ]
    );
    // IDENTIFY, write, read and flush each rang the doorbell once; the HBA moved all data.
    let c = disk.counters();
    assert_eq!((c.notifications, c.bytes_copied), (4, 0));
}

#[test]
fn a_batch_of_32_goes_out_with_one_doorbell_and_completes_out_of_order() {
    let (mut disk, hba) = disk(true);
    for s in 0..32u64 {
        let off = (s * 8) as usize * 512;
        hba.borrow_mut().disk[off..off + 4096].fill(s as u8 + 1);
    }
    let doorbells = hba.borrow().ci_writes;
    let notified = disk.counters().notifications;
    disk.set_batching(true);
    for s in 0..32u64 {
        disk.submit(req(1000 + s, BlockOp::Read, s * 8, 0)).unwrap();
    }
    let r = disk.submit(req(99, BlockOp::Read, 0, 0)).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { in_flight: 32, .. }));
    assert_eq!(
        hba.borrow().ci_writes,
        doorbells,
        "held back while the batch is open"
    );
    disk.set_batching(false);
    assert_eq!(hba.borrow().ci_writes, doorbells + 1);
    let mut tags = Vec::new();
    for _ in 0..100 {
        let Some(c) = disk.poll().unwrap() else { continue };
        assert_eq!(c.result, Ok(()));
        let s = c.tag - 1000;
        assert!(
            c.buf.as_slice().iter().all(|&b| b == s as u8 + 1),
            "tag {} got its own data",
            c.tag
        );
        tags.push(c.tag);
    }
    assert_eq!(tags.len(), 32);
    assert_eq!(tags[0], 1031, "the model completes newest first");
    assert_eq!(disk.in_flight(), 0);
    assert_eq!(disk.counters().notifications, notified + 1);
}

#[test]
fn a_task_file_error_fails_the_queue_and_the_port_recovers() {
    let (mut disk, hba) = disk(true);
    hba.borrow_mut().fail_write_lba = Some(8);
    disk.set_batching(true);
    disk.submit(req(1, BlockOp::Write, 0, 0xaa)).unwrap();
    disk.submit(req(2, BlockOp::Write, 8, 0xbb)).unwrap();
    disk.set_batching(false);
    let mut results = Vec::new();
    for _ in 0..10 {
        if let Some(c) = disk.poll().unwrap() {
            results.push((c.tag, c.result));
        }
    }
    // Newest first: tag 2 (the failing one) halts the port with tag 1 still outstanding; both end.
    results.sort_by_key(|r| r.0);
    let e = Error::DeviceStatus {
        device: "ahci",
        op: "write",
        status: 0x441,
    };
    assert_eq!(results, [(1, Err(e.clone())), (2, Err(e))]);
    assert_eq!(hba.borrow().restarts, 1);
    assert_eq!(disk.in_flight(), 0);
    let clock = StepClock::new(1);
    hba.borrow_mut().fail_write_lba = None;
    write(&mut disk, &clock, 8, &[0xcc; 4096]).unwrap();
    assert!(hba.borrow().disk[8 * 512..16 * 512].iter().all(|&b| b == 0xcc));
}

#[test]
fn without_ncq_one_dma_command_at_a_time() {
    let (mut disk, hba) = disk(false);
    assert_eq!(disk.info().max_in_flight, 1);
    let clock = StepClock::new(1);
    write(&mut disk, &clock, 3, &[5u8; 512]).unwrap();
    disk.submit(req(7, BlockOp::Read, 0, 0)).unwrap();
    let r = disk.submit(req(8, BlockOp::Read, 8, 0)).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { .. }));
    assert_eq!(disk.poll().unwrap().map(|c| c.tag), Some(7));
    let h = hba.borrow();
    assert_eq!(
        h.commands[1..],
        [(ata::cmd::WRITE_DMA, 3, 1), (ata::cmd::READ_DMA, 0, 8)]
    );
}
