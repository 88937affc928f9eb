"""Tables of elastic-subnet spaces (see snrt.variants.subnets): the built-in POA and UFO tables
and the checks of a table against the supernet's geometry."""

from __future__ import annotations

import math

from ..family import ViTConfig
from .common import SpaceSpecError

SPACE_KINDS = ("poa", "ufo")

UFO_VIT_B_TABLE = {
    "kind": "ufo", "embed_dim": 768, "max_depth": 12, "head_dim": 64,
    "depth_codes": {"j": 10, "k": 11, "l": 12}, "heads_codes": {"1": 12, "2": 11, "3": 10},
    "mlp_codes": {"1": 4.0, "2": 3.5, "3": 3.0}, "embed_codes": {"1": 768},
}


def poa_hidden(width: int, c: ViTConfig) -> int:
    """POA's MLP hidden width of a width-`width` subnet: int(width / D * H)."""
    return int(width / c.embed_dim * c.mlp_hidden)


def _int_list(x, fld: str, lo: int) -> list[int]:
    if not isinstance(x, list) or not x or any(type(v) is not int or v < lo for v in x):
        raise SpaceSpecError(fld, f"expected a non-empty list of integers >= {lo}, got {x!r}")
    if len(set(x)) != len(x):
        raise SpaceSpecError(fld, f"repeated values in {x}")
    return sorted(x)


def _codes(x, fld: str, typ) -> dict:
    if not isinstance(x, dict) or not x:
        raise SpaceSpecError(fld, f"expected a non-empty object of code -> value, got {x!r}")
    out = {}
    for k, v in x.items():
        if not isinstance(k, str) or len(k) != 1 or k == "0":
            raise SpaceSpecError(fld, f"code {k!r} must be one character other than '0' "
                                 "(the code of an absent block)")
        ok = (type(v) is int and v > 0) if typ is int else \
            (type(v) in (int, float) and type(v) is not bool and v > 0)
        if not ok:
            raise SpaceSpecError(f"{fld}.{k}", f"expected a positive {typ.__name__}, got {v!r}")
        out[k] = typ(v)
    if len(set(out.values())) != len(out):
        raise SpaceSpecError(fld, f"two codes for one value in {x}")
    return out


def builtin_table(name: str, c: ViTConfig, head_dim: int = 64) -> dict:
    """The built-in `poa` or `ufo` table for a supernet of geometry `c`."""
    if name == "poa":
        lo = head_dim * math.ceil(c.embed_dim / 2 / head_dim)
        return {"kind": "poa", "widths": list(range(lo, c.embed_dim + 1, head_dim)),
                "depths": list(range(math.ceil(c.depth / 2), c.depth + 1)),
                "head_dim": head_dim}
    if name == "ufo":
        if (c.embed_dim, c.depth) != (768, 12):
            raise SpaceSpecError("space", f"the built-in 'ufo' space is VIMER-UFO's ViT-B table "
                                 f"(embed 768, 12 blocks); this supernet has embed "
                                 f"{c.embed_dim}, {c.depth} blocks: give a space JSON file")
        return {**UFO_VIT_B_TABLE}
    raise SpaceSpecError("space", f"unknown built-in space {name!r}; built-in: "
                         f"{list(SPACE_KINDS)}, or a JSON file")


def check_table(t, c: ViTConfig) -> dict:
    """A space table checked against the supernet geometry (normalised copy)."""
    if not isinstance(t, dict):
        raise SpaceSpecError("space", f"expected an object, got {type(t).__name__}")
    kind = t.get("kind")
    hd = t.get("head_dim", 64)
    if type(hd) is not int or hd < 1 or c.embed_dim % hd:
        raise SpaceSpecError("space.head_dim", f"{hd!r} must be a positive int dividing the "
                             f"supernet's embed dim {c.embed_dim}")
    if kind == "poa":
        unknown = set(t) - {"kind", "widths", "depths", "head_dim"}
        if unknown:
            raise SpaceSpecError("space", f"unknown POA fields {sorted(unknown)}")
        widths = _int_list(t.get("widths"), "space.widths", 1)
        depths = _int_list(t.get("depths"), "space.depths", 1)
        for w in widths:
            if w % hd or w > c.embed_dim:
                raise SpaceSpecError("space.widths", f"{w} must be a multiple of head_dim {hd} "
                                     f"and at most the supernet's width {c.embed_dim}")
        if depths[-1] > c.depth:
            raise SpaceSpecError("space.depths", f"{depths[-1]} exceeds the supernet's "
                                 f"{c.depth} blocks")
        return {"kind": "poa", "widths": widths, "depths": depths, "head_dim": hd}
    if kind == "ufo":
        fields = ("kind", "embed_dim", "max_depth", "head_dim", "depth_codes", "heads_codes",
                  "mlp_codes", "embed_codes")
        unknown = set(t) - set(fields)
        if unknown:
            raise SpaceSpecError("space", f"unknown UFO fields {sorted(unknown)}")
        if t.get("embed_dim") != c.embed_dim:
            raise SpaceSpecError("space.embed_dim", f"{t.get('embed_dim')!r}, but the supernet "
                                 f"is {c.embed_dim} wide (UFO keeps the embedding width)")
        md = t.get("max_depth")
        if type(md) is not int or not 1 <= md <= c.depth:
            raise SpaceSpecError("space.max_depth", f"{md!r} must be in 1..{c.depth}")
        dc = _codes(t.get("depth_codes"), "space.depth_codes", int)
        hc = _codes(t.get("heads_codes"), "space.heads_codes", int)
        mc = _codes(t.get("mlp_codes"), "space.mlp_codes", float)
        ec = _codes(t.get("embed_codes"), "space.embed_codes", int)
        for k, d in dc.items():
            if d > md:
                raise SpaceSpecError(f"space.depth_codes.{k}", f"{d} exceeds max_depth {md}")
        for k, h in hc.items():
            if h * hd > c.embed_dim:
                raise SpaceSpecError(f"space.heads_codes.{k}", f"{h} heads of {hd} exceed the "
                                     f"supernet's width {c.embed_dim}")
        for k, m in mc.items():
            if int(c.embed_dim * m) > c.mlp_hidden:
                raise SpaceSpecError(f"space.mlp_codes.{k}", f"ratio {m} gives "
                                     f"{int(c.embed_dim * m)} hidden units; the supernet has "
                                     f"{c.mlp_hidden}")
        for k, e in ec.items():
            if e != c.embed_dim:
                raise SpaceSpecError(f"space.embed_codes.{k}", f"{e}: UFO keeps the embedding "
                                     f"width {c.embed_dim}")
        return {"kind": "ufo", "embed_dim": c.embed_dim, "max_depth": md, "head_dim": hd,
                "depth_codes": dc, "heads_codes": hc, "mlp_codes": mc, "embed_codes": ec}
    raise SpaceSpecError("space.kind", f"{kind!r}; known: {list(SPACE_KINDS)}")


