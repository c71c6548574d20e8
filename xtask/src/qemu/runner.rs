//! The one QEMU runner: its own process group, the timeouts (overall and to the first console
//! line), Ctrl-C, the console streamed line by line into the log with the exact command line, the
//! exit status mapped, and QEMU always killed and reaped.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{QemuConfig, find_program};
use crate::console::{Record, Transcript};
use crate::process;
use crate::workspace::display_command;

/// How a QEMU run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// isa-debug-exit with 0: QEMU status 1.
    Pass,
    /// isa-debug-exit with 1: QEMU status 3.
    Fail,
    /// Any other exit (triple fault with -no-reboot gives 0, QEMU errors, signals).
    Crash(String),
    /// The guest printed nothing within the first-output timeout.
    Silent(Duration),
    /// The guest did not exit within the timeout.
    Timeout(Duration),
    /// QEMU could not be started.
    LaunchFailed(String),
    /// xtask got Ctrl-C / SIGTERM.
    Interrupted,
}

impl Outcome {
    /// Maps QEMU's exit status: `(value << 1) | 1` for isa-debug-exit, so 1 = pass and 3 = fail.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>) -> Outcome {
        match (code, signal) {
            (Some(1), _) => Outcome::Pass,
            (Some(3), _) => Outcome::Fail,
            (Some(0), _) => Outcome::Crash(
                "QEMU exited with 0: the guest reset (triple fault?) or powered off \
                                            without isa-debug-exit"
                    .to_owned(),
            ),
            (Some(c), _) => Outcome::Crash(format!(
                "QEMU exited with status {c} (not an isa-debug-exit code)"
            )),
            (None, Some(s)) => Outcome::Crash(format!("QEMU killed by signal {s}")),
            (None, None) => Outcome::Crash("QEMU ended with an unknown status".to_owned()),
        }
    }

    fn from_status(status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        Outcome::from_exit(status.code(), status.signal())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("guest exited with pass (QEMU status 1)"),
            Outcome::Fail => f.write_str("guest exited with fail (QEMU status 3)"),
            Outcome::Crash(why) => write!(f, "crash: {why}"),
            Outcome::Silent(d) => write!(
                f,
                "guest printed nothing within {} s; QEMU killed",
                d.as_secs_f64()
            ),
            Outcome::Timeout(d) => write!(f, "guest did not exit within {} s; QEMU killed", d.as_secs_f64()),
            Outcome::LaunchFailed(why) => write!(f, "QEMU could not be started: {why}"),
            Outcome::Interrupted => f.write_str("interrupted by signal; QEMU killed"),
        }
    }
}

/// The result of one QEMU run.
#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub transcript: Transcript,
    /// From just before spawning QEMU to the moment its exit was reaped.
    pub wall: Duration,
    pub log: PathBuf,
    pub command: String,
    /// QEMU's own stderr lines (errors about options, devices, the kernel image).
    pub stderr: Vec<String>,
    /// Host-observed time from each test's START to its verdict.
    pub test_times: BTreeMap<String, Duration>,
    /// QEMU's pid, which is also its process group id (None if it never started).
    pub pgid: Option<u32>,
    /// QEMU's exit code, if it exited by itself (a Xen or Linux machine powers off with 0).
    pub exit_code: Option<i32>,
}

enum Event {
    Stdout(String),
    Stderr(String),
    StdoutClosed,
    StderrClosed,
    Exited(std::io::Result<ExitStatus>, Instant),
}

/// What a line of console output turned out to be, for live display.
pub enum Seen<'a> {
    Console(&'a str, Option<&'a Record>),
    Stderr(&'a str),
}

/// Boots QEMU with `cfg`, writes the command line and the whole console to `log`, calls `on_line` for
/// every line as it arrives, and returns once QEMU has exited and been reaped. QEMU runs in its own
/// process group, which is killed on timeout, silence and Ctrl-C.
pub fn run(cfg: &QemuConfig, log: &Path, mut on_line: impl FnMut(Seen<'_>)) -> Result<RunResult> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    let mut logf = File::create(log).with_context(|| format!("creating log file {}", log.display()))?;
    let mut cmd = cfg.command()?;
    let command = display_command(&cmd);
    writeln!(logf, "# command: {command}")?;
    writeln!(
        logf,
        "# timeout: {} s, first-output timeout: {} s",
        cfg.timeout.as_secs_f64(),
        cfg.first_output_timeout.as_secs_f64()
    )?;

    let mut result = RunResult {
        outcome: Outcome::Interrupted,
        transcript: Transcript::default(),
        wall: Duration::ZERO,
        log: log.to_owned(),
        command,
        stderr: Vec::new(),
        test_times: BTreeMap::new(),
        pgid: None,
        exit_code: None,
    };

    let finish = |mut logf: File, result: RunResult| -> Result<RunResult> {
        writeln!(logf, "# outcome: {}", result.outcome)?;
        writeln!(
            logf,
            "# wall time (launch to exit): {:.1} ms",
            result.wall.as_secs_f64() * 1e3
        )?;
        Ok(result)
    };

    if find_program(&cfg.qemu).is_none() {
        result.outcome = Outcome::LaunchFailed(format!(
            "{} not found (PATH or PVKIT_QEMU); `cargo xtask provision` installs it on Debian 12",
            cfg.qemu.display()
        ));
        return finish(logf, result);
    }
    for (what, path) in cfg.inputs() {
        if !path.is_file() {
            result.outcome = Outcome::LaunchFailed(format!("{what} {} does not exist", path.display()));
            return finish(logf, result);
        }
    }

    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::isolate(&mut cmd);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.outcome = Outcome::LaunchFailed(format!("{}: {e}", cfg.qemu.display()));
            return finish(logf, result);
        }
    };
    let pgid = child.id();
    result.pgid = Some(pgid);
    let (tx, rx) = mpsc::channel::<Event>();
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let tx_out = tx.clone();
    thread::spawn(move || {
        read_lines(stdout, |l| tx_out.send(Event::Stdout(l)).is_ok());
        let _ = tx_out.send(Event::StdoutClosed);
    });
    let tx_err = tx.clone();
    thread::spawn(move || {
        read_lines(stderr, |l| tx_err.send(Event::Stderr(l)).is_ok());
        let _ = tx_err.send(Event::StderrClosed);
    });
    thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(Event::Exited(status, Instant::now()));
    });

    let tick = Duration::from_millis(50);
    let mut killed: Option<Outcome> = None;
    let mut killed_at: Option<Instant> = None;
    let mut exited: Option<(std::io::Result<ExitStatus>, Instant)> = None;
    let mut stdout_closed = false;
    let mut stderr_closed = false;
    let mut exit_seen_at: Option<Instant> = None;
    let mut started_tests: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        // Done once QEMU is reaped and its output fully read (or the pipe is held open by a stray
        // grandchild for more than a moment).
        if let Some(at) = exit_seen_at
            && ((stdout_closed && stderr_closed) || at.elapsed() > Duration::from_millis(500))
        {
            break;
        }
        match rx.recv_timeout(tick) {
            Ok(Event::Stdout(line)) => {
                writeln!(logf, "{line}")?;
                let rec = result.transcript.push_line(&line).cloned();
                match &rec {
                    Some(Record::TestStart { name }) => {
                        started_tests.insert(name.clone(), Instant::now());
                    }
                    Some(Record::TestPass { name, .. } | Record::TestFail { name, .. }) => {
                        if let Some(t0) = started_tests.get(name) {
                            result.test_times.insert(name.clone(), t0.elapsed());
                        }
                    }
                    _ => {}
                }
                on_line(Seen::Console(&line, rec.as_ref()));
            }
            Ok(Event::Stderr(line)) => {
                writeln!(logf, "[qemu stderr] {line}")?;
                on_line(Seen::Stderr(&line));
                result.stderr.push(line);
            }
            Ok(Event::StdoutClosed) => stdout_closed = true,
            Ok(Event::StderrClosed) => stderr_closed = true,
            Ok(Event::Exited(status, at)) => {
                exited = Some((status, at));
                exit_seen_at = Some(Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if exited.is_none() && killed.is_none() {
            let elapsed = started.elapsed();
            let reason = if process::interrupted() {
                Some(Outcome::Interrupted)
            } else if result.transcript.lines == 0 && elapsed >= cfg.first_output_timeout {
                Some(Outcome::Silent(cfg.first_output_timeout))
            } else if elapsed >= cfg.timeout {
                Some(Outcome::Timeout(cfg.timeout))
            } else {
                None
            };
            if let Some(reason) = reason {
                process::kill_group(pgid);
                killed = Some(reason);
                killed_at = Some(Instant::now());
            }
        }
        if exited.is_none()
            && let Some(at) = killed_at
            && at.elapsed() > Duration::from_secs(10)
        {
            writeln!(logf, "# QEMU (pid {pgid}) did not die within 10 s of SIGKILL")?;
            bail!(
                "QEMU (pid {pgid}) did not die within 10 s of SIGKILL; log: {}",
                log.display()
            );
        }
    }
    // Anything QEMU started in its group (it starts nothing today) goes too.
    if process::group_exists(pgid) {
        process::kill_group(pgid);
    }

    let (status, exited_at) = exited.expect("loop ends only after the exit event");
    result.wall = exited_at.duration_since(started);
    if killed.is_none() {
        result.exit_code = status.as_ref().ok().and_then(ExitStatus::code);
    }
    result.outcome = match (killed, status) {
        (Some(reason), _) => reason,
        // QEMU itself exits with 1 on its own startup errors (bad kernel image, unknown option), which
        // looks like the guest's pass code: without a single console line it cannot be the guest.
        (None, Ok(status)) if result.transcript.lines == 0 && status.code() == Some(1) => {
            Outcome::Crash(format!(
                "QEMU exited with status 1 before the guest printed anything (a QEMU error, not a guest pass){}",
                result
                    .stderr
                    .first()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ))
        }
        (None, Ok(status)) => Outcome::from_status(status),
        (None, Err(e)) => Outcome::Crash(format!("waiting for QEMU failed: {e}")),
    };
    finish(logf, result)
}

/// Reads `r` line by line (lossy UTF-8, `\r` stripped) until EOF or until `sink` returns false.
fn read_lines(r: impl Read, mut sink: impl FnMut(String) -> bool) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                if !sink(line) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::QBOOT;
    use std::os::unix::fs::PermissionsExt;
    #[test]
    fn exit_status_mapping() {
        assert_eq!(Outcome::from_exit(Some(1), None), Outcome::Pass);
        assert_eq!(Outcome::from_exit(Some(3), None), Outcome::Fail);
        assert!(matches!(Outcome::from_exit(Some(0), None), Outcome::Crash(m) if m.contains("triple fault")));
        assert!(matches!(Outcome::from_exit(Some(2), None), Outcome::Crash(m) if m.contains("status 2")));
        assert!(matches!(Outcome::from_exit(Some(5), None), Outcome::Crash(_)));
        assert!(matches!(Outcome::from_exit(None, Some(9)), Outcome::Crash(m) if m.contains("signal 9")));
    }

    /// A stand-in for QEMU: a shell script that ignores its arguments.
    fn fake_qemu(dir: &Path, name: &str, body: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn fake_run(name: &str, body: &str, timeout_ms: u64, silent_ms: u64) -> RunResult {
        let dir = std::env::temp_dir().join(format!("pvkit-xtask-test-{}", std::process::id()));
        let qemu = fake_qemu(&dir, name, body);
        // Any existing file will do as the "kernel": the fake ignores it.
        let mut cfg = QemuConfig::pvh(
            &std::env::current_exe().unwrap(),
            String::new(),
            vec![],
            Duration::from_millis(timeout_ms),
        );
        cfg.qemu = qemu;
        cfg.first_output_timeout = Duration::from_millis(silent_ms);
        let r = run(&cfg, &dir.join(format!("{name}.log")), |_| {}).unwrap();
        // Whatever happened, nothing of QEMU's process group is left.
        assert!(
            !process::group_exists(r.pgid.expect("fake QEMU started")),
            "{name}: process group survived"
        );
        r
    }

    // These need qboot's path to exist for the pre-launch check; it is installed with QEMU.
    fn have_qboot() -> bool {
        assert!(
            Path::new(QBOOT).is_file(),
            "{QBOOT} missing: install qemu-system-x86 (cargo xtask provision)"
        );
        true
    }

    #[test]
    fn runner_maps_exit_codes_and_parses_console() {
        have_qboot();
        let r = fake_run(
            "pass",
            "echo 'PVKIT BOOT platform=pvh'; echo 'PVKIT TEST hello START'; echo 'PVKIT TEST hello PASS'; \
             printf 'PVKIT SUMMARY passed=1 failed=0\\r\\n'; exit 1",
            10_000,
            5_000,
        );
        assert_eq!(r.outcome, Outcome::Pass);
        assert!(r.transcript.passed("hello"));
        assert_eq!(r.transcript.summary(), Some((1, 0)));
        assert!(r.test_times.contains_key("hello"));
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(log.starts_with("# command: "), "{log}");
        assert!(log.contains("PVKIT TEST hello PASS"));
        assert_eq!(
            fake_run("fail", "echo x; exit 3", 10_000, 5_000).outcome,
            Outcome::Fail
        );
        // QEMU's own startup errors also exit with 1, but the guest never printed anything.
        let qemu_error = fake_run("qemu-error", "echo 'qemu: bad kernel' >&2; exit 1", 10_000, 5_000);
        assert!(
            matches!(&qemu_error.outcome, Outcome::Crash(m) if m.contains("bad kernel")),
            "{:?}",
            qemu_error.outcome
        );
        assert_eq!(qemu_error.stderr, vec!["qemu: bad kernel"]);
        assert!(matches!(
            fake_run("crash", "echo x; exit 0", 10_000, 5_000).outcome,
            Outcome::Crash(_)
        ));
        assert!(
            matches!(fake_run("killed", "echo x; kill -9 $$", 10_000, 5_000).outcome, Outcome::Crash(m) if m.contains("signal 9"))
        );
    }

    #[test]
    fn silent_and_hanging_guests_are_killed_and_reaped() {
        have_qboot();
        let t0 = Instant::now();
        let silent = fake_run("silent", "exec sleep 30", 20_000, 300);
        assert_eq!(silent.outcome, Outcome::Silent(Duration::from_millis(300)));
        let hang = fake_run("hang", "echo 'PVKIT BOOT'; exec sleep 30", 600, 300);
        assert_eq!(hang.outcome, Outcome::Timeout(Duration::from_millis(600)));
        assert!(hang.transcript.boot().is_some());
        // Both were killed, not waited out.
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        let log = std::fs::read_to_string(&hang.log).unwrap();
        assert!(log.contains("# outcome: guest did not exit"), "{log}");
    }

    #[test]
    fn missing_qemu_is_a_launch_failure() {
        let mut cfg = QemuConfig::pvh(
            Path::new("/nonexistent/kernel"),
            String::new(),
            vec![],
            Duration::from_secs(1),
        );
        cfg.qemu = "/nonexistent/qemu-system-x86_64".into();
        let dir = std::env::temp_dir().join(format!("pvkit-xtask-test-{}", std::process::id()));
        let r = run(&cfg, &dir.join("missing.log"), |_| {}).unwrap();
        assert!(
            matches!(&r.outcome, Outcome::LaunchFailed(m) if m.contains("not found")),
            "{:?}",
            r.outcome
        );
    }
}
