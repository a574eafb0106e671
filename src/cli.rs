//! Command implementations behind `main`: flag definitions and the thin glue that runs them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::net::TcpListener;

use switchyard::config::{Override, Settings};
use switchyard::registry::VersionState;

mod traffic;
pub use traffic::{TrafficArgs, traffic};

/// Flags of `switchyard serve`, named as `tritonserver` names them where the meaning is the same.
/// Each overrides the settings file and the `SWITCHYARD_*` environment.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A settings file (YAML or TOML) read before the environment and these flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model repository directory [default: model_repository].
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// Address to bind the gRPC server to [default: 0.0.0.0].
    #[arg(long)]
    grpc_address: Option<String>,
    /// gRPC port; 0 picks a free port and logs it [default: 8001].
    #[arg(long)]
    grpc_port: Option<u16>,
    /// HTTP port [default: 8000] (the HTTP endpoint is not served yet).
    #[arg(long)]
    http_port: Option<u16>,
    /// Prometheus metrics port, serving /metrics on the gRPC address [default: 8002].
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Model control mode: watch, poll, explicit or none [default: watch].
    #[arg(long)]
    model_control_mode: Option<String>,
    /// Seconds between repository rescans in poll mode [default: 15].
    #[arg(long)]
    repository_poll_secs: Option<u64>,
    /// Milliseconds new model files must be quiet before they are loaded [default: 300].
    #[arg(long)]
    repository_settle_ms: Option<u64>,
    /// A model to load at start-up in explicit mode (repeatable; `*` for all).
    #[arg(long)]
    load_model: Vec<String>,
    /// Seconds in-flight requests get to finish at shutdown [default: 30].
    #[arg(long)]
    exit_timeout_secs: Option<u64>,
    /// Largest gRPC message accepted or sent, in bytes [default: 67108864].
    #[arg(long)]
    grpc_max_message_bytes: Option<u64>,
    /// OTLP/gRPC endpoint for traces, e.g. http://127.0.0.1:4317 [default: OTEL_EXPORTER_OTLP_ENDPOINT, else off].
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Share of traces started here that are recorded, 0.0 to 1.0 [default: 1.0].
    #[arg(long)]
    trace_sampling_ratio: Option<f64>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    log_format: Option<String>,
    /// Serve the management service on this port only (not on the gRPC port); 0 picks one.
    #[arg(long)]
    management_port: Option<u16>,
    /// Address the management port binds [default: the gRPC address].
    #[arg(long)]
    management_address: Option<String>,
    /// Require `authorization: Bearer TOKEN` on management calls.
    #[arg(long, env = "SWITCHYARD_MANAGEMENT_TOKEN", hide_env_values = true)]
    management_token: Option<String>,
    /// Where traffic changes are kept: file (rewrite traffic.yaml) or memory [default: file].
    #[arg(long)]
    traffic_store: Option<String>,
}

impl ServeArgs {
    /// The flags that were given, as setting overrides.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out: Vec<Override> = Vec::new();
        let mut set = |key: &'static str, value: Option<config::Value>| {
            if let Some(value) = value {
                out.push((key, value));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string().into());
        set("model_repository", path(&self.model_repository));
        set("grpc_address", self.grpc_address.clone().map(Into::into));
        set("grpc_port", self.grpc_port.map(|v| u64::from(v).into()));
        set("http_port", self.http_port.map(|v| u64::from(v).into()));
        set(
            "metrics_port",
            self.metrics_port.map(|v| u64::from(v).into()),
        );
        set(
            "model_control_mode",
            self.model_control_mode.clone().map(Into::into),
        );
        set(
            "repository_poll_secs",
            self.repository_poll_secs.map(Into::into),
        );
        set(
            "repository_settle_ms",
            self.repository_settle_ms.map(Into::into),
        );
        set("exit_timeout_secs", self.exit_timeout_secs.map(Into::into));
        set(
            "grpc_max_message_bytes",
            self.grpc_max_message_bytes.map(Into::into),
        );
        set("log_format", self.log_format.clone().map(Into::into));
        set("otlp_endpoint", self.otlp_endpoint.clone().map(Into::into));
        set(
            "trace_sampling_ratio",
            self.trace_sampling_ratio.map(Into::into),
        );
        set(
            "management_port",
            self.management_port.map(|v| u64::from(v).into()),
        );
        set(
            "management_address",
            self.management_address.clone().map(Into::into),
        );
        set(
            "management_token",
            self.management_token.clone().map(Into::into),
        );
        set("traffic_store", self.traffic_store.clone().map(Into::into));
        if !self.load_model.is_empty() {
            set("load_model", Some(self.load_model.clone().into()));
        }
        out
    }
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// `switchyard serve`.
pub fn serve(settings: Settings) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel needs the runtime's reactor.
    let _runtime = rt.enter();
    let telemetry = switchyard::telemetry::init(&switchyard::telemetry::TelemetryConfig {
        log_format: settings.log_format,
        log_filter: settings.log_filter.clone(),
        otlp_endpoint: settings.otlp_endpoint.clone(),
        trace_sampling_ratio: settings.trace_sampling_ratio,
    });
    let _traces = match telemetry {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = rt.block_on(async {
        let shutdown = shutdown_signal();
        let grpc_address = settings.grpc_address.as_str();
        let bind = |(address, port): (&str, u16)| {
            let addr = format!("{address}:{port}");
            async move {
                TcpListener::bind(&addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))
            }
        };
        let listeners = switchyard::app::Listeners {
            grpc: bind((grpc_address, settings.grpc_port)).await?,
            metrics: Some(bind((grpc_address, settings.metrics_port)).await?),
            management: match settings.management_port {
                Some(port) => {
                    let address = settings.management_address.as_deref();
                    Some(bind((address.unwrap_or(grpc_address), port)).await?)
                }
                None => None,
            },
        };
        switchyard::app::run(settings, listeners, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    // The models are unloaded; let their instance threads release what they hold (GPU memory,
    // streams, cuBLAS handles) while the CUDA libraries are still loaded, before exiting.
    if !switchyard::executor::runner::wait_for_instances(INSTANCE_EXIT_WAIT) {
        tracing::warn!(
            live = switchyard::executor::runner::live_instances(),
            "model instances still running at exit"
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long the process waits at exit for model instances to finish releasing their resources.
const INSTANCE_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while models are still loading is not lost
/// (and does not kill the process with the default action).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = interrupt => {},
                _ = term.recv() => {},
            }
            return;
        }
        let _ = interrupt.await;
    }
}

/// `switchyard repo check DIR`: loads everything, prints a line per model and version, and exits
/// non-zero when any model or version would not serve. A KIND_GPU model also gets its graph
/// checked against the GPU executor (a line per version: what it lowers to, or every unsupported
/// operator); on a machine without a GPU, a GPU model whose only obstacle is the missing GPU is
/// reported as `NEEDS GPU` and does not fail the check (see model_repository/README.md).
pub fn repo_check(dir: PathBuf) -> ExitCode {
    let settings = Settings {
        model_repository: dir.clone(),
        model_control_mode: switchyard::config::ModelControlMode::None,
        ..Settings::default()
    };
    let outcome = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(switchyard::app::load_registry(&settings))
            .map_err(|e| e.to_string())
    });
    let registry = match outcome {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failures = 0;
    for model in registry.models() {
        let snapshot = model.snapshot();
        if let Some(gpu) = gpu_check(&dir, &model.name, &snapshot.reason) {
            failures += gpu.failures;
            gpu.lines.iter().for_each(|line| println!("{line}"));
            continue;
        }
        if snapshot.versions.is_empty() {
            failures += 1;
            println!("{}: UNAVAILABLE: {}", model.name, snapshot.reason);
            continue;
        }
        for (version, status) in &snapshot.versions {
            if status.state == VersionState::Ready {
                let schema = status.serving.as_ref().map(|v| &v.schema);
                let io = schema.map(describe_io).unwrap_or_default();
                println!("{} version {version}: READY {io}", model.name);
            } else {
                failures += 1;
                println!(
                    "{} version {version}: {}: {}",
                    model.name,
                    status.state.as_str(),
                    status.reason
                );
            }
        }
    }
    // Unload before exiting, and let the instances release what they hold (see `serve`).
    drop(registry);
    switchyard::executor::runner::wait_for_instances(INSTANCE_EXIT_WAIT);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `repo check` says about a KIND_GPU model.
struct GpuCheck {
    lines: Vec<String>,
    failures: usize,
}

/// For a model refused for its KIND_GPU instance group: per version, whether the GPU executor
/// can run its graph. `None` for other models.
fn gpu_check(dir: &std::path::Path, name: &str, reason: &str) -> Option<GpuCheck> {
    use switchyard::executor::{cuda, gpu_plan::Program};
    let refusal = cuda::gpu_load_refusal()?;
    if !reason.contains(&refusal) {
        return None;
    }
    let source = switchyard::repository::scan_model(name, &dir.join(name)).ok()?;
    let config = source.config.clone().unwrap_or_default();
    // Only the missing GPU stands in the way, and that is the machine's doing, not the model's.
    let only_no_gpu = cuda::gpus().unavailable.is_some();
    let mut check = GpuCheck {
        lines: Vec::new(),
        failures: 0,
    };
    for version in switchyard::repository::select_versions(&config, &source.versions) {
        let file = &source.versions[&version].file;
        let (state, plan, ok) = match Program::check_file(file) {
            Ok(summary) if only_no_gpu => ("NEEDS GPU", summary.to_string(), true),
            Ok(summary) => ("UNAVAILABLE", summary.to_string(), false),
            Err(e) => ("UNAVAILABLE", e.to_string(), false),
        };
        check.failures += usize::from(!ok);
        check.lines.push(format!(
            "{name} version {version}: {state}: {reason}; {plan}"
        ));
    }
    if check.lines.is_empty() {
        check.failures = 1;
        check.lines.push(format!("{name}: UNAVAILABLE: {reason}"));
    }
    Some(check)
}

fn describe_io(schema: &std::sync::Arc<switchyard::schema::ModelSchema>) -> String {
    let list = |specs: &[switchyard::schema::IoSpec]| {
        specs
            .iter()
            .map(|s| {
                format!(
                    "{} {}{}",
                    s.name,
                    s.datatype,
                    switchyard::tensor::format_shape(&schema.client_shape(s))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({} -> {})", list(&schema.inputs), list(&schema.outputs))
}

/// `switchyard perf`: a table per level on stdout (and JSON with --json); setup failures exit 1.
pub fn perf(args: switchyard::perf::PerfArgs) -> ExitCode {
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(switchyard::perf::main_with(args))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard perf: {e}");
            ExitCode::FAILURE
        }
    }
}
