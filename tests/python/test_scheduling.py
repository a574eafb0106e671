"""Scheduling as tritonclient sees it: dynamic batching, the `timeout` and `priority` request
parameters, the queue limit and ModelStatistics for batched executions."""

from __future__ import annotations

import shutil
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from switchyard_support import (
    RPC_TIMEOUT_S,
    SHIPPED_REPOSITORY,
    Daemon,
    assert_error,
    random_int32,
    simple_inputs,
)

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
{extra}
"""

MODELS = {
    "batched": "dynamic_batching { max_queue_delay_microseconds: 20000 priority_levels: 2 "
    "default_priority_level: 2 }",
    "queued": "dynamic_batching { max_queue_delay_microseconds: 500000 "
    "default_queue_policy { max_queue_size: 1 } }",
}


@pytest.fixture
def scheduling_daemon(switchyard_bin, tmp_path):
    repo = tmp_path / "models"
    for name, extra in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(SHIPPED_REPOSITORY / "simple" / "1" / "model.onnx", repo / name / "1")
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))
    d = Daemon(switchyard_bin, repo).start()
    yield d
    d.stop()


def _send_all(client, model, requests, **kwargs):
    """Sends every (a, b) with async_infer at once; returns (result, error) per request, in order."""
    answers: list = [None] * len(requests)
    done = threading.Semaphore(0)

    def callback(i):
        def record(result, error):
            answers[i] = (result, error)
            done.release()

        return record

    for i, (a, b) in enumerate(requests):
        client.async_infer(model, simple_inputs(a, b), callback(i), **kwargs)
    for _ in requests:
        assert done.acquire(timeout=RPC_TIMEOUT_S), "a request was never answered"
    return answers


def test_concurrent_requests_share_executions(scheduling_daemon, rng):
    requests = [(random_int32(rng, (1, 16)), random_int32(rng, (1, 16))) for _ in range(16)]
    with grpcclient.InferenceServerClient(scheduling_daemon.addr) as client:
        answers = _send_all(client, "batched", requests, priority=1)
        for (a, b), (result, error) in zip(requests, answers):
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        stats = client.get_inference_statistics("batched", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == 16
    assert int(stats["execution_count"]) < 16
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert max(sizes) > 1, stats["batch_stats"]


def test_timeout_parameter_answers_deadline_exceeded(scheduling_daemon, rng):
    a, b = random_int32(rng, (1, 16)), random_int32(rng, (1, 16))
    with grpcclient.InferenceServerClient(scheduling_daemon.addr) as client:
        with pytest.raises(Exception) as info:
            client.infer("queued", simple_inputs(a, b), timeout=1000, client_timeout=RPC_TIMEOUT_S)
        assert_error(info.value, grpc.StatusCode.DEADLINE_EXCEEDED, "'queued'", "timeout")


def test_a_full_queue_answers_resource_exhausted(scheduling_daemon, rng):
    requests = [(random_int32(rng, (1, 16)), random_int32(rng, (1, 16))) for _ in range(3)]
    with grpcclient.InferenceServerClient(scheduling_daemon.addr) as client:
        answers = _send_all(client, "queued", requests)
    errors = [e for _, e in answers if e is not None]
    assert len(errors) == 2, answers
    for e in errors:
        assert_error(e, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full")
