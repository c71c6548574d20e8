//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (one per parser of peer input; see
//! SECURITY.md, "Fuzzing"), built with cargo-fuzz on nightly (AddressSanitizer, debug assertions)
//! and run for `--seconds` each, from the seed corpus in `fuzz/corpus/<target>/` into a scratch
//! corpus under `<target>/fuzz/`. Prints per target the executions, coverage (libFuzzer's `cov:`
//! and `ft:`) and whether it crashed; a crash leaves its input in `<target>/fuzz/artifacts/`.
//! `cargo xtask test` runs every target for a few seconds (group `fuzz`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{provision, workspace};

/// The targets, with the libFuzzer options each needs.
pub const TARGETS: &[(&str, &[&str])] = &[
    ("ring_back", &[]),
    ("ring_front", &[]),
    ("byte_ring", &[]),
    // The engine is kept across inputs (its AIO context's teardown waits for the kernel): leak
    // checks after each input would see that memory as growth.
    ("blkback", &["-detect_leaks=0"]),
    ("netback", &[]),
    ("vhost_blk", &[]),
    ("vhost_net", &[]),
    ("xenstore_guest", &[]),
    ("xenstore_dom0", &[]),
    ("xenbus_keys", &[]),
    ("relay_gate", &[]),
    ("relay_framing", &[]),
];

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 2;

/// `cargo xtask fuzz` options.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Also stop each target after this many executions (libFuzzer `-runs`).
    #[arg(long)]
    pub runs: Option<u64>,
    /// libFuzzer `-fork`: worker processes per target (1 extra job at most on a shared 2-core box).
    #[arg(long, default_value_t = 0)]
    pub fork: u32,
    /// Build without optimisations (quicker to build, slower to run: what the smoke test uses).
    #[arg(long)]
    pub dev: bool,
    /// Start from the seeds alone, into an emptied scratch corpus of its own (`corpus-fresh/`; the
    /// one long runs grow is left alone).
    #[arg(long)]
    pub fresh: bool,
    /// Only list the targets.
    #[arg(long)]
    pub list: bool,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

/// What one run reached, from libFuzzer's last status line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reached {
    pub execs: u64,
    pub cov: u64,
    pub ft: u64,
    pub exec_s: u64,
}

/// Parses the last libFuzzer status line (`#123 DONE cov: 45 ft: 67 ... exec/s: 89 ...`) of `log`.
pub fn parse_status(log: &str) -> Option<Reached> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains(" cov: "))?;
    let field = |name: &str| -> Option<u64> {
        let rest = line.split(name).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    // `-fork` prints `#123: cov: ... exec/s 89 ...` instead.
    Some(Reached {
        execs: line[1..]
            .split_whitespace()
            .next()?
            .trim_end_matches(':')
            .parse()
            .ok()?,
        cov: field(" cov: ")?,
        ft: field(" ft: ")?,
        exec_s: field(" exec/s: ").or_else(|| field(" exec/s ")).unwrap_or(0),
    })
}

fn fuzz_dir() -> PathBuf {
    workspace::root().join("fuzz")
}

fn out_dir() -> PathBuf {
    workspace::target_dir().join("fuzz")
}

/// `cargo +nightly fuzz ...` in `fuzz/`, its target directory under ours.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    workspace::sanitize(&mut cmd);
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(fuzz_dir())
        .arg("+nightly")
        .arg("fuzz")
        .args(args);
    cmd
}

/// The binary of `target` once built.
fn binary(target: &str, dev: bool) -> PathBuf {
    out_dir()
        .join("x86_64-unknown-linux-gnu")
        .join(if dev { "debug" } else { "release" })
        .join(target)
}

/// Builds every target (debug assertions, AddressSanitizer; optimised unless `dev`).
pub fn build(dev: bool) -> Result<()> {
    let dir = out_dir();
    let mut cmd = cargo_fuzz(&["build", if dev { "--dev" } else { "-O" }, "-a", "--target-dir"]);
    cmd.arg(&dir);
    workspace::run_visible(&mut cmd)
}

/// Runs one target; returns what it reached and whether it crashed (with the log's tail).
fn run_one(target: &str, extra: &[&str], args: &FuzzArgs) -> Result<(Option<Reached>, Option<String>)> {
    let corpus = out_dir()
        .join(if args.fresh { "corpus-fresh" } else { "corpus" })
        .join(target);
    let artifacts = out_dir().join("artifacts").join(target);
    let logs = out_dir().join("logs");
    if args.fresh && corpus.is_dir() {
        std::fs::remove_dir_all(&corpus).with_context(|| format!("emptying {}", corpus.display()))?;
    }
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let mut cmd = Command::new(binary(target, args.dev));
    // New inputs go to the scratch corpus (first directory); the seeds are only read.
    cmd.arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .args(extra);
    cmd.arg(format!("-max_total_time={}", args.seconds));
    if let Some(n) = args.runs {
        cmd.arg(format!("-runs={n}"));
    }
    if args.fork > 0 {
        cmd.arg(format!("-fork={}", args.fork)).arg("-ignore_crashes=0");
    }
    let dict = fuzz_dir().join("dict").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.env("ASAN_OPTIONS", "detect_odr_violation=0")
        .stdin(Stdio::null());
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    eprintln!("==> fuzz {target}: {}", workspace::display_command(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {} (built?)", binary(target, args.dev).display()))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let reached = parse_status(&text);
    let crash = (!status.success()).then(|| tail(&text, 30, &log_path));
    Ok((reached, crash))
}

fn tail(text: &str, n: usize, path: &Path) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut s = format!("{status} (log: {})\n", path.display(), status = "crashed");
    for l in &lines[lines.len().saturating_sub(n)..] {
        s.push_str("    | ");
        s.push_str(&l.chars().take(300).collect::<String>());
        s.push('\n');
    }
    s
}

/// `cargo xtask fuzz`.
pub fn fuzz(args: &FuzzArgs) -> Result<i32> {
    if args.list {
        for (t, _) in TARGETS {
            println!("{t}");
        }
        return Ok(0);
    }
    let chosen: Vec<&(&str, &[&str])> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            match TARGETS.iter().find(|(t, _)| t == name) {
                Some(t) => v.push(t),
                None => bail!(
                    "no fuzz target {name}; targets: {}",
                    TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    provision::ensure_cargo_fuzz(false)?;
    build(args.dev)?;
    let mut rows = Vec::new();
    let mut crashed = 0;
    for (target, extra) in chosen {
        let t0 = Instant::now();
        let (reached, crash) = run_one(target, extra, args)?;
        if let Some(c) = &crash {
            crashed += 1;
            eprintln!("    {target}: {c}");
        }
        rows.push((*target, reached, crash.is_some(), t0.elapsed()));
    }
    println!(
        "{:<16} {:>12} {:>8} {:>8} {:>9} {:>7}  result",
        "target", "executions", "cov", "ft", "exec/s", "time"
    );
    for (t, r, bad, time) in &rows {
        let r = r.clone().unwrap_or_default();
        println!(
            "{:<16} {:>12} {:>8} {:>8} {:>9} {:>6}s  {}",
            t,
            r.execs,
            r.cov,
            r.ft,
            r.exec_s,
            time.as_secs(),
            if *bad { "CRASH" } else { "ok" }
        );
    }
    println!("fuzz: {} passed, {crashed} failed", rows.len() - crashed);
    Ok(i32::from(crashed > 0))
}

/// The `cargo xtask test` stage: this xtask's own `fuzz --dev --fresh --seconds SMOKE_SECONDS`
/// (every target, built once, unoptimised: the build is most of the stage's time; from the seeds
/// alone, so a big corpus left by a long run does not lengthen it).
pub fn smoke_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xtask")));
    cmd.current_dir(workspace::root()).args([
        "fuzz",
        "--dev",
        "--fresh",
        "--seconds",
        &SMOKE_SECONDS.to_string(),
    ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        let log = "INFO: seed\n#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #186659\tDONE   cov: 422 ft: 1489 corp: 287/19Kb lim: 823 exec/s: 7179 rss: 462Mb\n\
                   Done 186659 runs in 26 second(s)\n";
        assert_eq!(
            parse_status(log),
            Some(Reached {
                execs: 186659,
                cov: 422,
                ft: 1489,
                exec_s: 7179
            })
        );
        assert_eq!(parse_status("no status here\n"), None);
        let forked = "#9000: cov: 5 ft: 6 corp: 7 exec/s 300 oom/timeout/crash: 0/0/0 time: 30s job: 4\n";
        assert_eq!(
            parse_status(forked),
            Some(Reached {
                execs: 9000,
                cov: 5,
                ft: 6,
                exec_s: 300
            })
        );
    }

    #[test]
    fn every_target_has_a_source_and_a_seed_corpus() {
        for (t, _) in TARGETS {
            assert!(
                fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")).is_file(),
                "{t}"
            );
            let seeds = fuzz_dir().join("corpus").join(t);
            assert!(
                std::fs::read_dir(&seeds).is_ok_and(|d| d.count() > 0),
                "seeds of {t}"
            );
        }
    }
}
