//! Traces reach a real OTLP receiver: a request sent with a W3C `traceparent` leaves a server span
//! in the same trace, child of the caller's span, with the model and the served version; loading
//! a model leaves `model.load` spans (an error status with the reason when the load fails) and a
//! `model.swap` span; and the sampling ratio and the exporter change at run time through
//! `switchyard.v1.Telemetry`. One test, because the subscriber, the exporter and the sampling
//! ratio are process-wide.

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
use switchyard::grpc::pb::{
    LogSettingsRequest, TraceSettingRequest, TraceSettingResponse, log_settings_request,
    trace_setting_request,
};
use switchyard::proto::switchyard_v1::telemetry_client::TelemetryClient;
use switchyard::proto::switchyard_v1::{
    GetLoggingRequest, GetTracingRequest, SetLoggingRequest, SetTraceExporterRequest,
    SetTraceSamplingRequest,
};
use switchyard::telemetry::tracing::Tracing;
use switchyard::telemetry::{TelemetryConfig, init};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

const STATUS_CODE_ERROR: i32 = 2;

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

impl Receiver {
    /// Serves a receiver on a free port of 127.0.0.1.
    async fn start() -> (Receiver, std::net::SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        (receiver, addr)
    }

    fn requests(&self) -> usize {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.name == "ModelInfer").count()
    }
}

/// The in-test receiver and the exporter sending to it.
struct Otlp {
    receiver: Receiver,
    guard: Arc<Tracing>,
}

impl Otlp {
    /// Starts the receiver on port 0 and installs the daemon's telemetry, exporting to it.
    async fn start() -> Otlp {
        let (receiver, otlp) = Receiver::start().await;
        let guard = init(&TelemetryConfig {
            log_format: Default::default(),
            // Quieter logs than the spans' level: what is exported does not follow the log filter.
            log_filter: "warn".into(),
            otlp_endpoint: Some(format!("http://{otlp}")),
            trace_sampling_ratio: 1.0,
        })
        .unwrap();
        Otlp {
            receiver,
            guard: Arc::new(guard),
        }
    }

    /// Exports every finished span now; when this returns the receiver holds them.
    async fn flush(&self) {
        let guard = Arc::clone(&self.guard);
        tokio::task::spawn_blocking(move || guard.flush())
            .await
            .unwrap();
    }

    /// How many spans have arrived so far.
    fn received(&self) -> usize {
        self.receiver.spans.lock().unwrap().len()
    }

    /// Flushes, then polls (for at most 10 s) until `done` holds over the spans that arrived
    /// after the first `from`; returns those spans.
    async fn wait_for(&self, from: usize, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        self.flush().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.receiver.spans.lock().unwrap()[from..].to_vec();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not arrive: {spans:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

fn traced(
    body: &switchyard::grpc::pb::ModelInferRequest,
    traceparent: Option<&str>,
) -> tonic::Request<switchyard::grpc::pb::ModelInferRequest> {
    let mut request = tonic::Request::new(body.clone());
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver() {
    let otlp = Otlp::start().await;
    let config =
        std::fs::read_to_string(support::root().join("model_repository/simple/config.pbtxt"))
            .unwrap()
            .replace("name: \"simple\"", "name: \"broken\"");
    let repo = Repo::new()
        .shipped("simple")
        .shipped_as("simple", "broken", &config)
        .file("broken/1/model.onnx", b"not an onnx file")
        .fixture("identity_fp32")
        .file("identity_fp32/config.pbtxt", BATCHED_IDENTITY);
    let server = Server::start(repo).await;
    a_traced_request_continues_the_callers_trace(&otlp, &server).await;
    a_batch_span_links_every_request_it_served(&otlp, &server).await;
    exported_spans_are_counted(&otlp, &server).await;
    model_loads_and_swaps_are_spans(&otlp).await;
    server.stop().await;
    the_sampling_ratio_changes_at_run_time(&otlp).await;
    the_exporter_changes_at_run_time(&otlp).await;
    triton_trace_settings_change_what_is_traced(&otlp).await;
    the_log_filter_changes_at_run_time().await;
}

/// Runs a batch only when four requests are there (or after a minute).
const BATCHED_IDENTITY: &str = "name: \"identity_fp32\"\nmax_batch_size: 8\n\
    input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
    output [ { name: \"OUTPUT0\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n\
    dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }\n";

async fn a_batch_span_links_every_request_it_served(otlp: &Otlp, server: &Server) {
    let from = otlp.received();
    let client = server.client().await;
    let trace_ids: Vec<String> = (0..4)
        .map(|i| format!("{:032x}", 0xba7c4_u64 * 1000 + i))
        .collect();
    let calls: Vec<_> = trace_ids
        .iter()
        .map(|trace_id| {
            let body = support::fp32_request("identity_fp32", "INPUT0", vec![1, 4], &[1.0; 4]);
            let request = traced(&body, Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")));
            let mut client = client.clone();
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let spans = otlp
        .wait_for(from, "batch spans", |spans| {
            spans
                .iter()
                .any(|s| s.name == "batch" && s.links.len() == 4)
                && spans.iter().filter(|s| s.name == "execute").count() >= 4
        })
        .await;
    let batch = spans.iter().find(|s| s.name == "batch").unwrap();
    assert_eq!(attribute(batch, "batch.size").as_deref(), Some("4"));
    let mut linked: Vec<String> = batch.links.iter().map(|l| hex(&l.trace_id)).collect();
    linked.sort();
    assert_eq!(linked, trace_ids, "the batch links every request's trace");
    for trace_id in &trace_ids {
        let in_trace = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name && hex(&s.trace_id) == *trace_id)
                .unwrap_or_else(|| panic!("no {name} span in trace {trace_id}: {spans:#?}"))
        };
        let request = in_trace("ModelInfer");
        let (queue, execute) = (in_trace("queue"), in_trace("execute"));
        assert_eq!(queue.parent_span_id, request.span_id);
        assert_eq!(execute.parent_span_id, request.span_id);
        for child in [queue, execute] {
            assert_eq!(child.kind, 1, "SPAN_KIND_INTERNAL");
            // Sampled, under a local parent: the remote flag is known and clear.
            assert_eq!(child.flags, 0x101, "{child:?}");
            assert_eq!(child.span_id.len(), 8);
            assert!(child.span_id.iter().any(|&b| b != 0));
            assert_ne!(child.span_id, request.span_id);
        }
        assert_ne!(queue.span_id, execute.span_id);
        assert_eq!(execute.links.len(), 1);
        assert_eq!(
            execute.links[0].span_id, batch.span_id,
            "execute links its batch"
        );
        let link = batch
            .links
            .iter()
            .find(|l| hex(&l.trace_id) == *trace_id)
            .unwrap();
        assert_eq!(
            link.span_id, request.span_id,
            "the batch links the request span"
        );
        let phases: Vec<&str> = execute.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(phases, ["compute.input", "compute.infer", "compute.output"]);
        assert!(attribute(execute, "compute.infer_us").is_some());
        assert!(queue.end_time_unix_nano <= execute.start_time_unix_nano + 1_000_000);
    }
}

async fn a_traced_request_continues_the_callers_trace(otlp: &Otlp, server: &Server) {
    let mut client = server.client().await;
    let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    client
        .model_infer(traced(&body, Some(&traceparent)))
        .await
        .unwrap();
    let mut unknown = body.clone();
    unknown.model_name = "nope".into();
    client
        .model_infer(traced(&unknown, Some(&traceparent)))
        .await
        .unwrap_err();

    let ours = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect()
    };
    let spans = otlp
        .wait_for(0, "request spans", |spans| ours(spans).len() >= 2)
        .await;
    let ours = ours(&spans);
    let served = ours
        .iter()
        .find(|s| attribute(s, "model").as_deref() == Some("simple"))
        .expect("a span for the served request");
    assert_eq!(served.name, "ModelInfer");
    assert_eq!(hex(&served.parent_span_id), parent_id);
    assert_eq!(served.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(served, "served_version").as_deref(), Some("1"));
    assert_eq!(attribute(served, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(served, "rpc.method").as_deref(),
        Some("ModelInfer")
    );
    assert_eq!(attribute(served, "requested_version").as_deref(), Some(""));
    assert_eq!(attribute(served, "route").as_deref(), Some("default"));
    assert!(
        attribute(served, "routing_key_hash").is_none(),
        "{served:?}"
    );
    let failed = ours
        .iter()
        .find(|s| attribute(s, "model").as_deref() == Some("nope"))
        .expect("a span for the failed request");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(STATUS_CODE_ERROR)
    );
}

async fn model_loads_and_swaps_are_spans(otlp: &Otlp) {
    let of = |spans: &[Span], name: &str, model: &str| -> Option<Span> {
        spans
            .iter()
            .find(|s| s.name == name && attribute(s, "model").as_deref() == Some(model))
            .cloned()
    };
    let spans = otlp
        .wait_for(0, "lifecycle spans", |spans| {
            of(spans, "model.load", "simple").is_some()
                && of(spans, "model.load", "broken").is_some()
                && of(spans, "model.swap", "simple").is_some()
        })
        .await;
    let loaded = of(&spans, "model.load", "simple").unwrap();
    assert_eq!(attribute(&loaded, "version").as_deref(), Some("1"));
    assert_eq!(attribute(&loaded, "outcome").as_deref(), Some("loaded"));
    assert!(attribute(&loaded, "duration_ms").is_some(), "{loaded:?}");
    assert_ne!(
        loaded.status.as_ref().map(|s| s.code),
        Some(STATUS_CODE_ERROR)
    );
    let failed = of(&spans, "model.load", "broken").unwrap();
    assert_eq!(attribute(&failed, "version").as_deref(), Some("1"));
    assert_eq!(attribute(&failed, "outcome").as_deref(), Some("failed"));
    let status = failed.status.as_ref().expect("an error status");
    assert_eq!(status.code, STATUS_CODE_ERROR);
    assert!(!status.message.is_empty(), "the reason: {failed:?}");
    let swap = of(&spans, "model.swap", "simple").unwrap();
    assert_eq!(attribute(&swap, "ready_versions").as_deref(), Some("1"));
    assert_eq!(attribute(&swap, "retired_versions").as_deref(), Some(""));
}

async fn telemetry_client(server: &Server) -> TelemetryClient<Channel> {
    let addr = server.management_addr.expect("a management port");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TelemetryClient::new(channel)
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    request
}

async fn the_sampling_ratio_changes_at_run_time(otlp: &Otlp) {
    let server = Server::start_with(Repo::new().shipped("simple"), |s| {
        s.management_port = Some(0);
        s.management_token = Some("s3cret".into());
    })
    .await;
    let mut telemetry = telemetry_client(&server).await;
    let set = |ratio: f64| with_token(SetTraceSamplingRequest { ratio });
    let refused = telemetry
        .set_trace_sampling(SetTraceSamplingRequest { ratio: 0.0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    for ratio in [1.5, -0.5, f64::NAN] {
        let invalid = telemetry.set_trace_sampling(set(ratio)).await.unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{ratio}");
    }
    let status = telemetry
        .get_tracing(with_token(GetTracingRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled);
    assert_eq!(status.sampling_ratio, 1.0);
    let status = telemetry.set_trace_sampling(set(0.0)).await.unwrap();
    assert_eq!(status.into_inner().sampling_ratio, 0.0);

    // Ratio 0: requests without a parent are not recorded; a sampled parent still is.
    let mut client = server.client().await;
    let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
    otlp.flush().await;
    let from = otlp.received();
    for _ in 0..5 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    client
        .model_infer(traced(&body, Some(&traceparent)))
        .await
        .unwrap();
    let is_request = |s: &Span| s.name == "ModelInfer";
    let spans = otlp
        .wait_for(from, "the sampled parent's span", |spans| {
            spans
                .iter()
                .any(|s| is_request(s) && hex(&s.trace_id) == trace_id)
        })
        .await;
    let requests: Vec<&Span> = spans.iter().filter(|s| is_request(s)).collect();
    assert_eq!(requests.len(), 1, "only the sampled parent's: {requests:?}");

    // Back to 1: requests without a parent are recorded again.
    telemetry.set_trace_sampling(set(1.0)).await.unwrap();
    let from = otlp.received();
    for _ in 0..3 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    otlp.wait_for(from, "unparented request spans", |spans| {
        spans
            .iter()
            .filter(|s| is_request(s) && s.parent_span_id.is_empty())
            .count()
            >= 3
    })
    .await;
    server.stop().await;
}

/// Export moves to a second receiver, turns off (nothing is exported, the status says so, the
/// ratio cannot be set), refuses endpoints that are not URLs, and comes back to the first.
async fn the_exporter_changes_at_run_time(otlp: &Otlp) {
    let server = Server::start_with(Repo::new().shipped("simple"), |s| {
        s.management_port = Some(0);
        s.management_token = Some("s3cret".into());
    })
    .await;
    let mut telemetry = telemetry_client(&server).await;
    let mut client = server.client().await;
    let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
    let first = telemetry
        .get_tracing(with_token(GetTracingRequest {}))
        .await
        .unwrap()
        .into_inner()
        .endpoint;
    assert!(first.starts_with("http://127.0.0.1:"), "{first}");
    let set = |endpoint: &str| {
        with_token(SetTraceExporterRequest {
            endpoint: endpoint.into(),
        })
    };

    let (second, second_addr) = Receiver::start().await;
    let status = telemetry
        .set_trace_exporter(set(&format!("http://{second_addr}")))
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled);
    assert_eq!(status.endpoint, format!("http://{second_addr}"));
    let before = otlp.receiver.requests();
    for _ in 0..4 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    otlp.flush().await;
    assert_eq!(
        second.requests(),
        4,
        "the four requests reach the new receiver"
    );
    assert_eq!(otlp.receiver.requests(), before, "and none the old one");

    let status = telemetry
        .set_trace_exporter(set(""))
        .await
        .unwrap()
        .into_inner();
    assert!(!status.enabled);
    assert_eq!(status.endpoint, "");
    let refused = telemetry
        .set_trace_sampling(with_token(SetTraceSamplingRequest { ratio: 0.5 }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    for _ in 0..4 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    otlp.flush().await;
    assert_eq!(
        second.requests(),
        4,
        "nothing is exported while export is off"
    );
    assert_eq!(otlp.receiver.requests(), before);

    for bad in ["not a url", "ftp://127.0.0.1:4317", "http://"] {
        let invalid = telemetry.set_trace_exporter(set(bad)).await.unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(invalid.message().contains(bad), "{}", invalid.message());
    }

    let status = telemetry
        .set_trace_exporter(set(&first))
        .await
        .unwrap()
        .into_inner();
    assert!(status.enabled && status.endpoint == first);
    client.model_infer(traced(&body, None)).await.unwrap();
    otlp.wait_for(0, "a request span at the first receiver again", |_| {
        otlp.receiver.requests() > before
    })
    .await;
    server.stop().await;
}

/// Trace settings as name and values.
type Settings<'a> = &'a [(&'a str, &'a [&'a str])];

fn trace_settings(
    model: &str,
    pairs: Settings<'_>,
    token: Option<&str>,
) -> tonic::Request<TraceSettingRequest> {
    let settings = pairs
        .iter()
        .map(|(name, values)| {
            let value = values.iter().map(|v| v.to_string()).collect();
            (
                name.to_string(),
                trace_setting_request::SettingValue { value },
            )
        })
        .collect();
    let mut request = tonic::Request::new(TraceSettingRequest {
        settings,
        model_name: model.into(),
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn setting(response: &TraceSettingResponse, name: &str) -> Vec<String> {
    response
        .settings
        .get(name)
        .map(|v| v.value.clone())
        .unwrap_or_default()
}

/// Triton's TraceSetting RPC on the inference port: reads the settings, holds traces off with
/// `trace_level` OFF, limits them with `trace_count`, sets the ratio with `trace_rate`, refuses
/// what it cannot do with the reason, and changes nothing without the management token.
async fn triton_trace_settings_change_what_is_traced(otlp: &Otlp) {
    let server = Server::start_with(Repo::new().shipped("simple"), |s| {
        s.management_token = Some("s3cret".into());
    })
    .await;
    let mut client = server.client().await;
    let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
    let token = Some("s3cret");

    let read = client
        .trace_setting(trace_settings("", &[], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&read, "trace_level"), ["TIMESTAMPS"]);
    assert_eq!(setting(&read, "trace_rate"), ["1"]);
    assert_eq!(setting(&read, "trace_count"), ["-1"]);
    assert_eq!(setting(&read, "trace_mode"), ["opentelemetry"]);

    let off: Settings<'_> = &[("trace_level", &["OFF"])];
    let refused = client
        .trace_setting(trace_settings("", off, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // OFF: no request is traced, not even one whose caller sampled it.
    let status = client
        .trace_setting(trace_settings("", off, token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&status, "trace_level"), ["OFF"]);
    otlp.flush().await;
    let before = otlp.receiver.requests();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for _ in 0..3 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    client
        .model_infer(traced(&body, Some(traceparent)))
        .await
        .unwrap();
    otlp.flush().await;
    assert_eq!(otlp.receiver.requests(), before, "nothing traced while OFF");

    // TIMESTAMPS with a count of 2: two of five requests are traced, then the count reads 0.
    let status = client
        .trace_setting(trace_settings(
            "",
            &[("trace_level", &["TIMESTAMPS"]), ("trace_count", &["2"])],
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&status, "trace_level"), ["TIMESTAMPS"]);
    assert_eq!(setting(&status, "trace_count"), ["2"]);
    for _ in 0..5 {
        client.model_infer(traced(&body, None)).await.unwrap();
    }
    otlp.flush().await;
    assert_eq!(otlp.receiver.requests(), before + 2, "trace_count 2");
    let read = client
        .trace_setting(trace_settings("", &[], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&read, "trace_count"), ["0"]);

    // trace_rate 4 is the sampling ratio 0.25; empty lists reset rate and count.
    let status = client
        .trace_setting(trace_settings("", &[("trace_rate", &["4"])], token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&status, "trace_rate"), ["4"]);
    assert_eq!(switchyard::telemetry::tracing::sampling_ratio(), 0.25);
    let status = client
        .trace_setting(trace_settings(
            "",
            &[("trace_rate", &[]), ("trace_count", &[])],
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(setting(&status, "trace_rate"), ["1"]);
    assert_eq!(setting(&status, "trace_count"), ["-1"]);
    let from = otlp.received();
    client.model_infer(traced(&body, None)).await.unwrap();
    otlp.wait_for(from, "a request span after the reset", |spans| {
        spans.iter().any(|s| s.name == "ModelInfer")
    })
    .await;

    // Refusals name the setting and the reason; a refused request changes nothing.
    let cases: [(&str, Settings<'_>, tonic::Code, &str); 5] = [
        (
            "",
            &[("trace_rate", &["0"])],
            tonic::Code::InvalidArgument,
            "trace_rate must be",
        ),
        (
            "",
            &[("trace_level", &["TENSORS"]), ("trace_rate", &["9"])],
            tonic::Code::InvalidArgument,
            "TENSORS is not supported",
        ),
        (
            "",
            &[("trace_file", &["/tmp/trace.json"])],
            tonic::Code::InvalidArgument,
            "OTLP",
        ),
        (
            "simple",
            &[("trace_rate", &["2"])],
            tonic::Code::Unimplemented,
            "model 'simple' follows the global trace settings",
        ),
        ("nope", &[], tonic::Code::NotFound, "'nope'"),
    ];
    for (model, pairs, code, needle) in cases {
        let err = client
            .trace_setting(trace_settings(model, pairs, token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{pairs:?}: {}", err.message());
        assert!(err.message().contains(needle), "{}", err.message());
    }
    let read = client
        .trace_setting(trace_settings("simple", &[], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        setting(&read, "trace_rate"),
        ["1"],
        "unchanged by the refusals"
    );
    server.stop().await;

    // With a management port, the inference port only reads them.
    let server = Server::start_with(Repo::new().shipped("simple"), |s| {
        s.management_port = Some(0);
    })
    .await;
    let mut client = server.client().await;
    let err = client
        .trace_setting(trace_settings("", &[("trace_rate", &["2"])], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("switchyard.v1.Telemetry"),
        "{}",
        err.message()
    );
    server.stop().await;
}

/// `switchyard.v1.Telemetry` reads and changes the log filter; Triton's LogSettings reads the
/// same state, and with a management port cannot change it. (What the changes do to the printed
/// lines is checked against the real daemon in tests/python/test_log_settings.py.)
async fn the_log_filter_changes_at_run_time() {
    let server = Server::start_with(Repo::new().shipped("simple"), |s| {
        s.management_port = Some(0);
        s.management_token = Some("s3cret".into());
    })
    .await;
    let mut telemetry = telemetry_client(&server).await;
    let start = telemetry
        .get_logging(with_token(GetLoggingRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!((start.error, start.warning, start.info) == (true, true, true));
    assert_eq!(start.verbose_level, 0);

    let refused = telemetry
        .set_logging(SetLoggingRequest {
            verbose_level: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let changed = telemetry
        .set_logging(with_token(SetLoggingRequest {
            filter: Some("warn,switchyard::registry=debug".into()),
            info: Some(false),
            verbose_level: Some(2),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.filter, "warn,switchyard::registry=debug");
    assert!((changed.error, changed.warning, changed.info) == (true, true, false));
    assert_eq!(changed.verbose_level, 2);

    // A filter that does not parse changes nothing, not even the settings sent with it.
    let bad = telemetry
        .set_logging(with_token(SetLoggingRequest {
            filter: Some("switchyard=loud".into()),
            info: Some(true),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message()
            .contains("log filter 'switchyard=loud' is not valid"),
        "{}",
        bad.message()
    );
    let now = telemetry
        .get_logging(with_token(GetLoggingRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, changed);

    // Triton's view of the same state, read on the inference port.
    let mut client = server.client().await;
    let triton = client
        .log_settings(LogSettingsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let value = |name: &str| triton.settings[name].parameter_choice.clone().unwrap();
    use switchyard::grpc::pb::log_settings_response::setting_value::ParameterChoice;
    assert_eq!(value("log_info"), ParameterChoice::BoolParam(false));
    assert_eq!(value("log_verbose_level"), ParameterChoice::Uint32Param(2));
    let mut change = LogSettingsRequest::default();
    change.settings.insert(
        "log_info".into(),
        log_settings_request::SettingValue {
            parameter_choice: Some(
                log_settings_request::setting_value::ParameterChoice::BoolParam(true),
            ),
        },
    );
    let denied = client.log_settings(with_token(change)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("log settings are read-only on the inference port"),
        "{}",
        denied.message()
    );

    // An empty filter goes back to the start-up filter.
    let reset = telemetry
        .set_logging(with_token(SetLoggingRequest {
            filter: Some(String::new()),
            info: Some(true),
            verbose_level: Some(0),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset, start);
    server.stop().await;
}

/// `switchyard_trace_spans_total{outcome="exported"}` counts exactly what reached the receiver.
async fn exported_spans_are_counted(otlp: &Otlp, server: &Server) {
    let sample = |text: &str, outcome: &str| {
        support::sample_value(
            text,
            &format!("switchyard_trace_spans_total{{outcome=\"{outcome}\"}}"),
        )
    };
    otlp.flush().await;
    let scrape = server.scrape().await;
    let (exported, received) = (sample(&scrape, "exported"), otlp.received());
    let mut client = server.client().await;
    for _ in 0..3 {
        let body = support::simple_request("simple", &[1; 16], &[2; 16], 1);
        client.model_infer(body).await.unwrap();
    }
    otlp.flush().await;
    let scrape = server.scrape().await;
    let arrived = otlp.received() - received;
    assert!(
        arrived >= 9,
        "three requests leave at least 9 spans, {arrived} arrived"
    );
    assert_eq!(sample(&scrape, "exported") - exported, arrived as f64);
    assert_eq!(sample(&scrape, "queue_full"), 0.0);
    assert_eq!(sample(&scrape, "failed"), 0.0);
}
