"""Shared helpers for the peer-client suite: daemon process control, repository layout, assertions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import zlib
from concurrent import futures
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, service_pb2
from tritonclient.utils import InferenceServerException

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_REPOSITORY = REPO_ROOT / "model_repository"
FIXTURE_MODELS = REPO_ROOT / "tests" / "fixtures" / "models"
SHIPPED_MODELS = ("simple", "simple_string", "classifier", "tabular_mlp", "digits_cnn", "encoder")
# Shipped models that need a GPU: kept out of the shared repository, whose models must all serve
# everywhere; test_encoder.py starts a daemon of its own with them.
SHIPPED_GPU_MODELS = ("encoder_gpu", "tabular_mlp_gpu")

# How long the daemon may take to load every model and start listening.
START_TIMEOUT_S = float(os.environ.get("SWITCHYARD_START_TIMEOUT", "60"))
# How long it may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0
# Deadline for single RPCs made by the tests.
RPC_TIMEOUT_S = 30.0

# Broken on purpose: max_batch_size is an integer field, "eight" is a string.
BROKEN_CONFIG = """name: "broken"
platform: "onnxruntime_onnx"
max_batch_size: "eight"
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""

# Triton datatype name -> numpy dtype (little-endian, as on the wire).
TRITON_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# Triton datatype name -> the typed field of InferTensorContents that carries it (FP16 has none).
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

IDENTITY_TYPES = tuple(TRITON_TO_NUMPY)


def identity_model(datatype: str) -> str:
    """The fixture model that echoes INPUT0 of `datatype` as OUTPUT0."""
    return "identity_string" if datatype == "BYTES" else f"identity_{datatype.lower()}"


# --------------------------------------------------------------------------------------------
# The daemon process
# --------------------------------------------------------------------------------------------


# Environment variables that configure this suite, never the daemon.
HARNESS_VARIABLES = frozenset(
    {"SWITCHYARD_BIN", "SWITCHYARD_START_TIMEOUT", "SWITCHYARD_EXTRA_ARGS", "SWITCHYARD_TEST_RUST_LOG"}
)


class DaemonStartError(RuntimeError):
    pass


def switchyard_binary() -> Path:
    """The daemon binary under test: $SWITCHYARD_BIN or the debug build in the repository."""
    return Path(os.environ.get("SWITCHYARD_BIN", str(REPO_ROOT / "target" / "debug" / "switchyard")))


class Daemon:
    """A running `switchyard serve` process whose JSON log is captured line by line."""

    def __init__(self, binary: Path, model_repository: Path, extra_args: Iterable[str] = ()):
        self.binary = Path(binary)
        self.model_repository = Path(model_repository)
        self.args = [
            str(self.binary),
            "serve",
            "--model-repository",
            str(self.model_repository),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            *extra_args,
        ]
        self.addr: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self._lines: list[str] = []
        self._records: list[dict] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> "Daemon":
        # The daemon reads SWITCHYARD_* variables as its own settings; the ones that steer this
        # suite are not settings, so they stay out of its environment.
        env = {k: v for k, v in os.environ.items() if k not in HARNESS_VARIABLES}
        # The "listening" line is logged at INFO; make sure a stray RUST_LOG does not hide it.
        env["RUST_LOG"] = os.environ.get("SWITCHYARD_TEST_RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.model_repository.parent),
        )
        self._reader = threading.Thread(target=self._drain, name="switchyard-log", daemon=True)
        self._reader.start()

        record = self.wait_for_log(
            lambda r: r.get("fields", {}).get("message") == "listening"
            and r.get("fields", {}).get("service") == "grpc",
            timeout=timeout,
        )
        if record is None:
            exited = self.proc.poll()
            if exited is None and self._eof:
                # Output closed: the process is exiting; collect its status.
                exited = self.wait_for_exit(timeout=5)
            self.stop()
            why = (
                f"exited with status {exited}"
                if exited is not None
                else f"did not log a gRPC 'listening' line within {timeout:.0f} s"
            )
            raise DaemonStartError(
                f"switchyard {why}.\ncommand: {' '.join(self.args)}\n--- log ---\n{self.log_text()}"
            )
        self.addr = str(record["fields"]["addr"])
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            with self._cond:
                self._lines.append(line)
                if isinstance(record, dict):
                    self._records.append(record)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- log access --------------------------------------------------------------------------

    def wait_for_log(self, predicate: Callable[[dict], bool], timeout: float) -> Optional[dict]:
        """First JSON record (seen so far or arriving before `timeout`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for record in self._records[seen:]:
                    if predicate(record):
                        return record
                seen = len(self._records)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._cond.wait(timeout=remaining)

    def wait_for_exit(self, timeout: float) -> Optional[int]:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def log_records(self) -> list[dict]:
        with self._cond:
            return list(self._records)

    def log_text(self, tail: Optional[int] = None) -> str:
        lines = self.log_lines()
        if tail is not None:
            lines = lines[-tail:]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Model repository
# --------------------------------------------------------------------------------------------


def require_source_models() -> None:
    missing = [str(SHIPPED_REPOSITORY / m) for m in SHIPPED_MODELS if not (SHIPPED_REPOSITORY / m).is_dir()]
    if not FIXTURE_MODELS.is_dir():
        missing.append(str(FIXTURE_MODELS))
    if missing:
        raise FileNotFoundError("model sources missing: " + ", ".join(missing))


def write_broken_model(dest: Path) -> Path:
    broken = dest / "broken"
    (broken / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIPPED_REPOSITORY / "simple" / "1" / "model.onnx", broken / "1" / "model.onnx")
    (broken / "config.pbtxt").write_text(BROKEN_CONFIG)
    return broken


def build_repository(dest: Path, shipped: Iterable[str] = SHIPPED_MODELS, fixtures: bool = True,
                     broken: bool = True) -> Path:
    """Lay out a Triton model repository in `dest` from the shipped and fixture models."""
    require_source_models()
    dest.mkdir(parents=True, exist_ok=True)
    for name in shipped:
        shutil.copytree(SHIPPED_REPOSITORY / name, dest / name)
    if fixtures:
        for entry in sorted(FIXTURE_MODELS.iterdir()):
            if entry.is_dir():
                shutil.copytree(entry, dest / entry.name)
    if broken:
        write_broken_model(dest)
    return dest


def model_names(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def version_dirs(model_dir: Path) -> list[str]:
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


# The management token of daemons whose tests change settings that need it.
MANAGEMENT_TOKEN = "s3cret"


class OtlpReceiver:
    """A live OTLP/gRPC trace receiver on 127.0.0.1: answers every Export with an empty
    ExportTraceServiceResponse (which encodes to no bytes) and counts the exports. The spans stay
    undecoded; the Rust suite's receiver checks their contents."""

    SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"

    def __init__(self) -> None:
        self.exports = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        export = grpc.unary_unary_rpc_method_handler(self._export)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.SERVICE, {"Export": export}),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def _export(self, request: bytes, context) -> bytes:
        with self._lock:
            self.exports += 1
        return b""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "OtlpReceiver":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


# --------------------------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------------------------


def error_parts(exc: BaseException) -> tuple[str, str]:
    """(status, message) of a tritonclient or raw gRPC error; status like 'StatusCode.NOT_FOUND'."""
    if isinstance(exc, InferenceServerException):
        return str(exc.status()), str(exc.message())
    if isinstance(exc, grpc.RpcError):
        return str(exc.code()), str(exc.details())
    raise AssertionError(f"not a gRPC error: {exc!r}")


def assert_error(exc: BaseException, code: grpc.StatusCode, *needles: str) -> str:
    """Assert `exc` carries status `code` and that its message contains every needle."""
    status, message = error_parts(exc)
    assert status == str(code), f"expected {code}, got {status}: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in error message {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def rng_for(name: str) -> np.random.Generator:
    """A deterministic generator per test so failures reproduce."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def random_int32(rng: np.random.Generator, shape) -> np.ndarray:
    # Keep sums and differences well inside INT32 so no overflow semantics are involved.
    return rng.integers(-(2**20), 2**20, size=shape, dtype=np.int32)


def infer_input(name: str, array: np.ndarray, datatype: str) -> InferInput:
    inp = InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[InferInput]:
    return [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", b, "INT32")]


def requested(*names: str) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(n) for n in names]


def check_simple(client, batch: int, rng: np.random.Generator) -> None:
    """One correct request to `simple`, verified exactly."""
    a = random_int32(rng, (batch, 16))
    b = random_int32(rng, (batch, 16))
    result = client.infer("simple", simple_inputs(a, b), client_timeout=RPC_TIMEOUT_S)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def stub_request(model: str, version: str = "", request_id: str = "") -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    if request_id:
        req.id = request_id
    return req


def add_typed_input(req, name: str, datatype: str, shape, values) -> None:
    """Append an input carrying `values` in the typed `contents` field for `datatype`."""
    tensor = req.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(int(d) for d in shape)
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(values)


def add_raw_input(req, name: str, datatype: str, shape, data: bytes) -> None:
    tensor = req.inputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(int(d) for d in shape)
    req.raw_input_contents.append(data)


def typed_values(array: np.ndarray, datatype: str) -> list:
    """Python values for the typed contents field of `datatype`."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [bytes(v) for v in flat]
    if datatype == "BOOL":
        return [bool(v) for v in flat]
    if datatype in ("FP32", "FP64"):
        return [float(v) for v in flat]
    return [int(v) for v in flat]


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        assert pos + 4 <= len(data), f"truncated BYTES length prefix at offset {pos}"
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        assert pos + n <= len(data), f"BYTES element at offset {pos} overruns the buffer"
        out.append(data[pos : pos + n])
        pos += n
    return out


def raw_output(response, name: str) -> np.ndarray:
    """Decode output `name` of a stub ModelInferResponse from raw_output_contents."""
    names = [o.name for o in response.outputs]
    assert name in names, f"output {name!r} missing; got {names}"
    i = names.index(name)
    tensor = response.outputs[i]
    assert len(response.raw_output_contents) == len(response.outputs), (
        "outputs are expected in raw_output_contents, one entry per output"
    )
    data = response.raw_output_contents[i]
    shape = [int(d) for d in tensor.shape]
    if tensor.datatype == "BYTES":
        return np.array(deserialize_bytes(data), dtype=np.object_).reshape(shape)
    dtype = TRITON_TO_NUMPY[tensor.datatype]
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------------------------
# Reference results
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _ort_session(model_path: str):
    import onnxruntime as ort

    return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def onnx_reference(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model_path` in onnxruntime; returns every graph output by name."""
    sess = _ort_session(str(model_path))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def onnx_io_names(model_path: Path) -> tuple[list[str], list[str]]:
    sess = _ort_session(str(model_path))
    return [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
