//! Reading scheduling settings from model configurations written as Triton's documentation writes
//! them.

use std::time::Duration;

use super::*;
use crate::repository::model_config;

fn scheduling(text: &str) -> Result<SchedulingConfig, String> {
    let config = model_config::parse(text).expect("config parses");
    SchedulingConfig::from_model_config(&config, 2)
}

#[test]
fn no_dynamic_batching_runs_requests_alone() {
    let s = scheduling("name: \"m\"\nmax_batch_size: 8\n").unwrap();
    assert!(s.dynamic.is_none());
    assert!(s.rate_limit.is_none());
    assert_eq!(s.instances, 2);
    assert_eq!(s.breaker, BreakerConfig::default());
}

#[test]
fn dynamic_batching_settings_are_read() {
    let s = scheduling(
        r#"
name: "m"
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 500 }
  priority_queue_policy { key: 1 value: { max_queue_size: 3 allow_timeout_override: true } }
}
"#,
    )
    .unwrap();
    let d = s.dynamic.unwrap();
    assert_eq!(d.policy.max_batch_size, 16);
    assert_eq!(d.policy.preferred, vec![4, 8]);
    assert_eq!(d.policy.max_queue_delay, Duration::from_micros(100));
    assert!(d.preserve_ordering);
    assert_eq!(d.levels.len(), 2);
    assert_eq!(d.levels[0].max_queue_size, 3);
    assert_eq!(d.levels[1].max_queue_size, 10);
    assert_eq!(d.default_level, 1);
    assert_eq!(d.level(None), 1);
    assert_eq!(d.level(Some(1)), 0);
    assert_eq!(d.level(Some(9)), 1);
    let default = d.levels[1];
    assert_eq!(default.timeout(None), Some(Duration::from_micros(500)));
    assert_eq!(
        default.timeout(Some(Duration::from_micros(50))),
        Some(Duration::from_micros(500)),
        "no override allowed"
    );
    assert_eq!(
        d.levels[0].timeout(Some(Duration::from_micros(50))),
        Some(Duration::from_micros(50))
    );
}

#[test]
fn a_request_timeout_applies_when_no_default_is_set() {
    let s = scheduling("name: \"m\"\nmax_batch_size: 4\ndynamic_batching { }\n").unwrap();
    let level = s.dynamic.unwrap().levels[0];
    assert_eq!(level.timeout(None), None);
    assert_eq!(
        level.timeout(Some(Duration::from_micros(7))),
        Some(Duration::from_micros(7))
    );
}

#[test]
fn invalid_batching_settings_are_reasons() {
    let e = scheduling(
        "name: \"m\"\nmax_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 8 ] }\n",
    )
    .unwrap_err();
    assert!(e.contains("preferred_batch_size 8"), "{e}");
    let e = scheduling(
        "name: \"m\"\nmax_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }\n",
    )
    .unwrap_err();
    assert!(e.contains("default_priority_level 3"), "{e}");
}

#[test]
fn rate_limit_and_breaker_parameters_are_read() {
    let s = scheduling(
        r#"
name: "m"
parameters { key: "rate_limit_per_sec" value: { string_value: "100" } }
parameters { key: "rate_limit_burst" value: { string_value: "5" } }
parameters { key: "circuit_breaker_error_rate" value: { string_value: "0" } }
parameters { key: "circuit_breaker_open_secs" value: { string_value: "0.5" } }
"#,
    )
    .unwrap();
    let limit = s.rate_limit.unwrap();
    assert_eq!(limit.rate, 100.0);
    for _ in 0..5 {
        assert!(limit.admit());
    }
    assert!(!limit.admit(), "the burst is spent");
    assert_eq!(s.breaker.error_rate, 0.0);
    assert_eq!(s.breaker.open_for, Duration::from_millis(500));
    let e = scheduling(
        "name: \"m\"\nparameters { key: \"rate_limit_per_sec\" value: { string_value: \"lots\" } }\n",
    )
    .unwrap_err();
    assert!(e.contains("rate_limit_per_sec"), "{e}");
}
