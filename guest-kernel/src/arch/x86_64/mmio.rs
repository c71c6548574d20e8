//! Counted 32-bit device register accesses through memory (each one is a VM exit), as volatile
//! loads and stores through the `volatile` crate.

use core::ptr::NonNull;

use volatile::VolatilePtr;

/// The register at `addr` as a volatile pointer.
///
/// # Safety
/// As for [`read32`].
unsafe fn register<'a>(addr: u64) -> VolatilePtr<'a, u32> {
    let reg = NonNull::new(addr as *mut u32).expect("device register at address 0");
    // SAFETY: the caller's promise: an aligned, mapped register of a device it owns, accessed only
    // with single volatile loads and stores.
    unsafe { VolatilePtr::new(reg) }
}

/// Reads the 32-bit device register at `addr`.
///
/// # Safety
/// `addr` is a 4-byte aligned device register, mapped uncached, of a device the caller owns, and
/// reading it has no effect beyond that device.
#[inline]
pub unsafe fn read32(addr: u64) -> u32 {
    super::exits::mmio(1);
    // SAFETY: the caller's promise; volatile because the device changes it.
    unsafe { register(addr) }.read()
}

/// Writes the 32-bit device register at `addr`.
///
/// # Safety
/// As for [`read32`]; the write has no effect beyond that device.
#[inline]
pub unsafe fn write32(addr: u64, value: u32) {
    super::exits::mmio(1);
    // SAFETY: the caller's promise.
    unsafe { register(addr) }.write(value);
}

/// Reads a 32-bit interrupt-controller register (local APIC, IOAPIC) at `addr`, counted as an
/// `irqchip` exit.
///
/// # Safety
/// As for [`read32`], for a register of the local APIC or the IOAPIC.
#[inline]
pub unsafe fn irqchip_read32(addr: u64) -> u32 {
    super::exits::irqchip(1);
    // SAFETY: the caller's promise; volatile because the controller changes it.
    unsafe { register(addr) }.read()
}

/// Writes a 32-bit interrupt-controller register at `addr`, counted as an `irqchip` exit.
///
/// # Safety
/// As for [`irqchip_read32`]; the write has no effect beyond the interrupt controller.
#[inline]
pub unsafe fn irqchip_write32(addr: u64, value: u32) {
    super::exits::irqchip(1);
    // SAFETY: the caller's promise.
    unsafe { register(addr) }.write(value);
}
