//! Switchyard: a multi-model inference server speaking Triton's gRPC protocol (KServe v2).
//!
//! The request path, one module per layer:
//! - [`grpc`]: the wire (tonic/prost) — decode, call the core, encode; the only place errors become
//!   gRPC statuses.
//! - [`registry`]: the live models; each publishes one immutable snapshot through `ArcSwap`.
//!   [`registry::lifecycle`] loads versions off the request path and swaps them in when ready.
//! - [`routing`]: traffic policies — weights, sticky keys, shadow traffic, automatic rollouts.
//! - [`schema`]: a model's checked tensor interface, applied to every request.
//! - [`batching`]: scheduling onto instances — the dynamic batcher, queue policy and admission
//!   limits.
//! - [`executor`]: backends and their instances, on dedicated threads.
//! - [`repository`]: the directory on disk and its `config.pbtxt` files.
//! - [`tensor`], [`error`]: protocol-free types shared by all of the above.
//! - [`config`], [`app`], [`telemetry`]: settings, composition and logging.
//! - [`perf`]: a closed-loop load generator for any server speaking the protocol.
#![deny(unsafe_code)]

pub mod app;
pub mod batching;
pub mod config;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod perf;
pub mod proto;
pub mod registry;
pub mod repository;
pub mod routing;
pub mod schema;
pub mod telemetry;
pub mod tensor;
