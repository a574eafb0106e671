//! Scheduling a model version's requests onto its instances. Without `dynamic_batching` each request
//! goes straight to the next free instance and runs alone (the shortest path); a request's `timeout`
//! parameter bounds its wait for an instance (it then leaves unrun). With it, a
//! [`batcher::Batcher`] queues requests by priority, forms batches of compatible requests as
//! [`policy::decide`] says, enforces the queue policy (size, timeouts) and hands each batch's replies
//! back together. In front of both sit the admission [`limits`]: a per-model rate limit and the
//! version's circuit breaker.
//!
//! Besides Triton's own settings, the model configuration's `parameters` may set (string values):
//! - `rate_limit_per_sec`: requests per second admitted for the model (all its versions together,
//!   one bucket kept across reloads that leave the limit unchanged);
//!   above it requests fail with RESOURCE_EXHAUSTED. Unset or 0: no limit.
//! - `rate_limit_burst`: requests admitted at once after a quiet period (default: one second's worth).
//! - `circuit_breaker_error_rate`: share of failed executions (0–1) in a window that takes the
//!   version out of service (UNAVAILABLE) for a while; 0 disables the breaker (default 0.5).
//! - `circuit_breaker_min_executions`: executions a window needs before it counts (default 20).
//! - `circuit_breaker_window_secs`: length of the counting window (default 10).
//! - `circuit_breaker_open_secs`: time out of service before probing again (default 5).

pub mod batcher;
pub mod limits;
pub mod merge;
pub mod policy;
pub mod timer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::executor::LoadedModel;
use crate::executor::runner::{Execution, Observers, Runner};
use crate::proto::inference::model_config::SchedulingChoice;
use crate::proto::inference::model_queue_policy::TimeoutAction;
use crate::proto::inference::{ModelConfig, ModelDynamicBatching, ModelQueuePolicy};
use crate::registry::stats::VersionStats;
use crate::schema::CheckedInputs;
use crate::tensor::Parameter;

use batcher::Batcher;
use limits::{Breaker, BreakerConfig, RateLimit};
use policy::BatchPolicy;
use timer::Timer;

/// Request parameter giving the request's queue timeout in microseconds (Triton's `timeout`).
pub const TIMEOUT_PARAMETER: &str = "timeout";
/// Request parameter giving the request's priority level (Triton's `priority`).
pub const PRIORITY_PARAMETER: &str = "priority";

/// The queue policy of one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Most requests waiting at this level; 0 means unbounded.
    pub max_queue_size: usize,
    /// Timeout of requests that set none.
    pub default_timeout: Option<Duration>,
    /// Whether a request's own timeout replaces the default.
    pub allow_timeout_override: bool,
    /// Whether an expired request is rejected (REJECT); with DELAY it is moved behind every
    /// request of its level (and the levels above) that has not expired, and run after them.
    pub reject_on_timeout: bool,
}

impl QueuePolicy {
    fn from_config(policy: Option<&ModelQueuePolicy>) -> QueuePolicy {
        let policy = policy.cloned().unwrap_or_default();
        QueuePolicy {
            max_queue_size: policy.max_queue_size as usize,
            default_timeout: (policy.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(policy.default_timeout_microseconds)),
            allow_timeout_override: policy.allow_timeout_override,
            reject_on_timeout: policy.timeout_action == TimeoutAction::Reject as i32,
        }
    }

    /// The timeout a request gets: its own where allowed (or where no default is set), else the
    /// default.
    pub fn timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        match (requested, self.default_timeout) {
            (Some(own), None) => Some(own),
            (Some(own), Some(_)) if self.allow_timeout_override => Some(own),
            (_, default) => default,
        }
    }
}

/// The dynamic batcher's settings, from `dynamic_batching`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub policy: BatchPolicy,
    /// Answer requests in the order they were queued, even across instances.
    pub preserve_ordering: bool,
    /// Queue policy per priority level; index 0 is level 1, the highest.
    pub levels: Vec<QueuePolicy>,
    /// Index of the level of requests that ask for none.
    pub default_level: usize,
}

impl DynamicConfig {
    fn from_config(batching: &ModelDynamicBatching, max_batch_size: usize) -> Result<Self, String> {
        let max_batch_size = max_batch_size.max(1);
        let mut preferred = Vec::new();
        for &size in &batching.preferred_batch_size {
            if size <= 0 || size as usize > max_batch_size {
                return Err(format!(
                    "dynamic_batching: preferred_batch_size {size} is not between 1 and \
                     max_batch_size {max_batch_size}"
                ));
            }
            preferred.push(size as usize);
        }
        preferred.sort_unstable();
        preferred.dedup();
        let count = batching.priority_levels.max(1) as usize;
        let levels = (1..=count as u64)
            .map(|level| {
                let own = batching.priority_queue_policy.get(&level);
                QueuePolicy::from_config(own.or(batching.default_queue_policy.as_ref()))
            })
            .collect();
        let default_level = match batching.default_priority_level {
            0 if batching.priority_levels == 0 => 0,
            level if level >= 1 && level <= batching.priority_levels => level as usize - 1,
            level => {
                return Err(format!(
                    "dynamic_batching: default_priority_level {level} is not between 1 and \
                     priority_levels {}",
                    batching.priority_levels
                ));
            }
        };
        Ok(DynamicConfig {
            policy: BatchPolicy {
                max_batch_size,
                preferred,
                max_queue_delay: Duration::from_micros(batching.max_queue_delay_microseconds),
            },
            preserve_ordering: batching.preserve_ordering,
            levels,
            default_level,
        })
    }

    /// The level index of a request asking for `priority` (0 or out of range: the default).
    pub fn level(&self, priority: Option<u64>) -> usize {
        match priority {
            Some(p) if p >= 1 && p as usize <= self.levels.len() => p as usize - 1,
            _ => self.default_level,
        }
    }
}

/// How a model's versions are scheduled, read once from its configuration.
#[derive(Debug, Clone)]
pub struct SchedulingConfig {
    /// Instances per version.
    pub instances: usize,
    /// The dynamic batcher's settings; `None` runs each request alone.
    pub dynamic: Option<DynamicConfig>,
    /// The model's rate limit, shared by its versions.
    pub rate_limit: Option<Arc<RateLimit>>,
    pub breaker: BreakerConfig,
}

fn parameter<T: std::str::FromStr>(config: &ModelConfig, key: &str) -> Result<Option<T>, String> {
    let Some(value) = config.parameters.get(key) else {
        return Ok(None);
    };
    let text = value.string_value.trim();
    text.parse::<T>()
        .map(Some)
        .map_err(|_| format!("parameter '{key}': '{text}' is not a valid value"))
}

impl SchedulingConfig {
    /// Reads the scheduling settings of a configuration; the error is a reason for the model.
    pub fn from_model_config(config: &ModelConfig, instances: usize) -> Result<Self, String> {
        let dynamic = match &config.scheduling_choice {
            Some(SchedulingChoice::DynamicBatching(batching)) => Some(DynamicConfig::from_config(
                batching,
                config.max_batch_size.max(0) as usize,
            )?),
            _ => None,
        };
        let rate = parameter::<f64>(config, "rate_limit_per_sec")?.unwrap_or(0.0);
        let burst = parameter::<f64>(config, "rate_limit_burst")?.unwrap_or(rate);
        if !(rate.is_finite() && rate >= 0.0 && burst.is_finite() && burst >= 0.0) {
            return Err("parameters rate_limit_per_sec and rate_limit_burst must be >= 0".into());
        }
        let defaults = BreakerConfig::default();
        let secs = |key: &str, default: Duration| -> Result<Duration, String> {
            let value = parameter::<f64>(config, key)?;
            match value {
                Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
                Some(_) => Err(format!("parameter '{key}' must be >= 0")),
                None => Ok(default),
            }
        };
        let breaker = BreakerConfig {
            error_rate: parameter(config, "circuit_breaker_error_rate")?
                .unwrap_or(defaults.error_rate),
            min_executions: parameter(config, "circuit_breaker_min_executions")?
                .unwrap_or(defaults.min_executions),
            window: secs("circuit_breaker_window_secs", defaults.window)?,
            open_for: secs("circuit_breaker_open_secs", defaults.open_for)?,
        };
        Ok(SchedulingConfig {
            instances: instances.max(1),
            dynamic,
            rate_limit: (rate > 0.0).then(|| Arc::new(RateLimit::new(rate, burst))),
            breaker,
        })
    }
}

enum Queue {
    Direct(Runner),
    Dynamic(Batcher),
}

/// A version's scheduler: admission limits, then its instances directly or through its batcher.
pub struct Scheduler {
    queue: Queue,
    stats: Arc<VersionStats>,
    breaker: Arc<Breaker>,
    rate_limit: Option<Arc<RateLimit>>,
    /// `model 'NAME' version N`, for messages.
    subject: String,
}

impl Scheduler {
    /// Starts the instances of a loaded version and, if configured, its batcher. Must run inside
    /// the tokio runtime (the batcher is a task).
    /// `drain` turns true at shutdown; the batcher then stops waiting for batches to fill.
    pub fn start(
        model: &Arc<dyn LoadedModel>,
        config: &SchedulingConfig,
        (name, version): (&str, u64),
        drain: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Scheduler, String> {
        let observers = Observers {
            stats: Arc::new(VersionStats::default()),
            breaker: Arc::new(Breaker::new(config.breaker)),
        };
        let label = format!("{name}/{version}");
        let runner = Runner::start(model, config.instances, &label, &observers)?;
        let subject = format!("model '{name}' version {version}");
        let queue = match &config.dynamic {
            None => Queue::Direct(runner),
            Some(dynamic) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| format!("cannot start the batcher: {e}"))?;
                let _entered = runtime.enter();
                Queue::Dynamic(Batcher::start(
                    runner.jobs(),
                    runner.count(),
                    Arc::new(dynamic.clone()),
                    subject.clone(),
                    (Timer::Thread, drain),
                ))
            }
        };
        Ok(Scheduler {
            queue,
            stats: observers.stats,
            breaker: observers.breaker,
            rate_limit: config.rate_limit.clone(),
            subject,
        })
    }

    /// The version's statistics, which its instances update.
    pub fn stats(&self) -> &Arc<VersionStats> {
        &self.stats
    }

    /// Requests waiting to run: in the batcher's queue, or for a free instance (batches waiting
    /// for an instance are not counted again).
    pub fn queue_depth(&self) -> usize {
        match &self.queue {
            Queue::Direct(runner) => runner.waiting(),
            Queue::Dynamic(batcher) => batcher.queued(),
        }
    }

    /// Whether the version is in service (its circuit breaker is not open).
    pub fn is_healthy(&self) -> bool {
        self.breaker.allows()
    }

    /// Runs one checked request as the configuration says.
    pub async fn submit(
        &self,
        checked: CheckedInputs,
        parameters: &HashMap<String, Parameter>,
    ) -> Result<Execution> {
        self.admit()?;
        let timeout = unsigned(parameters, TIMEOUT_PARAMETER)?
            .filter(|&us| us > 0)
            .map(Duration::from_micros);
        match &self.queue {
            Queue::Direct(runner) => {
                let run = runner.execute(checked.inputs, checked.batch_size, timeout);
                run.await.ok_or_else(|| {
                    Error::DeadlineExceeded(format!(
                        "{}: request timeout of {} µs expired before a model instance was free",
                        self.subject,
                        timeout.unwrap_or_default().as_micros()
                    ))
                })
            }
            Queue::Dynamic(batcher) => {
                let priority = unsigned(parameters, PRIORITY_PARAMETER)?;
                batcher
                    .enqueue(checked.inputs, checked.batch_size, priority, timeout)
                    .await
            }
        }
    }

    fn admit(&self) -> Result<()> {
        if !self.breaker.allows() {
            return Err(Error::Unavailable(format!(
                "{}: out of service after too many failed executions; retry later",
                self.subject
            )));
        }
        if let Some(limit) = &self.rate_limit
            && !limit.admit()
        {
            return Err(Error::Exhausted(format!(
                "{}: rate limit of {} requests per second exceeded",
                self.subject, limit.rate
            )));
        }
        Ok(())
    }
}

/// A non-negative integer request parameter.
fn unsigned(parameters: &HashMap<String, Parameter>, key: &str) -> Result<Option<u64>> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Parameter::Uint64(v)) => Ok(Some(*v)),
        Some(Parameter::Int64(v)) if *v >= 0 => Ok(Some(*v as u64)),
        Some(other) => Err(Error::invalid(format!(
            "request parameter '{key}' must be a non-negative integer, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests;
