"""A timm ViT/DeiT state dict -> ViTConfig: what the keys say, and where the rest comes from.

Keys and shapes give width, depth, patch and image size, class/distillation tokens, DeiT III's
layer scale and position embedding, and whether the last LayerNorm is `norm` (before pooling) or
`fc_norm` (after it). They cannot give two things that change the output:

- `num_heads` (768 wide may be 12 heads of 64 or 16 of 48), and
- `global_pool` when there is a class token and a `norm`: timm's class-token pooling and its
  `global_pool='avg', fc_norm=False` (final norm, then the mean of the patch tokens) have
  identical keys.

Each comes from the first source that records it:

1. the caller's arguments (`snrt-export stitch --num-heads ... --global-pool ...`);
2. the weights file's `snrt.config` metadata (safetensors `__metadata__`, a JSON object; keys in
   SNRT_CONFIG_KEYS);
3. timm's config.json beside the weights (`model_args`, the top-level `global_pool`, then the
   registered architecture's defaults: timm_config.py);
4. inference from the keys: distilled DeiT -> its two tokens; no class token -> the mean of the
   patch tokens; class token + `fc_norm` -> average pooling (timm's default puts the norm after
   pooling only for it, but fc_norm=True with the class token exists: a guess);
5. convention: 64-wide heads (DeiT/ViT), class-token pooling.
A guess (4 when ambiguous, 5) is logged as a WARNING naming the flag that settles it.

Values a config records that the keys also decide (width, depth, tokens, norm placement...) are
checked against the weights, so a config.json of another model is refused instead of obeyed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..weights_io import StateDict
from .model import ViTConfig
from .timm_config import HubConfig

log = logging.getLogger(__name__)

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
GLOBAL_POOLS = ("token", "avg")

# The `snrt.config` metadata: a JSON object in a safetensors file's __metadata__.
SNRT_CONFIG_KEYS = {
    "num_heads": "attention heads (int)",
    "global_pool": '"token" (class token) or "avg" (mean of the patch tokens)',
    "norm_eps": "LayerNorm epsilon (default 1e-6, timm's)",
}
# ...and, checked against the weights when present: any other ViTConfig field
_DERIVED = ("embed_dim", "depth", "mlp_hidden", "patch_size", "img_size", "in_chans",
            "num_classes", "class_token", "distilled", "no_embed_class", "qkv_bias",
            "layer_scale", "fc_norm")


def parse_snrt_config(metadata: dict[str, str] | None, where: str) -> dict[str, Any]:
    """The `snrt.config` metadata as a checked dict ({} when absent)."""
    if not metadata or "snrt.config" not in metadata:
        return {}
    label = f"{where}: metadata 'snrt.config'"
    try:
        d = json.loads(metadata["snrt.config"])
    except (ValueError, RecursionError):
        raise ModelFileError(f"{label} is not JSON") from None
    if not isinstance(d, dict):
        raise ModelFileError(f"{label} must be a JSON object such as "
                             '{"num_heads": 6, "global_pool": "avg"}')
    unknown = sorted(set(d) - set(SNRT_CONFIG_KEYS) - set(_DERIVED))
    if unknown:
        raise ModelFileError(f"{label}: unknown keys {unknown}; known: "
                             f"{sorted(SNRT_CONFIG_KEYS)} (+ ViTConfig fields, checked)")
    if "num_heads" in d and (type(d["num_heads"]) is not int or d["num_heads"] < 1):
        raise ModelFileError(f"{label}: num_heads must be a positive integer, not "
                             f"{d['num_heads']!r}")
    if "global_pool" in d and not isinstance(d["global_pool"], str):
        raise ModelFileError(f"{label}: global_pool must be a string, not {d['global_pool']!r}")
    eps = d.get("norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ModelFileError(f"{label}: norm_eps must be a small positive number, not {eps!r}")
    return d


def config_from_state_dict(sd: StateDict, *, num_heads: int | None = None,
                           global_pool: str | None = None, img_size: int | None = None,
                           where: str = "state dict", metadata: dict | None = None,
                           hub_config: HubConfig | None = None,
                           snrt_config: dict | None = None) -> ViTConfig:
    """Infer a ViTConfig from timm key names and shapes; heads and pooling as the module
    docstring says (arguments > `snrt.config` metadata > config.json > keys > convention).

    `snrt_config` is an already parsed `snrt.config` (it replaces `metadata`'s)."""
    meta_cfg = snrt_config if snrt_config is not None else parse_snrt_config(metadata, where)
    facts = _facts_from_keys(sd, where)
    if img_size is not None and img_size != facts["img_size"]:
        raise UnsupportedModelError(f"{where}: pos_embed fits {facts['img_size']}px images, not "
                                    f"{img_size}px (resampling position embeddings is not "
                                    "supported)")
    sources: list[tuple[str, dict]] = []
    flags = {k: v for k, v in (("num_heads", num_heads), ("global_pool", global_pool))
             if v is not None}
    if flags:
        sources.append(("the arguments (--num-heads/--global-pool)", flags))
    if meta_cfg:
        sources.append((f"{where}: metadata 'snrt.config'", meta_cfg))
        _check_declared(meta_cfg, facts, f"{where}: metadata 'snrt.config'", where)
    if hub_config is not None:
        sources.append((str(hub_config.path), hub_config.vit_args))
        _check_declared(hub_config.vit_args, facts, str(hub_config.path), where)
    heads, heads_from = _first("num_heads", sources)
    pool, pool_from = _first("global_pool", sources)
    embed_dim = facts["embed_dim"]
    guesses = []
    if heads is None:
        heads, heads_from = max(1, embed_dim // 64), "the 64-wide-head convention"
        guesses.append(f"num_heads={heads} (64-wide heads, the DeiT/ViT convention; "
                       "pass --num-heads)")
    if pool is None:
        pool, pool_from, reason, guess = _pool_from_keys(facts)
        if guess:
            guesses.append(guess)
        else:
            log.info("%s: global_pool '%s' (%s)", where, pool, reason)
    if guesses:
        log.warning("%s: neither flags, 'snrt.config' metadata nor a timm config.json beside "
                    "the weights record this, so snrt assumed %s", where, "; ".join(guesses))
    if type(heads) is not int or heads < 1 or embed_dim % heads:
        raise UnsupportedModelError(f"{where}: embed_dim {embed_dim} is not divisible by "
                                    f"{heads!r} heads (from {heads_from}); pass the right "
                                    "--num-heads")
    _check_pool(pool, pool_from, facts, where)
    cfg = ViTConfig(
        embed_dim=embed_dim, depth=facts["depth"], num_heads=heads,
        mlp_hidden=facts["mlp_hidden"], patch_size=facts["patch_size"],
        img_size=facts["img_size"], in_chans=facts["in_chans"],
        num_classes=facts["num_classes"], class_token=facts["class_token"],
        distilled=facts["distilled"], no_embed_class=facts["no_embed_class"],
        qkv_bias=facts["qkv_bias"], layer_scale=facts["layer_scale"], global_pool=pool,
        fc_norm=facts["fc_norm"], norm_eps=float(meta_cfg.get("norm_eps", 1e-6)),
    )
    _check_shapes(sd, cfg, where)
    return cfg


def _first(key: str, sources: list[tuple[str, dict]]):
    found = [(d[key], label) for label, d in sources if d.get(key) is not None]
    for value, label in found[1:]:
        if value != found[0][0]:
            log.info("%s=%r from %s overrides %r from %s", key, found[0][0], found[0][1], value,
                     label)
    return found[0] if found else (None, None)


def _pool_from_keys(facts: dict) -> tuple[str, str, str, str | None]:
    """(pool, source, reason, guess): guess is the WARNING text when the keys fit two poolings
    (a class token is there, so both 'token' and 'avg' are possible)."""
    if facts["distilled"]:
        return "token", "the keys", "distilled DeiT: class and distillation tokens", None
    if not facts["class_token"]:
        return "avg", "the keys", "no class token: the mean of the patch tokens", None
    if facts["fc_norm"]:
        return "avg", "the keys", "fc_norm", (
            "global_pool='avg' (fc_norm after pooling is timm's default for average pooling; a "
            "class-token model built with fc_norm=True has the same keys: pass --global-pool "
            "token if it reads the class token)")
    return "token", "the class-token convention", "class token", (
        "global_pool='token' (class-token pooling; a timm ViT with global_pool='avg', "
        "fc_norm=False has the same keys: pass --global-pool avg if it averages the patch "
        "tokens)")


def _check_pool(pool, pool_from: str, facts: dict, where: str) -> None:
    if pool not in GLOBAL_POOLS:
        raise UnsupportedModelError(f"{where}: global_pool {pool!r} (from {pool_from}) is not "
                                    f"supported; snrt exports {' and '.join(GLOBAL_POOLS)}")
    if pool == "token" and not facts["class_token"]:
        raise UnsupportedModelError(f"{where}: global_pool 'token' (from {pool_from}) needs a "
                                    "class token and these weights have none")
    if facts["distilled"] and (pool != "token" or facts["fc_norm"]):
        raise UnsupportedModelError(f"{where}: a distilled DeiT reads its class and "
                                    "distillation tokens (global_pool 'token', no fc_norm), "
                                    f"not global_pool {pool!r} (from {pool_from})")


def _facts_from_keys(sd: StateDict, where: str) -> dict[str, Any]:
    """Everything the key names and shapes decide."""
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
    if sd["pos_embed"].ndim != 3:
        raise UnsupportedModelError(f"{where}: pos_embed has shape {sd['pos_embed'].shape}, "
                                    "expected [1, tokens, D]")
    pos_len = int(sd["pos_embed"].shape[1])
    # timm stores pos_embed for prefix+patches, or (DeiT III, no_embed_class) patches only
    if pos_len > prefix and math.isqrt(pos_len - prefix) ** 2 == pos_len - prefix:
        no_embed_class, num_patches = False, pos_len - prefix
    elif pos_len and math.isqrt(pos_len) ** 2 == pos_len:
        no_embed_class, num_patches = True, pos_len
    else:
        raise UnsupportedModelError(f"{where}: pos_embed length {pos_len} is not a square grid "
                                    f"plus {prefix} prefix tokens")
    fc_norm = "fc_norm.weight" in sd
    if fc_norm and "norm.weight" in sd:
        raise UnsupportedModelError(f"{where}: both norm and fc_norm present")
    if sd["head.weight"].ndim != 2 or "blocks.0.mlp.fc1.weight" not in sd:
        raise UnsupportedModelError(f"{where}: head.weight must be [classes, D] and blocks need "
                                    "mlp.fc1")
    return {
        "embed_dim": embed_dim, "depth": depth, "patch_size": patch, "in_chans": in_chans,
        "img_size": math.isqrt(num_patches) * patch, "num_classes": int(sd["head.weight"].shape[0]),
        "num_features": embed_dim, "class_token": class_token, "distilled": distilled,
        "no_embed_class": no_embed_class, "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "layer_scale": "blocks.0.ls1.gamma" in sd, "fc_norm": fc_norm,
        "mlp_hidden": int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
    }


def _check_declared(args: dict, facts: dict, label: str, where: str) -> None:
    """A config that records what the keys decide must agree with them."""
    def disagree(key, said, have):
        hint = ""
        if label.endswith(".json"):
            hint = ("; a config.json beside several weight files applies to all of them: name "
                    "each one <weights stem>.config.json")
        return ModelFileError(f"{label}: {key} = {said!r}, but the weights ({where}) have "
                              f"{have!r}: it describes another model{hint}")

    for key, said in args.items():
        if said is None and key != "fc_norm":
            continue
        if key in facts and key not in ("fc_norm",):
            if said != facts[key]:
                raise disagree(key, said, facts[key])
        elif key == "mlp_ratio":
            hidden = facts["embed_dim"] * said  # inf for a finite but huge ratio (1e308)
            if not math.isfinite(hidden) or int(hidden) != facts["mlp_hidden"]:
                raise disagree(key, said, facts["mlp_hidden"] / facts["embed_dim"])
        elif key == "init_values":
            if bool(said) != facts["layer_scale"]:
                raise disagree("init_values (layer scale)", said, facts["layer_scale"])
        elif key == "fc_norm":
            # timm: fc_norm=None means "after pooling iff global_pool is avg/avgmax/max"
            pool = args.get("global_pool")
            effective = said if said is not None else (
                None if pool is None else pool in ("avg", "avgmax", "max"))
            if effective is not None and effective != facts["fc_norm"]:
                raise disagree("fc_norm (norm after pooling)", effective, facts["fc_norm"])


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
