//! Hot-swap benchmark: eight closed-loop clients on the `versioned` fixture while new versions are
//! published by rename and old ones removed, in the same run as a steady-state phase. Reports the
//! time from each rename to the first response served by the new version, p50/p99 latency during
//! swaps against steady state, and failed requests. Run: `cargo bench --bench hot_swap`
//! (`-- --mode poll --swaps 20` for poll mode).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchyard::config::{ModelControlMode, Settings};
use switchyard::grpc::pb::ModelInferRequest;
use switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::grpc::pb::model_infer_request::InferInputTensor;
use tokio::net::TcpListener;
use tonic::transport::Channel;

const CONFIG: &str = "name: \"versioned\"\nmax_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\nversion_policy: { latest { num_versions: 1 } }\n";

struct Shared {
    stop: AtomicBool,
    failures: AtomicU64,
    latest_version: AtomicU64,
    first_seen: Mutex<Vec<(u64, Instant)>>,
    latencies: Mutex<Histogram<u64>>,
}

fn request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "versioned".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![
            [1f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    }
}

async fn client_loop(mut client: GrpcInferenceServiceClient<Channel>, shared: Arc<Shared>) {
    let mut local = Histogram::<u64>::new(3).unwrap();
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match client.model_infer(request()).await {
            Ok(reply) => {
                local.record(started.elapsed().as_micros() as u64).unwrap();
                let v: u64 = reply.into_inner().model_version.parse().unwrap_or(0);
                if shared.latest_version.fetch_max(v, Ordering::Relaxed) < v {
                    shared.first_seen.lock().unwrap().push((v, Instant::now()));
                }
            }
            Err(_) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if local.len() >= 256 {
            shared.latencies.lock().unwrap().add(&local).unwrap();
            local.reset();
        }
    }
    shared.latencies.lock().unwrap().add(&local).unwrap();
}

fn publish(repo: &Path, version: u64, model: &[u8]) {
    let staging = repo.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), model).unwrap();
    std::fs::rename(&staging, repo.join("versioned").join(version.to_string())).unwrap();
}

fn take_latencies(shared: &Shared) -> Histogram<u64> {
    let mut h = shared.latencies.lock().unwrap();
    let out = h.clone();
    h.reset();
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let poll = arg("--mode").as_deref() == Some("poll");
    let swaps: u64 = arg("--swaps").and_then(|s| s.parse().ok()).unwrap_or(100);
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/versioned/1/model.onnx");
    let model = std::fs::read(fixture).unwrap();

    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("versioned")).unwrap();
    std::fs::write(repo.path().join("versioned/config.pbtxt"), CONFIG).unwrap();
    publish(repo.path(), 1, &model);
    let settings = Settings {
        model_repository: repo.path().to_path_buf(),
        grpc_address: "127.0.0.1".into(),
        grpc_port: 0,
        model_control_mode: if poll {
            ModelControlMode::Poll
        } else {
            ModelControlMode::Watch
        },
        repository_poll_secs: 1,
        ..Settings::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchyard::app::run(
        settings,
        listener,
        std::future::pending(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = GrpcInferenceServiceClient::new(channel);

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        failures: AtomicU64::new(0),
        latest_version: AtomicU64::new(0),
        first_seen: Mutex::new(Vec::new()),
        latencies: Mutex::new(Histogram::new(3).unwrap()),
    });
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client_loop(client.clone(), shared.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    take_latencies(&shared);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady = take_latencies(&shared);

    // The model file bytes are the same for every version: the served version number is what
    // tells them apart. Old versions are removed as new ones arrive.
    let mut rename_to_first = Histogram::<u64>::new(3).unwrap();
    let swap_started = Instant::now();
    for version in 2..2 + swaps {
        let renamed = Instant::now();
        publish(repo.path(), version, &model);
        let deadline = renamed + Duration::from_secs(30);
        loop {
            let seen = shared
                .first_seen
                .lock()
                .unwrap()
                .iter()
                .find(|(v, _)| *v == version)
                .map(|(_, t)| *t);
            if let Some(at) = seen {
                rename_to_first
                    .record(at.duration_since(renamed).as_micros() as u64)
                    .unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "version {version} never served");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        std::fs::remove_dir_all(
            repo.path()
                .join("versioned")
                .join((version - 1).to_string()),
        )
        .unwrap();
    }
    let swap_secs = swap_started.elapsed().as_secs_f64();
    let swapping = take_latencies(&shared);
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "mode {}, {swaps} swaps in {swap_secs:.1} s, 8 clients",
        if poll { "poll (1 s)" } else { "watch" }
    );
    println!(
        "rename -> first response: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(rename_to_first.value_at_quantile(0.5)),
        ms(rename_to_first.value_at_quantile(0.9)),
        ms(rename_to_first.max())
    );
    println!(
        "steady:   {} requests, p50 {} us, p99 {} us",
        steady.len(),
        steady.value_at_quantile(0.5),
        steady.value_at_quantile(0.99)
    );
    println!(
        "swapping: {} requests, p50 {} us, p99 {} us",
        swapping.len(),
        swapping.value_at_quantile(0.5),
        swapping.value_at_quantile(0.99)
    );
    println!(
        "p99 during swaps / steady p99: {:.2}",
        swapping.value_at_quantile(0.99) as f64 / steady.value_at_quantile(0.99) as f64
    );
    println!(
        "failed requests: {}",
        shared.failures.load(Ordering::Relaxed)
    );
}
