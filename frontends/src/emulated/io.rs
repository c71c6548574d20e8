//! How the emulated-hardware drivers reach device registers: port I/O and memory-mapped I/O, each
//! behind a small trait that the guest kernel implements (inline asm stays in the kernel's arch
//! layer) and that host tests implement with fake devices.
//!
//! The methods are safe to call: whoever constructs an implementation vouches, once, that the
//! ports or the MMIO range belong to the device the driver is given and that accessing them has no
//! effect beyond that device. [`VolatileMmio`] is the memory-mapped implementation (on the
//! `volatile` crate) for a kernel that has mapped the device's BAR.

use core::ptr::NonNull;

use volatile::VolatilePtr;

/// Port I/O to one device's registers. `port` is an absolute port number.
pub trait PortIo {
    /// `inb`.
    fn read8(&self, port: u16) -> u8;
    /// `outb`.
    fn write8(&self, port: u16, value: u8);
    /// `inw`.
    fn read16(&self, port: u16) -> u16;
    /// `outw`.
    fn write16(&self, port: u16, value: u16);
    /// `inl`.
    fn read32(&self, port: u16) -> u32;
    /// `outl`.
    fn write32(&self, port: u16, value: u32);
    /// `rep insw`: reads `buf.len() / 2` 16-bit words from `port` into `buf` (little-endian,
    /// first word first). `buf.len()` must be even.
    fn read16_rep(&self, port: u16, buf: &mut [u8]);
    /// `rep outsw`: writes `buf.len() / 2` 16-bit words from `buf` to `port`. `buf.len()` must
    /// be even.
    fn write16_rep(&self, port: u16, buf: &[u8]);
    /// `rep insd`: reads `buf.len() / 4` 32-bit words from `port` into `buf`. `buf.len()` must be
    /// a multiple of 4.
    fn read32_rep(&self, port: u16, buf: &mut [u8]);
    /// `rep outsd`: writes `buf.len() / 4` 32-bit words from `buf` to `port`.
    fn write32_rep(&self, port: u16, buf: &[u8]);
}

/// A device's memory-mapped register window (a PCI memory BAR), accessed with naturally aligned,
/// volatile 32-bit loads and stores at byte offsets from its base.
pub trait Mmio {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
}

/// A device's register window in memory, accessed through the `volatile` crate: every access is
/// one aligned 32-bit volatile load or store, bounds- and alignment-checked against the window.
///
/// This is the [`Mmio`] a kernel gives the drivers once it has mapped a memory BAR (uncached); a
/// kernel that counts device accesses wraps it and counts in its own `Mmio` impl. Clones reach the
/// same registers (a driver hands one to its interrupt path).
#[derive(Debug, Clone)]
pub struct VolatileMmio {
    base: NonNull<u32>,
    len: usize,
}

// SAFETY: the window is device memory that the constructor's caller gave to this value and its
// clones alone; it holds no Rust-visible data, and every access is a single volatile 32-bit load or
// store, which the device serialises. So the value may move to, and be shared with, another CPU
// (like the driver's interrupt path).
unsafe impl Send for VolatileMmio {}
// SAFETY: as for Send.
unsafe impl Sync for VolatileMmio {}

impl VolatileMmio {
    /// The registers at `base..base + len`.
    ///
    /// # Safety
    /// `base` is 4-byte aligned and `base..base + len` is one device's register window, mapped
    /// (uncached) for as long as the value (or a clone) lives; it is accessed only through this value
    /// and its clones (no other driver, no references); a 32-bit load or store at any aligned offset
    /// in it has no effect beyond that device.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        assert!(
            base.as_ptr().cast::<u32>().is_aligned(),
            "MMIO window at {base:p} is not 4-byte aligned"
        );
        Self {
            base: base.cast(),
            len,
        }
    }

    /// Bytes in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The register at `offset`.
    ///
    /// # Panics
    /// If `offset` is not 4-byte aligned or the register does not lie inside the window: a driver
    /// bug, never something a device controls.
    fn register(&self, offset: usize) -> VolatilePtr<'_, u32> {
        assert!(
            offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|end| end <= self.len),
            "MMIO offset {offset:#x} outside the {:#x}-byte window or unaligned",
            self.len
        );
        // SAFETY: `offset + 4 <= len`, so the register lies inside the window `new`'s caller vouched
        // for; `base` and `offset` are 4-aligned, so the pointer is aligned.
        let reg = unsafe { self.base.byte_add(offset) };
        // SAFETY: a valid, aligned device register of this window, reached only through `self` and
        // its clones, with single volatile accesses (`new`'s contract); the VolatilePtr does not
        // outlive the borrow of `self`.
        unsafe { VolatilePtr::new(reg) }
    }
}

impl Mmio for VolatileMmio {
    fn read32(&self, offset: usize) -> u32 {
        self.register(offset).read()
    }

    fn write32(&self, offset: usize, value: u32) {
        self.register(offset).write(value);
    }
}

impl<T: PortIo + ?Sized> PortIo for &T {
    fn read8(&self, port: u16) -> u8 {
        (**self).read8(port)
    }
    fn write8(&self, port: u16, value: u8) {
        (**self).write8(port, value);
    }
    fn read16(&self, port: u16) -> u16 {
        (**self).read16(port)
    }
    fn write16(&self, port: u16, value: u16) {
        (**self).write16(port, value);
    }
    fn read32(&self, port: u16) -> u32 {
        (**self).read32(port)
    }
    fn write32(&self, port: u16, value: u32) {
        (**self).write32(port, value);
    }
    fn read16_rep(&self, port: u16, buf: &mut [u8]) {
        (**self).read16_rep(port, buf);
    }
    fn write16_rep(&self, port: u16, buf: &[u8]) {
        (**self).write16_rep(port, buf);
    }
    fn read32_rep(&self, port: u16, buf: &mut [u8]) {
        (**self).read32_rep(port, buf);
    }
    fn write32_rep(&self, port: u16, buf: &[u8]) {
        (**self).write32_rep(port, buf);
    }
}

impl<T: Mmio + ?Sized> Mmio for &T {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn window(words: &mut [u32]) -> VolatileMmio {
        let base = NonNull::from(&mut *words).cast::<u8>();
        // SAFETY: the test's buffer stands in for a register window: aligned, live for the test,
        // reached only through the window while it is used.
        unsafe { VolatileMmio::new(base, words.len() * 4) }
    }

    #[test]
    fn registers_read_and_write_the_words_at_their_offsets() {
        let mut regs = vec![0u32; 8];
        regs[2] = 0xdead_beef;
        {
            let w = window(&mut regs);
            assert_eq!(w.read32(8), 0xdead_beef);
            w.write32(28, 7);
            w.write32(0, 0x1234_5678);
            assert_eq!((w.read32(28), w.read32(0)), (7, 0x1234_5678));
            assert_eq!(w.len(), 32);
        }
        assert_eq!(regs[7], 7);
        assert_eq!(regs[0], 0x1234_5678);
    }

    #[test]
    #[should_panic(expected = "outside the 0x20-byte window")]
    fn a_register_past_the_window_panics() {
        let mut regs = vec![0u32; 8];
        window(&mut regs).read32(32);
    }

    #[test]
    #[should_panic(expected = "unaligned")]
    fn an_unaligned_register_panics() {
        let mut regs = vec![0u32; 8];
        window(&mut regs).write32(6, 1);
    }
}
