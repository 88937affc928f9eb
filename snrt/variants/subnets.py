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

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import SubnetConfigError
from ..family import ViTConfig
from .common import SpaceSpecError
from .subnet_tables import SPACE_KINDS, UFO_VIT_B_TABLE, builtin_table, check_table, poa_hidden

__all__ = ["FAMILY_KINDS", "SPACE_KINDS", "SUPERNET", "UFO_VIT_B_TABLE", "SubPiece", "Subnet",
           "SubnetSpace", "SubnetVariant", "builtin_table", "check_table", "poa_hidden",
           "subnet_space_from_json"]

FAMILY_KINDS = ("subnets",)
SUPERNET = "super"  # the one anchor's name in a subnet bundle's manifest



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
        pieces = s.pieces()
        return SubnetVariant(s.id, s, sum(self.piece_flops(p) for p in pieces),
                             sum(self.piece_params(p) for p in pieces))

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
                "pieces": [p.id for p in v.subnet.pieces()], "flops": v.flops,
                "params": v.params}

    def piece_records(self) -> dict[str, dict]:
        return {p.id: {"kind": p.kind, "anchor": SUPERNET, "flops": self.piece_flops(p),
                       "input_shape": self.piece_io_shape(p, "in"),
                       "output_shape": self.piece_io_shape(p, "out")}
                for p in self.all_pieces()}

    def family_json(self) -> dict:
        return {"space": self.table}


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
