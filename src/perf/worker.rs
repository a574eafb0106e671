//! The closed-loop tasks of one concurrency level and the merging of their statistics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::grpc::pb;
use crate::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

use super::{PerfError, PerfOptions, connect};

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

/// Runs `level` closed-loop tasks over `n_conn` connections to `url` (task `i` on connection
/// `i % n_conn`): warm-up first, then the measurement window. Returns the merged statistics of the
/// window. Every task cycles through all of `requests` (not empty), task `i` starting at
/// `i × len / level`, so that the tasks send different keys at any moment.
///
/// The work is split over `opts.threads` threads (at most one per connection), each with a
/// single-threaded runtime of its own that owns its connections and their tasks: nothing crosses
/// threads per request, so the client costs less CPU per request than on a shared work-stealing
/// runtime. The window starts once every thread has connected.
pub async fn run_level(
    url: &str,
    requests: &[pb::ModelInferRequest],
    level: usize,
    n_conn: usize,
    opts: &PerfOptions,
) -> Result<LevelStats, PerfError> {
    assert!(!requests.is_empty(), "run_level needs a request");
    assert!(n_conn >= 1 && n_conn <= level, "1 ≤ connections ≤ level");
    let requests: Arc<[pb::ModelInferRequest]> = requests.into();
    let shards = thread_count(opts, n_conn);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(shards);
    let mut windows = Vec::with_capacity(shards);
    let mut results = Vec::with_capacity(shards);
    for shard in 0..shards {
        let (window_tx, window_rx) = oneshot::channel::<(Instant, Instant)>();
        let (done_tx, done_rx) = oneshot::channel();
        windows.push(window_tx);
        results.push(done_rx);
        let shard_run = Shard {
            url: url.to_string(),
            opts: opts.clone(),
            requests: Arc::clone(&requests),
            connections: (0..n_conn).filter(|c| c % shards == shard).collect(),
            tasks: (0..level)
                .filter(|i| (i % n_conn) % shards == shard)
                .collect(),
            level,
            n_conn,
        };
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("perf-{shard}"))
            .spawn(move || {
                let _ = done_tx.send(shard_run.run(ready, window_rx));
            })
            .map_err(|e| PerfError::Thread(e.to_string()))?;
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < shards && ready_rx.recv().await.is_some() {
        connected += 1;
    }
    if connected == shards {
        let window_start = Instant::now() + opts.warmup;
        for window in windows {
            let _ = window.send((window_start, window_start + opts.duration));
        }
    } else {
        // A thread could not connect: the others stop without running.
        drop(windows);
    }
    let mut total = LevelStats::new(opts.duration);
    let mut failure = None;
    for result in results {
        match result.await {
            Ok(Some(Ok(stats))) => total.merge(stats),
            Ok(Some(Err(e))) => failure = failure.or(Some(e)),
            Ok(None) => {}
            Err(_) => {
                failure = failure.or(Some(PerfError::Thread("a load thread panicked".into())));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// The threads a level with `n_conn` connections runs on: `opts.threads`, at most one per
/// connection, at least one.
pub(crate) fn thread_count(opts: &PerfOptions, n_conn: usize) -> usize {
    opts.threads.clamp(1, n_conn.max(1))
}

/// One thread's share of a level: its connections and the tasks on them.
struct Shard {
    url: String,
    opts: PerfOptions,
    requests: Arc<[pb::ModelInferRequest]>,
    /// Indices (of `n_conn`) of the connections this thread opens.
    connections: Vec<usize>,
    /// Indices (of `level`) of the tasks this thread runs; task `i` uses connection `i % n_conn`.
    tasks: Vec<usize>,
    level: usize,
    n_conn: usize,
}

impl Shard {
    /// Connects, reports ready, waits for the window and runs the tasks. `None` when the window
    /// never came (another thread failed to connect).
    fn run(
        self,
        ready: mpsc::Sender<()>,
        window: oneshot::Receiver<(Instant, Instant)>,
    ) -> Option<Result<LevelStats, PerfError>> {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return Some(Err(PerfError::Thread(e.to_string()))),
        };
        rt.block_on(async move {
            let mut channels = Vec::with_capacity(self.connections.len());
            for _ in &self.connections {
                match connect(&self.url, &self.opts).await {
                    Ok(channel) => channels.push(channel),
                    Err(e) => return Some(Err(e)),
                }
            }
            let _ = ready.send(()).await;
            drop(ready);
            let (window_start, end) = window.await.ok()?;
            let mut tasks = tokio::task::JoinSet::new();
            for &i in &self.tasks {
                let conn = i % self.n_conn;
                let at = self
                    .connections
                    .iter()
                    .position(|&c| c == conn)
                    .expect("a task's connection belongs to its thread");
                let client = GrpcInferenceServiceClient::new(channels[at].clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                tasks.spawn(closed_loop(
                    client,
                    Arc::clone(&self.requests),
                    i * self.requests.len() / self.level,
                    window_start,
                    end,
                    self.opts.request_timeout,
                ));
            }
            let mut total = LevelStats::new(self.opts.duration);
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(stats) => total.merge(stats),
                    Err(e) => return Some(Err(PerfError::Task(e))),
                }
            }
            Some(Ok(total))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn threads_that_cannot_connect_end_the_level_with_the_connection_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut opts = PerfOptions::new(url.clone(), "simple");
        opts.threads = 2;
        opts.request_timeout = Duration::from_secs(2);
        let request = pb::ModelInferRequest::default();
        let err = run_level(&url, &[request], 4, 2, &opts).await.err();
        assert!(matches!(err, Some(PerfError::Connect { .. })), "{err:?}");
    }
}
