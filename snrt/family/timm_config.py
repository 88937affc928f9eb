"""timm's `config.json` and the defaults of timm's registered ViT/DeiT architectures.

A timm state dict's keys and shapes give a ViT's width, depth, patch size, class/distillation
tokens, layer scale and where its LayerNorms sit; they do not give the number of attention heads
nor, for a model with a class token and a final `norm`, whether the head reads the class token
or the mean of the patch tokens (timm's `global_pool='avg', fc_norm=False`). timm records those
beside the weights (the hub layout: `config.json` next to `model.safetensors`):

    {"architecture": "vit_base_patch16_gap_224",      registered name; defaults: TIMM_VIT_ARCHS
     "num_classes": 1000, "num_features": 768, "global_pool": "avg",
     "model_args": {"num_heads": 16, ...},             create_model kwargs: override the defaults
     "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [...], "std": [...],
                        "crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "center"},
     "label_names": [...]}

`read_hub_config` reads that (older single-dict files too), checks every field it uses and
refuses model_args that change the forward in ways snrt does not export (qk-norm, register
tokens, other activations...). Errors name the file and the key.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ModelFileError, UnsupportedModelError

log = logging.getLogger(__name__)


class ArchDefaults(NamedTuple):
    """A registered timm architecture's model_args that matter to snrt."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    global_pool: str
    class_token: bool
    fc_norm: bool | None  # as registered; None: timm's rule, norm after pooling iff avg pooling


_A = ArchDefaults
# Read from timm 1.0.31's registered models (timm.create_model(name, device="meta")), keeping
# the plain ViT/DeiT layouts snrt exports; tests/test_timm_config.py checks every row against
# the installed timm. Only what the keys cannot say is used (heads, pooling); the rest checks
# that a config.json belongs to the weights beside it.
TIMM_VIT_ARCHS: dict[str, ArchDefaults] = {
    "deit3_base_patch16_224": _A(768, 12, 12, 16, "token", True, None),
    "deit3_base_patch16_384": _A(768, 12, 12, 16, "token", True, None),
    "deit3_huge_patch14_224": _A(1280, 32, 16, 14, "token", True, None),
    "deit3_large_patch16_224": _A(1024, 24, 16, 16, "token", True, None),
    "deit3_large_patch16_384": _A(1024, 24, 16, 16, "token", True, None),
    "deit3_medium_patch16_224": _A(512, 12, 8, 16, "token", True, None),
    "deit3_small_patch16_224": _A(384, 12, 6, 16, "token", True, None),
    "deit3_small_patch16_384": _A(384, 12, 6, 16, "token", True, None),
    "deit_base_distilled_patch16_224": _A(768, 12, 12, 16, "token", True, None),
    "deit_base_distilled_patch16_384": _A(768, 12, 12, 16, "token", True, None),
    "deit_base_patch16_224": _A(768, 12, 12, 16, "token", True, None),
    "deit_base_patch16_384": _A(768, 12, 12, 16, "token", True, None),
    "deit_small_distilled_patch16_224": _A(384, 12, 6, 16, "token", True, None),
    "deit_small_patch16_224": _A(384, 12, 6, 16, "token", True, None),
    "deit_tiny_distilled_patch16_224": _A(192, 12, 3, 16, "token", True, None),
    "deit_tiny_patch16_224": _A(192, 12, 3, 16, "token", True, None),
    "vit_base_patch14_dinov2": _A(768, 12, 12, 14, "token", True, None),
    "vit_base_patch16_224": _A(768, 12, 12, 16, "token", True, None),
    "vit_base_patch16_224_miil": _A(768, 12, 12, 16, "token", True, None),
    "vit_base_patch16_384": _A(768, 12, 12, 16, "token", True, None),
    "vit_base_patch16_gap_224": _A(768, 12, 16, 16, "avg", False, False),
    "vit_base_patch16_plus_240": _A(896, 12, 14, 16, "token", True, None),
    "vit_base_patch16_siglip_gap_224": _A(768, 12, 12, 16, "avg", False, False),
    "vit_base_patch16_siglip_gap_256": _A(768, 12, 12, 16, "avg", False, False),
    "vit_base_patch16_siglip_gap_384": _A(768, 12, 12, 16, "avg", False, False),
    "vit_base_patch16_siglip_gap_512": _A(768, 12, 12, 16, "avg", False, False),
    "vit_base_patch32_224": _A(768, 12, 12, 32, "token", True, None),
    "vit_base_patch32_384": _A(768, 12, 12, 32, "token", True, None),
    "vit_base_patch32_plus_256": _A(896, 12, 14, 32, "token", True, None),
    "vit_base_patch8_224": _A(768, 12, 12, 8, "token", True, None),
    "vit_betwixt_patch16_gap_256": _A(640, 12, 10, 16, "avg", False, False),
    "vit_giant_patch14_224": _A(1408, 40, 16, 14, "token", True, None),
    "vit_giant_patch16_gap_224": _A(1408, 40, 16, 16, "avg", False, False),
    "vit_gigantic_patch14_224": _A(1664, 48, 16, 14, "token", True, None),
    "vit_huge_patch14_224": _A(1280, 32, 16, 14, "token", True, None),
    "vit_huge_patch14_gap_224": _A(1280, 32, 16, 14, "avg", False, False),
    "vit_huge_patch16_gap_448": _A(1280, 32, 16, 16, "avg", False, False),
    "vit_large_patch14_224": _A(1024, 24, 16, 14, "token", True, None),
    "vit_large_patch14_dinov2": _A(1024, 24, 16, 14, "token", True, None),
    "vit_large_patch16_224": _A(1024, 24, 16, 16, "token", True, None),
    "vit_large_patch16_384": _A(1024, 24, 16, 16, "token", True, None),
    "vit_large_patch16_siglip_gap_256": _A(1024, 24, 16, 16, "avg", False, False),
    "vit_large_patch16_siglip_gap_384": _A(1024, 24, 16, 16, "avg", False, False),
    "vit_large_patch32_224": _A(1024, 24, 16, 32, "token", True, None),
    "vit_large_patch32_384": _A(1024, 24, 16, 32, "token", True, None),
    "vit_medium_patch16_gap_240": _A(512, 12, 8, 16, "avg", False, False),
    "vit_medium_patch16_gap_256": _A(512, 12, 8, 16, "avg", False, False),
    "vit_medium_patch16_gap_384": _A(512, 12, 8, 16, "avg", False, False),
    "vit_small_patch14_dinov2": _A(384, 12, 6, 14, "token", True, None),
    "vit_small_patch16_224": _A(384, 12, 6, 16, "token", True, None),
    "vit_small_patch16_36x1_224": _A(384, 36, 6, 16, "token", True, None),
    "vit_small_patch16_384": _A(384, 12, 6, 16, "token", True, None),
    "vit_small_patch32_224": _A(384, 12, 6, 32, "token", True, None),
    "vit_small_patch32_384": _A(384, 12, 6, 32, "token", True, None),
    "vit_small_patch8_224": _A(384, 12, 6, 8, "token", True, None),
    "vit_so400m_patch14_siglip_gap_224": _A(1152, 27, 16, 14, "avg", False, False),
    "vit_so400m_patch14_siglip_gap_378": _A(1152, 27, 16, 14, "avg", False, False),
    "vit_so400m_patch14_siglip_gap_384": _A(1152, 27, 16, 14, "avg", False, False),
    "vit_so400m_patch14_siglip_gap_448": _A(1152, 27, 16, 14, "avg", False, False),
    "vit_so400m_patch14_siglip_gap_896": _A(1152, 27, 16, 14, "avg", False, False),
    "vit_tiny_patch16_224": _A(192, 12, 3, 16, "token", True, None),
    "vit_tiny_patch16_384": _A(192, 12, 3, 16, "token", True, None),
}

# config.json model_args, by what snrt does with them
_INT_ARGS = ("embed_dim", "depth", "num_heads", "in_chans", "num_classes", "num_features")
_BOOL_ARGS = ("class_token", "no_embed_class", "qkv_bias")
# args the weights' keys already decide: checked against them
_CHECKED = {"embed_dim", "depth", "patch_size", "img_size", "in_chans", "num_classes",
            "num_features", "class_token", "no_embed_class", "qkv_bias", "mlp_ratio",
            "init_values", "fc_norm"}
# args that must keep timm's default for the forward snrt exports: name -> accepted values
_MUST_BE = {
    "qk_norm": (False,), "scale_attn_norm": (False,), "scale_mlp_norm": (False,),
    "proj_bias": (True,), "pos_embed": ("learn",), "reg_tokens": (0,), "pre_norm": (False,),
    "final_norm": (True,), "pool_include_prefix": (False,), "embed_norm_layer": (None,),
    "act_layer": (None, "gelu"), "norm_layer": (None, "layernorm"), "features_only": (False,),
}
# args that do not change the eval forward at the recorded image size
_IGNORED = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
            "drop_path_rate", "weight_init", "fix_init", "dynamic_img_size", "dynamic_img_pad",
            "out_indices"}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
_MAX_CONFIG_BYTES = 16 << 20


@dataclass(frozen=True)
class HubConfig:
    """What a timm config.json says about the weights beside it."""

    path: Path
    architecture: str | None  # registered name without the pretrained tag
    known_architecture: bool  # in TIMM_VIT_ARCHS, so its defaults are in `vit_args`
    vit_args: dict[str, Any]  # VisionTransformer kwargs as far as recorded (defaults + model_args)
    preprocess: dict[str, Any] | None  # snrt Preprocess fields from pretrained_cfg
    labels: list[str] | None


def find_hub_config(weights: Path) -> Path | None:
    """The config.json that describes `weights`: `<stem>.config.json` (several models in one
    directory), else `config.json` in the same directory (timm's hub layout)."""
    for p in (weights.with_name(weights.stem + ".config.json"), weights.with_name("config.json")):
        if p.is_file():
            return p
    return None


def read_hub_config(path: str | Path) -> HubConfig:
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path}: {path.stat().st_size} bytes is too large for a "
                                 "timm config.json")
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: not UTF-8 text ({e})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path}: a timm config.json is a JSON object, not {_kind(cfg)}")
    cfg = dict(cfg)
    if "pretrained_cfg" in cfg:
        pretrained, where = _get(cfg, "pretrained_cfg", dict, path) or {}, "pretrained_cfg."
    else:  # timm's older single-dict layout: preprocessing at the top level
        pretrained, where = cfg, ""
    arch = _get(cfg, "architecture", str, path)
    name = arch.split(".")[0] if arch else None
    defaults = TIMM_VIT_ARCHS.get(name) if name else None
    args: dict[str, Any] = dict(defaults._asdict()) if defaults else {}
    top = {k: cfg[k] for k in ("num_classes", "num_features", "global_pool") if k in cfg}
    model_args = _get(cfg, "model_args", dict, path) or {}
    for key, value in top.items():
        args[key] = _arg(key, value, path, key)
    for key, value in model_args.items():
        if key in _IGNORED:
            continue
        label = f"model_args.{key}"
        if key in _MUST_BE:
            if not any(type(value) is type(ok) and value == ok for ok in _MUST_BE[key]):
                raise UnsupportedModelError(
                    f"{path}: {label} = {value!r}: snrt exports only timm's default "
                    f"({_MUST_BE[key][0]!r}) for it")
            continue
        if key not in _CHECKED and key not in ("num_heads", "global_pool"):
            raise UnsupportedModelError(
                f"{path}: {label} is not a VisionTransformer argument snrt knows how to honour; "
                "remove it if it does not change the model's forward")
        args[key] = _arg(key, value, path, label)
    for key in top:
        if key in model_args and top[key] != model_args[key]:
            raise ModelFileError(f"{path}: {key} {top[key]!r} and model_args.{key} "
                                 f"{model_args[key]!r} disagree")
    if name and not defaults:
        log.info("%s: architecture '%s' is not in snrt's table of timm ViT/DeiT defaults; using "
                 "its model_args and the weights' keys", path, name)
    return HubConfig(path=path, architecture=name, known_architecture=defaults is not None,
                     vit_args=args, preprocess=_preprocess(pretrained, path, where),
                     labels=_labels(cfg, path))


def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _get(d: dict, key: str, typ: type, path: Path):
    v = d.get(key)
    if v is not None and not isinstance(v, typ):
        raise ModelFileError(f"{path}: key '{key}' must be {_kind(typ())}, not {_kind(v)}")
    return v


def _arg(key: str, v, path: Path, label: str):
    """Check one model arg's type; return it normalised (sizes as one int)."""
    def bad(what: str):
        return ModelFileError(f"{path}: key '{label}' must be {what}, not {v!r}")

    if key in _INT_ARGS:
        if type(v) is not int or v < (1 if key in ("num_heads", "depth") else 0):
            raise bad("a positive integer")
        return v
    if key in ("img_size", "patch_size"):
        if type(v) is int and v > 0:
            return v
        if isinstance(v, list) and len(v) == 2 and all(type(s) is int and s > 0 for s in v):
            if v[0] != v[1]:
                raise UnsupportedModelError(f"{path}: {label} {v} is not square; snrt exports "
                                            "square images and patches only")
            return v[0]
        raise bad("an integer or [h, w]")
    if key in _BOOL_ARGS:
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if key == "fc_norm":
        if v is not None and not isinstance(v, bool):
            raise bad("true, false or null")
        return v
    if key == "global_pool":
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if key == "mlp_ratio":
        if not _number(v) or not v > 0:
            raise bad("a positive number")
        return float(v)
    if key == "init_values":
        if v is not None and not _number(v):
            raise bad("a number or null")
        return v
    raise AssertionError(key)  # every key routed here is one of the above


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _preprocess(pre: dict, path: Path, where: str) -> dict[str, Any] | None:
    """snrt Preprocess fields from timm's pretrained_cfg (eval transform), checked; `where` is
    the keys' prefix in the file, for messages."""
    out: dict[str, Any] = {}
    chans = None
    if pre.get("input_size") is not None:
        v = pre["input_size"]
        if not (isinstance(v, list) and len(v) == 3 and all(type(s) is int and s > 0 for s in v)):
            raise ModelFileError(f"{path}: key '{where}input_size' must be [channels, height, "
                                 f"width], not {v!r}")
        if v[1] != v[2]:
            raise UnsupportedModelError(f"{path}: {where}input_size {v} is not square")
        chans, out["img_size"] = v[0], v[1]
        if chans not in (1, 3):
            raise UnsupportedModelError(f"{path}: {where}input_size has {chans} channels; snrt "
                                        "preprocesses RGB (3) or greyscale (1) images")
        out["channels"] = "RGB" if chans == 3 else "L"
    for key in ("mean", "std"):
        v = pre.get(key)
        if v is None:
            continue
        if not (isinstance(v, list) and v and all(_number(x) for x in v)) or (
                chans is not None and len(v) != chans):
            raise ModelFileError(f"{path}: key '{where}{key}' must be a list of "
                                 f"{chans or 'per-channel'} numbers, not {v!r}")
        if key == "std" and min(v) <= 0:
            raise ModelFileError(f"{path}: key '{where}std' must be positive, not {v!r}")
        out[key] = tuple(float(x) for x in v)
    if pre.get("crop_pct") is not None:
        v = pre["crop_pct"]
        if not _number(v) or not 0 < v <= 1:
            raise ModelFileError(f"{path}: key '{where}crop_pct' must be a number in (0, 1], "
                                 f"not {v!r}")
        out["crop_pct"] = float(v)
    if pre.get("interpolation") is not None:
        v = pre["interpolation"]
        if not isinstance(v, str):
            raise ModelFileError(f"{path}: key '{where}interpolation' must be a string")
        if v in INTERPOLATIONS:
            out["interpolation"] = v
        else:
            log.warning("%s: %sinterpolation '%s' is not one snrt resizes with (%s); using "
                        "bicubic", path, where, v, ", ".join(INTERPOLATIONS))
    mode = pre.get("crop_mode")
    if mode is not None and mode != "center":
        log.warning("%s: %scrop_mode %r: snrt resizes the shorter side and crops the centre "
                    "(timm's 'center'); predictions may differ slightly", path, where, mode)
    return out or None


def _labels(cfg: dict, path: Path) -> list[str] | None:
    v = cfg.get("label_names", cfg.get("labels"))
    if v is None:
        return None
    if isinstance(v, dict):  # {"0": "tench", ...}: ids without gaps become a list
        try:
            ids = sorted(int(k) for k in v)
        except ValueError:
            ids = None
        if ids != list(range(len(v))):
            raise ModelFileError(f"{path}: key 'label_names' must map class ids 0..N-1 to names")
        v = [v[k] for k in sorted(v, key=int)]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ModelFileError(f"{path}: key 'label_names' must be a list of strings")
    return v
