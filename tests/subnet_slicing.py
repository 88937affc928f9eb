"""The implementer's PyTorch references for elastic subnets: timm `VisionTransformer`
(pretrained=False) with the supernet's weights sliced as POA's tools/extract_elastic_net.py
and VIMER-UFO's super modules slice them (written from their code, not from snrt's). The
second reference, tests/subnet_reference.py, was written by another hand from the contract
alone (docs/subnets-contract.md); tests/test_subnets_parity.py checks snrt against it."""

from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

HEAD_DIM = 64
torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine


def make_supernet(embed=256, depth=6, img=32, patch=8, classes=10, seed=0, layer_scale=False,
                  head_dim=HEAD_DIM):
    """A random timm ViT supernet (state dict of float32 numpy arrays, timm keys)."""
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=img, patch_size=patch, embed_dim=embed, depth=depth,
                          num_heads=embed // head_dim, mlp_ratio=4.0, num_classes=classes,
                          qkv_bias=True, init_values=1e-1 if layer_scale else None)
    sd = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(seed)
    for k in sd:  # non-trivial norms, biases and tokens
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            sd[k] = (1 + 0.1 * rng.standard_normal(sd[k].shape)).astype(np.float32)
        elif k.endswith("bias") or k in ("cls_token", "pos_embed"):
            sd[k] = (0.1 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    return sd


def _vit(img, patch, width, depth, heads, hidden, classes, layer_scale):
    m = VisionTransformer(img_size=img, patch_size=patch, embed_dim=width, depth=depth,
                          num_heads=heads, mlp_ratio=hidden / width, num_classes=classes,
                          qkv_bias=True, init_values=1e-1 if layer_scale else None,
                          weight_init="skip")  # every weight is loaded from the supernet
    for b in m.blocks:
        b.attn.fused_attn = False  # fvcore counts the two matmuls
    return m.eval()


def poa_reference(sd, width, depth, img, patch, classes, head_dim=HEAD_DIM):
    """POA: blocks linspace(0, L-1, d); first `width` channels; weights of qkv/proj/fc1/fc2
    times D/width (fc2: H/H_w), biases not; head sliced, not scaled."""
    D = sd["patch_embed.proj.weight"].shape[0]
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    H = sd["blocks.0.mlp.fc1.weight"].shape[0]
    hid = int(width / D * H)
    s, s2 = D / width, H / hid
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    out = {"cls_token": t["cls_token"][..., :width], "pos_embed": t["pos_embed"][..., :width],
           "patch_embed.proj.weight": t["patch_embed.proj.weight"][:width],
           "patch_embed.proj.bias": t["patch_embed.proj.bias"][:width],
           "norm.weight": t["norm.weight"][:width], "norm.bias": t["norm.bias"][:width]}
    if "head.weight" in t:
        out["head.weight"] = t["head.weight"][:, :width]
        out["head.bias"] = t["head.bias"]
    keep = np.linspace(0, L - 1, depth).astype(np.int64)
    for new, old in enumerate(keep):
        p, q = f"blocks.{old}.", f"blocks.{new}."
        idx = torch.cat([torch.arange(i * D, i * D + width) for i in range(3)])
        out[q + "attn.qkv.weight"] = t[p + "attn.qkv.weight"][idx, :][:, :width] * s
        out[q + "attn.qkv.bias"] = t[p + "attn.qkv.bias"][idx]
        out[q + "attn.proj.weight"] = t[p + "attn.proj.weight"][:width, :width] * s
        out[q + "attn.proj.bias"] = t[p + "attn.proj.bias"][:width]
        out[q + "mlp.fc1.weight"] = t[p + "mlp.fc1.weight"][:hid, :width] * s
        out[q + "mlp.fc1.bias"] = t[p + "mlp.fc1.bias"][:hid]
        out[q + "mlp.fc2.weight"] = t[p + "mlp.fc2.weight"][:width, :hid] * s2
        out[q + "mlp.fc2.bias"] = t[p + "mlp.fc2.bias"][:width]
        for n in ("norm1", "norm2"):
            for w in ("weight", "bias"):
                out[q + f"{n}.{w}"] = t[p + f"{n}.{w}"][:width]
        for g in ("ls1.gamma", "ls2.gamma"):
            if p + g in t:
                out[q + g] = t[p + g][:width]
    m = _vit(img, patch, width, depth, width // head_dim, hid, classes if "head.weight" in t
             else 0, "blocks.0.ls1.gamma" in t)
    m.load_state_dict(out)
    return m


def ufo_reference(sd, depth, heads, ratios, img, patch, classes):
    """UFO: the first `depth` blocks; per block the first h*64 output rows of each of q, k, v
    and those proj input columns; the first int(D*ratio) fc1 rows / fc2 columns; no rescaling."""
    D = sd["patch_embed.proj.weight"].shape[0]
    t = {k: torch.from_numpy(v) for k, v in sd.items()}
    m = _vit(img, patch, D, depth, D // HEAD_DIM, 4 * D, classes,
             "blocks.0.ls1.gamma" in t)
    keep = {k: v for k, v in t.items() if not k.startswith("blocks.") or
            int(k.split(".")[1]) < depth}
    m.load_state_dict(keep)
    for i, (h, r) in enumerate(zip(heads, ratios)):
        b, p = m.blocks[i], f"blocks.{i}."
        a, hid = h * HEAD_DIM, int(D * r)
        idx = torch.cat([torch.arange(j * D, j * D + a) for j in range(3)])
        qkv = torch.nn.Linear(D, 3 * a)
        qkv.weight.data, qkv.bias.data = t[p + "attn.qkv.weight"][idx], t[p + "attn.qkv.bias"][idx]
        proj = torch.nn.Linear(a, D)
        proj.weight.data = t[p + "attn.proj.weight"][:, :a]
        proj.bias.data = t[p + "attn.proj.bias"]
        fc1, fc2 = torch.nn.Linear(D, hid), torch.nn.Linear(hid, D)
        fc1.weight.data, fc1.bias.data = t[p + "mlp.fc1.weight"][:hid], t[p + "mlp.fc1.bias"][:hid]
        fc2.weight.data, fc2.bias.data = t[p + "mlp.fc2.weight"][:, :hid], t[p + "mlp.fc2.bias"]
        b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2 = qkv, proj, fc1, fc2
        b.attn.num_heads, b.attn.head_dim, b.attn.attn_dim = h, HEAD_DIM, a
        b.attn.scale = HEAD_DIM ** -0.5
    return m.eval()


def fvcore_flops(model, img):
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model, torch.zeros(1, 3, img, img))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return int(fa.total())
