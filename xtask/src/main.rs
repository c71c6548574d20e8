//! `cargo xtask`: build, run, test and bench pvkit (the cargo-xtask pattern).
//!
//! - `workspace`: paths, and nested `cargo` with the outer cargo's environment removed;
//! - `provision`: QEMU >= 10 / libxen-dev / Miri detection and installation (Debian 12 as root);
//! - `qemu`: the device matrix, the QEMU command line, and the runner (own process group, timeouts,
//!   console streaming, exit-status mapping);
//! - `console`: the `PVKIT ...` record parser (the contract is guest-kernel/README.md);
//! - `scenario`: what each QEMU scenario boots and checks;
//! - `run`, `test`: the two main subcommands; `table`: result tables;
//! - `rig`: the host side of a run with I/O devices: `disk` images, `peer` echo threads (net,
//!   console), and after the run the host's checks and the cost per operation (`trace` parses
//!   QEMU's trace, `costs` joins it with the guest's counts);
//! - `process`: process groups, parent-death signal, Ctrl-C;
//! - `xen`: the Xen harness (real Xen 4.17 + Linux dom0 in QEMU, our guest as a PV domU);
//! - `vhost`: the vhost-user daemons of backends/ against our guest and a Linux guest (test group
//!   `vhost`), and the vhost-user-blk vs QEMU virtio-blk bench.

mod console;
mod costs;
mod disk;
#[allow(dead_code)] // wired into run and test next
mod matrix;
mod peer;
mod process;
mod provision;
mod qemu;
mod rig;
mod run;
mod scenario;
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
use crate::scenario::Scenario;

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
    /// The main job: boot the guest in QEMU, stream its console and show its test results.
    ///
    /// Defaults: q35 with qboot firmware, TCG (`-accel tcg -cpu max`), 128 MiB, devices edu and
    /// virtio-rng, the guest's safe self-tests. QEMU's exit status 1 means the guest passed, 3 that it
    /// failed, anything else a crash. The console is kept in <target>/xtask/logs/run.log. Exits 0 only if
    /// the guest passed and reported every test it started as passed.
    Run(RunArgs),
    /// Run every test (what CI runs): fmt, clippy, host tests, loom, Miri, QEMU scenarios.
    ///
    /// Each stage's output goes to <target>/xtask/logs/<stage>.log, each QEMU scenario's console (with
    /// its QEMU command line) to <target>/xtask/logs/<scenario>.log. Ends with a pass/fail table and
    /// exits non-zero if anything failed; a scenario whose prerequisite is missing fails.
    Test(TestArgs),
    /// Run the benchmarks (`cargo bench -p ring-protocol`); extra arguments go to cargo bench.
    Bench {
        /// Only the block comparison: our vhost-user-blk vs QEMU's built-in virtio-blk under the
        /// guest's blk-throughput workload (without this flag it runs after the cargo benches).
        #[arg(long)]
        vhost_blk: bool,
        /// Only the Xen block comparison: our userspace blkback vs Linux's kernel blkback in one Xen
        /// boot, same guest workload (without this flag it runs after the vhost comparison).
        #[arg(long)]
        xen_blk: bool,
        /// Boots of each device in the block comparison.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Milliseconds per throughput phase in the block comparison.
        #[arg(long, default_value_t = 1000)]
        phase_ms: u64,
        /// vhost-user-blk worker threads (0: requests run on the vring threads).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot real Xen (4.17, Debian packages, Linux dom0) in QEMU TCG and run Xen scenarios as domUs in
    /// that one boot. Serial log: <target>/xtask/logs/xen.log; packages and images cached in
    /// <target>/xtask/xen/.
    Xen(xen::XenArgs),
    /// Install what `run` and `test` need (QEMU >= 10, libxen-dev, nightly Miri); idempotent.
    Provision {
        /// Only print what would be installed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        simulate: provision::Simulation,
    },
}

/// Boot the guest in QEMU.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// In-kernel tests to run, in order (`tests=` on the kernel command line). Default: the guest's safe
    /// self-tests (hello, cpuid, heap, timer, pci), then the device workloads of every I/O device in
    /// `--devices` (blk-throughput and blk-integrity per disk, net-echo per NIC, console-echo per
    /// console). Unknown names make the guest fail the run.
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Extra kernel command-line words (e.g. "timer.hz=250 timer.ms=500").
    #[arg(long, default_value = "")]
    pub append: String,
    /// Devices for the guest: bare PCI functions and the I/O devices (disks on images under
    /// <target>/xtask/disks, NICs and consoles on xtask's echo peers). `pci.expect=` is derived from
    /// this list.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "edu,virtio-rng,virtio-blk,ide,ahci,virtio-net,e1000,virtio-console,uart"
    )]
    pub devices: Vec<Device>,
    /// Do not trace QEMU (no trap counts and cost lines; the workloads still print their own counts).
    #[arg(long)]
    pub no_trace: bool,
    /// Skip the untraced boots that measure ops/s without the trace's overhead (tracing every
    /// register access slows PIO devices down by more than 10x).
    #[arg(long)]
    pub single_boot: bool,
    /// Untraced boots for ops/s; each phase's best is shown (other load on the host only ever
    /// makes a phase slower).
    #[arg(long, default_value_t = 2)]
    pub speed_rounds: u32,
    /// CPU accelerator. TCG (`-accel tcg -cpu max`) is the default because on this machine kind
    /// /dev/kvm is kvm_pvm, a paravirtual KVM without VT: it runs guests in a slow instruction emulator
    /// and drops or mis-delivers their interrupts. `kvm` (`-accel kvm -cpu host,-arch-capabilities`) is opt-in.
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// Kill QEMU if the guest has not exited after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Kill QEMU if the guest printed nothing within this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub first_output_timeout: f64,
    /// Boot this ELF instead of building the guest kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Where the guest runs: `qemu` (PVH guest of q35) or `xen` (PV domU of real Xen booted in QEMU
    /// TCG; serial log in <target>/xtask/logs/xen-run.log).
    #[arg(long, value_enum, default_value = "qemu")]
    pub hypervisor: xen::Hypervisor,
    /// Under `--hypervisor xen`: which backends serve the domU's disk and vif.
    #[arg(long, value_enum, default_value = "linux")]
    pub xen_backends: xen::XenBackends,
    /// Do not try to install QEMU.
    #[arg(long)]
    pub no_provision: bool,
    /// Only show test progress and results, not the raw console.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What `test` runs; by default everything.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only these groups (for local iteration; CI runs all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<test::Group>,
    /// Skip these groups (for local iteration; CI runs all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<test::Group>,
    /// Skip Miri (same as --skip miri; for local iteration only, CI runs Miri).
    #[arg(long)]
    pub no_miri: bool,
    /// Run only these QEMU scenarios.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Stream each stage's output instead of keeping it in the log only.
    #[arg(long, short)]
    pub verbose: bool,
    /// Boot this guest ELF in the QEMU scenarios instead of building the guest kernel (local
    /// iteration, e.g. while the guest tree is mid-change; CI builds it).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
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
        Cmd::Xen(args) => xen::xen(&args),
        Cmd::Bench {
            vhost_blk,
            xen_blk,
            rounds,
            phase_ms,
            workers,
            args,
        } => {
            let all = !vhost_blk && !xen_blk;
            if all {
                let mut cmd = workspace::cargo();
                cmd.args(["bench", "-p", "ring-protocol"]).args(args);
                workspace::run_visible(&mut cmd)?;
            }
            let mut status = 0;
            if all || vhost_blk {
                status = status.max(vhost::bench_blk(rounds.max(1), phase_ms, workers)?);
            }
            if all || xen_blk {
                status = status.max(xen::bench::bench_blk(rounds.max(1), phase_ms)?);
            }
            Ok(status)
        }
        Cmd::Provision { dry_run, simulate } => {
            provision::ensure_simulated(
                provision::Needs {
                    qemu: true,
                    xen_headers: true,
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
