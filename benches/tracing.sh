#!/usr/bin/env bash
# Tracing overhead: `simple` at concurrency 8 against the daemon with traces off and with every
# request traced (sampling 1.0) into a live OTLP receiver (benches/otlp_sink.rs), in interleaved
# rounds on this machine; prints medians and the ratio traced / untraced.
# Environment: TRACING_ROUNDS=3 TRACING_SECS=5 TRACING_CONCURRENCY=8
#   OTLP_SINK_DECODE=1  the receiver decodes every span in full (default: it counts them, reading
#                       each span as an undecoded byte range, to take less of the shared CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${TRACING_ROUNDS:-3}
SECS=${TRACING_SECS:-5}
CONCURRENCY=${TRACING_CONCURRENCY:-8}
OUT=$(mktemp -d -t switchyard-tracing.XXXXXX)
# log, die, listening_addr, start_otlp_sink, and PIDS stopped (process groups) at exit.
source benches/lib.sh tracing

cargo build --release --quiet
start_otlp_sink "$OUT"

# start_daemon NAME EXTRA_ARGS...: starts a daemon in its own session (its PID kept in PIDS, in
# this shell, so it is stopped at exit); wait_addr NAME then prints its gRPC address.
start_daemon() {
    local name=$1; shift
    setsid target/release/switchyard serve --model-repository model_repository --grpc-address 127.0.0.1 \
        --grpc-port 0 --metrics-port 0 --model-control-mode none --log-format json "$@" >"$OUT/$name.log" 2>&1 &
    PIDS+=($!)
}
wait_addr() {
    local addr=
    for _ in $(seq 600); do
        addr=$(listening_addr "$OUT/$1.log")
        [ -n "$addr" ] && { echo "$addr"; return; }
        sleep 0.1
    done
    die "$1 did not log its address; see $OUT/$1.log"
}
start_daemon off
start_daemon on --otlp-endpoint "http://$SINK_ADDR" --trace-sampling-ratio 1.0
OFF=$(wait_addr off)
ON=$(wait_addr on)

for round in $(seq "$ROUNDS"); do
    for target in off on; do
        addr=$OFF; [ "$target" = on ] && addr=$ON
        target/release/switchyard perf -u "$addr" -m simple --concurrency "$CONCURRENCY" \
            --measurement-secs "$SECS" --warmup-secs 1 --json "$OUT/$target-$round.json" >/dev/null
        echo "tracing: round $round $target done" >&2
    done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for t in ("off", "on"):
    runs = [json.load(open(f"{out}/{t}-{r}.json"))[0] for r in range(1, rounds + 1)]
    res[t] = (statistics.median(r["throughput_rps"] for r in runs),
              statistics.median(r["latency_us"]["p99"] for r in runs),
              [round(r["throughput_rps"]) for r in runs], sum(r["error_count"] for r in runs))
for t, (rps, p99, each, errors) in res.items():
    print(f"tracing {t:3}: median {rps:9.1f} req/s  p99 {p99:6.0f} us  rounds {each}  errors {errors}")
print(f"traced / untraced throughput: {res['on'][0] / res['off'][0]:.3f}")
PY
# Completeness: requests the traced daemon served (its own counter) against the spans that
# reached the receiver once the daemon has exited (its exporter flushes on the way out). Each
# request of `simple` leaves three spans (request, queue, execute).
METRICS_ON=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        f = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if f.get("message") == "listening" and f.get("service") == "metrics":
        print(f["addr"]); break
' "$OUT/on.log")
SERVED=$(python3 -c '
import sys, urllib.request
text = urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines()
              if l.startswith("nv_inference_request_success{") and "model=\"simple\"" in l)))
' "$METRICS_ON")
ON_PID=${PIDS[-1]}
kill -TERM "$ON_PID"
wait "$ON_PID" 2>/dev/null || true
# The receiver prints its count once a second: wait until it stops growing.
RECEIVED=-1
for _ in $(seq 30); do
    sleep 1
    now=$(tail -1 "$OUT/sink.err" | awk '{print $3}')
    [[ $now == "$RECEIVED" ]] && break
    RECEIVED=$now
done
echo "traced requests served: $SERVED; spans received: $RECEIVED ($(python3 -c "print(round($RECEIVED / max($SERVED, 1), 3))") per request, 3 expected)"
