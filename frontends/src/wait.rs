//! Waiting for devices: the platform's clock and idle, and the interrupt acknowledgement hook.
//!
//! Completion is either polled (spin on the driver's `poll`) or interrupt driven: the platform's
//! interrupt handler calls the device's [`IrqAck`] (which silences a level-triggered line), and the
//! waiting code sleeps until an interrupt arrives, then polls the driver once more.

use alloc::sync::Arc;

use crate::{Error, Result};

/// How a waiter waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin, polling the device.
    Poll,
    /// Sleep until an interrupt, then poll.
    Interrupt,
}

impl WaitMode {
    /// `poll` or `irq`, as on the kernel command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Interrupt => "irq",
        }
    }
}

/// The platform's clock and idle loop, as drivers and workloads need them.
///
/// # Safety
///
/// A safe trait: drivers bound every wait by [`now_us`](Self::now_us), so a clock that stands still
/// or an [`idle`](Self::idle) that never sleeps makes them spin or time out early, never touch memory
/// they should not. The contract for them to work: the clock is monotonic, and `idle` returns at
/// least every few milliseconds.
pub trait Waiter {
    /// Microseconds since some fixed point; monotonic.
    fn now_us(&self) -> u64;

    /// Nanoseconds since the same point, for latencies; monotonic. The default scales
    /// [`now_us`](Self::now_us); a platform with a finer clock (the TSC) gives it directly.
    fn now_ns(&self) -> u64 {
        self.now_us().saturating_mul(1000)
    }

    /// How [`idle`](Self::idle) waits.
    fn mode(&self) -> WaitMode;

    /// Evaluates `ready`; if it returns `false`, waits a little: in [`WaitMode::Poll`] a spin hint, in
    /// [`WaitMode::Interrupt`] until the next interrupt. The check and the sleep are atomic with
    /// respect to interrupts (an interrupt arriving after `ready` returned `false` still ends the
    /// sleep). May return early; must return at least every few milliseconds so timeouts are seen.
    /// Returns what `ready` returned.
    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool;
}

/// Calls `f` until it yields a value, idling through `waiter` in between; gives up with
/// [`Error::Timeout`] naming `what` after `timeout_us`.
pub fn wait_for<T>(
    waiter: &dyn Waiter,
    timeout_us: u64,
    what: &'static str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = waiter.now_us();
    loop {
        let mut out: Result<Option<T>> = Ok(None);
        waiter.idle(&mut || {
            out = f();
            !matches!(out, Ok(None))
        });
        if let Some(v) = out? {
            return Ok(v);
        }
        let waited_us = waiter.now_us().saturating_sub(start);
        if waited_us > timeout_us {
            return Err(Error::Timeout { what, waited_us });
        }
    }
}

/// What an interrupt handler calls for a device. Drivers implement it; the platform calls it from
/// the handler of the device's interrupt (an IOAPIC vector, an MSI-X vector, an event channel).
///
/// # Safety
///
/// A safe trait. Implementations touch only the device's interrupt status register and atomics, so
/// they are safe to run while the driver itself is interrupted mid-operation; one that took a lock the
/// driver holds would deadlock, not corrupt memory.
pub trait IrqAck: Send + Sync {
    /// Acknowledges the device's interrupt (deasserting a level-triggered line); returns whether the
    /// device had raised it. Counts it in the driver's [`crate::counters::Counters::interrupts`].
    fn ack(&self) -> bool;
}

/// A device's interrupt hook, shared between the driver and the platform's handler.
pub type SharedIrqAck = Arc<dyn IrqAck>;

/// Test doubles.
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use core::cell::Cell;

    use super::*;

    /// A clock that advances `step_us` on every reading; polls only.
    #[derive(Debug)]
    pub struct StepClock {
        now: Cell<u64>,
        step_us: u64,
    }

    impl StepClock {
        /// A clock at 0 advancing `step_us` per reading.
        pub fn new(step_us: u64) -> Self {
            Self {
                now: Cell::new(0),
                step_us,
            }
        }
    }

    impl Waiter for StepClock {
        fn now_us(&self) -> u64 {
            let t = self.now.get();
            self.now.set(t + self.step_us);
            t
        }

        fn mode(&self) -> WaitMode {
            WaitMode::Poll
        }

        fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
            ready()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_value_or_times_out() {
        let clock = fake::StepClock::new(10);
        let mut n = 0;
        let v = wait_for(&clock, 1000, "three polls", || {
            n += 1;
            Ok((n == 3).then_some(42))
        });
        assert_eq!(v, Ok(42));
        let e = wait_for::<()>(&clock, 100, "never", || Ok(None)).unwrap_err();
        match e {
            Error::Timeout { what, waited_us } => {
                assert_eq!(what, "never");
                assert!(waited_us > 100, "waited {waited_us}");
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        let e = wait_for::<()>(&clock, 100, "error", || Err(Error::DmaExhausted { pages: 3 })).unwrap_err();
        assert_eq!(e, Error::DmaExhausted { pages: 3 });
    }
}
