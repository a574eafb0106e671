//! Logs through tracing-subscriber (text or JSON lines on stdout, filtered by `RUST_LOG` or the
//! configured filter, with trace ids while traces are exported: `logs`), OpenTelemetry traces over
//! OTLP (`tracing`), and Prometheus metrics (`metrics`).

pub mod logs;
pub mod metrics;
pub mod request_spans;
pub mod spans;
pub mod tracing;

use ::tracing::{Dispatch, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The tracing target of request spans (see `grpc::trace`).
pub const REQUEST_SPAN_TARGET: &str = "switchyard::grpc::trace";

/// The tracing target of lifecycle spans: `model.load`, `model.swap`, `rollout.step`,
/// `rollout.promote`, `rollout.rollback`. Like request spans they exist for export only; the log
/// events inside them carry the same fields.
pub const LIFECYCLE_SPAN_TARGET: &str = "switchyard::lifecycle";

/// Whether the log layer leaves this span out (spans kept for export only).
fn export_only(meta: &::tracing::Metadata<'_>) -> bool {
    meta.is_span()
        && (meta.target() == REQUEST_SPAN_TARGET || meta.target() == LIFECYCLE_SPAN_TARGET)
}

/// The log layer: `format` lines to `writer`, with trace ids found through `dispatch`.
fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
    dispatch: logs::DispatchSlot,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Export-only spans: the log layer neither formats nor stores their fields.
    let keep = tracing_subscriber::filter::filter_fn(|meta| !export_only(meta));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let default_format = tracing_subscriber::fmt::format();
    match format {
        LogFormat::Text => layer
            .event_format(logs::WithTraceIds::new(default_format, dispatch))
            .with_filter(keep)
            .boxed(),
        LogFormat::Json => layer
            .json()
            .event_format(logs::WithTraceIds::new(default_format.json(), dispatch))
            .with_filter(keep)
            .boxed(),
    }
}

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

/// Installs the global subscriber (call once, early) and the trace pipeline, exporting when an
/// endpoint is configured (and from whenever one is set at run time). Keep the returned guard
/// alive: dropping it flushes and stops the exporter.
pub fn init(config: &TelemetryConfig) -> Result<tracing::Tracing, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let slot = logs::DispatchSlot::default();
    let fmt = log_layer(config.log_format, std::io::stdout, slot.clone());
    let endpoint = tracing::endpoint(config.otlp_endpoint.as_deref());
    let (guard, tracer) =
        tracing::Tracing::start(endpoint.as_deref(), config.trace_sampling_ratio)?;
    // Only the attributes the spans are made with: no source location, thread, target or
    // busy/idle timing (the latter would read the clock at every poll of a request's future).
    let otel = tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_tracer(tracer);
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(otel),
    );
    slot.attach(&dispatch);
    dispatch
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(guard)
}
