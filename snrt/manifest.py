"""The bundle manifest (`NAME.snrt/manifest.json`): its schema, digest and validation, in one place.

Schema "snrt.bundle" version 2 (version 1 is still read, see below). Top-level fields, all
required (`labels` and `stitch_fit` may be null):

    schema, schema_version, digest   "snrt.bundle", 2, "sha256:<64 hex>" (see Digest)
    provenance                       free-form: tool, command, options, snrt_version, created
    family        {name, kind, anchors: [{name, config (ViTConfig), source, params}],
                   stitching: {window, stride, nearest, pairs, layers_per_pair}, sources}
                  (kind "subnets": one anchor "super", the supernet, and `space`: its table
                  (snrt.variants.subnets) instead of `stitching`)
    preprocess    Preprocess: img_size, crop_pct, interpolation, mean, std, channels
    labels        one string per class, or null
    input/output  {name, shape, layout, dtype} / {name, shape}
    stitch_fit    free-form report of how the stitching layers were fitted, or null
    variants      [VariantInfo]: index, id, cfg_id, anchors, stitches, pieces, flops, params,
                  graph (null for kinds that run routes of pieces only), accuracy
                  ({top1 %, ...} or null), exports ({"tflite": {precision: rec}})
    pieces        [PieceInfo]: id, kind, anchor, graph, flops, input, output, shapes
    tensors       name -> {offset, shape, source, transposed}: where each weight lies in
                  graphs/weights.bin (float32)
    exports       per-format export settings, e.g. {"tflite": {...}}
    files         path (relative, inside the bundle) -> {sha256, bytes}

Optional (written only when non-empty, so a bundle without tasks keeps its manifest):

    tasks         [TaskInfo]: name, labels, backbone_sha256, tuners, heads, variants (the
                  variants the task runs on), weights (graphs/task_<name>.bin, listed in
                  files), pieces ([PieceInfo fields + base]: "ti.block3@faces" replaces
                  "ti.block3", "s.head@faces" replaces the route's head), params, bytes,
                  accuracy ({variant: {top1, n, ...}}), provenance, graphs ({variant: one
                  whole graph of the variant with the task}, optional). See snrt.tuners and
                  snrt.manifest_tasks (its rules).

Digest: `digest` is "sha256:" + the sha256 of the manifest's canonical form: the JSON object
without its `digest` field, serialised with sorted keys, no whitespace, UTF-8 (`canonical_json`).
Opening checks it, so an accidental edit or corruption of manifest.json is caught even though
the file hashes live inside it. A digest stored beside the data cannot stop a deliberate edit
(whoever edits can recompute it), so callers that must run one exact bundle pin it:
`Bundle.open(path, expected_digest=...)`, `Runtime(..., expected_digest=...)`; `snrt-export
info` prints it. Pinning the manifest pins every file too, through their sha256.

Validation (`manifest_from_json` on every load and every write; the rules live in
snrt.manifest_rules): types and ranges of every field the run-time path reads (crop_pct in
(0, 1], mean finite, std finite and > 0, one mean/std per channel, channels matching the
anchors' in_chans, positive sizes, one label per class), that every file a variant uses is
listed (its graph, each piece's graph, its TFLite files; the external data of graphs is
checked by snrt.bundle when it reads them), and that the records a variant space determines
are the ones it derives: each variant's route, piece chain, FLOPs and params, each piece's
kind, anchor, FLOPs and shapes (`VariantSpace.variant_record` / `piece_records`; the space is
rebuilt from `family` by `snrt.variants.variant_space_from_json`, so new kinds of variants plug
in there). Errors are BundleError naming the manifest, the field (e.g. `variants[3].pieces[2]`)
and what to do.

Version 1 (snrt before this schema) is the same layout without `digest`; it is read with a
warning (nothing guards it against accidental edits unless its digest is pinned: the digest is
computed for any version) and `snrt-export info BUNDLE --rewrite` migrates it in place, leaving
every other file untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import BundleError
from .family import Preprocess
from .fileio import atomic_write_json
from .version import __version__

log = logging.getLogger(__name__)

SCHEMA = "snrt.bundle"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
WEIGHTS = "graphs/weights.bin"
DIGEST_PREFIX = "sha256:"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")  # snrt.preprocess's resamplers
CHANNELS = {"RGB": 3, "L": 1}
TFLITE_PRECISIONS = ("fp32", "fp16", "int8")
TFLITE_LAYOUTS = ("NCHW", "NHWC")
FIX = "the manifest is damaged or was edited by hand: restore it or re-export the bundle"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class PieceInfo:
    id: str
    kind: str  # embed | block | stitch | head
    anchor: str
    graph: str  # path relative to the bundle
    flops: int
    input: str
    output: str
    input_shape: list
    output_shape: list

    @classmethod
    def from_json(cls, d: dict) -> PieceInfo:
        return cls(**d)


@dataclass
class VariantInfo:
    index: int
    id: str
    cfg_id: int
    anchors: list[str]
    stitches: list[dict]  # [{"front", "end", "front_block", "end_block", "layer"}]
    pieces: list[str]
    flops: int
    params: int
    graph: str | None  # None: no whole graph, the variant runs as its route of pieces
    accuracy: dict | None = None  # {"top1": float (%), "dataset": str, "split": str, "n": int}
    exports: dict = field(default_factory=dict)  # e.g. {"tflite": {"fp32": {...}}}

    @property
    def is_anchor(self) -> bool:
        return not self.stitches

    @property
    def top1(self) -> float | None:
        return None if not self.accuracy else self.accuracy.get("top1")

    @classmethod
    def from_json(cls, d: dict) -> VariantInfo:
        return cls(**d)


@dataclass
class TaskInfo:
    """A task (tuners + heads on the frozen backbone) recorded in the manifest."""

    name: str
    labels: list[str]
    backbone_sha256: str
    tuners: list[dict]
    heads: list[str]
    variants: list[str]
    weights: str
    pieces: list[dict]  # PieceInfo fields + "base" (the frozen piece id it replaces)
    params: int
    bytes: int
    accuracy: dict = field(default_factory=dict)  # variant id -> {"top1", "n", ...}
    provenance: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)  # variant id -> whole graph (optional)
    # variant id -> {"tflite": {precision: record}}: the variant with this task as a TFLite
    # file (snrt-export tflite --task; optional, absent in bundles that have none)
    exports: dict = field(default_factory=dict)

    def chain(self, pieces: list[str], anchors: list[str]) -> list[str]:
        """The piece ids a variant (its frozen chain, its anchors) runs with this task."""
        tuned = {p["base"] for p in self.pieces if p["kind"] == "block"}
        out = []
        for pid in pieces:
            if pid in tuned:
                out.append(f"{pid}@{self.name}")
            elif pid.split(".", 1)[1] in ("head", "head_nonorm"):
                out.append(f"{anchors[-1]}.head@{self.name}")
            else:
                out.append(pid)
        return out

    @classmethod
    def from_json(cls, d: dict) -> TaskInfo:
        return cls(**d)


_TOP_FIELDS = ("schema", "schema_version", "provenance", "family", "preprocess", "labels",
               "input", "output", "stitch_fit", "variants", "pieces", "tensors", "exports",
               "files")


@dataclass
class Manifest:
    family: dict  # name, kind, anchors [{name, config, source, params}], stitching, sources
    preprocess: Preprocess
    input: dict  # {"name", "shape", "layout", "dtype"}
    output: dict  # {"name", "shape"}
    variants: list[VariantInfo]
    pieces: list[PieceInfo]
    files: dict[str, dict]  # path -> {"sha256", "bytes"}
    tensors: dict[str, dict]  # name -> {"offset", "shape", "source", "transposed"}
    labels: list[str] | None = None
    provenance: dict = field(default_factory=dict)
    stitch_fit: dict | None = None
    exports: dict = field(default_factory=dict)
    tasks: list[TaskInfo] = field(default_factory=list)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION  # of the manifest as read; writing uses the current
    digest: str | None = None  # of the manifest as read or last written

    def to_json(self) -> dict:
        """The manifest as written now: current schema version, digest over the rest."""
        d = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "provenance": self.provenance, "family": self.family,
            "preprocess": self.preprocess.to_json(), "labels": self.labels,
            "input": self.input, "output": self.output, "stitch_fit": self.stitch_fit,
            "variants": [vars(v) for v in self.variants],
            "pieces": [vars(p) for p in self.pieces],
            "tensors": self.tensors, "exports": self.exports, "files": self.files,
        }
        if self.tasks:
            # a task's `exports` only when it has some (older bundles' manifests stay as read)
            d["tasks"] = [{k: x for k, x in vars(t).items() if k != "exports" or x}
                          for t in self.tasks]
        d = json.loads(json.dumps(d, allow_nan=False))  # plain JSON values (tuples -> lists)
        d["digest"] = manifest_digest(d)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = MANIFEST, *,
                  expected_digest: str | None = None) -> Manifest:
        return manifest_from_json(d, where, expected_digest=expected_digest)


# ----------------------------------------------------------------------------- digest

def canonical_json(d: dict) -> bytes:
    """The manifest's canonical form: without `digest`, sorted keys, no whitespace, UTF-8."""
    body = {k: v for k, v in d.items() if k != "digest"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def manifest_digest(d: dict) -> str:
    return DIGEST_PREFIX + hashlib.sha256(canonical_json(d)).hexdigest()


def normalize_digest(digest: str) -> str:
    """"sha256:<hex>" from "sha256:<hex>" or a bare 64-hex string (any case)."""
    s = str(digest).strip().lower()
    s = s[len(DIGEST_PREFIX):] if s.startswith(DIGEST_PREFIX) else s
    if not _HEX64.fullmatch(s):
        raise BundleError(f"expected digest {digest!r}: not a sha256 (64 hex digits, optionally "
                          f"prefixed '{DIGEST_PREFIX}'); copy it from `snrt-export info`")
    return DIGEST_PREFIX + s


# ----------------------------------------------------------------------------- reading

def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} (JSON has none)")


def _no_duplicate_keys(pairs: list) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def parse_manifest_text(text: str | bytes, where: str) -> Any:
    """JSON -> Python, refusing NaN/Infinity and duplicate keys (json.loads accepts both)."""
    try:
        return json.loads(text, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{where}: not valid JSON ({type(e).__name__}: {e}); restore it or "
                          "re-export the bundle") from None


def manifest_from_json(d: Any, where: str = MANIFEST, *,
                       expected_digest: str | None = None) -> Manifest:
    """Check the schema, the digest (and the pinned one), then every field; build a Manifest."""
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise BundleError(f"{where}: not an snrt bundle manifest (schema "
                          f"{d.get('schema') if isinstance(d, dict) else None!r})")
    ver = d.get("schema_version")
    if type(ver) is not int or ver not in READABLE_VERSIONS:
        raise BundleError(
            f"{where}: bundle schema version {ver}, this snrt (v{__version__}) reads versions "
            f"{list(READABLE_VERSIONS)}; re-export the bundle with this snrt or upgrade snrt")
    from .manifest_rules import validate_fields  # the rules need this module's dataclasses

    try:
        computed = manifest_digest(d)
    except (TypeError, ValueError) as e:  # only from a dict built in Python, not from JSON text
        raise BundleError(f"{where}: not serialisable as JSON ({e}); {FIX}") from None
    if ver >= 2:
        stored = d.get("digest")
        if not isinstance(stored, str) or not stored.startswith(DIGEST_PREFIX) or \
                not _HEX64.fullmatch(stored[len(DIGEST_PREFIX):]):
            raise BundleError(f"{where}: digest: {str(stored)[:80]!r} is not "
                              f"'sha256:<64 hex digits>'; {FIX}")
        if stored != computed:
            raise BundleError(
                f"{where}: the manifest's digest does not match its content (stored {stored}, "
                f"computed {computed}): manifest.json was modified or corrupted after it was "
                "written; do not use it: restore it or re-export the bundle")
    else:
        log.warning("%s: schema version 1 has no digest, so accidental edits go unnoticed; "
                    "migrate it with: snrt-export info %s --rewrite", where,
                    posixpath.dirname(where.replace("\\", "/")) or ".")
    if expected_digest is not None and normalize_digest(expected_digest) != computed:
        raise BundleError(
            f"{where}: manifest digest {computed}, but {normalize_digest(expected_digest)} was "
            "expected (pinned): this is not the bundle you pinned; use the pinned bundle or "
            "update the pin")
    validate_fields(d, where, ver)
    return Manifest(
        family=d["family"], preprocess=Preprocess.from_json(d["preprocess"]),
        input=d["input"], output=d["output"],
        variants=[VariantInfo.from_json(x) for x in d["variants"]],
        pieces=[PieceInfo.from_json(x) for x in d["pieces"]],
        files=d["files"], tensors=d["tensors"], labels=d["labels"],
        provenance=d["provenance"], stitch_fit=d["stitch_fit"], exports=d["exports"],
        tasks=[TaskInfo.from_json(x) for x in d.get("tasks", [])], schema=d["schema"],
        schema_version=ver, digest=computed)


def write_manifest(path, manifest: Manifest) -> str:
    """Validate `manifest` as the current schema and write it atomically; returns its digest.
    Nothing is written if it is invalid (a tool's bug must not produce an unreadable bundle)."""
    where = f"{path} (not written)"
    try:
        d = manifest.to_json()
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: not serialisable as JSON ({e}); this is a bug in the "
                          "tool that built the manifest") from None
    manifest_from_json(d, where)
    atomic_write_json(path, d)
    manifest.schema_version, manifest.digest = SCHEMA_VERSION, d["digest"]
    return d["digest"]
