//! Lifecycle spans: loading a model version, publishing a model's snapshot, and the rollout
//! controller's decisions. They are exported as traces like request spans (and kept
//! out of the log layer: the log events inside carry the same fields, and the trace ids). A
//! lifecycle span that starts outside any trace is a root span, sampled by the trace sampling
//! ratio. With trace export off nothing is interested in them and they cost nothing.

use tracing::Span;
use tracing::field::Empty;

use super::LIFECYCLE_SPAN_TARGET;

/// Loading, warming and starting one model version.
pub const MODEL_LOAD: &str = "model.load";
/// Publishing a model's new snapshot: the versions it serves and those it retires.
pub const MODEL_SWAP: &str = "model.swap";
/// A rollout moving its canary to the next step.
pub const ROLLOUT_STEP: &str = "rollout.step";
/// A rollout promoting its canary to all the traffic.
pub const ROLLOUT_PROMOTE: &str = "rollout.promote";
/// A rollout giving the traffic back to the baseline.
pub const ROLLOUT_ROLLBACK: &str = "rollout.rollback";

/// The span of loading `model` version `version`; finish it with [`record_load`].
pub fn model_load(model: &str, version: u64) -> Span {
    tracing::info_span!(
        target: LIFECYCLE_SPAN_TARGET,
        "model.load",
        otel.name = MODEL_LOAD,
        otel.status_code = Empty,
        otel.status_description = Empty,
        model,
        version,
        outcome = Empty,
        duration_ms = Empty,
    )
}

/// Records how a load ended: `loaded`, or `failed` with an error status carrying the reason.
pub fn record_load(span: &Span, duration_ms: f64, error: Option<&str>) {
    span.record("duration_ms", duration_ms);
    match error {
        None => {
            span.record("outcome", "loaded");
        }
        Some(reason) => {
            span.record("outcome", "failed");
            record_error(span, reason);
        }
    }
}

/// The span of publishing a snapshot of `model` that serves `ready` and retires `retired`.
pub fn model_swap(model: &str, ready: &[u64], retired: &[u64], default: Option<u64>) -> Span {
    let default_version = default.map(|v| v.to_string()).unwrap_or_default();
    tracing::info_span!(
        target: LIFECYCLE_SPAN_TARGET,
        "model.swap",
        otel.name = MODEL_SWAP,
        model,
        ready_versions = list(ready),
        retired_versions = list(retired),
        default_version,
    )
}

/// The span of applying one rollout decision (`name` is one of the `ROLLOUT_*` names).
pub fn rollout(
    name: &'static str,
    model: &str,
    candidate: u64,
    baseline: u64,
    step: usize,
) -> Span {
    tracing::info_span!(
        target: LIFECYCLE_SPAN_TARGET,
        "rollout",
        otel.name = name,
        otel.status_code = Empty,
        otel.status_description = Empty,
        model,
        candidate,
        baseline,
        step,
    )
}

/// Marks a span (one declaring `otel.status_code`) as failed, with the reason.
pub fn record_error(span: &Span, reason: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", reason);
}

fn list(versions: &[u64]) -> String {
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
