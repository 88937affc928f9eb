"""Elastic subnets of one supernet: spaces are tables of choices, every member runnable.

Two kinds of table (`--space poa`, `--space ufo`, or a JSON file holding one of these):

- POA ("Pre-training Once for All"): `{"kind": "poa", "widths": [...], "depths": [...],
  "head_dim": 64}`; subnet id `w{width}d{depth}` (e.g. `w192d5`). A width-W, depth-d subnet
  runs the supernet blocks `np.linspace(0, L-1, d).astype(int64)` on the first W channels,
  W/head_dim heads, MLP hidden width `int(W / D * H)`, with POA's `D/W` scale on the inputs of
  qkv and proj and fc1 (and `H/H_W` on fc2's), which is folded into the weights, never into the
  biases. Built-in `poa` for a supernet of width D and depth L: widths 64*ceil(D/2/64) .. D in
  steps of 64, depths ceil(L/2) .. L.
- UFO (VIMER-UFO 2.0): `{"kind": "ufo", "embed_dim", "max_depth", "head_dim", "depth_codes",
  "heads_codes", "mlp_codes", "embed_codes"}`; subnet id = the arch string: one depth code, then
  per block position (max_depth of them) three codes (heads, mlp ratio, embed dim); positions
  beyond the depth are `000`. Depth d runs the first d blocks, each with its first h*head_dim
  q/k/v channels and its first int(D * mlp_ratio) hidden units; the residual width stays D and
  nothing is rescaled. Built-in `ufo` = VIMER-UFO's ViT-B table (depth j/k/l = 10/11/12, heads
  1/2/3 = 12/11/10, mlp 1/2/3 = 4.0/3.5/3.0, embed 1 = 768).

Every subnet resolves to a route of pieces: an embedding, one block piece per block it runs,
and a head (the final LayerNorm, the class token, the classifier when the supernet has one,
else the features). Piece ids: POA `w{W}.embed`, `w{W}.block{i}`, `w{W}.head` (i = the
supernet's block index); UFO `embed`, `block{i}.h{heads}m{hidden}`, `head`. So the pieces of a
space are few (UFO ViT-B: 12 x 9 block pieces + 2) while its members are many (~10^11).

FLOPs follow fvcore's count of the sliced timm model (one multiply-add = one FLOP: the patch
convolution, every linear layer, the two attention matmuls, LayerNorm 5 per element (the final
one over all tokens); softmax, GELU, adds and scalings not counted); params are every parameter
of the sliced standalone model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import SubnetConfigError
from ..family import ViTConfig
from .common import SpaceSpecError

FAMILY_KINDS = ("subnets",)
SUPERNET = "super"  # the one anchor's name in a subnet bundle's manifest
SPACE_KINDS = ("poa", "ufo")

UFO_VIT_B_TABLE = {
    "kind": "ufo", "embed_dim": 768, "max_depth": 12, "head_dim": 64,
    "depth_codes": {"j": 10, "k": 11, "l": 12}, "heads_codes": {"1": 12, "2": 11, "3": 10},
    "mlp_codes": {"1": 4.0, "2": 3.5, "3": 3.0}, "embed_codes": {"1": 768},
}


@dataclass(frozen=True)
class SubPiece:
    """One step of a subnet's route. kind: embed | block | head."""

    kind: str
    width: int  # residual width W
    block: int = -1  # the supernet block it slices
    heads: int = 0
    hidden: int = 0
    rescale: bool = False  # POA: inputs scaled by D/W (fc2: H/hidden), folded into weights

    @property
    def id(self) -> str:
        if self.rescale:
            tail = "embed" if self.kind == "embed" else "head" if self.kind == "head" else \
                f"block{self.block}"
            return f"w{self.width}.{tail}"
        if self.kind == "block":
            return f"block{self.block}.h{self.heads}m{self.hidden}"
        return self.kind


@dataclass(frozen=True)
class Subnet:
    id: str
    width: int
    blocks: tuple[int, ...]  # supernet block indices, in order
    heads: tuple[int, ...]
    hidden: tuple[int, ...]
    rescale: bool

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def pieces(self) -> list[SubPiece]:
        W, r = self.width, self.rescale
        return ([SubPiece("embed", W, rescale=r)] +
                [SubPiece("block", W, b, h, m, r)
                 for b, h, m in zip(self.blocks, self.heads, self.hidden)] +
                [SubPiece("head", W, rescale=r)])


@dataclass
class SubnetVariant:
    id: str
    subnet: Subnet
    flops: int
    params: int
    index: int = -1
    accuracy: dict | None = None

    @property
    def cfg_id(self) -> int:
        return self.index


def _fail(sid: str, what: str) -> SubnetConfigError:
    return SubnetConfigError(f"subnet '{sid}': {what}")


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


@dataclass
class SubnetSpace:
    """The elastic subnets of one supernet (geometry `config`) under one table; `listed` are
    the subnets a bundle lists (any other member is runnable too)."""

    config: ViTConfig
    table: dict
    listed: list[SubnetVariant] = field(default_factory=list)
    head_dim: int = 64

    open_membership = True  # any member of the space resolves, listed or not
    variant_graphs = False  # no whole graph per variant: routes of pieces only
    anchor_names = [SUPERNET]
    pairs = ()
    num_stitch_layers = 0

    def __post_init__(self) -> None:
        self.table = check_table(self.table, self.config)
        self.head_dim = self.table["head_dim"]
        self._by_id = {v.id: v for v in self.listed}

    @property
    def kind(self) -> str:
        return self.table["kind"]

    # -- parsing -----------------------------------------------------------------------------
    def subnet(self, sid: str) -> Subnet:
        """Parse a subnet id; SubnetConfigError names the offending position and the allowed
        values."""
        if not isinstance(sid, str):
            raise SubnetConfigError(f"subnet id {sid!r}: expected a string")
        return self._poa(sid) if self.kind == "poa" else self._ufo(sid)

    def _poa(self, sid: str) -> Subnet:
        t, c = self.table, self.config
        m = re.fullmatch(r"w(\d+)d(\d+)", sid)
        if not m:
            raise _fail(sid, f"POA subnet ids are 'w{{width}}d{{depth}}' (e.g. "
                             f"'w{t['widths'][0]}d{t['depths'][0]}')")
        w, d = int(m.group(1)), int(m.group(2))
        if w not in t["widths"]:
            raise _fail(sid, f"width (the number after 'w') {w} is not in the space; "
                             f"allowed widths: {t['widths']}")
        if d not in t["depths"]:
            raise _fail(sid, f"depth (the number after 'd') {d} is not in the space; "
                             f"allowed depths: {t['depths']}")
        blocks = tuple(int(b) for b in np.linspace(0, c.depth - 1, d).astype(np.int64))
        return Subnet(sid, w, blocks, (w // self.head_dim,) * d,
                      (poa_hidden(w, c),) * d, True)

    def _ufo(self, arch: str) -> Subnet:
        t, c = self.table, self.config
        n = 1 + 3 * t["max_depth"]
        if len(arch) != n:
            raise _fail(arch, f"has {len(arch)} characters; this space's arch strings have "
                              f"exactly {n} (1 depth code + 3 per block position x "
                              f"{t['max_depth']})")
        dc = t["depth_codes"]
        if arch[0] not in dc:
            raise _fail(arch, f"position 0 (0-based; the depth code) is {arch[0]!r}; allowed: "
                              + ", ".join(f"'{k}' = {v} blocks" for k, v in dc.items()))
        depth = dc[arch[0]]
        heads, hidden = [], []
        names = (("heads_codes", "num_heads"), ("mlp_codes", "mlp_ratio"),
                 ("embed_codes", "embed_dim"))
        for b in range(t["max_depth"]):
            for j, (tab, what) in enumerate(names):
                pos = 1 + 3 * b + j
                ch = arch[pos]
                if b >= depth:
                    if ch != "0":
                        raise _fail(arch, f"position {pos} (0-based; block {b}, beyond depth "
                                          f"{depth}) is {ch!r}; blocks beyond the depth must be "
                                          "'000'")
                    continue
                if ch not in t[tab]:
                    raise _fail(arch, f"position {pos} (0-based; block {b} {what}) is {ch!r}; "
                                      "allowed: " + ", ".join(f"'{k}' = {v}"
                                                              for k, v in t[tab].items()))
            if b < depth:
                heads.append(t["heads_codes"][arch[1 + 3 * b]])
                hidden.append(int(c.embed_dim * t["mlp_codes"][arch[2 + 3 * b]]))
        return Subnet(arch, c.embed_dim, tuple(range(depth)), tuple(heads), tuple(hidden), False)

    def subnet_id(self, **choices) -> str:
        """POA: subnet_id(width=, depth=); UFO: subnet_id(depth=, heads=[...], mlp=[...])."""
        t = self.table
        if self.kind == "poa":
            return f"w{choices['width']}d{choices['depth']}"
        inv = {k: {v: c for c, v in t[k].items()} for k in t if k.endswith("_codes")}
        d = choices["depth"]
        e = next(iter(t["embed_codes"]))
        s = inv["depth_codes"][d] + "".join(
            inv["heads_codes"][h] + inv["mlp_codes"][float(m)] + e
            for h, m in zip(choices["heads"], choices["mlp"]))
        return s + "000" * (t["max_depth"] - d)

    def grid(self) -> list[str]:
        """Every member, for POA (the width x depth grid, narrowest first)."""
        if self.kind != "poa":
            raise SubnetConfigError("a UFO space is too large to list: sample it")
        return [f"w{w}d{d}" for w in self.table["widths"] for d in self.table["depths"]]

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """n distinct members, uniformly per choice (seeded); UFO: depth, then each block."""
        rng = np.random.default_rng(seed)
        t, out, seen = self.table, [], set()
        for _ in range(100 * n + 100):
            if len(out) == n:
                break
            if self.kind == "poa":
                sid = self.subnet_id(width=int(rng.choice(t["widths"])),
                                     depth=int(rng.choice(t["depths"])))
            else:
                d = int(rng.choice(sorted(t["depth_codes"].values())))
                hs = list(t["heads_codes"].values())
                ms = list(t["mlp_codes"].values())
                sid = self.subnet_id(depth=d, heads=[hs[rng.integers(len(hs))] for _ in range(d)],
                                     mlp=[ms[rng.integers(len(ms))] for _ in range(d)])
            if sid not in seen:
                seen.add(sid)
                out.append(sid)
        return out

    def extremes(self) -> list[str]:
        """The largest and the smallest member."""
        t = self.table
        if self.kind == "poa":
            return [f"w{max(t['widths'])}d{max(t['depths'])}",
                    f"w{min(t['widths'])}d{min(t['depths'])}"]
        big = max(t["depth_codes"].values())
        small = min(t["depth_codes"].values())
        return [self.subnet_id(depth=big, heads=[max(t["heads_codes"].values())] * big,
                               mlp=[max(t["mlp_codes"].values())] * big),
                self.subnet_id(depth=small, heads=[min(t["heads_codes"].values())] * small,
                               mlp=[min(t["mlp_codes"].values())] * small)]

    # -- lookup ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.listed)

    def __iter__(self):
        return iter(self.listed)

    def get(self, key) -> SubnetVariant:
        if isinstance(key, str) and key in self._by_id:
            return self._by_id[key]
        s = self.subnet(key)
        return SubnetVariant(s.id, s, self.flops(s), self.params(s))

    def add_listed(self, ids: list[str]) -> None:
        for sid in ids:
            if sid in self._by_id:
                continue
            v = self.get(sid)
            v.index = len(self.listed)
            self.listed.append(v)
            self._by_id[sid] = v

    def size(self) -> int:
        t = self.table
        if self.kind == "poa":
            return len(t["widths"]) * len(t["depths"])
        per = len(t["heads_codes"]) * len(t["mlp_codes"])
        return sum(per ** d for d in t["depth_codes"].values())

    # -- pieces and costs --------------------------------------------------------------------
    def all_pieces(self) -> list[SubPiece]:
        """Every piece some member runs: what makes the whole space runnable."""
        c, t = self.config, self.table
        out: list[SubPiece] = []
        if self.kind == "poa":
            for w in t["widths"]:
                used = sorted({int(b) for d in t["depths"]
                               for b in np.linspace(0, c.depth - 1, d).astype(np.int64)})
                h = poa_hidden(w, c)
                out += [SubPiece("embed", w, rescale=True)]
                out += [SubPiece("block", w, b, w // self.head_dim, h, True) for b in used]
                out += [SubPiece("head", w, rescale=True)]
            return out
        D = c.embed_dim
        out.append(SubPiece("embed", D))
        for b in range(max(t["depth_codes"].values())):
            for h in t["heads_codes"].values():
                for m in t["mlp_codes"].values():
                    out.append(SubPiece("block", D, b, h, int(D * m)))
        out.append(SubPiece("head", D))
        return out

    def piece_flops(self, p: SubPiece) -> int:
        c = self.config
        N, W = c.seq_len, p.width
        if p.kind == "embed":
            return c.num_patches * W * c.in_chans * c.patch_size ** 2
        if p.kind == "block":
            a = p.heads * self.head_dim
            return (N * W * 3 * a + 2 * N * N * a + N * a * W + 2 * N * W * p.hidden
                    + 2 * 5 * N * W)
        return 5 * N * W + W * c.num_classes

    def piece_params(self, p: SubPiece) -> int:
        c = self.config
        W = p.width
        if p.kind == "embed":
            return W * c.in_chans * c.patch_size ** 2 + W + W + c.seq_len * W
        if p.kind == "block":
            a = p.heads * self.head_dim
            n = (W * 3 * a + 3 * a) + (a * W + W) + (W * p.hidden + p.hidden) + \
                (p.hidden * W + W) + 4 * W
            return n + (2 * W if c.layer_scale else 0)
        return 2 * W + (W * c.num_classes + c.num_classes if c.num_classes else 0)

    def flops(self, s: Subnet) -> int:
        return sum(self.piece_flops(p) for p in s.pieces())

    def params(self, s: Subnet) -> int:
        return sum(self.piece_params(p) for p in s.pieces())

    def piece_io_shape(self, p: SubPiece, side: str) -> list:
        c = self.config
        if p.kind == "embed" and side == "in":
            return ["batch", c.in_chans, c.img_size, c.img_size]
        if p.kind == "head" and side == "out":
            return ["batch", c.num_classes or p.width]
        return ["batch", c.seq_len, p.width]

    @property
    def output_dims(self) -> list:
        """The bundle output's dims after the batch: classes, or "features" (headless: the
        class-token features, as wide as the subnet)."""
        return [self.config.num_classes or "features"]

    # -- what a bundle manifest must say -----------------------------------------------------
    def piece_ids(self, key) -> list[str]:
        return [p.id for p in self.get(key).subnet.pieces()]

    def variant_record(self, key) -> dict:
        v = self.get(key)
        return {"id": v.id, "anchors": [SUPERNET], "stitches": [],
                "pieces": self.piece_ids(v.id), "flops": v.flops, "params": v.params}

    def piece_records(self) -> dict[str, dict]:
        return {p.id: {"kind": p.kind, "anchor": SUPERNET, "flops": self.piece_flops(p),
                       "input_shape": self.piece_io_shape(p, "in"),
                       "output_shape": self.piece_io_shape(p, "out")}
                for p in self.all_pieces()}

    def family_json(self) -> dict:
        return {"space": self.table}


def poa_hidden(width: int, c: ViTConfig) -> int:
    """POA's MLP hidden width of a width-`width` subnet: int(width / D * H)."""
    return int(width / c.embed_dim * c.mlp_hidden)


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


def subnet_space_from_json(family: dict) -> SubnetSpace:
    """The subnet space a manifest's `family` section describes (one anchor, the supernet,
    plus `space`: the table)."""
    anchors = family["anchors"]
    if len(anchors) != 1 or anchors[0].get("name") != SUPERNET:
        raise SpaceSpecError("family.anchors", f"a subnet bundle has one anchor named "
                             f"'{SUPERNET}' (the supernet)")
    if "space" not in family:
        raise SpaceSpecError("family.space", "missing")
    c = ViTConfig.from_json(anchors[0]["config"])
    try:
        return SubnetSpace(c, family["space"])
    except SpaceSpecError as e:
        raise SpaceSpecError("family." + e.field, e.problem) from None
