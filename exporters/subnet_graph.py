"""ONNX graphs for the pieces of elastic subnets, every slice a view into one stored copy.

Stored layout (one copy of every supernet weight in weights.bin, names "super.<timm key>",
"^T" when stored transposed), chosen so the slices a space needs are row prefixes or row ranges
of the stored matrix, i.e. contiguous bytes: an initializer is then an external-data view
(offset, length) of the one copy, named "<stored name>[a:b]" (rows a..b of the leading axis):

- qkv.weight [3D, D] as stored ([out, in]): q, k, v are the row ranges [jD, jD + a) (UFO: a =
  heads*64; POA: a = W), run by Gemm(transB=1); qkv.bias the same ranges;
- proj.weight^T [D_in, D_out] and fc2.weight^T [H, D]: the kept inputs are a row prefix;
- fc1.weight [H, D] as stored: the kept hidden units are a row prefix (Gemm transB=1);
- patch_embed, norms, layer scales, biases, cls_token (stored flat): prefixes;
- head.weight^T [D, classes]: POA's kept input columns are a row prefix.

UFO slices on one axis only, so every UFO piece reads views and nothing else: the bundle stores
the supernet once. POA slices two axes (the first W rows and columns): the rows are a view, the
columns an in-graph Slice of it, and POA's D/W scale an in-graph Mul on the weight (biases not
scaled). onnxruntime constant-folds both when a session loads (before prepacking), so the
stored bytes stay one copy and the running graph multiplies by pre-scaled weights, exactly the
float32 products POA's extraction computes.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snrt.family.supernet import Supernet
from snrt.variants.subnets import SUPERNET, SubnetSpace, SubPiece

from .onnx_graph import DEFAULT_OPS, WEIGHTS_FILE, WeightStore, ops_ir_version, ops_opsets

VIEW = re.compile(r"(.+)\[(\d+):(\d+)\]$")
SUBNET_OPS = ("standard", "decomposed")  # the operator forms subnet graphs are built in
_TRANSPOSED = ("attn.proj.weight", "mlp.fc2.weight", "head.weight")


class SubnetGraphBuilder:
    """Piece (or whole-subnet) graphs over one WeightStore; inline=True embeds the sliced
    arrays instead (a self-contained standalone ONNX file). ops: "standard" (opset 23
    Attention on the 3-D [B, N, heads*hd] q/k/v, Gelu) or "decomposed" (opset 17, as before);
    onnxruntime's contrib form is for stitch families only."""

    def __init__(self, supernet: Supernet, space: SubnetSpace, store: WeightStore | None = None,
                 *, inline: bool = False, ops: str = DEFAULT_OPS):
        if ops not in SUBNET_OPS:
            raise ValueError(f"subnet graphs take ops {' or '.join(SUBNET_OPS)}, not '{ops}'")
        self.ops, self.opsets = ops, ops_opsets(ops)
        self.net, self.space = supernet, space
        self.store = store if store is not None else WeightStore()
        self.inline = inline
        self.D = supernet.config.embed_dim
        self.H = supernet.config.mlp_hidden

    # -- weights -----------------------------------------------------------------------------
    def _stored(self, key: str) -> tuple[str, np.ndarray]:
        a = self.net.weights[key]
        if key.endswith(_TRANSPOSED):
            return f"{SUPERNET}.{key}^T", np.ascontiguousarray(a.T)
        if key == "cls_token":
            return f"{SUPERNET}.{key}", a.reshape(-1)
        return f"{SUPERNET}.{key}", a

    def view(self, g: _G, key: str, a: int = 0, b: int | None = None) -> str:
        """Rows a..b of the stored tensor of `key` (all rows by default)."""
        name, arr = self._stored(key)
        b = arr.shape[0] if b is None else b
        full = (a, b) == (0, arr.shape[0])
        vname = name if full else f"{name}[{a}:{b}]"
        if vname in g.inits:
            return vname
        if self.inline:
            g.inits[vname] = numpy_helper.from_array(np.ascontiguousarray(arr[a:b]), vname)
            return vname
        self.store.add(name, arr, source=f"{SUPERNET}.{key}", transposed=name.endswith("^T"))
        rec = self.store.records[name]
        row = int(np.prod(arr.shape[1:], dtype=np.int64)) * 4
        t = TensorProto(name=vname, data_type=TensorProto.FLOAT,
                        dims=[b - a, *arr.shape[1:]])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(rec.offset + a * row)),
                     ("length", str((b - a) * row))):
            e = t.external_data.add()
            e.key, e.value = k, v
        g.inits[vname] = t
        return vname

    def _weight(self, g: _G, key: str, rows: tuple[int, int], cols: int, scale: float) -> str:
        """A linear weight: a row view, its first `cols` columns (in-graph Slice when fewer
        than stored), times `scale` (in-graph Mul when != 1)."""
        w = self.view(g, key, *rows)
        if cols < self.D:
            w = g.op("Slice", [w, g.const([0]), g.const([cols]), g.const([1])])
        if scale != 1.0:
            w = g.op("Mul", [w, g.const(np.float32(scale), np.float32)])
        return w

    # -- graphs ------------------------------------------------------------------------------
    def graph(self, pieces: list[SubPiece], name: str, doc: str = "") -> onnx.ModelProto:
        g = _G()
        first, last = pieces[0], pieces[-1]
        in_name = "image" if first.kind == "embed" else "tokens_in"
        out_name = "logits" if last.kind == "head" else "tokens_out"
        x = in_name
        for p in pieces:
            x = getattr(self, "_" + p.kind)(g, p, x)
        g.nodes.append(helper.make_node("Identity", [x], [out_name], name="output"))
        graph = helper.make_graph(
            g.nodes, name,
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT,
                                           self.space.piece_io_shape(first, "in"))],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                           self.space.piece_io_shape(last, "out"))],
            list(g.inits.values()) + list(g.consts.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in
                                                        self.opsets.items()],
                                  producer_name="snrt", doc_string=doc)
        model.ir_version = ops_ir_version(self.ops)
        return model

    def _embed(self, g: _G, p: SubPiece, image: str) -> str:
        c, W = self.net.config, p.width
        x = g.op("Conv", [image, self.view(g, "patch_embed.proj.weight", 0, W),
                          self.view(g, "patch_embed.proj.bias", 0, W)],
                 kernel_shape=[c.patch_size] * 2, strides=[c.patch_size] * 2)
        x = g.op("Transpose", [g.op("Reshape", [x, g.const([0, W, -1])])], perm=[0, 2, 1])
        cls = g.op("Reshape", [self.view(g, "cls_token", 0, W), g.const([1, 1, W])])
        batch = g.op("Shape", [image], start=0, end=1)
        cls = g.op("Expand", [cls, g.op("Concat", [batch, g.const([1, W])], axis=0)])
        x = g.op("Concat", [cls, x], axis=1)
        pos = self.view(g, "pos_embed")
        if W < self.D:
            pos = g.op("Slice", [pos, g.const([0]), g.const([W]), g.const([2])])
        return g.op("Add", [x, pos])

    def _ln(self, g: _G, prefix: str, x: str, W: int) -> str:
        return g.op("LayerNormalization", [x, self.view(g, prefix + ".weight", 0, W),
                                           self.view(g, prefix + ".bias", 0, W)],
                    axis=-1, epsilon=self.net.config.norm_eps)

    def _block(self, g: _G, p: SubPiece, x: str) -> str:
        c, D, W, N = self.net.config, self.D, p.width, self.net.config.seq_len
        hd = self.space.head_dim
        a, m, pre = p.heads * hd, p.hidden, f"blocks.{p.block}."
        s = D / W if p.rescale else 1.0
        s2 = self.H / m if p.rescale else 1.0
        x2 = g.op("Reshape", [x, g.const([-1, W])])
        h = self._ln(g, pre + "norm1", x2, W)
        qkv = []
        for j in range(3):
            w = self._weight(g, pre + "attn.qkv.weight", (j * D, j * D + a), W, s)
            y = g.op("Gemm", [h, w, self.view(g, pre + "attn.qkv.bias", j * D, j * D + a)],
                     transB=1)
            if self.ops == "standard":
                qkv.append(g.op("Reshape", [y, g.const([-1, N, a])]))  # [B, N, heads*hd]
            else:
                y = g.op("Reshape", [y, g.const([-1, N, p.heads, hd])])
                qkv.append(g.op("Transpose", [y], perm=[0, 2, 1, 3]))  # [B, heads, N, hd]
        q, k, v = qkv
        if self.ops == "standard":  # 3-D in and out (no transposes), scale 1/sqrt(hd)
            o = g.op("Attention", [q, k, v], q_num_heads=p.heads, kv_num_heads=p.heads)
        else:
            q = g.op("Mul", [q, g.const(np.float32(hd ** -0.5), np.float32)])
            att = g.op("Softmax", [g.op("MatMul", [q, g.op("Transpose", [k],
                                                           perm=[0, 1, 3, 2])])], axis=-1)
            o = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
        o = g.op("Reshape", [o, g.const([-1, a])])
        o = g.op("Gemm", [o, self._weight(g, pre + "attn.proj.weight", (0, a), W, s),
                          self.view(g, pre + "attn.proj.bias", 0, W)])
        if c.layer_scale:
            o = g.op("Mul", [o, self.view(g, pre + "ls1.gamma", 0, W)])
        x2 = g.op("Add", [x2, o])
        h = self._ln(g, pre + "norm2", x2, W)
        h = g.op("Gemm", [h, self._weight(g, pre + "mlp.fc1.weight", (0, m), W, s),
                          self.view(g, pre + "mlp.fc1.bias", 0, m)], transB=1)
        if self.ops == "standard":
            h = g.op("Gelu", [h], approximate="none")
        else:
            e = g.op("Erf", [g.op("Mul", [h, g.const(np.float32(1 / math.sqrt(2)),
                                                     np.float32)])])
            h = g.op("Mul", [g.op("Mul", [h, g.const(np.float32(0.5), np.float32)]),
                             g.op("Add", [e, g.const(np.float32(1.0), np.float32)])])
        h = g.op("Gemm", [h, self._weight(g, pre + "mlp.fc2.weight", (0, m), W, s2),
                          self.view(g, pre + "mlp.fc2.bias", 0, W)])
        if c.layer_scale:
            h = g.op("Mul", [h, self.view(g, pre + "ls2.gamma", 0, W)])
        x2 = g.op("Add", [x2, h])
        return g.op("Reshape", [x2, g.const([-1, N, W])])

    def _head(self, g: _G, p: SubPiece, x: str) -> str:
        W = p.width
        x = self._ln(g, "norm", x, W)
        pooled = g.op("Gather", [x, g.const(0, np.int64)], axis=1)  # the class token
        if not self.net.has_head:
            return pooled  # features
        return g.op("Gemm", [pooled, self.view(g, "head.weight", 0, W),
                             self.view(g, "head.bias")])


class _G:
    """Nodes, initializers (views) and inline constants of one graph."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self.consts: dict[str, TensorProto] = {}

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, values, dtype=np.int64) -> str:
        a = np.asarray(values, dtype=dtype)
        key = f"const_{a.dtype}_{'x'.join(map(str, a.shape))}_{a.tobytes().hex()}"
        if key not in self.consts:
            self.consts[key] = numpy_helper.from_array(a, key)
        return key
