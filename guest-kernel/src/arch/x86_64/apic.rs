//! Local APIC (xAPIC, MMIO) and IOAPIC.
//!
//! Both are reached through identity-mapped, uncached pages that `paging::init` sets up. The IOAPIC
//! address is q35's fixed 0xfec00000 (QEMU's MADT says the same; we do not parse ACPI).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ::x86_64::registers::model_specific::Msr;

use super::interrupts::{Polarity, SPURIOUS_VECTOR, Trigger};
use crate::error::{Error, Result};

/// Default physical base of the local APIC.
pub const LAPIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// Physical base of the (first) IOAPIC on q35.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;

// Local APIC register offsets.
const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_LVT_LINT0: u64 = 0x350;
const LAPIC_LVT_LINT1: u64 = 0x360;
const LAPIC_LVT_ERROR: u64 = 0x370;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_CURRENT: u64 = 0x390;
const LAPIC_TIMER_DIVIDE: u64 = 0x3e0;

const SVR_APIC_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_DELIVERY_NMI: u32 = 0b100 << 8;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
const TIMER_DIVIDE_16: u32 = 0b0011;

// IOAPIC registers (indirect through IOREGSEL/IOWIN).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOAPIC_VER: u32 = 0x01;
const IOAPIC_REDTBL: u32 = 0x10;
const RED_MASKED: u64 = 1 << 16;
const RED_LEVEL: u64 = 1 << 15;
const RED_ACTIVE_LOW: u64 = 1 << 13;

static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);
static LAPIC_ID_VALUE: AtomicU32 = AtomicU32::new(0);
static IOAPIC_PINS: AtomicU32 = AtomicU32::new(0);
/// Serialises IOREGSEL/IOWIN pairs.
static IOAPIC_LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn mmio_read(addr: u64) -> u32 {
    // SAFETY: `addr` is a 4-byte aligned register of the local APIC or IOAPIC, mapped uncached by
    // paging::init before apic::init runs.
    unsafe { super::mmio::irqchip_read32(addr) }
}

fn mmio_write(addr: u64, value: u32) {
    // SAFETY: as for mmio_read; register writes only affect the interrupt controller.
    unsafe { super::mmio::irqchip_write32(addr, value) }
}

fn lapic_read(reg: u64) -> u32 {
    mmio_read(LAPIC_BASE.load(Ordering::Relaxed) + reg)
}

fn lapic_write(reg: u64, value: u32) {
    mmio_write(LAPIC_BASE.load(Ordering::Relaxed) + reg, value);
}

/// Enables the local APIC (all LVTs masked except LINT1 = NMI) and masks every IOAPIC pin.
pub fn init() -> Result<()> {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let value = unsafe { msr.read() };
    // SAFETY: setting the global enable bit with the base unchanged keeps the APIC where it is.
    unsafe { msr.write(value | APIC_BASE_ENABLE) };
    let base = value & 0x000f_ffff_ffff_f000;
    if base != LAPIC_DEFAULT_BASE {
        // paging::init mapped the default base only.
        return Err(Error::LapicMoved(base));
    }
    LAPIC_BASE.store(base, Ordering::Relaxed);
    LAPIC_ID_VALUE.store(lapic_read(LAPIC_ID) >> 24, Ordering::Relaxed);

    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    // qboot leaves LINT0 masked; we keep it so (the PIC is masked too, no ExtINT needed).
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_DELIVERY_NMI);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    lapic_write(LAPIC_EOI, 0);

    let pins = ((ioapic_read(IOAPIC_VER) >> 16) & 0xff) + 1;
    IOAPIC_PINS.store(pins, Ordering::Relaxed);
    for pin in 0..pins {
        ioapic_write_entry(pin, RED_MASKED);
    }
    Ok(())
}

/// This CPU's local APIC ID.
pub fn lapic_id() -> u32 {
    LAPIC_ID_VALUE.load(Ordering::Relaxed)
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    lapic_write(LAPIC_EOI, 0);
}

/// Starts the local APIC timer counting down from `initial`, either
/// once (masked, for calibration) or periodically raising `vector`. The timer then counts at the
/// APIC bus clock / 16.
pub fn timer_start(initial: u32, periodic_vector: Option<u8>) {
    lapic_write(LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_16);
    let lvt = match periodic_vector {
        Some(v) => LVT_TIMER_PERIODIC | u32::from(v),
        None => LVT_MASKED,
    };
    lapic_write(LAPIC_LVT_TIMER, lvt);
    lapic_write(LAPIC_TIMER_INITIAL, initial);
}

/// The timer's current count.
pub fn timer_current() -> u32 {
    lapic_read(LAPIC_TIMER_CURRENT)
}

/// Stops and masks the local APIC timer.
pub fn timer_stop() {
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
}

fn ioapic_read(reg: u32) -> u32 {
    let _guard = IOAPIC_LOCK.lock();
    mmio_write(IOAPIC_BASE + IOREGSEL, reg);
    mmio_read(IOAPIC_BASE + IOWIN)
}

fn ioapic_write(reg: u32, value: u32) {
    let _guard = IOAPIC_LOCK.lock();
    mmio_write(IOAPIC_BASE + IOREGSEL, reg);
    mmio_write(IOAPIC_BASE + IOWIN, value);
}

fn ioapic_write_entry(pin: u32, entry: u64) {
    super::cpu::without_interrupts(|| {
        // Mask first (low word), then set the destination, then the final low word.
        ioapic_write(IOAPIC_REDTBL + 2 * pin, RED_MASKED as u32);
        ioapic_write(IOAPIC_REDTBL + 2 * pin + 1, (entry >> 32) as u32);
        ioapic_write(IOAPIC_REDTBL + 2 * pin, entry as u32);
    });
}

fn check_gsi(gsi: u32) -> Result<()> {
    let pins = IOAPIC_PINS.load(Ordering::Relaxed);
    if gsi < pins {
        Ok(())
    } else {
        Err(Error::BadGsi { gsi, pins })
    }
}

/// Routes IOAPIC input `gsi` to `vector` (fixed delivery, physical destination = this CPU).
pub fn ioapic_route(gsi: u32, vector: u8, trigger: Trigger, polarity: Polarity) -> Result<()> {
    check_gsi(gsi)?;
    let mut entry = u64::from(vector) | (u64::from(lapic_id()) << 56);
    if trigger == Trigger::Level {
        entry |= RED_LEVEL;
    }
    if polarity == Polarity::ActiveLow {
        entry |= RED_ACTIVE_LOW;
    }
    ioapic_write_entry(gsi, entry);
    Ok(())
}

/// Masks IOAPIC input `gsi`.
pub fn ioapic_mask(gsi: u32) -> Result<()> {
    check_gsi(gsi)?;
    ioapic_write_entry(gsi, RED_MASKED);
    Ok(())
}

/// Number of IOAPIC inputs.
pub fn ioapic_pins() -> u32 {
    IOAPIC_PINS.load(Ordering::Relaxed)
}
