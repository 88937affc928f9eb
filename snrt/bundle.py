"""Bundle: a directory `NAME.snrt/` holding a family's variants, ready for any backend.

    NAME.snrt/
      manifest.json          schema, provenance, family, preprocessing, variants, pieces, files
      graphs/weights.bin     every weight once (float32, aligned), shared by all graphs
      graphs/v000_ti.onnx    one graph per variant (standalone use, verification, TFLite)
      graphs/p_ti.block0.onnx  one graph per piece (what the runtime chains)
      tflite/...             optional TFLite exports

Writing goes to a staging directory renamed into place at the end, so a crash never leaves a
half-written bundle under the final name. Opening checks the schema and, by default, the size and
sha256 of every file listed, and says which file is wrong and what to do.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BundleError, UnknownVariantError
from .family import Anchor, Family, Preprocess, StitchLayer, ViTConfig
from .fileio import atomic_write_json, sha256_file
from .version import __version__

log = logging.getLogger(__name__)

SCHEMA = "snrt.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "graphs/weights.bin"


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
    graph: str
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
class Manifest:
    family: dict  # name, kind, anchors [{name, config, source}], stitching {...}
    preprocess: Preprocess
    input: dict  # {"name", "shape", "layout"}
    output: dict  # {"name", "shape"}
    variants: list[VariantInfo]
    pieces: list[PieceInfo]
    files: dict[str, dict]  # path -> {"sha256", "bytes"}
    tensors: dict[str, dict]  # name -> {"offset", "shape", "source", "transposed"}
    labels: list[str] | None = None
    provenance: dict = field(default_factory=dict)
    stitch_fit: dict | None = None
    exports: dict = field(default_factory=dict)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        d = {
            "schema": self.schema, "schema_version": self.schema_version,
            "provenance": self.provenance, "family": self.family,
            "preprocess": self.preprocess.to_json(), "labels": self.labels,
            "input": self.input, "output": self.output, "stitch_fit": self.stitch_fit,
            "variants": [vars(v) for v in self.variants],
            "pieces": [vars(p) for p in self.pieces],
            "tensors": self.tensors, "exports": self.exports, "files": self.files,
        }
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = MANIFEST) -> Manifest:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise BundleError(f"{where}: not an snrt bundle manifest (schema "
                              f"{d.get('schema') if isinstance(d, dict) else None!r})")
        ver = d.get("schema_version")
        if ver != SCHEMA_VERSION:
            raise BundleError(
                f"{where}: bundle schema version {ver}, this snrt (v{__version__}) reads "
                f"version {SCHEMA_VERSION}; re-export the bundle with this snrt or upgrade snrt")
        try:
            return cls(
                family=d["family"], preprocess=Preprocess.from_json(d["preprocess"]),
                input=d["input"], output=d["output"],
                variants=[VariantInfo.from_json(v) for v in d["variants"]],
                pieces=[PieceInfo.from_json(p) for p in d["pieces"]],
                files=d["files"], tensors=d["tensors"], labels=d.get("labels"),
                provenance=d.get("provenance", {}), stitch_fit=d.get("stitch_fit"),
                exports=d.get("exports", {}), schema=d["schema"], schema_version=ver,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: malformed manifest ({type(e).__name__}: {e}); "
                              "the bundle is damaged: re-export it") from None


class Bundle:
    """A verified, read-only view of a bundle directory."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._by_id = {v.id: v for v in manifest.variants}
        self._pieces = {p.id: p for p in manifest.pieces}

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> Bundle:
        """Open a bundle. verify=True checks size and sha256 of every file (the default);
        verify="size" only sizes (fast, for trusted local bundles); False skips checks."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle directory; create one with snrt-export")
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing; {path} is not a complete bundle "
                              "(an export was interrupted?): re-export it")
        try:
            raw = json.loads(mpath.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{mpath}: not valid JSON ({e}); re-export the bundle") from None
        bundle = cls(path, Manifest.from_json(raw, str(mpath)))
        if verify:
            bundle.verify(hashes=verify is True)
        return bundle

    def verify(self, *, hashes: bool = True) -> None:
        for rel, info in self.manifest.files.items():
            self._check_file(rel, info, hashes)

    def _check_file(self, rel: str, info: dict, hashes: bool) -> None:
        p = self._resolve(rel)
        if not p.is_file():
            raise BundleError(f"{p}: missing from the bundle; re-export it or restore the file")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise BundleError(f"{p}: {size} bytes, the manifest says {info['bytes']} "
                              "(truncated or replaced); re-export the bundle")
        if hashes and sha256_file(p) != info["sha256"]:
            raise BundleError(f"{p}: sha256 does not match the manifest (modified or "
                              "corrupted); do not use it: re-export the bundle")

    def _resolve(self, rel: str) -> Path:
        p = (self.path / rel).resolve()
        if self.path.resolve() not in p.parents:
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
        raise UnknownVariantError(
            f"unknown variant '{key}' in {self.path.name}; ids look like "
            f"{[v.id for v in self.variants[:4]]} (see Bundle.variants or use a cfg_id)")

    def piece(self, piece_id: str) -> PieceInfo:
        return self._pieces[piece_id]

    def file(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise BundleError(f"{rel}: not listed in {self.path / MANIFEST}")
        return self._resolve(rel)

    def graph_path(self, variant: str | int | VariantInfo) -> Path:
        return self.file(self.variant(variant).graph)

    def piece_path(self, piece_id: str) -> Path:
        return self.file(self.piece(piece_id).graph)

    def weights_bytes(self) -> int:
        return self.manifest.files[WEIGHTS]["bytes"]

    def load_family(self) -> Family:
        """Rebuild the numpy Family (timm key names, stitching layers) from weights.bin."""
        raw = np.memmap(self.file(WEIGHTS), dtype=np.uint8, mode="r")
        anchors = {a["name"]: Anchor(a["name"], ViTConfig.from_json(a["config"]), {},
                                     a.get("source", {}))
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
                      self.manifest.family.get("sources", []))

    def variant_space(self):
        """The VariantSpace this bundle was exported from (routes, FLOPs, params)."""
        from .variants import VariantSpace

        st = self.manifest.family.get("stitching", {})
        anchors = self.manifest.family["anchors"]
        space = VariantSpace([a["name"] for a in anchors],
                             [ViTConfig.from_json(a["config"]) for a in anchors],
                             window=st.get("window", 2), stride=st.get("stride", 1),
                             nearest=st.get("nearest", True))
        for v in space:
            info = self.variant(v.id)
            v.accuracy = info.accuracy
        return space

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, {len(self.variants)} variants)"


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
        atomic_write_json(self.stage / MANIFEST, manifest.to_json())
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
    """Apply `mutate(manifest, bundle_path)` to a bundle's manifest and rewrite it atomically.

    For steps that add to an existing bundle (accuracy measurement, TFLite export): files they
    add must already be in place; `mutate` records them via `record_file`. verify=False lets a
    repair step rewrite the manifest of a bundle whose listed files are damaged."""
    bundle = Bundle.open(path, verify=verify)
    mutate(bundle.manifest, bundle.path)
    atomic_write_json(bundle.path / MANIFEST, bundle.manifest.to_json())
    return bundle.manifest


def record_file(manifest: Manifest, bundle_path: Path, rel: str) -> None:
    p = bundle_path / rel
    manifest.files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest.files = dict(sorted(manifest.files.items()))
