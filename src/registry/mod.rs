//! The live models. Each model publishes one immutable `ModelSnapshot` through `ArcSwap`: its
//! configuration, the versions its policy selects with their states, and the ready versions
//! themselves. Requests only `load()` it; `lifecycle` builds a new snapshot off the request path and
//! swaps it in. A request holds its `Arc<ModelVersion>` until it is answered, so a retired version
//! lives exactly as long as its last request.

pub mod events;
pub mod lifecycle;
pub mod reconciler;
pub mod resolve;
pub mod stats;
mod swap;
pub mod traffic;
pub mod version;
mod warmup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::batching::SchedulingConfig;
use crate::batching::limits::RateLimit;
use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::proto::inference::ModelConfig;
use crate::repository::Fingerprint;
use crate::routing::history::History;
use crate::routing::router::{RouteKind, ShadowTarget, key_hash};
use crate::routing::shadow::ShadowSlots;
use crate::routing::{RouteTable, TrafficPolicy, TrafficState};

pub use version::ModelVersion;

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Loading,
    Ready,
    Unavailable,
}

impl VersionState {
    /// Triton's name for the state, as RepositoryIndex reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Ready => "READY",
            VersionState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One version the policy selected, whether or not it loaded.
#[derive(Clone)]
pub struct VersionStatus {
    pub state: VersionState,
    /// Why it is not ready (empty when it is).
    pub reason: String,
    /// The serving version, when ready.
    pub serving: Option<Arc<ModelVersion>>,
    /// The version directory's files when this status was reached; a load is retried only when
    /// they (or the configuration) change.
    pub fingerprint: Fingerprint,
    /// The configuration digest this status was reached with.
    pub config_digest: u64,
}

/// Everything about one model that must agree, published as one value.
#[derive(Clone, Default)]
pub struct ModelSnapshot {
    /// The configuration in force (completed from the model file where needed).
    pub config: Option<Arc<ModelConfig>>,
    pub versions: BTreeMap<u64, VersionStatus>,
    /// Why the model as a whole cannot serve (invalid configuration, unloaded); empty otherwise.
    pub reason: String,
    /// The version that serves requests naming none when no weights apply: the pinned one when
    /// it is ready, else the newest ready one.
    pub default_version: Option<u64>,
    /// Digest of the configuration file in force (0: none, or completed from the model file).
    pub config_digest: u64,
    /// The traffic policy in force and where it comes from.
    pub traffic: TrafficState,
    /// Derived from the policy and the ready versions when the snapshot is built.
    pub routes: RouteTable,
}

impl ModelSnapshot {
    /// A snapshot for a model that cannot serve at all.
    pub fn unavailable(reason: impl Into<String>) -> ModelSnapshot {
        ModelSnapshot {
            reason: reason.into(),
            ..ModelSnapshot::default()
        }
    }

    /// Builds a snapshot and derives its default version and route table.
    pub fn new(
        config: Arc<ModelConfig>,
        config_digest: u64,
        versions: BTreeMap<u64, VersionStatus>,
        traffic: TrafficState,
    ) -> ModelSnapshot {
        let snapshot = ModelSnapshot {
            config: Some(config),
            versions,
            config_digest,
            ..ModelSnapshot::default()
        };
        snapshot.with_traffic(traffic)
    }

    /// The same snapshot under another traffic policy.
    pub fn with_traffic(&self, traffic: TrafficState) -> ModelSnapshot {
        let mut snapshot = self.clone();
        snapshot.routes = RouteTable::build(&traffic.policy, &snapshot.versions);
        snapshot.traffic = traffic;
        snapshot.default_version = snapshot.derive_default();
        snapshot
    }

    /// The policy in force.
    pub fn policy(&self) -> &TrafficPolicy {
        &self.traffic.policy
    }

    /// The pinned version, if any (ready or not).
    pub fn pinned(&self) -> Option<u64> {
        self.traffic.policy.pin
    }

    /// The pinned version if it is ready, else the newest ready one.
    fn derive_default(&self) -> Option<u64> {
        let ready = |v: &u64| self.versions.get(v).is_some_and(|s| s.serving.is_some());
        self.pinned()
            .filter(ready)
            .or_else(|| self.versions.keys().rev().copied().find(ready))
    }

    /// The ready versions, oldest first.
    pub fn ready_versions(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.versions.values().filter_map(|s| s.serving.as_ref())
    }

    /// The version taking the largest share of requests naming none: the pin, else the arm
    /// with the largest weight, else the default version.
    pub fn primary_version(&self) -> Option<u64> {
        if let Some(pinned) = self.routes.pinned() {
            return Some(pinned.version);
        }
        self.routes
            .effective_percent()
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(v, _)| v)
            .or(self.default_version)
    }
}

/// Where a request goes and why.
pub struct Routed {
    pub version: Arc<ModelVersion>,
    pub kind: RouteKind,
    /// Hash of the routing key, when the request had one.
    pub key_hash: Option<u64>,
    /// The shadow target, for requests routed by policy while shadow traffic is on.
    pub shadow: Option<ShadowTarget>,
}

/// A model by name, with its current snapshot.
pub struct Model {
    pub name: String,
    snapshot: ArcSwap<ModelSnapshot>,
    /// Bounds the shadow requests in flight for this model.
    pub shadow_slots: ShadowSlots,
}

impl Model {
    fn new(name: &str, snapshot: ModelSnapshot) -> Model {
        Model {
            name: name.to_string(),
            snapshot: ArcSwap::from_pointee(snapshot),
            shadow_slots: ShadowSlots::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ModelSnapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a new snapshot; requests already running keep the versions they hold.
    pub fn publish(&self, snapshot: ModelSnapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Routes a request: to the version it names; else to the pinned version; else by the
    /// policy's weights (sticky when `key` is given); else to the default version.
    /// `key` is given the name of the header the policy reads the routing key from, and
    /// returns the request's key, if any.
    pub fn route(
        &self,
        version: &str,
        key: impl FnOnce(Option<&str>) -> Option<String>,
    ) -> Result<Routed> {
        let snapshot = self.snapshot.load();
        let named = |version| Routed {
            version,
            kind: RouteKind::Named,
            key_hash: None,
            shadow: None,
        };
        if !version.is_empty() {
            return self.pick(version).map(named);
        }
        let key_hash = key(snapshot.traffic.policy.routing_key.as_deref()).map(|k| key_hash(&k));
        let shadow = snapshot.routes.shadow().cloned();
        if let Some(pinned) = snapshot.routes.pinned() {
            let version = in_service(Arc::clone(pinned), &snapshot);
            return Ok(Routed {
                version,
                kind: RouteKind::Pinned,
                key_hash,
                shadow,
            });
        }
        if let Some((version, kind)) = snapshot.routes.pick(key_hash) {
            return Ok(Routed {
                version: Arc::clone(version),
                kind,
                key_hash,
                shadow,
            });
        }
        let version = self.pick("")?;
        Ok(Routed {
            version,
            kind: RouteKind::Default,
            key_hash,
            shadow,
        })
    }

    /// The version serving a request: the one named, or the default.
    pub fn pick(&self, version: &str) -> Result<Arc<ModelVersion>> {
        let snapshot = self.snapshot.load();
        if version.is_empty() {
            return snapshot
                .default_version
                .and_then(|v| snapshot.versions.get(&v))
                .and_then(|s| s.serving.clone())
                .map(|default| in_service(default, &snapshot))
                .ok_or_else(|| Error::NotReady {
                    model: self.name.clone(),
                    reason: not_ready_reason(&snapshot),
                });
        }
        let unknown = || Error::UnknownVersion {
            model: self.name.clone(),
            version: version.to_string(),
        };
        let number = version.parse::<u64>().map_err(|_| unknown())?;
        if snapshot.versions.is_empty() && !snapshot.reason.is_empty() {
            // The whole model is out of service (unloaded, invalid configuration).
            return Err(Error::NotReady {
                model: self.name.clone(),
                reason: snapshot.reason.clone(),
            });
        }
        let status = snapshot.versions.get(&number).ok_or_else(unknown)?;
        status.serving.clone().ok_or_else(|| Error::NotReady {
            model: format!("{}' version '{number}", self.name),
            reason: status.reason.clone(),
        })
    }
}

/// The default version, or while it is out of service (its circuit breaker open) the newest ready
/// version that is in service; the default still when none is.
fn in_service(default: Arc<ModelVersion>, snapshot: &ModelSnapshot) -> Arc<ModelVersion> {
    if default.is_healthy() {
        return default;
    }
    snapshot
        .versions
        .values()
        .rev()
        .filter_map(|s| s.serving.as_ref())
        .find(|v| v.is_healthy())
        .cloned()
        .unwrap_or(default)
}

fn not_ready_reason(snapshot: &ModelSnapshot) -> String {
    if !snapshot.reason.is_empty() {
        return snapshot.reason.clone();
    }
    let reasons: Vec<String> = snapshot
        .versions
        .iter()
        .map(|(v, s)| format!("version {v}: {}", s.reason))
        .collect();
    if reasons.is_empty() {
        "no versions are available".into()
    } else {
        reasons.join("; ")
    }
}

/// All models of one repository.
pub struct Registry {
    root: PathBuf,
    backend: Arc<dyn Backend>,
    models: DashMap<String, Arc<Model>>,
    /// Lifecycle counters, by model.
    pub events: events::Events,
    /// Every traffic change, by model.
    pub history: History,
    /// Traffic policies held in memory instead of the repository, by model, with the reason.
    overrides: DashMap<String, (TrafficPolicy, String)>,
    /// Serialises traffic changes (read, modify, write, publish).
    traffic_lock: tokio::sync::Mutex<()>,
    /// Never write traffic files; hold every change in memory.
    memory_only: bool,
    /// Turns true at shutdown: batchers stop waiting for batches to fill.
    draining: tokio::sync::watch::Sender<bool>,
    /// Each rate-limited model's one bucket, kept across reloads.
    rate_limits: DashMap<String, Arc<RateLimit>>,
}

impl Registry {
    /// An empty registry over a repository directory.
    pub fn new(root: PathBuf, backend: Arc<dyn Backend>) -> Registry {
        Registry {
            root,
            backend,
            models: DashMap::new(),
            events: events::Events::default(),
            history: History::default(),
            overrides: DashMap::new(),
            traffic_lock: tokio::sync::Mutex::new(()),
            memory_only: false,
            draining: tokio::sync::watch::Sender::new(false),
            rate_limits: DashMap::new(),
        }
    }

    /// Shutdown has begun: every batcher runs what it holds now instead of waiting for its
    /// batch to fill, so accepted requests are answered without their queue delay.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// What a batcher watches to learn that shutdown has begun.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Keeps traffic changes in memory instead of writing `traffic.yaml` (for repositories the
    /// daemon must not write).
    pub fn with_memory_only_traffic(mut self, memory_only: bool) -> Registry {
        self.memory_only = memory_only;
        self
    }

    /// The repository directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The backend that loads model files.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A model by name.
    pub fn get(&self, name: &str) -> Result<Arc<Model>> {
        self.models
            .get(name)
            .map(|m| Arc::clone(&m))
            .ok_or_else(|| Error::UnknownModel {
                model: name.to_string(),
            })
    }

    /// The version that serves a request for `model` naming `version` (empty: the default).
    pub fn pick(&self, model: &str, version: &str) -> Result<Arc<ModelVersion>> {
        self.get(model)?.pick(version)
    }

    /// Every model, sorted by name.
    pub fn models(&self) -> Vec<Arc<Model>> {
        let mut models: Vec<Arc<Model>> = self.models.iter().map(|m| Arc::clone(&m)).collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    /// Forgets a model (its directory is gone); requests holding its versions finish on them.
    pub fn remove(&self, name: &str) -> Option<Arc<Model>> {
        self.rate_limits.remove(name);
        self.models.remove(name).map(|(_, model)| model)
    }

    /// Makes `scheduling` use the model's one rate-limit bucket. Versions loaded at different
    /// times (and versions kept across a reload) then share it, and a reload that leaves the limit
    /// as it was keeps the tokens already spent. A changed limit starts a new bucket; the versions
    /// still holding the old one are reloaded with it, since the configuration changed.
    pub(crate) fn share_rate_limit(&self, name: &str, scheduling: &mut SchedulingConfig) {
        let Some(limit) = &scheduling.rate_limit else {
            self.rate_limits.remove(name);
            return;
        };
        let mut shared = self
            .rate_limits
            .entry(name.to_string())
            .or_insert_with(|| Arc::clone(limit));
        if shared.same_limit(limit) {
            scheduling.rate_limit = Some(Arc::clone(&shared));
        } else {
            *shared = Arc::clone(limit);
        }
    }

    /// Publishes a snapshot for `name`, creating the model entry on first use.
    pub fn publish(&self, name: &str, snapshot: ModelSnapshot) {
        match self.models.get(name) {
            Some(model) => model.publish(snapshot),
            None => {
                self.models
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(Model::new(name, ModelSnapshot::default())))
                    .publish(snapshot);
            }
        }
    }
}
