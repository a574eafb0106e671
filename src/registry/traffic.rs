//! Changing a model's traffic policy. Every change — a management command, a rollout step, a
//! failed gate — reads the policy in force, edits it, writes `<model>/traffic.yaml` atomically
//! (or, where that fails or the daemon is told not to write, holds an in-memory override and
//! says so), records the change in the history and publishes the new route table at once.
//! Changes are serialised by one lock, under which reconciliation also publishes, so a reload
//! never publishes an older policy over a newer one.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::warn;

use crate::error::{Error, Result};
use crate::repository;
use crate::routing::history::Cause;
use crate::routing::policy::{self, RolloutPhase, RolloutState, TrafficPolicy};
use crate::routing::{PolicySource, TrafficState};

use super::{ModelSnapshot, Registry, lifecycle, swap};

/// The versions a policy sends traffic to or needs loaded: the pin, weighted versions, the
/// shadow, and both sides of a rollout in progress.
pub fn referenced(policy: &TrafficPolicy) -> BTreeSet<u64> {
    let mut versions: BTreeSet<u64> = policy
        .weights
        .iter()
        .filter(|(_, w)| **w > 0.0)
        .map(|(v, _)| *v)
        .collect();
    versions.extend(policy.pin);
    versions.extend(policy.shadow.as_ref().map(|s| s.version));
    if let Some(state) = &policy.rollout_state
        && matches!(state.phase, RolloutPhase::Running | RolloutPhase::Paused)
    {
        versions.extend([state.candidate, state.baseline]);
    }
    versions
}

/// The policy a model should have now: its in-memory override, else its traffic file as
/// scanned; an invalid file keeps the policy in force and reports why.
pub(super) fn state_from(
    registry: &Registry,
    name: &str,
    on_disk: &std::result::Result<Option<TrafficPolicy>, String>,
    current: &TrafficState,
) -> TrafficState {
    if let Some(held) = registry.overrides.get(name) {
        let (policy, why) = held.value().clone();
        return TrafficState {
            policy,
            source: PolicySource::Memory,
            detail: why,
        };
    }
    match on_disk {
        Ok(Some(policy)) => TrafficState {
            policy: policy.clone(),
            source: PolicySource::File,
            detail: String::new(),
        },
        Ok(None) => TrafficState::default(),
        Err(reason) => TrafficState {
            detail: format!("{reason}; the previous policy stays in force"),
            ..current.clone()
        },
    }
}

/// Re-reads a model's traffic policy (override or file) and publishes `snapshot` with it,
/// under the traffic lock; records a reload when the policy changed on disk.
pub(super) async fn publish_with_current_policy(
    registry: &Arc<Registry>,
    name: &str,
    snapshot: ModelSnapshot,
    previous: &ModelSnapshot,
) -> bool {
    let _guard = registry.traffic_lock.lock().await;
    let dir = registry.root().join(name);
    let on_disk = tokio::task::spawn_blocking(move || policy::read(&dir))
        .await
        .unwrap_or_else(|e| Err(format!("traffic file task failed: {e}")));
    let live = registry.get(name).map(|m| m.snapshot()).ok();
    let current = live.as_deref().unwrap_or(previous);
    let traffic = state_from(registry, name, &on_disk, &current.traffic);
    if traffic.policy != current.traffic.policy {
        let detail = format!(
            "traffic.yaml {}: {}",
            if current.traffic.policy.is_empty() {
                "read"
            } else {
                "changed"
            },
            describe_change(&current.traffic.policy, &traffic.policy)
        );
        registry.history.record(name, Cause::Reload, &detail);
    }
    let snapshot = snapshot.with_traffic(traffic);
    warn_about_news(name, current, &snapshot);
    let changed = !swap::same_snapshot(current, &snapshot);
    if changed {
        swap::log_swap_and_count(registry, name, current, &snapshot);
        registry.publish(name, snapshot);
    }
    changed
}

/// Logs, once, a rejected traffic file and each new note of the route table (a weighted version
/// that is not ready, say), so a typo in a version number does not reroute traffic silently.
fn warn_about_news(name: &str, before: &ModelSnapshot, after: &ModelSnapshot) {
    let detail = &after.traffic.detail;
    if after.traffic.source != PolicySource::Memory
        && !detail.is_empty()
        && *detail != before.traffic.detail
    {
        warn!(model = name, reason = %detail, "traffic policy rejected");
    }
    for note in after.routes.notes() {
        if !before.routes.notes().contains(note) {
            warn!(model = name, %note, "traffic policy");
        }
    }
}

/// Applies `edit` to a model's policy. `edit` returns what it changed in words, or `None` when
/// there is nothing to do. Versions the new policy needs are loaded; if one cannot be, the
/// previous policy is restored and the error says why.
pub async fn change<F>(registry: &Arc<Registry>, name: &str, cause: Cause, edit: F) -> Result<()>
where
    F: FnOnce(&mut TrafficPolicy, &ModelSnapshot) -> Result<Option<String>>,
{
    let (before, after) = {
        let _guard = registry.traffic_lock.lock().await;
        let snapshot = registry.get(name)?.snapshot();
        let mut policy = snapshot.traffic.policy.clone();
        let Some(detail) = edit(&mut policy, &snapshot)? else {
            return Ok(());
        };
        if policy == snapshot.traffic.policy {
            return Ok(());
        }
        apply(registry, name, cause, &policy, &detail).await?;
        (snapshot.traffic.policy.clone(), policy)
    };
    if missing_versions(registry, name, &after)?.is_empty() {
        return Ok(());
    }
    reconcile_from_disk(registry, name).await?;
    let Some(&version) = missing_versions(registry, name, &after)?.iter().next() else {
        return Ok(());
    };
    let reason = registry
        .get(name)?
        .snapshot()
        .versions
        .get(&version)
        .map(|s| s.reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "its directory holds no loadable model".into());
    {
        let _guard = registry.traffic_lock.lock().await;
        let detail = format!("restored the previous policy: version {version} cannot serve");
        apply(registry, name, cause, &before, &detail).await?;
    }
    Err(Error::NotReady {
        model: format!("{name}' version '{version}"),
        reason,
    })
}

/// Persists, records and publishes a new policy; the caller holds the traffic lock.
async fn apply(
    registry: &Registry,
    name: &str,
    cause: Cause,
    policy: &TrafficPolicy,
    detail: &str,
) -> Result<()> {
    let model = registry.get(name)?;
    let state = persist(registry, name, policy).await;
    let detail = match state.source {
        PolicySource::Memory => format!("{detail} (held in memory: {})", state.detail),
        _ => detail.to_string(),
    };
    registry.history.record(name, cause, &detail);
    let before = model.snapshot();
    let after = before.with_traffic(state);
    warn_about_news(name, &before, &after);
    model.publish(after);
    Ok(())
}

/// Versions the policy needs that are not ready.
fn missing_versions(
    registry: &Registry,
    name: &str,
    policy: &TrafficPolicy,
) -> Result<BTreeSet<u64>> {
    let snapshot = registry.get(name)?.snapshot();
    Ok(referenced(policy)
        .into_iter()
        .filter(|v| snapshot.versions.get(v).is_none_or(|s| s.serving.is_none()))
        .collect())
}

/// Reads the model directory and reconciles it now (loading what the policy needs).
async fn reconcile_from_disk(registry: &Arc<Registry>, name: &str) -> Result<()> {
    let dir = registry.root().join(name);
    let model_name = name.to_string();
    let scanned = tokio::task::spawn_blocking(move || repository::scan_model(&model_name, &dir))
        .await
        .map_err(|e| Error::Unavailable(format!("reload task failed: {e}")))?;
    lifecycle::reconcile_now(registry, name, scanned).await;
    Ok(())
}

/// Writes the policy to the repository, or holds it in memory where that is not possible.
async fn persist(registry: &Registry, name: &str, policy: &TrafficPolicy) -> TrafficState {
    let held = |why: String| {
        registry
            .overrides
            .insert(name.to_string(), (policy.clone(), why.clone()));
        TrafficState {
            policy: policy.clone(),
            source: PolicySource::Memory,
            detail: why,
        }
    };
    if registry.memory_only {
        return held("the daemon keeps traffic changes in memory (--traffic-store memory)".into());
    }
    let dir = registry.root().join(name);
    let (to_write, model) = (policy.clone(), name.to_string());
    let written = tokio::task::spawn_blocking(move || {
        if to_write.is_empty() {
            policy::remove(&dir)
        } else {
            policy::write(&dir, &to_write, &model)
        }
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match written {
        Ok(()) => {
            registry.overrides.remove(name);
            TrafficState {
                policy: policy.clone(),
                source: if policy.is_empty() {
                    PolicySource::None
                } else {
                    PolicySource::File
                },
                detail: String::new(),
            }
        }
        Err(e) => {
            let path = registry.root().join(name).join(policy::TRAFFIC_FILE);
            warn!(model = name, path = %path.display(), error = %e, "cannot write the traffic file");
            held(format!(
                "cannot write {}: {e}; lost at restart",
                path.display()
            ))
        }
    }
}

/// A policy in a few words, for the history.
pub fn describe(policy: &TrafficPolicy) -> String {
    let mut parts = Vec::new();
    if let Some(pin) = policy.pin {
        parts.push(format!("pinned to {pin}"));
    }
    if !policy.weights.is_empty() {
        let weights: Vec<String> = policy
            .weights
            .iter()
            .map(|(v, w)| format!("{v}: {w}"))
            .collect();
        parts.push(format!("weights {{{}}}", weights.join(", ")));
    }
    if let Some(key) = &policy.routing_key {
        parts.push(format!("routing key header {key}"));
    }
    if let Some(shadow) = &policy.shadow {
        parts.push(format!("shadow {} at {}%", shadow.version, shadow.percent));
    }
    if let Some(plan) = &policy.rollout {
        let steps: Vec<String> = plan.steps.iter().map(|s| s.to_string()).collect();
        parts.push(format!("rollout steps [{}]", steps.join(", ")));
    }
    if let Some(state) = &policy.rollout_state {
        parts.push(format!(
            "rollout of {} over {} {} at step {}",
            state.candidate,
            state.baseline,
            state.phase.as_str(),
            state.step
        ));
    }
    if parts.is_empty() {
        "no policy (the version policy decides)".into()
    } else {
        parts.join("; ")
    }
}

/// `old -> new` in words.
pub fn describe_change(old: &TrafficPolicy, new: &TrafficPolicy) -> String {
    format!("{} -> {}", describe(old), describe(new))
}

/// Marks `version` as rejected with the digest of its files, so no rollout retries it until
/// they change.
pub fn mark_failed(policy: &mut TrafficPolicy, snapshot: &ModelSnapshot, version: u64) {
    let digest = snapshot
        .versions
        .get(&version)
        .map(|s| s.fingerprint.digest())
        .unwrap_or_default();
    policy.failed.insert(version, digest);
}

/// Whether `version` was rejected and its files have not changed since.
pub fn is_failed(policy: &TrafficPolicy, snapshot: &ModelSnapshot, version: u64) -> bool {
    policy.failed.get(&version).is_some_and(|digest| {
        snapshot
            .versions
            .get(&version)
            .is_some_and(|s| &s.fingerprint.digest() == digest)
    })
}

/// A rollout state at its first step.
pub fn started(candidate: u64, baseline: u64) -> RolloutState {
    RolloutState {
        candidate,
        baseline,
        phase: RolloutPhase::Running,
        step: 0,
        reason: String::new(),
    }
}
