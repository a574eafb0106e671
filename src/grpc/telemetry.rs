//! `switchyard.v1.Telemetry`: read the state of trace export and of the log, and change the trace
//! sampling ratio, the exporter and the log filter at run time. The semantics (validation, the
//! live ratio, the reloadable filter) live in `telemetry::tracing` and `telemetry::log_filter`.

use tonic::{Request, Response, Status};

use crate::proto::switchyard_v1 as pb;
use crate::proto::switchyard_v1::telemetry_server::Telemetry;
use crate::telemetry::log_filter::{self, LogChange, LogSettings};
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

fn logging(settings: LogSettings) -> pb::LoggingStatus {
    pb::LoggingStatus {
        filter: settings.directives,
        error: settings.error,
        warning: settings.warning,
        info: settings.info,
        verbose_level: settings.verbose,
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

    async fn get_logging(
        &self,
        _request: Request<pb::GetLoggingRequest>,
    ) -> Result<Response<pb::LoggingStatus>, Status> {
        Ok(Response::new(logging(log_filter::current()?)))
    }

    async fn set_logging(
        &self,
        request: Request<pb::SetLoggingRequest>,
    ) -> Result<Response<pb::LoggingStatus>, Status> {
        let request = request.into_inner();
        let settings = log_filter::change(&LogChange {
            directives: request.filter,
            error: request.error,
            warning: request.warning,
            info: request.info,
            verbose: request.verbose_level,
        })?;
        Ok(Response::new(logging(settings)))
    }
}
