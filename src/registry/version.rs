//! A ready model version: its schema, its scheduler (instances, and the batcher when configured)
//! and its statistics. Dropping the last handle stops its batcher and instances and frees the model.

use std::sync::Arc;
use std::time::Instant;

use crate::batching::Scheduler;
use crate::error::{Error, Result};
use crate::executor::ExecError;
use crate::executor::runner::Execution;
use crate::schema::ModelSchema;
use crate::telemetry::request_spans;
use crate::tensor::{InferRequest, InferResponse};

use super::stats::{Timings, VersionStats};

/// One loaded, serving version of a model.
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    pub schema: Arc<ModelSchema>,
    pub stats: Arc<VersionStats>,
    scheduler: Scheduler,
    label: String,
}

impl ModelVersion {
    /// Wraps a started scheduler.
    pub fn new(
        model: &str,
        version: u64,
        schema: Arc<ModelSchema>,
        scheduler: Scheduler,
    ) -> ModelVersion {
        ModelVersion {
            model: model.to_string(),
            version,
            schema,
            stats: Arc::clone(scheduler.stats()),
            scheduler,
            label: version.to_string(),
        }
    }

    /// The version as the protocol writes it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the version is in service: false while its circuit breaker is open after too many
    /// failed executions (it turns true again for probing once the open period passes).
    pub fn is_healthy(&self) -> bool {
        self.scheduler.is_healthy()
    }

    /// Requests waiting to run on this version.
    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
    }

    /// Checks a request against the schema, schedules it, and returns the outputs asked for.
    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let checked = self.schema.check(&mut request)?;
        let execution = match self.scheduler.submit(checked, &request.parameters).await {
            Ok(execution) => execution,
            Err(e) => {
                self.stats.record_failure(started.elapsed());
                return Err(e);
            }
        };
        self.trace_execution(&execution);
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
        self.stats.record_success(Timings {
            total: started.elapsed(),
            queue: execution.queue,
            compute_input: execution.phases.input,
            compute_infer: execution.phases.infer,
            compute_output: execution.phases.output,
        });
        Ok(InferResponse {
            model_name: self.model.clone(),
            model_version: self.label.clone(),
            id: request.id,
            outputs,
        })
    }

    /// Records the request's queue and execution spans when the request is traced. A request
    /// run alone (no batcher) is its own batch: its `execute` span carries the batch's size and
    /// instance, and no separate batch span is made for it.
    fn trace_execution(&self, execution: &Execution) {
        if let Some(parent) = request_spans::current() {
            request_spans::request_phases(
                &parent,
                execution.queue,
                execution.phases,
                &execution.run,
            );
        }
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
