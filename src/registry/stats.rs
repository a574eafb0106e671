//! Per-version statistics in the shape of Triton's ModelStatistics: counts and cumulative durations
//! for successes, failures, queueing and compute (per request), inference and execution counts, and
//! per-batch-size execution figures (per execution: a batch of 5 requests counts 5 inferences and 1
//! execution). Updated with atomics; read only when a client asks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::executor::Phases;
use crate::routing::router::RouteKind;
use crate::routing::shadow::ShadowStats;
use crate::routing::stats::LatencyHistogram;

/// A count and the total time of what was counted.
#[derive(Debug, Default)]
pub struct DurationStat {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl DurationStat {
    /// Adds one occurrence lasting `d`.
    pub fn record(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (count, total nanoseconds).
    pub fn read(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed),
        )
    }
}

/// Requests answered by a version, per route that brought them (the traffic arm) and outcome.
/// Unlike Triton's success and failure counts, a request refused after routing (a bad input, a
/// full queue, an open circuit) counts as a failure here: it is what the arm's callers saw.
#[derive(Debug, Default)]
pub struct RoutedCounts([[AtomicU64; 2]; RouteKind::ALL.len()]);

impl RoutedCounts {
    /// Counts one answered request.
    pub fn record(&self, route: RouteKind, ok: bool) {
        self.0[route.index()][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// (successes, failures) of the requests that `route` brought.
    pub fn read(&self, route: RouteKind) -> (u64, u64) {
        let [ok, failed] = &self.0[route.index()];
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }
}

/// Figures for executions of one batch size.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchFigures {
    pub count: u64,
    pub compute_input_ns: u64,
    pub compute_infer_ns: u64,
    pub compute_output_ns: u64,
}

/// Everything counted for one model version.
#[derive(Debug, Default)]
pub struct VersionStats {
    pub success: DurationStat,
    pub fail: DurationStat,
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    /// Requests answered, counting each batch element.
    pub inference_count: AtomicU64,
    /// Model executions.
    pub execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last answered request.
    pub last_inference_ms: AtomicU64,
    batches: Mutex<BTreeMap<u64, BatchFigures>>,
    /// End-to-end latency of successful requests (for p50/p99, rollout gates, the A/B report).
    pub latency: LatencyHistogram,
    /// What shadow traffic to this version found.
    pub shadow: ShadowStats,
    /// Requests answered, per route and outcome.
    pub routed: RoutedCounts,
}

/// The phases of one successful execution.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub total: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

impl VersionStats {
    /// Counts a request answered successfully. Its compute phases are those of the execution it
    /// was part of, as Triton counts them.
    pub fn record_success(&self, t: Timings) {
        self.success.record(t.total);
        self.latency.record(t.total);
        self.queue.record(t.queue);
        self.compute_input.record(t.compute_input);
        self.compute_infer.record(t.compute_infer);
        self.compute_output.record(t.compute_output);
        self.touch();
    }

    /// Counts one successful execution of `batch_size` batch elements (one or more requests).
    pub fn record_execution(&self, batch_size: usize, phases: Phases) {
        self.inference_count
            .fetch_add(batch_size as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut batches) = self.batches.lock() {
            let figures = batches.entry(batch_size as u64).or_default();
            figures.count += 1;
            figures.compute_input_ns += phases.input.as_nanos() as u64;
            figures.compute_infer_ns += phases.infer.as_nanos() as u64;
            figures.compute_output_ns += phases.output.as_nanos() as u64;
        }
    }

    /// Counts a request that failed after reaching this version.
    pub fn record_failure(&self, total: Duration) {
        self.fail.record(total);
        self.touch();
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// Per-batch-size figures, by batch size.
    pub fn batches(&self) -> BTreeMap<u64, BatchFigures> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }
}
