//! The real server on port 0, driven by a generated tonic client: inference on the shipped models,
//! version selection, streaming, repository index, statistics and the error statuses.

mod support;

use support::{Repo, Server, raw_f32, raw_i32};
use switchyard::grpc::pb::model_infer_request::InferRequestedOutputTensor;
use switchyard::grpc::pb::*;
use tonic::Code;

fn simple_request(a: &[i32], b: &[i32], batch: i64) -> ModelInferRequest {
    ModelInferRequest {
        id: "req-7".into(),
        ..support::simple_request("simple", a, b, batch)
    }
}

fn features(batch: usize) -> ModelInferRequest {
    let values: Vec<f32> = (0..batch * 64)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    support::fp32_request("classifier", "features", vec![batch as i64, 64], &values)
}

#[tokio::test]
async fn simple_adds_and_subtracts_for_every_batch_size() {
    let server = Server::start(Repo::new().shipped("simple")).await;
    let mut client = server.client().await;
    for batch in [1usize, 3, 8] {
        let a: Vec<i32> = (0..16 * batch as i32).map(|i| i * 7 - 40).collect();
        let b: Vec<i32> = (0..16 * batch as i32).map(|i| 1000 - i * 3).collect();
        let reply = client
            .model_infer(simple_request(&a, &b, batch as i64))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.id, "req-7");
        assert_eq!(reply.model_version, "1");
        assert_eq!(reply.outputs[0].name, "OUTPUT0");
        assert_eq!(reply.outputs[0].shape, vec![batch as i64, 16]);
        let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        assert_eq!(raw_i32(&reply.raw_output_contents[0]), sum);
        assert_eq!(raw_i32(&reply.raw_output_contents[1]), diff);
    }
    server.stop().await;
}

#[tokio::test]
async fn only_requested_outputs_come_back() {
    let server = Server::start(Repo::new().shipped("simple")).await;
    let mut client = server.client().await;
    let mut request = simple_request(&[5; 16], &[2; 16], 1);
    request.outputs = vec![InferRequestedOutputTensor {
        name: "OUTPUT1".into(),
        ..Default::default()
    }];
    let reply = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(reply.outputs.len(), 1);
    assert_eq!(reply.outputs[0].name, "OUTPUT1");
    assert_eq!(raw_i32(&reply.raw_output_contents[0]), vec![3; 16]);
    server.stop().await;
}

#[tokio::test]
async fn versions_are_served_as_the_policy_says() {
    let server = Server::start(Repo::new().shipped("classifier")).await;
    let mut client = server.client().await;
    let latest = client.model_infer(features(2)).await.unwrap().into_inner();
    assert_eq!(latest.model_version, "2");
    let mut v1 = features(2);
    v1.model_version = "1".into();
    let first = client.model_infer(v1).await.unwrap().into_inner();
    assert_eq!(first.model_version, "1");
    let (p1, p2) = (
        raw_f32(&first.raw_output_contents[0]),
        raw_f32(&latest.raw_output_contents[0]),
    );
    assert_eq!(p1.len(), 20);
    for row in p1.chunks(10).chain(p2.chunks(10)) {
        let total: f32 = row.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-4,
            "softmax rows sum to 1, got {total}"
        );
    }
    assert_ne!(p1, p2, "versions 1 and 2 have different weights");
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "classifier".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1", "2"]);
    assert_eq!(meta.inputs[0].shape, vec![-1, 64]);
    server.stop().await;
}

#[tokio::test]
async fn errors_carry_the_right_status_and_name_their_subject() {
    let repo = Repo::new()
        .shipped("simple")
        .file(
            "broken/config.pbtxt",
            "name: \"broken\"\nmax_batch_size: \"eight\"\n",
        )
        .file("broken/1/model.onnx", b"not an onnx file");
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    let status = |r: Result<tonic::Response<ModelInferResponse>, tonic::Status>| r.unwrap_err();

    let mut unknown = simple_request(&[0; 16], &[0; 16], 1);
    unknown.model_name = "nope".into();
    let s = status(client.model_infer(unknown).await);
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::NotFound,
            "Request for unknown model: 'nope' is not found"
        )
    );

    let mut version = simple_request(&[0; 16], &[0; 16], 1);
    version.model_version = "4".into();
    let s = status(client.model_infer(version).await);
    assert_eq!(s.code(), Code::NotFound);
    assert!(s.message().contains("version 4"), "{}", s.message());

    let mut short = simple_request(&[0; 16], &[0; 16], 1);
    short.raw_input_contents[0] = vec![0u8; 60].into();
    let s = status(client.model_infer(short).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("'INPUT0'") && s.message().contains("Expected 64, got 60"),
        "{}",
        s.message()
    );

    let mut huge = simple_request(&[0; 16], &[0; 16], 1);
    huge.inputs[0].shape = vec![1, 1 << 40];
    let s = status(client.model_infer(huge).await);
    assert_eq!(s.code(), Code::InvalidArgument);

    let mut broken = simple_request(&[0; 16], &[0; 16], 1);
    broken.model_name = "broken".into();
    let s = status(client.model_infer(broken).await);
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("eight"), "{}", s.message());

    let index = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let broken = index.models.iter().find(|m| m.name == "broken").unwrap();
    assert_eq!(broken.state, "UNAVAILABLE");
    assert!(broken.reason.contains("config.pbtxt"), "{}", broken.reason);
    let simple = index.models.iter().find(|m| m.name == "simple").unwrap();
    assert_eq!(
        (simple.version.as_str(), simple.state.as_str()),
        ("1", "READY")
    );

    // Still serving after all of that.
    let ok = client
        .model_infer(simple_request(&[1; 16], &[1; 16], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw_i32(&ok.raw_output_contents[0]), vec![2; 16]);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_answers_every_request_in_order_with_its_id() {
    let server = Server::start(Repo::new().shipped("simple")).await;
    let mut client = server.client().await;
    let requests: Vec<ModelInferRequest> = (0..20)
        .map(|i| {
            let mut r = simple_request(&[i; 16], &[1; 16], 1);
            r.id = format!("s-{i}");
            if i == 5 {
                r.inputs[0].datatype = "FP32".into();
            }
            r
        })
        .collect();
    let mut answers = client
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(answer) = answers.message().await.unwrap() {
        let response = answer.infer_response.unwrap();
        assert_eq!(response.id, format!("s-{seen}"));
        if seen == 5 {
            assert!(
                answer.error_message.contains("'FP32'"),
                "{}",
                answer.error_message
            );
        } else {
            assert_eq!(answer.error_message, "");
            assert_eq!(
                raw_i32(&response.raw_output_contents[0]),
                vec![seen + 1; 16]
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 20);
    server.stop().await;
}

#[tokio::test]
async fn statistics_count_what_was_served() {
    let server = Server::start(Repo::new().shipped("simple")).await;
    let mut client = server.client().await;
    for batch in [1, 1, 4] {
        let n = 16 * batch as usize;
        client
            .model_infer(simple_request(&vec![1; n], &vec![2; n], batch))
            .await
            .unwrap();
    }
    let mut bad = simple_request(&[0; 16], &[0; 16], 1);
    bad.inputs[1].datatype = "FP32".into();
    client.model_infer(bad).await.unwrap_err();
    let stats = simple_statistics(&mut client).await;
    let s = &stats.model_stats[0];
    assert_eq!((s.name.as_str(), s.version.as_str()), ("simple", "1"));
    assert_eq!(s.inference_count, 6);
    assert_eq!(s.execution_count, 3);
    let inference = s.inference_stats.as_ref().unwrap();
    assert_eq!(inference.success.as_ref().unwrap().count, 3);
    assert!(inference.success.as_ref().unwrap().ns > 0);
    let sizes: Vec<(u64, u64)> = s
        .batch_stats
        .iter()
        .map(|b| (b.batch_size, b.compute_infer.as_ref().unwrap().count))
        .collect();
    assert_eq!(sizes, vec![(1, 2), (4, 1)]);
    assert!(s.last_inference > 0);
    server.stop().await;
}

#[tokio::test]
async fn a_gpu_model_without_a_gpu_executor_fails_alone_with_the_reason() {
    let config =
        std::fs::read_to_string(support::root().join("model_repository/simple/config.pbtxt"))
            .unwrap()
            .replace("name: \"simple\"", "name: \"simple_gpu\"")
            .replace("KIND_CPU", "KIND_GPU");
    let model =
        std::fs::read(support::root().join("model_repository/simple/1/model.onnx")).unwrap();
    let repo = Repo::new()
        .shipped("simple")
        .file("simple_gpu/config.pbtxt", config)
        .file("simple_gpu/1/model.onnx", model);
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    let index = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let gpu = index
        .models
        .iter()
        .find(|m| m.name == "simple_gpu")
        .unwrap();
    assert_eq!(gpu.state, "UNAVAILABLE");
    assert!(gpu.reason.contains("GPU"), "{}", gpu.reason);
    let ok = client
        .model_infer(simple_request(&[1; 16], &[2; 16], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw_i32(&ok.raw_output_contents[0]), vec![3; 16]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_splits_its_load_over_threads_and_counts_every_answer() {
    use std::time::Duration;
    use switchyard::perf::{PerfError, PerfOptions};

    let server = Server::start(Repo::new().shipped("simple")).await;
    // Connecting waits for the models to load.
    drop(server.client().await);
    let mut opts = PerfOptions::new(server.addr.to_string(), "simple");
    opts.concurrency = vec![6];
    opts.connections = 3;
    opts.threads = 2;
    opts.warmup = Duration::from_millis(100);
    opts.duration = Duration::from_millis(400);
    let reports = switchyard::perf::run(&opts).await.unwrap();
    let report = &reports[0];
    assert_eq!(
        (report.concurrency, report.connections, report.threads),
        (6, 3, 2)
    );
    assert_eq!(report.error_count, 0, "{:?}", report.error_sample);
    assert!(report.requests > 0);
    assert_eq!(report.versions.get("1"), Some(&report.requests));

    // The server answered at least every request the window counted (it also served the
    // warm-up and the requests still in flight at the window's end).
    let stats = simple_statistics(&mut server.client().await).await;
    let served = stats.model_stats[0]
        .inference_stats
        .unwrap()
        .success
        .unwrap()
        .count;
    assert!(served >= report.requests, "{served} < {}", report.requests);

    // A server that is not there: a connection error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut opts = PerfOptions::new(addr.to_string(), "simple");
    opts.request_timeout = Duration::from_secs(2);
    let err = switchyard::perf::run(&opts).await.unwrap_err();
    assert!(matches!(err, PerfError::Connect { .. }), "{err}");
    server.stop().await;
}

async fn simple_statistics(
    client: &mut switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<
        tonic::transport::Channel,
    >,
) -> ModelStatisticsResponse {
    client
        .model_statistics(ModelStatisticsRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}
