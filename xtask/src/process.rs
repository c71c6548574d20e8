//! Child processes that cannot outlive xtask: own process group, killed as a group, parent-death
//! signal, and Ctrl-C / SIGTERM turned into a flag the runners poll.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe. Relaxed is enough, the flag carries no other data.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that set a flag instead of killing xtask, so a run in
/// progress can kill its QEMU group and report before exiting. Child processes in xtask's own process
/// group (nested cargo) still receive the terminal's SIGINT themselves.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only performs an atomic store, which is
        // async-signal-safe; `signal` has no other preconditions.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether Ctrl-C (or SIGTERM/SIGHUP) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Makes `cmd` start in a new process group (its pid is the group id) and die with SIGKILL if xtask
/// dies first, however it dies.
pub fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let in_child = move || {
        // Parent death signal: if xtask is SIGKILLed, the kernel kills this child.
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the calling process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // xtask may have died between fork and prctl; then nobody would kill this child later.
        // SAFETY: getppid(2) cannot fail and has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: `in_child` runs in the forked child before exec; it only calls prctl(2) and getppid(2),
    // which are async-signal-safe, allocates nothing and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(in_child);
    }
}

/// Sends SIGKILL to every process of the group led by `pgid`.
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group `pgid`, which xtask created with
    // `isolate` and which has not been reaped yet (callers only kill before `wait` returned).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Whether any process of group `pgid` still exists (zombies included).
pub fn group_exists(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 performs only the existence and permission check, it delivers nothing.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Whether xtask runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
