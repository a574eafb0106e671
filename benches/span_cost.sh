#!/usr/bin/env bash
# The daemon's own cost of tracing one request, in process (benches/span_cost.rs), against a live
# OTLP receiver (benches/otlp_sink.rs), with trace export off as the loop's own cost. Each binary
# runs SPAN_COST_RUNS times (default 4), interleaved; it counts its own CPU time, not the
# receiver's.
#
#   bash benches/span_cost.sh [BENCH_BIN...]   # default: the span_cost bench of this tree
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${SPAN_COST_RUNS:-4}
OUT=$(mktemp -d -t switchyard-span-cost.XXXXXX)
source benches/lib.sh span_cost

BINS=("$@")
if ((${#BINS[@]} == 0)); then
    BINS=("$(bench_binary span_cost)")
fi
start_otlp_sink "$OUT"
# A round's spans (300,000) all fit in the queue: none is dropped.
export OTEL_BSP_MAX_QUEUE_SIZE=400000
for run in $(seq "$RUNS"); do
    for bin in "${BINS[@]}"; do
        echo "$bin traced, run $run: $("$bin" "http://$SINK_ADDR")"
    done
done
for bin in "${BINS[@]}"; do
    echo "$bin export off: $("$bin" off)"
done
log "receiver: $(tail -1 "$OUT/sink.err")"
