//! The QEMU PVH environment: turns a matrix row into one QEMU boot of our kernel (or, for the
//! Linux peer, of Debian's), with its devices on QEMU's own backends (`crate::rig`: disk images,
//! echo peers) or on pvkit's vhost-user daemons (`crate::vhost`), and checks the result.
//!
//! Derived from the row: the device list, the kernel command line (`tests=` and the workload's
//! parameters for the profile), the timeout, whether QEMU traces register accesses (every test
//! row with a QEMU device model: the trace is the host's view of the guest's exits), and the checks
//! (`crate::checks` for the guest's verdicts, the rig's for images and peers, the cost bounds of
//! each device kind below).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::checks::{self, GuestEnd, GuestRun, WORKLOAD_SEED};
use crate::console::Record;
use crate::costs::{Cost, Measure, Scope};
use crate::matrix::{Backend, Dev, Profile, Row, Variant, Workload};
use crate::outcome::{CellResult, Verdict};
use crate::qemu::{self, Accel, Backend as Attach, Device, MEMORY_MIB, Outcome, QemuConfig, RunResult, Seen};
use crate::rig::Rig;
use crate::{table, workspace};

/// Bytes the uart test loops back through COM1 (the guest's default is 256).
const UART_BYTES: u64 = 512;
/// Timer parameters: not the guest's defaults (so the check proves they were applied), and a low
/// rate, because a TCG vCPU stalled by a busy host for longer than one period loses ticks.
const TIMER_HZ: u64 = 50;
const TIMER_MS: u64 = 400;
/// The device-absent run must fail within this (host) time.
const ABSENT_LIMIT: Duration = Duration::from_secs(10);
/// Throughput phase length of the test profile (the whole matrix stays within seconds of QEMU
/// time).
const TEST_PHASE_MS: u64 = 40;

/// What the QEMU rows of one command share.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Our kernel.
    pub elf: PathBuf,
    pub accel: Accel,
    pub profile: Profile,
    /// Trace register accesses of rows with QEMU device models (the host's view of the exits).
    pub trace: bool,
    /// Print the guest's console lines as they come.
    pub verbose: bool,
    /// Prefix of log file names (`test`, `run`, `bench1`, ...).
    pub tag: String,
}

/// The log of a row: `target/xtask/logs/<tag>-<row name with / as _>.log`.
pub fn log_of(tag: &str, row: &Row) -> PathBuf {
    workspace::log_dir().join(format!("{tag}-{}.log", row.name().replace(['/', '+'], "_")))
}

/// One workload per I/O device kind, each on a device QEMU does not have (device-absent).
pub fn absent_tests() -> Vec<(String, String)> {
    Device::io_devices()
        .map(|d| {
            let workload = match d.backend() {
                Attach::Disk => "blk-integrity",
                Attach::Net => "net-echo",
                _ => "console-echo",
            };
            (format!("{workload}@{}", d.name()), d.name())
        })
        .collect()
}

/// The guest's parameters of a device workload `test` for `profile` (shared by every environment
/// and backend, so the paths of the comparison do the same work).
pub fn workload_params(w: Workload, test: &str, profile: Profile, variant: Option<Variant>) -> Vec<String> {
    let mut words = vec![format!("{test}.seed={WORKLOAD_SEED}")];
    let ms = match profile {
        Profile::Test => TEST_PHASE_MS,
        Profile::Compare { phase_ms } => phase_ms,
    };
    match w {
        Workload::BlkIntegrity => words.push(format!("{test}.extents=48")),
        Workload::BlkThroughput => words.push(format!("{test}.ms={ms}")),
        Workload::NetEcho => words.push(format!("{test}.frames=200 {test}.ms={}", ms.max(100))),
        Workload::ConsoleEcho => words.push(format!("{test}.bytes=8192")),
        _ => {}
    }
    if variant == Some(Variant::StockNotify) {
        words.push(format!("{test}.notify=stock"));
    }
    words
}

/// The devices a row gives QEMU.
fn devices(row: &Row) -> Vec<Device> {
    match row.workload {
        // Every device of the table (two of one kind make the expectation a multiset), on inert
        // backends, so the guest's and QEMU's PCI views check their ids.
        Workload::Pci => vec![
            Device::Edu,
            Device::VirtioRng,
            Device::PciTestdev,
            Device::Edu,
            Device::VirtioBlk,
            Device::VirtioNet,
            Device::VirtioConsole,
            Device::Ide,
            Device::Ahci,
            Device::E1000,
            Device::Uart,
        ],
        _ => row.device.and_then(Dev::qemu).into_iter().collect(),
    }
}

/// The kernel command line of a row.
pub fn cmdline(row: &Row, profile: Profile, accel: Accel) -> String {
    let test = row.test();
    let mut words = vec![match row.workload {
        Workload::DeviceAbsent => format!(
            "tests={}",
            absent_tests()
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => format!("tests={test}"),
    }];
    match row.workload {
        Workload::Pci => words.push(qemu::pci_expect_arg(&devices(row))),
        Workload::Timer => words.push(format!("timer.hz={TIMER_HZ} timer.ms={TIMER_MS}")),
        // The memory map must match what xtask gave QEMU (-m).
        Workload::Hello => words.push(format!("hello.mem_mib={MEMORY_MIB}")),
        Workload::Cpuid => words.push(format!("cpuid.expect={}", accel_kind(accel))),
        Workload::Uart => words.push(format!("uart.bytes={UART_BYTES}")),
        w if row.device.is_some() => words.extend(workload_params(w, &test, profile, row.variant)),
        _ => {}
    }
    words.join(" ")
}

/// What `cpuid` must detect under `accel`.
fn accel_kind(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    }
}

fn timeout(row: &Row) -> Duration {
    match row.workload {
        Workload::Timer => Duration::from_secs(60),
        _ => Duration::from_secs(30),
    }
}

/// Runs one QEMU PVH row.
pub fn run_row(row: &Row, ctx: &Ctx) -> CellResult {
    let log = log_of(&ctx.tag, row);
    let t0 = Instant::now();
    let r = match row.backend {
        Backend::PvkitVhostUser => crate::vhost::run_row(row, ctx, &log),
        _ => builtin(row, ctx, &log),
    };
    let mut cell = match r {
        Ok(c) => c,
        Err(e) => CellResult::new(row, Verdict::Crash(format!("{e:#}"))),
    };
    cell.log.get_or_insert(log.clone());
    cell.time.get_or_insert(t0.elapsed());
    append_notes(&log, &cell);
    cell
}

/// Writes the host's findings at the end of the row's log.
pub fn append_notes(log: &Path, cell: &CellResult) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        for n in &cell.notes {
            let _ = writeln!(f, "# host check: {n}");
        }
        let _ = writeln!(
            f,
            "# scenario {}: {}{}",
            cell.row.name(),
            cell.verdict.label(),
            cell.verdict
                .reason()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}

/// Shows a console line as it arrives.
pub fn show(verbose: bool) -> impl FnMut(Seen<'_>) {
    move |seen| match seen {
        Seen::Console(_, Some(Record::TestStart { name })) if verbose => eprintln!("      [ .. ] {name}"),
        Seen::Console(_, Some(Record::TestPass { name, .. })) if verbose => eprintln!("      [PASS] {name}"),
        Seen::Console(_, Some(Record::TestFail { name, reason })) if verbose => {
            eprintln!("      [FAIL] {name}: {reason}")
        }
        Seen::Console(line, _) if verbose => eprintln!("      | {line}"),
        Seen::Stderr(line) => eprintln!("      qemu: {line}"),
        _ => {}
    }
}

/// The guest's end of a QEMU run.
pub fn guest_end(r: &RunResult) -> GuestEnd {
    match &r.outcome {
        Outcome::Pass => GuestEnd::Pass,
        Outcome::Fail => GuestEnd::Fail,
        other => GuestEnd::Crash(other.to_string()),
    }
}

/// A QEMU device model (or no device at all).
fn builtin(row: &Row, ctx: &Ctx, log: &Path) -> Result<CellResult> {
    let devs = devices(row);
    let append = cmdline(row, ctx.profile, ctx.accel);
    let io_row = row.device.is_some();
    let trace = (ctx.trace && io_row).then(|| log.with_extension("trace"));
    let timeout = timeout(row);
    let rig = io_row
        .then(|| {
            Rig::start(
                &devs,
                &append,
                &workspace::xtask_dir().join("disks"),
                &row.name().replace(['/', '+'], "_"),
                row.workload == Workload::BlkError,
                Instant::now() + timeout + Duration::from_secs(5),
                trace.clone(),
            )
        })
        .transpose()?;
    let mut cfg = QemuConfig::pvh(&ctx.elf, append, devs.clone(), timeout);
    cfg.accel = ctx.accel;
    cfg.io = rig.as_ref().map(|r| r.io.clone()).unwrap_or_default();
    cfg.trace = trace.clone();
    let r = qemu::run(&cfg, log, show(ctx.verbose))?;
    let host = rig.map(Rig::finish);
    let mut cell = CellResult::new(row, Verdict::Pass);
    cell.time = Some(r.wall);
    if let Outcome::LaunchFailed(why) = &r.outcome {
        cell.verdict = Verdict::Fail(format!("prerequisite missing: {why}"));
        return Ok(cell);
    }
    let end = guest_end(&r);
    let run = GuestRun {
        transcript: &r.transcript,
        end: &end,
        test_times: Some(&r.test_times),
    };
    let mut problems = guest_checks(row, &run, &r, ctx.accel);
    if let Some(host) = &host {
        let (p, done) = host.check(&r.transcript);
        problems.extend(p);
        cell.notes.extend(done);
        cell.costs = r.transcript.perfs().map(Measure::from_perf).collect();
        if r.outcome == Outcome::Pass && trace.is_some() {
            match host.costs(&r.transcript, &log.with_extension("costs")) {
                Ok((costs, p)) => {
                    problems.extend(p);
                    problems.extend(cost_bounds(row, &costs));
                    join_host_exits(&mut cell.costs, &costs);
                    for c in &costs {
                        cell.notes.push(format!("cost {}", c.line()));
                    }
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    if row.workload == Workload::Pci {
        // The device table must match what this QEMU really builds, or `pci.expect=` would be wrong.
        let mut f = std::fs::OpenOptions::new().append(true).open(log)?;
        match qemu::info_pci(&cfg.qemu, &devs, &mut f) {
            Ok(actual) if actual == qemu::expected_pci(&devs) => {}
            Ok(actual) => problems.push(format!(
                "xtask's device table is wrong: QEMU's `info pci` shows {actual:?}, xtask expected {:?}",
                qemu::expected_pci(&devs)
            )),
            Err(e) => problems.push(format!("could not ask QEMU for `info pci`: {e:#}")),
        }
    }
    if row.workload == Workload::Hello && matches!(end, GuestEnd::Pass) {
        cell.notes.push(format!(
            "hello wall time (QEMU launch to exit): {} (goal <= 50 ms with qboot under TCG)",
            table::duration(r.wall)
        ));
    }
    let crash = match &end {
        GuestEnd::Crash(why) => Some(why.clone()),
        _ => None,
    };
    cell.verdict = Verdict::from_problems(crash, &problems);
    if cell.verdict == Verdict::Pass
        && let Some(t) = &trace
    {
        // Summed up in the .costs file; a trace of PIO devices runs to hundreds of MB.
        let _ = std::fs::remove_file(t);
    }
    Ok(cell)
}

/// Copies QEMU's view of each phase's exits (all vCPU register accesses plus ioeventfd kicks) into
/// the guest's records of the same phases.
fn join_host_exits(measures: &mut [Measure], costs: &[Cost]) {
    let phases: Vec<&Cost> = costs
        .iter()
        .filter(|c| matches!(c.scope, Scope::Phase(_)))
        .collect();
    for (m, c) in measures.iter_mut().zip(phases) {
        m.host_exits = Some(c.all_traps + c.ioeventfd_kicks);
    }
}

/// The guest's side of a row: verdicts and the workload's own figures.
pub fn guest_checks(row: &Row, run: &GuestRun<'_>, r: &RunResult, accel: Accel) -> Vec<String> {
    let mut problems = Vec::new();
    let test = row.test();
    let t = run.transcript;
    match row.workload {
        Workload::FaultPagefault => {
            checks::failed_as_meant(run, &test, &mut problems);
            checks::pagefault(t, &mut problems);
        }
        Workload::FaultPanic => {
            checks::failed_as_meant(run, &test, &mut problems);
            checks::panic(t, &mut problems);
        }
        Workload::FaultStack => {
            checks::failed_as_meant(run, &test, &mut problems);
            checks::double_fault(t, &mut problems);
        }
        Workload::DeviceAbsent => {
            checks::failed_as_meant(run, &absent_tests()[0].0, &mut problems);
            checks::device_absent(run, &absent_tests(), Some(r.wall), ABSENT_LIMIT, &mut problems);
        }
        w => {
            checks::all_passed(run, &[&test], &mut problems);
            match w {
                Workload::Timer => checks::timer(run, TIMER_HZ, TIMER_MS, &mut problems),
                Workload::Hello => {
                    let mib = t.boot().and_then(|b| b.get_u64("mem_mib"));
                    if mib != Some(u64::from(MEMORY_MIB)) {
                        problems.push(format!("BOOT mem_mib={mib:?}, QEMU was given {MEMORY_MIB} MiB"));
                    }
                }
                Workload::Cpuid => checks::cpuid(run, accel_kind(accel), &mut problems),
                Workload::BlkError => checks::blk_error(run, &test, &mut problems),
                Workload::Uart => {
                    for k in ["looped_back", "by_irq"] {
                        let got = run.pass(&test).and_then(|f| f.get_u64(k));
                        if run.pass(&test).is_some() && got != Some(UART_BYTES) {
                            problems.push(format!("uart {k}={got:?}, expected {UART_BYTES}"));
                        }
                    }
                }
                Workload::Pci => {
                    // Independent of the guest's own comparison: the ids it listed must be exactly
                    // those of the machine xtask configured.
                    let mut seen = t.pci_ids();
                    seen.sort();
                    let want = qemu::expected_pci(&devices(row));
                    if seen != want {
                        problems.push(format!("guest listed PCI ids {seen:?}, QEMU was given {want:?}"));
                    }
                }
                _ => {}
            }
        }
    }
    problems
}

/// Checks the costs QEMU's trace showed for the throughput rows against what each kind of device
/// is about (bounds with room to spare; the figures measured are in the notes):
/// - virtio-blk: one kick and no other trap per request at queue depth 1 (the cached doorbell,
///   MSI-X), and kicks batched at depth 32 (EVENT_IDX, batched submission); with the crate's
///   stock notify, two more register accesses per kick;
/// - AHCI: a handful of register accesses per command at depth 1, doorbells batched at 32;
/// - IDE (16-bit PIO): the guest copies every byte through the data register, and QEMU saw at
///   least one trap per 2 bytes;
/// - every phase: the guest's own count of the register accesses it made (port I/O and MMIO, all
///   devices and interrupt controllers) equals QEMU's (when the guest reports them).
pub fn cost_bounds(row: &Row, costs: &[Cost]) -> Vec<String> {
    let mut problems = Vec::new();
    let phases: Vec<&Cost> = costs
        .iter()
        .filter(|c| matches!(c.scope, Scope::Phase(_)))
        .collect();
    let stock = row.variant == Some(Variant::StockNotify);
    let expected_phases = match (row.workload, row.device) {
        (Workload::BlkThroughput, Some(Dev::Ide)) => 4, // One request at a time: no qd-32 phases.
        (Workload::BlkThroughput, _) => 6,
        (Workload::NetEcho, _) => 2,
        (Workload::ConsoleEcho, _) => 1,
        _ => 0,
    };
    if phases.len() != expected_phases && expected_phases > 0 {
        problems.push(format!(
            "{} phases with costs, expected {expected_phases}",
            phases.len()
        ));
    }
    for c in phases {
        let what = format!("{} {} qd={}", c.dev, c.pattern, c.qd);
        let mut bound = |ok: bool, text: String| {
            if !ok {
                problems.push(format!("{what}: {text}"));
            }
        };
        if let (Some(g_pio), Some(g_dev_mmio)) = (c.guest_exits_pio, c.guest_exits_mmio) {
            let g_mmio = g_dev_mmio + c.guest_exits_irqchip.unwrap_or(0);
            // Equal one request at a time; deeper, an ioeventfd can merge doorbell writes that
            // come before QEMU reads it into one `virtio_queue_notify`, so QEMU may see fewer, by
            // at most the kicks.
            let host = c.all_traps + c.ioeventfd_kicks;
            let guest = g_pio + g_mmio;
            let ok = if c.qd <= 1 {
                guest == host
            } else {
                host <= guest && guest <= host + c.guest_notifies
            };
            bound(
                ok,
                format!(
                    "the guest counted {} register accesses ({g_pio} port I/O + {g_mmio} MMIO), QEMU's \
                     trace {} ({} traced + {} ioeventfd kicks)",
                    g_pio + g_mmio,
                    host,
                    c.all_traps,
                    c.ioeventfd_kicks
                ),
            );
        }
        match (row.workload, row.device, c.qd) {
            (Workload::BlkThroughput, Some(Dev::VirtioBlk), 1) if !stock => {
                bound(
                    c.traps_per_op() <= 2.0,
                    format!("{:.2} traps/op, expected <= 2", c.traps_per_op()),
                );
                bound(
                    c.host_kicks == c.ops,
                    format!("QEMU saw {} kicks for {} requests", c.host_kicks, c.ops),
                );
            }
            (Workload::BlkThroughput, Some(Dev::VirtioBlk), 1) => {
                bound(
                    c.device_traps >= 2 * c.ops,
                    format!(
                        "{} register traps besides the kicks for {} requests, expected 2 per kick",
                        c.device_traps, c.ops
                    ),
                );
                bound(
                    c.host_kicks == c.ops,
                    format!("QEMU saw {} kicks for {} requests", c.host_kicks, c.ops),
                );
            }
            (Workload::BlkThroughput, Some(Dev::VirtioBlk | Dev::Ahci), qd) if qd >= 8 && !stock => bound(
                c.notifies_per_op() <= 0.5,
                format!(
                    "{:.3} notifies/op at qd {qd}, expected <= 0.5",
                    c.notifies_per_op()
                ),
            ),
            (Workload::BlkThroughput, Some(Dev::Ahci), _) => bound(
                c.traps_per_op() <= 16.0,
                format!("{:.2} traps/op, expected <= 16", c.traps_per_op()),
            ),
            (Workload::BlkThroughput, Some(Dev::Ide), _) => {
                bound(
                    c.copied_bytes == c.bytes,
                    format!("copied {} bytes of {}", c.copied_bytes, c.bytes),
                );
                bound(
                    c.device_traps >= c.bytes / 2,
                    format!("{} traps for {} bytes of 16-bit PIO", c.device_traps, c.bytes),
                );
            }
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Fields;
    use crate::matrix::{Env, MATRIX};
    use crate::trace::{Access, Counts};

    use crate::matrix::named as row;

    #[test]
    fn command_lines_are_derived_from_the_row() {
        let test = Profile::Test;
        assert_eq!(
            cmdline(&row("qemu-pvh/hello"), test, Accel::Tcg),
            format!("tests=hello hello.mem_mib={MEMORY_MIB}")
        );
        assert!(cmdline(&row("qemu-pvh/cpuid"), test, Accel::Kvm).ends_with("cpuid.expect=kvm"));
        assert!(cmdline(&row("qemu-pvh/timer"), test, Accel::Tcg).contains("timer.hz=50 timer.ms=400"));
        let pci = cmdline(&row("qemu-pvh/pci"), test, Accel::Tcg);
        assert!(pci.contains("pci.expect="));
        assert_eq!(pci.matches("1234:11e8").count(), 2);
        let stock = cmdline(
            &row("qemu-pvh/qemu/blk-throughput@virtio-blk+stock-notify"),
            test,
            Accel::Tcg,
        );
        assert!(stock.starts_with("tests=blk-throughput@virtio-blk "), "{stock}");
        assert!(
            stock.contains("blk-throughput@virtio-blk.notify=stock"),
            "{stock}"
        );
        assert!(stock.contains(&format!(".seed={WORKLOAD_SEED}")), "{stock}");
        let compare = cmdline(
            &row("qemu-pvh/qemu/blk-throughput@ide"),
            Profile::Compare { phase_ms: 150 },
            Accel::Tcg,
        );
        assert!(compare.contains("blk-throughput@ide.ms=150"), "{compare}");
        let absent = cmdline(&row("qemu-pvh/device-absent"), test, Accel::Tcg);
        assert_eq!(absent.matches('@').count(), 7, "{absent}");
    }

    #[test]
    fn pci_row_covers_the_whole_device_table() {
        // Its `info pci` cross-check is what keeps each device's PCI ids in xtask's table honest.
        let devs = devices(&row("qemu-pvh/pci"));
        for d in <Device as clap::ValueEnum>::value_variants() {
            assert!(devs.contains(d), "{d:?} is not attached in the pci row");
        }
        assert!(
            MATRIX
                .iter()
                .filter(|r| r.env == Env::QemuPvh)
                .all(|r| r.device.is_none_or(|d| d.qemu().is_some()))
        );
    }

    #[test]
    fn throughput_costs_are_bounded_per_device_kind() {
        let cost = |dev: &str, qd: u64, ops: u64, region: &str, traps: u64, kicks: u64, copied: u64| {
            let f = Fields::parse(&format!(
                "dev={dev} pattern=randread4k qd={qd} mode=irq ops={ops} bytes={} guest_us=1000 \
                 notifies={kicks} irqs={ops} copied_bytes={copied}",
                ops * 4096
            ));
            let mut c = Counts::default();
            c.guest.insert(
                region.to_owned(),
                Access {
                    reads: traps,
                    writes: 0,
                },
            );
            c.queue_notifies = if dev.starts_with("virtio") { kicks } else { 0 };
            c.irqs.insert(49, ops);
            Cost::new(Scope::Phase(1), dev, "?", &f, &c)
        };
        let six = |c: Cost| vec![c; 6];
        let virtio = row("qemu-pvh/qemu/blk-throughput@virtio-blk");
        let stock = row("qemu-pvh/qemu/blk-throughput@virtio-blk+stock-notify");
        let ide = row("qemu-pvh/qemu/blk-throughput@ide");
        let ahci = row("qemu-pvh/qemu/blk-throughput@ahci");
        let isr = "virtio-pci-isr-virtio-blk";
        assert!(cost_bounds(&virtio, &six(cost("virtio-blk", 1, 100, isr, 0, 100, 0))).is_empty());
        // Three register accesses per kick, as the crate's stock notify does.
        assert!(!cost_bounds(&virtio, &six(cost("virtio-blk", 1, 100, isr, 200, 100, 0))).is_empty());
        let common = "virtio-pci-common-virtio-blk";
        assert!(cost_bounds(&stock, &six(cost("virtio-blk", 1, 100, common, 200, 100, 0))).is_empty());
        assert!(!cost_bounds(&stock, &six(cost("virtio-blk", 1, 100, common, 0, 100, 0))).is_empty());
        // No batching at depth 32.
        assert!(!cost_bounds(&virtio, &six(cost("virtio-blk", 32, 100, isr, 0, 100, 0))).is_empty());
        let four = |c: Cost| vec![c; 4];
        assert!(cost_bounds(&ide, &four(cost("ide", 1, 10, "ide", 20_580, 10, 40_960))).is_empty());
        assert!(
            !cost_bounds(&ide, &six(cost("ide", 1, 10, "ide", 20_580, 10, 40_960))).is_empty(),
            "six phases from IDE"
        );
        assert!(!cost_bounds(&ide, &four(cost("ide", 1, 10, "ide", 20_580, 10, 0))).is_empty());
        assert!(!cost_bounds(&ahci, &[cost("ahci", 1, 10, "ahci", 90, 10, 0)]).is_empty());
    }

    #[test]
    fn guest_and_host_exit_counts_must_agree() {
        let virtio = row("qemu-pvh/qemu/blk-throughput@virtio-blk");
        let phase = |guest_pio: u64, guest_mmio: u64| {
            let f = Fields::parse(&format!(
                "dev=virtio-blk pattern=randread4k qd=1 mode=irq ops=100 bytes=409600 guest_us=1000 \
                 notifies=100 irqs=100 copied_bytes=0 exits_pio={guest_pio} exits_mmio={guest_mmio}"
            ));
            let mut c = Counts::default();
            // 100 EOIs traced; 100 kicks through the ioeventfd (not traced as accesses).
            c.guest.insert(
                "apic-msi".into(),
                Access {
                    reads: 0,
                    writes: 100,
                },
            );
            c.queue_notifies = 100;
            c.irqs.insert(49, 100);
            vec![Cost::new(Scope::Phase(1), "virtio-blk", "?", &f, &c); 6]
        };
        assert!(
            cost_bounds(&virtio, &phase(0, 200)).is_empty(),
            "{:?}",
            cost_bounds(&virtio, &phase(0, 200))
        );
        assert_eq!(
            cost_bounds(&virtio, &phase(0, 150)).len(),
            6,
            "one disagreement per phase"
        );
    }
}
