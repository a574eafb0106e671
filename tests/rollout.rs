//! Automatic rollouts on the real daemon with the `rollout` fixture (version 1 baseline, 2
//! healthy, 3 failing on inputs >= 100, 4 slow): a healthy canary is promoted by itself; a
//! failing or slow one is rolled back by itself, and requests outside its share never fail.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::Server;
use support::traffic::{Seen, Stop, load_until, request, rollout_repo, served_version};
use switchyard::proto::switchyard_v1 as pb;
use tonic::transport::Channel;

type Traffic = pb::traffic_control_client::TrafficControlClient<Channel>;

fn plan(min_requests: u64) -> String {
    format!(
        "weights:\n  \"1\": 100\nrollout:\n  steps: [20, 50, 100]\n  interval: 300ms\n  \
         min_requests: {min_requests}\n  max_error_rate_delta: 0.01\n  max_p99_ratio: 10\n"
    )
}

async fn current_status(traffic: &mut Traffic) -> pb::TrafficStatus {
    traffic
        .get_traffic(pb::GetTrafficRequest {
            model: "rollout".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs load until the rollout ends (promoted or failed), with a bound; returns what the load
/// saw and the final status.
async fn run_rollout(server: &Server, firsts: Vec<f32>) -> (Seen, pb::TrafficStatus) {
    let client = server.client().await;
    let mut traffic = server.traffic_client().await;
    let ended = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, stop) = (client.clone(), Stop::when(&ended, Duration::from_secs(120)));
        async move { load_until(&client, "rollout", 4, firsts, stop).await }
    });
    let status =
        support::traffic::wait_for_status(&mut traffic, "rollout", Duration::from_secs(120), |s| {
            s.rollout
                .as_ref()
                .is_some_and(|r| r.phase == "promoted" || r.phase == "failed")
        })
        .await;
    ended.store(true, Ordering::Release);
    (load.await.unwrap(), status)
}

/// Checks how a rollout ended and which version takes all traffic now.
fn assert_ended(status: &pb::TrafficStatus, phase: &str, candidate: &str, serving: &str) {
    let rollout = status.rollout.clone().unwrap();
    assert_eq!(
        (rollout.phase.as_str(), rollout.candidate.as_str()),
        (phase, candidate)
    );
    assert_eq!(
        status.effective_percent.get(serving),
        Some(&100.0),
        "{status:#?}"
    );
}

async fn history(traffic: &mut Traffic) -> Vec<pb::TrafficEvent> {
    traffic
        .history(pb::HistoryRequest {
            model: "rollout".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_version_is_rolled_out_to_everyone_by_itself() {
    let server = Server::start(rollout_repo(&[1, 2], &plan(40))).await;
    let firsts = (0..50).map(|i| i as f32).collect();
    let (seen, status) = run_rollout(&server, firsts).await;
    assert!(seen.failures.is_empty(), "{:?}", seen.failures.first());
    assert_ended(&status, "promoted", "2", "2");
    assert!(
        seen.by_version.get(&2).copied().unwrap_or(0) >= 80,
        "{:?}",
        seen.by_version
    );

    let mut traffic = server.traffic_client().await;
    let events = history(&mut traffic).await;
    let details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
    let position = |text: &str| {
        details
            .iter()
            .position(|d| d.contains(text))
            .unwrap_or_else(|| panic!("no '{text}' in {details:#?}"))
    };
    assert!(position("started at 20%") < position("step 1 at 50%"));
    assert!(position("step 1 at 50%") < position("promoted to 100%"));
    assert!(
        events
            .iter()
            .all(|e| e.cause == "rollout" || e.cause == "reload")
    );
    // Promotion is written to the repository: a restart keeps serving version 2.
    let written = std::fs::read_to_string(server.repo_path().join("rollout/traffic.yaml")).unwrap();
    assert!(
        written.contains("phase: promoted") && written.contains("\"2\": 100"),
        "{written}"
    );
    let mut client = server.client().await;
    let v = served_version(&mut client, request("rollout", 7.0), None).await;
    assert_eq!(v.unwrap(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_is_rolled_back_by_itself() {
    let server = Server::start(rollout_repo(&[1, 3], &plan(40))).await;
    // One input in six makes version 3 fail; version 1 answers them all.
    let firsts = (0..120).map(|i| i as f32).collect();
    let (seen, status) = run_rollout(&server, firsts).await;
    assert_ended(&status, "failed", "3", "1");
    let rollout = status.rollout.clone().unwrap();
    assert!(
        rollout.reason.contains("canary error rate"),
        "{}",
        rollout.reason
    );
    assert_eq!(status.failed_versions, vec!["3".to_string()]);

    // Every failure was the canary's, on an input it cannot take.
    assert!(!seen.failures.is_empty());
    for (first, code, message) in &seen.failures {
        assert!(*first >= 100.0, "input {first} failed: {message}");
        assert_eq!(*code, tonic::Code::Internal, "{message}");
        assert!(message.contains("version 3"), "{message}");
    }
    let mut client = server.client().await;
    let stats = client
        .model_statistics(switchyard::grpc::pb::ModelStatisticsRequest {
            name: "rollout".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let baseline = stats.model_stats[0].inference_stats.unwrap();
    assert_eq!(
        baseline.fail.unwrap().count,
        0,
        "the baseline failed requests"
    );

    // The report tells the difference is real.
    let mut traffic = server.traffic_client().await;
    let report = traffic
        .report(pb::ReportRequest {
            model: "rollout".into(),
            confidence: 0.95,
        })
        .await
        .unwrap()
        .into_inner();
    let comparison = &report.comparisons[0];
    assert_eq!(
        (comparison.baseline.as_str(), comparison.candidate.as_str()),
        ("1", "3")
    );
    assert!(
        comparison.p_value < 0.01 && comparison.ci_low > 0.0,
        "{comparison:#?}"
    );

    // After the rollback everything goes to version 1 and succeeds; the failed version is not
    // retried while its files are unchanged.
    for i in 0..100 {
        let v = served_version(&mut client, request("rollout", 100.0 + i as f32), None).await;
        assert_eq!(v.unwrap(), 1);
    }
    let after = current_status(&mut traffic).await;
    assert_eq!(after.rollout.unwrap().phase, "failed");
    let events = history(&mut traffic).await;
    assert!(
        events
            .iter()
            .any(|e| e.cause == "gate" && e.detail.contains("rolled back")),
        "{events:#?}"
    );
    let metrics = server.scrape().await;
    assert!(
        metrics.contains("switchyard_rollout_rollbacks_total{model=\"rollout\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_version_is_rolled_back_by_itself() {
    let server = Server::start(rollout_repo(&[1, 4], &plan(20))).await;
    let firsts = (0..50).map(|i| i as f32).collect();
    let (seen, status) = run_rollout(&server, firsts).await;
    assert!(seen.failures.is_empty(), "{:?}", seen.failures.first());
    assert_ended(&status, "failed", "4", "1");
    let rollout = status.rollout.clone().unwrap();
    assert!(rollout.reason.contains("p99"), "{}", rollout.reason);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_drive_a_rollout_by_hand() {
    // Paused: no rollout starts by itself; an hour per step: none advances by itself.
    let yaml = "weights:\n  \"1\": 100\nrollout:\n  steps: [20, 50, 100]\n  interval: 1h\n  \
                paused: true\n";
    let server = Server::start(rollout_repo(&[1, 2], yaml)).await;
    let mut traffic = server.traffic_client().await;
    let model = || "rollout".to_string();
    assert!(current_status(&mut traffic).await.rollout.is_none());

    let start = pb::StartRolloutRequest {
        model: model(),
        version: "2".into(),
    };
    let status = traffic.start_rollout(start).await.unwrap().into_inner();
    let share = |s: &pb::TrafficStatus, v: &str| s.effective_percent.get(v).copied();
    assert_eq!(
        (share(&status, "1"), share(&status, "2")),
        (Some(80.0), Some(20.0))
    );
    assert_eq!(status.rollout.as_ref().unwrap().phase, "running");

    let paused = traffic
        .pause_rollout(pb::PauseRolloutRequest { model: model() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.rollout.unwrap().phase, "paused");
    let resumed = traffic
        .resume_rollout(pb::ResumeRolloutRequest { model: model() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.rollout.unwrap().phase, "running");

    let promote = pb::PromoteRequest {
        model: model(),
        version: String::new(),
    };
    let promoted = traffic.promote(promote).await.unwrap().into_inner();
    assert_ended(&promoted, "promoted", "2", "2");

    // Rolling back from 2 goes to 1 and marks 2 failed; no older version remains after that.
    let rollback = || pb::RollbackRequest {
        model: model(),
        version: String::new(),
    };
    let rolled = traffic.rollback(rollback()).await.unwrap().into_inner();
    assert_eq!(share(&rolled, "1"), Some(100.0), "{rolled:#?}");
    assert_eq!(rolled.failed_versions, vec!["2".to_string()]);
    let none_older = traffic.rollback(rollback()).await.unwrap_err();
    assert_eq!(
        none_older.code(),
        tonic::Code::FailedPrecondition,
        "{none_older:?}"
    );
    assert!(
        none_older.message().contains("no older version"),
        "{none_older:?}"
    );

    // A command may retry a failed version: starting it clears the mark.
    let start = pb::StartRolloutRequest {
        model: model(),
        version: String::new(),
    };
    let again = traffic.start_rollout(start).await.unwrap().into_inner();
    assert!(again.failed_versions.is_empty(), "{again:#?}");
    assert_eq!(again.rollout.unwrap().candidate, "2");
    let causes: Vec<String> = history(&mut traffic)
        .await
        .into_iter()
        .map(|e| e.cause)
        .collect();
    assert_eq!(
        causes.iter().filter(|c| *c == "command").count(),
        6,
        "{causes:?}"
    );

    // A model without a plan cannot start one; an unknown version is NOT_FOUND.
    let set = pb::SetTrafficRequest {
        model: model(),
        policy: Some(pb::TrafficPolicy::default()),
    };
    let cleared = traffic.set_traffic(set).await.unwrap().into_inner();
    assert_eq!(cleared.source, "none");
    assert!(!server.repo_path().join("rollout/traffic.yaml").exists());
    let start = pb::StartRolloutRequest {
        model: model(),
        version: String::new(),
    };
    let refused = traffic.start_rollout(start).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let pin = pb::PinRequest {
        model: model(),
        version: "7".into(),
    };
    let unknown = traffic.pin(pin).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_dropped_into_the_repository_is_rolled_out_by_itself() {
    // Only a plan: the version serving at start is adopted as the baseline.
    let yaml = "rollout:\n  steps: [25, 100]\n  interval: 200ms\n  min_requests: 30\n  \
                max_p99_ratio: 10\n";
    let server = Server::start_with(rollout_repo(&[1], yaml), |s| {
        s.model_control_mode = switchyard::config::ModelControlMode::Watch;
        s.repository_settle_ms = 50;
    })
    .await;
    let mut traffic = server.traffic_client().await;
    let adopted =
        support::traffic::wait_for_status(&mut traffic, "rollout", Duration::from_secs(30), |s| {
            s.policy
                .as_ref()
                .is_some_and(|p| p.weights.get("1") == Some(&100.0))
        })
        .await;
    assert!(adopted.rollout.is_none(), "{adopted:#?}");

    // Stage version 2 beside the model and rename it in, as a deployment tool would.
    let fixture = support::root().join("tests/fixtures/models/rollout/2");
    let staging = server.repo_path().join(".staging-2");
    support::copy_dir(&fixture, &staging);
    std::fs::rename(&staging, server.repo_path().join("rollout/2")).unwrap();

    let firsts = (0..50).map(|i| i as f32).collect();
    let (seen, status) = run_rollout(&server, firsts).await;
    assert!(seen.failures.is_empty(), "{:?}", seen.failures.first());
    assert_ended(&status, "promoted", "2", "2");
    server.stop().await;
}
