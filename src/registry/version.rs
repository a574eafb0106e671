//! A ready model version: its schema, its running instances and its statistics. Dropping the last
//! handle stops its instances and frees the model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::executor::{ExecError, Runner};
use crate::schema::ModelSchema;
use crate::tensor::{InferRequest, InferResponse};

use super::stats::{Timings, VersionStats};

/// One loaded, serving version of a model.
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    pub schema: Arc<ModelSchema>,
    pub stats: VersionStats,
    runner: Runner,
    label: String,
}

impl ModelVersion {
    /// Wraps started instances.
    pub fn new(
        model: &str,
        version: u64,
        schema: Arc<ModelSchema>,
        runner: Runner,
    ) -> ModelVersion {
        ModelVersion {
            model: model.to_string(),
            version,
            schema,
            stats: VersionStats::default(),
            runner,
            label: version.to_string(),
        }
    }

    /// The version as the protocol writes it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Checks a request against the schema, runs it, and returns the outputs asked for.
    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let checked = self.schema.check(&mut request)?;
        let execution = self.runner.execute(checked.inputs).await;
        let execution = match execution {
            Ok(execution) => execution,
            Err(reason) => return Err(self.failed(started, ExecError::Failed(reason))),
        };
        let outputs = match execution.outputs {
            Ok(outputs) => outputs,
            Err(e) => return Err(self.failed(started, e)),
        };
        let outputs = if request.outputs.is_empty() {
            outputs
        } else {
            outputs
                .into_iter()
                .filter(|o| request.outputs.contains(&o.name))
                .collect()
        };
        let timings = Timings {
            total: started.elapsed(),
            queue: execution.queue,
            compute_input: Duration::ZERO,
            compute_infer: execution.compute,
            compute_output: Duration::ZERO,
        };
        self.stats.record_success(checked.batch_size, timings);
        Ok(InferResponse {
            model_name: self.model.clone(),
            model_version: self.label.clone(),
            id: request.id,
            outputs,
        })
    }

    fn failed(&self, started: Instant, error: ExecError) -> Error {
        self.stats.record_failure(started.elapsed());
        match error {
            ExecError::Input(message) => Error::invalid(format!(
                "model '{}' version {}: {message}",
                self.model, self.version
            )),
            ExecError::Failed(reason) => Error::Execution {
                model: self.model.clone(),
                version: self.version,
                reason,
            },
        }
    }
}
