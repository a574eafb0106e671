//! Every change of a model's traffic since the daemon started — what changed, why and when —
//! kept per model in a bounded ring and logged as an event as it happens.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tracing::info;

/// Changes kept per model; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 256;

/// What caused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A management command.
    Command,
    /// An automatic rollout step or promotion.
    Rollout,
    /// A failed rollout gate (automatic rollback).
    Gate,
    /// `traffic.yaml` changed on disk.
    Reload,
}

impl Cause {
    /// The name used in the history, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Command => "command",
            Cause::Rollout => "rollout",
            Cause::Gate => "gate",
            Cause::Reload => "reload",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficEvent {
    pub unix_ms: i64,
    pub cause: Cause,
    pub detail: String,
}

/// The change history of every model.
#[derive(Debug, Default)]
pub struct History {
    models: DashMap<String, Mutex<VecDeque<TrafficEvent>>>,
}

impl History {
    /// Records and logs a change.
    pub fn record(&self, model: &str, cause: Cause, detail: &str) {
        info!(
            model,
            cause = cause.as_str(),
            detail,
            "traffic policy changed"
        );
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let event = TrafficEvent {
            unix_ms,
            cause,
            detail: detail.to_string(),
        };
        let entry = self.models.entry(model.to_string()).or_default();
        if let Ok(mut events) = entry.lock() {
            if events.len() == HISTORY_LIMIT {
                events.pop_front();
            }
            events.push_back(event);
        }
    }

    /// A model's changes, oldest first.
    pub fn list(&self, model: &str) -> Vec<TrafficEvent> {
        self.models
            .get(model)
            .and_then(|e| e.lock().ok().map(|e| e.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_changes_in_order() {
        let history = History::default();
        for i in 0..HISTORY_LIMIT + 3 {
            history.record("m", Cause::Command, &format!("change {i}"));
        }
        let events = history.list("m");
        assert_eq!(events.len(), HISTORY_LIMIT);
        assert_eq!(events[0].detail, "change 3");
        assert_eq!(
            events.last().unwrap().detail,
            format!("change {}", HISTORY_LIMIT + 2)
        );
        assert!(history.list("other").is_empty());
    }
}
