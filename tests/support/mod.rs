//! Helpers for integration tests: a temporary repository built from the shipped and fixture models,
//! and the real server started in-process on port 0.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use switchyard::config::{ModelControlMode, Settings};
use switchyard::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::transport::Channel;

pub mod traffic;

/// The crate root, where `model_repository/` and `tests/fixtures/` live.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary model repository, built model by model.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a shipped model (`model_repository/NAME`).
    pub fn shipped(self, name: &str) -> Repo {
        copy_dir(
            &root().join("model_repository").join(name),
            &self.path().join(name),
        );
        self
    }

    /// Copies a shipped model under another name, with its configuration replaced by `config`
    /// (whose `name` should be `as_name`).
    pub fn shipped_as(self, name: &str, as_name: &str, config: &str) -> Repo {
        copy_dir(
            &root().join("model_repository").join(name),
            &self.path().join(as_name),
        );
        self.file(&format!("{as_name}/config.pbtxt"), config)
    }

    /// Copies a fixture model (`tests/fixtures/models/NAME`).
    pub fn fixture(self, name: &str) -> Repo {
        copy_dir(
            &root().join("tests/fixtures/models").join(name),
            &self.path().join(name),
        );
        self
    }

    /// Writes a file relative to the repository root.
    pub fn file(self, rel: &str, contents: impl AsRef<[u8]>) -> Repo {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A server running in-process on 127.0.0.1:0.
pub struct Server {
    pub addr: std::net::SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: std::net::SocketAddr,
    /// Where the management service is served when it has its own port.
    pub management_addr: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), switchyard::app::AppError>>,
    _repo: Repo,
}

impl Server {
    pub async fn start(repo: Repo) -> Server {
        Server::start_with(repo, |_| {}).await
    }

    pub async fn start_with(repo: Repo, adjust: impl FnOnce(&mut Settings)) -> Server {
        let mut settings = Settings {
            model_repository: repo.path().to_path_buf(),
            grpc_address: "127.0.0.1".into(),
            grpc_port: 0,
            model_control_mode: ModelControlMode::None,
            ..Settings::default()
        };
        adjust(&mut settings);
        settings.validate().expect("test settings are valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let management = match settings.management_port {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let management_addr = management.as_ref().map(|l| l.local_addr().unwrap());
        let listeners = switchyard::app::Listeners {
            grpc: listener,
            metrics: Some(metrics),
            management,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(switchyard::app::run(settings, listeners, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            metrics_addr,
            management_addr,
            stop: Some(stop),
            task,
            _repo: repo,
        }
    }

    /// A client; connecting waits until the server accepts (models load before serving starts).
    pub async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        let url = format!("http://{}", self.addr);
        let channel = Channel::from_shared(url)
            .unwrap()
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to the server");
        GrpcInferenceServiceClient::new(channel)
    }

    /// Fetches `/metrics` (plain HTTP/1.0, read to the end).
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    }

    /// The repository directory the server runs on.
    pub fn repo_path(&self) -> &Path {
        self._repo.path()
    }

    /// A client of the management service (on its own port when it has one).
    pub async fn traffic_client(
        &self,
    ) -> switchyard::proto::switchyard_v1::traffic_control_client::TrafficControlClient<Channel>
    {
        let addr = self.management_addr.unwrap_or(self.addr);
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to the management service");
        switchyard::proto::switchyard_v1::traffic_control_client::TrafficControlClient::new(channel)
    }

    /// Triggers shutdown and waits for the server to finish.
    pub async fn stop(self) {
        self.stop_keeping_repo().await;
    }

    /// Stops the server and hands back its repository, to start another server on it.
    pub async fn stop_keeping_repo(mut self) -> Repo {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stops within 30 s")
            .expect("server task")
            .expect("server ran cleanly");
        self._repo
    }
}

/// A ModelInferRequest for a `simple`-shaped model (INPUT0, INPUT1 INT32 [batch, 16]) in raw form.
pub fn simple_request(
    model: &str,
    a: &[i32],
    b: &[i32],
    batch: i64,
) -> switchyard::grpc::pb::ModelInferRequest {
    use switchyard::grpc::pb::model_infer_request::InferInputTensor;
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![batch, 16],
        ..Default::default()
    };
    switchyard::grpc::pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![i32_raw(a).into(), i32_raw(b).into()],
        ..Default::default()
    }
}

/// A ModelInferRequest with one FP32 input in raw form.
pub fn fp32_request(
    model: &str,
    input: &str,
    shape: Vec<i64>,
    values: &[f32],
) -> switchyard::grpc::pb::ModelInferRequest {
    use switchyard::grpc::pb::model_infer_request::InferInputTensor;
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    switchyard::grpc::pb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// INT32 values as raw little-endian bytes.
pub fn i32_raw(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Raw little-endian bytes as INT32 values.
pub fn raw_i32(raw: &[u8]) -> Vec<i32> {
    raw.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Raw little-endian bytes as FP32 values.
pub fn raw_f32(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The value of one sample line of a scrape, e.g. `nv_inference_count{model="simple",version="1"}`.
pub fn sample_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
}
