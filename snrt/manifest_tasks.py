"""The manifest's `tasks` rules (see snrt.manifest and snrt.tuners): every task record, its
weights file and piece graphs listed in `files` (so they are hashed on open), piece ids
`<frozen piece>@<task>` that replace a block or head of this family, variants of this family that
end in an anchor the task has a head for."""

from __future__ import annotations

import re
from typing import Any

from .manifest import PieceInfo, TaskInfo
from .tuners import KINDS, TASK_NAME

_HEX64 = re.compile(r"[0-9a-f]{64}")


def validate_tasks(v, tasks: Any, files: dict, space, graphs: dict[str, str]) -> None:
    """`v` is snrt.manifest_rules._Checker; `graphs` maps each piece/variant graph to its
    owner (a task graph must be its own file)."""
    from .manifest_rules import _accuracy, _exports, _field_names

    derived = space.piece_records()
    variants = {w.id: w for w in space}
    names = space.anchor_names
    seen: dict[str, int] = {}
    piece_fields = _field_names(PieceInfo) + ("base",)
    for i, t in enumerate(v.array(tasks, "tasks")):
        fld = f"tasks[{i}]"
        v.record(t, fld, tuple(f for f in _field_names(TaskInfo)
                               if f != "exports" or (isinstance(t, dict) and "exports" in t)))
        name = v.string(t["name"], fld + ".name", pattern=TASK_NAME)
        if name in seen:
            v.fail(fld + ".name", f"'{name}' is also tasks[{seen[name]}]")
        seen[name] = i
        labels = v.array(t["labels"], fld + ".labels", min_len=2)
        for j, lab in enumerate(labels):
            v.string(lab, f"{fld}.labels[{j}]")
        v.string(t["backbone_sha256"], fld + ".backbone_sha256", pattern=_HEX64)
        for j, tu in enumerate(v.array(t["tuners"], fld + ".tuners")):
            v.obj(tu, f"{fld}.tuners[{j}]")
            v.string(tu.get("kind"), f"{fld}.tuners[{j}].kind", choices=KINDS)
        heads = v.array(t["heads"], fld + ".heads", min_len=1)
        for j, h in enumerate(heads):
            v.string(h, f"{fld}.heads[{j}]", choices=names)
        v.listed(t["weights"], fld + ".weights", files, ".bin")
        v.integer(t["params"], fld + ".params", lo=0)
        v.integer(t["bytes"], fld + ".bytes", lo=0)
        ids: set[str] = set()
        for j, p in enumerate(v.array(t["pieces"], fld + ".pieces", min_len=1)):
            pf = f"{fld}.pieces[{j}]"
            v.record(p, pf, piece_fields)
            pid = v.string(p["id"], pf + ".id")
            base = v.string(p["base"], pf + ".base")
            kind = v.string(p["kind"], pf + ".kind", choices=("block", "head"))
            if pid != f"{base}@{name}" or pid in ids:
                v.fail(pf + ".id", f"'{pid}': a task piece is '<frozen piece>@{name}', once")
            ids.add(pid)
            want = derived.get(base)
            if want is None or want["kind"] != kind or (kind == "head" and
                                                        base.split(".")[1] != "head"):
                v.fail(pf + ".base", f"'{base}' is not a {kind} piece of this family")
            v.string(p["anchor"], pf + ".anchor", choices=(want["anchor"],))
            rel = v.listed(p["graph"], pf + ".graph", files, ".onnx")
            if rel in graphs:
                v.fail(pf + ".graph", f"'{rel}' is also the graph of {graphs[rel]}")
            graphs[rel] = pf
            v.integer(p["flops"], pf + ".flops", lo=0)
            v.string(p["input"], pf + ".input", choices=("tokens_in",))
            v.string(p["output"], pf + ".output",
                     choices=("logits",) if kind == "head" else ("tokens_out",))
            v.array(p["input_shape"], pf + ".input_shape")
            v.array(p["output_shape"], pf + ".output_shape")
        for h in heads:
            if f"{h}.head@{name}" not in ids:
                v.fail(fld + ".pieces", f"no piece '{h}.head@{name}' for the head of {h}")
        for j, vid in enumerate(v.array(t["variants"], fld + ".variants")):
            vf = f"{fld}.variants[{j}]"
            v.string(vid, vf, choices=list(variants))
            end = names[variants[vid].route.anchors[-1]]
            if end not in heads:
                v.fail(vf, f"'{vid}' ends in {end}, which has no head in this task")
        for vid, acc in v.obj(t["accuracy"], fld + ".accuracy").items():
            if vid not in variants:
                v.fail(f"{fld}.accuracy", f"'{vid}' is not a variant of this family")
            _accuracy(v, acc, f"{fld}.accuracy.{vid}")
        v.obj(t["provenance"], fld + ".provenance")
        for vid, rel in v.obj(t["graphs"], fld + ".graphs").items():
            gf = f"{fld}.graphs.{vid}"
            if vid not in t["variants"]:
                v.fail(gf, f"'{vid}' is not in {fld}.variants")
            v.listed(rel, gf, files, ".onnx")
            if rel in graphs:
                v.fail(gf, f"'{rel}' is also the graph of {graphs[rel]}")
            graphs[rel] = gf
        for vid, ex in v.obj(t.get("exports", {}), fld + ".exports").items():
            if vid not in t["variants"]:
                v.fail(f"{fld}.exports.{vid}", f"'{vid}' is not in {fld}.variants")
            _exports(v, ex, f"{fld}.exports.{vid}", files)
