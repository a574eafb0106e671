//! A live OTLP trace receiver for benchmarks: serves the OTLP/gRPC trace service on `--port N`
//! (0 picks one), answers every export, counts the spans, prints `listening 127.0.0.1:PORT` once
//! bound and the span count every second on stderr.
//!
//! By default it reads only what counting needs: each export's resource and scope groups, and each
//! span as an undecoded byte range. With `--decode` it decodes every span in full into the
//! `opentelemetry-proto` types, as a collector's receiver does. On a benchmark machine the
//! receiver shares the CPUs with the daemon it measures; the default keeps its share small.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;

/// An export request as far as counting its spans needs (OTLP field numbers): resource groups,
/// their scope groups, and the spans left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct SpanCountRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceGroup>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceGroup {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeGroup>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeGroup {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<bytes::Bytes>,
}

impl SpanCountRequest {
    fn spans(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

/// The full decode (`--decode`).
#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(count as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The counting decode (default): the same gRPC method, read as [`SpanCountRequest`].
impl UnaryService<SpanCountRequest> for Sink {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<SpanCountRequest>) -> Self::Future {
        self.spans
            .fetch_add(request.get_ref().spans() as u64, Ordering::Relaxed);
        Box::pin(async { Ok(tonic::Response::new(ExportTraceServiceResponse::default())) })
    }
}

/// Routes the OTLP export method to the counting decode; anything else is UNIMPLEMENTED.
#[derive(Clone)]
struct CountingServer(Sink);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl NamedService for CountingServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl Service<http::Request<Body>> for CountingServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let sink = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                let status = tonic::Status::unimplemented(request.uri().path().to_string());
                return Ok(status.into_http());
            }
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, SpanCountRequest>::default();
            let mut grpc = Grpc::new(codec).max_decoding_message_size(64 << 20);
            Ok(grpc.unary(sink, request).await)
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let decode = args.iter().any(|a| a == "--decode");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    let sink = Sink::default();
    let spans = Arc::clone(&sink.spans);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            eprintln!("spans received: {}", spans.load(Ordering::Relaxed));
        }
    });
    let incoming = TcpIncoming::from(listener);
    let mut server = tonic::transport::Server::builder();
    if decode {
        let service = TraceServiceServer::new(sink).max_decoding_message_size(64 << 20);
        server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
    } else {
        server
            .add_service(CountingServer(sink))
            .serve_with_incoming(incoming)
            .await
    }
    .unwrap();
}
