"""ONNX pieces of a task (snrt.tuners): tuned blocks and task heads beside a bundle's own pieces.

A task adds, inside an existing bundle directory:

    graphs/task_<name>.bin             the task's own tensors (float32, aligned), only
    graphs/t_<name>.<anchor>.block<i>.onnx   piece "<anchor>.block<i>@<name>": the frozen block
                                       plus its tuners (input/output tokens [B, 1+N, D], a
                                       drop-in for the frozen piece)
    graphs/t_<name>.<anchor>.head.onnx piece "<anchor>.head@<name>": the task head
                                       (LayerNorm_task on the class token, then fc)

(in graphs/ beside weights.bin: onnxruntime refuses external data outside a graph's directory).

Every frozen weight a tuned block reads is an external reference to the bundle's existing
`graphs/weights.bin`, at the offset and shape its tensors table gives (never copied); the task's
tensors go to task_<name>.bin. A variant with a task is the variant's chain with each tuned
block replaced by its task piece and the head by the task head (`task_chain`); blocks without
tuners, the patch embedding and stitching layers stay the bundle's own pieces.

Graph form per kind (the math is in snrt.tuners; exact up to float rounding):
- adapter: MatMul(h2, down^T) + b, exact-erf GELU, MatMul(., up^T) + b, added to the FFN output;
- lora: MatMul(MatMul(h1, A^T), B^T) added to qkv's output (B carries alpha / r);
- prefix: constant K_pre^T [1, H, d, L], V_pre [1, H, L, d]: the L extra scores q K_pre^T
  (a broadcast MatMul) are concatenated to the sequence's before the softmax, and the output is
  att[..., :N] v + att[..., N:] V_pre (no per-batch Expand of the constants);
- prompt: folded into a prefix at export (K, V = the k, v parts of qkv'(LN1(P)), LoRA included,
  computed in float64): the prompt tokens' own outputs are dropped at the block output, so they
  act on the sequence only as extra keys and values, and the L tokens' FFN is skipped.
Operator form: the bundle's (manifest exports.onnx.ops, exporters.onnx_graph.OPS_FORMS), so a
tuned block of a standard-form bundle is one Attention, Gelu and LayerNormalization kernel each,
its tuners' MatMuls beside them; attention with extra keys/values stays spelled out.
`snrt-export regraph` re-exports a bundle's task pieces in another form (exporters.task_regraph).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from snrt.bundle import Bundle
from snrt.errors import TaskFileError
from snrt.family import Family
from snrt.manifest import WEIGHTS
from snrt.tuners import Task, check_task
from snrt.variants import Piece

from .onnx_export import bundle_ops
from .onnx_graph import _ALIGN_LARGE, _ALIGN_SMALL, _LARGE, GraphBuilder, _Nodes

TASK_SEP = "@"


GRAPH_DIR = "graphs"


def task_weights_file(name: str) -> str:
    return f"{GRAPH_DIR}/task_{name}.bin"


def task_graph_file(name: str, base_id: str) -> str:
    return f"{GRAPH_DIR}/t_{name}.{base_id}.onnx"


def task_piece_id(base_id: str, task: str) -> str:
    """"ti.block3" + "faces" -> "ti.block3@faces"; heads are "<anchor>.head@<task>" whether
    the route is an anchor or a stitch (a task head always normalises)."""
    return f"{base_id}{TASK_SEP}{task}"


class _SplitStore:
    """Weights of a task graph: the bundle's frozen tensors (by reference into weights.bin, at
    the manifest's offsets) or the task's own (laid out in task_<name>.bin)."""

    def __init__(self, bundle_tensors: dict[str, dict], task_prefix: str, frozen_loc: str,
                 task_loc: str):
        self.frozen = bundle_tensors
        self.prefix = task_prefix
        self.frozen_loc, self.task_loc = frozen_loc, task_loc
        self.arrays: dict[str, np.ndarray] = {}
        self.offsets: dict[str, int] = {}
        self.size = 0

    def add(self, name: str, array: np.ndarray, *, source: str, transposed: bool) -> str:
        if name.startswith(self.prefix):
            if name not in self.offsets:
                a = np.ascontiguousarray(array, dtype=np.float32)
                align = _ALIGN_LARGE if a.nbytes >= _LARGE else _ALIGN_SMALL
                self.offsets[name] = self.size + (-self.size) % align
                self.arrays[name] = a
                self.size = self.offsets[name] + a.nbytes
            return name
        rec = self.frozen.get(name)
        if rec is None or tuple(rec["shape"]) != tuple(np.shape(array)):
            raise TaskFileError(f"frozen weight '{name}' ({source}, shape "
                                f"{list(np.shape(array))}) is not in the bundle's weights.bin "
                                f"as that shape ({rec}); re-export the bundle")
        return name

    def initializer(self, name: str) -> TensorProto:
        if name in self.offsets:
            shape, loc, off = self.arrays[name].shape, self.task_loc, self.offsets[name]
        else:
            rec = self.frozen[name]
            shape, loc, off = tuple(rec["shape"]), self.frozen_loc, rec["offset"]
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", str(off)),
                     ("length", str(4 * math.prod(shape)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def write(self, f) -> None:
        pos = 0
        for name, off in sorted(self.offsets.items(), key=lambda kv: kv[1]):
            f.write(b"\0" * (off - pos))
            f.write(self.arrays[name].tobytes())
            pos = off + self.arrays[name].nbytes


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class TaskGraphBuilder(GraphBuilder):
    """GraphBuilder whose blocks carry a task's tuners and whose heads are the task's."""

    def __init__(self, family: Family, bundle_tensors: dict[str, dict], task: Task,
                 graph_dir: str = GRAPH_DIR, *, ops: str = "decomposed"):
        rel = posixpath.relpath(WEIGHTS, graph_dir)
        store = _SplitStore(bundle_tensors, f"{task.name}/",
                            rel, posixpath.relpath(task_weights_file(task.name), graph_dir))
        # ops: the bundle's operator form (its pieces and the task's are chained in one session,
        # which needs one set of opsets); untuned blocks use its fused ops, tuned blocks its
        # LayerNormalization and GELU, and its attention unless the block has extra keys/values
        # (prefix, prompt: spelled out); in the contrib form a tuned block's attention is
        # spelled out too (com.microsoft Attention holds the qkv projection a LoRA adds to)
        super().__init__(family, store, ops=ops)  # type: ignore[arg-type]
        self.task = task

    # -- task tensors ------------------------------------------------------------------------
    def _t(self, g: _Nodes, key: str, array: np.ndarray) -> str:
        return g.weight(f"{self.task.name}/{key}", array, f"task {self.task.name}: {key}")

    def _piece(self, g: _Nodes, p: Piece, x: str, pre: str) -> str:
        anchor = self.family.anchors[p.anchor]
        if p.kind == "block":
            tuners = self.task.block(anchor.name, p.index)
            if tuners:
                return self._tuned_block(g, anchor, p.index, tuners, x, pre)
        if p.kind == "head":
            return self._task_head(g, anchor, x, pre)
        return super()._piece(g, p, x, pre)

    # -- pieces ------------------------------------------------------------------------------
    def _extra_kv(self, anchor, i: int, t: dict[str, np.ndarray]):
        """(K, V) [L, D] appended to every head's keys and values: the prefix, then the prompt
        folded (k, v of qkv'(LN1(P)) in float64); None when the block has neither."""
        ks, vs = [], []
        D = anchor.config.embed_dim
        if "prefix.key" in t:
            ks.append(t["prefix.key"].astype(np.float64))
            vs.append(t["prefix.value"].astype(np.float64))
        if "prompt.tokens" in t:
            w = {k: anchor.weights[f"blocks.{i}.{k}"].astype(np.float64)
                 for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight")}
            h = _ln(t["prompt.tokens"].astype(np.float64), w["norm1.weight"], w["norm1.bias"],
                    anchor.config.norm_eps)
            qkv = h @ w["attn.qkv.weight"].T
            bias = anchor.weights.get(f"blocks.{i}.attn.qkv.bias")
            if bias is not None:
                qkv = qkv + bias.astype(np.float64)
            if "lora.down.weight" in t:
                qkv = qkv + (h @ t["lora.down.weight"].astype(np.float64).T) @ \
                    t["lora.up.weight"].astype(np.float64).T
            ks.append(qkv[:, D:2 * D])
            vs.append(qkv[:, 2 * D:])
        if not ks:
            return None
        return np.concatenate(ks), np.concatenate(vs)

    def _attention_extra(self, g: _Nodes, c, qkv: str, extra, tk: str, pre: str) -> str:
        """Attention with L constant extra keys/values (prefix, folded prompt), spelled out in
        every form: broadcast MatMuls against the [1, H, d, L] keys^T and [1, H, L, d] values
        (no per-batch Expand of the constants); [B, N, 3D] -> [B, N, D]."""
        H, d, D, N = c.num_heads, c.head_dim, c.embed_dim, c.seq_len
        qkv = g.op("Reshape", [qkv, g.const([0, 0, 3, H, d], np.int64)], pre)
        qkv = g.op("Transpose", [qkv], pre, perm=[2, 0, 3, 1, 4])  # [3, B, H, N, d]
        q, k, v = (g.op("Gather", [qkv, g.const(j, np.int64)], pre, axis=0) for j in range(3))
        q = g.op("Mul", [q, g.const(1.0 / math.sqrt(d))], pre)
        scores = g.op("MatMul", [q, g.op("Transpose", [k], pre, perm=[0, 1, 3, 2])], pre)
        L = extra[0].shape[0]
        kt = extra[0].reshape(L, H, d).transpose(1, 2, 0)[None]  # [1, H, d, L]
        vx = extra[1].reshape(L, H, d).transpose(1, 0, 2)[None]  # [1, H, L, d]
        s_x = g.op("MatMul", [q, self._t(g, tk + "kv_extra.key^T", kt)], pre)
        att = g.op("Softmax", [g.op("Concat", [scores, s_x], pre, axis=-1)], pre, axis=-1)
        a_self, a_x = (g.op("Slice", [att, g.const([lo], np.int64), g.const([hi], np.int64),
                                      g.const([-1], np.int64)], pre)
                       for lo, hi in ((0, N), (N, N + L)))
        o = g.op("Add", [g.op("MatMul", [a_self, v], pre),
                         g.op("MatMul", [a_x, self._t(g, tk + "kv_extra.value", vx)], pre)], pre)
        o = g.op("Transpose", [o], pre, perm=[0, 2, 1, 3])
        return g.op("Reshape", [o, g.const([0, 0, D], np.int64)], pre)

    def _tuned_block(self, g: _Nodes, anchor, i: int, t: dict[str, np.ndarray], x: str,
                     pre: str) -> str:
        c = anchor.config
        b = f"blocks.{i}."
        tk = f"tuners.{anchor.name}.blocks.{i}."
        h = self._layernorm(g, anchor, b + "norm1", x, pre)
        qkv = self._linear(g, anchor, b + "attn.qkv", h, pre)
        if "lora.down.weight" in t:
            a = g.op("MatMul", [h, self._t(g, tk + "lora.down.weight^T",
                                           t["lora.down.weight"].T)], pre)
            a = g.op("MatMul", [a, self._t(g, tk + "lora.up.weight^T", t["lora.up.weight"].T)],
                     pre)
            qkv = g.op("Add", [qkv, a], pre)
        extra = self._extra_kv(anchor, i, t)
        if extra is None:  # the bundle's attention (one Attention kernel in the standard form)
            o = self._attention(g, c, qkv, pre)
        else:
            o = self._attention_extra(g, c, qkv, extra, tk, pre)
        o = self._linear(g, anchor, b + "attn.proj", o, pre)
        if c.layer_scale:
            o = g.op("Mul", [o, self._w(g, anchor, b + "ls1.gamma")], pre)
        x = g.op("Add", [x, o], pre)
        h2 = self._layernorm(g, anchor, b + "norm2", x, pre)
        m = self._linear(g, anchor, b + "mlp.fc2",
                         self._gelu(g, self._linear(g, anchor, b + "mlp.fc1", h2, pre), pre), pre)
        if c.layer_scale:
            m = g.op("Mul", [m, self._w(g, anchor, b + "ls2.gamma")], pre)
        if "adapter.down.weight" in t:
            a = g.op("MatMul", [h2, self._t(g, tk + "adapter.down.weight^T",
                                            t["adapter.down.weight"].T)], pre)
            a = g.op("Add", [a, self._t(g, tk + "adapter.down.bias", t["adapter.down.bias"])],
                     pre)
            a = g.op("MatMul", [self._gelu(g, a, pre),
                                self._t(g, tk + "adapter.up.weight^T", t["adapter.up.weight"].T)],
                     pre)
            a = g.op("Add", [a, self._t(g, tk + "adapter.up.bias", t["adapter.up.bias"])], pre)
            m = g.op("Add", [m, a], pre)
        return g.op("Add", [x, m], pre)

    def _task_head(self, g: _Nodes, anchor, x: str, pre: str) -> str:
        t = self.task.head(anchor.name)
        hk = f"heads.{anchor.name}."
        cls = g.op("Gather", [x, g.const(0, np.int64)], pre, axis=1)  # [B, D]
        y = g.op("LayerNormalization", [cls, self._t(g, hk + "norm.weight", t["norm.weight"]),
                                        self._t(g, hk + "norm.bias", t["norm.bias"])], pre,
                 axis=-1, epsilon=1e-6)
        y = g.op("MatMul", [y, self._t(g, hk + "fc.weight^T", t["fc.weight"].T)], pre)
        return g.op("Add", [y, self._t(g, hk + "fc.bias", t["fc.bias"])], pre)

    def io_shape(self, p: Piece, side: str) -> list:
        shape = super().io_shape(p, side)
        if p.kind == "head" and side == "out":
            return ["batch", len(self.task.labels)]
        return shape


@dataclass
class TaskPiece:
    id: str  # "ti.block3@faces"
    base: str  # the frozen piece it replaces: "ti.block3", or the head it replaces
    kind: str  # block | head
    anchor: str
    graph: str  # relative to the bundle
    flops: int
    input: str
    output: str
    input_shape: list
    output_shape: list

    def to_json(self) -> dict:
        return dict(vars(self))


@dataclass
class TaskExport:
    name: str
    weights: str  # task_<name>.bin, relative to the bundle
    weights_bytes: int
    pieces: list[TaskPiece]
    files: list[str]  # every file written, relative to the bundle
    graphs: dict[str, str]  # variant id -> its whole graph with the task (when asked for)


def tuner_flops(task: Task, anchor, i: int) -> int:
    """Extra multiply-adds a block's tuners cost per sample (fvcore convention)."""
    c = anchor.config
    N, D = c.seq_len, c.embed_dim
    n = 0
    for s in task.tuners if i in task.tuned_blocks(anchor.name) else []:
        if s.kind == "adapter":
            n += 2 * N * D * s.size
        elif s.kind == "lora":
            n += N * D * s.size + N * s.size * 3 * D
        else:  # prefix / folded prompt: L more keys and values for every query
            n += 2 * N * s.size * D
    return n


def _task_pieces(builder: TaskGraphBuilder, family: Family, task: Task):
    """(Piece, piece id, model) of every task piece, in a fixed order (so the task tensors'
    layout in task_<name>.bin is the same whoever builds it)."""
    names = [a.name for a in family.anchors]
    wanted: list[Piece] = []
    for a, anchor in enumerate(family.anchors):
        wanted += [Piece("block", a, i) for i in sorted(task.tuned_blocks(anchor.name))]
    wanted += [Piece("head", names.index(h)) for h in task.heads]
    for p in wanted:
        anchor = family.anchors[p.anchor]
        base = builder.piece_id(p) if p.kind == "block" else f"{anchor.name}.head"
        pid = task_piece_id(base, task.name)
        yield p, pid, builder.graph([p], pid, doc=f"snrt task piece {pid} of {family.name}")


def export_task_onnx(bundle: Bundle, task: Task, *, family: Family | None = None,
                     whole: list[str] = ()) -> TaskExport:
    """Write a task's pieces into `bundle`'s directory (graphs/t_<name>.*); the manifest is
    not touched (the caller records the pieces: snrt-export task). The task must fit the
    bundle's backbone (snrt.tuners.check_task). `whole`: variant ids (of the task's) that also
    get one whole graph with the task (graphs/t_<name>.v<index>_<id>.onnx): what the runtime's
    "graphs" placement runs for tiny models, where a chain of piece calls costs more than the
    compute."""
    check_task(task, bundle)
    family = family if family is not None else bundle.load_family()
    builder = TaskGraphBuilder(family, bundle.manifest.tensors, task,
                               ops=bundle_ops(bundle.manifest))
    space = bundle.variant_space()
    pieces: list[TaskPiece] = []
    for p, pid, model in _task_pieces(builder, family, task):
        anchor = family.anchors[p.anchor]
        base = pid.split(TASK_SEP)[0]
        rel = task_graph_file(task.name, base)
        _write(bundle.path / rel, model)
        c = anchor.config
        flops = space.piece_flops(p) + tuner_flops(task, anchor, p.index) if p.kind == "block" \
            else 5 * c.embed_dim + c.embed_dim * len(task.labels)
        pieces.append(TaskPiece(pid, base, p.kind, anchor.name, rel, flops, "tokens_in",
                                "logits" if p.kind == "head" else "tokens_out",
                                builder.io_shape(p, "in"), builder.io_shape(p, "out")))
    graphs: dict[str, str] = {}
    space_ids = {v.id: v for v in space}
    for vid in whole:
        if vid not in task.variants:
            raise TaskFileError(f"whole graph for '{vid}': task '{task.name}' runs on "
                                f"{task.variants} only")
        v = space_ids[vid]
        rel = f"{GRAPH_DIR}/t_{task.name}.v{v.index:03d}_{_safe(vid)}.onnx"
        _write(bundle.path / rel, builder.graph(v.route.pieces(family.depth),
                                                f"{vid}{TASK_SEP}{task.name}",
                                                doc=f"snrt variant {vid} with task {task.name}"))
        graphs[vid] = rel
    wrel = task_weights_file(task.name)
    tmp = bundle.path / (wrel + ".tmp")
    with open(tmp, "wb") as f:
        builder.store.write(f)
    tmp.replace(bundle.path / wrel)
    return TaskExport(task.name, wrel, builder.store.size, pieces,
                      [wrel] + [p.graph for p in pieces] + list(graphs.values()), graphs)


def task_chain(pieces: list[str], anchors: list[str], task: Task) -> list[str]:
    """The piece ids a variant (its frozen chain `pieces`, its `anchors`) runs with `task`:
    tuned blocks and the head replaced by the task's pieces."""
    out = []
    for pid in pieces:
        a, _, rest = pid.partition(".")
        if rest.startswith("block") and int(rest[5:]) in task.tuned_blocks(a):
            out.append(task_piece_id(pid, task.name))
        elif rest in ("head", "head_nonorm"):
            out.append(task_piece_id(f"{anchors[-1]}.head", task.name))
        else:
            out.append(pid)
    return out


def variant_graph(bundle: Bundle, task: Task, variant: str, family: Family | None = None
                  ) -> onnx.ModelProto:
    """A whole variant with the task as one graph, referencing weights.bin and task_<name>.bin
    (for saving beside them in graphs/ after export_task_onnx: verification, TFLite)."""
    family = family if family is not None else bundle.load_family()
    v = bundle.variant_space().get(variant)
    builder = TaskGraphBuilder(family, bundle.manifest.tensors, task,
                               ops=bundle_ops(bundle.manifest))
    for _ in _task_pieces(builder, family, task):  # lay the task tensors out as exported
        pass
    return builder.graph(v.route.pieces(family.depth), f"{v.id}{TASK_SEP}{task.name}",
                         doc=f"snrt variant {v.id} with task {task.name}")


def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def _write(path, model: onnx.ModelProto) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)


__all__ = ["TaskExport", "TaskGraphBuilder", "TaskPiece", "export_task_onnx", "task_chain",
           "task_graph_file", "task_piece_id", "task_weights_file", "variant_graph"]
