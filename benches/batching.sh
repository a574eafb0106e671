#!/usr/bin/env bash
# Dynamic batching on and off, in one run on this machine: one release daemon serving two copies of
# the shipped MLP (`classifier` version 2, FP32 [-1,64] -> [-1,10]) from a temporary repository:
#   classifier_batched    dynamic_batching { max_queue_delay_microseconds: $BATCH_DELAY_US }
#   classifier_unbatched  no dynamic_batching: every request runs alone
# Both have one CPU instance. `switchyard perf` drives each at every concurrency level, in
# interleaved rounds (the order alternates each round); medians per level are printed side by side.
#
# Environment (all optional):
#   BATCH_ROUNDS=3  BATCH_SECS=5  BATCH_WARMUP_SECS=1  BATCH_CONCURRENCY=1,8,32,64
#   BATCH_DELAY_US=500   max_queue_delay_microseconds of the batched copy
#   BATCH_CONNECTIONS=4  HTTP/2 connections per perf run
#   BATCH_SKIP_BUILD=1   use target/release/switchyard as it is
#   BATCH_BIN=PATH       run this switchyard binary instead (implies BATCH_SKIP_BUILD)
#   BATCH_OUT=DIR        keep the repository, logs and JSON there
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BATCH_ROUNDS:-3}
SECS=${BATCH_SECS:-5}
WARMUP=${BATCH_WARMUP_SECS:-1}
CONCURRENCY=${BATCH_CONCURRENCY:-1,8,32,64}
DELAY_US=${BATCH_DELAY_US:-500}
CONNECTIONS=${BATCH_CONNECTIONS:-4}
OUT=${BATCH_OUT:-$(mktemp -d -t switchyard-batching.XXXXXX)}
mkdir -p "$OUT"

PID=
cleanup() {
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "batching: $*" >&2; }
die() { log "error: $*"; exit 1; }

SY=${BATCH_BIN:-$ROOT/target/release/switchyard}
if [[ -z ${BATCH_SKIP_BUILD:-} && -z ${BATCH_BIN:-} ]]; then
    log "cargo build --release"
    cargo build --release --bin switchyard
fi
[[ -x $SY ]] || die "$SY missing"

# --- the repository: two copies of classifier version 2 ---
REPO=$OUT/repo
rm -rf "$REPO"
for name in classifier_batched classifier_unbatched; do
    mkdir -p "$REPO/$name/1"
    cp model_repository/classifier/2/model.onnx "$REPO/$name/1/model.onnx"
    extra=""
    if [[ $name == classifier_batched ]]; then
        extra="dynamic_batching { max_queue_delay_microseconds: $DELAY_US }"
    fi
    cat >"$REPO/$name/config.pbtxt" <<EOF
name: "$name"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "features" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
$extra
EOF
done

# --- the daemon, on a port it picks; its JSON `listening` line gives the address ---
"$SY" serve --model-repository "$REPO" --grpc-address 127.0.0.1 --grpc-port 0 --log-format json \
    >"$OUT/switchyard.log" 2>&1 &
PID=$!
ADDR=
for _ in $(seq 600); do
    kill -0 "$PID" 2>/dev/null || die "switchyard exited early; see $OUT/switchyard.log"
    ADDR=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    f = r.get("fields", {})
    if f.get("message") == "listening" and f.get("service") == "grpc":
        print(f["addr"]); break
' "$OUT/switchyard.log")
    [[ -n $ADDR ]] && break
    sleep 0.1
done
[[ -n $ADDR ]] || die "switchyard did not log its address; see $OUT/switchyard.log"
log "switchyard at $ADDR (max_queue_delay ${DELAY_US} µs for the batched copy)"

# --- interleaved rounds ---
TARGETS=(classifier_batched classifier_unbatched)
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < 2; i++)); do
        t=${TARGETS[$(((i + r) % 2))]}
        log "round $((r + 1))/$ROUNDS: $t"
        "$SY" perf --url "http://$ADDR" -m "$t" --concurrency "$CONCURRENCY" \
            --connections "$CONNECTIONS" --measurement-secs "$SECS" --warmup-secs "$WARMUP" \
            --json "$OUT/$t-$r.json" >"$OUT/$t-$r.txt" 2>>"$OUT/perf.log" ||
            die "perf against $t failed; see $OUT/perf.log"
    done
done

# --- summary ---
python3 - "$OUT" "$DELAY_US" "${TARGETS[@]}" <<'EOF'
import glob, json, os, statistics, sys

out, delay, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
med = {}
for t in targets:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{t}-*.json")))]
    for level in runs[0]:
        c = level["concurrency"]
        same = [next(x for x in run if x["concurrency"] == c) for run in runs]
        pick = lambda f: statistics.median(f(x) for x in same)
        med[(t, c)] = {
            "req/s": pick(lambda x: x["throughput_rps"]),
            "p50": pick(lambda x: x["latency_us"]["p50"]),
            "p99": pick(lambda x: x["latency_us"]["p99"]),
            "errors": sum(x["error_count"] for x in same),
            "rounds": len(same),
        }
levels = sorted({c for (_, c) in med})
print(f"\nclassifier (MLP, FP32 [1,64]), batch-1 requests, medians of {med[(targets[0], levels[0])]['rounds']} rounds; "
      f"batched copy: max_queue_delay {delay} µs")
print(f"{'conc':>5} | {'batched req/s':>13} {'p50 µs':>8} {'p99 µs':>8} | "
      f"{'unbatched req/s':>15} {'p50 µs':>8} {'p99 µs':>8} | {'ratio':>6} | errors")
for c in levels:
    b, u = med[(targets[0], c)], med[(targets[1], c)]
    ratio = b["req/s"] / u["req/s"] if u["req/s"] else float("nan")
    print(f"{c:>5} | {b['req/s']:>13.1f} {b['p50']:>8.0f} {b['p99']:>8.0f} | "
          f"{u['req/s']:>15.1f} {u['p50']:>8.0f} {u['p99']:>8.0f} | {ratio:>6.2f} | "
          f"{b['errors']}/{u['errors']}")
print(f"(repository, logs and JSON in {out})")
EOF
