//! The kernel console: formatted output to whatever the platform uses (COM1 on the PC platform, the
//! PV console ring, or Xen's own console in dom0, on Xen PV). One lock keeps a `kprintln!` line in one piece; the fatal path
//! bypasses the lock so a panic or exception that interrupted a printer still gets its report out.

use core::fmt::{self, Write};

/// Serialises whole formatted records. Held only with interrupts off, so an interrupt handler that
/// prints can never spin on a lock its own CPU holds.
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

struct Sink;

impl Write for Sink {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::platform::console_write(s.as_bytes());
        Ok(())
    }
}

/// Backend of `kprint!` and `kprintln!`.
pub fn print(args: fmt::Arguments<'_>) {
    crate::arch::without_interrupts(|| {
        let _guard = LOCK.lock();
        // `Sink` never fails; an `Err` could only come from a `Display` impl, and then the partial
        // output is all there is to show.
        let _ = Sink.write_fmt(args);
    });
}

/// Prints without taking the console lock. Only for the fatal path, which runs once (guarded in
/// `fatal`) and never returns to whoever might hold the lock.
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Sink.write_fmt(args);
}

/// Prints one line (ending in `\n`) to the kernel console.
macro_rules! kprintln {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
