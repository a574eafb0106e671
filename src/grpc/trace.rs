//! Request spans: W3C `traceparent`/`tracestate` and baggage are taken from the incoming gRPC
//! metadata so the client's trace continues here. Spans are made only while trace export is on;
//! otherwise a disabled span costs nothing on the request path.

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::tracing::enabled;

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

/// The server span of one inference call, child of the caller's context when there is one.
pub fn request_span(
    metadata: &MetadataMap,
    method: &'static str,
    model: &str,
    version: &str,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: crate::telemetry::REQUEST_SPAN_TARGET,
        "inference",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "inference.GRPCInferenceService",
        rpc.method = method,
        model = model,
        requested_version = version,
        served_version = tracing::field::Empty,
        route = tracing::field::Empty,
        routing_key_hash = tracing::field::Empty,
    );
    let propagator = TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]);
    let parent = propagator.extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(parent);
    span
}

/// Records the outcome on a request span.
pub fn record_outcome(span: &Span, served_version: Option<&str>, error: Option<&str>) {
    if let Some(version) = served_version {
        span.record("served_version", version);
    }
    if let Some(error) = error {
        span.record("otel.status_code", "ERROR");
        span.set_status(opentelemetry::trace::Status::error(error.to_string()));
    }
}

/// Records how the request was routed: the route kind and the routing key's hash (never the key).
pub fn record_route(span: &Span, routed: &crate::registry::Routed) {
    if span.is_disabled() {
        return;
    }
    span.record("route", routed.kind.as_str());
    if let Some(hash) = routed.key_hash {
        span.record("routing_key_hash", format!("{hash:016x}"));
    }
}
