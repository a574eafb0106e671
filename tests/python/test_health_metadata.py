"""Health, server and model metadata, model configuration, logging and shutdown, seen through tritonclient."""

from __future__ import annotations

import json
import signal

import grpc
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from switchyard_support import (
    IDENTITY_TYPES,
    identity_model,
    RPC_TIMEOUT_S,
    assert_error,
    check_simple,
    infer_input,
    onnx_io_names,
    onnx_reference,
)

T = RPC_TIMEOUT_S


def type_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


# ---------------------------------------------------------------------------- health


def test_server_live(client):
    assert client.is_server_live(client_timeout=T) is True


def test_server_ready(client):
    assert client.is_server_ready(client_timeout=T) is True


@pytest.mark.parametrize(
    "model,version",
    [
        ("simple", ""),
        ("simple", "1"),
        ("simple_string", ""),
        ("classifier", ""),
        ("classifier", "1"),
        ("classifier", "2"),
        ("digits_cnn", ""),
        ("tabular_mlp", ""),
        ("add_sub_fp32", ""),
        ("no_config_mlp", ""),
    ]
    + [(identity_model(t), "") for t in IDENTITY_TYPES],
)
def test_model_ready(client, model, version):
    assert client.is_model_ready(model, version, client_timeout=T) is True


@pytest.mark.parametrize(
    "model,version",
    [
        ("nope", ""),
        ("broken", ""),
        ("broken", "1"),
        ("classifier", "3"),
    ],
)
def test_model_not_ready(client, model, version):
    assert client.is_model_ready(model, version, client_timeout=T) is False


# ---------------------------------------------------------------------------- server metadata


def test_server_metadata(client):
    md = client.get_server_metadata(client_timeout=T)
    assert md.name == "switchyard"
    assert isinstance(md.version, str) and md.version.strip(), f"empty version: {md.version!r}"
    extensions = list(md.extensions)
    assert extensions, "the server lists no protocol extensions"
    assert all(isinstance(e, str) and e for e in extensions), extensions


def test_server_metadata_json(client):
    md = client.get_server_metadata(as_json=True, client_timeout=T)
    assert md["name"] == "switchyard"
    assert md["version"]


# ---------------------------------------------------------------------------- model metadata


def _tensors(meta_tensors):
    return {t.name: (t.datatype, list(t.shape)) for t in meta_tensors}


def test_simple_metadata(client):
    md = client.get_model_metadata("simple", client_timeout=T)
    assert md.name == "simple"
    assert "1" in list(md.versions)
    assert _tensors(md.inputs) == {"INPUT0": ("INT32", [-1, 16]), "INPUT1": ("INT32", [-1, 16])}
    assert _tensors(md.outputs) == {"OUTPUT0": ("INT32", [-1, 16]), "OUTPUT1": ("INT32", [-1, 16])}


def test_simple_metadata_json(client):
    md = client.get_model_metadata("simple", as_json=True, client_timeout=T)
    assert md["name"] == "simple"
    inputs = {t["name"]: t for t in md["inputs"]}
    assert inputs["INPUT0"]["datatype"] == "INT32"
    # Protobuf JSON renders int64 as strings.
    assert [int(d) for d in inputs["INPUT0"]["shape"]] == [-1, 16]


def test_simple_metadata_for_version(client):
    md = client.get_model_metadata("simple", "1", client_timeout=T)
    assert md.name == "simple"
    assert _tensors(md.inputs)["INPUT0"] == ("INT32", [-1, 16])


def test_classifier_metadata(client):
    md = client.get_model_metadata("classifier", client_timeout=T)
    assert md.name == "classifier"
    assert sorted(md.versions, key=int) == ["1", "2"]
    assert _tensors(md.inputs) == {"features": ("FP32", [-1, 64])}
    assert _tensors(md.outputs) == {"probabilities": ("FP32", [-1, 10])}


def test_digits_cnn_metadata(client):
    md = client.get_model_metadata("digits_cnn", client_timeout=T)
    assert _tensors(md.inputs) == {"image": ("FP32", [-1, 1, 28, 28])}
    assert _tensors(md.outputs) == {"probabilities": ("FP32", [-1, 10])}


def test_simple_string_metadata(client):
    md = client.get_model_metadata("simple_string", client_timeout=T)
    assert _tensors(md.inputs) == {"INPUT0": ("BYTES", [-1, 16]), "INPUT1": ("BYTES", [-1, 16])}
    assert _tensors(md.outputs) == {"OUTPUT0": ("BYTES", [-1, 16]), "OUTPUT1": ("BYTES", [-1, 16])}


def test_add_sub_metadata_has_no_batch_dimension(client):
    md = client.get_model_metadata("add_sub_fp32", client_timeout=T)
    assert _tensors(md.inputs) == {"INPUT0": ("FP32", [-1]), "INPUT1": ("FP32", [-1])}
    assert _tensors(md.outputs) == {"OUTPUT0": ("FP32", [-1]), "OUTPUT1": ("FP32", [-1])}


@pytest.mark.parametrize("datatype", IDENTITY_TYPES)
def test_identity_metadata(client, datatype):
    md = client.get_model_metadata(identity_model(datatype), client_timeout=T)
    assert _tensors(md.inputs) == {"INPUT0": (datatype, [-1, 4])}
    assert _tensors(md.outputs) == {"OUTPUT0": (datatype, [-1, 4])}


# ---------------------------------------------------------------------------- model config


def test_simple_config(client):
    cfg = client.get_model_config("simple", client_timeout=T).config
    assert cfg.name == "simple"
    assert cfg.max_batch_size == 8
    inputs = {i.name: i for i in cfg.input}
    assert sorted(inputs) == ["INPUT0", "INPUT1"]
    for i in inputs.values():
        assert type_name(i.data_type) == "TYPE_INT32"
        assert list(i.dims) == [16]
    outputs = {o.name: o for o in cfg.output}
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"]
    for o in outputs.values():
        assert type_name(o.data_type) == "TYPE_INT32"
        assert list(o.dims) == [16]


def test_simple_config_json(client):
    cfg = client.get_model_config("simple", as_json=True, client_timeout=T)["config"]
    assert cfg["name"] == "simple"
    assert int(cfg["max_batch_size"]) == 8
    assert {i["data_type"] for i in cfg["input"]} == {"TYPE_INT32"}


def test_classifier_config(client):
    cfg = client.get_model_config("classifier", client_timeout=T).config
    assert cfg.name == "classifier"
    assert cfg.max_batch_size == 64
    assert cfg.version_policy.WhichOneof("policy_choice") == "all"
    (inp,) = cfg.input
    assert (inp.name, type_name(inp.data_type), list(inp.dims)) == ("features", "TYPE_FP32", [64])
    (out,) = cfg.output
    assert (out.name, type_name(out.data_type), list(out.dims)) == ("probabilities", "TYPE_FP32", [10])


@pytest.mark.parametrize("datatype", IDENTITY_TYPES)
def test_identity_config(client, datatype):
    cfg = client.get_model_config(identity_model(datatype), client_timeout=T).config
    assert cfg.max_batch_size == 8
    config_type = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    for tensor in (*cfg.input, *cfg.output):
        assert type_name(tensor.data_type) == config_type, tensor
        assert list(tensor.dims) == [4], tensor


def test_autocompleted_config(client, model_repository):
    """A model without config.pbtxt gets a configuration completed from its ONNX graph."""
    assert not (model_repository / "no_config_mlp" / "config.pbtxt").exists()
    cfg = client.get_model_config("no_config_mlp", client_timeout=T).config
    assert cfg.name == "no_config_mlp"
    assert cfg.max_batch_size > 0
    (inp,) = cfg.input
    assert inp.name == "features"
    assert type_name(inp.data_type) == "TYPE_FP32"
    assert list(inp.dims) == [64]
    (out,) = cfg.output
    assert type_name(out.data_type) == "TYPE_FP32"
    assert list(out.dims) == [10]


def test_autocompleted_model_serves(client, model_repository, rng):
    model_file = model_repository / "no_config_mlp" / "1" / "model.onnx"
    (in_name,), (out_name,) = onnx_io_names(model_file)
    cfg = client.get_model_config("no_config_mlp", client_timeout=T).config
    assert cfg.output[0].name == out_name
    x = rng.standard_normal((3, 64)).astype(np.float32)
    result = client.infer("no_config_mlp", [infer_input(in_name, x, "FP32")], client_timeout=T)
    expected = onnx_reference(model_file, {in_name: x})[out_name]
    np.testing.assert_allclose(result.as_numpy(out_name), expected, rtol=1e-4, atol=1e-5)


def test_metadata_of_unknown_model(client):
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("nope", client_timeout=T)
    assert_error(exc.value, grpc.StatusCode.NOT_FOUND, "nope")


def test_config_of_unknown_model(client):
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_config("nope", client_timeout=T)
    assert_error(exc.value, grpc.StatusCode.NOT_FOUND, "nope")


# ---------------------------------------------------------------------------- logging and shutdown


def test_log_is_json_lines(daemon, client):
    client.is_server_live(client_timeout=T)
    lines = [line for line in daemon.log_lines() if line.strip()]
    assert lines, "the daemon logged nothing"
    for line in lines:
        record = json.loads(line)
        assert {"timestamp", "level", "fields"} <= set(record), record


def test_sigterm_shuts_down_cleanly(private_daemon, private_client, rng):
    check_simple(private_client, 2, rng)
    private_client.close()
    private_daemon.proc.send_signal(signal.SIGTERM)
    status = private_daemon.wait_for_exit(timeout=20)
    assert status is not None, "switchyard did not exit within 20 s of SIGTERM"
    assert status == 0, f"switchyard exited with status {status} after SIGTERM"
