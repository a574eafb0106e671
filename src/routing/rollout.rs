//! The decisions of an automatic rollout, as a pure function of plain values: given the plan,
//! the current step and what the canary and the baseline did since the step began, wait, advance,
//! promote or fail. The controller gathers the figures and applies the decision.

use std::time::Duration;

use super::policy::RolloutPlan;

/// What one arm did during the current step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// p99 latency of its successful requests; `None` when there were none.
    pub p99: Option<Duration>,
}

impl Window {
    /// Failed requests over all requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What to do about a rollout now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Stay at this step; the reason says what is missing.
    Wait(String),
    /// Move to step `next` of the plan.
    Advance { next: usize },
    /// Give the canary all the traffic.
    Promote,
    /// A gate failed: the canary goes to weight 0 at once.
    Fail(String),
}

/// Judges the gates of `step` once the canary has had `min_requests` requests in it, failing at
/// once when one does not hold; advances after `interval` when they all hold. The step after
/// the last, or a step of 100%, is promotion.
pub fn decide(
    plan: &RolloutPlan,
    step: usize,
    canary: Window,
    baseline: Window,
    elapsed: Duration,
) -> Decision {
    if canary.requests < plan.min_requests.max(1) {
        return Decision::Wait(format!(
            "{} of {} canary requests at this step",
            canary.requests,
            plan.min_requests.max(1)
        ));
    }
    let (canary_rate, baseline_rate) = (canary.error_rate(), baseline.error_rate());
    if canary_rate > baseline_rate + plan.max_error_rate_delta {
        return Decision::Fail(format!(
            "canary error rate {:.2}% ({} of {}) exceeds baseline {:.2}% + {:.2}%",
            canary_rate * 100.0,
            canary.errors,
            canary.requests,
            baseline_rate * 100.0,
            plan.max_error_rate_delta * 100.0
        ));
    }
    if let (Some(c), Some(b)) = (canary.p99, baseline.p99)
        && c.as_secs_f64() > b.as_secs_f64() * plan.max_p99_ratio
    {
        return Decision::Fail(format!(
            "canary p99 {:.2} ms exceeds {} x baseline p99 {:.2} ms",
            c.as_secs_f64() * 1e3,
            plan.max_p99_ratio,
            b.as_secs_f64() * 1e3
        ));
    }
    if elapsed < plan.interval {
        return Decision::Wait(format!(
            "gates hold; {:.1} s of {:.1} s at this step",
            elapsed.as_secs_f64(),
            plan.interval.as_secs_f64()
        ));
    }
    let next = step + 1;
    match plan.steps.get(next) {
        Some(&weight) if weight < 100.0 => Decision::Advance { next },
        _ => Decision::Promote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps 5, 25, 50, 100; 60 s; 200 requests; 0.01; 1.5.
    fn plan() -> RolloutPlan {
        RolloutPlan::default()
    }

    fn window(requests: u64, errors: u64, p99_ms: u64) -> Window {
        Window {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    const LONG: Duration = Duration::from_secs(61);

    #[test]
    fn waits_for_enough_canary_requests_even_when_failing() {
        let d = decide(&plan(), 0, window(199, 199, 900), window(5000, 0, 1), LONG);
        assert_eq!(
            d,
            Decision::Wait("199 of 200 canary requests at this step".into())
        );
    }

    #[test]
    fn fails_on_error_rate_beyond_the_margin() {
        let base = window(4000, 40, 10);
        // 1% + 1% margin = 2% allowed; 2.5% fails, 2% holds.
        let d = decide(&plan(), 1, window(200, 5, 10), base, Duration::ZERO);
        assert!(
            matches!(d, Decision::Fail(ref r) if r.contains("2.50%")),
            "{d:?}"
        );
        let d = decide(&plan(), 1, window(200, 4, 10), base, LONG);
        assert_eq!(d, Decision::Advance { next: 2 });
    }

    #[test]
    fn fails_on_slow_p99_before_the_interval_ends() {
        let d = decide(
            &plan(),
            0,
            window(300, 0, 16),
            window(6000, 0, 10),
            Duration::ZERO,
        );
        assert!(
            matches!(d, Decision::Fail(ref r) if r.contains("p99")),
            "{d:?}"
        );
        let d = decide(
            &plan(),
            0,
            window(300, 0, 15),
            window(6000, 0, 10),
            Duration::ZERO,
        );
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }

    #[test]
    fn advances_after_the_interval_and_promotes_at_the_last_step() {
        let (c, b) = (window(300, 0, 10), window(6000, 0, 10));
        assert_eq!(
            decide(&plan(), 0, c, b, LONG),
            Decision::Advance { next: 1 }
        );
        assert_eq!(decide(&plan(), 2, c, b, LONG), Decision::Promote);
        let mut short = plan();
        short.steps = vec![10.0, 30.0];
        assert_eq!(decide(&short, 1, c, b, LONG), Decision::Promote);
    }

    #[test]
    fn no_baseline_latency_skips_the_latency_gate() {
        let b = Window::default();
        let d = decide(&plan(), 0, window(300, 0, 900), b, LONG);
        assert_eq!(d, Decision::Advance { next: 1 });
    }
}
