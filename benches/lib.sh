# Shared by the benchmark scripts: `source benches/lib.sh NAME` after `set -euo pipefail`.
# Provides log/die (prefixed with NAME), free_port, listening_addr, and PIDS: servers started with
# setsid and appended to PIDS are stopped, process group and all (Triton's python-backend stubs
# included), when the script exits.

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
    if f.get("message") == "listening" and f.get("service") == "grpc":
        print(f["addr"]); break
' "$1"
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
