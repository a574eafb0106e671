//! `inference.GRPCInferenceService`: health, metadata, configuration, inference (unary and
//! streaming), repository control and statistics. Each handler decodes, calls the core, encodes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::ModelControlMode;
use crate::error::Error;
use crate::registry::{ModelSnapshot, lifecycle};
use crate::repository::load_request;
use crate::routing::{ROUTING_KEY_PARAMETER, RouteKind, shadow};
use crate::schema::ModelSchema;
use crate::telemetry::log_filter;
use crate::tensor::{InferRequest, Parameter};

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_metadata_response::TensorMetadata;
use super::pb::repository_index_response::ModelIndex;
use super::pb::*;
use super::{Context, convert, log_settings, statistics, trace, trace_setting};

/// Requests of one stream processed at once; answers still leave in request order.
const STREAM_CONCURRENCY: usize = 16;

/// The request's routing key: its `routing_key` parameter, else the metadata header the traffic
/// policy names. An empty key is no key (it would send every such client to one version).
fn routing_key(
    request: &InferRequest,
    metadata: &tonic::metadata::MetadataMap,
    header: Option<&str>,
) -> Option<String> {
    match request.parameters.get(ROUTING_KEY_PARAMETER) {
        Some(Parameter::String(key)) if !key.is_empty() => return Some(key.clone()),
        Some(Parameter::Int64(key)) => return Some(key.to_string()),
        Some(Parameter::Uint64(key)) => return Some(key.to_string()),
        _ => {}
    }
    let value = metadata.get(header?)?.to_str().ok()?;
    (!value.is_empty()).then(|| value.to_string())
}

/// The Triton-compatible inference service.
#[derive(Clone)]
pub struct InferenceService {
    context: Arc<Context>,
    setting_updates: trace_setting::Updates,
}

type Reply<T> = Result<Response<T>, Status>;

impl InferenceService {
    /// Wraps the shared context; `setting_updates` says who may change trace and log settings here.
    pub fn new(context: Context, setting_updates: trace_setting::Updates) -> InferenceService {
        InferenceService {
            context: Arc::new(context),
            setting_updates,
        }
    }

    async fn infer(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        request: ModelInferRequest,
        trace: &trace::RequestTrace,
    ) -> Result<ModelInferResponse, Error> {
        let request = convert::infer_request(request)?;
        let model = self.context.registry.get(&request.model_name)?;
        let routed = model.route(&request.model_version, |header| {
            routing_key(&request, metadata, header)
        })?;
        trace.record_route(&routed);
        let mirror = match (&routed.shadow, routed.kind) {
            (_, RouteKind::Named) | (None, _) => None,
            (Some(target), _) => shadow::mirror(
                target,
                &model.shadow_slots,
                routed.version.version,
                &request,
            ),
        };
        let response = routed.version.infer(request).await;
        routed
            .version
            .stats
            .routed
            .record(routed.kind, response.is_ok());
        if let Some(mirror) = mirror {
            mirror.primary_done(response.as_ref().map_err(|_| ()));
        }
        // One line per request at verbose level 1 (Triton's LogSettings) or with
        // `switchyard::grpc=debug`; nothing is evaluated otherwise.
        tracing::debug!(
            model = %model.name,
            version = routed.version.version,
            route = ?routed.kind,
            error = response.as_ref().err().map(tracing::field::display),
            "inference request answered"
        );
        Ok(convert::infer_response(response?))
    }

    /// `infer` inside a request span continuing the caller's trace.
    async fn traced_infer(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        method: &'static str,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, Error> {
        let trace = trace::RequestTrace::start(
            metadata,
            method,
            &request.model_name,
            &request.model_version,
        );
        let outcome = trace.run(self.infer(metadata, request, &trace)).await;
        let served = outcome.as_ref().ok().map(|r| r.model_version.as_str());
        let error = outcome.as_ref().err().map(|e| e.to_string());
        trace.finish(served, error.as_deref());
        outcome
    }

    fn require_explicit(&self) -> Result<(), Error> {
        let mode = match self.context.control_mode {
            ModelControlMode::Explicit => return Ok(()),
            ModelControlMode::None => "none",
            ModelControlMode::Poll => "poll",
            ModelControlMode::Watch => "watch",
        };
        Err(Error::Unavailable(format!(
            "explicit model load / unload is not allowed: the server runs with \
             --model-control-mode {mode}; start it with --model-control-mode explicit"
        )))
    }
}

fn tensor_metadata(schema: &ModelSchema, outputs: bool) -> Vec<TensorMetadata> {
    let specs = if outputs {
        &schema.outputs
    } else {
        &schema.inputs
    };
    specs
        .iter()
        .map(|spec| TensorMetadata {
            name: spec.name.clone(),
            datatype: spec.datatype.protocol_name().to_string(),
            shape: schema.client_shape(spec),
        })
        .collect()
}

fn unimplemented<T>(what: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "{what} is not supported by this server"
    )))
}

/// One RepositoryIndex entry per version, or one for the model when it has none.
fn index_entries(name: &str, snapshot: &ModelSnapshot) -> Vec<ModelIndex> {
    if snapshot.versions.is_empty() {
        return vec![ModelIndex {
            name: name.to_string(),
            version: String::new(),
            state: "UNAVAILABLE".into(),
            reason: snapshot.reason.clone(),
        }];
    }
    snapshot
        .versions
        .iter()
        .map(|(version, status)| ModelIndex {
            name: name.to_string(),
            version: version.to_string(),
            state: status.state.as_str().into(),
            reason: status.reason.clone(),
        })
        .collect()
}

type InferStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Reply<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Reply<ServerReadyResponse> {
        let ready = self.context.ready.load(Ordering::Acquire);
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Reply<ModelReadyResponse> {
        let request = request.into_inner();
        let ready = self
            .context
            .registry
            .pick(&request.name, &request.version)
            .is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Reply<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "switchyard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: [
                "model_repository",
                "model_configuration",
                "statistics",
                "trace",
                "logging",
            ]
            .map(String::from)
            .to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Reply<ModelMetadataResponse> {
        let request = request.into_inner();
        let model = self.context.registry.get(&request.name)?;
        let snapshot = model.snapshot();
        let version = model.pick(&request.version)?;
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: snapshot
                .ready_versions()
                .map(|v| v.label().to_string())
                .collect(),
            platform: snapshot
                .config
                .as_ref()
                .map(|c| c.platform.clone())
                .unwrap_or_default(),
            inputs: tensor_metadata(&version.schema, false),
            outputs: tensor_metadata(&version.schema, true),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Reply<ModelInferResponse> {
        let (metadata, _, request) = request.into_parts();
        Ok(Response::new(
            self.traced_infer(&metadata, "ModelInfer", request).await?,
        ))
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let service = self.clone();
        let (metadata, _, stream) = request.into_parts();
        let metadata = Arc::new(metadata);
        let answers = stream
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .map(move |request| {
                let service = service.clone();
                let metadata = Arc::clone(&metadata);
                async move {
                    let (id, model) = (request.id.clone(), request.model_name.clone());
                    let answered = service
                        .traced_infer(&metadata, "ModelStreamInfer", request)
                        .await;
                    let answer = match answered {
                        Ok(response) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(e) => ModelStreamInferResponse {
                            error_message: e.to_string(),
                            infer_response: Some(ModelInferResponse {
                                model_name: model,
                                id,
                                ..Default::default()
                            }),
                        },
                    };
                    Ok(answer)
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Reply<ModelConfigResponse> {
        let request = request.into_inner();
        let model = self.context.registry.get(&request.name)?;
        if !request.version.is_empty() {
            model.pick(&request.version)?;
        }
        let config = model.snapshot().config.as_deref().cloned();
        match config {
            Some(config) => Ok(Response::new(ModelConfigResponse {
                config: Some(config),
            })),
            None => Err(Error::NotReady {
                model: request.name,
                reason: model.snapshot().reason.clone(),
            }
            .into()),
        }
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Reply<ModelStatisticsResponse> {
        let request = request.into_inner();
        let stats = statistics::collect(&self.context.registry, &request.name, &request.version)?;
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: stats,
        }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Reply<RepositoryIndexResponse> {
        let request = request.into_inner();
        let registry = Arc::clone(&self.context.registry);
        let on_disk = tokio::task::spawn_blocking(move || {
            crate::repository::scan(registry.root()).map(|m| m.into_keys().collect::<Vec<_>>())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .unwrap_or_default();
        let mut models = Vec::new();
        for model in self.context.registry.models() {
            models.extend(index_entries(&model.name, &model.snapshot()));
        }
        for name in on_disk {
            if self.context.registry.get(&name).is_err() {
                models.push(ModelIndex {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: "not loaded".into(),
                });
            }
        }
        if request.ready {
            models.retain(|m| m.state == "READY");
        }
        models.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Reply<RepositoryModelLoadResponse> {
        self.require_explicit()?;
        let request = request.into_inner();
        let name = request.model_name;
        let (config, files) = convert::load_parameters(&name, request.parameters)?;
        let root = self.context.registry.root().to_path_buf();
        let resolve_name = name.clone();
        let requested = tokio::task::spawn_blocking(move || {
            load_request::resolve(&root, &resolve_name, config.as_deref(), files)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|reason| Error::Config {
            model: name.clone(),
            reason,
        })?;
        lifecycle::load_model(&self.context.registry, &name, requested.scanned).await?;
        drop(requested.files_dir);
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Reply<RepositoryModelUnloadResponse> {
        self.require_explicit()?;
        let request = request.into_inner();
        lifecycle::unload_model(&self.context.registry, &request.model_name)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Reply<SystemSharedMemoryStatusResponse> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Reply<SystemSharedMemoryRegisterResponse> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Reply<SystemSharedMemoryUnregisterResponse> {
        unimplemented("system shared memory")
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Reply<CudaSharedMemoryStatusResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Reply<CudaSharedMemoryRegisterResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Reply<CudaSharedMemoryUnregisterResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> Reply<TraceSettingResponse> {
        let (metadata, _, request) = request.into_parts();
        let settings = trace_setting::requested(&request);
        if !settings.is_empty() {
            self.setting_updates.check(&metadata, "trace settings")?;
        }
        if !request.model_name.is_empty() {
            self.context.registry.get(&request.model_name)?;
            if !settings.is_empty() {
                return Err(Error::Unsupported(format!(
                    "per-model trace settings are not supported: model '{}' follows the global \
                     trace settings (send the request without a model name)",
                    request.model_name
                ))
                .into());
            }
        }
        trace_setting::apply(&trace_setting::plan(&settings)?)?;
        Ok(Response::new(trace_setting::current()))
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Reply<LogSettingsResponse> {
        let (metadata, _, request) = request.into_parts();
        let settings = if request.settings.is_empty() {
            log_filter::current()?
        } else {
            self.setting_updates.check(&metadata, "log settings")?;
            log_filter::change(&log_settings::plan(&request.settings)?)?
        };
        Ok(Response::new(log_settings::response(&settings)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_prefers_the_parameter_and_ignores_empty_keys() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("x-user-id", "header-key".parse().unwrap());
        let mut request = InferRequest::default();
        let key = |r: &InferRequest, m: &tonic::metadata::MetadataMap| {
            routing_key(r, m, Some("x-user-id"))
        };
        assert_eq!(key(&request, &metadata).as_deref(), Some("header-key"));
        assert_eq!(routing_key(&request, &metadata, None), None);
        request.parameters.insert(
            ROUTING_KEY_PARAMETER.into(),
            Parameter::String("param-key".into()),
        );
        assert_eq!(key(&request, &metadata).as_deref(), Some("param-key"));
        request
            .parameters
            .insert(ROUTING_KEY_PARAMETER.into(), Parameter::Int64(42));
        assert_eq!(key(&request, &metadata).as_deref(), Some("42"));
        request.parameters.insert(
            ROUTING_KEY_PARAMETER.into(),
            Parameter::String(String::new()),
        );
        metadata.insert("x-user-id", "".parse().unwrap());
        assert_eq!(key(&request, &metadata), None);
    }
}
