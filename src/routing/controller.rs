//! The rollout controller: one task that, for every model with a rollout plan, starts a rollout
//! when a newer version is ready, gathers what the canary and the baseline did since the current
//! step began, asks [`rollout::decide`] what to do, and applies the answer as a traffic change
//! (so every step is written to `traffic.yaml`, recorded in the history and published at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{Instrument, info, warn};

use crate::registry::traffic::{change, is_failed, mark_failed};
use crate::registry::{Model, ModelSnapshot, ModelVersion, Registry};
use crate::telemetry::spans;

use super::commands::{active_rollout, begin};
use super::history::Cause;
use super::policy::{RolloutPhase, RolloutPlan};
use super::rollout::{self, Decision, Window};
use super::stats::HistogramSnapshot;

/// How often rollouts are looked at.
pub const TICK: Duration = Duration::from_millis(100);

/// Below this many baseline successes in a step, the baseline's p99 comes from all its requests.
const MIN_BASELINE_SAMPLES: u64 = 20;

/// What an arm had done when the current step began.
#[derive(Clone)]
struct Mark {
    ok: u64,
    failed: u64,
    latency: HistogramSnapshot,
}

impl Mark {
    fn of(version: &ModelVersion) -> Mark {
        Mark {
            ok: version.stats.success.read().0,
            failed: version.stats.fail.read().0,
            latency: version.stats.latency.snapshot(),
        }
    }

    /// What happened since `self`, and the histogram of that window.
    fn window_since(&self, version: &ModelVersion) -> (Window, HistogramSnapshot) {
        let now = Mark::of(version);
        let latency = now.latency.since(&self.latency);
        let (ok, failed) = (now.ok - self.ok, now.failed - self.failed);
        let window = Window {
            requests: ok + failed,
            errors: failed,
            p99: latency.quantile(0.99),
        };
        (window, latency)
    }
}

/// The step being judged.
struct Step {
    key: (u64, u64, usize),
    started: Instant,
    canary: Mark,
    baseline: Mark,
}

/// Runs until `stopping` turns true.
pub async fn run(registry: Arc<Registry>, mut stopping: watch::Receiver<bool>) {
    let mut steps: HashMap<String, Step> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        for model in registry.models() {
            look_at(&registry, &model, &mut steps).await;
        }
        steps.retain(|name, _| registry.get(name).is_ok());
    }
}

async fn look_at(registry: &Arc<Registry>, model: &Model, steps: &mut HashMap<String, Step>) {
    let snapshot = model.snapshot();
    let policy = snapshot.policy();
    let Some(plan) = policy.rollout.clone() else {
        steps.remove(&model.name);
        return;
    };
    if policy.pin.is_some() {
        return;
    }
    let running = policy
        .rollout_state
        .as_ref()
        .filter(|s| s.phase == RolloutPhase::Running)
        .map(|s| (s.candidate, s.baseline, s.step));
    match (running, active_rollout(policy)) {
        (Some(key), _) => judge(registry, model, &snapshot, &plan, key, steps).await,
        (None, Some(_)) => {
            steps.remove(&model.name);
        }
        (None, None) if !plan.paused => maybe_start(registry, model, &snapshot, &plan).await,
        (None, None) => {}
    }
}

/// Starts a rollout of the newest ready version when it is newer than the version serving and
/// not marked failed. A model with no weights first adopts the version serving as its baseline.
async fn maybe_start(
    registry: &Arc<Registry>,
    model: &Model,
    snapshot: &ModelSnapshot,
    plan: &RolloutPlan,
) {
    let Some(baseline) = snapshot.primary_version() else {
        return;
    };
    let policy = snapshot.policy();
    if policy.weights.is_empty() {
        let outcome = change(registry, &model.name, Cause::Rollout, move |p, _| {
            if !p.weights.is_empty() {
                return Ok(None);
            }
            p.weights = [(baseline, 100.0)].into();
            Ok(Some(format!(
                "version {baseline} adopted as the rollout baseline"
            )))
        })
        .await;
        report_failure(&model.name, outcome);
        return;
    }
    let candidate = snapshot
        .ready_versions()
        .map(|v| v.version)
        .filter(|v| *v > baseline && !is_failed(policy, snapshot, *v))
        .last();
    let Some(candidate) = candidate else {
        return;
    };
    let steps = plan.steps.clone();
    let outcome = change(registry, &model.name, Cause::Rollout, move |p, _| {
        if p.pin.is_some() || active_rollout(p).is_some() || p.rollout.is_none() {
            return Ok(None);
        }
        begin(p, &steps, candidate, baseline);
        Ok(Some(format!(
            "rollout of version {candidate} over {baseline} started at {}%",
            steps[0]
        )))
    })
    .await;
    report_failure(&model.name, outcome);
}

/// Judges the running step and applies the decision.
async fn judge(
    registry: &Arc<Registry>,
    model: &Model,
    snapshot: &ModelSnapshot,
    plan: &RolloutPlan,
    key: (u64, u64, usize),
    steps: &mut HashMap<String, Step>,
) {
    let (candidate, baseline, step) = key;
    let ready = |v: u64| snapshot.versions.get(&v).and_then(|s| s.serving.clone());
    let (Some(canary_version), Some(baseline_version)) = (ready(candidate), ready(baseline)) else {
        if ready(candidate).is_none() {
            let reason = format!("candidate version {candidate} is no longer ready");
            fail(registry, model, key, reason).await;
        }
        return;
    };
    let current = steps.entry(model.name.clone()).or_insert_with(|| Step {
        key,
        started: Instant::now(),
        canary: Mark::of(&canary_version),
        baseline: Mark::of(&baseline_version),
    });
    if current.key != key {
        *current = Step {
            key,
            started: Instant::now(),
            canary: Mark::of(&canary_version),
            baseline: Mark::of(&baseline_version),
        };
    }
    let (canary, _) = current.canary.window_since(&canary_version);
    let (mut base, window) = current.baseline.window_since(&baseline_version);
    if window.count() < MIN_BASELINE_SAMPLES {
        base.p99 = baseline_version.stats.latency.snapshot().quantile(0.99);
    }
    let decision = rollout::decide(plan, step, canary, base, current.started.elapsed());
    match decision {
        Decision::Wait(_) => {}
        Decision::Advance { next } => advance(registry, model, plan, key, next, canary).await,
        Decision::Promote => promote(registry, model, key).await,
        Decision::Fail(reason) => fail(registry, model, key, reason).await,
    }
}

/// Moves the canary to step `next`.
async fn advance(
    registry: &Arc<Registry>,
    model: &Model,
    plan: &RolloutPlan,
    key: (u64, u64, usize),
    next: usize,
    canary: Window,
) {
    let (candidate, baseline, _) = key;
    let span = spans::rollout(spans::ROLLOUT_STEP, &model.name, candidate, baseline, next);
    let weight = plan.steps[next];
    let detail = format!(
        "rollout of version {candidate}: step {next} at {weight}% (canary {} requests, \
         {:.2}% errors)",
        canary.requests,
        canary.error_rate() * 100.0
    );
    async {
        let outcome = change(registry, &model.name, Cause::Rollout, move |p, _| {
            let Some(state) = p.rollout_state.as_mut().filter(|s| same(s, key)) else {
                return Ok(None);
            };
            state.step = next;
            p.weights = [(baseline, 100.0 - weight), (candidate, weight)].into();
            Ok(Some(detail))
        })
        .await;
        report_failure(&model.name, outcome);
    }
    .instrument(span)
    .await
}

/// Gives the canary all the traffic and ends the rollout as promoted.
async fn promote(registry: &Arc<Registry>, model: &Model, key: (u64, u64, usize)) {
    let (candidate, baseline, step) = key;
    let span = spans::rollout(
        spans::ROLLOUT_PROMOTE,
        &model.name,
        candidate,
        baseline,
        step,
    );
    async {
        let outcome = change(registry, &model.name, Cause::Rollout, move |p, _| {
            let Some(state) = p.rollout_state.as_mut().filter(|s| same(s, key)) else {
                return Ok(None);
            };
            state.phase = RolloutPhase::Promoted;
            state.reason = "every step's gates held".into();
            p.weights = [(candidate, 100.0)].into();
            Ok(Some(format!(
                "rollout of version {candidate}: promoted to 100%"
            )))
        })
        .await;
        registry.events.rollout_decision(&model.name, "promote");
        info!(model = %model.name, candidate, baseline, "rollout promoted");
        report_failure(&model.name, outcome);
    }
    .instrument(span)
    .await
}

/// Rolls the canary back to weight 0 and marks it failed.
async fn fail(registry: &Arc<Registry>, model: &Model, key: (u64, u64, usize), reason: String) {
    let (candidate, baseline, step) = key;
    let span = spans::rollout(
        spans::ROLLOUT_ROLLBACK,
        &model.name,
        candidate,
        baseline,
        step,
    );
    async {
        warn!(model = %model.name, candidate, baseline, step, %reason, "rollout rolled back");
        registry.events.rollout_decision(&model.name, "rollback");
        let detail = format!("rollout of version {candidate} rolled back: {reason}");
        let outcome = change(registry, &model.name, Cause::Gate, move |p, snapshot| {
            let Some(state) = p.rollout_state.as_mut().filter(|s| same(s, key)) else {
                return Ok(None);
            };
            state.phase = RolloutPhase::Failed;
            state.reason = reason;
            p.weights = [(baseline, 100.0)].into();
            mark_failed(p, snapshot, candidate);
            Ok(Some(detail))
        })
        .await;
        report_failure(&model.name, outcome);
    }
    .instrument(span)
    .await
}

fn same(state: &super::policy::RolloutState, key: (u64, u64, usize)) -> bool {
    (state.candidate, state.baseline, state.step) == key && state.phase == RolloutPhase::Running
}

/// Logs a change that could not be applied, and marks the current rollout span (if any) failed.
fn report_failure(model: &str, outcome: crate::error::Result<()>) {
    if let Err(e) = outcome {
        warn!(model, error = %e, "rollout change could not be applied");
        spans::record_error(&tracing::Span::current(), &e.to_string());
    }
}
