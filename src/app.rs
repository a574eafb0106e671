//! The composition root: builds the registry, loads models as the control mode says, serves gRPC on
//! an already-bound listener, and on shutdown stops accepting, lets in-flight requests finish within
//! the exit timeout, then drops every model.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::config::{ModelControlMode, Settings, TrafficStore};
use crate::executor::Onnx;
use crate::grpc;
use crate::registry::{Registry, lifecycle, reconciler};
use crate::repository::watcher::{self, RepositoryWatcher, Trigger};
use crate::routing::controller;
use crate::telemetry::metrics;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("model repository {path}: {source}")]
    Repository {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the registry and loads the models that the control mode asks for at start-up.
pub async fn load_registry(settings: &Settings) -> Result<Arc<Registry>, AppError> {
    let registry = Arc::new(
        Registry::new(settings.model_repository.clone(), Arc::new(Onnx::default()))
            .with_memory_only_traffic(settings.traffic_store == TrafficStore::Memory),
    );
    let names = match settings.model_control_mode {
        ModelControlMode::Explicit => Some(settings.load_model.as_slice()),
        ModelControlMode::None | ModelControlMode::Poll | ModelControlMode::Watch => None,
    };
    lifecycle::load_all(&registry, names)
        .await
        .map_err(|source| AppError::Repository {
            path: settings.model_repository.display().to_string(),
            source,
        })?;
    Ok(registry)
}

/// In watch and poll modes, starts the watcher and the reconciler that follows it; the returned
/// guard stops both when dropped.
fn follow_repository(
    settings: &Settings,
    registry: &Arc<Registry>,
) -> Result<Option<RepositoryWatcher>, AppError> {
    let trigger = match settings.model_control_mode {
        ModelControlMode::Watch => Trigger::Watch {
            rescan: Duration::from_secs(settings.repository_rescan_secs),
        },
        ModelControlMode::Poll => Trigger::Poll {
            every: Duration::from_secs(settings.repository_poll_secs),
        },
        ModelControlMode::None | ModelControlMode::Explicit => return Ok(None),
    };
    let (watcher, signals) =
        watcher::start(&settings.model_repository, trigger).map_err(|e| AppError::Repository {
            path: settings.model_repository.display().to_string(),
            source: std::io::Error::other(e),
        })?;
    let quiet = Duration::from_millis(settings.repository_settle_ms);
    tokio::spawn(reconciler::run(Arc::clone(registry), signals, quiet));
    info!(mode = ?settings.model_control_mode, "following the model repository");
    Ok(Some(watcher))
}

/// The already-bound sockets the server answers on.
pub struct Listeners {
    /// gRPC: inference, health, reflection and management.
    pub grpc: TcpListener,
    /// Prometheus `/metrics`, when served.
    pub metrics: Option<TcpListener>,
    /// The management service, when it is served apart from inference.
    pub management: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Listeners {
        Listeners {
            grpc,
            metrics: None,
            management: None,
        }
    }
}

/// Starts `/metrics` on its listener; it stops when `stopping` turns true.
fn serve_metrics(
    listener: Option<TcpListener>,
    registry: &Arc<Registry>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let Some(listener) = listener else {
        return Ok(());
    };
    let addr = listener.local_addr().map_err(AppError::Listener)?;
    info!(service = "metrics", addr = %addr, "listening");
    let registry = Arc::clone(registry);
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = metrics::serve(listener, registry, stop).await {
            warn!(error = %e, "metrics endpoint failed");
        }
    });
    Ok(())
}

/// Starts the management service on its own listener; it stops when `stopping` turns true.
fn serve_management(
    listener: Option<TcpListener>,
    registry: &Arc<Registry>,
    settings: &Settings,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let Some(listener) = listener else {
        return Ok(());
    };
    let addr = listener.local_addr().map_err(AppError::Listener)?;
    info!(service = "management", addr = %addr, "listening");
    let (registry, settings) = (Arc::clone(registry), settings.clone());
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = grpc::serve_management(registry, &settings, listener, stop).await {
            warn!(error = %e, "management endpoint failed");
        }
    });
    Ok(())
}

/// Logs the GPUs found at start-up, or why there are none.
fn log_gpus() {
    let probe = crate::executor::cuda::gpus();
    match &probe.unavailable {
        Some(reason) => info!(%reason, "no usable GPU; models run on the CPU"),
        None => {
            for gpu in &probe.gpus {
                info!(
                    ordinal = gpu.ordinal,
                    uuid = %gpu.uuid,
                    name = %gpu.name,
                    compute_capability = ?gpu.compute_capability,
                    memory_mib = gpu.total_memory_bytes >> 20,
                    nvrtc = probe.nvrtc,
                    cublas = probe.cublas,
                    "GPU found"
                );
            }
        }
    }
}

/// Runs the server on `listeners` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let Listeners {
        grpc: listener,
        metrics,
        management,
    } = listeners.into();
    log_gpus();
    let registry = load_registry(&settings).await?;
    let _watch = follow_repository(&settings, &registry)?;
    let ready = Arc::new(AtomicBool::new(true));
    let (stopping_tx, stopping) = watch::channel(false);
    serve_metrics(metrics, &registry, stopping.clone())?;
    serve_management(management, &registry, &settings, stopping.clone())?;
    tokio::spawn(controller::run(Arc::clone(&registry), stopping));
    let addr = listener.local_addr().map_err(AppError::Listener)?;
    let models = registry.models().len();
    info!(service = "grpc", addr = %addr, models, "listening");

    let (begun, begun_rx) = oneshot::channel::<()>();
    let flag = Arc::clone(&ready);
    let draining = Arc::clone(&registry);
    let shutdown = async move {
        shutdown.await;
        info!("shutting down: no longer accepting, finishing in-flight requests");
        flag.store(false, Ordering::Release);
        draining.drain();
        let _ = stopping_tx.send(true);
        let _ = begun.send(());
    };
    let context = grpc::Context {
        registry: Arc::clone(&registry),
        control_mode: settings.model_control_mode,
        ready,
    };
    let exit_timeout = Duration::from_secs(settings.exit_timeout_secs);
    let serve = grpc::serve(context, &settings, listener, shutdown);
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served?,
        _ = async {
            if begun_rx.await.is_ok() {
                tokio::time::sleep(exit_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            warn!(timeout_secs = settings.exit_timeout_secs, "exit timeout passed with requests still in flight");
        }
    }
    drop(registry);
    info!("stopped");
    Ok(())
}
