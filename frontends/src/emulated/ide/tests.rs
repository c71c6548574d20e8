//! The IDE driver against a model of an ATA drive on the primary channel: taskfile registers,
//! LBA28/LBA48 "previous" bytes, PIO data blocks with DRQ, an interrupt flag, and an error injector.

extern crate std;

use core::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::block::{BlockDevice, flush, read, write};
use crate::wait::fake::StepClock;

const SECTORS: u64 = 1 << 12;

#[derive(Debug, Default)]
struct Drive {
    disk: Vec<u8>,
    /// Register values, with the high ("previous") byte of each 16-bit LBA48 FIFO.
    features: [u8; 2],
    count: [u8; 2],
    lba: [u8; 6],
    device: u8,
    status: u8,
    error: u8,
    /// The data block being moved and where the transfer is.
    block: Vec<u8>,
    pos: usize,
    /// Remaining sectors and the next LBA of the running command.
    left: u32,
    next_lba: u64,
    writing: bool,
    irq: bool,
    /// Every command opcode seen, and the LBA/count it carried.
    commands: Vec<(u8, u64, u32)>,
    /// Fail writes touching this LBA with ABRT.
    fail_write_lba: Option<u64>,
    flushes: u32,
    data_reads: u32,
    dword_reads: u32,
    /// Block limit announced in IDENTIFY word 47 (0: no READ/WRITE MULTIPLE), the block size set
    /// by SET MULTIPLE MODE, and the sectors per data block of the running command.
    multiple_cap: u8,
    multiple: usize,
    per_block: usize,
}

impl Drive {
    fn new() -> Self {
        Self {
            disk: vec![0; SECTORS as usize * 512],
            status: status::DRDY,
            ..Self::default()
        }
    }

    fn write_shifted(reg: &mut [u8], v: u8) {
        reg.copy_within(0..reg.len() - 1, 1);
        reg[0] = v;
    }

    fn identify_block(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        if self.multiple_cap > 0 {
            b[94..96].copy_from_slice(&(0x8000 | u16::from(self.multiple_cap)).to_le_bytes());
        }
        let mut w = |i: usize, v: u16| b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        w(49, 1 << 9);
        w(60, SECTORS as u16);
        w(61, (SECTORS >> 16) as u16);
        w(83, (1 << 10) | (1 << 13));
        w(100, SECTORS as u16);
        w(101, (SECTORS >> 16) as u16);
        b
    }

    fn command(&mut self, op: u8) {
        let ext = matches!(
            op,
            ata::cmd::READ_SECTORS_EXT
                | ata::cmd::WRITE_SECTORS_EXT
                | ata::cmd::READ_MULTIPLE_EXT
                | ata::cmd::WRITE_MULTIPLE_EXT
                | ata::cmd::FLUSH_CACHE_EXT
        );
        let multiple = matches!(
            op,
            ata::cmd::READ_MULTIPLE
                | ata::cmd::READ_MULTIPLE_EXT
                | ata::cmd::WRITE_MULTIPLE
                | ata::cmd::WRITE_MULTIPLE_EXT
        );
        if multiple && self.multiple == 0 {
            return self.abort();
        }
        self.per_block = if multiple { self.multiple } else { 1 };
        // Register "FIFOs": index 0 = most recent (low byte), 1 = previous (high byte).
        let (lba, count) = if ext {
            let lba = u64::from_le_bytes([
                self.lba[0],
                self.lba[2],
                self.lba[4],
                self.lba[1],
                self.lba[3],
                self.lba[5],
                0,
                0,
            ]);
            let c = u32::from(u16::from_le_bytes([self.count[0], self.count[1]]));
            (lba, if c == 0 { 65_536 } else { c })
        } else {
            let lba = u64::from_le_bytes([
                self.lba[0],
                self.lba[2],
                self.lba[4],
                self.device & 0x0f,
                0,
                0,
                0,
                0,
            ]);
            let c = u32::from(self.count[0]);
            (lba, if c == 0 { 256 } else { c })
        };
        self.commands.push((op, lba, count));
        self.error = 0;
        match op {
            ata::cmd::SET_MULTIPLE => {
                let n = self.count[0];
                if self.multiple_cap == 0 || n > self.multiple_cap || !n.is_power_of_two() {
                    return self.abort();
                }
                self.multiple = usize::from(n);
                self.status = status::DRDY;
                self.irq = true;
            }
            ata::cmd::IDENTIFY => {
                self.block = self.identify_block();
                self.pos = 0;
                self.left = 1;
                self.writing = false;
                self.status = status::DRDY | status::DRQ;
                self.irq = true;
            }
            ata::cmd::READ_SECTORS
            | ata::cmd::READ_SECTORS_EXT
            | ata::cmd::READ_MULTIPLE
            | ata::cmd::READ_MULTIPLE_EXT => {
                self.left = count;
                self.next_lba = lba;
                self.writing = false;
                self.load_next();
            }
            ata::cmd::WRITE_SECTORS
            | ata::cmd::WRITE_SECTORS_EXT
            | ata::cmd::WRITE_MULTIPLE
            | ata::cmd::WRITE_MULTIPLE_EXT => {
                self.left = count;
                self.next_lba = lba;
                self.writing = true;
                self.block = vec![0; self.block_sectors() * 512];
                self.pos = 0;
                // No interrupt before the first block of a PIO write.
                self.status = status::DRDY | status::DRQ;
            }
            ata::cmd::FLUSH_CACHE | ata::cmd::FLUSH_CACHE_EXT => {
                self.flushes += 1;
                self.status = status::DRDY;
                self.irq = true;
            }
            _ => self.abort(),
        }
    }

    fn abort(&mut self) {
        self.error = 0x04; // ABRT
        self.status = status::DRDY | status::ERR;
        self.irq = true;
    }

    fn block_sectors(&self) -> usize {
        self.per_block.max(1).min(self.left as usize)
    }

    fn load_next(&mut self) {
        let at = self.next_lba as usize * 512;
        self.block = self.disk[at..at + self.block_sectors() * 512].to_vec();
        self.pos = 0;
        self.status = status::DRDY | status::DRQ;
        self.irq = true;
    }

    fn block_done(&mut self) {
        let n = self.block.len() / 512;
        if self.writing {
            for i in 0..n as u64 {
                if self.fail_write_lba == Some(self.next_lba + i) {
                    return self.abort();
                }
            }
            let at = self.next_lba as usize * 512;
            self.disk[at..at + n * 512].copy_from_slice(&self.block);
            self.left -= n as u32;
            self.next_lba += n as u64;
            self.pos = 0;
            self.block = vec![0; self.block_sectors() * 512];
            self.status = if self.left > 0 {
                status::DRDY | status::DRQ
            } else {
                status::DRDY
            };
            self.irq = true;
        } else {
            self.left -= n as u32;
            self.next_lba += n as u64;
            if self.left > 0 {
                self.load_next();
            } else {
                self.status = status::DRDY;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct FakePorts(Rc<RefCell<Drive>>);

// SAFETY-free fakes: the tests are single-threaded; Send/Sync are only needed to satisfy the
// IrqAck bound and no test moves the driver across threads.
// SAFETY: never shared across threads (see above).
unsafe impl Send for FakePorts {}
// SAFETY: as above.
unsafe impl Sync for FakePorts {}

const BASE: u16 = 0x1f0;
const CTRL: u16 = 0x3f6;

impl PortIo for FakePorts {
    fn read8(&self, port: u16) -> u8 {
        let mut d = self.0.borrow_mut();
        match port {
            CTRL => d.status,
            p if p == BASE + REG_STATUS_COMMAND => {
                d.irq = false;
                d.status
            }
            p if p == BASE + REG_ERROR_FEATURES => d.error,
            p if p == BASE + REG_LBA1 || p == BASE + REG_LBA2 => 0,
            _ => 0xff,
        }
    }

    fn write8(&self, port: u16, value: u8) {
        let mut d = self.0.borrow_mut();
        match port {
            CTRL => {}
            p if p == BASE + REG_ERROR_FEATURES => Drive::write_shifted(&mut d.features, value),
            p if p == BASE + REG_COUNT => Drive::write_shifted(&mut d.count, value),
            p if p == BASE + REG_LBA0 => Drive::write_shifted(&mut d.lba[0..2], value),
            p if p == BASE + REG_LBA1 => Drive::write_shifted(&mut d.lba[2..4], value),
            p if p == BASE + REG_LBA2 => Drive::write_shifted(&mut d.lba[4..6], value),
            p if p == BASE + REG_DEVICE => d.device = value,
            p if p == BASE + REG_STATUS_COMMAND => d.command(value),
            _ => panic!("write to unexpected port {port:#x}"),
        }
    }

    fn read16(&self, _: u16) -> u16 {
        panic!("the driver moves data with rep insw only")
    }

    fn write16(&self, _: u16, _: u16) {
        panic!("the driver moves data with rep outsw only")
    }

    fn read32(&self, _: u16) -> u32 {
        panic!("no 32-bit registers")
    }

    fn write32(&self, _: u16, _: u32) {
        panic!("no 32-bit registers")
    }

    fn read32_rep(&self, port: u16, buf: &mut [u8]) {
        self.0.borrow_mut().dword_reads += 1;
        self.read16_rep(port, buf);
    }

    fn write32_rep(&self, port: u16, buf: &[u8]) {
        self.write16_rep(port, buf);
    }

    fn read16_rep(&self, port: u16, buf: &mut [u8]) {
        assert_eq!(port, BASE + REG_DATA);
        let mut d = self.0.borrow_mut();
        assert!(d.status & status::DRQ != 0 && !d.writing, "data read without DRQ");
        d.data_reads += 1;
        let pos = d.pos;
        buf.copy_from_slice(&d.block[pos..pos + buf.len()]);
        d.pos += buf.len();
        if d.pos == d.block.len() {
            d.block_done();
        }
    }

    fn write16_rep(&self, port: u16, buf: &[u8]) {
        assert_eq!(port, BASE + REG_DATA);
        let mut d = self.0.borrow_mut();
        assert!(d.status & status::DRQ != 0 && d.writing, "data write without DRQ");
        let pos = d.pos;
        d.block[pos..pos + buf.len()].copy_from_slice(buf);
        d.pos += buf.len();
        if d.pos == d.block.len() {
            d.block_done();
        }
    }
}

fn disk() -> (IdeDisk<FakePorts>, Rc<RefCell<Drive>>) {
    let drive = Rc::new(RefCell::new(Drive::new()));
    let disk = IdeDisk::probe(
        FakePorts(drive.clone()),
        IdeChannel::PRIMARY_MASTER,
        crate::dma::fake::dma(),
    )
    .unwrap();
    (disk, drive)
}

#[test]
fn probe_reads_capacity_from_identify() {
    let (disk, drive) = disk();
    let info = disk.info();
    assert_eq!(info.capacity_sectors, SECTORS);
    assert_eq!((info.sector_size, info.max_in_flight), (512, 1));
    assert!(info.flush);
    assert_eq!(drive.borrow().commands, [(ata::cmd::IDENTIFY, 0, 256)]);
}

#[test]
fn absent_channel_floats_high() {
    #[derive(Debug, Clone)]
    struct Floating;
    impl PortIo for Floating {
        fn read8(&self, _: u16) -> u8 {
            0xff
        }
        fn write8(&self, _: u16, _: u8) {}
        fn read16(&self, _: u16) -> u16 {
            0xffff
        }
        fn write16(&self, _: u16, _: u16) {}
        fn read32(&self, _: u16) -> u32 {
            !0
        }
        fn write32(&self, _: u16, _: u32) {}
        fn read16_rep(&self, _: u16, buf: &mut [u8]) {
            buf.fill(0xff);
        }
        fn write16_rep(&self, _: u16, _: &[u8]) {}
        fn read32_rep(&self, _: u16, buf: &mut [u8]) {
            buf.fill(0xff);
        }
        fn write32_rep(&self, _: u16, _: &[u8]) {}
    }
    let e = IdeDisk::probe(Floating, IdeChannel::PRIMARY_MASTER, crate::dma::fake::dma()).unwrap_err();
    assert_eq!(e, Error::Absent { device: "ide" });
}

#[test]
fn write_then_read_round_trips_and_counts_copies() {
    let (mut disk, drive) = disk();
    let clock = StepClock::new(1);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 7) as u8).collect();
    write(&mut disk, &clock, 100, &data).unwrap();
    assert_eq!(&drive.borrow().disk[100 * 512..108 * 512], &data[..]);
    let back = read(&mut disk, &clock, 100, 4096).unwrap();
    assert_eq!(back.as_slice(), &data[..]);
    flush(&mut disk, &clock).unwrap();
    let d = drive.borrow();
    assert_eq!(d.flushes, 1);
    assert_eq!(
        d.commands[1..],
        [
            (ata::cmd::WRITE_SECTORS, 100, 8),
            (ata::cmd::READ_SECTORS, 100, 8),
            (ata::cmd::FLUSH_CACHE_EXT, 0, 65_536)
        ]
    );
    // One rep insw per sector, nothing else touches the data port.
    assert_eq!(d.data_reads, 1 + 8);
    let c = disk.counters();
    assert_eq!(c.bytes_copied, 2 * 4096);
    // IDENTIFY, write, read and flush each wrote the command register once.
    assert_eq!(c.notifications, 4);
}

#[test]
fn count_of_256_sectors_is_one_lba28_command() {
    let (mut disk, drive) = disk();
    let clock = StepClock::new(1);
    let data = vec![0x5au8; MAX_REQUEST_BYTES];
    write(&mut disk, &clock, 7, &data).unwrap();
    assert_eq!(
        drive.borrow().commands.last(),
        Some(&(ata::cmd::WRITE_SECTORS, 7, 256))
    );
    assert!(drive.borrow().disk[7 * 512..263 * 512].iter().all(|&b| b == 0x5a));
}

#[test]
fn device_error_is_surfaced_with_status_and_error_register() {
    let (mut disk, drive) = disk();
    let clock = StepClock::new(1);
    drive.borrow_mut().fail_write_lba = Some(12);
    let e = write(&mut disk, &clock, 10, &[1u8; 2048]).unwrap_err();
    assert_eq!(
        e,
        Error::DeviceStatus {
            device: "ide",
            op: "write",
            status: 0x04 << 8 | u32::from(status::DRDY | status::ERR)
        }
    );
    // The sectors before the failing one were written, the failing one and later ones not.
    let d = drive.borrow();
    assert!(d.disk[10 * 512..12 * 512].iter().all(|&b| b == 1));
    assert!(d.disk[12 * 512..14 * 512].iter().all(|&b| b == 0));
    drop(d);
    // The drive is usable afterwards.
    write(&mut disk, &clock, 0, &[2u8; 512]).unwrap();
    assert_eq!(drive.borrow().disk[0], 2);
}

#[test]
fn second_request_is_queue_full_and_out_of_range_is_rejected() {
    let (mut disk, _) = disk();
    let req = |sector| BlockRequest {
        tag: sector,
        op: BlockOp::Read,
        sector,
        buf: crate::dma::DmaBuf::new(crate::dma::fake::dma(), 512).unwrap(),
    };
    disk.submit(req(0)).unwrap();
    let r = disk.submit(req(1)).unwrap_err();
    assert!(matches!(r.error, Error::QueueFull { in_flight: 1, .. }));
    let done = disk.poll().unwrap().unwrap();
    assert_eq!((done.tag, done.result), (0, Ok(())));
    let r = disk.submit(req(SECTORS)).unwrap_err();
    assert!(matches!(r.error, Error::OutOfRange { .. }));
}

#[test]
fn interrupt_ack_reads_status_and_counts() {
    let (mut disk, drive) = disk();
    let ack = disk.irq_ack().unwrap();
    disk.submit(BlockRequest {
        tag: 1,
        op: BlockOp::Read,
        sector: 3,
        buf: crate::dma::DmaBuf::new(crate::dma::fake::dma(), 512).unwrap(),
    })
    .unwrap();
    assert!(drive.borrow().irq);
    assert!(ack.ack());
    assert!(!drive.borrow().irq, "reading the status register lowers INTRQ");
    assert_eq!(disk.counters().interrupts, 1);
    assert!(disk.poll().unwrap().is_some());
}

#[test]
fn thirty_two_bit_pio_moves_the_same_bytes() {
    let (mut disk, drive) = disk();
    disk.set_pio_width(PioWidth::Bits32);
    let clock = StepClock::new(1);
    let data: Vec<u8> = (0..1024u32).map(|i| (i ^ (i >> 3)) as u8).collect();
    write(&mut disk, &clock, 40, &data).unwrap();
    assert_eq!(&drive.borrow().disk[40 * 512..42 * 512], &data[..]);
    assert_eq!(read(&mut disk, &clock, 40, 1024).unwrap().as_slice(), &data[..]);
    assert_eq!(drive.borrow().dword_reads, 2, "one rep insd per sector");
}

#[test]
fn multiple_mode_moves_a_block_per_interrupt() {
    let drive = Rc::new(RefCell::new(Drive::new()));
    drive.borrow_mut().multiple_cap = 16;
    let mut disk = IdeDisk::probe(
        FakePorts(drive.clone()),
        IdeChannel::PRIMARY_MASTER,
        crate::dma::fake::dma(),
    )
    .unwrap();
    assert_eq!(disk.multiple_block(), Some(16));
    assert_eq!(drive.borrow().commands[1], (ata::cmd::SET_MULTIPLE, 0, 16));
    let clock = StepClock::new(1);
    let data: Vec<u8> = (0..20 * 512u32).map(|i| ((i * 31) >> 2) as u8).collect();
    write(&mut disk, &clock, 9, &data).unwrap();
    assert_eq!(&drive.borrow().disk[9 * 512..29 * 512], &data[..]);
    let reads_before = drive.borrow().data_reads;
    assert_eq!(
        read(&mut disk, &clock, 9, data.len()).unwrap().as_slice(),
        &data[..]
    );
    let d = drive.borrow();
    assert_eq!(
        d.data_reads - reads_before,
        2,
        "20 sectors = a block of 16 and one of 4"
    );
    assert_eq!(
        d.commands[2..],
        [
            (ata::cmd::WRITE_MULTIPLE, 9, 20),
            (ata::cmd::READ_MULTIPLE, 9, 20)
        ]
    );
    drop(d);
    disk.set_multiple(false);
    read(&mut disk, &clock, 9, 1024).unwrap();
    assert_eq!(
        drive.borrow().commands.last(),
        Some(&(ata::cmd::READ_SECTORS, 9, 2))
    );
}
