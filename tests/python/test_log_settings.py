"""Triton's logging extension through tritonclient: get_log_settings and update_log_settings read
and change what the daemon prints, checked on the lines the real daemon writes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from switchyard_support import MANAGEMENT_TOKEN, assert_error, simple_inputs

TOKEN = {"authorization": f"Bearer {MANAGEMENT_TOKEN}"}
METADATA = tuple(TOKEN.items())
DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "ISO8601",
}
WAIT_S = 10
CHANGED = "log settings changed"


def values(response) -> dict:
    return {name: getattr(v, v.WhichOneof("parameter_choice")) for name, v in response.settings.items()}


def message(record: dict) -> str:
    return record.get("fields", {}).get("message", "")


def barrier(daemon, client, settings: dict) -> int:
    """Makes a change that leaves info lines on, so that its own "log settings changed" line is
    printed, and waits for that line; returns its index in the log. Whatever was printed before
    the change comes before it."""
    before = sum(message(r) == CHANGED for r in daemon.log_records())
    client.update_log_settings(settings={**settings, "log_info": True}, headers=TOKEN)
    count = 0

    def next_change(record: dict) -> bool:
        nonlocal count
        count += message(record) == CHANGED
        return count > before

    found = daemon.wait_for_log(next_change, WAIT_S)
    assert found is not None, daemon.log_text(tail=50)
    return next(i for i, r in enumerate(daemon.log_records()) if r is found)


def simple(client) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = client.infer("simple", simple_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_log_settings_read(client):
    assert values(client.get_log_settings()) == DEFAULTS
    assert "logging" in client.get_server_metadata().extensions


def test_log_settings_change_what_is_printed(managed_daemon, managed_client):
    d, c = managed_daemon, managed_client
    with pytest.raises(InferenceServerException) as err:
        c.update_log_settings(settings={"log_info": False})
    assert_error(err.value, grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer")

    # Info lines off: unloading and loading a model prints none.
    assert values(c.update_log_settings(settings={"log_info": False}, headers=TOKEN)) == {
        **DEFAULTS,
        "log_info": False,
    }
    assert values(c.get_log_settings())["log_info"] is False
    start = len(d.log_records())
    c.unload_model("classifier")
    c.load_model("classifier")
    end = barrier(d, c, {})
    quiet = d.log_records()[start:end]
    assert not [r for r in quiet if r.get("level") == "INFO"], quiet

    # The same actions print info lines once they are on again.
    c.unload_model("classifier")
    assert d.wait_for_log(lambda r: message(r) == "model unloaded" and r["level"] == "INFO", WAIT_S)

    # Verbose level 1: one debug line per inference request, with the model and version.
    assert values(c.update_log_settings(settings={"log_verbose_level": 1}, headers=TOKEN))[
        "log_verbose_level"
    ] == 1
    simple(c)
    answered = d.wait_for_log(
        lambda r: message(r) == "inference request answered" and r["level"] == "DEBUG", WAIT_S
    )
    assert answered is not None, d.log_text(tail=50)
    assert answered["fields"]["model"] == "simple"
    assert answered["fields"]["version"] == 1

    # Back to 0: requests leave no line.
    start = barrier(d, c, {"log_verbose_level": 0})
    simple(c)
    simple(c)
    end = barrier(d, c, {"log_warning": True})
    between = d.log_records()[start + 1 : end]
    assert not [r for r in between if message(r) == "inference request answered"], between
    assert values(c.get_log_settings()) == DEFAULTS


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"log_file": "/tmp/switchyard.log"}, "logs go to standard output"),
        ({"log_format": "default"}, "log format 'default' is not available"),
        ({"log_colour": True}, "unknown log setting 'log_colour' (known: log_file, log_info"),
        ({"log_info": None}, "log setting 'log_info' has no value"),
        # One bad setting and nothing changes, not even the good one.
        ({"log_error": False, "log_file": "/tmp/switchyard.log"}, "logs go to standard output"),
    ],
)
def test_log_settings_refused(managed_client, settings, needle):
    with pytest.raises(InferenceServerException) as err:
        managed_client.update_log_settings(settings=settings, headers=TOKEN)
    assert_error(err.value, grpc.StatusCode.INVALID_ARGUMENT, needle)
    assert values(managed_client.get_log_settings()) == DEFAULTS


def test_log_settings_of_the_wrong_type_are_refused(managed_stub):
    # tritonclient picks the type from the name; a client of its own can send any type.
    request = service_pb2.LogSettingsRequest()
    request.settings["log_info"].uint32_param = 1
    with pytest.raises(grpc.RpcError) as err:
        managed_stub.LogSettings(request, metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "log setting 'log_info' takes a bool, got uint32 1"
    request = service_pb2.LogSettingsRequest()
    request.settings["log_verbose_level"].string_param = "2"
    with pytest.raises(grpc.RpcError) as err:
        managed_stub.LogSettings(request, metadata=METADATA)
    assert err.value.details() == "log setting 'log_verbose_level' takes a uint32, got string \"2\""
