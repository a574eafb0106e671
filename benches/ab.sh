#!/usr/bin/env bash
# Two or more switchyard builds side by side: each round starts each binary in turn on the same
# repository, loads one model with `switchyard perf` and stops it, so the builds share the
# machine's state round by round; prints every round and the median per binary.
#
#   bash benches/ab.sh BIN_A BIN_B [BIN...]
#
# The repository holds `simple` and two copies of `tabular_mlp`: `tabular_mlp_batched` (its
# shipped dynamic_batching) and `tabular_mlp_unbatched` (none).
# Environment: AB_MODEL=tabular_mlp_batched AB_CONCURRENCY=32 AB_ROUNDS=4 AB_SECS=6
#   AB_CLIENT=PATH  the switchyard binary that runs `perf` (default: the first one)
#   AB_TRACE=1      every daemon traces every request (sampling 1.0) to one live OTLP receiver
#                   (benches/otlp_sink.rs, built here), which counts the spans
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 2)) || { echo "usage: bash benches/ab.sh BIN_A BIN_B [BIN...]" >&2; exit 64; }
MODEL=${AB_MODEL:-tabular_mlp_batched}
CONCURRENCY=${AB_CONCURRENCY:-32}
ROUNDS=${AB_ROUNDS:-4}
SECS=${AB_SECS:-6}
CLIENT=${AB_CLIENT:-$1}
OUT=$(mktemp -d -t switchyard-ab.XXXXXX)
# log, die, listening_addr, start_switchyard (SY_PID, SY_ADDR), and PIDS stopped at exit.
source benches/lib.sh ab

REPO=$OUT/repo
for copy in batched unbatched; do
    mkdir -p "$REPO/tabular_mlp_$copy/1"
    cp model_repository/tabular_mlp/1/model.onnx "$REPO/tabular_mlp_$copy/1/"
    sed "s/name: \"tabular_mlp\"/name: \"tabular_mlp_$copy\"/" \
        model_repository/tabular_mlp/config.pbtxt >"$REPO/tabular_mlp_$copy/config.pbtxt"
done
sed -i '/dynamic_batching/d' "$REPO/tabular_mlp_unbatched/config.pbtxt"
cp -r model_repository/simple "$REPO/"

SERVE_ARGS=()
if [[ ${AB_TRACE:-0} == 1 ]]; then
    start_otlp_sink "$OUT"
    SERVE_ARGS=(--otlp-endpoint "http://$SINK_ADDR"
        --trace-sampling-ratio 1.0)
fi

for round in $(seq "$ROUNDS"); do
    for i in $(seq $#); do
        bin=${!i}
        start_switchyard "$bin" "$REPO" "$OUT/daemon.log" ${SERVE_ARGS[@]+"${SERVE_ARGS[@]}"}
        PIDS+=("$SY_PID")
        "$CLIENT" perf -u "$SY_ADDR" -m "$MODEL" --concurrency "$CONCURRENCY" \
            --measurement-secs "$SECS" --warmup-secs 1 --json "$OUT/$i-$round.json" \
            >>"$OUT/perf.log" 2>&1 || die "perf failed; see $OUT/perf.log"
        kill "$SY_PID"
        wait "$SY_PID" 2>/dev/null || true
        log "round $round: $bin done"
    done
done
python3 - "$OUT" "$ROUNDS" "$@" <<'PY'
import json, statistics, sys
out, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i, name in enumerate(bins, 1):
    runs = [json.load(open(f"{out}/{i}-{r}.json"))[0] for r in range(1, rounds + 1)]
    rps = [r["throughput_rps"] for r in runs]
    p99 = statistics.median(r["latency_us"]["p99"] for r in runs)
    errors = sum(r["error_count"] for r in runs)
    print(f"{name}: median {statistics.median(rps):9.1f} req/s  p99 {p99:6.0f} us  "
          f"rounds {[round(x) for x in rps]}  errors {errors}")
PY
if [[ ${AB_TRACE:-0} == 1 ]]; then
    log "receiver: $(tail -1 "$OUT/sink.err")"
fi
