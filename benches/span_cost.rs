//! The daemon's own cost of tracing one request, in process: the server span of a `ModelInfer`
//! call started and finished as the gRPC service does it, with its `queue` and `execute` children
//! made as a request run alone makes them, all exported at sampling 1.0 to the OTLP receiver
//! given as the only argument (`http://HOST:PORT`, e.g. `benches/otlp_sink.rs`; `off` runs the
//! same loop with trace export off). Each round of 100,000 requests ends once all its spans are
//! exported, and counts the CPU time of every thread of the process (the request loop, the export
//! thread, the runtime's), so the export is part of the cost and time spent waiting is not (the
//! scheduler's counts here are in steps of a few milliseconds, a percent of a round). Prints the median, fastest and slowest of 7 rounds, in CPU nanoseconds per request, and the
//! span counts: none may be lost to a full queue (`OTEL_BSP_MAX_QUEUE_SIZE` must hold a round's
//! 300,000 spans), or the figures are too low.
//!
//! `bash benches/span_cost.sh` builds it, starts a receiver and runs it.

use std::time::{Duration, SystemTime};

use switchyard::executor::Phases;
use switchyard::grpc::trace::RequestTrace;
use switchyard::telemetry::otlp::span_counts;
use switchyard::telemetry::request_spans::{self, RunInfo};
use switchyard::telemetry::tracing::Tracing;

const ROUNDS: usize = 7;
const REQUESTS: u32 = 100_000;

fn main() {
    let endpoint = std::env::args()
        .nth(1)
        .expect("usage: span_cost http://HOST:PORT | off");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let endpoint = (endpoint != "off").then_some(endpoint.as_str());
    let (tracing, _tracer) = Tracing::start(endpoint, 1.0).expect("trace export starts");
    let metadata = tonic::metadata::MetadataMap::new();
    let phases = Phases {
        input: Duration::from_micros(1),
        infer: Duration::from_micros(3),
        output: Duration::from_micros(1),
    };
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let cpu = process_cpu();
        for _ in 0..REQUESTS {
            let trace = RequestTrace::start(&metadata, "ModelInfer", "simple", "");
            runtime.block_on(trace.run(async {
                let Some(parent) = request_spans::current() else {
                    return;
                };
                let run = RunInfo {
                    started: Some(SystemTime::now()),
                    instance: 0,
                    batch_size: 1,
                    batch_span: None,
                };
                request_spans::request_phases(&parent, Duration::from_micros(5), phases, &run);
            }));
            trace.finish(Some("1"), None);
        }
        // Every span of the round exported: its export is part of its cost.
        tracing.flush();
        rounds.push((process_cpu() - cpu).as_nanos() as f64 / f64::from(REQUESTS));
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "span_cost: {:.0} CPU ns per request (median of {ROUNDS} rounds; fastest {:.0}, slowest {:.0}); \
         spans {:?}",
        rounds[ROUNDS / 2],
        rounds[0],
        rounds[ROUNDS - 1],
        span_counts()
    );
}

/// CPU time used so far by every thread of this process (the request loop, the export thread,
/// the runtime's), in nanoseconds as the scheduler counts it (`/proc/self/task/*/schedstat`).
fn process_cpu() -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task (Linux)");
    let nanos: u64 = tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(nanos)
}
