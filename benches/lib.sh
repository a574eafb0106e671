# Shared by the benchmark scripts: `source benches/lib.sh NAME` after `set -euo pipefail`.
# Provides log/die (prefixed with NAME), free_port, listening_addr, and PIDS: servers started with
# setsid and appended to PIDS are stopped, process group and all (Triton's python-backend stubs
# included), when the script exits. start_otlp_sink DIR starts a live OTLP receiver.

BENCH_NAME=${1:-bench}

log() { echo "$BENCH_NAME: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# listening_addr LOG: the gRPC address from a switchyard JSON log's `listening` line (empty until
# it is there).
listening_addr() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    f = r.get("fields", {})
    if f.get("message") == "listening" and f.get("service") == sys.argv[2]:
        print(f["addr"]); break
' "$1" "${2:-grpc}"
}

# start_switchyard BIN REPO LOG [SERVE_ARGS...]: serves REPO on ports it picks, in a process group
# of its own; sets SY_PID, and SY_ADDR from its `listening` line (logged once the models are
# loaded). The caller stops it (PIDS, or a trap of its own).
start_switchyard() {
    local bin=$1 repo=$2 logf=$3
    shift 3
    setsid "$bin" serve --model-repository "$repo" --grpc-address 127.0.0.1 --grpc-port 0 \
        --metrics-port 0 --log-format json "$@" >"$logf" 2>&1 &
    SY_PID=$!
    SY_ADDR=
    for _ in $(seq 1200); do
        kill -0 "$SY_PID" 2>/dev/null || die "switchyard exited early; see $logf"
        SY_ADDR=$(listening_addr "$logf")
        [[ -n $SY_ADDR ]] && break
        sleep 0.1
    done
    [[ -n $SY_ADDR ]] || die "switchyard did not log its address; see $logf"
}

PIDS=()
bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_binary NAME: builds the bench target NAME (release) and prints its executable's path.
bench_binary() {
    local bin
    bin=$(cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1" | tail -1)
    [[ -x $bin ]] || die "cannot build the $1 bench binary"
    echo "$bin"
}

# start_otlp_sink DIR: builds and starts benches/otlp_sink.rs (a live OTLP/gRPC receiver that
# counts spans) with its output in DIR; its PID goes to PIDS and its address to SINK_ADDR.
# OTLP_SINK_DECODE=1 makes it decode every span in full, as a collector does.
start_otlp_sink() {
    local dir=$1 sink
    sink=$(bench_binary otlp_sink)
    local args=(--port 0)
    [[ ${OTLP_SINK_DECODE:-0} == 1 ]] && args+=(--decode)
    setsid "$sink" "${args[@]}" >"$dir/sink.out" 2>"$dir/sink.err" &
    PIDS+=($!)
    until grep -q listening "$dir/sink.out" 2>/dev/null; do sleep 0.1; done
    SINK_ADDR=$(awk '/listening/ {print $2}' "$dir/sink.out")
}

# start_triton VENV REPO LOG: starts NVIDIA Triton from nvidia-pytriton installed in VENV (an
# absolute path) on free ports, serving REPO with the python backend; its PID goes to PIDS and its
# gRPC address to TRITON_ADDR. The caller waits for readiness.
start_triton() {
    local venv=$1 repo=$2 logf=$3 ts pyv tg th tm
    ts=$(echo "$venv"/lib/python3*/site-packages/pytriton/tritonserver)
    [[ -x $ts/bin/tritonserver ]] || die "tritonserver not found under $ts"
    pyv=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    # The python backend looks for its stub beside libtriton_python.so.
    cp -n "$ts/python_backend_stubs/$pyv/triton_python_backend_stub" "$ts/backends/python/" 2>/dev/null || true
    tg=$(free_port) th=$(free_port) tm=$(free_port)
    log "starting triton (grpc $tg, http $th, metrics $tm)"
    # The venv first on PATH: the stub process imports numpy (and onnxruntime) from it.
    PATH=$venv/bin:$PATH PYTHONPATH=$ts/backends/python \
        setsid "$ts/bin/tritonserver" --model-repository="$repo" \
        --backend-directory="$ts/backends" --cache-directory="$ts/caches" \
        --grpc-port "$tg" --http-port "$th" --metrics-port "$tm" >"$logf" 2>&1 &
    PIDS+=($!)
    TRITON_ADDR=127.0.0.1:$tg
}
