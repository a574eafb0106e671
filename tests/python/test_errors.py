"""Rejected requests: exact gRPC status codes and messages, and that the daemon keeps serving afterwards."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from switchyard_support import (
    RPC_TIMEOUT_S,
    add_raw_input,
    add_typed_input,
    assert_error,
    check_simple,
    infer_input,
    random_int32,
    requested,
    simple_inputs,
    stub_request,
)

T = RPC_TIMEOUT_S
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def infer_error(client, model, inputs, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(model, inputs, client_timeout=T, **kwargs)
    return exc.value


def stub_error(stub, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=T)
    return exc.value


@pytest.fixture
def serving(client, rng):
    """Yields the client; afterwards checks that a correct request still gets a correct answer."""
    yield client
    check_simple(client, 2, rng)


# ---------------------------------------------------------------------------- unknown model / version


def test_unknown_model(serving, rng):
    a = random_int32(rng, (1, 16))
    exc = infer_error(serving, "nope", simple_inputs(a, a))
    assert_error(exc, grpc.StatusCode.NOT_FOUND)
    assert exc.message() == "Request for unknown model: 'nope' is not found"


def test_unknown_model_via_stub(stub, serving, rng):
    a = random_int32(rng, (1, 16))
    req = stub_request("nope")
    add_raw_input(req, "INPUT0", "INT32", a.shape, a.tobytes())
    add_raw_input(req, "INPUT1", "INT32", a.shape, a.tobytes())
    exc = stub_error(stub, req)
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert exc.details() == "Request for unknown model: 'nope' is not found"


@pytest.mark.parametrize("model,version", [("simple", "7"), ("classifier", "3")])
def test_unknown_version(serving, rng, model, version):
    if model == "simple":
        a = random_int32(rng, (1, 16))
        inputs = simple_inputs(a, a)
    else:
        inputs = [infer_input("features", rng.standard_normal((1, 64)).astype(np.float32), "FP32")]
    exc = infer_error(serving, model, inputs, model_version=version)
    assert_error(exc, grpc.StatusCode.NOT_FOUND, model, version)


def test_broken_model_is_unavailable(serving, rng):
    a = random_int32(rng, (1, 16))
    exc = infer_error(serving, "broken", simple_inputs(a, a))
    assert_error(exc, grpc.StatusCode.UNAVAILABLE, "broken")


# ---------------------------------------------------------------------------- contents


def test_raw_and_typed_for_one_input(stub, serving, rng):
    a = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_raw_input(req, "INPUT0", "INT32", a.shape, a.tobytes())
    add_raw_input(req, "INPUT1", "INT32", a.shape, a.tobytes())
    req.inputs[0].contents.int_contents.extend(a.reshape(-1).tolist())
    assert_error(stub_error(stub, req), INVALID, "INPUT0")


def test_raw_for_some_inputs_only(stub, serving, rng):
    """raw_input_contents is positional: it must cover every input or none."""
    a = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_typed_input(req, "INPUT0", "INT32", a.shape, a.reshape(-1).tolist())
    add_raw_input(req, "INPUT1", "INT32", a.shape, a.tobytes())
    assert_error(stub_error(stub, req), INVALID)


def test_wrong_datatype(serving):
    x = np.ones((1, 16), dtype=np.float32)
    b = np.ones((1, 16), dtype=np.int32)
    exc = infer_error(serving, "simple", [infer_input("INPUT0", x, "FP32"), infer_input("INPUT1", b, "INT32")])
    assert_error(exc, INVALID, "INPUT0", "simple", "INT32", "FP32")


def test_wrong_shape(serving):
    a = np.ones((1, 8), dtype=np.int32)
    b = np.ones((1, 16), dtype=np.int32)
    exc = infer_error(serving, "simple", [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", b, "INT32")])
    assert_error(exc, INVALID, "INPUT0", "[-1,16]", "[1,8]")


def test_missing_batch_dimension(serving):
    a = np.ones((16,), dtype=np.int32)
    exc = infer_error(serving, "simple", [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", a, "INT32")])
    assert_error(exc, INVALID, "INPUT0", "[-1,16]", "[16]")


def test_raw_byte_size_mismatch(stub, serving, rng):
    b = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_raw_input(req, "INPUT0", "INT32", [1, 16], b"\x01" * 60)
    add_raw_input(req, "INPUT1", "INT32", [1, 16], b.tobytes())
    assert_error(stub_error(stub, req), INVALID, "INPUT0", "64", "60")


def test_typed_element_count_mismatch(stub, serving, rng):
    b = random_int32(rng, (1, 16))
    req = stub_request("simple")
    add_typed_input(req, "INPUT0", "INT32", [1, 16], list(range(15)))
    add_typed_input(req, "INPUT1", "INT32", [1, 16], b.reshape(-1).tolist())
    assert_error(stub_error(stub, req), INVALID, "INPUT0")


def test_typed_contents_in_wrong_field(stub, serving):
    """INT32 data sent in fp32_contents carries no INT32 elements."""
    req = stub_request("simple")
    add_typed_input(req, "INPUT0", "INT32", [1, 16], list(range(16)))
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = "INPUT1", "INT32"
    tensor.shape.extend([1, 16])
    tensor.contents.fp32_contents.extend([1.0] * 16)
    assert_error(stub_error(stub, req), INVALID, "INPUT1")


def test_bytes_raw_malformed(stub, serving):
    """A BYTES element whose length prefix overruns the buffer."""
    req = stub_request("identity_string")
    add_raw_input(req, "INPUT0", "BYTES", [1, 4], b"\x01\x00\x00\x00a" * 3 + b"\xff\x00\x00\x00ab")
    assert_error(stub_error(stub, req), INVALID, "INPUT0")


# ---------------------------------------------------------------------------- inputs and outputs by name


def test_missing_input(serving, rng):
    a = random_int32(rng, (1, 16))
    exc = infer_error(serving, "simple", [infer_input("INPUT0", a, "INT32")])
    assert_error(exc, INVALID, "INPUT1")


def test_unknown_input(serving, rng):
    a = random_int32(rng, (1, 16))
    inputs = simple_inputs(a, a) + [infer_input("FOO", a, "INT32")]
    exc = infer_error(serving, "simple", inputs)
    assert_error(exc, INVALID, "FOO")


def test_duplicate_input(serving, rng):
    a = random_int32(rng, (1, 16))
    inputs = simple_inputs(a, a) + [infer_input("INPUT0", a, "INT32")]
    exc = infer_error(serving, "simple", inputs)
    assert_error(exc, INVALID, "INPUT0")


def test_unknown_requested_output(serving, rng):
    a = random_int32(rng, (1, 16))
    exc = infer_error(serving, "simple", simple_inputs(a, a), outputs=requested("OUTPUT9"))
    assert_error(exc, INVALID, "OUTPUT9")


# ---------------------------------------------------------------------------- batching and sizes


def test_batch_too_large(serving, rng):
    a = random_int32(rng, (9, 16))
    exc = infer_error(serving, "simple", simple_inputs(a, a))
    assert_error(exc, INVALID, "8", "9")


def test_batch_mismatch_between_inputs(serving, rng):
    a = random_int32(rng, (2, 16))
    b = random_int32(rng, (3, 16))
    exc = infer_error(serving, "simple", simple_inputs(a, b))
    assert_error(exc, INVALID)


def test_zero_batch(serving):
    """An empty batch is either answered with empty outputs or rejected as a client error."""
    a = np.zeros((0, 16), dtype=np.int32)
    try:
        result = serving.infer("simple", simple_inputs(a, a), client_timeout=T)
    except InferenceServerException as exc:
        assert_error(exc, INVALID)
    else:
        assert result.as_numpy("OUTPUT0").shape == (0, 16)


@pytest.mark.parametrize(
    "model,shape,needles",
    [
        ("simple", [1, 2**40], ["INPUT0"]),
        ("simple", [2**40, 16], ["8"]),  # over max_batch_size before anything else
        ("add_sub_fp32", [2**40], ["INPUT0"]),
        ("add_sub_fp32", [2**62], ["INPUT0"]),  # element count x 4 bytes overflows 64 bits
        ("add_sub_fp32", [2**31, 2**31, 2**31], ["INPUT0"]),  # element count overflows 64 bits
        ("add_sub_fp32", [-5], ["INPUT0"]),
    ],
)
def test_huge_or_negative_shape(stub, serving, model, shape, needles):
    datatype = "INT32" if model == "simple" else "FP32"
    req = stub_request(model)
    add_raw_input(req, "INPUT0", datatype, shape, b"\x00" * 64)
    add_raw_input(req, "INPUT1", datatype, shape, b"\x00" * 64)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=10)
    assert_error(exc.value, INVALID, *needles)
    assert time.monotonic() - started < 5, "rejecting an impossible shape should be quick"
    assert serving.is_server_live(client_timeout=T)
    assert serving.is_server_ready(client_timeout=T)


def test_huge_typed_shape(stub, serving):
    req = stub_request("simple")
    add_typed_input(req, "INPUT0", "INT32", [2**40, 16], [1, 2, 3])
    add_typed_input(req, "INPUT1", "INT32", [2**40, 16], [1, 2, 3])
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=10)
    assert_error(exc.value, INVALID)
    assert serving.is_server_live(client_timeout=T)


# ---------------------------------------------------------------------------- still serving


def test_still_serving_after_errors(client, rng):
    """Independent of order: a burst of bad requests, then correct answers."""
    a = random_int32(rng, (1, 16))
    for _ in range(20):
        with pytest.raises(InferenceServerException):
            client.infer("simple", [infer_input("INPUT0", a.astype(np.float32), "FP32")], client_timeout=T)
        with pytest.raises(InferenceServerException):
            client.infer("nope", simple_inputs(a, a), client_timeout=T)
    assert client.is_server_ready(client_timeout=T)
    for batch in (1, 8):
        check_simple(client, batch, rng)
