//! The management commands on a model's traffic: set, pin, unpin, promote, roll back, start,
//! pause and resume a rollout. Each is one edit of the policy through
//! [`registry::traffic::change`], so it is written to `traffic.yaml`, recorded in the history and
//! published at once.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::registry::traffic::{self, change, describe_change, is_failed, mark_failed};
use crate::registry::{ModelSnapshot, Registry};

use super::history::Cause;
use super::policy::{RolloutPhase, TrafficPolicy};

/// Replaces everything but the record of failed versions; a rollout in progress is ended.
pub async fn set(registry: &Arc<Registry>, model: &str, new: TrafficPolicy) -> Result<()> {
    change(registry, model, Cause::Command, move |policy, _| {
        let mut next = new;
        next.failed = std::mem::take(&mut policy.failed);
        next.rollout_state = None;
        let detail = format!("set: {}", describe_change(policy, &next));
        *policy = next;
        Ok(Some(detail))
    })
    .await
}

/// Pins the model to `version` (`None`: removes the pin).
pub async fn pin(registry: &Arc<Registry>, model: &str, version: Option<u64>) -> Result<()> {
    if let Some(v) = version {
        require_on_disk(registry, model, v).await?;
    }
    change(registry, model, Cause::Command, move |policy, _| {
        if policy.pin == version {
            return Ok(None);
        }
        policy.pin = version;
        Ok(Some(match version {
            Some(v) => format!("pinned to version {v}"),
            None => "unpinned".to_string(),
        }))
    })
    .await
}

/// Gives `version` (default: the rollout's candidate, else the newest ready version) all the
/// weight and ends any rollout as promoted.
pub async fn promote(registry: &Arc<Registry>, model: &str, version: Option<u64>) -> Result<()> {
    let name = model.to_string();
    change(registry, model, Cause::Command, move |policy, snapshot| {
        let target = match version {
            Some(v) => v,
            None => active_rollout(policy)
                .map(|(candidate, _)| candidate)
                .or_else(|| snapshot.ready_versions().last().map(|v| v.version))
                .ok_or_else(|| nothing_ready(&name))?,
        };
        policy.pin = None;
        policy.weights = [(target, 100.0)].into();
        policy.failed.remove(&target);
        if let Some(state) = &mut policy.rollout_state {
            state.candidate = target;
            state.phase = RolloutPhase::Promoted;
            state.reason = "promoted by command".into();
        }
        Ok(Some(format!("promoted version {target} to 100%")))
    })
    .await
}

/// Gives all the weight to `version` (default: the rollout's baseline, else the newest ready
/// version older than the one serving) and marks the version that served as failed.
pub async fn rollback(registry: &Arc<Registry>, model: &str, version: Option<u64>) -> Result<()> {
    if let Some(v) = version {
        require_on_disk(registry, model, v).await?;
    }
    let older = older_on_disk(registry, model).await?;
    let name = model.to_string();
    change(registry, model, Cause::Command, move |policy, snapshot| {
        let serving = snapshot.primary_version();
        let rollout = active_rollout(policy);
        let target = version
            .or(rollout.map(|(_, baseline)| baseline))
            .or_else(|| serving.and_then(|s| older_than(snapshot, &older, s)))
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "model '{name}': no older version to roll back to; name one"
                ))
            })?;
        let rejected = rollout.map(|(candidate, _)| candidate).or(serving);
        if let Some(rejected) = rejected.filter(|r| *r != target) {
            mark_failed(policy, snapshot, rejected);
        }
        if let Some(state) = &mut policy.rollout_state
            && rollout.is_some()
        {
            state.phase = RolloutPhase::Failed;
            state.reason = "rolled back by command".into();
        }
        policy.pin = None;
        policy.weights = [(target, 100.0)].into();
        Ok(Some(format!("rolled back to version {target}")))
    })
    .await
}

/// Starts a rollout of `version` (default: the newest ready version) over the version serving
/// now, clearing a failed mark.
pub async fn start_rollout(
    registry: &Arc<Registry>,
    model: &str,
    version: Option<u64>,
) -> Result<()> {
    let name = model.to_string();
    change(registry, model, Cause::Command, move |policy, snapshot| {
        let plan = policy.rollout.clone().ok_or_else(|| no_plan(&name))?;
        let candidate = match version {
            Some(v) => v,
            None => snapshot
                .ready_versions()
                .last()
                .map(|v| v.version)
                .ok_or_else(|| nothing_ready(&name))?,
        };
        let baseline = snapshot
            .primary_version()
            .filter(|b| *b != candidate)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "model '{name}': version {candidate} already takes all traffic"
                ))
            })?;
        policy.failed.remove(&candidate);
        if let Some(p) = &mut policy.rollout {
            p.paused = false;
        }
        begin(policy, &plan.steps, candidate, baseline);
        Ok(Some(format!(
            "rollout of version {candidate} over {baseline} started at {}%",
            plan.steps[0]
        )))
    })
    .await
}

/// Pauses (`true`: holds a running rollout at its step and starts no new one) or resumes the
/// model's rollouts.
pub async fn set_paused(registry: &Arc<Registry>, model: &str, paused: bool) -> Result<()> {
    let name = model.to_string();
    let (from, to) = if paused {
        (RolloutPhase::Running, RolloutPhase::Paused)
    } else {
        (RolloutPhase::Paused, RolloutPhase::Running)
    };
    change(registry, model, Cause::Command, move |policy, _| {
        let plan = policy.rollout.as_mut().ok_or_else(|| no_plan(&name))?;
        plan.paused = paused;
        if let Some(state) = &mut policy.rollout_state
            && state.phase == from
        {
            state.phase = to;
        }
        Ok(Some(
            if paused {
                "rollout paused"
            } else {
                "rollout resumed"
            }
            .into(),
        ))
    })
    .await
}

/// Sets the weights of the first rollout step.
pub fn begin(policy: &mut TrafficPolicy, steps: &[f64], candidate: u64, baseline: u64) {
    let first = steps.first().copied().unwrap_or(100.0);
    policy.pin = None;
    policy.weights = [(baseline, 100.0 - first), (candidate, first)].into();
    policy.rollout_state = Some(traffic::started(candidate, baseline));
}

/// (candidate, baseline) of a running or paused rollout.
pub fn active_rollout(policy: &TrafficPolicy) -> Option<(u64, u64)> {
    policy
        .rollout_state
        .as_ref()
        .filter(|s| matches!(s.phase, RolloutPhase::Running | RolloutPhase::Paused))
        .map(|s| (s.candidate, s.baseline))
}

/// The newest version older than `serving`: a ready one, else one on disk (loaded by the
/// change), skipping versions marked failed.
fn older_than(snapshot: &ModelSnapshot, on_disk: &[u64], serving: u64) -> Option<u64> {
    let ready = snapshot
        .ready_versions()
        .map(|v| v.version)
        .filter(|v| *v < serving && !is_failed(snapshot.policy(), snapshot, *v))
        .last();
    ready.or_else(|| on_disk.iter().copied().filter(|v| *v < serving).max())
}

async fn older_on_disk(registry: &Registry, model: &str) -> Result<Vec<u64>> {
    let dir = registry.root().join(model);
    let name = model.to_string();
    let scanned = tokio::task::spawn_blocking(move || crate::repository::scan_model(&name, &dir))
        .await
        .map_err(|e| Error::Unavailable(format!("scan task failed: {e}")))?;
    Ok(scanned
        .map(|s| s.versions.keys().copied().collect())
        .unwrap_or_default())
}

async fn require_on_disk(registry: &Registry, model: &str, version: u64) -> Result<()> {
    registry.get(model)?;
    if older_on_disk(registry, model).await?.contains(&version) {
        return Ok(());
    }
    Err(Error::UnknownVersion {
        model: model.to_string(),
        version: version.to_string(),
    })
}

fn no_plan(model: &str) -> Error {
    Error::FailedPrecondition(format!(
        "model '{model}' has no rollout plan; add a `rollout:` section to its traffic.yaml or \
         set one with `switchyard traffic set`"
    ))
}

fn nothing_ready(model: &str) -> Error {
    Error::NotReady {
        model: model.to_string(),
        reason: "no version is ready".into(),
    }
}
