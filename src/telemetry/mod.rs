//! Logs through tracing-subscriber (text or JSON lines on stdout, filtered by `RUST_LOG` or the
//! configured filter), OpenTelemetry traces over OTLP (`tracing`), and Prometheus metrics
//! (`metrics`).

pub mod metrics;
pub mod tracing;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The tracing target of request spans (see `grpc::trace`).
pub const REQUEST_SPAN_TARGET: &str = "switchyard::grpc::trace";

/// What telemetry to start.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_filter: String,
    /// OTLP endpoint for traces; `None` falls back to the `OTEL_*` environment, else no traces.
    pub otlp_endpoint: Option<String>,
    /// Share of traces started here that are recorded (0.0 to 1.0).
    pub trace_sampling_ratio: f64,
}

/// Installs the global subscriber (call once, early) and starts trace export when configured.
/// Keep the returned guard alive: dropping it flushes and stops the exporter.
pub fn init(config: &TelemetryConfig) -> Result<Option<tracing::Tracing>, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    // Request spans exist for export only: the log layer neither formats nor stores their fields.
    let not_request_span = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == REQUEST_SPAN_TARGET)
    });
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_filter(not_request_span)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_filter(not_request_span)
            .boxed(),
    };
    let (guard, otel) = match tracing::endpoint(config.otlp_endpoint.as_deref()) {
        Some(endpoint) => {
            let (guard, tracer) = tracing::Tracing::start(&endpoint, config.trace_sampling_ratio)?;
            (
                Some(guard),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(guard)
}
