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

fn die(mode: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_abort_names_its_thread_and_leaves_a_backtrace_then_still_kills() {
    use std::os::unix::process::ExitStatusExt;
    let (status, err) = die("abort");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("crash-test: fatal SIGABRT"))
        .unwrap_or_else(|| panic!("no report:\n{err}"));
    assert!(line.contains("in thread \"vbd-7-51712\""), "{line}");
    let frames = err.lines().filter(|l| l.contains("[0x")).count();
    assert!(frames >= 3, "{frames} frames:\n{err}");
}

#[test]
fn a_segfault_reports_the_address_then_still_kills() {
    use std::os::unix::process::ExitStatusExt;
    let (status, err) = die("segv");
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("crash-test: fatal SIGSEGV"))
        .unwrap_or_else(|| panic!("no report:\n{err}"));
    assert!(line.contains("address 0x0;"), "{line}");
    assert!(line.contains("in thread \"vbd-7-51712\""), "{line}");
}
