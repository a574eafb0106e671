//! What happened to a request after it was routed, as spans under its server span (see
//! `grpc::trace`, which makes that span the current OpenTelemetry context while the request
//! runs): a `queue` child for the wait, an `execute` child for its execution (the compute phases — input, infer, output — as its events
//! and attributes), and one `batch` span per executed batch, linked to every request span it served
//! (and each `execute` span linked back to its batch). The scheduler and the instances measure
//! these times anyway; the spans are made afterwards with explicit timestamps, so nothing is held
//! open across threads and nothing at all happens while trace export is off. The batch span goes
//! through the SDK (it starts a trace, so the sampler decides); a request's `queue` and `execute`
//! spans are built finished and handed straight to the exporter.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SpanData, SpanEvents, SpanLinks};

use crate::executor::Phases;

use super::tracing::{enabled, export_finished};

/// The span of one executed batch.
pub const BATCH: &str = "batch";
/// A request's wait for an instance (or for its batch to form).
pub const QUEUE: &str = "queue";
/// A request's execution.
pub const EXECUTE: &str = "execute";

static TRACER: OnceLock<(SdkTracer, InstrumentationScope)> = OnceLock::new();

/// Gives the module the tracer of the running exporter and its instrumentation scope (the first
/// call wins).
pub fn install(tracer: SdkTracer, scope: InstrumentationScope) {
    let _ = TRACER.set((tracer, scope));
}

/// The tracer, while trace export is on.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    installed().map(|(tracer, _)| tracer)
}

fn installed() -> Option<&'static (SdkTracer, InstrumentationScope)> {
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
///
/// Both spans are over when they are made, and a span under a sampled local parent is always
/// sampled, so they are built as finished spans and handed to the exporter directly: the SDK's
/// span builder, sampler and live span would add nothing but their cost to every request.
pub fn request_phases(parent: &Context, queue: Duration, phases: Phases, run: &RunInfo) {
    let (Some((_, scope)), Some(started)) = (installed(), run.started) else {
        return;
    };
    let parent = parent.span().span_context().clone();
    if !parent.is_sampled() {
        return;
    }
    let queued = started.checked_sub(queue).unwrap_or(started);
    let child = |name: &'static str, start: SystemTime, end: SystemTime| SpanData {
        span_context: SpanContext::new(
            parent.trace_id(),
            new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        ),
        parent_span_id: parent.span_id(),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: name.into(),
        start_time: start,
        end_time: end,
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    export_finished(child(QUEUE, queued, queued + queue));

    let mut execute = child(EXECUTE, started, started);
    execute.attributes = vec![
        KeyValue::new("batch.size", run.batch_size as i64),
        KeyValue::new("instance", run.instance as i64),
        KeyValue::new("compute.input_us", micros(phases.input)),
        KeyValue::new("compute.infer_us", micros(phases.infer)),
        KeyValue::new("compute.output_us", micros(phases.output)),
    ];
    execute.links.links = run
        .batch_span
        .iter()
        .cloned()
        .map(Link::with_context)
        .collect();
    // The phases as events at the instants they began: cheaper than a span each.
    let mut at = started;
    execute.events.events = [
        ("compute.input", phases.input),
        ("compute.infer", phases.infer),
        ("compute.output", phases.output),
    ]
    .into_iter()
    .map(|(name, took)| {
        let event = Event::new(name, at, Vec::new(), 0);
        at += took;
        event
    })
    .collect();
    execute.end_time = at;
    export_finished(execute);
}

/// A span id for a span made here: random and never the invalid all-zero id, as the SDK's id
/// generator makes them.
fn new_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn total(phases: Phases) -> Duration {
    phases.input + phases.infer + phases.output
}
