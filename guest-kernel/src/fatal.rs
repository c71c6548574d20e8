//! The one way a run ends badly. Exceptions and panics both report here: their record, the failing
//! test's FAIL line, the summary, `PVKIT EXIT 1`, power-off. It never returns and never hangs: a
//! failure while reporting a failure prints one short line and powers off; a third one powers off
//! silently.

use core::fmt;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::arch::x86_64::cpu::read_cr2;
use crate::arch::x86_64::idt::{InterruptFrame, exception_name};

/// How many failures are being reported right now (0 = none).
static DEPTH: AtomicU8 = AtomicU8::new(0);

/// Reports `record` (a full `PVKIT ...` line without newline), fails the current test with `reason`,
/// prints the summary and powers off with status 1.
pub fn fail_run(record: fmt::Arguments<'_>, reason: fmt::Arguments<'_>) -> ! {
    crate::arch::x86_64::cpu::disable_interrupts();
    // Relaxed: single CPU; this only detects re-entry on the same CPU.
    match DEPTH.fetch_add(1, Ordering::Relaxed) {
        0 => {
            crate::console::print_unlocked(format_args!("{record}\n"));
            crate::selftest::report_abort(reason);
        }
        1 => crate::console::print_unlocked(format_args!(
            "PVKIT PANIC at fatal: another failure while reporting one: {record}\nPVKIT EXIT 1\n"
        )),
        _ => {}
    }
    crate::platform::exit(1)
}

/// Reports a CPU exception (vectors 0..32) with the interrupted registers and fails the run.
pub fn exception(f: &InterruptFrame) -> ! {
    let name = exception_name(f.vector);
    fail_run(
        format_args!(
            "PVKIT EXCEPTION vector={} name=\"{}\" error={:#x} rip={:#x} cr2={:#x} cs={:#x} \
             rflags={:#x} rsp={:#x} ss={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} \
             rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} \
             r14={:#x} r15={:#x}",
            f.vector,
            name,
            f.error_code,
            f.rip,
            read_cr2(),
            f.cs,
            f.rflags,
            f.rsp,
            f.ss,
            f.rax,
            f.rbx,
            f.rcx,
            f.rdx,
            f.rsi,
            f.rdi,
            f.rbp,
            f.r8,
            f.r9,
            f.r10,
            f.r11,
            f.r12,
            f.r13,
            f.r14,
            f.r15
        ),
        format_args!("exception vector={} ({name}) at rip={:#x}", f.vector, f.rip),
    )
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, line, col) = info
        .location()
        .map_or(("<unknown>", 0, 0), |l| (l.file(), l.line(), l.column()));
    fail_run(
        format_args!("PVKIT PANIC at {file}:{line}:{col}: {}", info.message()),
        format_args!("panic: {}", info.message()),
    )
}
