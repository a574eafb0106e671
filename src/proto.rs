//! Code generated from `proto/`: Triton's protocol and model-configuration messages (package
//! `inference`). The model configuration messages double as the schema of `config.pbtxt`, which is
//! why the repository reads them too; the service types are used only by `grpc/`.

/// Triton's `inference` package: GRPCInferenceService and the ModelConfig tree.
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Switchyard's own management services (`switchyard.v1`).
#[allow(clippy::all, missing_docs)]
pub mod switchyard_v1 {
    tonic::include_proto!("switchyard.v1");
}

/// The encoded descriptor set of everything in `proto/`, for reflection and text-format parsing.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
