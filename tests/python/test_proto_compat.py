"""Wire-compatibility check between Switchyard's protocol files and Triton's.

Our ``proto/inference/*.proto`` files are compiled with ``grpc_tools.protoc``
into a FileDescriptorSet and compared, by fully qualified name, against the
descriptors bundled with the ``tritonclient`` package. Every message, field,
oneof, enum value and RPC that Triton defines must exist in ours with the same
wire-relevant attributes. Items we define beyond Triton's must be listed in
the ``ALLOWED_EXTRA_*`` sets below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

protoc = pytest.importorskip("grpc_tools.protoc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

from google.protobuf import descriptor_pb2  # noqa: E402

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
OUR_PROTOS = ["inference/grpc_service.proto", "inference/model_config.proto"]

# Definitions present in our files but not in Triton's (fully qualified names).
ALLOWED_EXTRA_MESSAGES: set[str] = set()
ALLOWED_EXTRA_ENUMS: set[str] = set()
ALLOWED_EXTRA_FIELDS: set[str] = set()  # "<message>.<field>"
ALLOWED_EXTRA_ENUM_VALUES: set[str] = set()  # "<enum>.<value>"
ALLOWED_EXTRA_METHODS: set[str] = set()  # "<service>.<method>"

_TYPE_NAMES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
_LABEL_NAMES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}


class Index:
    """Flattened view of a set of files keyed by fully qualified name."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]):
        self.syntax: dict[str, str] = {}
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        for f in files:
            prefix = "." + f.package if f.package else ""
            for m in f.message_type:
                self._add_message(prefix, m, f.syntax or "proto2")
            for e in f.enum_type:
                self.enums[f"{prefix}.{e.name}"] = e
            for s in f.service:
                self.services[f"{prefix}.{s.name}"] = s

    def _add_message(self, prefix, m, syntax):
        name = f"{prefix}.{m.name}"
        self.messages[name] = m
        self.syntax[name] = syntax
        for n in m.nested_type:
            self._add_message(name, n, syntax)
        for e in m.enum_type:
            self.enums[f"{name}.{e.name}"] = e


def _file_proto(module) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


@pytest.fixture(scope="module")
def triton() -> Index:
    return Index([_file_proto(service_pb2), _file_proto(model_config_pb2)])


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Index:
    out = tmp_path_factory.mktemp("descriptors") / "switchyard.pb"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        *[str(PROTO_ROOT / p) for p in OUR_PROTOS],
    ]
    rc = protoc.main(args)
    assert rc == 0, f"protoc failed (exit {rc}) for {OUR_PROTOS} under {PROTO_ROOT}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    names = sorted(f.name for f in fds.file)
    assert names == sorted(OUR_PROTOS), f"unexpected files in descriptor set: {names}"
    return Index(list(fds.file))


def _field_sig(msg: descriptor_pb2.DescriptorProto, f) -> dict:
    return {
        "number": f.number,
        "type": _TYPE_NAMES[f.type],
        "label": _LABEL_NAMES[f.label],
        "type_name": f.type_name,
        "oneof": msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
        "proto3_optional": f.proto3_optional,
        "packed": f.options.packed if f.options.HasField("packed") else None,
    }


def _compare_messages(ref: Index, our: Index, problems: list[str]) -> None:
    for name, rmsg in sorted(ref.messages.items()):
        omsg = our.messages.get(name)
        if omsg is None:
            problems.append(f"missing message {name}")
            continue
        if ref.syntax[name] != our.syntax[name]:
            problems.append(f"{name}: syntax {our.syntax[name]} != {ref.syntax[name]}")
        if rmsg.options.map_entry != omsg.options.map_entry:
            problems.append(
                f"{name}: map_entry {omsg.options.map_entry} != {rmsg.options.map_entry}"
            )
        rfields = {f.name: f for f in rmsg.field}
        ofields = {f.name: f for f in omsg.field}
        for fname, rf in rfields.items():
            of = ofields.get(fname)
            if of is None:
                problems.append(f"missing field {name}.{fname} (= {rf.number})")
                continue
            rsig, osig = _field_sig(rmsg, rf), _field_sig(omsg, of)
            for key in rsig:
                if rsig[key] != osig[key]:
                    problems.append(
                        f"{name}.{fname}: {key} is {osig[key]!r}, Triton has {rsig[key]!r}"
                    )
        for fname, of in ofields.items():
            if fname not in rfields and f"{name}.{fname}" not in ALLOWED_EXTRA_FIELDS:
                problems.append(f"extra field {name}.{fname} (= {of.number})")
        # Field numbers must also be unique to the same field name.
        rnums = {f.number: f.name for f in rmsg.field}
        for of in omsg.field:
            if of.number in rnums and rnums[of.number] != of.name:
                problems.append(
                    f"{name}: number {of.number} is {of.name!r}, Triton uses it for "
                    f"{rnums[of.number]!r}"
                )
        roneofs = [o.name for o in rmsg.oneof_decl]
        ooneofs = [o.name for o in omsg.oneof_decl]
        if sorted(roneofs) != sorted(ooneofs):
            problems.append(f"{name}: oneofs {ooneofs} != {roneofs}")
    for name in sorted(our.messages):
        if name not in ref.messages and name not in ALLOWED_EXTRA_MESSAGES:
            problems.append(f"extra message {name}")


def _compare_enums(ref: Index, our: Index, problems: list[str]) -> None:
    for name, renum in sorted(ref.enums.items()):
        oenum = our.enums.get(name)
        if oenum is None:
            problems.append(f"missing enum {name}")
            continue
        rvals = {v.name: v.number for v in renum.value}
        ovals = {v.name: v.number for v in oenum.value}
        for vname, num in rvals.items():
            if vname not in ovals:
                problems.append(f"missing enum value {name}.{vname} (= {num})")
            elif ovals[vname] != num:
                problems.append(f"{name}.{vname}: number {ovals[vname]}, Triton has {num}")
        for vname, num in ovals.items():
            if vname not in rvals and f"{name}.{vname}" not in ALLOWED_EXTRA_ENUM_VALUES:
                problems.append(f"extra enum value {name}.{vname} (= {num})")
        if renum.value and oenum.value and renum.value[0].name != oenum.value[0].name:
            problems.append(
                f"{name}: first value {oenum.value[0].name}, Triton has {renum.value[0].name}"
            )
    for name in sorted(our.enums):
        if name not in ref.enums and name not in ALLOWED_EXTRA_ENUMS:
            problems.append(f"extra enum {name}")


def _compare_services(ref: Index, our: Index, problems: list[str]) -> None:
    for name, rsvc in sorted(ref.services.items()):
        osvc = our.services.get(name)
        if osvc is None:
            problems.append(f"missing service {name}")
            continue
        ometh = {m.name: m for m in osvc.method}
        rmeth = {m.name: m for m in rsvc.method}
        for mname, rm in rmeth.items():
            om = ometh.get(mname)
            if om is None:
                problems.append(f"missing rpc {name}.{mname}")
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(rm, attr) != getattr(om, attr):
                    problems.append(
                        f"rpc {name}.{mname}: {attr} is {getattr(om, attr)!r}, "
                        f"Triton has {getattr(rm, attr)!r}"
                    )
        for mname in ometh:
            if mname not in rmeth and f"{name}.{mname}" not in ALLOWED_EXTRA_METHODS:
                problems.append(f"extra rpc {name}.{mname}")
    for name in sorted(our.services):
        if name not in ref.services:
            problems.append(f"extra service {name}")


def test_reference_descriptors_are_loaded(triton: Index) -> None:
    # Guard against comparing with an empty or unexpected reference.
    assert ".inference.GRPCInferenceService" in triton.services
    assert ".inference.ModelConfig" in triton.messages
    assert ".inference.DataType" in triton.enums


def test_wire_compatible_with_triton(triton: Index, ours: Index) -> None:
    problems: list[str] = []
    _compare_messages(triton, ours, problems)
    _compare_enums(triton, ours, problems)
    _compare_services(triton, ours, problems)
    assert not problems, (
        f"{len(problems)} difference(s) from Triton's protocol:\n  " + "\n  ".join(problems)
    )
