//! `pvkit-fsbase-watch`: checks, all through a Xen boot, that dom0's user threads keep their own
//! FS base (built by xtask with plain `rustc`, std only, and shipped in dom0's initramfs).
//!
//! Usage: `pvkit-fsbase-watch <stop-file>`. On x86-64 a thread's FS base points at its thread
//! control block, whose first word is the block's own address; glibc finds each thread's
//! thread-local data (malloc's arena and cache pointers among them) through it. Three threads
//! read that word through `%fs` after every wake-up (1 ms sleeps, so every check follows a return
//! to the thread) and compare it with the address the thread started with. A thread that finds
//! another value ran with a FS base that is not its own: the platform (the hypervisor, the
//! kernel, or the CPU emulation under them) lost a write of it. Each such event prints
//! `PVKIT-XEN PLATFORM fsbase-lost thread=<i> want=<addr> got=<addr>` (at most 20 lines); once
//! `<stop-file>` exists the program prints `PVKIT-XEN PLATFORM fsbase checks=<n> lost=<n>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const THREADS: usize = 3;
/// Lines printed at most about single events.
const MAX_EVENT_LINES: u64 = 20;

static CHECKS: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

/// The first word of the thread control block, read through `%fs`.
fn fs_self() -> usize {
    let v: usize;
    // SAFETY: reads one word at `%fs:0`, the TCB's self pointer, which glibc's x86-64 TLS ABI
    // keeps at that place for every thread.
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v
}

fn watch(i: usize) {
    let want = fs_self();
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let got = fs_self();
        CHECKS.fetch_add(1, Ordering::Relaxed);
        if got != want {
            let n = LOST.fetch_add(1, Ordering::Relaxed);
            if n < MAX_EVENT_LINES {
                // Printing needs this thread's own TLS; a FS base that is still wrong could make
                // this fault, so only numbers are formatted, and the event is counted first.
                println!("PVKIT-XEN PLATFORM fsbase-lost thread={i} want={want:#x} got={got:#x}");
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(stop) = args.get(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: pvkit-fsbase-watch <stop-file>");
        std::process::exit(2);
    };
    for i in 0..THREADS {
        std::thread::spawn(move || watch(i));
    }
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "PVKIT-XEN PLATFORM fsbase checks={} lost={}",
        CHECKS.load(Ordering::Relaxed),
        LOST.load(Ordering::Relaxed)
    );
}
