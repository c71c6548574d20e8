//! Console echo: bytes written come back (the host peer echoes them), in order.

use super::{Report, Rng};
use crate::console::ConsoleDevice;
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// Longest the workload waits without progress.
pub const STALL_TIMEOUT_US: u64 = 5_000_000;

/// Writes `bytes` pseudo-random bytes (from `seed`) and reads the echo back, comparing every byte;
/// writing and reading interleave so neither side's buffers need to hold everything.
pub fn echo(dev: &mut dyn ConsoleDevice, waiter: &dyn Waiter, bytes: usize, seed: u64) -> Result<Report> {
    let mut rng = Rng::new(seed);
    let data: alloc::vec::Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
    let before = dev.counters();
    let t0 = waiter.now_us();
    let (mut sent, mut got, mut ops) = (0usize, 0usize, 0u64);
    let mut buf = [0u8; 512];
    while got < bytes {
        let progress = wait_for(waiter, STALL_TIMEOUT_US, "console echo bytes", || {
            let mut moved = false;
            if sent < bytes {
                // Keep at most 1 KiB unechoed so a slow peer is not flooded.
                let window = (got + 1024).min(bytes);
                if sent < window {
                    let n = dev.write(&data[sent..window])?;
                    sent += n;
                    moved |= n > 0;
                    ops += u64::from(n > 0);
                }
            }
            let n = dev.read(&mut buf)?;
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
                ops += 1;
                moved = true;
            }
            Ok(moved.then_some(()))
        });
        progress?;
    }
    Ok(Report {
        ops,
        bytes: 2 * bytes as u64,
        guest_us: waiter.now_us().saturating_sub(t0),
        counters: dev.counters().since(&before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::fake::LoopConsole;
    use crate::wait::fake::StepClock;

    #[test]
    fn echo_round_trips_every_byte() {
        let mut c = LoopConsole::new(300, 7);
        let r = echo(&mut c, &StepClock::new(1), 5000, 3).unwrap();
        assert_eq!(r.bytes, 10_000);
        // At most 7 bytes go per write, so at least ceil(5000 / 7) writes reached the device.
        assert!(r.counters.notifications >= 5000u64.div_ceil(7), "{r:?}");
        assert!(
            r.ops > r.counters.notifications,
            "reads are operations too: {r:?}"
        );
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
        let e = echo(&mut c, &StepClock::new(1), 1000, 3).unwrap_err();
        assert!(
            matches!(e, Error::Mismatch { index: 0, .. } | Error::Timeout { .. }),
            "{e:?}"
        );
    }
}
