//! The in-kernel test runner.
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

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::arch::x86_64::exits;
use crate::boot::BootInfo;
use crate::cmdline;

/// What a test returns.
#[derive(Debug)]
pub enum Outcome {
    /// Passed; the text is appended to the PASS line (`key=value ...`, may be empty).
    Pass(String),
    /// Failed, with the reason.
    Fail(String),
}

/// Parameters of one test, from the command line.
#[derive(Debug)]
pub struct Params<'a> {
    test: &'static str,
    items: Vec<(&'a str, &'a str)>,
}

impl Params<'_> {
    /// The raw value of `param`, if given.
    pub fn get(&self, param: &str) -> Option<&str> {
        self.items
            .iter()
            .rev()
            .find(|(p, _)| *p == param)
            .map(|(_, v)| *v)
    }

    /// `param` as a number in `range`, or `default` when absent.
    pub fn u64_in(
        &self,
        param: &str,
        default: u64,
        range: core::ops::RangeInclusive<u64>,
    ) -> Result<u64, String> {
        let Some(value) = self.get(param) else {
            return Ok(default);
        };
        let n = cmdline::parse_u64(self.test, param, value)?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(alloc::format!(
                "{}.{param}={n} is outside {}..={}",
                self.test,
                range.start(),
                range.end()
            ))
        }
    }
}

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

fn find(name: &str) -> Option<(usize, &'static Test)> {
    TESTS.iter().enumerate().find(|(_, t)| t.name == name)
}

/// Parses the command line, runs the tests, prints the summary. Returns the exit code.
pub fn run_from_cmdline(info: &BootInfo) -> u8 {
    let line = cmdline::parse(info.cmdline);
    let mut errors = line.errors.clone();
    if info.cmdline_truncated {
        errors.push(alloc::format!(
            "command line longer than {} bytes or not UTF-8",
            crate::boot::CMDLINE_MAX
        ));
    }
    let names: &[&str] = line
        .tests
        .as_deref()
        .unwrap_or(pvkit_frontends::workload::DEFAULT_TESTS);
    let selected: Vec<(usize, &'static Test)> = names
        .iter()
        .filter_map(|n| {
            let found = find(n);
            if found.is_none() {
                errors.push(alloc::format!("unknown test '{n}'"));
            }
            found
        })
        .collect();
    for &(test, param, value) in &line.params {
        match find(test) {
            Some((_, t)) if t.params.contains(&param) => {}
            Some(_) => errors.push(alloc::format!("unknown option '{test}.{param}={value}'")),
            None => errors.push(alloc::format!(
                "unknown option '{test}.{param}={value}' (no test '{test}')"
            )),
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            kprintln!("PVKIT ERROR {e}");
        }
        FAILED.store(errors.len() as u32, Ordering::Relaxed);
        return summary();
    }

    for (index, test) in selected {
        let params = Params {
            test: test.name,
            items: line
                .params
                .iter()
                .filter(|(t, _, _)| *t == test.name)
                .map(|&(_, p, v)| (p, v))
                .collect(),
        };
        CURRENT.store(index, Ordering::Relaxed);
        kprintln!("PVKIT TEST {} START", test.name);
        let before = exits::snapshot();
        let outcome = (test.run)(&params);
        // A workload's PASS line carries the exits of its whole test, from after the START line to
        // before the verdict (device probe and any phases included).
        let outcome = match outcome {
            Outcome::Pass(kv) if test.name.contains('@') => {
                let e = exits::fields(&exits::snapshot().since(&before));
                Outcome::Pass(if kv.is_empty() {
                    e
                } else {
                    alloc::format!("{kv} {e}")
                })
            }
            other => other,
        };
        match outcome {
            Outcome::Pass(kv) if kv.is_empty() => kprintln!("PVKIT TEST {} PASS", test.name),
            Outcome::Pass(kv) => kprintln!("PVKIT TEST {} PASS {kv}", test.name),
            Outcome::Fail(reason) => {
                kprintln!("PVKIT TEST {} FAIL {reason}", test.name);
                FAILED.fetch_add(1, Ordering::Relaxed);
                CURRENT.store(NO_TEST, Ordering::Relaxed);
                continue;
            }
        }
        PASSED.fetch_add(1, Ordering::Relaxed);
        CURRENT.store(NO_TEST, Ordering::Relaxed);
    }
    summary()
}

fn summary() -> u8 {
    let passed = PASSED.load(Ordering::Relaxed);
    let failed = FAILED.load(Ordering::Relaxed);
    let code = u8::from(failed > 0 || passed == 0);
    kprintln!("PVKIT SUMMARY passed={passed} failed={failed}");
    kprintln!("PVKIT EXIT {code}");
    code
}

/// Called once by `fatal` after an exception or panic: fails the running test (if any) with
/// `reason`, prints the summary and `PVKIT EXIT 1`. Uses the lock-free console path.
pub fn report_abort(reason: fmt::Arguments<'_>) {
    let current = CURRENT.swap(NO_TEST, Ordering::Relaxed);
    if let Some(test) = TESTS.get(current) {
        crate::console::print_unlocked(format_args!("PVKIT TEST {} FAIL {reason}\n", test.name));
    }
    let failed = FAILED.fetch_add(1, Ordering::Relaxed) + 1;
    let passed = PASSED.load(Ordering::Relaxed);
    crate::console::print_unlocked(format_args!(
        "PVKIT SUMMARY passed={passed} failed={failed}\nPVKIT EXIT 1\n"
    ));
}

/// Builds an [`Outcome::Fail`] from format arguments.
macro_rules! fail {
    ($($arg:tt)*) => { $crate::selftest::Outcome::Fail(alloc::format!($($arg)*)) };
}
pub(crate) use fail;
