//! The CUDA executor on a real GPU, through the real daemon: results against the CPU executor on
//! fresh random inputs (fp32 within 1e-5, fp16 within 1e-2, relative to the norm), with and
//! without CUDA graphs, at batch sizes 1 to 256; a Gather index out of range; device memory over
//! 50 load/unload cycles; compute phases split by CUDA events, and the GPU metrics of a scrape.
//! Where no usable GPU is found every test prints `SKIPPED:` with the reason and returns
//! (`benches/gpu.sh` runs them where there is one).

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::{Repo, Server, raw_f32};
use switchyard::executor::cuda;
use switchyard::grpc::pb::ModelInferRequest;
use switchyard::grpc::pb::model_infer_request::InferInputTensor;
use tonic::Code;

/// Stops the daemon and waits for its instance threads to release their GPU resources (the
/// process must not exit while they do).
async fn stop(server: Server) {
    server.stop().await;
    let released = tokio::task::spawn_blocking(|| {
        switchyard::executor::runner::wait_for_instances(std::time::Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(
        released,
        "model instances still running after the daemon stopped"
    );
}

fn usable_gpu() -> bool {
    match cuda::gpu_load_refusal() {
        Some(reason) => {
            eprintln!("SKIPPED: {reason}");
            false
        }
        None => true,
    }
}

/// A seed that differs on every run, printed so a failure can be replayed.
fn fresh_seed(what: &str) -> u64 {
    let seed = std::env::var("GPU_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{what}: seed {seed} (GPU_TEST_SEED replays it)");
    seed
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn normal_ish(&mut self) -> f32 {
        // Sum of four uniforms in [-1, 1): bell-shaped, unit-ish scale, never exactly zero data.
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .sum::<f32>()
    }
}

fn request(
    model: &str,
    input: &str,
    datatype: &str,
    shape: Vec<i64>,
    raw: Vec<u8>,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn mlp_request(model: &str, batch: usize, rng: &mut Rng) -> ModelInferRequest {
    let raw = (0..batch * 64)
        .flat_map(|_| rng.normal_ish().to_le_bytes())
        .collect();
    request(model, "features", "FP32", vec![batch as i64, 64], raw)
}

fn encoder_request(model: &str, batch: usize, rng: &mut Rng) -> ModelInferRequest {
    let raw = (0..batch * 32)
        .flat_map(|_| ((rng.next() % 1000) as i64).to_le_bytes())
        .collect();
    request(model, "tokens", "INT64", vec![batch as i64, 32], raw)
}

/// `‖got − want‖ / ‖want‖`, and whether every value is finite.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

fn config(name: &str, base: &str, kind: &str, extra: &str) -> String {
    let io = match base {
        "tabular_mlp" => {
            "input [ { name: \"features\" data_type: TYPE_FP32 dims: [ 64 ] } ]\n\
             output [ { name: \"probabilities\" data_type: TYPE_FP32 dims: [ 10 ] } ]\n"
        }
        _ => {
            "input [ { name: \"tokens\" data_type: TYPE_INT64 dims: [ 32 ] } ]\n\
             output [ { name: \"embeddings\" data_type: TYPE_FP32 dims: [ 32, 64 ] } ]\n"
        }
    };
    format!(
        "name: \"{name}\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 256\n{io}\
         instance_group [ {{ count: 1, kind: {kind} }} ]\n{extra}"
    )
}

const GRAPHS: &str = "optimization { cuda { graphs: true } }\n";
const FP16: &str = "parameters { key: \"precision\" value: { string_value: \"fp16\" } }\n";

/// Every variant of both models: (served name, shipped model, kind, extra configuration).
const VARIANTS: &[(&str, &str, &str, &str)] = &[
    ("mlp_cpu", "tabular_mlp", "KIND_CPU", ""),
    ("mlp_gpu", "tabular_mlp", "KIND_GPU", ""),
    ("mlp_gpu_graphs", "tabular_mlp", "KIND_GPU", GRAPHS),
    ("mlp_gpu_fp16", "tabular_mlp", "KIND_GPU", FP16),
    ("enc_cpu", "encoder", "KIND_CPU", ""),
    ("enc_gpu", "encoder", "KIND_GPU", ""),
    ("enc_gpu_graphs", "encoder", "KIND_GPU", GRAPHS),
    ("enc_gpu_fp16", "encoder", "KIND_GPU", FP16),
];

fn variants_repo() -> Repo {
    VARIANTS
        .iter()
        .fold(Repo::new(), |repo, &(name, base, kind, extra)| {
            repo.shipped_as(base, name, &config(name, base, kind, extra))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_results_match_the_cpu_executor_on_fresh_random_inputs() {
    if !usable_gpu() {
        return;
    }
    let server = Server::start(variants_repo()).await;
    let mut client = server.client().await;
    let mut rng = Rng(fresh_seed("gpu vs cpu"));
    for batch in [1usize, 3, 64, 255, 256] {
        for (cpu, gpus, build) in [
            (
                "mlp_cpu",
                ["mlp_gpu", "mlp_gpu_graphs", "mlp_gpu_fp16"],
                mlp_request as fn(&str, usize, &mut Rng) -> ModelInferRequest,
            ),
            (
                "enc_cpu",
                ["enc_gpu", "enc_gpu_graphs", "enc_gpu_fp16"],
                encoder_request,
            ),
        ] {
            let req = build(cpu, batch, &mut rng);
            let want = client.model_infer(req.clone()).await.unwrap().into_inner();
            let want_values = raw_f32(&want.raw_output_contents[0]);
            for gpu in gpus {
                let mut r = req.clone();
                r.model_name = gpu.into();
                let got = client
                    .model_infer(r)
                    .await
                    .unwrap_or_else(|e| panic!("{gpu} batch {batch}: {e}"))
                    .into_inner();
                assert_eq!(got.outputs[0].shape, want.outputs[0].shape, "{gpu}");
                assert_eq!(got.outputs[0].datatype, "FP32", "{gpu}");
                let error = relative_error(&raw_f32(&got.raw_output_contents[0]), &want_values);
                let limit = if gpu.ends_with("fp16") { 1e-2 } else { 1e-5 };
                eprintln!("{gpu} batch {batch}: relative error {error:.3e} (limit {limit:.0e})");
                assert!(
                    error <= limit,
                    "{gpu} batch {batch}: relative error {error:e} over {limit:e}"
                );
            }
        }
    }
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_out_of_range_is_an_invalid_argument_naming_the_gather_and_the_next_one_serves() {
    if !usable_gpu() {
        return;
    }
    let repo = Repo::new().shipped("encoder_gpu");
    let server = Server::start(repo).await;
    let mut client = server.client().await;
    let mut rng = Rng(fresh_seed("gather"));
    let mut bad = encoder_request("encoder_gpu", 2, &mut rng);
    let mut raw = bad.raw_input_contents[0].to_vec();
    raw[8 * 37..8 * 38].copy_from_slice(&1000i64.to_le_bytes());
    bad.raw_input_contents[0] = raw.into();
    let status = client.model_infer(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "model 'encoder_gpu' version 1: Gather (node embed): index 1000 is out of range for an \
         axis of 1000"
    );
    let good = client
        .model_infer(encoder_request("encoder_gpu", 2, &mut rng))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(good.outputs[0].shape, vec![2, 32, 64]);
    stop(server).await;
}

#[test]
fn fifty_load_unload_cycles_leave_device_memory_where_it_started() {
    if !usable_gpu() {
        return;
    }
    use std::sync::Arc;
    use switchyard::executor::{Backend, Onnx, Phases};
    use switchyard::schema::ModelSchema;
    use switchyard::tensor::{DataType, Tensor};

    let memory = cuda::DeviceMemory::open(0).unwrap();
    let dir = support::root().join("model_repository/encoder_gpu");
    let text = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let mut config = switchyard::repository::model_config::parse(&text).unwrap();
    // CUDA graphs stay on (their memory must come back too), for 8 batch sizes rather than 256.
    config.max_batch_size = 8;
    let schema = Arc::new(ModelSchema::from_config(&config).unwrap());
    let file = dir.join("1/model.onnx");
    let backend = Onnx::default();
    let cycle = || {
        let model = backend.load(&config, &schema, &file).unwrap();
        let mut instance = model.instance().unwrap();
        let tokens: Vec<u8> = (0..64i64).flat_map(|t| t.to_le_bytes()).collect();
        let input = Tensor {
            name: "tokens".into(),
            datatype: DataType::Int64,
            shape: vec![2, 32],
            data: tokens.into(),
        };
        let out = instance
            .execute(vec![Some(input)], &mut Phases::default())
            .unwrap();
        assert_eq!(out[0].shape, vec![2, 32, 64]);
    };
    cycle();
    let start = memory.used().unwrap();
    for _ in 1..50 {
        cycle();
    }
    let end = memory.used().unwrap();
    eprintln!("device memory in use after the first cycle: {start} bytes; after 50: {end} bytes");
    assert_eq!(end, start, "device memory moved over 49 load/unload cycles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_are_split_by_cuda_events_and_the_scrape_shows_every_gpu() {
    if !usable_gpu() {
        return;
    }
    use switchyard::grpc::pb::ModelStatisticsRequest;
    let server = Server::start(Repo::new().shipped("tabular_mlp_gpu")).await;
    let mut client = server.client().await;
    let mut rng = Rng(fresh_seed("phases"));
    let runs = 8u64;
    for _ in 0..runs {
        client
            .model_infer(mlp_request("tabular_mlp_gpu", 256, &mut rng))
            .await
            .unwrap();
    }
    let stats = client
        .model_statistics(ModelStatisticsRequest {
            name: "tabular_mlp_gpu".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let inference = stats.model_stats[0].inference_stats.unwrap();
    for (phase, d) in [
        ("compute_input", inference.compute_input.unwrap()),
        ("compute_infer", inference.compute_infer.unwrap()),
        ("compute_output", inference.compute_output.unwrap()),
    ] {
        eprintln!("{phase}: {} µs per batch of 256", d.ns / runs / 1000);
        assert_eq!(d.count, runs, "{phase}");
        // 256 rows: 64 KiB in, 10 KiB out over PCIe, and three GEMMs: each phase is measurable.
        assert!(d.ns / runs >= 1_000, "{phase}: {} ns per run", d.ns / runs);
    }

    let text = server.scrape().await;
    for gpu in &cuda::gpus().gpus {
        let sample = |name: &str| {
            support::sample_value(&text, &format!("{name}{{gpu_uuid=\"{}\"}}", gpu.uuid))
        };
        let total = sample("nv_gpu_memory_total_bytes");
        let used = sample("nv_gpu_memory_used_bytes");
        let utilization = sample("nv_gpu_utilization");
        eprintln!(
            "{}: {used} of {total} bytes in use, utilization {utilization}",
            gpu.uuid
        );
        let cuda_total = gpu.total_memory_bytes as f64;
        assert!(
            (total - cuda_total).abs() <= 0.05 * cuda_total,
            "NVML total {total} against CUDA's {cuda_total}"
        );
        // This process holds the model's weights, arenas and contexts on GPU 0 at least.
        assert!(used > 0.0 && used <= total, "used {used} of {total}");
        assert!(
            (0.0..=1.0).contains(&utilization),
            "utilization {utilization}"
        );
    }
    stop(server).await;
}
