//! `cargo xtask test`: every check CI runs, as stages, then every row of the scenario matrix; ends
//! with a result table, a JUnit XML file beside it (`target/xtask/junit.xml`) and a plain
//! closing line.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::matrix::{self, Filter, MATRIX, Row};
use crate::outcome::{self, Line, Verdict};
use crate::qemu::Accel;
use crate::qemu_env::Ctx;
use crate::{TestArgs, exec, process, provision, table, workspace};

/// Groups of stages, for `--only` / `--skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// a clean clone of HEAD, with the guest target removed from the toolchain, runs the README's
    /// `cargo xtask run` (restricted to one path) and must set itself up
    FreshClone,
    /// cargo fmt --check
    Fmt,
    /// clippy -D warnings, host crates and the guest kernel
    Clippy,
    /// shellcheck on every shell program the harness ships (dom0, guests)
    Shellcheck,
    /// rustdoc with warnings as errors (host crates and the guest kernel), ring-protocol's
    /// `cargo publish --dry-run`, and `--help` of the main commands
    Docs,
    /// cargo test for the host crates (includes the C differential tests)
    HostTests,
    /// loom model checking of ring-protocol
    Loom,
    /// Miri on ring-protocol
    Miri,
    /// every libFuzzer target of `fuzz/`, a few seconds each
    Fuzz,
    /// the guest build and the rows of the scenario matrix
    Matrix,
}

impl Group {
    const ALL: &[(Group, &str)] = &[
        (Group::FreshClone, "fresh-clone"),
        (Group::Fmt, "fmt"),
        (Group::Clippy, "clippy"),
        (Group::Shellcheck, "shellcheck"),
        (Group::Docs, "docs"),
        (Group::HostTests, "host-tests"),
        (Group::Loom, "loom"),
        (Group::Miri, "miri"),
        (Group::Fuzz, "fuzz"),
        (Group::Matrix, "matrix"),
    ];

    fn name(self) -> &'static str {
        Group::ALL.iter().find(|(g, _)| *g == self).expect("listed").1
    }

    fn parse(s: &str) -> Option<Group> {
        Group::ALL.iter().find(|(_, n)| *n == s).map(|(g, _)| *g)
    }
}

/// Shorthands of `--only`: a group of matrix rows by one column.
const SHORTHANDS: &[(&str, &str)] = &[
    ("qemu", "env=qemu-pvh|qemu-pvh-kvm"),
    ("xen", "env=xen-pv"),
    ("vhost", "backend=pvkit-vhost-user"),
];

/// The names of the stage groups (for `--help`'s test).
#[cfg(test)]
pub fn group_names() -> Vec<&'static str> {
    Group::ALL.iter().map(|(_, n)| *n).collect()
}

/// The names of the `--only` shorthands.
#[cfg(test)]
pub fn shorthand_names() -> Vec<&'static str> {
    SHORTHANDS.iter().map(|(n, _)| *n).collect()
}

/// The reason of a stage or row left out on request.
const NOT_SELECTED: &str = "not selected";

/// The shell programs the harness ships, checked with shellcheck.
pub const SHELL_PROGRAMS: &[&str] = &[
    "xtask/xen/init.sh",
    "xtask/xen/dom0-lib.sh",
    "xtask/xen/vif-pvkit.sh",
    "xtask/xen/linux-domu-init.sh",
    "xtask/guest/vhost-linux-init.sh",
];

/// What `--only`, `--skip` and `--scenario` select.
#[derive(Debug, Default)]
pub struct Selection {
    groups: Vec<Group>,
    skip: Vec<Group>,
    pub filter: Filter,
}

impl Selection {
    pub fn parse(only: &[String], skip: &[String], scenario: &[String], no_miri: bool) -> Result<Selection> {
        let mut s = Selection::default();
        let mut filter_terms = false;
        for o in only
            .iter()
            .flat_map(|o| o.split(','))
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            if let Some(g) = Group::parse(o) {
                s.groups.push(g);
            } else if let Some((_, term)) = SHORTHANDS.iter().find(|(n, _)| *n == o) {
                s.filter.add_term(term).map_err(anyhow::Error::msg)?;
                filter_terms = true;
            } else if o.contains('=') {
                s.filter.add_term(o).map_err(anyhow::Error::msg)?;
                filter_terms = true;
            } else {
                bail!(
                    "--only {o}: not a group ({}), a shorthand ({}) or a column=value filter",
                    Group::ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
                    SHORTHANDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                );
            }
        }
        for k in skip
            .iter()
            .flat_map(|o| o.split(','))
            .map(str::trim)
            .filter(|o| !o.is_empty())
        {
            s.skip
                .push(Group::parse(k).with_context(|| format!("--skip {k}: not a group"))?);
        }
        if no_miri {
            s.skip.push(Group::Miri);
        }
        s.filter.names = scenario
            .iter()
            .flat_map(|n| n.split(','))
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        // A row filter alone means "these rows": the matrix and nothing else.
        if (filter_terms || !s.filter.names.is_empty()) && s.groups.is_empty() {
            s.groups.push(Group::Matrix);
        }
        Ok(s)
    }

    pub fn selected(&self, g: Group) -> bool {
        (self.groups.is_empty() || self.groups.contains(&g)) && !self.skip.contains(&g)
    }

    pub fn rows(&self) -> Result<Vec<&'static Row>> {
        self.filter.select(MATRIX).map_err(anyhow::Error::msg)
    }
}

struct Ctx2 {
    verbose: bool,
    lines: Vec<Line>,
}

impl Ctx2 {
    fn record(&mut self, line: Line) {
        let t = line
            .time
            .map(|d| format!(" ({})", table::duration(d)))
            .unwrap_or_default();
        match line.verdict.reason() {
            None => eprintln!("    PASS {}{t}", line.name),
            Some(NOT_SELECTED) => {}
            Some(why) => {
                eprintln!("    {} {}{t}: {why}", line.verdict.label(), line.name);
                if line.verdict.is_bad()
                    && let Some(log) = &line.log
                    && !self.verbose
                {
                    // CI keeps only the terminal output: show more of a failing stage there.
                    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
                    print_tail(log, if ci { 200 } else { 40 });
                }
            }
        }
        self.lines.push(line);
    }

    /// Runs a command as stage `name`, output to `target/xtask/logs/<name>.log`.
    fn command(&mut self, group: Group, name: &str, mut cmd: Command) -> bool {
        eprintln!("==> {name}: {}", workspace::display_command(&cmd));
        let log = workspace::log_dir().join(format!("{name}.log"));
        let t0 = Instant::now();
        let verdict = match run_logged(&mut cmd, &log, self.verbose) {
            Ok(None) => Verdict::Pass,
            Ok(Some(why)) => Verdict::Fail(why),
            Err(e) => Verdict::Fail(format!("{e:#}")),
        };
        let ok = verdict == Verdict::Pass;
        self.record(Line {
            name: name.to_owned(),
            verdict,
            time: Some(t0.elapsed()),
            log: Some(log),
            repro: Some(workspace::display_command(&cmd)),
            class: group.name().to_owned(),
        });
        ok
    }

    fn skip(&mut self, group: Group, name: &str, why: &str) {
        self.record(Line {
            name: name.to_owned(),
            verdict: Verdict::Skip(why.to_owned()),
            time: None,
            log: None,
            repro: None,
            class: group.name().to_owned(),
        });
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
    let sel = Selection::parse(&args.only, &args.skip, &args.scenario, args.no_miri)?;
    let rows = sel.rows()?;
    if args.list {
        print!("{}", matrix::list(&rows));
        println!("{} scenarios", rows.len());
        return Ok(0);
    }
    let mut ctx = Ctx2 {
        verbose: args.verbose,
        lines: Vec::new(),
    };
    let started = Instant::now();
    let skip_note = NOT_SELECTED;

    // Provisioning first: the host tests need the Xen headers, the rows QEMU, the shell stage
    // shellcheck.
    let needs = provision::Needs {
        qemu: sel.selected(Group::Matrix),
        xen_headers: sel.selected(Group::HostTests),
        shellcheck: sel.selected(Group::Shellcheck),
    };
    let t0 = Instant::now();
    let qemu_problem = match provision::ensure(needs, false) {
        Ok(()) => {
            ctx.record(Line {
                name: "provision".into(),
                verdict: Verdict::Pass,
                time: Some(t0.elapsed()),
                log: None,
                repro: None,
                class: "setup".into(),
            });
            None
        }
        Err(e) => {
            ctx.record(Line {
                name: "provision".into(),
                verdict: Verdict::Fail(format!("{e:#}")),
                time: Some(t0.elapsed()),
                log: None,
                repro: Some("cargo xtask provision".into()),
                class: "setup".into(),
            });
            // Only a QEMU problem stops the rows (not, say, missing Xen headers).
            let problems = provision::qemu_problems();
            (!problems.is_empty()).then(|| problems.join("; "))
        }
    };

    if !process::interrupted() {
        if sel.selected(Group::FreshClone) {
            fresh_clone(&mut ctx);
        } else {
            ctx.skip(Group::FreshClone, "fresh-clone", skip_note);
        }
    }

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
    ];
    let mut sc = Command::new("shellcheck");
    sc.current_dir(workspace::root())
        .args(["--external-sources", "--source-path=SCRIPTDIR"])
        .args(SHELL_PROGRAMS);
    stages.push((Group::Shellcheck, "shellcheck", sc));
    // Every crate documented with warnings as errors: the host crates here (with their optional
    // parts: test doubles, fuzz entry points), the guest kernel for its target below.
    let mut doc = cargo(&[
        "doc",
        "--workspace",
        "--exclude",
        "guest-kernel",
        "--all-features",
        "--no-deps",
    ]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    stages.push((Group::Docs, "docs-host", doc));
    let mut doc = cargo(&[
        "doc",
        "-p",
        workspace::GUEST_PACKAGE,
        "--target",
        workspace::GUEST_TARGET,
        "--release",
        "--no-deps",
    ]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    stages.push((Group::Docs, "docs-guest", doc));
    // The reusable crate must package and build on its own, as a user would get it.
    stages.push((
        Group::Docs,
        "publish-dry-run",
        cargo(&["publish", "--dry-run", "--allow-dirty", "-p", "ring-protocol"]),
    ));
    stages.push((
        Group::HostTests,
        "host-tests",
        cargo(&["test", "--workspace", "--exclude", workspace::GUEST_PACKAGE]),
    ));
    // The reusable crates' own tests, benches and examples, each built alone: in the workspace
    // run above, features other members enable (test doubles) are unified in and could hide a
    // target that does not build for a user of that crate.
    for (krate, stage) in [
        ("ring-protocol", "alone-ring-protocol"),
        ("pvkit-frontends", "alone-pvkit-frontends"),
        ("pvkit-backends", "alone-pvkit-backends"),
    ] {
        stages.push((
            Group::HostTests,
            stage,
            cargo(&["build", "-p", krate, "--all-targets"]),
        ));
    }
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
    stages.push((Group::Fuzz, "fuzz", crate::fuzz::smoke_command()));

    for (group, name, cmd) in stages {
        if process::interrupted() {
            break;
        }
        if !sel.selected(group) {
            ctx.skip(group, name, skip_note);
            continue;
        }
        if group == Group::Miri
            && let Err(e) = provision::ensure_miri(false)
        {
            ctx.record(Line {
                name: name.into(),
                verdict: Verdict::Fail(format!("Miri is not installed and could not be: {e:#}")),
                time: None,
                log: None,
                repro: Some("cargo xtask provision".into()),
                class: group.name().into(),
            });
            continue;
        }
        ctx.command(group, name, cmd);
    }

    if !sel.selected(Group::Matrix) {
        ctx.skip(Group::Matrix, "guest-build", skip_note);
        for r in &rows {
            ctx.skip(Group::Matrix, &r.name(), skip_note);
        }
    } else if !process::interrupted() {
        let elf = match &args.kernel {
            Some(k) => {
                ctx.skip(Group::Matrix, "guest-build", &format!("--kernel {}", k.display()));
                Some(k.clone())
            }
            None => ctx
                .command(
                    Group::Matrix,
                    "guest-build",
                    cargo(&[
                        "build",
                        "-p",
                        workspace::GUEST_PACKAGE,
                        "--release",
                        "--target",
                        workspace::GUEST_TARGET,
                    ]),
                )
                .then(workspace::guest_elf),
        };
        let missing = match &elf {
            None => Some("the guest-build stage failed, so there is no guest ELF to boot".to_owned()),
            Some(e) if !e.is_file() => Some(format!("guest ELF {} does not exist", e.display())),
            Some(_) => qemu_problem,
        };
        if let Some(why) = missing {
            for r in &rows {
                ctx.record(row_line(&outcome::CellResult::new(
                    r,
                    Verdict::Fail(format!("prerequisite missing: {why}")),
                )));
            }
        } else {
            let mctx = Ctx {
                elf: elf.expect("checked"),
                accel: Accel::Tcg,
                profile: matrix::Profile::Test,
                trace: true,
                verbose: args.verbose,
                tag: "test".to_owned(),
            };
            eprintln!("==> matrix: {} scenarios", rows.len());
            let results = exec::run(&rows, &mctx, |_| {});
            for c in &results {
                ctx.lines.push(row_line(c));
            }
            crate::vhost::cleanup();
        }
    }

    let interrupted = process::interrupted();
    let total = started.elapsed();
    print_table(&ctx.lines, total);
    let junit = workspace::xtask_dir().join("junit.xml");
    outcome::write_file(&junit, &outcome::junit(&ctx.lines, total))?;
    println!("JUnit XML: {}", display_path(&junit));
    let count = |f: fn(&Verdict) -> bool| ctx.lines.iter().filter(|l| f(&l.verdict)).count();
    let failed = count(|v| matches!(v, Verdict::Fail(_)));
    let crashed = count(|v| matches!(v, Verdict::Crash(_)));
    let skipped = count(|v| matches!(v, Verdict::Skip(_)));
    if interrupted {
        println!("INTERRUPTED: the run was stopped; stages after the last row did not run");
        return Ok(130);
    }
    let passed = ctx.lines.len() - failed - crashed - skipped;
    // The plain closing line CI systems read: stages and rows, each a line of the table.
    println!("xtask: {passed} passed, {failed} failed, {crashed} crashed, {skipped} skipped");
    if failed + crashed > 0 {
        println!("TEST RESULT: FAIL ({} failed, {} crashed)", failed, crashed);
        Ok(1)
    } else {
        println!("TEST RESULT: PASS");
        Ok(0)
    }
}

/// The `fresh-clone` stage: `git clone` of HEAD into `target/xtask/fresh-clone`, the guest target
/// removed from the pinned toolchain, then the README's `cargo xtask run` in the clone (one path, so
/// it stays short); it must add the target itself and pass. The target is put back afterwards
/// whatever happened.
fn fresh_clone(ctx: &mut Ctx2) {
    let name = "fresh-clone";
    eprintln!("==> {name}: clean clone of HEAD, guest target removed, cargo xtask run");
    let log = workspace::log_dir().join(format!("{name}.log"));
    let t0 = Instant::now();
    let dir = workspace::xtask_dir().join("fresh-clone");
    let repro = "cargo xtask test --only fresh-clone".to_owned();
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(workspace::log_dir())?;
        let mut f = File::create(&log)?;
        let _ = std::fs::remove_dir_all(&dir);
        let mut steps: Vec<Command> = Vec::new();
        let mut clone = Command::new("git");
        clone
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(workspace::root())
            .arg(&dir);
        steps.push(clone);
        steps.push(crate::toolchain::rustup(&[
            "target",
            "remove",
            workspace::GUEST_TARGET,
        ]));
        let mut run = Command::new("cargo");
        workspace::sanitize(&mut run);
        run.current_dir(&dir)
            .env("CARGO_TARGET_DIR", workspace::target_dir().join("fresh-clone"))
            .args([
                "xtask",
                "run",
                "--hypervisor",
                "qemu",
                "--only",
                "backend=qemu,device=virtio-blk",
            ]);
        steps.push(run);
        for mut cmd in steps {
            writeln!(f, "# command: {}", workspace::display_command(&cmd))?;
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", workspace::display_command(&cmd)))?;
            f.write_all(&out.stdout)?;
            f.write_all(&out.stderr)?;
            writeln!(f, "# exit: {}", out.status)?;
            if !out.status.success() {
                bail!("`{}` failed: {}", workspace::display_command(&cmd), out.status);
            }
        }
        let text = std::fs::read_to_string(&log)?;
        for want in [
            "lacks target(s) x86_64-unknown-none",
            "comparison: the same units on every path",
            "RESULT: PASS",
        ] {
            if !text.contains(want) {
                bail!("the clone's `cargo xtask run` did not print `{want}`");
            }
        }
        Ok(())
    })();
    // Put the target back for the stages that follow, whatever happened above.
    let restored = crate::toolchain::ensure_again();
    let verdict = match (result, restored) {
        (Ok(()), Ok(())) => Verdict::Pass,
        (Err(e), _) => Verdict::Fail(format!("{e:#}")),
        (Ok(()), Err(e)) => Verdict::Fail(format!("putting the guest target back failed: {e:#}")),
    };
    ctx.record(Line {
        name: name.to_owned(),
        verdict,
        time: Some(t0.elapsed()),
        log: Some(log),
        repro: Some(repro),
        class: Group::FreshClone.name().to_owned(),
    });
}

/// A matrix row as a line of the table.
fn row_line(c: &outcome::CellResult) -> Line {
    Line {
        name: c.row.name(),
        verdict: c.verdict.clone(),
        time: c.time,
        log: c.log.clone(),
        repro: Some(c.repro()),
        class: format!("matrix.{}", c.row.env.name()),
    }
}

fn print_table(lines: &[Line], total: Duration) {
    let cells: Vec<Vec<String>> = lines
        .iter()
        .filter(|l| l.verdict.reason() != Some(NOT_SELECTED))
        .map(|l| {
            vec![
                l.name.clone(),
                l.verdict.label().to_owned(),
                l.time.map(table::duration).unwrap_or_else(|| "-".to_owned()),
                l.log
                    .as_ref()
                    .map(|p| display_path(p))
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    println!();
    println!(
        "pvkit test results (rows: wall time of the boot, or of the domain in the Xen boot; total {})",
        table::duration(total)
    );
    print!(
        "{}",
        table::render(&["stage / scenario", "result", "time", "log"], &cells)
    );
    // Skips with a reason of their own (an environment this host cannot run) one by one; those left
    // out on request as one count.
    let skipped: Vec<&Line> = lines
        .iter()
        .filter(|l| matches!(&l.verdict, Verdict::Skip(why) if why != NOT_SELECTED))
        .collect();
    if !skipped.is_empty() {
        println!();
        println!("skipped:");
        for l in skipped {
            println!("  {}: {}", l.name, l.verdict.reason().unwrap_or_default());
        }
    }
    let unselected = lines
        .iter()
        .filter(|l| matches!(&l.verdict, Verdict::Skip(why) if why == NOT_SELECTED))
        .count();
    if unselected > 0 {
        println!("{unselected} stages and rows not selected (--only/--skip/--scenario/--no-miri)");
    }
    let bad: Vec<&Line> = lines.iter().filter(|l| l.verdict.is_bad()).collect();
    if !bad.is_empty() {
        println!();
        println!("failures (reproduce each with the command shown):");
        for l in bad {
            println!(
                "  {} {}: {}",
                l.verdict.label(),
                l.name,
                l.verdict.reason().unwrap_or_default().replace('\n', "\n    ")
            );
            if let Some(r) = &l.repro {
                println!("    reproduce: {r}");
            }
        }
    }
}

/// A path relative to the workspace root when it is inside it.
pub fn display_path(p: &Path) -> String {
    p.strip_prefix(workspace::root())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(only: &[&str], scenario: &[&str]) -> Result<Selection> {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Selection::parse(&v(only), &[], &v(scenario), false)
    }

    #[test]
    fn only_takes_groups_shorthands_and_column_filters() {
        let s = sel(&[], &[]).unwrap();
        assert!(s.selected(Group::Fmt) && s.selected(Group::Matrix));
        assert_eq!(s.rows().unwrap().len(), MATRIX.len());
        let s = sel(&["fmt,clippy"], &[]).unwrap();
        assert!(s.selected(Group::Fmt) && !s.selected(Group::Matrix));
        let s = sel(&["xen"], &[]).unwrap();
        assert!(!s.selected(Group::Fmt) && s.selected(Group::Matrix));
        assert!(s.rows().unwrap().iter().all(|r| r.env == matrix::Env::XenPv));
        let s = sel(&["transport=virtio", "backend=qemu"], &[]).unwrap();
        assert!(
            s.rows()
                .unwrap()
                .iter()
                .all(|r| r.transport == matrix::Transport::Virtio)
        );
        let s = sel(&[], &["qemu-pvh/hello"]).unwrap();
        assert!(!s.selected(Group::Clippy));
        assert_eq!(s.rows().unwrap().len(), 1);
        assert!(sel(&["nonsense"], &[]).is_err());
        assert!(sel(&[], &["no-such-row"]).unwrap().rows().is_err());
        let s = Selection::parse(&[], &[], &[], true).unwrap();
        assert!(!s.selected(Group::Miri) && s.selected(Group::Loom));
    }

    #[test]
    fn every_shell_program_exists_and_is_the_one_shipped() {
        for p in SHELL_PROGRAMS {
            assert!(workspace::root().join(p).is_file(), "{p}");
        }
        assert_eq!(
            std::fs::read_to_string(workspace::root().join("xtask/xen/dom0-lib.sh")).unwrap(),
            crate::xen::scenario::DOM0_LIB
        );
    }
}
