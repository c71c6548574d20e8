//! The Intel 82540EM gigabit controller (QEMU `-device e1000`, 8086:100e), with legacy descriptor
//! rings in DMA memory.
//!
//! Transmit copies the frame into the slot's buffer, fills the descriptor (end of packet, insert
//! FCS, report status) and moves the tail register: one register write per frame. Receive takes
//! frames whose descriptor the controller marked done, copies them out, and hands descriptors back
//! to the controller by moving the receive tail every [`RX_RETURN_BATCH`] frames. The MAC comes
//! from the EEPROM (through EERD) and is programmed into receive address 0. The [`IrqAck`] reads
//! ICR, which clears the cause bits and lowers the level-triggered INTx line.
//!
//! Seen with QEMU 10: its model holds received frames back for one second (virtual time) after
//! every RCTL write, so the first echo of a fresh device takes about a second; nothing is lost.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, Ordering, fence};

use super::io::Mmio;
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaAllocator, DmaBuf};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::{IrqAck, SharedIrqAck};
use crate::{Error, Result};

const NAME: &str = "e1000";

/// Register offsets in BAR 0.
pub mod reg {
    /// Device control.
    pub const CTRL: usize = 0x0000;
    /// Device status.
    pub const STATUS: usize = 0x0008;
    /// EEPROM read.
    pub const EERD: usize = 0x0014;
    /// Interrupt cause read (clears on read).
    pub const ICR: usize = 0x00c0;
    /// Interrupt mask set.
    pub const IMS: usize = 0x00d0;
    /// Interrupt mask clear.
    pub const IMC: usize = 0x00d8;
    /// Receive control.
    pub const RCTL: usize = 0x0100;
    /// Transmit control.
    pub const TCTL: usize = 0x0400;
    /// Transmit inter-packet gap.
    pub const TIPG: usize = 0x0410;
    /// Receive descriptor base low/high, length, head, tail.
    pub const RDBAL: usize = 0x2800;
    /// Receive descriptor base, high 32 bits.
    pub const RDBAH: usize = 0x2804;
    /// Receive descriptor ring length in bytes.
    pub const RDLEN: usize = 0x2808;
    /// Receive head.
    pub const RDH: usize = 0x2810;
    /// Receive tail.
    pub const RDT: usize = 0x2818;
    /// Transmit descriptor base low.
    pub const TDBAL: usize = 0x3800;
    /// Transmit descriptor base, high 32 bits.
    pub const TDBAH: usize = 0x3804;
    /// Transmit descriptor ring length in bytes.
    pub const TDLEN: usize = 0x3808;
    /// Transmit head.
    pub const TDH: usize = 0x3810;
    /// Transmit tail.
    pub const TDT: usize = 0x3818;
    /// Multicast table array (128 registers).
    pub const MTA: usize = 0x5200;
    /// Receive address 0, low 32 bits of the MAC.
    pub const RAL0: usize = 0x5400;
    /// Receive address 0, high 16 bits of the MAC and the valid bit.
    pub const RAH0: usize = 0x5404;
}

const CTRL_ASDE: u32 = 1 << 5;
const CTRL_SLU: u32 = 1 << 6;
const CTRL_RST: u32 = 1 << 26;
const CTRL_PHY_RST: u32 = 1 << 31;
const CTRL_LRST: u32 = 1 << 3;
const STATUS_LU: u32 = 1 << 1;
const EERD_START: u32 = 1 << 0;
const EERD_DONE: u32 = 1 << 4;
const RAH_AV: u32 = 1 << 31;
/// RCTL: enable, broadcast accept, strip CRC; buffer size 2048 (BSIZE = 00, BSEX = 0).
const RCTL_EN: u32 = 1 << 1;
const RCTL_BAM: u32 = 1 << 15;
const RCTL_SECRC: u32 = 1 << 26;
/// TCTL: enable, pad short packets, collision threshold 15, collision distance 64 (full duplex).
const TCTL_EN: u32 = 1 << 1;
const TCTL_PSP: u32 = 1 << 3;
const TCTL_CT: u32 = 0x0f << 4;
const TCTL_COLD: u32 = 0x40 << 12;
/// TIPG for IEEE 802.3 copper: IPGT 10, IPGR1 8, IPGR2 6.
const TIPG_COPPER: u32 = 10 | 8 << 10 | 6 << 20;
/// Interrupt causes.
pub const ICR_TXDW: u32 = 1 << 0;
/// Link status change.
pub const ICR_LSC: u32 = 1 << 2;
/// Receive descriptor minimum threshold.
pub const ICR_RXDMT0: u32 = 1 << 4;
/// Receiver overrun.
pub const ICR_RXO: u32 = 1 << 6;
/// Receive timer (a frame arrived).
pub const ICR_RXT0: u32 = 1 << 7;

/// Descriptor command: end of packet, insert FCS, report status.
const TX_CMD_EOP: u8 = 1 << 0;
const TX_CMD_IFCS: u8 = 1 << 1;
const TX_CMD_RS: u8 = 1 << 3;
/// Descriptor status: done.
const DESC_DD: u8 = 1 << 0;
/// Receive descriptor status: end of packet.
const RX_EOP: u8 = 1 << 1;

/// Descriptors per ring (a multiple of 8: ring lengths are multiples of 128 bytes).
pub const RING_SIZE: usize = 64;
/// Bytes per descriptor.
pub const DESC_SIZE: usize = 16;
/// Bytes per packet buffer (RCTL.BSIZE 2048).
pub const BUF_SIZE: usize = 2048;
// Ring lengths are multiples of 128 bytes; a frame fits one buffer.
const _: () = assert!((RING_SIZE * DESC_SIZE).is_multiple_of(128) && RING_SIZE.is_power_of_two());
const _: () = assert!(ETH_HEADER_LEN + MTU <= BUF_SIZE);

/// Received descriptors handed back per tail write.
pub const RX_RETURN_BATCH: usize = 8;
/// Ethernet payload limit.
const MTU: usize = 1500;
const SPINS: u32 = 1_000_000;

/// Free-running producer/consumer positions over a ring of `size` (a power of two) slots: `next`
/// is where the producer writes next, `clean` the oldest slot not yet reclaimed. The slot of a
/// position is `pos % size`; `next - clean` slots are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIndex {
    size: usize,
    next: usize,
    clean: usize,
}

impl RingIndex {
    /// An empty ring of `size` slots (a power of two).
    pub const fn new(size: usize) -> Self {
        assert!(size.is_power_of_two());
        Self {
            size,
            next: 0,
            clean: 0,
        }
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.next.wrapping_sub(self.clean)
    }

    /// Slots free. The hardware tail may never catch up with its head, so one slot stays unused:
    /// a ring of N slots holds N - 1.
    pub fn free(&self) -> usize {
        self.size - 1 - self.used()
    }

    /// The slot the producer fills next, if there is room.
    pub fn next_slot(&self) -> Option<usize> {
        (self.free() > 0).then_some(self.next % self.size)
    }

    /// The producer filled its slot; returns the new tail value for the hardware.
    pub fn produce(&mut self) -> usize {
        debug_assert!(self.free() > 0);
        self.next = self.next.wrapping_add(1);
        self.next % self.size
    }

    /// The oldest slot in use, if any.
    pub fn oldest(&self) -> Option<usize> {
        (self.used() > 0).then_some(self.clean % self.size)
    }

    /// The oldest slot was reclaimed.
    pub fn reclaim(&mut self) {
        debug_assert!(self.used() > 0);
        self.clean = self.clean.wrapping_add(1);
    }
}

/// A legacy transmit descriptor.
fn tx_desc(addr: u64, len: u16) -> [u8; DESC_SIZE] {
    let mut d = [0u8; DESC_SIZE];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[11] = TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS;
    d
}

/// A receive descriptor handed to the controller (buffer address, everything else zero).
fn rx_desc(addr: u64) -> [u8; DESC_SIZE] {
    let mut d = [0u8; DESC_SIZE];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d
}

/// What the interrupt handler shares with the driver.
#[derive(Debug)]
struct Shared<M> {
    mmio: M,
    /// Causes read by the handler, not yet seen by the driver.
    causes: AtomicU32,
    counters: AtomicCounters,
}

impl<M: Mmio + Send + Sync> IrqAck for Shared<M> {
    fn ack(&self) -> bool {
        let icr = self.mmio.read32(reg::ICR);
        if icr == 0 {
            return false;
        }
        // Relaxed: a mailbox of cause bits on one CPU.
        self.causes.fetch_or(icr, Ordering::Relaxed);
        self.counters.interrupted();
        true
    }
}

/// An 82540EM.
#[derive(Debug)]
pub struct E1000<M> {
    shared: Arc<Shared<M>>,
    mac: [u8; 6],
    rx_ring: DmaBuf,
    rx_bufs: DmaBuf,
    /// Next receive slot to look at, and slots consumed but not yet handed back.
    rx_next: usize,
    rx_unreturned: usize,
    tx_ring: DmaBuf,
    tx_bufs: DmaBuf,
    tx: RingIndex,
    /// TXDW is unmasked while the transmit ring is full (someone waits for room).
    tx_irq_on: bool,
}

impl<M: Mmio + Clone + Send + Sync + 'static> E1000<M> {
    /// Resets the controller behind `mmio` (BAR 0), reads the MAC from the EEPROM, sets up both
    /// rings (in memory from `dma`), enables receive and transmit and unmasks the receive and link
    /// interrupts.
    pub fn new(mmio: M, dma: &'static dyn DmaAllocator) -> Result<Self> {
        let init = |reason| Error::Init { device: NAME, reason };
        mmio.write32(reg::IMC, !0);
        mmio.write32(reg::CTRL, mmio.read32(reg::CTRL) | CTRL_RST);
        if !(0..SPINS).any(|_| mmio.read32(reg::CTRL) & CTRL_RST == 0) {
            return Err(init("reset did not complete"));
        }
        mmio.write32(reg::IMC, !0);
        let _ = mmio.read32(reg::ICR);
        let mut mac = [0u8; 6];
        for word in 0..3 {
            mmio.write32(reg::EERD, (word as u32) << 8 | EERD_START);
            let v = (0..SPINS)
                .map(|_| mmio.read32(reg::EERD))
                .find(|v| v & EERD_DONE != 0)
                .ok_or(init("EEPROM read did not complete"))?;
            let [lo, hi] = ((v >> 16) as u16).to_le_bytes();
            mac[2 * word] = lo;
            mac[2 * word + 1] = hi;
        }
        if mac == [0; 6] || mac == [0xff; 6] || mac[0] & 1 != 0 {
            return Err(init("EEPROM holds no unicast MAC address"));
        }
        mmio.write32(reg::RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        mmio.write32(
            reg::RAH0,
            u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV,
        );
        for i in 0..128 {
            mmio.write32(reg::MTA + 4 * i, 0);
        }
        let ctrl = mmio.read32(reg::CTRL);
        mmio.write32(
            reg::CTRL,
            (ctrl | CTRL_SLU | CTRL_ASDE) & !(CTRL_LRST | CTRL_PHY_RST),
        );

        let mut rx_ring = DmaBuf::new(dma, RING_SIZE * DESC_SIZE)?;
        let rx_bufs = DmaBuf::new(dma, RING_SIZE * BUF_SIZE)?;
        let tx_ring = DmaBuf::new(dma, RING_SIZE * DESC_SIZE)?;
        let tx_bufs = DmaBuf::new(dma, RING_SIZE * BUF_SIZE)?;
        for i in 0..RING_SIZE {
            let d = rx_desc(rx_bufs.bus_addr() + (i * BUF_SIZE) as u64);
            rx_ring.as_mut_slice()[i * DESC_SIZE..(i + 1) * DESC_SIZE].copy_from_slice(&d);
        }
        // Release: the descriptors are in memory before the controller learns where they are.
        fence(Ordering::Release);
        let rx = rx_ring.bus_addr();
        mmio.write32(reg::RDBAL, rx as u32);
        mmio.write32(reg::RDBAH, (rx >> 32) as u32);
        mmio.write32(reg::RDLEN, (RING_SIZE * DESC_SIZE) as u32);
        mmio.write32(reg::RDH, 0);
        // All but one descriptor belong to the controller.
        mmio.write32(reg::RDT, (RING_SIZE - 1) as u32);
        mmio.write32(reg::RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
        let tx = tx_ring.bus_addr();
        mmio.write32(reg::TDBAL, tx as u32);
        mmio.write32(reg::TDBAH, (tx >> 32) as u32);
        mmio.write32(reg::TDLEN, (RING_SIZE * DESC_SIZE) as u32);
        mmio.write32(reg::TDH, 0);
        mmio.write32(reg::TDT, 0);
        mmio.write32(reg::TIPG, TIPG_COPPER);
        mmio.write32(reg::TCTL, TCTL_EN | TCTL_PSP | TCTL_CT | TCTL_COLD);
        mmio.write32(reg::IMS, ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC);
        Ok(Self {
            shared: Arc::new(Shared {
                mmio,
                causes: AtomicU32::new(0),
                counters: AtomicCounters::new(),
            }),
            mac,
            rx_ring,
            rx_bufs,
            rx_next: 0,
            rx_unreturned: 0,
            tx_ring,
            tx_bufs,
            tx: RingIndex::new(RING_SIZE),
            tx_irq_on: false,
        })
    }

    fn mmio(&self) -> &M {
        &self.shared.mmio
    }

    /// Reclaims transmit descriptors the controller has finished.
    fn reclaim_tx(&mut self) {
        while let Some(slot) = self.tx.oldest() {
            let status = read_volatile_byte(&self.tx_ring, slot * DESC_SIZE + 12);
            if status & DESC_DD == 0 {
                break;
            }
            self.tx.reclaim();
        }
        if self.tx_irq_on && self.tx.free() > 0 {
            self.mmio().write32(reg::IMC, ICR_TXDW);
            self.tx_irq_on = false;
        }
    }

    /// Interrupt causes seen so far (by the handler, or read now in polled use), cleared.
    pub fn take_causes(&self) -> u32 {
        // Relaxed: see IrqAck::ack.
        self.shared.causes.swap(0, Ordering::Relaxed)
    }
}

/// Reads one byte of DMA memory the device may be writing.
fn read_volatile_byte(buf: &DmaBuf, offset: usize) -> u8 {
    let byte: *const u8 = &buf.as_slice()[offset];
    // SAFETY: `byte` points into the buffer (the index was bounds-checked); a volatile read because
    // the controller writes this byte by DMA behind the compiler's back.
    unsafe { core::ptr::read_volatile(byte) }
}

impl<M: Mmio + Clone + Send + Sync + 'static> NetDevice for E1000<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.mmio().read32(reg::STATUS) & STATUS_LU != 0
    }

    fn mtu(&self) -> usize {
        MTU
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<()> {
        let max = ETH_HEADER_LEN + MTU;
        if frame.len() < ETH_HEADER_LEN || frame.len() > max {
            return Err(Error::BadLength {
                op: "transmit",
                len: frame.len(),
                unit: 1,
                max,
            });
        }
        self.reclaim_tx();
        let Some(slot) = self.tx.next_slot() else {
            if !self.tx_irq_on {
                // Someone will wait for room: let the controller say when a descriptor is done.
                self.mmio().write32(reg::IMS, ICR_TXDW);
                self.tx_irq_on = true;
            }
            return Err(Error::QueueFull {
                device: NAME,
                in_flight: self.tx.used(),
            });
        };
        self.tx_bufs.as_mut_slice()[slot * BUF_SIZE..slot * BUF_SIZE + frame.len()].copy_from_slice(frame);
        let d = tx_desc(
            self.tx_bufs.bus_addr() + (slot * BUF_SIZE) as u64,
            frame.len() as u16,
        );
        self.tx_ring.as_mut_slice()[slot * DESC_SIZE..(slot + 1) * DESC_SIZE].copy_from_slice(&d);
        self.shared.counters.copied(frame.len() as u64);
        let tail = self.tx.produce();
        // Release: the frame and its descriptor are in memory before the controller sees the tail.
        fence(Ordering::Release);
        self.mmio().write32(reg::TDT, tail as u32);
        self.shared.counters.notified(1);
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        loop {
            let slot = self.rx_next;
            let at = slot * DESC_SIZE;
            let status = read_volatile_byte(&self.rx_ring, at + 12);
            if status & DESC_DD == 0 {
                return Ok(None);
            }
            // Acquire: the controller wrote the frame and the descriptor before setting DD.
            fence(Ordering::Acquire);
            let desc = &self.rx_ring.as_slice()[at..at + DESC_SIZE];
            let len = usize::from(u16::from_le_bytes([desc[8], desc[9]]));
            let errors = desc[13];
            let result = if status & RX_EOP == 0 || errors != 0 || len > BUF_SIZE {
                // A frame spread over descriptors (never with 2 KiB buffers and a 1500 MTU) or one
                // with errors: dropped.
                None
            } else if len > buf.len() {
                Some(Err(Error::BadLength {
                    op: "receive",
                    len,
                    unit: 1,
                    max: buf.len(),
                }))
            } else {
                buf[..len].copy_from_slice(&self.rx_bufs.as_slice()[slot * BUF_SIZE..slot * BUF_SIZE + len]);
                self.shared.counters.copied(len as u64);
                Some(Ok(Some(len)))
            };
            // Give the descriptor back: clear it, and move the tail past it every few frames.
            let d = rx_desc(self.rx_bufs.bus_addr() + (slot * BUF_SIZE) as u64);
            self.rx_ring.as_mut_slice()[at..at + DESC_SIZE].copy_from_slice(&d);
            self.rx_next = (slot + 1) % RING_SIZE;
            self.rx_unreturned += 1;
            if self.rx_unreturned >= RX_RETURN_BATCH {
                // Release: the cleared descriptors are in memory before the controller may reuse
                // them. The tail is the last descriptor handed back.
                fence(Ordering::Release);
                self.mmio().write32(reg::RDT, slot as u32);
                self.shared.counters.notified(1);
                self.rx_unreturned = 0;
            }
            if let Some(r) = result {
                return r;
            }
        }
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.shared.clone())
    }

    fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }
}

#[cfg(test)]
mod nic_model;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_index_keeps_one_slot_free_and_wraps() {
        let mut r = RingIndex::new(4);
        assert_eq!((r.used(), r.free(), r.oldest()), (0, 3, None));
        let mut tails = [0; 3];
        for t in &mut tails {
            assert!(r.next_slot().is_some());
            *t = r.produce();
        }
        assert_eq!(tails, [1, 2, 3]);
        assert_eq!(
            r.next_slot(),
            None,
            "a full ring leaves one slot so tail never meets head"
        );
        assert_eq!(r.oldest(), Some(0));
        r.reclaim();
        assert_eq!(r.next_slot(), Some(3));
        assert_eq!(r.produce(), 0, "the tail wraps to slot 0");
        assert_eq!((r.used(), r.oldest()), (3, Some(1)));
        for _ in 0..3 {
            r.reclaim();
        }
        assert_eq!((r.used(), r.free()), (0, 3));
    }

    #[test]
    fn ring_index_survives_counter_wraparound() {
        let mut r = RingIndex {
            size: 8,
            next: usize::MAX - 1,
            clean: usize::MAX - 1,
        };
        for _ in 0..5 {
            r.produce();
        }
        assert_eq!(r.used(), 5);
        assert_eq!(r.oldest(), Some((usize::MAX - 1) % 8));
        for _ in 0..5 {
            r.reclaim();
        }
        assert_eq!(r.used(), 0);
    }

    #[test]
    fn descriptors_have_the_legacy_layout() {
        let d = tx_desc(0x1122_3344_5566_7788, 60);
        assert_eq!(&d[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&d[8..10], &60u16.to_le_bytes());
        assert_eq!(d[10], 0, "no checksum offload");
        assert_eq!(d[11], 0x0b, "EOP | IFCS | RS");
        assert_eq!(d[12], 0, "status clear until the controller is done");
        let r = rx_desc(0xabc000);
        assert_eq!(&r[0..8], &0xabc000u64.to_le_bytes());
        assert!(r[8..].iter().all(|&b| b == 0));
        assert_eq!(
            RING_SIZE * DESC_SIZE % 128,
            0,
            "ring lengths are multiples of 128 bytes"
        );
    }
}
