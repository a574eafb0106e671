//! Traffic policies on the real daemon: weighted splits, sticky keys across restarts, shares of
//! versions that are not ready, shadow traffic, the management port and its token, and the
//! in-memory store.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::traffic::{
    Stop, load_until, request, served_version, wait_for_status, with_key_parameter,
};
use support::{Repo, Server};
use switchyard::config::TrafficStore;
use switchyard::proto::switchyard_v1 as pb;
use switchyard::routing::report::chi_square_goodness_of_fit;

/// The `versioned` fixture (versions 1-4 on disk; its version policy loads only the newest) with
/// a traffic file.
fn versioned_with(traffic_yaml: &str) -> Repo {
    Repo::new()
        .fixture("versioned")
        .file("versioned/traffic.yaml", traffic_yaml)
}

fn get(model: &str) -> pb::GetTrafficRequest {
    pb::GetTrafficRequest {
        model: model.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_requests_split_by_weight() {
    let server = Server::start(versioned_with("weights:\n  \"1\": 90\n  \"2\": 10\n")).await;
    let client = server.client().await;
    let firsts: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let stop = Stop::after(10_000, Duration::from_secs(240));
    let seen = load_until(&client, "versioned", 16, firsts, stop).await;
    assert!(seen.failures.is_empty(), "{:?}", seen.failures.first());
    assert_eq!(seen.by_version.len(), 2, "{:?}", seen.by_version);
    let (one, two) = (seen.by_version[&1], seen.by_version[&2]);
    assert_eq!(one + two, 10_000);
    let (statistic, p) = chi_square_goodness_of_fit(&[one, two], &[0.9, 0.1]);
    assert!(p > 0.001, "{one} vs {two}: chi-square {statistic}, p {p}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_version_that_is_not_ready_passes_its_share_on() {
    let yaml = "weights:\n  \"1\": 50\n  \"2\": 30\n  \"9\": 20\n";
    let server = Server::start(versioned_with(yaml)).await;
    let mut traffic = server.traffic_client().await;
    let status = traffic
        .get_traffic(get("versioned"))
        .await
        .unwrap()
        .into_inner();
    let share = |v: &str| status.effective_percent.get(v).copied().unwrap_or(-1.0);
    assert_eq!(
        (share("1"), share("2"), share("4")),
        (62.5, 37.5, 0.0),
        "{status:#?}"
    );
    assert!(
        status
            .notes
            .iter()
            .any(|n| n.contains("version 9 (weight 20) is not ready")),
        "{:?}",
        status.notes
    );
    assert_eq!(status.source, "file");
    // A request naming a version gets exactly that version, weights or not.
    let mut client = server.client().await;
    let mut named = request("versioned", 0.0);
    named.model_version = "4".into();
    assert_eq!(served_version(&mut client, named, None).await.unwrap(), 4);
    server.stop().await;
}

/// Each key's version, the key sent as a header for even keys and as the `routing_key`
/// parameter for odd ones.
async fn assignments(server: &Server, keys: usize) -> HashMap<usize, u64> {
    let mut client = server.client().await;
    let mut out = HashMap::new();
    for k in 0..keys {
        let key = format!("user-{k}");
        let (req, header) = if k % 2 == 0 {
            (request("versioned", k as f32), Some(("x-user-id", key)))
        } else {
            (
                with_key_parameter(request("versioned", k as f32), &key),
                None,
            )
        };
        out.insert(k, served_version(&mut client, req, header).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_keep_their_version_across_restarts_and_only_move_to_the_canary() {
    let yaml = "weights:\n  \"1\": 90\n  \"2\": 10\nrouting_key: x-user-id\n";
    let server = Server::start(versioned_with(yaml)).await;
    let first = assignments(&server, 1000).await;
    let on_canary = first.values().filter(|v| **v == 2).count();
    assert!(
        (60..=140).contains(&on_canary),
        "{on_canary} of 1000 keys on the 10% arm"
    );
    assert_eq!(
        assignments(&server, 1000).await,
        first,
        "keys moved between requests"
    );

    let repo = server.stop_keeping_repo().await;
    let server = Server::start(repo).await;
    assert_eq!(
        assignments(&server, 1000).await,
        first,
        "keys moved across a restart"
    );

    // Raise the canary to 50% through the management API: it rewrites traffic.yaml.
    let mut traffic = server.traffic_client().await;
    let policy = pb::TrafficPolicy {
        weights: [("1".to_string(), 50.0), ("2".to_string(), 50.0)].into(),
        routing_key: "x-user-id".into(),
        ..Default::default()
    };
    let set = pb::SetTrafficRequest {
        model: "versioned".into(),
        policy: Some(policy),
    };
    let status = traffic.set_traffic(set).await.unwrap().into_inner();
    assert_eq!(status.effective_percent["2"], 50.0);
    let after = assignments(&server, 1000).await;
    let back = first
        .iter()
        .filter(|(k, v)| **v == 2 && after[k] == 1)
        .count();
    let towards = first
        .iter()
        .filter(|(k, v)| **v == 1 && after[k] == 2)
        .count();
    assert_eq!(back, 0, "keys moved from the canary back to the baseline");
    assert!(
        towards > 250,
        "only {towards} keys moved towards the canary"
    );

    // The new weights are in the file, so they survive a restart too.
    let repo = server.stop_keeping_repo().await;
    let written = std::fs::read_to_string(repo.path().join("versioned/traffic.yaml")).unwrap();
    assert!(written.contains("\"2\": 50"), "{written}");
    let server = Server::start(repo).await;
    assert_eq!(assignments(&server, 1000).await, after);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_per_arm_and_outcome() {
    let server = Server::start(versioned_with("weights:\n  \"1\": 50\n  \"2\": 50\n")).await;
    let mut client = server.client().await;
    // (version, arm, outcome) -> requests, as the client saw them.
    let mut expected: HashMap<(u64, &str, &str), u64> = HashMap::new();
    for i in 0..24 {
        let keyed = with_key_parameter(request("versioned", i as f32), &format!("user-{i}"));
        let version = served_version(&mut client, keyed, None).await.unwrap();
        *expected.entry((version, "sticky", "success")).or_default() += 1;
    }
    for i in 0..12 {
        let version = served_version(&mut client, request("versioned", i as f32), None)
            .await
            .unwrap();
        *expected.entry((version, "random", "success")).or_default() += 1;
    }
    for i in 0..5 {
        let mut named = request("versioned", i as f32);
        named.model_version = "1".into();
        assert_eq!(served_version(&mut client, named, None).await.unwrap(), 1);
    }
    expected.insert((1, "named", "success"), 5);
    // Refused after routing (the input's type is wrong): a failure of the arm that brought it.
    for _ in 0..2 {
        let mut bad = request("versioned", 0.0);
        bad.model_version = "2".into();
        bad.inputs[0].datatype = "INT32".into();
        let status = client.model_infer(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    expected.insert((2, "named", "failure"), 2);
    let mut traffic = server.traffic_client().await;
    let pin = pb::PinRequest {
        model: "versioned".into(),
        version: "2".into(),
    };
    traffic.pin(pin).await.unwrap();
    for i in 0..3 {
        let keyed = with_key_parameter(request("versioned", i as f32), "user-0");
        assert_eq!(served_version(&mut client, keyed, None).await.unwrap(), 2);
    }
    expected.insert((2, "pinned", "success"), 3);

    let text = server.scrape().await;
    let mut scraped: HashMap<(u64, String, String), u64> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("switchyard_routed_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            labels[start..].split('"').next().unwrap().to_string()
        };
        assert_eq!(label("model"), "versioned", "{line}");
        let value: f64 = value.parse().unwrap();
        if value > 0.0 {
            let key = (
                label("version").parse().unwrap(),
                label("arm"),
                label("outcome"),
            );
            scraped.insert(key, value as u64);
        }
    }
    let expected: HashMap<(u64, String, String), u64> = expected
        .into_iter()
        .map(|((v, arm, outcome), n)| ((v, arm.to_string(), outcome.to_string()), n))
        .collect();
    assert_eq!(scraped, expected, "{text}");
    assert!(
        text.contains("# TYPE switchyard_routed_requests_total counter"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_is_recorded_and_never_answers() {
    let yaml = "weights:\n  \"1\": 100\nshadow:\n  version: \"2\"\n  percent: 100\n";
    let server = Server::start(versioned_with(yaml)).await;
    let mut client = server.client().await;
    for i in 0..200 {
        let version = served_version(&mut client, request("versioned", i as f32), None).await;
        assert_eq!(version.unwrap(), 1, "the client saw the shadow's answer");
    }
    let mut traffic = server.traffic_client().await;
    let started = std::time::Instant::now();
    let shadow = loop {
        let report = traffic
            .report(pb::ReportRequest {
                model: "versioned".into(),
                confidence: 0.0,
            })
            .await
            .unwrap()
            .into_inner();
        let v2 = report.versions.iter().find(|v| v.version == "2").unwrap();
        let shadow = v2.shadow.unwrap_or_default();
        if shadow.requests + shadow.dropped >= 200 {
            assert_eq!(v2.percent, 0.0);
            break shadow;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{report:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (shadow.requests, shadow.dropped, shadow.errors),
        (200, 0, 0)
    );
    // Version 2 adds 2000 where version 1 adds 1000: every answer differs by exactly 1000.
    assert_eq!((shadow.matched, shadow.mismatched), (0, 200));
    assert_eq!(shadow.max_abs_diff, 1000.0);
    assert!(shadow.p99_ms > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_service_can_have_its_own_port_and_a_token() {
    let server = Server::start_with(versioned_with("weights:\n  \"4\": 1\n"), |s| {
        s.management_port = Some(0);
        s.management_token = Some("s3cret".into());
    })
    .await;
    // Not on the inference port.
    let url = format!("http://{}", server.addr);
    let mut on_inference = pb::traffic_control_client::TrafficControlClient::connect(url)
        .await
        .unwrap();
    let refused = on_inference
        .get_traffic(get("versioned"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    // On its own port, only with the token.
    let mut traffic = server.traffic_client().await;
    let missing = traffic.get_traffic(get("versioned")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");
    let with = |token: &str| {
        let mut r = tonic::Request::new(pb::PinRequest {
            model: "versioned".into(),
            version: "4".into(),
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let wrong = traffic.pin(with("guess")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    let status = traffic.pin(with("s3cret")).await.unwrap().into_inner();
    assert_eq!(status.pinned_version, "4");
    let mut client = server.client().await;
    let v = served_version(&mut client, request("versioned", 1.0), None).await;
    assert_eq!(v.unwrap(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_memory_store_changes_stay_in_memory_and_say_so() {
    let server = Server::start_with(Repo::new().fixture("versioned"), |s| {
        s.traffic_store = TrafficStore::Memory;
    })
    .await;
    let mut traffic = server.traffic_client().await;
    let status = traffic
        .pin(pb::PinRequest {
            model: "versioned".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.source.as_str(), status.pin_scope.as_str()),
        ("memory", "memory")
    );
    assert!(
        status.source_detail.contains("memory"),
        "{}",
        status.source_detail
    );
    let mut client = server.client().await;
    let v = served_version(&mut client, request("versioned", 1.0), None).await;
    assert_eq!(v.unwrap(), 2);
    let history = traffic
        .history(pb::HistoryRequest {
            model: "versioned".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let last = history.events.last().unwrap();
    assert_eq!(last.cause, "command");
    assert!(
        last.detail
            .starts_with("pinned to version 2 (held in memory"),
        "{last:?}"
    );
    let repo = server.stop_keeping_repo().await;
    assert!(!repo.path().join("versioned/traffic.yaml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traffic_file_keeps_the_policy_in_force() {
    let server = Server::start_with(versioned_with("weights:\n  \"3\": 100\n"), |s| {
        s.model_control_mode = switchyard::config::ModelControlMode::Watch;
        s.repository_settle_ms = 50;
    })
    .await;
    let mut traffic = server.traffic_client().await;
    let path = server_repo_file(&server);
    let before = traffic
        .get_traffic(get("versioned"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before.effective_percent.get("3"),
        Some(&100.0),
        "{before:#?}"
    );
    std::fs::write(&path, "weights:\n  three: 100\n").unwrap();
    let status = wait_for_status(&mut traffic, "versioned", Duration::from_secs(30), |s| {
        !s.source_detail.is_empty()
    })
    .await;
    assert!(
        status
            .source_detail
            .contains("version 'three' is not a positive integer")
            && status
                .source_detail
                .contains("the previous policy stays in force"),
        "{}",
        status.source_detail
    );
    assert_eq!(
        status.effective_percent.get("3"),
        Some(&100.0),
        "{status:#?}"
    );
    let mut client = server.client().await;
    let v = served_version(&mut client, request("versioned", 1.0), None).await;
    assert_eq!(v.unwrap(), 3);
    server.stop().await;
}

fn server_repo_file(server: &Server) -> std::path::PathBuf {
    server.repo_path().join("versioned/traffic.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_reports_and_lists_history() {
    let server = Server::start_with(Repo::new().fixture("versioned"), |s| {
        s.management_token = Some("t0ken".into());
    })
    .await;
    let url = format!("http://{}", server.addr);
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .arg("traffic")
            .args(args)
            .args(["--url", &url])
            .env("SWITCHYARD_MANAGEMENT_TOKEN", "t0ken");
        async move {
            let output = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            (output.status.success(), stdout, stderr)
        }
    };
    let (ok, stdout, stderr) = cli(&[
        "set",
        "versioned",
        "--weight",
        "1=75",
        "--weight",
        "3=25",
        "--routing-key",
        "X-User-Id",
    ])
    .await;
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("shares:  1: 75.0%, 3: 25.0%, 4: 0.0%"),
        "{stdout}"
    );
    assert!(stdout.contains("routing key header: x-user-id"), "{stdout}");

    let mut client = server.client().await;
    for i in 0..40 {
        let key = ("x-user-id", format!("user-{i}"));
        served_version(&mut client, request("versioned", 1.0), Some(key))
            .await
            .unwrap();
    }
    let (ok, stdout, stderr) = cli(&["report", "versioned"]).await;
    assert!(ok, "{stdout} {stderr}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains('%')).collect();
    let requests = |v: &str| -> u64 {
        let row = rows
            .iter()
            .find(|r| r.split_whitespace().next() == Some(v))
            .unwrap();
        row.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert_eq!(requests("1") + requests("3"), 40, "{stdout}");

    let (ok, stdout, _) = cli(&["history", "versioned"]).await;
    assert!(ok && stdout.contains("command  set: no policy"), "{stdout}");
    // A bad weight is refused with the file's own message, and nothing changes.
    let (ok, _, stderr) = cli(&["set", "versioned", "--weight", "1=-5"]).await;
    assert!(
        !ok && stderr.contains("weight -5 must be a finite number >= 0"),
        "{stderr}"
    );
    let (ok, _, stderr) = {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command.args(["traffic", "get", "versioned", "--url", &url]);
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.success(), (), stderr)
    };
    assert!(!ok && stderr.contains("Unauthenticated"), "{stderr}");
    server.stop().await;
}
