"""Train a task's tuners (U-Tuning) on the frozen backbone of a bundle and write its task file.

    python tools/train_tuners.py --bundle default --task faces --tuner adapter:r=8 \\
        --out build/tuners/faces.safetensors                       # tuners on every anchor
    python tools/train_tuners.py --task uci-digits --tuner lora:r=4 --train-variants b
    python tools/train_tuners.py --task uci-digits --method full-finetune --train-variants b
    python tools/train_tuners.py --task uci-digits --method linear-probe --train-variants b

The backbone (`snrt.Bundle.open(...).load_family()`: numpy weights under timm names, stitching
layers) is rebuilt as `snnet_torch.SNNet` and frozen; only the tuners and the task heads train
(`--method tuners`, the default). `--train-variants` says which routes train: `all` (the default)
puts the tuners on every block of every anchor and a head on every anchor and draws one of the
family's variants uniformly per step, as SN-Net trains its stitches, so every variant can run the
task; a list of ids (e.g. `b`) trains those routes only, with tuners on the anchors they pass
through and heads on the anchors they end in. Baselines on the same split: `linear-probe` (task
heads only) and `full-finetune` (every weight of one anchor plus its task head; no task file,
the result is a whole network).

Reproducible: batches, variant draws and flips come from generators seeded by (--seed, step);
the same command with the same --threads gives the same file bit for bit. A run is minutes
on one core, so it does not checkpoint; tools/tuners_study.py caches finished runs.
The test accuracy of every variant the task runs on (or `--eval-variants`) is measured on the
test split and written into the file's provenance. torch is needed here only (`train` extra).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for _p in (ROOT, TOOLS):  # run from a checkout: snrt from it, the torch modules beside us
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: see train_default_family

from snrt.errors import SnrtError
from snrt.progress import Progress

log = logging.getLogger("snrt.train_tuners")

METHODS = ("tuners", "linear-probe", "full-finetune")


@dataclass(frozen=True)
class Settings:
    """Optimisation of one run (the same for every method unless stated)."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3  # tuners and task heads
    backbone_lr: float = 3e-4  # full fine-tune: the anchor's own weights
    weight_decay: float = 1e-4
    backbone_weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_frac: float = 0.05
    train_limit: int | None = None  # first N training images only (tests)


# Per task: steps and batch size scaled to the training set (uci-digits 1,097 images: ~9
# epochs; faces 100 images: ~64 epochs).
TASK_SETTINGS = {
    "uci-digits": Settings(steps=300, batch_size=32),
    "faces": Settings(steps=200, batch_size=32),
    "digits": Settings(steps=400, batch_size=64),
}


def _mix(*xs) -> int:
    h = hashlib.sha256(",".join(map(str, xs)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


# ----------------------------------------------------------------------------- backbone

@dataclass
class Backbone:
    bundle: object
    family: object
    frozen: object  # tuners_torch.FrozenBackbone
    space: object  # snrt.variants.VariantSpace
    sha256: str
    path: Path


def load_backbone(bundle: str) -> Backbone:
    from tuners_torch import backbone_from_family, backbone_sha256

    import snrt

    path = Path(snrt.default_bundle()) if bundle == "default" else Path(bundle)
    b = snrt.Bundle.open(path)
    family = b.load_family()
    return Backbone(b, family, backbone_from_family(family), b.variant_space(),
                    backbone_sha256(family), path)


def resolve_variants(space, spec: str) -> list:
    if spec == "all":
        return list(space.variants)
    out = []
    for vid in filter(None, (s.strip() for s in spec.split(","))):
        out.append(space.get(vid))  # raises UnknownVariantError listing the ids
    if not out:
        raise SnrtError("--train-variants: give 'all' or variant ids such as 'b' or 'ti,s,b'")
    return out


def route_anchors(bb: Backbone, variants) -> tuple[dict[str, list[int]], list[str]]:
    """Blocks each anchor runs in any of `variants`, and the anchors they end in."""
    names = bb.frozen.anchor_names
    blocks: dict[str, set[int]] = {}
    heads: list[str] = []
    for v in variants:
        for p in v.route.pieces(bb.frozen.depth):
            if p.kind == "block":
                blocks.setdefault(names[p.anchor], set()).add(p.index)
        end = names[v.route.anchors[-1]]
        if end not in heads:
            heads.append(end)
    order = {n: i for i, n in enumerate(names)}
    return ({n: sorted(blocks[n]) for n in sorted(blocks, key=order.get)},
            sorted(heads, key=order.get))


# ----------------------------------------------------------------------------- data

@dataclass
class Tensors:
    x: dict  # part -> float tensor [N, C, H, W]
    y: dict  # part -> int64 tensor


def prepare(torch, data, pre, limit: int | None, test_limit: int | None = None) -> Tensors:
    from task_datasets import to_inputs

    x, y = {}, {}
    for part in ("train", "val", "test"):
        ims, t = data.part(part, limit if part == "train" else
                           test_limit if part == "test" else None)
        x[part] = torch.as_tensor(to_inputs(ims, pre))
        y[part] = torch.as_tensor(t)
    return Tensors(x, y)


# ----------------------------------------------------------------------------- evaluation

def evaluate(torch, bb: Backbone, task, variants, x, y, bs: int = 250, progress=False,
             desc: str = "eval") -> dict[str, dict]:
    """Test top-1 (%), hits, n and 95% Wilson interval per variant."""
    from task_datasets import wilson_interval
    from tuners_torch import forward_task

    out = {}
    task.eval()
    with torch.no_grad(), Progress(len(variants), desc, enabled=progress) as bar:
        for v in variants:
            hits = sum(int((forward_task(bb.frozen, task, x[i:i + bs], v.route).argmax(-1)
                            == y[i:i + bs]).sum()) for i in range(0, len(y), bs))
            n = len(y)
            out[v.id] = {"top1": round(100.0 * hits / n, 2), "hits": hits, "n": n,
                         "ci95": list(wilson_interval(hits, n))}
            bar.update(note=f"{v.id} {out[v.id]['top1']:.1f}%")
    return out


# ----------------------------------------------------------------------------- training

@dataclass
class RunResult:
    task: object  # tuners_torch.TaskTuners (trained)
    backbone: Backbone  # for full-finetune: a copy whose anchor was trained
    history: list
    trained_params: int
    seconds: float


def train(torch, bb: Backbone, data, tensors: Tensors, method: str, specs, train_variants,
          settings: Settings, seed: int, progress: bool = True, init=None,
          anchor_share: float = 0.0) -> RunResult:
    """Train one run; `init` (a TaskTuners of the same layout) gives the starting weights;
    `anchor_share`: the fraction of steps that draw an anchor route (the rest draw uniformly
    from all `train_variants`), so anchors are not starved by the stitches."""
    from tuners_torch import TaskTuners, forward_task

    F = torch.nn.functional
    if method not in METHODS:
        raise SnrtError(f"unknown method '{method}'; known: {', '.join(METHODS)}")
    if method != "tuners" and specs:
        raise SnrtError(f"--method {method} trains no tuners: drop --tuner")
    if method == "tuners" and not specs:
        raise SnrtError("--method tuners needs at least one --tuner (e.g. adapter:r=8)")
    tuned, heads = route_anchors(bb, train_variants)
    if method == "full-finetune":
        if len(train_variants) != 1 or not train_variants[0].route.is_anchor:
            raise SnrtError("--method full-finetune trains one anchor: --train-variants ti|s|b")
        bb = replace(bb, frozen=copy.deepcopy(bb.frozen))
        anchor = bb.frozen.anchor(heads[0])
        anchor.requires_grad_(True)
        for p in list(anchor.norm.parameters()) + list(anchor.head.parameters()):
            p.requires_grad_(False)  # replaced by the task head
    torch.manual_seed(_mix(seed, "init", method))
    task = TaskTuners(bb.frozen.dims(), list(specs), len(data.labels),
                      tuned if specs else {}, heads)
    task.init_heads_from(bb.frozen)
    if init is not None:
        task.load_tensors(init.export_tensors())
    groups = [{"params": list(task.parameters()), "lr": settings.lr,
               "weight_decay": settings.weight_decay}]
    trained = task.param_count()
    if method == "full-finetune":
        bparams = [p for p in anchor.parameters() if p.requires_grad]
        groups.append({"params": bparams, "lr": settings.backbone_lr,
                       "weight_decay": settings.backbone_weight_decay})
        trained += sum(p.numel() for p in bparams)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups)
    xtr, ytr = tensors.x["train"], tensors.y["train"]
    n, bs, total = len(ytr), min(settings.batch_size, len(ytr)), settings.steps
    warmup = max(1, int(total * settings.warmup_frac))
    rng = np.random.default_rng(_mix(seed, "variants"))
    draws = rng.integers(0, len(train_variants), total)
    if anchor_share > 0:
        anchor_idx = [i for i, v in enumerate(train_variants) if v.route.is_anchor]
        if not anchor_idx:
            raise SnrtError("--anchor-share needs anchors among --train-variants")
        pick = rng.random(total) < anchor_share
        draws = np.where(pick, np.asarray(anchor_idx)[rng.integers(0, len(anchor_idx), total)],
                         draws)
    spe = n // bs
    history, window = [], []
    t0 = time.monotonic()
    cache: dict[tuple[str, bool], object] = {}
    if method == "linear-probe":  # frozen features: compute each route's class tokens once
        with torch.no_grad():
            for v in train_variants:
                for flipped in (False, True) if data.hflip else (False,):
                    xs = xtr.flip(-1) if flipped else xtr
                    cache[v.id, flipped] = torch.cat([
                        forward_task(bb.frozen, task, xs[i:i + 250], v.route, head=False)[:, :1]
                        for i in range(0, n, 250)])
    names = bb.frozen.anchor_names
    label = f"{data.name} {method}" + (f" {'+'.join(s.label() for s in specs)}" if specs else "")
    with Progress(total, label, enabled=progress) as bar:
        order = None
        for step in range(total):
            epoch, s = divmod(step, spe)
            if s == 0:
                order = np.random.default_rng(_mix(seed, "epoch", epoch)).permutation(n)
            idx = torch.as_tensor(order[s * bs:(s + 1) * bs])
            v = train_variants[int(draws[step])]
            flip = None
            if data.hflip:
                g = torch.Generator().manual_seed(_mix(seed, "flip", step))
                flip = torch.rand(len(idx), generator=g) < 0.5
            if cache:
                x = cache[v.id, False][idx]
                if flip is not None:
                    x = torch.where(flip[:, None, None], cache[v.id, True][idx], x)
            else:
                x = xtr[idx]
                if flip is not None:
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            f = lr_factor(step, total, warmup)
            for grp in opt.param_groups:
                grp["lr"] = grp["base_lr"] * f
            task.train()
            logits = (task.heads[names[v.route.anchors[-1]]](x) if cache
                      else forward_task(bb.frozen, task, x, v.route))
            loss = F.cross_entropy(logits, ytr[idx], label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            bar.update(note=f"{v.id} loss {window[-1]:.3f}")
            if (step + 1) % max(1, total // 10) == 0 or step + 1 == total:
                history.append({"step": step + 1, "loss": round(float(np.mean(window)), 4)})
                window = []
    seconds = time.monotonic() - t0
    task.eval()
    return RunResult(task, bb, history, trained, seconds)


# ----------------------------------------------------------------------------- one task file

def run(args) -> dict:
    import torch
    from task_datasets import load_task_data
    from tuners_torch import TunerSpec, route_supported, write_task_file

    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    bb = load_backbone(args.bundle)
    data = load_task_data(args.task)
    specs = [TunerSpec.parse(t) for t in args.tuner]
    settings = TASK_SETTINGS.get(args.task, Settings())
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.train_limit is not None:
        settings = replace(settings, train_limit=args.train_limit)
    train_variants = resolve_variants(bb.space, args.train_variants)
    tensors = prepare(torch, data, bb.bundle.preprocess, settings.train_limit)
    res = train(torch, bb, data, tensors, args.method, specs, train_variants, settings,
                args.seed, progress=not args.quiet, anchor_share=args.anchor_share)
    runnable = [v for v in bb.space.variants
                if route_supported(res.task, v.route, bb.frozen.anchor_names)]
    eval_variants = (resolve_variants(bb.space, args.eval_variants) if args.eval_variants
                     else runnable)
    acc = evaluate(torch, res.backbone, res.task, eval_variants, tensors.x["test"],
                   tensors.y["test"], progress=not args.quiet, desc="test")
    val = evaluate(torch, res.backbone, res.task, train_variants[:3] if len(train_variants) > 3
                   else train_variants, tensors.x["val"], tensors.y["val"])
    summary = {
        "task": data.name, "method": args.method, "tuners": [s.to_json() for s in specs],
        "train_variants": args.train_variants, "seed": args.seed, "threads": args.threads,
        "settings": asdict(settings), "trained_params": res.trained_params,
        "train_seconds": round(res.seconds, 1), "history": res.history,
        "val": val, "test": acc, "split_sizes": {k: len(v) for k, v in tensors.y.items()},
    }
    if args.out is not None and args.method != "full-finetune":
        prov = {"tool": "tools/train_tuners.py", "command": args.command,
                "dataset": data.source, "torch": torch.__version__, **summary}
        meta = res.task.task_json(data.name, data.labels, bb.family.name, bb.sha256,
                                  [v.id for v in runnable])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_task_file(args.out, res.task, meta, prov)
        summary["out"] = str(args.out)
    summary["wall_seconds"] = round(time.monotonic() - t_start, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="default", help="'default' (the bundled family) or a "
                   "bundle directory")
    p.add_argument("--task", required=True, help="task data: uci-digits, faces, digits")
    p.add_argument("--tuner", action="append", default=[], metavar="KIND:SIZE",
                   help="adapter:r=8, lora:r=4[,alpha=8], prefix:l=4, prompt:l=4 (repeatable)")
    p.add_argument("--method", choices=METHODS, default="tuners")
    p.add_argument("--train-variants", default="all", help="'all' (sample every variant per "
                   "step) or variant ids, e.g. 'b' or 'ti,s,b'")
    p.add_argument("--anchor-share", type=float, default=0.0, help="fraction of steps that "
                   "train an anchor route (default 0: uniform over --train-variants)")
    p.add_argument("--eval-variants", help="variant ids to measure on the test split (default: "
                   "every variant the task is valid for)")
    p.add_argument("--out", type=Path, help="task file to write (.safetensors)")
    p.add_argument("--steps", type=int, help="training steps (default: per task)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "tools/train_tuners.py"] +
                              (argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = run(args)
    except (SnrtError, ValueError) as e:
        log.error("error: %s", e)
        return 1
    summary.pop("history", None)
    test = summary.pop("test")
    best = max(test.values(), key=lambda r: r["top1"])
    log.info("%s %s: %d variants measured, top-1 %.1f-%.1f%% (n=%d), %d trained params, %.0f s",
             summary["task"], summary["method"], len(test),
             min(r["top1"] for r in test.values()), best["top1"], best["n"],
             summary["trained_params"], summary["wall_seconds"])
    print(json.dumps({**summary, "test": test}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
