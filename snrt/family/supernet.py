"""A supernet: one timm ViT whose elastic subnets (POA, VIMER-UFO) are sliced out of it.

Read from a timm VisionTransformer state dict (.safetensors, .npz, or .pth via
torch.load(weights_only=True) when torch is installed; a timm config.json beside the file is
read like for anchors) or from a POA checkpoint: the `teacher` state dict with POA's dynamic
layer key names (`backbone.` prefix, block chunks `blocks.{chunk}.{i}.`, `.linear.` inside
qkv/proj/fc1/fc2, `norm1.norm.weight`), mapped as alipay/POA's tools/extract_elastic_net.py
maps them; `dino_head.*`, `ibot_head.*`, `mask_token` and other non-backbone keys are ignored.

head_dim is fixed (64 in both built-in spaces), so the supernet's num_heads is D / head_dim.
Without `head.*` (POA checkpoints) the supernet's output is its features: the class token after
the final norm (num_classes 0 in memory).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..fileio import sha256_file
from ..weights_io import StateDict, read_state_dict, unwrap_checkpoint
from .model import IMAGENET_MEAN, IMAGENET_STD, Preprocess, ViTConfig
from .timm_config import find_hub_config, read_hub_config
from .timm_vit import config_from_state_dict

log = logging.getLogger(__name__)

_POA_IGNORED = ("dino_head.", "ibot_head.", "head_dino.", "mask_token", "dino_loss", "ibot_loss")


@dataclass
class Supernet:
    """The full model's geometry and weights (numpy, timm key names)."""

    name: str
    config: ViTConfig  # num_heads = embed_dim / head_dim; num_classes 0 when headless
    weights: StateDict
    head_dim: int = 64
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: list[str] | None = None
    source: dict = field(default_factory=dict)

    @property
    def has_head(self) -> bool:
        return "head.weight" in self.weights

    @property
    def num_params(self) -> int:
        return int(sum(v.size for v in self.weights.values()))


def is_poa_checkpoint(sd: StateDict) -> bool:
    return any(k.startswith(("teacher.", "backbone.")) or ".linear." in k or
               re.search(r"\.norm\d?\.norm\.(weight|bias)$", k) for k in sd)


def map_poa_state_dict(sd: StateDict, where: str = "POA checkpoint") -> StateDict:
    """POA's teacher keys -> timm keys (as tools/extract_elastic_net.py renames them)."""
    if any(k.startswith("teacher.") for k in sd):
        sd = {k[len("teacher."):]: v for k, v in sd.items() if k.startswith("teacher.")}
    out: StateDict = {}
    for k, v in sd.items():
        k = k.replace("backbone.", "")
        if k.startswith(_POA_IGNORED) or not (
                k.startswith(("blocks.", "norm.", "cls_token", "pos_embed", "patch_embed.",
                              "head.", "fc_norm."))):
            continue
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)  # chunked -> flat
        k = k.replace(".linear.", ".")
        k = k.replace("norm.bias", "bias").replace("norm.weight", "weight") \
            if re.search(r"(^|\.)norm\d?\.norm\.(weight|bias)$", k) else k
        if k in out:
            raise ModelFileError(f"{where}: two keys map to '{k}'")
        out[k] = v
    if not any(k.startswith("blocks.") for k in out):
        raise ModelFileError(f"{where}: no backbone blocks (expected 'teacher' -> "
                             "'backbone.blocks.{chunk}.{i}.…' keys)")
    return out


def supernet_from_state_dict(sd: StateDict, *, name: str = "supernet", head_dim: int = 64,
                             where: str = "state dict", metadata: dict | None = None,
                             hub_config=None, source: dict | None = None) -> Supernet:
    """A Supernet from timm-keyed (or POA-keyed) arrays."""
    sd = unwrap_checkpoint(dict(sd))
    if is_poa_checkpoint(sd):
        sd = map_poa_state_dict(sd, where)
    for k in ("norm.weight", "norm.bias"):
        if k not in sd:
            raise ModelFileError(
                f"{where}: no '{k}': the subnet output is the class token after the final "
                "LayerNorm, so the supernet must include it (POA's extraction script does not "
                "save it: take it from the teacher checkpoint)")
    if "patch_embed.proj.weight" not in sd or "cls_token" not in sd:
        raise UnsupportedModelError(f"{where}: not a class-token timm ViT (needs "
                                    "'patch_embed.proj.weight' and 'cls_token')")
    D = int(sd["patch_embed.proj.weight"].shape[0])
    if D % head_dim:
        raise UnsupportedModelError(f"{where}: embed dim {D} is not a multiple of head_dim "
                                    f"{head_dim}")
    headless = "head.weight" not in sd
    probe = dict(sd)
    if headless:  # let the timm key reader check everything else
        probe["head.weight"] = np.zeros((1, D), np.float32)
        probe["head.bias"] = np.zeros((1,), np.float32)
    cfg = config_from_state_dict(probe, num_heads=D // head_dim, global_pool="token",
                                 where=where, metadata=metadata, hub_config=hub_config)
    if cfg.distilled or cfg.fc_norm or cfg.no_embed_class or not cfg.qkv_bias:
        raise UnsupportedModelError(f"{where}: elastic subnets need a plain class-token ViT "
                                    "(no distillation token, no fc_norm, qkv bias)")
    if headless:
        cfg = replace(cfg, num_classes=0)
    pre = Preprocess(img_size=cfg.img_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    labels = None
    if hub_config is not None:
        if hub_config.preprocess:
            pre = Preprocess(**{**pre.__dict__, **hub_config.preprocess})
        labels = hub_config.labels
    return Supernet(name, cfg, sd, head_dim, pre, labels, source or {})


def load_supernet(path: str | os.PathLike, *, name: str | None = None,
                  head_dim: int = 64) -> Supernet:
    """Read a supernet file (timm ViT state dict or POA checkpoint)."""
    path = Path(path)
    sd, meta = read_state_dict(path)
    hub_path = find_hub_config(path)
    hub = read_hub_config(hub_path) if hub_path else None
    source = {"path": path.name, "sha256": sha256_file(path)}
    return supernet_from_state_dict(sd, name=name or path.stem.split(".")[0], head_dim=head_dim,
                                    where=str(path), metadata=meta, hub_config=hub,
                                    source=source)
