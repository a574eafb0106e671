"""Per-model traffic policy (`<model>/traffic.yaml`) as tritonclient sees it: weighted sticky
routing by header or request parameter, explicit versions, readiness of weighted versions, and an
invalid policy at start-up. Every daemon here serves a private copy of the `versioned` fixture
(versions 1..4, OUTPUT0 = INPUT0 + 1000 * version; its version policy loads only version 4)."""

from __future__ import annotations

import inspect
import os
import shlex
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from switchyard_support import FIXTURE_MODELS, RPC_TIMEOUT_S, Daemon, DaemonStartError, infer_input

T = RPC_TIMEOUT_S
MODEL = "versioned"
HEADER = "x-user-id"
KEYS = [f"user-{i}" for i in range(200)]
WEIGHTED = """weights:
  "1": 50
  "2": 50
routing_key: x-user-id
"""


def start_with_policy(binary, root, traffic_yaml: str) -> Daemon:
    """A daemon (control mode none) over a repository holding only `versioned` and its policy."""
    repo = root / "models"
    shutil.copytree(FIXTURE_MODELS / MODEL, repo / MODEL)
    (repo / MODEL / "traffic.yaml").write_text(traffic_yaml)
    extra = shlex.split(os.environ.get("SWITCHYARD_EXTRA_ARGS", ""))
    try:
        return Daemon(binary, repo, extra).start()
    except DaemonStartError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def weighted(switchyard_bin, tmp_path_factory):
    """One daemon for the 50/50 policy keyed by the x-user-id header."""
    d = start_with_policy(switchyard_bin, tmp_path_factory.mktemp("traffic"), WEIGHTED)
    yield d
    d.stop()


@pytest.fixture
def tc(weighted):
    assert weighted.is_alive(), weighted.log_text(tail=200)
    c = grpcclient.InferenceServerClient(url=weighted.addr)
    yield c
    c.close()


def infer(client, x, **kwargs) -> int:
    """One request; checks OUTPUT0 against the version that answered and returns that version."""
    result = client.infer(MODEL, [infer_input("INPUT0", x, "FP32")], client_timeout=T, **kwargs)
    version = result.get_response().model_version
    assert version in {"1", "2", "3", "4"}, f"unexpected model_version {version!r}"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + np.float32(1000 * int(version)))
    return int(version)


def sample(rng, batch=1):
    return rng.standard_normal((batch, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def header_versions(weighted):
    """Which version each key goes to when it arrives as the header (asked once per module)."""
    c = grpcclient.InferenceServerClient(url=weighted.addr)
    try:
        rng = np.random.default_rng(7)
        return {key: infer(c, sample(rng), headers={HEADER: key}) for key in KEYS}
    finally:
        c.close()


def test_sticky_by_header_splits_by_weight(tc, header_versions, rng):
    for key in KEYS:
        first = infer(tc, sample(rng), headers={HEADER: key})
        again = infer(tc, sample(rng, batch=2), headers={HEADER: key})
        assert first == again == header_versions[key], (
            f"key {key!r} went to versions {header_versions[key]}, {first}, {again}"
        )
    counts = {v: sum(1 for x in header_versions.values() if x == v) for v in (1, 2, 3, 4)}
    assert counts[3] == counts[4] == 0, f"unweighted versions got keyed traffic: {counts}"
    assert 60 <= counts[1] <= 140 and 60 <= counts[2] <= 140, f"50/50 split over 200 keys: {counts}"


def test_sticky_by_request_parameter_matches_header(tc, header_versions, rng):
    if "parameters" not in inspect.signature(tc.infer).parameters:
        pytest.skip("this tritonclient's InferenceServerClient.infer() has no `parameters=` argument")
    for key in KEYS:
        got = infer(tc, sample(rng), parameters={"routing_key": key})
        assert got == header_versions[key], (
            f"key {key!r}: parameter routed to {got}, header to {header_versions[key]}"
        )
    # Both present: the request parameter is the key, the header is ignored.
    a = next(k for k, v in header_versions.items() if v == 1)
    b = next(k for k, v in header_versions.items() if v == 2)
    assert infer(tc, sample(rng), parameters={"routing_key": a}, headers={HEADER: b}) == 1
    assert infer(tc, sample(rng), parameters={"routing_key": b}, headers={HEADER: a}) == 2


def test_explicit_version_wins(tc, header_versions, rng):
    # With no key, the split is random, over weighted versions only.
    keyless = [infer(tc, sample(rng)) for _ in range(100)]
    assert set(keyless) == {1, 2}, f"keyless requests went to {sorted(set(keyless))}"
    # Version 4 has no weight, yet a request naming it gets it, with or without a key.
    assert infer(tc, sample(rng), model_version="4") == 4
    key_to_2 = next(k for k, v in header_versions.items() if v == 2)
    assert infer(tc, sample(rng), model_version="4", headers={HEADER: key_to_2}) == 4
    assert infer(tc, sample(rng), model_version="1", headers={HEADER: key_to_2}) == 1


def test_metadata_and_readiness_with_policy(tc):
    assert tc.is_server_ready(client_timeout=T)
    assert tc.is_model_ready(MODEL, client_timeout=T)
    for version in ("1", "2", "4"):
        assert tc.is_model_ready(MODEL, version, client_timeout=T), f"version {version} not ready"
    # Not weighted and not chosen by the version policy: not loaded.
    assert not tc.is_model_ready(MODEL, "3", client_timeout=T)
    meta = tc.get_model_metadata(MODEL, client_timeout=T)
    assert meta.name == MODEL
    assert {"1", "2", "4"} <= set(meta.versions), list(meta.versions)
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("INPUT0", "FP32", [-1, 4])]
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [("OUTPUT0", "FP32", [-1, 4])]
    v1 = tc.get_model_metadata(MODEL, "1", client_timeout=T)
    assert v1.name == MODEL and [i.name for i in v1.inputs] == ["INPUT0"]
    config = tc.get_model_config(MODEL, client_timeout=T).config
    assert config.name == MODEL and config.max_batch_size == 8


def test_invalid_weight_at_start_serves_the_default_version(switchyard_bin, tmp_path, rng):
    d = start_with_policy(switchyard_bin, tmp_path, 'weights:\n  "1": -5\nrouting_key: x-user-id\n')
    try:
        c = grpcclient.InferenceServerClient(url=d.addr)
        try:
            assert c.is_model_ready(MODEL, client_timeout=T)
            assert c.is_model_ready(MODEL, "4", client_timeout=T)
            for key in KEYS[:20]:
                assert infer(c, sample(rng), headers={HEADER: key}) == 4
            assert infer(c, sample(rng)) == 4
            # The rejected file loads nothing extra.
            assert not c.is_model_ready(MODEL, "1", client_timeout=T)
        finally:
            c.close()
        rejected = [
            r for r in d.log_records()
            if r.get("level") in ("WARN", "ERROR") and "traffic" in str(r) and MODEL in str(r)
        ]
        assert rejected, "no WARN/ERROR log record says the traffic policy was rejected"
    finally:
        d.stop()
