"""Re-export a bundle's task pieces in another operator form (snrt-export regraph), from the
task's tensors as the bundle stores them (graphs/task_<name>.bin): the task file is not needed,
and task_<name>.bin comes out byte-identical (checked).

The stored tensors are those of exporters/tuner_onnx.py's graphs ("<key>^T" transposed, a
prompt folded into constant extra keys/values "kv_extra.*"); `task_from_bundle` turns them back
into a snrt.tuners.Task whose pieces build to the same tensors in the same order: transposes
undone, and the extra keys/values given as a prefix (a prompt folded at export is, from then
on, exactly that prefix; the float32 -> float64 -> float32 round trip is exact).
"""

from __future__ import annotations

import re

import numpy as np

from snrt.bundle import Bundle, BundleWriter
from snrt.errors import SnrtError
from snrt.fileio import sha256_file
from snrt.manifest import TaskInfo
from snrt.tuners import Task

from .task_tflite import stored_task_tensors
from .tuner_onnx import TASK_SEP, TaskGraphBuilder, _task_pieces

_BLOCK = re.compile(r"(.+)\.block(\d+)")


def task_from_bundle(bundle: Bundle, info: TaskInfo) -> Task:
    """The Task whose pieces (TaskGraphBuilder) hold exactly the tensors `info`'s piece graphs
    reference in the bundle."""
    stored = stored_task_tensors(bundle, info)
    anchors = {a["name"]: a["config"] for a in bundle.manifest.family["anchors"]}
    tensors: dict[str, np.ndarray] = {}
    for key, a in stored.items():
        if key.endswith(".kv_extra.key^T"):  # [1, H, d, L] -> prefix keys [L, D]
            k = a[0].transpose(2, 0, 1)
            tensors[key[:-len("kv_extra.key^T")] + "prefix.key"] = \
                np.ascontiguousarray(k.reshape(k.shape[0], -1))
        elif key.endswith(".kv_extra.value"):  # [1, H, L, d] -> prefix values [L, D]
            v = a[0].transpose(1, 0, 2)
            tensors[key[:-len("kv_extra.value")] + "prefix.value"] = \
                np.ascontiguousarray(v.reshape(v.shape[0], -1))
        elif key.endswith("^T"):
            tensors[key[:-2]] = np.ascontiguousarray(a.T)
        else:
            tensors[key] = a
    blocks: dict[str, list[int]] = {}
    for p in info.pieces:
        if p["kind"] == "block":
            m = _BLOCK.fullmatch(p["base"])
            if m is None or m.group(1) not in anchors:
                raise SnrtError(f"task '{info.name}': piece base '{p['base']}' is not a block "
                                "of this bundle's anchors")
            blocks.setdefault(m.group(1), []).append(int(m.group(2)))
    return Task(name=info.name, labels=list(info.labels), family=bundle.manifest.family["name"],
                backbone_sha256=info.backbone_sha256, tuners=[],
                anchors={a: {"embed_dim": anchors[a]["embed_dim"],
                             "num_heads": anchors[a]["num_heads"], "blocks": sorted(b)}
                         for a, b in blocks.items()},
                heads=list(info.heads), variants=list(info.variants),
                tensors=dict(sorted(tensors.items())), provenance=dict(info.provenance))


def regraph_tasks(bundle: Bundle, family, writer: BundleWriter, ops: str) -> list[TaskInfo]:
    """Write every task of `bundle` into `writer` with its piece (and whole) graphs in form
    `ops` and its task_<name>.bin byte-identical; returns the task records (file sizes
    updated). Tasks with TFLite files are refused (re-export those after)."""
    out = []
    space = bundle.variant_space()
    for info in bundle.manifest.tasks:
        if info.exports:
            raise SnrtError(f"{bundle.path}: task '{info.name}' has TFLite files; regraph a "
                            "bundle without them, then export those again")
        task = task_from_bundle(bundle, info)
        builder = TaskGraphBuilder(family, bundle.manifest.tensors, task, ops=ops)
        rels = {p["id"]: p["graph"] for p in info.pieces}
        built = []
        for _, pid, model in _task_pieces(builder, family, task):
            if pid not in rels:
                raise SnrtError(f"task '{info.name}': rebuilt piece '{pid}' is not in its "
                                "record; graphs not replaced")
            writer.path(rels[pid]).write_bytes(model.SerializeToString())
            built.append(pid)
        if sorted(built) != sorted(rels):
            raise SnrtError(f"task '{info.name}': pieces {sorted(set(rels) - set(built))} not "
                            "rebuilt; graphs not replaced")
        for vid, rel in info.graphs.items():
            v = space.get(vid)
            model = builder.graph(v.route.pieces(family.depth), f"{vid}{TASK_SEP}{info.name}",
                                  doc=f"snrt variant {vid} with task {info.name}")
            writer.path(rel).write_bytes(model.SerializeToString())
        with open(writer.path(info.weights), "wb") as f:
            builder.store.write(f)
        if sha256_file(writer.path(info.weights)) != sha256_file(bundle.file(info.weights)):
            raise SnrtError(f"task '{info.name}': re-exported {info.weights} differs from the "
                            "bundle's; graphs not replaced")
        files = [info.weights] + [rels[p] for p in built] + list(info.graphs.values())
        for rel in files:
            writer.add(rel)
        rec = TaskInfo(**vars(info))
        rec.bytes = sum(writer.files[r]["bytes"] for r in files)
        out.append(rec)
    return out
