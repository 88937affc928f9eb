"""Shared benchmark helpers: a DeiT-Ti/S/B bundle with random weights (numpy only, exact timm
key names and shapes, no torch needed), and a plain-text table printer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("SNRT_BENCH_CACHE", Path.home() / ".cache" / "snrt-bench"))


def random_vit_state_dict(dim: int, depth: int = 12, img: int = 224, patch: int = 16,
                          classes: int = 1000, chans: int = 3, seed: int = 0,
                          head_std: float = 0.02) -> dict[str, np.ndarray]:
    """timm VisionTransformer key names and shapes, weights ~ N(0, 0.02) like timm's init
    (`head_std` for the classifier: larger makes the logits of random models differ)."""
    rng = np.random.default_rng(seed)
    n = (img // patch) ** 2 + 1

    def w(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    sd = {"cls_token": w(1, 1, dim), "pos_embed": w(1, n, dim),
          "patch_embed.proj.weight": w(dim, chans, patch, patch),
          "patch_embed.proj.bias": w(dim), "norm.weight": 1 + w(dim), "norm.bias": w(dim),
          "head.weight": w(classes, dim, std=head_std), "head.bias": w(classes)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + w(dim), b + "norm1.bias": w(dim),
                   b + "attn.qkv.weight": w(3 * dim, dim), b + "attn.qkv.bias": w(3 * dim),
                   b + "attn.proj.weight": w(dim, dim), b + "attn.proj.bias": w(dim),
                   b + "norm2.weight": 1 + w(dim), b + "norm2.bias": w(dim),
                   b + "mlp.fc1.weight": w(4 * dim, dim), b + "mlp.fc1.bias": w(4 * dim),
                   b + "mlp.fc2.weight": w(dim, 4 * dim), b + "mlp.fc2.bias": w(dim)})
    return sd


def ensure_deit_bundle(path: Path | None = None) -> Path:
    """The DeiT-Ti/S/B family (71 SN-Net variants) with random weights, exported once."""
    from exporters.onnx_export import export_onnx
    from snrt.bundle import Bundle, BundleWriter
    from snrt.family import Anchor, Family, StitchLayer, config_from_state_dict
    from snrt.variants import VariantSpace

    path = path or CACHE / "deit-random.snrt"
    try:
        Bundle.open(path, verify="size")
        return path
    except Exception:  # noqa: BLE001 - (re)build below
        pass
    t0 = time.monotonic()
    anchors = []
    for i, (name, dim) in enumerate([("ti", 192), ("s", 384), ("b", 768)]):
        sd = random_vit_state_dict(dim, seed=i)
        cfg = config_from_state_dict(sd, num_heads=dim // 64, global_pool="token", where=name)
        anchors.append(Anchor(name, cfg, sd))
    rng = np.random.default_rng(9)
    layers = {(f, f + 1): [StitchLayer(
        (rng.standard_normal((d2, d1)) / np.sqrt(d1)).astype(np.float32),
        (rng.standard_normal(d2) * 0.02).astype(np.float32)) for _ in range(11)]
        for f, (d1, d2) in enumerate([(192, 384), (384, 768)])}
    fam = Family("deit-random", anchors, layers)
    space = VariantSpace(["ti", "s", "b"], [a.config for a in anchors])
    with BundleWriter(path) as w:
        m = export_onnx(fam, space, w, progress=False)
        m.provenance["tool"] = "benchmarks.common.ensure_deit_bundle (random weights)"
        w.commit(m)
    print(f"# built {path} in {time.monotonic() - t0:.1f}s")
    return path


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    cols = cols or list(rows[0])
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    out = ["| " + " | ".join(c.ljust(width[c]) for c in cols) + " |",
           "|" + "|".join("-" * (width[c] + 2) for c in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)).ljust(width[c]) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
