//! Graceful shutdown of the real binary: SIGTERM under load answers every request the server had
//! accepted, refuses the rest as UNAVAILABLE, and exits 0 within the exit timeout.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::Repo;
use switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::grpc::pb::model_infer_request::InferInputTensor;
use switchyard::grpc::pb::*;
use tokio::sync::Notify;
use tonic::Code;

const CONFIG: &str = r#"name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "features" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"#;

fn request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "classifier".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 256].into()],
        ..Default::default()
    }
}

/// Reads the daemon's JSON log lines until the gRPC `listening` line; returns its address and
/// keeps draining the pipe in the background.
fn listening_addr(stdout: std::process::ChildStdout) -> String {
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("daemon stdout");
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &record["fields"];
        if fields["message"] == "listening" && fields["service"] == "grpc" {
            let addr = fields["addr"].as_str().expect("addr").to_string();
            std::thread::spawn(move || lines.for_each(drop));
            return addr;
        }
    }
    panic!("the daemon exited without logging its address");
}

/// Kills the daemon if the test ends early.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_accepted_requests_and_exits_cleanly() {
    let repo = Repo::new().shipped_as("classifier", "classifier", CONFIG);
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--grpc-address", "127.0.0.1", "--grpc-port", "0"])
        .args(["--log-format", "json", "--exit-timeout-secs", "20"])
        .arg("--model-repository")
        .arg(repo.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let _guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || listening_addr(stdout))
        .await
        .unwrap();
    let client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let answered = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (mut client, answered, progress) =
                (client.clone(), Arc::clone(&answered), Arc::clone(&progress));
            tokio::spawn(async move {
                loop {
                    match client.model_infer(request()).await {
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                            progress.notify_one();
                        }
                        Err(status) => return status,
                    }
                }
            })
        })
        .collect();
    while answered.load(Ordering::SeqCst) < 64 {
        progress.notified().await;
    }
    let before = answered.load(Ordering::SeqCst);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    for worker in workers {
        let status = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("every request is answered")
            .unwrap();
        // Refused: the connection was gone (UNAVAILABLE); the client dropped a request it had not
        // yet written because the connection had closed (hyper's `Canceled`); or the request's
        // stream came after the server's GOAWAY, which tells the client it was not processed.
        let text = format!("{status:?}");
        let never_sent = text.contains("Canceled") || text.contains("GoAway(");
        assert!(
            status.code() == Code::Unavailable || never_sent,
            "only requests the server never accepted may fail: {status:?}"
        );
    }
    assert!(
        answered.load(Ordering::SeqCst) > before,
        "requests in flight at the signal were answered"
    );
    let exit = tokio::time::timeout(
        Duration::from_secs(25),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the daemon exits within the exit timeout")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_queued_batches_without_waiting_for_their_delay() {
    // A batch would wait up to an hour to fill; shutdown must not.
    let config = "name: \"identity_fp32\"\nmax_batch_size: 8\n\
        input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
        output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
        dynamic_batching { max_queue_delay_microseconds: 3600000000 }\n";
    let repo = Repo::new()
        .fixture("identity_fp32")
        .file("identity_fp32/config.pbtxt", config);
    let server = support::Server::start_with(repo, |s| s.exit_timeout_secs = 60).await;
    let client = server.client().await;
    let pending = "nv_inference_pending_request_count{model=\"identity_fp32\",version=\"1\"} 1";
    let mut waiting = client.clone();
    let call = tokio::spawn(async move {
        let request = support::fp32_request("identity_fp32", "INPUT0", vec![1, 4], &[5.0; 4]);
        waiting.model_infer(request).await
    });
    let started = std::time::Instant::now();
    while !server.scrape().await.contains(pending) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the request never queued"
        );
        tokio::task::yield_now().await;
    }
    let stopping = std::time::Instant::now();
    let stop = tokio::spawn(server.stop());
    let answer = call.await.unwrap().expect("the queued request is answered");
    let out = support::raw_f32(&answer.into_inner().raw_output_contents[0]);
    assert_eq!(out, vec![5.0; 4]);
    stop.await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
}
