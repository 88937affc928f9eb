"""TFLite export of a variant with a task (issue 17 item 4): the task half of
exporters/tflite_export, as exporters/subnet_tflite.py is its subnet half.

    snrt-export tflite BUNDLE --task faces --variants s,ti --precisions fp32,int8

The route is rebuilt in TF ops by tflite_graph._TFRouteBuilder (frozen pieces from the bundle's
weights.bin), with each tuned block and the head taken from the task's own tensors as the
bundle stores them (graphs/task_<name>.bin, read through the external-data references of the
task's piece graphs; nothing but the bundle is needed): the same math, op for op, as the ONNX
task pieces of exporters/tuner_onnx.py:
- lora: h1 A^T B^T added to qkv's output;
- prefix, and prompts folded into one at export: the L extra keys/values are constants
  ([1, H, d, L] keys^T, [1, H, L, d] values); their scores q K^T are concatenated to the
  sequence's before the softmax, and the output is att[..., :N] v + att[..., N:] V;
- adapter: up(GELU(down(h2))) added to the FFN output (exact erf GELU);
- the task head: LayerNorm_task (eps 1e-6) on the class token, then fc.

Verification as for stitches (tflite_export._export_one's tolerances): logits of the file in
LiteRT vs onnxruntime on the variant's task chain (the same pieces snrt.Runtime runs, verified
against a PyTorch reference in tests/test_tuner_export.py). Files:
BUNDLE/tflite/<precision>/t_<task>.v<index>_<id>.tflite, recorded in the task's manifest record
(`tasks[i].exports[<variant>]["tflite"][<precision>]`) and in `files`; resumable like the
variants' files (a recorded file with the same settings and a matching sha256 is skipped).
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from snrt.bundle import Bundle
from snrt.errors import BundleError, SnrtError
from snrt.fileio import sha256_file
from snrt.manifest import TaskInfo, VariantInfo
from snrt.onnx_file import read_onnx_info
from snrt.progress import Progress
from snrt.tuners import HEAD_EPS

from .tflite_graph import _TFRouteBuilder


def task_tflite_rel_path(task: str, variant: VariantInfo, precision: str) -> str:
    from .tflite_export import TFLITE_DIR, _safe

    return f"{TFLITE_DIR}/{precision}/t_{task}.v{variant.index:03d}_{_safe(variant.id)}.tflite"


def stored_task_tensors(bundle: Bundle, task: TaskInfo) -> dict[str, np.ndarray]:
    """The task's own tensors as its ONNX pieces store them (names without the "<task>/"
    prefix, e.g. "tuners.ti.blocks.3.adapter.down.weight^T"), read from task_<name>.bin at the
    offsets the piece graphs reference (the bundle's hashes were checked on open)."""
    wfile = bundle.file(task.weights)
    raw = np.memmap(wfile, dtype=np.uint8, mode="r")
    prefix = f"{task.name}/"
    out: dict[str, np.ndarray] = {}
    for p in task.pieces:
        graph = bundle.file(p["graph"])
        for ref in read_onnx_info(graph).external:
            if not ref.tensor.startswith(prefix) or ref.tensor[len(prefix):] in out:
                continue
            if (graph.parent / ref.location).resolve() != wfile.resolve():
                raise BundleError(f"{graph}: task tensor '{ref.tensor}' lies in {ref.location}, "
                                  f"not in the task's {task.weights}")
            n = 4 * math.prod(ref.dims)
            if ref.length not in (None, n) or ref.offset + n > len(raw):
                raise BundleError(f"{graph}: task tensor '{ref.tensor}' ({list(ref.dims)}) "
                                  f"does not fit {task.weights} at offset {ref.offset}")
            out[ref.tensor[len(prefix):]] = np.array(
                raw[ref.offset:ref.offset + n].view("<f4").reshape(ref.dims))
    return out


class TFTaskRouteBuilder(_TFRouteBuilder):
    """_TFRouteBuilder whose tuned blocks carry the task's tuners and whose head is the
    task's (every route ends in the task head, normalised, as tuner_onnx.task_chain does)."""

    def __init__(self, family, tf, task: TaskInfo, tensors: dict[str, np.ndarray]):
        super().__init__(family, tf)
        self.task, self.tensors = task, tensors
        self.tuned = {p["base"] for p in task.pieces if p["kind"] == "block"}

    def t(self, key: str):
        if key not in self.tensors:
            raise BundleError(f"task '{self.task.name}': tensor '{key}' is missing from its "
                              "pieces; re-export the task (snrt-export task --force)")
        return self.const(("task", self.task.name, key), lambda: self.tensors[key])

    def _has(self, key: str) -> bool:
        return key in self.tensors

    def _block(self, a, i: int, x):
        if f"{a.name}.block{i}" not in self.tuned:
            return super()._block(a, i, x)
        tf, c = self.tf, a.config
        H, d, D, N = c.num_heads, c.head_dim, c.embed_dim, c.seq_len
        b, tk = f"blocks.{i}.", f"tuners.{a.name}.blocks.{i}."
        h = self._layernorm(a, b + "norm1", x)
        qkv = self._linear(a, b + "attn.qkv", h)
        if self._has(tk + "lora.down.weight^T"):
            qkv = qkv + tf.matmul(tf.matmul(h, self.t(tk + "lora.down.weight^T")),
                                  self.t(tk + "lora.up.weight^T"))

        def heads(t):  # [1, N, D] -> [1, H, N, d], 4-D ops only (XNNPACK)
            return tf.transpose(tf.reshape(t, [1, N, H, d]), [0, 2, 1, 3])

        q, k, v = (heads(t) for t in tf.split(qkv, 3, axis=-1))
        q = q * (1.0 / math.sqrt(d))
        scores = tf.matmul(q, k, transpose_b=True)
        if self._has(tk + "kv_extra.key^T"):  # prefix / folded prompt: L constant keys, values
            kt, vx = self.t(tk + "kv_extra.key^T"), self.t(tk + "kv_extra.value")
            L = int(self.tensors[tk + "kv_extra.key^T"].shape[-1])
            att = tf.nn.softmax(tf.concat([scores, tf.matmul(q, kt)], axis=-1), axis=-1)
            a_self, a_x = tf.split(att, [N, L], axis=-1)
            o = tf.matmul(a_self, v) + tf.matmul(a_x, vx)
        else:
            o = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [1, N, D])
        o = self._linear(a, b + "attn.proj", o)
        if c.layer_scale:
            o = o * self.w(a, b + "ls1.gamma")
        x = x + o
        h2 = self._layernorm(a, b + "norm2", x)
        m = self._linear(a, b + "mlp.fc2",
                         tf.nn.gelu(self._linear(a, b + "mlp.fc1", h2), approximate=False))
        if c.layer_scale:
            m = m * self.w(a, b + "ls2.gamma")
        if self._has(tk + "adapter.down.weight^T"):
            z = tf.matmul(h2, self.t(tk + "adapter.down.weight^T")) + \
                self.t(tk + "adapter.down.bias")
            z = tf.matmul(tf.nn.gelu(z, approximate=False), self.t(tk + "adapter.up.weight^T"))
            m = m + z + self.t(tk + "adapter.up.bias")
        return x + m

    def _head(self, a, norm: bool, x):
        tf, D = self.tf, a.config.embed_dim
        hk = f"heads.{a.name}."
        cls = tf.reshape(x[:, 0:1], [1, D])  # a non-shrinking slice stays in XNNPACK
        mean = tf.reduce_mean(cls, axis=-1, keepdims=True)
        dlt = cls - mean
        var = tf.reduce_mean(tf.square(dlt), axis=-1, keepdims=True)
        y = dlt * tf.math.rsqrt(var + HEAD_EPS) * self.t(hk + "norm.weight") + \
            self.t(hk + "norm.bias")
        return tf.matmul(y, self.t(hk + "fc.weight^T")) + self.t(hk + "fc.bias")


def _reference(bundle: Bundle, task: TaskInfo, v: VariantInfo, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the variant's task chain (the pieces snrt.Runtime runs), per image."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    paths = {p["id"]: bundle.file(p["graph"]) for p in task.pieces}
    sessions = []
    for pid in task.chain(v.pieces, v.anchors):
        path = paths.get(pid) or bundle.piece_path(pid)
        sessions.append(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
    out = []
    for i in range(len(x)):
        y = x[i:i + 1]
        for s in sessions:
            y = s.run(None, {s.get_inputs()[0].name: y})[0]
        out.append(y)
    return np.concatenate(out)


def choose_task_variants(bundle: Bundle, task: TaskInfo, variants: Iterable[str | int] | None
                         ) -> list[VariantInfo]:
    """The variants to export with `task`, checked before any work: default every variant the
    task was trained for (refused when more than 20)."""
    from .subnet_tflite import MAX_DEFAULT_VARIANTS, _split_ids

    if variants is None:
        if len(task.variants) > MAX_DEFAULT_VARIANTS:
            raise SnrtError(f"task '{task.name}' runs on {len(task.variants)} variants; choose "
                            f"which to export as TFLite with --variants ID,... (e.g. "
                            f"--variants {','.join(task.variants[:2])})")
        ids = list(task.variants)
    else:
        ids = [bundle.variant(k).id for k in _split_ids(variants)]
        if not ids:
            raise SnrtError("--variants: no variant ids given")
    bad = [i for i in ids if i not in task.variants]
    if bad:
        raise SnrtError(f"task '{task.name}' was not trained for {bad}; it runs on "
                        f"{task.variants[:8]}{'...' if len(task.variants) > 8 else ''}")
    return [bundle.variant(i) for i in dict.fromkeys(ids)]


def _already_done(bundle: Bundle, task: TaskInfo, v: VariantInfo, prec: str, rel: str,
                  sid: str) -> dict | None:
    rec = task.exports.get(v.id, {}).get("tflite", {}).get(prec)
    info = bundle.manifest.files.get(rel)
    p = bundle.path / rel
    if not rec or rec.get("file") != rel or rec.get("settings_id") != sid or not info:
        return None
    if not p.is_file() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
        return None
    return rec


def export_task_tflite(bundle: Bundle, task_name: str, precisions: list[str],
                       variants: Iterable[str | int] | None, x: np.ndarray, inputs: dict,
                       settings: dict, tols: dict, report, *, force: bool = False,
                       progress: bool = True) -> None:
    """Called by tflite_export.export_tflite(task=...) with its checked arguments; appends a
    TFLiteFileResult per (variant, precision) to `report`."""
    from .tflite_export import Slot, TFLiteFileResult, _export_one, _require_tensorflow

    task = bundle.task(task_name)
    chosen = choose_task_variants(bundle, task, variants)
    sid = settings["settings_id"]
    family = tensors = None
    with Progress(len(chosen) * len(precisions), f"export tflite ({task.name})",
                  enabled=progress) as bar:
        for v in chosen:
            todo = []
            for prec in precisions:
                rel = task_tflite_rel_path(task.name, v, prec)
                rec = None if force else _already_done(bundle, task, v, prec, rel, sid)
                if rec is not None:
                    report.results.append(TFLiteFileResult(
                        f"{v.id}@{task.name}", prec, "skipped", rel, rec["bytes"],
                        rec["max_abs_diff"], rec.get("allowed_abs_diff"),
                        rec["top1_agreement"],
                        reason="already recorded (same settings, sha256 matches)"))
                    bar.update(note=f"{v.id}@{task.name} {prec} skipped")
                else:
                    todo.append((prec, rel))
            if not todo:
                continue
            if family is None:
                tf = _require_tensorflow()
                family = bundle.load_family()
                tensors = stored_task_tensors(bundle, task)
            ref = _reference(bundle, task, v, x)
            space = bundle.variant_space()
            with tempfile.TemporaryDirectory(prefix="snrt-tflite-task-") as work:
                saved = Path(work) / "saved_model"
                TFTaskRouteBuilder(family, tf, task, tensors).save(
                    space.get(v.id).route.pieces(space.depth), saved)
                gc.collect()
                for prec, rel in todo:
                    res = _export_one(tf, bundle.path, Slot(v.id, task.name), prec, rel, saved,
                                      x, ref, tols[prec], settings, inputs)
                    report.results.append(res)
                    bar.update(note=f"{v.id}@{task.name} {prec} {res.status}")
