//! A small driver for the 16550 UART (moved here from the guest kernel so the kernel's COM1 console
//! and the emulated-UART console device share it).
//!
//! It depends on nothing but the [`UartRegisters`] trait, which says how to reach the eight
//! byte-wide registers; [`PortUart`] implements it over [`PortIo`] at a base port (the PC's COM1 at
//! 0x3f8, COM2 at 0x2f8). Output is polled; input can be polled with [`Uart16550::try_read`] or
//! signalled by the received-data interrupt ([`Uart16550::set_rx_interrupt`]).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use super::io::PortIo;
use crate::console::ConsoleDevice;
use crate::counters::{AtomicCounters, Counters};
use crate::wait::{IrqAck, SharedIrqAck};
use crate::{Error, Result};

/// The 16550's registers, by offset from its base (with DLAB as noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Register {
    /// Receive buffer (read) / transmit holding (write); divisor latch low with DLAB=1.
    Data = 0,
    /// Interrupt enable; divisor latch high with DLAB=1.
    InterruptEnable = 1,
    /// Interrupt identification (read) / FIFO control (write).
    FifoControl = 2,
    /// Line control (word length, parity, stop bits, DLAB).
    LineControl = 3,
    /// Modem control (DTR, RTS, OUT2 = interrupt line enable, loopback).
    ModemControl = 4,
    /// Line status (data ready, transmitter empty, errors).
    LineStatus = 5,
    /// Modem status.
    ModemStatus = 6,
    /// Scratch.
    Scratch = 7,
}

/// How the driver reaches the UART's registers.
pub trait UartRegisters {
    /// Reads one register.
    fn read(&self, reg: Register) -> u8;
    /// Writes one register.
    fn write(&self, reg: Register, value: u8);
}

/// A 16550 whose registers are eight consecutive I/O ports from `base`.
#[derive(Debug, Clone, Copy)]
pub struct PortUart<P> {
    io: P,
    base: u16,
}

impl<P: PortIo> PortUart<P> {
    /// The UART at `base..base + 8`, reached through `io`.
    pub const fn new(io: P, base: u16) -> Self {
        Self { io, base }
    }
}

impl<P: PortIo> UartRegisters for PortUart<P> {
    fn read(&self, reg: Register) -> u8 {
        self.io.read8(self.base + reg as u16)
    }

    fn write(&self, reg: Register, value: u8) {
        self.io.write8(self.base + reg as u16, value);
    }
}

/// The input clock divided by 16: the baud rate a divisor of 1 gives.
pub const MAX_BAUD: u32 = 115_200;

/// Transmit FIFO depth of the 16550A.
pub const TX_FIFO_DEPTH: usize = 16;

const LCR_8N1: u8 = 0x03;
const LCR_DLAB: u8 = 0x80;
const FCR_ENABLE_CLEAR_14: u8 = 0xc7;
const MCR_DTR_RTS_OUT2: u8 = 0x0b;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
const LSR_TX_IDLE: u8 = 0x40;
const MCR_LOOPBACK: u8 = 0x10;
const IER_RX_AVAILABLE: u8 = 0x01;

/// A 16550 UART behind some register access.
#[derive(Debug)]
pub struct Uart16550<R> {
    regs: R,
}

impl<R: UartRegisters> Uart16550<R> {
    /// Wraps the registers; call [`Self::init`] before use.
    pub const fn new(regs: R) -> Self {
        Self { regs }
    }

    /// Programs 8N1 at `baud` (rounded to a divisor of 115200, at least 1), FIFOs on, interrupts off,
    /// DTR/RTS/OUT2 set.
    pub fn init(&self, baud: u32) {
        let divisor = (MAX_BAUD / baud.clamp(1, MAX_BAUD)).clamp(1, u32::from(u16::MAX)) as u16;
        let [lo, hi] = divisor.to_le_bytes();
        self.regs.write(Register::InterruptEnable, 0);
        self.regs.write(Register::LineControl, LCR_DLAB);
        self.regs.write(Register::Data, lo);
        self.regs.write(Register::InterruptEnable, hi);
        self.regs.write(Register::LineControl, LCR_8N1);
        self.regs.write(Register::FifoControl, FCR_ENABLE_CLEAR_14);
        self.regs.write(Register::ModemControl, MCR_DTR_RTS_OUT2);
    }

    /// Sends one byte, waiting for room in the transmitter.
    pub fn write_byte(&self, byte: u8) {
        while self.regs.read(Register::LineStatus) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        self.regs.write(Register::Data, byte);
    }

    /// Sends all bytes. With the FIFOs on (as [`Self::init`] sets them), "transmitter holding
    /// register empty" means the whole 16-byte transmit FIFO is free, so one status read covers up
    /// to 16 bytes (under emulation every register access is a trap, so this matters).
    pub fn write_bytes(&self, bytes: &[u8]) {
        for chunk in bytes.chunks(TX_FIFO_DEPTH) {
            while self.regs.read(Register::LineStatus) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            for &b in chunk {
                self.regs.write(Register::Data, b);
            }
        }
    }

    /// Returns a received byte if one is waiting.
    pub fn try_read(&self) -> Option<u8> {
        (self.regs.read(Register::LineStatus) & LSR_DATA_READY != 0).then(|| self.regs.read(Register::Data))
    }

    /// Waits until everything written has left the transmitter (holding and shift register empty).
    pub fn flush(&self) {
        while self.regs.read(Register::LineStatus) & LSR_TX_IDLE == 0 {
            core::hint::spin_loop();
        }
    }

    /// Switches internal loopback on or off: while on, transmitted bytes come back as received
    /// bytes and the modem-status inputs mirror the modem-control outputs.
    pub fn set_loopback(&self, on: bool) {
        let loopback = if on { MCR_LOOPBACK } else { 0 };
        self.regs
            .write(Register::ModemControl, MCR_DTR_RTS_OUT2 | loopback);
    }

    /// The modem-status register (CTS, DSR, RI, DCD in bits 4-7, their changes in bits 0-3).
    pub fn modem_status(&self) -> u8 {
        self.regs.read(Register::ModemStatus)
    }

    /// Writes `value` to the scratch register and reads it back: a presence check (an absent UART
    /// reads 0xff).
    pub fn scratch_roundtrip(&self, value: u8) -> u8 {
        self.regs.write(Register::Scratch, value);
        self.regs.read(Register::Scratch)
    }

    /// Enables or disables the "received data available" interrupt.
    pub fn set_rx_interrupt(&self, on: bool) {
        self.regs
            .write(Register::InterruptEnable, if on { IER_RX_AVAILABLE } else { 0 });
    }
}

const IIR_NO_INTERRUPT: u8 = 0x01;

/// What the interrupt handler shares with the console driver.
#[derive(Debug)]
struct ConsoleShared<P> {
    uart: Uart16550<PortUart<P>>,
    /// The handler masked the receive interrupt; `read` unmasks it once the FIFO is drained.
    rx_masked: AtomicBool,
    counters: AtomicCounters,
}

impl<P: PortIo + Send + Sync> IrqAck for ConsoleShared<P> {
    fn ack(&self) -> bool {
        if self.uart.regs.read(Register::FifoControl) & IIR_NO_INTERRUPT != 0 {
            return false;
        }
        // Received data stays pending until read; rather than read it here, mask the interrupt
        // (which lowers the line) and let `read` take the bytes and unmask it.
        self.uart.set_rx_interrupt(false);
        // Relaxed: single CPU; `read` runs after this handler or before it, never during.
        self.rx_masked.store(true, Ordering::Relaxed);
        self.counters.interrupted();
        true
    }
}

/// A 16550 (e.g. COM2 at 0x2f8, ISA IRQ 3) as a byte-stream [`ConsoleDevice`], 115200 8N1 with
/// FIFOs. Every byte passes through the data register, so all bytes count as copied by the CPU;
/// each burst of up to [`TX_FIFO_DEPTH`] bytes written counts as one notification.
#[derive(Debug)]
pub struct UartConsole<P> {
    shared: Arc<ConsoleShared<P>>,
}

impl<P: PortIo + Send + Sync + 'static> UartConsole<P> {
    /// Programs the UART at `base` and enables its receive interrupt. [`Error::Absent`] if nothing
    /// answers there (the scratch register does not keep a value).
    pub fn new(io: P, base: u16) -> Result<Self> {
        let uart = Uart16550::new(PortUart::new(io, base));
        if uart.scratch_roundtrip(0x5a) != 0x5a || uart.scratch_roundtrip(0xa5) != 0xa5 {
            return Err(Error::Absent { device: "uart" });
        }
        uart.init(MAX_BAUD);
        while uart.try_read().is_some() {}
        uart.set_rx_interrupt(true);
        Ok(Self {
            shared: Arc::new(ConsoleShared {
                uart,
                rx_masked: AtomicBool::new(false),
                counters: AtomicCounters::new(),
            }),
        })
    }
}

impl<P: PortIo + Send + Sync + 'static> ConsoleDevice for UartConsole<P> {
    fn name(&self) -> &'static str {
        "uart"
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        let uart = &self.shared.uart;
        if data.is_empty() || uart.regs.read(Register::LineStatus) & LSR_THR_EMPTY == 0 {
            return Ok(0);
        }
        // An empty holding register with FIFOs on means the whole transmit FIFO is free.
        let n = data.len().min(TX_FIFO_DEPTH);
        for &b in &data[..n] {
            uart.regs.write(Register::Data, b);
        }
        self.shared.counters.notified(1);
        self.shared.counters.copied(n as u64);
        Ok(n)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let uart = &self.shared.uart;
        let mut n = 0;
        while n < buf.len() {
            match uart.try_read() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        self.shared.counters.copied(n as u64);
        // Relaxed: see ConsoleShared::ack. Unmasking with bytes still waiting (buf was full)
        // raises the interrupt again at once, which is what a waiter wants.
        if self.shared.rx_masked.swap(false, Ordering::Relaxed) {
            uart.set_rx_interrupt(true);
        }
        Ok(n)
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.shared.clone())
    }

    fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::RefCell;
    use std::collections::VecDeque;
    use std::vec::Vec;

    use super::*;

    /// A 16550 at 0x2f8 whose line is looped: what is transmitted arrives in the receive FIFO.
    #[derive(Debug, Default)]
    struct Chip {
        ier: u8,
        lcr: u8,
        scratch: u8,
        rx: VecDeque<u8>,
        sent: Vec<u8>,
        absent: bool,
    }

    #[derive(Debug, Default)]
    struct FakeUart(RefCell<Chip>);

    // SAFETY: the tests use one thread; Sync is only needed for the IrqAck bound.
    unsafe impl Sync for FakeUart {}

    const BASE: u16 = 0x2f8;

    impl PortIo for &'static FakeUart {
        fn read8(&self, port: u16) -> u8 {
            let mut c = self.0.borrow_mut();
            if c.absent {
                return 0xff;
            }
            match port - BASE {
                0 => c.rx.pop_front().unwrap_or(0),
                1 => c.ier,
                2 if c.ier & IER_RX_AVAILABLE != 0 && !c.rx.is_empty() => 0x04,
                2 => IIR_NO_INTERRUPT,
                5 => LSR_THR_EMPTY | LSR_TX_IDLE | u8::from(!c.rx.is_empty()),
                7 => c.scratch,
                _ => 0,
            }
        }
        fn write8(&self, port: u16, value: u8) {
            let mut c = self.0.borrow_mut();
            match port - BASE {
                // With DLAB set, offsets 0 and 1 are the divisor latch.
                0 | 1 if c.lcr & LCR_DLAB != 0 => {}
                0 => {
                    c.sent.push(value);
                    c.rx.push_back(value);
                }
                1 => c.ier = value,
                3 => c.lcr = value,
                7 => c.scratch = value,
                _ => {}
            }
        }
        fn read16(&self, _: u16) -> u16 {
            unreachable!("byte registers only")
        }
        fn write16(&self, _: u16, _: u16) {
            unreachable!("byte registers only")
        }
        fn read32(&self, _: u16) -> u32 {
            unreachable!("byte registers only")
        }
        fn write32(&self, _: u16, _: u32) {
            unreachable!("byte registers only")
        }
        fn read16_rep(&self, _: u16, _: &mut [u8]) {
            unreachable!("byte registers only")
        }
        fn write16_rep(&self, _: u16, _: &[u8]) {
            unreachable!("byte registers only")
        }
        fn read32_rep(&self, _: u16, _: &mut [u8]) {
            unreachable!("byte registers only")
        }
        fn write32_rep(&self, _: u16, _: &[u8]) {
            unreachable!("byte registers only")
        }
    }

    fn chip() -> &'static FakeUart {
        std::boxed::Box::leak(std::boxed::Box::default())
    }

    #[test]
    fn console_writes_fifo_bursts_and_reads_back() {
        let fake = chip();
        let mut con = UartConsole::new(fake, BASE).unwrap();
        let data: Vec<u8> = (0..40u8).collect();
        assert_eq!(con.write(&data).unwrap(), TX_FIFO_DEPTH);
        assert_eq!(con.write(&data[16..]).unwrap(), TX_FIFO_DEPTH);
        assert_eq!(con.write(&data[32..]).unwrap(), 8);
        assert_eq!(fake.0.borrow().sent, data);
        let mut back = [0u8; 64];
        assert_eq!(con.read(&mut back).unwrap(), 40);
        assert_eq!(&back[..40], &data[..]);
        assert_eq!(con.read(&mut back).unwrap(), 0);
        let c = con.counters();
        assert_eq!((c.notifications, c.bytes_copied), (3, 80));
    }

    #[test]
    fn interrupt_masks_receive_until_read_drains() {
        let fake = chip();
        let mut con = UartConsole::new(fake, BASE).unwrap();
        let ack = con.irq_ack().unwrap();
        assert!(!ack.ack(), "nothing pending yet");
        con.write(b"hi").unwrap();
        assert!(ack.ack());
        assert_eq!(fake.0.borrow().ier, 0, "the handler masked the receive interrupt");
        let mut one = [0u8; 1];
        assert_eq!(con.read(&mut one).unwrap(), 1);
        assert_eq!(fake.0.borrow().ier, IER_RX_AVAILABLE, "read unmasks it");
        assert!(ack.ack(), "the byte still waiting raises it again");
        assert_eq!(con.read(&mut one).unwrap(), 1);
        assert_eq!(con.counters().interrupts, 2);
    }

    #[test]
    fn absent_uart_is_reported() {
        let fake = chip();
        fake.0.borrow_mut().absent = true;
        assert_eq!(
            UartConsole::new(fake, BASE).unwrap_err(),
            Error::Absent { device: "uart" }
        );
    }
}
