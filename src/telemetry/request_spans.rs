//! What happened to a request after it was routed, as spans under its server span (see
//! `grpc::trace`, which makes that span the current OpenTelemetry context while the request
//! runs): a `queue` child for the wait, an `execute` child for its execution (the compute phases — input, infer, output — as its events
//! and attributes), and one `batch` span per executed batch, linked to every request span it served
//! (and each `execute` span linked back to its batch). The scheduler and the instances measure
//! these times anyway; the spans are made afterwards with the OpenTelemetry API and explicit
//! timestamps, so nothing is held open across threads and nothing at all happens while trace
//! export is off.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use crate::executor::Phases;

use super::tracing::enabled;

/// The span of one executed batch.
pub const BATCH: &str = "batch";
/// A request's wait for an instance (or for its batch to form).
pub const QUEUE: &str = "queue";
/// A request's execution.
pub const EXECUTE: &str = "execute";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Gives the module the tracer of the running exporter (the first call wins).
pub fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// The tracer, while trace export is on.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    if enabled() { TRACER.get() } else { None }
}

/// The OpenTelemetry context of the current request span, when export is on and the span is
/// sampled.
pub fn current() -> Option<Context> {
    tracer()?;
    let context = Context::current();
    let sampled = context.has_active_span() && context.span().span_context().is_sampled();
    sampled.then_some(context)
}

/// The span context of the current request span (for a batcher to link its batch to).
pub fn current_span_context() -> Option<SpanContext> {
    current().map(|c| c.span().span_context().clone())
}

/// How an execution went, as the instance saw it.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// When the execution began (wall clock).
    pub started: Option<SystemTime>,
    /// The instance that ran it.
    pub instance: usize,
    /// Batch elements in the execution.
    pub batch_size: usize,
    /// The batch span, when one was recorded.
    pub batch_span: Option<SpanContext>,
}

/// Records the span of an executed batch, linked to `requests`; returns its context.
pub fn batch(
    subject: &str,
    run: &RunInfo,
    phases: Phases,
    requests: &[SpanContext],
) -> Option<SpanContext> {
    let tracer = tracer()?;
    let started = run.started?;
    let links = requests
        .iter()
        .map(|r| Link::with_context(r.clone()))
        .collect();
    let mut span = tracer
        .span_builder(BATCH)
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_links(links)
        .with_attributes([
            KeyValue::new("scheduler", subject.to_string()),
            KeyValue::new("batch.size", run.batch_size as i64),
            KeyValue::new("batch.requests", requests.len() as i64),
            KeyValue::new("instance", run.instance as i64),
        ])
        .start_with_context(tracer, &Context::new());
    let context = span.span_context().clone();
    span.end_with_timestamp(started + total(phases));
    Some(context)
}

/// Records a request's `queue` and `execute` spans (with the compute phases) under `parent`.
pub fn request_phases(parent: &Context, queue: Duration, phases: Phases, run: &RunInfo) {
    let (Some(tracer), Some(started)) = (tracer(), run.started) else {
        return;
    };
    let queued = started.checked_sub(queue).unwrap_or(started);
    tracer
        .span_builder(QUEUE)
        .with_start_time(queued)
        .start_with_context(tracer, parent)
        .end_with_timestamp(queued + queue);
    let mut execute = tracer
        .span_builder(EXECUTE)
        .with_start_time(started)
        .with_links(
            run.batch_span
                .iter()
                .cloned()
                .map(Link::with_context)
                .collect(),
        )
        .with_attributes([
            KeyValue::new("batch.size", run.batch_size as i64),
            KeyValue::new("instance", run.instance as i64),
            KeyValue::new("compute.input_us", micros(phases.input)),
            KeyValue::new("compute.infer_us", micros(phases.infer)),
            KeyValue::new("compute.output_us", micros(phases.output)),
        ])
        .start_with_context(tracer, parent);
    // The phases as events at the instants they began: cheaper than a span each.
    let mut at = started;
    for (name, took) in [
        ("compute.input", phases.input),
        ("compute.infer", phases.infer),
        ("compute.output", phases.output),
    ] {
        execute.add_event_with_timestamp(name, at, Vec::new());
        at += took;
    }
    execute.end_with_timestamp(at);
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn total(phases: Phases) -> Duration {
    phases.input + phases.infer + phases.output
}
