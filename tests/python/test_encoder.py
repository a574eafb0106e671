"""The shipped transformer encoder block: served on the CPU (`encoder`) it matches onnxruntime;
its KIND_GPU twin (`encoder_gpu`, the same file) is UNAVAILABLE where there is no usable GPU,
with a reason that says so, while the CPU twin beside it serves."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from switchyard_support import (
    RPC_TIMEOUT_S,
    SHIPPED_GPU_MODELS,
    Daemon,
    build_repository,
    infer_input,
    onnx_reference,
)

T = RPC_TIMEOUT_S
SEQ, DIM, VOCAB = 32, 64, 1000


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_encoder_matches_onnxruntime(client, model_repository, rng, batch):
    tokens = rng.integers(0, VOCAB, (batch, SEQ), dtype=np.int64)
    tokens[0, :2] = [0, VOCAB - 1]
    result = client.infer("encoder", [infer_input("tokens", tokens, "INT64")], client_timeout=T)
    out = result.as_numpy("embeddings")
    assert out.shape == (batch, SEQ, DIM) and out.dtype == np.float32
    model_file = model_repository / "encoder" / "1" / "model.onnx"
    expected = onnx_reference(model_file, {"tokens": tokens})["embeddings"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_encoder_rows_depend_on_the_whole_sequence(client, rng):
    """Attention mixes positions: changing one token changes every row of the output."""
    tokens = rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64)
    changed = tokens.copy()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    outs = [
        client.infer("encoder", [infer_input("tokens", t, "INT64")], client_timeout=T).as_numpy("embeddings")
        for t in (tokens, changed)
    ]
    assert np.all(np.abs(outs[0][0, :-1] - outs[1][0, :-1]).max(axis=1) > 0)


def test_encoder_gpu_twin_is_unavailable_without_a_gpu(switchyard_bin, tmp_path):
    repo = build_repository(
        tmp_path / "models", shipped=("encoder", *SHIPPED_GPU_MODELS), fixtures=False, broken=False
    )
    daemon = Daemon(switchyard_bin, repo).start()
    try:
        client = grpcclient.InferenceServerClient(url=daemon.addr)
        index = {}
        for entry in client.get_model_repository_index(client_timeout=T).models:
            index.setdefault(entry.name, []).append(entry)
        assert [e.state for e in index["encoder"]] == ["READY"], index["encoder"]
        for name in SHIPPED_GPU_MODELS:
            (gpu,) = index[name]
            assert gpu.state == "UNAVAILABLE", gpu
            assert "KIND_GPU" in gpu.reason and "GPU" in gpu.reason, gpu.reason
            if ctypes.util.find_library("cuda") is None:
                assert "needs a usable GPU: no NVIDIA driver" in gpu.reason, gpu.reason
        tokens = np.zeros((2, SEQ), dtype=np.int64)
        out = client.infer("encoder", [infer_input("tokens", tokens, "INT64")], client_timeout=T)
        assert out.as_numpy("embeddings").shape == (2, SEQ, DIM)
        client.close()
    finally:
        daemon.stop()
