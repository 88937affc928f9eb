"""Family: the anchors' weights (numpy, under timm's key names) plus the stitching layers.

A family is what one training run produced: several ViT/DeiT anchors of the same depth and
growing width (SN-Net's setting), the linear stitching layers between neighbours, and how images
must be preprocessed. No deep learning framework is needed.

- model.py: the data (ViTConfig, Anchor, StitchLayer, Preprocess, Family);
- timm_vit.py: a timm state dict -> ViTConfig (keys, shapes; heads and pooling from flags,
  `snrt.config` metadata, config.json, keys, convention, in that order);
- timm_config.py: timm's config.json and its registered ViT/DeiT defaults;
- readers.py: families from files (timm weights per anchor, SN-Net checkpoints) and the
  metadata keys they read;
- supernet.py: one elastic supernet (timm ViT or POA teacher checkpoint) whose subnets
  snrt.variants.subnets slices.
"""

from .model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Anchor,
    Family,
    Preprocess,
    StitchLayer,
    ViTConfig,
)
from .readers import (
    default_anchor_name,
    family_from_anchor_files,
    family_from_snnet_checkpoint,
    load_anchor,
)
from .supernet import Supernet, load_supernet, supernet_from_state_dict
from .timm_config import TIMM_VIT_ARCHS, HubConfig, find_hub_config, read_hub_config
from .timm_vit import SNRT_CONFIG_KEYS, config_from_state_dict, parse_snrt_config

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "SNRT_CONFIG_KEYS", "TIMM_VIT_ARCHS", "Anchor", "Family",
    "HubConfig", "Preprocess", "StitchLayer", "ViTConfig", "config_from_state_dict",
    "default_anchor_name", "family_from_anchor_files", "family_from_snnet_checkpoint",
    "find_hub_config", "load_anchor", "load_supernet", "parse_snrt_config", "read_hub_config",
    "Supernet", "supernet_from_state_dict",
]
