"""A task piece graph turned into a *shared* graph: the task's own tensors become graph inputs.

A task piece (`t_<task>.<anchor>.block<i>.onnx`, `t_<task>.<anchor>.head.onnx`; see
exporters/tuner_onnx.py) holds the frozen block's weights (external data in weights.bin) and the
task's tuner tensors (external data in task_<task>.bin) as initializers. Opened as is, every task
opens one onnxruntime session per tuned block and head, and a session's fixed memory (~0.3-0.5 MB
here) is far more than the task's own bytes. `shared_graph` rewrites such a graph so that

- every initializer stored in the task's file becomes a graph input (`tuner<k>`, its dims as
  stored), which the caller feeds on every run (a view of the task file: no copy);
- every other name (frozen initializers, values, nodes, the graph) is renamed canonically
  (`w<k>`, `v<k>`, `n<k>`, "shared") and doc strings are dropped,

so two tasks with the same tuner kinds and shapes on the same block give byte-identical graphs:
one session (keyed by the graph's bytes) serves every such task, its frozen weights loaded and
prepacked once, and each task added brings only its arrays. Parsing uses protobuf against a
subset schema numbered as in onnx.proto (as snrt/onnx_compose.py; no `onnx` import); fields
outside it are kept verbatim:

    ModelProto.doc_string (6), .graph (7)
    GraphProto.node (1), .name (2), .initializer (5), .doc_string (10), .input (11),
               .output (12), .value_info (13), .sparse_initializer (15, refused)
    NodeProto.input (1), .output (2), .name (3), .op_type (4), .attribute (5) ->
               AttributeProto.g (6), .graphs (11) (refused), .doc_string (6), .domain (7)
    TensorProto.dims (1), .data_type (2), .name (8), .raw_data (9), .external_data (13) ->
               key (1), value (2)
    ValueInfoProto.name (1), .type (2) -> TypeProto.tensor_type (1) -> elem_type (1),
               shape (2) -> dim (1) -> dim_value (1), dim_param (2)
    ModelProto.opset_import (8) -> OperatorSetIdProto.domain (1), .version (2)

With `flat` (the default), the task tensors that lie back to back in the task file (a tuned
block's 4-6 tensors, a merged run's blocks; gaps of alignment padding only) become ONE graph
input `task<j>` [n] (n floats from the first tensor to the end of the last), cut inside the
graph by one Split (and a Reshape per tensor of rank > 1, which onnxruntime aliases): a task
then brings one array per tuned block instead of one per tensor (a numpy view is ~140 bytes
of Python object, next to ~3.6 kB of tensor per block of the default family: 4 views per block
are +15% of the task's bytes, 1 is +4%). A tensor sized by a head's class count (symbolic, below)
stays an input of its own, so tasks of different label counts still share the head's session.

The exact-erf GELU as the exporter writes it, `Mul(x, 1/sqrt(2)) -> Erf -> ...`, is rewritten
`Div(x, sqrt(2)) -> Erf -> ...` (the same math to one rounding of the scaled input): that is the
form onnxruntime's GELU fusion matches, so the GELU and its bias add become one BiasGelu kernel
(40 -> 30 kernels in a tuned block of the default family; the adapter's and the frozen
MLP's). `fuse_gelu_form(buf)` does only this rewrite (on any graph).

A head's class count is made symbolic (`classes`: the last dim of the output and of every task
tensor whose last dim is that count, when it differs from the width D), so tasks with different
label counts share a head session too.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from .errors import ModelFileError

_FLOAT = 1  # TensorProto.FLOAT

_SCHEMA = {
    "Entry": [("key", 1, "bytes", "opt"), ("value", 2, "bytes", "opt")],
    "Attribute": [("g", 6, "bytes", "opt"), ("graphs", 11, "bytes", "rep")],
    "Node": [("input", 1, "bytes", "rep"), ("output", 2, "bytes", "rep"),
             ("name", 3, "bytes", "opt"), ("op_type", 4, "bytes", "opt"),
             ("attribute", 5, "Attribute", "rep"), ("doc_string", 6, "bytes", "opt"),
             ("domain", 7, "bytes", "opt")],
    "Tensor": [("dims", 1, "int64", "rep"), ("data_type", 2, "int32", "opt"),
               ("name", 8, "bytes", "opt"), ("raw_data", 9, "bytes", "opt"),
               ("external_data", 13, "Entry", "rep")],
    "Dim": [("dim_value", 1, "int64", "opt"), ("dim_param", 2, "bytes", "opt")],
    "Shape": [("dim", 1, "Dim", "rep")],
    "TensorType": [("elem_type", 1, "int32", "opt"), ("shape", 2, "Shape", "opt")],
    "Type": [("tensor_type", 1, "TensorType", "opt")],
    "ValueInfo": [("name", 1, "bytes", "opt"), ("type", 2, "Type", "opt")],
    "Graph": [("node", 1, "Node", "rep"), ("name", 2, "bytes", "opt"),
              ("initializer", 5, "Tensor", "rep"), ("doc_string", 10, "bytes", "opt"),
              ("input", 11, "ValueInfo", "rep"), ("output", 12, "ValueInfo", "rep"),
              ("value_info", 13, "ValueInfo", "rep"), ("sparse_initializer", 15, "bytes", "rep")],
    "OpsetId": [("domain", 1, "bytes", "opt"), ("version", 2, "int64", "opt")],
    "Model": [("doc_string", 6, "bytes", "opt"), ("graph", 7, "Graph", "opt"),
              ("opset_import", 8, "OpsetId", "rep")],
}


@functools.lru_cache(maxsize=1)
def _model_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="snrt_task_graphs.proto",
                                            package="snrt_task_graphs", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    labels = {"opt": F.LABEL_OPTIONAL, "rep": F.LABEL_REPEATED}
    scalars = {"bytes": F.TYPE_BYTES, "int64": F.TYPE_INT64, "int32": F.TYPE_INT32}
    for name, fields in _SCHEMA.items():
        m = fd.message_type.add(name=name)
        for fname, num, ftype, label in fields:
            f = m.field.add(name=fname, number=num, label=labels[label])
            if ftype in scalars:
                f.type = scalars[ftype]
            else:
                f.type = F.TYPE_MESSAGE
                f.type_name = f".snrt_task_graphs.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    desc = pool.FindMessageTypeByName("snrt_task_graphs.Model")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.21


@dataclass(frozen=True)
class Feed:
    """One graph input of a shared graph: where the task stored it (float32 in `location`)."""

    input: str  # "tuner<k>"
    location: str  # as the piece graph wrote it (relative to the graph's directory)
    offset: int
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Frozen:
    """A frozen initializer of a shared graph, renamed; its data stays where it was."""

    name: str  # "w<k>"
    location: str
    offset: int
    dims: tuple[int, ...]


@dataclass(frozen=True)
class SharedGraph:
    model: bytes  # the serialized shared model
    key: str  # sha256 of `model`: equal for every task of the same form on the same piece
    input: str  # the activation input (as the piece names it)
    output: str
    feeds: tuple[Feed, ...]  # the task's tensors, in input order
    frozen: tuple[Frozen, ...]  # external initializers kept (the bundle's weights)


def _external(t) -> tuple[str, int] | None:
    loc, off = None, 0
    for e in t.external_data:
        if e.key == b"location":
            loc = e.value.decode("utf-8", "replace")
        elif e.key == b"offset":
            off = int(e.value)
    return None if loc is None else (loc, off)


def _dims(v) -> list:
    return list(v.type.tensor_type.shape.dim)


def _classes(x, y) -> int | None:
    """The output's last dim when it is a fixed count other than the input's width (a head),
    made symbolic in place; else None."""
    dx, dy = _dims(x), _dims(y)
    if not dx or not dy or not dy[-1].HasField("dim_value"):
        return None
    n = dy[-1].dim_value
    if dx[-1].HasField("dim_value") and dx[-1].dim_value == n:
        return None
    dy[-1].ClearField("dim_value")
    dy[-1].dim_param = b"classes"
    return n


_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))
_SQRT2 = b"snrt_gelu_sqrt2"


def _scalar(t) -> float | None:
    if t.data_type != _FLOAT or list(t.dims) not in ([], [1]) or len(t.raw_data) != 4:
        return None
    return float(np.frombuffer(t.raw_data, np.float32)[0])


def _gelu_div(g) -> int:
    """Rewrite every Mul(x, 1/sqrt2) that feeds an Erf as Div(x, sqrt2), in place; the count."""
    consts = {t.name: v for t in g.initializer if (v := _scalar(t)) is not None}
    erf_in = {n.input[0] for n in g.node if n.op_type == b"Erf" and not n.domain and n.input}
    done = 0
    for n in g.node:
        if n.op_type != b"Mul" or n.domain or len(n.input) != 2 or n.output[0] not in erf_in:
            continue
        k = [j for j, i in enumerate(n.input) if consts.get(i) == float(_INV_SQRT2)]
        if not k:
            continue
        x = n.input[1 - k[0]]
        n.op_type = b"Div"
        n.input[:] = [x, _SQRT2]
        done += 1
    if done and not any(t.name == _SQRT2 for t in g.initializer):
        t = g.initializer.add()
        t.name, t.data_type = _SQRT2, _FLOAT
        t.raw_data = np.float32(np.sqrt(2.0)).tobytes()
    return done


def fuse_gelu_form(buf: bytes, where: str = "ONNX model") -> bytes:
    """`buf` with its exact-erf GELUs in the form onnxruntime fuses (see above); unchanged
    when it has none."""
    from google.protobuf.message import DecodeError

    m = _model_class()()
    try:
        m.ParseFromString(buf)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelFileError(f"{where}: not a valid ONNX model ({e})") from None
    return m.SerializeToString(deterministic=True) if _gelu_div(m.graph) else buf


_INT64 = 7  # TensorProto.INT64
_PAD = 64  # the exporter's alignment of small tensors in task_<name>.bin (exporters/onnx_graph)


def _runs(feeds: list[Feed], classes: int | None) -> list[list[Feed]]:
    """The feeds in file order, grouped into runs lying back to back (alignment gaps only);
    a tensor sized by the class count stays alone (its size, and so every offset after it,
    differs between tasks of different label counts)."""
    out: list[list[Feed]] = []
    end, alone = None, False
    for f in sorted(feeds, key=lambda f: f.offset):
        sized = classes is not None and f.dims and f.dims[-1] == classes
        if out and not (alone or sized) and f.location == out[-1][-1].location \
                and 0 <= f.offset - end < _PAD and (f.offset - end) % 4 == 0:
            out[-1].append(f)
        else:
            out.append([f])
        end, alone = f.offset + 4 * int(np.prod(f.dims, dtype=np.int64)), sized
    return out


def _int64(g, name: bytes, values: list[int]) -> None:
    t = g.initializer.add()
    t.name, t.data_type = name, _INT64
    t.dims.append(len(values))
    t.raw_data = np.asarray(values, np.int64).astype("<i8").tobytes()


def _flatten(m, g, feeds: list[Feed], classes: int | None) -> list[Feed]:
    """Each run of back-to-back task tensors as one input `task<j>` [n], split in the graph
    (see the module doc); the new feeds. Unchanged for a graph of opset < 13 (Split's sizes
    as an input)."""
    if not any(o.version >= 13 for o in m.opset_import if o.domain in (b"", b"ai.onnx")):
        return feeds
    runs = _runs(feeds, classes)
    if all(len(r) == 1 for r in runs):
        return feeds
    drop = {f.input.encode() for r in runs if len(r) > 1 for f in r}
    ins = [i for i in g.input if i.name not in drop]
    del g.input[:]
    g.input.extend(ins)
    new_feeds: list[Feed] = []
    nodes = []
    for j, r in enumerate(runs):
        if len(r) == 1:
            new_feeds.append(r[0])
            continue
        name = f"task{j}".encode()
        start, pos, sizes, outs = r[0].offset, 0, [], []
        for f in r:
            o = (f.offset - start) // 4
            if o > pos:  # alignment padding: cut off, never read
                sizes.append(o - pos)
                outs.append(b"%s_pad%d" % (name, len(outs)))
            k = int(np.prod(f.dims, dtype=np.int64))
            sizes.append(k)
            t = f.input.encode()
            if len(f.dims) == 1:
                outs.append(t)
            else:
                outs.append(t + b"_flat")
                _int64(g, t + b"_shape", list(f.dims))
                nodes.append((b"Reshape", [t + b"_flat", t + b"_shape"], [t]))
            pos = o + k
        _int64(g, name + b"_split", sizes)
        nodes.insert(0, (b"Split", [name, name + b"_split"], outs))
        vi = g.input.add()
        vi.name = name
        vi.type.tensor_type.elem_type = _FLOAT
        vi.type.tensor_type.shape.dim.add().dim_value = pos
        new_feeds.append(Feed(name.decode(), r[0].location, start, (pos,)))
    old = list(g.node)
    del g.node[:]
    for op, ins_, outs_ in nodes:
        n = g.node.add()
        n.op_type = op
        n.input.extend(ins_)
        n.output.extend(outs_)
    g.node.extend(old)
    return new_feeds


def shared_graph(buf: bytes, task_location: str, where: str = "ONNX model", *,
                 gelu: bool = True, flat: bool = True) -> SharedGraph:
    """`buf` (a task piece graph) with every initializer whose external data is in
    `task_location` (e.g. "task_faces.bin") turned into a graph input, and canonical names.
    Raises ModelFileError for a graph this cannot rewrite (subgraphs, sparse initializers, a
    task tensor stored inline or not float32, not one activation input and output)."""
    from google.protobuf.message import DecodeError

    m = _model_class()()
    try:
        m.ParseFromString(buf)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelFileError(f"{where}: not a valid ONNX model ({e})") from None
    g = m.graph
    if g.sparse_initializer or any(a.HasField("g") or a.graphs
                                   for n in g.node for a in n.attribute):
        raise ModelFileError(f"{where}: cannot be shared (subgraph or sparse initializer)")
    inits = {t.name for t in g.initializer}
    acts = [i for i in g.input if i.name not in inits]
    if len(acts) != 1 or len(g.output) != 1:
        raise ModelFileError(f"{where}: cannot be shared ({len(acts)} inputs, {len(g.output)} "
                             "outputs; one of each is needed)")
    if gelu:
        _gelu_div(g)
    x_in, x_out = acts[0].name, g.output[0].name
    classes = _classes(acts[0], g.output[0])
    ren: dict[bytes, bytes] = {x_in: x_in, x_out: x_out, b"": b""}
    feeds: list[Feed] = []
    frozen: list[Frozen] = []
    keep = []
    task_names = {t.name for t in g.initializer
                  if (e := _external(t)) is not None and e[0] == task_location}
    ins = [i for i in g.input if i.name not in task_names]  # (an IR < 4 graph lists them)
    del g.input[:]
    g.input.extend(ins)
    for t in g.initializer:
        ext = _external(t)
        try:
            off = None if ext is None else int(ext[1])
        except ValueError:
            raise ModelFileError(f"{where}: tensor {t.name!r}: bad external offset") from None
        if ext is not None and ext[0] == task_location:
            if t.data_type != _FLOAT:
                raise ModelFileError(f"{where}: task tensor {t.name!r} is not float32")
            name = f"tuner{len(feeds)}".encode()
            ren[t.name] = ren[name] = name  # (the new input below is renamed to itself)
            feeds.append(Feed(name.decode(), ext[0], off, tuple(t.dims)))
            vi = g.input.add()
            vi.name = name
            tt = vi.type.tensor_type
            tt.elem_type = _FLOAT
            for j, d in enumerate(t.dims):
                if classes is not None and j == len(t.dims) - 1 and d == classes:
                    tt.shape.dim.add().dim_param = b"classes"
                else:
                    tt.shape.dim.add().dim_value = d
            continue
        name = f"w{len(ren)}".encode()
        ren[t.name] = name
        t.name = name
        if ext is not None:
            frozen.append(Frozen(name.decode(), ext[0], off, tuple(t.dims)))
        keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)

    def r(s: bytes) -> bytes:
        n = ren.get(s)
        if n is None:
            n = ren[s] = f"v{len(ren)}".encode()
        return n

    for n in g.node:
        n.input[:] = [r(s) for s in n.input]
        n.output[:] = [r(s) for s in n.output]
        n.ClearField("doc_string")
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = r(v.name)
    if flat:
        feeds = _flatten(m, g, feeds, classes)
    for k, n in enumerate(g.node):
        n.name = f"n{k}".encode()
    g.name = b"shared"
    g.ClearField("doc_string")
    m.ClearField("doc_string")
    model = m.SerializeToString(deterministic=True)
    return SharedGraph(model, hashlib.sha256(model).hexdigest(), x_in.decode(), x_out.decode(),
                       tuple(feeds), tuple(frozen))


__all__ = ["Feed", "Frozen", "SharedGraph", "fuse_gelu_form", "shared_graph"]
