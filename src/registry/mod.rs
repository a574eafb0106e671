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
pub mod version;
mod warmup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::proto::inference::ModelConfig;
use crate::repository::Fingerprint;

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
    /// The version that serves requests naming none: the pinned one when it is ready, else the
    /// newest ready one.
    pub default_version: Option<u64>,
    /// Digest of the configuration file in force (0: none, or completed from the model file).
    pub config_digest: u64,
    /// A version every request naming none goes to, set through the management API.
    pub pinned: Option<u64>,
}

impl ModelSnapshot {
    /// A snapshot for a model that cannot serve at all.
    pub fn unavailable(reason: impl Into<String>) -> ModelSnapshot {
        ModelSnapshot {
            reason: reason.into(),
            ..ModelSnapshot::default()
        }
    }

    /// Builds a snapshot and derives its default version.
    pub fn new(
        config: Arc<ModelConfig>,
        config_digest: u64,
        versions: BTreeMap<u64, VersionStatus>,
        pinned: Option<u64>,
    ) -> ModelSnapshot {
        let mut snapshot = ModelSnapshot {
            config: Some(config),
            versions,
            config_digest,
            pinned,
            ..ModelSnapshot::default()
        };
        snapshot.default_version = snapshot.derive_default();
        snapshot
    }

    /// The pinned version if it is ready, else the newest ready one.
    fn derive_default(&self) -> Option<u64> {
        let ready = |v: &u64| self.versions.get(v).is_some_and(|s| s.serving.is_some());
        self.pinned
            .filter(ready)
            .or_else(|| self.versions.keys().rev().copied().find(ready))
    }

    /// The same snapshot with another pin.
    pub fn with_pin(&self, pinned: Option<u64>) -> ModelSnapshot {
        let mut snapshot = self.clone();
        snapshot.pinned = pinned;
        snapshot.default_version = snapshot.derive_default();
        snapshot
    }

    /// The ready versions, oldest first.
    pub fn ready_versions(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.versions.values().filter_map(|s| s.serving.as_ref())
    }
}

/// A model by name, with its current snapshot.
pub struct Model {
    pub name: String,
    snapshot: ArcSwap<ModelSnapshot>,
}

impl Model {
    fn new(name: &str, snapshot: ModelSnapshot) -> Model {
        Model {
            name: name.to_string(),
            snapshot: ArcSwap::from_pointee(snapshot),
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
}

impl Registry {
    /// An empty registry over a repository directory.
    pub fn new(root: PathBuf, backend: Arc<dyn Backend>) -> Registry {
        Registry {
            root,
            backend,
            models: DashMap::new(),
            events: events::Events::default(),
        }
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
        self.models.remove(name).map(|(_, model)| model)
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
