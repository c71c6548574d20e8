//! `uart`: the 16550 driver's receive path and register access, on the console UART itself, using
//! the chip's internal loopback.
//!
//! Checks the scratch register, then with loopback on: the modem-status inputs mirror the outputs
//! (DTR→DSR, RTS→CTS, OUT2→DCD), and `uart.bytes` (default 256) bytes of a counting pattern sent are
//! received back, in order, none missing. Then the same again interrupt-driven: the received-data
//! interrupt (ISA IRQ 4 → IOAPIC GSI 4 → a registered vector) fires and its handler drains the
//! FIFO; count and checksum of what the handler saw must match what was sent.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{Outcome, Params, fail};
use crate::arch::x86_64::interrupts::{self, Polarity, Trigger};
use crate::platform::{self, Platform, pc};

/// COM1's ISA IRQ, identity-mapped to the IOAPIC input of the same number on QEMU.
const COM1_GSI: u32 = 4;
/// Bytes the interrupt handler received, and a running checksum of them.
static RX_COUNT: AtomicU64 = AtomicU64::new(0);
static RX_SUM: AtomicU64 = AtomicU64::new(0);

fn checksum(sum: u64, byte: u8) -> u64 {
    sum.wrapping_mul(31).wrapping_add(u64::from(byte))
}

fn on_rx(_: u8) {
    while let Some(b) = pc::console_uart().try_read() {
        // Relaxed: counters read by the test after it saw RX_COUNT reach its target; single CPU.
        RX_SUM.store(checksum(RX_SUM.load(Ordering::Relaxed), b), Ordering::Relaxed);
        RX_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// Poll budget per byte before declaring it lost.
const MAX_POLLS: u32 = 100_000;
/// Receive FIFO depth of a 16550: send at most this many before reading back.
const FIFO: usize = 16;

pub fn run(params: &Params<'_>) -> Outcome {
    if platform::current() != Some(Platform::Pvh) {
        return fail!("no 16550 on this platform");
    }
    let bytes = match params.u64_in("bytes", 256, 1..=65_536) {
        Ok(b) => b as usize,
        Err(e) => return fail!("{e}"),
    };
    let uart = pc::console_uart();
    for value in [0x5a, 0xa5] {
        let back = uart.scratch_roundtrip(value);
        if back != value {
            return fail!("scratch register: wrote {value:#04x}, read {back:#04x}");
        }
    }
    // Nothing may print while loopback is on; interrupt handlers never print, and we hold the CPU.
    let result = crate::arch::without_interrupts(|| {
        uart.flush();
        while uart.try_read().is_some() {}
        uart.set_loopback(true);
        let msr = uart.modem_status() & 0xf0;
        let mut outcome = if msr == 0xb0 {
            Ok(())
        } else {
            Err(alloc::format!(
                "loopback modem status {msr:#04x}, expected 0xb0 (DCD, DSR, CTS)"
            ))
        };
        let mut sent = 0;
        while outcome.is_ok() && sent < bytes {
            let chunk = (bytes - sent).min(FIFO);
            for i in sent..sent + chunk {
                uart.write_byte(i as u8);
            }
            for i in sent..sent + chunk {
                let got = (0..MAX_POLLS).find_map(|_| uart.try_read());
                match got {
                    Some(b) if b == i as u8 => {}
                    Some(b) => {
                        outcome = Err(alloc::format!(
                            "byte {i}: received {b:#04x}, sent {:#04x}",
                            i as u8
                        ));
                        break;
                    }
                    None => {
                        outcome = Err(alloc::format!("byte {i} ({:#04x}) never came back", i as u8));
                        break;
                    }
                }
            }
            sent += chunk;
        }
        uart.set_loopback(false);
        while uart.try_read().is_some() {}
        outcome.map(|()| sent)
    });
    let polled = match result {
        Ok(n) => n,
        Err(e) => return fail!("{e}"),
    };
    match by_interrupt(bytes) {
        Ok(irqs) => Outcome::Pass(alloc::format!(
            "looped_back={polled} by_irq={bytes} rx_irq_batches={irqs}"
        )),
        Err(e) => fail!("{e}"),
    }
}

/// Sends `bytes` in loopback with the receive interrupt on; returns how many batches it took.
fn by_interrupt(bytes: usize) -> Result<u64, alloc::string::String> {
    let uart = pc::console_uart();
    RX_COUNT.store(0, Ordering::Relaxed);
    RX_SUM.store(0, Ordering::Relaxed);
    let vector = interrupts::alloc_vector(on_rx).map_err(|e| alloc::format!("vector: {e}"))?;
    let routed = interrupts::route_gsi(COM1_GSI, vector, Trigger::Edge, Polarity::ActiveHigh);
    uart.flush();
    uart.set_loopback(true);
    uart.set_rx_interrupt(true);
    let mut expected_sum = 0;
    let mut outcome = routed.map_err(|e| alloc::format!("routing GSI {COM1_GSI}: {e}"));
    let mut batches = 0;
    let mut sent = 0;
    while outcome.is_ok() && sent < bytes {
        let chunk = (bytes - sent).min(FIFO / 2);
        for i in sent..sent + chunk {
            expected_sum = checksum(expected_sum, i as u8 ^ 0x3c);
            uart.write_byte(i as u8 ^ 0x3c);
        }
        sent += chunk;
        // The chip raises the interrupt at its FIFO trigger level or after a 4-character timeout.
        let arrived = (0..MAX_POLLS * 100).any(|_| {
            core::hint::spin_loop();
            RX_COUNT.load(Ordering::Relaxed) >= sent as u64
        });
        if !arrived {
            outcome = Err(alloc::format!(
                "interrupt-driven receive stalled: {} of {sent} bytes arrived",
                RX_COUNT.load(Ordering::Relaxed)
            ));
        }
        batches += 1;
    }
    uart.set_rx_interrupt(false);
    uart.set_loopback(false);
    let _ = interrupts::mask_gsi(COM1_GSI);
    interrupts::unregister_handler(vector);
    while uart.try_read().is_some() {}
    outcome?;
    let (count, sum) = (RX_COUNT.load(Ordering::Relaxed), RX_SUM.load(Ordering::Relaxed));
    if count != bytes as u64 || sum != expected_sum {
        return Err(alloc::format!(
            "interrupt handler got {count} bytes with checksum {sum:#x}, sent {bytes} with {expected_sum:#x}"
        ));
    }
    Ok(batches)
}
