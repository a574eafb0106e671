//! The gRPC frontend: Triton's `inference.GRPCInferenceService`, `grpc.health.v1`, server
//! reflection and our `switchyard.v1.TrafficControl` and `switchyard.v1.Telemetry` (on the
//! inference port, or on their own). Only this module (and the generated code) touches tonic and
//! prost types.

mod convert;
mod log_settings;
mod service;
mod statistics;
mod status;
mod telemetry;
/// Request spans; public for `benches/span_cost.rs`.
pub mod trace;
mod trace_setting;
mod traffic;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::config::{ModelControlMode, Settings};
pub use crate::proto::inference as pb;
use crate::registry::Registry;
pub use service::InferenceService;
pub use traffic::policy_to_wire;

use crate::proto::switchyard_v1::telemetry_server::TelemetryServer;
use crate::proto::switchyard_v1::traffic_control_server::TrafficControlServer;
use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// What the gRPC services need from the rest of the server.
pub struct Context {
    pub registry: Arc<Registry>,
    pub control_mode: ModelControlMode,
    /// False until start-up loading is done, and again once shutdown begins.
    pub ready: Arc<AtomicBool>,
}

/// The bearer-token check in front of every management service.
fn require_token(settings: &Settings) -> traffic::RequireToken {
    traffic::RequireToken(settings.management_token.as_deref().map(Arc::from))
}

/// The management service, behind its bearer-token check.
fn management(
    registry: &Arc<Registry>,
    settings: &Settings,
) -> InterceptedService<TrafficControlServer<traffic::TrafficService>, traffic::RequireToken> {
    TrafficControlServer::with_interceptor(
        traffic::TrafficService::new(Arc::clone(registry)),
        require_token(settings),
    )
}

/// The telemetry controls, served wherever the management service is, behind the same check.
fn telemetry_control(
    settings: &Settings,
) -> InterceptedService<TelemetryServer<telemetry::TelemetryService>, traffic::RequireToken> {
    TelemetryServer::with_interceptor(telemetry::TelemetryService, require_token(settings))
}

/// Serves only the management services (and health) on their own listener, for deployments that
/// keep it away from inference clients.
pub async fn serve_management(
    registry: Arc<Registry>,
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (_health, health_service) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(management(&registry, settings))
        .add_service(telemetry_control(settings))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// Serves on an already-bound listener until `shutdown` resolves, then stops accepting and lets
/// in-flight calls finish.
pub async fn serve(
    context: Context,
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| unreachable_reflection(&e));
    let limit = settings.grpc_max_message_bytes;
    // With a management port, the management service is served there only.
    let traffic = settings
        .management_port
        .is_none()
        .then(|| management(&context.registry, settings));
    let telemetry = settings
        .management_port
        .is_none()
        .then(|| telemetry_control(settings));
    let setting_updates = match settings.management_port {
        Some(_) => trace_setting::Updates::ManagementPortOnly,
        None => trace_setting::Updates::Token(require_token(settings)),
    };
    let inference =
        GrpcInferenceServiceServer::new(InferenceService::new(context, setting_updates))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<GrpcInferenceServiceServer<InferenceService>>()
            .await;
    };
    let mut router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(inference)
        .add_optional_service(traffic)
        .add_optional_service(telemetry);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    router
        // Replies are small and latency-bound: send them without Nagle's delay.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

fn unreachable_reflection(e: &tonic_reflection::server::Error) {
    tracing::warn!(error = %e, "server reflection is disabled: the descriptor set did not register");
}
