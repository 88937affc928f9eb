"""An independent PyTorch reference of the default family's routes with a task (tests only):
written from the raw timm-named weights and the documented tuner math (docs/tuners.md), in
float64; VPT-deep prompts run as real tokens here, not folded as the exporters fold them.
Used by tests/test_tuner_export.py (ONNX pieces), test_task_runtime.py and test_task_tflite.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

F = torch.nn.functional


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


class Reference:
    """The family's routes with a task, in float64 torch, from the raw (timm-named) weights."""

    def __init__(self, family, task):
        self.W = {a.name: {k: _t(v) for k, v in a.weights.items()} for a in family.anchors}
        self.heads = {a.name: a.config.num_heads for a in family.anchors}
        self.patch = {a.name: a.config.patch_size for a in family.anchors}
        self.stitch = {(family.anchors[f].name, family.anchors[e].name, t): (_t(s.weight),
                                                                             _t(s.bias))
                       for (f, e), ls in family.stitch_layers.items() for t, s in enumerate(ls)}
        self.task = task

    def tuners(self, a, i):
        if task_blocks := (self.task.block(a, i) if self.task is not None else None):
            return {k: _t(v) for k, v in task_blocks.items()}
        return {}

    def embed(self, a, img):
        W = self.W[a]
        x = F.conv2d(_t(img), W["patch_embed.proj.weight"], W["patch_embed.proj.bias"],
                     stride=self.patch[a]).flatten(2).transpose(1, 2)
        cls = W["cls_token"].expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], 1) + W["pos_embed"]

    def block(self, a, i, x):
        W, t = self.W[a], self.tuners(a, i)
        p = f"blocks.{i}."
        B, T, D = x.shape
        H = self.heads[a]
        d = D // H
        if "prompt.tokens" in t:  # VPT-deep: L tokens appended, run, dropped at the output
            x = torch.cat([x, t["prompt.tokens"].expand(B, -1, -1)], 1)
        N = x.shape[1]
        h1 = F.layer_norm(x, (D,), W[p + "norm1.weight"], W[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h1, W[p + "attn.qkv.weight"], W[p + "attn.qkv.bias"])
        if "lora.down.weight" in t:
            qkv = qkv + h1 @ t["lora.down.weight"].T @ t["lora.up.weight"].T
        q, k, v = (qkv[..., j * D:(j + 1) * D].reshape(B, N, H, d).transpose(1, 2)
                   for j in range(3))
        if "prefix.key" in t:
            L = t["prefix.key"].shape[0]
            k = torch.cat([k, t["prefix.key"].reshape(L, H, d).transpose(0, 1).expand(B, -1, -1,
                                                                                      -1)], 2)
            v = torch.cat([v, t["prefix.value"].reshape(L, H, d).transpose(0, 1).expand(
                B, -1, -1, -1)], 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, N, D), W[p + "attn.proj.weight"],
                         W[p + "attn.proj.bias"])
        h2 = F.layer_norm(x, (D,), W[p + "norm2.weight"], W[p + "norm2.bias"], eps=1e-6)
        m = F.linear(F.gelu(F.linear(h2, W[p + "mlp.fc1.weight"], W[p + "mlp.fc1.bias"])),
                     W[p + "mlp.fc2.weight"], W[p + "mlp.fc2.bias"])
        if "adapter.down.weight" in t:
            m = m + F.linear(F.gelu(F.linear(h2, t["adapter.down.weight"],
                                             t["adapter.down.bias"])),
                             t["adapter.up.weight"], t["adapter.up.bias"])
        return (x + m)[:, :T]

    def head(self, a, x):
        h = {k: _t(v) for k, v in self.task.head(a).items()}
        y = F.layer_norm(x[:, 0], (x.shape[-1],), h["norm.weight"], h["norm.bias"], eps=1e-6)
        return F.linear(y, h["fc.weight"], h["fc.bias"])

    def route(self, variant, img):
        """Anchor route (variant.anchors == [a]) or one stitch front j -> end k."""
        with torch.no_grad():
            if not variant.stitches:
                a = variant.anchors[0]
                x = self.embed(a, img)
                for i in range(12):
                    x = self.block(a, i, x)
                return self.head(a, x).numpy()
            s = variant.stitches[0]
            x = self.embed(s["front"], img)
            for i in range(s["front_block"] + 1):
                x = self.block(s["front"], i, x)
            w, b = self.stitch[(s["front"], s["end"], s["layer"])]
            x = x @ w.T + b
            for i in range(s["end_block"], 12):
                x = self.block(s["end"], i, x)
            return self.head(s["end"], x).numpy()
