//! The QEMU scenarios of `cargo xtask test`: what each boots and what its console and exit must show.

use std::time::Duration;

use clap::ValueEnum;

use crate::console::{Record, Transcript};
use crate::costs::{Cost, Scope};
use crate::qemu::{Device, MEMORY_MIB, Outcome, RunResult, expected_pci, pci_expect_arg};

/// The address the guest's `fault-pagefault` test touches (unmapped); the exception report must
/// name it in `cr2`.
/// (`0xdead_0000_0000` would not do: bit 47 set makes it non-canonical, a #GP rather than a #PF.)
pub const PAGEFAULT_ADDRESS: u64 = 0x0dea_d000_0000;
/// The message of the guest's `fault-panic` test.
pub const PANIC_MESSAGE: &str = "deliberate panic from fault-panic test";
/// Page fault vector.
const VECTOR_PF: u64 = 14;
/// Double fault vector (the guest's stack-overflow test lands there, on its IST stack).
const VECTOR_DF: u64 = 8;
/// Bytes the uart scenario loops back through COM1 (the guest's default is 256).
const UART_BYTES: u64 = 512;
/// Timer scenario parameters: not the guest's defaults (so the check proves they were applied), and a
/// low rate, because a TCG vCPU stalled by a busy host for longer than one period loses ticks.
const TIMER_HZ: u64 = 50;
const TIMER_MS: u64 = 400;
/// Allowed relative error of the tick count.
const TIMER_TOLERANCE: f64 = 0.10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Boot and hello: PVKIT BOOT, hello passes, exit status pass.
    Hello,
    /// A deliberate page fault: the exception handler must report vector 14 and the faulting address.
    FaultPagefault,
    /// Heap stress: allocations of many sizes, contents verified.
    Heap,
    /// The timer interrupt fires at the expected rate.
    Timer,
    /// PCI enumeration finds exactly the devices QEMU was given.
    Pci,
    /// A deliberate panic: the run fails with the panic message.
    FaultPanic,
    /// Hypervisor detection through CPUID must say TCG (the scenarios run under TCG).
    Cpuid,
    /// COM1 in loopback mode: bytes come back polled and through the receive interrupt.
    Uart,
    /// A stack overflow into the guard page is reported as a double fault on the IST stack.
    FaultStack,
    /// virtio-blk integrity: pattern written, flushed, read back; the host re-checks the image.
    #[value(name = "blk-integrity@virtio-blk")]
    BlkIntegrityVirtio,
    /// IDE (PIO) integrity; the host re-checks the image.
    #[value(name = "blk-integrity@ide")]
    BlkIntegrityIde,
    /// AHCI (DMA, NCQ) integrity; the host re-checks the image.
    #[value(name = "blk-integrity@ahci")]
    BlkIntegrityAhci,
    /// Short virtio-blk throughput run (6 phases) with the per-op cost lines from QEMU's trace.
    #[value(name = "blk-throughput@virtio-blk")]
    BlkThroughputVirtio,
    /// The same with the `virtio-drivers` crate's stock notify (`notify=stock`: queue select write,
    /// notify offset read, doorbell): the "before" of the cached one-write doorbell, seen in the trap
    /// count.
    #[value(name = "blk-throughput-stock@virtio-blk")]
    BlkThroughputStockVirtio,
    /// Short IDE throughput run with cost lines.
    #[value(name = "blk-throughput@ide")]
    BlkThroughputIde,
    /// Short AHCI throughput run with cost lines.
    #[value(name = "blk-throughput@ahci")]
    BlkThroughputAhci,
    /// A write to a read-only virtio-blk disk surfaces the device's error status; image unchanged.
    #[value(name = "blk-error@virtio-blk")]
    BlkErrorVirtio,
    /// A write that fails on the IDE disk surfaces the ATA error; image unchanged.
    #[value(name = "blk-error@ide")]
    BlkErrorIde,
    /// A write that fails on the AHCI disk surfaces the task-file error; image unchanged.
    #[value(name = "blk-error@ahci")]
    BlkErrorAhci,
    /// virtio-net frames echoed by the host peer; both sides verify and count.
    #[value(name = "net-echo@virtio-net")]
    NetEchoVirtio,
    /// e1000 frames echoed by the host peer; both sides verify and count.
    #[value(name = "net-echo@e1000")]
    NetEchoE1000,
    /// virtio-console bytes echoed by the host peer; both sides verify and count.
    #[value(name = "console-echo@virtio-console")]
    ConsoleEchoVirtio,
    /// COM2 (16550) bytes echoed by the host peer; both sides verify and count.
    #[value(name = "console-echo@uart")]
    ConsoleEchoUart,
    /// The command line asks for every I/O device kind, QEMU has none of them: each workload fails
    /// cleanly and quickly with `device <name> absent`.
    #[value(name = "device-absent")]
    DeviceAbsent,
}

/// Seed xtask gives every workload (not the guest's default, so the host checks prove it was used).
pub const WORKLOAD_SEED: u64 = 7;
/// The device-absent scenario must fail within this (host) time.
const ABSENT_LIMIT: Duration = Duration::from_secs(10);

impl Scenario {
    pub fn all() -> &'static [Scenario] {
        Scenario::value_variants()
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Hello => "hello",
            Scenario::FaultPagefault => "fault-pagefault",
            Scenario::Heap => "heap",
            Scenario::Timer => "timer",
            Scenario::Pci => "pci",
            Scenario::FaultPanic => "fault-panic",
            Scenario::Cpuid => "cpuid",
            Scenario::Uart => "uart",
            Scenario::FaultStack => "fault-stack",
            Scenario::BlkIntegrityVirtio => "blk-integrity@virtio-blk",
            Scenario::BlkIntegrityIde => "blk-integrity@ide",
            Scenario::BlkIntegrityAhci => "blk-integrity@ahci",
            Scenario::BlkThroughputVirtio => "blk-throughput@virtio-blk",
            Scenario::BlkThroughputStockVirtio => "blk-throughput-stock@virtio-blk",
            Scenario::BlkThroughputIde => "blk-throughput@ide",
            Scenario::BlkThroughputAhci => "blk-throughput@ahci",
            Scenario::BlkErrorVirtio => "blk-error@virtio-blk",
            Scenario::BlkErrorIde => "blk-error@ide",
            Scenario::BlkErrorAhci => "blk-error@ahci",
            Scenario::NetEchoVirtio => "net-echo@virtio-net",
            Scenario::NetEchoE1000 => "net-echo@e1000",
            Scenario::ConsoleEchoVirtio => "console-echo@virtio-console",
            Scenario::ConsoleEchoUart => "console-echo@uart",
            Scenario::DeviceAbsent => "device-absent",
        }
    }

    /// The in-kernel test it runs (the scenarios are named after them).
    pub fn guest_test(self) -> &'static str {
        match self {
            Scenario::DeviceAbsent => "blk-integrity@virtio-blk",
            Scenario::BlkThroughputStockVirtio => "blk-throughput@virtio-blk",
            _ => self.name(),
        }
    }

    /// Whether the scenario runs a device workload (disk images, peers, QEMU trace, host checks).
    pub fn is_io(self) -> bool {
        self.guest_test().contains('@') && self != Scenario::DeviceAbsent
    }

    /// Whether its disks must refuse writes.
    pub fn fail_writes(self) -> bool {
        self.name().starts_with("blk-error@")
    }

    /// Extra devices for QEMU (on top of q35's own).
    pub fn devices(self) -> &'static [Device] {
        match self {
            // Two of one kind make the expectation a multiset, not a set.
            // Two of one kind make the expectation a multiset, not a set. The I/O devices are here
            // (on inert backends) so the guest's and QEMU's PCI views check their ids.
            Scenario::Pci => &[
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
            Scenario::BlkIntegrityVirtio
            | Scenario::BlkThroughputVirtio
            | Scenario::BlkThroughputStockVirtio
            | Scenario::BlkErrorVirtio => &[Device::VirtioBlk],
            Scenario::BlkIntegrityIde | Scenario::BlkThroughputIde | Scenario::BlkErrorIde => &[Device::Ide],
            Scenario::BlkIntegrityAhci | Scenario::BlkThroughputAhci | Scenario::BlkErrorAhci => {
                &[Device::Ahci]
            }
            Scenario::NetEchoVirtio => &[Device::VirtioNet],
            Scenario::NetEchoE1000 => &[Device::E1000],
            Scenario::ConsoleEchoVirtio => &[Device::VirtioConsole],
            Scenario::ConsoleEchoUart => &[Device::Uart],
            _ => &[],
        }
    }

    /// The kernel command line.
    pub fn append(self) -> String {
        let mut words = vec![match self {
            Scenario::DeviceAbsent => format!("tests={}", absent_tests().join(",")),
            _ => format!("tests={}", self.guest_test()),
        }];
        match self {
            Scenario::Pci => words.push(pci_expect_arg(self.devices())),
            // Not the guest's defaults, so the check below also proves the parameters were applied.
            Scenario::Timer => words.push(format!("timer.hz={TIMER_HZ} timer.ms={TIMER_MS}")),
            // The memory map must match what xtask gave QEMU (-m).
            Scenario::Hello => words.push(format!("hello.mem_mib={MEMORY_MIB}")),
            // Scenarios always run under TCG.
            Scenario::Cpuid => words.push("cpuid.expect=tcg".to_owned()),
            Scenario::Uart => words.push(format!("uart.bytes={UART_BYTES}")),
            _ => {}
        }
        let t = self.guest_test();
        if self.is_io() {
            words.push(format!("{t}.seed={WORKLOAD_SEED}"));
        }
        if self == Scenario::BlkThroughputStockVirtio {
            words.push(format!("{t}.notify=stock"));
        }
        // Short runs: the whole QEMU time of the I/O scenarios stays within a few seconds.
        match t.split_once('@').map(|(w, _)| w) {
            Some("blk-integrity") => words.push(format!("{t}.extents=48")),
            Some("blk-throughput") => words.push(format!("{t}.ms=40")),
            Some("net-echo") => words.push(format!("{t}.frames=200 {t}.ms=100")),
            Some("console-echo") => words.push(format!("{t}.bytes=8192")),
            _ => {}
        }
        words.join(" ")
    }

    /// Wall-clock limit for the QEMU run (TCG on 2 shared cores; the expected runs take well under 1 s,
    /// the timer test about its measurement window).
    pub fn timeout(self) -> Duration {
        match self {
            Scenario::Timer => Duration::from_secs(60),
            _ => Duration::from_secs(30),
        }
    }

    /// Whether the guest is meant to end the run with a failure.
    pub fn expects_failure(self) -> bool {
        matches!(
            self,
            Scenario::FaultPagefault | Scenario::FaultPanic | Scenario::FaultStack | Scenario::DeviceAbsent
        )
    }

    /// Checks the costs QEMU's trace showed for the throughput scenarios against what each kind of
    /// device is about (bounds with room to spare; the figures measured are in the report):
    /// - virtio-blk: one kick and no other trap per request at queue depth 1 (the cached doorbell,
    ///   MSI-X), and kicks batched at depth 32 (EVENT_IDX, batched submission); with the crate's
    ///   stock notify, two more register accesses per kick;
    /// - AHCI: a handful of register accesses per command at depth 1, doorbells batched at 32;
    /// - IDE (16-bit PIO): the guest copies every byte through the data register, and QEMU saw at
    ///   least one trap per 2 bytes.
    pub fn check_costs(self, costs: &[Cost]) -> Vec<String> {
        let mut problems = Vec::new();
        let phases: Vec<&Cost> = costs
            .iter()
            .filter(|c| matches!(c.scope, Scope::Phase(_)))
            .collect();
        let expected_phases = match self {
            Scenario::BlkThroughputVirtio
            | Scenario::BlkThroughputStockVirtio
            | Scenario::BlkThroughputAhci => 6,
            // IDE takes one request at a time: no queue-depth-32 phases.
            Scenario::BlkThroughputIde => 4,
            // Packet rate with 64- and 1514-byte frames.
            Scenario::NetEchoVirtio | Scenario::NetEchoE1000 => 2,
            // The echo stream.
            Scenario::ConsoleEchoVirtio | Scenario::ConsoleEchoUart => 1,
            _ => 0,
        };
        if phases.len() != expected_phases {
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
            match (self, c.qd) {
                (Scenario::BlkThroughputVirtio, 1) => {
                    bound(
                        c.traps_per_op() <= 2.0,
                        format!("{:.2} traps/op, expected <= 2", c.traps_per_op()),
                    );
                    bound(
                        c.host_kicks == c.ops,
                        format!("QEMU saw {} kicks for {} requests", c.host_kicks, c.ops),
                    );
                }
                (Scenario::BlkThroughputStockVirtio, 1) => {
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
                (Scenario::BlkThroughputVirtio | Scenario::BlkThroughputAhci, qd) if qd >= 8 => bound(
                    c.notifies_per_op() <= 0.5,
                    format!(
                        "{:.3} notifies/op at qd {qd}, expected <= 0.5",
                        c.notifies_per_op()
                    ),
                ),
                (Scenario::BlkThroughputAhci, _) => bound(
                    c.traps_per_op() <= 16.0,
                    format!("{:.2} traps/op, expected <= 16", c.traps_per_op()),
                ),
                (Scenario::BlkThroughputIde, _) => {
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

    /// Checks a finished run. Returns what is wrong; empty means the scenario passed.
    pub fn check(self, run: &RunResult) -> Vec<String> {
        let t = &run.transcript;
        let mut problems = Vec::new();
        let test = self.guest_test();
        if t.boot().is_none() {
            problems.push("no `PVKIT BOOT` line".to_owned());
        }
        for e in t.errors() {
            problems.push(format!("guest reported: {e}"));
        }
        if self.expects_failure() {
            if run.outcome != Outcome::Fail {
                problems.push(format!(
                    "expected the guest to exit with fail (status 3), got: {}",
                    run.outcome
                ));
            }
            if t.passed(test) {
                problems.push(format!("test {test} claims PASS although it must fail"));
            }
            if t.exit_record() != Some(1) {
                problems.push(format!("expected `PVKIT EXIT 1`, got {:?}", t.exit_record()));
            }
            match self {
                Scenario::FaultPagefault => check_pagefault(t, &mut problems),
                Scenario::FaultPanic => check_panic(t, &mut problems),
                Scenario::FaultStack => {
                    if !t.exceptions().any(|e| e.get_u64("vector") == Some(VECTOR_DF)) {
                        problems.push(format!(
                            "no `PVKIT EXCEPTION vector={VECTOR_DF}` (double fault) line"
                        ));
                    }
                }
                Scenario::DeviceAbsent => {
                    let tests = absent_tests();
                    for (test, d) in tests.iter().zip(Device::io_devices()) {
                        let want = format!("device {} absent", d.name());
                        match t.verdict(test) {
                            Some(Record::TestFail { reason, .. }) if reason.contains(&want) => {}
                            other => problems.push(format!("{test}: expected `FAIL {want}`, got {other:?}")),
                        }
                    }
                    if t.summary() != Some((0, tests.len() as u64)) {
                        problems.push(format!(
                            "summary {:?}, expected passed=0 failed={}",
                            t.summary(),
                            tests.len()
                        ));
                    }
                    if run.wall > ABSENT_LIMIT {
                        problems.push(format!(
                            "the absent device took {:?} to report, more than {ABSENT_LIMIT:?}",
                            run.wall
                        ));
                    }
                }
                _ => unreachable!("only the fault and absent-device scenarios expect failure"),
            }
            return problems;
        }

        if run.outcome != Outcome::Pass {
            problems.push(format!("expected pass exit: {}", run.outcome));
        }
        match t.verdict(test) {
            None => problems.push(format!("test {test} reported no verdict")),
            Some(Record::TestFail { reason, .. }) => problems.push(format!("test {test} FAIL: {reason}")),
            Some(_) => {}
        }
        for (name, reason) in t.failures().filter(|(n, _)| *n != test) {
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
        let pass_field = |k: &str| match t.verdict(test) {
            Some(Record::TestPass { fields, .. }) => fields.get(k).map(str::to_owned),
            _ => None,
        };
        match self {
            Scenario::Timer => check_timer(run, &mut problems),
            Scenario::Hello => {
                let mib = t.boot().and_then(|b| b.get_u64("mem_mib"));
                if mib != Some(u64::from(MEMORY_MIB)) {
                    problems.push(format!("BOOT mem_mib={mib:?}, QEMU was given {MEMORY_MIB} MiB"));
                }
            }
            Scenario::Cpuid if pass_field("hypervisor").as_deref() != Some("tcg") => {
                problems.push(format!(
                    "cpuid detected {:?}, the scenario runs under TCG",
                    pass_field("hypervisor")
                ));
            }
            Scenario::BlkErrorVirtio | Scenario::BlkErrorIde | Scenario::BlkErrorAhci => {
                // The device's own status, not a driver-side refusal (the disk does not say it is
                // read-only for IDE and AHCI; for virtio the driver must still send the write).
                match pass_field("error") {
                    Some(e) if e.contains("error status") => {}
                    other => problems.push(format!(
                        "blk-error PASS must carry the device's error status, got error={other:?}"
                    )),
                }
            }
            Scenario::Uart => {
                let want = UART_BYTES.to_string();
                for k in ["looped_back", "by_irq"] {
                    if pass_field(k).as_deref() != Some(want.as_str()) {
                        problems.push(format!("uart {k}={:?}, expected {UART_BYTES}", pass_field(k)));
                    }
                }
            }
            _ => {}
        }
        if self == Scenario::Pci {
            // Independent of the guest's own comparison: the ids it listed must be exactly those of the
            // machine xtask configured.
            let mut seen = t.pci_ids();
            seen.sort();
            let want = expected_pci(self.devices());
            if seen != want {
                problems.push(format!("guest listed PCI ids {seen:?}, QEMU was given {want:?}"));
            }
        }
        problems
    }
}

/// One workload per I/O device kind (for the device-absent scenario).
fn absent_tests() -> Vec<String> {
    Device::io_devices()
        .map(|d| {
            let workload = match d.backend() {
                crate::qemu::Backend::Disk => "blk-integrity",
                crate::qemu::Backend::Net => "net-echo",
                _ => "console-echo",
            };
            format!("{workload}@{}", d.name())
        })
        .collect()
}

/// Re-checks the guest's timer figures, and its measurement window against the host's clock.
fn check_timer(run: &RunResult, problems: &mut Vec<String>) {
    let Some(Record::TestPass { fields, .. }) = run.transcript.verdict("timer") else {
        return; // Already reported as a missing or failed verdict.
    };
    let num = |k: &str| fields.get_u64(k);
    let (Some(hz), Some(ms), Some(ticks), Some(elapsed_us)) =
        (num("hz"), num("ms"), num("lapic_ticks"), num("elapsed_us"))
    else {
        problems.push(format!("timer PASS lacks hz/ms/lapic_ticks/elapsed_us: {fields}"));
        return;
    };
    if (hz, ms) != (TIMER_HZ, TIMER_MS) {
        problems.push(format!(
            "guest used hz={hz} ms={ms}, xtask asked for hz={TIMER_HZ} ms={TIMER_MS}"
        ));
    }
    let expected = hz as f64 * elapsed_us as f64 / 1e6;
    if (ticks as f64 - expected).abs() > expected * TIMER_TOLERANCE {
        problems.push(format!(
            "{ticks} local APIC ticks in {elapsed_us} us at {hz} Hz, expected {expected:.0} +- {:.0}%",
            TIMER_TOLERANCE * 100.0
        ));
    }
    if (elapsed_us as f64) < ms as f64 * 1e3 * (1.0 - TIMER_TOLERANCE) {
        problems.push(format!("guest measured {elapsed_us} us for a {ms} ms window"));
    }
    // The host's clock is independent of the guest's TSC calibration: the window cannot have been
    // shorter than asked for (TCG's virtual clock follows the host's).
    if let Some(host) = run.test_times.get("timer")
        && host.as_secs_f64() < ms as f64 / 1e3 * (1.0 - TIMER_TOLERANCE)
    {
        problems.push(format!(
            "host saw the timer test take {host:?}, shorter than its {ms} ms window"
        ));
    }
}

fn check_pagefault(t: &Transcript, problems: &mut Vec<String>) {
    let pf = t.exceptions().find(|e| e.get_u64("vector") == Some(VECTOR_PF));
    if pf.is_none() && t.exceptions().any(|e| e.get_u64("vector") == Some(13)) {
        problems.push(format!(
            "got a general protection fault instead of a page fault: is the address non-canonical? \
             ({PAGEFAULT_ADDRESS:#x} must have bits 47..63 all equal)"
        ));
    }
    match pf {
        None => problems.push(format!(
            "no `PVKIT EXCEPTION vector={VECTOR_PF}` line (exceptions seen: {})",
            t.exceptions()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        Some(e) => match e.get_u64("cr2") {
            Some(cr2) if cr2 == PAGEFAULT_ADDRESS => {}
            Some(cr2) => problems.push(format!(
                "page fault at cr2={cr2:#x}, expected {PAGEFAULT_ADDRESS:#x}"
            )),
            None => problems.push(format!("page fault report has no cr2: {e}")),
        },
    }
    for (loc, msg) in t.panics() {
        problems.push(format!(
            "guest panicked at {loc}: {msg} (the fault handler should report, not panic)"
        ));
    }
}

fn check_panic(t: &Transcript, problems: &mut Vec<String>) {
    let panics: Vec<_> = t.panics().collect();
    if !panics.iter().any(|(_, m)| m.contains(PANIC_MESSAGE)) {
        problems.push(format!(
            "no `PVKIT PANIC` with message {PANIC_MESSAGE:?} (panics seen: {panics:?})"
        ));
    }
    if let Some((loc, _)) = panics.iter().find(|(_, m)| m.contains(PANIC_MESSAGE))
        && !loc.contains(".rs:")
    {
        problems.push(format!(
            "panic location {loc:?} does not name a source file and line"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn result(outcome: Outcome, lines: &[&str]) -> RunResult {
        let mut transcript = Transcript::default();
        for l in lines {
            transcript.push_line(l);
        }
        RunResult {
            outcome,
            transcript,
            wall: Duration::from_millis(30),
            log: PathBuf::from("/dev/null"),
            command: String::new(),
            stderr: vec![],
            test_times: BTreeMap::new(),
            pgid: None,
        }
    }

    const BOOT: &str = "PVKIT BOOT platform=pvh hypervisor=none mem_mib=128 cmdline=\"tests=hello\"";

    #[test]
    fn hello_needs_boot_pass_summary_and_exit() {
        let good = [
            BOOT,
            "PVKIT TEST hello START",
            "PVKIT TEST hello PASS",
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        assert!(Scenario::Hello.check(&result(Outcome::Pass, &good)).is_empty());
        assert!(
            !Scenario::Hello
                .check(&result(Outcome::Pass, &good[..4]))
                .is_empty(),
            "no EXIT"
        );
        assert!(!Scenario::Hello.check(&result(Outcome::Fail, &good)).is_empty());
        assert!(
            !Scenario::Hello
                .check(&result(Outcome::Pass, &good[1..]))
                .is_empty(),
            "no BOOT line"
        );
        assert!(
            !Scenario::Hello
                .check(&result(Outcome::Pass, &good[..3]))
                .is_empty(),
            "no SUMMARY"
        );
        let failed = [
            BOOT,
            "PVKIT TEST hello FAIL nope",
            "PVKIT SUMMARY passed=0 failed=1",
        ];
        assert!(!Scenario::Hello.check(&result(Outcome::Pass, &failed)).is_empty());
        assert!(
            !Scenario::Hello
                .check(&result(Outcome::Timeout(Duration::from_secs(1)), &good))
                .is_empty()
        );
    }

    #[test]
    fn pagefault_needs_fail_exit_and_the_right_report() {
        let exc = format!(
            "PVKIT EXCEPTION vector=14 name=Page fault error=0x2 rip=0x100000 cr2={PAGEFAULT_ADDRESS:#x}"
        );
        let good = [
            BOOT,
            "PVKIT TEST fault-pagefault START",
            &exc,
            "PVKIT SUMMARY passed=0 failed=1",
            "PVKIT EXIT 1",
        ];
        assert_eq!(
            Scenario::FaultPagefault.check(&result(Outcome::Fail, &good)),
            Vec::<String>::new()
        );
        // A failing exit without the handler's report is not enough.
        let no_report = [
            BOOT,
            "PVKIT TEST fault-pagefault START",
            "PVKIT SUMMARY passed=0 failed=1",
        ];
        assert!(
            !Scenario::FaultPagefault
                .check(&result(Outcome::Fail, &no_report))
                .is_empty()
        );
        let wrong_addr = [BOOT, "PVKIT EXCEPTION vector=14 cr2=0x1000"];
        assert!(
            !Scenario::FaultPagefault
                .check(&result(Outcome::Fail, &wrong_addr))
                .is_empty()
        );
        let wrong_vec = [BOOT, "PVKIT EXCEPTION vector=13 cr2=0xdead0000000"];
        assert!(
            !Scenario::FaultPagefault
                .check(&result(Outcome::Fail, &wrong_vec))
                .is_empty()
        );
        assert!(
            !Scenario::FaultPagefault
                .check(&result(Outcome::Crash("x".into()), &good))
                .is_empty()
        );
    }

    #[test]
    fn panic_needs_the_message() {
        let msg = format!("PVKIT PANIC at guest-kernel/src/selftest/mod.rs:10:5: {PANIC_MESSAGE}");
        let good = [
            BOOT,
            "PVKIT TEST fault-panic START",
            &msg,
            "PVKIT SUMMARY passed=0 failed=1",
            "PVKIT EXIT 1",
        ];
        assert!(
            Scenario::FaultPanic
                .check(&result(Outcome::Fail, &good))
                .is_empty()
        );
        let other = [BOOT, "PVKIT PANIC at a.rs:1:1: index out of bounds"];
        assert!(
            !Scenario::FaultPanic
                .check(&result(Outcome::Fail, &other))
                .is_empty()
        );
        assert!(
            !Scenario::FaultPanic
                .check(&result(Outcome::Pass, &good))
                .is_empty()
        );
    }

    #[test]
    fn pci_compares_listed_ids_with_the_configured_machine() {
        let devices = Scenario::Pci.devices();
        let mut lines: Vec<String> = vec![BOOT.into(), "PVKIT TEST pci START".into()];
        for (i, id) in expected_pci(devices).iter().enumerate() {
            lines.push(format!("PVKIT INFO pci 00:{i:02x}.0 {id} class=0x000000"));
        }
        lines.push("PVKIT TEST pci PASS devices=8".into());
        lines.push("PVKIT SUMMARY passed=1 failed=0".into());
        lines.push("PVKIT EXIT 0".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(
            Scenario::Pci.check(&result(Outcome::Pass, &refs)),
            Vec::<String>::new()
        );
        // One edu fewer than QEMU was given: the scenario fails even though the guest said PASS.
        let edu = refs.iter().position(|l| l.contains("1234:11e8")).unwrap();
        let mut short = refs.clone();
        short.remove(edu);
        assert!(!Scenario::Pci.check(&result(Outcome::Pass, &short)).is_empty());
        assert!(Scenario::Pci.append().contains("pci.expect="));
        assert_eq!(Scenario::Pci.append().matches("1234:11e8").count(), 2);
    }

    fn timer_run(pass: &str, host_ms: u64) -> RunResult {
        let lines = [
            BOOT,
            "PVKIT TEST timer START",
            pass,
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        let mut r = result(Outcome::Pass, &lines);
        r.test_times
            .insert("timer".into(), Duration::from_millis(host_ms));
        r
    }

    #[test]
    fn timer_figures_are_rechecked() {
        assert!(Scenario::Timer.append().contains("timer.hz=50 timer.ms=400"));
        let good = "PVKIT TEST timer PASS lapic_ticks=20 lapic_expected=20 hz=50 ms=400 elapsed_us=400100";
        assert_eq!(Scenario::Timer.check(&timer_run(good, 430)), Vec::<String>::new());
        // The guest ignored the parameters.
        let defaults = "PVKIT TEST timer PASS lapic_ticks=100 hz=1000 ms=100 elapsed_us=100000";
        assert!(!Scenario::Timer.check(&timer_run(defaults, 430)).is_empty());
        // Too few ticks for the time it measured, although it said PASS.
        let slow = "PVKIT TEST timer PASS lapic_ticks=17 hz=50 ms=400 elapsed_us=400000";
        assert!(!Scenario::Timer.check(&timer_run(slow, 430)).is_empty());
        // The host saw a 400 ms window pass in 100 ms: the guest's clock is wrong.
        assert!(!Scenario::Timer.check(&timer_run(good, 100)).is_empty());
        let missing = "PVKIT TEST timer PASS";
        assert!(!Scenario::Timer.check(&timer_run(missing, 430)).is_empty());
    }

    fn passing(test: &str, pass: &str) -> RunResult {
        let start = format!("PVKIT TEST {test} START");
        let lines = [
            BOOT,
            &start,
            pass,
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        result(Outcome::Pass, &lines)
    }

    #[test]
    fn extra_scenarios_check_what_xtask_configured() {
        assert!(Scenario::Hello.append().contains("hello.mem_mib=128"));
        let mut wrong_mem = passing("hello", "PVKIT TEST hello PASS");
        wrong_mem.transcript = Transcript::default();
        for l in [
            "PVKIT BOOT mem_mib=64",
            "PVKIT TEST hello PASS",
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ] {
            wrong_mem.transcript.push_line(l);
        }
        assert!(!Scenario::Hello.check(&wrong_mem).is_empty());

        let tcg = passing("cpuid", "PVKIT TEST cpuid PASS hypervisor=tcg hypervisor_bit=1");
        assert_eq!(Scenario::Cpuid.check(&tcg), Vec::<String>::new());
        let kvm = passing("cpuid", "PVKIT TEST cpuid PASS hypervisor=kvm hypervisor_bit=1");
        assert!(!Scenario::Cpuid.check(&kvm).is_empty());

        let uart = passing(
            "uart",
            "PVKIT TEST uart PASS looped_back=512 by_irq=512 rx_irq_batches=64",
        );
        assert_eq!(Scenario::Uart.check(&uart), Vec::<String>::new());
        let short = passing("uart", "PVKIT TEST uart PASS looped_back=512 by_irq=500");
        assert!(!Scenario::Uart.check(&short).is_empty());

        let df = [
            BOOT,
            "PVKIT TEST fault-stack START",
            "PVKIT EXCEPTION vector=8 name=\"Double fault\" error=0x0 rip=0x1 cr2=0x1a6d48",
            "PVKIT TEST fault-stack FAIL exception vector=8 (Double fault) at rip=0x1",
            "PVKIT SUMMARY passed=0 failed=1",
            "PVKIT EXIT 1",
        ];
        assert_eq!(
            Scenario::FaultStack.check(&result(Outcome::Fail, &df)),
            Vec::<String>::new()
        );
        let triple = &df[..2];
        assert!(
            !Scenario::FaultStack
                .check(&result(Outcome::Crash("0".into()), triple))
                .is_empty()
        );
    }

    #[test]
    fn every_absent_device_must_fail_cleanly() {
        let tests = absent_tests();
        assert_eq!(tests.len(), 7);
        assert!(Scenario::DeviceAbsent.append().contains(&tests.join(",")));
        let mut lines: Vec<String> = vec![BOOT.into()];
        for (t, d) in tests.iter().zip(Device::io_devices()) {
            lines.push(format!("PVKIT TEST {t} START"));
            lines.push(format!("PVKIT TEST {t} FAIL device {} absent", d.name()));
        }
        lines.push("PVKIT SUMMARY passed=0 failed=7".into());
        lines.push("PVKIT EXIT 1".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(
            Scenario::DeviceAbsent.check(&result(Outcome::Fail, &refs)),
            Vec::<String>::new()
        );
        // One device failing for another reason (a timeout after probing something) is not clean.
        let mut other = lines.clone();
        other[4] = format!("PVKIT TEST {} FAIL timed out after 5000000 us", tests[1]);
        let refs: Vec<&str> = other.iter().map(String::as_str).collect();
        assert_eq!(
            Scenario::DeviceAbsent.check(&result(Outcome::Fail, &refs)).len(),
            1
        );
        // A run that took too long.
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mut slow = result(Outcome::Fail, &refs);
        slow.wall = Duration::from_secs(30);
        assert!(!Scenario::DeviceAbsent.check(&slow).is_empty());
    }

    #[test]
    fn throughput_costs_are_bounded_per_device_kind() {
        use crate::console::Fields;
        use crate::trace::{Access, Counts};
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
        let isr = "virtio-pci-isr-virtio-blk";
        assert!(
            Scenario::BlkThroughputVirtio
                .check_costs(&six(cost("virtio-blk", 1, 100, isr, 0, 100, 0)))
                .is_empty()
        );
        // Three register accesses per kick, as the crate's stock notify does.
        assert!(
            !Scenario::BlkThroughputVirtio
                .check_costs(&six(cost("virtio-blk", 1, 100, isr, 200, 100, 0)))
                .is_empty()
        );
        // The stock notify's two extra register accesses per kick must show up in the trace.
        let common = "virtio-pci-common-virtio-blk";
        assert!(
            Scenario::BlkThroughputStockVirtio
                .check_costs(&six(cost("virtio-blk", 1, 100, common, 200, 100, 0)))
                .is_empty()
        );
        assert!(
            !Scenario::BlkThroughputStockVirtio
                .check_costs(&six(cost("virtio-blk", 1, 100, common, 0, 100, 0)))
                .is_empty()
        );
        // No batching at depth 32.
        assert!(
            !Scenario::BlkThroughputVirtio
                .check_costs(&six(cost("virtio-blk", 32, 100, isr, 0, 100, 0)))
                .is_empty()
        );
        // IDE runs four phases (no queue-depth-32 ones).
        let four = |c: Cost| vec![c; 4];
        assert!(
            Scenario::BlkThroughputIde
                .check_costs(&four(cost("ide", 1, 10, "ide", 20_580, 10, 40_960)))
                .is_empty()
        );
        assert!(
            !Scenario::BlkThroughputIde
                .check_costs(&six(cost("ide", 1, 10, "ide", 20_580, 10, 40_960)))
                .is_empty(),
            "six phases from IDE"
        );
        // The guest claims to have copied less than it moved through PIO.
        assert!(
            !Scenario::BlkThroughputIde
                .check_costs(&four(cost("ide", 1, 10, "ide", 20_580, 10, 0)))
                .is_empty()
        );
        // A phase without costs.
        assert!(
            !Scenario::BlkThroughputAhci
                .check_costs(&[cost("ahci", 1, 10, "ahci", 90, 10, 0)])
                .is_empty()
        );
    }

    #[test]
    fn pci_scenario_covers_the_whole_device_matrix() {
        // Its `info pci` cross-check is what keeps each device's PCI ids in xtask's table honest.
        for d in Device::value_variants() {
            assert!(
                Scenario::Pci.devices().contains(d),
                "{d:?} is not attached in the pci scenario"
            );
        }
    }
}
