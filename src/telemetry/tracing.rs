//! OpenTelemetry traces exported over OTLP/gRPC. Off unless an endpoint is configured (setting
//! `otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); headers come from `OTEL_EXPORTER_OTLP_HEADERS` as the
//! exporter reads them. Sampling is parent-based over a trace-id ratio, so a client's sampling
//! decision carries through. Export errors (no collector) are logged by the exporter and never
//! fail a request.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether request spans are being recorded and exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
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
    /// Starts exporting to `endpoint`, sampling `ratio` of the traces that start here.
    pub fn start(endpoint: &str, ratio: f64) -> Result<(Tracing, SdkTracer), String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(Resource::builder().with_service_name("switchyard").build())
            .build();
        let tracer = provider.tracer("switchyard");
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
