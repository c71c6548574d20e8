//! A last word from a daemon that dies of a signal.
//!
//! A daemon serving several guests that is killed by `SIGSEGV`, or aborted by glibc's heap checks
//! (`malloc(): corrupted top size` and the like raise `SIGABRT`), would otherwise leave only that
//! one line. [`install`] adds a handler that writes, to standard error, which signal it was, the
//! name and id of the thread that took it, the faulting address, and the thread's return addresses
//! as glibc's `backtrace_symbols_fd` prints them (`binary(+0xOFFSET) [0xADDRESS]`: the offset is
//! what `addr2line -f -C -e binary 0xOFFSET` resolves, with the binary the daemon was built as).
//! Then the signal takes its usual course (the previous handler, or the default action).
//!
//! The handler only calls functions that are safe in a signal handler once [`install`] has run:
//! `write`, `prctl`, `gettid`, `sigaction`, `raise`, and `backtrace`/`backtrace_symbols_fd`,
//! whose first use (which loads the unwinder and allocates) [`install`] makes beforehand. It
//! allocates nothing, so it also works when the heap's own lock is held by the dying thread.

use std::fmt::Write as _;
use std::sync::OnceLock;

/// The signals reported: faults, and `abort`.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// Return addresses printed at most.
const FRAMES: usize = 48;

/// The actions in place before [`install`], restored before the signal goes on.
struct Previous([libc::sigaction; SIGNALS.len()]);

// SAFETY: plain data (handler addresses, masks, flags), only read after it is set.
unsafe impl Sync for Previous {}
// SAFETY: as above.
unsafe impl Send for Previous {}

static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// Installs the report for every thread of the process (once; later calls do nothing). `program`
/// names the daemon in the report's first line.
pub fn install(program: &'static str) {
    if PREVIOUS.get().is_some() {
        return;
    }
    PROGRAM.get_or_init(|| program);
    // The first backtrace loads the unwinder (dlopen, malloc): do it now, not in the handler.
    let mut frames = [std::ptr::null_mut::<libc::c_void>(); 4];
    // SAFETY: `frames` has room for the 4 entries given.
    unsafe { libc::backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
    // SAFETY: an all-zero sigaction is a valid value to be overwritten.
    let mut previous: [libc::sigaction; SIGNALS.len()] = unsafe { std::mem::zeroed() };
    for (sig, old) in SIGNALS.iter().zip(previous.iter_mut()) {
        // SAFETY: as above.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO
            | if *sig == libc::SIGSEGV || *sig == libc::SIGBUS {
                // A stack overflow leaves no stack to run on but the alternate one Rust installs.
                libc::SA_ONSTACK
            } else {
                0
            };
        // SAFETY: initialises the mask of a local sigaction.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is a complete sigaction whose handler has the SA_SIGINFO signature;
        // `old` receives the previous one.
        unsafe { libc::sigaction(*sig, &action, old) };
    }
    let _ = PREVIOUS.set(Previous(previous));
}

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// A fixed buffer to format into without allocating; what does not fit is cut off.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        _ => "signal",
    }
}

fn write_err(bytes: &[u8]) {
    // SAFETY: writes bytes from a live buffer to standard error.
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the 17-byte buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let name = std::str::from_utf8(&name[..name_len]).unwrap_or("?");
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    let code = info.si_code;
    // SAFETY: reading the address field of a valid siginfo (meaningful for faults only).
    let addr = unsafe { info.si_addr() } as usize;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    let _ = write!(
        line,
        "{}: fatal {} (code {code}) in thread {name:?} (tid {tid})",
        PROGRAM.get().copied().unwrap_or("pvkit"),
        signal_name(sig),
    );
    // A fault has an address; a sent signal (abort's) has a sender there instead.
    let _ = if code > 0 {
        writeln!(line, ", address {addr:#x}; backtrace:")
    } else {
        writeln!(line, ", sent; backtrace:")
    };
    write_err(&line.buf[..line.len]);
    let mut frames = [std::ptr::null_mut::<libc::c_void>(); FRAMES];
    // SAFETY: `frames` has room for FRAMES entries; the unwinder was loaded by `install`.
    let n = unsafe { libc::backtrace(frames.as_mut_ptr(), FRAMES as libc::c_int) };
    // SAFETY: the first `n` entries were filled in; backtrace_symbols_fd does not allocate.
    unsafe { libc::backtrace_symbols_fd(frames.as_ptr(), n, libc::STDERR_FILENO) };
    // Let the signal take its usual course: the previous action comes back, a fault happens again
    // when the handler returns, and a sent signal (abort's included) is sent again.
    if let Some(prev) = PREVIOUS.get()
        && let Some(i) = SIGNALS.iter().position(|&s| s == sig)
    {
        // SAFETY: restores an action the kernel handed out in `install`.
        unsafe { libc::sigaction(sig, &prev.0[i], std::ptr::null_mut()) };
    } else {
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a valid action.
        unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
    }
    if code <= 0 {
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(sig) };
    }
}
