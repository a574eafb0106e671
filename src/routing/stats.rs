//! Lock-free latency histogram for the request hot path: per-version p50/p99, Prometheus buckets,
//! and windowed differences ("the requests since the rollout step began") for the controller.
//!
//! Buckets are log-linear (HDR-style) over nanoseconds: everything up to 1024 ns (the ~1 µs
//! floor) shares the first bucket; above it each power of two is split into 32 equal sub-buckets,
//! up to 2^37 ns (~137 s). Values are saturated into `[0, 2^37 ns]`. A bucket holds the values in
//! `(lower, upper]` and is reported as `upper`, so a reported quantile `r` of a true value `v`
//! with `1024 ns < v <= 2^37 ns` satisfies `v <= r < v * (1 + 1/32)`: it overestimates by less
//! than 3.125%. Values at or below 1024 ns are reported as 1024 ns.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// log2 of the sub-buckets per power of two; 5 gives the 1/32 relative error bound.
const SUB_BITS: u32 = 5;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Values at or below `2^MIN_EXP` ns (~1 µs) share bucket 0.
const MIN_EXP: u32 = 10;
/// Values above `2^MAX_EXP` ns (~137 s) are saturated to it.
const MAX_EXP: u32 = 37;
const MAX_NANOS: u64 = 1 << MAX_EXP;

/// Number of buckets of every histogram (fixed, so recording never allocates): 865, ~7 KiB.
pub const BUCKETS: usize = 1 + (MAX_EXP - MIN_EXP) as usize * SUB_BUCKETS;

/// Bucket of a value in nanoseconds; always `< BUCKETS`.
fn bucket_index(nanos: u64) -> usize {
    // Shift by one so that buckets are closed above: `(lower, upper]`.
    let w = nanos.min(MAX_NANOS).saturating_sub(1);
    if w < (1 << MIN_EXP) {
        return 0;
    }
    let exp = u64::BITS - 1 - w.leading_zeros();
    let sub = (w >> (exp - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    1 + (exp - MIN_EXP) as usize * SUB_BUCKETS + sub
}

/// Largest value (ns) that falls into bucket `index` (indices past the end act as the last).
fn bucket_upper_nanos(index: usize) -> u64 {
    if index == 0 {
        return 1 << MIN_EXP;
    }
    let i = index.min(BUCKETS - 1) - 1;
    let exp = MIN_EXP + (i / SUB_BUCKETS) as u32;
    let sub = (i % SUB_BUCKETS) as u64;
    (SUB_BUCKETS as u64 + sub + 1) << (exp - SUB_BITS)
}

fn saturated_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).map_or(MAX_NANOS, |n| n.min(MAX_NANOS))
}

/// Concurrent latency histogram: `record` is two relaxed atomic adds, no lock, no allocation, so
/// it can sit on the request path of every model version. Read it with [`Self::snapshot`].
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the saturated values, for the mean and Prometheus `_sum`.
    sum_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("LatencyHistogram")
            .field("count", &snapshot.count())
            .field("sum", &snapshot.sum())
            .finish()
    }
}

impl LatencyHistogram {
    /// Records one latency (saturated into `[0, ~137 s]`). Safe to call from any number of
    /// threads; uses `Relaxed` ordering, as no other memory is published through the counters.
    pub fn record(&self, d: Duration) {
        let nanos = saturated_nanos(d);
        self.buckets[bucket_index(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Copies the counters. Under concurrent recording the copy is not one atomic cut (a record
    /// may be seen in its bucket but not yet in the sum), but the count is always the sum of the
    /// copied buckets, so quantiles and cumulative counts of one snapshot are consistent.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// Point-in-time copy of a [`LatencyHistogram`], or the difference of two (a window). The
/// `Default` value is empty and stands for "nothing recorded yet" (e.g. before a rollout step).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    /// Per-bucket counts: `BUCKETS` entries, or none for the empty default.
    counts: Vec<u64>,
    /// Sum of `counts` (kept so `count()` is O(1)).
    count: u64,
    sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the recorded (saturated) values.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }

    /// Mean of the recorded values; `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_nanos / self.count))
    }

    /// The values recorded after `earlier` was taken (both from the same histogram): saturating
    /// per-bucket difference. An empty `earlier` (`Default`) means "everything", so a window
    /// that starts before the first snapshot needs no special case.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        if earlier.counts.is_empty() {
            return self.clone();
        }
        let counts: Vec<u64> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    /// The `q`-quantile (`q` clamped to `[0, 1]`): the upper bound of the bucket that holds the
    /// value of rank `max(1, ceil(q * count))`. It is never above the bucket of the largest value
    /// recorded and overestimates the true value by less than 3.125% (see the module docs).
    /// `None` when empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (index, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper_nanos(index)));
            }
        }
        None
    }

    /// Number of recorded values `<= bound`, for Prometheus `le` buckets. Rounds down to the
    /// bucket resolution: only whole buckets whose upper bound is `<= bound` are counted, so the
    /// result is exact when `bound` is a bucket bound (e.g. 1024 ns, or any power of two from
    /// 2^10 ns) and otherwise may omit values of the one bucket straddling `bound` (those within
    /// 3.125% below it). Monotonic in `bound`; equals `count()` for `bound >= 2^37 ns` (~137 s).
    pub fn cumulative_at(&self, bound: Duration) -> u64 {
        let bound = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(index, _)| bucket_upper_nanos(index) <= bound)
            .map(|(_, &c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    fn assert_close(actual: Duration, expected: Duration, rel: f64) {
        let (a, e) = (actual.as_secs_f64(), expected.as_secs_f64());
        assert!(
            (a - e).abs() <= e * rel,
            "{actual:?} not within {rel} of {expected:?}"
        );
    }

    #[test]
    fn bucket_bounds_are_consistent() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1024), 0);
        assert_eq!(bucket_index(1025), 1);
        assert_eq!(bucket_upper_nanos(BUCKETS - 1), MAX_NANOS);
        for i in 0..BUCKETS {
            let upper = bucket_upper_nanos(i);
            assert_eq!(bucket_index(upper), i);
            if i + 1 < BUCKETS {
                assert_eq!(bucket_index(upper + 1), i + 1);
                let next = bucket_upper_nanos(i + 1);
                assert!(next > upper && (next - upper) as f64 <= upper as f64 / 32.0);
            }
        }
    }

    #[test]
    fn uniform_quantiles_within_error_bound() {
        let h = LatencyHistogram::default();
        for v in 1..=10_000 {
            h.record(us(v));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        assert_eq!(s.sum(), us(10_000 * 10_001 / 2));
        assert_close(s.quantile(0.5).unwrap(), us(5_000), 0.03);
        assert_close(s.quantile(0.99).unwrap(), us(9_900), 0.03);
        assert_close(s.quantile(1.0).unwrap(), us(10_000), 0.03);
        assert_close(s.quantile(0.0).unwrap(), us(1), 0.03);
        assert_close(s.mean().unwrap(), Duration::from_nanos(5_000_500), 1e-9);
        // Upper bounds never underestimate.
        assert!(s.quantile(0.5).unwrap() >= us(5_000));
    }

    #[test]
    fn since_gives_the_window() {
        let h = LatencyHistogram::default();
        for _ in 0..1000 {
            h.record(us(100));
        }
        let start = h.snapshot();
        assert_eq!(start.since(&HistogramSnapshot::default()), start);
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        let window = h.snapshot().since(&start);
        assert_eq!(window.count(), 10);
        assert_eq!(window.sum(), Duration::from_millis(500));
        assert_close(
            window.quantile(0.01).unwrap(),
            Duration::from_millis(50),
            0.03,
        );
        assert_close(
            window.quantile(0.99).unwrap(),
            Duration::from_millis(50),
            0.03,
        );
        // The whole histogram is still dominated by the first phase.
        assert_close(h.snapshot().quantile(0.5).unwrap(), us(100), 0.03);
        // An empty window.
        assert_eq!(start.since(&start).quantile(0.5), None);
    }

    #[test]
    fn empty_is_none() {
        let s = LatencyHistogram::default().snapshot();
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.mean(), None);
        assert_eq!(HistogramSnapshot::default().quantile(0.99), None);
        assert_eq!(HistogramSnapshot::default().cumulative_at(Duration::MAX), 0);
    }

    #[test]
    fn concurrent_recording_keeps_exact_count() {
        let h = LatencyHistogram::default();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let h = &h;
                scope.spawn(move || {
                    for i in 0..100_000u64 {
                        h.record(us(1 + (i * 7 + t) % 5_000));
                    }
                });
            }
        });
        let s = h.snapshot();
        assert_eq!(s.count(), 400_000);
        assert_eq!(s.cumulative_at(Duration::MAX), 400_000);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let h = LatencyHistogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::from_nanos(1));
        h.record(Duration::from_secs(1_000));
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.quantile(0.0), Some(Duration::from_nanos(1024)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_nanos(MAX_NANOS)));
        assert_eq!(s.sum(), Duration::from_nanos(2 * MAX_NANOS + 1));
        assert_eq!(s.quantile(f64::NAN), None);
        assert_eq!(s.quantile(7.0), s.quantile(1.0));
    }

    #[test]
    fn cumulative_at_is_monotonic_and_complete() {
        let h = LatencyHistogram::default();
        for v in [1u64, 10, 100, 1_000, 10_000, 100_000, 1_000_000] {
            h.record(us(v));
        }
        let s = h.snapshot();
        let mut last = 0;
        for exp in 0..40 {
            let c = s.cumulative_at(Duration::from_nanos(1 << exp));
            assert!(c >= last);
            last = c;
        }
        assert_eq!(s.cumulative_at(Duration::ZERO), 0);
        // Bucket bounds are exact: 1 µs (<= 1024 ns) and 10 µs (bucket upper 10240 ns).
        assert_eq!(s.cumulative_at(Duration::from_nanos(1024)), 1);
        assert_eq!(s.cumulative_at(Duration::from_nanos(10_240)), 2);
        // 1 s is recorded in a bucket above 1 s, so "<= 1 s" rounds down and misses it.
        assert_eq!(s.cumulative_at(Duration::from_secs(1)), 6);
        assert_eq!(s.cumulative_at(Duration::from_secs(2)), 7);
        assert_eq!(s.cumulative_at(Duration::from_nanos(MAX_NANOS)), s.count());
    }
}
