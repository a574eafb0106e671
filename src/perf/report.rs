//! Per-level results of a perf run: human-readable table and JSON (serde) form.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::PerfOptions;
use super::worker::LevelStats;

/// Latency distribution of the successful requests of one level, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

/// The result of one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfReport {
    /// Server address the load was sent to.
    pub url: String,
    /// Model name requested.
    pub model: String,
    /// Model version requested (`None`: the server's choice).
    pub model_version: Option<String>,
    /// Number of closed-loop tasks (requests in flight).
    pub concurrency: usize,
    /// HTTP/2 connections the tasks shared.
    pub connections: usize,
    /// Client threads the connections were split over.
    #[serde(default)]
    pub threads: usize,
    /// Batch size of every request.
    pub batch: usize,
    /// Distinct `routing_key` request parameters cycled through (0: none sent).
    #[serde(default)]
    pub routing_keys: usize,
    /// Length of the measurement window, seconds.
    pub duration_secs: f64,
    /// Warm-up before the window, seconds (not counted).
    pub warmup_secs: f64,
    /// Successful requests completed in the window.
    pub requests: u64,
    /// Failed requests completed in the window.
    pub error_count: u64,
    /// Failed requests by gRPC code name (`Unavailable`, `DeadlineExceeded`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Code and message of one failed request, if any failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_sample: Option<String>,
    /// Successful requests per second.
    pub throughput_rps: f64,
    /// Inferences (requests × batch) per second.
    pub inferences_per_sec: f64,
    /// Latency of successful requests, µs.
    pub latency_us: LatencySummary,
    /// Successful responses per `model_version` the server reported.
    pub versions: BTreeMap<String, u64>,
}

impl PerfReport {
    pub(crate) fn from_stats(
        url: &str,
        opts: &PerfOptions,
        concurrency: usize,
        connections: usize,
        stats: LevelStats,
    ) -> Self {
        let h = &stats.latency_us;
        let latency_us = if h.is_empty() {
            LatencySummary::default()
        } else {
            LatencySummary {
                min: h.min(),
                mean: (h.mean() * 10.0).round() / 10.0,
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p95: h.value_at_quantile(0.95),
                p99: h.value_at_quantile(0.99),
                max: h.max(),
            }
        };
        let secs = stats.window.as_secs_f64();
        let throughput = stats.ok as f64 / secs;
        Self {
            url: url.to_string(),
            model: opts.model.clone(),
            model_version: opts.version.clone(),
            concurrency,
            connections,
            threads: super::worker::thread_count(opts, connections),
            batch: opts.batch,
            routing_keys: opts.routing_keys,
            duration_secs: secs,
            warmup_secs: opts.warmup.as_secs_f64(),
            requests: stats.ok,
            error_count: stats.errors.values().sum(),
            errors: stats.errors,
            error_sample: stats.error_sample,
            throughput_rps: (throughput * 10.0).round() / 10.0,
            inferences_per_sec: (throughput * opts.batch as f64 * 10.0).round() / 10.0,
            latency_us,
            versions: stats.versions,
        }
    }
}

fn join_counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Multi-line summary of one level, like `perf_analyzer`'s per-level block.
impl fmt::Display for PerfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        let keys = if self.routing_keys > 0 {
            format!(", {} routing keys", self.routing_keys)
        } else {
            String::new()
        };
        writeln!(
            f,
            "  concurrency {} ({} conn, batch {}{keys}): {} requests in {:.1}s, {} errors",
            self.concurrency,
            self.connections,
            self.batch,
            self.requests,
            self.duration_secs,
            self.error_count
        )?;
        writeln!(
            f,
            "    throughput: {:.1} req/s ({:.1} infer/s)",
            self.throughput_rps, self.inferences_per_sec
        )?;
        writeln!(
            f,
            "    latency us: p50 {} p90 {} p95 {} p99 {} max {} (mean {:.1})",
            l.p50, l.p90, l.p95, l.p99, l.max, l.mean
        )?;
        write!(f, "    versions: {}", join_counts(&self.versions))?;
        if !self.errors.is_empty() {
            write!(f, "\n    errors: {}", join_counts(&self.errors))?;
            if let Some(sample) = &self.error_sample {
                write!(f, " (first: {sample})")?;
            }
        }
        Ok(())
    }
}

/// One table with a row per level.
pub fn format_table(reports: &[PerfReport]) -> String {
    let mut out = format!(
        "{:>11} {:>5} {:>5} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
        "concurrency",
        "conn",
        "batch",
        "requests",
        "req/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "max us",
        "errors",
        "versions"
    );
    for r in reports {
        let l = &r.latency_us;
        out.push_str(&format!(
            "{:>11} {:>5} {:>5} {:>10} {:>12.1} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
            r.concurrency,
            r.connections,
            r.batch,
            r.requests,
            r.throughput_rps,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            r.error_count,
            join_counts(&r.versions)
        ));
    }
    out
}
