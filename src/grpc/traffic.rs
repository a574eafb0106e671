//! `switchyard.v1.TrafficControl`: read a model's routing state, pin it to a version, unpin it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::switchyard_v1::traffic_control_server::TrafficControl;
use crate::proto::switchyard_v1::{GetTrafficRequest, PinRequest, TrafficStatus, UnpinRequest};
use crate::registry::{Registry, lifecycle};

/// The management service over the shared registry.
pub struct TrafficService {
    registry: Arc<Registry>,
}

impl TrafficService {
    /// Wraps the registry.
    pub fn new(registry: Arc<Registry>) -> TrafficService {
        TrafficService { registry }
    }

    fn status(&self, model: &str) -> Result<TrafficStatus, Error> {
        let snapshot = self.registry.get(model)?.snapshot();
        let label = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        Ok(TrafficStatus {
            model: model.to_string(),
            pinned_version: label(snapshot.pinned),
            default_version: label(snapshot.default_version),
            ready_versions: snapshot
                .ready_versions()
                .map(|v| v.label().to_string())
                .collect(),
            pin_scope: if snapshot.pinned.is_some() {
                "memory".into()
            } else {
                String::new()
            },
        })
    }
}

fn version_number(model: &str, version: &str) -> Result<u64, Error> {
    version.parse().map_err(|_| Error::UnknownVersion {
        model: model.to_string(),
        version: version.to_string(),
    })
}

#[tonic::async_trait]
impl TrafficControl for TrafficService {
    async fn get_traffic(
        &self,
        request: Request<GetTrafficRequest>,
    ) -> Result<Response<TrafficStatus>, Status> {
        Ok(Response::new(self.status(&request.into_inner().model)?))
    }

    async fn pin(&self, request: Request<PinRequest>) -> Result<Response<TrafficStatus>, Status> {
        let request = request.into_inner();
        let version = version_number(&request.model, &request.version)?;
        lifecycle::pin(&self.registry, &request.model, Some(version)).await?;
        Ok(Response::new(self.status(&request.model)?))
    }

    async fn unpin(
        &self,
        request: Request<UnpinRequest>,
    ) -> Result<Response<TrafficStatus>, Status> {
        let model = request.into_inner().model;
        lifecycle::pin(&self.registry, &model, None).await?;
        Ok(Response::new(self.status(&model)?))
    }
}
