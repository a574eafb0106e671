//! Tells the reconciler that the repository may have changed. It only signals: filesystem events
//! (create, modify, remove, rename, close-after-write; never reads, which our own scans cause) and
//! a periodic tick, both coalesced into one pending signal. The reconciler debounces, rescans and
//! decides. Poll mode has only the tick, for filesystems without inotify (NFS and the like).

use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What makes the repository be looked at again.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// Filesystem events, plus a full rescan every `rescan` as a safety net.
    Watch { rescan: Duration },
    /// Only a rescan every `every`.
    Poll { every: Duration },
}

/// Keeps the watch alive; dropping it stops the signals.
pub struct RepositoryWatcher {
    _events: Option<notify::RecommendedWatcher>,
    ticker: JoinHandle<()>,
}

impl Drop for RepositoryWatcher {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Whether an event can mean a model changed.
fn relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other | EventKind::Any => false,
    }
}

/// Starts watching `root`; the receiver yields one `()` per burst of changes (and per tick).
pub fn start(
    root: &Path,
    trigger: Trigger,
) -> Result<(RepositoryWatcher, mpsc::Receiver<()>), notify::Error> {
    let (signal, signals) = mpsc::channel::<()>(1);
    let (events, every) = match trigger {
        Trigger::Watch { rescan } => {
            let signal = signal.clone();
            let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
                // Errors (e.g. an overflowed event queue) also mean "look again".
                if event.as_ref().map_or(true, relevant) {
                    let _ = signal.try_send(());
                }
            })?;
            watcher.watch(root, RecursiveMode::Recursive)?;
            (Some(watcher), rescan)
        }
        Trigger::Poll { every } => (None, every),
    };
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let _ = signal.try_send(());
        }
    });
    Ok((
        RepositoryWatcher {
            _events: events,
            ticker,
        },
        signals,
    ))
}
