//! Request spans: the server span of each inference call, made with the OpenTelemetry API directly.
//! W3C `traceparent`/`tracestate` and baggage are taken from the incoming gRPC metadata so the
//! client's trace continues here. While the request runs, its context is the current OpenTelemetry
//! context: its `queue` and `execute` spans become children of its span, a batch links to it, and
//! log lines carry its ids. Spans are made only while trace export is on; otherwise nothing is.
//!
//! The span is not a `tracing` span: nothing is registered, entered or looked up at each poll of
//! the request, and its attributes go straight into the OpenTelemetry span.

use std::future::Future;
use std::sync::LazyLock;

use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tonic::metadata::{Ascii, KeyRef, MetadataKey, MetadataMap};

use crate::registry::Routed;
use crate::telemetry::request_spans;

/// Metadata keys the propagator reads; a request with none of them starts a new trace. Made
/// once, so that looking them up does not parse the names on every request.
static PROPAGATED: LazyLock<[MetadataKey<Ascii>; 3]> =
    LazyLock::new(|| ["traceparent", "tracestate", "baggage"].map(MetadataKey::from_static));

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The trace of one inference call: its server span inside the caller's context, or nothing while
/// trace export is off.
pub struct RequestTrace(Option<Context>);

impl RequestTrace {
    /// Starts the server span of a call to `method` for `model` (`version` as requested), child of
    /// the caller's context when the metadata carries one.
    pub fn start(metadata: &MetadataMap, method: &'static str, model: &str, version: &str) -> Self {
        let Some(tracer) = request_spans::tracer() else {
            return RequestTrace(None);
        };
        let parent = if PROPAGATED.iter().any(|key| metadata.contains_key(key)) {
            PROPAGATOR.extract(&MetadataExtractor(metadata))
        } else {
            Context::new()
        };
        let span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                KeyValue::new("rpc.method", method),
                KeyValue::new("model", model.to_string()),
                KeyValue::new("requested_version", version.to_string()),
            ])
            .start_with_context(tracer, &parent);
        RequestTrace(Some(parent.with_span(span)))
    }

    /// Runs `call` with the request's context as the current one (at every poll).
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        match &self.0 {
            Some(context) => call.with_context(context.clone()).await,
            None => call.await,
        }
    }

    /// Records how the request was routed: the route kind and the routing key's hash (never the
    /// key).
    pub fn record_route(&self, routed: &Routed) {
        let Some(context) = &self.0 else {
            return;
        };
        let span = context.span();
        span.set_attribute(KeyValue::new("route", routed.kind.as_str()));
        if let Some(hash) = routed.key_hash {
            span.set_attribute(KeyValue::new("routing_key_hash", format!("{hash:016x}")));
        }
    }

    /// Ends the span with the version that served the request, or the error it failed with.
    pub fn finish(self, served_version: Option<&str>, error: Option<&str>) {
        let Some(context) = self.0 else {
            return;
        };
        let span = context.span();
        if let Some(version) = served_version {
            span.set_attribute(KeyValue::new("served_version", version.to_string()));
        }
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}
