"""The manifest's field rules: every field checked in one place (see snrt.manifest).

`validate_fields(d, where, version)` raises BundleError naming the manifest, the field (e.g.
`variants[3].pieces[2]`) and what to do. Rules that depend on the kind of variant space (the
routes, piece chains, FLOPs, params and the family section's kind-specific fields) come from the
space (`variant_space_from_json`, `VariantSpace.variant_record/piece_records/family_json`), so a
new kind of variant plugs in there, not here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import re
from typing import Any, NoReturn

from .errors import BundleError, UnknownVariantError, UnsupportedModelError
from .family import Anchor, Family, Preprocess, ViTConfig
from .manifest import (
    _HEX64,
    _TOP_FIELDS,
    CHANNELS,
    FIX,
    INTERPOLATIONS,
    MANIFEST,
    SCHEMA_VERSION,
    TFLITE_LAYOUTS,
    TFLITE_PRECISIONS,
    WEIGHTS,
    PieceInfo,
    VariantInfo,
)
from .variants import SpaceSpecError, variant_space_from_json

_ANCHOR_NAME = re.compile(r"[A-Za-z0-9_-]+")  # ids use . > @ : as separators
_STITCH_SOURCE = re.compile(r"(.+)>(.+)\.stitch(\d+)\.(weight|bias)")
_MAX_DIM = 1 << 20


def validate_fields(d: dict, where: str, version: int) -> None:
    """Check every field of a parsed manifest of schema `version` (digest already checked)."""
    _validate(_Checker(where), d, version)


def _show(x: Any) -> str:
    s = json.dumps(x) if isinstance(x, (str, int, float, bool, type(None))) else \
        type(x).__name__
    return s if len(s) <= 60 else s[:57] + "..."


def _kind(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(x),
                                                                          type(x).__name__)


class _Checker:
    """Type/range checks that raise BundleError naming the manifest and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, fld: str, problem: str, fix: str = FIX) -> NoReturn:
        raise BundleError(f"{self.where}: {fld}: {problem}; {fix}")

    def record(self, d: Any, fld: str, fields: tuple | list) -> dict:
        """An object with exactly `fields`."""
        if not isinstance(d, dict):
            self.fail(fld, f"expected an object, got {_kind(d)}")
        for k in fields:
            if k not in d:
                self.fail(_sub(fld, k), "missing")
        for k in d:
            if k not in fields:
                self.fail(_sub(fld, k), "unknown field (not in schema version "
                          f"{SCHEMA_VERSION}: written by a newer snrt, or edited by hand)")
        return d

    def obj(self, d: Any, fld: str, *, null: bool = False) -> dict | None:
        if d is None and null:
            return None
        if not isinstance(d, dict):
            self.fail(fld, f"expected an object{' or null' if null else ''}, got {_kind(d)}")
        return d

    def array(self, x: Any, fld: str, *, min_len: int = 0) -> list:
        if not isinstance(x, list):
            self.fail(fld, f"expected a list, got {_kind(x)}")
        if len(x) < min_len:
            self.fail(fld, f"{len(x)} entries, at least {min_len} needed")
        return x

    def string(self, x: Any, fld: str, *, choices=None, pattern: re.Pattern | None = None
               ) -> str:
        if not isinstance(x, str):
            self.fail(fld, f"expected a string, got {_kind(x)}")
        if choices is not None and x not in choices:
            self.fail(fld, f"{_show(x)}; expected one of {list(choices)}")
        if pattern is not None and not pattern.fullmatch(x):
            self.fail(fld, f"{_show(x)} is not of the form {pattern.pattern}")
        if choices is None and pattern is None and not x:
            self.fail(fld, "empty")
        return x

    def integer(self, x: Any, fld: str, lo: int | None = None, hi: int | None = None) -> int:
        if type(x) is not int:
            self.fail(fld, f"expected an integer, got {_kind(x)}")
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            self.fail(fld, f"{x} is out of range [{lo}, {hi if hi is not None else '∞'}]")
        return x

    def number(self, x: Any, fld: str, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False) -> float:
        if type(x) not in (int, float):
            self.fail(fld, f"expected a number, got {_kind(x)}")
        if not math.isfinite(x):
            self.fail(fld, f"{x} is not finite")
        low_bad = lo is not None and (x <= lo if lo_open else x < lo)
        if low_bad or (hi is not None and x > hi):
            rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-∞'}, " \
                  f"{hi if hi is not None else '∞'}]"
            self.fail(fld, f"{x} is out of range {rng}")
        return x

    def boolean(self, x: Any, fld: str) -> bool:
        if type(x) is not bool:
            self.fail(fld, f"expected true or false, got {_kind(x)}")
        return x

    def listed(self, rel: Any, fld: str, files: dict, suffix: str) -> str:
        """A path that the manifest's file table lists (so it is hashed on open)."""
        self.string(rel, fld)
        if rel not in files:
            self.fail(fld, f"'{rel}' is not listed in files, so it would be used unchecked")
        if not rel.endswith(suffix):
            self.fail(fld, f"'{rel}' is not a {suffix} file")
        return rel


def _sub(fld: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
        return f"{fld}.{key}"
    return f'{fld}["{key}"]'


def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_MANIFEST_FIELDS_V1 = _TOP_FIELDS
_MANIFEST_FIELDS_V2 = _TOP_FIELDS + ("digest",)


def _validate(v: _Checker, d: dict, ver: int) -> None:
    fields = _MANIFEST_FIELDS_V2 if ver >= 2 else _MANIFEST_FIELDS_V1
    v.record(d, "manifest", fields + (("tasks",) if ver >= 2 and "tasks" in d else ()))
    files = _files(v, d["files"])
    v.obj(d["provenance"], "provenance")
    v.obj(d["stitch_fit"], "stitch_fit", null=True)
    v.obj(d["exports"], "exports")
    space, configs = _family(v, d["family"])
    c0 = configs[0]
    _preprocess(v, d["preprocess"], c0)
    labels = d["labels"]
    if labels is not None:
        v.array(labels, "labels")
        for i, lab in enumerate(labels):
            if not isinstance(lab, str):
                v.fail(f"labels[{i}]", f"expected a string, got {_kind(lab)}")
        if len(labels) != c0.num_classes:
            v.fail("labels", f"{len(labels)} labels for {c0.num_classes} classes")
    _io(v, d["input"], "input", ("name", "shape", "layout", "dtype"),
        [c0.in_chans, c0.img_size, c0.img_size])
    if d["input"]["layout"] != "NCHW" or d["input"]["dtype"] != "float32":
        v.fail("input", "layout must be \"NCHW\" and dtype \"float32\" (what the graphs take)")
    _io(v, d["output"], "output", ("name", "shape"), getattr(space, "output_dims",
                                                              [c0.num_classes]))
    pieces = _pieces(v, d["pieces"], files, space)
    _variants(v, d["variants"], files, pieces, space)
    graphs: dict[str, str] = {}
    for i, p in enumerate(d["pieces"]):
        graphs[p["graph"]] = f"pieces[{i}]"
    for i, x in enumerate(d["variants"]):
        if x["graph"] is None:
            continue
        if x["graph"] in graphs:
            v.fail(f"variants[{i}].graph", f"'{x['graph']}' is also the graph of "
                   f"{graphs[x['graph']]}; every piece and variant has its own graph")
        graphs[x["graph"]] = f"variants[{i}]"
    _tensors(v, d["tensors"], files, space)
    if "precisions" in d["exports"]:  # snrt-export quantize (snrt.manifest_precisions)
        from .manifest_precisions import validate_precisions

        validate_precisions(v, d["exports"]["precisions"], files, d["pieces"], d["variants"])
    if "tasks" in d:
        from .manifest_tasks import validate_tasks

        validate_tasks(v, d["tasks"], files, space, graphs)


def _files(v: _Checker, files: Any) -> dict:
    v.obj(files, "files")
    for rel, info in files.items():
        fld = _sub("files", rel)
        norm = posixpath.normpath(rel) if rel else ""
        if not rel or "\\" in rel or "\0" in rel or rel.startswith("/") or norm != rel or \
                norm == ".." or norm.startswith("../"):
            v.fail(fld, f"file path '{rel}' escapes the bundle or is not a plain relative path")
        if rel == MANIFEST:
            v.fail(fld, "the manifest cannot list itself (its digest protects it)")
        v.record(info, fld, ("sha256", "bytes"))
        v.string(info["sha256"], fld + ".sha256", pattern=_HEX64)
        v.integer(info["bytes"], fld + ".bytes", lo=0)
    return files


def _config(v: _Checker, c: Any, fld: str) -> ViTConfig:
    v.record(c, fld, _field_names(ViTConfig))
    for f in dataclasses.fields(ViTConfig):
        x, sub = c[f.name], f"{fld}.{f.name}"
        if f.type == "int":  # num_classes 0: a headless supernet (checked with its kind)
            v.integer(x, sub, 0 if f.name == "num_classes" else 1, _MAX_DIM)
        elif f.type == "bool":
            v.boolean(x, sub)
        elif f.name == "global_pool":
            v.string(x, sub, choices=("token", "avg"))
        elif f.name == "norm_eps":
            v.number(x, sub, 0.0, 1.0, lo_open=True)
        else:  # a field added to ViTConfig without a rule here
            raise AssertionError(f"no manifest rule for ViTConfig.{f.name}")
    if c["embed_dim"] % c["num_heads"]:
        v.fail(fld + ".num_heads", f"{c['num_heads']} does not divide embed_dim "
               f"{c['embed_dim']}")
    if c["img_size"] % c["patch_size"]:
        v.fail(fld + ".patch_size", f"{c['patch_size']} does not divide img_size "
               f"{c['img_size']}")
    if (c["distilled"] or c["global_pool"] == "token") and not c["class_token"]:
        v.fail(fld + ".class_token", "false, but a distilled or token-pooled model needs one")
    return ViTConfig.from_json(c)


_FAMILY_BASE = ("name", "kind", "anchors", "sources")


def _family(v: _Checker, fam: Any):
    v.obj(fam, "family")
    for k in _FAMILY_BASE:
        if k not in fam:
            v.fail(f"family.{k}", "missing")
    v.string(fam["name"], "family.name")
    v.string(fam["kind"], "family.kind")
    v.array(fam["sources"], "family.sources")
    anchors = v.array(fam["anchors"], "family.anchors", min_len=1)
    names, configs = [], []
    for i, a in enumerate(anchors):
        fld = f"family.anchors[{i}]"
        v.record(a, fld, ("name", "config", "source", "params"))
        name = v.string(a["name"], fld + ".name", pattern=_ANCHOR_NAME)
        if name in names:
            v.fail(fld + ".name", f"'{name}' names two anchors")
        names.append(name)
        configs.append(_config(v, a["config"], fld + ".config"))
        v.obj(a["source"], fld + ".source")
        v.integer(a["params"], fld + ".params", lo=0)
    try:  # the family's own rules (same depth, patch, classes...; widths ascending)
        Family(fam["name"], [Anchor(n, c, {}) for n, c in zip(names, configs)])
    except UnsupportedModelError as e:
        v.fail("family.anchors", str(e))
    try:  # the kind's own settings, checked by the variant space that reads them
        space = variant_space_from_json(fam)
    except SpaceSpecError as e:
        v.fail(e.field, e.problem)
    if configs[0].num_classes == 0 and not hasattr(space, "output_dims"):
        v.fail("family.anchors[0].config.num_classes", "0, but this kind of family needs a "
               "classifier head")
    derived = space.family_json()
    for k, want in derived.items():
        got = fam.get(k)
        if got == want:
            continue
        fld = f"family.{k}"
        if isinstance(got, dict) and isinstance(want, dict):  # name the first differing field
            j = next(j for j in {**want, **got} if got.get(j, ...) != want.get(j, ...))
            fld, got, want = f"{fld}.{j}", got.get(j, "missing"), want.get(j, "no such field")
        v.fail(fld, f"{got}, but these anchors and settings give {want}")
    for k in fam:
        if k not in _FAMILY_BASE and k not in derived:
            v.fail(f"family.{k}", f"unknown field (not in schema version {SCHEMA_VERSION})")
    return space, configs


def _preprocess(v: _Checker, pre: Any, c0: ViTConfig) -> None:
    fld = "preprocess"
    v.record(pre, fld, _field_names(Preprocess))
    v.integer(pre["img_size"], fld + ".img_size", 1, _MAX_DIM)
    if pre["img_size"] != c0.img_size:
        v.fail(fld + ".img_size", f"{pre['img_size']}, but the anchors take {c0.img_size}")
    v.number(pre["crop_pct"], fld + ".crop_pct", 0.0, 1.0, lo_open=True)
    v.string(pre["interpolation"], fld + ".interpolation", choices=INTERPOLATIONS)
    ch = v.string(pre["channels"], fld + ".channels", choices=tuple(CHANNELS))
    if CHANNELS[ch] != c0.in_chans:
        v.fail(fld + ".channels", f"{ch} ({CHANNELS[ch]} channels), but the anchors take "
               f"{c0.in_chans}")
    for key, lo in (("mean", None), ("std", 0.0)):
        xs = v.array(pre[key], f"{fld}.{key}")
        if len(xs) != c0.in_chans:
            v.fail(f"{fld}.{key}", f"{len(xs)} values for {c0.in_chans} channels")
        for i, x in enumerate(xs):
            v.number(x, f"{fld}.{key}[{i}]", lo, lo_open=lo is not None)


def _io(v: _Checker, d: Any, fld: str, fields: tuple, dims: list) -> None:
    v.record(d, fld, fields)
    for k in fields:
        if k != "shape":
            v.string(d[k], f"{fld}.{k}")
    shape = v.array(d["shape"], fld + ".shape")
    if shape != ["batch", *dims]:  # the graphs take any batch: the exporter names it "batch"
        v.fail(fld + ".shape", f"{shape if len(str(shape)) < 60 else '[...]'}; the anchors "
               f"give [\"batch\", {', '.join(map(str, dims))}]")


def _pieces(v: _Checker, pieces: Any, files: dict, space) -> dict[str, int]:
    derived = space.piece_records()
    seen: dict[str, int] = {}
    for i, p in enumerate(v.array(pieces, "pieces")):
        fld = f"pieces[{i}]"
        v.record(p, fld, _field_names(PieceInfo))
        pid = v.string(p["id"], fld + ".id")
        if pid in seen:
            v.fail(fld + ".id", f"'{pid}' is also pieces[{seen[pid]}]")
        seen[pid] = i
        for k in ("kind", "anchor", "input", "output"):
            v.string(p[k], f"{fld}.{k}")
        v.integer(p["flops"], fld + ".flops", lo=0)
        v.listed(p["graph"], fld + ".graph", files, ".onnx")
        v.array(p["input_shape"], fld + ".input_shape")
        v.array(p["output_shape"], fld + ".output_shape")
        if pid not in derived:
            v.fail(fld + ".id", f"'{pid}' is not a piece of any variant of this family")
        for k, want in derived[pid].items():
            if p[k] != want:
                v.fail(f"{fld}.{k}", f"{_show(p[k])}, but piece '{pid}' of this family has "
                       f"{_show(want)}")
    return seen


def _variants(v: _Checker, variants: Any, files: dict, pieces: dict[str, int], space) -> None:
    seen_ids: dict[str, int] = {}
    seen_cfg: dict[int, int] = {}
    for i, x in enumerate(v.array(variants, "variants", min_len=1)):
        fld = f"variants[{i}]"
        v.record(x, fld, _field_names(VariantInfo))
        vid = v.string(x["id"], fld + ".id")
        if vid in seen_ids:
            v.fail(fld + ".id", f"'{vid}' is also variants[{seen_ids[vid]}]")
        seen_ids[vid] = i
        v.integer(x["index"], fld + ".index", lo=0)
        cfg = v.integer(x["cfg_id"], fld + ".cfg_id", lo=0)
        if cfg in seen_cfg:
            v.fail(fld + ".cfg_id", f"{cfg} is also variants[{seen_cfg[cfg]}]'s")
        seen_cfg[cfg] = i
        v.integer(x["flops"], fld + ".flops", lo=0)
        v.integer(x["params"], fld + ".params", lo=0)
        if x["graph"] is not None or getattr(space, "variant_graphs", True):
            v.listed(x["graph"], fld + ".graph", files, ".onnx")  # else: a route of pieces
        for j, a in enumerate(v.array(x["anchors"], fld + ".anchors", min_len=1)):
            v.string(a, f"{fld}.anchors[{j}]")
        for j, s in enumerate(v.array(x["stitches"], fld + ".stitches")):
            v.record(s, f"{fld}.stitches[{j}]",
                     ("front", "end", "front_block", "end_block", "layer"))
        for j, pid in enumerate(v.array(x["pieces"], fld + ".pieces", min_len=1)):
            v.string(pid, f"{fld}.pieces[{j}]")
            if pid not in pieces:
                v.fail(f"{fld}.pieces[{j}]", f"no piece '{pid}' in pieces")
        _accuracy(v, x["accuracy"], fld + ".accuracy")
        _exports(v, x["exports"], fld + ".exports", files)
        try:
            want = space.variant_record(vid)
        except UnknownVariantError:
            v.fail(fld + ".id", f"'{vid}' is not a variant of this family (ids look like "
                   f"{[w.id for w in list(space)[:3]]})")
        for k, w in want.items():
            got = x[k]
            if got == w:
                continue
            if isinstance(w, list) and isinstance(got, list):
                j = next((j for j, (a, b) in enumerate(zip(got, w)) if a != b), None)
                if j is None:
                    v.fail(f"{fld}.{k}", f"{len(got)} entries, but the route of '{vid}' has "
                           f"{len(w)}")
                v.fail(f"{fld}.{k}[{j}]", f"{_show(got[j])}, but the route of '{vid}' has "
                       f"{_show(w[j])} here")
            v.fail(f"{fld}.{k}", f"{_show(got)}, but this family's variant '{vid}' has "
                   f"{_show(w)}")


def _accuracy(v: _Checker, acc: Any, fld: str) -> None:
    if v.obj(acc, fld, null=True) is None:
        return
    if "top1" in acc:
        v.number(acc["top1"], fld + ".top1", 0.0, 100.0)
    if "n" in acc:
        v.integer(acc["n"], fld + ".n", lo=0)


def _exports(v: _Checker, ex: Any, fld: str, files: dict) -> None:
    v.obj(ex, fld)
    for fmt in ex:
        if fmt != "tflite":
            v.fail(_sub(fld, fmt), "unknown export format (this snrt knows 'tflite')")
    for prec, rec in v.obj(ex.get("tflite", {}), fld + ".tflite").items():
        sub = _sub(fld + ".tflite", prec)
        if prec not in TFLITE_PRECISIONS:
            v.fail(sub, f"unknown precision; expected one of {list(TFLITE_PRECISIONS)}")
        v.obj(rec, sub)
        for k in ("file", "bytes"):
            if k not in rec:
                v.fail(f"{sub}.{k}", "missing")
        rel = v.listed(rec["file"], sub + ".file", files, ".tflite")
        if v.integer(rec["bytes"], sub + ".bytes", lo=0) != files[rel]["bytes"]:
            v.fail(sub + ".bytes", f"{rec['bytes']}, but files lists '{rel}' with "
                   f"{files[rel]['bytes']}")
        if "layout" in rec:
            v.string(rec["layout"], sub + ".layout", choices=TFLITE_LAYOUTS)
        for k in ("max_abs_diff", "allowed_abs_diff"):
            if k in rec:
                v.number(rec[k], f"{sub}.{k}", 0.0)
        if "top1_agreement" in rec:
            v.number(rec["top1_agreement"], sub + ".top1_agreement", 0.0, 1.0)
        if "accuracy" in rec:  # measured top-1 of the file (tools/default_family_tflite.py)
            _accuracy(v, rec["accuracy"], sub + ".accuracy")


def _tensors(v: _Checker, tensors: Any, files: dict, space) -> None:
    v.obj(tensors, "tensors")
    if tensors and WEIGHTS not in files:
        v.fail("files", f"'{WEIGHTS}' is not listed, but the tensors table points into it")
    size = files.get(WEIGHTS, {}).get("bytes", 0)
    names = space.anchor_names
    pairs = {(names[f], names[e]) for f, e in space.pairs}
    for name, t in tensors.items():
        fld = _sub("tensors", name)
        v.record(t, fld, ("offset", "shape", "source", "transposed"))
        off = v.integer(t["offset"], fld + ".offset", lo=0)
        n = 4
        for j, s in enumerate(v.array(t["shape"], fld + ".shape")):
            n *= v.integer(s, f"{fld}.shape[{j}]", 0, 1 << 40)
        if off + n > size:
            v.fail(fld, f"bytes {off}..{off + n} lie past the end of {WEIGHTS} ({size} bytes)")
        src = v.string(t["source"], fld + ".source")
        if name != src + ("^T" if v.boolean(t["transposed"], fld + ".transposed") else ""):
            v.fail(fld + ".source", f"'{src}' (transposed {t['transposed']}) does not name "
                   f"tensor '{name}'")
        if m := _STITCH_SOURCE.fullmatch(src):
            if (m.group(1), m.group(2)) not in pairs or \
                    int(m.group(3)) >= space.num_stitch_layers:
                v.fail(fld + ".source", f"'{src}': no such stitching layer in this family")
        elif src.split(".", 1)[0] not in names or "." not in src:
            v.fail(fld + ".source", f"'{src}' is not '<anchor>.<timm key>' of an anchor "
                   f"{names}")
