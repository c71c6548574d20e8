//! Deliberate failures, to prove the failure paths report and end the run.
//!
//! `fault-pagefault` reads [`UNMAPPED`]: the page-fault handler must print a `PVKIT EXCEPTION
//! vector=14 ... cr2=0xdead0000000` record and fail the run. `fault-panic` panics with
//! [`PANIC_MESSAGE`]: the panic handler must print `PVKIT PANIC at <file>:<line>:<col>: <message>`.
//! `fault-stack` recurses until the boot stack runs into its unmapped guard page: the page fault
//! cannot be delivered on the full stack, so the CPU raises a double fault, which runs on its own
//! IST stack and must be reported as `PVKIT EXCEPTION vector=8`.

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

/// Recurses with a 1 KiB frame until the stack overflows (the depth limit is never reached: the
/// 64 KiB stack ends after about 60 levels).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = core::hint::black_box([depth as u8; 1024]);
    let below = recurse(depth + 1);
    below.wrapping_add(u64::from(frame[depth as usize % 1024]))
}

pub fn stack_overflow(_: &Params<'_>) -> Outcome {
    let sum = recurse(core::hint::black_box(0));
    fail!("unbounded recursion returned {sum} instead of overflowing the stack")
}
