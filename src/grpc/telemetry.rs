//! `switchyard.v1.Telemetry`: read the state of trace export, and change the trace sampling ratio
//! and the exporter at run time. The semantics (validation, the live ratio) live in `telemetry::tracing`.

use tonic::{Request, Response, Status};

use crate::proto::switchyard_v1 as pb;
use crate::proto::switchyard_v1::telemetry_server::Telemetry;
use crate::telemetry::tracing;

/// The telemetry management service; its state is the process-wide tracing state.
#[derive(Debug, Default)]
pub struct TelemetryService;

fn status() -> pb::TracingStatus {
    pb::TracingStatus {
        enabled: tracing::enabled(),
        sampling_ratio: tracing::sampling_ratio(),
        endpoint: tracing::exporter_endpoint().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    async fn get_tracing(
        &self,
        _request: Request<pb::GetTracingRequest>,
    ) -> Result<Response<pb::TracingStatus>, Status> {
        Ok(Response::new(status()))
    }

    async fn set_trace_sampling(
        &self,
        request: Request<pb::SetTraceSamplingRequest>,
    ) -> Result<Response<pb::TracingStatus>, Status> {
        tracing::set_sampling_ratio(request.into_inner().ratio)?;
        Ok(Response::new(status()))
    }

    async fn set_trace_exporter(
        &self,
        request: Request<pb::SetTraceExporterRequest>,
    ) -> Result<Response<pb::TracingStatus>, Status> {
        let endpoint = request.into_inner().endpoint;
        let endpoint = endpoint.trim();
        tracing::set_exporter((!endpoint.is_empty()).then_some(endpoint))?;
        Ok(Response::new(status()))
    }
}
