//! `cargo xtask run`: the guest's self-tests, then the comparison of every I/O path in one set of
//! units; or, with `--tests`, one QEMU boot with the given tests.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::checks::WORKLOAD_SEED;
use crate::compare;
use crate::console::Record;
use crate::exec::{self, KvmHost};
use crate::matrix::{Env, Filter, MATRIX, Profile, Row, Workload};
use crate::outcome::Verdict;
use crate::qemu::{self, Accel, Backend, Outcome, QemuConfig, Seen};
use crate::qemu_env::Ctx;
use crate::rig::Rig;
use crate::{Hypervisor, RunArgs, provision, table, workspace};

/// Whether `w` is one of the guest's safe self-tests (its default list,
/// [`pvkit_frontends::workload::DEFAULT_TESTS`]), run before the comparison.
fn self_test(w: Workload) -> bool {
    pvkit_frontends::workload::DEFAULT_TESTS.contains(&w.name())
}

/// The self-tests' names (for `--help`'s test).
#[cfg(test)]
pub fn self_test_names() -> Vec<&'static str> {
    pvkit_frontends::workload::DEFAULT_TESTS.to_vec()
}

/// The rows of `cargo xtask run`: the QEMU self-tests and the comparison rows, restricted by
/// `hypervisor` and the column filters `only`.
pub fn rows(hypervisor: Hypervisor, only: &[String]) -> Result<Vec<&'static Row>> {
    let mut f = Filter::default();
    for o in only {
        f.add_term(o).map_err(anyhow::Error::msg)?;
    }
    let env_ok = |e: Env| match hypervisor {
        Hypervisor::Qemu => e.is_qemu(),
        Hypervisor::Xen => e.is_xen(),
        Hypervisor::All => true,
    };
    let self_test = |r: &Row| r.env == Env::QemuPvh && self_test(r.workload);
    let rows: Vec<&Row> = MATRIX
        .iter()
        .filter(|r| env_ok(r.env) && (r.compares() || (self_test(r) && f.is_empty())) && f.matches(r))
        .collect();
    if rows.is_empty() {
        bail!("no comparison row matches --hypervisor and --only (see `cargo xtask test --list`)");
    }
    Ok(rows)
}

pub fn run(args: &RunArgs) -> Result<i32> {
    provision::ensure_qemu()?;
    if args.accel == Accel::Kvm
        && let Some(why) = KvmHost::detect().unusable()
    {
        bail!("--accel kvm: {why}. Run without --accel (TCG) on this host.");
    }
    if !args.tests.is_empty() {
        return one_boot(args);
    }
    let elf = match &args.kernel {
        Some(k) => k.clone(),
        None => workspace::build_guest()?,
    };
    let rows = rows(args.hypervisor, &args.only)?;
    let ctx = Ctx {
        elf,
        accel: args.accel,
        profile: Profile::Compare {
            phase_ms: args.phase_ms,
        },
        trace: args.trace,
        verbose: args.verbose,
        tag: "run".to_owned(),
    };
    eprintln!(
        "run: {} rows ({} compared paths), {} ms per throughput phase, {}",
        rows.len(),
        rows.iter().filter(|r| r.compares()).count(),
        args.phase_ms,
        match args.accel {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        }
    );
    let started = Instant::now();
    let results = exec::run(&rows, &ctx, |_| {});
    crate::vhost::cleanup();

    println!();
    let selftests: Vec<Vec<String>> = results
        .iter()
        .filter(|c| !c.row.compares())
        .map(|c| {
            vec![
                c.row.name(),
                c.verdict.label().to_owned(),
                c.time.map(table::duration).unwrap_or_default(),
                c.verdict.reason().unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    if !selftests.is_empty() {
        println!("guest self-tests");
        print!(
            "{}",
            table::render(&["test", "result", "time", "problems"], &selftests)
        );
    }
    let (series, bad) = compare::collect(std::slice::from_ref(&results));
    println!();
    println!(
        "comparison: the same units on every path, counted by the guest (TCG: ops/s and latency are \
         emulated time, not hardware time; compare paths by the counts)"
    );
    print!("{}", compare::render(&series, &bad, args.trace));
    let xen: Vec<&compare::Series> = series.iter().filter(|s| s.row.env.is_xen()).collect();
    if !xen.is_empty() {
        println!();
        println!("hypercalls per op on the Xen PV paths, by hypercall");
        for s in xen {
            println!(
                "  {:<12} qd={:<3} {:<34} {}",
                s.pattern,
                s.qd,
                compare::path_label(&s.row),
                compare::hypercall_breakdown(s)
            );
        }
    }
    println!();
    let failed: Vec<_> = results.iter().filter(|c| c.verdict.is_bad()).collect();
    for c in &failed {
        println!(
            "{} {}: {}\n  reproduce: {}",
            c.verdict.label(),
            c.row,
            c.verdict.reason().unwrap_or_default(),
            c.repro()
        );
    }
    println!(
        "logs: {}/run-*.log; {} rows in {}",
        workspace::log_dir().display(),
        results.len(),
        table::duration(started.elapsed())
    );
    let skipped = results
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Skip(_)))
        .count();
    if failed.is_empty() {
        println!("RESULT: PASS ({skipped} skipped)");
        Ok(0)
    } else {
        println!("RESULT: FAIL ({} of {} rows)", failed.len(), results.len());
        Ok(1)
    }
}

/// `--tests`: one QEMU boot with the given tests and devices, the console streamed, a result per
/// test and the host's checks of the workloads (images, echo peers).
fn one_boot(args: &RunArgs) -> Result<i32> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!(
            "--timeout must be a positive number of seconds, got {}",
            args.timeout
        );
    }
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => workspace::build_guest()?,
    };
    let mut words: Vec<String> = vec![format!("tests={}", args.tests.join(","))];
    if args.tests.iter().any(|t| t == "pci") && !args.append.contains("pci.expect=") {
        words.push(qemu::pci_expect_arg(&args.devices));
    }
    for t in args.tests.iter().filter(|t| t.contains('@')) {
        if !args.append.contains(&format!("{t}.seed=")) {
            words.push(format!("{t}.seed={WORKLOAD_SEED}"));
        }
    }
    words.extend(args.append.split_whitespace().map(str::to_owned));
    let append = words.join(" ");
    let timeout = Duration::from_secs_f64(args.timeout);
    let log = workspace::log_dir().join("run-boot.log");
    let has_io = args.devices.iter().any(|d| d.backend() != Backend::None);
    let trace = (args.trace && has_io).then(|| log.with_extension("trace"));
    let rig = Rig::start(
        &args.devices,
        &append,
        &workspace::xtask_dir().join("disks"),
        "run",
        false,
        Instant::now() + timeout + Duration::from_secs(5),
        trace.clone(),
    )?;
    let mut cfg = QemuConfig::pvh(&kernel, append, args.devices.clone(), timeout);
    cfg.accel = args.accel;
    cfg.io = rig.io.clone();
    cfg.trace = trace;
    eprintln!("$ {}", workspace::display_command(&cfg.command()?));
    let verbose = args.verbose;
    let r = qemu::run(&cfg, &log, |seen| match seen {
        Seen::Console(_, Some(Record::TestStart { name })) => eprintln!("[ .. ] {name}"),
        Seen::Console(_, Some(Record::TestPass { name, fields })) => eprintln!("[PASS] {name} {fields}"),
        Seen::Console(_, Some(Record::TestFail { name, reason })) => eprintln!("[FAIL] {name}: {reason}"),
        Seen::Console(line, Some(Record::Perf(_))) => eprintln!("       {line}"),
        Seen::Console(line, _) if verbose => println!("  | {line}"),
        Seen::Console(..) => {}
        Seen::Stderr(line) => eprintln!("qemu: {line}"),
    })?;
    let host = rig.finish();
    let t = &r.transcript;
    let (problems, done) = host.check(t);
    for d in &done {
        println!("host check: {d}");
    }
    for p in &problems {
        println!("host check FAILED: {p}");
    }
    println!(
        "QEMU: {}; wall time launch to exit {}",
        r.outcome,
        table::duration(r.wall)
    );
    println!("log: {}", r.log.display());
    let ok = r.outcome == Outcome::Pass
        && problems.is_empty()
        && t.failures().next().is_none()
        && t.errors().next().is_none()
        && matches!(t.summary(), Some((_, 0)));
    println!("{}", if ok { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(if ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_guest_test_has_a_qemu_row() {
        for name in pvkit_frontends::workload::DEFAULT_TESTS {
            let w = Workload::from_name(name).unwrap_or_else(|| panic!("{name} is not a workload"));
            assert!(
                MATRIX.iter().any(|r| r.env == Env::QemuPvh && r.workload == w),
                "no qemu-pvh row runs the default test {name}"
            );
        }
    }

    #[test]
    fn the_run_is_the_self_tests_and_the_comparison() {
        let all = rows(Hypervisor::All, &[]).unwrap();
        assert!(all.iter().any(|r| r.name() == "qemu-pvh/hello"));
        assert!(
            all.iter()
                .any(|r| r.name() == "xen-pv/pvkit-xen/blk-throughput@xen-blk")
        );
        assert!(all.iter().all(|r| r.compares() || self_test(r.workload)));
        let xen = rows(Hypervisor::Xen, &[]).unwrap();
        assert!(!xen.is_empty() && xen.iter().all(|r| r.env == Env::XenPv && r.compares()));
        let emulated = rows(Hypervisor::Qemu, &["transport=emulated".to_owned()]).unwrap();
        assert!(
            emulated
                .iter()
                .all(|r| r.transport == crate::matrix::Transport::Emulated)
        );
        assert!(rows(Hypervisor::Xen, &["transport=emulated".to_owned()]).is_err());
    }
}
