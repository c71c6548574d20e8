//! Console echo: bytes written come back (the host peer echoes them), in order.

use alloc::collections::VecDeque;

use super::{Histogram, Observer, Perf, Report, Rng};
use crate::console::ConsoleDevice;
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// Longest the workload waits without progress.
pub const STALL_TIMEOUT_US: u64 = 5_000_000;
/// Most bytes written and not yet echoed, so a slow peer is not flooded.
pub const WINDOW: usize = 1024;
/// The pattern name of the echo stream's phase.
pub const PATTERN: &str = "stream";

/// Writes `bytes` pseudo-random bytes (from `seed`) and reads the echo back, comparing every byte;
/// writing and reading interleave so neither side's buffers need to hold everything (at most
/// [`WINDOW`] bytes unechoed). The stream is one phase (marker 1): its [`Perf`] (pattern
/// [`PATTERN`], qd = the window) counts one operation per byte echoed and `bytes` both ways; its
/// latency is per chunk, from the write that took the chunk to the read that brought back its last
/// byte. Returns the same figures.
pub fn echo(
    dev: &mut dyn ConsoleDevice,
    waiter: &dyn Waiter,
    bytes: usize,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let mut rng = Rng::new(seed);
    let data: alloc::vec::Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
    let mut buf = [0u8; 512];
    // Chunks written and not yet wholly echoed: (end offset, when written in ns). Each holds at
    // least one of the at most WINDOW unechoed bytes, so the queue never grows past its capacity.
    let mut chunks: VecDeque<(usize, u64)> = VecDeque::with_capacity(WINDOW);
    let mut latency = Histogram::new();
    let before = dev.counters();
    obs.phase(1);
    let t0 = waiter.now_us();
    let result = stream(dev, waiter, &data, &mut buf, &mut chunks, &mut latency);
    let guest_us = waiter.now_us().saturating_sub(t0);
    obs.phase(0);
    result?;
    let report = Report {
        ops: bytes as u64,
        bytes: 2 * bytes as u64,
        guest_us,
        counters: dev.counters().since(&before),
        latency: latency.summary(),
    };
    obs.perf(&Perf {
        pattern: PATTERN,
        qd: WINDOW,
        report,
    });
    Ok(report)
}

/// The echo loop of [`echo`].
fn stream(
    dev: &mut dyn ConsoleDevice,
    waiter: &dyn Waiter,
    data: &[u8],
    buf: &mut [u8],
    chunks: &mut VecDeque<(usize, u64)>,
    latency: &mut Histogram,
) -> Result<()> {
    let bytes = data.len();
    let (mut sent, mut got) = (0usize, 0usize);
    while got < bytes {
        wait_for(waiter, STALL_TIMEOUT_US, "console echo bytes", || {
            let mut moved = false;
            let window = (got + WINDOW).min(bytes);
            if sent < window {
                let at = waiter.now_ns();
                let n = dev.write(&data[sent..window])?;
                if n > 0 {
                    sent += n;
                    chunks.push_back((sent, at));
                    moved = true;
                }
            }
            let n = dev.read(buf)?;
            if n > 0 {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let at = got + i;
                    if at >= sent {
                        return Err(Error::Mismatch {
                            what: "console bytes echoed before sent",
                            index: at as u64,
                            expected: sent as u64,
                            found: (got + n) as u64,
                        });
                    }
                    if b != data[at] {
                        return Err(Error::Mismatch {
                            what: "console echo byte",
                            index: at as u64,
                            expected: data[at].into(),
                            found: b.into(),
                        });
                    }
                }
                got += n;
                let now = waiter.now_ns();
                while let Some(&(end, written)) = chunks.front() {
                    if end > got {
                        break;
                    }
                    latency.record(now.saturating_sub(written));
                    chunks.pop_front();
                }
                moved = true;
            }
            Ok(moved.then_some(()))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::fake::LoopConsole;
    use crate::wait::fake::StepClock;
    use crate::workload::Recorder;

    #[test]
    fn echo_round_trips_every_byte_as_one_phase() {
        let mut c = LoopConsole::new(300, 7);
        let mut rec = Recorder::default();
        let r = echo(&mut c, &StepClock::new(1), 5000, 3, &mut rec).unwrap();
        assert_eq!((r.ops, r.bytes), (5000, 10_000), "one op per byte echoed");
        // At most 7 bytes go per write, so at least ceil(5000 / 7) writes reached the device.
        assert!(r.counters.notifications >= 5000u64.div_ceil(7), "{r:?}");
        // One latency per chunk written: as many as writes.
        assert_eq!(r.latency.count, r.counters.notifications);
        assert!(r.latency.p50_ns > 0 && r.latency.p50_ns <= r.latency.max_ns);
        assert_eq!(rec.phases, [1, 0]);
        assert_eq!(rec.perfs.len(), 1);
        assert_eq!(rec.perfs[0].pattern, "stream");
        assert_eq!(rec.perfs[0].report, r);
    }

    /// A console that drops one byte: the echo then mismatches or stalls.
    #[test]
    fn echo_detects_a_lost_byte() {
        struct Lossy(LoopConsole, bool);
        impl ConsoleDevice for Lossy {
            fn name(&self) -> &'static str {
                "lossy"
            }
            fn write(&mut self, d: &[u8]) -> Result<usize> {
                if !self.1 && d.len() > 1 {
                    self.1 = true;
                    self.0.write(&d[1..2])?;
                    return Ok(2); // claims both, loses the first
                }
                self.0.write(d)
            }
            fn read(&mut self, b: &mut [u8]) -> Result<usize> {
                self.0.read(b)
            }
            fn irq_ack(&self) -> Option<crate::wait::SharedIrqAck> {
                None
            }
            fn counters(&self) -> crate::counters::Counters {
                self.0.counters()
            }
        }
        let mut c = Lossy(LoopConsole::new(300, 64), false);
        let mut rec = Recorder::default();
        let e = echo(&mut c, &StepClock::new(1), 1000, 3, &mut rec).unwrap_err();
        assert_eq!(rec.phases, [1, 0], "the phase is closed even when it fails");
        assert!(rec.perfs.is_empty(), "and reports no figures");
        assert!(
            matches!(e, Error::Mismatch { index: 0, .. } | Error::Timeout { .. }),
            "{e:?}"
        );
    }
}
