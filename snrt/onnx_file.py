"""What an ONNX file names and which files it makes onnxruntime open, read without `onnx`.

A bundle must know every file a backend opens: an ONNX graph opens the files its tensors'
external data point at (`location`, relative to the graph's directory), so the bundle reads
each graph's name and external-data references before any session sees it (see snrt.bundle).
Importing the `onnx` package costs 0.5-1.7 s on this machine, too much for the run-time path, and
a pure-Python walk of the wire format took 0.6 s for the default bundle's 137 graphs; so this
module parses with protobuf (onnxruntime's own dependency, ~50 ms to import) against a minimal
schema holding only the fields it needs, numbered as in onnx.proto (everything else is skipped
as unknown fields):

    ModelProto.graph (7), .functions (25) -> FunctionProto.node (7)
    GraphProto.node (1), .name (2), .initializer (5), .input (11), .output (12) -> name (1),
               .sparse_initializer (15)
    NodeProto.attribute (5) -> AttributeProto.t (5), .g (6), .tensors (10), .graphs (11),
                               .sparse_tensor (22), .sparse_tensors (23)
    SparseTensorProto.values (1), .indices (2)
    TensorProto.dims (1), .name (8), .external_data (13) -> StringStringEntryProto key/value

A truncated or corrupt file raises ModelFileError, never another exception (tests fuzz this).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import ModelFileError


class ExternalRef(NamedTuple):  # a NamedTuple: a graph has thousands, built in a loop
    """One tensor whose data lives in another file."""

    tensor: str
    location: str  # as written in the file (relative to the graph's directory)
    offset: int
    length: int | None  # None: to the end of the file
    dims: tuple[int, ...]


@dataclass(frozen=True)
class OnnxFileInfo:
    graph_name: str
    external: tuple[ExternalRef, ...]
    inputs: tuple[str, ...] = ()  # the main graph's input and output names, in order
    outputs: tuple[str, ...] = ()

    @property
    def locations(self) -> list[str]:
        return sorted({r.location for r in self.external})


# message -> [(field name, number, type, label, message type)]; numbers as in onnx.proto
_SCHEMA = {
    "Entry": [("key", 1, "bytes", "opt", None), ("value", 2, "bytes", "opt", None)],
    "Tensor": [("dims", 1, "int64", "rep", None), ("name", 8, "bytes", "opt", None),
               ("external_data", 13, "msg", "rep", "Entry")],
    "Sparse": [("values", 1, "msg", "opt", "Tensor"), ("indices", 2, "msg", "opt", "Tensor")],
    "Attribute": [("t", 5, "msg", "opt", "Tensor"), ("g", 6, "msg", "opt", "Graph"),
                  ("tensors", 10, "msg", "rep", "Tensor"), ("graphs", 11, "msg", "rep", "Graph"),
                  ("sparse_tensor", 22, "msg", "opt", "Sparse"),
                  ("sparse_tensors", 23, "msg", "rep", "Sparse")],
    "Node": [("attribute", 5, "msg", "rep", "Attribute")],
    "ValueInfo": [("name", 1, "bytes", "opt", None)],
    "Graph": [("node", 1, "msg", "rep", "Node"), ("name", 2, "bytes", "opt", None),
              ("initializer", 5, "msg", "rep", "Tensor"),
              ("input", 11, "msg", "rep", "ValueInfo"), ("output", 12, "msg", "rep", "ValueInfo"),
              ("sparse_initializer", 15, "msg", "rep", "Sparse")],
    "Function": [("node", 7, "msg", "rep", "Node")],
    "Model": [("graph", 7, "msg", "opt", "Graph"), ("functions", 25, "msg", "rep", "Function")],
}


_REPEATED = {f[0] for f in _SCHEMA["Attribute"] if f[3] == "rep"}


@functools.lru_cache(maxsize=1)
def _model_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="snrt_onnx_subset.proto",
                                            package="snrt_onnx_subset", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    types = {"bytes": F.TYPE_BYTES, "int64": F.TYPE_INT64, "msg": F.TYPE_MESSAGE}
    labels = {"opt": F.LABEL_OPTIONAL, "rep": F.LABEL_REPEATED}
    for name, fields in _SCHEMA.items():
        m = fd.message_type.add(name=name)
        for fname, num, ftype, label, msg in fields:
            f = m.field.add(name=fname, number=num, type=types[ftype], label=labels[label])
            if msg:
                f.type_name = f".snrt_onnx_subset.{msg}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    desc = pool.FindMessageTypeByName("snrt_onnx_subset.Model")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.21


def read_onnx_info(source: str | os.PathLike | bytes) -> OnnxFileInfo:
    """The main graph's name and every external-data reference of an ONNX model file.

    Raises ModelFileError for a missing, truncated or corrupt file. Needs no `onnx` package."""
    from google.protobuf.message import DecodeError

    if isinstance(source, (bytes, bytearray, memoryview)):
        buf, where = bytes(source), "ONNX model"
    else:
        p = Path(source)
        if not p.is_file():
            raise ModelFileError(f"{p}: no such ONNX file")
        buf, where = p.read_bytes(), str(p)

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{where}: not a valid ONNX model ({what}); the file is "
                              "truncated or corrupt: re-export it")

    model = _model_class()()
    try:
        model.ParseFromString(buf)
    except (DecodeError, RuntimeError, ValueError) as e:  # RuntimeError: recursion limit
        raise bad(f"protobuf: {e}") from None
    model.DiscardUnknownFields()  # everything outside the subset schema
    if not model.HasField("graph"):
        raise bad("no graph")

    def text(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("a string that is not UTF-8") from None

    refs: list[ExternalRef] = []

    def tensor(t) -> None:
        ext = t.external_data
        if not ext:
            return
        loc, offset, length = None, b"0", None
        for e in ext:  # repeated keys: the last one wins, as in onnx's loader
            k = e.key
            if k == b"location":
                loc = e.value
            elif k == b"offset":
                offset = e.value
            elif k == b"length":
                length = e.value
        if loc is None:
            return
        try:
            offset, length = int(offset), None if length is None else int(length)
        except ValueError:
            raise bad(f"tensor '{text(t.name)}': external-data offset/length not integers"
                      ) from None
        if offset < 0 or (length is not None and length < 0):
            raise bad(f"tensor '{text(t.name)}': negative external-data offset/length")
        refs.append(ExternalRef(text(t.name), text(loc), offset, length, tuple(t.dims)))

    def sparse(s) -> None:
        tensor(s.values)
        tensor(s.indices)

    def nodes(ns) -> None:
        for n in ns:
            if not n.ByteSize():  # unknown fields are discarded: no tensor or graph inside
                continue
            for a in n.attribute:
                for fd, value in a.ListFields():  # only the fields present
                    for v in (value if fd.name in _REPEATED else [value]):
                        visit[fd.name](v)

    def graph(g) -> None:
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            sparse(s)
        nodes(g.node)

    visit = {"t": tensor, "tensors": tensor, "g": graph, "graphs": graph,
             "sparse_tensor": sparse, "sparse_tensors": sparse}
    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    g = model.graph
    return OnnxFileInfo(text(g.name), tuple(refs), tuple(text(i.name) for i in g.input),
                        tuple(text(o.name) for o in g.output))
