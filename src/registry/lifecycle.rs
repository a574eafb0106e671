//! Loading, swapping and retiring. `reconcile` brings one model in line with what disk (or a load
//! request) says: versions whose files and configuration are unchanged are kept as they are; new or
//! changed versions are loaded and warmed on a blocking thread once their files have settled; only
//! then is one new snapshot published. A failed load is an outcome recorded in the snapshot (state
//! and reason) while whatever served before keeps serving; it is retried when the files or the
//! configuration change again. Retired versions are dropped when their last request finishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::batching::Scheduler;
use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::proto::inference::ModelConfig;
use crate::repository::{self, Fingerprint, ModelSource, ScannedModel};
use crate::telemetry::spans;

use crate::routing::TrafficPolicy;

use super::resolve::{Resolved, resolve};
use super::traffic;
use super::{ModelSnapshot, ModelVersion, Registry, VersionState, VersionStatus, warmup};

/// How eagerly new files are taken.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    /// Files must be this old, and unchanged across two looks, before a version is loaded.
    pub quiet: Duration,
    /// Skip the checks (explicit loads, start-up).
    pub immediate: bool,
}

impl Settle {
    /// Take files as they are.
    pub const IMMEDIATE: Settle = Settle {
        quiet: Duration::ZERO,
        immediate: true,
    };
}

/// What reconciliation remembers between looks at the repository.
#[derive(Debug, Default)]
pub struct Looks {
    seen: HashMap<(String, u64), Fingerprint>,
}

impl Looks {
    /// Records this look and says whether the version directory has settled: unchanged since the
    /// previous look and no file modified within `quiet`.
    fn settled(&mut self, model: &str, version: u64, fp: &Fingerprint, settle: Settle) -> bool {
        if settle.immediate {
            return true;
        }
        let key = (model.to_string(), version);
        let unchanged = self.seen.get(&key) == Some(fp);
        self.seen.insert(key, fp.clone());
        let quiet = fp
            .newest()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= settle.quiet);
        unchanged && quiet && !fp.files.is_empty()
    }

    fn forget(&mut self, model: &str) {
        self.seen.retain(|(m, _), _| m != model);
    }
}

/// The outcome of reconciling one model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// A new snapshot was published.
    pub changed: bool,
    /// Some version is waiting for its files to settle: look again soon.
    pub pending: bool,
}

/// Reconciles every model of a scan, and retires models that left the repository.
pub async fn reconcile_all(
    registry: &Arc<Registry>,
    scanned: BTreeMap<String, ScannedModel>,
    looks: &mut Looks,
    settle: Settle,
) -> Reconciled {
    let mut outcome = Reconciled::default();
    for model in registry.models() {
        if !scanned.contains_key(&model.name) {
            registry.remove(&model.name);
            looks.forget(&model.name);
            info!(model = %model.name, "model removed from the repository; retired");
            outcome.changed = true;
        }
    }
    for (name, model) in scanned {
        let one = reconcile(registry, &name, model, looks, settle).await;
        outcome.changed |= one.changed;
        outcome.pending |= one.pending;
    }
    outcome
}

/// Loads every model in the repository (or only `names`, when given), as at start-up.
pub async fn load_all(registry: &Arc<Registry>, names: Option<&[String]>) -> std::io::Result<()> {
    let root = registry.root().to_path_buf();
    let scanned = tokio::task::spawn_blocking(move || repository::scan(&root))
        .await
        .map_err(std::io::Error::other)??;
    let wanted = |name: &str| names.is_none_or(|n| n.iter().any(|w| w == name || w == "*"));
    let mut looks = Looks::default();
    for (name, model) in scanned.into_iter().filter(|(n, _)| wanted(n)) {
        reconcile(registry, &name, model, &mut looks, Settle::IMMEDIATE).await;
    }
    Ok(())
}

/// Reconciles one model as asked by a command: files are taken as they are, no settling.
pub(crate) async fn reconcile_now(
    registry: &Arc<Registry>,
    name: &str,
    scanned: ScannedModel,
) -> Reconciled {
    let mut looks = Looks::default();
    reconcile(registry, name, scanned, &mut looks, Settle::IMMEDIATE).await
}

/// Loads (or reloads) one model from its scanned source; the error says why it cannot serve.
pub async fn load_model(registry: &Arc<Registry>, name: &str, scanned: ScannedModel) -> Result<()> {
    reconcile_now(registry, name, scanned).await;
    let snapshot = registry.get(name)?.snapshot();
    let failed: Vec<String> = snapshot
        .versions
        .iter()
        .filter(|(_, s)| !s.reason.is_empty())
        .map(|(v, s)| format!("version {v}: {}", s.reason))
        .collect();
    if snapshot.default_version.is_some() && snapshot.reason.is_empty() && failed.is_empty() {
        return Ok(());
    }
    let reason = if failed.is_empty() {
        super::not_ready_reason(&snapshot)
    } else {
        failed.join("; ")
    };
    Err(Error::Config {
        model: name.to_string(),
        reason: format!("failed to load: {reason}"),
    })
}

/// Stops serving a model; its versions are freed once their last requests finish.
pub fn unload_model(registry: &Registry, name: &str) -> Result<()> {
    let model = registry.get(name)?;
    let previous = model.snapshot();
    let mut snapshot = ModelSnapshot::unavailable("unloaded");
    snapshot.config = previous.config.clone();
    model.publish(snapshot);
    info!(model = name, "model unloaded");
    Ok(())
}

/// Brings one model in line with its scanned source and publishes the result when it changed.
pub async fn reconcile(
    registry: &Arc<Registry>,
    name: &str,
    scanned: ScannedModel,
    looks: &mut Looks,
    settle: Settle,
) -> Reconciled {
    let current = registry.get(name).map(|m| m.snapshot()).ok();
    let current = current.as_deref().cloned().unwrap_or_default();
    let source = match scanned {
        Ok(source) => source,
        Err(reason) => return publish_failure(registry, name, &current, reason),
    };
    let backend = Arc::clone(registry.backend());
    let resolved = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || resolve(&*backend, &source)).await
    };
    let resolved = match resolved {
        Ok(Ok(mut resolved)) => {
            registry.share_rate_limit(name, &mut resolved.scheduling);
            Arc::new(resolved)
        }
        Ok(Err(reason)) => return publish_failure(registry, name, &current, reason),
        Err(e) => {
            return publish_failure(registry, name, &current, format!("load task failed: {e}"));
        }
    };
    let traffic = traffic::state_from(registry, name, &source.traffic, &current.traffic);
    let plan = plan(
        name,
        &current,
        &source,
        (&resolved.config, &traffic.policy),
        looks,
        settle,
    );
    let mut versions = plan.keep;
    if !plan.load.is_empty() {
        let backend = Arc::clone(registry.backend());
        let (model, source, resolved) = (name.to_string(), source.clone(), Arc::clone(&resolved));
        let loads = plan.load;
        let drain = registry.drain_signal();
        // Load spans are children of whatever span asked for the load.
        let parent = tracing::Span::current();
        let loaded = tokio::task::spawn_blocking(move || {
            let _parent = parent.enter();
            loads
                .into_iter()
                .map(|(v, previous)| {
                    let started = Instant::now();
                    let status =
                        load_version(&*backend, (&model, &drain), &source, &resolved, v, previous);
                    (v, status, started.elapsed())
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (_, status, took) in &loaded {
            let ok = status.state == VersionState::Ready && status.reason.is_empty();
            registry.events.load(name, ok, *took);
        }
        versions.extend(loaded.into_iter().map(|(v, status, _)| (v, status)));
    }
    // Versions the policy no longer selects keep serving until a selected one is ready and no
    // selected one is still settling: a new version never leaves a gap.
    if plan.pending || !versions.values().any(|s| s.serving.is_some()) {
        for (v, status) in &current.versions {
            if status.serving.is_some() {
                versions.entry(*v).or_insert_with(|| status.clone());
            }
        }
    }
    let snapshot = ModelSnapshot::new(
        Arc::new(resolved.config.clone()),
        source.config_digest,
        versions,
        traffic,
    );
    let changed = traffic::publish_with_current_policy(registry, name, snapshot, &current).await;
    Reconciled {
        changed,
        pending: plan.pending,
    }
}

/// Records why a model cannot take its new source, keeping what serves.
fn publish_failure(
    registry: &Registry,
    name: &str,
    current: &ModelSnapshot,
    reason: String,
) -> Reconciled {
    if current.reason == reason {
        return Reconciled::default();
    }
    warn!(model = name, %reason, "model cannot be (re)loaded");
    let snapshot = if current.default_version.is_some() {
        // Keep serving the previous versions and configuration; report the problem.
        ModelSnapshot {
            reason: format!("{reason} (still serving the previous configuration)"),
            ..current.clone()
        }
    } else {
        ModelSnapshot::unavailable(reason)
    };
    registry.publish(name, snapshot);
    Reconciled {
        changed: true,
        pending: false,
    }
}

/// Which versions to keep as they are and which to load now.
struct Plan {
    keep: BTreeMap<u64, VersionStatus>,
    /// Versions to load, with the status they had (kept serving if the new load fails).
    load: Vec<(u64, Option<VersionStatus>)>,
    pending: bool,
}

/// The policy selects versions; the traffic policy adds the versions it routes to.
fn plan(
    name: &str,
    current: &ModelSnapshot,
    source: &ModelSource,
    (config, policy): (&ModelConfig, &TrafficPolicy),
    looks: &mut Looks,
    settle: Settle,
) -> Plan {
    let mut wanted: BTreeSet<u64> = repository::select_versions(config, &source.versions)
        .into_iter()
        .collect();
    wanted.extend(
        traffic::referenced(policy)
            .into_iter()
            .filter(|v| source.versions.contains_key(v)),
    );
    let mut plan = Plan {
        keep: BTreeMap::new(),
        load: Vec::new(),
        pending: false,
    };
    for version in wanted {
        let found = &source.versions[&version];
        let existing = current.versions.get(&version);
        let unchanged = existing.is_some_and(|s| {
            s.fingerprint == found.fingerprint && s.config_digest == source.config_digest
        });
        if let (true, Some(status)) = (unchanged, existing) {
            plan.keep.insert(version, status.clone());
        } else if looks.settled(name, version, &found.fingerprint, settle) {
            plan.load.push((version, existing.cloned()));
        } else {
            plan.pending = true;
            if let Some(status) = existing {
                plan.keep.insert(version, status.clone());
            }
        }
    }
    plan
}

fn load_version(
    backend: &dyn Backend,
    (name, drain): (&str, &tokio::sync::watch::Receiver<bool>),
    source: &ModelSource,
    resolved: &Resolved,
    version: u64,
    previous: Option<VersionStatus>,
) -> VersionStatus {
    let Resolved {
        config,
        schema,
        scheduling,
    } = resolved;
    let found = &source.versions[&version];
    let span = spans::model_load(name, version);
    let _span = span.enter();
    let started = Instant::now();
    let loaded = backend
        .load(config, schema, &found.file)
        .and_then(|model| warmup::run(config, &found.file, schema, &model).map(|()| model))
        .and_then(|model| Scheduler::start(&model, scheduling, (name, version), drain.clone()))
        .map(|scheduler| {
            Arc::new(ModelVersion::new(
                name,
                version,
                Arc::clone(schema),
                scheduler,
            ))
        });
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    spans::record_load(&span, elapsed_ms, loaded.as_ref().err().map(String::as_str));
    match loaded {
        Ok(ready) => {
            info!(
                model = name,
                version, elapsed_ms, "model version loaded and warmed"
            );
            VersionStatus {
                state: VersionState::Ready,
                reason: String::new(),
                serving: Some(ready),
                fingerprint: found.fingerprint.clone(),
                config_digest: source.config_digest,
            }
        }
        Err(reason) => {
            warn!(model = name, version, elapsed_ms, %reason, "model version failed to load");
            let kept = previous.and_then(|p| p.serving);
            let reason = match kept {
                Some(_) => format!("{reason} (still serving the previous files)"),
                None => reason,
            };
            VersionStatus {
                state: if kept.is_some() {
                    VersionState::Ready
                } else {
                    VersionState::Unavailable
                },
                reason,
                serving: kept,
                fingerprint: found.fingerprint.clone(),
                config_digest: source.config_digest,
            }
        }
    }
}
