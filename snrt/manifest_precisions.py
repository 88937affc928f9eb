"""Manifest rules for added precisions: `exports["precisions"][p]` (snrt-export quantize).

    {"method": "dynamic", "weights": "graphs/weights_int8.bin",
     "tensors": {fp32 tensor name: {shape [in, out], offset, scale_offset, zero_point_offset}},
     "pieces": {piece id: graph}, "variants": {variant id: graph},
     "tolerance": {atol, rtol}, "verification": {..., "variants": {id: {max_abs_diff, ...}}},
     "accuracy": {variant id: {top1, n, ...}}, ...}

Every graph and the weights file must be listed in `files`; every piece and every variant with
an fp32 graph has a graph in this precision; every tensor lies inside the weights file.
"""

from __future__ import annotations

from typing import Any

QUANT_PRECISIONS = ("int8",)


def validate_precisions(v, ex: Any, files: dict, pieces: list, variants: list) -> None:
    from .manifest_rules import _sub

    precs = v.obj(ex, "exports.precisions")
    piece_ids = {p["id"] for p in pieces}
    variant_ids = {x["id"] for x in variants if x["graph"] is not None}
    for prec, rec in precs.items():
        fld = _sub("exports.precisions", prec)
        if prec not in QUANT_PRECISIONS:
            v.fail(fld, f"unknown precision; expected one of {list(QUANT_PRECISIONS)}")
        v.obj(rec, fld)
        for k in ("method", "weights", "tensors", "pieces", "variants", "tolerance"):
            if k not in rec:
                v.fail(f"{fld}.{k}", "missing")
        v.string(rec["method"], fld + ".method", choices=("dynamic",))
        wrel = v.listed(rec["weights"], fld + ".weights", files, ".bin")
        size = files[wrel]["bytes"]
        for name, t in v.obj(rec["tensors"], fld + ".tensors").items():
            tf = _sub(fld + ".tensors", name)
            v.record(t, tf, ("shape", "offset", "scale_offset", "zero_point_offset"))
            shape = v.array(t["shape"], tf + ".shape", min_len=2)
            if len(shape) != 2:
                v.fail(tf + ".shape", "a quantized weight is [in, out]")
            k, m = (v.integer(s, f"{tf}.shape[{j}]", 1, 1 << 32) for j, s in enumerate(shape))
            for key, n in (("offset", k * m), ("scale_offset", 4 * m),
                           ("zero_point_offset", m)):
                off = v.integer(t[key], f"{tf}.{key}", lo=0)
                if off + n > size:
                    v.fail(f"{tf}.{key}", f"bytes {off}..{off + n} lie past the end of {wrel} "
                           f"({size} bytes)")
        for key, want in (("pieces", piece_ids), ("variants", variant_ids)):
            graphs = v.obj(rec[key], f"{fld}.{key}")
            for owner, rel in graphs.items():
                v.listed(rel, _sub(f"{fld}.{key}", owner), files, ".onnx")
                if owner not in want:
                    v.fail(_sub(f"{fld}.{key}", owner), f"no {key[:-1]} '{owner}' in {key}")
            missing = sorted(want - set(graphs))
            if missing:
                v.fail(f"{fld}.{key}", f"no {prec} graph for {missing[:4]}: re-run "
                       "snrt-export quantize --force")
        tol = v.obj(rec["tolerance"], fld + ".tolerance")
        for k in ("atol", "rtol"):
            v.number(tol.get(k), f"{fld}.tolerance.{k}", 0.0)
        for vid, acc in v.obj(rec.get("accuracy", {}), fld + ".accuracy").items():
            if vid not in variant_ids:
                v.fail(_sub(fld + ".accuracy", vid), "not a variant with a graph")
            v.number(v.obj(acc, _sub(fld + ".accuracy", vid)).get("top1"),
                     _sub(fld + ".accuracy", vid) + ".top1", 0.0, 100.0)
