#!/usr/bin/env bash
# Side-by-side load benchmark of the `simple` model on three servers, in one run on this machine:
#   triton     - NVIDIA Triton (from the nvidia-pytriton wheel) with the python-backend twin in benches/triton
#   switchyard - target/release/switchyard serve --model-repository model_repository
#   bare       - benches/bare_tonic.rs, a tonic server that only adds/subtracts (the tonic ceiling)
# The same `switchyard perf` options are used against all three, in interleaved rounds (the order
# rotates each round), and the medians are printed side by side with the ratios.
#
# Environment (all optional):
#   COMPARE_ROUNDS=3  COMPARE_SECS=5  COMPARE_WARMUP_SECS=1  COMPARE_CONCURRENCY=8  COMPARE_BATCH=1
#   COMPARE_CONNECTIONS=4   HTTP/2 connections per perf run
#   COMPARE_TARGETS="triton switchyard bare"   subset/order of targets; `baseline` adds a second
#                           switchyard binary, COMPARE_BASELINE_BIN (e.g. a build of an older commit)
#   COMPARE_SKIP_BUILD=1    use the binaries already in target/ (bare: COMPARE_BARE_BIN or the newest one)
#   COMPARE_VENV=.venv-peers   COMPARE_READY_SECS=120   COMPARE_OUT=DIR (keep logs and JSON there)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${COMPARE_ROUNDS:-3}
SECS=${COMPARE_SECS:-5}
WARMUP=${COMPARE_WARMUP_SECS:-1}
CONCURRENCY=${COMPARE_CONCURRENCY:-8}
BATCH=${COMPARE_BATCH:-1}
CONNECTIONS=${COMPARE_CONNECTIONS:-4}
TARGETS=(${COMPARE_TARGETS:-triton switchyard bare})
VENV=${COMPARE_VENV:-.venv-peers}
READY_SECS=${COMPARE_READY_SECS:-120}
MODEL=simple
OUT=${COMPARE_OUT:-$(mktemp -d -t switchyard-compare.XXXXXX)}
mkdir -p "$OUT"

# log, die, free_port, and PIDS stopped (process groups) at exit.
source "$ROOT/benches/lib.sh" compare

# wait_ready NAME PID HOSTPORT: until ServerReady, and ModelReady(simple) unless UNIMPLEMENTED.
wait_ready() {
    local name=$1 pid=$2 addr=$3 deadline=$((SECONDS + READY_SECS))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited early; see $OUT/$name.log"
        if "$VENV/bin/python" - "$addr" "$MODEL" <<'EOF' 2>/dev/null; then
import sys
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
c = g.InferenceServerClient(sys.argv[1])
if not c.is_server_ready():
    sys.exit(1)
try:
    sys.exit(0 if c.is_model_ready(sys.argv[2]) else 1)
except InferenceServerException as e:
    sys.exit(0 if "UNIMPLEMENTED" in str(e.status()) else 1)
EOF
            log "$name ready at $addr"
            return 0
        fi
        sleep 0.5
    done
    die "$name not ready after ${READY_SECS}s; see $OUT/$name.log"
}

# --- peers' Python environment (Triton from nvidia-pytriton, tritonclient for readiness checks) ---
if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q nvidia-pytriton 'tritonclient[all]' numpy
fi

# --- build ---
SY=$ROOT/target/release/switchyard
if [[ -z ${COMPARE_SKIP_BUILD:-} ]]; then
    log "cargo build --release"
    cargo build --release
    log "cargo bench --bench bare_tonic --no-run"
    BARE=$(bench_binary bare_tonic)
else
    BARE=${COMPARE_BARE_BIN:-$(ls -t "$ROOT"/target/release/deps/bare_tonic-* 2>/dev/null | grep -v '\.d$' | head -1)}
fi
[[ -x $SY ]] || die "$SY missing"
[[ -n $BARE && -x $BARE ]] || die "bare_tonic bench executable not found"

declare -A ADDR
# --- Triton ---
if [[ " ${TARGETS[*]} " == *" triton "* ]]; then
    start_triton "$ROOT/$VENV" "$ROOT/benches/triton" "$OUT/triton.log"
    ADDR[triton]=$TRITON_ADDR
    wait_ready triton "${PIDS[-1]}" "${ADDR[triton]}"
fi

# --- Switchyard ---
if [[ " ${TARGETS[*]} " == *" switchyard "* ]]; then
    SP=$(free_port)
    log "starting switchyard on $SP"
    setsid "$SY" serve --model-repository model_repository --grpc-address 127.0.0.1 --grpc-port "$SP" --metrics-port 0 \
        >"$OUT/switchyard.log" 2>&1 &
    PIDS+=($!)
    ADDR[switchyard]=127.0.0.1:$SP
    wait_ready switchyard "${PIDS[-1]}" "${ADDR[switchyard]}"
fi

# --- a second switchyard binary, to compare two builds in one run ---
if [[ " ${TARGETS[*]} " == *" baseline "* ]]; then
    BASE=${COMPARE_BASELINE_BIN:-}
    [[ -n $BASE && -x $BASE ]] || die "target baseline needs COMPARE_BASELINE_BIN"
    BP=$(free_port)
    log "starting baseline ($BASE) on $BP"
    setsid "$BASE" serve --model-repository model_repository --grpc-address 127.0.0.1 --grpc-port "$BP" \
        >"$OUT/baseline.log" 2>&1 &
    PIDS+=($!)
    ADDR[baseline]=127.0.0.1:$BP
    wait_ready baseline "${PIDS[-1]}" "${ADDR[baseline]}"
fi

# --- bare tonic ---
if [[ " ${TARGETS[*]} " == *" bare "* ]]; then
    setsid "$BARE" --port 0 >"$OUT/bare.log" 2>&1 &
    PIDS+=($!)
    deadline=$((SECONDS + READY_SECS))
    until grep -q '^listening ' "$OUT/bare.log"; do
        kill -0 "${PIDS[-1]}" 2>/dev/null || die "bare_tonic exited early; see $OUT/bare.log"
        ((SECONDS < deadline)) || die "bare_tonic did not start"
        sleep 0.1
    done
    ADDR[bare]=$(sed -n 's/^listening //p' "$OUT/bare.log" | head -1)
    wait_ready bare "${PIDS[-1]}" "${ADDR[bare]}"
fi

# --- interleaved rounds ---
n=${#TARGETS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        t=${TARGETS[$(((i + r) % n))]}
        log "round $((r + 1))/$ROUNDS: $t"
        "$SY" perf --url "http://${ADDR[$t]}" -m "$MODEL" --concurrency "$CONCURRENCY" -b "$BATCH" \
            --connections "$CONNECTIONS" --measurement-secs "$SECS" --warmup-secs "$WARMUP" \
            --json "$OUT/$t-$r.json" >"$OUT/$t-$r.txt" 2>>"$OUT/perf.log" ||
            die "perf against $t failed; see $OUT/perf.log"
    done
done

# --- summary ---
python3 - "$OUT" "${TARGETS[@]}" <<'EOF'
import glob, json, os, statistics, sys

out, targets = sys.argv[1], sys.argv[2:]
med = {}
for t in targets:
    runs = [json.load(open(p))[0] for p in sorted(glob.glob(os.path.join(out, f"{t}-*.json")))]
    pick = lambda f: statistics.median(f(r) for r in runs)
    med[t] = {
        "rounds": len(runs),
        "req/s": pick(lambda r: r["throughput_rps"]),
        "p50 us": pick(lambda r: r["latency_us"]["p50"]),
        "p90 us": pick(lambda r: r["latency_us"]["p90"]),
        "p99 us": pick(lambda r: r["latency_us"]["p99"]),
        "errors": sum(r["error_count"] for r in runs),
    }
r0 = json.load(open(sorted(glob.glob(os.path.join(out, f"{targets[0]}-*.json")))[0]))[0]
print(f"\nmodel {r0['model']}, concurrency {r0['concurrency']}, batch {r0['batch']}, "
      f"{r0['duration_secs']:g}s per run, medians of {med[targets[0]]['rounds']} rounds")
cols = ["req/s", "p50 us", "p90 us", "p99 us", "errors"]
print(f"{'target':<12}" + "".join(f"{c:>12}" for c in cols))
for t in targets:
    print(f"{t:<12}" + "".join(f"{med[t][c]:>12.1f}" if c == "req/s" else f"{med[t][c]:>12.0f}" for c in cols))

def ratio(a, b, key):
    if a in med and b in med and med[b][key]:
        print(f"{a}/{b} {key:<7} {med[a][key] / med[b][key]:.3f}")

print()
ratio("switchyard", "triton", "req/s")
ratio("switchyard", "bare", "req/s")
ratio("switchyard", "bare", "p99 us")
ratio("switchyard", "baseline", "req/s")
ratio("baseline", "bare", "req/s")
if any(m["errors"] for m in med.values()):
    print("WARNING: some runs had errors; see the JSON files")
print(f"(logs and JSON in {out})")
EOF
