#!/usr/bin/env bash
# Dynamic batching on and off, in one run on this machine, on switchyard and on NVIDIA Triton.
#
# The model is a shipped one with one input and one output (BATCH_MODEL, default `tabular_mlp`:
# FP32 [-1,64] -> Gemm 64->1024->1024->10 -> [-1,10]; `classifier`, the small MLP, also works), its
# newest version. Two copies of it are served by one release switchyard daemon from a temporary
# repository:
#   <model>_batched    dynamic_batching { max_queue_delay_microseconds: $BATCH_DELAY_US }
#   <model>_unbatched  no dynamic_batching: every request runs alone
# and, unless BATCH_TRITON=0, the same two copies by NVIDIA Triton (`tritonserver` from the
# nvidia-pytriton wheel, python backend): benches/triton_mlp/model.py loads the same model.onnx with
# onnxruntime (one intra-op thread, as switchyard's tract instance uses one thread) and, when Triton's
# dynamic batcher hands it several requests, runs them as one batch.
# Every copy has max_batch_size 64 and one CPU instance. `switchyard perf` drives each copy on each
# server at every concurrency level, in interleaved rounds (the order rotates each round); medians
# per level are printed side by side with the ratios, plus the servers' own statistics (mean batch
# size, compute per batch).
#
# Environment (all optional):
#   BATCH_MODEL=tabular_mlp   a model directory of model_repository/
#   BATCH_ROUNDS=3  BATCH_SECS=5  BATCH_WARMUP_SECS=1  BATCH_CONCURRENCY=1,8,32,64
#   BATCH_DELAY_US=500   max_queue_delay_microseconds of the batched copies
#   BATCH_CONNECTIONS=4  HTTP/2 connections per perf run
#   BATCH_TRITON=1       0: switchyard only (no Python environment needed)
#   BATCH_TRITON_UNBATCHED=1   0: leave out Triton without dynamic batching
#   BATCH_ORT_THREADS=1  onnxruntime intra-op threads of the Triton model
#   BATCH_VENV=.venv-peers   Python environment for Triton (created and filled on first use)
#   BATCH_READY_SECS=120
#   BATCH_SKIP_BUILD=1   use target/release/switchyard as it is
#   BATCH_BIN=PATH       run this switchyard binary instead (implies BATCH_SKIP_BUILD)
#   BATCH_OUT=DIR        keep the repositories, logs and JSON there (summary.json: the medians)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=${BATCH_MODEL:-tabular_mlp}
ROUNDS=${BATCH_ROUNDS:-3}
SECS=${BATCH_SECS:-5}
WARMUP=${BATCH_WARMUP_SECS:-1}
CONCURRENCY=${BATCH_CONCURRENCY:-1,8,32,64}
DELAY_US=${BATCH_DELAY_US:-500}
CONNECTIONS=${BATCH_CONNECTIONS:-4}
TRITON=${BATCH_TRITON:-1}
TRITON_UNBATCHED=${BATCH_TRITON_UNBATCHED:-1}
ORT_THREADS=${BATCH_ORT_THREADS:-1}
VENV=${BATCH_VENV:-.venv-peers}
READY_SECS=${BATCH_READY_SECS:-120}
OUT=${BATCH_OUT:-$(mktemp -d -t switchyard-batching.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# log, die, free_port, and PIDS stopped (process groups) at exit.
source "$ROOT/benches/lib.sh" batching

SRC=model_repository/$MODEL
[[ -f $SRC/config.pbtxt ]] || die "$SRC/config.pbtxt missing"
VERSION=$(ls "$SRC" | grep -E '^[0-9]+$' | sort -n | tail -1)
[[ -n $VERSION && -f $SRC/$VERSION/model.onnx ]] || die "no $SRC/<version>/model.onnx"
ONNX=$ROOT/$SRC/$VERSION/model.onnx

SY=${BATCH_BIN:-$ROOT/target/release/switchyard}
if [[ -z ${BATCH_SKIP_BUILD:-} && -z ${BATCH_BIN:-} ]]; then
    log "cargo build --release"
    cargo build --release --bin switchyard
fi
[[ -x $SY ]] || die "$SY missing"

# --- Python environment for Triton: nvidia-pytriton (tritonserver), tritonclient, onnxruntime ---
PY=
if [[ $TRITON == 1 ]]; then
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q nvidia-pytriton 'tritonclient[all]' numpy
    fi
    if ! "$VENV/bin/python" -c 'import onnxruntime, tritonclient.grpc' 2>/dev/null; then
        log "installing onnxruntime and tritonclient into $VENV"
        "$VENV/bin/pip" install -q onnxruntime 'tritonclient[all]'
    fi
    PY=$ROOT/$VENV/bin/python
elif [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import tritonclient.grpc' 2>/dev/null; then
    PY=$ROOT/$VENV/bin/python # only for the statistics at the end
fi

# --- the repositories: two copies of the model for each server ---
# make_config SERVER NAME BATCHED: the source config with its name, platform/backend,
# max_batch_size, instance_group and dynamic_batching replaced.
make_config() {
    python3 - "$SRC/config.pbtxt" "$1" "$2" "$3" "$DELAY_US" "$ORT_THREADS" <<'EOF'
import re, sys

path, server, name, batched, delay, threads = sys.argv[1:]
text = open(path).read()

def drop_block(text, key):
    # Remove a top-level `key {...}`, `key: {...}` or `key [ ... ]`, nested brackets included.
    m = re.search(r"^" + key + r"\s*:?\s*([\[{])", text, re.M)
    if not m:
        return text
    i, depth = m.end(1) - 1, 0
    for j in range(i, len(text)):
        if text[j] in "[{":
            depth += 1
        elif text[j] in "]}":
            depth -= 1
            if depth == 0:
                return text[: m.start()] + text[j + 1 :]
    raise SystemExit(f"unbalanced {key} block in {path}")

for key in ("instance_group", "dynamic_batching", "version_policy", "parameters"):
    text = drop_block(text, key)
text = re.sub(r"^(name|platform|backend|max_batch_size)\s*:.*\n?", "", text, flags=re.M)
head = f'name: "{name}"\n'
head += 'backend: "python"\n' if server == "triton" else 'platform: "onnxruntime_onnx"\n'
head += "max_batch_size: 64\n"
tail = "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
if batched == "1":
    tail += f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}\n"
if server == "triton":
    tail += (f'parameters [ {{ key: "intra_op_threads" value: {{ string_value: "{threads}" }} }},\n'
             f'             {{ key: "inter_op_threads" value: {{ string_value: "1" }} }} ]\n')
print(head + text.strip() + "\n" + tail, end="")
EOF
}

rm -rf "$OUT/repo" "$OUT/triton_repo"
for kind in batched unbatched; do
    b=0
    [[ $kind == batched ]] && b=1
    name=${MODEL}_$kind
    mkdir -p "$OUT/repo/$name/1"
    cp "$ONNX" "$OUT/repo/$name/1/model.onnx"
    make_config switchyard "$name" "$b" >"$OUT/repo/$name/config.pbtxt"
    if [[ $TRITON == 1 ]]; then
        mkdir -p "$OUT/triton_repo/$name/1"
        cp "$ONNX" "$OUT/triton_repo/$name/1/model.onnx"
        cp benches/triton_mlp/model.py "$OUT/triton_repo/$name/1/model.py"
        make_config triton "$name" "$b" >"$OUT/triton_repo/$name/config.pbtxt"
    fi
done

# wait_ready NAME PID HOSTPORT MODEL...: until ServerReady and ModelReady for each model.
wait_ready() {
    local name=$1 pid=$2 addr=$3 deadline=$((SECONDS + READY_SECS))
    shift 3
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited early; see $OUT/$name.log"
        if "$PY" - "$addr" "$@" <<'EOF' 2>/dev/null; then
import sys
import tritonclient.grpc as g
c = g.InferenceServerClient(sys.argv[1])
sys.exit(0 if c.is_server_ready() and all(c.is_model_ready(m) for m in sys.argv[2:]) else 1)
EOF
            log "$name ready at $addr"
            return 0
        fi
        sleep 0.5
    done
    die "$name not ready after ${READY_SECS}s; see $OUT/$name.log"
}

declare -A ADDR
# --- switchyard, on a port it picks; its JSON `listening` line gives the address ---
start_switchyard "$SY" "$OUT/repo" "$OUT/switchyard.log"
PIDS+=("$SY_PID")
ADDR[switchyard]=$SY_ADDR
if [[ -n $PY ]]; then
    wait_ready switchyard "${PIDS[-1]}" "${ADDR[switchyard]}" "${MODEL}_batched" "${MODEL}_unbatched"
fi
log "switchyard at ${ADDR[switchyard]} (max_queue_delay ${DELAY_US} µs for the batched copy)"
TARGETS=(switchyard/batched switchyard/unbatched)

# --- Triton ---
if [[ $TRITON == 1 ]]; then
    start_triton "$ROOT/$VENV" "$OUT/triton_repo" "$OUT/triton.log"
    ADDR[triton]=$TRITON_ADDR
    wait_ready triton "${PIDS[-1]}" "${ADDR[triton]}" "${MODEL}_batched" "${MODEL}_unbatched"
    TARGETS+=(triton/batched)
    [[ $TRITON_UNBATCHED == 1 ]] && TARGETS+=(triton/unbatched)
fi

# --- the copies answer alike: the same rows through every copy on every server ---
if [[ -n $PY ]]; then
    check=()
    for t in "${TARGETS[@]}"; do check+=("${ADDR[${t%/*}]}" "${MODEL}_${t#*/}"); done
    "$PY" - "${check[@]}" <<'EOF' || die "the copies disagree (see above)"
import sys
import numpy as np
import tritonclient.grpc as g
args = sys.argv[1:]
ref = None
for addr, name in zip(args[::2], args[1::2]):
    c = g.InferenceServerClient(addr)
    meta = c.get_model_metadata(name, as_json=True)
    i, o = meta["inputs"][0], meta["outputs"][0]
    shape = [3] + [int(d) for d in i["shape"][1:]]
    x = np.random.default_rng(7).random(shape, dtype=np.float32)
    inp = g.InferInput(i["name"], shape, i["datatype"])
    inp.set_data_from_numpy(x)
    y = c.infer(name, [inp]).as_numpy(o["name"])
    if ref is None:
        ref = y
    elif y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-4, atol=1e-5):
        print(f"{addr} {name}: max difference {np.max(np.abs(y - ref))}", file=sys.stderr)
        sys.exit(1)
print(f"batching: {len(args) // 2} copies agree on 3 rows (output {ref.shape})", file=sys.stderr)
EOF
fi

# --- interleaved rounds ---
echo "start $(date -u +%FT%TZ) loadavg $(cat /proc/loadavg)" >"$OUT/loadavg.txt"
n=${#TARGETS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        t=${TARGETS[$(((i + r) % n))]}
        server=${t%/*} kind=${t#*/} f=${t/\//-}
        log "round $((r + 1))/$ROUNDS: $t (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
        "$SY" perf --url "http://${ADDR[$server]}" -m "${MODEL}_$kind" --concurrency "$CONCURRENCY" \
            --connections "$CONNECTIONS" --measurement-secs "$SECS" --warmup-secs "$WARMUP" \
            --json "$OUT/$f-$r.json" >"$OUT/$f-$r.txt" 2>>"$OUT/perf.log" ||
            die "perf against $t failed; see $OUT/perf.log"
        echo "round $r $t $(date -u +%FT%TZ) loadavg $(cat /proc/loadavg)" >>"$OUT/loadavg.txt"
    done
done

# --- the servers' statistics: executions, batch sizes, compute per batch ---
if [[ -n $PY ]]; then
    for t in "${TARGETS[@]}"; do
        server=${t%/*} kind=${t#*/} f=${t/\//-}
        "$PY" - "${ADDR[$server]}" "${MODEL}_$kind" >"$OUT/stats-$f.json" <<'EOF' || log "no statistics from $t"
import json, sys
import tritonclient.grpc as g
print(json.dumps(g.InferenceServerClient(sys.argv[1]).get_inference_statistics(sys.argv[2], as_json=True)))
EOF
    done
fi

# --- summary ---
python3 - "$OUT" "$MODEL" "$VERSION" "$DELAY_US" "$ORT_THREADS" "${TARGETS[@]}" <<'EOF'
import glob, json, os, statistics, sys

out, model, version, delay, threads, targets = *sys.argv[1:6], sys.argv[6:]
delay = int(delay)
med = {}
for t in targets:
    f = t.replace("/", "-")
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{f}-*.json")))]
    for level in runs[0]:
        c = level["concurrency"]
        same = [next(x for x in run if x["concurrency"] == c) for run in runs]
        pick = lambda g: statistics.median(g(x) for x in same)
        med[(t, c)] = {
            "rps": pick(lambda x: x["throughput_rps"]),
            "p50": pick(lambda x: x["latency_us"]["p50"]),
            "p99": pick(lambda x: x["latency_us"]["p99"]),
            "rps_rounds": [round(x["throughput_rps"], 1) for x in same],
            "p99_rounds": [round(x["latency_us"]["p99"]) for x in same],
            "errors": sum(x["error_count"] for x in same),
            "rounds": len(same),
        }

# Server statistics, cumulated over all rounds and levels.
stats = {}
for t in targets:
    p = os.path.join(out, f"stats-{t.replace('/', '-')}.json")
    try:
        s = json.load(open(p))["model_stats"][0]
    except (OSError, ValueError, KeyError, IndexError):
        continue
    per = {}
    for b in s.get("batch_stats", []):
        ci = b.get("compute_infer", {})
        n = int(ci.get("count", 0))
        if n:
            per[int(b["batch_size"])] = {"executions": n, "infer_us": int(ci.get("ns", 0)) / n / 1e3}
    inf, ex = int(s.get("inference_count", 0)), int(s.get("execution_count", 0))
    stats[t] = {"inference_count": inf, "execution_count": ex,
                "mean_batch": inf / ex if ex else None, "per_batch_size": per}

def batch_compute_us(t, c):
    # Mean compute of one batch of the size concurrency c fills (min(c, 64)); if that size never ran,
    # the nearest larger size that did, else the largest.
    per = stats.get(t, {}).get("per_batch_size", {})
    if not per:
        return None
    want = min(c, 64)
    larger = [b for b in per if b >= want]
    return per[min(larger)]["infer_us"] if larger else per[max(per)]["infer_us"]

levels = sorted({c for (_, c) in med})
rounds = med[(targets[0], levels[0])]["rounds"]
print(f"\n{model} version {version}, batch-1 requests, medians of {rounds} rounds; batched copies: "
      f"max_queue_delay {delay} µs; one instance each"
      + (f"; Triton: python backend + onnxruntime, {threads} intra-op thread(s)" if any(t.startswith("triton") for t in targets) else ""))
head = f"{'conc':>5}"
for t in targets:
    head += f" | {t + ' req/s':>22} {'p50 µs':>8} {'p99 µs':>8}"
print(head + " | errors")
for c in levels:
    row = f"{c:>5}"
    for t in targets:
        m = med[(t, c)]
        row += f" | {m['rps']:>22.1f} {m['p50']:>8.0f} {m['p99']:>8.0f}"
    print(row + " | " + "/".join(str(med[(t, c)]["errors"]) for t in targets))

sb, su, tb, tu = "switchyard/batched", "switchyard/unbatched", "triton/batched", "triton/unbatched"
ratios = {}
print("\nratios (medians, same run)")
for c in levels:
    line = f"{c:>5}: switchyard batched/unbatched {med[(sb, c)]['rps'] / med[(su, c)]['rps']:.2f}"
    r = {"sy_batched_over_unbatched": med[(sb, c)]["rps"] / med[(su, c)]["rps"]}
    if (tb, c) in med:
        r["sy_batched_over_triton_batched"] = med[(sb, c)]["rps"] / med[(tb, c)]["rps"]
        line += f"; switchyard batched/triton batched {r['sy_batched_over_triton_batched']:.2f}"
    if (tu, c) in med:
        r["triton_batched_over_unbatched"] = med[(tb, c)]["rps"] / med[(tu, c)]["rps"]
        line += f"; triton batched/unbatched {r['triton_batched_over_unbatched']:.2f}"
    bc = batch_compute_us(sb, c)
    if bc is not None:
        bound = med[(su, c)]["p99"] + delay + bc
        r.update(p99_bound_us=bound, batch_compute_us=bc, p99_ok=med[(sb, c)]["p99"] <= bound)
        line += (f"; p99 rule: batched {med[(sb, c)]['p99']:.0f} <= unbatched {med[(su, c)]['p99']:.0f}"
                 f" + delay {delay} + batch compute {bc:.0f} = {bound:.0f} µs: "
                 f"{'yes' if r['p99_ok'] else 'NO'}")
    ratios[c] = r
    print(line)

if stats:
    print("\nserver statistics over the whole run (compute_infer per execution, by batch size)")
    for t, s in stats.items():
        per = s["per_batch_size"]
        show = ", ".join(f"{b}: {per[b]['infer_us']:.0f} µs x{per[b]['executions']}"
                         for b in sorted(per) if b in (1, 2, 4, 8, 16, 32, 64) or b == max(per))
        mb = f"{s['mean_batch']:.2f}" if s["mean_batch"] else "-"
        print(f"  {t:<21} executions {s['execution_count']:>8}, mean batch {mb:>5}; {show}")

json.dump({"model": model, "version": version, "delay_us": delay, "ort_threads": int(threads),
           "targets": targets, "levels": levels,
           "medians": {f"{t} c={c}": m for (t, c), m in med.items()},
           "ratios": {str(c): r for c, r in ratios.items()}, "server_stats": stats},
          open(os.path.join(out, "summary.json"), "w"), indent=1)
if any(m["errors"] for m in med.values()):
    print("WARNING: some runs had errors; see the JSON files")
print(f"(repositories, logs, loadavg.txt and JSON in {out})")
EOF
