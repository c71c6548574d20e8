//! The e1000 driver against a model of the 82540EM's registers and legacy descriptor rings: the
//! model fetches transmit descriptors between head and tail when the tail moves (or later, when
//! told to hold them), writes received frames into the buffers of descriptors the driver handed
//! over, and keeps the interrupt cause register.

extern crate std;

use core::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::dma::fake::BUS_OFFSET;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

#[derive(Debug, Default)]
struct Nic {
    ctrl: u32,
    eerd: u32,
    icr: u32,
    ims: u32,
    rctl: u32,
    tctl: u32,
    ral: u32,
    rah: u32,
    rdba: u64,
    rdlen: u32,
    rdh: u32,
    rdt: u32,
    tdba: u64,
    tdlen: u32,
    tdh: u32,
    tdt: u32,
    /// Frames sent, in order.
    sent: Vec<Vec<u8>>,
    /// Leave transmit descriptors unprocessed until `hold_tx` is cleared.
    hold_tx: bool,
    rdt_writes: u32,
    imc_txdw: u32,
}

fn dma<'a>(bus: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: the fake allocator hands out heap memory at `bus - BUS_OFFSET`; the driver gave the
    // model these ring and buffer addresses, and the single-threaded tests only run the model
    // inside the driver's register accesses or between driver calls.
    unsafe { core::slice::from_raw_parts_mut((bus - BUS_OFFSET) as *mut u8, len) }
}

impl Nic {
    fn process_tx(&mut self) {
        let n = self.tdlen / DESC_SIZE as u32;
        while !self.hold_tx && self.tdh != self.tdt {
            let d = dma(self.tdba + u64::from(self.tdh) * DESC_SIZE as u64, DESC_SIZE);
            let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
            let len = usize::from(u16::from_le_bytes([d[8], d[9]]));
            assert_eq!(d[11] & (TX_CMD_EOP | TX_CMD_RS), TX_CMD_EOP | TX_CMD_RS);
            self.sent.push(dma(addr, len).to_vec());
            d[12] |= DESC_DD;
            self.tdh = (self.tdh + 1) % n;
            self.icr |= ICR_TXDW;
        }
    }

    /// Delivers a frame if the driver left a descriptor; false if the ring is full.
    fn inject(&mut self, frame: &[u8]) -> bool {
        let n = self.rdlen / DESC_SIZE as u32;
        if self.rctl & RCTL_EN == 0 || self.rdh == self.rdt {
            return false;
        }
        let d = dma(self.rdba + u64::from(self.rdh) * DESC_SIZE as u64, DESC_SIZE);
        let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        dma(addr, frame.len()).copy_from_slice(frame);
        d[8..10].copy_from_slice(&(frame.len() as u16).to_le_bytes());
        d[12] = DESC_DD | RX_EOP;
        self.rdh = (self.rdh + 1) % n;
        self.icr |= ICR_RXT0;
        true
    }
}

#[derive(Debug, Clone)]
struct FakeMmio(Rc<RefCell<Nic>>);

// SAFETY: the tests are single-threaded; Send/Sync only satisfy the IrqAck bound.
unsafe impl Send for FakeMmio {}
// SAFETY: as above.
unsafe impl Sync for FakeMmio {}

impl Mmio for FakeMmio {
    fn read32(&self, offset: usize) -> u32 {
        let mut n = self.0.borrow_mut();
        match offset {
            reg::CTRL => n.ctrl,
            reg::STATUS => STATUS_LU,
            reg::EERD => n.eerd,
            reg::ICR => core::mem::take(&mut n.icr),
            reg::RAL0 => n.ral,
            reg::RAH0 => n.rah,
            o => panic!("read of unexpected register {o:#x}"),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut n = self.0.borrow_mut();
        match offset {
            reg::CTRL => n.ctrl = value & !CTRL_RST, // reset completes at once
            reg::EERD => {
                let word = (value >> 8) as usize;
                let v = u16::from_le_bytes([MAC[2 * word], MAC[2 * word + 1]]);
                n.eerd = u32::from(v) << 16 | EERD_DONE;
            }
            reg::IMS => n.ims |= value,
            reg::IMC => {
                if value == ICR_TXDW {
                    n.imc_txdw += 1;
                }
                n.ims &= !value;
            }
            reg::RCTL => n.rctl = value,
            reg::TCTL => n.tctl = value,
            reg::TIPG => {}
            reg::RAL0 => n.ral = value,
            reg::RAH0 => n.rah = value,
            reg::RDBAL => n.rdba = n.rdba & !0xffff_ffff | u64::from(value),
            reg::RDBAH => n.rdba = n.rdba & 0xffff_ffff | u64::from(value) << 32,
            reg::RDLEN => n.rdlen = value,
            reg::RDH => n.rdh = value,
            reg::RDT => {
                n.rdt_writes += 1;
                n.rdt = value;
            }
            reg::TDBAL => n.tdba = n.tdba & !0xffff_ffff | u64::from(value),
            reg::TDBAH => n.tdba = n.tdba & 0xffff_ffff | u64::from(value) << 32,
            reg::TDLEN => n.tdlen = value,
            reg::TDH => n.tdh = value,
            reg::TDT => {
                n.tdt = value;
                n.process_tx();
            }
            o if (reg::MTA..reg::MTA + 512).contains(&o) => {}
            o => panic!("write of unexpected register {o:#x}"),
        }
    }
}

fn nic() -> (E1000<FakeMmio>, Rc<RefCell<Nic>>) {
    let model = Rc::new(RefCell::new(Nic::default()));
    let dev = E1000::new(FakeMmio(model.clone()), crate::dma::fake::dma()).unwrap();
    (dev, model)
}

fn frame(seq: u8, len: usize) -> Vec<u8> {
    let mut f = vec![seq; len];
    f[..6].copy_from_slice(&MAC);
    f
}

#[test]
fn init_takes_the_mac_from_the_eeprom_and_hands_over_the_rx_ring() {
    let (dev, model) = nic();
    assert_eq!(dev.mac(), MAC);
    assert!(dev.link_up());
    let n = model.borrow();
    assert_eq!(n.ral, u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert_eq!(n.rah, 0xefcd | RAH_AV);
    assert_eq!((n.rdlen, n.tdlen), (1024, 1024));
    assert_eq!((n.rdh, n.rdt), (0, RING_SIZE as u32 - 1));
    assert!(n.rctl & RCTL_EN != 0 && n.tctl & TCTL_EN != 0);
    assert_eq!(n.ims, ICR_RXT0 | ICR_RXO | ICR_RXDMT0 | ICR_LSC);
}

#[test]
fn frames_go_out_in_order_with_one_tail_write_each() {
    let (mut dev, model) = nic();
    for i in 0..100u8 {
        dev.transmit(&frame(i, 60 + usize::from(i))).unwrap();
    }
    let n = model.borrow();
    assert_eq!(n.sent.len(), 100, "the ring wrapped and kept going");
    for (i, f) in n.sent.iter().enumerate() {
        assert_eq!(f, &frame(i as u8, 60 + i));
    }
    let c = dev.counters();
    assert_eq!(c.notifications, 100);
    assert_eq!(c.bytes_copied, (0..100).map(|i| 60 + i).sum::<u64>());
    drop(n);
    assert!(matches!(
        dev.transmit(&[0; 10]),
        Err(Error::BadLength { len: 10, .. })
    ));
    assert!(matches!(
        dev.transmit(&[0; 1515]),
        Err(Error::BadLength { len: 1515, .. })
    ));
}

#[test]
fn a_full_ring_is_queue_full_until_the_nic_catches_up() {
    let (mut dev, model) = nic();
    model.borrow_mut().hold_tx = true;
    for i in 0..RING_SIZE - 1 {
        dev.transmit(&frame(i as u8, 64)).unwrap();
    }
    assert!(matches!(
        dev.transmit(&frame(0xff, 64)),
        Err(Error::QueueFull { in_flight: 63, .. })
    ));
    assert!(
        model.borrow().ims & ICR_TXDW != 0,
        "the driver asks to hear when room appears"
    );
    {
        let mut n = model.borrow_mut();
        n.hold_tx = false;
        n.process_tx();
    }
    dev.transmit(&frame(0xfe, 64)).unwrap();
    let n = model.borrow();
    assert_eq!(n.sent.len(), RING_SIZE);
    assert_eq!(n.imc_txdw, 1, "and stops listening once there is room");
}

#[test]
fn received_frames_come_out_in_order_and_descriptors_go_back_in_batches() {
    let (mut dev, model) = nic();
    let ack = dev.irq_ack().unwrap();
    assert!(!ack.ack(), "nothing pending");
    let mut buf = [0u8; 1600];
    assert_eq!(dev.receive(&mut buf).unwrap(), None);
    for round in 0..3 {
        for i in 0..50u8 {
            assert!(
                model.borrow_mut().inject(&frame(i, 100 + usize::from(i))),
                "round {round} frame {i}"
            );
        }
        assert!(ack.ack());
        for i in 0..50u8 {
            let len = dev.receive(&mut buf).unwrap().expect("a frame");
            assert_eq!(&buf[..len], &frame(i, 100 + usize::from(i))[..]);
        }
        assert_eq!(dev.receive(&mut buf).unwrap(), None);
    }
    // 150 frames through a 64-descriptor ring: handed back 8 at a time.
    assert_eq!(model.borrow().rdt_writes, 1 + 150 / RX_RETURN_BATCH as u32);
    assert_eq!(dev.take_causes() & ICR_RXT0, ICR_RXT0);
    let c = dev.counters();
    assert_eq!(c.interrupts, 3);
    assert_eq!(c.notifications, 150 / RX_RETURN_BATCH as u64);
}

#[test]
fn a_frame_longer_than_the_buffer_is_reported_and_dropped() {
    let (mut dev, model) = nic();
    assert!(model.borrow_mut().inject(&frame(1, 200)));
    assert!(model.borrow_mut().inject(&frame(2, 60)));
    let mut small = [0u8; 100];
    assert!(matches!(
        dev.receive(&mut small),
        Err(Error::BadLength {
            len: 200,
            max: 100,
            ..
        })
    ));
    assert_eq!(dev.receive(&mut small).unwrap(), Some(60));
    assert_eq!(small[6], 2);
}
