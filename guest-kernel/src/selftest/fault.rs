//! Deliberate failures, to prove the failure paths report and end the run.
//!
//! `fault-pagefault` reads [`UNMAPPED`]: the page-fault handler must print a `PVKIT EXCEPTION
//! vector=14 ... cr2=0xdead0000000` record and fail the run. `fault-panic` panics with
//! [`PANIC_MESSAGE`]: the panic handler must print `PVKIT PANIC at <file>:<line>:<col>: <message>`.

use super::{Outcome, Params, fail};

/// A canonical (bit 47 clear) address the page tables never map. (0xdead_0000_0000 itself has bit 47
/// set and would raise #GP, not #PF.)
pub const UNMAPPED: u64 = 0x0dea_d000_0000;
/// The message `fault-panic` panics with.
pub const PANIC_MESSAGE: &str = "deliberate panic from fault-panic test";

pub fn pagefault(_: &Params<'_>) -> Outcome {
    // SAFETY: deliberately unsound-looking but harmless: the address is unmapped, so the read faults
    // and the exception handler ends the run; if it ever returned a value we report that below.
    let value = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    fail!("read from unmapped {UNMAPPED:#x} returned {value:#x} instead of faulting")
}

pub fn panic(_: &Params<'_>) -> Outcome {
    panic!("{PANIC_MESSAGE}")
}
