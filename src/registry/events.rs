//! Counts of lifecycle events per model (loads, failed loads and their durations, snapshot swaps,
//! retired versions), kept outside the snapshots so they survive every swap. Read by the metrics
//! endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// One model's lifecycle counters.
#[derive(Debug, Default)]
pub struct ModelEvents {
    pub loads: AtomicU64,
    pub load_failures: AtomicU64,
    /// Total time spent loading and warming versions (successful or not), in nanoseconds.
    pub load_nanos: AtomicU64,
    pub swaps: AtomicU64,
    pub retirements: AtomicU64,
    /// Rollouts that reached 100% by themselves.
    pub rollout_promotions: AtomicU64,
    /// Rollouts rolled back by a failed gate.
    pub rollout_rollbacks: AtomicU64,
}

/// Lifecycle counters of every model ever seen.
#[derive(Debug, Default)]
pub struct Events {
    models: DashMap<String, ModelEvents>,
}

/// A copy of one model's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub loads: u64,
    pub load_failures: u64,
    pub load_nanos: u64,
    pub swaps: u64,
    pub retirements: u64,
    pub rollout_promotions: u64,
    pub rollout_rollbacks: u64,
}

impl Events {
    fn with(&self, model: &str, f: impl FnOnce(&ModelEvents)) {
        if let Some(events) = self.models.get(model) {
            return f(&events);
        }
        f(&self.models.entry(model.to_string()).or_default());
    }

    /// Counts one load attempt of a version.
    pub fn load(&self, model: &str, ok: bool, took: Duration) {
        self.with(model, |e| {
            let counter = if ok { &e.loads } else { &e.load_failures };
            counter.fetch_add(1, Ordering::Relaxed);
            e.load_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        });
    }

    /// Counts one published snapshot and the versions it retired.
    pub fn swap(&self, model: &str, retired: usize) {
        self.with(model, |e| {
            e.swaps.fetch_add(1, Ordering::Relaxed);
            e.retirements.fetch_add(retired as u64, Ordering::Relaxed);
        });
    }

    /// Counts an automatic rollout decision: "promote" or "rollback".
    pub fn rollout_decision(&self, model: &str, decision: &str) {
        self.with(model, |e| {
            let counter = if decision == "promote" {
                &e.rollout_promotions
            } else {
                &e.rollout_rollbacks
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Every model's counters, sorted by name.
    pub fn counts(&self) -> Vec<(String, EventCounts)> {
        let mut out: Vec<(String, EventCounts)> = self
            .models
            .iter()
            .map(|e| {
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let counts = EventCounts {
                    loads: load(&e.loads),
                    load_failures: load(&e.load_failures),
                    load_nanos: load(&e.load_nanos),
                    swaps: load(&e.swaps),
                    retirements: load(&e.retirements),
                    rollout_promotions: load(&e.rollout_promotions),
                    rollout_rollbacks: load(&e.rollout_rollbacks),
                };
                (e.key().clone(), counts)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
