//! How the batcher waits for a deadline (the queue delay, a request's timeout). tokio's timer has
//! millisecond granularity, which would stretch a 500 µs queue delay to 1–2 ms, so in service a
//! small thread per batcher sleeps until the instant with microsecond precision and then wakes the
//! batcher task; tests use the runtime's timer, so that they run under paused time.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How the batcher waits until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// tokio's timer: millisecond granularity, follows paused time (for tests).
    Runtime,
    /// A dedicated thread sleeping with microsecond precision.
    Thread,
}

/// Resolves at `wake`: when the alarm rings if there is one, else by tokio's timer.
pub(super) async fn wait_until(wake: Option<Instant>, alarm: Option<&Alarm>) {
    match (alarm, wake) {
        (Some(alarm), _) => alarm.rang.notified().await,
        (None, Some(at)) => tokio::time::sleep_until(at).await,
        (None, None) => std::future::pending().await,
    }
}

/// The timer thread: waits for the instant last set and then wakes the batcher. A wake for an
/// instant that was since replaced only makes the batcher look at its queue once more.
pub(super) struct Alarm {
    set: crossbeam_channel::Sender<Option<std::time::Instant>>,
    rang: Arc<Notify>,
    armed: Option<Instant>,
}

impl Alarm {
    /// Starts the thread; without one (the system refused) the batcher falls back to tokio's timer.
    pub(super) fn start(subject: &str) -> Option<Alarm> {
        let (set, settings) = crossbeam_channel::unbounded::<Option<std::time::Instant>>();
        let rang = Arc::new(Notify::new());
        let ring = Arc::clone(&rang);
        let spawned = std::thread::Builder::new()
            .name("batcher-timer".into())
            .spawn(move || {
                let mut at = None;
                loop {
                    let next = match at {
                        Some(at) => settings.recv_deadline(at),
                        None => settings
                            .recv()
                            .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok(new) => at = new,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            at = None;
                            ring.notify_one();
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Alarm {
                set,
                rang,
                armed: None,
            }),
            Err(e) => {
                tracing::warn!(error = %e, subject, "no batcher timer thread; using the runtime's timer");
                None
            }
        }
    }

    /// Sets the instant to wake at (none: stay quiet).
    pub(super) fn arm(&mut self, at: Option<Instant>) {
        if at != self.armed {
            self.armed = at;
            let _ = self.set.send(at.map(Instant::into_std));
        }
    }
}
