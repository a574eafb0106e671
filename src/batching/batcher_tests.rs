//! The batcher task under paused tokio time, with the test standing in for the instances.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::*;
use crate::batching::QueuePolicy;
use crate::batching::policy::BatchPolicy;
use crate::batching::timer::Timer;
use crate::tensor::DataType;

const MS: Duration = Duration::from_millis(1);

fn config(delay: Duration, levels: Vec<QueuePolicy>) -> Arc<DynamicConfig> {
    Arc::new(DynamicConfig {
        policy: BatchPolicy {
            max_batch_size: 8,
            preferred: Vec::new(),
            max_queue_delay: delay,
        },
        preserve_ordering: false,
        levels,
        default_level: 0,
    })
}

/// Batches of one request, run as soon as an instance is free.
fn one_at_a_time(levels: Vec<QueuePolicy>, default_level: usize) -> DynamicConfig {
    DynamicConfig {
        policy: BatchPolicy {
            max_batch_size: 1,
            preferred: Vec::new(),
            max_queue_delay: Duration::ZERO,
        },
        preserve_ordering: false,
        levels,
        default_level,
    }
}

fn unbounded() -> QueuePolicy {
    QueuePolicy {
        max_queue_size: 0,
        default_timeout: None,
        allow_timeout_override: false,
        reject_on_timeout: true,
    }
}

fn input(value: i32, width: i64) -> Vec<Option<Tensor>> {
    let data: Bytes = (0..width).flat_map(|_| value.to_le_bytes()).collect();
    vec![Some(Tensor {
        name: "x".into(),
        datatype: DataType::Int32,
        shape: vec![1, width],
        data,
    })]
}

struct Harness {
    batcher: Arc<Batcher>,
    jobs: crossbeam_channel::Receiver<Job>,
    drain: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    fn new(config: Arc<DynamicConfig>, instances: usize) -> Harness {
        let (tx, jobs) = crossbeam_channel::unbounded();
        let (drain, draining) = tokio::sync::watch::channel(false);
        let batcher = Arc::new(Batcher::start(
            tx,
            instances,
            config,
            "model 'm' version 1".into(),
            (Timer::Runtime, draining),
        ));
        Harness {
            batcher,
            jobs,
            drain,
        }
    }

    fn send(
        &self,
        value: i32,
        width: i64,
        timeout: Option<Duration>,
    ) -> JoinHandle<Result<Execution>> {
        let batcher = Arc::clone(&self.batcher);
        tokio::spawn(async move { batcher.enqueue(input(value, width), 1, None, timeout).await })
    }

    /// Lets every runnable task run, without moving the clock.
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Answers a job as a model echoing its input would.
    fn answer(job: Job) {
        let JobReply::Batch { seq, done } = job.reply else {
            panic!("the batcher sends batches");
        };
        let outputs = crate::batching::merge::concat(job.requests)
            .and_then(|inputs| {
                let merged = inputs.into_iter().flatten().collect();
                crate::batching::merge::split(merged, &job.sizes)
            })
            .map_err(ExecError::Failed);
        done.send(BatchDone {
            seq,
            outputs,
            phases: Phases::default(),
            run: Default::default(),
        })
        .unwrap();
    }
}

fn value(execution: &Execution) -> i32 {
    let outputs = execution.outputs.as_ref().unwrap();
    i32::from_le_bytes(outputs[0].data[..4].try_into().unwrap())
}

#[tokio::test(start_paused = true)]
async fn requests_arriving_within_the_delay_run_as_one_batch() {
    let h = Harness::new(config(10 * MS, vec![unbounded()]), 1);
    let calls: Vec<_> = (0..3).map(|i| h.send(i, 2, None)).collect();
    h.settle().await;
    tokio::time::advance(9 * MS).await;
    h.settle().await;
    assert!(h.jobs.try_recv().is_err(), "no batch before the delay");
    tokio::time::advance(MS).await;
    h.settle().await;
    let job = h.jobs.try_recv().expect("a batch once the delay passed");
    assert_eq!(job.sizes, vec![1, 1, 1]);
    Harness::answer(job);
    for (i, call) in calls.into_iter().enumerate() {
        let execution = call.await.unwrap().unwrap();
        assert_eq!(
            value(&execution),
            i as i32,
            "each request gets its own rows"
        );
        assert_eq!(execution.queue, 10 * MS);
    }
}

#[tokio::test(start_paused = true)]
async fn at_shutdown_queued_requests_run_without_waiting_for_the_delay() {
    let h = Harness::new(config(3600 * 1000 * MS, vec![unbounded()]), 1);
    let calls: Vec<_> = (0..2).map(|i| h.send(i, 2, None)).collect();
    h.settle().await;
    assert!(h.jobs.try_recv().is_err(), "the batch waits for its delay");
    h.drain.send_replace(true);
    h.settle().await;
    let job = h
        .jobs
        .try_recv()
        .expect("the batch runs as soon as draining begins");
    assert_eq!(job.sizes, vec![1, 1]);
    Harness::answer(job);
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(value(&call.await.unwrap().unwrap()), i as i32);
    }
    // A request arriving while draining runs at once too.
    let late = h.send(7, 2, None);
    h.settle().await;
    Harness::answer(h.jobs.try_recv().expect("no waiting while draining"));
    assert_eq!(value(&late.await.unwrap().unwrap()), 7);
}

#[tokio::test(start_paused = true)]
async fn different_shapes_are_not_mixed() {
    let h = Harness::new(config(10 * MS, vec![unbounded()]), 1);
    let a = h.send(1, 2, None);
    h.settle().await;
    let b = h.send(2, 3, None);
    h.settle().await;
    let first = h
        .jobs
        .try_recv()
        .expect("the head cannot grow: it runs at once");
    assert_eq!(first.sizes, vec![1]);
    Harness::answer(first);
    assert_eq!(value(&a.await.unwrap().unwrap()), 1);
    tokio::time::advance(10 * MS).await;
    h.settle().await;
    let second = h
        .jobs
        .try_recv()
        .expect("the other shape runs after its own delay");
    assert_eq!(second.sizes, vec![1]);
    Harness::answer(second);
    assert_eq!(value(&b.await.unwrap().unwrap()), 2);
}

#[tokio::test(start_paused = true)]
async fn busy_instances_let_the_queue_build_a_larger_batch() {
    let h = Harness::new(config(Duration::ZERO, vec![unbounded()]), 1);
    let first = h.send(0, 1, None);
    h.settle().await;
    let running = h.jobs.try_recv().expect("no delay: runs at once");
    let rest: Vec<_> = (1..6).map(|i| h.send(i, 1, None)).collect();
    h.settle().await;
    assert!(h.jobs.try_recv().is_err(), "the only instance is busy");
    Harness::answer(running);
    first.await.unwrap().unwrap();
    h.settle().await;
    let batch = h
        .jobs
        .try_recv()
        .expect("the waiting requests run together");
    assert_eq!(batch.sizes.len(), 5);
    Harness::answer(batch);
    for call in rest {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_and_a_timeout_removes_the_request() {
    let bounded = QueuePolicy {
        max_queue_size: 2,
        ..unbounded()
    };
    let h = Harness::new(config(100 * MS, vec![bounded]), 1);
    let timed = h.send(1, 1, Some(5 * MS));
    let kept = h.send(2, 1, None);
    h.settle().await;
    let refused = h.send(3, 1, None).await.unwrap().unwrap_err();
    assert!(matches!(refused, Error::Exhausted(_)), "{refused}");
    tokio::time::advance(5 * MS).await;
    h.settle().await;
    let expired = timed.await.unwrap().unwrap_err();
    assert!(matches!(expired, Error::DeadlineExceeded(_)), "{expired}");
    assert!(h.jobs.try_recv().is_err());
    // The queue has room again.
    let late = h.send(4, 1, None);
    tokio::time::advance(95 * MS).await;
    h.settle().await;
    let batch = h.jobs.try_recv().expect("the rest runs at the delay");
    assert_eq!(batch.sizes.len(), 2);
    Harness::answer(batch);
    assert_eq!(value(&kept.await.unwrap().unwrap()), 2);
    assert_eq!(value(&late.await.unwrap().unwrap()), 4);
}

#[tokio::test(start_paused = true)]
async fn with_delay_an_expired_request_runs_after_the_others() {
    let delaying = QueuePolicy {
        reject_on_timeout: false,
        ..unbounded()
    };
    let config = Arc::new(one_at_a_time(vec![delaying], 0));
    let h = Harness::new(config, 1);
    // The one instance is busy with the first request; the next three wait.
    let busy = h.send(0, 1, None);
    h.settle().await;
    let first = h.jobs.try_recv().expect("the first request runs at once");
    let timed = h.send(1, 1, Some(5 * MS));
    let others: Vec<_> = (2..4).map(|i| h.send(i, 1, None)).collect();
    h.settle().await;
    tokio::time::advance(6 * MS).await;
    h.settle().await;
    // Expired, but delayed rather than rejected: nothing was answered.
    assert!(!timed.is_finished(), "a DELAY request is not rejected");
    let mut order = Vec::new();
    Harness::answer(first);
    for _ in 0..3 {
        h.settle().await;
        let job = h.jobs.try_recv().expect("the next request runs");
        order.push(i32::from_le_bytes(
            job.requests[0][0].as_ref().unwrap().data[..4]
                .try_into()
                .unwrap(),
        ));
        Harness::answer(job);
    }
    assert_eq!(
        order,
        vec![2, 3, 1],
        "the expired request runs after those still in time"
    );
    assert_eq!(value(&busy.await.unwrap().unwrap()), 0);
    assert_eq!(value(&timed.await.unwrap().unwrap()), 1);
    for (call, v) in others.into_iter().zip(2..) {
        assert_eq!(value(&call.await.unwrap().unwrap()), v);
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priority_requests_run_first() {
    let config = Arc::new(one_at_a_time(vec![unbounded(), unbounded()], 1));
    let h = Harness::new(config, 1);
    let batcher = Arc::clone(&h.batcher);
    let blocker = h.send(0, 1, None);
    h.settle().await;
    let running = h.jobs.try_recv().unwrap();
    let low = h.send(1, 1, None);
    h.settle().await;
    let high = tokio::spawn(async move { batcher.enqueue(input(2, 1), 1, Some(1), None).await });
    h.settle().await;
    Harness::answer(running);
    blocker.await.unwrap().unwrap();
    h.settle().await;
    let next = h.jobs.try_recv().unwrap();
    let Some(Some(t)) = next.requests.first().map(|r| r[0].clone()) else {
        panic!("a request");
    };
    assert_eq!(t.data[0], 2, "priority 1 goes before the default level 2");
    Harness::answer(next);
    high.await.unwrap().unwrap();
    h.settle().await;
    Harness::answer(h.jobs.try_recv().unwrap());
    low.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_fails_only_its_requests() {
    let h = Harness::new(config(Duration::ZERO, vec![unbounded()]), 1);
    let doomed = h.send(1, 1, None);
    h.settle().await;
    let job = h.jobs.try_recv().unwrap();
    let fine = h.send(2, 1, None);
    h.settle().await;
    let JobReply::Batch { seq, done } = job.reply else {
        panic!("a batch");
    };
    done.send(BatchDone {
        seq,
        outputs: Err(ExecError::Failed("boom".into())),
        phases: Phases::default(),
        run: Default::default(),
    })
    .unwrap();
    let failed = doomed.await.unwrap().unwrap();
    assert_eq!(
        failed.outputs.unwrap_err(),
        ExecError::Failed("boom".into())
    );
    h.settle().await;
    Harness::answer(h.jobs.try_recv().unwrap());
    assert_eq!(value(&fine.await.unwrap().unwrap()), 2);
}

#[tokio::test(start_paused = true)]
async fn preserve_ordering_holds_later_batches_back() {
    let config = Arc::new(DynamicConfig {
        preserve_ordering: true,
        ..one_at_a_time(vec![unbounded()], 0)
    });
    let h = Harness::new(config, 2);
    let first = h.send(1, 1, None);
    h.settle().await;
    let second = h.send(2, 1, None);
    h.settle().await;
    let (one, two) = (h.jobs.try_recv().unwrap(), h.jobs.try_recv().unwrap());
    Harness::answer(two);
    h.settle().await;
    assert!(
        !second.is_finished(),
        "the second answer waits for the first"
    );
    Harness::answer(one);
    assert_eq!(value(&first.await.unwrap().unwrap()), 1);
    assert_eq!(value(&second.await.unwrap().unwrap()), 2);
}
