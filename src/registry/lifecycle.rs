//! Loading and unloading. A model is read from disk, its configuration completed and checked, each
//! version the policy selects is loaded on a blocking thread and its instances started; only then
//! is the new snapshot published. A failure is an outcome recorded in the snapshot (state and
//! reason), never a crash, and other models are untouched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::batching::{Scheduler, SchedulingConfig};
use crate::error::{Error, Result};
use crate::executor::Backend;
use crate::proto::inference::ModelConfig;
use crate::proto::inference::model_instance_group::Kind;
use crate::repository::{self, ModelSource};
use crate::schema::ModelSchema;

use super::{ModelSnapshot, ModelVersion, Registry, VersionState, VersionStatus};

/// Platforms and backends the CPU executor serves.
const ONNX_PLATFORMS: &[&str] = &["onnxruntime_onnx", "onnx"];
const ONNX_BACKENDS: &[&str] = &["onnxruntime", "onnx"];

/// Loads every model in the repository (or only `names`, when given), as at start-up.
pub async fn load_all(registry: &Arc<Registry>, names: Option<&[String]>) -> std::io::Result<()> {
    let scanned = {
        let root = registry.root().to_path_buf();
        tokio::task::spawn_blocking(move || repository::scan(&root))
            .await
            .map_err(std::io::Error::other)??
    };
    let wanted = |name: &str| names.is_none_or(|n| n.iter().any(|w| w == name || w == "*"));
    for (name, model) in scanned.into_iter().filter(|(n, _)| wanted(n)) {
        let snapshot = build_snapshot(registry, &name, model).await;
        registry.publish(&name, snapshot);
    }
    Ok(())
}

/// Reads one model from disk again and loads it; the error says why it cannot serve.
pub async fn load_model(registry: &Arc<Registry>, name: &str) -> Result<()> {
    let dir = registry.root().join(name);
    if !dir.is_dir() {
        return Err(Error::UnknownModel {
            model: name.to_string(),
        });
    }
    let scanned = {
        let name = name.to_string();
        tokio::task::spawn_blocking(move || repository::scan_model(&name, &dir))
            .await
            .map_err(|e| Error::Exhausted(format!("load task failed: {e}")))?
    };
    let snapshot = build_snapshot(registry, name, scanned).await;
    let outcome = load_outcome(name, &snapshot);
    registry.publish(name, snapshot);
    outcome
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

fn load_outcome(name: &str, snapshot: &ModelSnapshot) -> Result<()> {
    if snapshot.default_version.is_some() {
        return Ok(());
    }
    let reason = if snapshot.reason.is_empty() {
        super::not_ready_reason(snapshot)
    } else {
        snapshot.reason.clone()
    };
    Err(Error::Config {
        model: name.to_string(),
        reason: format!("failed to load: {reason}"),
    })
}

/// Builds the snapshot a scanned model should have; never fails, records reasons instead.
async fn build_snapshot(
    registry: &Arc<Registry>,
    name: &str,
    scanned: repository::ScannedModel,
) -> ModelSnapshot {
    let source = match scanned {
        Ok(source) => source,
        Err(reason) => {
            warn!(model = name, %reason, "model configuration is invalid");
            return ModelSnapshot::unavailable(reason);
        }
    };
    let backend = Arc::clone(registry.backend());
    let name = name.to_string();
    let built = tokio::task::spawn_blocking(move || load_versions(&*backend, &name, &source)).await;
    built.unwrap_or_else(|e| ModelSnapshot::unavailable(format!("load task failed: {e}")))
}

/// Resolves the configuration and loads every selected version. Runs on a blocking thread.
fn load_versions(backend: &dyn Backend, name: &str, source: &ModelSource) -> ModelSnapshot {
    let config = match resolve_config(backend, source) {
        Ok(config) => config,
        Err(reason) => {
            warn!(model = name, %reason, "model configuration is invalid");
            return ModelSnapshot::unavailable(reason);
        }
    };
    let schema = match ModelSchema::from_config(&config) {
        Ok(schema) => Arc::new(schema),
        Err(reason) => {
            warn!(model = name, %reason, "model configuration is invalid");
            return ModelSnapshot::unavailable(reason);
        }
    };
    let selected = repository::select_versions(&config, &source.versions);
    if selected.is_empty() {
        let reason = "no version directory holds a model file that the version policy selects";
        warn!(model = name, reason, "model has no versions to serve");
        return ModelSnapshot::unavailable(reason);
    }
    let scheduling = match SchedulingConfig::from_model_config(&config, instance_count(&config)) {
        Ok(scheduling) => scheduling,
        Err(reason) => {
            warn!(model = name, %reason, "model configuration is invalid");
            return ModelSnapshot::unavailable(reason);
        }
    };
    let mut versions = BTreeMap::new();
    for version in selected {
        let file = &source.versions[&version];
        let status = load_version(backend, &schema, name, version, file, &scheduling);
        versions.insert(version, status);
    }
    ModelSnapshot::new(Arc::new(config), versions)
}

fn load_version(
    backend: &dyn Backend,
    schema: &Arc<ModelSchema>,
    name: &str,
    version: u64,
    file: &std::path::Path,
    scheduling: &SchedulingConfig,
) -> VersionStatus {
    let started = Instant::now();
    let instances = scheduling.instances;
    let loaded = backend
        .load(schema, file)
        .and_then(|model| Scheduler::start(&model, scheduling, name, version));
    match loaded {
        Ok(scheduler) => {
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            info!(
                model = name,
                version, instances, elapsed_ms, "model version ready"
            );
            VersionStatus {
                state: VersionState::Ready,
                reason: String::new(),
                serving: Some(Arc::new(ModelVersion::new(
                    name,
                    version,
                    Arc::clone(schema),
                    scheduler,
                ))),
            }
        }
        Err(reason) => {
            warn!(model = name, version, %reason, "model version failed to load");
            VersionStatus {
                state: VersionState::Unavailable,
                reason,
                serving: None,
            }
        }
    }
}

/// The configuration in force: the file's, completed from the model file where it declares no
/// tensors (or there is no file), and checked for what this server can run.
pub fn resolve_config(backend: &dyn Backend, source: &ModelSource) -> Result<ModelConfig, String> {
    let mut config = source.config.clone().unwrap_or_default();
    if config.input.is_empty() || config.output.is_empty() {
        let (_, file) = source
            .versions
            .iter()
            .next_back()
            .ok_or("no configuration and no version directory to complete one from")?;
        let completed = backend.complete_config(&source.name, file)?;
        if config.input.is_empty() {
            config.input = completed.input;
            config.output = completed.output;
            if source.config.is_none() {
                config.max_batch_size = completed.max_batch_size;
            }
        }
        if config.platform.is_empty() && config.backend.is_empty() {
            config.platform = completed.platform;
            config.backend = completed.backend;
        }
    }
    if config.name.is_empty() {
        config.name = source.name.clone();
    }
    if config.platform.is_empty() && config.backend.is_empty() {
        config.platform = ONNX_PLATFORMS[0].to_string();
    }
    check_runnable(&config)?;
    Ok(config)
}

fn check_runnable(config: &ModelConfig) -> Result<(), String> {
    let platform_ok =
        config.platform.is_empty() || ONNX_PLATFORMS.contains(&config.platform.as_str());
    let backend_ok = config.backend.is_empty() || ONNX_BACKENDS.contains(&config.backend.as_str());
    if !platform_ok || !backend_ok {
        return Err(format!(
            "platform '{}' / backend '{}' is not supported: this server runs ONNX models \
             (platform onnxruntime_onnx, backend onnxruntime)",
            config.platform, config.backend
        ));
    }
    for group in &config.instance_group {
        if group.kind == Kind::Gpu as i32 {
            return Err(format!(
                "instance group '{}' asks for KIND_GPU, but no GPU executor is available; \
                 use KIND_CPU",
                group.name
            ));
        }
        if group.count < 0 {
            return Err(format!(
                "instance group '{}' has a negative count",
                group.name
            ));
        }
    }
    Ok(())
}

/// Instances to start: the sum of the groups' counts (a group without a count has one), at least 1.
fn instance_count(config: &ModelConfig) -> usize {
    let total: usize = config
        .instance_group
        .iter()
        .map(|g| if g.count == 0 { 1 } else { g.count as usize })
        .sum();
    total.max(1)
}
