//! Rate limiting for what a peer can make a daemon do over and over: above all, log lines.
//!
//! A guest (or a VMM) that sends one malformed request after another, or reconnects in a loop, must
//! not turn each of them into a line on the host's log: the log is shared by every guest the daemon
//! serves and by the host. A [`RateLimit`] is a token bucket: it holds at most `burst` tokens, each
//! event that passes takes one, and every whole `interval` gives back `refill` of them. Events that
//! find the bucket empty are held back and counted, and the next event let through carries that
//! count, so the caller reports it along ("N similar messages suppressed") at most once per event
//! that passes.
//!
//! Two shapes, one mechanism:
//! - [`RateLimit::new`]: `burst` events per `interval` (the bucket refills completely), which the
//!   vhost-user daemons use per socket ([`RateLimit::peer_log`]: 10 per 30 s);
//! - [`RateLimit::steady`]: a burst, then one event per `interval`, which the Xen backends use per
//!   device and per state machine ([`RateLimit::device_log`]: 16, then one per 2 s), so a guest
//!   that misbehaves in a loop fills the log at a bounded rate however often it reconnects.
//!
//! The interval clock starts at the first event. Two macro families report through a limit:
//! [`warn_limited!`](crate::warn_limited) writes the held-back count as a line of its own before
//! the message (the vhost-user daemons' form); `limited_warn!`, `limited_info!` and
//! `limited_error!` (inside this crate) add it to the message as a `suppressed=N` field (the Xen
//! backends' form).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A thread-safe token bucket for peer-triggered events (see the module documentation).
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    /// Tokens given back per whole interval.
    refill: u32,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    /// Where the current interval started (`None` before the first event).
    last: Option<Instant>,
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

impl Default for RateLimit {
    /// [`RateLimit::device_log`].
    fn default() -> Self {
        Self::device_log()
    }
}

impl RateLimit {
    /// Lets `burst` events through per `interval` (none with a `burst` of 0).
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self::bucket(burst, burst, interval)
    }

    /// Lets a burst of `burst` (at least 1) events through, then one per `interval`.
    pub const fn steady(burst: u32, interval: Duration) -> Self {
        let burst = if burst == 0 { 1 } else { burst };
        Self::bucket(burst, 1, interval)
    }

    const fn bucket(burst: u32, refill: u32, interval: Duration) -> Self {
        RateLimit {
            burst,
            refill,
            interval,
            state: Mutex::new(State {
                tokens: burst,
                last: None,
                suppressed: 0,
                suppressed_total: 0,
                passed_total: 0,
            }),
        }
    }

    /// The vhost-user daemons' limit for peer-triggered warnings, per socket: 10 per 30 s, so one
    /// peer adds at most about 20 lines a minute (ten, then a summary per interval).
    pub const fn peer_log() -> Self {
        Self::new(10, Duration::from_secs(30))
    }

    /// The Xen backends' limit for the lines a guest can cause, per device: 16 at once, then one
    /// per 2 s.
    pub const fn device_log() -> Self {
        Self::steady(16, Duration::from_secs(2))
    }

    /// One event now: `Some` if it may be reported.
    pub fn check(&self) -> Option<Pass> {
        self.check_at(Instant::now())
    }

    /// One event at `now` (tests pass their own clock; a clock going backwards earns nothing).
    pub fn check_at(&self, now: Instant) -> Option<Pass> {
        // A poisoned lock only means another thread panicked while logging; the counts are still
        // usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            None => s.last = Some(now),
            Some(_) if self.interval.is_zero() => s.tokens = self.burst,
            Some(last) => {
                let earned = now.saturating_duration_since(last).as_nanos() / self.interval.as_nanos();
                if earned > 0 {
                    let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                    s.tokens = s
                        .tokens
                        .saturating_add(earned.saturating_mul(self.refill))
                        .min(self.burst);
                    // Keep the remainder: advance by whole intervals only.
                    s.last = Some(
                        last.checked_add(self.interval.saturating_mul(earned))
                            .unwrap_or(now)
                            .min(now),
                    );
                }
            }
        }
        if s.tokens == 0 {
            s.suppressed += 1;
            s.suppressed_total += 1;
            return None;
        }
        s.tokens -= 1;
        s.passed_total += 1;
        Some(Pass {
            suppressed: std::mem::take(&mut s.suppressed),
        })
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

/// Logs at `warn` through a [`RateLimit`], with the count of lines held back before it (a
/// `suppressed=N` field, absent when none were):
/// `limited_warn!(limit, device = %name, "request failed: {why}")`.
macro_rules! limited_warn {
    ($limit:expr, $($rest:tt)+) => {
        match $crate::ratelimit::RateLimit::check(&$limit) {
            Some($crate::ratelimit::Pass { suppressed: 0 }) => tracing::warn!($($rest)+),
            Some($crate::ratelimit::Pass { suppressed }) => tracing::warn!(suppressed, $($rest)+),
            None => {}
        }
    };
}

/// As `limited_warn!` at `error`.
macro_rules! limited_error {
    ($limit:expr, $($rest:tt)+) => {
        match $crate::ratelimit::RateLimit::check(&$limit) {
            Some($crate::ratelimit::Pass { suppressed: 0 }) => tracing::error!($($rest)+),
            Some($crate::ratelimit::Pass { suppressed }) => tracing::error!(suppressed, $($rest)+),
            None => {}
        }
    };
}

/// As `limited_warn!` at `info`.
macro_rules! limited_info {
    ($limit:expr, $($rest:tt)+) => {
        match $crate::ratelimit::RateLimit::check(&$limit) {
            Some($crate::ratelimit::Pass { suppressed: 0 }) => tracing::info!($($rest)+),
            Some($crate::ratelimit::Pass { suppressed }) => tracing::info!(suppressed, $($rest)+),
            None => {}
        }
    };
}

pub(crate) use {limited_error, limited_info, limited_warn};

#[cfg(test)]
mod tests {
    use super::*;

    /// [`RateLimit::new`]: `burst` per interval, the held-back count handed to the next pass.
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

    /// [`RateLimit::steady`]: a burst, then one per interval, a long pause refilling no more than
    /// the burst.
    #[test]
    fn a_burst_passes_then_one_line_per_interval_and_the_held_back_are_counted() {
        let l = RateLimit::steady(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let passed: Vec<Option<u64>> = (0..10).map(|_| l.check_at(t0).map(|p| p.suppressed)).collect();
        assert_eq!(&passed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(passed[3..].iter().all(Option::is_none));
        // Half an interval: still nothing; a whole one: one line, saying 7 (+1) were held back.
        assert_eq!(l.check_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(
            l.check_at(t0 + Duration::from_millis(1000)),
            Some(Pass { suppressed: 8 })
        );
        assert_eq!(l.check_at(t0 + Duration::from_millis(1100)), None);
        // A long pause refills the burst, no more.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            (0..5).filter(|_| l.check_at(later).is_some()).count(),
            3,
            "at most the burst"
        );
        assert_eq!(l.suppressed_total(), 11);
    }

    #[test]
    fn a_million_attempts_within_one_interval_pass_only_the_burst() {
        let l = RateLimit::steady(16, Duration::from_secs(2));
        let t0 = Instant::now();
        let passed = (0..1_000_000u32)
            .filter(|i| l.check_at(t0 + Duration::from_micros(u64::from(*i))).is_some())
            .count();
        assert_eq!(passed, 16);
    }

    #[test]
    fn a_steady_limit_passes_at_least_one_and_a_zero_interval_limits_nothing() {
        let t0 = Instant::now();
        let l = RateLimit::steady(0, Duration::from_secs(1));
        assert!(l.check_at(t0).is_some());
        assert!(l.check_at(t0).is_none());
        let l = RateLimit::new(2, Duration::ZERO);
        assert!((0..100).all(|_| l.check_at(t0).is_some()));
    }
}
