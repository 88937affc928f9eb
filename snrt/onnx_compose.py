"""Chain ONNX piece graphs into one graph, without the `onnx` package (2 s to import here).

A task's tuned blocks are pieces of their own; run as one onnxruntime session each, every piece
costs a session's fixed memory (~0.4 MB, measured by benchmarks/task_bench.py), far more than
the task's own weights. `chain_models` joins consecutive pieces into one model: every name of
piece k (nodes, values, initializers) gets the prefix `p<k>/`, and piece k's input is wired to
piece k-1's output. The result keeps each initializer as stored (external data references
included, renamed), so the caller supplies those as OrtValues (`SessionOptions.add_initializer`)
and no weight is read twice. Parsing uses protobuf (onnxruntime's own dependency) with a subset
schema numbered as in onnx.proto; fields outside it are kept verbatim as unknown fields:

    ModelProto.graph (7), .opset_import (8, compared as bytes)
    GraphProto.node (1), .initializer (5), .input (11), .output (12), .value_info (13),
               .sparse_initializer (15, refused)
    NodeProto.input (1), .output (2), .name (3), .attribute (5) -> AttributeProto.g (6),
               .graphs (11) (refused: a subgraph could read outer names)
    TensorProto.name (8); ValueInfoProto.name (1)
"""

from __future__ import annotations

import functools

from .errors import ModelFileError

_SCHEMA = {
    "Attribute": [("g", 6, "bytes", "opt"), ("graphs", 11, "bytes", "rep")],
    "Node": [("input", 1, "bytes", "rep"), ("output", 2, "bytes", "rep"),
             ("name", 3, "bytes", "opt"), ("attribute", 5, "Attribute", "rep")],
    "Tensor": [("name", 8, "bytes", "opt")],
    "ValueInfo": [("name", 1, "bytes", "opt")],
    "Graph": [("node", 1, "Node", "rep"), ("initializer", 5, "Tensor", "rep"),
              ("input", 11, "ValueInfo", "rep"), ("output", 12, "ValueInfo", "rep"),
              ("value_info", 13, "ValueInfo", "rep"), ("sparse_initializer", 15, "bytes", "rep")],
    "Model": [("graph", 7, "Graph", "opt"), ("opset_import", 8, "bytes", "rep")],
}


@functools.lru_cache(maxsize=1)
def _model_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="snrt_onnx_compose.proto",
                                            package="snrt_onnx_compose", syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    labels = {"opt": F.LABEL_OPTIONAL, "rep": F.LABEL_REPEATED}
    for name, fields in _SCHEMA.items():
        m = fd.message_type.add(name=name)
        for fname, num, ftype, label in fields:
            f = m.field.add(name=fname, number=num, label=labels[label])
            if ftype == "bytes":
                f.type = F.TYPE_BYTES
            else:
                f.type = F.TYPE_MESSAGE
                f.type_name = f".snrt_onnx_compose.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    desc = pool.FindMessageTypeByName("snrt_onnx_compose.Model")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.21


def prefix(k: int) -> str:
    """The prefix chain_models gives piece k's names."""
    return f"p{k}/"


def chain_models(blobs: list[bytes], where: list[str]) -> bytes:
    """One serialized ModelProto running the models `blobs` one after another (each has one
    graph input, fed by the previous model's first output). `where` names each blob in errors.
    Raises ModelFileError for a model this cannot chain (subgraphs, sparse initializers,
    several inputs, different opsets)."""
    from google.protobuf.message import DecodeError

    cls = _model_class()
    out = None
    prev_out = None
    opsets = None
    for k, (buf, name) in enumerate(zip(blobs, where)):
        m = cls()
        try:
            m.ParseFromString(buf)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise ModelFileError(f"{name}: not a valid ONNX model ({e})") from None
        g = m.graph
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1 or not g.output:
            raise ModelFileError(f"{name}: cannot be chained ({len(inputs)} inputs, "
                                 f"{len(g.output)} outputs; one of each is needed)")
        if g.sparse_initializer or any(a.HasField("g") or a.graphs
                                       for n in g.node for a in n.attribute):
            raise ModelFileError(f"{name}: cannot be chained (subgraph or sparse initializer)")
        if opsets is None:
            opsets = list(m.opset_import)
        elif list(m.opset_import) != opsets:
            raise ModelFileError(f"{name}: cannot be chained (its opsets differ from "
                                 f"{where[0]}'s)")
        pre = prefix(k).encode()
        x_in = inputs[0].name
        ren = {x_in: prev_out} if prev_out is not None else {}

        def r(s: bytes, ren=ren, pre=pre) -> bytes:
            if not s:  # an omitted optional input stays omitted
                return s
            return ren.get(s) or pre + s

        for n in g.node:
            n.input[:] = [r(s) for s in n.input]
            n.output[:] = [r(s) for s in n.output]
            if n.name:
                n.name = pre + n.name
        for t in g.initializer:
            t.name = r(t.name)
        for v in list(g.input) + list(g.output) + list(g.value_info):
            v.name = r(v.name)
        prev_out = g.output[0].name
        if out is None:
            out = m
            continue
        og = out.graph
        og.node.extend(g.node)
        og.initializer.extend(g.initializer)
        # the previous output is now an inner value; its declaration moves to value_info
        og.value_info.extend(og.output)
        del og.output[:]
        og.output.extend(g.output[:1])
        og.value_info.extend(g.value_info)
        named = {t.name for t in g.initializer}
        og.input.extend([i for i in g.input if i.name in named])
    return out.SerializeToString()
