//! What a model's configuration resolves to before any version loads: the configuration in force
//! (completed from the model file where it declares no tensors), its checked schema, and its
//! scheduling; or the reason the model cannot serve here.

use std::sync::Arc;

use crate::batching::SchedulingConfig;
use crate::executor::Backend;
use crate::proto::inference::ModelConfig;
use crate::proto::inference::model_instance_group::Kind;
use crate::repository::ModelSource;
use crate::schema::ModelSchema;

/// Platforms and backends the CPU executor serves.
const ONNX_PLATFORMS: &[&str] = &["onnxruntime_onnx", "onnx"];
const ONNX_BACKENDS: &[&str] = &["onnxruntime", "onnx"];

/// What a model's configuration resolves to: everything its versions load with.
pub struct Resolved {
    pub config: ModelConfig,
    pub schema: Arc<ModelSchema>,
    pub scheduling: SchedulingConfig,
}

/// The configuration in force, its schema and its scheduling, or why the model cannot serve.
pub fn resolve(backend: &dyn Backend, source: &ModelSource) -> Result<Resolved, String> {
    let config = resolve_config(backend, source)?;
    let schema = Arc::new(ModelSchema::from_config(&config)?);
    let scheduling = SchedulingConfig::from_model_config(&config, instance_count(&config))?;
    check_gpu(&config)?;
    Ok(Resolved {
        config,
        schema,
        scheduling,
    })
}

/// The configuration in force: the file's, completed from the model file where it declares no
/// tensors (or there is no file), and checked for what this server can run.
pub fn resolve_config(backend: &dyn Backend, source: &ModelSource) -> Result<ModelConfig, String> {
    let mut config = source.config.clone().unwrap_or_default();
    if config.input.is_empty() || config.output.is_empty() {
        let (_, newest) = source
            .versions
            .iter()
            .next_back()
            .ok_or("no configuration and no version directory to complete one from")?;
        let completed = backend.complete_config(&source.name, &newest.file)?;
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
    for (index, group) in config.instance_group.iter().enumerate() {
        if group.count < 0 {
            let label = group_label(index, &group.name);
            return Err(format!("instance group {label} has a negative count"));
        }
    }
    Ok(())
}

fn group_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("#{index}")
    } else {
        format!("'{name}'")
    }
}

/// Refuses KIND_GPU instance groups (with the GPU probe's reason) on a machine where the CUDA
/// executor cannot run. Checked after everything else resolved, so that a GPU model refused here
/// has nothing else wrong with its configuration: `repo check` relies on this to tell a model
/// that only lacks a GPU from a broken one.
fn check_gpu(config: &ModelConfig) -> Result<(), String> {
    let Some((index, group)) = config
        .instance_group
        .iter()
        .enumerate()
        .find(|(_, g)| g.kind == Kind::Gpu as i32)
    else {
        return Ok(());
    };
    match crate::executor::cuda::gpu_load_refusal() {
        Some(reason) => Err(format!(
            "instance group {}: {reason}",
            group_label(index, &group.name)
        )),
        None => Ok(()),
    }
}

/// GPUs a KIND_GPU group places instances on: those it lists, else every GPU found.
fn gpus_of(group: &crate::proto::inference::ModelInstanceGroup) -> usize {
    if group.gpus.is_empty() {
        crate::executor::cuda::gpus().gpus.len().max(1)
    } else {
        group.gpus.len()
    }
}

/// Instances to start: the sum of the groups' counts (a group without a count has one), at least 1.
fn instance_count(config: &ModelConfig) -> usize {
    let total: usize = config
        .instance_group
        .iter()
        .map(|g| {
            let count = if g.count == 0 { 1 } else { g.count as usize };
            if g.kind == Kind::Gpu as i32 {
                count * gpus_of(g)
            } else {
                count
            }
        })
        .sum();
    total.max(1)
}
