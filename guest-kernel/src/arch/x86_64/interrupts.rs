//! Device interrupts: vector allocation, handler registration, IOAPIC routing, dispatch.
//!
//! A device's interrupt takes this path: its line (a GSI: an ISA IRQ after the IOAPIC's overrides, or
//! a PCI INTx line) → an IOAPIC redirection entry ([`route_gsi`]) → a vector → the handler registered
//! for that vector ([`register_handler`]), which runs with interrupts off; the local APIC is sent its
//! EOI after the handler returns.
//!
//! Vector map: 0x00-0x1f exceptions; 0x20-0x2f the (masked) legacy PIC, whose spurious IRQ 7/15 may
//! still arrive and are ignored; [`TIMER_VECTOR`] the local APIC timer; 0x31-0xef device vectors;
//! 0xff the local APIC spurious vector.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::apic;
use crate::error::{Error, Result};

/// An interrupt handler; gets its vector.
pub type Handler = fn(vector: u8);

/// Local APIC timer vector.
pub const TIMER_VECTOR: u8 = 0x30;
/// First vector handed to devices.
pub const FIRST_DEVICE_VECTOR: u8 = 0x31;
/// Last vector handed to devices.
pub const LAST_DEVICE_VECTOR: u8 = 0xef;
/// Where the legacy PIC's vectors are parked (masked) so they never collide with exceptions.
pub const PIC_VECTOR_BASE: u8 = 0x20;
/// Local APIC spurious-interrupt vector (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Handler per vector as a `fn` address, 0 = none. Written with interrupts off by
/// [`register_handler`], read by [`dispatch`].
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// Vectors that arrived without a handler (PIC spurious, stray routes).
static UNHANDLED: AtomicU64 = AtomicU64::new(0);

/// IOAPIC trigger mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// ISA devices.
    Edge,
    /// PCI INTx.
    Level,
}

/// IOAPIC input polarity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// ISA devices.
    ActiveHigh,
    /// PCI INTx.
    ActiveLow,
}

fn check_device_vector(vector: u8) -> Result<()> {
    if vector == TIMER_VECTOR || (FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR).contains(&vector) {
        Ok(())
    } else {
        Err(Error::BadVector(vector))
    }
}

/// Installs `handler` for `vector` (the timer vector or a device vector).
pub fn register_handler(vector: u8, handler: Handler) -> Result<()> {
    check_device_vector(vector)?;
    super::cpu::without_interrupts(|| {
        // Release: the handler's address is published before the vector can fire (single CPU,
        // interrupts off, so this only orders against our own later dispatch; Acquire there).
        HANDLERS[usize::from(vector)]
            .compare_exchange(0, handler as usize, Ordering::Release, Ordering::Relaxed)
            .map(|_| ())
            .map_err(|_| Error::VectorInUse(vector))
    })
}

/// Removes the handler of `vector` (after the source has been masked).
pub fn unregister_handler(vector: u8) {
    // Relaxed: the caller masked the source first; a late interrupt then counts as unhandled.
    HANDLERS[usize::from(vector)].store(0, Ordering::Relaxed);
}

/// Allocates a free device vector and installs `handler` on it.
pub fn alloc_vector(handler: Handler) -> Result<u8> {
    (FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR)
        .find(|&v| register_handler(v, handler).is_ok())
        .ok_or(Error::NoFreeVector)
}

/// Routes `gsi` to `vector` on this CPU through the IOAPIC, unmasked.
pub fn route_gsi(gsi: u32, vector: u8, trigger: Trigger, polarity: Polarity) -> Result<()> {
    check_device_vector(vector)?;
    apic::ioapic_route(gsi, vector, trigger, polarity)
}

/// Masks `gsi` at the IOAPIC.
pub fn mask_gsi(gsi: u32) -> Result<()> {
    apic::ioapic_mask(gsi)
}

/// Interrupts seen on vectors without a handler.
pub fn unhandled_count() -> u64 {
    UNHANDLED.load(Ordering::Relaxed)
}

/// Called by the entry stub for vectors 0x20..=0xff.
pub(super) fn dispatch(vector: u8) {
    if vector == SPURIOUS_VECTOR {
        UNHANDLED.fetch_add(1, Ordering::Relaxed);
        return; // a spurious APIC interrupt takes no EOI
    }
    // Acquire: pairs with the Release in register_handler, so we call a fully published handler.
    let addr = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if addr == 0 {
        UNHANDLED.fetch_add(1, Ordering::Relaxed);
        // The masked PIC's spurious IRQ 7/15 is not in the local APIC's ISR: no EOI for those.
        if !(PIC_VECTOR_BASE..PIC_VECTOR_BASE + 16).contains(&vector) {
            apic::eoi();
        }
        return;
    }
    // SAFETY: non-zero entries are only ever stored by register_handler, from a `Handler`.
    let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(addr) };
    handler(vector);
    apic::eoi();
}
