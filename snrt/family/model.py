"""The family's data: anchors (ViTConfig + weights under timm's key names), stitching layers,
preprocessing. Readers that build these from files live beside this module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import UnsupportedModelError
from ..weights_io import StateDict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    """Shape of one timm VisionTransformer (the fields snrt needs to rebuild its forward)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: int
    img_size: int
    in_chans: int
    num_classes: int
    class_token: bool = True
    distilled: bool = False  # DeiT distilled: dist_token + head_dist, eval output = mean of heads
    no_embed_class: bool = False  # DeiT III: pos_embed covers patches only
    qkv_bias: bool = True
    layer_scale: bool = False  # DeiT III / CaiT-style ls1.gamma, ls2.gamma
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of the patch tokens)
    fc_norm: bool = False  # timm avg-pool models: LayerNorm after pooling instead of `norm`
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled)

    @property
    def seq_len(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ViTConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UnsupportedModelError(f"unknown ViT config fields {sorted(unknown)}")
        return cls(**d)


@dataclass
class Anchor:
    name: str
    config: ViTConfig
    weights: StateDict  # timm key names, float32
    source: dict = field(default_factory=dict)  # {"path": ..., "sha256": ...}

    def block(self, i: int) -> StateDict:
        p = f"blocks.{i}."
        return {k[len(p):]: v for k, v in self.weights.items() if k.startswith(p)}

    @property
    def num_params(self) -> int:
        return int(sum(v.size for v in self.weights.values()))


@dataclass
class StitchLayer:
    """y = x @ weight.T + bias, mapping front-anchor tokens into the end anchor's width."""

    weight: np.ndarray  # [out_dim, in_dim], as nn.Linear
    bias: np.ndarray  # [out_dim]


@dataclass(frozen=True)
class Preprocess:
    """timm's eval transform: resize shorter side to img_size/crop_pct, centre crop, normalise."""

    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: str = "RGB"  # PIL mode the model expects: "RGB" or "L"

    def to_json(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


@dataclass
class Family:
    """Anchors (smallest first) and the stitching layers between them."""

    name: str
    anchors: list[Anchor]
    # (front anchor index, end anchor index) -> stitching layers, indexed by SN-Net's layer id
    stitch_layers: dict[tuple[int, int], list[StitchLayer]] = field(default_factory=dict)
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: list[str] | None = None
    sources: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.anchors:
            raise UnsupportedModelError("a family needs at least one anchor")
        names = [a.name for a in self.anchors]
        if len(set(names)) != len(names):
            raise UnsupportedModelError(f"anchor names must be unique, got {names}")
        first = self.anchors[0].config
        for a in self.anchors[1:]:
            c = a.config
            mismatch = [f for f in ("depth", "patch_size", "img_size", "in_chans", "num_classes",
                                    "class_token", "distilled", "no_embed_class", "global_pool")
                        if getattr(c, f) != getattr(first, f)]
            if mismatch:
                raise UnsupportedModelError(
                    f"anchors '{self.anchors[0].name}' and '{a.name}' differ in {mismatch}; "
                    "SN-Net stitching (paired, same depth) needs them equal"
                )
        widths = [a.config.embed_dim for a in self.anchors]
        if widths != sorted(widths):
            raise UnsupportedModelError(
                f"anchors must be ordered from smallest to largest width, got widths {widths}"
            )

    @property
    def depth(self) -> int:
        return self.anchors[0].config.depth

    def anchor_index(self, name: str) -> int:
        for i, a in enumerate(self.anchors):
            if a.name == name:
                return i
        raise KeyError(f"unknown anchor '{name}'; known: {[a.name for a in self.anchors]}")
