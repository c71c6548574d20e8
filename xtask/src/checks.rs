//! What a finished guest must show, whatever environment it ran in: the verdicts, summary and exit
//! of its tests, and the workload's own figures re-checked against what xtask configured.
//!
//! The environments turn their evidence into a [`GuestRun`] (QEMU: the exit status of
//! `isa-debug-exit` and the console; Xen: the domain's shutdown reason and its console ring), so a
//! workload is checked by one function everywhere. Evidence only one side has (QEMU's trace, dom0's
//! counts, a daemon's log, a disk image) is checked by that environment's executor on top.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::console::{Fields, Record, Transcript};

/// The address the guest's `fault-pagefault` test touches (unmapped); the exception report must
/// name it in `cr2`. (`0xdead_0000_0000` would not do: bit 47 set makes it non-canonical, a #GP
/// rather than a #PF.)
pub const PAGEFAULT_ADDRESS: u64 = 0x0dea_d000_0000;
/// The message of the guest's `fault-panic` test.
pub const PANIC_MESSAGE: &str = "deliberate panic from fault-panic test";
/// Page fault, general protection and double fault vectors.
const VECTOR_PF: u64 = 14;
const VECTOR_GP: u64 = 13;
const VECTOR_DF: u64 = 8;
/// Allowed relative error of the timer test's tick count.
pub const TIMER_TOLERANCE: f64 = 0.10;
/// Seed xtask gives every workload (not the guest's default, so the host checks prove it was used).
pub const WORKLOAD_SEED: u64 = 7;

/// How the guest ended its run, in its own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// It reported pass (QEMU: `isa-debug-exit` 0; Xen PV: `SCHEDOP_shutdown` poweroff).
    Pass,
    /// It reported failure (QEMU: `isa-debug-exit` 1; Xen PV: shutdown with `crash`).
    Fail,
    /// It never reported: a triple fault, a hang killed by the timeout, silence, a QEMU error.
    Crash(String),
}

/// A finished guest as the checks see it.
#[derive(Debug, Clone, Copy)]
pub struct GuestRun<'a> {
    pub transcript: &'a Transcript,
    pub end: &'a GuestEnd,
    /// Host-observed time from each test's START to its verdict (where the host reads the console
    /// as it comes).
    pub test_times: Option<&'a BTreeMap<String, Duration>>,
}

impl GuestRun<'_> {
    /// The PASS fields of `test`.
    pub fn pass(&self, test: &str) -> Option<&Fields> {
        match self.transcript.verdict(test) {
            Some(Record::TestPass { fields, .. }) => Some(fields),
            _ => None,
        }
    }
}

/// Every test in `tests` passed and nothing else failed: PASS verdicts, no errors, panics or
/// exceptions, a clean summary, `PVKIT EXIT 0` and a pass exit.
pub fn all_passed(run: &GuestRun<'_>, tests: &[&str], problems: &mut Vec<String>) {
    let t = run.transcript;
    match run.end {
        GuestEnd::Pass => {}
        GuestEnd::Fail => problems.push("the guest ended its run with fail".to_owned()),
        GuestEnd::Crash(why) => problems.push(format!("the guest did not end its run: {why}")),
    }
    if t.boot().is_none() {
        problems.push("no `PVKIT BOOT` line".to_owned());
    }
    for e in t.errors() {
        problems.push(format!("guest reported: {e}"));
    }
    for test in tests {
        match t.verdict(test) {
            None => problems.push(format!("test {test} reported no verdict")),
            Some(Record::TestFail { reason, .. }) => problems.push(format!("test {test} FAIL: {reason}")),
            Some(_) => {}
        }
    }
    for (name, reason) in t.failures().filter(|(n, _)| !tests.contains(n)) {
        problems.push(format!("test {name} FAIL: {reason}"));
    }
    for name in t.unfinished().into_iter().filter(|n| !tests.contains(n)) {
        problems.push(format!("test {name} started but reported no verdict"));
    }
    for (loc, msg) in t.panics() {
        problems.push(format!("guest panicked at {loc}: {msg}"));
    }
    for e in t.exceptions() {
        problems.push(format!("guest exception: {e}"));
    }
    match t.summary() {
        Some((_, 0)) => {}
        Some((p, f)) => problems.push(format!("summary says passed={p} failed={f}")),
        None => problems.push("no `PVKIT SUMMARY` line".to_owned()),
    }
    match t.exit_record() {
        Some(0) => {}
        Some(c) => problems.push(format!("guest printed `PVKIT EXIT {c}`, expected 0")),
        None => problems.push("no `PVKIT EXIT` line".to_owned()),
    }
}

/// The run was meant to fail in `test`: a fail exit (not a crash), no PASS for it, `PVKIT EXIT 1`.
pub fn failed_as_meant(run: &GuestRun<'_>, test: &str, problems: &mut Vec<String>) {
    let t = run.transcript;
    if *run.end != GuestEnd::Fail {
        problems.push(format!(
            "expected the guest to end its run with fail, it ended with {:?}",
            run.end
        ));
    }
    if t.boot().is_none() {
        problems.push("no `PVKIT BOOT` line".to_owned());
    }
    for e in t.errors() {
        problems.push(format!("guest reported: {e}"));
    }
    if t.passed(test) {
        problems.push(format!("test {test} claims PASS although it must fail"));
    }
    if t.exit_record() != Some(1) {
        problems.push(format!("expected `PVKIT EXIT 1`, got {:?}", t.exit_record()));
    }
}

/// The page-fault report names vector 14 and [`PAGEFAULT_ADDRESS`].
pub fn pagefault(t: &Transcript, problems: &mut Vec<String>) {
    let pf = t.exceptions().find(|e| e.get_u64("vector") == Some(VECTOR_PF));
    if pf.is_none() && t.exceptions().any(|e| e.get_u64("vector") == Some(VECTOR_GP)) {
        problems.push(format!(
            "got a general protection fault instead of a page fault: is the address non-canonical? \
             ({PAGEFAULT_ADDRESS:#x} must have bits 47..63 all equal)"
        ));
    }
    match pf {
        None => problems.push(format!(
            "no `PVKIT EXCEPTION vector={VECTOR_PF}` line (exceptions seen: {})",
            t.exceptions()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        Some(e) => match e.get_u64("cr2") {
            Some(cr2) if cr2 == PAGEFAULT_ADDRESS => {}
            Some(cr2) => problems.push(format!(
                "page fault at cr2={cr2:#x}, expected {PAGEFAULT_ADDRESS:#x}"
            )),
            None => problems.push(format!("page fault report has no cr2: {e}")),
        },
    }
    for (loc, msg) in t.panics() {
        problems.push(format!(
            "guest panicked at {loc}: {msg} (the fault handler should report, not panic)"
        ));
    }
}

/// The panic report carries [`PANIC_MESSAGE`] and a source location.
pub fn panic(t: &Transcript, problems: &mut Vec<String>) {
    let panics: Vec<_> = t.panics().collect();
    match panics.iter().find(|(_, m)| m.contains(PANIC_MESSAGE)) {
        None => problems.push(format!(
            "no `PVKIT PANIC` with message {PANIC_MESSAGE:?} (panics seen: {panics:?})"
        )),
        Some((loc, _)) if !loc.contains(".rs:") => problems.push(format!(
            "panic location {loc:?} does not name a source file and line"
        )),
        Some(_) => {}
    }
}

/// The stack overflow is reported as a double fault.
pub fn double_fault(t: &Transcript, problems: &mut Vec<String>) {
    if !t.exceptions().any(|e| e.get_u64("vector") == Some(VECTOR_DF)) {
        problems.push(format!(
            "no `PVKIT EXCEPTION vector={VECTOR_DF}` (double fault) line"
        ));
    }
}

/// The timer figures, re-checked: the guest used the rate and window xtask asked for, counted
/// ticks within [`TIMER_TOLERANCE`], and (where the host saw the console live) the window was not
/// shorter on the host's clock.
pub fn timer(run: &GuestRun<'_>, hz_asked: u64, ms_asked: u64, problems: &mut Vec<String>) {
    let Some(fields) = run.pass("timer") else {
        return; // Reported as a missing or failed verdict.
    };
    let num = |k: &str| fields.get_u64(k);
    let (Some(hz), Some(ms), Some(ticks), Some(elapsed_us)) = (
        num("hz"),
        num("ms"),
        num("lapic_ticks").or(num("ticks")),
        num("elapsed_us"),
    ) else {
        // Xen PV reports its VIRQ_TIMER count under another name; the rate check needs hz and ms.
        if (num("hz"), num("ms")) != (Some(hz_asked), Some(ms_asked)) {
            problems.push(format!(
                "guest used hz={:?} ms={:?}, xtask asked for hz={hz_asked} ms={ms_asked}",
                num("hz"),
                num("ms")
            ));
        }
        return;
    };
    if (hz, ms) != (hz_asked, ms_asked) {
        problems.push(format!(
            "guest used hz={hz} ms={ms}, xtask asked for hz={hz_asked} ms={ms_asked}"
        ));
    }
    let expected = hz as f64 * elapsed_us as f64 / 1e6;
    if (ticks as f64 - expected).abs() > expected * TIMER_TOLERANCE {
        problems.push(format!(
            "{ticks} timer ticks in {elapsed_us} us at {hz} Hz, expected {expected:.0} +- {:.0}%",
            TIMER_TOLERANCE * 100.0
        ));
    }
    if (elapsed_us as f64) < ms as f64 * 1e3 * (1.0 - TIMER_TOLERANCE) {
        problems.push(format!("guest measured {elapsed_us} us for a {ms} ms window"));
    }
    // The host's clock is independent of the guest's TSC calibration: the window cannot have been
    // shorter than asked for (TCG's virtual clock follows the host's).
    if let Some(host) = run.test_times.and_then(|t| t.get("timer"))
        && host.as_secs_f64() < ms as f64 / 1e3 * (1.0 - TIMER_TOLERANCE)
    {
        problems.push(format!(
            "host saw the timer test take {host:?}, shorter than its {ms} ms window"
        ));
    }
}

/// `cpuid` detected the hypervisor kind xtask expects.
pub fn cpuid(run: &GuestRun<'_>, expect: &str, problems: &mut Vec<String>) {
    let got = run.pass("cpuid").and_then(|f| f.get("hypervisor"));
    if run.pass("cpuid").is_some() && got != Some(expect) {
        problems.push(format!("cpuid detected {got:?}, expected {expect}"));
    }
}

/// Every workload of a device-absent run failed with `device <name> absent`, and quickly.
pub fn device_absent(
    run: &GuestRun<'_>,
    tests: &[(String, String)],
    took: Option<Duration>,
    limit: Duration,
    problems: &mut Vec<String>,
) {
    let t = run.transcript;
    for (test, dev) in tests {
        let want = format!("device {dev} absent");
        match t.verdict(test) {
            Some(Record::TestFail { reason, .. }) if reason.contains(&want) => {}
            other => problems.push(format!("{test}: expected `FAIL {want}`, got {other:?}")),
        }
    }
    if t.summary() != Some((0, tests.len() as u64)) {
        problems.push(format!(
            "summary {:?}, expected passed=0 failed={}",
            t.summary(),
            tests.len()
        ));
    }
    if let Some(took) = took
        && took > limit
    {
        problems.push(format!(
            "the absent device took {took:?} to report, more than {limit:?}"
        ));
    }
}

/// A block write the device refused surfaced the device's own error status.
pub fn blk_error(run: &GuestRun<'_>, test: &str, problems: &mut Vec<String>) {
    // The device's status, not a driver-side refusal (the disk does not say it is read-only for
    // IDE and AHCI; for virtio the driver must still send the write).
    match run.pass(test).and_then(|f| f.get("error")) {
        Some(e) if e.contains("error status") => {}
        None if run.pass(test).is_none() => {}
        other => problems.push(format!(
            "{test} PASS must carry the device's error status, got error={other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn transcript(lines: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        for l in lines {
            t.push_line(l);
        }
        t
    }

    const BOOT: &str = "PVKIT BOOT platform=pvh hypervisor=none mem_mib=128 cmdline=\"tests=hello\"";

    fn problems_of(lines: &[&str], end: GuestEnd, tests: &[&str]) -> Vec<String> {
        let t = transcript(lines);
        let run = GuestRun {
            transcript: &t,
            end: &end,
            test_times: None,
        };
        let mut p = Vec::new();
        all_passed(&run, tests, &mut p);
        p
    }

    #[test]
    fn a_pass_needs_boot_verdict_summary_exit_and_a_pass_end() {
        let good = [
            BOOT,
            "PVKIT TEST hello START",
            "PVKIT TEST hello PASS",
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        assert_eq!(
            problems_of(&good, GuestEnd::Pass, &["hello"]),
            Vec::<String>::new()
        );
        assert!(
            !problems_of(&good[..4], GuestEnd::Pass, &["hello"]).is_empty(),
            "no EXIT"
        );
        assert!(
            !problems_of(&good[1..], GuestEnd::Pass, &["hello"]).is_empty(),
            "no BOOT"
        );
        assert!(
            !problems_of(&good[..3], GuestEnd::Pass, &["hello"]).is_empty(),
            "no SUMMARY"
        );
        assert!(!problems_of(&good, GuestEnd::Fail, &["hello"]).is_empty());
        assert!(!problems_of(&good, GuestEnd::Crash("timeout".into()), &["hello"]).is_empty());
        assert!(
            !problems_of(&good, GuestEnd::Pass, &["hello", "heap"]).is_empty(),
            "heap missing"
        );
        let failed = [
            BOOT,
            "PVKIT TEST hello FAIL nope",
            "PVKIT SUMMARY passed=0 failed=1",
        ];
        assert!(!problems_of(&failed, GuestEnd::Pass, &["hello"]).is_empty());
    }

    #[test]
    fn a_fault_must_fail_cleanly_with_its_report() {
        let exc = format!(
            "PVKIT EXCEPTION vector=14 name=Page fault error=0x2 rip=0x100000 cr2={PAGEFAULT_ADDRESS:#x}"
        );
        let good = [
            BOOT,
            "PVKIT TEST fault-pagefault START",
            &exc,
            "PVKIT SUMMARY passed=0 failed=1",
            "PVKIT EXIT 1",
        ];
        let check = |lines: &[&str], end: GuestEnd| {
            let t = transcript(lines);
            let run = GuestRun {
                transcript: &t,
                end: &end,
                test_times: None,
            };
            let mut p = Vec::new();
            failed_as_meant(&run, "fault-pagefault", &mut p);
            pagefault(&t, &mut p);
            p
        };
        assert_eq!(check(&good, GuestEnd::Fail), Vec::<String>::new());
        assert!(!check(&good, GuestEnd::Crash("triple fault".into())).is_empty());
        assert!(!check(&[BOOT, "PVKIT EXCEPTION vector=14 cr2=0x1000"], GuestEnd::Fail).is_empty());
        assert!(
            !check(
                &[BOOT, "PVKIT EXCEPTION vector=13 cr2=0xdead0000000"],
                GuestEnd::Fail
            )
            .is_empty()
        );
        let mut p = Vec::new();
        panic(
            &transcript(&[&format!(
                "PVKIT PANIC at src/selftest/mod.rs:10:5: {PANIC_MESSAGE}"
            )]),
            &mut p,
        );
        assert!(p.is_empty(), "{p:?}");
        panic(
            &transcript(&["PVKIT PANIC at a.rs:1:1: index out of bounds"]),
            &mut p,
        );
        assert_eq!(p.len(), 1);
        let mut p = Vec::new();
        double_fault(
            &transcript(&["PVKIT EXCEPTION vector=8 name=\"Double fault\""]),
            &mut p,
        );
        assert!(p.is_empty());
        double_fault(&transcript(&["PVKIT EXCEPTION vector=14"]), &mut p);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn timer_figures_are_rechecked() {
        let check = |pass: &str, host_ms: Option<u64>| {
            let t = transcript(&[BOOT, "PVKIT TEST timer START", pass]);
            let times: BTreeMap<String, Duration> = host_ms
                .map(|ms| ("timer".to_owned(), Duration::from_millis(ms)))
                .into_iter()
                .collect();
            let run = GuestRun {
                transcript: &t,
                end: &GuestEnd::Pass,
                test_times: Some(&times),
            };
            let mut p = Vec::new();
            timer(&run, 50, 400, &mut p);
            p
        };
        let good = "PVKIT TEST timer PASS lapic_ticks=20 lapic_expected=20 hz=50 ms=400 elapsed_us=400100";
        assert_eq!(check(good, Some(430)), Vec::<String>::new());
        assert!(
            !check(
                "PVKIT TEST timer PASS lapic_ticks=100 hz=1000 ms=100 elapsed_us=100000",
                Some(430)
            )
            .is_empty()
        );
        assert!(
            !check(
                "PVKIT TEST timer PASS lapic_ticks=17 hz=50 ms=400 elapsed_us=400000",
                Some(430)
            )
            .is_empty()
        );
        assert!(
            !check(good, Some(100)).is_empty(),
            "the host saw a shorter window"
        );
        assert!(!check("PVKIT TEST timer PASS", None).is_empty());
    }

    #[test]
    fn absent_devices_must_each_fail_with_their_name() {
        let tests = vec![
            ("blk-integrity@virtio-blk".to_owned(), "virtio-blk".to_owned()),
            ("net-echo@e1000".to_owned(), "e1000".to_owned()),
        ];
        let good = [
            BOOT,
            "PVKIT TEST blk-integrity@virtio-blk FAIL device virtio-blk absent",
            "PVKIT TEST net-echo@e1000 FAIL device e1000 absent",
            "PVKIT SUMMARY passed=0 failed=2",
        ];
        let check = |lines: &[&str], took: Duration| {
            let t = transcript(lines);
            let run = GuestRun {
                transcript: &t,
                end: &GuestEnd::Fail,
                test_times: None,
            };
            let mut p = Vec::new();
            device_absent(&run, &tests, Some(took), Duration::from_secs(10), &mut p);
            p
        };
        assert_eq!(check(&good, Duration::from_secs(1)), Vec::<String>::new());
        assert!(!check(&good, Duration::from_secs(30)).is_empty(), "too slow");
        let mut timeout = good.to_vec();
        timeout[2] = "PVKIT TEST net-echo@e1000 FAIL timed out after 5000000 us";
        assert_eq!(check(&timeout, Duration::from_secs(1)).len(), 1);
    }
}
