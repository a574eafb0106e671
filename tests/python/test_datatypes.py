"""Every Triton datatype through the identity models, as raw contents (tritonclient) and as typed contents (stubs)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from switchyard_support import (
    IDENTITY_TYPES,
    RPC_TIMEOUT_S,
    TRITON_TO_NUMPY,
    TYPED_FIELD,
    add_typed_input,
    assert_error,
    check_simple,
    identity_model,
    infer_input,
    raw_output,
    stub_request,
    typed_values,
)

T = RPC_TIMEOUT_S
TYPED_TYPES = tuple(t for t in IDENTITY_TYPES if t in TYPED_FIELD)


def sample(datatype: str, rng: np.random.Generator, shape) -> np.ndarray:
    """Random data of `datatype`, with the type's edge values placed first."""
    n = int(np.prod(shape))
    dtype = TRITON_TO_NUMPY[datatype]
    if datatype == "BOOL":
        flat = rng.integers(0, 2, size=n).astype(np.bool_)
        edge = [True, False]
    elif datatype == "BYTES":
        edge = [b"", b"\x00", "h\u00e9llo \u2603 \U0001f600".encode(), b"\x00\x01\x7f" * 8]
        flat = np.array([random_text(rng) for _ in range(n)], dtype=np.object_)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True)
        edge = [info.min, info.max, 0]
    else:
        flat = (rng.standard_normal(n) * 1000).astype(dtype)
        info = np.finfo(dtype)
        edge = [np.inf, -np.inf, -0.0, info.max, info.min, info.smallest_subnormal, np.nan]
    k = min(len(edge), n)
    flat[:k] = edge[:k]
    return flat.reshape(shape)


def random_text(rng: np.random.Generator) -> bytes:
    """Random UTF-8: code points from 1 to 4 bytes long, no surrogates."""
    ranges = [(0x00, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(int(rng.integers(0, 24))):
        lo, hi = ranges[int(rng.integers(len(ranges)))]
        chars.append(chr(int(rng.integers(lo, hi, endpoint=True))))
    return "".join(chars).encode("utf-8")


def assert_identical(got: np.ndarray, sent: np.ndarray, datatype: str) -> None:
    assert got.shape == sent.shape, (got.shape, sent.shape)
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [bytes(v) for v in sent.reshape(-1)]
        return
    assert got.dtype == sent.dtype, (got.dtype, sent.dtype)
    np.testing.assert_array_equal(got, sent)
    if sent.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(got), np.signbit(sent))


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("datatype", IDENTITY_TYPES)
def test_identity_raw(client, rng, datatype, batch):
    sent = sample(datatype, rng, (batch, 4))
    result = client.infer(identity_model(datatype), [infer_input("INPUT0", sent, datatype)],
                          request_id=f"{datatype}-{batch}", client_timeout=T)
    response = result.get_response()
    assert response.id == f"{datatype}-{batch}"
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUTPUT0", datatype, [batch, 4])
    assert_identical(result.as_numpy("OUTPUT0"), sent, datatype)


@pytest.mark.parametrize("datatype", TYPED_TYPES)
def test_identity_typed(stub, rng, datatype):
    sent = sample(datatype, rng, (3, 4))
    req = stub_request(identity_model(datatype), request_id=f"typed-{datatype}")
    add_typed_input(req, "INPUT0", datatype, sent.shape, typed_values(sent, datatype))
    resp = stub.ModelInfer(req, timeout=T)
    assert resp.id == f"typed-{datatype}"
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUTPUT0", datatype, [3, 4])
    assert_identical(raw_output(resp, "OUTPUT0"), sent, datatype)


def test_identity_non_utf8_bytes(client):
    """BYTES are bytes, not text. The model's string tensors may need UTF-8; if the daemon cannot carry
    arbitrary bytes it must say so as a client error naming the input, not as an internal failure."""
    sent = np.array([[b"\xff\xfe", b"\x80", b"ok", b"\xc3\x28"]], dtype=np.object_)
    try:
        result = client.infer("identity_string", [infer_input("INPUT0", sent, "BYTES")], client_timeout=T)
    except InferenceServerException as exc:
        assert_error(exc, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0")
    else:
        assert_identical(result.as_numpy("OUTPUT0"), sent, "BYTES")
    check_simple(client, 1, np.random.default_rng(0))


def test_fp16_has_no_typed_field():
    """The protocol carries FP16 only as raw bytes; the raw test above covers it."""
    assert "FP16" not in TYPED_FIELD


def test_bytes_wire_format(client):
    """BYTES outputs come back as 4-byte little-endian length-prefixed elements."""
    sent = np.array([[b"a", b"", b"abc", b"\x00\x00"]], dtype=np.object_)
    result = client.infer("identity_string", [infer_input("INPUT0", sent, "BYTES")], client_timeout=T)
    raw = result.get_response().raw_output_contents[0]
    assert raw == (
        b"\x01\x00\x00\x00a"
        b"\x00\x00\x00\x00"
        b"\x03\x00\x00\x00abc"
        b"\x02\x00\x00\x00\x00\x00"
    )


def test_bool_wire_format(client):
    """BOOL outputs come back one byte per element."""
    sent = np.array([[True, False, False, True]])
    result = client.infer("identity_bool", [infer_input("INPUT0", sent, "BOOL")], client_timeout=T)
    assert result.get_response().raw_output_contents[0] == b"\x01\x00\x00\x01"
