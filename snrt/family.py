"""Family: the anchors' weights (numpy, under timm's key names) plus the stitching layers.

A family is what one training run produced: several ViT/DeiT anchors of the same depth and
growing width (SN-Net's setting), the linear stitching layers between neighbours, and how images
must be preprocessed. Readers take timm state dicts (`.safetensors`, `.npz`, `.pth` with the torch
extra) or a whole SN-Net checkpoint (`{'model': sd}` with `anchors.{i}.…` and
`stitch_layers.{pair}.{t}.transform.{weight,bias}`). No deep learning framework is needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelFileError, UnsupportedModelError
from .fileio import sha256_file
from .weights_io import StateDict, read_state_dict, unwrap_checkpoint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys of a timm VisionTransformer block that snrt knows how to export.
_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias", "ls1.gamma", "ls2.gamma",
}
_TOP_KEYS = {
    "cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
    "norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias",
    "head_dist.weight", "head_dist.bias",
}


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


# ----------------------------------------------------------------------------- readers

_DEIT_NAMES = {192: "ti", 384: "s", 768: "b", 1024: "l", 1280: "h"}


def default_anchor_name(cfg: ViTConfig, taken: set[str]) -> str:
    name = _DEIT_NAMES.get(cfg.embed_dim, f"d{cfg.embed_dim}")
    while name in taken:
        name += "_"
    return name


def config_from_state_dict(sd: StateDict, *, num_heads: int | None = None,
                           img_size: int | None = None, where: str = "state dict",
                           metadata: dict | None = None) -> ViTConfig:
    """Infer a ViTConfig from timm key names and shapes.

    Shapes do not say how many attention heads there are: snrt takes `num_heads` if given, then
    the file's metadata (`snrt.config`), then the DeiT/ViT convention of 64-wide heads.
    """
    meta_cfg = {}
    if metadata and "snrt.config" in metadata:
        try:
            meta_cfg = json.loads(metadata["snrt.config"])
        except json.JSONDecodeError:
            raise ModelFileError(f"{where}: metadata 'snrt.config' is not JSON") from None
    need = ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "head.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise UnsupportedModelError(
            f"{where}: not a timm ViT/DeiT state dict (missing {missing}); expected timm key "
            "names such as 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight', 'head.weight'"
        )
    _refuse_unknown_keys(sd, where)
    pw = sd["patch_embed.proj.weight"]
    if pw.ndim != 4 or pw.shape[2] != pw.shape[3]:
        raise UnsupportedModelError(f"{where}: patch_embed.proj.weight has shape {pw.shape}, "
                                    "expected a square conv kernel [D, C, p, p]")
    embed_dim, in_chans, patch = int(pw.shape[0]), int(pw.shape[1]), int(pw.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    for i in range(depth):
        if f"blocks.{i}.attn.qkv.weight" not in sd:
            raise UnsupportedModelError(f"{where}: block {i} of {depth} is missing")
    class_token = "cls_token" in sd
    distilled = "dist_token" in sd
    if distilled != ("head_dist.weight" in sd):
        raise UnsupportedModelError(f"{where}: distilled DeiT needs both dist_token and head_dist")
    if distilled and not class_token:
        raise UnsupportedModelError(f"{where}: dist_token without cls_token is not a DeiT")
    prefix = int(class_token) + int(distilled)
    pos_len = int(sd["pos_embed"].shape[1])
    # timm stores pos_embed for prefix+patches, or (DeiT III, no_embed_class) patches only
    if math.isqrt(pos_len - prefix) ** 2 == pos_len - prefix and pos_len > prefix:
        no_embed_class, num_patches = False, pos_len - prefix
    elif math.isqrt(pos_len) ** 2 == pos_len:
        no_embed_class, num_patches = True, pos_len
    else:
        raise UnsupportedModelError(f"{where}: pos_embed length {pos_len} is not a square grid "
                                    f"plus {prefix} prefix tokens")
    grid = math.isqrt(num_patches)
    size = grid * patch
    if img_size is not None and img_size != size:
        raise UnsupportedModelError(f"{where}: pos_embed fits {size}px images, not {img_size}px "
                                    "(resampling position embeddings is not supported)")
    heads = num_heads or meta_cfg.get("num_heads") or max(1, embed_dim // 64)
    if embed_dim % heads:
        raise UnsupportedModelError(f"{where}: embed_dim {embed_dim} not divisible by "
                                    f"{heads} heads; pass the right --num-heads")
    if not (num_heads or meta_cfg.get("num_heads")):
        log.info("%s: num_heads not recorded; using %d (64-wide heads, the DeiT convention)",
                 where, heads)
    fc_norm = "fc_norm.weight" in sd
    cfg = ViTConfig(
        embed_dim=embed_dim, depth=depth, num_heads=int(heads),
        mlp_hidden=int(sd["blocks.0.mlp.fc1.weight"].shape[0]), patch_size=patch,
        img_size=size, in_chans=in_chans, num_classes=int(sd["head.weight"].shape[0]),
        class_token=class_token, distilled=distilled, no_embed_class=no_embed_class,
        qkv_bias="blocks.0.attn.qkv.bias" in sd, layer_scale="blocks.0.ls1.gamma" in sd,
        global_pool=meta_cfg.get("global_pool", "avg" if fc_norm else "token"), fc_norm=fc_norm,
        norm_eps=float(meta_cfg.get("norm_eps", 1e-6)),
    )
    if cfg.global_pool not in ("token", "avg"):
        raise UnsupportedModelError(f"{where}: global_pool '{cfg.global_pool}' not supported")
    if cfg.global_pool == "token" and not class_token:
        raise UnsupportedModelError(f"{where}: token pooling without a class token")
    if fc_norm and "norm.weight" in sd:
        raise UnsupportedModelError(f"{where}: both norm and fc_norm present")
    _check_shapes(sd, cfg, where)
    return cfg


def _refuse_unknown_keys(sd: StateDict, where: str) -> None:
    unknown = []
    for k in sd:
        m = re.match(r"blocks\.\d+\.(.+)$", k)
        if m:
            if m.group(1) not in _BLOCK_KEYS:
                unknown.append(k)
        elif k not in _TOP_KEYS:
            unknown.append(k)
    if unknown:
        hint = ""
        if any("q_norm" in k or "k_norm" in k for k in unknown):
            hint = " (qk-norm ViTs are not supported)"
        elif any(k.startswith("reg_token") for k in unknown):
            hint = " (register tokens are not supported)"
        elif any(k.startswith("norm_pre") for k in unknown):
            hint = " (pre-norm CLIP ViTs are not supported)"
        raise UnsupportedModelError(
            f"{where}: keys snrt cannot export: {unknown[:6]}{' …' if len(unknown) > 6 else ''}"
            f"{hint}; supported: timm ViT/DeiT/DeiT III/distilled DeiT"
        )


def _check_shapes(sd: StateDict, c: ViTConfig, where: str) -> None:
    D, H = c.embed_dim, c.mlp_hidden
    pos_len = c.num_patches + (0 if c.no_embed_class else c.num_prefix_tokens)
    expect = {
        "patch_embed.proj.weight": (D, c.in_chans, c.patch_size, c.patch_size),
        "patch_embed.proj.bias": (D,), "pos_embed": (1, pos_len, D),
        "head.weight": (c.num_classes, D), "head.bias": (c.num_classes,),
    }
    if c.class_token:
        expect["cls_token"] = (1, 1, D)
    if c.distilled:
        expect.update({"dist_token": (1, 1, D), "head_dist.weight": (c.num_classes, D),
                       "head_dist.bias": (c.num_classes,)})
    norm = "fc_norm" if c.fc_norm else "norm"
    expect.update({f"{norm}.weight": (D,), f"{norm}.bias": (D,)})
    for i in range(c.depth):
        b = f"blocks.{i}."
        expect.update({
            b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "attn.qkv.weight": (3 * D, D),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,), b + "norm2.weight": (D,),
            b + "norm2.bias": (D,), b + "mlp.fc1.weight": (H, D), b + "mlp.fc1.bias": (H,),
            b + "mlp.fc2.weight": (D, H), b + "mlp.fc2.bias": (D,),
        })
        if c.qkv_bias:
            expect[b + "attn.qkv.bias"] = (3 * D,)
        if c.layer_scale:
            expect.update({b + "ls1.gamma": (D,), b + "ls2.gamma": (D,)})
    for k, shape in expect.items():
        if k not in sd:
            raise UnsupportedModelError(f"{where}: missing tensor '{k}' (expected {shape})")
        if tuple(sd[k].shape) != shape:
            raise UnsupportedModelError(
                f"{where}: tensor '{k}' has shape {tuple(sd[k].shape)}, expected {shape}")
        if sd[k].dtype != np.float32:
            raise UnsupportedModelError(f"{where}: tensor '{k}' is {sd[k].dtype}, not float")


def load_anchor(path: str | os.PathLike, *, name: str | None = None,
                num_heads: int | None = None, taken: set[str] | None = None) -> Anchor:
    """Read one timm ViT/DeiT weights file as an Anchor."""
    path = Path(path)
    sd, meta = read_state_dict(path)
    sd = unwrap_checkpoint(sd)
    cfg = config_from_state_dict(sd, num_heads=num_heads, where=str(path), metadata=meta)
    name = name or meta.get("snrt.anchor_name") or default_anchor_name(cfg, taken or set())
    return Anchor(name=name, config=cfg, weights=sd,
                  source={"path": path.name, "sha256": sha256_file(path)})


def family_from_anchor_files(paths: list[str | os.PathLike], *, name: str = "family",
                             names: list[str] | None = None,
                             num_heads: list[int] | None = None,
                             preprocess: Preprocess | None = None) -> Family:
    anchors: list[Anchor] = []
    for i, p in enumerate(paths):
        anchors.append(load_anchor(p, name=names[i] if names else None,
                                   num_heads=num_heads[i] if num_heads else None,
                                   taken={a.name for a in anchors}))
    anchors.sort(key=lambda a: a.config.embed_dim)
    return Family(name=name, anchors=anchors, preprocess=preprocess or _default_preprocess(anchors),
                  sources=[a.source for a in anchors])


def _default_preprocess(anchors: list[Anchor]) -> Preprocess:
    c = anchors[0].config
    return Preprocess(img_size=c.img_size, channels="RGB" if c.in_chans == 3 else "L",
                      mean=IMAGENET_MEAN if c.in_chans == 3 else (0.5,) * c.in_chans,
                      std=IMAGENET_STD if c.in_chans == 3 else (0.5,) * c.in_chans)


def family_from_snnet_checkpoint(path: str | os.PathLike, *, name: str | None = None,
                                 names: list[str] | None = None,
                                 num_heads: list[int] | None = None) -> Family:
    """Read an SN-Net checkpoint: anchors.{i}.<timm key> + stitch_layers.{pair}.{t}.transform.*

    Pairs follow SN-Net's `candidate_combinations`: neighbours (i, i+1) when the checkpoint has
    one pair per neighbour (nearest stitching), otherwise every (i, j), i < j.
    """
    path = Path(path)
    sd, meta = read_state_dict(path)
    sd = unwrap_checkpoint(sd)
    anchor_sds: dict[int, StateDict] = {}
    stitch: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    other = []
    for k, v in sd.items():
        if m := re.match(r"anchors\.(\d+)\.(.+)$", k):
            anchor_sds.setdefault(int(m.group(1)), {})[m.group(2)] = v
        elif m := re.match(r"stitch_layers\.(\d+)\.(\d+)\.transform\.(weight|bias)$", k):
            stitch.setdefault((int(m.group(1)), int(m.group(2))), {})[m.group(3)] = v
        else:
            other.append(k)
    if not anchor_sds:
        raise UnsupportedModelError(
            f"{path}: no 'anchors.{{i}}.' keys: not an SN-Net checkpoint (for plain timm "
            "weights pass the files as anchors)")
    if other:
        raise UnsupportedModelError(f"{path}: unexpected keys in SN-Net checkpoint: {other[:5]}")
    n = len(anchor_sds)
    if sorted(anchor_sds) != list(range(n)):
        raise UnsupportedModelError(f"{path}: anchors are not numbered 0..{n - 1}")
    meta_names = json.loads(meta["snrt.anchor_names"]) if "snrt.anchor_names" in meta else None
    meta_heads = json.loads(meta["snrt.num_heads"]) if "snrt.num_heads" in meta else None
    names = names or meta_names
    heads = num_heads or meta_heads
    anchors: list[Anchor] = []
    for i in range(n):
        where = f"{path} anchor {i}"
        cfg = config_from_state_dict(anchor_sds[i], num_heads=heads[i] if heads else None,
                                     where=where, metadata=meta)
        aname = names[i] if names else default_anchor_name(cfg, {a.name for a in anchors})
        anchors.append(Anchor(aname, cfg, anchor_sds[i], {"path": path.name, "anchor": i}))
    pairs_seen = sorted({p for p, _ in stitch})
    n_pairs = len(pairs_seen)
    neighbours = [(i, i + 1) for i in range(n - 1)]
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if stitch and n_pairs == len(neighbours):
        pair_map = neighbours
    elif stitch and n_pairs == len(all_pairs):
        pair_map = all_pairs
    elif stitch:
        raise UnsupportedModelError(f"{path}: {n_pairs} stitching pairs for {n} anchors; "
                                    f"expected {len(neighbours)} (nearest) or {len(all_pairs)}")
    else:
        pair_map = []
    layers: dict[tuple[int, int], list[StitchLayer]] = {}
    for p, pair in enumerate(pair_map):
        ids = sorted(t for q, t in stitch if q == p)
        if ids != list(range(len(ids))):
            raise UnsupportedModelError(f"{path}: stitch_layers.{p} has gaps: {ids}")
        front, end = (anchors[pair[0]].config.embed_dim, anchors[pair[1]].config.embed_dim)
        lst = []
        for t in ids:
            w, b = stitch[(p, t)].get("weight"), stitch[(p, t)].get("bias")
            if w is None or b is None or w.shape != (end, front) or b.shape != (end,):
                raise UnsupportedModelError(
                    f"{path}: stitch_layers.{p}.{t} must hold weight [{end}, {front}] and "
                    f"bias [{end}]")
            lst.append(StitchLayer(w, b))
        layers[pair] = lst
    fam_name = name or meta.get("snrt.family_name") or path.stem
    pre = Preprocess.from_json(json.loads(meta["snrt.preprocess"])) \
        if "snrt.preprocess" in meta else _default_preprocess(anchors)
    labels = json.loads(meta["snrt.labels"]) if "snrt.labels" in meta else None
    fam = Family(fam_name, anchors, layers, pre, labels,
                 sources=[{"path": path.name, "sha256": sha256_file(path)}])
    return fam
