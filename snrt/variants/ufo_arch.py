"""Elastic ViT subnets (UFO arch strings): parsing, FLOPs/params estimates, and predictor features.

An elastic ViT supernet (VIMER-UFO 2.0 ViT-B, the CCF BDCI 2022 / CVPR 2022 NAS track 2 data)
runs a *subnet*: the first `depth` blocks of the supernet, each with its own number of attention
heads and MLP ratio, at one embedding width. Such a subnet is written as a 37-character arch
string (see ../shared/reference/ufo/README.md):

- char 0: depth, ``j``/``k``/``l`` = 10/11/12 blocks;
- then 12 groups of 3 characters, one per block: num_heads (``1``/``2``/``3`` = 12/11/10),
  mlp_ratio (``1``/``2``/``3`` = 4.0/3.5/3.0), embed_dim (``1`` = 768);
  blocks beyond the depth are ``000``.

`ElasticSubnet` is the parsed form; `SubnetSpace` holds the code tables so that another elastic
space (other depths or choices) is a new table, not new parsing code.

FLOPs follow fvcore's convention like `snrt.variants` (one multiply-add = one FLOP; linear layers,
the patch-embedding convolution, the two attention matmuls and LayerNorm (5 per element)
counted; softmax, GELU and residual adds not counted). Assumption for elastic heads: the head
width stays 64 (ViT-B's 768 / 12), so a block with h heads has q/k/v width h * 64 (AutoFormer /
UFO style), while the residual stream keeps `embed_dim`. The task heads of the multi-task
supernet are not counted unless `num_classes` is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "UFO_TASKS", "UFO_VIT_B", "ElasticSubnet", "SubnetSpace", "UfoRankData", "encode_gpnas",
    "encode_onehot", "read_ufo_ranks", "structure_features",
]


@dataclass(frozen=True, eq=False)
class SubnetSpace:
    """Code tables and geometry of one elastic ViT search space."""

    name: str
    depth_codes: dict[str, int]  # arch char 0 -> number of blocks
    heads_codes: dict[str, int]  # per-block char 1 -> num_heads
    mlp_codes: dict[str, float]  # per-block char 2 -> mlp_ratio
    embed_codes: dict[str, int]  # per-block char 3 -> embed_dim
    max_depth: int
    absent: str = "0"  # the code of every character of a block beyond the depth
    # geometry of the FLOPs/params estimate
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    head_dim: int = 64

    @property
    def arch_length(self) -> int:
        return 1 + 3 * self.max_depth

    @property
    def depths(self) -> list[int]:
        return sorted(self.depth_codes.values())

    @property
    def heads_choices(self) -> list[int]:
        return list(self.heads_codes.values())

    @property
    def mlp_choices(self) -> list[float]:
        return list(self.mlp_codes.values())

    @property
    def embed_choices(self) -> list[int]:
        return list(self.embed_codes.values())

    @property
    def num_tokens(self) -> int:
        """Sequence length: patches plus the class token (197 for ViT-B/16 at 224 px)."""
        return (self.img_size // self.patch_size) ** 2 + 1

    def size(self) -> int:
        """Number of distinct subnets (9^10 + 9^11 + 9^12 for UFO with one embed_dim)."""
        per_block = len(self.heads_codes) * len(self.mlp_codes) * len(self.embed_codes)
        return sum(per_block ** d for d in self.depths)


UFO_VIT_B = SubnetSpace(
    name="ufo-vit-b",
    depth_codes={"j": 10, "k": 11, "l": 12},
    heads_codes={"1": 12, "2": 11, "3": 10},
    mlp_codes={"1": 4.0, "2": 3.5, "3": 3.0},
    embed_codes={"1": 768},
    max_depth=12,
)

UFO_TASKS = ("cplfw", "market1501", "dukemtmc", "msmt17", "veri", "vehicleid", "veriwild", "sop")


def _code_of(table: dict, value, what: str) -> str:
    for code, v in table.items():
        if v == value:
            return code
    raise ValueError(f"{what} {value!r} has no code in this space; choices: {list(table.values())}")


@dataclass(frozen=True)
class ElasticSubnet:
    """One subnet of an elastic ViT: the first `depth` blocks, each with its heads and MLP ratio.

    Construction checks shapes and ranges; `from_arch` / `to_arch` additionally check that every
    value is a choice of the `SubnetSpace`.
    """

    depth: int
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    embed_dim: int = 768

    def __post_init__(self) -> None:
        # accept lists from callers, keep the dataclass hashable
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        object.__setattr__(self, "mlp_ratio", tuple(float(m) for m in self.mlp_ratio))
        if not isinstance(self.depth, (int, np.integer)) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, got {self.depth!r}")
        if len(self.num_heads) != self.depth or len(self.mlp_ratio) != self.depth:
            raise ValueError(
                f"depth {self.depth} needs {self.depth} num_heads and mlp_ratio values, got "
                f"{len(self.num_heads)} and {len(self.mlp_ratio)}")
        if min(self.num_heads) < 1 or min(self.mlp_ratio) <= 0 or self.embed_dim < 1:
            raise ValueError(f"num_heads, mlp_ratio and embed_dim must be positive: {self}")

    # -- arch string -------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: str, space: SubnetSpace = UFO_VIT_B) -> ElasticSubnet:
        """Parse an arch string such as ``'j111231321311311221231121111231000000'``."""
        if not isinstance(arch, str):
            raise TypeError(f"arch must be a str, got {type(arch).__name__}")
        if len(arch) != space.arch_length:
            raise ValueError(f"arch string {arch!r} has {len(arch)} characters; "
                             f"{space.name} arch strings have {space.arch_length}")
        if arch[0] not in space.depth_codes:
            raise ValueError(f"arch string {arch!r}: unknown depth code {arch[0]!r}; "
                             f"known: {space.depth_codes}")
        depth = space.depth_codes[arch[0]]
        if depth > space.max_depth:
            raise ValueError(f"depth code {arch[0]!r} = {depth} exceeds {space.max_depth} blocks")
        heads, mlps, embeds = [], [], []
        for b in range(space.max_depth):
            group = arch[1 + 3 * b: 4 + 3 * b]
            if b >= depth:
                if group != space.absent * 3:
                    raise ValueError(
                        f"arch string {arch!r}: block {b} is beyond depth {depth} and must be "
                        f"{space.absent * 3!r}, got {group!r}")
                continue
            for ch, table, out, what in ((group[0], space.heads_codes, heads, "num_heads"),
                                         (group[1], space.mlp_codes, mlps, "mlp_ratio"),
                                         (group[2], space.embed_codes, embeds, "embed_dim")):
                if ch not in table:
                    raise ValueError(f"arch string {arch!r}: block {b} has {what} code {ch!r}; "
                                     f"known: {table}")
                out.append(table[ch])
        if len(set(embeds)) != 1:
            raise ValueError(f"arch string {arch!r}: blocks disagree on embed_dim {embeds}; "
                             "a ViT has one residual width")
        return cls(depth, tuple(heads), tuple(mlps), embeds[0])

    def to_arch(self, space: SubnetSpace = UFO_VIT_B) -> str:
        """The arch string; raises ValueError for values the space has no code for."""
        if self.depth > space.max_depth:
            raise ValueError(f"depth {self.depth} exceeds {space.name}'s {space.max_depth} blocks")
        out = [_code_of(space.depth_codes, self.depth, "depth")]
        e = _code_of(space.embed_codes, self.embed_dim, "embed_dim")
        for h, m in zip(self.num_heads, self.mlp_ratio):
            out.append(_code_of(space.heads_codes, h, "num_heads")
                       + _code_of(space.mlp_codes, m, "mlp_ratio") + e)
        out.append(space.absent * 3 * (space.max_depth - self.depth))
        return "".join(out)

    # -- costs -------------------------------------------------------------------------------
    def block_flops(self, b: int, space: SubnetSpace = UFO_VIT_B) -> int:
        """fvcore FLOPs of block `b`: qkv, q@k^T and attn@v, proj, MLP, two LayerNorms."""
        n, d = space.num_tokens, self.embed_dim
        a = self.num_heads[b] * space.head_dim  # attention width
        hidden = round(self.mlp_ratio[b] * d)
        return n * d * 3 * a + 2 * n * n * a + n * a * d + 2 * n * d * hidden + 2 * 5 * n * d

    def flops(self, space: SubnetSpace = UFO_VIT_B, num_classes: int = 0) -> int:
        """fvcore FLOPs of one image: patch embedding, blocks, final norm, optional class head."""
        n, d = space.num_tokens, self.embed_dim
        embed = (n - 1) * d * space.in_chans * space.patch_size ** 2
        blocks = sum(self.block_flops(b, space) for b in range(self.depth))
        return embed + blocks + 5 * n * d + d * num_classes

    def block_params(self, b: int, space: SubnetSpace = UFO_VIT_B) -> int:
        """Parameters of block `b`: qkv, proj, MLP (weights and biases), two LayerNorms."""
        d = self.embed_dim
        a = self.num_heads[b] * space.head_dim
        hidden = round(self.mlp_ratio[b] * d)
        return (d * 3 * a + 3 * a) + (a * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d

    def params(self, space: SubnetSpace = UFO_VIT_B, num_classes: int = 0) -> int:
        """Parameters: patch embedding, class token, position embedding, blocks, final norm and
        (when num_classes > 0) a linear head, as timm counts a VisionTransformer."""
        n, d = space.num_tokens, self.embed_dim
        embed = d * space.in_chans * space.patch_size ** 2 + d + d + n * d
        head = d * num_classes + num_classes if num_classes else 0
        return embed + sum(self.block_params(b, space) for b in range(self.depth)) + 2 * d + head


# -- features ---------------------------------------------------------------------------------
def _as_subnets(subnets: Sequence[ElasticSubnet | str], space: SubnetSpace) -> list[ElasticSubnet]:
    return [s if isinstance(s, ElasticSubnet) else ElasticSubnet.from_arch(s, space)
            for s in subnets]


def encode_onehot(subnets: Sequence[ElasticSubnet | str], space: SubnetSpace = UFO_VIT_B
                  ) -> np.ndarray:
    """One-hot columns: depth, then per block position its num_heads and its mlp_ratio choice
    (and embed_dim when the space has more than one). A block beyond the depth is all zeros.

    For UFO: 3 + 12 * (3 + 3) = 75 columns. A linear model on these columns is the additive
    per-position model; the dot product of two rows counts the attributes they share.
    """
    subnets = _as_subnets(subnets, space)
    depths = space.depths
    tables = [space.heads_choices, space.mlp_choices]
    if len(space.embed_choices) > 1:
        tables.append(space.embed_choices)
    per_block = sum(len(t) for t in tables)
    X = np.zeros((len(subnets), len(depths) + space.max_depth * per_block))
    for i, s in enumerate(subnets):
        X[i, depths.index(s.depth)] = 1
        for b in range(s.depth):
            col = len(depths) + b * per_block
            values = [s.num_heads[b], s.mlp_ratio[b], s.embed_dim][:len(tables)]
            for table, v in zip(tables, values):
                if v not in table:
                    raise ValueError(f"block {b} value {v!r} is not a choice {table} of "
                                     f"{space.name}")
                X[i, col + table.index(v)] = 1
                col += len(table)
    return X


def encode_gpnas(subnets: Sequence[ElasticSubnet | str], space: SubnetSpace = UFO_VIT_B
                 ) -> np.ndarray:
    """The encoding of the competition's public GP-NAS baseline (100 columns for UFO).

    Per block its num_heads and mlp_ratio codes, each as an overlapping 4-slot code
    (first choice 1100, second 0110, third 0011, absent 0000); the last two block positions
    (10 and 11) get a fifth slot set when the block is absent. The depth character and the
    embed_dim codes are not encoded (depth is implied by the absent blocks).
    """
    subnets = _as_subnets(subnets, space)
    codes = {0: [1, 1, 0, 0], 1: [0, 1, 1, 0], 2: [0, 0, 1, 1]}
    rows = []
    for s in subnets:
        row: list[int] = []
        for b in range(space.max_depth):
            last = b >= space.max_depth - 2
            for table, values in ((space.heads_choices, s.num_heads),
                                  (space.mlp_choices, s.mlp_ratio)):
                if b < s.depth:
                    slot = codes[table.index(values[b])] + ([0] if last else [])
                else:
                    slot = [0, 0, 0, 0] + ([1] if last else [])
                row += slot
        rows.append(row)
    return np.asarray(rows, dtype=float)


STRUCTURE_FEATURES = ("gflops", "mparams", "depth", "sum_heads", "sum_mlp_ratio")


def structure_features(subnets: Sequence[ElasticSubnet | str], space: SubnetSpace = UFO_VIT_B
                       ) -> np.ndarray:
    """Coarse size features, columns `STRUCTURE_FEATURES`: GFLOPs, M params, depth, total heads,
    total MLP ratio. Inputs for cost (latency) predictors rather than accuracy rankers."""
    subnets = _as_subnets(subnets, space)
    return np.asarray([[s.flops(space) / 1e9, s.params(space) / 1e6, s.depth,
                        sum(s.num_heads), sum(s.mlp_ratio)] for s in subnets], dtype=float)


# -- the UFO rank data ------------------------------------------------------------------------
@dataclass
class UfoRankData:
    """Subnets and their rank (0 = best) on each task, in file order."""

    names: list[str]
    archs: list[str]
    subnets: list[ElasticSubnet]
    ranks: np.ndarray  # (n, len(tasks)) ints
    tasks: tuple[str, ...] = field(default=UFO_TASKS)


def read_ufo_ranks(path: str | os.PathLike, space: SubnetSpace = UFO_VIT_B) -> UfoRankData:
    """Read CCF_UFO_train.json (``{"arch1": {"arch": ..., "<task>_rank": r, ...}, ...}``)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read UFO rank file {path}: {e}") from e
    names, archs, ranks = [], [], []
    for name, entry in raw.items():
        try:
            archs.append(entry["arch"])
            ranks.append([int(entry[f"{t}_rank"]) for t in UFO_TASKS])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: entry {name!r} lacks 'arch' or a '<task>_rank' for "
                             f"tasks {UFO_TASKS}: {e}") from e
        names.append(name)
    subnets = [ElasticSubnet.from_arch(a, space) for a in archs]
    return UfoRankData(names, archs, subnets, np.asarray(ranks, dtype=int))
