//! OpenTelemetry traces exported over OTLP/gRPC. Off unless an endpoint is configured (setting
//! `otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); headers, timeouts and batching come from the other
//! `OTEL_*` variables (see `otlp`, the exporter). Sampling is parent-based over a trace-id ratio, so a client's sampling
//! decision carries through; the ratio lives in an atomic and can be changed while running
//! (`set_sampling_ratio`, served as `switchyard.v1.Telemetry/SetTraceSampling`). The exporter
//! sits behind a switch and can be pointed elsewhere, or turned off and on, while running
//! (`set_exporter`, served as `switchyard.v1.Telemetry/SetTraceExporter`). Export errors (no
//! collector) are logged by the exporter and never fail a request.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};

use super::otlp;
use crate::error::Error;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The share of traces starting here that are recorded, as `f64` bits (1.0 until started).
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// The ratio the daemon started with, which a reset of the sampling returns to.
static START_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Whether new traces are held off (Triton's `trace_level` OFF) while export stays configured.
static PAUSED: AtomicBool = AtomicBool::new(false);

/// How many more traces may start here; negative means no limit (Triton's `trace_count`).
static REMAINING: AtomicI64 = AtomicI64::new(-1);

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

/// The sampling ratio the daemon started with.
pub fn start_sampling_ratio() -> f64 {
    f64::from_bits(START_RATIO.load(Ordering::Relaxed))
}

/// Whether new traces are held off.
pub fn paused() -> bool {
    PAUSED.load(Ordering::Relaxed)
}

/// How many more traces may start here (negative: no limit).
pub fn remaining_traces() -> i64 {
    REMAINING.load(Ordering::Relaxed)
}

fn require_export(what: &str) -> Result<(), Error> {
    if enabled() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "cannot change {what}: trace export is off (start the daemon with an OTLP endpoint, \
             or set one with switchyard.v1.Telemetry/SetTraceExporter)"
        )))
    }
}

/// Holds off new traces (`true`) or lets them start again. Spans of traces already started
/// still finish. Refused while no trace export is running.
pub fn set_paused(paused: bool) -> Result<(), Error> {
    require_export("the trace level")?;
    PAUSED.store(paused, Ordering::Relaxed);
    tracing::info!(paused, "trace level changed");
    Ok(())
}

/// Lets at most `count` more traces start here (negative: no limit). Refused while no trace
/// export is running.
pub fn set_remaining_traces(count: i64) -> Result<(), Error> {
    require_export("the trace count")?;
    REMAINING.store(count.max(-1), Ordering::Relaxed);
    tracing::info!(count, "trace count changed");
    Ok(())
}

/// Takes one trace from the remaining count; false when none is left.
fn take_trace() -> bool {
    if REMAINING.load(Ordering::Relaxed) < 0 {
        return true;
    }
    REMAINING
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
            0 => None,
            n if n < 0 => Some(n),
            n => Some(n - 1),
        })
        .is_ok()
}

/// The provider's sampler: a span under a local parent follows its parent; a span that starts a
/// trace here (no parent, or a caller's) is held off while paused, then decided by the
/// parent-based ratio sampler, and counted against the remaining traces when sampled.
#[derive(Debug, Clone)]
struct Gate(Sampler);

impl Gate {
    fn new() -> Gate {
        Gate(Sampler::ParentBased(Box::new(LiveRatio)))
    }
}

impl ShouldSample for Gate {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent_span = parent
            .filter(|p| p.has_active_span())
            .map(|p| p.span().span_context().clone());
        let local_parent = parent_span.as_ref().is_some_and(|p| !p.is_remote());
        if !local_parent && paused() {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: parent_span
                    .map(|p| p.trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        let mut result = self
            .0
            .should_sample(parent, trace_id, name, kind, attributes, links);
        if !local_parent && result.decision == SamplingDecision::RecordAndSample && !take_trace() {
            result.decision = SamplingDecision::Drop;
        }
        result
    }
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

/// The span processor of the provider: forwards to the exporter in place now, if any.
/// Swapping it is how the exporter changes at run time.
#[derive(Debug, Default)]
struct Switch {
    current: ArcSwapOption<otlp::Exporter>,
    endpoint: Mutex<Option<String>>,
    resource: Mutex<Option<Resource>>,
}

/// The provider's handle on the switch (the provider owns its processors).
#[derive(Debug)]
struct SwitchProcessor(Arc<Switch>);

impl SpanProcessor for SwitchProcessor {
    /// The exporter only looks at spans once they end.
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if let Some(p) = self.0.current.load().as_ref() {
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self.0.current.load_full() {
            Some(p) => p.force_flush(),
            None => Ok(()),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self.0.current.swap(None) {
            Some(p) => p.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.0.resource.lock().unwrap_or_else(|e| e.into_inner()) = Some(resource.clone());
    }
}

static SWITCH: OnceLock<Arc<Switch>> = OnceLock::new();

/// Hands a span made without the SDK (see `request_spans`) to the exporter in place now, as the
/// provider hands it the spans it ends.
pub(crate) fn export_finished(span: SpanData) {
    if let Some(switch) = SWITCH.get()
        && let Some(p) = switch.current.load().as_ref()
    {
        p.on_end(span);
    }
}

/// The OTLP/gRPC endpoint spans go to now, if export is on.
pub fn exporter_endpoint() -> Option<String> {
    SWITCH
        .get()?
        .endpoint
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Points trace export at `endpoint` (an `http://` URL of an OTLP/gRPC receiver),
/// or turns it off (`None`). Spans already finished go to the old exporter, which is flushed and
/// shut down on a thread of its own. Must run inside the tokio runtime (the exporter's channel).
pub fn set_exporter(endpoint: Option<&str>) -> Result<(), Error> {
    let switch = SWITCH.get().ok_or_else(|| {
        Error::FailedPrecondition("telemetry is not initialised in this process".into())
    })?;
    let processor = match endpoint {
        Some(endpoint) => Some(Arc::new(exporter(switch, endpoint)?)),
        None => None,
    };
    let enabled = processor.is_some();
    let old = switch.current.swap(processor);
    *switch.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint.map(str::to_string);
    ENABLED.store(enabled, Ordering::Relaxed);
    if let Some(old) = old {
        std::thread::spawn(move || {
            if let Err(e) = old.shutdown() {
                tracing::warn!(error = %e, "stopping the previous trace exporter failed");
            }
        });
    }
    tracing::info!(
        endpoint = endpoint.unwrap_or(""),
        enabled,
        "trace exporter changed"
    );
    Ok(())
}

fn exporter(switch: &Switch, endpoint: &str) -> Result<otlp::Exporter, Error> {
    let invalid =
        |why: String| Error::InvalidRequest(format!("trace exporter endpoint '{endpoint}': {why}"));
    let settings = otlp::Settings::from_env(endpoint).map_err(invalid)?;
    let mut exporter = otlp::Exporter::start(settings).map_err(Error::FailedPrecondition)?;
    if let Some(resource) = switch
        .resource
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        exporter.set_resource(resource);
    }
    Ok(exporter)
}

/// The trace pipeline: always installed, exporting only while an exporter is set. Flushes and
/// stops the exporter when dropped.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts the pipeline, exporting to `endpoint` if one is given, sampling `ratio` of the
    /// traces that start here (until changed by [`set_sampling_ratio`]). One per process.
    pub fn start(endpoint: Option<&str>, ratio: f64) -> Result<(Tracing, SdkTracer), String> {
        let switch = Arc::clone(SWITCH.get_or_init(Default::default));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SwitchProcessor(Arc::clone(&switch)))
            .with_sampler(Gate::new())
            .with_resource(Resource::builder().with_service_name("switchyard").build())
            .build();
        let scope = InstrumentationScope::builder("switchyard").build();
        let tracer = provider.tracer_with_scope(scope.clone());
        super::request_spans::install(tracer.clone(), scope);
        RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        START_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        set_exporter(endpoint).map_err(|e| e.to_string())?;
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

    /// Held by the tests that change the process-wide sampling state.
    static SAMPLING: Mutex<()> = Mutex::new(());

    fn decide(parent: Option<&Context>) -> SamplingDecision {
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        Sampler::ParentBased(Box::new(LiveRatio))
            .should_sample(parent, trace_id, "s", &SpanKind::Server, &[], &[])
            .decision
    }

    #[test]
    fn the_live_ratio_decides_root_spans_and_sampled_parents_still_win() {
        let _sampling = SAMPLING.lock().unwrap_or_else(|e| e.into_inner());
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
    fn the_gate_holds_off_and_counts_traces_started_here_but_not_spans_under_them() {
        let _sampling = SAMPLING.lock().unwrap_or_else(|e| e.into_inner());
        let gate = Gate::new();
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let decide = |parent: Option<&Context>| {
            gate.should_sample(parent, trace_id, "s", &SpanKind::Server, &[], &[])
                .decision
        };
        let span = |remote| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                remote,
                TraceState::default(),
            ))
        };
        let (caller, local) = (span(true), span(false));
        RATIO.store(1.0f64.to_bits(), Ordering::Relaxed);

        PAUSED.store(true, Ordering::Relaxed);
        assert_eq!(decide(None), SamplingDecision::Drop);
        assert_eq!(decide(Some(&caller)), SamplingDecision::Drop);
        assert_eq!(decide(Some(&local)), SamplingDecision::RecordAndSample);
        PAUSED.store(false, Ordering::Relaxed);

        REMAINING.store(2, Ordering::Relaxed);
        assert_eq!(decide(Some(&local)), SamplingDecision::RecordAndSample);
        assert_eq!(
            remaining_traces(),
            2,
            "a span under a local parent is no new trace"
        );
        assert_eq!(decide(None), SamplingDecision::RecordAndSample);
        assert_eq!(decide(Some(&caller)), SamplingDecision::RecordAndSample);
        assert_eq!(remaining_traces(), 0);
        assert_eq!(decide(None), SamplingDecision::Drop);
        assert_eq!(decide(Some(&local)), SamplingDecision::RecordAndSample);
        assert_eq!(remaining_traces(), 0);
        REMAINING.store(-1, Ordering::Relaxed);
        assert_eq!(decide(None), SamplingDecision::RecordAndSample);
        assert_eq!(remaining_traces(), -1);
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        for ratio in [-0.1, 1.5, f64::NAN] {
            let err = set_sampling_ratio(ratio).unwrap_err();
            assert_eq!(err.code(), crate::error::Code::InvalidArgument, "{ratio}");
        }
    }
}
