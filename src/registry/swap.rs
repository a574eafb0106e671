//! Publishing a model's new snapshot: whether it differs from the one serving, and the log line,
//! span and counters of a swap with the versions it retires.

use std::sync::Arc;

use tracing::info;

use crate::telemetry::spans;

use super::{ModelSnapshot, Registry, VersionStatus};

/// Whether two snapshots would serve and report the same.
pub(super) fn same_snapshot(a: &ModelSnapshot, b: &ModelSnapshot) -> bool {
    let same_version = |x: &VersionStatus, y: &VersionStatus| {
        x.state == y.state
            && x.reason == y.reason
            && x.fingerprint == y.fingerprint
            && x.config_digest == y.config_digest
            && match (&x.serving, &y.serving) {
                (Some(p), Some(q)) => Arc::ptr_eq(p, q),
                (None, None) => true,
                _ => false,
            }
    };
    a.reason == b.reason
        && a.traffic == b.traffic
        && a.config_digest == b.config_digest
        && a.default_version == b.default_version
        && a.versions.len() == b.versions.len()
        && a.versions
            .iter()
            .zip(&b.versions)
            .all(|((v, x), (w, y))| v == w && same_version(x, y))
}

/// Logs a swap and counts it with the versions it retires.
pub(super) fn log_swap_and_count(
    registry: &Registry,
    name: &str,
    old: &ModelSnapshot,
    new: &ModelSnapshot,
) {
    let retired = log_swap(name, old, new);
    registry.events.swap(name, retired);
}

/// Logs a swap; returns how many serving versions it retired.
fn log_swap(name: &str, old: &ModelSnapshot, new: &ModelSnapshot) -> usize {
    let ready = |s: &ModelSnapshot| -> Vec<u64> {
        s.versions
            .iter()
            .filter(|(_, v)| v.serving.is_some())
            .map(|(v, _)| *v)
            .collect()
    };
    let retired: Vec<u64> = old
        .versions
        .iter()
        .filter(|(v, s)| {
            s.serving.as_ref().is_some_and(|old| {
                new.versions
                    .get(v)
                    .and_then(|n| n.serving.as_ref())
                    .is_none_or(|n| !Arc::ptr_eq(old, n))
            })
        })
        .map(|(v, _)| *v)
        .collect();
    let ready = ready(new);
    let _span = spans::model_swap(name, &ready, &retired, new.default_version).entered();
    info!(
        model = name,
        ready = ?ready,
        default_version = ?new.default_version,
        retired = ?retired,
        "model snapshot swapped"
    );
    retired.len()
}
