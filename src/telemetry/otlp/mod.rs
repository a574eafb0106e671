//! Span export over OTLP/gRPC: the provider's span processor, in place of the SDK's batch
//! processor and `opentelemetry-otlp`'s exporter.
//!
//! Why our own: with every request traced, the SDK's pipeline cost the daemon about a quarter of
//! its throughput (docs/BENCHMARKS.md, "Tracing overhead"). Each finished span was moved through
//! a channel, regrouped and converted into freshly allocated protobuf structs on the export
//! thread, and the whole batch then encoded in one piece on a runtime thread, holding it for
//! milliseconds. Here each span is encoded once, into a thread-local buffer on the thread that
//! ends it, and appended to the open batch under a short lock. A batch is a run of ready-made
//! `ScopeSpans.spans` fields; the export thread wraps it in the request's few header bytes and
//! hands the bytes to tonic unchanged.
//!
//! Behaviour follows the SDK's batch processor and the OTLP exporter's environment variables:
//! - `OTEL_BSP_MAX_QUEUE_SIZE` spans wait at most (16,384 here), more are dropped and counted
//!   (a warning says how many); `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans per export (2,048 here,
//!   fewer when they reach [`MAX_EXPORT_BYTES`]);
//!   `OTEL_BSP_SCHEDULE_DELAY` ms between exports of a batch that is not full (5,000);
//!   `OTEL_BSP_EXPORT_TIMEOUT` ms that a flush waits (30,000).
//! - `OTEL_EXPORTER_OTLP_TRACES_HEADERS` / `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs,
//!   comma-separated, values percent-decoded, sent as gRPC metadata with every export.
//! - `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`: ms per export (10,000).
//!
//! A failed export drops its spans (as the SDK's exporter does, without retries) and is logged,
//! at most once per [`WARN_EVERY`] with the count since the last warning; requests never notice.

mod encode;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What became of the spans finished for export, over the process's life (every exporter it
/// has had): the receiver took them; dropped because the queue was full; lost to a failed
/// export or rejected by the receiver.
static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
static SPANS_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static SPANS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Span counts by outcome, for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    pub exported: u64,
    pub queue_full: u64,
    pub failed: u64,
}

/// The process-wide span counts.
pub fn span_counts() -> SpanCounts {
    SpanCounts {
        exported: SPANS_EXPORTED.load(Ordering::Relaxed),
        queue_full: SPANS_QUEUE_FULL.load(Ordering::Relaxed),
        failed: SPANS_FAILED.load(Ordering::Relaxed),
    }
}

/// How often a failing exporter logs (each warning counts the spans lost since the last).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Spans held for export and spans per export unless the environment says otherwise. The
/// SDK's defaults (2,048 and 512) drop spans once a daemon finishes more than ~30k spans a second
/// (three per request); these keep up with several times that, at up to ~5 MB of encoded spans.
pub const DEFAULT_QUEUE: usize = 16_384;
pub const DEFAULT_BATCH: usize = 2_048;

/// An export is sent once its spans reach this many bytes, whatever their number: half the
/// 4 MiB that gRPC servers (the OpenTelemetry Collector among them) accept by default, so that
/// spans with long attributes or error messages are not refused as one oversized request.
pub const MAX_EXPORT_BYTES: usize = 2 * 1024 * 1024;

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    pub flush_timeout: Duration,
    pub export_timeout: Duration,
    pub headers: MetadataMap,
}

impl Settings {
    /// Settings for `endpoint` (an `http://host:port` URL) from the `OTEL_*` environment.
    pub fn from_env(endpoint: &str) -> Result<Settings, String> {
        let uri: tonic::codegen::http::Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => {}
            Some("https") => {
                return Err(
                    "https needs TLS, which this build does not include: use http://, e.g. to a \
                     collector on the same host or pod"
                        .into(),
                );
            }
            _ => return Err("expected http://host:port".into()),
        }
        let ms = |names: &[&str], default: u64| -> Result<Duration, String> {
            Ok(Duration::from_millis(number(names, default)?))
        };
        let max_queue = number(&["OTEL_BSP_MAX_QUEUE_SIZE"], DEFAULT_QUEUE as u64)? as usize;
        let max_batch = number(&["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], DEFAULT_BATCH as u64)? as usize;
        if max_queue == 0 || max_batch == 0 {
            return Err(
                "OTEL_BSP_MAX_QUEUE_SIZE and OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be at \
                        least 1"
                    .into(),
            );
        }
        let headers = first_env(&[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]);
        Ok(Settings {
            endpoint: endpoint.to_string(),
            max_queue,
            max_batch: max_batch.min(max_queue),
            delay: ms(&["OTEL_BSP_SCHEDULE_DELAY"], 5_000)?,
            flush_timeout: ms(&["OTEL_BSP_EXPORT_TIMEOUT"], 30_000)?,
            export_timeout: ms(
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ],
                10_000,
            )?,
            headers: match headers {
                Some((name, value)) => parse_headers(&value).map_err(|e| format!("{name}: {e}"))?,
                None => MetadataMap::new(),
            },
        })
    }
}

/// The first of `names` that is set (and not empty), with its name.
fn first_env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_string(), v))
    })
}

fn number(names: &[&str], default: u64) -> Result<u64, String> {
    match first_env(names) {
        None => Ok(default),
        Some((name, value)) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a whole number")),
    }
}

/// `key=value[,key=value...]`, values percent-decoded, as the OTLP exporter's headers variables
/// are written.
pub fn parse_headers(text: &str) -> Result<MetadataMap, String> {
    let mut map = MetadataMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("header '{pair}' is not key=value"))?;
        let name = name.trim().to_ascii_lowercase();
        let key = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| format!("'{name}' is not a valid gRPC metadata key"))?;
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("header '{name}' has a malformed %-escape or is not UTF-8"))?;
        let value = MetadataValue::try_from(value.as_str())
            .map_err(|_| format!("header '{name}' has a value that gRPC metadata cannot carry"))?;
        map.append(key, value);
    }
    Ok(map)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An instrumentation scope's encoding, shared by its batches.
#[derive(Debug)]
struct Scope {
    scope: InstrumentationScope,
    encoded: Vec<u8>,
    schema: String,
}

#[derive(Debug)]
struct Batch {
    scope: Arc<Scope>,
    spans: usize,
    /// `ScopeSpans.spans` fields, one per span.
    buf: Vec<u8>,
}

#[derive(Debug, Default)]
struct EncodedResource {
    encoded: Vec<u8>,
    schema: String,
}

#[derive(Debug, Default)]
struct State {
    resource: Arc<EncodedResource>,
    /// The batch being filled for each scope seen so far.
    open: Vec<(Arc<Scope>, Option<Batch>)>,
    /// Full batches (and, at a flush or the timer, the open ones), oldest first.
    ready: VecDeque<Batch>,
    /// Spans accepted and not yet exported (or given up on).
    queued: usize,
    dropped: u64,
    flush_asked: u64,
    flushed: u64,
    stopping: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread.
    work: Condvar,
    /// Wakes those waiting for a flush or the stop.
    progress: Condvar,
    settings: Settings,
}

impl Shared {
    /// Nothing queued yet.
    fn new(settings: Settings) -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (for at most `timeout`) until the export thread has brought about `done`.
    fn wait(
        &self,
        state: MutexGuard<'_, State>,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> OTelSdkResult {
        let (_state, waited) = self
            .progress
            .wait_timeout_while(state, timeout, |s| !done(s))
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() {
            Err(OTelSdkError::Timeout(timeout))
        } else {
            Ok(())
        }
    }

    /// Queues one encoded span; false when the queue is full (or stopped) and it was dropped.
    fn push(&self, scope: &InstrumentationScope, span: &[u8]) -> bool {
        let mut state = self.lock();
        if state.stopping || state.queued >= self.settings.max_queue {
            state.dropped += 1;
            SPANS_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.queued += 1;
        let index = match state.open.iter().position(|(s, _)| s.scope == *scope) {
            Some(index) => index,
            None => {
                let mut encoded = Vec::new();
                encode::scope(&mut encoded, scope);
                let scope = Scope {
                    scope: scope.clone(),
                    encoded,
                    schema: scope.schema_url().unwrap_or("").to_string(),
                };
                state.open.push((Arc::new(scope), None));
                state.open.len() - 1
            }
        };
        let max_batch = self.settings.max_batch;
        let (scope, open) = &mut state.open[index];
        let batch = open.get_or_insert_with(|| Batch {
            scope: Arc::clone(scope),
            spans: 0,
            buf: Vec::with_capacity(max_batch.min(1024) * 320),
        });
        encode::span_field(&mut batch.buf, span);
        batch.spans += 1;
        if batch.spans >= max_batch || batch.buf.len() >= MAX_EXPORT_BYTES {
            let full = open.take().expect("the batch just filled");
            state.ready.push_back(full);
            drop(state);
            self.work.notify_one();
        }
        true
    }
}

thread_local! {
    /// Where a span is encoded before it is appended to a batch (reused, so no allocation).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The span processor: encodes finished, sampled spans and exports them from a thread of its
/// own. Stops (exporting what it holds) on `shutdown`; dropping it stops it without waiting.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Exporter {
    /// Starts exporting to `settings.endpoint`. Must be called inside the tokio runtime, which
    /// runs the gRPC connection; the export thread waits on it.
    pub fn start(settings: Settings) -> Result<Exporter, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the trace exporter needs the tokio runtime".to_string())?;
        let channel = {
            let _enter = runtime.enter();
            Endpoint::from_shared(settings.endpoint.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(settings.export_timeout)
                .tcp_nodelay(true)
                .connect_lazy()
        };
        let sender = Sender {
            channel,
            headers: settings.headers.clone(),
            timeout: settings.export_timeout,
        };
        let shared = Arc::new(Shared::new(settings));
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || export_loop(&shared, &sender, &runtime))
                .map_err(|e| format!("cannot start the trace export thread: {e}"))?
        };
        Ok(Exporter {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Spans dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    fn stop(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = self.shared.lock();
        if state.stopping
            && self
                .worker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.stopping = true;
        self.shared.work.notify_one();
        self.shared.wait(state, timeout, |s| s.stopped)?;
        if let Some(worker) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = worker.join();
        }
        Ok(())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_one();
    }
}

impl SpanProcessor for Exporter {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode::span(scratch, &span);
            self.shared.push(&span.instrumentation_scope, scratch);
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        let timeout = self.shared.settings.flush_timeout;
        let mut state = self.shared.lock();
        if state.stopped {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.flush_asked += 1;
        let target = state.flush_asked;
        self.shared.work.notify_one();
        self.shared
            .wait(state, timeout, |s| s.flushed >= target || s.stopped)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut encoded = Vec::new();
        encode::resource(&mut encoded, resource);
        self.shared.lock().resource = Arc::new(EncodedResource {
            encoded,
            schema: resource.schema_url().unwrap_or("").to_string(),
        });
    }
}

/// The export thread: waits for a full batch, a flush, the timer or the stop; sends what is
/// ready, one request per batch; repeats until stopped.
fn export_loop(shared: &Shared, sender: &Sender, runtime: &tokio::runtime::Handle) {
    let delay = shared.settings.delay;
    let mut deadline = Instant::now() + delay;
    let mut report = Report::default();
    loop {
        let (batches, resource, flush_to, stop, all) = {
            let mut state = shared.lock();
            while state.ready.is_empty() && state.flush_asked == state.flushed && !state.stopping {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = shared
                    .work
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Everything, the open batches too, unless only full batches woke the thread.
            let all =
                state.stopping || state.flush_asked != state.flushed || Instant::now() >= deadline;
            if all {
                let State { open, ready, .. } = &mut *state;
                ready.extend(open.iter_mut().filter_map(|(_, batch)| batch.take()));
            }
            let batches: Vec<Batch> = state.ready.drain(..).collect();
            (
                batches,
                Arc::clone(&state.resource),
                state.flush_asked,
                state.stopping,
                all,
            )
        };
        for batch in batches {
            let body = encode::export_request(
                &resource.encoded,
                &resource.schema,
                &batch.scope.encoded,
                &batch.scope.schema,
                &batch.buf,
            );
            drop(batch.buf);
            let result = runtime.block_on(sender.send(body));
            report.export(&shared.settings.endpoint, batch.spans, result);
            shared.lock().queued -= batch.spans;
        }
        // The timer runs from the last time everything went, so batches that fill now and then
        // do not hold back the open ones (of a quieter scope) for good.
        if all {
            deadline = Instant::now() + delay;
        }
        let mut state = shared.lock();
        report.dropped(state.dropped);
        state.flushed = flush_to;
        if stop {
            state.stopped = true;
        }
        drop(state);
        shared.progress.notify_all();
        if stop {
            return;
        }
    }
}

/// What the export thread has logged, so a failing collector or a full queue is reported at
/// most once per [`WARN_EVERY`].
#[derive(Debug, Default)]
struct Report {
    failed_spans: u64,
    failing: bool,
    last_warned: Option<Instant>,
    dropped_reported: u64,
    last_dropped_warned: Option<Instant>,
    last_rejected_warned: Option<Instant>,
}

fn due(last: Option<Instant>) -> bool {
    last.is_none_or(|at| at.elapsed() >= WARN_EVERY)
}

impl Report {
    fn export(&mut self, endpoint: &str, spans: usize, result: Result<Rejected, String>) {
        let spans = spans as u64;
        match &result {
            Ok(Some((rejected, _))) => {
                let rejected = (*rejected).clamp(0, spans as i64) as u64;
                SPANS_EXPORTED.fetch_add(spans - rejected, Ordering::Relaxed);
                SPANS_FAILED.fetch_add(rejected, Ordering::Relaxed);
            }
            Ok(None) => {
                SPANS_EXPORTED.fetch_add(spans, Ordering::Relaxed);
            }
            Err(_) => {
                SPANS_FAILED.fetch_add(spans, Ordering::Relaxed);
            }
        }
        match result {
            Ok(rejected) => {
                if self.failing {
                    // The spans lost since the last warning, which would otherwise go unsaid.
                    tracing::info!(
                        endpoint,
                        spans_lost = self.failed_spans,
                        "trace export is working again"
                    );
                    self.failing = false;
                    self.failed_spans = 0;
                    self.last_warned = None;
                }
                if let Some((count, why)) = rejected
                    && due(self.last_rejected_warned)
                {
                    self.last_rejected_warned = Some(Instant::now());
                    tracing::warn!(
                        endpoint,
                        rejected = count,
                        reason = %why,
                        "the trace receiver rejected spans"
                    );
                }
            }
            Err(error) => {
                self.failing = true;
                self.failed_spans += spans;
                if due(self.last_warned) {
                    tracing::warn!(
                        endpoint,
                        %error,
                        spans_lost = self.failed_spans,
                        "trace export failed; its spans are dropped"
                    );
                    self.failed_spans = 0;
                    self.last_warned = Some(Instant::now());
                }
            }
        }
    }

    fn dropped(&mut self, dropped: u64) {
        if dropped > self.dropped_reported && due(self.last_dropped_warned) {
            tracing::warn!(
                spans_dropped = dropped - self.dropped_reported,
                "the trace export queue was full; spans were dropped"
            );
            self.dropped_reported = dropped;
            self.last_dropped_warned = Some(Instant::now());
        }
    }
}

/// What a receiver rejected of an export it answered: the span count and its reason.
type Rejected = Option<(i64, String)>;

/// Sends export requests on one gRPC channel.
#[derive(Debug)]
struct Sender {
    channel: Channel,
    headers: MetadataMap,
    timeout: Duration,
}

impl Sender {
    /// Sends one encoded `ExportTraceServiceRequest`: Ok with the receiver's count and reason
    /// when it rejected some of the spans.
    async fn send(&self, body: Vec<u8>) -> Result<Rejected, String> {
        let call = async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready().await.map_err(|e| format!("{e}"))?;
            let mut request = tonic::Request::new(body);
            *request.metadata_mut() = self.headers.clone();
            request.set_timeout(self.timeout);
            grpc.unary(request, PathAndQuery::from_static(EXPORT_PATH), RawCodec)
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
        };
        let response = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??
            .into_inner();
        Ok(response.partial_success.and_then(|p| {
            (p.rejected_spans != 0 || !p.error_message.is_empty())
                .then_some((p.rejected_spans, p.error_message))
        }))
    }
}

/// `ExportTraceServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

/// `ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// Sends an already encoded request as it is; decodes the response with prost.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportResponse>, tonic::Status> {
        <ExportResponse as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::trace::{
        Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Array, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1 as proto;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    use super::*;

    /// Held by the tests that export, which move the process-wide span counts.
    static EXPORTING: Mutex<()> = Mutex::new(());

    /// For a test that exports: its turn at the span counts, and a runtime for the channel.
    fn exporting() -> (MutexGuard<'static, ()>, tokio::runtime::Runtime) {
        let turn = EXPORTING.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        (turn, runtime)
    }

    /// Keeps every finished span.
    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Capture {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// Spans using every field the encoder writes: each kind of attribute value, events, a
    /// remote link with a trace state, both statuses, local and remote parents.
    fn spans() -> Vec<SpanData> {
        let capture = Capture::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(capture.clone())
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("scope-under-test")
                .with_version("1.2.3")
                .with_attributes([KeyValue::new("scope.attr", 7)])
                .build(),
        );
        let caller = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        let mut server = tracer
            .span_builder("ModelInfer")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("model", "simple"),
                KeyValue::new("empty", ""),
                KeyValue::new("version", 0i64),
                KeyValue::new("negative", -42i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("ok", false),
                KeyValue::new("sizes", Value::Array(Array::I64(vec![1, 300, -1]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("weights", Value::Array(Array::F64(vec![0.5, 2.0]))),
                KeyValue::new(
                    "arms",
                    Value::Array(Array::String(vec![StringValue::from("a"), "b".into()])),
                ),
            ])
            .with_links(vec![Link::new(
                caller.clone(),
                vec![KeyValue::new("link.attr", "x")],
                0,
            )])
            .start_with_context(
                &tracer,
                &Context::new().with_remote_span_context(caller.clone()),
            );
        server.add_event("routed", vec![KeyValue::new("arm", "canary")]);
        server.add_event("no attributes", vec![]);
        server.set_status(Status::error("model 'simple' failed: boom"));
        let parent = Context::new().with_span(server);
        let mut child = tracer
            .span_builder(Cow::Borrowed("queue"))
            .start_with_context(&tracer, &parent);
        child.set_status(Status::Ok);
        drop(child);
        parent.span().end();
        let spans = capture.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2);
        spans
    }

    #[test]
    fn spans_decode_as_the_otlp_crate_converts_them() {
        for data in spans() {
            let mut buf = Vec::new();
            encode::span(&mut buf, &data);
            let decoded = proto::Span::decode(buf.as_slice()).expect("a valid OTLP Span");
            let expected = proto::Span::from(data.clone());
            assert_eq!(decoded, expected, "{}", data.name);
        }
    }

    #[test]
    fn an_export_request_carries_resource_scope_and_every_span() {
        let spans = spans();
        let resource = Resource::builder()
            .with_service_name("switchyard")
            .with_schema_url([KeyValue::new("host", "h")], "https://schema/1")
            .build();
        let mut encoded_resource = Vec::new();
        encode::resource(&mut encoded_resource, &resource);
        let scope = &spans[0].instrumentation_scope;
        let mut encoded_scope = Vec::new();
        encode::scope(&mut encoded_scope, scope);
        let mut batch = Vec::new();
        for span in &spans {
            let mut buf = Vec::new();
            encode::span(&mut buf, span);
            encode::span_field(&mut batch, &buf);
        }
        let body = encode::export_request(
            &encoded_resource,
            "https://schema/1",
            &encoded_scope,
            "",
            &batch,
        );
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid request");
        assert_eq!(request.resource_spans.len(), 1);
        let rs = &request.resource_spans[0];
        assert_eq!(rs.schema_url, "https://schema/1");
        let attrs: Vec<(String, String)> = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                    other => panic!("{}: {other:?}", kv.key),
                },
            )
            .collect();
        assert!(
            attrs.contains(&("service.name".into(), "switchyard".into())),
            "{attrs:?}"
        );
        assert!(attrs.contains(&("host".into(), "h".into())), "{attrs:?}");
        assert_eq!(rs.scope_spans.len(), 1);
        let ss = &rs.scope_spans[0];
        let decoded_scope = ss.scope.as_ref().unwrap();
        assert_eq!(decoded_scope.name, "scope-under-test");
        assert_eq!(decoded_scope.version, "1.2.3");
        assert_eq!(decoded_scope.attributes.len(), 1);
        let expected: Vec<proto::Span> = spans.into_iter().map(proto::Span::from).collect();
        assert_eq!(ss.spans, expected);
    }

    fn settings(max_queue: usize, max_batch: usize) -> Settings {
        Settings {
            endpoint: "http://127.0.0.1:1".into(),
            max_queue,
            max_batch,
            delay: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
            headers: MetadataMap::new(),
        }
    }

    #[test]
    fn full_batches_are_handed_over_and_a_full_queue_drops_and_counts() {
        let shared = Shared::new(settings(5, 2));
        let a = InstrumentationScope::builder("a").build();
        let b = InstrumentationScope::builder("b").build();
        let pushed: Vec<bool> = [&a, &a, &b, &a, &b, &a, &a]
            .into_iter()
            .map(|scope| shared.push(scope, b"span"))
            .collect();
        assert_eq!(pushed, [true, true, true, true, true, false, false]);
        let state = shared.lock();
        assert_eq!((state.queued, state.dropped), (5, 2));
        let ready: Vec<(&str, usize)> = state
            .ready
            .iter()
            .map(|batch| (batch.scope.scope.name(), batch.spans))
            .collect();
        assert_eq!(ready, [("a", 2), ("b", 2)]);
        let open: Vec<(&str, Option<usize>)> = state
            .open
            .iter()
            .map(|(scope, batch)| (scope.scope.name(), batch.as_ref().map(|b| b.spans)))
            .collect();
        assert_eq!(open, [("a", Some(1)), ("b", None)]);
        // Each span is one `ScopeSpans.spans` field: key, length, the bytes.
        assert_eq!(state.ready[0].buf, b"\x12\x04span\x12\x04span");
    }

    #[test]
    fn a_batch_is_handed_over_once_its_spans_reach_the_byte_limit() {
        let shared = Shared::new(settings(100, 50));
        let scope = InstrumentationScope::builder("a").build();
        let big = vec![7u8; MAX_EXPORT_BYTES / 3];
        for _ in 0..4 {
            assert!(shared.push(&scope, &big));
        }
        let state = shared.lock();
        let ready: Vec<usize> = state.ready.iter().map(|b| b.spans).collect();
        assert_eq!(
            ready,
            [3],
            "three spans reach the limit, far below 50 spans"
        );
        assert_eq!(state.open[0].1.as_ref().map(|b| b.spans), Some(1));
    }

    #[test]
    fn spans_of_a_failed_export_are_counted_as_failed() {
        let (_exporting, runtime) = exporting();
        let _enter = runtime.enter();
        // Nothing listens on port 1 of the loopback: the connection is refused.
        let exporter = Exporter::start(settings(100, 10)).unwrap();
        let before = span_counts();
        for span in spans().into_iter().cycle().take(3) {
            exporter.on_end(span);
        }
        exporter.force_flush().unwrap();
        let after = span_counts();
        assert_eq!(after.failed - before.failed, 3);
        assert_eq!(after.exported, before.exported);
        exporter
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn a_batch_that_does_not_fill_goes_after_the_schedule_delay() {
        let (_exporting, runtime) = exporting();
        let (addr, requests) = runtime.block_on(receiver(0));
        let _enter = runtime.enter();
        let exporter = Exporter::start(Settings {
            endpoint: format!("http://{addr}"),
            delay: Duration::from_millis(50),
            ..settings(100, 10)
        })
        .unwrap();
        let started = Instant::now();
        exporter.on_end(spans()[1].clone());
        // No flush: the timer sends the batch of one.
        while requests.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the span did not go"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            requests.lock().unwrap()[0].resource_spans[0].scope_spans[0]
                .spans
                .len(),
            1
        );
        exporter
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn export_resumes_when_the_receiver_comes_up() {
        let (_exporting, runtime) = exporting();
        let _enter = runtime.enter();
        // A port that was free a moment ago, with nothing listening on it yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let exporter = Exporter::start(Settings {
            endpoint: format!("http://127.0.0.1:{port}"),
            ..settings(100, 10)
        })
        .unwrap();
        let spans = spans();
        let before = span_counts();
        exporter.on_end(spans[0].clone());
        exporter.force_flush().unwrap();
        assert_eq!(span_counts().failed - before.failed, 1);

        let (_, requests) = runtime.block_on(receiver(port));
        exporter.on_end(spans[1].clone());
        exporter.force_flush().unwrap();
        let got = requests.lock().unwrap().clone();
        assert_eq!(
            got.len(),
            1,
            "the span ended after the receiver came up arrives"
        );
        assert_eq!(
            got[0].resource_spans[0].scope_spans[0].spans[0].name,
            "ModelInfer"
        );
        exporter
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn headers_are_key_value_pairs_with_percent_escapes() {
        let map = parse_headers(" Authorization=Bearer%20abc , x-tenant=a%2Cb,,").unwrap();
        assert_eq!(map.get("authorization").unwrap(), "Bearer abc");
        assert_eq!(map.get("x-tenant").unwrap(), "a,b");
        assert_eq!(map.len(), 2);
        for (bad, why) in [
            ("novalue", "is not key=value"),
            ("bad key=1", "is not a valid gRPC metadata key"),
            ("k=%zz", "malformed %-escape"),
            ("k=%ff", "not UTF-8"),
            ("k=%0a", "cannot carry"),
        ] {
            let err = parse_headers(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn endpoints_must_be_plain_http_with_a_host() {
        assert_eq!(
            Settings::from_env("http://127.0.0.1:4317")
                .unwrap()
                .max_batch,
            DEFAULT_BATCH
        );
        for (bad, why) in [
            ("https://collector:4317", "needs TLS"),
            ("grpc://collector:4317", "expected http://host:port"),
            ("collector:4317", "expected http://host:port"),
        ] {
            let err = Settings::from_env(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_flush_exports_to_a_live_receiver_and_stop_ends_the_thread() {
        let (_exporting, runtime) = exporting();
        // A receiver that answers every export with OK and keeps what it got.
        let (addr, requests) = runtime.block_on(receiver(0));
        let _enter = runtime.enter();
        let exporter = Exporter::start(Settings {
            endpoint: format!("http://{addr}"),
            ..settings(100, 10)
        })
        .unwrap();
        let spans = spans();
        for span in spans.iter().cycle().take(25).cloned() {
            exporter.on_end(span);
        }
        exporter.force_flush().unwrap();
        let got = requests.lock().unwrap().clone();
        // Two full batches of 10 and the rest at the flush.
        let counts: Vec<usize> = got
            .iter()
            .map(|r| r.resource_spans[0].scope_spans[0].spans.len())
            .collect();
        assert_eq!(counts, [10, 10, 5]);
        assert_eq!(
            got[2].resource_spans[0].scope_spans[0].spans[0].name,
            "queue"
        );
        exporter
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
        assert!(matches!(
            exporter.force_flush(),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        exporter.on_end(spans[0].clone());
        assert_eq!(exporter.dropped(), 1, "a span after the stop is dropped");
    }

    type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

    /// A receiver on `port` of the loopback (0: any free port).
    async fn receiver(port: u16) -> (std::net::SocketAddr, Received) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
            TraceService, TraceServiceServer,
        };

        struct Keep(Received);
        #[tonic::async_trait]
        impl TraceService for Keep {
            async fn export(
                &self,
                request: tonic::Request<ExportTraceServiceRequest>,
            ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
                self.0.lock().unwrap().push(request.into_inner());
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Keep(Arc::clone(&received))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (addr, received)
    }
}
