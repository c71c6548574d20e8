//! The daemons' fatal-signal report (`pvkit_backends::crash`): a child process (this test binary
//! again) installs it, then dies in a named thread; the parent reads what it left on stderr.

use std::process::Command;

/// Set in the child: how it should die.
const MODE: &str = "PVKIT_CRASH_TEST_MODE";

/// The child's body: runs only when [`MODE`] is set (the parent starts it that way).
#[test]
fn crash_child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    pvkit_backends::crash::install("crash-test");
    std::thread::Builder::new()
        .name("vbd-7-51712".into())
        .spawn(move || match mode.as_str() {
            "abort" => std::process::abort(),
            // SAFETY: none: this writes through a null pointer on purpose, to fault.
            "segv" => unsafe { std::ptr::null_mut::<u64>().write_volatile(1) },
            _ => unreachable!(),
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Runs the child dying by `mode`; checks it was killed by `signal` and returns the report's first
/// line and all of stderr.
fn die(mode: &str, signal: i32, name: &str) -> (String, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.signal(), Some(signal), "{:?}\n{err}", out.status);
    let line = err
        .lines()
        .find(|l| l.starts_with(&format!("crash-test: fatal {name}")))
        .unwrap_or_else(|| panic!("no report:\n{err}"))
        .to_owned();
    assert!(line.contains("in thread \"vbd-7-51712\""), "{line}");
    (line, err)
}

#[test]
fn an_abort_names_its_thread_and_leaves_a_backtrace_then_still_kills() {
    let (_, err) = die("abort", libc::SIGABRT, "SIGABRT");
    let frames = err.lines().filter(|l| l.contains("[0x")).count();
    assert!(frames >= 3, "{frames} frames:\n{err}");
}

#[test]
fn a_segfault_reports_the_address_then_still_kills() {
    let (line, _) = die("segv", libc::SIGSEGV, "SIGSEGV");
    assert!(line.contains("address 0x0;"), "{line}");
}
