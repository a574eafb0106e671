//! Logs through tracing-subscriber (text or JSON lines on stdout, filtered by `RUST_LOG` or the
//! configured filter, with trace ids while traces are exported: `logs`), OpenTelemetry traces over
//! OTLP (`tracing`), and Prometheus metrics (`metrics`).

pub mod log_filter;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod request_spans;
pub mod spans;
pub mod tracing;

use ::tracing::level_filters::LevelFilter;
use ::tracing::subscriber::Interest;
use ::tracing::{Dispatch, Level, Metadata, Subscriber};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The tracing target of lifecycle spans: `model.load`, `model.swap`, `rollout.step`,
/// `rollout.promote`, `rollout.rollback`. They exist for export only; the log events inside them
/// carry the same fields. (Request spans are not `tracing` spans: see `grpc::trace`.)
pub const LIFECYCLE_SPAN_TARGET: &str = "switchyard::lifecycle";

/// Whether the log layer leaves this span out (spans kept for export only).
fn export_only(meta: &::tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == LIFECYCLE_SPAN_TARGET
}

// Each layer has its own filter, decided per callsite where it can be: a callsite no layer wants
// (h2's and tonic's trace and debug events, say) is then never checked again, and the subscriber's
// level hint lets the `trace!`/`debug!` macros skip themselves with one comparison. (A global
// filter next to per-layer filters makes every callsite "sometimes" and every event pays for a
// filter pass; it would also let `RUST_LOG=warn` turn off the lifecycle spans that traces need.)

/// Leaves export-only spans out of the log layer; levels are the log filter's to decide.
struct NotExportOnly;

impl<S> Filter<S> for NotExportOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !export_only(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if export_only(meta) {
            Interest::never()
        } else {
            Interest::always()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

/// What the trace exporter sees: the export-only spans, and events at INFO and above (recorded as
/// span events when they happen inside one), whatever the log filter says.
struct ExportFilter;

impl ExportFilter {
    fn wants(meta: &Metadata<'_>) -> bool {
        if meta.is_span() {
            export_only(meta)
        } else {
            *meta.level() <= Level::INFO
        }
    }
}

impl<S> Filter<S> for ExportFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        ExportFilter::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if ExportFilter::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

/// The log layer: `format` lines to `writer` as `filter` (`RUST_LOG` or the configured filter)
/// selects them, with trace ids found through `dispatch`.
fn log_layer<S, W, F>(
    format: LogFormat,
    writer: W,
    filter: F,
    dispatch: logs::DispatchSlot,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    F: Filter<S> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::FilterExt;
    // Export-only spans: the log layer neither formats nor stores their fields.
    let filter = filter.and(NotExportOnly);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let default_format = tracing_subscriber::fmt::format();
    match format {
        LogFormat::Text => layer
            .event_format(logs::WithTraceIds::new(default_format, dispatch))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => layer
            .json()
            .event_format(logs::WithTraceIds::new(default_format.json(), dispatch))
            .with_filter(filter)
            .boxed(),
    }
}

/// The layer that turns request and lifecycle spans into OpenTelemetry spans for `tracer`.
fn export_layer<S>(tracer: SdkTracer) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    // Only the attributes the spans are made with: no source location, thread, target or
    // busy/idle timing (the latter would read the clock at every poll of a request's future).
    tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_tracer(tracer)
        .with_filter(ExportFilter)
        .boxed()
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
    // `RUST_LOG` when it is set and parses, else the configured filter.
    let directives = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|d| EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| config.log_filter.clone());
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(log_filter::LogFilter::at_start(&directives));
    log_filter::install(handle, &directives);
    let slot = logs::DispatchSlot::default();
    let fmt = log_layer(config.log_format, std::io::stdout, filter, slot.clone());
    let endpoint = tracing::endpoint(config.otlp_endpoint.as_deref());
    let (guard, tracer) =
        tracing::Tracing::start(endpoint.as_deref(), config.trace_sampling_ratio)?;
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(fmt)
            .with(export_layer(tracer)),
    );
    slot.attach(&dispatch);
    dispatch
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(guard)
}
