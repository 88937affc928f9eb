"""Bundle: a directory `NAME.snrt/` holding a family's variants, ready for any backend.

    NAME.snrt/
      manifest.json          schema, digest, provenance, family, preprocessing, variants, pieces,
                             files (see snrt.manifest for the schema and its validation)
      graphs/weights.bin     every weight once (float32, aligned), shared by all graphs
      graphs/v000_ti.onnx    one graph per variant (standalone use, verification, TFLite)
      graphs/p_ti.block0.onnx  one graph per piece (what the runtime chains)
      tflite/...             optional TFLite exports

Writing goes to a staging directory renamed into place at the end, so a crash never leaves a
half-written bundle under the final name; every manifest written is validated first.

Opening trusts nothing it has not checked: the manifest's digest (and the caller's pinned
`expected_digest`), every field (snrt.manifest), then by default the size and sha256 of every
listed file. Every file a backend opens must be listed: a variant's graph, its pieces' graphs,
its TFLite files, and the files a graph's tensors read as external data. So each ONNX graph is
read (snrt.onnx_file) when it is verified, or before its first use when verification is off: its
name must be the id of the piece or variant the manifest says it is (a swapped graph is caught),
each external-data `location` must resolve, inside the bundle, to a listed file, the bytes it
reads must lie inside that file, and, for `graphs/weights.bin`, match the manifest's tensors
table. Errors are BundleError naming the file and what to do.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import BundleError, ModelFileError, UnknownVariantError
from .family import Anchor, Family, Preprocess, StitchLayer, ViTConfig
from .fileio import sha256_file
from .manifest import (
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    WEIGHTS,
    Manifest,
    PieceInfo,
    TaskInfo,
    VariantInfo,
    manifest_from_json,
    normalize_digest,
    parse_manifest_text,
    write_manifest,
)
from .onnx_file import OnnxFileInfo, read_onnx_info
from .variants import variant_space_from_json
from .version import __version__

__all__ = ["MANIFEST", "SCHEMA", "SCHEMA_VERSION", "WEIGHTS", "Bundle", "BundleWriter",
           "Manifest", "PieceInfo", "VariantInfo", "record_file", "rewrite_manifest",
           "update_manifest"]

# sha256 of a graph file -> what it references; only filled from files whose hash was verified
_GRAPH_INFO_BY_SHA: dict[str, OnnxFileInfo] = {}
_GRAPH_INFO_MAX = 4096


class Bundle:
    """A verified, read-only view of a bundle directory."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._by_id = {v.id: v for v in manifest.variants}
        self._pieces = {p.id: p for p in manifest.pieces}
        # graph file -> the id its graph must carry (a piece's or a variant's)
        self._graph_owner = {p.graph: p.id for p in manifest.pieces}
        self._graph_owner.update({v.graph: v.id for v in manifest.variants if v.graph})
        self._tasks = {t.name: t for t in manifest.tasks}
        for t in manifest.tasks:  # a task's pieces are pieces like the frozen ones
            for rec in t.pieces:
                info = PieceInfo(**{k: x for k, x in rec.items() if k != "base"})
                self._pieces[info.id] = info
                self._graph_owner[info.graph] = info.id
            for vid, rel in t.graphs.items():  # whole graphs of a variant with the task
                self._graph_owner[rel] = f"{vid}@{t.name}"
        # precision -> {"pieces": {id: graph}, "variants": {id: graph}} (snrt-export quantize)
        self._precision_graphs: dict[str, dict] = {}
        for prec, rec in manifest.exports.get("precisions", {}).items():
            self._precision_graphs[prec] = rec
            for key in ("pieces", "variants"):
                for owner, rel in rec.get(key, {}).items():
                    self._graph_owner[rel] = owner
        self._members: dict[str, VariantInfo] = {}  # unlisted members of open spaces
        self._graphs_checked: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool | str = True,
             expected_digest: str | None = None) -> Bundle:
        """Open a bundle: check the manifest's digest and every field, then the listed files.

        verify=True checks size and sha256 of every file (the default); verify="size" only
        sizes of the large files (weights, TFLite: fast, for trusted local bundles); False
        skips the file checks. Graphs are small and always hashed and read (with verify=False,
        before first use). expected_digest: the manifest digest ("sha256:<hex>", as `snrt-export
        info` prints) this must be; pinning it with verify=True pins every file."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle directory; create one with snrt-export")
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing; {path} is not a complete bundle "
                              "(an export was interrupted?): re-export it")
        raw = parse_manifest_text(mpath.read_bytes(), str(mpath))
        bundle = cls(path, manifest_from_json(raw, str(mpath), expected_digest=expected_digest))
        if verify:
            bundle.verify(hashes=verify is True)
        return bundle

    @property
    def digest(self) -> str:
        """The manifest's digest, "sha256:<hex>" (pin it with Bundle.open(expected_digest=))."""
        return self.manifest.digest

    def check_digest(self, expected_digest: str) -> None:
        """BundleError unless this bundle's manifest has `expected_digest`."""
        if normalize_digest(expected_digest) != self.digest:
            raise BundleError(f"{self.path / MANIFEST}: manifest digest {self.digest}, but "
                              f"{normalize_digest(expected_digest)} was expected (pinned): "
                              "this is not the bundle you pinned")

    def verify(self, *, hashes: bool = True) -> None:
        """Check every listed file (size, and sha256 when `hashes`); read every graph."""
        for rel, info in self.manifest.files.items():
            if rel in self._graph_owner:
                self._check_graph(rel)
            else:
                self._check_file(rel, info, hashes)

    def _check_file(self, rel: str, info: dict, hashes: bool, read: bool = False
                    ) -> bytes | None:
        p = self._resolve(rel)
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle; re-export it or restore the file")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise BundleError(f"{p}: {size} bytes, the manifest says {info['bytes']} "
                              "(truncated or replaced); re-export the bundle")
        data = p.read_bytes() if read else None
        if hashes:
            digest = sha256_file(p) if data is None else hashlib.sha256(data).hexdigest()
            if digest != info["sha256"]:
                raise BundleError(f"{p}: sha256 does not match the manifest (modified or "
                                  "corrupted); do not use it: re-export the bundle")
        return data

    def _check_graph(self, rel: str) -> None:
        """The graph file `rel` is what the manifest says: its size and sha256 (graphs are
        small: always hashed, whatever `verify` says), its name is its owner's id, and every
        file its tensors read is listed, inside the bundle, and long enough."""
        if rel in self._graphs_checked:
            return
        p = self._resolve(rel)
        info_sha = self.manifest.files[rel]["sha256"]
        data = self._check_file(rel, self.manifest.files[rel], True, read=True)
        info = _GRAPH_INFO_BY_SHA.get(info_sha)
        if info is None:
            try:
                info = read_onnx_info(data)
            except ModelFileError as e:
                raise BundleError(f"{p}: {str(e).split(': ', 1)[-1]}") from None
            if len(_GRAPH_INFO_BY_SHA) < _GRAPH_INFO_MAX:
                _GRAPH_INFO_BY_SHA[info_sha] = info
        owner = self._graph_owner.get(rel)
        if owner is not None and info.graph_name != owner:
            raise BundleError(f"{p}: holds the graph of '{info.graph_name}', but the manifest "
                              f"lists it as the graph of '{owner}' (graphs swapped or "
                              "replaced); do not use it: re-export the bundle")
        rec = self._pieces.get(owner)
        io = (rec.input, rec.output) if rec is not None and (
            rec.graph == rel or self._is_precision_piece(rel)) else \
            (self.manifest.input["name"], self.manifest.output["name"])
        if info.inputs != io[:1] or info.outputs[:1] != io[1:]:
            raise BundleError(f"{p}: inputs {list(info.inputs)} and outputs "
                              f"{list(info.outputs)}, but the manifest says input '{io[0]}', "
                              f"output '{io[1]}'; re-export the bundle")
        files, tensors = self.manifest.files, self.manifest.tensors
        base, targets = posixpath.dirname(rel), {}
        for loc in {r.location for r in info.external}:  # each location once
            target = posixpath.normpath(posixpath.join(base, loc))
            if "\\" in loc or loc.startswith("/") or target == ".." or \
                    target.startswith("../"):
                raise BundleError(f"{p}: reads external data from '{loc}', outside the bundle; "
                                  "do not use it: re-export the bundle")
            if target not in files:
                raise BundleError(
                    f"{p}: reads external data from '{loc}' ({target}), which "
                    f"{self.path / MANIFEST} does not list, so it would be used unchecked; "
                    "every file a graph opens must be listed: re-export the bundle")
            self._resolve(target)
            targets[loc] = target
        for ref in info.external:
            target = targets[ref.location]
            size = files[target]["bytes"]
            if ref.offset + (ref.length or 0) > size:
                raise BundleError(f"{p}: tensor '{ref.tensor}' reads bytes {ref.offset}.."
                                  f"{ref.offset + (ref.length or 0)} of {target}, which has "
                                  f"{size}; re-export the bundle")
            q = self._quant_tensors.get(target)
            if q is not None and q.get(ref.tensor) != (ref.offset, ref.dims):
                raise BundleError(f"{p}: tensor '{ref.tensor}' (offset {ref.offset}, shape "
                                  f"{list(ref.dims)}) is not where the manifest's int8 tensors "
                                  f"table puts it; re-export the bundle")
            t = tensors.get(ref.tensor) if target == WEIGHTS else None
            if target == WEIGHTS and t is None:
                t = _row_view(tensors, ref)
            if target == WEIGHTS and (
                    t is None or t["offset"] != ref.offset or tuple(t["shape"]) != ref.dims):
                raise BundleError(f"{p}: tensor '{ref.tensor}' (offset {ref.offset}, shape "
                                  f"{list(ref.dims)}) is not where the manifest's tensors "
                                  f"table puts it ({t}); re-export the bundle")
        with self._lock:
            self._graphs_checked.add(rel)

    @functools.cached_property
    def _quant_tensors(self) -> dict[str, dict]:
        """Quantized weights file -> {tensor name in the graphs: (offset, dims)}."""
        out: dict[str, dict] = {}
        for rec in self._precision_graphs.values():
            m = out.setdefault(rec["weights"], {})
            for name, t in rec["tensors"].items():
                shape = tuple(t["shape"])
                m[name + ".int8"] = (t["offset"], shape)
                m[name + ".scale"] = (t["scale_offset"], shape[1:])
                m[name + ".zp"] = (t["zero_point_offset"], shape[1:])
        return out

    def _is_precision_piece(self, rel: str) -> bool:
        return any(rel in r.get("pieces", {}).values() for r in self._precision_graphs.values())

    @functools.cached_property
    def _root(self) -> Path:
        return self.path.resolve()

    def _resolve(self, rel: str) -> Path:
        p = (self._root / rel).resolve()
        if self._root not in p.parents:
            raise BundleError(f"{self.path / MANIFEST}: file path '{rel}' escapes the bundle")
        return p

    # -- read API ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.family["name"]

    @property
    def variants(self) -> list[VariantInfo]:
        return self.manifest.variants

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    def variant(self, key: str | int) -> VariantInfo:
        """A variant by id ("ti>s@7:7") or SN-Net cfg_id (int or digit string)."""
        if isinstance(key, VariantInfo):
            return key
        if isinstance(key, str) and key in self._by_id:
            return self._by_id[key]
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            for v in self.variants:
                if v.cfg_id == key:
                    return v
            raise UnknownVariantError(f"no variant with cfg_id {key} in {self.path.name}; "
                                      f"cfg_ids: 0..{len(self.variants) - 1}")
        space = self._space
        if isinstance(key, str) and getattr(space, "open_membership", False):
            return self._member(key)  # any member of the space, listed or not
        raise UnknownVariantError(
            f"unknown variant '{key}' in {self.path.name}; ids look like "
            f"{[v.id for v in self.variants[:4]]} (see Bundle.variants or use a cfg_id)")

    @property
    def tasks(self) -> list[TaskInfo]:
        """The tasks recorded in the manifest (snrt-export task), in order."""
        return self.manifest.tasks

    def task(self, name: str) -> TaskInfo:
        if name not in self._tasks:
            raise UnknownVariantError(
                f"no task '{name}' in {self.path.name}; tasks: "
                f"{', '.join(self._tasks) or 'none (add one with snrt-export task)'}")
        return self._tasks[name]

    def _member(self, key: str) -> VariantInfo:
        """An unlisted member of an open space (SubnetConfigError when outside it)."""
        with self._lock:
            v = self._members.get(key)
        if v is None:
            v = VariantInfo(index=-1, cfg_id=-1, graph=None, **self._space.variant_record(key))
            with self._lock:
                self._members[key] = v
        return v

    @functools.cached_property
    def _space(self):
        return variant_space_from_json(self.manifest.family)

    @property
    def open_membership(self) -> bool:
        """True when every member of the bundle's space runs, listed or not (subnets)."""
        return bool(getattr(self._space, "open_membership", False))

    def piece(self, piece_id: str) -> PieceInfo:
        if piece_id not in self._pieces:
            raise BundleError(f"no piece '{piece_id}' in {self.path / MANIFEST}")
        return self._pieces[piece_id]

    def file(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise BundleError(f"{rel}: not listed in {self.path / MANIFEST}")
        return self._resolve(rel)

    def graph_path(self, variant: str | int | VariantInfo) -> Path:
        """A variant's whole graph, checked (name, external data) before it is handed out."""
        v = self.variant(variant)
        if v.graph is None:
            raise BundleError(f"variant '{v.id}' of {self.path.name} has no whole graph (it "
                              "runs as its route of pieces); for one ONNX file use "
                              "`snrt-export subnets ... --standalone ID`")
        return self._graph(v.graph)

    def piece_path(self, piece_id: str) -> Path:
        """A piece's graph, checked (name, external data) before it is handed out."""
        return self._graph(self.piece(piece_id).graph)

    @property
    def precisions(self) -> list[str]:
        """The precisions this bundle holds graphs for: "fp32" and those `snrt-export quantize`
        added (e.g. "int8")."""
        return ["fp32", *self._precision_graphs]

    def precision_record(self, precision: str) -> dict:
        """The manifest's record of an added precision (exports["precisions"][precision])."""
        rec = self._precision_graphs.get(precision)
        if rec is None:
            raise BundleError(
                f"{self.path.name} holds no {precision} graphs (it has: "
                f"{', '.join(self.precisions)}); add them with: snrt-export quantize "
                f"{self.path} --precision {precision}")
        return rec

    def precision_graph_path(self, kind: str, key: str, precision: str) -> Path:
        """The `precision` graph of a piece (kind "pieces") or variant ("variants"), checked;
        fp32 is the bundle's own graph."""
        if precision == "fp32":
            return self.piece_path(key) if kind == "pieces" else self.graph_path(key)
        rel = self.precision_record(precision)[kind].get(key)
        if rel is None:
            raise BundleError(f"{self.path.name}: no {precision} graph for {kind[:-1]} "
                              f"'{key}'; re-run snrt-export quantize {self.path} --force")
        return self._graph(rel)

    def task_graph_path(self, task: str, variant: str) -> Path | None:
        """The whole graph of `variant` with `task`, checked, or None if none was exported."""
        rel = self.task(task).graphs.get(variant)
        return None if rel is None else self._graph(rel)

    def _graph(self, rel: str) -> Path:
        p = self.file(rel)
        self._check_graph(rel)
        return p

    def weights_bytes(self) -> int:
        return self.manifest.files[WEIGHTS]["bytes"]

    def load_family(self) -> Family:
        """Rebuild the numpy Family (timm key names, stitching layers) from weights.bin."""
        raw = np.memmap(self.file(WEIGHTS), dtype=np.uint8, mode="r")
        anchors = {a["name"]: Anchor(a["name"], ViTConfig.from_json(a["config"]), {},
                                     a["source"])
                   for a in self.manifest.family["anchors"]}
        stitch: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}
        for name, t in self.manifest.tensors.items():
            shape = tuple(t["shape"])
            n = int(np.prod(shape)) * 4
            if t["offset"] + n > len(raw):
                raise BundleError(f"{self.file(WEIGHTS)}: tensor '{name}' lies past the end")
            a = np.array(raw[t["offset"]:t["offset"] + n].view("<f4").reshape(shape))
            if t["transposed"]:
                a = np.ascontiguousarray(a.T)
            src = t["source"]
            if m := re.match(r"(.+)>(.+)\.stitch(\d+)\.(weight|bias)$", src):
                stitch.setdefault((m.group(1), m.group(2), int(m.group(3))), {})[m.group(4)] = a
            else:
                aname, key = src.split(".", 1)
                anchors[aname].weights[key] = a
        names = list(anchors)
        layers: dict[tuple[int, int], list[StitchLayer]] = {}
        for (f, e, t), wb in sorted(stitch.items(), key=lambda kv: kv[0]):
            lst = layers.setdefault((names.index(f), names.index(e)), [])
            if t != len(lst):
                raise BundleError(f"{self.path}: stitching layer {f}>{e}.{t} out of order")
            lst.append(StitchLayer(wb["weight"], wb["bias"]))
        return Family(self.name, list(anchors.values()), layers, self.preprocess, self.labels,
                      self.manifest.family["sources"])

    def variant_space(self):
        """The variant space this bundle was exported from (routes, FLOPs, params), with the
        accuracies the bundle records."""
        space = variant_space_from_json(self.manifest.family)
        for v in space:
            if v.id in self._by_id:
                v.accuracy = self._by_id[v.id].accuracy
        return space

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, {len(self.variants)} variants)"


def _row_view(tensors: dict, ref) -> dict | None:
    """The record a view "<stored>[a:b]" (rows a..b of a stored tensor) must match, or None."""
    m = re.fullmatch(r"(.+)\[(\d+):(\d+)\]", ref.tensor)
    base = tensors.get(m.group(1)) if m else None
    if base is None:
        return None
    a, b, shape = int(m.group(2)), int(m.group(3)), base["shape"]
    if not shape or not 0 <= a < b <= shape[0]:
        return None
    row = 4 * int(np.prod(shape[1:], dtype=np.int64))
    return {"offset": base["offset"] + a * row, "shape": [b - a, *shape[1:]]}


class BundleWriter:
    """Stage files for a bundle, then commit them atomically with their hashes."""

    def __init__(self, dest: str | os.PathLike):
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", suffix=".staging",
                                           dir=self.dest.parent))
        self.files: dict[str, dict] = {}

    def path(self, rel: str) -> Path:
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add(self, rel: str) -> None:
        """Record a staged file (its size and sha256) in the manifest's file table."""
        p = self.stage / rel
        self.files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    def commit(self, manifest: Manifest) -> Path:
        manifest.files = dict(sorted(self.files.items()))
        manifest.provenance.setdefault("snrt_version", __version__)
        manifest.provenance.setdefault(
            "created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(self.stage / MANIFEST, manifest)
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
        os.replace(self.stage, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def update_manifest(path: str | os.PathLike, mutate, *, verify: bool | str = "size") -> Manifest:
    """Apply `mutate(manifest, bundle_path)` to a bundle's manifest and rewrite it atomically
    (validated, in the current schema, with a new digest).

    For steps that add to an existing bundle (accuracy measurement, TFLite export): files they
    add must already be in place; `mutate` records them via `record_file`. verify=False lets a
    repair step rewrite the manifest of a bundle whose listed files are damaged."""
    bundle = Bundle.open(path, verify=verify)
    mutate(bundle.manifest, bundle.path)
    write_manifest(bundle.path / MANIFEST, bundle.manifest)
    return bundle.manifest


def rewrite_manifest(path: str | os.PathLike, *, expected_digest: str | None = None) -> str:
    """Migrate a bundle's manifest to the current schema (e.g. version 1 -> 2: adds the digest)
    after verifying every file; nothing else in the bundle changes. Returns the new digest."""
    bundle = Bundle.open(path, verify=True, expected_digest=expected_digest)
    m = bundle.manifest
    if m.schema_version != SCHEMA_VERSION:
        m.provenance.setdefault("schema_migrations", []).append(
            {"from": m.schema_version, "to": SCHEMA_VERSION, "snrt_version": __version__,
             "by": "snrt.bundle.rewrite_manifest", "previous_digest": m.digest})
    return write_manifest(bundle.path / MANIFEST, m)


def record_file(manifest: Manifest, bundle_path: Path, rel: str) -> None:
    p = bundle_path / rel
    manifest.files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest.files = dict(sorted(manifest.files.items()))
