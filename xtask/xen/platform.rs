//! `pvkit-platform-watch`: checks, all through a Xen boot, that the platform under dom0 (Xen,
//! dom0's kernel, QEMU's CPU emulation) keeps what user programs rely on (built by xtask with
//! plain `rustc`, std only, and shipped in dom0's initramfs; `init.sh` runs it).
//!
//! Usage: `pvkit-platform-watch <stop-file>`. Threads that sleep 1 ms between checks, so that
//! every check follows a return to the thread, possibly from another process or vCPU:
//! - **FS base**: a thread's FS base points at its thread control block, whose first word is the
//!   block's own address (glibc finds each thread's thread-local data, malloc's among it,
//!   through it); three threads read it through `%fs` and compare it with their own;
//! - **fresh pages**: every 2 ms, 16 newly mapped pages (every other time at the start of a 2 MiB
//!   span, as malloc's new arenas are) are written and read back;
//! - **vector registers**: a pattern in xmm0..3 or ymm0..3 (in turn, when AVX is there) held
//!   across a `nanosleep` must come back unchanged.
//!
//! Each event prints `PVKIT-XEN PLATFORM <check>-lost|bad ...` (at most 20 lines per check); once
//! `<stop-file>` exists the program prints `PVKIT-XEN PLATFORM totals fsbase_checks=<n>
//! fsbase_lost=<n> fresh_rounds=<n> fresh_bad=<n> vector_checks=<n> vector_bad=<n>`.

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

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}

const PAGE: usize = 4096;
/// Pages mapped, written and read back per round.
const FRESH_PAGES: usize = 16;
/// What one page-table page maps.
const SPAN: usize = 2 << 20;

static FRESH_ROUNDS: AtomicU64 = AtomicU64::new(0);
static FRESH_BAD: AtomicU64 = AtomicU64::new(0);

/// Fresh anonymous pages must read back what was just written: every 2 ms, maps 16 pages, writes
/// a word pattern of the round into each, reads it back, unmaps them. A page that reads back
/// other bytes was reached through a stale or wrong translation.
fn fresh_memory() {
    for round in 1u64.. {
        std::thread::sleep(Duration::from_millis(2));
        // Every other round the pages start at a 2 MiB boundary of a fresh 4 MiB mapping, as
        // malloc's new arenas do (64 MiB-aligned): their page-table page is new too.
        let aligned = round % 2 == 0;
        let map_len = if aligned { 2 * SPAN } else { FRESH_PAGES * PAGE };
        // SAFETY: a new private anonymous mapping; nothing else uses it.
        let p = unsafe { mmap(std::ptr::null_mut(), map_len, 3, 0x22, -1, 0) };
        if p as isize == -1 {
            continue;
        }
        let start = if aligned {
            (p as usize).next_multiple_of(SPAN)
        } else {
            p as usize
        };
        let len = FRESH_PAGES * PAGE;
        let words = len / 8;
        let base = start as *mut u64;
        for i in (0..words).step_by(64) {
            let word = base.wrapping_add(i);
            // SAFETY: `word` is inside the mapping, aligned.
            unsafe { word.write_volatile(round << 20 | i as u64) };
        }
        for i in (0..words).step_by(64) {
            let word = base.wrapping_add(i);
            // SAFETY: as above.
            let got = unsafe { word.read_volatile() };
            if got != round << 20 | i as u64 {
                let n = FRESH_BAD.fetch_add(1, Ordering::Relaxed);
                if n < MAX_EVENT_LINES {
                    println!("PVKIT-XEN PLATFORM fresh-page-bad round={round} word={i} got={got:#x}");
                }
            }
        }
        // SAFETY: the mapping made above, not used after this.
        unsafe { munmap(p, map_len) };
        FRESH_ROUNDS.fetch_add(1, Ordering::Relaxed);
    }
}

pub static VECTOR_CHECKS: AtomicU64 = AtomicU64::new(0);
pub static VECTOR_BAD: AtomicU64 = AtomicU64::new(0);

/// One round of the register check: loads `$r0..$r3` from the pattern with `$mov`, sleeps 1 ms in
/// a raw `nanosleep` (the system call keeps vector registers; a context switch saves and restores
/// them), and stores them back into `out`; `$w` is the registers' width in bytes.
macro_rules! hold_round {
    ($pattern:expr, $out:expr, $mov:literal, $w:literal, $r0:tt, $r1:tt, $r2:tt, $r3:tt) => {{
        let ts = [0i64, 1_000_000];
        std::arch::asm!(
            concat!($mov, " ", $r0, ", [{p}]"),
            concat!($mov, " ", $r1, ", [{p} + ", $w, "]"),
            concat!($mov, " ", $r2, ", [{p} + 2 * ", $w, "]"),
            concat!($mov, " ", $r3, ", [{p} + 3 * ", $w, "]"),
            "syscall",
            concat!($mov, " [{o}], ", $r0),
            concat!($mov, " [{o} + ", $w, "], ", $r1),
            concat!($mov, " [{o} + 2 * ", $w, "], ", $r2),
            concat!($mov, " [{o} + 3 * ", $w, "], ", $r3),
            p = in(reg) $pattern.as_ptr(),
            o = in(reg) $out.as_mut_ptr(),
            inlateout("rax") 35usize => _, // nanosleep
            in("rdi") ts.as_ptr(),
            in("rsi") 0usize,
            out("rcx") _,
            out("r11") _,
            out($r0) _,
            out($r1) _,
            out($r2) _,
            out($r3) _,
        );
    }};
}

/// The register check on ymm0..ymm3 (the whole 128-byte arrays).
///
/// # Safety
/// The CPU must have AVX (the caller checks).
#[target_feature(enable = "avx")]
unsafe fn vector_round(pattern: &[u64; 16], out: &mut [u64; 16]) {
    // SAFETY: reads and writes the two 128-byte arrays given; nanosleep reads its timespec.
    unsafe { hold_round!(pattern, out, "vmovdqu", "32", "ymm0", "ymm1", "ymm2", "ymm3") };
}

/// The register check on xmm0..xmm3 with SSE2 moves (every x86-64 CPU), in the first half of the
/// arrays.
fn sse_round(pattern: &[u64; 16], out: &mut [u64; 16]) {
    // SAFETY: as in `vector_round`, 64 bytes of each.
    unsafe { hold_round!(pattern, out, "movdqu", "16", "xmm0", "xmm1", "xmm2", "xmm3") };
    out[8..].copy_from_slice(&pattern[8..]);
}

/// Vector registers must survive a context switch: patterns held across 1 ms sleeps, 256-bit
/// (AVX) and 128-bit (SSE) rounds in turn.
fn vectors() {
    vectors_for(u64::MAX);
}

/// [`vectors`] for `rounds` rounds.
pub fn vectors_for(rounds: u64) {
    let avx = std::arch::is_x86_feature_detected!("avx");
    for round in 1..=rounds {
        let pattern: [u64; 16] =
            std::array::from_fn(|i| round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64);
        let mut out = [0u64; 16];
        if avx && round % 2 == 0 {
            // SAFETY: AVX is there (checked above).
            unsafe { vector_round(&pattern, &mut out) };
        } else {
            sse_round(&pattern, &mut out);
        }
        VECTOR_CHECKS.fetch_add(1, Ordering::Relaxed);
        if out != pattern {
            let n = VECTOR_BAD.fetch_add(1, Ordering::Relaxed);
            if n < MAX_EVENT_LINES {
                let lane = (0..16).find(|&i| out[i] != pattern[i]).unwrap_or(0);
                let kind = if avx && round % 2 == 0 { "avx" } else { "sse" };
                println!(
                    "PVKIT-XEN PLATFORM vector-lost {kind} round={round} lane={lane} want={:#x} got={:#x}",
                    pattern[lane], out[lane]
                );
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
    std::thread::spawn(fresh_memory);
    std::thread::spawn(vectors);
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "PVKIT-XEN PLATFORM totals fsbase_checks={} fsbase_lost={} fresh_rounds={} fresh_bad={} vector_checks={} vector_bad={}",
        CHECKS.load(Ordering::Relaxed),
        LOST.load(Ordering::Relaxed),
        FRESH_ROUNDS.load(Ordering::Relaxed),
        FRESH_BAD.load(Ordering::Relaxed),
        VECTOR_CHECKS.load(Ordering::Relaxed),
        VECTOR_BAD.load(Ordering::Relaxed)
    );
}
