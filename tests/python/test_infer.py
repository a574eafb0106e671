"""Inference through tritonclient (raw contents) and through the generated stubs (typed contents)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from switchyard_support import (
    RPC_TIMEOUT_S,
    add_raw_input,
    add_typed_input,
    infer_input,
    onnx_reference,
    random_int32,
    raw_output,
    requested,
    simple_inputs,
    stub_request,
)

T = RPC_TIMEOUT_S


# ---------------------------------------------------------------------------- simple, raw


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_simple_add_sub(client, rng, batch):
    a = random_int32(rng, (batch, 16))
    b = random_int32(rng, (batch, 16))
    result = client.infer("simple", simple_inputs(a, b), client_timeout=T)
    out0 = result.as_numpy("OUTPUT0")
    out1 = result.as_numpy("OUTPUT1")
    assert out0.dtype == np.int32 and out1.dtype == np.int32
    assert out0.shape == (batch, 16) and out1.shape == (batch, 16)
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)
    response = result.get_response()
    assert response.model_name == "simple"
    assert response.model_version == "1"
    shapes = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
    assert shapes == {"OUTPUT0": ("INT32", [batch, 16]), "OUTPUT1": ("INT32", [batch, 16])}


def test_simple_extreme_values(client):
    """Edge-of-range values where the sum and difference stay representable."""
    a = np.array([[2**31 - 1, -(2**31), 0, 1, -1, 2**30, -(2**30), 123456789] * 2], dtype=np.int32)
    b = np.array([[0, 0, 0, -1, 1, 2**30 - 1, -(2**30), -987654321] * 2], dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), client_timeout=T)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a.astype(np.int64) + b).astype(np.int32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (a.astype(np.int64) - b).astype(np.int32))


def test_only_requested_output_is_returned(client, rng):
    a = random_int32(rng, (2, 16))
    b = random_int32(rng, (2, 16))
    result = client.infer("simple", simple_inputs(a, b), outputs=requested("OUTPUT1"), client_timeout=T)
    names = [o.name for o in result.get_response().outputs]
    assert names == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_outputs_in_any_order(client, rng):
    a = random_int32(rng, (1, 16))
    b = random_int32(rng, (1, 16))
    result = client.infer("simple", simple_inputs(a, b), outputs=requested("OUTPUT1", "OUTPUT0"),
                          client_timeout=T)
    assert sorted(o.name for o in result.get_response().outputs) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_inputs_in_any_order(client, rng):
    a = random_int32(rng, (2, 16))
    b = random_int32(rng, (2, 16))
    inputs = [infer_input("INPUT1", b, "INT32"), infer_input("INPUT0", a, "INT32")]
    result = client.infer("simple", inputs, client_timeout=T)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_request_id_is_echoed(client, rng):
    a = random_int32(rng, (1, 16))
    result = client.infer("simple", simple_inputs(a, a), request_id="req-42/ü", client_timeout=T)
    assert result.get_response().id == "req-42/ü"


def test_no_request_id_gives_empty_id(client, rng):
    a = random_int32(rng, (1, 16))
    result = client.infer("simple", simple_inputs(a, a), client_timeout=T)
    assert result.get_response().id == ""


def test_async_infer(client, rng):
    a = random_int32(rng, (4, 16))
    b = random_int32(rng, (4, 16))
    done = threading.Event()
    box = {}

    def callback(result, error):
        box["result"], box["error"] = result, error
        done.set()

    client.async_infer("simple", simple_inputs(a, b), callback, request_id="async-1", client_timeout=T)
    assert done.wait(T), "no async response"
    assert box["error"] is None, box["error"]
    assert box["result"].get_response().id == "async-1"
    np.testing.assert_array_equal(box["result"].as_numpy("OUTPUT0"), a + b)


def test_concurrent_requests(daemon, rng):
    """Several clients at once; each gets its own answer (no cross-talk between requests)."""
    n_threads, per_thread = 8, 10
    data = [
        [(random_int32(rng, (1 + (t + i) % 8, 16)), random_int32(rng, (1 + (t + i) % 8, 16)))
         for i in range(per_thread)]
        for t in range(n_threads)
    ]
    errors: list[str] = []

    def worker(t):
        with grpcclient.InferenceServerClient(daemon.addr) as c:
            for i, (a, b) in enumerate(data[t]):
                rid = f"t{t}-{i}"
                try:
                    r = c.infer("simple", simple_inputs(a, b), request_id=rid, client_timeout=T)
                    assert r.get_response().id == rid
                    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
                    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
                except Exception as exc:  # collected and reported below
                    errors.append(f"{rid}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "requests still running after 120 s"
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------------- versions


def _classify(client, x, version=""):
    result = client.infer("classifier", [infer_input("features", x, "FP32")], model_version=version,
                          client_timeout=T)
    return result.get_response().model_version, result.as_numpy("probabilities")


def test_default_version_is_latest(client, rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    version, _ = _classify(client, x)
    assert version == "2"


@pytest.mark.parametrize("version", ["1", "2"])
def test_explicit_version_serves(client, rng, version):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    served, _ = _classify(client, x, version)
    assert served == version


def test_versions_give_different_outputs(client, rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    _, p1 = _classify(client, x, "1")
    _, p2 = _classify(client, x, "2")
    _, p_default = _classify(client, x)
    assert not np.allclose(p1, p2, rtol=1e-4, atol=1e-5), "classifier v1 and v2 answered the same"
    np.testing.assert_array_equal(p_default, p2)


# ---------------------------------------------------------------------------- against onnxruntime


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_classifier_matches_onnxruntime(client, model_repository, rng, version, batch):
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    served, probs = _classify(client, x, version)
    assert served == version
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    model_file = model_repository / "classifier" / version / "model.onnx"
    expected = onnx_reference(model_file, {"features": x})["probabilities"]
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_tabular_mlp_matches_onnxruntime(client, model_repository, rng, batch):
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    result = client.infer("tabular_mlp", [infer_input("features", x, "FP32")], client_timeout=T)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    model_file = model_repository / "tabular_mlp" / "1" / "model.onnx"
    expected = onnx_reference(model_file, {"features": x})["probabilities"]
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_digits_cnn_matches_onnxruntime(client, model_repository, rng, batch):
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    result = client.infer("digits_cnn", [infer_input("image", x, "FP32")], client_timeout=T)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    model_file = model_repository / "digits_cnn" / "1" / "model.onnx"
    expected = onnx_reference(model_file, {"image": x})["probabilities"]
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)


def test_add_sub_fp32_without_batching(client, rng):
    for n in (1, 7, 1000):
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        inputs = [infer_input("INPUT0", a, "FP32"), infer_input("INPUT1", b, "FP32")]
        result = client.infer("add_sub_fp32", inputs, client_timeout=T)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6, atol=0)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6, atol=0)
        assert result.as_numpy("OUTPUT0").shape == (n,)


# ---------------------------------------------------------------------------- strings


def test_simple_string(client, rng):
    a = random_int32(rng, (2, 16)) // 1024
    b = random_int32(rng, (2, 16)) // 1024
    enc = np.vectorize(lambda v: str(int(v)).encode(), otypes=[np.object_])
    inputs = [infer_input("INPUT0", enc(a), "BYTES"), infer_input("INPUT1", enc(b), "BYTES")]
    result = client.infer("simple_string", inputs, client_timeout=T)
    out0 = result.as_numpy("OUTPUT0")
    out1 = result.as_numpy("OUTPUT1")
    assert out0.shape == (2, 16) and out1.shape == (2, 16)
    dec = np.vectorize(lambda v: int(v.decode() if isinstance(v, bytes) else v), otypes=[np.int64])
    np.testing.assert_array_equal(dec(out0), a.astype(np.int64) + b)
    np.testing.assert_array_equal(dec(out1), a.astype(np.int64) - b)


def test_simple_string_literal(client):
    a = np.array([[b"12"] * 16], dtype=np.object_)
    b = np.array([[b"30"] * 16], dtype=np.object_)
    inputs = [infer_input("INPUT0", a, "BYTES"), infer_input("INPUT1", b, "BYTES")]
    result = client.infer("simple_string", inputs, client_timeout=T)
    assert [int(v) for v in result.as_numpy("OUTPUT0").reshape(-1)] == [42] * 16
    assert [int(v) for v in result.as_numpy("OUTPUT1").reshape(-1)] == [-18] * 16


# ---------------------------------------------------------------------------- typed contents (stubs)


def test_simple_typed_int_contents(stub, rng):
    a = random_int32(rng, (3, 16))
    b = random_int32(rng, (3, 16))
    req = stub_request("simple", request_id="typed-1")
    add_typed_input(req, "INPUT0", "INT32", a.shape, a.reshape(-1).tolist())
    add_typed_input(req, "INPUT1", "INT32", b.shape, b.reshape(-1).tolist())
    resp = stub.ModelInfer(req, timeout=T)
    assert resp.id == "typed-1"
    assert resp.model_name == "simple"
    assert resp.model_version == "1"
    np.testing.assert_array_equal(raw_output(resp, "OUTPUT0"), a + b)
    np.testing.assert_array_equal(raw_output(resp, "OUTPUT1"), a - b)


def test_classifier_typed_fp32_contents(stub, model_repository, rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    req = stub_request("classifier", version="1")
    add_typed_input(req, "features", "FP32", x.shape, x.reshape(-1).tolist())
    resp = stub.ModelInfer(req, timeout=T)
    assert resp.model_version == "1"
    expected = onnx_reference(model_repository / "classifier" / "1" / "model.onnx", {"features": x})
    np.testing.assert_allclose(raw_output(resp, "probabilities"), expected["probabilities"],
                               rtol=1e-4, atol=1e-5)


def test_simple_string_typed_bytes_contents(stub):
    req = stub_request("simple_string")
    add_typed_input(req, "INPUT0", "BYTES", [1, 16], [str(i).encode() for i in range(16)])
    add_typed_input(req, "INPUT1", "BYTES", [1, 16], [str(2 * i).encode() for i in range(16)])
    resp = stub.ModelInfer(req, timeout=T)
    assert [int(v) for v in raw_output(resp, "OUTPUT0").reshape(-1)] == [3 * i for i in range(16)]
    assert [int(v) for v in raw_output(resp, "OUTPUT1").reshape(-1)] == [-i for i in range(16)]


def test_stub_raw_request_with_requested_output(stub, rng):
    a = random_int32(rng, (1, 16))
    b = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_raw_input(req, "INPUT0", "INT32", a.shape, a.astype("<i4").tobytes())
    add_raw_input(req, "INPUT1", "INT32", b.shape, b.astype("<i4").tobytes())
    req.outputs.add().name = "OUTPUT0"
    resp = stub.ModelInfer(req, timeout=T)
    assert [o.name for o in resp.outputs] == ["OUTPUT0"]
    assert len(resp.raw_output_contents) == 1
    np.testing.assert_array_equal(raw_output(resp, "OUTPUT0"), a + b)


def test_response_message_type(stub, rng):
    a = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_raw_input(req, "INPUT0", "INT32", a.shape, a.tobytes())
    add_raw_input(req, "INPUT1", "INT32", a.shape, a.tobytes())
    resp = stub.ModelInfer(req, timeout=T)
    assert isinstance(resp, service_pb2.ModelInferResponse)
    np.testing.assert_array_equal(raw_output(resp, "OUTPUT1"), np.zeros((1, 16), np.int32))
