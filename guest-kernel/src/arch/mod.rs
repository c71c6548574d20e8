//! The hardware facade. Everything architecture-specific lives below this module; the rest of the
//! kernel uses what is re-exported here and never writes `asm!`.

pub mod x86_64;

pub use self::x86_64::cpu::{cpuid, halt_forever, read_tsc, without_interrupts};
