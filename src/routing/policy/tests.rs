use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const EXAMPLE: &str = r#"# <model>/traffic.yaml
weights:              # version -> weight; versions not listed get no unpinned traffic
  "1": 90
  "2": 10
pin: "2"              # optional: every request naming no version goes here (overrides weights)
routing_key: x-user-id  # gRPC metadata header for sticky assignment
shadow:
  version: "3"
  percent: 20
rollout:              # automatic progressive rollout of the newest ready version
  steps: [5, 25, 50, 100]
  interval: 60s
  min_requests: 200
  max_error_rate_delta: 0.01
  max_p99_ratio: 1.5
  paused: false       # optional
# Written by the daemon (users may delete it to reset):
rollout_state:
  candidate: "3"
  baseline: "2"
  phase: running      # running | paused | promoted | failed
  step: 1             # index into rollout.steps
  reason: "canary p99 41.2 ms > 1.5 x baseline 3.1 ms"
failed:               # versions a rollout rejected, with a digest of their files then; not retried until the files change
  "3": "9f2c01d3aa10b4e7"
"#;

fn example() -> TrafficPolicy {
    TrafficPolicy {
        weights: BTreeMap::from([(1, 90.0), (2, 10.0)]),
        pin: Some(2),
        routing_key: Some("x-user-id".into()),
        shadow: Some(Shadow {
            version: 3,
            percent: 20.0,
        }),
        rollout: Some(RolloutPlan::default()),
        rollout_state: Some(RolloutState {
            candidate: 3,
            baseline: 2,
            phase: RolloutPhase::Running,
            step: 1,
            reason: "canary p99 41.2 ms > 1.5 x baseline 3.1 ms".into(),
        }),
        failed: BTreeMap::from([(3, "9f2c01d3aa10b4e7".to_string())]),
    }
}

fn round_trip(p: &TrafficPolicy) {
    let text = p.to_yaml("resnet50");
    assert_eq!(TrafficPolicy::parse(&text).as_ref(), Ok(p), "{text}");
    assert_eq!(p.to_yaml("resnet50"), text, "emission is deterministic");
}

/// The error for `text`, which must contain every one of `parts`.
fn err(text: &str, parts: &[&str]) {
    let e = TrafficPolicy::parse(text).expect_err(text);
    assert!(!e.contains('\n'), "single line: {e}");
    for part in parts {
        assert!(e.contains(part), "{text:?}: error {e:?} lacks {part:?}");
    }
}

#[test]
fn parses_the_documented_example() {
    assert_eq!(TrafficPolicy::parse(EXAMPLE), Ok(example()));
}

#[test]
fn empty_inputs_give_the_default() {
    for text in [
        "",
        "\n",
        "# only a comment\n# and another\n",
        "{}",
        "~",
        "null\n",
        "---\n",
    ] {
        let p = TrafficPolicy::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(p.is_empty(), "{text:?}");
    }
    assert!(!example().is_empty());
    // Null sections and fields count as absent.
    let p = TrafficPolicy::parse("weights:\npin: ~\nshadow:\nrouting_key: ~\nfailed: {}\n");
    assert!(p.unwrap().is_empty());
}

#[test]
fn emits_the_documented_layout() {
    let text = example().to_yaml("resnet50");
    let expected = r#"# Traffic policy of model 'resnet50'. Rewritten by `switchyard traffic` commands; comments are not kept.
weights:
  "1": 90
  "2": 10
pin: "2"
routing_key: "x-user-id"
shadow:
  version: "3"
  percent: 20
rollout:
  steps: [5, 25, 50, 100]
  interval: 1m
  min_requests: 200
  max_error_rate_delta: 0.01
  max_p99_ratio: 1.5
  paused: false
rollout_state:
  candidate: "3"
  baseline: "2"
  phase: running
  step: 1
  reason: "canary p99 41.2 ms > 1.5 x baseline 3.1 ms"
failed:
  "3": "9f2c01d3aa10b4e7"
"#;
    assert_eq!(text, expected);
    let empty = TrafficPolicy::default().to_yaml("m");
    assert_eq!(empty.lines().count(), 1);
    assert!(TrafficPolicy::parse(&empty).unwrap().is_empty());
    // A model name cannot break out of the comment line.
    let odd = TrafficPolicy::default().to_yaml("a\nweights: {\"1\": 1}");
    assert_eq!(odd.lines().count(), 1);
    assert!(TrafficPolicy::parse(&odd).unwrap().is_empty());
}

#[test]
fn round_trips_full_and_partial_policies() {
    let full = example();
    round_trip(&full);
    round_trip(&TrafficPolicy::default());
    let only = |f: fn(&mut TrafficPolicy, &TrafficPolicy)| {
        let mut p = TrafficPolicy::default();
        f(&mut p, &full);
        p
    };
    round_trip(&only(|p, f| p.weights = f.weights.clone()));
    round_trip(&only(|p, f| p.pin = f.pin));
    round_trip(&only(|p, f| p.routing_key = f.routing_key.clone()));
    round_trip(&only(|p, f| p.shadow = f.shadow.clone()));
    round_trip(&only(|p, f| p.rollout = f.rollout.clone()));
    round_trip(&only(|p, f| p.rollout_state = f.rollout_state.clone()));
    round_trip(&only(|p, f| p.failed = f.failed.clone()));

    // Awkward numbers, strings and durations survive exactly.
    let mut p = full.clone();
    p.weights = BTreeMap::from([
        (1, 0.1 + 0.2),
        (7, 0.0),
        (12, 1e-9),
        (u64::MAX, 1e20),
        (40, 2.0f64.powi(60)),
        (41, 33.333333333333336),
    ]);
    p.shadow = Some(Shadow {
        version: 9,
        percent: 0.5,
    });
    p.rollout = Some(RolloutPlan {
        steps: vec![0.001, 1.0 / 3.0, 99.99, 100.0],
        interval: Duration::from_micros(1500),
        min_requests: u64::MAX >> 1,
        max_error_rate_delta: 0.0,
        max_p99_ratio: 1.0,
        paused: true,
    });
    let state = p.rollout_state.as_mut().unwrap();
    state.phase = RolloutPhase::Failed;
    state.reason =
        "quote \" backslash \\ tab\t newline\n bell\u{7} nel\u{85} é ☃ # not a comment".into();
    p.failed.insert(10, "".into());
    p.failed.insert(11, "0012".into());
    round_trip(&p);
    for phase in RolloutPhase::ALL {
        p.rollout_state.as_mut().unwrap().phase = phase;
        p.rollout_state.as_mut().unwrap().reason.clear();
        round_trip(&p);
    }
}

#[test]
fn rollout_defaults_and_partial_rollouts() {
    let defaults = TrafficPolicy {
        rollout: Some(RolloutPlan::default()),
        ..Default::default()
    };
    for text in [
        "rollout: {}\n",
        "rollout:\n",
        "rollout: ~\n",
        "rollout:\n  # steps: [1]\n",
    ] {
        assert_eq!(
            TrafficPolicy::parse(text).as_ref(),
            Ok(&defaults),
            "{text:?}"
        );
    }
    let p = TrafficPolicy::parse("rollout: {interval: ~, paused: null}").unwrap();
    assert_eq!(p, defaults, "null fields take their defaults");
    let plan = RolloutPlan::default();
    assert_eq!(plan.steps, [5.0, 25.0, 50.0, 100.0]);
    assert_eq!(plan.interval, Duration::from_secs(60));
    assert_eq!((plan.min_requests, plan.max_error_rate_delta), (200, 0.01));
    assert_eq!((plan.max_p99_ratio, plan.paused), (1.5, false));

    let p = TrafficPolicy::parse("rollout:\n  steps: [50, 100]\n  paused: true\n").unwrap();
    let r = p.rollout.unwrap();
    assert_eq!(r.steps, [50.0, 100.0]);
    assert!(r.paused);
    assert_eq!(r.interval, Duration::from_secs(60));

    let p = TrafficPolicy::parse("shadow: {version: 4}").unwrap();
    assert_eq!(
        p.shadow,
        Some(Shadow {
            version: 4,
            percent: 100.0
        })
    );
    let p =
        TrafficPolicy::parse("rollout_state: {candidate: 3, baseline: 2, phase: paused, step: 0}");
    assert_eq!(p.unwrap().rollout_state.unwrap().reason, "");
}

#[test]
fn versions_may_be_integers_or_strings() {
    let p = TrafficPolicy::parse("weights: {1: 1, \"2\": 2.5}\npin: 2\nfailed: {5: abc}").unwrap();
    assert_eq!(p.weights, BTreeMap::from([(1, 1.0), (2, 2.5)]));
    assert_eq!(p.pin, Some(2));
    assert_eq!(p.failed, BTreeMap::from([(5, "abc".to_string())]));
    let p = TrafficPolicy::parse("weights: {\"1\": 0, \"2\": 0}").unwrap();
    assert_eq!(
        p.weights,
        BTreeMap::from([(1, 0.0), (2, 0.0)]),
        "all-zero weights are kept"
    );
}

#[test]
fn routing_keys() {
    let key =
        |text: &str| TrafficPolicy::parse(&format!("routing_key: {text}")).map(|p| p.routing_key);
    assert_eq!(key("X-User-ID"), Ok(Some("x-user-id".into())));
    assert_eq!(key("tenant_id.v2"), Ok(Some("tenant_id.v2".into())));
    assert_eq!(key("~"), Ok(None));
    err("routing_key: \"\"", &["routing_key", "empty"]);
    err(
        "routing_key: \":path\"",
        &["routing_key", "':path'", "pseudo-header"],
    );
    err(
        "routing_key: x user",
        &["routing_key", "'x user'", "' '", "not a valid header name"],
    );
    err("routing_key: x/y", &["'x/y'", "'/'"]);
    err("routing_key: tenant-é", &["'é'"]);
    err(
        "routing_key: grpc-timeout",
        &["routing_key", "'grpc-timeout'", "reserved"],
    );
    err("routing_key: GRPC-Foo", &["'GRPC-Foo'", "reserved"]);
    err("routing_key: content-type", &["'content-type'", "reserved"]);
    err("routing_key: TE", &["'TE'", "reserved"]);
    err("routing_key: trace-bin", &["'trace-bin'", "binary"]);
    err(
        "routing_key: 42",
        &["routing_key", "expected a header name", "got 42"],
    );
}

#[test]
fn structural_errors() {
    err("- 1\n- 2", &["top level", "expected a mapping", "a list"]);
    err(
        "just text",
        &["top level", "expected a mapping", "'just text'"],
    );
    err("a: 1\n---\nb: 2\n", &["one YAML document", "2"]);
    err(
        "weight: {\"1\": 1}",
        &[
            "top level",
            "unknown key 'weight'",
            "weights, pin, routing_key, shadow, rollout",
        ],
    );
    err("1: x", &["unknown key 1"]);
    err(
        "shadow: {version: 1, precent: 5}",
        &["shadow: unknown key 'precent'", "version, percent"],
    );
    err(
        "rollout: {step: [5]}",
        &[
            "rollout: unknown key 'step'",
            "steps, interval, min_requests",
        ],
    );
    err(
        "rollout_state: {candidate: 1, why: x}",
        &["rollout_state: unknown key 'why'", "reason"],
    );
    err("shadow: 5", &["shadow", "expected a mapping", "got 5"]);
    err("rollout: [5]", &["rollout", "expected a mapping", "a list"]);
    err(
        "weights: [1, 2]",
        &["weights", "expected a mapping from versions", "a list"],
    );
    err(
        "failed: yes",
        &["failed", "expected a mapping from versions", "'yes'"],
    );
}

#[test]
fn yaml_syntax_errors_carry_positions() {
    err(
        "weights:\n  \"1\": 5\n  \"1\": 6\n",
        &["invalid YAML", "duplicated key", "line 3"],
    );
    err(
        "pin: \"2\"\npin: 3\n",
        &["invalid YAML", "duplicated key", "line 2"],
    );
    err("weights: {\"1\": 5\n", &["invalid YAML", "line", "column"]);
    err(
        "shadow:\n  version: [1\n",
        &["invalid YAML", "line", "column"],
    );
}

#[test]
fn version_errors() {
    err(
        "weights: {abc: 1}",
        &["weights: version 'abc' is not a positive integer"],
    );
    err(
        "weights: {0: 1}",
        &["weights: version 0 is not a positive integer"],
    );
    err(
        "weights: {\"0\": 1}",
        &["weights: version '0' is not a positive integer"],
    );
    err(
        "weights: {-3: 1}",
        &["weights: version -3 is not a positive integer"],
    );
    err(
        "weights: {1.5: 1}",
        &["weights: version 1.5 is not a positive integer"],
    );
    err(
        "weights: {\" 1\": 1}",
        &["weights: version ' 1' is not a positive integer"],
    );
    err(
        "weights: {\"\": 1}",
        &["weights: version '' is not a positive integer"],
    );
    err(
        "weights: {\"99999999999999999999\": 1}",
        &["version '99999999999999999999'"],
    );
    err(
        "weights: {1: 1, \"1\": 2}",
        &["weights: version 1 is listed twice"],
    );
    err(
        "weights: {\"01\": 1, \"1\": 2}",
        &["weights: version 1 is listed twice"],
    );
    err(
        "pin: latest",
        &["pin: version 'latest' is not a positive integer"],
    );
    err("pin: 0", &["pin: version 0 is not a positive integer"]);
    err(
        "pin: [1]",
        &["pin: version a list is not a positive integer"],
    );
    err(
        "shadow: {version: v3}",
        &["shadow.version: version 'v3' is not a positive integer"],
    );
    err("shadow: {percent: 5}", &["shadow.version: required"]);
    err(
        "failed: {x: abc}",
        &["failed: version 'x' is not a positive integer"],
    );
    err(
        "failed: {3: 12345}",
        &["failed: version 3: expected a quoted digest string, got 12345"],
    );
    let state = |body: &str| format!("rollout_state: {{{body}}}");
    err(
        &state("baseline: 2, phase: running, step: 0"),
        &["rollout_state.candidate: required"],
    );
    err(
        &state("candidate: 3, phase: running, step: 0"),
        &["rollout_state.baseline: required"],
    );
    err(
        &state("candidate: 3, baseline: 2, step: 0"),
        &["rollout_state.phase: required"],
    );
    err(
        &state("candidate: 3, baseline: 2, phase: running"),
        &["rollout_state.step: required"],
    );
    err(
        &state("candidate: 0, baseline: 2, phase: running, step: 0"),
        &["rollout_state.candidate: version 0 is not a positive integer"],
    );
    err(
        &state("candidate: 3, baseline: x, phase: running, step: 0"),
        &["rollout_state.baseline: version 'x' is not a positive integer"],
    );
}

#[test]
fn number_errors() {
    err(
        "weights: {\"2\": -5}",
        &["weights: version 2: weight -5 must be a finite number >= 0"],
    );
    err(
        "weights: {\"2\": .inf}",
        &["weights: version 2: weight .inf must be a finite number"],
    );
    err(
        "weights: {\"2\": .nan}",
        &["weight .nan must be a finite number >= 0"],
    );
    err(
        "weights: {\"2\": \"10\"}",
        &["weights: version 2: weight '10' must be a finite number"],
    );
    err(
        "weights: {\"2\": ~}",
        &["weights: version 2: weight null must be"],
    );
    err(
        "shadow: {version: 3, percent: 101}",
        &["shadow.percent: 101 must be a number from 0 to 100"],
    );
    err(
        "shadow: {version: 3, percent: -1}",
        &["shadow.percent: -1 must be"],
    );
    err(
        "rollout: {steps: []}",
        &["rollout.steps", "at least one step"],
    );
    err(
        "rollout: {steps: 5}",
        &["rollout.steps: expected a list of percentages, got 5"],
    );
    err(
        "rollout: {steps: [0, 50]}",
        &["rollout.steps[0]: 0 must be a percentage in (0, 100]"],
    );
    err(
        "rollout: {steps: [5, 100.5]}",
        &["rollout.steps[1]: 100.5 must be a percentage in (0, 100]"],
    );
    err(
        "rollout: {steps: [5, five]}",
        &["rollout.steps[1]: 'five' must be a percentage"],
    );
    err(
        "rollout: {steps: [5, 50, 25]}",
        &["rollout.steps[2]: 25 must be greater than the step before it, 50"],
    );
    err(
        "rollout: {steps: [5, 5]}",
        &["rollout.steps[1]: 5 must be greater"],
    );
    err(
        "rollout: {min_requests: -1}",
        &["rollout.min_requests: -1 must be an integer >= 0"],
    );
    err(
        "rollout: {min_requests: 1.5}",
        &["rollout.min_requests: 1.5 must be an integer >= 0"],
    );
    err(
        "rollout: {max_error_rate_delta: 1.5}",
        &["rollout.max_error_rate_delta: 1.5 must be a number from 0 to 1"],
    );
    err(
        "rollout: {max_error_rate_delta: -0.1}",
        &["rollout.max_error_rate_delta: -0.1 must be"],
    );
    err(
        "rollout: {max_p99_ratio: 0.9}",
        &["rollout.max_p99_ratio: 0.9 must be a finite number >= 1"],
    );
    err(
        "rollout: {max_p99_ratio: .inf}",
        &["rollout.max_p99_ratio: .inf must be a finite number"],
    );
    err(
        "rollout: {paused: yes}",
        &["rollout.paused: expected true or false, got 'yes'"],
    );
    let state = |tail: &str| format!("rollout_state: {{candidate: 3, baseline: 2, {tail}}}");
    err(
        &state("phase: done, step: 0"),
        &[
            "rollout_state.phase",
            "running, paused, promoted, failed",
            "'done'",
        ],
    );
    err(
        &state("phase: 1, step: 0"),
        &["rollout_state.phase", "got 1"],
    );
    err(
        &state("phase: running, step: -1"),
        &["rollout_state.step: -1 must be an integer >= 0"],
    );
    err(
        &state("phase: running, step: 0, reason: [x]"),
        &["rollout_state.reason: expected a string, got a list"],
    );
}

#[test]
fn durations() {
    let parse = |text: &str| {
        TrafficPolicy::parse(&format!("rollout: {{interval: {text}}}"))
            .map(|p| p.rollout.unwrap().interval)
    };
    assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
    assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
    assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse("1.25h"), Ok(Duration::from_secs(4500)));
    assert_eq!(parse("0.5ms"), Ok(Duration::from_micros(500)));
    assert_eq!(parse("\"10 s\""), Ok(Duration::from_secs(10)));
    assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
    assert_eq!(parse("\"45\""), Ok(Duration::from_secs(45)));
    for bad in ["0s", "0", "0.0ms"] {
        let e = parse(bad).unwrap_err();
        assert!(
            e.starts_with("rollout.interval: ") && e.contains("greater than zero"),
            "{e}"
        );
    }
    for bad in [
        "60sec",
        "abc",
        "-5s",
        "1.2.3s",
        "s",
        "1d",
        "true",
        "1e3",
        "99999999999999999999999h",
    ] {
        let e = parse(bad).unwrap_err();
        assert!(
            e.starts_with("rollout.interval: expected a duration such as \"60s\""),
            "{bad}: {e}"
        );
    }
    let cases = [
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(59), "59s"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_micros(250), "0.25ms"),
        (Duration::from_nanos(1_000_001), "1.000001ms"),
        (Duration::from_nanos(1), "0.000001ms"),
    ];
    for (d, text) in cases {
        assert_eq!(format_duration(d), text);
        assert_eq!(parse_duration(text), Some(d), "{text}");
    }
}

#[test]
fn phases() {
    for phase in RolloutPhase::ALL {
        assert_eq!(phase.as_str().parse(), Ok(phase));
    }
    assert_eq!(RolloutPhase::Promoted.as_str(), "promoted");
    let e = "Running".parse::<RolloutPhase>().unwrap_err();
    assert!(
        e.contains("'Running'") && e.contains("running, paused, promoted, failed"),
        "{e}"
    );
}

#[test]
fn write_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read(dir.path()), Ok(None));
    let policy = example();
    write(dir.path(), &policy, "resnet50").unwrap();
    assert_eq!(read(dir.path()), Ok(Some(policy.clone())));
    let text = fs::read_to_string(dir.path().join(TRAFFIC_FILE)).unwrap();
    assert_eq!(text, policy.to_yaml("resnet50"));

    // Overwriting replaces the file and leaves no temporary file behind.
    let smaller = TrafficPolicy {
        pin: Some(7),
        ..Default::default()
    };
    write(dir.path(), &smaller, "resnet50").unwrap();
    assert_eq!(read(dir.path()), Ok(Some(smaller)));
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [TRAFFIC_FILE]);

    remove(dir.path()).unwrap();
    assert_eq!(read(dir.path()), Ok(None));
    remove(dir.path()).unwrap();
}

#[test]
fn write_refuses_a_policy_that_would_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let nan = TrafficPolicy {
        weights: BTreeMap::from([(1, f64::NAN)]),
        ..Default::default()
    };
    let zero = TrafficPolicy {
        rollout: Some(RolloutPlan {
            interval: Duration::ZERO,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bad_key = TrafficPolicy {
        routing_key: Some("Bad Key".into()),
        ..Default::default()
    };
    for policy in [nan, zero, bad_key] {
        let e = write(dir.path(), &policy, "m").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn read_reports_the_file_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(TRAFFIC_FILE);
    fs::write(&path, "pin: zero\n").unwrap();
    let e = read(dir.path()).unwrap_err();
    assert_eq!(
        e,
        format!(
            "{}: pin: version 'zero' is not a positive integer",
            path.display()
        )
    );
    fs::write(&path, b"pin: \xff\n").unwrap();
    let e = read(dir.path()).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: cannot read", path.display())),
        "{e}"
    );
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(read(dir.path()).unwrap_err().contains("cannot read"));
}

#[cfg(unix)]
#[test]
fn write_into_a_read_only_directory_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &example(), "m").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions: nothing to check then.
    let probe = dir.path().join("probe");
    let privileged = File::create(&probe).is_ok();
    let result = write(
        dir.path(),
        &TrafficPolicy {
            pin: Some(1),
            ..Default::default()
        },
        "m",
    );
    let removed = remove(dir.path());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if privileged {
        eprintln!("running with privileges; read-only directory not checked");
        return;
    }
    assert!(result.is_err());
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    assert!(removed.is_err());
    assert_eq!(names, [TRAFFIC_FILE], "no temporary file is left");
    assert_eq!(
        read(dir.path()),
        Ok(Some(example())),
        "the old file is intact"
    );
}
