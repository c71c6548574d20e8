//! A token bucket for log lines a guest can cause: each device (and the state machine of each
//! device) gets one, so a guest that misbehaves in a loop fills the log at a bounded rate however
//! often it reconnects. Lines that are held back are counted and the next line that passes says
//! how many.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines that may pass at once before the rate applies.
pub const DEFAULT_BURST: u32 = 16;
/// One more line may pass per this interval after a burst.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Instant,
    /// Held back since the last line that passed.
    pending: u64,
    /// Held back in all.
    suppressed: u64,
}

/// A thread-safe token bucket: up to `burst` lines at once, then one per `interval`.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    bucket: Mutex<Bucket>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(DEFAULT_BURST, DEFAULT_INTERVAL)
    }
}

impl RateLimit {
    /// A full bucket of `burst` (at least 1) lines refilled at one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        let burst = burst.max(1);
        RateLimit {
            burst,
            interval,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
                pending: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines held back since the
    /// last one that passed, or `None` (the line is counted as held back).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`allow`](Self::allow) at a given time (tests).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging; the counts are still
        // usable.
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if !self.interval.is_zero() {
            let elapsed = now.saturating_duration_since(b.last);
            let earned = elapsed.as_nanos() / self.interval.as_nanos();
            if earned > 0 {
                let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                b.tokens = b.tokens.saturating_add(earned).min(self.burst);
                // Keep the remainder: advance by whole intervals only.
                b.last = b
                    .last
                    .checked_add(self.interval.saturating_mul(earned))
                    .unwrap_or(now)
                    .min(now);
            }
        } else {
            b.tokens = self.burst;
        }
        if b.tokens == 0 {
            b.pending += 1;
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.pending))
    }

    /// Lines held back so far in all.
    pub fn suppressed(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).suppressed
    }
}

/// Logs at `warn` through a [`RateLimit`], with the count of lines held back before it (a
/// `suppressed=N` field, absent when none were):
/// `limited_warn!(limit, device = %name, "request failed: {why}")`.
macro_rules! limited_warn {
    ($limit:expr, $($rest:tt)+) => {
        match $limit.allow() {
            Some(0) => tracing::warn!($($rest)+),
            Some(suppressed) => tracing::warn!(suppressed, $($rest)+),
            None => {}
        }
    };
}

/// As `limited_warn!` at `error`.
macro_rules! limited_error {
    ($limit:expr, $($rest:tt)+) => {
        match $limit.allow() {
            Some(0) => tracing::error!($($rest)+),
            Some(suppressed) => tracing::error!(suppressed, $($rest)+),
            None => {}
        }
    };
}

/// As `limited_warn!` at `info`.
macro_rules! limited_info {
    ($limit:expr, $($rest:tt)+) => {
        match $limit.allow() {
            Some(0) => tracing::info!($($rest)+),
            Some(suppressed) => tracing::info!(suppressed, $($rest)+),
            None => {}
        }
    };
}

pub(crate) use {limited_error, limited_info, limited_warn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_line_per_interval_and_the_held_back_are_counted() {
        let l = RateLimit::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let passed: Vec<Option<u64>> = (0..10).map(|_| l.allow_at(t0)).collect();
        assert_eq!(&passed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(passed[3..].iter().all(Option::is_none));
        // Half an interval: still nothing; a whole one: one line, saying 7 (+1) were held back.
        assert_eq!(l.allow_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_millis(1000)), Some(8));
        assert_eq!(l.allow_at(t0 + Duration::from_millis(1100)), None);
        // A long pause refills the burst, no more.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            (0..5).filter(|_| l.allow_at(later).is_some()).count(),
            3,
            "at most the burst"
        );
        assert_eq!(l.suppressed(), 11);
    }

    #[test]
    fn a_million_attempts_within_one_interval_pass_only_the_burst() {
        let l = RateLimit::new(16, Duration::from_secs(2));
        let t0 = Instant::now();
        let passed = (0..1_000_000u32)
            .filter(|i| l.allow_at(t0 + Duration::from_micros(u64::from(*i))).is_some())
            .count();
        assert_eq!(passed, 16);
    }
}
