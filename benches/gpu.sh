#!/usr/bin/env bash
# The GPU check, in one go (about 4 minutes on one H100): builds the daemon and the GPU tests
# (where cargo is; else takes prebuilt ones from GPU_BIN_DIR), runs the GPU tests (they must not
# skip here), runs the PyTorch baseline on the same GPU (benches/gpu/torch_ref.py: the same
# weights, correctness against onnxruntime, throughput), then drives the daemon with
# `switchyard perf` at batch 1 to 256 for the MLP and the encoder block, fp32 and fp16, with and
# without CUDA graphs, reads the daemon's compute phases (split by CUDA events) and `nv_gpu_*`
# gauges from /metrics, and prints the table: daemon vs PyTorch, batch-1 p99, and the share of
# cuBLAS's GEMM throughput the largest batch reaches.
#
#   bash benches/gpu.sh                      # build here, then run
#   GPU_BIN_DIR=.gpu bash benches/gpu.sh     # run prebuilt `switchyard` and `gpu-tests`
#
# Knobs: GPU_OUT (results, default target/gpu-bench), GPU_BATCHES (1,8,64,256), GPU_SECS (3, the
# measurement window per perf run), GPU_CONCURRENCY (8), GPU_INSTANCES (2 per model).
# Needs python3 with torch, numpy, onnx and onnxruntime for the baseline (skipped with a note if
# torch is missing), and the CUDA driver, NVRTC and cuBLAS 13 libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh gpu

OUT=${GPU_OUT:-target/gpu-bench}
BATCHES=${GPU_BATCHES:-1,8,64,256}
SECS=${GPU_SECS:-3}
CONC=${GPU_CONCURRENCY:-8}
INSTANCES=${GPU_INSTANCES:-2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- the CUDA libraries: the toolkit's, else the ones PyTorch's wheels carry ---
cuda_dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
if command -v python3 >/dev/null; then
    while IFS= read -r d; do cuda_dirs+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null || true
import glob, site, os
for root in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        print(d)
EOF
)
fi
for lib in libnvrtc.so.13 libcublas.so.13; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
        for d in "${cuda_dirs[@]}"; do
            if [[ -e $d/$lib ]]; then
                export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
                break
            fi
        done
    fi
done
log "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    | tee "$OUT/gpu.txt" || die "nvidia-smi failed: no GPU here"

# --- binaries ---
if [[ -n ${GPU_BIN_DIR:-} ]]; then
    SY=$GPU_BIN_DIR/switchyard
    TESTS=$GPU_BIN_DIR/gpu-tests
else
    command -v cargo >/dev/null || die "no cargo here: set GPU_BIN_DIR to prebuilt binaries"
    cargo build --release --bin switchyard
    SY=target/release/switchyard
    TESTS=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
fi
[[ -x $SY && -x $TESTS ]] || die "missing binaries ($SY, $TESTS)"

# --- GPU tests: here they must run, not skip ---
log "GPU tests"
: >"$OUT/tests.log"
TEST_FAILURES=()
# One process per test: device memory readings must not see another test's daemon.
for t in $("$TESTS" --list 2>/dev/null | sed -n 's/: test$//p'); do
    "$TESTS" --exact "$t" --nocapture 2>&1 | tee -a "$OUT/tests.log" \
        || TEST_FAILURES+=("$t (exit $?)")
done
if grep -q "SKIPPED" "$OUT/tests.log"; then
    die "GPU tests skipped on a machine with a GPU; see $OUT/tests.log"
fi

if ((${#TEST_FAILURES[@]})); then
    log "GPU tests FAILED: ${TEST_FAILURES[*]} (the benchmarks still run; the script fails at the end)"
fi

# --- PyTorch on the same GPU ---
if python3 -c 'import torch, onnx, onnxruntime' 2>/dev/null; then
    log "PyTorch baseline"
    PYTHONUNBUFFERED=1 python3 benches/gpu/torch_ref.py --repo model_repository \
        --batches "$BATCHES" --seconds 2 --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.log"
else
    log "no torch/onnx/onnxruntime in python3: PyTorch baseline skipped"
fi

# --- the daemon: each model in fp32 and fp16, with CUDA graphs, and fp32 without ---
REPO=$OUT/repo
rm -rf "$REPO"
variant() { # NAME SHIPPED MAX_BATCH EXTRA
    local name=$1 shipped=$2 extra=$4 io
    mkdir -p "$REPO/$name/1"
    cp "model_repository/$shipped/1/model.onnx" "$REPO/$name/1/"
    io=$(sed -n '/^input \[/,/^instance_group/p' "model_repository/$shipped/config.pbtxt" | sed '$d')
    printf 'name: "%s"\nplatform: "onnxruntime_onnx"\nmax_batch_size: %s\n%s\ninstance_group [ { count: %s, kind: KIND_GPU } ]\n%s\n' \
        "$name" "$3" "$io" "$INSTANCES" "$extra" >"$REPO/$name/config.pbtxt"
}
GRAPHS='optimization { cuda { graphs: true } }'
FP16='parameters { key: "precision" value: { string_value: "fp16" } }'
MODELS=(mlp_fp32_graphs mlp_fp16_graphs mlp_fp32 enc_fp32_graphs enc_fp16_graphs enc_fp32)
variant mlp_fp32_graphs tabular_mlp_gpu 256 "$GRAPHS"
variant mlp_fp16_graphs tabular_mlp_gpu 256 "$GRAPHS $FP16"
variant mlp_fp32 tabular_mlp_gpu 256 ""
variant enc_fp32_graphs encoder_gpu 256 "$GRAPHS"
variant enc_fp16_graphs encoder_gpu 256 "$GRAPHS $FP16"
variant enc_fp32 encoder_gpu 256 ""

log "starting switchyard on $REPO"
started=$(date +%s.%N)
start_switchyard "$SY" "$REPO" "$OUT/switchyard.log"
PIDS+=("$SY_PID")
ADDR=$SY_ADDR
log "switchyard at $ADDR after $(python3 -c "import time; print(round(time.time() - $started, 1))") s"
if grep -q "failed to load" "$OUT/switchyard.log"; then
    grep "failed to load" "$OUT/switchyard.log" >&2
    die "a GPU model failed to load"
fi

perf() { # MODEL BATCH CONCURRENCY TAG
    "$SY" perf -u "$ADDR" -m "$1" -b "$2" --concurrency "$3" --measurement-secs "$SECS" \
        --warmup-secs 1 --connections 4 --json "$OUT/perf_$4_$1_b$2.json" >/dev/null 2>&1 \
        || die "perf $1 batch $2 failed"
}
IFS=, read -r -a BS <<<"$BATCHES"
for m in "${MODELS[@]}"; do
    log "perf $m: batch 1 at concurrency 1 (latency), batches ${BATCHES} at concurrency $CONC"
    perf "$m" 1 1 lat
    for b in "${BS[@]}"; do
        if [[ $m == *_fp32 && $b != 1 && $b != "${BS[-1]}" ]]; then continue; fi
        perf "$m" "$b" "$CONC" tput
    done
done

# --- the daemon's own view: compute phases per execution (split by CUDA events) and GPU gauges ---
METRICS_ADDR=$(listening_addr "$OUT/switchyard.log" metrics)
set +e
python3 - "$METRICS_ADDR" <<'EOF' | tee "$OUT/phases.txt"
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
samples = {}
for line in text.splitlines():
    m = re.match(r'(\w+)\{([^}]*)\} (\S+)$', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        samples[(m.group(1), labels.get("model"), labels.get("gpu_uuid"))] = float(m.group(3))
print(f"{'model':18} {'executions':>10} {'input µs':>9} {'infer µs':>9} {'output µs':>9}"
      "  (means per execution, all batch sizes)")
for (name, model, _), count in sorted(samples.items(), key=lambda kv: str(kv[0][1])):
    if name != "nv_inference_exec_count" or not count:
        continue
    mean = lambda phase: samples.get((f"nv_inference_compute_{phase}_duration_us", model, None), 0) / count
    print(f"{model:18} {count:10.0f} {mean('input'):9.1f} {mean('infer'):9.1f} {mean('output'):9.1f}")
gpus = sorted({uuid for (name, _, uuid) in samples if name.startswith("nv_gpu_") and uuid})
for uuid in gpus:
    g = lambda name: samples.get((name, None, uuid))
    print(f"{uuid}: utilization {g('nv_gpu_utilization')}, memory used "
          f"{g('nv_gpu_memory_used_bytes'):.0f} of {g('nv_gpu_memory_total_bytes'):.0f} bytes")
if not gpus:
    print("no nv_gpu_* samples in /metrics")
    sys.exit(1)
EOF
[[ ${PIPESTATUS[0]} == 0 ]] || TEST_FAILURES+=("no GPU metrics in /metrics")
set -e

# --- a clean exit: SIGTERM, instances release the GPU, exit code 0 ---
kill -TERM "${PIDS[-1]}"
set +e
wait "${PIDS[-1]}"
EXIT_CODE=$?
set -e
log "switchyard exited with code $EXIT_CODE after SIGTERM"
[[ $EXIT_CODE == 0 ]] || TEST_FAILURES+=("daemon exit code $EXIT_CODE")

# --- repo check on a GPU machine: the GPU models are READY ---
set +e
"$SY" repo check model_repository >"$OUT/repo_check.txt" 2>&1
CHECK_CODE=$?
set -e
cat "$OUT/repo_check.txt"
for m in encoder_gpu tabular_mlp_gpu; do
    grep -q "^$m version 1: READY" "$OUT/repo_check.txt" || TEST_FAILURES+=("repo check: $m not READY")
done
[[ $CHECK_CODE == 0 ]] || TEST_FAILURES+=("repo check exit code $CHECK_CODE")

# --- the table ---
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os, sys
out = sys.argv[1]
torch = {}
if os.path.exists(os.path.join(out, "torch.json")):
    torch = json.load(open(os.path.join(out, "torch.json")))["models"]
runs = {}
for path in glob.glob(os.path.join(out, "perf_*.json")):
    tag = os.path.basename(path)[5:].split("_", 1)[0]
    for r in json.load(open(path)):
        runs[(tag, r["model"], r["batch"])] = r
base = {"mlp": "tabular_mlp", "enc": "encoder"}
print(f"{'model':22} {'batch':>5} {'daemon inf/s':>13} {'torch e2e':>11} {'ratio':>6} "
      f"{'torch graph':>12} {'ratio':>6} {'p50 µs':>7} {'p99 µs':>7} {'errors':>6}")
for (tag, model, batch), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
    fam, prec = model.split("_")[0], model.split("_")[1]
    t = torch.get(base[fam], {}).get(prec, {}).get(str(batch), {})
    e2e = t.get("e2e", {}).get("samples_per_s")
    graph = t.get("graph", {}).get("samples_per_s")
    ips = r["inferences_per_sec"]
    ratio = lambda x: f"{ips / x:6.2f}" if x else "     -"
    name = f"{model}{' (c=1)' if tag == 'lat' else ''}"
    print(f"{name:22} {batch:5d} {ips:13.0f} {e2e or 0:11.0f} {ratio(e2e)} {graph or 0:12.0f} "
          f"{ratio(graph)} {r['latency_us']['p50']:7d} {r['latency_us']['p99']:7d} "
          f"{r['error_count']:6d}")
print()
for fam, name in base.items():
    for prec in ("fp32", "fp16"):
        g = torch.get(name, {}).get("gemm_only", {}).get(prec)
        largest = max((b for (tag, m, b) in runs if m == f"{fam}_{prec}_graphs" and tag == "tput"),
                      default=None)
        if not g or largest is None:
            continue
        r = runs[("tput", f"{fam}_{prec}_graphs", largest)]
        us = 1e6 / r["throughput_rps"]
        print(f"{name} {prec} batch {largest}: daemon {us:.1f} µs per batch; cuBLAS GEMMs alone "
              f"{g['us_per_batch']:.1f} µs ({g['tflops']:.1f} TFLOP/s): "
              f"{g['us_per_batch'] / us:.0%} of cuBLAS's GEMM throughput")
EOF
log "results in $OUT"
if ((${#TEST_FAILURES[@]})); then die "GPU tests failed: ${TEST_FAILURES[*]}"; fi
