//! `cargo xtask run`: boot the guest once, show its console and results.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::console::Record;
use crate::qemu::{self, Outcome, QemuConfig, Seen};
use crate::{RunArgs, provision, table, workspace};

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

    let mut words: Vec<String> = Vec::new();
    if !args.tests.is_empty() {
        words.push(format!("tests={}", args.tests.join(",")));
    }
    // The guest's default test list includes pci.
    let runs_pci = args.tests.is_empty() || args.tests.iter().any(|t| t == "pci");
    if runs_pci && !args.append.contains("pci.expect=") {
        words.push(qemu::pci_expect_arg(&args.devices));
    }
    words.extend(args.append.split_whitespace().map(str::to_owned));

    let cfg = QemuConfig {
        qemu: QemuConfig::default_qemu(),
        kernel,
        accel: args.accel,
        devices: args.devices.clone(),
        append: words.join(" "),
        timeout: Duration::from_secs_f64(args.timeout),
        first_output_timeout: Duration::from_secs_f64(args.first_output_timeout),
        io: Default::default(),
        trace: None,
    };
    let log = workspace::log_dir().join("run.log");
    eprintln!("$ {}", workspace::display_command(&cfg.command()));
    let quiet = args.quiet;
    let r = qemu::run(&cfg, &log, |seen| match seen {
        Seen::Console(_, Some(Record::TestStart { name })) => eprintln!("[ .. ] {name}"),
        Seen::Console(_, Some(Record::TestPass { name, fields })) => eprintln!("[PASS] {name} {fields}"),
        Seen::Console(_, Some(Record::TestFail { name, reason })) => eprintln!("[FAIL] {name}: {reason}"),
        Seen::Console(line, _) if !quiet => println!("  | {line}"),
        Seen::Console(..) => {}
        Seen::Stderr(line) => eprintln!("qemu: {line}"),
    })?;

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

    let ok = r.outcome == Outcome::Pass
        && t.boot().is_some()
        && t.failures().next().is_none()
        && t.errors().next().is_none()
        && t.unfinished().is_empty()
        && matches!(t.summary(), Some((_, 0)));
    if r.outcome == Outcome::Pass && !ok {
        println!("the guest exited with pass, but its console shows failures or is incomplete (see above)");
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
