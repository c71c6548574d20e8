//! x86_64 support: boot entries, CPU tables, paging, interrupt controllers, timers, port I/O.
//!
//! Inline assembly is confined to four places: the 32-bit PVH trampoline (`boot::pvh`), the
//! interrupt entry stubs (`idt`), the leaf helpers in `cpu` and the string port I/O in `port`.
//! Everything else goes through the `x86_64` crate's typed wrappers.

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod interrupts;
pub mod paging;
pub mod pic;
pub mod pit;
pub mod port;
pub mod timer;
