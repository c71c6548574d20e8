//! Typed port I/O on top of the `x86_64` crate's `Port`.
//!
//! Port accesses reach devices, so each function is `unsafe`: the caller names a port whose device it
//! owns and knows the access has no effect beyond that device.

use ::x86_64::instructions::port::Port;

/// Reads a byte from `port`.
///
/// # Safety
/// The caller owns the device behind `port` and reading it has no effect beyond that device.
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller owns the device behind `port` and the write has no effect beyond that device.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a 16-bit word from `port`.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u16>::new(port).read() }
}

/// Writes a 16-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Reads a 32-bit word from `port`.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u32>::new(port).read() }
}

/// Writes a 32-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u32>::new(port).write(value) }
}
