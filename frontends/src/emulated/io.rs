//! How the emulated-hardware drivers reach device registers: port I/O and memory-mapped I/O, each
//! behind a small trait that the guest kernel implements (inline asm stays in the kernel's arch
//! layer) and that host tests implement with fake devices.
//!
//! The methods are safe to call: whoever constructs an implementation vouches, once, that the
//! ports or the MMIO range belong to the device the driver is given and that accessing them has no
//! effect beyond that device.

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
