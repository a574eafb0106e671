//! Helpers for traffic tests: requests to the `versioned` and `rollout` fixtures (whose outputs
//! say which version answered), keyed requests, and a bounded load loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::grpc::pb::infer_parameter::ParameterChoice;
use switchyard::grpc::pb::{InferParameter, ModelInferRequest};
use switchyard::proto::switchyard_v1 as pb;
use tonic::transport::Channel;

use super::{Repo, copy_dir, fp32_request, raw_f32, root};

/// A repository with the `rollout` fixture's configuration and only the given versions.
pub fn rollout_repo(versions: &[u64], traffic_yaml: &str) -> Repo {
    let fixture = root().join("tests/fixtures/models/rollout");
    let repo = Repo::new().file(
        "rollout/config.pbtxt",
        std::fs::read(fixture.join("config.pbtxt")).unwrap(),
    );
    for v in versions {
        copy_dir(
            &fixture.join(v.to_string()),
            &repo.path().join(format!("rollout/{v}")),
        );
    }
    repo.file("rollout/traffic.yaml", traffic_yaml)
}

/// A request whose first element is `first`; the answer is `first + 1000 * version`.
pub fn request(model: &str, first: f32) -> ModelInferRequest {
    fp32_request(model, "INPUT0", vec![1, 4], &[first, 1.0, 2.0, 3.0])
}

/// Adds the `routing_key` request parameter.
pub fn with_key_parameter(mut request: ModelInferRequest, key: &str) -> ModelInferRequest {
    request.parameters.insert(
        "routing_key".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(key.into())),
        },
    );
    request
}

/// Sends a request (optionally with a metadata header) and returns the serving version, after
/// checking that the output is the one that version computes.
pub async fn served_version(
    client: &mut GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
    header: Option<(&'static str, String)>,
) -> Result<u64, tonic::Status> {
    let first = raw_f32(&request.raw_input_contents[0])[0];
    let mut call = tonic::Request::new(request);
    if let Some((name, value)) = header {
        call.metadata_mut().insert(name, value.parse().unwrap());
    }
    let response = client.model_infer(call).await?.into_inner();
    let version: u64 = response.model_version.parse().unwrap();
    let out = raw_f32(&response.raw_output_contents[0]);
    assert_eq!(
        out[0],
        first + 1000.0 * version as f32,
        "output of version {version}"
    );
    Ok(version)
}

/// What a load loop saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub by_version: HashMap<u64, u64>,
    pub failures: Vec<(f32, tonic::Code, String)>,
}

/// When a load loop stops: after `requests` requests, when `flag` turns true (checked between
/// requests), or when `limit` passes, whichever comes first.
#[derive(Clone)]
pub struct Stop {
    pub requests: u64,
    pub flag: Arc<AtomicBool>,
    pub limit: Duration,
}

impl Stop {
    /// Stops after `requests` requests (or `limit`).
    pub fn after(requests: u64, limit: Duration) -> Stop {
        Stop {
            requests,
            flag: Arc::new(AtomicBool::new(false)),
            limit,
        }
    }

    /// Stops when `flag` turns true (or `limit`).
    pub fn when(flag: &Arc<AtomicBool>, limit: Duration) -> Stop {
        Stop {
            requests: u64::MAX,
            flag: Arc::clone(flag),
            limit,
        }
    }
}

/// Sends requests from `workers` loops until `stop` says so. First elements cycle through
/// `firsts`.
pub async fn load_until(
    client: &GrpcInferenceServiceClient<Channel>,
    model: &'static str,
    workers: usize,
    firsts: Vec<f32>,
    stop: Stop,
) -> Seen {
    let Stop {
        requests,
        flag: until,
        limit,
    } = stop;
    let started = Instant::now();
    let counter = Arc::new(AtomicU64::new(0));
    let firsts = Arc::new(firsts);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (mut client, until, counter, firsts) = (
            client.clone(),
            Arc::clone(&until),
            Arc::clone(&counter),
            Arc::clone(&firsts),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while !until.load(Ordering::Acquire) && started.elapsed() < limit {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let i = i as usize;
                let first = firsts[i % firsts.len()];
                match served_version(&mut client, request(model, first), None).await {
                    Ok(v) => *seen.by_version.entry(v).or_default() += 1,
                    Err(s) => seen
                        .failures
                        .push((first, s.code(), s.message().to_string())),
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for task in tasks {
        let seen = task.await.unwrap();
        for (v, n) in seen.by_version {
            *all.by_version.entry(v).or_default() += n;
        }
        all.failures.extend(seen.failures);
    }
    all
}

/// Polls the model's traffic status until `done` holds, or panics after `limit`.
pub async fn wait_for_status(
    traffic: &mut pb::traffic_control_client::TrafficControlClient<Channel>,
    model: &str,
    limit: Duration,
    done: impl Fn(&pb::TrafficStatus) -> bool,
) -> pb::TrafficStatus {
    let started = Instant::now();
    loop {
        let status = traffic
            .get_traffic(pb::GetTrafficRequest {
                model: model.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "status never reached: {status:#?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
