//! The loop that keeps the registry in line with the repository in `watch` and `poll` modes:
//! wait for a signal, let the burst of changes finish (debounce), rescan, reconcile, and look again
//! soon while some version's files are still settling.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::Registry;
use super::lifecycle::{Looks, Settle, reconcile_all};
use crate::repository;

/// Quiet time that ends a burst of filesystem events.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How soon a settling version directory is looked at again.
pub const RECHECK: Duration = Duration::from_millis(100);

/// Runs until the signal sender is dropped.
pub async fn run(registry: Arc<Registry>, mut signals: mpsc::Receiver<()>, quiet: Duration) {
    let settle = Settle {
        quiet,
        immediate: false,
    };
    let mut looks = Looks::default();
    let mut recheck: Option<Instant> = None;
    loop {
        let woke = match recheck {
            Some(at) => tokio::select! {
                s = signals.recv() => s.is_some(),
                _ = tokio::time::sleep_until(at) => true,
            },
            None => signals.recv().await.is_some(),
        };
        if !woke || !debounce(&mut signals).await {
            return;
        }
        let root = registry.root().to_path_buf();
        let scanned = match tokio::task::spawn_blocking(move || repository::scan(&root)).await {
            Ok(Ok(scanned)) => scanned,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the model repository; keeping every model as it is");
                recheck = None;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "repository scan task failed");
                continue;
            }
        };
        let outcome = reconcile_all(&registry, scanned, &mut looks, settle).await;
        recheck = outcome.pending.then(|| Instant::now() + RECHECK);
    }
}

/// Waits until no signal arrived for `DEBOUNCE`; false when the sender is gone.
async fn debounce(signals: &mut mpsc::Receiver<()>) -> bool {
    loop {
        match tokio::time::timeout(DEBOUNCE, signals.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}
