//! Compiles the protocol definitions in `proto/` with the pure-Rust `protox` compiler (no `protoc`
//! needed), generates the tonic/prost code, and keeps the encoded descriptor set in `OUT_DIR` for
//! server reflection and for parsing `config.pbtxt` with prost-reflect.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "inference/grpc_service.proto",
    "inference/model_config.proto",
    "switchyard/v1/telemetry.proto",
    "switchyard/v1/traffic.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(fds)?;
    Ok(())
}
