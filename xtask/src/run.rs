//! `cargo xtask run`: boot the guest once, show its console and results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::console::Record;
use crate::costs::{Cost, Scope};
use crate::qemu::{self, Backend, Device, Outcome, QemuConfig, Seen};
use crate::rig::Rig;
use crate::scenario::WORKLOAD_SEED;
use crate::{RunArgs, provision, table, workspace};

/// The guest's safe self-tests (its default list).
const SELF_TESTS: &[&str] = &["hello", "cpuid", "heap", "timer", "pci"];
/// Length of each throughput phase in the default run, in ms.
const PHASE_MS: u64 = 150;

pub fn run(args: &RunArgs) -> Result<i32> {
    if args.hypervisor == crate::xen::Hypervisor::Xen {
        return crate::xen::run_guest(args);
    }
    for (what, secs) in [
        ("--timeout", args.timeout),
        ("--first-output-timeout", args.first_output_timeout),
    ] {
        if !(secs.is_finite() && secs > 0.0) {
            bail!("{what} must be a positive number of seconds, got {secs}");
        }
    }
    if !args.no_provision {
        provision::ensure(
            provision::Needs {
                qemu: true,
                xen_headers: false,
            },
            false,
        )?;
    }
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => workspace::build_guest()?,
    };

    let tests: Vec<String> = if args.tests.is_empty() {
        default_tests(&args.devices)
    } else {
        args.tests.clone()
    };
    let mut words: Vec<String> = vec![format!("tests={}", tests.join(","))];
    if tests.iter().any(|t| t == "pci") && !args.append.contains("pci.expect=") {
        words.push(qemu::pci_expect_arg(&args.devices));
    }
    if args.tests.is_empty() {
        words.extend(workload_params(&tests, false));
    }
    words.extend(args.append.split_whitespace().map(str::to_owned));
    let append = words.join(" ");

    let timeout = Duration::from_secs_f64(args.timeout);
    let log = workspace::log_dir().join("run.log");
    let has_io = args.devices.iter().any(|d| d.backend() != Backend::None);
    let trace = (!args.no_trace && has_io).then(|| log.with_extension("trace"));
    let rig = Rig::start(
        &args.devices,
        &append,
        &workspace::xtask_dir().join("disks"),
        "run",
        false,
        Instant::now() + timeout + Duration::from_secs(5),
        trace.clone(),
    )?;
    let cfg = QemuConfig {
        qemu: QemuConfig::default_qemu(),
        kernel: kernel.clone(),
        accel: args.accel,
        devices: args.devices.clone(),
        append,
        timeout,
        first_output_timeout: Duration::from_secs_f64(args.first_output_timeout),
        io: rig.io.clone(),
        trace,
    };
    eprintln!("$ {}", workspace::display_command(&cfg.command()));
    let quiet = args.quiet;
    let r = qemu::run(&cfg, &log, |seen| match seen {
        Seen::Console(_, Some(Record::TestStart { name })) => eprintln!("[ .. ] {name}"),
        Seen::Console(_, Some(Record::TestPass { name, fields })) => eprintln!("[PASS] {name} {fields}"),
        Seen::Console(_, Some(Record::TestFail { name, reason })) => eprintln!("[FAIL] {name}: {reason}"),
        Seen::Console(line, Some(Record::Perf(_))) => eprintln!("       {line}"),
        Seen::Console(line, _) if !quiet => println!("  | {line}"),
        Seen::Console(..) => {}
        Seen::Stderr(line) => eprintln!("qemu: {line}"),
    })?;
    let host = rig.finish();

    let t = &r.transcript;
    let mut names: Vec<&str> = Vec::new();
    for rec in &t.records {
        if let Record::TestStart { name } | Record::TestPass { name, .. } | Record::TestFail { name, .. } =
            rec
            && !names.contains(&name.as_str())
        {
            names.push(name);
        }
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            let (result, detail) = match t.verdict(name) {
                Some(Record::TestPass { fields, .. }) => ("PASS", fields.to_string()),
                Some(Record::TestFail { reason, .. }) => ("FAIL", reason.clone()),
                _ => ("NO VERDICT", "started but never finished".to_owned()),
            };
            let time = r
                .test_times
                .get(*name)
                .map(|d| table::duration(*d))
                .unwrap_or_default();
            vec![
                (*name).to_owned(),
                result.to_owned(),
                time,
                ellipsize(&detail, 90),
            ]
        })
        .collect();
    println!();
    if rows.is_empty() {
        println!("(the guest reported no tests)");
    } else {
        print!(
            "{}",
            table::render(&["test", "result", "time (host)", "details"], &rows)
        );
    }
    for e in t.errors() {
        println!("guest error: {e}");
    }
    for (loc, msg) in t.panics() {
        println!("guest panic at {loc}: {msg}");
    }
    for e in t.exceptions() {
        println!("guest exception: {e}");
    }
    if let Some(boot) = t.boot() {
        println!("boot: {boot}");
    }
    if let Some((p, f)) = t.summary() {
        println!("guest summary: passed={p} failed={f}");
    }
    println!(
        "QEMU: {}; wall time launch to exit {}",
        r.outcome,
        table::duration(r.wall)
    );
    println!("log: {}", r.log.display());

    let (mut host_problems, done) = host.check(t);
    println!();
    for d in &done {
        println!("host check: {d}");
    }
    if r.outcome == Outcome::Pass && cfg.trace.is_some() {
        match host.costs(t, &log.with_extension("costs")) {
            Ok((costs, p)) if !costs.is_empty() => {
                host_problems.extend(p);
                let speed = if args.single_boot {
                    Vec::new()
                } else {
                    let mut best: Speed = Vec::new();
                    for round in 1..=args.speed_rounds {
                        for (key, v) in speed_boot(&cfg, &tests, round)? {
                            match best.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, b)) => *b = b.max(v),
                                None => best.push((key, v)),
                            }
                        }
                    }
                    best
                };
                print_costs(&costs, &speed);
                println!("raw counts: {}", log.with_extension("costs").display());
            }
            Ok((_, p)) => host_problems.extend(p),
            Err(e) => host_problems.push(format!("{e:#}")),
        }
    }
    for p in &host_problems {
        println!("host check FAILED: {p}");
    }

    let ok = r.outcome == Outcome::Pass
        && host_problems.is_empty()
        && t.boot().is_some()
        && t.failures().next().is_none()
        && t.errors().next().is_none()
        && t.unfinished().is_empty()
        && matches!(t.summary(), Some((_, 0)));
    if r.outcome == Outcome::Pass && !ok {
        println!("the guest exited with pass, but its console shows failures or is incomplete (see above)");
    }
    if ok && let Some(trace) = &cfg.trace {
        // Summed up in run.costs; a trace of PIO devices runs to hundreds of MB.
        let _ = std::fs::remove_file(trace);
    }
    println!("{}", if ok { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(if ok { 0 } else { 1 })
}

/// `s` cut to `max` characters, with an ellipsis if cut (the full text is in the progress lines and log).
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max - 1).chain(std::iter::once('…')).collect()
    }
}

/// The default test list: self-tests, then each I/O device's workloads (throughput before
/// integrity, so the image the host checks holds the integrity pattern).
fn default_tests(devices: &[Device]) -> Vec<String> {
    let mut tests: Vec<String> = SELF_TESTS.iter().map(|s| (*s).to_owned()).collect();
    for d in devices {
        let n = d.name();
        match d.backend() {
            Backend::Disk => {
                tests.push(format!("blk-throughput@{n}"));
                tests.push(format!("blk-integrity@{n}"));
            }
            Backend::Net => tests.push(format!("net-echo@{n}")),
            Backend::Console => tests.push(format!("console-echo@{n}")),
            Backend::None => {}
        }
    }
    tests
}

/// Parameters for the workload tests among `tests`; `speed` makes net-echo a short echo check.
fn workload_params(tests: &[String], speed: bool) -> Vec<String> {
    let mut words = Vec::new();
    for t in tests.iter().filter(|t| t.contains('@')) {
        words.push(format!("{t}.seed={WORKLOAD_SEED}"));
        match t.split_once('@').map(|(w, _)| w) {
            Some("blk-throughput") => words.push(format!("{t}.ms={PHASE_MS}")),
            Some("net-echo") if speed => words.push(format!("{t}.frames=8 {t}.ms={PHASE_MS}")),
            Some("net-echo") => words.push(format!("{t}.frames=200 {t}.ms={PHASE_MS}")),
            Some("console-echo") => words.push(format!("{t}.bytes=8192")),
            _ => {}
        }
    }
    words
}

/// PERF figures of an untraced boot, keyed by (device, pattern, k-th phase of that device).
type Speed = Vec<((String, String, usize), f64)>;

fn perf_keys<'a>(perfs: impl Iterator<Item = (&'a str, &'a str, f64)>) -> Speed {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    perfs
        .map(|(dev, pattern, ops_s)| {
            let k = seen.entry((dev.to_owned(), pattern.to_owned())).or_default();
            *k += 1;
            ((dev.to_owned(), pattern.to_owned(), *k), ops_s)
        })
        .collect()
}

/// Boots again without the trace, running only the throughput parts (block phases, net packet
/// rate), for ops/s free of the trace's overhead.
fn speed_boot(traced: &QemuConfig, tests: &[String], round: u32) -> Result<Speed> {
    let tests: Vec<String> = tests
        .iter()
        .filter(|t| t.starts_with("blk-throughput@") || t.starts_with("net-echo@"))
        .cloned()
        .collect();
    if tests.is_empty() {
        return Ok(Vec::new());
    }
    let mut words = vec![format!("tests={}", tests.join(","))];
    words.extend(workload_params(&tests, true));
    let append = words.join(" ");
    let devices: Vec<Device> = traced
        .devices
        .iter()
        .copied()
        .filter(|d| tests.iter().any(|t| t.ends_with(&format!("@{}", d.name()))))
        .collect();
    let log = workspace::log_dir().join(format!("run-speed{round}.log"));
    let rig = Rig::start(
        &devices,
        &append,
        &workspace::xtask_dir().join("disks"),
        "run-speed",
        false,
        Instant::now() + traced.timeout + Duration::from_secs(5),
        None,
    )?;
    let cfg = QemuConfig {
        devices,
        append,
        io: rig.io.clone(),
        trace: None,
        ..traced.clone()
    };
    eprintln!("untraced boot {round} for ops/s: {}", tests.join(","));
    let r = qemu::run(&cfg, &log, |seen| {
        if let Seen::Console(line, Some(Record::Perf(_) | Record::TestFail { .. })) = seen {
            eprintln!("       {line}");
        }
    })?;
    let host = rig.finish();
    let (problems, _) = host.check(&r.transcript);
    if r.outcome != Outcome::Pass || !problems.is_empty() {
        bail!(
            "the untraced boot failed ({}; {}); log: {}",
            r.outcome,
            problems.join("; "),
            log.display()
        );
    }
    let perfs: Vec<(String, String, f64)> = r
        .transcript
        .perfs()
        .map(|f| {
            let ops = f.get_u64("ops").unwrap_or(0) as f64;
            let us = f.get_u64("guest_us").unwrap_or(0).max(1) as f64;
            (
                f.get("dev").unwrap_or("?").to_owned(),
                f.get("pattern").unwrap_or("?").to_owned(),
                ops * 1e6 / us,
            )
        })
        .collect();
    Ok(perf_keys(
        perfs.iter().map(|(d, p, v)| (d.as_str(), p.as_str(), *v)),
    ))
}

/// The per-op cost table of the run, and the block device comparison.
fn print_costs(costs: &[Cost], speed: &Speed) {
    let phase_costs: Vec<&Cost> = costs
        .iter()
        .filter(|c| matches!(c.scope, Scope::Phase(_)))
        .collect();
    let keys = perf_keys(
        phase_costs
            .iter()
            .map(|c| (c.dev.as_str(), c.pattern.as_str(), c.ops_per_sec())),
    );
    let untraced = |i: usize| -> String {
        let key = &keys[i].0;
        speed
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| "-".to_owned(), |(_, v)| format!("{v:.0}"))
    };
    let row = |c: &Cost, fast: String| {
        vec![
            c.dev.clone(),
            c.pattern.clone(),
            c.qd_text(),
            c.ops.to_string(),
            format!("{:.2}", c.traps_per_op()),
            format!("{:.3}", c.notifies_per_op()),
            format!("{:.3}", c.irqs_per_op()),
            format!("{:.0}", c.copies_per_op()),
            format!("{:.0}", c.ops_per_sec()),
            fast,
        ]
    };
    let header = [
        "dev",
        "pattern",
        "qd",
        "ops",
        "traps/op",
        "notifies/op",
        "irqs/op",
        "copied B/op",
        "ops/s traced",
        "ops/s untraced (best)",
    ];
    let mut rows: Vec<Vec<String>> = phase_costs
        .iter()
        .enumerate()
        .map(|(i, c)| row(c, untraced(i)))
        .collect();
    rows.extend(
        costs
            .iter()
            .filter(|c| matches!(c.scope, Scope::Test(_)))
            .map(|c| row(c, "-".to_owned())),
    );
    println!();
    println!(
        "per-op costs (traps: trapped register accesses of the device + ioeventfd kicks; irqs: delivered \
         by QEMU; ops/s by guest time; whole-test rows include the device probe)"
    );
    print!("{}", table::render(&header, &rows));

    let block: Vec<Vec<String>> = phase_costs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pattern.starts_with("rand"))
        .map(|(i, c)| {
            let mut r = row(c, untraced(i));
            r.remove(7);
            r.remove(3);
            r
        })
        .collect();
    if !block.is_empty() {
        println!();
        println!(
            "block devices, random I/O at queue depth 1 and 32 (a device's qd is capped at what it \
             supports: IDE 1)"
        );
        print!(
            "{}",
            table::render(
                &[
                    "dev",
                    "pattern",
                    "qd",
                    "traps/op",
                    "notifies/op",
                    "irqs/op",
                    "ops/s traced",
                    "ops/s untraced (best)"
                ],
                &block
            )
        );
    }
}
