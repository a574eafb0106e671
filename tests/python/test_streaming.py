"""Bidirectional streaming inference (ModelStreamInfer) through tritonclient and the raw stubs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from switchyard_support import (
    add_raw_input,
    infer_input,
    onnx_reference,
    random_int32,
    raw_output,
    simple_inputs,
    stub_request,
)

STREAM_TIMEOUT_S = 60.0


class Collector:
    """Stream callback that records (result, error) pairs and lets a test wait for a count."""

    def __init__(self):
        self.items: list = []
        self._cond = threading.Condition()

    def __call__(self, result, error):
        with self._cond:
            self.items.append((result, error))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"only {len(self.items)} of {count} stream responses within {timeout:.0f} s: "
                        f"{[(r.get_response().id if r else None, e) for r, e in self.items]}"
                    )
                self._cond.wait(timeout=remaining)
            return list(self.items)


@pytest.fixture
def stream(client):
    collector = Collector()
    client.start_stream(collector, stream_timeout=STREAM_TIMEOUT_S)
    yield client, collector
    client.stop_stream()


def send_simple(client, rng, request_id, batch):
    a = random_int32(rng, (batch, 16))
    b = random_int32(rng, (batch, 16))
    client.async_stream_infer("simple", simple_inputs(a, b), request_id=request_id)
    return a, b


def check_simple_results(results, sent):
    by_id = {}
    for result, error in results:
        assert error is None, f"unexpected stream error: {error}"
        rid = result.get_response().id
        assert rid in sent, f"response for unknown id {rid!r}"
        assert rid not in by_id, f"two responses for id {rid!r}"
        by_id[rid] = result
    assert set(by_id) == set(sent)
    for rid, (a, b) in sent.items():
        np.testing.assert_array_equal(by_id[rid].as_numpy("OUTPUT0"), a + b, err_msg=rid)
        np.testing.assert_array_equal(by_id[rid].as_numpy("OUTPUT1"), a - b, err_msg=rid)


def test_stream_many_requests(stream, rng):
    client, collector = stream
    sent = {f"s-{i}": send_simple(client, rng, f"s-{i}", 1 + i % 8) for i in range(20)}
    check_simple_results(collector.wait_for(20), sent)
    assert len(collector.items) == 20


def test_stream_interleaves_models(stream, rng, model_repository):
    client, collector = stream
    x = rng.standard_normal((2, 64)).astype(np.float32)
    a = random_int32(rng, (1, 16))
    strings = np.array([[str(i).encode() for i in range(16)]], dtype=np.object_)
    for i in range(3):
        client.async_stream_infer("classifier", [infer_input("features", x, "FP32")], model_version="1",
                                  request_id=f"cls-{i}")
        client.async_stream_infer("simple", simple_inputs(a, a), request_id=f"simple-{i}")
        client.async_stream_infer("simple_string",
                                  [infer_input("INPUT0", strings, "BYTES"), infer_input("INPUT1", strings, "BYTES")],
                                  request_id=f"str-{i}")
    results = collector.wait_for(9)
    expected = onnx_reference(model_repository / "classifier" / "1" / "model.onnx", {"features": x})
    ids = set()
    for result, error in results:
        assert error is None, error
        resp = result.get_response()
        ids.add(resp.id)
        if resp.id.startswith("cls-"):
            assert resp.model_name == "classifier" and resp.model_version == "1"
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"],
                                       rtol=1e-4, atol=1e-5)
        elif resp.id.startswith("simple-"):
            assert resp.model_name == "simple"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
        else:
            assert resp.model_name == "simple_string"
            assert [int(v) for v in result.as_numpy("OUTPUT0").reshape(-1)] == [2 * i for i in range(16)]
    assert ids == {f"{p}-{i}" for p in ("cls", "simple", "str") for i in range(3)}


def test_stream_error_does_not_end_stream(stream, rng):
    client, collector = stream
    sent = {"good-0": send_simple(client, rng, "good-0", 2)}
    bad = np.ones((1, 16), dtype=np.float32)
    client.async_stream_infer(
        "simple", [infer_input("INPUT0", bad, "FP32"), infer_input("INPUT1", bad.astype(np.int32), "INT32")],
        request_id="bad-dtype",
    )
    sent["good-1"] = send_simple(client, rng, "good-1", 3)
    client.async_stream_infer("nope", simple_inputs(sent["good-1"][0], sent["good-1"][1]), request_id="bad-model")
    sent["good-2"] = send_simple(client, rng, "good-2", 8)

    results = collector.wait_for(5)
    errors = [str(e.message()) for r, e in results if e is not None]
    goods = [(r, e) for r, e in results if e is None]
    assert len(errors) == 2, errors
    assert any("INPUT0" in m and "FP32" in m for m in errors), errors
    assert "Request for unknown model: 'nope' is not found" in errors, errors
    check_simple_results(goods, sent)

    # Still serving on the same stream.
    more = {f"after-{i}": send_simple(client, rng, f"after-{i}", 1) for i in range(5)}
    check_simple_results(collector.wait_for(10)[5:], more)


def test_stream_half_close_delivers_all_responses(stub, rng):
    """The client sends everything and half-closes; every response still arrives, then the stream ends OK."""
    sent, requests = {}, []
    for i in range(10):
        a = random_int32(rng, (2, 16))
        b = random_int32(rng, (2, 16))
        req = stub_request("simple", request_id=f"h-{i}")
        add_raw_input(req, "INPUT0", "INT32", a.shape, a.tobytes())
        add_raw_input(req, "INPUT1", "INT32", b.shape, b.tobytes())
        requests.append(req)
        sent[f"h-{i}"] = (a, b)
    bad = stub_request("simple", request_id="h-bad")
    add_raw_input(bad, "INPUT0", "INT32", [1, 16], b"\x00" * 60)
    add_raw_input(bad, "INPUT1", "INT32", [1, 16], b"\x00" * 64)
    requests.insert(5, bad)

    responses = list(stub.ModelStreamInfer(iter(requests), timeout=STREAM_TIMEOUT_S))
    assert len(responses) == 11
    errors = [r for r in responses if r.error_message]
    assert len(errors) == 1, [r.error_message for r in errors]
    assert "INPUT0" in errors[0].error_message
    if errors[0].infer_response.id:
        assert errors[0].infer_response.id == "h-bad"
    got = {r.infer_response.id: r.infer_response for r in responses if not r.error_message}
    assert set(got) == set(sent)
    for rid, (a, b) in sent.items():
        np.testing.assert_array_equal(raw_output(got[rid], "OUTPUT0"), a + b, err_msg=rid)
        np.testing.assert_array_equal(raw_output(got[rid], "OUTPUT1"), a - b, err_msg=rid)


def test_empty_stream_ends_cleanly(stub):
    assert list(stub.ModelStreamInfer(iter([]), timeout=STREAM_TIMEOUT_S)) == []


def test_stream_cancel_leaves_daemon_serving(client, daemon, rng):
    """Cancelling a stream mid-flight must not disturb the daemon."""
    collector = Collector()
    client.start_stream(collector, stream_timeout=STREAM_TIMEOUT_S)
    for i in range(5):
        send_simple(client, rng, f"c-{i}", 8)
    client.stop_stream(cancel_requests=True)

    with grpcclient.InferenceServerClient(daemon.addr) as other:
        assert other.is_server_live(client_timeout=10)
        a = random_int32(rng, (1, 16))
        r = other.infer("simple", simple_inputs(a, a), client_timeout=10)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))
