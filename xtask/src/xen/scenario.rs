//! The Xen scenarios: what each domU is (kernel, command line, devices), what dom0 does around it,
//! and what its report must show.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::report::{End, ScenarioReport};
use crate::console::Record;

/// Memory of one of our domUs (MiB).
pub const GUEST_MEMORY_MIB: u32 = 64;
/// Memory of the harness's Linux domU (MiB): Debian's kernel and a busybox initramfs.
const LINUX_MEMORY_MIB: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XenScenario {
    /// Harness self-check: a Linux PV domU (Debian's kernel, busybox initramfs) echoes a nonce from its
    /// command line on its console and powers off. Proves xl create, console collection and reporting.
    LinuxSelfcheck,
    /// Our guest as a PV domU running `hello` (boot info from start_info) and exiting with pass.
    Hello,
}

/// Which kernel a domU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// Our guest ELF (shipped in dom0's initramfs as /pvkit/guest).
    Pvkit,
    /// Debian's kernel with the harness's busybox initramfs (/pvkit/linux/{vmlinuz,initrd}).
    Linux,
}

/// Paths of the domU kernels inside dom0.
pub const GUEST_PATH: &str = "/pvkit/guest";
pub const LINUX_KERNEL_PATH: &str = "/pvkit/linux/vmlinuz";
pub const LINUX_INITRD_PATH: &str = "/pvkit/linux/initrd";

/// One domU run inside the harness boot.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub kernel: Kernel,
    pub cmdline: String,
    pub memory_mib: u32,
    /// xl disk specifications (`format=raw, vdev=xvda, access=rw, target=/dev/loop0`).
    pub disks: Vec<String>,
    /// xl vif specifications.
    pub vifs: Vec<String>,
    /// dom0 destroys the domain after this long.
    pub timeout: Duration,
    /// Shell run in dom0 before `xl create` (set up images and loop devices).
    pub pre: Option<String>,
    /// Shell run in dom0 once the domain exists.
    pub running: Option<String>,
    /// Shell run in dom0 after the domain is gone (reports with `check key=value`).
    pub post: Option<String>,
}

impl DomainSpec {
    /// The xl configuration file.
    pub fn xl_config(&self) -> String {
        let mut c = String::new();
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(c, "name = \"{}\"", q(&self.name));
        c.push_str("type = \"pv\"\n");
        match self.kernel {
            Kernel::Pvkit => {
                let _ = writeln!(c, "kernel = \"{GUEST_PATH}\"");
            }
            Kernel::Linux => {
                let _ = writeln!(c, "kernel = \"{LINUX_KERNEL_PATH}\"");
                let _ = writeln!(c, "ramdisk = \"{LINUX_INITRD_PATH}\"");
            }
        }
        let _ = writeln!(c, "extra = \"{}\"", q(&self.cmdline));
        let _ = writeln!(c, "memory = {}", self.memory_mib);
        c.push_str("vcpus = 1\n");
        // Keep a shut-down domain until dom0 has drained its console; dom0 destroys it then.
        c.push_str("on_poweroff = \"preserve\"\non_reboot = \"preserve\"\non_crash = \"preserve\"\n");
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{}\"", q(s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(c, "disk = [ {} ]", list(&self.disks));
        let _ = writeln!(c, "vif = [ {} ]", list(&self.vifs));
        c
    }
}

impl XenScenario {
    pub fn all() -> &'static [XenScenario] {
        XenScenario::value_variants()
    }

    /// The scenarios `cargo xtask test` runs: those that pass reliably (the others can be run with
    /// `cargo xtask xen --scenario`).
    pub fn in_test_suite() -> &'static [XenScenario] {
        &[XenScenario::LinuxSelfcheck]
    }

    pub fn name(self) -> &'static str {
        match self {
            XenScenario::LinuxSelfcheck => "linux-selfcheck",
            XenScenario::Hello => "hello",
        }
    }

    /// The domU of this scenario; `nonce` is a per-run value the Linux self-check must echo.
    pub fn spec(self, nonce: &str) -> DomainSpec {
        let base = |name: &str, cmdline: String| DomainSpec {
            name: name.to_owned(),
            kernel: Kernel::Pvkit,
            cmdline,
            memory_mib: GUEST_MEMORY_MIB,
            disks: Vec::new(),
            vifs: Vec::new(),
            timeout: Duration::from_secs(60),
            pre: None,
            running: None,
            post: None,
        };
        match self {
            XenScenario::LinuxSelfcheck => DomainSpec {
                kernel: Kernel::Linux,
                memory_mib: LINUX_MEMORY_MIB,
                timeout: Duration::from_secs(90),
                ..base(self.name(), format!("console=hvc0 quiet pvkit.nonce={nonce}"))
            },
            XenScenario::Hello => base(self.name(), "tests=hello".to_owned()),
        }
    }

    /// What is wrong with this scenario's report (empty: passed).
    pub fn check(self, r: &ScenarioReport, nonce: &str) -> Vec<String> {
        let mut problems = Vec::new();
        match self {
            XenScenario::LinuxSelfcheck => {
                expect_end(r, "poweroff", &mut problems);
                let want = format!("PVKIT-SELFCHECK nonce={nonce}");
                if !r.console.iter().any(|l| l.trim() == want) {
                    problems.push(format!(
                        "the Linux domU's console ({} lines) lacks `{want}`",
                        r.console.len()
                    ));
                }
            }
            XenScenario::Hello => check_guest(r, &["hello"], &mut problems),
        }
        problems
    }
}

/// Expects the domU to have shut down with `reason`.
fn expect_end(r: &ScenarioReport, reason: &str, problems: &mut Vec<String>) {
    match &r.end {
        Some(End::Shutdown(why)) if why == reason => {}
        Some(End::Shutdown(why)) => {
            problems.push(format!("domU shut down with reason {why}, expected {reason}"))
        }
        Some(End::Timeout) => problems.push("domU still running at the timeout; destroyed".to_owned()),
        Some(End::CreateFailed) => problems.push(format!("xl create failed: {}", xl_errors(r))),
        Some(End::Unknown) => problems.push(format!("xl ended without a shutdown reason: {}", xl_errors(r))),
        None => problems.push("the scenario never ended (the harness boot was cut short)".to_owned()),
    }
}

/// The first few error lines xl printed (all of them are in the log).
fn xl_errors(r: &ScenarioReport) -> String {
    let errors: Vec<&str> = r
        .notes
        .iter()
        .filter(|n| n.contains("error"))
        .map(|n| n.strip_prefix("xl: ").unwrap_or(n))
        .take(3)
        .collect();
    if errors.is_empty() {
        "xl printed no error (see the log)".to_owned()
    } else {
        errors.join(" / ")
    }
}

/// The checks of a run of our guest that must pass every test in `tests`: PASS verdicts, summary,
/// `PVKIT EXIT 0` and a poweroff shutdown (the guest's pass).
pub fn check_guest(r: &ScenarioReport, tests: &[&str], problems: &mut Vec<String>) {
    let t = &r.transcript;
    expect_end(r, "poweroff", problems);
    if r.end == Some(End::CreateFailed) {
        return; // There is no console to check.
    }
    if t.boot().is_none() {
        problems.push("no `PVKIT BOOT` line on the domU console".to_owned());
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

/// The files of a harness run that go into dom0's initramfs besides the base system.
pub struct Bundle {
    pub specs: Vec<DomainSpec>,
    /// Our guest ELF, if a scenario boots it.
    pub guest: Option<PathBuf>,
    /// Whether a scenario boots Linux (ship the kernel and the domU initramfs).
    pub linux: bool,
}

impl Bundle {
    pub fn new(specs: Vec<DomainSpec>, guest: Option<PathBuf>) -> Self {
        let linux = specs.iter().any(|s| s.kernel == Kernel::Linux);
        Bundle { specs, guest, linux }
    }
}

/// The init of the harness's Linux domU: echo the nonce from the command line, power off.
pub const LINUX_DOMU_INIT: &str = "#!/bin/sh
mount -t proc proc /proc
nonce=
for w in $(cat /proc/cmdline); do
    case $w in pvkit.nonce=*) nonce=${w#pvkit.nonce=} ;; esac
done
echo \"PVKIT-SELFCHECK nonce=$nonce\"
poweroff -f
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::report::HarnessReport;

    #[test]
    fn xl_config_quotes_and_lists() {
        let mut s = XenScenario::Hello.spec("n");
        s.cmdline = "tests=hello x=\"q\"".into();
        s.disks = vec!["format=raw, vdev=xvda, access=rw, target=/dev/loop0".into()];
        let c = s.xl_config();
        assert!(c.contains("name = \"hello\"\n"), "{c}");
        assert!(c.contains("type = \"pv\"\n"));
        assert!(c.contains(&format!("kernel = \"{GUEST_PATH}\"\n")));
        assert!(c.contains("extra = \"tests=hello x=\\\"q\\\"\"\n"));
        assert!(c.contains("disk = [ \"format=raw, vdev=xvda, access=rw, target=/dev/loop0\" ]\n"));
        assert!(c.contains("vif = [  ]\n"));
        assert!(!c.contains("ramdisk"));
        let l = XenScenario::LinuxSelfcheck.spec("abc").xl_config();
        assert!(l.contains(&format!("ramdisk = \"{LINUX_INITRD_PATH}\"")));
        assert!(l.contains("pvkit.nonce=abc"));
    }

    fn report(log: &str) -> HarnessReport {
        HarnessReport::parse(log)
    }

    #[test]
    fn selfcheck_needs_the_nonce_and_a_poweroff() {
        let good = "PVKIT-XEN SCENARIO linux-selfcheck BEGIN\n\
                    PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK nonce=42\n\
                    PVKIT-XEN SCENARIO linux-selfcheck END reason=poweroff run_ms=9000\n";
        let r = report(good);
        let s = r.scenario("linux-selfcheck").unwrap();
        assert!(XenScenario::LinuxSelfcheck.check(s, "42").is_empty());
        assert!(
            !XenScenario::LinuxSelfcheck.check(s, "43").is_empty(),
            "stale nonce"
        );
        let crashed = good.replace("reason=poweroff", "reason=crash");
        let r = report(&crashed);
        assert!(
            !XenScenario::LinuxSelfcheck
                .check(r.scenario("linux-selfcheck").unwrap(), "42")
                .is_empty()
        );
        let timeout = good.replace("reason=poweroff", "reason=timeout");
        let r = report(&timeout);
        assert!(
            !XenScenario::LinuxSelfcheck
                .check(r.scenario("linux-selfcheck").unwrap(), "42")
                .is_empty()
        );
    }

    #[test]
    fn guest_check_needs_pass_summary_exit_and_poweroff() {
        let lines = [
            "PVKIT BOOT platform=xen-pv hypervisor=xen mem_mib=64 cmdline=\"tests=hello\"",
            "PVKIT TEST hello START",
            "PVKIT TEST hello PASS",
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        let log = |lines: &[&str], reason: &str| {
            let mut s = String::from("PVKIT-XEN SCENARIO hello BEGIN\n");
            for l in lines {
                s.push_str(&format!("PVKIT-XEN CONSOLE hello | {l}\n"));
            }
            s.push_str(&format!(
                "PVKIT-XEN SCENARIO hello END reason={reason} run_ms=1\n"
            ));
            s
        };
        let check = |text: String| {
            let r = report(&text);
            XenScenario::Hello.check(r.scenario("hello").unwrap(), "")
        };
        assert_eq!(check(log(&lines, "poweroff")), Vec::<String>::new());
        assert!(!check(log(&lines, "crash")).is_empty());
        assert!(!check(log(&lines[..4], "poweroff")).is_empty(), "no EXIT");
        assert!(!check(log(&lines[1..], "poweroff")).is_empty(), "no BOOT");
        let failed = [
            lines[0],
            lines[1],
            "PVKIT TEST hello FAIL x",
            "PVKIT SUMMARY passed=0 failed=1",
        ];
        assert!(!check(log(&failed, "poweroff")).is_empty());
    }
}
