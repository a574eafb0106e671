//! Runs a model version's instances on dedicated OS threads. Jobs reach them over one shared
//! channel (whichever instance is free takes the next one). A job is one request, answered on its
//! own oneshot, or a batch formed by the batcher, answered in one message for the whole batch so
//! that the runtime is woken once per batch rather than once per request. When the last sender of
//! the channel is dropped the threads finish their current job and exit, releasing the model.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::batching::limits::Breaker;
use crate::batching::merge;
use crate::registry::stats::VersionStats;
use crate::telemetry::request_spans::RunInfo;
use crate::tensor::Tensor;

use super::{ExecError, Instance, LoadedModel, Phases};

/// Instance threads alive in this process.
static LIVE: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Counts an instance thread from before it is spawned until it has dropped its instance.
struct Alive;

impl Alive {
    fn new() -> Alive {
        *LIVE.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Alive
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        *LIVE.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        LIVE.1.notify_all();
    }
}

/// Instance threads alive now.
pub fn live_instances() -> usize {
    *LIVE.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until every instance thread has exited (their models unloaded), at most `timeout`;
/// whether they all did. The process calls this before exiting, so that instances holding GPU
/// resources release them while the CUDA libraries are still loaded.
pub fn wait_for_instances(timeout: Duration) -> bool {
    let guard = LIVE.0.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = LIVE
        .1
        .wait_timeout_while(guard, timeout, |live| *live > 0)
        .unwrap_or_else(|e| e.into_inner());
    *guard == 0
}

/// What an instance reports back for one request run alone.
#[derive(Debug)]
pub struct Execution {
    pub outputs: Result<Vec<Tensor>, ExecError>,
    /// Time spent waiting for a free instance.
    pub queue: Duration,
    /// Time spent in each phase of the execution.
    pub phases: Phases,
    /// When and where it ran, and in what batch.
    pub run: RunInfo,
}

/// What an instance reports back for one batch: every request's outputs, in batch order.
#[derive(Debug)]
pub struct BatchDone {
    /// The batcher's number for the batch.
    pub seq: u64,
    pub outputs: Result<Vec<Vec<Tensor>>, ExecError>,
    pub phases: Phases,
    /// When and where it ran (its batch span is the batcher's to record).
    pub run: RunInfo,
}

/// Where a job's answer goes.
pub enum JobReply {
    /// A request run alone, by a caller waiting on the oneshot.
    One {
        enqueued: Instant,
        reply: oneshot::Sender<Execution>,
        /// For a request with a timeout: set by whichever comes first, the instance taking the
        /// job or the caller giving up on it.
        claim: Option<Arc<AtomicBool>>,
    },
    /// A batch, answered to the batcher that formed it.
    Batch {
        seq: u64,
        done: mpsc::UnboundedSender<BatchDone>,
    },
}

/// Work for an instance: the inputs of one or more requests (in schema order, `None` for an absent
/// optional input) and their batch sizes.
pub struct Job {
    pub requests: Vec<Vec<Option<Tensor>>>,
    pub sizes: Vec<usize>,
    pub reply: JobReply,
}

/// What every instance of a version shares: where outcomes are counted.
#[derive(Clone)]
pub struct Observers {
    pub stats: Arc<VersionStats>,
    pub breaker: Arc<Breaker>,
}

/// The instances of one model version.
pub struct Runner {
    jobs: crossbeam_channel::Sender<Job>,
    count: usize,
    /// Jobs given up on by their callers (timed out) and not yet dropped by an instance.
    abandoned: Arc<AtomicUsize>,
}

impl Runner {
    /// Creates `count` instances, each on its own named thread.
    pub fn start(
        model: &Arc<dyn LoadedModel>,
        count: usize,
        label: &str,
        observers: &Observers,
    ) -> Result<Runner, String> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let count = count.max(1);
        let abandoned = Arc::new(AtomicUsize::new(0));
        for index in 0..count {
            let instance = model.instance()?;
            let queue = queue.clone();
            let model = Arc::clone(model);
            let observers = observers.clone();
            let abandoned = Arc::clone(&abandoned);
            let alive = Alive::new();
            std::thread::Builder::new()
                .name(format!("{label}#{index}"))
                .spawn(move || {
                    let _alive = alive;
                    serve(model, (index, instance), (queue, abandoned), observers)
                })
                .map_err(|e| format!("cannot start instance thread: {e}"))?;
        }
        Ok(Runner {
            jobs,
            count,
            abandoned,
        })
    }

    /// How many instances run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Jobs waiting for a free instance.
    pub fn waiting(&self) -> usize {
        let abandoned = self.abandoned.load(Ordering::Acquire);
        self.jobs.len().saturating_sub(abandoned)
    }

    /// The channel the instances take jobs from, for a batcher to feed.
    pub fn jobs(&self) -> crossbeam_channel::Sender<Job> {
        self.jobs.clone()
    }

    /// Runs one request alone on the next free instance. With a `timeout`, a request still waiting
    /// for an instance when it expires leaves the queue unrun: `None`. Once an instance has taken
    /// it, it runs to the end.
    pub async fn execute(
        &self,
        inputs: Vec<Option<Tensor>>,
        size: usize,
        timeout: Option<Duration>,
    ) -> Option<Execution> {
        let (reply, mut answer) = oneshot::channel();
        let claim = timeout.map(|_| Arc::new(AtomicBool::new(false)));
        let job = Job {
            requests: vec![inputs],
            sizes: vec![size],
            reply: JobReply::One {
                enqueued: Instant::now(),
                reply,
                claim: claim.clone(),
            },
        };
        let stopped = |what: &str| Execution {
            outputs: Err(ExecError::Failed(what.to_string())),
            queue: Duration::ZERO,
            phases: Phases::default(),
            run: RunInfo::default(),
        };
        if self.jobs.send(job).is_err() {
            return Some(stopped("the model's instances have stopped"));
        }
        if let (Some(timeout), Some(claim)) = (timeout, &claim) {
            if let Ok(done) = tokio::time::timeout(timeout, &mut answer).await {
                return Some(done.unwrap_or_else(|_| stopped("the model instance stopped")));
            }
            // Counted before the claim, so that the instance dropping the job never finds the
            // count at zero; taken back if the instance claimed it first.
            self.abandoned.fetch_add(1, Ordering::AcqRel);
            if !claim.swap(true, Ordering::AcqRel) {
                return None;
            }
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
        Some(
            answer
                .await
                .unwrap_or_else(|_| stopped("the model instance stopped before answering")),
        )
    }
}

/// An instance thread: takes jobs until every sender is dropped. A failed or panicking execution
/// fails only that job's requests; the instance is then rebuilt from the loaded model.
fn serve(
    model: Arc<dyn LoadedModel>,
    (index, mut instance): (usize, Box<dyn Instance>),
    (queue, abandoned): (crossbeam_channel::Receiver<Job>, Arc<AtomicUsize>),
    observers: Observers,
) {
    while let Ok(job) = queue.recv() {
        if let JobReply::One {
            claim: Some(claim), ..
        } = &job.reply
            && claim.swap(true, Ordering::AcqRel)
        {
            // Its caller gave up waiting (timeout); it is not run.
            abandoned.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let started = Instant::now();
        let mut phases = Phases::default();
        let total: usize = job.sizes.iter().sum();
        let run = RunInfo {
            started: Some(SystemTime::now()),
            instance: index,
            batch_size: total,
            batch_span: None,
        };
        let outputs = run_job(&mut *instance, job.requests, &job.sizes, &mut phases);
        match &outputs {
            Ok(_) => {
                observers.stats.record_execution(total, phases);
                observers.breaker.record(true, Instant::now());
            }
            Err(ExecError::Failed(reason)) => {
                tracing::warn!(%reason, batch = total, "model execution failed");
                observers.breaker.record(false, Instant::now());
                match model.instance() {
                    Ok(fresh) => instance = fresh,
                    Err(e) => tracing::error!(error = %e, "cannot rebuild model instance"),
                }
            }
            Err(ExecError::Input(_)) => {}
        }
        // The requester may have gone away (cancelled); nothing to do then.
        match job.reply {
            JobReply::One {
                enqueued, reply, ..
            } => {
                let outputs = outputs.map(|mut all| all.pop().unwrap_or_default());
                let _ = reply.send(Execution {
                    outputs,
                    queue: started - enqueued,
                    phases,
                    run,
                });
            }
            JobReply::Batch { seq, done } => {
                let _ = done.send(BatchDone {
                    seq,
                    outputs,
                    phases,
                    run,
                });
            }
        }
    }
}

/// Runs a job's requests as one execution: merged along the batch dimension when there are several,
/// split back afterwards. A panic becomes a failure of the job.
fn run_job(
    instance: &mut dyn Instance,
    mut requests: Vec<Vec<Option<Tensor>>>,
    sizes: &[usize],
    phases: &mut Phases,
) -> Result<Vec<Vec<Tensor>>, ExecError> {
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if requests.len() == 1 {
            let inputs = requests.pop().unwrap_or_default();
            return instance.execute(inputs, phases).map(|out| vec![out]);
        }
        let merging = Instant::now();
        let inputs = merge::concat(requests).map_err(ExecError::Failed)?;
        phases.input += merging.elapsed();
        let outputs = instance.execute(inputs, phases)?;
        let splitting = Instant::now();
        let split = merge::split(outputs, sizes).map_err(ExecError::Failed);
        phases.output += splitting.elapsed();
        split
    }));
    run.unwrap_or_else(|panic| Err(ExecError::Failed(panic_message(&panic))))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("the model panicked: {text}")
}
