//! Traffic families: each ready version's share of requests naming none, queue depth and requests
//! per arm, rollout phase and decisions, shadow outcomes, and a latency histogram per version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Family;
use crate::registry::Registry;
use crate::routing::policy::RolloutPhase;
use crate::routing::router::RouteKind;

/// Upper bounds of the latency histogram's buckets, in seconds. Each is a power-of-two number
/// of microseconds (~0.5 ms to ~8.4 s), where the recorded histogram counts exactly.
const LATENCY_BOUNDS_US: [u64; 15] = [
    512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 131_072, 262_144, 524_288, 1_048_576,
    2_097_152, 4_194_304, 8_388_608,
];

const PHASES: [RolloutPhase; 4] = [
    RolloutPhase::Running,
    RolloutPhase::Paused,
    RolloutPhase::Promoted,
    RolloutPhase::Failed,
];

/// Shares, rollout state and decisions, shadow outcomes.
pub(super) fn families(registry: &Registry) -> Vec<Family> {
    let mut share = Family::new(
        "switchyard_traffic_share_percent",
        "gauge",
        "Share of requests naming no version that each ready version takes, percent",
    );
    let mut phase = Family::new(
        "switchyard_rollout_phase",
        "gauge",
        "1 for the phase the model's latest rollout is in",
    );
    let mut shadow = Family::new(
        "switchyard_shadow_requests_total",
        "counter",
        "Requests mirrored to a shadow version, by outcome (success, error, dropped)",
    );
    let mut pending = Family::new(
        "nv_inference_pending_request_count",
        "gauge",
        "Requests waiting to run (in the batcher's queue or for a free instance)",
    );
    let mut routed = Family::new(
        "switchyard_routed_requests_total",
        "counter",
        "Requests each version answered, by the arm that brought them (named, pinned, sticky, \
         random, default) and outcome (success, failure; refused after routing counts as failure)",
    );
    let mut compared = Family::new(
        "switchyard_shadow_comparisons_total",
        "counter",
        "Shadow answers compared with the primary's, by result (match, mismatch)",
    );
    for model in registry.models() {
        let snapshot = model.snapshot();
        let pinned = snapshot.routes.pinned().map(|v| v.version);
        let weighted = snapshot.routes.effective_percent();
        for version in snapshot.ready_versions() {
            let percent = match (pinned, weighted.is_empty()) {
                (Some(p), _) => {
                    if p == version.version {
                        100.0
                    } else {
                        0.0
                    }
                }
                (None, false) => weighted
                    .iter()
                    .find(|(v, _)| *v == version.version)
                    .map(|(_, p)| *p)
                    .unwrap_or(0.0),
                (None, true) if snapshot.default_version == Some(version.version) => 100.0,
                (None, true) => 0.0,
            };
            let labels = || {
                vec![
                    ("model", model.name.clone()),
                    ("version", version.label().to_string()),
                ]
            };
            share.add(labels(), percent);
            pending.add(labels(), version.queue_depth() as f64);
            // Only the arms that brought requests: a model is rarely pinned or named.
            for route in RouteKind::ALL {
                let (ok, failed) = version.stats.routed.read(route);
                if ok + failed == 0 {
                    continue;
                }
                for (outcome, value) in [("success", ok), ("failure", failed)] {
                    let mut l = labels();
                    l.push(("arm", route.as_str().into()));
                    l.push(("outcome", outcome.into()));
                    routed.add(l, value as f64);
                }
            }
            let s = &version.stats.shadow;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
            let ok = load(&s.requests) - load(&s.errors);
            for (outcome, value) in [
                ("success", ok),
                ("error", load(&s.errors)),
                ("dropped", load(&s.dropped)),
            ] {
                let mut l = labels();
                l.push(("outcome", outcome.into()));
                shadow.add(l, value);
            }
            for (result, value) in [
                ("match", load(&s.matched)),
                ("mismatch", load(&s.mismatched)),
            ] {
                let mut l = labels();
                l.push(("result", result.into()));
                compared.add(l, value);
            }
        }
        if let Some(state) = &snapshot.policy().rollout_state {
            for p in PHASES {
                let value = if p == state.phase { 1.0 } else { 0.0 };
                phase.add(
                    vec![("model", model.name.clone()), ("phase", p.as_str().into())],
                    value,
                );
            }
        }
    }
    let mut promotions = Family::new(
        "switchyard_rollout_promotions_total",
        "counter",
        "Rollouts that reached 100% by themselves",
    );
    let mut rollbacks = Family::new(
        "switchyard_rollout_rollbacks_total",
        "counter",
        "Rollouts rolled back by a failed gate",
    );
    for (model, counts) in registry.events.counts() {
        promotions.add(
            vec![("model", model.clone())],
            counts.rollout_promotions as f64,
        );
        rollbacks.add(vec![("model", model)], counts.rollout_rollbacks as f64);
    }
    vec![
        share, pending, routed, phase, promotions, rollbacks, shadow, compared,
    ]
}

/// `switchyard_request_duration_seconds`: a histogram of successful requests' latency per
/// version.
pub(super) fn latency_histograms(registry: &Registry, out: &mut String) {
    use std::fmt::Write;
    let name = "switchyard_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of successful requests, by version"
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for model in registry.models() {
        for version in model.snapshot().ready_versions() {
            let labels = format!(
                "model=\"{}\",version=\"{}\"",
                super::escape(&model.name),
                version.label()
            );
            let histogram = version.stats.latency.snapshot();
            for bound in LATENCY_BOUNDS_US {
                let count = histogram.cumulative_at(Duration::from_micros(bound));
                let le = bound as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count()
            );
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                histogram.sum().as_secs_f64()
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count());
        }
    }
}
