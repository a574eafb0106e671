//! The closed-loop tasks of one concurrency level and the merging of their statistics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::grpc::pb;
use crate::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

use super::{PerfError, PerfOptions};

/// Highest latency the histograms track exactly (µs); slower requests are recorded at this value.
pub const MAX_TRACKED_US: u64 = 60_000_000;

/// Statistics of the measurement window of one level (all tasks merged).
pub struct LevelStats {
    /// Latencies of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Successful responses completed inside the window.
    pub ok: u64,
    /// Failed requests completed inside the window, by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Successful responses by the `model_version` the server reported.
    pub versions: BTreeMap<String, u64>,
    /// Message of the first failure counted, to show what went wrong.
    pub error_sample: Option<String>,
    /// Length of the measurement window.
    pub window: Duration,
}

impl LevelStats {
    fn new(window: Duration) -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
            versions: BTreeMap::new(),
            error_sample: None,
            window,
        }
    }

    fn merge(&mut self, other: LevelStats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.versions {
            *self.versions.entry(k).or_default() += v;
        }
        if self.error_sample.is_none() {
            self.error_sample = other.error_sample;
        }
    }
}

/// Adds one to `map[key]`, allocating the key only the first time it is seen.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// One task: keeps one request in flight until `end`, counting completions inside `[start, end)`.
/// It sends `requests` in turn (one per routing key, or a single one), beginning at `first`.
async fn closed_loop(
    mut client: GrpcInferenceServiceClient<Channel>,
    requests: Arc<[pb::ModelInferRequest]>,
    first: usize,
    window_start: Instant,
    end: Instant,
    timeout: Duration,
) -> LevelStats {
    let mut stats = LevelStats::new(end - window_start);
    let mut next = first % requests.len();
    while Instant::now() < end {
        let request = requests[next].clone();
        next += 1;
        if next == requests.len() {
            next = 0;
        }
        let sent = Instant::now();
        let result = tokio::time::timeout(timeout, client.model_infer(request)).await;
        let done = Instant::now();
        let counted = done >= window_start && done < end;
        match result {
            Ok(Ok(response)) if counted => {
                let us = (done - sent).as_micros().min(u128::from(MAX_TRACKED_US)) as u64;
                stats.latency_us.saturating_record(us.max(1));
                stats.ok += 1;
                bump(&mut stats.versions, &response.get_ref().model_version);
            }
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                if counted {
                    bump(&mut stats.errors, &format!("{:?}", status.code()));
                    if stats.error_sample.is_none() {
                        stats.error_sample =
                            Some(format!("{:?}: {}", status.code(), status.message()));
                    }
                }
                // A failing server can answer instantly: let the other tasks run.
                tokio::task::yield_now().await;
            }
            Err(_elapsed) => {
                if counted {
                    bump(&mut stats.errors, "DeadlineExceeded");
                    if stats.error_sample.is_none() {
                        stats.error_sample =
                            Some(format!("DeadlineExceeded: no response in {timeout:?}"));
                    }
                }
            }
        }
    }
    stats
}

/// Runs `level` closed-loop tasks over `channels` (task `i` on channel `i % channels.len()`):
/// warm-up first, then the measurement window. Returns the merged statistics of the window.
/// Every task cycles through all of `requests` (not empty), task `i` starting at
/// `i × len / level`, so that the tasks send different keys at any moment.
pub async fn run_level(
    channels: &[Channel],
    requests: &[pb::ModelInferRequest],
    level: usize,
    opts: &PerfOptions,
) -> Result<LevelStats, PerfError> {
    assert!(!requests.is_empty(), "run_level needs a request");
    let requests: Arc<[pb::ModelInferRequest]> = requests.into();
    let window_start = Instant::now() + opts.warmup;
    let end = window_start + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..level {
        let client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        tasks.spawn(closed_loop(
            client,
            requests.clone(),
            i * requests.len() / level,
            window_start,
            end,
            opts.request_timeout,
        ));
    }
    let mut total = LevelStats::new(opts.duration);
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined?);
    }
    Ok(total)
}
