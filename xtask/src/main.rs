//! `cargo xtask`: build, run, test and bench pvkit (the cargo-xtask pattern).
//!
//! - `matrix`: the scenario matrix (workload x environment x transport x backend), the one place a
//!   scenario is declared; `exec` runs a selection of its rows, each through its environment:
//!   `qemu_env` (QEMU PVH guests, QEMU's device models through `rig`, pvkit's vhost-user daemons
//!   through `vhost`) and `xen` (real Xen 4.17 + Linux dom0 in QEMU, our guest as PV domUs, all in
//!   one boot);
//! - `qemu`: the QEMU device table, the machine's command line and the one QEMU runner (own
//!   process group, timeouts, console streaming, exit-status mapping, log with the command line);
//! - `checks`: what a finished guest must show in any environment; `console`: the `PVKIT ...`
//!   record parser (the contract is guest-kernel/README.md); `outcome`: the one result type
//!   (PASS/FAIL/CRASH/SKIP) and the JUnit file;
//! - `costs`, `trace`: per-operation costs (the guest's counts, QEMU's trace of the same phases);
//!   `compare`: the comparison table of `run`; `report`: the report of `bench`;
//! - `run`, `test`, `bench`: the subcommands; `table`: text tables;
//! - `workspace`, `toolchain`, `provision`, `process`: paths and nested cargo, the pinned
//!   toolchain's targets, QEMU/libxen-dev/shellcheck/Miri installation, process groups and Ctrl-C.

mod checks;
mod compare;
mod console;
mod costs;
mod disk;
mod exec;
mod fuzz;
mod matrix;
mod outcome;
mod peer;
mod process;
mod provision;
mod qemu;
mod qemu_env;
mod report;
mod rig;
mod run;
mod table;
mod test;
mod toolchain;
mod trace;
mod vhost;
mod workspace;
mod xen;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::qemu::{Accel, Device};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test and bench pvkit",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the guest kernel ELF (release, x86_64-unknown-none) and the host tools.
    Build {
        /// Build the host tools with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// The main job: the guest's self-tests, then one comparison of every I/O path in the same
    /// units (block, net and console over Xen PV, virtio and emulated hardware).
    ///
    /// Runs the comparison rows of the scenario matrix (`cargo xtask test --list` shows them under
    /// "run by": block throughput, net echo and console echo on every path) plus the QEMU
    /// platform self-tests (hello, cpuid, heap, timer, pci), and prints one table per class with
    /// exits/op (device registers, interrupt controller, halts, hypercalls), notifications/op,
    /// interrupts/op, bytes copied/op, ops/s and latency percentiles, all counted by the guest. TCG by default; QEMU and the Xen packages are installed on first use. Logs:
    /// target/xtask/logs/run-*.log. With --tests it instead boots QEMU once with those tests.
    Run(RunArgs),
    /// Run every test (what CI runs): a fresh clone that must set itself up, fmt, clippy,
    /// shellcheck, docs, host tests, loom, Miri, then every row of the scenario matrix (QEMU PVH,
    /// vhost-user, one Xen boot with all Xen PV rows).
    ///
    /// Each stage's output goes to target/xtask/logs/STAGE.log, each row's console (with its
    /// QEMU command line) to target/xtask/logs/test-ROW.log. Ends with a result table
    /// (PASS/FAIL/CRASH/SKIP, each failure with the command that reproduces it), a JUnit XML file
    /// (target/xtask/junit.xml), and exits non-zero if anything failed or crashed.
    Test(TestArgs),
    /// Benchmarks: the comparison rows over several rounds, written up as a report
    /// (target/xtask/report/: report.md, SVG charts, raw CSV and JSON), after the ring-protocol
    /// cargo benches. Extra arguments go to cargo bench.
    Bench(BenchArgs),
    /// Fuzz every parser of peer input with libFuzzer (nightly, cargo-fuzz; installed on first
    /// use): each target for --seconds from its seed corpus, then executions, coverage and crashes
    /// per target.
    Fuzz(fuzz::FuzzArgs),
    /// Install what `run` and `test` need (QEMU >= 10, libxen-dev, shellcheck, nightly Miri);
    /// idempotent.
    Provision {
        /// Only print what would be installed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        simulate: provision::Simulation,
    },
}

/// Where `cargo xtask run` compares the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hypervisor {
    /// QEMU only: our kernel as a PVH guest (virtio, emulated hardware, vhost-user).
    Qemu,
    /// Xen only: our kernel as PV domUs of real Xen 4.17 booted in QEMU TCG.
    Xen,
    /// Both (the default): the whole comparison.
    All,
}

/// The comparison (or, with --tests, one boot).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Restrict the comparison to one hypervisor's paths.
    #[arg(long, value_enum, default_value = "all")]
    pub hypervisor: Hypervisor,
    /// Restrict the comparison further by matrix column (`backend=qemu`, `transport=virtio|xen`,
    /// `device=ide`, ...; see `cargo xtask test --list`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Milliseconds per throughput phase.
    #[arg(long, default_value_t = 150)]
    pub phase_ms: u64,
    /// Also trace QEMU's register accesses and check the guest's exit counts against them (slows
    /// port I/O devices by 10x or more).
    #[arg(long)]
    pub trace: bool,
    /// CPU accelerator of the QEMU PVH rows. TCG (`-accel tcg -cpu max`) is the default; `kvm`
    /// (`-accel kvm -cpu host,-arch-capabilities`) needs a host with VT, and a kvm_pvm host is told
    /// so at once.
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// Boot once with these in-kernel tests instead of the comparison (`tests=` on the command
    /// line; the devices from --devices on xtask's disks and echo peers).
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Extra kernel command-line words for --tests (e.g. "timer.hz=250 timer.ms=500").
    #[arg(long, default_value = "")]
    pub append: String,
    /// Devices of a --tests boot (every device of the table by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "edu,virtio-rng,virtio-blk,ide,ahci,virtio-net,e1000,virtio-console,uart"
    )]
    pub devices: Vec<Device>,
    /// Kill QEMU of a --tests boot if the guest has not exited after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Boot this ELF instead of building the guest kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Show every console line.
    #[arg(long, short)]
    pub verbose: bool,
}

impl RunArgs {
    /// The `--devices` default, as clap shows it.
    #[cfg(test)]
    fn default_devices() -> String {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run exists");
        let arg = run
            .get_arguments()
            .find(|a| a.get_id() == "devices")
            .expect("--devices exists");
        arg.get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What `test` runs; by default everything.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only these: stage groups (fresh-clone, fmt, clippy, shellcheck, docs, host-tests, loom,
    /// miri, fuzz, matrix),
    /// shorthands for matrix rows (qemu, xen, vhost), or matrix column filters (`env=xen-pv`,
    /// `backend=pvkit-xen|linux`, `transport=virtio`, `workload=blk-integrity`, `device=ide`,
    /// `sets=run`); filters of one column are alternatives, different columns must all match.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip these stage groups.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Skip Miri (same as --skip miri; for local iteration only, CI runs Miri).
    #[arg(long)]
    pub no_miri: bool,
    /// Run only these matrix rows: full names (`xen-pv/linux/blk-integrity@xen-blk`), guest test
    /// names (`blk-integrity@ide`: every row of that test), or patterns with `*`.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Print the matrix (or the selected rows) and exit.
    #[arg(long)]
    pub list: bool,
    /// Stream each stage's output and every console line.
    #[arg(long, short)]
    pub verbose: bool,
    /// Boot this guest ELF instead of building the guest kernel (local iteration, e.g. while the
    /// guest tree is mid-change; CI builds it).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
}

/// The benchmark report.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds of the comparison (each path booted once per round); the report gives min, median
    /// and max over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Milliseconds per throughput phase.
    #[arg(long, default_value_t = 1000)]
    pub phase_ms: u64,
    /// Restrict the paths by matrix column (as `run --only`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip the ring-protocol cargo benches.
    #[arg(long)]
    pub no_cargo_bench: bool,
    /// Arguments for cargo bench.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn main() {
    process::install_interrupt_handler();
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            1
        }
    };
    std::process::exit(if process::interrupted() && code != 0 {
        130
    } else {
        code
    });
}

fn dispatch(cli: Cli) -> Result<i32> {
    // Before the first nested cargo: the pinned toolchain may lack the guest target.
    if !matches!(cli.cmd, Cmd::Provision { dry_run: true, .. }) {
        toolchain::ensure()?;
    }
    match cli.cmd {
        Cmd::Build { release } => {
            workspace::build_guest()?;
            let mut cmd = workspace::cargo();
            cmd.args(["build", "--workspace", "--exclude", workspace::GUEST_PACKAGE]);
            if release {
                cmd.arg("--release");
            }
            workspace::run_visible(&mut cmd)?;
            eprintln!("guest ELF: {}", workspace::guest_elf().display());
            Ok(0)
        }
        Cmd::Run(args) => run::run(&args),
        Cmd::Test(args) => test::test(&args),
        Cmd::Bench(args) => report::bench(&args),
        Cmd::Fuzz(args) => fuzz::fuzz(&args),
        Cmd::Provision { dry_run, simulate } => {
            provision::ensure_simulated(
                provision::Needs {
                    qemu: true,
                    xen_headers: true,
                    shellcheck: true,
                },
                dry_run,
                &simulate,
            )?;
            provision::ensure_miri(dry_run)?;
            eprintln!("provision: done");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn help(sub: &str) -> String {
        let mut cmd = super::Cli::command();
        cmd.find_subcommand_mut(sub)
            .unwrap_or_else(|| panic!("no subcommand {sub}"))
            .render_long_help()
            .to_string()
    }

    #[test]
    fn help_names_every_group_shorthand_and_self_test() {
        let test = help("test");
        for g in crate::test::group_names() {
            assert!(test.contains(g), "`test --help` does not name group {g}");
        }
        for s in crate::test::shorthand_names() {
            assert!(test.contains(s), "`test --help` does not name shorthand {s}");
        }
        let run = help("run");
        for w in crate::run::self_test_names() {
            assert!(run.contains(w), "`run --help` does not name self-test {w}");
        }
        let default_devices = crate::RunArgs::default_devices();
        assert!(
            run.contains(&default_devices),
            "`run --help` shows the --devices default"
        );
    }
}
