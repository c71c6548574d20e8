//! The kernel-wide exit counter: every guest action that leaves the guest, counted where it happens.
//!
//! - port I/O: every `in`/`out` in [`super::port`] (all port I/O of the kernel goes through it: the
//!   emulated drivers' `PcPorts`, PCI configuration 0xcf8/0xcfc, COM1, the PIT and PIC, the phase
//!   marker port 0x402, the exit port); a string instruction (`rep insw`, ...) counts one per
//!   element, the way QEMU dispatches it (each element is one access in its trace);
//! - MMIO: every access through [`super::mmio`] (MSI-X table entries, the emulated drivers' register
//!   windows, edu) and every access the virtio-pci transport reports through
//!   [`pvkit_frontends::counters::TrapCounter`] (this counter implements it); the interrupt
//!   controllers' registers (local APIC: EOI, timer; IOAPIC) are counted apart as `irqchip`, the
//!   price of taking interrupts rather than of driving a device;
//! - hypercalls by number: every call through the hypercall page ([`super::xen::hypercall`]) and
//!   the `iret` each event upcall returns through (counted when the upcall is entered);
//! - halts: `sti; hlt` waits ([`super::cpu`]); on Xen PV the wait is `SCHEDOP_block`, a hypercall.
//!
//! CPUID, MSR accesses and `rdtsc` are not counted (none happens inside a workload; the kernel
//! uses xAPIC MMIO, not x2APIC MSRs).

use pvkit_frontends::counters::{AtomicExits, Exits};

/// The counter.
pub static EXITS: AtomicExits = AtomicExits::new();

/// Counts `n` port I/O exits.
#[inline]
pub fn pio(n: u64) {
    EXITS.pio(n);
}

/// Counts `n` MMIO exits.
#[inline]
pub fn mmio(n: u64) {
    EXITS.mmio(n);
}

/// Counts `n` MMIO exits to an interrupt controller.
#[inline]
pub fn irqchip(n: u64) {
    EXITS.irqchip(n);
}

/// Counts one halt.
#[inline]
pub fn hlt() {
    EXITS.hlt();
}

/// Counts hypercall `nr`.
#[inline]
pub fn hypercall(nr: u32) {
    EXITS.hypercall(nr);
}

/// The counts so far.
pub fn snapshot() -> Exits {
    EXITS.snapshot()
}

/// `exits=.. exits_pio=.. exits_mmio=.. exits_irqchip=.. hypercalls=.. exits_hlt=.. [hc=..]` of `e`, hypercalls
/// named after the PV ABI.
pub fn fields(e: &Exits) -> alloc::string::String {
    let name = |nr: usize| ring_protocol::abi::xen::hypercall_name(nr as u32);
    alloc::format!("{}", e.fields(&name))
}
