//! Counted 32-bit device register accesses through memory (each one is a VM exit).

/// Reads the 32-bit device register at `addr`.
///
/// # Safety
/// `addr` is a 4-byte aligned device register, mapped uncached, of a device the caller owns, and
/// reading it has no effect beyond that device.
#[inline]
pub unsafe fn read32(addr: u64) -> u32 {
    super::exits::mmio(1);
    // SAFETY: the caller's promise; volatile because the device changes it.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes the 32-bit device register at `addr`.
///
/// # Safety
/// As for [`read32`]; the write has no effect beyond that device.
#[inline]
pub unsafe fn write32(addr: u64, value: u32) {
    super::exits::mmio(1);
    // SAFETY: the caller's promise.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
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
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes a 32-bit interrupt-controller register at `addr`, counted as an `irqchip` exit.
///
/// # Safety
/// As for [`irqchip_read32`]; the write has no effect beyond the interrupt controller.
#[inline]
pub unsafe fn irqchip_write32(addr: u64, value: u32) {
    super::exits::irqchip(1);
    // SAFETY: the caller's promise.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}
