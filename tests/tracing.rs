//! Traces reach a real OTLP receiver: a request sent with a W3C `traceparent` leaves a server span
//! in the same trace, child of the caller's span, with the model and the served version.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::{Repo, Server};
use switchyard::telemetry::{TelemetryConfig, init};
use tonic::transport::server::TcpIncoming;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_request_continues_the_callers_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let guard = init(&TelemetryConfig {
        log_format: Default::default(),
        log_filter: "info".into(),
        otlp_endpoint: Some(format!("http://{otlp}")),
        trace_sampling_ratio: 1.0,
    })
    .unwrap()
    .expect("tracing is on when an endpoint is set");

    let server = Server::start(Repo::new().shipped("simple")).await;
    let mut client = server.client().await;
    let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let mut request = tonic::Request::new(body.clone());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    client.model_infer(request).await.unwrap();
    let mut unknown = body.clone();
    unknown.model_name = "nope".into();
    let mut request = tonic::Request::new(unknown);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    client.model_infer(request).await.unwrap_err();

    let guard = Arc::new(guard);
    let flusher = Arc::clone(&guard);
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        if spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .count()
            >= 2
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans did not arrive: {spans:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let served = ours
        .iter()
        .find(|s| attribute(s, "model").as_deref() == Some("simple"))
        .expect("a span for the served request");
    assert_eq!(served.name, "ModelInfer");
    assert_eq!(hex(&served.parent_span_id), parent_id);
    assert_eq!(served.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(served, "served_version").as_deref(), Some("1"));
    assert_eq!(attribute(served, "rpc.system").as_deref(), Some("grpc"));
    let failed = ours
        .iter()
        .find(|s| attribute(s, "model").as_deref() == Some("nope"))
        .expect("a span for the failed request");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    server.stop().await;
}
