//! The dynamic batcher of one model version: a task on the runtime that owns the queue (one FIFO per
//! priority level), asks [`decide`] what to run whenever something changes, sends each batch to the
//! instances as one job and, when the batch's single answer comes back, answers its requests from
//! the runtime itself, so the runtime is woken from an instance thread once per batch, not once per
//! request. Requests leave the queue when their timeout expires (DEADLINE_EXCEEDED) or their caller
//! goes away; a full level refuses at once (RESOURCE_EXHAUSTED), counted with one atomic.
//!
//! Deadlines (the queue delay, request timeouts) are kept by [`super::timer`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::executor::runner::{BatchDone, Execution, Job, JobReply};
use crate::executor::{ExecError, Phases};
use crate::telemetry::request_spans::{self, RunInfo};
use crate::tensor::Tensor;

use super::DynamicConfig;
use super::policy::{Decision, QueueSummary, decide};
use super::timer::{Alarm, Timer, wait_until};

/// The non-batch dimensions of each input (`None` for an absent optional one): requests run in one
/// batch only when these agree.
type ShapeKey = Vec<Option<Vec<i64>>>;

type Reply = oneshot::Sender<Result<Execution>>;

/// A request waiting in the queue.
struct Pending {
    inputs: Vec<Option<Tensor>>,
    size: usize,
    key: ShapeKey,
    level: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
    /// The request's span, when it is traced, for the batch span to link to.
    trace: Option<SpanContext>,
}

/// A request of a running batch: where its answer goes, how long it queued, its span.
type Waiting = (Reply, Duration, Option<SpanContext>);

/// The handle requests use to reach a version's batcher.
pub struct Batcher {
    arrivals: mpsc::UnboundedSender<Pending>,
    /// Requests waiting per level, counted at enqueue and when they leave the queue.
    queued: Arc<[AtomicUsize]>,
    config: Arc<DynamicConfig>,
    subject: Arc<str>,
}

impl Batcher {
    /// Spawns the batcher task feeding `instances` instances through `jobs`. Must be called inside
    /// the runtime. The task ends once this handle is dropped and everything queued is answered.
    pub fn start(
        jobs: crossbeam_channel::Sender<Job>,
        instances: usize,
        config: Arc<DynamicConfig>,
        subject: String,
        (timer, drain): (Timer, watch::Receiver<bool>),
    ) -> Batcher {
        let (arrivals, arrived) = mpsc::unbounded_channel();
        let queued: Arc<[AtomicUsize]> =
            config.levels.iter().map(|_| AtomicUsize::new(0)).collect();
        let subject: Arc<str> = subject.into();
        let (done, finished) = mpsc::unbounded_channel();
        let task = Task {
            // Per level: its queue, then its delayed requests (DELAY timeout action).
            queues: config
                .levels
                .iter()
                .flat_map(|_| [VecDeque::new(), VecDeque::new()])
                .collect(),
            config: Arc::clone(&config),
            queued: Arc::clone(&queued),
            subject: Arc::clone(&subject),
            jobs,
            free: instances.max(1),
            done,
            in_flight: HashMap::new(),
            finished: BTreeMap::new(),
            next_seq: 0,
            next_answer: 0,
            sizes: Vec::new(),
            draining: false,
        };
        let alarm = match timer {
            Timer::Runtime => None,
            Timer::Thread => Alarm::start(&subject),
        };
        tokio::spawn(task.run((arrived, drain), finished, alarm));
        Batcher {
            arrivals,
            queued,
            config,
            subject,
        }
    }

    /// Requests waiting in the queue, over every priority level.
    pub fn queued(&self) -> usize {
        self.queued.iter().map(|q| q.load(Ordering::Relaxed)).sum()
    }

    /// Queues a checked request and waits for its answer.
    pub async fn enqueue(
        &self,
        inputs: Vec<Option<Tensor>>,
        size: usize,
        priority: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Execution> {
        let level = self.config.level(priority);
        let policy = &self.config.levels[level];
        let waiting = self.queued[level].fetch_add(1, Ordering::AcqRel);
        if policy.max_queue_size > 0 && waiting >= policy.max_queue_size {
            self.queued[level].fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Exhausted(format!(
                "{}: the queue is full ({} requests waiting)",
                self.subject, policy.max_queue_size
            )));
        }
        let enqueued = Instant::now();
        let key = inputs
            .iter()
            .map(|t| {
                t.as_ref()
                    .map(|t| t.shape.get(1..).unwrap_or_default().to_vec())
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            inputs,
            size,
            key,
            level,
            enqueued,
            deadline: policy.timeout(timeout).map(|t| enqueued + t),
            reply,
            trace: request_spans::current_span_context(),
        };
        if self.arrivals.send(pending).is_err() {
            self.queued[level].fetch_sub(1, Ordering::AcqRel);
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    fn stopped(&self) -> Error {
        Error::Unavailable(format!("{}: the batcher has stopped", self.subject))
    }
}

/// The batcher task's state.
struct Task {
    config: Arc<DynamicConfig>,
    queues: Vec<VecDeque<Pending>>,
    queued: Arc<[AtomicUsize]>,
    subject: Arc<str>,
    jobs: crossbeam_channel::Sender<Job>,
    /// Instances not running one of our batches.
    free: usize,
    done: mpsc::UnboundedSender<BatchDone>,
    /// Replies (and time queued) of the batches running, by batch number.
    in_flight: HashMap<u64, Vec<Waiting>>,
    /// Finished batches held back until earlier ones are answered (`preserve_ordering`).
    finished: BTreeMap<u64, BatchDone>,
    next_seq: u64,
    next_answer: u64,
    /// Scratch for the queue summary.
    sizes: Vec<usize>,
    /// Shutdown has begun: run what is queued without waiting for batches to fill.
    draining: bool,
}

impl Task {
    async fn run(
        mut self,
        (mut arrived, mut drain): (mpsc::UnboundedReceiver<Pending>, watch::Receiver<bool>),
        mut finished: mpsc::UnboundedReceiver<BatchDone>,
        mut alarm: Option<Alarm>,
    ) {
        let mut open = true;
        let mut wake: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                Some(done) = finished.recv() => self.finish(done),
                arrival = arrived.recv(), if open => match arrival {
                    Some(pending) => self.push(pending),
                    None => open = false,
                },
                () = wait_until(wake, alarm.as_ref()), if wake.is_some() => {}
                changed = drain.changed(), if !self.draining => {
                    // A dropped sender (the registry is gone) also means: stop waiting.
                    self.draining = changed.is_err() || *drain.borrow();
                }
            }
            while let Ok(done) = finished.try_recv() {
                self.finish(done);
            }
            while open {
                match arrived.try_recv() {
                    Ok(pending) => self.push(pending),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            wake = self.step(Instant::now());
            if let Some(alarm) = &mut alarm {
                alarm.arm(wake);
            }
            if !open && self.queues.iter().all(VecDeque::is_empty) && self.in_flight.is_empty() {
                break;
            }
        }
    }

    fn push(&mut self, pending: Pending) {
        self.queues[2 * pending.level].push_back(pending);
    }

    /// Drops expired and abandoned requests, then runs every batch the policy allows; returns when
    /// to look again (besides arrivals and finished batches).
    fn step(&mut self, now: Instant) -> Option<Instant> {
        let earliest_deadline = self.expire(now);
        loop {
            let (blocked, oldest) = self.summarize();
            let summary = QueueSummary {
                sizes: &self.sizes,
                // While draining, no batch waits to grow: it runs as it is.
                blocked: blocked || self.draining,
                oldest: oldest.unwrap_or(now).into_std(),
                free_instances: self.free,
            };
            match decide(summary, now.into_std(), &self.config.policy) {
                Decision::Run(n) => self.dispatch(n, now),
                Decision::Wait(until) => {
                    let until = Instant::from_std(until);
                    return Some(earliest_deadline.map_or(until, |d| d.min(until)));
                }
                Decision::Idle => return earliest_deadline,
            }
        }
    }

    /// Fills `sizes` with the head of the queue that can run as one batch: requests in priority
    /// then arrival order, while they share the first one's shapes and fit `max_batch_size`.
    fn summarize(&mut self) -> (bool, Option<Instant>) {
        self.sizes.clear();
        let mut waiting = self.queues.iter().flatten();
        let Some(head) = waiting.next() else {
            return (false, None);
        };
        let max = self.config.policy.max_batch_size;
        let (mut total, mut oldest) = (head.size, head.enqueued);
        self.sizes.push(head.size);
        for pending in waiting {
            if pending.key != head.key || total + pending.size > max {
                return (true, Some(oldest));
            }
            total += pending.size;
            oldest = oldest.min(pending.enqueued);
            self.sizes.push(pending.size);
        }
        (false, Some(oldest))
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let pending = self.queues.iter_mut().find_map(VecDeque::pop_front)?;
        self.queued[pending.level].fetch_sub(1, Ordering::AcqRel);
        Some(pending)
    }

    /// Sends the first `n` requests to the instances as one batch.
    fn dispatch(&mut self, n: usize, now: Instant) {
        let mut requests = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(pending) = self.pop_front() else {
                break;
            };
            requests.push(pending.inputs);
            sizes.push(pending.size);
            replies.push((pending.reply, now - pending.enqueued, pending.trace));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.free = self.free.saturating_sub(1);
        self.in_flight.insert(seq, replies);
        let job = Job {
            requests,
            sizes,
            reply: JobReply::Batch {
                seq,
                done: self.done.clone(),
            },
        };
        if self.jobs.send(job).is_err() {
            self.finish(BatchDone {
                seq,
                outputs: Err(ExecError::Failed(
                    "the model's instances have stopped".into(),
                )),
                phases: Phases::default(),
                run: RunInfo::default(),
            });
        }
    }

    /// A batch came back: its instance is free again, and its requests are answered (in queue
    /// order across batches when `preserve_ordering` asks for it).
    fn finish(&mut self, done: BatchDone) {
        self.free += 1;
        if !self.config.preserve_ordering {
            self.answer(done);
            return;
        }
        self.finished.insert(done.seq, done);
        while let Some(done) = self.finished.remove(&self.next_answer) {
            self.next_answer += 1;
            self.answer(done);
        }
    }

    fn answer(&mut self, done: BatchDone) {
        let Some(replies) = self.in_flight.remove(&done.seq) else {
            return;
        };
        let phases = done.phases;
        let traces: Vec<SpanContext> = replies.iter().filter_map(|r| r.2.clone()).collect();
        let run = RunInfo {
            batch_span: (!traces.is_empty())
                .then(|| request_spans::batch(&self.subject, &done.run, phases, &traces))
                .flatten(),
            ..done.run
        };
        let mut outputs = match done.outputs {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error); replies.len()],
        }
        .into_iter();
        for (reply, queue, _) in replies {
            let outputs = outputs.next().unwrap_or_else(|| {
                Err(ExecError::Failed(
                    "the batch returned too few outputs".into(),
                ))
            });
            let _ = reply.send(Ok(Execution {
                outputs,
                queue,
                phases,
                run: run.clone(),
            }));
        }
    }

    /// Answers expired requests with DEADLINE_EXCEEDED and forgets abandoned ones; returns the
    /// earliest deadline still waiting.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for index in 0..self.queues.len() {
            let leaving = self.queues[index]
                .iter()
                .any(|p| p.reply.is_closed() || p.deadline.is_some_and(|d| d <= now));
            if leaving {
                let queue = std::mem::take(&mut self.queues[index]);
                for pending in queue {
                    match self.leave_if_done(pending, now) {
                        Stay::Queued(kept) => self.queues[index].push_back(kept),
                        Stay::Delayed(late) => self.queues[index | 1].push_back(late),
                        Stay::Gone => {}
                    }
                }
            }
            for deadline in self.queues[index].iter().filter_map(|p| p.deadline) {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }

    /// What becomes of a queued request: it stays, it expired and is delayed (DELAY), or it
    /// leaves — answered DEADLINE_EXCEEDED (REJECT), or abandoned by its caller.
    fn leave_if_done(&self, mut pending: Pending, now: Instant) -> Stay {
        let expired = pending.deadline.is_some_and(|d| d <= now);
        if !expired && !pending.reply.is_closed() {
            return Stay::Queued(pending);
        }
        if expired
            && !pending.reply.is_closed()
            && !self.config.levels[pending.level].reject_on_timeout
        {
            pending.deadline = None;
            return Stay::Delayed(pending);
        }
        self.queued[pending.level].fetch_sub(1, Ordering::AcqRel);
        if expired {
            let waited = now - pending.enqueued;
            let _ = pending.reply.send(Err(Error::DeadlineExceeded(format!(
                "{}: request timeout expired after {} µs in the queue",
                self.subject,
                waited.as_micros()
            ))));
        }
        Stay::Gone
    }
}

/// See [`Task::leave_if_done`].
enum Stay {
    Queued(Pending),
    Delayed(Pending),
    Gone,
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
