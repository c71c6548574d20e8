//! The device workloads of `pvkit_frontends::workload`, as kernel tests named
//! `<workload>@<device>`.
//!
//! Generic runners ([`blk_integrity`], [`blk_throughput`], [`blk_error`], [`net_echo`],
//! [`console_echo`]) take an opened driver and its interrupt line; one small function per device
//! opens it and calls the runner. Common parameters: `mode=irq|poll` (default irq when the driver and
//! line allow it, else poll), `seed=<n>`; virtio devices also take `index=<n>` (the n-th such
//! device in bus order, default 0), `irq=msix|intx` (default msix, INTx if the device has no MSI-X)
//! and `notify=stock|cached|exact`
//! (default exact: one doorbell write per kick instead of the crate's three register accesses, and
//! the spec's EVENT_IDX kick decision; see `pvkit_frontends::virtio::transport::NotifyMode`).
//!
//! Throughput phases are bracketed by a byte written to I/O port 0x402 (QEMU's `isa-debugcon`, if
//! present): the phase number at the start, 0 at the end, so the host can split its trace counts.
//! Each `PVKIT PERF` line carries the kernel-wide exit counts of its phase, taken after the start
//! marker and before the end marker (`arch::x86_64::exits`), and the phase's latency percentiles.

use alloc::string::String;

use pvkit_frontends::block::BlockDevice;
use pvkit_frontends::console::ConsoleDevice;
use pvkit_frontends::counters::Exits;
use pvkit_frontends::net::NetDevice;
use pvkit_frontends::runner;
use pvkit_frontends::wait::{SharedIrqAck, WaitMode};
use pvkit_frontends::workload::{self, Observer, PHASE_PORT, Perf, Report, defaults};

use super::{Outcome, Params, fail};
use crate::arch::x86_64::{exits, port};
use crate::devices::{self, IrqBinding, IrqLine, KernelWaiter, virtio};

/// The waiter and, in interrupt mode, the routed interrupt, for the length of a test.
struct Session {
    // Field order: the binding is dropped (line masked) before the waiter stops its tick.
    _irq: Option<IrqBinding>,
    waiter: KernelWaiter,
    mode: WaitMode,
}

fn session(p: &Params<'_>, ack: Option<SharedIrqAck>, line: Option<IrqLine>) -> Result<Session, String> {
    let mode = match p.get("mode") {
        None if ack.is_some() && line.is_some() => WaitMode::Interrupt,
        None | Some("poll") => WaitMode::Poll,
        Some("irq") => WaitMode::Interrupt,
        Some(other) => return Err(alloc::format!("mode='{other}' is not irq or poll")),
    };
    let irq = match mode {
        WaitMode::Poll => None,
        WaitMode::Interrupt => {
            let (Some(ack), Some(line)) = (ack, line) else {
                return Err(String::from(
                    "mode=irq but the device has no interrupt line or hook",
                ));
            };
            Some(devices::bind_irq(line, ack)?)
        }
    };
    Ok(Session {
        _irq: irq,
        waiter: KernelWaiter::new(mode)?,
        mode,
    })
}

/// A workload report's fields (`pvkit_frontends::runner::report_fields`).
pub(super) fn fields(r: &Report) -> String {
    runner::report_fields(r)
}

/// Writes phase markers (with `markers`; Xen PV has no port 0x402), measures each phase's exits
/// and prints its `PVKIT PERF` line.
pub(super) struct PerfPrinter<'a> {
    pub(super) dev: &'a str,
    pub(super) mode: WaitMode,
    pub(super) label: &'a str,
    pub(super) markers: bool,
    /// Exit counts at the start of the running phase, and those of the last phase that ended.
    pub(super) start: Exits,
    pub(super) last: Exits,
}

impl<'a> PerfPrinter<'a> {
    /// A printer for `dev` in `mode`, appending `label` to each line.
    pub(super) fn new(dev: &'a str, mode: WaitMode, label: &'a str, markers: bool) -> Self {
        Self {
            dev,
            mode,
            label,
            markers,
            start: Exits::default(),
            last: Exits::default(),
        }
    }
}

impl Observer for PerfPrinter<'_> {
    fn phase(&mut self, n: u8) {
        // The marker writes stay outside the phase: count after the start marker, before the end
        // marker (the host's trace splits phases at the same writes). Marker and snapshot go
        // together with interrupts off, so an interrupt (its handler's register accesses) falls on
        // the same side of the boundary for both.
        crate::arch::without_interrupts(|| {
            if n == 0 {
                self.last = exits::snapshot().since(&self.start);
            }
            if self.markers {
                // SAFETY: port 0x402 is QEMU's isa-debugcon when present (it only logs the byte)
                // and unclaimed otherwise (the write is dropped).
                unsafe { port::outb(PHASE_PORT, n) };
            }
            if n != 0 {
                self.start = exits::snapshot();
            }
        });
    }

    fn perf(&mut self, perf: &Perf) {
        let exits = exits::fields(&self.last);
        kprintln!(
            "{}",
            runner::perf_line(self.dev, perf, self.mode.name(), &exits, self.label)
        );
    }
}

pub(super) fn seed(p: &Params<'_>) -> Result<u64, String> {
    p.u64_in("seed", defaults::SEED, 0..=u64::MAX)
}

/// `blk-integrity`: params `qd` (8), `extents` (64).
pub fn blk_integrity(
    p: &Params<'_>,
    dev: &mut dyn BlockDevice,
    line: Option<IrqLine>,
    label: &str,
) -> Outcome {
    let mut run = || -> Result<String, String> {
        let params = workload::blk::IntegrityParams {
            seed: seed(p)?,
            nonce: crate::arch::read_tsc(),
            qd: p.u64_in("qd", defaults::INTEGRITY_QD as u64, 1..=256)? as usize,
            random_extents: p.u64_in("extents", defaults::INTEGRITY_EXTENTS as u64, 1..=4096)? as usize,
        };
        let s = session(p, dev.irq_ack(), line)?;
        let info = dev.info();
        let r = workload::blk::integrity(dev, &s.waiter, &params).map_err(|e| alloc::format!("{e}"))?;
        Ok(alloc::format!(
            "{} mode={} capacity_sectors={} qd={} {label}",
            fields(&r),
            s.mode.name(),
            info.capacity_sectors,
            params.qd.min(info.max_in_flight)
        ))
    };
    run().map_or_else(|e| fail!("{e}"), Outcome::Pass)
}

/// `blk-throughput`: params `ms` per phase (300), `qd` (32), `bs` of the random phases (4096 or 512).
pub fn blk_throughput(
    p: &Params<'_>,
    dev: &mut dyn BlockDevice,
    line: Option<IrqLine>,
    label: &str,
) -> Outcome {
    let mut run = || -> Result<String, String> {
        let params = workload::blk::ThroughputParams {
            seed: seed(p)?,
            phase_us: p.u64_in("ms", defaults::PHASE_MS, 1..=600_000)? * 1000,
            qd: p.u64_in("qd", defaults::THROUGHPUT_QD as u64, 1..=256)? as usize,
            random_bytes: match p.u64_in("bs", defaults::RANDOM_BYTES as u64, 512..=4096)? {
                b @ (512 | 4096) => b as usize,
                b => return Err(alloc::format!("bs={b}: only 512 or 4096")),
            },
        };
        let s = session(p, dev.irq_ack(), line)?;
        let mut printer = PerfPrinter::new(dev.name(), s.mode, label, true);
        let perfs = workload::blk::throughput(dev, &s.waiter, &params, &mut printer)
            .map_err(|e| alloc::format!("{e}"))?;
        if perfs.is_empty() {
            return Err(String::from("device too small for any phase"));
        }
        let ops: u64 = perfs.iter().map(|p| p.report.ops).sum();
        Ok(alloc::format!(
            "phases={} ops={ops} mode={} {label}",
            perfs.len(),
            s.mode.name()
        ))
    };
    run().map_or_else(|e| fail!("{e}"), Outcome::Pass)
}

/// `blk-error`: a write to a read-only disk must surface the device's error.
pub fn blk_error(p: &Params<'_>, dev: &mut dyn BlockDevice, line: Option<IrqLine>, label: &str) -> Outcome {
    let mut run = || -> Result<String, String> {
        let s = session(p, dev.irq_ack(), line)?;
        let read_only = dev.info().read_only;
        let e = workload::blk::expect_write_error(dev, &s.waiter).map_err(|e| alloc::format!("{e}"))?;
        Ok(alloc::format!(
            "error=\"{e}\" read_only_flag={} mode={} {label}",
            u8::from(read_only),
            s.mode.name()
        ))
    };
    run().map_or_else(|e| fail!("{e}"), Outcome::Pass)
}

/// Parameters of [`net_echo_with`].
pub(super) struct NetEchoParams {
    pub(super) frames: u32,
    pub(super) window: u32,
    pub(super) ms: u64,
    pub(super) seed: u64,
}

impl NetEchoParams {
    /// `frames` (200), `window` (8), `ms` for each packet-rate phase (300, 0 = none), `seed`.
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        Ok(Self {
            frames: p.u64_in("frames", defaults::NET_FRAMES.into(), 1..=1_000_000)? as u32,
            window: p.u64_in("window", defaults::NET_WINDOW.into(), 1..=64)? as u32,
            ms: p.u64_in("ms", defaults::PHASE_MS, 0..=600_000)?,
            seed: seed(p)?,
        })
    }
}

/// The net echo workload and its packet-rate phases (`echo64`, `echo1514`; the same seed, so the
/// host peer can check every frame's data) over `dev`, waiting with `waiter`; the PASS fields.
pub(super) fn net_echo_with(
    dev: &mut dyn NetDevice,
    waiter: &dyn pvkit_frontends::wait::Waiter,
    n: &NetEchoParams,
    markers: bool,
    label: &str,
) -> Result<String, String> {
    let mode = waiter.mode();
    let mac = dev.mac();
    let r =
        workload::net::echo(dev, waiter, n.frames, n.window, n.seed).map_err(|e| alloc::format!("{e}"))?;
    if n.ms > 0 {
        let mut printer = PerfPrinter::new(dev.name(), mode, label, markers);
        workload::net::rate(dev, waiter, n.ms * 1000, n.window, n.seed, &mut printer)
            .map_err(|e| alloc::format!("packet rate: {e}"))?;
    }
    Ok(alloc::format!(
        "{} mode={} mac={} {label}",
        fields(&r),
        mode.name(),
        runner::Mac(mac)
    ))
}

/// `net-echo`: params `frames` (200), `window` (8), `ms` for each packet-rate phase (300, 0 = none).
pub fn net_echo(p: &Params<'_>, dev: &mut dyn NetDevice, line: Option<IrqLine>, label: &str) -> Outcome {
    let mut run = || -> Result<String, String> {
        let n = NetEchoParams::parse(p)?;
        let s = session(p, dev.irq_ack(), line)?;
        net_echo_with(dev, &s.waiter, &n, true, label)
    };
    run().map_or_else(|e| fail!("{e}"), Outcome::Pass)
}

/// The console echo workload (one phase, PERF `pattern=stream`) over `dev`; the PASS fields.
pub(super) fn console_echo_with(
    dev: &mut dyn ConsoleDevice,
    waiter: &dyn pvkit_frontends::wait::Waiter,
    bytes: usize,
    seed: u64,
    markers: bool,
    label: &str,
) -> Result<String, String> {
    let mode = waiter.mode();
    let mut printer = PerfPrinter::new(dev.name(), mode, label, markers);
    let r =
        workload::console::echo(dev, waiter, bytes, seed, &mut printer).map_err(|e| alloc::format!("{e}"))?;
    Ok(alloc::format!("{} mode={} {label}", fields(&r), mode.name()))
}

/// `console-echo`: param `bytes` (4096).
pub fn console_echo(
    p: &Params<'_>,
    dev: &mut dyn ConsoleDevice,
    line: Option<IrqLine>,
    label: &str,
) -> Outcome {
    let mut run = || -> Result<String, String> {
        let bytes = p.u64_in("bytes", defaults::CONSOLE_BYTES as u64, 1..=16 * 1024 * 1024)? as usize;
        let seed = seed(p)?;
        let s = session(p, dev.irq_ack(), line)?;
        console_echo_with(dev, &s.waiter, bytes, seed, true, label)
    };
    run().map_or_else(|e| fail!("{e}"), Outcome::Pass)
}

// ---- virtio ----

/// Parameters of the virtio block tests.
pub const VIRTIO_BLK_PARAMS: &[&str] = &[
    "mode", "seed", "notify", "index", "irq", "qd", "extents", "ms", "bs",
];
/// Parameters of the virtio net test.
pub const VIRTIO_NET_PARAMS: &[&str] = &["mode", "seed", "notify", "index", "irq", "frames", "window", "ms"];
/// Parameters of the virtio console test.
pub const VIRTIO_CONSOLE_PARAMS: &[&str] = &["mode", "seed", "notify", "index", "irq", "bytes"];

macro_rules! open_or_fail {
    ($p:expr, $open:path) => {{
        let notify = match virtio::notify_mode($p.get("notify")) {
            Ok(n) => n,
            Err(e) => return fail!("{e}"),
        };
        let index = match $p.u64_in("index", 0, 0..=31) {
            Ok(i) => i as usize,
            Err(e) => return fail!("{e}"),
        };
        let irq = match virtio::IrqKind::parse($p.get("irq")) {
            Ok(k) => k,
            Err(e) => return fail!("{e}"),
        };
        match $open(index, notify, irq) {
            Ok(o) => o,
            Err(e) => return fail!("{e}"),
        }
    }};
}

/// `blk-integrity@virtio-blk`.
pub fn blk_integrity_virtio(p: &Params<'_>) -> Outcome {
    let mut o = open_or_fail!(p, virtio::open_blk);
    let out = blk_integrity(p, &mut o.dev, o.line, &o.label);
    if matches!(out, Outcome::Fail(_)) {
        kprintln!("PVKIT INFO virtio-blk queue {}", o.dev.queue_state());
    }
    out
}

/// `blk-throughput@virtio-blk`.
pub fn blk_throughput_virtio(p: &Params<'_>) -> Outcome {
    let mut o = open_or_fail!(p, virtio::open_blk);
    let out = blk_throughput(p, &mut o.dev, o.line, &o.label);
    if matches!(out, Outcome::Fail(_)) {
        kprintln!("PVKIT INFO virtio-blk queue {}", o.dev.queue_state());
    }
    out
}

/// `blk-error@virtio-blk`.
pub fn blk_error_virtio(p: &Params<'_>) -> Outcome {
    let mut o = open_or_fail!(p, virtio::open_blk);
    blk_error(p, &mut o.dev, o.line, &o.label)
}

/// `net-echo@virtio-net`.
pub fn net_echo_virtio(p: &Params<'_>) -> Outcome {
    let mut o = open_or_fail!(p, virtio::open_net);
    net_echo(p, &mut o.dev, o.line, &o.label)
}

/// `console-echo@virtio-console`.
pub fn console_echo_virtio(p: &Params<'_>) -> Outcome {
    let mut o = open_or_fail!(p, virtio::open_console);
    console_echo(p, &mut o.dev, o.line, &o.label)
}
