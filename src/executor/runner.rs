//! Runs a model version's instances on dedicated OS threads. Requests reach them over one shared
//! channel (whichever instance is free takes the next job) and answers come back on a oneshot. When
//! the last handle to the runner is dropped the channel closes and the threads finish their current
//! job and exit, releasing the model's memory.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::tensor::Tensor;

use super::{ExecError, Instance, LoadedModel};

/// What an instance reports back for one job.
#[derive(Debug)]
pub struct Execution {
    pub outputs: Result<Vec<Tensor>, ExecError>,
    /// Time spent waiting for a free instance.
    pub queue: Duration,
    /// Time spent running the model.
    pub compute: Duration,
}

struct Job {
    inputs: Vec<Option<Tensor>>,
    enqueued: Instant,
    reply: oneshot::Sender<Execution>,
}

/// The instances of one model version.
pub struct Runner {
    jobs: crossbeam_channel::Sender<Job>,
}

impl Runner {
    /// Creates `count` instances, each on its own named thread.
    pub fn start(
        model: &Arc<dyn LoadedModel>,
        count: usize,
        label: &str,
    ) -> Result<Runner, String> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for index in 0..count.max(1) {
            let instance = model.instance()?;
            let queue = queue.clone();
            let model = Arc::clone(model);
            std::thread::Builder::new()
                .name(format!("{label}#{index}"))
                .spawn(move || serve(model, instance, queue))
                .map_err(|e| format!("cannot start instance thread: {e}"))?;
        }
        Ok(Runner { jobs })
    }

    /// Runs one job on the next free instance.
    pub async fn execute(&self, inputs: Vec<Option<Tensor>>) -> Result<Execution, String> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        self.jobs
            .send(job)
            .map_err(|_| "the model's instances have stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the model instance stopped before answering".to_string())
    }
}

/// An instance thread: takes jobs until the runner is dropped. A panic inside the model fails only
/// that job; the instance is then rebuilt from the loaded model.
fn serve(
    model: Arc<dyn LoadedModel>,
    mut instance: Box<dyn Instance>,
    queue: crossbeam_channel::Receiver<Job>,
) {
    while let Ok(job) = queue.recv() {
        let started = Instant::now();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| instance.execute(job.inputs)));
        let outputs = run.unwrap_or_else(|panic| Err(ExecError::Failed(panic_message(&panic))));
        if matches!(outputs, Err(ExecError::Failed(_))) {
            match model.instance() {
                Ok(fresh) => instance = fresh,
                Err(e) => tracing::error!(error = %e, "cannot rebuild model instance"),
            }
        }
        let execution = Execution {
            outputs,
            queue: started - job.enqueued,
            compute: started.elapsed(),
        };
        // The requester may have gone away (cancelled); nothing to do then.
        let _ = job.reply.send(execution);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the model panicked: {text}")
}
