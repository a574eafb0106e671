//! Closed-loop load generator for the `GRPCInferenceService` protocol, in the spirit of `perf_analyzer`.
//!
//! For each requested concurrency level, `N` tasks each keep exactly one `ModelInfer` request in flight
//! (send, await the response, send again) for a warm-up period and then for a measurement window.
//! Only requests that *complete* inside the measurement window are counted, so throughput is
//! `completions / window` and the warm-up never leaks into the statistics.
//!
//! Connections: the tasks of one level share a small, fixed number of HTTP/2 connections
//! (`PerfOptions::connections`, default 4). Task `i` uses connection `i % connections`; each connection
//! is a separately connected [`tonic::transport::Channel`], opened before the warm-up starts.
//! Threads: the connections are split over `PerfOptions::threads` threads (default one per core,
//! at most one per connection), each running a single-threaded runtime that owns its connections
//! and their tasks, so that nothing crosses threads per request.
//!
//! The request is built once per run from the model's `ModelMetadata` (see [`request`]) and cloned for
//! each call, so the client spends as little CPU per request as possible. With
//! [`PerfOptions::routing_keys`] `N > 0`, `N` requests are built up front, each carrying the
//! `routing_key` request parameter `user-0` .. `user-{N-1}`, and every task cycles through them
//! (from its own offset), so a model with a sticky traffic policy routes them by key.

mod cli;
pub mod report;
pub mod request;
mod worker;

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::grpc::pb;
use crate::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

pub use cli::{ConcurrencyRange, PerfArgs, main_with, parse_concurrency_range};
pub use report::{LatencySummary, PerfReport, format_table};

/// Everything one `perf` run needs. Build it directly or from [`PerfArgs`].
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// Server address, e.g. `http://127.0.0.1:8001`. A bare `host:port` gets `http://` prepended.
    pub url: String,
    /// Name of the model to call.
    pub model: String,
    /// Model version to request; `None` sends an empty version and lets the server choose.
    pub version: Option<String>,
    /// Concurrency levels to measure, in order. Each level is a separate warm-up + measurement.
    pub concurrency: Vec<usize>,
    /// Length of the measurement window of each level.
    pub duration: Duration,
    /// Warm-up before each level's measurement window; requests completing in it are not counted.
    pub warmup: Duration,
    /// Batch size: replaces the first variable (`-1`) dimension of each input shape.
    pub batch: usize,
    /// Maximum number of HTTP/2 connections per level (tasks share them round-robin). At least 1.
    pub connections: usize,
    /// Full shapes (as sent, batch dimension included) for inputs whose metadata has variable
    /// dimensions; inputs not listed here use the `-1` → `batch` (first dim) / `1` (others) rule.
    pub shapes: HashMap<String, Vec<i64>>,
    /// Deadline of a single request. A request exceeding it counts as a `DeadlineExceeded` error, and
    /// it bounds how long a level can run past its measurement window.
    pub request_timeout: Duration,
    /// Client threads, each with a single-threaded runtime that owns its share of the connections
    /// and their tasks (at most one thread per connection). At least 1.
    pub threads: usize,
    /// Number of distinct routing keys (`user-0` .. `user-{N-1}`) sent as the `routing_key`
    /// request parameter, cycled through by every task; 0 sends none.
    pub routing_keys: usize,
}

/// Upper bound on [`PerfOptions::routing_keys`] (each key is one prebuilt request).
pub const MAX_ROUTING_KEYS: usize = 1 << 20;

impl PerfOptions {
    /// Options with `perf_analyzer`-like defaults for `model` at `url`: concurrency 1, 5 s measurement,
    /// 1 s warm-up, batch 1, 4 connections, 10 s request deadline, one client thread per core, no
    /// routing keys.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            version: None,
            concurrency: vec![1],
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            batch: 1,
            connections: 4,
            shapes: HashMap::new(),
            request_timeout: Duration::from_secs(10),
            threads: default_threads(),
            routing_keys: 0,
        }
    }
}

/// One client thread per core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a `perf` run could not produce reports. Per-request failures during the load are not errors:
/// they are counted in [`PerfReport::errors`].
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The options are inconsistent (empty concurrency list, zero batch, ...).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The URL could not be turned into an endpoint.
    #[error("invalid url {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Opening an HTTP/2 connection failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered `ServerReady` with `ready: false`.
    #[error("server at {0} is not ready")]
    NotReady(String),
    /// A setup RPC (`ServerReady`, `ModelMetadata`) failed.
    #[error("{rpc} failed: {status}")]
    Rpc {
        rpc: &'static str,
        #[source]
        status: tonic::Status,
    },
    /// The model's metadata cannot be turned into a request.
    #[error("cannot build a request for input {input:?}: {reason}")]
    Input { input: String, reason: String },
    /// A load task panicked or was cancelled.
    #[error("load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A load thread could not start, or panicked.
    #[error("load thread failed: {0}")]
    Thread(String),
    /// Writing the JSON report failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Serialising the reports failed.
    #[error("cannot serialise reports: {0}")]
    Json(#[from] serde_json::Error),
}

/// Normalises a user-given address into a URI with a scheme.
fn normalise_url(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Opens one HTTP/2 connection to `url`.
pub(crate) async fn connect(url: &str, opts: &PerfOptions) -> Result<Channel, PerfError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| PerfError::InvalidUrl {
            url: url.to_string(),
            source,
        })?
        .tcp_nodelay(true)
        .connect_timeout(opts.request_timeout);
    endpoint
        .connect()
        .await
        .map_err(|source| PerfError::Connect {
            url: url.to_string(),
            source,
        })
}

fn validate(opts: &PerfOptions) -> Result<(), PerfError> {
    let bad = |m: &str| Err(PerfError::InvalidOptions(m.to_string()));
    if opts.concurrency.is_empty() {
        return bad("no concurrency level given");
    }
    if opts.concurrency.contains(&0) {
        return bad("concurrency levels must be at least 1");
    }
    if opts.batch == 0 {
        return bad("batch size must be at least 1");
    }
    if opts.threads == 0 {
        return bad("threads must be at least 1");
    }
    if opts.connections == 0 {
        return bad("connections must be at least 1");
    }
    if opts.duration.is_zero() {
        return bad("measurement duration must be positive");
    }
    if opts.request_timeout.is_zero() {
        return bad("request timeout must be positive");
    }
    if opts.routing_keys > MAX_ROUTING_KEYS {
        return bad(&format!("routing keys: at most {MAX_ROUTING_KEYS}"));
    }
    Ok(())
}

/// Awaits a setup RPC with the request deadline, so that a server that never answers cannot hang us.
async fn setup_rpc<T>(
    rpc: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, PerfError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(PerfError::Rpc { rpc, status }),
        Err(_) => Err(PerfError::Rpc {
            rpc,
            status: tonic::Status::deadline_exceeded("no response"),
        }),
    }
}

/// Checks readiness, fetches the model's metadata and builds the requests the tasks will send
/// (one, or one per routing key).
async fn prepare(url: &str, opts: &PerfOptions) -> Result<Vec<pb::ModelInferRequest>, PerfError> {
    let mut client = GrpcInferenceServiceClient::new(connect(url, opts).await?);
    let t = opts.request_timeout;
    match setup_rpc(
        "ServerReady",
        t,
        client.server_ready(pb::ServerReadyRequest {}),
    )
    .await
    {
        Ok(r) if !r.ready => return Err(PerfError::NotReady(url.to_string())),
        Ok(_) => {}
        // A server without ServerReady can still be measured.
        Err(PerfError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => {}
        Err(e) => return Err(e),
    }
    let meta_request = pb::ModelMetadataRequest {
        name: opts.model.clone(),
        version: opts.version.clone().unwrap_or_default(),
    };
    let meta = setup_rpc("ModelMetadata", t, client.model_metadata(meta_request)).await?;
    let base = request::build_request(&meta, opts)?;
    Ok(request::keyed_requests(base, opts.routing_keys))
}

/// Runs every concurrency level of `opts` in order and returns one report per level.
///
/// Progress lines go to stderr. The total time is bounded by
/// `levels × (warm-up + duration + request_timeout)` plus connection setup.
pub async fn run(opts: &PerfOptions) -> Result<Vec<PerfReport>, PerfError> {
    validate(opts)?;
    let url = normalise_url(&opts.url);
    let requests = prepare(&url, opts).await?;
    let mut reports = Vec::with_capacity(opts.concurrency.len());
    for &level in &opts.concurrency {
        eprintln!(
            "perf: {} concurrency {level}: warm-up {:.1}s, measuring {:.1}s",
            opts.model,
            opts.warmup.as_secs_f64(),
            opts.duration.as_secs_f64()
        );
        let n_conn = opts.connections.min(level);
        let stats = worker::run_level(&url, &requests, level, n_conn, opts).await?;
        let report = PerfReport::from_stats(&url, opts, level, n_conn, stats);
        eprintln!("{report}");
        reports.push(report);
    }
    Ok(reports)
}
