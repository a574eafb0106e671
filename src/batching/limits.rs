//! Admission limits in front of a model version's queue: a token-bucket rate limit and a circuit
//! breaker over the version's recent execution outcomes. The arithmetic is pure (time is passed
//! in); the shared wrappers add only a lock, and the breaker's closed state is one atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A rate limit shared by every version of one model.
#[derive(Debug)]
pub struct RateLimit {
    bucket: Mutex<TokenBucket>,
    /// Requests per second, for messages.
    pub rate: f64,
    /// Requests admitted at once after a quiet period.
    pub burst: f64,
}

impl RateLimit {
    /// A limit of `rate` requests per second with bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            bucket: Mutex::new(TokenBucket::new(rate, burst)),
            rate,
            burst,
        }
    }

    /// Whether `other` limits at the same rate and burst.
    pub fn same_limit(&self, other: &RateLimit) -> bool {
        self.rate == other.rate && self.burst == other.burst
    }

    /// Whether one more request may pass now.
    pub fn admit(&self) -> bool {
        self.bucket
            .lock()
            .map(|mut b| b.try_take(Instant::now()))
            .unwrap_or(true)
    }
}

/// When the circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failure share of a window's executions that opens the circuit; 0 disables the breaker.
    pub error_rate: f64,
    /// Executions a window needs before its error rate counts.
    pub min_executions: u64,
    /// Length of a counting window.
    pub window: Duration,
    /// How long the circuit stays open before a probe is let through.
    pub open_for: Duration,
}

/// Default failure share that opens the circuit.
pub const DEFAULT_BREAKER_ERROR_RATE: f64 = 0.5;
/// Default executions a window needs before it can open the circuit.
pub const DEFAULT_BREAKER_MIN_EXECUTIONS: u64 = 20;
/// Default counting window.
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// Default time the circuit stays open.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            error_rate: DEFAULT_BREAKER_ERROR_RATE,
            min_executions: DEFAULT_BREAKER_MIN_EXECUTIONS,
            window: DEFAULT_BREAKER_WINDOW,
            open_for: DEFAULT_BREAKER_OPEN_FOR,
        }
    }
}

/// Where the circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Serving; outcomes are counted.
    Closed,
    /// Out of service until the instant given.
    Open { until: Instant },
    /// The open period passed: requests pass as probes; the next outcome closes or reopens it.
    HalfOpen,
}

/// The breaker's arithmetic, with time passed in.
#[derive(Debug, Clone)]
pub struct BreakerState {
    config: BreakerConfig,
    circuit: Circuit,
    window_start: Option<Instant>,
    ok: u64,
    failed: u64,
}

impl BreakerState {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> BreakerState {
        BreakerState {
            config,
            circuit: Circuit::Closed,
            window_start: None,
            ok: 0,
            failed: 0,
        }
    }

    /// The circuit at `now` (an open circuit turns half-open once its time is up).
    pub fn circuit(&mut self, now: Instant) -> Circuit {
        if let Circuit::Open { until } = self.circuit
            && now >= until
        {
            self.circuit = Circuit::HalfOpen;
        }
        self.circuit
    }

    /// Counts one execution's outcome.
    pub fn record(&mut self, ok: bool, now: Instant) {
        if self.config.error_rate <= 0.0 {
            return;
        }
        match self.circuit(now) {
            Circuit::HalfOpen if ok => self.reset(Circuit::Closed, now),
            Circuit::HalfOpen => self.trip(now),
            Circuit::Open { .. } => {}
            Circuit::Closed => {
                let start = *self.window_start.get_or_insert(now);
                if now.saturating_duration_since(start) >= self.config.window {
                    self.reset(Circuit::Closed, now);
                }
                if ok {
                    self.ok += 1;
                } else {
                    self.failed += 1;
                }
                let total = self.ok + self.failed;
                let rate = self.failed as f64 / total as f64;
                if total >= self.config.min_executions && rate >= self.config.error_rate {
                    self.trip(now);
                }
            }
        }
    }

    fn trip(&mut self, now: Instant) {
        let until = now + self.config.open_for;
        self.reset(Circuit::Open { until }, now);
    }

    fn reset(&mut self, circuit: Circuit, now: Instant) {
        self.circuit = circuit;
        self.window_start = Some(now);
        self.ok = 0;
        self.failed = 0;
    }
}

/// A version's circuit breaker, shared by its instances (which record) and its request path
/// (which asks). Asking costs one atomic load while the circuit is closed.
#[derive(Debug)]
pub struct Breaker {
    closed: AtomicBool,
    state: Mutex<BreakerState>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            closed: AtomicBool::new(true),
            state: Mutex::new(BreakerState::new(config)),
        }
    }

    /// Whether requests may pass: closed, or half-open (probing).
    pub fn allows(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        !matches!(state.circuit(Instant::now()), Circuit::Open { .. })
    }

    /// Counts one execution's outcome.
    pub fn record(&self, ok: bool, now: Instant) {
        // Called from instance threads once per execution, never from the runtime.
        if let Ok(mut state) = self.state.lock() {
            state.record(ok, now);
            let closed = state.circuit(now) == Circuit::Closed;
            self.closed.store(closed, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2.0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_millis(50)));
        assert!(bucket.try_take(t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.try_take(later) && bucket.try_take(later) && !bucket.try_take(later));
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            error_rate: 0.5,
            min_executions: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_breaker_opens_on_a_high_error_rate_and_probes_after_a_while() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(config());
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.circuit(t0), Circuit::Closed, "too few executions yet");
        b.record(true, t0);
        assert_eq!(
            b.circuit(t0),
            Circuit::Open {
                until: t0 + config().open_for
            }
        );
        let probe = t0 + Duration::from_secs(5);
        assert_eq!(b.circuit(probe), Circuit::HalfOpen);
        b.record(false, probe);
        assert!(matches!(b.circuit(probe), Circuit::Open { .. }));
        let probe = probe + Duration::from_secs(5);
        assert_eq!(b.circuit(probe), Circuit::HalfOpen);
        b.record(true, probe);
        assert_eq!(b.circuit(probe), Circuit::Closed);
    }

    #[test]
    fn old_failures_leave_with_their_window() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(config());
        b.record(false, t0);
        b.record(false, t0);
        b.record(false, t0);
        let next = t0 + Duration::from_secs(11);
        b.record(true, next);
        b.record(true, next);
        b.record(true, next);
        b.record(false, next);
        assert_eq!(b.circuit(next), Circuit::Closed);
    }

    #[test]
    fn a_zero_error_rate_disables_the_breaker() {
        let t0 = Instant::now();
        let mut b = BreakerState::new(BreakerConfig {
            error_rate: 0.0,
            ..config()
        });
        for _ in 0..10 {
            b.record(false, t0);
        }
        assert_eq!(b.circuit(t0), Circuit::Closed);
    }

    #[test]
    fn the_shared_breaker_refuses_while_open() {
        let breaker = Breaker::new(BreakerConfig {
            min_executions: 1,
            ..config()
        });
        assert!(breaker.allows());
        breaker.record(false, Instant::now());
        assert!(!breaker.allows());
    }
}
