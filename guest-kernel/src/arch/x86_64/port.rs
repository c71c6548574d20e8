//! Typed port I/O on top of the `x86_64` crate's `Port`.
//!
//! Port accesses reach devices, so each function is `unsafe`: the caller names a port whose device it
//! owns and knows the access has no effect beyond that device.
//!
//! Each access is counted in [`super::exits`]: one per instruction, and one per element for the
//! string forms (`rep insw` of 256 words: 256), which is how QEMU's TCG executes and traces them
//! (one device dispatch per element). KVM and real hardware handle a `rep ins/outs` in fewer exits
//! (KVM batches a string instruction's elements into one exit to user space per page or so).

use ::x86_64::instructions::port::Port;

/// Reads a byte from `port`.
///
/// # Safety
/// The caller owns the device behind `port` and reading it has no effect beyond that device.
pub unsafe fn inb(port: u16) -> u8 {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a byte to `port`.
///
/// # Safety
/// The caller owns the device behind `port` and the write has no effect beyond that device.
pub unsafe fn outb(port: u16, value: u8) {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a 16-bit word from `port`.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u16>::new(port).read() }
}

/// Writes a 16-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Reads a 32-bit word from `port`.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u32>::new(port).read() }
}

/// Writes a 32-bit word to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    super::exits::pio(1);
    // SAFETY: forwarded from the caller.
    unsafe { Port::<u32>::new(port).write(value) }
}

/// `rep insw`: reads `buf.len() / 2` 16-bit words from `port` into `buf` (a trailing odd byte is
/// left alone).
///
/// # Safety
/// As for [`inb`]; each read may have the device's side effects (e.g. advance its data FIFO).
pub unsafe fn insw(port: u16, buf: &mut [u8]) {
    let words = buf.len() / 2;
    super::exits::pio(words as u64);
    // SAFETY: `rep insw` stores `words` words at `rdi` ascending (DF is clear per the ABI), all
    // inside `buf`; x86 needs no alignment for them. The port access is the caller's promise.
    unsafe {
        core::arch::asm!(
            "rep insw",
            in("dx") port,
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") words => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `rep outsw`: writes `buf.len() / 2` 16-bit words from `buf` to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outsw(port: u16, buf: &[u8]) {
    let words = buf.len() / 2;
    super::exits::pio(words as u64);
    // SAFETY: `rep outsw` loads `words` words from `rsi` ascending, all inside `buf`; the port
    // access is the caller's promise.
    unsafe {
        core::arch::asm!(
            "rep outsw",
            in("dx") port,
            inout("rsi") buf.as_ptr() => _,
            inout("rcx") words => _,
            options(nostack, preserves_flags, readonly)
        );
    }
}

/// `rep insd`: reads `buf.len() / 4` 32-bit words from `port` into `buf` (trailing bytes are left
/// alone).
///
/// # Safety
/// As for [`insw`].
pub unsafe fn insl(port: u16, buf: &mut [u8]) {
    let dwords = buf.len() / 4;
    super::exits::pio(dwords as u64);
    // SAFETY: `rep insd` stores `dwords` dwords at `rdi` ascending (DF clear), all inside `buf`;
    // the port access is the caller's promise.
    unsafe {
        core::arch::asm!(
            "rep insd",
            in("dx") port,
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") dwords => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `rep outsd`: writes `buf.len() / 4` 32-bit words from `buf` to `port`.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outsl(port: u16, buf: &[u8]) {
    let dwords = buf.len() / 4;
    super::exits::pio(dwords as u64);
    // SAFETY: `rep outsd` loads `dwords` dwords from `rsi` ascending, all inside `buf`; the port
    // access is the caller's promise.
    unsafe {
        core::arch::asm!(
            "rep outsd",
            in("dx") port,
            inout("rsi") buf.as_ptr() => _,
            inout("rcx") dwords => _,
            options(nostack, preserves_flags, readonly)
        );
    }
}
