"""PyTorch baseline for the GPU benchmarks: the weights of two shipped ONNX models
(loaded by initializer name, graphs mirrored node for node) run by idiomatic PyTorch modules.

  tabular_mlp  features FP32 [b, 64] -> (Gemm transB=1, Relu) x2, Gemm, Softmax -> [b, 10]
  encoder      tokens INT64 [b, 32] -> one pre-LayerNorm transformer block (2 heads, erf
               Gelu MLP 64->256->64, final LayerNorm) -> FP32 [b, 32, 64]

Measured per model:
  correctness  ||out - ref|| / ||ref|| of torch fp32 (TF32 off) and fp16 against onnxruntime
               on the CPU, worst over the batch sizes; fp32 > 1e-5 or fp16 > 1e-2 exits 1
  per precision (fp32, fp16) and batch size:
    e2e        host numpy batch -> from_numpy -> .to(device) -> forward -> .float().cpu()
               .numpy(), perf_counter: samples/s and p50/p99 us per batch, timed for
               --seconds per configuration in all (split over the repeats)
    compute    forward only, inputs already on the device, CUDA events: samples/s (eager
               PyTorch: for models this small, bound by the CPU's kernel launches)
    graph      the forward captured in a CUDA graph, replays timed: samples/s
  gemm_only    at the largest batch, the model's matrix products alone (same shapes and
               dtype, random data, model order) back to back: us per batch (replayed from a
               CUDA graph; eager_us_per_batch launched one by one), TFLOP/s, GEMM FLOPs per
               batch: the cuBLAS ceiling
Each timing is the median of 3 repeats. --device cpu skips fp16, graphs and CUDA events.

  python3 benches/gpu/torch_ref.py --repo model_repository --batches 1,8,64,256 \\
      --seconds 2 --json out.json [--device cuda] [--models tabular_mlp,encoder]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

REPEATS = 3
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TabularMLP(nn.Module):
    """Gemm(transB=1) + Relu per hidden layer, a last Gemm, Softmax over the classes."""

    def __init__(self, sizes):
        super().__init__()
        self.names = [f"fc{i + 1}" for i in range(len(sizes) - 1)]
        for name, fan_in, fan_out in zip(self.names, sizes[:-1], sizes[1:]):
            self.add_module(name, nn.Linear(fan_in, fan_out))
        self.in_features = sizes[0]

    @classmethod
    def from_onnx(cls, w):
        n = len([k for k in w if k.startswith("fc") and k.endswith(".weight")])
        sizes = [w["fc1.weight"].shape[1]] + [w[f"fc{i + 1}.weight"].shape[0] for i in range(n)]
        model = cls(sizes)
        # Gemm with transB=1 stores W as [out, in], nn.Linear's layout.
        model.load_state_dict({k: v for k, v in w.items() if k.startswith("fc")})
        return model

    def forward(self, x):
        for i, name in enumerate(self.names):
            x = getattr(self, name)(x)
            if i < len(self.names) - 1:
                x = F.relu(x)
        return F.softmax(x, dim=-1)

    def random_input(self, rng, batch):
        return rng.standard_normal((batch, self.in_features), dtype=np.float32)

    def gemm_shapes(self, batch):
        """(batch count, m, n, k) of each product, in execution order."""
        return [(1, batch, getattr(self, n).out_features, getattr(self, n).in_features)
                for n in self.names]


class Encoder(nn.Module):
    """Token + position embedding, pre-LayerNorm self-attention and Gelu MLP blocks with
    residuals, final LayerNorm. Attention is written out: matmul, softmax, matmul."""

    def __init__(self, vocab, seq, d, heads, ff):
        super().__init__()
        self.vocab, self.seq, self.d, self.heads, self.head_dim = vocab, seq, d, heads, d // heads
        self.tok_embedding = nn.Embedding(vocab, d)
        self.pos_embedding = nn.Parameter(torch.zeros(seq, d))
        self.ln1, self.ln2, self.ln_final = (nn.LayerNorm(d, eps=1e-5) for _ in range(3))
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    @classmethod
    def from_onnx(cls, w):
        (vocab, d), seq = w["tok_embedding"].shape, w["pos_embedding"].shape[0]
        model = cls(vocab, seq, d, int(w["heads.shape"][2]), w["ff1.weight"].shape[1])
        state = {"tok_embedding.weight": w["tok_embedding"], "pos_embedding": w["pos_embedding"]}
        for name in ["ln1", "ln2", "ln_final"]:
            state[f"{name}.weight"], state[f"{name}.bias"] = w[f"{name}.weight"], w[f"{name}.bias"]
        for name in ["q", "k", "v", "o", "ff1", "ff2"]:
            # MatMul(x, W) stores W as [in, out]; nn.Linear wants [out, in].
            state[f"{name}.weight"] = w[f"{name}.weight"].t().contiguous()
            state[f"{name}.bias"] = w[f"{name}.bias"]
        model.load_state_dict(state)
        return model

    def forward(self, tokens):
        b, s = tokens.shape
        x = self.tok_embedding(tokens) + self.pos_embedding
        h = self.ln1(x)

        def split(t):  # [b, s, d] -> [b, heads, s, head_dim]
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        context = torch.matmul(F.softmax(scores, dim=-1), v)
        x = x + self.o(context.transpose(1, 2).reshape(b, s, self.d))
        x = x + self.ff2(F.gelu(self.ff1(self.ln2(x)), approximate="none"))
        return self.ln_final(x)

    def random_input(self, rng, batch):
        return rng.integers(0, self.vocab, size=(batch, self.seq), dtype=np.int64)

    def gemm_shapes(self, batch):
        rows, bh, s, hd = batch * self.seq, batch * self.heads, self.seq, self.head_dim
        qkv = [(1, rows, self.d, self.d)] * 3
        attention = [(bh, s, s, hd), (bh, s, hd, s)]  # q @ k^T, then probs @ v
        ff = self.ff1.out_features
        return qkv + attention + [(1, rows, self.d, self.d), (1, rows, ff, self.d),
                                  (1, rows, self.d, ff)]


MODELS = {"tabular_mlp": TabularMLP, "encoder": Encoder}


def load_weights(path):
    graph = onnx.load(path).graph
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}


def to_device(array, device, dtype):
    x = torch.from_numpy(array).to(device)
    return x.to(dtype) if x.is_floating_point() else x


def rel_err(out, ref):
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


def timed(fn, device, iters):
    """Seconds per call of fn over iters back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def seconds_per_call(fn, device, target_s=0.05):
    """Median over REPEATS of the time per call, each repeat about target_s long."""
    for _ in range(5):
        fn()
    iters = int(min(max(target_s / max(timed(fn, device, 5), 1e-7), 10), 50_000))
    return statistics.median(timed(fn, device, iters) for _ in range(REPEATS))


def rate(batch, seconds_per_batch):
    return {"samples_per_s": batch / seconds_per_batch, "us_per_batch": seconds_per_batch * 1e6}


def capture(fn, device):
    """Capture fn (which reads static buffers) into a CUDA graph; returns (graph, output)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def bench_e2e(model, host_batches, device, dtype, seconds):
    def step(i):
        x = to_device(host_batches[i % len(host_batches)], device, dtype)
        return model(x).float().cpu().numpy()

    for i in range(20):
        step(i)
    rates, p50s, p99s = [], [], []
    for _ in range(REPEATS):
        lat, i, start = [], 0, time.perf_counter()
        while time.perf_counter() - start < seconds / REPEATS:
            t0 = time.perf_counter()
            step(i)
            lat.append(time.perf_counter() - t0)
            i += 1
        rates.append(len(host_batches[0]) * i / (time.perf_counter() - start))
        p50s.append(float(np.percentile(lat, 50)) * 1e6)
        p99s.append(float(np.percentile(lat, 99)) * 1e6)
    return {"samples_per_s": statistics.median(rates), "p50_us": statistics.median(p50s),
            "p99_us": statistics.median(p99s)}


def bench_config(model, batch, device, precision, seconds, rng):
    dtype = DTYPES[precision]
    host = [model.random_input(rng, batch) for _ in range(8)]
    result = {"e2e": bench_e2e(model, host, device, dtype, seconds)}
    x = to_device(host[0], device, dtype)
    result["compute"] = rate(batch, seconds_per_call(lambda: model(x), device))
    if device.type == "cuda":
        graph, out = capture(lambda: model(x), device)
        graph.replay()
        err = rel_err(out.float().cpu().numpy(), model(x).float().cpu().numpy().astype(np.float64))
        assert err < TOLERANCE[precision], f"graph replay differs from eager: {err:.2e}"
        result["graph"] = rate(batch, seconds_per_call(graph.replay, device))
    return result


def bench_gemms(model, batch, device, dtype):
    shapes = model.gemm_shapes(batch)
    operands = []
    for count, m, n, k in shapes:
        if count == 1:  # F.linear: x [m, k], W [n, k]
            operands.append((F.linear, torch.randn(m, k, device=device, dtype=dtype),
                             torch.randn(n, k, device=device, dtype=dtype)))
        else:  # batched: [count, m, k] @ [count, k, n]
            operands.append((torch.matmul, torch.randn(count, m, k, device=device, dtype=dtype),
                             torch.randn(count, k, n, device=device, dtype=dtype)))

    def run_all():
        return [op(a, b) for op, a, b in operands]

    flops = sum(2 * count * m * n * k for count, m, n, k in shapes)
    eager = seconds_per_call(run_all, device)
    best = eager
    if device.type == "cuda":
        graph, _ = capture(run_all, device)
        best = seconds_per_call(graph.replay, device)
    return {"batch": batch, "gemms": [list(s) for s in shapes], "gemm_flops_per_batch": flops,
            "us_per_batch": best * 1e6, "tflops": flops / best / 1e12,
            "eager_us_per_batch": eager * 1e6}


def check(model_fp, session, batches, device, precision, rng):
    """Largest relative error of the torch model against onnxruntime over the batch sizes."""
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for batch in batches:
        x = model_fp.random_input(rng, batch)
        ref = session.run(None, {input_name: x})[0].astype(np.float64)
        out = model_fp(to_device(x, device, DTYPES[precision])).float().cpu().numpy()
        assert out.shape == ref.shape, (out.shape, ref.shape)
        worst = max(worst, rel_err(out, ref))
    return worst


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default="model_repository")
    parser.add_argument("--models", default="tabular_mlp,encoder")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="e2e timing per configuration, split over the repeats")
    parser.add_argument("--json", default="torch_ref.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(MODELS)}")
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    precisions = ["fp32", "fp16"] if device.type == "cuda" else ["fp32"]
    rng = np.random.default_rng()

    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "models": {}}
    models, failed = {}, False
    for name in names:
        path = os.path.join(args.repo, name, "1", "model.onnx")
        weights = load_weights(path)
        models[name] = {p: MODELS[name].from_onnx(weights).to(device, DTYPES[p]).eval()
                        for p in precisions}
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        correctness = {"batches": batches, "tolerance": {p: TOLERANCE[p] for p in precisions}}
        for p in precisions:
            err = check(models[name][p], session, batches, device, p, rng)
            correctness[f"{p}_max_rel_err"] = err
            ok = err <= TOLERANCE[p]
            failed |= not ok
            print(f"{name} {p}: max relative error vs onnxruntime {err:.2e} "
                  f"({'ok' if ok else 'FAIL'}, tolerance {TOLERANCE[p]:.0e})", flush=True)
        report["models"][name] = {"correctness": correctness}
    if failed:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        sys.exit("correctness check failed; no benchmarks run")

    for name in names:
        entry = report["models"][name]
        for p in precisions:
            entry[p] = {}
            for batch in batches:
                print(f"benchmarking {name} {p} batch {batch}", flush=True)
                entry[p][str(batch)] = bench_config(models[name][p], batch, device, p,
                                                    args.seconds, rng)
        entry["gemm_only"] = {p: bench_gemms(models[name][p], max(batches), device, DTYPES[p])
                              for p in precisions}

    print_table(report)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")


def print_table(report):
    print(f"\n{report['device']}, torch {report['torch']}; samples/s, latencies in us")
    print(f"{'model':<12} {'prec':<5} {'batch':>5} {'e2e':>10} {'p50':>8} {'p99':>8} "
          f"{'compute':>11} {'graph':>11}")
    for name, entry in report["models"].items():
        for p in ["fp32", "fp16"]:
            for batch, r in entry.get(p, {}).items():
                e, graph = r["e2e"], r.get("graph", {}).get("samples_per_s", float("nan"))
                print(f"{name:<12} {p:<5} {batch:>5} {e['samples_per_s']:>10.0f} "
                      f"{e['p50_us']:>8.1f} {e['p99_us']:>8.1f} "
                      f"{r['compute']['samples_per_s']:>11.0f} {graph:>11.0f}")
        for p, g in entry["gemm_only"].items():
            print(f"{name:<12} {p:<5} gemm_only batch {g['batch']}: {g['us_per_batch']:.1f} us "
                  f"(eager {g['eager_us_per_batch']:.1f} us), {g['tflops']:.2f} TFLOP/s, "
                  f"{g['gemm_flops_per_batch'] / 1e6:.1f} MFLOP per batch")


if __name__ == "__main__":
    main()
