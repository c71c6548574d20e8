//! Rate limiting for what a peer can make a daemon do over and over: above all, log lines.
//!
//! A guest (or a VMM) that sends one malformed request after another must not turn each of them into
//! a line on the host's log: the log is shared by every guest the daemon serves and by the host. A
//! [`RateLimit`] lets `burst` events through per `interval`, counts the ones it holds back, and hands
//! that count to the first event let through in a later interval, so the caller writes one summary
//! ("N similar messages suppressed") per interval at most. [`warn_limited!`](crate::warn_limited)
//! does exactly that for `tracing::warn!`.
//!
//! It is shared by the vhost-user daemons and meant for the Xen backends too; it holds no
//! per-protocol state.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `burst` events per `interval`, the rest counted.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Start of the current interval (`None` before the first event).
    window: Option<Instant>,
    /// Events let through in the current interval.
    passed: u32,
    /// Events held back since the last one let through.
    suppressed: u64,
    /// Every event held back so far.
    suppressed_total: u64,
    /// Every event let through so far.
    passed_total: u64,
}

/// An event that may be reported, with the number of events held back since the previous one that
/// was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Events suppressed between the previous one let through and this one.
    pub suppressed: u64,
}

impl RateLimit {
    /// Lets `burst` events through per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        RateLimit {
            burst,
            interval,
            state: Mutex::new(State {
                window: None,
                passed: 0,
                suppressed: 0,
                suppressed_total: 0,
                passed_total: 0,
            }),
        }
    }

    /// The daemons' default for peer-triggered warnings: 10 per 30 s, so one peer adds at most about
    /// 20 lines a minute (ten, then a summary per interval).
    pub const fn peer_log() -> Self {
        Self::new(10, Duration::from_secs(30))
    }

    /// One event now: `Some` if it may be reported.
    pub fn check(&self) -> Option<Pass> {
        self.check_at(Instant::now())
    }

    /// One event at `now` (tests pass their own clock).
    pub fn check_at(&self, now: Instant) -> Option<Pass> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = s
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            s.window = Some(now);
            s.passed = 0;
        }
        if s.passed < self.burst {
            s.passed += 1;
            s.passed_total += 1;
            let suppressed = std::mem::take(&mut s.suppressed);
            Some(Pass { suppressed })
        } else {
            s.suppressed += 1;
            s.suppressed_total += 1;
            None
        }
    }

    /// Takes the count of events held back since the last one let through (for a final summary,
    /// when a connection ends).
    pub fn take_suppressed(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).suppressed)
    }

    /// Every event held back so far.
    pub fn suppressed_total(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suppressed_total
    }

    /// Every event let through so far.
    pub fn passed_total(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).passed_total
    }
}

/// `tracing::warn!` through a [`RateLimit`]: the message is logged if the limit lets it through,
/// preceded by a summary line if events were suppressed since the previous one.
///
/// ```
/// use pvkit_backends::ratelimit::RateLimit;
/// let limit = RateLimit::peer_log();
/// for i in 0..100 {
///     pvkit_backends::warn_limited!(limit, "refusing request {i}");
/// }
/// assert_eq!(limit.suppressed_total(), 90);
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(pass) = $crate::ratelimit::RateLimit::check(&$limit) {
            if pass.suppressed > 0 {
                ::tracing::warn!(suppressed = pass.suppressed, "similar messages suppressed");
            }
            ::tracing::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_summary_per_interval() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let passed: Vec<_> = (0..100).map(|_| limit.check_at(t0)).collect();
        assert_eq!(passed.iter().filter(|p| p.is_some()).count(), 3);
        assert!(passed[..3].iter().all(|p| *p == Some(Pass { suppressed: 0 })));
        assert_eq!(limit.suppressed_total(), 97);

        // Still inside the interval: held back.
        assert_eq!(limit.check_at(t0 + Duration::from_secs(9)), None);
        // The next interval: the first event carries the count of the 98 held back.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.check_at(t1), Some(Pass { suppressed: 98 }));
        assert_eq!(limit.check_at(t1), Some(Pass { suppressed: 0 }));
        assert_eq!(limit.check_at(t1), Some(Pass { suppressed: 0 }));
        assert_eq!(limit.check_at(t1), None);
        assert_eq!(limit.take_suppressed(), 1);
        assert_eq!(limit.take_suppressed(), 0);
        assert_eq!((limit.passed_total(), limit.suppressed_total()), (6, 99));
    }

    #[test]
    fn a_clock_going_backwards_does_not_reopen_the_window() {
        let limit = RateLimit::new(1, Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(100);
        assert!(limit.check_at(t0).is_some());
        assert!(limit.check_at(t0 - Duration::from_secs(50)).is_none());
    }

    #[test]
    fn zero_burst_suppresses_everything() {
        let limit = RateLimit::new(0, Duration::from_secs(1));
        assert!((0..10).all(|_| limit.check().is_none()));
        assert_eq!(limit.suppressed_total(), 10);
    }
}
