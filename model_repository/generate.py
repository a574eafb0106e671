"""Generate the example models and the test fixture models for Switchyard.

Writes, relative to this script's directory:

  model_repository/                      (shipped examples)
    simple/config.pbtxt, simple/1/model.onnx
        INT32 [16] inputs INPUT0, INPUT1 -> OUTPUT0 = INPUT0 + INPUT1,
        OUTPUT1 = INPUT0 - INPUT1 (max_batch_size 8)
    simple_string/config.pbtxt, simple_string/1/model.onnx
        the same on STRING tensors holding decimal integers
        (Cast to INT32, Add/Sub, Cast back to STRING)
    classifier/config.pbtxt, classifier/{1,2}/model.onnx
        MLP 64 -> 128 -> 128 -> 10 with softmax; versions 1 and 2 carry
        different random weights (max_batch_size 64, all versions served)
    digits_cnn/config.pbtxt, digits_cnn/1/model.onnx
        small CNN on a [1, 28, 28] image -> 10 class probabilities
        (max_batch_size 16)
    encoder/config.pbtxt, encoder/1/model.onnx
        one pre-LayerNorm transformer encoder block on INT64 token ids [32]
        (vocabulary 1000, d_model 64, 2 heads, feed-forward 256, erf Gelu,
        opset 17 for LayerNormalization) -> FP32 [32, 64] (max_batch_size 256)
    encoder_gpu/config.pbtxt, encoder_gpu/1/model.onnx
        the same file with a KIND_GPU instance group and CUDA graphs
    tabular_mlp_gpu/config.pbtxt, tabular_mlp_gpu/1/model.onnx
        tabular_mlp's file with a KIND_GPU instance group, max_batch_size 256
        and CUDA graphs

  ../tests/fixtures/models/              (test fixtures)
    identity_<type>/   Identity on INPUT0 [4] -> OUTPUT0 [4], max_batch_size 8,
                       for bool, uint8, uint16, uint32, uint64, int8, int16,
                       int32, int64, fp16, fp32, fp64 and string
    add_sub_fp32/      FP32 add/sub on variable-length [-1] vectors,
                       max_batch_size 0 (no batch dimension)
    no_config_mlp/     copy of classifier version 1 with no config.pbtxt
    versioned/         versions 1-4: OUTPUT0 = INPUT0 + 1000 * version (FP32 [4])
    rollout/           versions 1-4 for canary rollout / rollback tests, all served:
                       1 healthy (+1000), 2 healthy (+2000), 3 flaky (+3000, fails
                       at run time when INPUT0[..., 0] >= 100), 4 slow (+4000 after
                       tens of milliseconds of matrix products)

All weights are random (seeded numpy generators, He initialisation); they are
not trained. Models use opset 13 (the encoder 17) and IR version 8. The output is
deterministic: rerunning the script produces byte-identical files.

Usage:
    pip install onnx numpy
    python model_repository/generate.py
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
PRODUCER = "switchyard-model-generator"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = HERE
FIXTURE_DIR = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "models"))

# Triton data type name -> ONNX element type.
TRITON_TO_ONNX = {
    "TYPE_BOOL": TensorProto.BOOL,
    "TYPE_UINT8": TensorProto.UINT8,
    "TYPE_UINT16": TensorProto.UINT16,
    "TYPE_UINT32": TensorProto.UINT32,
    "TYPE_UINT64": TensorProto.UINT64,
    "TYPE_INT8": TensorProto.INT8,
    "TYPE_INT16": TensorProto.INT16,
    "TYPE_INT32": TensorProto.INT32,
    "TYPE_INT64": TensorProto.INT64,
    "TYPE_FP16": TensorProto.FLOAT16,
    "TYPE_FP32": TensorProto.FLOAT,
    "TYPE_FP64": TensorProto.DOUBLE,
    "TYPE_STRING": TensorProto.STRING,
}

BATCH = "batch"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def make_model(graph, opset=OPSET):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def save_model(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    with open(path, "wb") as f:
        f.write(data)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def tensor_block(name, data_type, dims):
    dims_text = ", ".join(str(d) for d in dims)
    return (
        "  {\n"
        f'    name: "{name}"\n'
        f"    data_type: {data_type}\n"
        f"    dims: [ {dims_text} ]\n"
        "  }"
    )


def config_pbtxt(name, max_batch_size, inputs, outputs, version_policy_all=False, kind="KIND_CPU"):
    """Render a config.pbtxt in the style of Triton's documentation.

    inputs / outputs are lists of (name, triton_type, dims).
    """
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
    ]
    if version_policy_all:
        lines.append("version_policy: { all: {} }")
    lines.append("input [")
    lines.append(",\n".join(tensor_block(*t) for t in inputs))
    lines.append("]")
    lines.append("output [")
    lines.append(",\n".join(tensor_block(*t) for t in outputs))
    lines.append("]")
    lines.append(f"instance_group [ {{ count: 1, kind: {kind} }} ]")
    return "\n".join(lines) + "\n"


def onnx_shape(max_batch_size, dims, var_name="n"):
    """ONNX shape for a Triton tensor: a symbolic leading batch dimension when
    batching is enabled; -1 in Triton dims becomes a symbolic dimension."""
    shape = [BATCH] if max_batch_size > 0 else []
    for d in dims:
        shape.append(var_name if d == -1 else d)
    return shape


def he_normal(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def small_bias(rng, n):
    return (rng.uniform(-0.05, 0.05, size=n)).astype(np.float32)


# ---------------------------------------------------------------------------
# Shipped models
# ---------------------------------------------------------------------------

def build_add_sub(graph_name, elem_type, max_batch_size, dims):
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    shape = onnx_shape(max_batch_size, dims)
    inputs = [
        helper.make_tensor_value_info("INPUT0", elem_type, shape),
        helper.make_tensor_value_info("INPUT1", elem_type, shape),
    ]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", elem_type, shape),
        helper.make_tensor_value_info("OUTPUT1", elem_type, shape),
    ]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ]
    return make_model(helper.make_graph(nodes, graph_name, inputs, outputs))


def build_simple():
    return build_add_sub("simple", TensorProto.INT32, 8, [16])


def build_simple_string():
    shape = onnx_shape(8, [16])
    inputs = [
        helper.make_tensor_value_info("INPUT0", TensorProto.STRING, shape),
        helper.make_tensor_value_info("INPUT1", TensorProto.STRING, shape),
    ]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, shape),
        helper.make_tensor_value_info("OUTPUT1", TensorProto.STRING, shape),
    ]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["in0_i32"], name="parse0", to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["in1_i32"], name="parse1", to=TensorProto.INT32),
        helper.make_node("Add", ["in0_i32", "in1_i32"], ["sum_i32"], name="add"),
        helper.make_node("Sub", ["in0_i32", "in1_i32"], ["diff_i32"], name="sub"),
        helper.make_node("Cast", ["sum_i32"], ["OUTPUT0"], name="format0", to=TensorProto.STRING),
        helper.make_node("Cast", ["diff_i32"], ["OUTPUT1"], name="format1", to=TensorProto.STRING),
    ]
    return make_model(helper.make_graph(nodes, "simple_string", inputs, outputs))


def build_classifier(seed, sizes=(64, 128, 128, 10), name="classifier"):
    rng = np.random.default_rng(seed)
    initializers = []
    nodes = []
    prev = "features"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w_name, b_name = f"fc{i + 1}.weight", f"fc{i + 1}.bias"
        # Stored as [out, in] and applied with transB=1.
        initializers.append(numpy_helper.from_array(he_normal(rng, (fan_out, fan_in), fan_in), w_name))
        initializers.append(numpy_helper.from_array(small_bias(rng, fan_out), b_name))
        out = f"fc{i + 1}"
        nodes.append(helper.make_node("Gemm", [prev, w_name, b_name], [out], name=out, transB=1))
        prev = out
        if i < len(sizes) - 2:
            relu = f"relu{i + 1}"
            nodes.append(helper.make_node("Relu", [prev], [relu], name=relu))
            prev = relu
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [BATCH, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [BATCH, 10])],
        initializer=initializers,
    )
    return make_model(graph)


def build_digits_cnn(seed):
    rng = np.random.default_rng(seed)
    init = []

    def add(name, array):
        init.append(numpy_helper.from_array(array, name))
        return name

    conv1_w = add("conv1.weight", he_normal(rng, (8, 1, 3, 3), 1 * 3 * 3))
    conv1_b = add("conv1.bias", small_bias(rng, 8))
    conv2_w = add("conv2.weight", he_normal(rng, (16, 8, 3, 3), 8 * 3 * 3))
    conv2_b = add("conv2.bias", small_bias(rng, 16))
    fc1_w = add("fc1.weight", he_normal(rng, (32, 784), 784))
    fc1_b = add("fc1.bias", small_bias(rng, 32))
    fc2_w = add("fc2.weight", he_normal(rng, (10, 32), 32))
    fc2_b = add("fc2.bias", small_bias(rng, 10))

    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["image", conv1_w, conv1_b], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", **pool),   # [N, 8, 14, 14]
        helper.make_node("Conv", ["pool1", conv2_w, conv2_b], ["conv2"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], name="pool2", **pool),   # [N, 16, 7, 7]
        helper.make_node("Flatten", ["pool2"], ["flat"], name="flatten", axis=1),  # [N, 784]
        helper.make_node("Gemm", ["flat", fc1_w, fc1_b], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node("Gemm", ["relu3", fc2_w, fc2_b], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH, 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [BATCH, 10])],
        initializer=init,
    )
    return make_model(graph)


ENCODER_OPSET = 17  # LayerNormalization is opset 17
ENCODER_VOCAB = 1000
ENCODER_SEQ = 32
ENCODER_DIM = 64
ENCODER_HEADS = 2
ENCODER_FF = 256
ENCODER_SEED = 7007
# The GPU twins (and the CPU encoder) take batches up to 256; the GPU twins replay one CUDA graph
# per batch size.
GPU_MAX_BATCH_SIZE = 256
GPU_GRAPHS = "optimization { cuda { graphs: true } }\n"


def build_encoder(seed):
    """One pre-LayerNorm transformer encoder block, written out operator by operator so that
    every step is one the GPU executor lowers: token and position embeddings, LayerNorm,
    two-head self-attention through MatMul/Transpose/Softmax with 1/sqrt(head_dim) scaling, a
    residual Add, LayerNorm, an erf-based Gelu MLP, a residual Add and a final LayerNorm.

    tokens INT64 [batch, 32] -> embeddings FP32 [batch, 32, 64]."""
    rng = np.random.default_rng(seed)
    d, heads, ff, seq = ENCODER_DIM, ENCODER_HEADS, ENCODER_FF, ENCODER_SEQ
    head_dim = d // heads
    init = []

    def add(name, array):
        init.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def layer_norm_params(prefix):
        return (add(f"{prefix}.weight", (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)),
                add(f"{prefix}.bias", small_bias(rng, d)))

    tok = add("tok_embedding", (0.5 * rng.standard_normal((ENCODER_VOCAB, d))).astype(np.float32))
    pos = add("pos_embedding", (0.1 * rng.standard_normal((seq, d))).astype(np.float32))
    ln1_w, ln1_b = layer_norm_params("ln1")
    proj = {}
    for name, fan_in, fan_out in [("q", d, d), ("k", d, d), ("v", d, d), ("o", d, d),
                                  ("ff1", d, ff), ("ff2", ff, d)]:
        # Stored [in, out] for MatMul(x, W).
        weight = (he_normal(rng, (fan_in, fan_out), fan_in) / np.sqrt(2.0)).astype(np.float32)
        proj[name] = (add(f"{name}.weight", weight),
                      add(f"{name}.bias", small_bias(rng, fan_out)))
    ln2_w, ln2_b = layer_norm_params("ln2")
    lnf_w, lnf_b = layer_norm_params("ln_final")
    heads_shape = add("heads.shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merged_shape = add("merged.shape", np.array([0, 0, d], dtype=np.int64))
    scale = add("attention.scale", np.array(np.sqrt(head_dim), dtype=np.float32))
    sqrt2 = add("gelu.sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    one = add("gelu.one", np.array(1.0, dtype=np.float32))
    half = add("gelu.half", np.array(0.5, dtype=np.float32))

    def linear(name, x, out):
        w, b = proj[name]
        return [helper.make_node("MatMul", [x, w], [f"{name}_mm"], name=f"{name}_proj"),
                helper.make_node("Add", [f"{name}_mm", b], [out], name=f"{name}_bias")]

    def layer_norm(name, x, w, b, out):
        return helper.make_node("LayerNormalization", [x, w, b], [out], name=name, axis=-1, epsilon=1e-5)

    nodes = [
        helper.make_node("Gather", [tok, "tokens"], ["embedded"], name="embed", axis=0),
        helper.make_node("Add", ["embedded", pos], ["x0"], name="add_pos"),
        layer_norm("ln1", "x0", ln1_w, ln1_b, "h1"),
        *linear("q", "h1", "q"),
        *linear("k", "h1", "k"),
        *linear("v", "h1", "v"),
        helper.make_node("Reshape", ["q", heads_shape], ["q4"], name="q_heads"),
        helper.make_node("Transpose", ["q4"], ["qh"], name="q_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["k", heads_shape], ["k4"], name="k_heads"),
        helper.make_node("Transpose", ["k4"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["v", heads_shape], ["v4"], name="v_heads"),
        helper.make_node("Transpose", ["v4"], ["vh"], name="v_t", perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"], name="scores"),
        helper.make_node("Div", ["scores", scale], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="attention", axis=-1),
        helper.make_node("MatMul", ["probs", "vh"], ["context"], name="context"),
        helper.make_node("Transpose", ["context"], ["context_t"], name="merge_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", merged_shape], ["merged"], name="merge"),
        *linear("o", "merged", "attended"),
        helper.make_node("Add", ["x0", "attended"], ["x1"], name="residual1"),
        layer_norm("ln2", "x1", ln2_w, ln2_b, "h2"),
        *linear("ff1", "h2", "f1"),
        helper.make_node("Div", ["f1", sqrt2], ["g_scaled"], name="gelu_div"),
        helper.make_node("Erf", ["g_scaled"], ["g_erf"], name="gelu_erf"),
        helper.make_node("Add", ["g_erf", one], ["g_shift"], name="gelu_add"),
        helper.make_node("Mul", ["f1", "g_shift"], ["g_prod"], name="gelu_mul"),
        helper.make_node("Mul", ["g_prod", half], ["gelu"], name="gelu_half"),
        *linear("ff2", "gelu", "f2"),
        helper.make_node("Add", ["x1", "f2"], ["x2"], name="residual2"),
        layer_norm("ln_final", "x2", lnf_w, lnf_b, "embeddings"),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [BATCH, seq])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [BATCH, seq, d])],
        initializer=init,
    )
    return make_model(graph, ENCODER_OPSET)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

def build_identity(suffix, triton_type):
    elem = TRITON_TO_ONNX[triton_type]
    shape = onnx_shape(8, [4])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        f"identity_{suffix}",
        [helper.make_tensor_value_info("INPUT0", elem, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem, shape)],
    )
    return make_model(graph)


def build_versioned(version, seed):
    """OUTPUT0 = INPUT0 + 1000 * version, through ReduceMax over a 65,536-element weight whose
    largest value is exactly 1000 * version. The weight makes the file about 256 KiB of
    incompressible data, so tests can copy it slowly and truncate it meaningfully."""
    rng = np.random.default_rng(seed)
    offset = np.float32(1000 * version)
    weight = (rng.random(65536, dtype=np.float32) * offset).astype(np.float32)
    weight[int(rng.integers(0, 65536))] = offset
    shape = onnx_shape(8, [4])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["W"], ["offset"], name="offset", keepdims=0),
            helper.make_node("Add", ["INPUT0", "offset"], ["OUTPUT0"], name="add"),
        ],
        f"versioned_{version}",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return make_model(graph)


def rollout_io():
    shape = onnx_shape(8, [4])
    return (
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape)],
    )


def build_rollout_healthy(version):
    """Healthy rollout version (1 = baseline, 2 = candidate): OUTPUT0 = INPUT0 + 1000 * version.

    Cheap and never fails, so a canary rollout from version 1 to version 2 should go through
    and the output tells which version served each request."""
    inputs, outputs = rollout_io()
    offset = numpy_helper.from_array(np.array(1000 * version, dtype=np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "offset"], ["OUTPUT0"], name="add")],
        f"rollout_{version}",
        inputs,
        outputs,
        initializer=[offset],
    )
    return make_model(graph)


ROLLOUT_FLAKY_LIMIT = 100


def build_rollout_flaky():
    """Flaky rollout version 3: OUTPUT0 = INPUT0 + 3000, but the execution fails when
    INPUT0[..., 0] >= 100, so tests choose per request whether the canary errors.

    idx = int64(relu(INPUT0[:, 0])) (truncation; negatives clamp to 0, so only first elements
    >= 100 are out of range) indexes a 100-element table T[i] = 3000 + i with GatherElements,
    and OUTPUT0 = INPUT0 + (T[idx] - float(idx)), which is exactly INPUT0 + 3000. tract's
    GatherElements returns an error ("Invalid GatherElements index ...") for an index past
    the table rather than clamping it. Every node depends on the input, so nothing is folded
    away when the model is optimised."""
    inputs, outputs = rollout_io()
    table = (3000.0 + np.arange(ROLLOUT_FLAKY_LIMIT)).astype(np.float32)
    init = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "first.start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "first.end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "first.axes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat.shape"),
        numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "column.shape"),
    ]
    nodes = [
        # [N, 4] -> [N, 1] -> [N]
        helper.make_node("Slice", ["INPUT0", "first.start", "first.end", "first.axes"],
                         ["first"], name="first"),
        helper.make_node("Reshape", ["first", "flat.shape"], ["first_flat"], name="first_flat"),
        helper.make_node("Relu", ["first_flat"], ["first_pos"], name="clamp_negative"),
        helper.make_node("Cast", ["first_pos"], ["idx"], name="idx", to=TensorProto.INT64),
        # Fails at run time when idx >= len(table).
        helper.make_node("GatherElements", ["table", "idx"], ["looked_up"], name="lookup", axis=0),
        helper.make_node("Cast", ["idx"], ["idx_f"], name="idx_f", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["looked_up", "idx_f"], ["offset_flat"], name="offset"),
        helper.make_node("Reshape", ["offset_flat", "column.shape"], ["offset_col"],
                         name="offset_col"),
        helper.make_node("Add", ["INPUT0", "offset_col"], ["OUTPUT0"], name="add"),
    ]
    graph = helper.make_graph(nodes, "rollout_3", inputs, outputs, initializer=init)
    return make_model(graph)


ROLLOUT_SLOW_SIZE = 256
ROLLOUT_SLOW_LAYERS = 40


def build_rollout_slow(seed):
    """Slow rollout version 4: OUTPUT0 = INPUT0 + 4000 exactly, after a chain of
    ROLLOUT_SLOW_LAYERS products A <- tanh(A @ W) of ROLLOUT_SLOW_SIZE-square matrices,
    tens of milliseconds of CPU per execution, for latency-based rollback tests.

    The chain starts from A = tanh(s * W + W), s = sum of INPUT0[:, 0], so it depends on the
    input and cannot be constant-folded, and the tanh between products keeps tract from
    reassociating them. Its result reaches the output as float(sum(A) > 1e30), always 0
    (|sum(A)| <= SIZE^2) and never a constant tract could see (a multiplication by a
    constant 0 would be folded, dropping the chain). W = sin(7 * u v^T) / sqrt(SIZE / 2) is
    computed from two seeded SIZE-vectors at load time, which keeps the file small."""
    rng = np.random.default_rng(seed)
    n = ROLLOUT_SLOW_SIZE
    inputs, outputs = rollout_io()
    init = [
        numpy_helper.from_array(rng.standard_normal((n, 1)).astype(np.float32), "u"),
        numpy_helper.from_array(rng.standard_normal((1, n)).astype(np.float32), "v"),
        numpy_helper.from_array(np.array(7.0, dtype=np.float32), "freq"),
        numpy_helper.from_array(np.array(np.sqrt(n / 2.0), dtype=np.float32), "norm"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "first.start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "first.end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "first.axes"),
        numpy_helper.from_array(np.array(1e30, dtype=np.float32), "never"),
        numpy_helper.from_array(np.array(4000.0, dtype=np.float32), "offset"),
    ]
    nodes = [
        # W, constant: [n, n]
        helper.make_node("MatMul", ["u", "v"], ["uv"], name="uv"),
        helper.make_node("Mul", ["uv", "freq"], ["phase"], name="phase"),
        helper.make_node("Sin", ["phase"], ["wave"], name="wave"),
        helper.make_node("Div", ["wave", "norm"], ["W"], name="W"),
        # s: [1, 1], from the input
        helper.make_node("Slice", ["INPUT0", "first.start", "first.end", "first.axes"],
                         ["first"], name="first"),
        helper.make_node("ReduceSum", ["first"], ["s"], name="s", keepdims=1),
        helper.make_node("Mul", ["s", "W"], ["sW"], name="sW"),
        helper.make_node("Add", ["sW", "W"], ["a0_pre"], name="a0_pre"),
        helper.make_node("Tanh", ["a0_pre"], ["a0"], name="a0"),
    ]
    prev = "a0"
    for i in range(1, ROLLOUT_SLOW_LAYERS + 1):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"p{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"a{i}"], name=f"tanh{i}"))
        prev = f"a{i}"
    nodes += [
        helper.make_node("ReduceSum", [prev], ["total"], name="total", keepdims=1),
        helper.make_node("Greater", ["total", "never"], ["overflow"], name="overflow"),
        helper.make_node("Cast", ["overflow"], ["zero"], name="zero", to=TensorProto.FLOAT),
        helper.make_node("Add", ["INPUT0", "offset"], ["shifted"], name="add"),
        helper.make_node("Add", ["shifted", "zero"], ["OUTPUT0"], name="add_zero"),
    ]
    graph = helper.make_graph(nodes, "rollout_4", inputs, outputs, initializer=init)
    return make_model(graph)


IDENTITY_TYPES = [
    ("bool", "TYPE_BOOL"),
    ("uint8", "TYPE_UINT8"),
    ("uint16", "TYPE_UINT16"),
    ("uint32", "TYPE_UINT32"),
    ("uint64", "TYPE_UINT64"),
    ("int8", "TYPE_INT8"),
    ("int16", "TYPE_INT16"),
    ("int32", "TYPE_INT32"),
    ("int64", "TYPE_INT64"),
    ("fp16", "TYPE_FP16"),
    ("fp32", "TYPE_FP32"),
    ("fp64", "TYPE_FP64"),
    ("string", "TYPE_STRING"),
]

CLASSIFIER_SEEDS = {1: 1001, 2: 2002}
# A wider MLP (64 -> 1024 -> 1024 -> 10, about 1.1 M weights, 4.5 MB): per request its layers are
# matrix-vector products bound by memory, so dynamic batching (matrix-matrix products) pays off.
TABULAR_MLP_SIZES = (64, 1024, 1024, 10)
TABULAR_MLP_SEED = 6006
DIGITS_CNN_SEED = 3003
ROLLOUT_SLOW_SEED = 5004


def add_sub_config(name, triton_type, max_batch_size, dims):
    io = lambda names: [(n, triton_type, dims) for n in names]
    return config_pbtxt(name, max_batch_size, io(["INPUT0", "INPUT1"]), io(["OUTPUT0", "OUTPUT1"]))


def main():
    written = []

    def emit_model(model, *parts):
        path = os.path.join(*parts)
        save_model(model, path)
        written.append(path)

    def emit_config(text, *parts):
        path = os.path.join(*parts)
        write_text(path, text)
        written.append(path)

    # -- shipped models -----------------------------------------------------
    emit_model(build_simple(), REPO_DIR, "simple", "1", "model.onnx")
    emit_config(add_sub_config("simple", "TYPE_INT32", 8, [16]), REPO_DIR, "simple", "config.pbtxt")

    emit_model(build_simple_string(), REPO_DIR, "simple_string", "1", "model.onnx")
    emit_config(add_sub_config("simple_string", "TYPE_STRING", 8, [16]),
                REPO_DIR, "simple_string", "config.pbtxt")

    classifier_v1 = None
    for version, seed in sorted(CLASSIFIER_SEEDS.items()):
        model = build_classifier(seed)
        if version == 1:
            classifier_v1 = model
        emit_model(model, REPO_DIR, "classifier", str(version), "model.onnx")
    emit_config(
        config_pbtxt(
            "classifier", 64,
            [("features", "TYPE_FP32", [64])],
            [("probabilities", "TYPE_FP32", [10])],
            version_policy_all=True,
        ),
        REPO_DIR, "classifier", "config.pbtxt",
    )

    emit_model(build_classifier(TABULAR_MLP_SEED, TABULAR_MLP_SIZES, "tabular_mlp"),
               REPO_DIR, "tabular_mlp", "1", "model.onnx")
    emit_config(
        config_pbtxt(
            "tabular_mlp", 64,
            [("features", "TYPE_FP32", [64])],
            [("probabilities", "TYPE_FP32", [10])],
        ) + "dynamic_batching { max_queue_delay_microseconds: 500 }\n",
        REPO_DIR, "tabular_mlp", "config.pbtxt",
    )

    # The same MLP on a GPU, batches up to 256, with CUDA graphs.
    emit_model(build_classifier(TABULAR_MLP_SEED, TABULAR_MLP_SIZES, "tabular_mlp"),
               REPO_DIR, "tabular_mlp_gpu", "1", "model.onnx")
    emit_config(
        config_pbtxt(
            "tabular_mlp_gpu", GPU_MAX_BATCH_SIZE,
            [("features", "TYPE_FP32", [64])],
            [("probabilities", "TYPE_FP32", [10])],
            kind="KIND_GPU",
        ) + GPU_GRAPHS,
        REPO_DIR, "tabular_mlp_gpu", "config.pbtxt",
    )

    emit_model(build_digits_cnn(DIGITS_CNN_SEED), REPO_DIR, "digits_cnn", "1", "model.onnx")
    emit_config(
        config_pbtxt(
            "digits_cnn", 16,
            [("image", "TYPE_FP32", [1, 28, 28])],
            [("probabilities", "TYPE_FP32", [10])],
        ),
        REPO_DIR, "digits_cnn", "config.pbtxt",
    )

    # The same encoder file twice: served on the CPU, and on a GPU (with CUDA graphs).
    encoder = build_encoder(ENCODER_SEED)
    for name, kind, extra in [("encoder", "KIND_CPU", ""), ("encoder_gpu", "KIND_GPU", GPU_GRAPHS)]:
        emit_model(encoder, REPO_DIR, name, "1", "model.onnx")
        emit_config(
            config_pbtxt(
                name, GPU_MAX_BATCH_SIZE,
                [("tokens", "TYPE_INT64", [ENCODER_SEQ])],
                [("embeddings", "TYPE_FP32", [ENCODER_SEQ, ENCODER_DIM])],
                kind=kind,
            ) + extra,
            REPO_DIR, name, "config.pbtxt",
        )

    # -- fixtures -------------------------------------------------------------
    for suffix, triton_type in IDENTITY_TYPES:
        name = f"identity_{suffix}"
        emit_model(build_identity(suffix, triton_type), FIXTURE_DIR, name, "1", "model.onnx")
        emit_config(
            config_pbtxt(name, 8, [("INPUT0", triton_type, [4])], [("OUTPUT0", triton_type, [4])]),
            FIXTURE_DIR, name, "config.pbtxt",
        )

    emit_model(build_add_sub("add_sub_fp32", TensorProto.FLOAT, 0, [-1]),
               FIXTURE_DIR, "add_sub_fp32", "1", "model.onnx")
    emit_config(add_sub_config("add_sub_fp32", "TYPE_FP32", 0, [-1]),
                FIXTURE_DIR, "add_sub_fp32", "config.pbtxt")

    # Versions 1-4 of one model whose output tells which version served it.
    for version in range(1, 5):
        emit_model(build_versioned(version, 4000 + version),
                   FIXTURE_DIR, "versioned", str(version), "model.onnx")
    emit_config(
        config_pbtxt("versioned", 8, [("INPUT0", "TYPE_FP32", [4])], [("OUTPUT0", "TYPE_FP32", [4])]),
        FIXTURE_DIR, "versioned", "config.pbtxt",
    )

    # Canary rollout / rollback: healthy baseline, healthy candidate, flaky, slow.
    rollout_models = {
        1: build_rollout_healthy(1),
        2: build_rollout_healthy(2),
        3: build_rollout_flaky(),
        4: build_rollout_slow(ROLLOUT_SLOW_SEED),
    }
    for version, model in sorted(rollout_models.items()):
        emit_model(model, FIXTURE_DIR, "rollout", str(version), "model.onnx")
    emit_config(
        config_pbtxt(
            "rollout", 8,
            [("INPUT0", "TYPE_FP32", [4])],
            [("OUTPUT0", "TYPE_FP32", [4])],
            version_policy_all=True,
        ),
        FIXTURE_DIR, "rollout", "config.pbtxt",
    )

    # Same bytes as classifier version 1, deliberately without a config.pbtxt.
    emit_model(classifier_v1, FIXTURE_DIR, "no_config_mlp", "1", "model.onnx")

    root = os.path.dirname(REPO_DIR)
    for path in written:
        print(os.path.relpath(path, root))


if __name__ == "__main__":
    main()
