//! Bare tonic server answering `ModelInfer` for the `simple` model: the ceiling for a tonic daemon.
//!
//! Implements only `ServerReady`, `ModelMetadata` and `ModelInfer` (INPUT0/INPUT1 INT32 [-1,16] →
//! OUTPUT0 = sum, OUTPUT1 = difference, raw contents); every other RPC answers UNIMPLEMENTED.
//! Usage: `bare_tonic [--port N]` (0, the default, picks a free port). Prints
//! `listening 127.0.0.1:PORT` on stdout once bound, then serves until killed or interrupted.

use std::io::Write;
use std::net::SocketAddr;

use switchyard::grpc::pb;
use switchyard::grpc::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use switchyard::grpc::pb::model_infer_response::InferOutputTensor;
use switchyard::grpc::pb::model_metadata_response::TensorMetadata;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const MODEL: &str = "simple";
const WIDTH: usize = 16;
const MAX_BATCH: usize = 8;

#[derive(Default)]
struct Bare;

fn tensor(name: &str) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![-1, WIDTH as i64],
    }
}

/// Little-endian int32 values of input `name`, from raw contents or typed `int_contents`.
fn input_values(req: &pb::ModelInferRequest, name: &str) -> Result<(Vec<i64>, Vec<i32>), Status> {
    let idx = req
        .inputs
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| Status::invalid_argument(format!("missing input {name}")))?;
    let t = &req.inputs[idx];
    if t.datatype != "INT32" {
        return Err(Status::invalid_argument(format!(
            "{name}: expected INT32, got {}",
            t.datatype
        )));
    }
    let batch = match t.shape.as_slice() {
        [b, w] if *w == WIDTH as i64 && (1..=MAX_BATCH as i64).contains(b) => *b as usize,
        s => return Err(Status::invalid_argument(format!("{name}: bad shape {s:?}"))),
    };
    let values: Vec<i32> = if req.raw_input_contents.is_empty() {
        t.contents
            .as_ref()
            .map(|c| c.int_contents.clone())
            .unwrap_or_default()
    } else {
        let raw: &[u8] = req
            .raw_input_contents
            .get(idx)
            .ok_or_else(|| Status::invalid_argument(format!("{name}: no raw contents")))?;
        raw.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if values.len() != batch * WIDTH {
        return Err(Status::invalid_argument(format!(
            "{name}: {} values for shape {:?}",
            values.len(),
            t.shape
        )));
    }
    Ok((t.shape.clone(), values))
}

fn to_raw(values: impl Iterator<Item = i32>) -> Vec<u8> {
    values.flat_map(i32::to_le_bytes).collect()
}

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented by the bare benchmark server"
    )))
}

#[tonic::async_trait]
impl GrpcInferenceService for Bare {
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        if req.name != MODEL || !(req.version.is_empty() || req.version == "1") {
            return Err(Status::not_found(format!(
                "model {:?} version {:?}",
                req.name, req.version
            )));
        }
        Ok(Response::new(pb::ModelMetadataResponse {
            name: MODEL.into(),
            versions: vec!["1".into()],
            platform: "bare_tonic".into(),
            inputs: vec![tensor("INPUT0"), tensor("INPUT1")],
            outputs: vec![tensor("OUTPUT0"), tensor("OUTPUT1")],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let req = req.into_inner();
        if req.model_name != MODEL || !(req.model_version.is_empty() || req.model_version == "1") {
            return Err(Status::not_found(format!(
                "model {:?} version {:?}",
                req.model_name, req.model_version
            )));
        }
        let (shape, a) = input_values(&req, "INPUT0")?;
        let (shape1, b) = input_values(&req, "INPUT1")?;
        if shape != shape1 {
            return Err(Status::invalid_argument("INPUT0 and INPUT1 shapes differ"));
        }
        let sum = to_raw(a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)));
        let diff = to_raw(a.iter().zip(&b).map(|(x, y)| x.wrapping_sub(*y)));
        let out = |name: &str| InferOutputTensor {
            name: name.into(),
            datatype: "INT32".into(),
            shape: shape.clone(),
            ..Default::default()
        };
        Ok(Response::new(pb::ModelInferResponse {
            model_name: MODEL.into(),
            model_version: "1".into(),
            id: req.id,
            outputs: vec![out("OUTPUT0"), out("OUTPUT1")],
            raw_output_contents: vec![sum.into(), diff.into()],
            ..Default::default()
        }))
    }

    type ModelStreamInferStream = std::pin::Pin<
        Box<
            dyn futures::Stream<Item = Result<pb::ModelStreamInferResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        unimplemented("ModelStreamInfer")
    }

    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        unimplemented("ServerLive")
    }
    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        unimplemented("ModelReady")
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        unimplemented("ServerMetadata")
    }
    async fn model_config(
        &self,
        _: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        unimplemented("ModelConfig")
    }
    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        unimplemented("ModelStatistics")
    }
    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        unimplemented("RepositoryIndex")
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        unimplemented("RepositoryModelLoad")
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        unimplemented("RepositoryModelUnload")
    }
    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        unimplemented("SystemSharedMemoryStatus")
    }
    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        unimplemented("SystemSharedMemoryRegister")
    }
    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        unimplemented("SystemSharedMemoryUnregister")
    }
    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        unimplemented("CudaSharedMemoryStatus")
    }
    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        unimplemented("CudaSharedMemoryRegister")
    }
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        unimplemented("CudaSharedMemoryUnregister")
    }
    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        unimplemented("TraceSetting")
    }
    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        unimplemented("LogSettings")
    }
}

/// `--port N`; other arguments (such as the `--bench` that `cargo bench` passes) are ignored.
fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 0;
    while let Some(a) = args.next() {
        if a == "--port" {
            let v = args.next().ok_or("--port needs a value")?;
            port = v.parse().map_err(|e| format!("--port {v:?}: {e}"))?;
        } else if let Some(v) = a.strip_prefix("--port=") {
            port = v.parse().map_err(|e| format!("--port {v:?}: {e}"))?;
        }
    }
    Ok(port)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;
    // Bind first so the printed address is the real one; TCP_NODELAY as `Server::serve` would set it.
    let incoming =
        TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], port)))?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()?;
    tonic::transport::Server::builder()
        .add_service(GrpcInferenceServiceServer::new(Bare))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
