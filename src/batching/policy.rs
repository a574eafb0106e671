//! The dynamic batcher's decision, as a pure function of plain values: given what waits at the head
//! of the queue, the time and the configuration, run a batch of the first `n` requests now, wait
//! until an instant for more to arrive, or do nothing until something changes. It follows Triton's
//! dynamic batcher: run at once when the batch is full (the largest preferred size, or
//! `max_batch_size`) or cannot grow (the next request does not fit or has other shapes); otherwise
//! wait for at most `max_queue_delay` after the oldest request arrived, then run the largest
//! preferred size that the queue's head makes up, or everything that fits.

use std::time::{Duration, Instant};

/// The batching settings `decide` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch, in batch elements (the model's `max_batch_size`).
    pub max_batch_size: usize,
    /// Preferred batch sizes, ascending; empty means "as large as possible".
    pub preferred: Vec<usize>,
    /// Longest wait for a batch to fill, counted from the oldest request's arrival.
    pub max_queue_delay: Duration,
}

/// What waits at the head of the queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueSummary<'a> {
    /// Batch sizes of the requests at the head of the queue that can run together, in queue order,
    /// adding up to at most `max_batch_size`.
    pub sizes: &'a [usize],
    /// Whether other requests wait behind them that cannot join this batch.
    pub blocked: bool,
    /// When the first of them arrived.
    pub oldest: Instant,
    /// Instances free to take a batch now.
    pub free_instances: usize,
}

/// What the batcher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the first `n` requests of the queue as one batch.
    Run(usize),
    /// Nothing to run before this instant, unless a request arrives or an instance frees up.
    Wait(Instant),
    /// Nothing to do until a request arrives or an instance frees up.
    Idle,
}

/// Decides what to run next.
pub fn decide(queue: QueueSummary<'_>, now: Instant, policy: &BatchPolicy) -> Decision {
    if queue.sizes.is_empty() || queue.free_instances == 0 {
        return Decision::Idle;
    }
    let total: usize = queue.sizes.iter().sum();
    let target = policy
        .preferred
        .last()
        .copied()
        .unwrap_or(policy.max_batch_size)
        .min(policy.max_batch_size);
    if queue.blocked || total >= target {
        return Decision::Run(cut(queue.sizes, &policy.preferred, target));
    }
    let deadline = queue.oldest + policy.max_queue_delay;
    if now >= deadline {
        return Decision::Run(cut(queue.sizes, &policy.preferred, target));
    }
    Decision::Wait(deadline)
}

/// How many requests of the head to run: the longest prefix adding up to a preferred size, or
/// else the longest adding up to at most `target` (and always at least one).
fn cut(sizes: &[usize], preferred: &[usize], target: usize) -> usize {
    let mut sum = 0;
    let mut best_preferred = None;
    let mut within_target = 0;
    for (i, &size) in sizes.iter().enumerate() {
        sum += size;
        if preferred.contains(&sum) {
            best_preferred = Some(i + 1);
        }
        if sum <= target {
            within_target = i + 1;
        }
    }
    best_preferred.unwrap_or(within_target).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(preferred: &[usize]) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: 8,
            preferred: preferred.to_vec(),
            max_queue_delay: 10 * MS,
        }
    }

    fn summary(sizes: &[usize], oldest: Instant) -> QueueSummary<'_> {
        QueueSummary {
            sizes,
            blocked: false,
            oldest,
            free_instances: 1,
        }
    }

    #[test]
    fn nothing_queued_or_no_free_instance_means_idle() {
        let t0 = Instant::now();
        assert_eq!(decide(summary(&[], t0), t0, &policy(&[])), Decision::Idle);
        let busy = QueueSummary {
            free_instances: 0,
            ..summary(&[1, 1], t0)
        };
        assert_eq!(decide(busy, t0 + MS * 100, &policy(&[])), Decision::Idle);
    }

    #[test]
    fn a_partial_batch_waits_for_the_delay_then_runs() {
        let t0 = Instant::now();
        let p = policy(&[]);
        assert_eq!(
            decide(summary(&[1, 2], t0), t0 + 3 * MS, &p),
            Decision::Wait(t0 + 10 * MS)
        );
        assert_eq!(
            decide(summary(&[1, 2], t0), t0 + 10 * MS, &p),
            Decision::Run(2)
        );
    }

    #[test]
    fn a_full_batch_runs_at_once() {
        let t0 = Instant::now();
        assert_eq!(
            decide(summary(&[4, 4], t0), t0, &policy(&[])),
            Decision::Run(2)
        );
    }

    #[test]
    fn no_delay_runs_whatever_is_there() {
        let t0 = Instant::now();
        let p = BatchPolicy {
            max_queue_delay: Duration::ZERO,
            ..policy(&[])
        };
        assert_eq!(decide(summary(&[1], t0), t0, &p), Decision::Run(1));
    }

    #[test]
    fn a_blocked_head_runs_at_once() {
        let t0 = Instant::now();
        let blocked = QueueSummary {
            blocked: true,
            ..summary(&[1, 1], t0)
        };
        assert_eq!(decide(blocked, t0, &policy(&[])), Decision::Run(2));
    }

    #[test]
    fn the_largest_preferred_size_runs_at_once_and_first_on_timeout() {
        let t0 = Instant::now();
        let p = policy(&[2, 4]);
        assert_eq!(
            decide(summary(&[1, 1, 1, 1, 1], t0), t0, &p),
            Decision::Run(4)
        );
        assert_eq!(
            decide(summary(&[1, 1, 1], t0), t0, &p),
            Decision::Wait(t0 + 10 * MS)
        );
        assert_eq!(
            decide(summary(&[1, 1, 1], t0), t0 + 10 * MS, &p),
            Decision::Run(2)
        );
        // No prefix makes a preferred size: everything that fits runs.
        assert_eq!(
            decide(summary(&[3], t0), t0 + 10 * MS, &p),
            Decision::Run(1)
        );
    }
}
