//! OpenTelemetry traces exported over OTLP/gRPC. Off unless an endpoint is configured (setting
//! `otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); headers come from `OTEL_EXPORTER_OTLP_HEADERS` as the
//! exporter reads them. Sampling is parent-based over a trace-id ratio, so a client's sampling
//! decision carries through; the ratio lives in an atomic and can be changed while running
//! (`set_sampling_ratio`, served as `switchyard.v1.Telemetry/SetTraceSampling`). Export errors
//! (no collector) are logged by the exporter and never fail a request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};

use crate::error::Error;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The share of traces starting here that are recorded, as `f64` bits (1.0 until started).
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Whether request spans are being recorded and exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The share of traces starting here that are recorded (0.0 to 1.0).
pub fn sampling_ratio() -> f64 {
    f64::from_bits(RATIO.load(Ordering::Relaxed))
}

/// Changes the share of traces starting here that are recorded, from the next root span on.
/// Refused outside 0.0..=1.0, and while no trace export is running (it would change nothing).
pub fn set_sampling_ratio(ratio: f64) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::InvalidRequest(format!(
            "trace sampling ratio {ratio} is outside 0.0..=1.0"
        )));
    }
    if !enabled() {
        return Err(Error::FailedPrecondition(
            "trace export is off: start the daemon with an OTLP endpoint".into(),
        ));
    }
    RATIO.store(ratio.to_bits(), Ordering::Relaxed);
    tracing::info!(ratio, "trace sampling ratio changed");
    Ok(())
}

/// A trace-id ratio sampler that reads its ratio from [`RATIO`] on every root span.
#[derive(Debug, Clone)]
struct LiveRatio;

impl ShouldSample for LiveRatio {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        Sampler::TraceIdRatioBased(sampling_ratio())
            .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// The endpoint traces go to: the setting, else the standard environment variables.
pub fn endpoint(setting: Option<&str>) -> Option<String> {
    setting
        .map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty())
}

/// The running exporter; flushes and stops it when dropped.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting to `endpoint`, sampling `ratio` of the traces that start here (until
    /// changed by [`set_sampling_ratio`]).
    pub fn start(endpoint: &str, ratio: f64) -> Result<(Tracing, SdkTracer), String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(LiveRatio)))
            .with_resource(Resource::builder().with_service_name("switchyard").build())
            .build();
        let tracer = provider.tracer("switchyard");
        super::request_spans::install(tracer.clone());
        RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Tracing { provider }, tracer))
    }

    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        let _ = self.provider.shutdown();
    }
}

/// Marks trace export as running, for unit tests that exercise what depends on it.
#[cfg(test)]
pub(crate) fn enable_for_tests() {
    ENABLED.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::SamplingDecision;

    use super::*;

    fn decide(parent: Option<&Context>) -> SamplingDecision {
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        Sampler::ParentBased(Box::new(LiveRatio))
            .should_sample(parent, trace_id, "s", &SpanKind::Server, &[], &[])
            .decision
    }

    #[test]
    fn the_live_ratio_decides_root_spans_and_sampled_parents_still_win() {
        let sampled = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        RATIO.store(0.0f64.to_bits(), Ordering::Relaxed);
        assert_eq!(decide(None), SamplingDecision::Drop);
        assert_eq!(decide(Some(&sampled)), SamplingDecision::RecordAndSample);
        RATIO.store(1.0f64.to_bits(), Ordering::Relaxed);
        assert_eq!(decide(None), SamplingDecision::RecordAndSample);
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        for ratio in [-0.1, 1.5, f64::NAN] {
            let err = set_sampling_ratio(ratio).unwrap_err();
            assert_eq!(err.code(), crate::error::Code::InvalidArgument, "{ratio}");
        }
    }
}
