"""Check the models written by generate.py.

For every model: runs onnx.checker.check_model (full check), confirms that the
ONNX graph input/output names match the names in config.pbtxt, then runs the
model once through onnxruntime with sample inputs and checks the outputs.

Usage:
    pip install onnx numpy onnxruntime
    python model_repository/generate.py
    python model_repository/check_models.py
"""

import os
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = HERE
FIXTURE_DIR = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "models"))

failures = []


def check(cond, message):
    if not cond:
        failures.append(message)
        print(f"  FAIL: {message}")


def model_path(root, name, version=1):
    return os.path.join(root, name, str(version), "model.onnx")


def load_and_check(path, opset=13):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8, model.ir_version
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    return model


def config_names(root, name):
    """Input and output names listed in config.pbtxt, in order."""
    with open(os.path.join(root, name, "config.pbtxt"), encoding="utf-8") as f:
        text = f.read()
    sections = {}
    for section in ("input", "output"):
        m = re.search(rf"^{section} \[\n(.*?)^\]", text, re.S | re.M)
        sections[section] = re.findall(r'name: "([^"]+)"', m.group(1)) if m else []
    return sections["input"], sections["output"]


def session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def check_names(root, name, model):
    inputs, outputs = config_names(root, name)
    graph_in = [i.name for i in model.graph.input]
    graph_out = [o.name for o in model.graph.output]
    check(inputs == graph_in, f"{name}: config inputs {inputs} != graph inputs {graph_in}")
    check(outputs == graph_out, f"{name}: config outputs {outputs} != graph outputs {graph_out}")


def check_simple():
    print("simple")
    path = model_path(REPO_DIR, "simple")
    check_names(REPO_DIR, "simple", load_and_check(path))
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    out0, out1 = session(path).run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    check(out0.dtype == np.int32 and np.array_equal(out0, a + b), "simple: OUTPUT0 != INPUT0 + INPUT1")
    check(out1.dtype == np.int32 and np.array_equal(out1, a - b), "simple: OUTPUT1 != INPUT0 - INPUT1")


def check_simple_string():
    print("simple_string")
    path = model_path(REPO_DIR, "simple_string")
    check_names(REPO_DIR, "simple_string", load_and_check(path))
    a_int = np.array([[i for i in range(16)], [100 * i - 700 for i in range(16)]], dtype=np.int32)
    b_int = np.array([[1] * 16, [7, -7, 0, 12, -12, 123456, -5, 5, 9, 99, 999, -999, 1, 2, 3, 4]],
                     dtype=np.int32)
    a = np.array([[str(v) for v in row] for row in a_int], dtype=object)
    b = np.array([[str(v) for v in row] for row in b_int], dtype=object)
    out0, out1 = session(path).run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    expect0 = np.array([[str(v) for v in row] for row in a_int + b_int], dtype=object)
    expect1 = np.array([[str(v) for v in row] for row in a_int - b_int], dtype=object)
    check(np.array_equal(out0, expect0), f"simple_string: OUTPUT0 {out0.tolist()}")
    check(np.array_equal(out1, expect1), f"simple_string: OUTPUT1 {out1.tolist()}")
    print(f"  sample: INPUT0={a[1, :4].tolist()} INPUT1={b[1, :4].tolist()} "
          f"-> OUTPUT0={out0[1, :4].tolist()} OUTPUT1={out1[1, :4].tolist()}")
    # Inputs with a leading '+' or surrounding whitespace: show what onnxruntime does.
    odd = np.array([["+5", " 6", "007", "-0"] + ["0"] * 12], dtype=object)
    zero = np.array([["0"] * 16], dtype=object)
    try:
        o0, _ = session(path).run(None, {"INPUT0": odd, "INPUT1": zero})
        print(f"  parse of {odd[0, :4].tolist()} + 0 -> {o0[0, :4].tolist()}")
    except Exception as e:  # informational only
        print(f"  parse of {odd[0, :4].tolist()} failed: {type(e).__name__}: {e}")


def check_classifier():
    print("classifier")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    outputs = {}
    for version in (1, 2):
        path = model_path(REPO_DIR, "classifier", version)
        check_names(REPO_DIR, "classifier", load_and_check(path))
        (probs,) = session(path).run(["probabilities"], {"features": x})
        check(probs.shape == (5, 10) and probs.dtype == np.float32, f"classifier v{version}: shape {probs.shape}")
        check(np.allclose(probs.sum(axis=1), 1.0, atol=1e-5), f"classifier v{version}: rows do not sum to 1")
        check(bool((probs >= 0).all()), f"classifier v{version}: negative probability")
        outputs[version] = probs
        print(f"  v{version} row 0: [{', '.join(f'{v:.4f}' for v in probs[0])}]")
    check(not np.allclose(outputs[1], outputs[2]), "classifier: v1 and v2 give the same output")
    print(f"  max |v1 - v2| = {float(np.abs(outputs[1] - outputs[2]).max()):.4f}")


def check_tabular_mlp():
    print("tabular_mlp, tabular_mlp_gpu")
    with open(model_path(REPO_DIR, "tabular_mlp"), "rb") as f, \
            open(model_path(REPO_DIR, "tabular_mlp_gpu"), "rb") as g:
        check(f.read() == g.read(), "tabular_mlp_gpu: differs from tabular_mlp")
    path = model_path(REPO_DIR, "tabular_mlp")
    check_names(REPO_DIR, "tabular_mlp", load_and_check(path))
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    (probs,) = session(path).run(["probabilities"], {"features": x})
    check(probs.shape == (4, 10) and probs.dtype == np.float32, f"tabular_mlp: shape {probs.shape}")
    check(np.allclose(probs.sum(axis=1), 1.0, atol=1e-5), "tabular_mlp: rows do not sum to 1")


def check_digits_cnn():
    print("digits_cnn")
    path = model_path(REPO_DIR, "digits_cnn")
    check_names(REPO_DIR, "digits_cnn", load_and_check(path))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (3, 1, 28, 28)).astype(np.float32)
    (probs,) = session(path).run(["probabilities"], {"image": x})
    check(probs.shape == (3, 10) and probs.dtype == np.float32, f"digits_cnn: shape {probs.shape}")
    check(np.allclose(probs.sum(axis=1), 1.0, atol=1e-5), "digits_cnn: rows do not sum to 1")
    print(f"  argmax per image: {probs.argmax(axis=1).tolist()}")


# The operators the GPU executor lowers (src/executor/gpu_plan/ops.rs, SUPPORTED_OPS).
GPU_OPS = {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Relu", "Sigmoid", "Tanh", "Erf",
    "Gelu", "Softmax", "LayerNormalization", "ReduceMean", "Reshape", "Flatten", "Transpose",
    "Squeeze", "Unsqueeze", "Identity", "Cast", "Concat", "Gather",
}


def check_encoder():
    print("encoder, encoder_gpu")
    paths = {name: model_path(REPO_DIR, name) for name in ("encoder", "encoder_gpu")}
    for name, path in paths.items():
        check_names(REPO_DIR, name, load_and_check(path, opset=17))
    with open(paths["encoder"], "rb") as f, open(paths["encoder_gpu"], "rb") as g:
        check(f.read() == g.read(), "encoder_gpu: differs from encoder")
    with open(os.path.join(REPO_DIR, "encoder", "config.pbtxt"), encoding="utf-8") as f:
        cpu_config = f.read()
    with open(os.path.join(REPO_DIR, "encoder_gpu", "config.pbtxt"), encoding="utf-8") as f:
        gpu_config = f.read()
    twin = cpu_config.replace('"encoder"', '"encoder_gpu"').replace("KIND_CPU", "KIND_GPU")
    check(twin + "optimization { cuda { graphs: true } }\n" == gpu_config,
          "encoder_gpu: config differs from encoder's beyond name, kind and CUDA graphs")
    model = onnx.load(paths["encoder"])
    ops = {n.op_type for n in model.graph.node}
    check(ops <= GPU_OPS, f"encoder: operators outside the GPU set: {sorted(ops - GPU_OPS)}")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 1000, (2, 32), dtype=np.int64)
    (out,) = session(paths["encoder"]).run(["embeddings"], {"tokens": tokens})
    check(out.shape == (2, 32, 64) and out.dtype == np.float32, f"encoder: shape {out.shape}")
    check(bool(np.isfinite(out).all()), "encoder: non-finite output")
    print(f"  ops: {sorted(ops)}")
    print(f"  output mean {float(out.mean()):.4f}, std {float(out.std()):.4f}")


IDENTITY_SAMPLES = {
    "bool": np.array([[True, False, True, False]]),
    "uint8": np.array([[0, 1, 128, 255]], dtype=np.uint8),
    "uint16": np.array([[0, 1, 300, 65535]], dtype=np.uint16),
    "uint32": np.array([[0, 1, 70000, 4294967295]], dtype=np.uint32),
    "uint64": np.array([[0, 1, 2**40, 2**64 - 1]], dtype=np.uint64),
    "int8": np.array([[-128, -1, 0, 127]], dtype=np.int8),
    "int16": np.array([[-32768, -1, 0, 32767]], dtype=np.int16),
    "int32": np.array([[-2**31, -1, 0, 2**31 - 1]], dtype=np.int32),
    "int64": np.array([[-2**63, -1, 0, 2**63 - 1]], dtype=np.int64),
    "fp16": np.array([[-1.5, 0.0, 0.333, 65504.0]], dtype=np.float16),
    "fp32": np.array([[-1.5, 0.0, 3.25, 1e30]], dtype=np.float32),
    "fp64": np.array([[-1.5, 0.0, 3.25, 1e300]], dtype=np.float64),
    "string": np.array([["", "a", "hello world", "\u00e9t\u00e9"]], dtype=object),
}


def check_identities():
    for suffix, sample in IDENTITY_SAMPLES.items():
        name = f"identity_{suffix}"
        print(name)
        path = model_path(FIXTURE_DIR, name)
        check_names(FIXTURE_DIR, name, load_and_check(path))
        batch = np.concatenate([sample, sample[:, ::-1]], axis=0)  # batch of 2
        (out,) = session(path).run(["OUTPUT0"], {"INPUT0": batch})
        check(out.dtype == batch.dtype and np.array_equal(out, batch), f"{name}: output != input ({out!r})")


def check_add_sub_fp32():
    print("add_sub_fp32")
    path = model_path(FIXTURE_DIR, "add_sub_fp32")
    check_names(FIXTURE_DIR, "add_sub_fp32", load_and_check(path))
    sess = session(path)
    for n in (1, 3, 7):
        a = np.linspace(-1, 1, n, dtype=np.float32)
        b = np.full(n, 0.5, dtype=np.float32)
        out0, out1 = sess.run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
        check(out0.shape == (n,) and np.array_equal(out0, a + b), f"add_sub_fp32: OUTPUT0 (n={n})")
        check(out1.shape == (n,) and np.array_equal(out1, a - b), f"add_sub_fp32: OUTPUT1 (n={n})")


def check_no_config_mlp():
    print("no_config_mlp")
    path = model_path(FIXTURE_DIR, "no_config_mlp")
    load_and_check(path)
    check(not os.path.exists(os.path.join(FIXTURE_DIR, "no_config_mlp", "config.pbtxt")),
          "no_config_mlp: config.pbtxt must not exist")
    with open(path, "rb") as f, open(model_path(REPO_DIR, "classifier", 1), "rb") as g:
        check(f.read() == g.read(), "no_config_mlp: differs from classifier version 1")


def main():
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    check_simple()
    check_simple_string()
    check_classifier()
    check_tabular_mlp()
    check_digits_cnn()
    check_encoder()
    check_identities()
    check_add_sub_fp32()
    check_no_config_mlp()
    if failures:
        print(f"\n{len(failures)} check(s) failed")
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
