//! Prometheus metrics in the text exposition format on `/metrics`. Triton's `nv_inference_*` names
//! and labels where the meaning is the same (so existing Triton dashboards work), our own
//! `switchyard_*` for the model lifecycle, traffic shares, rollouts, shadow traffic and latency
//! histograms; Triton's `nv_gpu_*` for each GPU's utilisation and memory. Values are read at scrape
//! time from the counters the request path and the lifecycle already keep, and from NVML; labels
//! are bounded (model, version, arm, outcome, gpu_uuid).
//!
//! The text is written here rather than through a metrics crate because Triton's counter names
//! carry no `_total` suffix, which the crates add to every counter.

use std::fmt::Write;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::registry::Registry;
use crate::registry::stats::VersionStats;

pub mod gpu;
mod traffic;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: name, type, help, and its samples (label pairs, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {value}", self.name, labels.join(","));
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per-version request families, in Triton's names.
fn request_families(registry: &Registry) -> Vec<Family> {
    let mut families = vec![
        Family::new(
            "nv_inference_request_success",
            "counter",
            "Successful inference requests, all batch sizes",
        ),
        Family::new(
            "nv_inference_request_failure",
            "counter",
            "Failed inference requests, all batch sizes",
        ),
        Family::new(
            "nv_inference_count",
            "counter",
            "Inferences performed (a batch of n counts n)",
        ),
        Family::new(
            "nv_inference_exec_count",
            "counter",
            "Model executions performed",
        ),
        Family::new(
            "nv_inference_request_duration_us",
            "counter",
            "Cumulative end-to-end inference request time, in microseconds",
        ),
        Family::new(
            "nv_inference_queue_duration_us",
            "counter",
            "Cumulative time requests waited for an instance, in microseconds",
        ),
        Family::new(
            "nv_inference_compute_input_duration_us",
            "counter",
            "Cumulative time preparing inputs, in microseconds",
        ),
        Family::new(
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative model execution time, in microseconds",
        ),
        Family::new(
            "nv_inference_compute_output_duration_us",
            "counter",
            "Cumulative time preparing outputs, in microseconds",
        ),
    ];
    for model in registry.models() {
        for version in model.snapshot().ready_versions() {
            let labels = || {
                vec![
                    ("model", model.name.clone()),
                    ("version", version.label().to_string()),
                ]
            };
            let values = version_values(&version.stats);
            for (family, value) in families.iter_mut().zip(values) {
                family.add(labels(), value);
            }
        }
    }
    families
}

fn version_values(stats: &VersionStats) -> [f64; 9] {
    use std::sync::atomic::Ordering::Relaxed;
    let (ok, ok_ns) = stats.success.read();
    let (failed, failed_ns) = stats.fail.read();
    let us = |ns: u64| ns as f64 / 1e3;
    [
        ok as f64,
        failed as f64,
        stats.inference_count.load(Relaxed) as f64,
        stats.execution_count.load(Relaxed) as f64,
        us(ok_ns + failed_ns),
        us(stats.queue.read().1),
        us(stats.compute_input.read().1),
        us(stats.compute_infer.read().1),
        us(stats.compute_output.read().1),
    ]
}

/// Lifecycle families: loads, their durations, swaps, retirements, readiness per version.
fn lifecycle_families(registry: &Registry) -> Vec<Family> {
    let mut loads = Family::new(
        "switchyard_model_loads_total",
        "counter",
        "Version loads, by outcome",
    );
    let mut seconds = Family::new(
        "switchyard_model_load_seconds_total",
        "counter",
        "Time spent loading and warming versions",
    );
    let mut swaps = Family::new(
        "switchyard_model_swaps_total",
        "counter",
        "Snapshots published for a model",
    );
    let mut retired = Family::new(
        "switchyard_model_retired_versions_total",
        "counter",
        "Serving versions retired by a swap",
    );
    for (model, counts) in registry.events.counts() {
        loads.add(
            vec![("model", model.clone()), ("outcome", "success".into())],
            counts.loads as f64,
        );
        loads.add(
            vec![("model", model.clone()), ("outcome", "failure".into())],
            counts.load_failures as f64,
        );
        seconds.add(
            vec![("model", model.clone())],
            counts.load_nanos as f64 / 1e9,
        );
        swaps.add(vec![("model", model.clone())], counts.swaps as f64);
        retired.add(vec![("model", model)], counts.retirements as f64);
    }
    let mut ready = Family::new(
        "switchyard_model_version_ready",
        "gauge",
        "1 when the version serves, 0 when it is selected but not ready",
    );
    for model in registry.models() {
        for (version, status) in &model.snapshot().versions {
            let value = if status.serving.is_some() { 1.0 } else { 0.0 };
            ready.add(
                vec![
                    ("model", model.name.clone()),
                    ("version", version.to_string()),
                ],
                value,
            );
        }
    }
    vec![loads, seconds, swaps, retired, ready]
}

/// What became of the spans finished for export (process-wide, across exporters).
fn trace_families() -> Vec<Family> {
    let counts = super::otlp::span_counts();
    let mut spans = Family::new(
        "switchyard_trace_spans_total",
        "counter",
        "Spans finished for export, by outcome: exported (the receiver took them), queue_full \
         (dropped: the export queue was full), failed (the export failed or the receiver \
         rejected them)",
    );
    for (outcome, count) in [
        ("exported", counts.exported),
        ("queue_full", counts.queue_full),
        ("failed", counts.failed),
    ] {
        spans.add(vec![("outcome", outcome.into())], count as f64);
    }
    vec![spans]
}

/// The whole exposition text, with `gpus` read at this scrape.
pub fn render(registry: &Registry, gpus: &[gpu::GpuSample]) -> String {
    let mut out = String::new();
    for family in request_families(registry)
        .iter()
        .chain(&lifecycle_families(registry))
        .chain(&traffic::families(registry))
        .chain(&gpu::families(gpus))
        .chain(&trace_families())
    {
        family.write(&mut out);
    }
    traffic::latency_histograms(registry, &mut out);
    out
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    // NVML calls block on the driver: off the request threads.
    let gpus = tokio::task::spawn_blocking(gpu::sample)
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&registry, &gpus),
    )
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
