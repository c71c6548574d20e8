//! Leaf CPU helpers: interrupt flag, halt, TSC, CPUID, control registers.

use ::x86_64::instructions::interrupts;

/// Runs `f` with interrupts disabled, restoring the previous state afterwards.
pub fn without_interrupts<T>(f: impl FnOnce() -> T) -> T {
    interrupts::without_interrupts(f)
}

/// Enables interrupts.
pub fn enable_interrupts() {
    interrupts::enable();
}

/// Stops this CPU for good: interrupts off, halt in a loop.
pub fn halt_forever() -> ! {
    loop {
        interrupts::disable();
        ::x86_64::instructions::hlt();
    }
}

/// Reads the time-stamp counter.
pub fn read_tsc() -> u64 {
    // SAFETY: `rdtsc` only reads a counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The four registers a CPUID leaf returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID for `leaf` (sub-leaf 0).
pub fn cpuid(leaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// The faulting linear address of the last page fault (CR2).
pub fn read_cr2() -> u64 {
    ::x86_64::registers::control::Cr2::read_raw()
}

/// Disables interrupts.
pub fn disable_interrupts() {
    interrupts::disable();
}

/// Enables interrupts and halts until the next one, atomically (`sti; hlt`: an interrupt pending at
/// the `sti` is taken at the `hlt`, so a wake-up checked for with interrupts off is never missed).
pub fn enable_interrupts_and_halt() {
    interrupts::enable_and_hlt();
}
