"""Shared fixtures: timm reference models (random init, pretrained=False) and bundles made from
them. The PyTorch side here is the independent reference every exported graph is checked
against; nothing in it uses snrt's graph builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

try:  # fuzz tests draw the same examples every run, so CI is red only for a code change;
    # SNRT_FUZZ_RANDOM=1 draws new ones (to look for new bugs; add each found as an @example)
    import os

    from hypothesis import settings as _hyp_settings
    _hyp_settings.register_profile("snrt", derandomize=not os.environ.get("SNRT_FUZZ_RANDOM"))
    _hyp_settings.load_profile("snrt")
except ImportError:  # hypothesis is a dev extra
    pass

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


def snnet_reference():
    return [json.loads(line) for line in (REF / "snnet_deit_stitches_res.jsonl").open()]


def timm_vit(seed: int, **kw):
    """A timm VisionTransformer with random weights; biases and norms randomised too so that a
    wrong bias/affine in the export cannot hide behind timm's zero/one init."""
    import timm
    import torch

    torch.manual_seed(seed)
    name = kw.pop("name", None)
    if name:
        m = timm.create_model(name, pretrained=False, **kw)
    else:
        from timm.models.vision_transformer import VisionTransformer

        m = VisionTransformer(**kw)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.endswith("bias") or "norm" in k or "gamma" in k or "token" in k:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def state_dict_np(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def stitched_forward(front, end, layer_w, layer_b, j: int, k: int, x):
    """SN-Net's stitched forward, written here from the paper/code description: front patch
    embedding and blocks 0..j, the linear stitching layer, end blocks k.., end head without the
    final norm (timm forward_head)."""
    import torch

    with torch.no_grad():
        h = front._pos_embed(front.patch_embed(x))
        for blk in front.blocks[: j + 1]:
            h = blk(h)
        h = h @ torch.as_tensor(layer_w).T + torch.as_tensor(layer_b)
        for blk in end.blocks[k:]:
            h = blk(h)
        return end.forward_head(h).numpy()


def reference_logits(models, family_layers, variant, x):
    """Reference output of a bundle variant from the timm models and the stitching layers."""
    import torch

    xt = torch.as_tensor(x)
    names = [m["name"] for m in models]
    if variant.is_anchor:
        with torch.no_grad():
            return models[names.index(variant.anchors[0])]["model"](xt).numpy()
    s = variant.stitches[0]
    f, e = names.index(s["front"]), names.index(s["end"])
    w, b = family_layers[(f, e)][s["layer"]]
    return stitched_forward(models[f]["model"], models[e]["model"], w, b, s["front_block"],
                            s["end_block"], xt)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """Three small timm ViTs (depth 4, widths 32/64/96), random stitching layers in an SN-Net
    checkpoint, and a bundle exported from them with the CLI."""
    import torch

    from exporters.cli import main
    from snrt.weights_io import write_safetensors

    d = tmp_path_factory.mktemp("tiny")
    models, paths = [], []
    for i, (dim, heads) in enumerate([(32, 2), (64, 4), (96, 4)]):
        m = timm_vit(10 + i, img_size=32, patch_size=8, embed_dim=dim, depth=4, num_heads=heads,
                     num_classes=7, mlp_ratio=3.0)
        p = d / f"a{i}.safetensors"
        write_safetensors(p, state_dict_np(m), {"snrt.config": json.dumps({"num_heads": heads})})
        models.append({"name": ["ti", "s", "b"][i], "model": m})
        paths.append(p)
    g = torch.Generator().manual_seed(3)
    layers, ckpt = {}, {}
    dims = [32, 64, 96]
    n_layers = 3  # depth 4, window 2, stride 1
    for pair, (f, e) in enumerate([(0, 1), (1, 2)]):
        for t in range(n_layers):
            w = (torch.randn(dims[e], dims[f], generator=g) * 0.2).numpy()
            b = (torch.randn(dims[e], generator=g) * 0.1).numpy()
            layers.setdefault((f, e), []).append((w, b))
            ckpt[f"stitch_layers.{pair}.{t}.transform.weight"] = w
            ckpt[f"stitch_layers.{pair}.{t}.transform.bias"] = b
    for i, m in enumerate(models):
        for k, v in state_dict_np(m["model"]).items():
            ckpt[f"anchors.{i}.{k}"] = v
    ck = d / "snnet.safetensors"
    write_safetensors(ck, ckpt, {"snrt.num_heads": json.dumps([2, 4, 4]),
                                 "snrt.anchor_names": json.dumps(["ti", "s", "b"])})
    out = d / "tiny.snrt"
    assert main(["stitch", "--anchors", *map(str, paths), "--names", "ti", "s", "b",
                 "--stitch-weights", str(ck), "--out", str(out), "--quiet"]) == 0
    return {"dir": d, "models": models, "layers": layers, "paths": paths, "ckpt": ck,
            "bundle": out}


@pytest.fixture(autouse=True)
def _user_data_dir(tmp_path_factory, monkeypatch):
    """Every test's per-user data directory (snrt.paths) is a fresh temporary one: no test reads
    or writes the real user's tables."""
    monkeypatch.setenv("SNRT_DATA_DIR", str(tmp_path_factory.mktemp("snrt-data")))
