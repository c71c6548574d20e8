//! Per-operation latency: a fixed-size log-linear histogram, filled without allocating.
//!
//! Values (nanoseconds) below 64 each have a bucket of their own. Above that, every power of two
//! `[2^e, 2^(e+1))` is split into [`SUB_BUCKETS`] equal buckets of width `2^(e-5)`, so a bucket's
//! width is at most 1/32 of its lower bound. The whole `u64` range fits in [`BUCKETS`] counters
//! (15 KiB), allocated once when the histogram is made, before a phase starts.
//!
//! Percentiles are nearest-rank (the smallest recorded value with at least p% of the values at or
//! below it) and reported as the upper end of the bucket holding that value, capped at the largest
//! value recorded. So a reported percentile `r` and the exact one `x` satisfy `x <= r <= x + x/32`
//! (exact for values below 64); the maximum is exact.

use alloc::boxed::Box;
use alloc::vec;

/// Sub-buckets per power of two (2^5).
const SUB_BITS: u32 = 5;
/// Sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Buckets in all: 32 for the values 0..32, then 32 per power of two from `[2^5, 2^6)` to
/// `[2^63, 2^64)` (those of `[2^5, 2^6)` have width 1, so everything below 64 is exact).
pub const BUCKETS: usize = SUB_BUCKETS + (64 - SUB_BITS as usize) * SUB_BUCKETS;

/// What a run's latencies came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Operations timed.
    pub count: u64,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// Largest, nanoseconds (exact).
    pub max_ns: u64,
}

impl Latency {
    /// `lat_p50_ns=.. lat_p99_ns=.. lat_max_ns=..` for a report line.
    pub fn fields(&self) -> alloc::string::String {
        alloc::format!(
            "lat_p50_ns={} lat_p99_ns={} lat_max_ns={}",
            self.p50_ns,
            self.p99_ns,
            self.max_ns
        )
    }
}

/// The histogram.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket of `v`.
fn bucket(v: u64) -> usize {
    if v < 2 * SUB_BUCKETS as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    let sub = (v >> shift) as usize - SUB_BUCKETS; // 0..SUB_BUCKETS
    SUB_BUCKETS + shift as usize * SUB_BUCKETS + sub
}

/// The largest value that lands in bucket `i`.
fn upper(i: usize) -> u64 {
    if i < 2 * SUB_BUCKETS {
        return i as u64;
    }
    let k = i - SUB_BUCKETS;
    let shift = (k / SUB_BUCKETS) as u32;
    let sub = (k % SUB_BUCKETS) as u64;
    let lower = (SUB_BUCKETS as u64 + sub) << shift;
    lower.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    /// An empty histogram (allocates its buckets now).
    pub fn new() -> Self {
        Self {
            counts: vec![0u64; BUCKETS].into_boxed_slice(),
            count: 0,
            max: 0,
        }
    }

    /// Records one value (no allocation).
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.count += 1;
        self.max = self.max.max(ns);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Forgets everything recorded (keeps the buckets).
    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.max = 0;
    }

    /// The nearest-rank `permille`/1000 quantile (see the module documentation); 0 when empty.
    pub fn quantile(&self, permille: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (u128::from(self.count) * u128::from(permille.min(1000)))
            .div_ceil(1000)
            .max(1) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// The summary of what was recorded.
    pub fn summary(&self) -> Latency {
        Latency {
            count: self.count,
            p50_ns: self.quantile(500),
            p99_ns: self.quantile(990),
            max_ns: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// The exact nearest-rank quantile of `values`.
    fn exact(values: &[u64], permille: u64) -> u64 {
        let mut v = values.to_vec();
        v.sort_unstable();
        let rank = (v.len() as u128 * u128::from(permille)).div_ceil(1000).max(1) as usize;
        v[rank - 1]
    }

    #[test]
    fn buckets_tile_the_range_in_order() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(63), 63);
        assert_eq!(bucket(64), 64);
        assert_eq!(bucket(65), 64, "64..65 share a bucket of width 2");
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(upper(BUCKETS - 1), u64::MAX);
        // Every bucket starts right after the previous one ends, and is at most 1/32 wide.
        for i in 1..BUCKETS {
            let lower = upper(i - 1) + 1;
            assert_eq!(bucket(lower), i, "bucket {i} starts at {lower}");
            assert_eq!(bucket(upper(i)), i);
            assert!(
                upper(i) - lower <= lower / 32,
                "bucket {i}: {lower}..={}",
                upper(i)
            );
        }
    }

    #[test]
    fn known_inputs_give_known_percentiles() {
        let mut h = Histogram::new();
        assert_eq!(h.summary(), Latency::default(), "empty: all zero");
        for v in 1..=100 {
            h.record(v);
        }
        // 50 is exact (below 64); 99 lies in the bucket 98..=99.
        assert_eq!(
            h.summary(),
            Latency {
                count: 100,
                p50_ns: 50,
                p99_ns: 99,
                max_ns: 100
            }
        );
        // 990 values of 10 us and 10 of 5 ms: the median is 10 us within 1/32, p99 too (rank 990),
        // the maximum exactly 5 ms.
        h.clear();
        for _ in 0..990 {
            h.record(10_000);
        }
        for _ in 0..10 {
            h.record(5_000_000);
        }
        let s = h.summary();
        assert!((10_000..=10_000 + 10_000 / 32).contains(&s.p50_ns), "{s:?}");
        assert_eq!(s.p50_ns, s.p99_ns);
        assert_eq!(s.max_ns, 5_000_000);
        // One more slow one moves p99 into the slow values.
        h.record(5_000_000);
        assert!(
            h.quantile(990) >= 5_000_000 - 5_000_000 / 32,
            "{}",
            h.quantile(990)
        );
        assert_eq!(h.quantile(990), 5_000_000, "capped at the maximum");
    }

    proptest! {
        #[test]
        fn percentiles_are_within_the_bucket_error(
            values in prop::collection::vec(prop_oneof![0u64..200, 0u64..10_000_000, any::<u64>()], 1..400),
            permille in 1u64..=1000,
        ) {
            let mut h = Histogram::new();
            for &v in &values {
                h.record(v);
            }
            let want = exact(&values, permille);
            let got = h.quantile(permille);
            prop_assert!(got >= want, "got {} < exact {}", got, want);
            prop_assert!(got - want <= want / 32, "got {} exact {}", got, want);
            prop_assert_eq!(h.summary().max_ns, *values.iter().max().unwrap());
            prop_assert_eq!(h.count(), values.len() as u64);
        }
    }

    #[test]
    fn recording_does_not_allocate_more_buckets() {
        let mut h = Histogram::new();
        let before = h.counts.as_ptr();
        let spread: Vec<u64> = (0..64).map(|i| 1u64 << i).collect();
        for v in spread {
            h.record(v);
        }
        assert_eq!(h.counts.as_ptr(), before);
        assert_eq!(h.counts.len(), BUCKETS);
    }
}
