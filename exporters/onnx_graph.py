"""Build ONNX graphs for routes through a family, with every weight stored once.

A route is a list of pieces (patch embedding, blocks, stitching layer, head). Each piece becomes
a handful of ONNX ops, in one of three forms (`ops`, recorded in the manifest's
exports["onnx"]; see OPS_FORMS and benchmarks/ops_bench.py for what each costs):
- "standard": ONNX opset 23, one kernel per piece of a block: LayerNormalization,
  Attention (q/k/v split from the qkv MatMul), Gelu(approximate="none"); portable;
- "contrib": onnxruntime's com.microsoft ops: Attention (with the qkv projection),
  SkipLayerNormalization (residual add + LN2), BiasGelu; onnxruntime only;
- "decomposed": opset 17, attention spelled out (Reshape/Transpose/MatMul/Softmax), GELU as
  Erf/Mul/Add: what bundles before the `ops` option held.
The same builder makes the graph of a whole variant (for users, verification and TFLite) and the
graph of a single piece (what the runtime chains so that all variants share one copy of weights).

Weights live in one external-data file (`weights.bin`); graphs only reference offsets into it.
Linear weights are stored transposed ([in, out]) so MatMul uses them directly: a Transpose in the
graph would make onnxruntime fold a second copy at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from snrt.family import Family
from snrt.variants import Piece, piece_id, piece_io_shape

OPSET = 17  # the decomposed form's (and the subnet/standalone graphs' unless told otherwise)
OPS_FORMS = {
    "standard": "ONNX opset 23: LayerNormalization, Attention, Gelu (portable)",
    "contrib": "onnxruntime com.microsoft: Attention, SkipLayerNormalization, BiasGelu",
    "decomposed": "ONNX opset 17: attention as MatMul/Softmax/Transpose, GELU as Erf/Mul/Add",
}
DEFAULT_OPS = "standard"
MS_DOMAIN = "com.microsoft"


def ops_opsets(ops: str) -> dict[str, int]:
    """The opset imports a graph of form `ops` declares (the same for every graph of a bundle,
    so pieces can be chained into one session: snrt.onnx_compose)."""
    if ops not in OPS_FORMS:
        raise ValueError(f"unknown ops form '{ops}'; choose from {sorted(OPS_FORMS)}")
    return {"standard": {"": 23}, "contrib": {"": 17, MS_DOMAIN: 1},
            "decomposed": {"": OPSET}}[ops]


def ops_ir_version(ops: str) -> int:
    # opset 23 needs IR 11 (onnx's table); IR 8 keeps opset-17 graphs readable by older tools
    return 11 if ops_opsets(ops).get("", OPSET) >= 23 else 8
WEIGHTS_FILE = "weights.bin"
_ALIGN_SMALL, _ALIGN_LARGE, _LARGE = 64, 4096, 1 << 16


@dataclass
class TensorRecord:
    name: str
    offset: int
    shape: tuple[int, ...]
    source: str  # "<anchor>.<timm key>" or "<front>><end>.stitch<t>.<weight|bias>"
    transposed: bool


@dataclass
class WeightStore:
    """Assigns each named tensor one place in weights.bin, in first-use order."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    records: dict[str, TensorRecord] = field(default_factory=dict)
    size: int = 0

    def add(self, name: str, array: np.ndarray, *, source: str, transposed: bool) -> str:
        if name not in self.records:
            a = np.ascontiguousarray(array, dtype=np.float32)
            align = _ALIGN_LARGE if a.nbytes >= _LARGE else _ALIGN_SMALL
            offset = self.size + (-self.size) % align
            self.arrays[name] = a
            self.records[name] = TensorRecord(name, offset, tuple(a.shape), source, transposed)
            self.size = offset + a.nbytes
        return name

    def initializer(self, name: str) -> TensorProto:
        rec, a = self.records[name], self.arrays[name]
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(rec.shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(rec.offset)),
                     ("length", str(a.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def write(self, f) -> None:
        """Write weights.bin to an open binary file."""
        pos = 0
        for name, rec in sorted(self.records.items(), key=lambda kv: kv[1].offset):
            f.write(b"\0" * (rec.offset - pos))
            f.write(self.arrays[name].tobytes())
            pos = rec.offset + self.arrays[name].nbytes


class _Nodes:
    """Collects nodes, initializer names and inline constants for one graph."""

    def __init__(self, store: WeightStore):
        self.store = store
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[str] = []
        self.consts: dict[str, TensorProto] = {}
        self._n = 0

    def op(self, op_type: str, inputs: list[str], prefix: str, **attrs) -> str:
        return self.ops(op_type, inputs, prefix, 1, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], prefix: str, n_out: int,
            domain: str = "", keep: tuple[int, ...] | None = None, **attrs) -> list[str]:
        """A node with n_out outputs (those not in `keep`, when given, left unnamed)."""
        self._n += 1
        base = f"{prefix}/{op_type}_{self._n}"
        outs = [f"{base}" if i == 0 else f"{base}:{i}" for i in range(n_out)]
        if keep is not None:
            outs = [o if i in keep else "" for i, o in enumerate(outs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base,
                                           domain=domain or None, **attrs))
        return outs

    def weight(self, name: str, array: np.ndarray, source: str, transposed: bool = False) -> str:
        self.store.add(name, array, source=source, transposed=transposed)
        if name not in self.weights:
            self.weights.append(name)
        return name

    def const(self, values, dtype=np.float32) -> str:
        a = np.asarray(values, dtype=dtype)
        key = f"const_{a.dtype}_{'x'.join(map(str, a.shape))}_{a.tobytes().hex()}"
        if key not in self.consts:
            self.consts[key] = onnx.numpy_helper.from_array(a, key)
        return key


class GraphBuilder:
    """Turns pieces of a family into ONNX nodes; shares one WeightStore across all graphs."""

    def __init__(self, family: Family, store: WeightStore | None = None, *,
                 ops: str = DEFAULT_OPS):
        self.family = family
        self.store = store or WeightStore()
        self.opsets = ops_opsets(ops)
        self.ops = ops

    # -- names -------------------------------------------------------------------------------
    def piece_id(self, p: Piece) -> str:
        """The piece's id (named in snrt.variants, beside the Piece)."""
        return piece_id(p, [a.name for a in self.family.anchors])

    def io_shape(self, p: Piece, side: str) -> list:
        """Symbolic shape of a piece's input ('in') or output ('out')."""
        return piece_io_shape(p, [a.config for a in self.family.anchors], side)

    # -- graphs ------------------------------------------------------------------------------
    def graph(self, pieces: list[Piece], name: str, *, extra_outputs: dict[str, int] | None = None,
              doc: str = "") -> onnx.ModelProto:
        """A model running `pieces` in order. extra_outputs: {output name: piece position} adds
        the output of that piece as a further graph output (used for stitch-fit activations)."""
        g = _Nodes(self.store)
        first, last = pieces[0], pieces[-1]
        in_name = "image" if first.kind == "embed" else "tokens_in"
        out_name = "logits" if last.kind == "head" else "tokens_out"
        x = in_name
        taps = {}
        for i, p in enumerate(pieces):
            x = self._piece(g, p, x, self.piece_id(p))
            taps[i] = x
        g.nodes.append(helper.make_node("Identity", [x], [out_name], name="output"))
        outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                 self.io_shape(last, "out"))]
        for oname, pos in (extra_outputs or {}).items():
            g.nodes.append(helper.make_node("Identity", [taps[pos]], [oname], name=oname))
            outputs.append(helper.make_tensor_value_info(oname, TensorProto.FLOAT,
                                                         self.io_shape(pieces[pos], "out")))
        graph = helper.make_graph(
            g.nodes, name,
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, self.io_shape(first, "in"))],
            outputs,
            [self.store.initializer(w) for w in g.weights] + list(g.consts.values()),
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in
                                                        self.opsets.items()],
                                  producer_name="snrt", doc_string=doc)
        model.ir_version = ops_ir_version(self.ops)
        return model

    def _piece(self, g: _Nodes, p: Piece, x: str, pre: str) -> str:
        anchor = self.family.anchors[p.anchor]
        if p.kind == "embed":
            return self._embed(g, anchor, x, pre)
        if p.kind == "block":
            return self._block(g, anchor, p.index, x, pre)
        if p.kind == "stitch":
            end = self.family.anchors[p.end]
            layer = self.family.stitch_layers[(p.anchor, p.end)][p.index]
            src = f"{anchor.name}>{end.name}.stitch{p.index}"
            w = g.weight(src + ".weight^T", layer.weight.T, src + ".weight", transposed=True)
            b = g.weight(src + ".bias", layer.bias, src + ".bias")
            return g.op("Add", [g.op("MatMul", [x, w], pre), b], pre)
        return self._head(g, anchor, p.norm, x, pre)

    # -- pieces ------------------------------------------------------------------------------
    def _w(self, g: _Nodes, anchor, key: str, transpose: bool = False) -> str:
        a = anchor.weights[key]
        src = f"{anchor.name}.{key}"
        if transpose:
            return g.weight(src + "^T", a.T, src, transposed=True)
        return g.weight(src, a, src)

    def _linear(self, g: _Nodes, anchor, prefix: str, x: str, pre: str) -> str:
        y = g.op("MatMul", [x, self._w(g, anchor, prefix + ".weight", transpose=True)], pre)
        if prefix + ".bias" in anchor.weights:
            y = g.op("Add", [y, self._w(g, anchor, prefix + ".bias")], pre)
        return y

    def _layernorm(self, g: _Nodes, anchor, prefix: str, x: str, pre: str) -> str:
        return g.op("LayerNormalization", [x, self._w(g, anchor, prefix + ".weight"),
                                           self._w(g, anchor, prefix + ".bias")], pre,
                    axis=-1, epsilon=anchor.config.norm_eps)

    def _embed(self, g: _Nodes, anchor, image: str, pre: str) -> str:
        c = anchor.config
        x = g.op("Conv", [image, self._w(g, anchor, "patch_embed.proj.weight"),
                          self._w(g, anchor, "patch_embed.proj.bias")], pre,
                 kernel_shape=[c.patch_size] * 2, strides=[c.patch_size] * 2)
        x = g.op("Reshape", [x, g.const([0, c.embed_dim, -1], np.int64)], pre)
        x = g.op("Transpose", [x], pre, perm=[0, 2, 1])  # [B, patches, D]
        pos = self._w(g, anchor, "pos_embed")
        if c.no_embed_class:
            x = g.op("Add", [x, pos], pre)
        if c.num_prefix_tokens:
            toks = [self._w(g, anchor, "cls_token")]
            if c.distilled:
                toks.append(self._w(g, anchor, "dist_token"))
            prefix = toks[0] if len(toks) == 1 else g.op("Concat", toks, pre, axis=1)
            batch = g.op("Shape", [image], pre, start=0, end=1)
            shape = g.op("Concat", [batch, g.const([c.num_prefix_tokens, c.embed_dim],
                                                   np.int64)], pre, axis=0)
            x = g.op("Concat", [g.op("Expand", [prefix, shape], pre), x], pre, axis=1)
        if not c.no_embed_class:
            x = g.op("Add", [x, pos], pre)
        return x

    def _gelu(self, g: _Nodes, h: str, pre: str) -> str:
        """Exact GELU (timm's nn.GELU): 0.5 * h * (1 + erf(h / sqrt(2)))."""
        if self.ops == "standard":
            return g.op("Gelu", [h], pre, approximate="none")
        if self.ops == "contrib":
            return g.ops("Gelu", [h], pre, 1, domain=MS_DOMAIN)[0]
        e = g.op("Erf", [g.op("Mul", [h, g.const(1.0 / math.sqrt(2.0))], pre)], pre)
        return g.op("Mul", [g.op("Mul", [h, g.const(0.5)], pre),
                            g.op("Add", [e, g.const(1.0)], pre)], pre)

    def _attention(self, g: _Nodes, c, qkv: str, pre: str) -> str:
        """Multi-head attention of the qkv projection's output [B, N, 3D] -> [B, N, D]
        (before the output projection), in the standard or the decomposed form."""
        if self.ops == "standard":
            q, k, v = g.ops("Split", [qkv], pre, 3, axis=-1, num_outputs=3)
            return g.op("Attention", [q, k, v], pre, q_num_heads=c.num_heads,
                        kv_num_heads=c.num_heads)
        qkv = g.op("Reshape", [qkv, g.const([0, 0, 3, c.num_heads, c.head_dim], np.int64)], pre)
        qkv = g.op("Transpose", [qkv], pre, perm=[2, 0, 3, 1, 4])  # [3, B, heads, N, hd]
        q, k, v = (g.op("Gather", [qkv, g.const(i, np.int64)], pre, axis=0) for i in range(3))
        q = g.op("Mul", [q, g.const(1.0 / math.sqrt(c.head_dim))], pre)
        att = g.op("Softmax", [g.op("MatMul", [q, g.op("Transpose", [k], pre,
                                                       perm=[0, 1, 3, 2])], pre)], pre, axis=-1)
        o = g.op("Transpose", [g.op("MatMul", [att, v], pre)], pre, perm=[0, 2, 1, 3])
        return g.op("Reshape", [o, g.const([0, 0, c.embed_dim], np.int64)], pre)

    def _block(self, g: _Nodes, anchor, i: int, x: str, pre: str) -> str:
        if self.ops == "contrib":
            return self._block_contrib(g, anchor, i, x, pre)
        c = anchor.config
        b = f"blocks.{i}."
        h = self._layernorm(g, anchor, b + "norm1", x, pre)
        o = self._attention(g, c, self._linear(g, anchor, b + "attn.qkv", h, pre), pre)
        o = self._linear(g, anchor, b + "attn.proj", o, pre)
        if c.layer_scale:
            o = g.op("Mul", [o, self._w(g, anchor, b + "ls1.gamma")], pre)
        x = g.op("Add", [x, o], pre)
        h = self._layernorm(g, anchor, b + "norm2", x, pre)
        h = self._gelu(g, self._linear(g, anchor, b + "mlp.fc1", h, pre), pre)
        h = self._linear(g, anchor, b + "mlp.fc2", h, pre)
        if c.layer_scale:
            h = g.op("Mul", [h, self._w(g, anchor, b + "ls2.gamma")], pre)
        return g.op("Add", [x, h], pre)

    def _block_contrib(self, g: _Nodes, anchor, i: int, x: str, pre: str) -> str:
        """The block in onnxruntime's fused ops. Weights are named (registered) in the same
        order as the other forms, so weights.bin's layout does not depend on the form."""
        c = anchor.config
        b = f"blocks.{i}."
        h = self._layernorm(g, anchor, b + "norm1", x, pre)
        att_in = [h, self._w(g, anchor, b + "attn.qkv.weight", transpose=True)]
        if b + "attn.qkv.bias" in anchor.weights:
            att_in.append(self._w(g, anchor, b + "attn.qkv.bias"))
        o = g.ops("Attention", att_in, pre, 1, domain=MS_DOMAIN, num_heads=c.num_heads)[0]
        o = g.op("MatMul", [o, self._w(g, anchor, b + "attn.proj.weight", transpose=True)], pre)
        bias = self._w(g, anchor, b + "attn.proj.bias") \
            if b + "attn.proj.bias" in anchor.weights else None
        if c.layer_scale:  # ls1 * (o + bias): the bias cannot go into SkipLayerNormalization
            if bias is not None:
                o = g.op("Add", [o, bias], pre)
            o, bias = g.op("Mul", [o, self._w(g, anchor, b + "ls1.gamma")], pre), None
        ln = [x, o, self._w(g, anchor, b + "norm2.weight"), self._w(g, anchor, b + "norm2.bias")]
        outs = g.ops("SkipLayerNormalization", ln + ([bias] if bias else []), pre, 4,
                     domain=MS_DOMAIN, keep=(0, 3), epsilon=c.norm_eps)
        h, x = outs[0], outs[3]  # LN2(x + o + bias), and x + o + bias (the residual)
        h = g.op("MatMul", [h, self._w(g, anchor, b + "mlp.fc1.weight", transpose=True)], pre)
        if b + "mlp.fc1.bias" in anchor.weights:
            h = g.ops("BiasGelu", [h, self._w(g, anchor, b + "mlp.fc1.bias")], pre, 1,
                      domain=MS_DOMAIN)[0]
        else:
            h = self._gelu(g, h, pre)
        h = self._linear(g, anchor, b + "mlp.fc2", h, pre)
        if c.layer_scale:
            h = g.op("Mul", [h, self._w(g, anchor, b + "ls2.gamma")], pre)
        return g.op("Add", [x, h], pre)

    def _head(self, g: _Nodes, anchor, norm: bool, x: str, pre: str) -> str:
        """timm's forward_head after `norm`: pool (class token, or the mean of the patch tokens),
        `fc_norm` when the model has it (norm after pooling instead of before), linear head.
        `norm=False` (stitched routes, SN-Net) skips the final `norm`, never `fc_norm`."""
        c = anchor.config
        if norm and not c.fc_norm:
            x = self._layernorm(g, anchor, "norm", x, pre)
        if c.distilled:  # timm eval: mean of the class-token head and the distillation head
            logits = self._linear(g, anchor, "head",
                                  g.op("Gather", [x, g.const(0, np.int64)], pre, axis=1), pre)
            dist = self._linear(g, anchor, "head_dist",
                                g.op("Gather", [x, g.const(1, np.int64)], pre, axis=1), pre)
            return g.op("Mul", [g.op("Add", [logits, dist], pre), g.const(0.5)], pre)
        if c.global_pool == "avg":
            patches = g.op("Slice", [x, g.const([c.num_prefix_tokens], np.int64),
                                     g.const([c.seq_len], np.int64), g.const([1], np.int64)], pre)
            if self.opsets[""] >= 18:  # axes became an input in opset 18
                pooled = g.op("ReduceMean", [patches, g.const([1], np.int64)], pre, keepdims=0)
            else:
                pooled = g.op("ReduceMean", [patches], pre, axes=[1], keepdims=0)
        else:
            pooled = g.op("Gather", [x, g.const(0, np.int64)], pre, axis=1)
        if c.fc_norm:
            pooled = self._layernorm(g, anchor, "fc_norm", pooled, pre)
        return self._linear(g, anchor, "head", pooled, pre)
