//! The in-kernel test runner: the registry of tests ([`TESTS`]) and the loop that runs them. What
//! needs no hardware (the command line, each test's parameters, which tests run, the result lines)
//! is `pvkit_frontends::runner`, tested on the host.
//!
//! The command line names the tests (`tests=a,b`; default:
//! [`DEFAULT_TESTS`](pvkit_frontends::workload::DEFAULT_TESTS)) and their
//! parameters (`<test>.<param>=<value>`). Each test prints `PVKIT TEST <name> START`, then `PASS
//! [key=value ...]` or `FAIL <reason>`; the run ends with `PVKIT SUMMARY passed=<n> failed=<m>` and
//! `PVKIT EXIT <0|1>`. A test that faults or panics is failed by `fatal`, which calls
//! [`report_abort`] to print its FAIL line and the summary.

mod cpuid;
mod emulated;
mod fault;
mod heap;
mod hello;
mod pci;
mod timer;
mod uart;
pub mod workloads;
mod xen;

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use pvkit_frontends::runner::{self, Summary, TestSpec};
pub use pvkit_frontends::runner::{Outcome, Params};

use crate::arch::x86_64::exits;
use crate::boot::BootInfo;

/// A named self-test.
#[derive(Debug)]
pub struct Test {
    /// Name on the command line and in the output.
    pub name: &'static str,
    /// Parameters it accepts (`<name>.<param>=`).
    pub params: &'static [&'static str],
    /// The test.
    pub run: fn(&Params<'_>) -> Outcome,
}

/// Every test.
pub static TESTS: &[Test] = &[
    Test {
        name: "hello",
        params: &["mem_mib"],
        run: hello::run,
    },
    Test {
        name: "cpuid",
        params: &["expect"],
        run: cpuid::run,
    },
    Test {
        name: "heap",
        params: &["rounds", "seed"],
        run: heap::run,
    },
    Test {
        name: "timer",
        params: &["hz", "ms", "tolerance"],
        run: timer::run,
    },
    Test {
        name: "pci",
        params: &["expect"],
        run: pci::run,
    },
    Test {
        name: "uart",
        params: &["bytes"],
        run: uart::run,
    },
    Test {
        name: "fault-pagefault",
        params: &[],
        run: fault::pagefault,
    },
    Test {
        name: "fault-panic",
        params: &[],
        run: fault::panic,
    },
    Test {
        name: "fault-stack",
        params: &[],
        run: fault::stack_overflow,
    },
    Test {
        name: "blk-integrity@virtio-blk",
        params: workloads::VIRTIO_BLK_PARAMS,
        run: workloads::blk_integrity_virtio,
    },
    Test {
        name: "blk-throughput@virtio-blk",
        params: workloads::VIRTIO_BLK_PARAMS,
        run: workloads::blk_throughput_virtio,
    },
    Test {
        name: "blk-error@virtio-blk",
        params: workloads::VIRTIO_BLK_PARAMS,
        run: workloads::blk_error_virtio,
    },
    Test {
        name: "net-echo@virtio-net",
        params: workloads::VIRTIO_NET_PARAMS,
        run: workloads::net_echo_virtio,
    },
    Test {
        name: "console-echo@virtio-console",
        params: workloads::VIRTIO_CONSOLE_PARAMS,
        run: workloads::console_echo_virtio,
    },
    Test {
        name: "blk-integrity@ide",
        params: emulated::IDE_PARAMS,
        run: emulated::blk_integrity_ide,
    },
    Test {
        name: "blk-throughput@ide",
        params: emulated::IDE_PARAMS,
        run: emulated::blk_throughput_ide,
    },
    Test {
        name: "blk-error@ide",
        params: emulated::IDE_PARAMS,
        run: emulated::blk_error_ide,
    },
    Test {
        name: "blk-integrity@ahci",
        params: emulated::AHCI_PARAMS,
        run: emulated::blk_integrity_ahci,
    },
    Test {
        name: "blk-throughput@ahci",
        params: emulated::AHCI_PARAMS,
        run: emulated::blk_throughput_ahci,
    },
    Test {
        name: "blk-error@ahci",
        params: emulated::AHCI_PARAMS,
        run: emulated::blk_error_ahci,
    },
    Test {
        name: "net-echo@e1000",
        params: emulated::E1000_PARAMS,
        run: emulated::net_echo_e1000,
    },
    Test {
        name: "console-echo@uart",
        params: emulated::UART_PARAMS,
        run: emulated::console_echo_uart,
    },
    Test {
        name: "blk-integrity@xen-blk",
        params: xen::XEN_BLK_PARAMS,
        run: xen::blk_integrity,
    },
    Test {
        name: "blk-hostile@xen-blk",
        params: xen::XEN_BLK_PARAMS,
        run: xen::blk_hostile,
    },
    Test {
        name: "blk-throughput@xen-blk",
        params: xen::XEN_BLK_PARAMS,
        run: xen::blk_throughput,
    },
    Test {
        name: "console-input@xen-console",
        params: xen::XEN_CONSOLE_PARAMS,
        run: xen::console_input,
    },
    Test {
        name: "net-ping@xen-net",
        params: xen::XEN_NET_PARAMS,
        run: xen::net_ping,
    },
    Test {
        name: "net-echo@xen-net",
        params: xen::XEN_NET_ECHO_PARAMS,
        run: xen::net_echo,
    },
    Test {
        name: "console-echo@xen-console",
        params: xen::XEN_CONSOLE_ECHO_PARAMS,
        run: xen::console_echo,
    },
    Test {
        name: "evtchn",
        params: &[],
        run: xen::evtchn,
    },
    Test {
        name: "xenstore",
        params: xen::XENSTORE_PARAMS,
        run: xen::xenstore,
    },
];

const NO_TEST: usize = usize::MAX;
/// Index into [`TESTS`] of the running test.
static CURRENT: AtomicUsize = AtomicUsize::new(NO_TEST);
static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Parses the command line, runs the tests, prints the summary. Returns the exit code.
pub fn run_from_cmdline(info: &BootInfo) -> u8 {
    let registry: Vec<TestSpec> = TESTS
        .iter()
        .map(|t| TestSpec {
            name: t.name,
            params: t.params,
        })
        .collect();
    let plan = runner::plan(
        info.cmdline,
        info.cmdline_truncated.then_some(crate::boot::CMDLINE_MAX),
        &registry,
        pvkit_frontends::workload::DEFAULT_TESTS,
    );
    if !plan.errors.is_empty() {
        for e in &plan.errors {
            kprintln!("PVKIT ERROR {e}");
        }
        FAILED.store(plan.errors.len() as u32, Ordering::Relaxed);
        return summary();
    }

    for &index in &plan.selected {
        let test = &TESTS[index];
        let params = plan.params(test.name);
        CURRENT.store(index, Ordering::Relaxed);
        kprintln!("{}", runner::start_line(test.name));
        let before = exits::snapshot();
        let mut outcome = (test.run)(&params);
        // A workload's PASS line carries the exits of its whole test, from after the START line to
        // before the verdict (device probe and any phases included).
        if test.name.contains('@') {
            outcome = outcome.with_fields(&exits::fields(&exits::snapshot().since(&before)));
        }
        kprintln!("{}", runner::verdict_line(test.name, &outcome));
        let tally = match outcome {
            Outcome::Pass(_) => &PASSED,
            Outcome::Fail(_) => &FAILED,
        };
        tally.fetch_add(1, Ordering::Relaxed);
        CURRENT.store(NO_TEST, Ordering::Relaxed);
    }
    summary()
}

fn summary() -> u8 {
    let s = Summary {
        passed: PASSED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    };
    kprintln!("{s}");
    s.exit_code()
}

/// Called once by `fatal` after an exception or panic: fails the running test (if any) with
/// `reason`, prints the summary and `PVKIT EXIT 1`. Uses the lock-free console path.
pub fn report_abort(reason: fmt::Arguments<'_>) {
    let current = CURRENT.swap(NO_TEST, Ordering::Relaxed);
    if let Some(test) = TESTS.get(current) {
        crate::console::print_unlocked(format_args!("PVKIT TEST {} FAIL {reason}\n", test.name));
    }
    let s = Summary {
        failed: FAILED.fetch_add(1, Ordering::Relaxed) + 1,
        passed: PASSED.load(Ordering::Relaxed),
    };
    crate::console::print_unlocked(format_args!("{s}\n"));
}

/// Builds an [`Outcome::Fail`] from format arguments.
macro_rules! fail {
    ($($arg:tt)*) => { $crate::selftest::Outcome::Fail(alloc::format!($($arg)*)) };
}
pub(crate) use fail;
