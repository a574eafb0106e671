"""Fixtures for the peer-client suite: the test model repository, the daemon, and gRPC clients."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2_grpc

from switchyard_support import (
    Daemon,
    MANAGEMENT_TOKEN,
    DaemonStartError,
    OtlpReceiver,
    build_repository,
    rng_for,
    switchyard_binary,
)

MAX_MESSAGE = 256 * 1024 * 1024
EXTRA_ARGS = shlex.split(os.environ.get("SWITCHYARD_EXTRA_ARGS", ""))
# Load and unload requests are honoured only in explicit model control mode, as in tritonserver;
# `--load-model *` still loads every model at start-up.
EXPLICIT_MODE_ARGS = ["--model-control-mode", "explicit", "--load-model", "*"]


def _start(binary: Path, repository: Path, extra_args=()) -> Daemon:
    try:
        return Daemon(binary, repository, [*extra_args, *EXTRA_ARGS]).start()
    except DaemonStartError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def switchyard_bin() -> Path:
    binary = switchyard_binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"switchyard binary not found or not executable at {binary}; "
            "build it with `cargo build` or point SWITCHYARD_BIN at it",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """All shipped models, every fixture model, and one model whose config is invalid."""
    try:
        return build_repository(tmp_path_factory.mktemp("repo") / "models")
    except FileNotFoundError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def daemon(switchyard_bin, model_repository):
    """The daemon shared by every test that does not change repository state (control mode none)."""
    d = _start(switchyard_bin, model_repository)
    yield d
    d.stop()


@pytest.fixture
def small_repository(tmp_path) -> Path:
    """A private repository (simple, classifier, broken) for tests that load and unload."""
    try:
        return build_repository(tmp_path / "models", shipped=("simple", "classifier"), fixtures=False)
    except FileNotFoundError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def private_daemon(switchyard_bin, small_repository):
    """A daemon of this test's own, serving `small_repository` in explicit model control mode."""
    d = _start(switchyard_bin, small_repository, EXPLICIT_MODE_ARGS)
    yield d
    d.stop()


@pytest.fixture
def traced_daemon(switchyard_bin, small_repository):
    """A daemon of this test's own exporting traces to a live OTLP receiver, with a management
    token (needed to change trace settings)."""
    receiver = OtlpReceiver().start()
    args = ["--otlp-endpoint", receiver.endpoint, "--management-token", MANAGEMENT_TOKEN]
    d = _start(switchyard_bin, small_repository, args)
    yield d
    d.stop()
    receiver.stop()


@pytest.fixture
def managed_daemon(switchyard_bin, small_repository):
    """A daemon of this test's own in explicit model control mode, with a management token
    (needed to change log settings)."""
    d = _start(switchyard_bin, small_repository, [*EXPLICIT_MODE_ARGS, "--management-token", MANAGEMENT_TOKEN])
    yield d
    d.stop()


@pytest.fixture
def managed_client(managed_daemon):
    c = _client(managed_daemon)
    yield c
    c.close()


@pytest.fixture
def managed_stub(managed_daemon):
    channel, s = _stub(managed_daemon)
    yield s
    channel.close()


@pytest.fixture
def traced_client(traced_daemon):
    c = _client(traced_daemon)
    yield c
    c.close()


def _require_alive(d: Daemon) -> None:
    if not d.is_alive():
        pytest.fail(f"switchyard is no longer running.\n--- log ---\n{d.log_text(tail=200)}", pytrace=False)


def _client(d: Daemon) -> grpcclient.InferenceServerClient:
    _require_alive(d)
    return grpcclient.InferenceServerClient(url=d.addr)


def _stub(d: Daemon):
    _require_alive(d)
    channel = grpc.insecure_channel(
        d.addr,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def client(daemon):
    """tritonclient's gRPC client bound to the shared daemon."""
    c = _client(daemon)
    yield c
    c.close()


@pytest.fixture
def stub(daemon):
    """A raw GRPCInferenceService stub bound to the shared daemon."""
    channel, s = _stub(daemon)
    yield s
    channel.close()


@pytest.fixture
def private_client(private_daemon):
    c = _client(private_daemon)
    yield c
    c.close()


@pytest.fixture
def rng(request):
    return rng_for(request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log of every daemon a failed test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, Daemon):
            report.sections.append((f"switchyard log ({name}, last 200 lines)", value.log_text(tail=200)))
