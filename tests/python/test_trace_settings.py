"""Triton's trace extension through tritonclient: get_trace_settings and update_trace_settings
read and change the daemon's OpenTelemetry tracing (what the changes do to exported spans is
checked against a decoding receiver in tests/tracing.rs)."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from switchyard_support import MANAGEMENT_TOKEN, assert_error

TOKEN = {"authorization": f"Bearer {MANAGEMENT_TOKEN}"}
DEFAULTS = {
    "trace_level": ["TIMESTAMPS"],
    "trace_rate": ["1"],
    "trace_count": ["-1"],
    "trace_mode": ["opentelemetry"],
}


def settings_of(response: dict) -> dict:
    return {name: value.get("value", []) for name, value in response["settings"].items()}


def test_trace_settings_read_off_while_export_is_off(client):
    got = settings_of(client.get_trace_settings(as_json=True))
    assert got["trace_level"] == ["OFF"]
    assert got["trace_mode"] == ["opentelemetry"]
    assert got["trace_count"] == ["-1"]
    with pytest.raises(InferenceServerException) as err:
        client.update_trace_settings(settings={"trace_rate": "10"})
    assert_error(err.value, grpc.StatusCode.FAILED_PRECONDITION, "trace export is off")


def test_trace_settings_change_and_reset(traced_client):
    assert settings_of(traced_client.get_trace_settings(as_json=True)) == DEFAULTS

    with pytest.raises(InferenceServerException) as err:
        traced_client.update_trace_settings(settings={"trace_rate": "10"})
    assert_error(err.value, grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer")

    got = settings_of(
        traced_client.update_trace_settings(
            settings={"trace_rate": "10", "trace_count": "5"}, headers=TOKEN, as_json=True
        )
    )
    assert got == {**DEFAULTS, "trace_rate": ["10"], "trace_count": ["5"]}
    got = settings_of(
        traced_client.update_trace_settings(
            settings={"trace_level": ["OFF"]}, headers=TOKEN, as_json=True
        )
    )
    assert got["trace_level"] == ["OFF"]
    assert settings_of(traced_client.get_trace_settings(as_json=True)) == got

    # None clears a setting: back to the start-up values.
    got = settings_of(
        traced_client.update_trace_settings(
            settings={"trace_level": None, "trace_rate": None, "trace_count": None},
            headers=TOKEN,
            as_json=True,
        )
    )
    assert got == DEFAULTS


def test_trace_settings_refusals_name_the_reason(traced_client):
    cases = [
        ("", {"trace_level": ["TENSORS"]}, grpc.StatusCode.INVALID_ARGUMENT, "TENSORS is not supported"),
        ("", {"trace_rate": "0"}, grpc.StatusCode.INVALID_ARGUMENT, "trace_rate must be a whole number >= 1"),
        ("", {"trace_file": "/tmp/trace.json"}, grpc.StatusCode.INVALID_ARGUMENT, "OTLP"),
        ("", {"trace_mode": "triton"}, grpc.StatusCode.INVALID_ARGUMENT, "trace_mode 'triton'"),
        ("simple", {"trace_rate": "2"}, grpc.StatusCode.UNIMPLEMENTED,
         "model 'simple' follows the global trace settings"),
    ]
    for model, settings, code, needle in cases:
        with pytest.raises(InferenceServerException) as err:
            traced_client.update_trace_settings(model_name=model, settings=settings, headers=TOKEN)
        assert_error(err.value, code, needle)
    # A model's settings are the global ones; an unknown model is NOT_FOUND.
    assert settings_of(traced_client.get_trace_settings(model_name="simple", as_json=True)) == DEFAULTS
    with pytest.raises(InferenceServerException) as err:
        traced_client.get_trace_settings(model_name="nope")
    assert_error(err.value, grpc.StatusCode.NOT_FOUND, "'nope'")
