//! x86_64 support: boot entries, CPU tables, paging, interrupt controllers, timers, port I/O and
//! MMIO (counted in `exits`).
//!
//! Inline assembly is confined to a few leaf places: the boot entries (`boot::pvh`, `boot::xen_pv`),
//! the interrupt entry stubs (`idt`, `xen::traps`), the leaf helpers in `cpu`, the string port I/O
//! in `port` and the hypercall leaf (`xen::hypercall`).
//! Everything else goes through the `x86_64` crate's typed wrappers.

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod exits;
pub mod gdt;
pub mod idt;
pub mod interrupts;
pub mod mmio;
pub mod paging;
pub mod pic;
pub mod pit;
pub mod port;
pub mod timer;
pub mod xen;
