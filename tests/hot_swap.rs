//! The live repository under load: versions dropped in by rename, configurations edited, a corrupt
//! version, a slowly copied version, removals — every response must be correct for a version that
//! was ready, and no request may fail. Also poll mode, Kubernetes-style `..data` symlink swaps, the
//! explicit load API with a configuration override and files, and memory across load cycles.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Repo, Server, raw_f32, root};
use switchyard::config::{ModelControlMode, Settings};
use switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::grpc::pb::model_repository_parameter::ParameterChoice;
use switchyard::grpc::pb::*;
use tonic::transport::Channel;

const FIXTURE: &str = "tests/fixtures/models/versioned";
const CONFIG: &str = "name: \"versioned\"\nmax_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n";

fn fixture(version: u64) -> Vec<u8> {
    std::fs::read(
        root()
            .join(FIXTURE)
            .join(version.to_string())
            .join("model.onnx"),
    )
    .unwrap()
}

/// Writes version `v` elsewhere in the repository, then renames it into place: the safe way.
fn publish(repo: &Path, v: u64, bytes: &[u8]) {
    let staging = repo.join(format!(".staging-{v}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), bytes).unwrap();
    std::fs::rename(&staging, repo.join("versioned").join(v.to_string())).unwrap();
}

fn request(x: f32) -> ModelInferRequest {
    support::fp32_request(
        "versioned",
        "INPUT0",
        vec![1, 4],
        &[x, x + 1.0, x + 2.0, x + 3.0],
    )
}

/// What the clients saw: responses per served version, and every failure.
#[derive(Default)]
struct Seen {
    by_version: BTreeMap<String, usize>,
    /// (version, time) of the first response from each version.
    first: BTreeMap<String, Instant>,
    failures: Vec<String>,
}

/// Eight clients in closed loops, each checking every answer against the version that served it.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &GrpcInferenceServiceClient<Channel>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tasks = (0..8)
            .map(|task| {
                let (mut client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let x = (task * 100 + i % 50) as f32;
                        i += 1;
                        let outcome = client.model_infer(request(x)).await;
                        let mut seen = seen.lock().unwrap();
                        match outcome {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                let v: f32 = reply.model_version.parse().unwrap_or(f32::NAN);
                                let want: Vec<f32> =
                                    (0..4).map(|k| x + k as f32 + 1000.0 * v).collect();
                                let got = raw_f32(&reply.raw_output_contents[0]);
                                if got != want {
                                    seen.failures
                                        .push(format!("version {v}: got {got:?}, want {want:?}"));
                                }
                                seen.first
                                    .entry(reply.model_version.clone())
                                    .or_insert_with(Instant::now);
                                *seen.by_version.entry(reply.model_version).or_default() += 1;
                            }
                            Err(status) => seen.failures.push(format!("{status:?}")),
                        }
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    /// Waits until version `v` has answered, or fails after `deadline`.
    async fn until_served(&self, v: &str, deadline: Duration) -> Instant {
        let start = Instant::now();
        loop {
            if let Some(at) = self.seen.lock().unwrap().first.get(v) {
                return *at;
            }
            assert!(
                start.elapsed() < deadline,
                "version {v} was not served within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Forgets which versions were seen, so a version can be awaited again.
    fn reset_first(&self) {
        self.seen.lock().unwrap().first.clear();
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

async fn index_state(
    client: &mut GrpcInferenceServiceClient<Channel>,
    version: &str,
) -> Option<(String, String)> {
    let index = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    index
        .models
        .into_iter()
        .find(|m| m.name == "versioned" && m.version == version)
        .map(|m| (m.state, m.reason))
}

/// Polls `check` until it holds, failing after `deadline`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn versioned_repo() -> Repo {
    let repo = Repo::new().file("versioned/config.pbtxt", CONFIG);
    publish(repo.path(), 1, &fixture(1));
    repo
}

async fn start(repo: Repo, mode: ModelControlMode) -> Server {
    Server::start_with(repo, |s: &mut Settings| {
        s.model_control_mode = mode;
        s.repository_settle_ms = 300;
        s.repository_poll_secs = 1;
    })
    .await
}

/// In explicit mode, asks for a reload (the outcome is checked through what serves); in the other
/// modes the server finds the change itself.
async fn applied(client: &mut GrpcInferenceServiceClient<Channel>, mode: ModelControlMode) {
    if mode == ModelControlMode::Explicit {
        let _ = client.repository_model_load(load_request(None, &[])).await;
    }
}

/// The whole sequence of repository changes under load, in one control mode.
async fn change_versions_under_load(mode: ModelControlMode, first_response_within: Duration) {
    let repo = versioned_repo();
    let path = repo.path().to_path_buf();
    let server = Server::start_with(repo, |s: &mut Settings| {
        s.model_control_mode = mode;
        s.repository_settle_ms = 300;
        s.repository_poll_secs = 1;
        if mode == ModelControlMode::Explicit {
            s.load_model = vec!["versioned".into()];
        }
    })
    .await;
    let mut client = server.client().await;
    let load = Load::start(&client);
    load.until_served("1", Duration::from_secs(10)).await;

    // A new version dropped in by rename serves well within a second.
    let renamed = Instant::now();
    publish(&path, 2, &fixture(2));
    applied(&mut client, mode).await;
    let served = load.until_served("2", Duration::from_secs(5)).await;
    let rename_to_served = served - renamed;

    // An edited configuration reloads every version with it (two instances now).
    std::fs::write(
        path.join("versioned/config.pbtxt"),
        format!("{CONFIG}instance_group [ {{ count: 2 }} ]\n"),
    )
    .unwrap();
    applied(&mut client, mode).await;
    until("configuration reload", Duration::from_secs(5), || {
        let mut c = client.clone();
        async move {
            let config = c
                .model_config(ModelConfigRequest {
                    name: "versioned".into(),
                    version: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            config
                .config
                .unwrap()
                .instance_group
                .first()
                .is_some_and(|g| g.count == 2)
        }
    })
    .await;

    // A corrupt version (truncated file) is reported and never served; version 2 keeps serving.
    let bytes = fixture(3);
    publish(&path, 3, &bytes[..bytes.len() / 2]);
    applied(&mut client, mode).await;
    until("corrupt version reported", Duration::from_secs(5), || {
        let mut c = client.clone();
        async move {
            index_state(&mut c, "3")
                .await
                .is_some_and(|(state, reason)| state == "UNAVAILABLE" && !reason.is_empty())
        }
    })
    .await;

    // A version copied slowly in place is taken only once complete.
    let v4 = fixture(4);
    let dir = path.join("versioned/4");
    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(dir.join("model.onnx")).unwrap();
        for chunk in v4.chunks(v4.len() / 20 + 1) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            // Simulates a slow writer (not synchronisation): pauses shorter than the settle time.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some((state, reason)) = index_state(&mut client, "4").await {
                panic!("version 4 was looked at while half-written: {state} {reason}");
            }
        }
    }
    let copied = Instant::now();
    applied(&mut client, mode).await;
    let first_v4 = load.until_served("4", Duration::from_secs(10)).await;
    assert!(
        first_v4 >= copied,
        "version 4 served before its copy finished"
    );

    // Removing 4 and 3 returns to 2; removing 2 returns to 1.
    load.reset_first();
    std::fs::remove_dir_all(path.join("versioned/4")).unwrap();
    std::fs::remove_dir_all(path.join("versioned/3")).unwrap();
    applied(&mut client, mode).await;
    load.until_served("2", Duration::from_secs(5)).await;
    load.reset_first();
    std::fs::remove_dir_all(path.join("versioned/2")).unwrap();
    applied(&mut client, mode).await;
    load.until_served("1", Duration::from_secs(5)).await;

    let seen = load.finish().await;
    assert!(
        seen.failures.is_empty(),
        "{} failures, first: {:?}",
        seen.failures.len(),
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(
        !seen.by_version.contains_key("3"),
        "the corrupt version answered"
    );
    assert!(
        seen.by_version.values().sum::<usize>() > 100,
        "{:?}",
        seen.by_version
    );
    assert!(
        rename_to_served < first_response_within,
        "{mode:?}: rename to first response took {rename_to_served:?}"
    );
    eprintln!(
        "{mode:?}: responses per version: {:?}; rename to first response {rename_to_served:?}",
        seen.by_version
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_change_under_load_without_a_failed_or_wrong_answer() {
    change_versions_under_load(ModelControlMode::Watch, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sequence_in_poll_mode() {
    // A poll interval of 1 s plus the settle time.
    change_versions_under_load(ModelControlMode::Poll, Duration::from_millis(1800)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sequence_through_the_explicit_load_api() {
    change_versions_under_load(ModelControlMode::Explicit, Duration::from_secs(1)).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_data_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let repo = Repo::new();
    let path = repo.path().to_path_buf();
    let write_generation = |generation: &str, versions: &[u64]| {
        let model = path.join(generation).join("versioned");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.pbtxt"), CONFIG).unwrap();
        for v in versions {
            std::fs::create_dir_all(model.join(v.to_string())).unwrap();
            std::fs::write(model.join(v.to_string()).join("model.onnx"), fixture(*v)).unwrap();
        }
    };
    write_generation("..gen1", &[1]);
    symlink("..gen1", path.join("..data")).unwrap();
    symlink("..data/versioned", path.join("versioned")).unwrap();
    let server = start(repo, ModelControlMode::Watch).await;
    let client = server.client().await;
    let load = Load::start(&client);
    load.until_served("1", Duration::from_secs(10)).await;
    // What the kubelet does: a new generation, then an atomic rename of a fresh `..data` link.
    write_generation("..gen2", &[1, 2]);
    symlink("..gen2", path.join("..data_tmp")).unwrap();
    std::fs::rename(path.join("..data_tmp"), path.join("..data")).unwrap();
    load.until_served("2", Duration::from_secs(5)).await;
    let seen = load.finish().await;
    assert!(
        seen.failures.is_empty(),
        "{:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    server.stop().await;
}

fn load_request(config: Option<&str>, files: &[(&str, Vec<u8>)]) -> RepositoryModelLoadRequest {
    let mut parameters = std::collections::HashMap::new();
    if let Some(json) = config {
        parameters.insert(
            "config".into(),
            ModelRepositoryParameter {
                parameter_choice: Some(ParameterChoice::StringParam(json.into())),
            },
        );
    }
    for (name, data) in files {
        parameters.insert(
            format!("file:{name}"),
            ModelRepositoryParameter {
                parameter_choice: Some(ParameterChoice::BytesParam(data.clone())),
            },
        );
    }
    RepositoryModelLoadRequest {
        model_name: "versioned".into(),
        parameters,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_loads_take_a_configuration_override_and_files() {
    let repo = versioned_repo();
    let server = start(repo, ModelControlMode::Explicit).await;
    let mut client = server.client().await;
    let ready = |c: &mut GrpcInferenceServiceClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.model_ready(ModelReadyRequest {
                name: "versioned".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .ready
        }
    };
    assert!(
        !ready(&mut client).await,
        "explicit mode loads nothing unless asked"
    );

    client
        .repository_model_load(load_request(None, &[]))
        .await
        .unwrap();
    let reply = client.model_infer(request(1.0)).await.unwrap().into_inner();
    assert_eq!(reply.model_version, "1");

    // Files in the request: version 3 from bytes, with a JSON configuration override.
    let json = r#"{"name":"versioned","max_batch_size":8,"input":[{"name":"INPUT0","data_type":"TYPE_FP32","dims":[4]}],"output":[{"name":"OUTPUT0","data_type":"TYPE_FP32","dims":[4]}]}"#;
    client
        .repository_model_load(load_request(Some(json), &[("3/model.onnx", fixture(3))]))
        .await
        .unwrap();
    let reply = client.model_infer(request(1.0)).await.unwrap().into_inner();
    assert_eq!(reply.model_version, "3");
    assert_eq!(
        raw_f32(&reply.raw_output_contents[0]),
        vec![3001.0, 3002.0, 3003.0, 3004.0]
    );

    // A bad override fails with the reason, and what served keeps serving.
    let err = client
        .repository_model_load(load_request(Some("{\"max_batch_size\": \"x\"}"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let escape = client
        .repository_model_load(load_request(Some(json), &[("../evil", vec![1])]))
        .await
        .unwrap_err();
    assert!(
        escape.message().contains("inside the model"),
        "{}",
        escape.message()
    );
    assert_eq!(
        client
            .model_infer(request(1.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "3"
    );

    client
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "versioned".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!ready(&mut client).await);
    let status = client.model_infer(request(1.0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    server.stop().await;
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_load_unload_cycles_release_their_memory() {
    let repo = versioned_repo();
    let server = start(repo, ModelControlMode::Explicit).await;
    let mut client = server.client().await;
    let cycle = |c: &mut GrpcInferenceServiceClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.repository_model_load(load_request(None, &[]))
                .await
                .unwrap();
            let reply = c.model_infer(request(0.0)).await.unwrap().into_inner();
            assert_eq!(
                raw_f32(&reply.raw_output_contents[0]),
                vec![1000.0, 1001.0, 1002.0, 1003.0]
            );
            c.repository_model_unload(RepositoryModelUnloadRequest {
                model_name: "versioned".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    };
    for _ in 0..20 {
        cycle(&mut client).await;
    }
    let before = resident_bytes();
    for _ in 0..200 {
        cycle(&mut client).await;
    }
    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    // Each load holds ~256 KiB of weights plus a plan and a thread: 200 leaked loads would be
    // well over 50 MB. Allow 8 MB for allocator noise.
    assert!(
        growth < 8 << 20,
        "resident memory grew by {} KiB over 200 cycles",
        growth >> 10
    );
    eprintln!(
        "resident memory growth over 200 load/unload cycles: {} KiB",
        growth >> 10
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_rolls_back_at_once_and_unpinning_returns_to_the_policy() {
    use switchyard::proto::switchyard_v1::traffic_control_client::TrafficControlClient;
    use switchyard::proto::switchyard_v1::{PinRequest, UnpinRequest};
    let repo = versioned_repo();
    publish(repo.path(), 2, &fixture(2));
    let server = start(repo, ModelControlMode::Watch).await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .model_infer(request(0.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "2"
    );
    let load = Load::start(&client);

    // The CLI pins to version 1, which the policy (latest 1) had not loaded: it loads, then serves.
    let url = format!("http://{}", server.addr);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["traffic", "pin", "versioned", "1", "--url", &url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("pinned:  1 (file)") && stdout.contains("default: 1"),
        "{stdout}"
    );
    for _ in 0..20 {
        assert_eq!(
            client
                .model_infer(request(0.0))
                .await
                .unwrap()
                .into_inner()
                .model_version,
            "1"
        );
    }
    // A request naming a version still gets exactly that version.
    let mut named = request(0.0);
    named.model_version = "2".into();
    assert_eq!(
        client
            .model_infer(named)
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "2"
    );

    let mut traffic = TrafficControlClient::connect(url).await.unwrap();
    let missing = traffic
        .pin(PinRequest {
            model: "versioned".into(),
            version: "9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert_eq!(
        client
            .model_infer(request(0.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "1"
    );

    let status = traffic
        .unpin(UnpinRequest {
            model: "versioned".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            status.pinned_version.as_str(),
            status.default_version.as_str()
        ),
        ("", "2")
    );
    assert_eq!(
        client
            .model_infer(request(0.0))
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "2"
    );
    let seen = load.finish().await;
    assert!(
        seen.failures.is_empty(),
        "{:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(seen.by_version.contains_key("1") && seen.by_version.contains_key("2"));
    server.stop().await;
}
