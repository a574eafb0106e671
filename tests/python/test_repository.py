"""The model repository: index, states and reasons, and the load/unload API on a daemon of each test's own."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from switchyard_support import (
    RPC_TIMEOUT_S,
    SHIPPED_REPOSITORY,
    assert_error,
    check_simple,
    infer_input,
    model_names,
    onnx_reference,
    random_int32,
    simple_inputs,
    version_dirs,
)

T = RPC_TIMEOUT_S


def index_by_model(client) -> dict[str, list]:
    entries: dict[str, list] = {}
    for m in client.get_model_repository_index(client_timeout=T).models:
        entries.setdefault(m.name, []).append(m)
    return entries


# ---------------------------------------------------------------------------- index


def test_index_lists_every_model(client, model_repository):
    index = index_by_model(client)
    assert sorted(index) == model_names(model_repository)


def test_index_ready_models(client, model_repository):
    index = index_by_model(client)
    for name in model_names(model_repository):
        if name == "broken":
            continue
        on_disk = version_dirs(model_repository / name)
        for entry in index[name]:
            assert entry.state == "READY", (name, entry)
            assert entry.version in on_disk, (name, entry.version, on_disk)
        assert on_disk[-1] in {e.version for e in index[name]}, (name, index[name])


def test_index_classifier_lists_both_versions(client):
    versions = {e.version for e in index_by_model(client)["classifier"]}
    assert versions == {"1", "2"}


def test_index_broken_model(client):
    (entry,) = index_by_model(client)["broken"]
    assert entry.state == "UNAVAILABLE"
    reason = entry.reason
    assert reason.strip(), "a model that failed to load needs a reason"
    assert any(word in reason for word in ("max_batch_size", "eight", "config.pbtxt")), reason


def test_index_json(client):
    index = client.get_model_repository_index(as_json=True, client_timeout=T)
    states = {}
    for m in index["models"]:
        states.setdefault(m["name"], set()).add(m.get("state"))
    assert states["simple"] == {"READY"}
    assert states["broken"] == {"UNAVAILABLE"}


def test_index_ready_filter(stub):
    resp = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=T)
    names = {m.name for m in resp.models}
    assert "simple" in names and "classifier" in names
    assert "broken" not in names
    assert all(m.state == "READY" for m in resp.models)


def test_broken_model_failure_is_logged(daemon):
    """Loading `broken` failed before "listening"; the log says so at WARN or ERROR."""
    hits = [
        r for r in daemon.log_records()
        if r.get("level") in ("WARN", "ERROR") and "broken" in str(r)
    ]
    assert hits, "no WARN/ERROR log record mentions the broken model"


# ---------------------------------------------------------------------------- load / unload


def test_load_unload_refused_without_explicit_mode(client, rng):
    """The shared daemon runs in control mode none: repository changes are refused, nothing changes."""
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("simple", client_timeout=T)
    assert_error(exc.value, grpc.StatusCode.UNAVAILABLE, "explicit")
    with pytest.raises(InferenceServerException) as exc:
        client.unload_model("nope", client_timeout=T)
    assert_error(exc.value, grpc.StatusCode.UNAVAILABLE, "explicit")
    assert client.is_model_ready("simple", client_timeout=T) is True
    check_simple(client, 1, rng)


def classify(client, x, version=""):
    return client.infer("classifier", [infer_input("features", x, "FP32")], model_version=version,
                        client_timeout=T)


def check_classifier(client, repository, rng, version):
    x = rng.standard_normal((3, 64)).astype(np.float32)
    result = classify(client, x, version)
    assert result.get_response().model_version == version
    expected = onnx_reference(repository / "classifier" / version / "model.onnx", {"features": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"],
                               rtol=1e-4, atol=1e-5)


def test_unload_then_load(private_client, small_repository, rng):
    c = private_client
    check_classifier(c, small_repository, rng, "2")

    c.unload_model("classifier", client_timeout=T)
    assert c.is_model_ready("classifier", client_timeout=T) is False
    assert c.is_model_ready("classifier", "1", client_timeout=T) is False
    assert c.is_model_ready("classifier", "2", client_timeout=T) is False
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with pytest.raises(InferenceServerException) as exc:
        classify(c, x)
    assert_error(exc.value, grpc.StatusCode.UNAVAILABLE, "classifier")
    # The unloaded model stays in the index, no longer READY.
    entries = index_by_model(c)["classifier"]
    assert entries and all(e.state != "READY" for e in entries), entries
    # Other models are untouched.
    assert c.is_model_ready("simple", client_timeout=T) is True
    check_simple(c, 4, rng)

    c.load_model("classifier", client_timeout=T)
    assert c.is_model_ready("classifier", client_timeout=T) is True
    assert c.is_model_ready("classifier", "1", client_timeout=T) is True
    assert c.is_model_ready("classifier", "2", client_timeout=T) is True
    check_classifier(c, small_repository, rng, "1")
    check_classifier(c, small_repository, rng, "2")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    assert classify(c, x).get_response().model_version == "2"


@pytest.mark.parametrize("version", ["1", "2"])
def test_unloaded_version_is_unavailable(private_client, rng, version):
    """A version that exists and was served is UNAVAILABLE once unloaded, not an unknown version."""
    c = private_client
    x = rng.standard_normal((1, 64)).astype(np.float32)
    assert classify(c, x, version).get_response().model_version == version
    c.unload_model("classifier", client_timeout=T)
    with pytest.raises(InferenceServerException) as exc:
        classify(c, x, version)
    assert_error(exc.value, grpc.StatusCode.UNAVAILABLE, "classifier")


def test_unload_is_idempotent_and_load_of_ready_model_reloads(private_client, small_repository, rng):
    c = private_client
    c.load_model("simple", client_timeout=T)  # already loaded: a reload
    assert c.is_model_ready("simple", client_timeout=T) is True
    check_simple(c, 2, rng)
    c.unload_model("simple", client_timeout=T)
    c.unload_model("simple", client_timeout=T)
    assert c.is_model_ready("simple", client_timeout=T) is False
    a = random_int32(rng, (1, 16))
    with pytest.raises(InferenceServerException) as exc:
        c.infer("simple", simple_inputs(a, a), client_timeout=T)
    assert_error(exc.value, grpc.StatusCode.UNAVAILABLE, "simple")
    c.load_model("simple", client_timeout=T)
    check_simple(c, 8, rng)


def test_load_unknown_model_fails(private_client, rng):
    c = private_client
    with pytest.raises(InferenceServerException) as exc:
        c.load_model("nope", client_timeout=T)
    assert "nope" in exc.value.message()
    assert c.is_model_ready("nope", client_timeout=T) is False
    check_simple(c, 1, rng)


def test_load_broken_model_fails_then_succeeds_once_fixed(private_client, small_repository, rng):
    c = private_client
    with pytest.raises(InferenceServerException) as exc:
        c.load_model("broken", client_timeout=T)
    assert "broken" in exc.value.message()
    assert c.is_model_ready("broken", client_timeout=T) is False
    (entry,) = index_by_model(c)["broken"]
    assert entry.state == "UNAVAILABLE" and entry.reason

    # Repair the configuration on disk; a load request reads the repository again.
    shutil.copyfile(SHIPPED_REPOSITORY / "simple" / "config.pbtxt", small_repository / "broken" / "config.pbtxt")
    text = (small_repository / "broken" / "config.pbtxt").read_text()
    (small_repository / "broken" / "config.pbtxt").write_text(text.replace('"simple"', '"broken"'))
    c.load_model("broken", client_timeout=T)
    assert c.is_model_ready("broken", client_timeout=T) is True
    a = random_int32(rng, (2, 16))
    b = random_int32(rng, (2, 16))
    result = c.infer("broken", simple_inputs(a, b), client_timeout=T)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    (entry,) = index_by_model(c)["broken"]
    assert entry.state == "READY"
