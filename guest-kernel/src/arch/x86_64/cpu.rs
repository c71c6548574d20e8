//! Leaf CPU helpers: interrupt flag, halt, TSC, CPUID, control registers.
//!
//! Under Xen PV (`super::xen::active()`) the kernel runs in ring 3: the interrupt flag becomes the
//! vCPU's event-upcall mask, halting becomes `SCHEDOP_block` and CPUID goes through Xen (see
//! `super::xen`).

use ::x86_64::instructions::interrupts;

/// Runs `f` with interrupts disabled, restoring the previous state afterwards.
pub fn without_interrupts<T>(f: impl FnOnce() -> T) -> T {
    if super::xen::active() {
        return super::xen::without_events(f);
    }
    interrupts::without_interrupts(f)
}

/// Enables interrupts.
pub fn enable_interrupts() {
    if super::xen::active() {
        return super::xen::unmask_events();
    }
    interrupts::enable();
}

/// Stops this CPU for good: interrupts off, halt in a loop.
pub fn halt_forever() -> ! {
    if super::xen::active() {
        super::xen::mask_events();
        loop {
            super::xen::yield_cpu();
        }
    }
    loop {
        interrupts::disable();
        super::exits::hlt();
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
    if super::xen::active() {
        return super::xen::cpuid(leaf, 0);
    }
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
    if super::xen::active() {
        return super::xen::saved_cr2();
    }
    ::x86_64::registers::control::Cr2::read_raw()
}

/// Disables interrupts.
pub fn disable_interrupts() {
    if super::xen::active() {
        super::xen::mask_events();
        return;
    }
    interrupts::disable();
}

/// Enables interrupts and halts until the next one, atomically (`sti; hlt`: an interrupt pending at
/// the `sti` is taken at the `hlt`, so a wake-up checked for with interrupts off is never missed).
pub fn enable_interrupts_and_halt() {
    if super::xen::active() {
        return super::xen::block();
    }
    super::exits::hlt();
    interrupts::enable_and_hlt();
}
