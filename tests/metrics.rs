//! `/metrics` after a known mix of traffic: exact counts under Triton's names, and the lifecycle
//! counters of a repository change.

mod support;

use support::{Repo, Server, sample_value as value};
use switchyard::grpc::pb::model_infer_request::InferInputTensor;
use switchyard::grpc::pb::*;

fn simple(a: i32, b: i32) -> ModelInferRequest {
    support::simple_request("simple", &[a; 16], &[b; 16], 1)
}

fn features(version: &str, batch: i64) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "classifier".into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![batch, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 4 * 64 * batch as usize].into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_scrape_shows_exact_counts_per_model_and_version() {
    let repo = Repo::new().shipped("simple").shipped("classifier");
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    for i in 0..3 {
        client.model_infer(simple(i, 1)).await.unwrap();
    }
    // In debug builds INT32 overflow panics inside the model: an execution failure.
    let overflow = client.model_infer(simple(i32::MAX, 1)).await;
    let overflowed = overflow.is_err();
    assert_eq!(
        overflowed,
        cfg!(debug_assertions),
        "overflow checks decide the outcome"
    );
    client.model_infer(features("1", 4)).await.unwrap();
    client.model_infer(features("1", 1)).await.unwrap();
    client.model_infer(features("2", 2)).await.unwrap();
    // Rejected before reaching the model: not counted as a model failure (as in Triton).
    let mut bad = simple(0, 0);
    bad.inputs[0].datatype = "FP32".into();
    client.model_infer(bad).await.unwrap_err();

    let text = server.scrape().await;
    let ok = if overflowed { 3.0 } else { 4.0 };
    assert_eq!(
        value(
            &text,
            "nv_inference_request_success{model=\"simple\",version=\"1\"}"
        ),
        ok
    );
    assert_eq!(
        value(
            &text,
            "nv_inference_request_failure{model=\"simple\",version=\"1\"}"
        ),
        4.0 - ok
    );
    assert_eq!(
        value(
            &text,
            "nv_inference_request_success{model=\"classifier\",version=\"1\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "nv_inference_count{model=\"classifier\",version=\"1\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &text,
            "nv_inference_exec_count{model=\"classifier\",version=\"1\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "nv_inference_count{model=\"classifier\",version=\"2\"}"
        ),
        2.0
    );
    assert!(
        value(
            &text,
            "nv_inference_request_duration_us{model=\"classifier\",version=\"2\"}"
        ) > 0.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_model_loads_total{model=\"classifier\",outcome=\"success\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_model_version_ready{model=\"classifier\",version=\"2\"}"
        ),
        1.0
    );
    assert!(
        text.contains("# TYPE nv_inference_request_success counter"),
        "{text}"
    );
    // Per arm, a request refused after routing is a failure too (the wrong datatype above).
    let arm = |model: &str, version: &str, arm: &str, outcome: &str| {
        value(
            &text,
            &format!(
                "switchyard_routed_requests_total{{model=\"{model}\",version=\"{version}\",\
                 arm=\"{arm}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(arm("simple", "1", "default", "success"), ok);
    assert_eq!(arm("simple", "1", "default", "failure"), 5.0 - ok);
    assert_eq!(arm("classifier", "1", "named", "success"), 2.0);
    assert_eq!(arm("classifier", "1", "named", "failure"), 0.0);
    assert_eq!(arm("classifier", "2", "named", "success"), 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_counts_requests_waiting_for_a_batch() {
    // A batch runs only when 4 requests are there (or after a minute): the first three wait.
    let config = "name: \"identity_fp32\"\nmax_batch_size: 8\n\
        input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
        output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
        dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }\n";
    let repo = Repo::new()
        .fixture("identity_fp32")
        .file("identity_fp32/config.pbtxt", config);
    let server = Server::start(repo).await;
    let client = server.client().await;
    let sample = "nv_inference_pending_request_count{model=\"identity_fp32\",version=\"1\"}";
    let request = |v: f32| support::fp32_request("identity_fp32", "INPUT0", vec![1, 4], &[v; 4]);
    assert_eq!(value(&server.scrape().await, sample), 0.0);
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let mut client = client.clone();
            let request = request(i as f32);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    let started = std::time::Instant::now();
    while value(&server.scrape().await, sample) < 3.0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never 3 waiting"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(value(&server.scrape().await, sample), 3.0);
    let mut fourth = client.clone();
    fourth.model_infer(request(3.0)).await.unwrap();
    for (i, task) in waiting.into_iter().enumerate() {
        let response = task.await.unwrap().unwrap().into_inner();
        assert_eq!(
            support::raw_f32(&response.raw_output_contents[0]),
            vec![i as f32; 4]
        );
    }
    assert_eq!(value(&server.scrape().await, sample), 0.0);
    server.stop().await;
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard =
        std::fs::read_to_string(support::root().join("deploy/grafana/switchyard.json")).unwrap();
    let server = Server::start(Repo::new().shipped("simple")).await;
    let text = server.scrape().await;
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("nv_inference_") || w.starts_with("switchyard_"))
        .map(|w| w.strip_suffix("_bucket").unwrap_or(w))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
    server.stop().await;
}
