//! A small driver for the 16550 UART (moved here from the guest kernel so the kernel's COM1 console
//! and the emulated-UART console device share it).
//!
//! It depends on nothing but the [`UartRegisters`] trait, which says how to reach the eight
//! byte-wide registers; [`PortUart`] implements it over [`PortIo`] at a base port (the PC's COM1 at
//! 0x3f8, COM2 at 0x2f8). Output is polled; input can be polled with [`Uart16550::try_read`] or
//! signalled by the received-data interrupt ([`Uart16550::set_rx_interrupt`]).

use super::io::PortIo;

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
