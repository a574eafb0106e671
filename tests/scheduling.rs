//! Scheduling against the real server on port 0: dynamic batching, queue limits, timeouts, the rate
//! limit, failure isolation and statistics.

mod support;

use std::collections::HashMap;

use std::time::Duration;

use support::{Repo, Server, raw_f32, raw_i32, sample_value};
use switchyard::config::ModelControlMode;
use switchyard::grpc::pb::*;
use tonic::Code;

fn classifier_config(name: &str, extra: &str) -> String {
    format!(
        r#"name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "features" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
{extra}
"#
    )
}

fn simple_config(name: &str, extra: &str) -> String {
    format!(
        r#"name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
{extra}
"#
    )
}

fn features(model: &str, values: &[f32]) -> ModelInferRequest {
    support::fp32_request(model, "features", vec![1, values.len() as i64], values)
}

fn simple(model: &str, a: i32, b: i32) -> ModelInferRequest {
    support::simple_request(model, &[a; 16], &[b; 16], 1)
}

fn with_parameter(mut request: ModelInferRequest, key: &str, value: i64) -> ModelInferRequest {
    let parameter = InferParameter {
        parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(value)),
    };
    request.parameters = HashMap::from([(key.to_string(), parameter)]);
    request
}

async fn statistics(server: &Server, model: &str) -> ModelStatistics {
    let mut client = server.client().await;
    let reply = client
        .model_statistics(ModelStatisticsRequest {
            name: model.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    reply.model_stats.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_form_batches_and_each_gets_its_own_result() {
    let batched = "dynamic_batching { max_queue_delay_microseconds: 20000 }";
    let repo = Repo::new()
        .shipped_as("classifier", "plain", &classifier_config("plain", ""))
        .shipped_as(
            "classifier",
            "batched",
            &classifier_config("batched", batched),
        );
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    let inputs: Vec<Vec<f32>> = (0..64)
        .map(|i| {
            (0..64)
                .map(|j| ((i * 64 + j) * 37 % 101) as f32 / 50.0 - 1.0)
                .collect()
        })
        .collect();
    let mut expected = Vec::new();
    for x in &inputs {
        let reply = client.model_infer(features("plain", x)).await.unwrap();
        expected.push(raw_f32(&reply.into_inner().raw_output_contents[0]));
    }
    let calls: Vec<_> = inputs
        .iter()
        .map(|x| {
            let mut client = client.clone();
            let request = features("batched", x);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    for (call, want) in calls.into_iter().zip(&expected) {
        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.outputs[0].shape, vec![1, 10]);
        let got = raw_f32(&reply.raw_output_contents[0]);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }
    let stats = statistics(&server, "batched").await;
    assert_eq!(stats.inference_count, 64);
    assert!(
        stats.execution_count * 4 <= stats.inference_count,
        "64 concurrent requests ran in {} executions",
        stats.execution_count
    );
    let batched_elements: u64 = stats
        .batch_stats
        .iter()
        .map(|b| b.batch_size * b.compute_infer.as_ref().unwrap().count)
        .sum();
    assert_eq!(batched_elements, 64);
    let inference = stats.inference_stats.unwrap();
    assert_eq!(inference.success.unwrap().count, 64);
    assert_eq!(inference.compute_infer.as_ref().unwrap().count, 64);
    assert!(inference.compute_input.unwrap().ns > 0);
    assert!(inference.compute_output.unwrap().ns > 0);
    assert!(inference.queue.unwrap().ns > 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_a_timeout_and_the_rate_limit_answer_with_their_codes() {
    let queued = "dynamic_batching { max_queue_delay_microseconds: 1000000 \
                  default_queue_policy { max_queue_size: 2 } }";
    let limited = r#"parameters { key: "rate_limit_per_sec" value: { string_value: "0.1" } }
parameters { key: "rate_limit_burst" value: { string_value: "2" } }"#;
    let repo = Repo::new()
        .shipped("simple")
        .shipped_as("simple", "queued", &simple_config("queued", queued))
        .shipped_as("simple", "limited", &simple_config("limited", limited));
    let server = Server::start(repo).await;
    let client = server.client().await;

    let calls: Vec<_> = (0..5)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.model_infer(simple("queued", i, 1)).await })
        })
        .collect();
    let mut codes = Vec::new();
    for call in calls {
        codes.push(match call.await.unwrap() {
            Ok(_) => Code::Ok,
            Err(status) => {
                assert!(status.message().contains("queue is full"), "{status:?}");
                status.code()
            }
        });
    }
    codes.sort_by_key(|c| *c as i32);
    let full = Code::ResourceExhausted;
    assert_eq!(codes, vec![Code::Ok, Code::Ok, full, full, full]);

    let mut client = client.clone();
    let late = with_parameter(simple("queued", 1, 1), "timeout", 1000);
    let status = client.model_infer(late).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("'queued'"), "{status:?}");

    let mut limited = Vec::new();
    for _ in 0..3 {
        limited.push(client.model_infer(simple("limited", 1, 1)).await);
    }
    assert!(limited[0].is_ok() && limited[1].is_ok());
    let status = limited[2].as_ref().unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("rate limit"), "{status:?}");

    let ok = client.model_infer(simple("simple", 2, 3)).await.unwrap();
    assert_eq!(
        raw_i32(&ok.into_inner().raw_output_contents[0]),
        vec![5; 16]
    );
    let stats = statistics(&server, "queued").await;
    let inference = stats.inference_stats.unwrap();
    assert_eq!(inference.success.unwrap().count, 2);
    assert_eq!(inference.fail.unwrap().count, 4);
    server.stop().await;
}

/// Without dynamic batching a request's `timeout` still bounds its wait for a free instance: it
/// leaves the queue with DEADLINE_EXCEEDED, unrun, and the requests ahead of it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_bounds_the_wait_for_an_instance_without_dynamic_batching() {
    let server = Server::start(Repo::new().fixture("rollout")).await;
    let client = server.client().await;
    // Version 4 takes tens of milliseconds per execution on its one instance.
    let slow = |first: f32| {
        let mut request = support::fp32_request("rollout", "INPUT0", vec![1, 4], &[first; 4]);
        request.model_version = "4".into();
        request
    };
    let pending = "nv_inference_pending_request_count{model=\"rollout\",version=\"4\"}";
    let ahead: Vec<_> = (0..3)
        .map(|i| {
            let mut client = client.clone();
            let request = slow(i as f32);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    // One running and at least one waiting behind it.
    let started = std::time::Instant::now();
    while sample_value(&server.scrape().await, pending) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing queued"
        );
        tokio::task::yield_now().await;
    }
    let mut client = client.clone();
    let late = with_parameter(slow(7.0), "timeout", 1000);
    let status = client.model_infer(late).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("model 'rollout' version 4")
            && status.message().contains("timeout of 1000 µs expired"),
        "{status:?}"
    );
    for (i, call) in ahead.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(
            raw_f32(&reply.raw_output_contents[0]),
            vec![i as f32 + 4000.0; 4]
        );
    }
    // The abandoned request is not left counted as waiting, and it never ran.
    let scrape = server.scrape().await;
    assert_eq!(sample_value(&scrape, pending), 0.0);
    let version4 = ModelStatisticsRequest {
        name: "rollout".into(),
        version: "4".into(),
    };
    let mut stats_client = server.client().await;
    let v4 = stats_client
        .model_statistics(version4)
        .await
        .unwrap()
        .into_inner();
    let v4 = &v4.model_stats[0];
    assert_eq!(v4.execution_count, 3, "{v4:?}");
    let inference = v4.inference_stats.unwrap();
    assert_eq!(inference.success.unwrap().count, 3);
    assert_eq!(inference.fail.unwrap().count, 1);
    server.stop().await;
}

/// The model's rate limit is one bucket for all its versions, kept when a new version loads: a
/// version that arrives later gets no fresh burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_versions_and_reloads() {
    let limited = r#"version_policy: { all { } }
parameters { key: "rate_limit_per_sec" value: { string_value: "0.01" } }
parameters { key: "rate_limit_burst" value: { string_value: "2" } }"#;
    let repo = Repo::new().shipped_as("simple", "limited", &simple_config("limited", limited));
    let server = Server::start_with(repo, |s| {
        s.model_control_mode = ModelControlMode::Explicit;
        s.load_model = vec!["limited".into()];
    })
    .await;
    let mut client = server.client().await;
    let on = |version: &str| {
        let mut request = simple("limited", 1, 1);
        request.model_version = version.into();
        request
    };
    client.model_infer(on("1")).await.unwrap();

    let model = server.repo_path().join("limited");
    support::copy_dir(&model.join("1"), &model.join("2"));
    let load = RepositoryModelLoadRequest {
        model_name: "limited".into(),
        ..Default::default()
    };
    client.repository_model_load(load.clone()).await.unwrap();
    let ready = ModelReadyRequest {
        name: "limited".into(),
        version: "2".into(),
    };
    assert!(client.model_ready(ready).await.unwrap().into_inner().ready);

    // One token left of the burst of 2, whichever version spends it.
    client.model_infer(on("2")).await.unwrap();
    for version in ["2", "1"] {
        let status = client.model_infer(on(version)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("'limited' version ")
                && status
                    .message()
                    .contains("rate limit of 0.01 requests per second"),
            "{status:?}"
        );
    }
    // A reload that leaves the limit as it was keeps the bucket.
    client.repository_model_load(load).await.unwrap();
    let status = client.model_infer(on("2")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_execution_fails_only_its_own_requests() {
    let batched = "dynamic_batching { max_queue_delay_microseconds: 1000 }";
    let repo = Repo::new()
        .shipped("simple")
        .shipped_as("simple", "batched", &simple_config("batched", batched))
        .shipped_as(
            "classifier",
            "classifier",
            &classifier_config("classifier", ""),
        );
    let server = Server::start(repo).await;
    let client = server.client().await;
    let mut other = client.clone();
    let background = tokio::spawn(async move {
        for i in 0..40 {
            let x: Vec<f32> = (0..64).map(|j| (i * j % 7) as f32).collect();
            other.model_infer(features("classifier", &x)).await.unwrap();
        }
    });
    let mut client = client.clone();
    for model in ["simple", "batched"] {
        let status = client
            .model_infer(simple(model, i32::MAX, 1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(
            status
                .message()
                .contains(&format!("model '{model}' version 1"))
                && status.message().contains("panicked"),
            "{status:?}"
        );
        let ok = client.model_infer(simple(model, 40, 2)).await.unwrap();
        assert_eq!(
            raw_i32(&ok.into_inner().raw_output_contents[0]),
            vec![42; 16]
        );
    }
    background.await.unwrap();
    let stats = statistics(&server, "batched").await;
    let inference = stats.inference_stats.unwrap();
    assert_eq!(
        (
            inference.success.unwrap().count,
            inference.fail.unwrap().count
        ),
        (1, 1)
    );
    assert_eq!(statistics(&server, "classifier").await.inference_count, 40);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_keeps_failing_is_taken_out_of_service() {
    let fragile = r#"parameters { key: "circuit_breaker_min_executions" value: { string_value: "2" } }
parameters { key: "circuit_breaker_open_secs" value: { string_value: "600" } }"#;
    let repo = Repo::new().shipped("simple").shipped_as(
        "simple",
        "fragile",
        &simple_config("fragile", fragile),
    );
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    for _ in 0..2 {
        let status = client
            .model_infer(simple("fragile", i32::MAX, 1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    let status = client
        .model_infer(simple("fragile", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("out of service"), "{status:?}");
    let ok = client.model_infer(simple("simple", 1, 1)).await.unwrap();
    assert_eq!(
        raw_i32(&ok.into_inner().raw_output_contents[0]),
        vec![2; 16]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_no_version_move_off_a_version_out_of_service() {
    let config = simple_config(
        "simple",
        r#"version_policy: { all: {} }
parameters { key: "circuit_breaker_min_executions" value: { string_value: "2" } }
parameters { key: "circuit_breaker_open_secs" value: { string_value: "600" } }"#,
    );
    let model =
        std::fs::read(support::root().join("model_repository/simple/1/model.onnx")).unwrap();
    let repo = Repo::new()
        .shipped_as("simple", "simple", &config)
        .file("simple/2/model.onnx", model);
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    let served = |r: ModelInferResponse| r.model_version;
    let first = client.model_infer(simple("simple", 1, 1)).await.unwrap();
    assert_eq!(served(first.into_inner()), "2");
    for _ in 0..2 {
        let mut poison = simple("simple", i32::MAX, 1);
        poison.model_version = "2".into();
        client.model_infer(poison).await.unwrap_err();
    }
    let moved = client.model_infer(simple("simple", 1, 1)).await.unwrap();
    assert_eq!(served(moved.into_inner()), "1");
    let mut named = simple("simple", 1, 1);
    named.model_version = "2".into();
    let status = client.model_infer(named).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    server.stop().await;
}
