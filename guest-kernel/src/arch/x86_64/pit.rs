//! The 8254 PIT: channel 2 (gated by port 0x61) as a reference clock for calibration, channel 0 as a
//! periodic interrupt source (ISA IRQ 0, IOAPIC pin 2 on QEMU's PC machines).

use super::port::{inb, outb};

/// The PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// The IOAPIC input ISA IRQ 0 arrives on (QEMU wires it to pin 2, as the MADT override says).
pub const PIT_GSI: u32 = 2;

const CH0_DATA: u16 = 0x40;
const CH2_DATA: u16 = 0x42;
const MODE_CMD: u16 = 0x43;
/// Port 0x61: bit 0 gates channel 2, bit 1 drives the speaker, bit 5 reads channel 2's output.
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 0x01;
const PORT_B_SPEAKER: u8 = 0x02;
const PORT_B_OUT2: u8 = 0x20;

fn out(port: u16, value: u8) {
    // SAFETY: ports 0x40-0x43 and 0x61 belong to the PIT / port B, which the platform owns.
    unsafe { outb(port, value) }
}

fn inp(port: u16) -> u8 {
    // SAFETY: as for `out`; reading port B has no side effects.
    unsafe { inb(port) }
}

/// Loads channel 2 with `count` in mode 0 (interrupt on terminal count) and opens its gate: its
/// output goes high after `count` PIT ticks. Speaker stays off.
pub fn channel2_start(count: u16) {
    let b = inp(PORT_B);
    out(PORT_B, (b & !PORT_B_SPEAKER) & !PORT_B_GATE2);
    out(MODE_CMD, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
    let [lo, hi] = count.to_le_bytes();
    out(CH2_DATA, lo);
    out(CH2_DATA, hi);
    out(PORT_B, (b & !PORT_B_SPEAKER) | PORT_B_GATE2);
}

/// True once channel 2 reached its terminal count (its output went high).
pub fn channel2_done() -> bool {
    inp(PORT_B) & PORT_B_OUT2 != 0
}

/// Latches and reads channel 2's current count.
pub fn channel2_count() -> u16 {
    out(MODE_CMD, 0b1000_0000); // latch channel 2
    let lo = inp(CH2_DATA);
    let hi = inp(CH2_DATA);
    u16::from_le_bytes([lo, hi])
}

/// The channel 0 divisor that comes closest to `hz`.
pub fn channel0_divisor(hz: u32) -> u64 {
    ((PIT_HZ + u64::from(hz) / 2) / u64::from(hz.max(1))).clamp(2, 0xffff)
}

/// Starts channel 0 as a rate generator at [`PIT_HZ`] / [`channel0_divisor`]`(hz)`.
pub fn channel0_periodic(hz: u32) {
    let divisor = channel0_divisor(hz) as u16;
    out(MODE_CMD, 0b0011_0100); // channel 0, lobyte/hibyte, mode 2, binary
    let [lo, hi] = divisor.to_le_bytes();
    out(CH0_DATA, lo);
    out(CH0_DATA, hi);
}

/// Stops channel 0's edges: mode 0 without a count leaves its output low.
pub fn channel0_stop() {
    out(MODE_CMD, 0b0011_0000);
}
