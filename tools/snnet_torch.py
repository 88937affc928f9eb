"""A small ViT and an SN-Net wrapper in plain torch, for training snrt's bundled default family.

Only `torch` is needed (no timm, no torchvision: torchvision does not import beside the torch
version snrt's `torch` extra pins). The modules are laid out so that `state_dict()` uses exactly
timm's `VisionTransformer` key names (cls_token, pos_embed, patch_embed.proj.*,
blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2.*, norm.*, head.*), with timm's
numerics (LayerNorm eps 1e-6, exact erf GELU, qkv bias, class-token pooling), so snrt's readers
take the weights as a timm ViT and its ONNX exporter reproduces the forward pass.

`SNNet` holds the anchors and the stitching layers under SN-Net's checkpoint names
(`anchors.{i}.<timm key>`, `stitch_layers.{pair}.{t}.transform.{weight,bias}`) and runs any
`snrt.variants.Route`, piece by piece, exactly as snrt exports it (stitched routes skip the end
anchor's final LayerNorm, as SN-Net's `forward_head` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TinyViTConfig:
    """Shape of one anchor (the fields timm's VisionTransformer takes, for the subset used)."""

    embed_dim: int
    num_heads: int
    depth: int = 12
    mlp_ratio: float = 4.0
    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (per sample), as timm's DropPath."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, cfg: TinyViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, patches, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU, as timm's nn.GELU


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class TinyViT(nn.Module):
    """timm-compatible VisionTransformer (class token, learned pos_embed, token pooling)."""

    def __init__(self, cfg: TinyViTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, D))
        self.patch_embed = PatchEmbed(cfg)
        rates = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_hidden, r) for r in rates)
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default ViT init: trunc-normal(0.02) linears and pos_embed, tiny cls_token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_drop_path(self, rate: float) -> None:
        for i, b in enumerate(self.blocks):
            b.drop_path_rate = rate * i / max(len(self.blocks) - 1, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for blk in self.blocks[start:stop]:
            x = blk(x)
        return x

    def forward_head(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        if norm:
            x = self.norm(x)
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.run_blocks(self.embed(x), 0, len(self.blocks)))

    @torch.no_grad()
    def block_features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """{-1: patch embedding output, b: output of block b} (inputs of the stitch fit)."""
        x = self.embed(x)
        out = {-1: x}
        for b, blk in enumerate(self.blocks):
            x = blk(x)
            out[b] = x
        return out


class StitchingLayer(nn.Module):
    """SN-Net's stitching layer: a linear map from the front anchor's width to the end's."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.transform = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)


class SNNet(nn.Module):
    """Anchors plus stitching layers, one list per anchor pair (SN-Net's module names)."""

    def __init__(self, anchors: list[TinyViT], pairs: list[tuple[int, int]], num_layers: int):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        self.pairs = list(pairs)
        self.stitch_layers = nn.ModuleList(
            nn.ModuleList(StitchingLayer(anchors[f].cfg.embed_dim, anchors[e].cfg.embed_dim)
                          for _ in range(num_layers))
            for f, e in self.pairs)

    def stitch(self, front: int, end: int, layer: int) -> StitchingLayer:
        return self.stitch_layers[self.pairs.index((front, end))][layer]

    def forward_route(self, x: torch.Tensor, route) -> torch.Tensor:
        """Run an `snrt.variants.Route` piece by piece, as snrt's ONNX exporter does."""
        depth = len(self.anchors[0].blocks)
        for p in route.pieces(depth):
            a = self.anchors[p.anchor]
            if p.kind == "embed":
                x = a.embed(x)
            elif p.kind == "block":
                x = a.blocks[p.index](x)
            elif p.kind == "stitch":
                x = self.stitch(p.anchor, p.end, p.index)(x)
            else:
                x = a.forward_head(x, norm=p.norm)
        return x
