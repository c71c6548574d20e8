//! `cargo xtask test`: every check CI runs, as stages, ending with a pass/fail table.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::qemu::{self, Accel, Outcome, QemuConfig};
use crate::rig::Rig;
use crate::scenario::Scenario;
use crate::{TestArgs, process, provision, table, workspace};

/// Groups of stages, for `--only` / `--skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Group {
    /// cargo fmt --check
    Fmt,
    /// clippy -D warnings, host crates and the guest kernel
    Clippy,
    /// cargo test for the host crates (includes the C differential tests)
    HostTests,
    /// loom model checking of ring-protocol
    Loom,
    /// Miri on ring-protocol
    Miri,
    /// guest build and the QEMU scenarios
    Qemu,
    /// the Xen scenarios: real Xen + Linux dom0 in QEMU, all in one Xen boot (xtask/src/xen)
    Xen,
    /// the vhost-user daemons (backends/) with our guest and a Linux guest in QEMU (xtask/src/vhost.rs)
    Vhost,
}

enum Verdict {
    Pass,
    Fail(String),
    Skipped(String),
}

struct Row {
    name: String,
    verdict: Verdict,
    time: Option<Duration>,
    log: Option<PathBuf>,
}

struct Ctx {
    verbose: bool,
    rows: Vec<Row>,
}

impl Ctx {
    fn record(&mut self, name: &str, verdict: Verdict, time: Option<Duration>, log: Option<PathBuf>) {
        let t = time
            .map(|d| format!(" ({})", table::duration(d)))
            .unwrap_or_default();
        match &verdict {
            Verdict::Pass => eprintln!("    PASS {name}{t}"),
            Verdict::Fail(why) => {
                eprintln!("    FAIL {name}{t}: {why}");
                if let Some(log) = &log
                    && !self.verbose
                {
                    // CI keeps only the terminal output: show more of a failing stage there.
                    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
                    print_tail(log, if ci { 200 } else { 40 });
                }
            }
            Verdict::Skipped(why) => eprintln!("    SKIP {name}: {why}"),
        }
        self.rows.push(Row {
            name: name.to_owned(),
            verdict,
            time,
            log,
        });
    }

    /// Runs a command as stage `name`, output to `<logs>/<name>.log`.
    fn command(&mut self, name: &str, mut cmd: Command) {
        eprintln!("==> {name}: {}", workspace::display_command(&cmd));
        let log = workspace::log_dir().join(format!("{name}.log"));
        let t0 = Instant::now();
        let verdict = match run_logged(&mut cmd, &log, self.verbose) {
            Ok(None) => Verdict::Pass,
            Ok(Some(why)) => Verdict::Fail(why),
            Err(e) => Verdict::Fail(format!("{e:#}")),
        };
        self.record(name, verdict, Some(t0.elapsed()), Some(log));
    }
}

/// Runs `cmd` with its output in `log` (and on the terminal if `verbose`). `Ok(Some(reason))` if it failed.
fn run_logged(cmd: &mut Command, log: &Path, verbose: bool) -> Result<Option<String>> {
    std::fs::create_dir_all(log.parent().expect("log path has a parent"))?;
    let mut f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(f, "# command: {}", workspace::display_command(cmd))?;
    cmd.stdin(Stdio::null());
    if !verbose {
        cmd.stdout(f.try_clone()?).stderr(f.try_clone()?);
    }
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    writeln!(f, "# exit: {status}")?;
    Ok((!status.success()).then(|| format!("exited with {status}")))
}

fn print_tail(log: &Path, n: usize) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    eprintln!(
        "    --- last {} lines of {} ---",
        n.min(lines.len()),
        log.display()
    );
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("    | {l}");
    }
}

pub fn test(args: &TestArgs) -> Result<i32> {
    let selected = |g: Group| {
        (args.only.is_empty() || args.only.contains(&g))
            && !args.skip.contains(&g)
            && !(g == Group::Miri && args.no_miri)
    };
    let mut ctx = Ctx {
        verbose: args.verbose,
        rows: Vec::new(),
    };
    let started = Instant::now();
    let skip_note = "not selected (--only/--skip/--no-miri)".to_owned();

    // Provisioning first: the host tests need the Xen headers, the scenarios QEMU.
    let needs = provision::Needs {
        qemu: selected(Group::Qemu),
        xen_headers: selected(Group::HostTests),
    };
    let t0 = Instant::now();
    let qemu_problem = match provision::ensure(needs, false) {
        Ok(()) => {
            ctx.record("provision", Verdict::Pass, Some(t0.elapsed()), None);
            None
        }
        Err(e) => {
            ctx.record(
                "provision",
                Verdict::Fail(format!("{e:#}")),
                Some(t0.elapsed()),
                None,
            );
            // Only a QEMU problem stops the scenarios (not, say, missing Xen headers).
            let problems = provision::qemu_problems();
            (!problems.is_empty()).then(|| problems.join("; "))
        }
    };

    let cargo = |args: &[&str]| {
        let mut c = workspace::cargo();
        c.args(args);
        c
    };
    let target = workspace::target_dir();
    let mut stages: Vec<(Group, &str, Command)> = vec![
        (Group::Fmt, "fmt", cargo(&["fmt", "--all", "--", "--check"])),
        (
            Group::Clippy,
            "clippy-host",
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                workspace::GUEST_PACKAGE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        (
            Group::Clippy,
            "clippy-guest",
            cargo(&[
                "clippy",
                "-p",
                workspace::GUEST_PACKAGE,
                "--target",
                workspace::GUEST_TARGET,
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        (
            Group::HostTests,
            "host-tests",
            cargo(&["test", "--workspace", "--exclude", workspace::GUEST_PACKAGE]),
        ),
    ];
    let mut loom = cargo(&["test", "-p", "ring-protocol", "--test", "loom", "--release"]);
    loom.env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", target.join("loom"));
    stages.push((Group::Loom, "loom", loom));
    let mut miri = cargo(&[
        "+nightly",
        "miri",
        "test",
        "-p",
        "ring-protocol",
        "--all-features",
    ]);
    miri.env("CARGO_TARGET_DIR", target.join("miri"));
    stages.push((Group::Miri, "miri", miri));

    for (group, name, cmd) in stages {
        if process::interrupted() {
            break;
        }
        if !selected(group) {
            ctx.record(name, Verdict::Skipped(skip_note.clone()), None, None);
            continue;
        }
        if group == Group::Miri
            && let Err(e) = provision::ensure_miri(false)
        {
            ctx.record(
                name,
                Verdict::Fail(format!("Miri is not installed and could not be: {e:#}")),
                None,
                None,
            );
            continue;
        }
        ctx.command(name, cmd);
    }

    let scenarios: Vec<Scenario> = Scenario::all()
        .iter()
        .copied()
        .filter(|s| args.scenario.is_empty() || args.scenario.contains(s))
        .collect();
    if !selected(Group::Qemu) {
        ctx.record("guest-build", Verdict::Skipped(skip_note.clone()), None, None);
        for s in &scenarios {
            ctx.record(
                &format!("qemu:{}", s.name()),
                Verdict::Skipped(skip_note.clone()),
                None,
                None,
            );
        }
    } else if !process::interrupted() {
        let built = match &args.kernel {
            Some(k) => {
                ctx.record(
                    "guest-build",
                    Verdict::Skipped(format!("--kernel {}", k.display())),
                    None,
                    None,
                );
                true
            }
            None => {
                ctx.command(
                    "guest-build",
                    cargo(&[
                        "build",
                        "-p",
                        workspace::GUEST_PACKAGE,
                        "--release",
                        "--target",
                        workspace::GUEST_TARGET,
                    ]),
                );
                matches!(
                    ctx.rows.last(),
                    Some(Row {
                        verdict: Verdict::Pass,
                        ..
                    })
                )
            }
        };
        let elf = args.kernel.clone().unwrap_or_else(workspace::guest_elf);
        let missing = if !built {
            Some(
                "prerequisite missing: the guest-build stage failed, so there is no guest ELF to boot"
                    .to_owned(),
            )
        } else if !elf.is_file() {
            Some(format!(
                "prerequisite missing: guest ELF {} does not exist after the build",
                elf.display()
            ))
        } else {
            qemu_problem.map(|p| format!("prerequisite missing: {p}"))
        };
        for s in scenarios {
            if process::interrupted() {
                break;
            }
            let name = format!("qemu:{}", s.name());
            eprintln!("==> {name}: {}", s.append());
            let log = workspace::log_dir().join(format!("{}.log", s.name()));
            if let Some(why) = &missing {
                std::fs::create_dir_all(workspace::log_dir())?;
                std::fs::write(&log, format!("# scenario {} not run: {why}\n", s.name()))?;
                ctx.record(&name, Verdict::Fail(why.clone()), None, Some(log));
                continue;
            }
            let (verdict, wall) = scenario(s, &elf, &log)?;
            ctx.record(&name, verdict, wall, Some(log));
        }
    }

    if !process::interrupted() {
        xen_stage(&mut ctx, selected(Group::Xen), &skip_note, args.kernel.as_deref());
    }
    if !process::interrupted() {
        vhost_stage(&mut ctx, selected(Group::Vhost), &skip_note);
    }

    let interrupted = process::interrupted();
    print_table(&ctx.rows, started.elapsed());
    let failed = ctx
        .rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail(_)))
        .count();
    let skipped = ctx
        .rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Skipped(_)))
        .count();
    if interrupted {
        println!("INTERRUPTED: the run was stopped; stages after the last row did not run");
        return Ok(130);
    }
    if skipped > 0 {
        println!("note: {skipped} stage(s) skipped on request: this is not a full test run");
    }
    // The plain closing line CI systems read: stages and scenarios, each a row of the table.
    let passed = ctx.rows.len() - failed - skipped;
    if skipped > 0 {
        println!("xtask: {passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("xtask: {passed} passed, {failed} failed");
    }
    if failed > 0 {
        println!("TEST RESULT: FAIL ({failed} failed)");
        Ok(1)
    } else {
        println!("TEST RESULT: PASS");
        Ok(0)
    }
}

/// Boots one scenario and checks it. Returns the verdict and QEMU's wall time.
fn scenario(s: Scenario, elf: &Path, log: &Path) -> Result<(Verdict, Option<Duration>)> {
    let timeout = s.timeout();
    let trace = s.is_io().then(|| log.with_extension("trace"));
    let rig = if s.is_io() {
        Some(Rig::start(
            s.devices(),
            &s.append(),
            &workspace::xtask_dir().join("disks"),
            s.name(),
            s.fail_writes(),
            Instant::now() + timeout + Duration::from_secs(5),
            trace.clone(),
        )?)
    } else {
        None
    };
    let cfg = QemuConfig {
        qemu: QemuConfig::default_qemu(),
        kernel: elf.to_owned(),
        accel: Accel::Tcg,
        devices: s.devices().to_vec(),
        append: s.append(),
        timeout,
        first_output_timeout: Duration::from_secs(10),
        io: rig.as_ref().map(|r| r.io.clone()).unwrap_or_default(),
        trace: trace.clone(),
    };
    let r = qemu::run(&cfg, log, |_| {})?;
    let host = rig.map(Rig::finish);
    if let Outcome::LaunchFailed(why) = &r.outcome {
        return Ok((Verdict::Fail(format!("prerequisite missing: {why}")), None));
    }
    let mut problems = s.check(&r);
    let mut notes = Vec::new();
    if let Some(host) = &host {
        let (p, done) = host.check(&r.transcript);
        problems.extend(p);
        notes.extend(done);
        if r.outcome == Outcome::Pass {
            match host.costs(&r.transcript, &log.with_extension("costs")) {
                Ok((costs, p)) => {
                    problems.extend(p);
                    problems.extend(s.check_costs(&costs));
                    for c in &costs {
                        eprintln!("    cost {}", c.line());
                        notes.push(format!("cost {}", c.line()));
                    }
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    if s == Scenario::Pci {
        // The device table must match what this QEMU really builds, or `pci.expect=` would be wrong.
        let mut f = OpenOptions::new().append(true).open(log)?;
        match qemu::info_pci(&cfg.qemu, s.devices(), &mut f) {
            Ok(actual) if actual == qemu::expected_pci(s.devices()) => {}
            Ok(actual) => problems.push(format!(
                "xtask's device table is wrong: QEMU's `info pci` shows {actual:?}, xtask expected {:?}",
                qemu::expected_pci(s.devices())
            )),
            Err(e) => problems.push(format!("could not ask QEMU for `info pci`: {e:#}")),
        }
    }
    let mut f = OpenOptions::new().append(true).open(log)?;
    for n in &notes {
        writeln!(f, "# host check: {n}")?;
    }
    if problems.is_empty() {
        writeln!(f, "# scenario {}: PASS", s.name())?;
        // A passing scenario's trace is summed up in its .costs file; it can be hundreds of MB.
        if let Some(t) = &trace {
            let _ = std::fs::remove_file(t);
        }
        if s == Scenario::Hello {
            eprintln!(
                "    hello wall time (QEMU launch to exit): {} (goal <= 50 ms)",
                table::duration(r.wall)
            );
        }
        Ok((Verdict::Pass, Some(r.wall)))
    } else {
        for p in &problems {
            writeln!(f, "# scenario {}: problem: {p}", s.name())?;
        }
        Ok((Verdict::Fail(problems.join("; ")), Some(r.wall)))
    }
}

/// The Xen scenarios (one row each, `xen:<name>`), all in one Xen boot; see `crate::xen`.
fn xen_stage(ctx: &mut Ctx, selected: bool, skip_note: &str, kernel: Option<&Path>) {
    let names = crate::xen::test_suite_rows();
    if !selected {
        for n in &names {
            ctx.record(n, Verdict::Skipped(skip_note.to_owned()), None, None);
        }
        return;
    }
    eprintln!("==> xen: {} in one Xen boot", names.join(", "));
    let log = workspace::log_dir().join("xen.log");
    match crate::xen::test_suite(&log, kernel) {
        Ok(rows) => {
            for r in rows {
                let verdict = match r.result {
                    Ok(()) => Verdict::Pass,
                    Err(why) => Verdict::Fail(why),
                };
                ctx.record(&r.name, verdict, r.time, Some(log.clone()));
            }
        }
        Err(e) => {
            for n in &names {
                ctx.record(n, Verdict::Fail(format!("{e:#}")), None, Some(log.clone()));
            }
        }
    }
}

/// The vhost-user scenarios (one row each, `vhost:<name>`); see `crate::vhost`.
fn vhost_stage(ctx: &mut Ctx, selected: bool, skip_note: &str) {
    if !selected {
        for n in crate::vhost::row_names() {
            ctx.record(&n, Verdict::Skipped(skip_note.to_owned()), None, None);
        }
        return;
    }
    for r in crate::vhost::test_suite() {
        let verdict = match r.result {
            Ok(()) => Verdict::Pass,
            Err(why) => Verdict::Fail(why),
        };
        ctx.record(&r.name, verdict, r.time, Some(r.log));
    }
}

fn print_table(rows: &[Row], total: Duration) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let result = match &r.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail(_) => "FAIL",
                Verdict::Skipped(_) => "skipped",
            };
            vec![
                r.name.clone(),
                result.to_owned(),
                r.time.map(table::duration).unwrap_or_else(|| "-".to_owned()),
                r.log
                    .as_ref()
                    .map(|l| display_path(l))
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    println!();
    println!(
        "pvkit test results (QEMU rows: wall time from QEMU launch to exit; total {})",
        table::duration(total)
    );
    print!("{}", table::render(&["stage", "result", "time", "log"], &cells));
    if let Some(Row {
        verdict: Verdict::Pass,
        time: Some(t),
        ..
    }) = rows.iter().find(|r| r.name == "qemu:hello")
    {
        println!(
            "hello budget: QEMU launch to exit {} (goal <= 50 ms with qboot under TCG)",
            table::duration(*t)
        );
    }
    let failures: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail(_)))
        .collect();
    if !failures.is_empty() {
        println!();
        println!("failures:");
        for r in failures {
            if let Verdict::Fail(why) = &r.verdict {
                println!("  {}: {}", r.name, why.replace('\n', "\n    "));
            }
        }
    }
}

/// A path relative to the workspace root when it is inside it.
fn display_path(p: &Path) -> String {
    p.strip_prefix(workspace::root())
        .unwrap_or(p)
        .display()
        .to_string()
}
