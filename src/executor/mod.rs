//! Model execution. A `Backend` turns a model file into a `LoadedModel` (weights and plan, shared),
//! which creates one `Instance` per configured instance; each instance runs on its own OS thread
//! behind a `Runner`, never on the async runtime.

pub mod cpu;
pub mod cuda;
pub mod gpu_plan;
pub mod runner;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::inference::ModelConfig;
use crate::schema::ModelSchema;
use crate::tensor::Tensor;

pub use runner::Runner;

/// A model-file format and the hardware it runs on.
pub trait Backend: Send + Sync {
    /// Short name for logs and reasons (`"onnx-cpu"`).
    fn name(&self) -> &'static str;

    /// Completes a configuration from the model file, for models shipped without `config.pbtxt`.
    fn complete_config(&self, model: &str, model_file: &Path) -> Result<ModelConfig, String>;

    /// Loads one version's model file against its checked schema and its configuration.
    fn load(
        &self,
        config: &ModelConfig,
        schema: &Arc<ModelSchema>,
        model_file: &Path,
    ) -> Result<Arc<dyn LoadedModel>, String>;
}

/// ONNX models: on the CPU through tract, or on GPUs through the CUDA executor when the
/// configuration's instance groups are KIND_GPU.
#[derive(Debug, Default)]
pub struct Onnx {
    cpu: cpu::OnnxCpu,
}

impl Backend for Onnx {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn complete_config(&self, model: &str, model_file: &Path) -> Result<ModelConfig, String> {
        self.cpu.complete_config(model, model_file)
    }

    fn load(
        &self,
        config: &ModelConfig,
        schema: &Arc<ModelSchema>,
        model_file: &Path,
    ) -> Result<Arc<dyn LoadedModel>, String> {
        if wants_gpu(config) {
            cuda::load(config, schema, model_file)
        } else {
            self.cpu.load(config, schema, model_file)
        }
    }
}

/// Whether any instance group of the configuration is KIND_GPU.
pub fn wants_gpu(config: &ModelConfig) -> bool {
    use crate::proto::inference::model_instance_group::Kind;
    config
        .instance_group
        .iter()
        .any(|g| g.kind == Kind::Gpu as i32)
}

/// A loaded model version, shared by its instances.
pub trait LoadedModel: Send + Sync {
    /// Creates one execution instance (its own run state and scratch memory).
    fn instance(&self) -> Result<Box<dyn Instance>, String>;
}

/// One execution context; owned by exactly one thread.
pub trait Instance: Send {
    /// Runs the model on inputs in schema order (`None` for an absent optional input) and returns
    /// every output, in schema order, named and shaped as the client will see them. Adds the time
    /// spent converting inputs, running and converting outputs to `phases`.
    fn execute(
        &mut self,
        inputs: Vec<Option<Tensor>>,
        phases: &mut Phases,
    ) -> Result<Vec<Tensor>, ExecError>;
}

/// Time spent in each phase of one execution, as Triton's statistics split it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Phases {
    /// Preparing inputs: merging a batch and converting to the runtime's tensors.
    pub input: Duration,
    /// Running the model.
    pub infer: Duration,
    /// Converting outputs back and splitting a batch into its requests.
    pub output: Duration,
}

/// Why an execution produced no outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    /// The inputs passed the schema but this backend cannot take them (e.g. non-UTF-8 strings).
    Input(String),
    /// The model failed (or panicked) while running.
    Failed(String),
}
