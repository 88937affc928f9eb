"""Families from files: timm ViT/DeiT weights (one file per anchor, with timm's config.json when
it is beside them) or one SN-Net checkpoint (anchors + stitching layers).

Metadata snrt reads from a safetensors file's `__metadata__` (all values are strings; JSON where
noted):

- `snrt.config` (JSON object): `num_heads`, `global_pool` ("token" | "avg"), `norm_eps`; any
  other ViTConfig field is checked against the weights (timm_vit.SNRT_CONFIG_KEYS).
- `snrt.anchor_name`: the anchor's name (anchor files).
- SN-Net checkpoints: `snrt.family_name`, `snrt.anchor_names` (JSON list of strings),
  `snrt.num_heads` (JSON list of ints, one per anchor), `snrt.preprocess` (JSON object of
  Preprocess fields), `snrt.labels` (JSON list of strings); `snrt.config` applies to every anchor.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..fileio import sha256_file
from ..weights_io import StateDict, read_state_dict, unwrap_checkpoint
from .model import IMAGENET_MEAN, IMAGENET_STD, Anchor, Family, Preprocess, StitchLayer, ViTConfig
from .timm_config import HubConfig, find_hub_config, read_hub_config
from .timm_vit import config_from_state_dict, parse_snrt_config

log = logging.getLogger(__name__)

_DEIT_NAMES = {192: "ti", 384: "s", 768: "b", 1024: "l", 1280: "h"}


def default_anchor_name(cfg: ViTConfig, taken: set[str]) -> str:
    name = _DEIT_NAMES.get(cfg.embed_dim, f"d{cfg.embed_dim}")
    while name in taken:
        name += "_"
    return name


def load_anchor(path: str | os.PathLike, *, name: str | None = None,
                num_heads: int | None = None, global_pool: str | None = None,
                taken: set[str] | None = None) -> Anchor:
    """Read one timm ViT/DeiT weights file (and its config.json, when present) as an Anchor."""
    return _load_anchor(path, name=name, num_heads=num_heads, global_pool=global_pool,
                        taken=taken)[0]


def _load_anchor(path, *, name=None, num_heads=None, global_pool=None,
                 taken=None) -> tuple[Anchor, HubConfig | None]:
    path = Path(path)
    sd, meta = read_state_dict(path)
    sd = unwrap_checkpoint(sd)
    hub_path = find_hub_config(path)
    hub = read_hub_config(hub_path) if hub_path else None
    cfg = config_from_state_dict(sd, num_heads=num_heads, global_pool=global_pool,
                                 where=str(path), metadata=meta, hub_config=hub)
    name = name or meta.get("snrt.anchor_name") or default_anchor_name(cfg, taken or set())
    source = {"path": path.name, "sha256": sha256_file(path)}
    if hub is not None:
        source.update(config=hub.path.name, config_sha256=sha256_file(hub.path))
        if hub.preprocess and hub.preprocess.get("img_size", cfg.img_size) != cfg.img_size:
            raise ModelFileError(f"{hub.path}: pretrained_cfg input_size is "
                                 f"{hub.preprocess['img_size']}px, the weights {path} take "
                                 f"{cfg.img_size}px images")
        if hub.labels is not None and len(hub.labels) != cfg.num_classes:
            raise ModelFileError(f"{hub.path}: {len(hub.labels)} label_names for "
                                 f"{cfg.num_classes} classes")
    return Anchor(name=name, config=cfg, weights=sd, source=source), hub


def family_from_anchor_files(paths: list[str | os.PathLike], *, name: str = "family",
                             names: list[str] | None = None,
                             num_heads: list[int] | None = None,
                             global_pool: str | None = None,
                             preprocess: Preprocess | None = None) -> Family:
    """A family of timm anchors, one weights file each (any order: sorted by width).

    Preprocessing: `preprocess` if given, else the smallest anchor's timm config.json
    (pretrained_cfg), else ImageNet's. Labels: the config.json's `label_names`, if any."""
    for label, lst in (("names", names), ("num_heads", num_heads)):
        if lst is not None and len(lst) != len(paths):
            raise UnsupportedModelError(f"{len(lst)} {label} for {len(paths)} anchors")
    loaded: list[tuple[Anchor, HubConfig | None]] = []
    for i, p in enumerate(paths):
        loaded.append(_load_anchor(p, name=names[i] if names else None,
                                   num_heads=num_heads[i] if num_heads else None,
                                   global_pool=global_pool,
                                   taken={a.name for a, _ in loaded}))
    loaded.sort(key=lambda ah: ah[0].config.embed_dim)
    anchors = [a for a, _ in loaded]
    hubs = [(a, h) for a, h in loaded if h is not None]
    if preprocess is None:
        preprocess = _default_preprocess(anchors)
        recorded = [(a, h.preprocess) for a, h in hubs if h.preprocess]
        if recorded:
            preprocess = Preprocess(**{**preprocess.__dict__, **recorded[0][1]})
            others = [a.name for a, p in recorded[1:]
                      if Preprocess(**{**preprocess.__dict__, **p}) != preprocess]
            if others:
                log.warning("anchors %s record other preprocessing than '%s' in their "
                            "config.json; a family has one: using '%s''s", others,
                            recorded[0][0].name, recorded[0][0].name)
    labels = next((h.labels for _, h in hubs if h.labels), None)
    return Family(name=name, anchors=anchors, preprocess=preprocess, labels=labels,
                  sources=[a.source for a in anchors])


def _default_preprocess(anchors: list[Anchor]) -> Preprocess:
    c = anchors[0].config
    return Preprocess(img_size=c.img_size, channels="RGB" if c.in_chans == 3 else "L",
                      mean=IMAGENET_MEAN if c.in_chans == 3 else (0.5,) * c.in_chans,
                      std=IMAGENET_STD if c.in_chans == 3 else (0.5,) * c.in_chans)


def _meta_json(meta: dict[str, str], key: str, path: Path, check, what: str):
    """A JSON-valued metadata entry, checked by `check(value) -> bool`; None when absent."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):
        raise ModelFileError(f"{path}: metadata '{key}' is not JSON") from None
    if not check(value):
        raise ModelFileError(f"{path}: metadata '{key}' must be {what}, not {meta[key][:80]!r}")
    return value


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def family_from_snnet_checkpoint(path: str | os.PathLike, *, name: str | None = None,
                                 names: list[str] | None = None,
                                 num_heads: list[int] | None = None,
                                 global_pool: str | None = None) -> Family:
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
    for label, lst in (("names", names), ("num_heads", num_heads)):
        if lst is not None and len(lst) != n:
            raise UnsupportedModelError(f"{path} has {n} anchors, but {len(lst)} {label} were "
                                        "given")
    meta_names = _meta_json(meta, "snrt.anchor_names", path,
                            lambda v: _str_list(v) and len(v) == n, f"a list of {n} strings")
    meta_heads = _meta_json(meta, "snrt.num_heads", path,
                            lambda v: isinstance(v, list) and len(v) == n and all(
                                type(h) is int and h > 0 for h in v),
                            f"a list of {n} positive integers")
    shared = parse_snrt_config(meta, str(path))
    names = names or meta_names
    anchors: list[Anchor] = []
    for i in range(n):
        where = f"{path} anchor {i}"
        meta_cfg = {**shared, **({"num_heads": meta_heads[i]} if meta_heads else {})}
        cfg = config_from_state_dict(anchor_sds[i], num_heads=num_heads[i] if num_heads else None,
                                     global_pool=global_pool, where=where, snrt_config=meta_cfg)
        aname = names[i] if names else default_anchor_name(cfg, {a.name for a in anchors})
        anchors.append(Anchor(aname, cfg, anchor_sds[i], {"path": path.name, "anchor": i}))
    layers = _stitch_layers(stitch, anchors, path)
    fam_name = name or meta.get("snrt.family_name") or path.stem
    pre = _meta_json(meta, "snrt.preprocess", path, lambda v: isinstance(v, dict),
                     "a JSON object of Preprocess fields")
    if pre is not None:
        try:
            pre = Preprocess.from_json(pre)
        except (TypeError, KeyError, ValueError) as e:
            raise ModelFileError(f"{path}: metadata 'snrt.preprocess' is not a Preprocess "
                                 f"({e})") from None
    labels = _meta_json(meta, "snrt.labels", path, _str_list, "a list of strings")
    return Family(fam_name, anchors, layers, pre or _default_preprocess(anchors), labels,
                  sources=[{"path": path.name, "sha256": sha256_file(path)}])


def _stitch_layers(stitch: dict, anchors: list[Anchor],
                   path: Path) -> dict[tuple[int, int], list[StitchLayer]]:
    n = len(anchors)
    n_pairs = len({p for p, _ in stitch})
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
    return layers
