"""VariantSpace: every network a family can run, each resolved to a route of pieces.

SN-Net's enumeration (`paired_stitching` + `get_stitch_configs` in its DeiT code): a window of
`window` blocks slides with `stride` over the depth; every (j, k) pair of block indices inside a
window is a stitching position (front blocks 0..j, a stitching layer, end blocks k..), and all
positions first seen in the same window share one stitching layer. Variants are listed in SN-Net's
order: the anchors, then each anchor pair's positions. For DeiT-Ti/S/B with window 2, stride 1 and
nearest stitching that is 3 + 34 + 34 = 71 variants whose index is SN-Net's `cfg_id`.

FLOPs follow fvcore's convention (one multiply-add = one FLOP; linear layers, convolutions,
matmuls and LayerNorm (5 per element) counted; softmax, GELU, adds not counted). Parameter counts
follow SN-Net's `get_model_size`: an anchor counts all its parameters; a stitched route counts the
front patch embedding (not its class token or position embedding), the blocks it runs, the
stitching layer, and the end anchor's head and final norm.

Piece ids ("ti.embed", "ti.block3", "ti>s.stitch2", "s.head_nonorm") are named here, beside the
Piece, so that the exporter writes them and the bundle re-derives a variant's chain from its id
without importing the exporter: `VariantSpace.variant_record(id)` is what a manifest's variant
record must say (route, pieces, FLOPs, params), `piece_records()` what each piece record must say,
and `variant_space_from_json` rebuilds the space from a manifest's `family` section. Another kind
of space plugs in by providing the same three.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

from ..errors import UnknownVariantError
from ..family import ViTConfig
from .common import SpaceSpecError


@dataclass(frozen=True)
class Stitch:
    """Leave anchor `front` after its block `front_block`, enter `end` at its block `end_block`."""

    front: int
    end: int
    front_block: int
    end_block: int
    layer: int  # index of the shared stitching layer of this anchor pair


@dataclass(frozen=True)
class Piece:
    """One step of a route. kind: embed | block | stitch | head."""

    kind: str
    anchor: int  # for stitch: the front anchor
    index: int = 0  # block index, or stitching layer id
    end: int = -1  # stitch: end anchor
    norm: bool = True  # head: apply the final LayerNorm (anchors do, stitched routes do not)


def piece_id(p: Piece, anchor_names: list[str]) -> str:
    """The stable, readable id of a piece: "ti.embed", "ti.block3", "ti>s.stitch2", "s.head"."""
    a = anchor_names[p.anchor]
    if p.kind == "embed":
        return f"{a}.embed"
    if p.kind == "block":
        return f"{a}.block{p.index}"
    if p.kind == "stitch":
        return f"{a}>{anchor_names[p.end]}.stitch{p.index}"
    return f"{a}.head" if p.norm else f"{a}.head_nonorm"


def piece_io_shape(p: Piece, configs: list[ViTConfig], side: str) -> list:
    """Symbolic shape of a piece's input ('in') or output ('out'): ["batch", ...]."""
    c = configs[p.anchor]
    if p.kind == "embed" and side == "in":
        return ["batch", c.in_chans, c.img_size, c.img_size]
    if p.kind == "head" and side == "out":
        return ["batch", c.num_classes]
    width = configs[p.end].embed_dim if p.kind == "stitch" and side == "out" else c.embed_dim
    return ["batch", c.seq_len, width]


@dataclass(frozen=True)
class Route:
    anchors: tuple[int, ...]
    stitches: tuple[Stitch, ...] = ()

    @property
    def is_anchor(self) -> bool:
        return not self.stitches

    def pieces(self, depth: int) -> list[Piece]:
        return list(_route_pieces(self, depth))

    def _pieces(self, depth: int) -> tuple[Piece, ...]:
        out = [Piece("embed", self.anchors[0])]
        start = 0
        for i, a in enumerate(self.anchors):
            stop = self.stitches[i].front_block + 1 if i < len(self.stitches) else depth
            out += [Piece("block", a, b) for b in range(start, stop)]
            if i < len(self.stitches):
                s = self.stitches[i]
                out.append(Piece("stitch", s.front, s.layer, end=s.end))
                start = s.end_block
        out.append(Piece("head", self.anchors[-1], norm=self.is_anchor))
        return tuple(out)


@functools.lru_cache(maxsize=4096)
def _route_pieces(route: Route, depth: int) -> tuple[Piece, ...]:
    return route._pieces(depth)  # routes are frozen: FLOPs, params and ids all walk them


@dataclass
class Variant:
    index: int  # position in the space; equals SN-Net's cfg_id for SN-Net enumerations
    id: str  # readable, stable: "ti", "ti>s@7:7"
    route: Route
    flops: int
    params: int
    accuracy: dict | None = None  # {"top1": %, "dataset": ...} once measured

    @property
    def cfg_id(self) -> int:
        return self.index


def paired_stitching(depth: int, window: int = 2, stride: int = 1
                     ) -> tuple[list[tuple[int, int]], list[int], int]:
    """SN-Net's positions (j, k), the layer each uses, and the number of stitching layers."""
    if not (1 <= window <= depth and stride >= 1):
        raise ValueError(f"window must be in 1..{depth} and stride >= 1, got {window}, {stride}")
    positions: list[tuple[int, int]] = []
    layer_of: list[int] = []
    layer = -1
    for start in range(0, depth, stride):
        ids = range(start, min(start + window, depth))
        new = [(j, k) for j in ids for k in ids if (j, k) not in positions]
        if new:
            layer += 1
            positions += new
            layer_of += [layer] * len(new)
    return positions, layer_of, layer + 1


@dataclass
class VariantSpace:
    """All variants of a family, in SN-Net order, with FLOPs and params."""

    anchor_names: list[str]
    configs: list[ViTConfig]
    window: int = 2
    stride: int = 1
    nearest: bool = True
    variants: list[Variant] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = list(self._enumerate())
        self._by_id = {v.id: v for v in self.variants}

    # -- enumeration -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self.configs[0].depth

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Anchor pairs that get stitching layers (SN-Net's candidate_combinations)."""
        n = len(self.configs)
        if self.nearest:
            return [(i, i + 1) for i in range(n - 1)]
        return list(itertools.combinations(range(n), 2))

    @property
    def num_stitch_layers(self) -> int:
        return paired_stitching(self.depth, self.window, self.stride)[2]

    def layer_positions(self) -> dict[int, list[tuple[int, int]]]:
        """Stitching layer id -> the (j, k) positions that share it (for the least-squares fit)."""
        positions, layer_of, _ = paired_stitching(self.depth, self.window, self.stride)
        out: dict[int, list[tuple[int, int]]] = {}
        for pos, t in zip(positions, layer_of):
            out.setdefault(t, []).append(pos)
        return out

    def _enumerate(self):
        n = len(self.configs)
        positions, layer_of, _ = paired_stitching(self.depth, self.window, self.stride)
        combos = [c for m in range(1, n + 1) for c in itertools.combinations(range(n), m)]
        if self.nearest:  # neighbours only: drop non-adjacent pairs and all multi-hop routes
            combos = [c for c in combos if len(c) == 1 or (len(c) == 2 and c[1] == c[0] + 1)]
        index = 0
        for combo in combos:
            for stitches in self._stitch_chains(combo, positions, layer_of):
                route = Route(combo, stitches)
                yield Variant(index, self.route_id(route), route, self.flops(route),
                              self.params(route))
                index += 1

    @staticmethod
    def _stitch_chains(combo, positions, layer_of, min_front: int = 0):
        if len(combo) == 1:
            yield ()
            return
        for (j, k), t in zip(positions, layer_of):
            if j < min_front:
                continue
            head = Stitch(combo[0], combo[1], j, k, t)
            for rest in VariantSpace._stitch_chains(combo[1:], positions, layer_of, k):
                yield (head, *rest)

    def route_id(self, route: Route) -> str:
        s = self.anchor_names[route.anchors[0]]
        for st in route.stitches:
            s += f">{self.anchor_names[st.end]}@{st.front_block}:{st.end_block}"
        return s

    # -- lookup ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.variants)

    def __iter__(self):
        return iter(self.variants)

    def get(self, key: str | int) -> Variant:
        """A variant by readable id ("ti>s@7:7") or by SN-Net cfg_id (int)."""
        if isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(self.variants):
                return self.variants[key]
            raise UnknownVariantError(f"no variant with cfg_id {key}; valid: 0..{len(self) - 1}")
        if key in self._by_id:
            return self._by_id[key]
        if isinstance(key, str) and key.isdigit():
            return self.get(int(key))
        close = [v.id for v in self.variants if v.id.split("@")[0] == str(key).split("@")[0]]
        raise UnknownVariantError(
            f"unknown variant '{key}'; ids look like {close[:4] or [v.id for v in self][:4]} "
            f"(or use an integer cfg_id 0..{len(self) - 1})")

    # -- costs -------------------------------------------------------------------------------
    def piece_flops(self, p: Piece) -> int:
        c = self.configs[p.anchor]
        N, D = c.seq_len, c.embed_dim
        if p.kind == "embed":
            return c.num_patches * D * c.in_chans * c.patch_size ** 2
        if p.kind == "block":
            return (N * D * 3 * D + 2 * N * N * D + N * D * D + 2 * N * D * c.mlp_hidden
                    + 2 * 5 * N * D)
        if p.kind == "stitch":
            return N * D * self.configs[p.end].embed_dim
        # head: final norm over all tokens (token pool) or fc_norm over the pooled vector (avg)
        norm = 0
        if c.fc_norm:
            norm = 5 * D
        elif p.norm:
            norm = 5 * N * D
        return norm + D * c.num_classes * (2 if c.distilled else 1)

    def flops(self, route: Route) -> int:
        return sum(self.piece_flops(p) for p in route.pieces(self.depth))

    def piece_params(self, p: Piece, *, anchor_route: bool) -> int:
        c = self.configs[p.anchor]
        D = c.embed_dim
        if p.kind == "embed":
            n = D * c.in_chans * c.patch_size ** 2 + D
            if anchor_route:  # SN-Net counts class/dist tokens and pos_embed for anchors only
                pos_len = c.num_patches + (0 if c.no_embed_class else c.num_prefix_tokens)
                n += c.num_prefix_tokens * D + pos_len * D
            return n
        if p.kind == "block":
            n = 3 * D * D + D * D + D + 2 * D * c.mlp_hidden + c.mlp_hidden + D + 4 * D
            n += 3 * D if c.qkv_bias else 0
            n += 2 * D if c.layer_scale else 0
            return n
        if p.kind == "stitch":
            E = self.configs[p.end].embed_dim
            return D * E + E
        heads = 2 if c.distilled else 1
        return heads * (D * c.num_classes + c.num_classes) + 2 * D  # head(s) + norm/fc_norm

    def params(self, route: Route) -> int:
        return sum(self.piece_params(p, anchor_route=route.is_anchor)
                   for p in route.pieces(self.depth))

    # -- what a bundle manifest must say -----------------------------------------------------
    def piece_id(self, p: Piece) -> str:
        return piece_id(p, self.anchor_names)

    def piece_ids(self, key: str | int) -> list[str]:
        """The chain of piece ids that variant `key` runs, in order."""
        return [self.piece_id(p) for p in self.get(key).route.pieces(self.depth)]

    def variant_record(self, key: str | int) -> dict:
        """The fields of variant `key`'s manifest record that this space determines."""
        v = self.get(key)
        names = self.anchor_names
        return {
            "index": v.index, "id": v.id, "cfg_id": v.cfg_id,
            "anchors": [names[a] for a in v.route.anchors],
            "stitches": [{"front": names[s.front], "end": names[s.end],
                          "front_block": s.front_block, "end_block": s.end_block,
                          "layer": s.layer} for s in v.route.stitches],
            "pieces": self.piece_ids(v.id), "flops": v.flops, "params": v.params,
        }

    def piece_records(self) -> dict[str, dict]:
        """Piece id -> the fields of its manifest record this space determines (kind, anchor,
        FLOPs, input/output shapes), for every piece of every variant, in first-use order."""
        out: dict[str, dict] = {}
        for v in self.variants:
            for p in v.route.pieces(self.depth):
                pid = self.piece_id(p)
                if pid not in out:
                    out[pid] = {"kind": p.kind, "anchor": self.anchor_names[p.anchor],
                                "flops": self.piece_flops(p),
                                "input_shape": piece_io_shape(p, self.configs, "in"),
                                "output_shape": piece_io_shape(p, self.configs, "out")}
        return out

    def stitching_json(self) -> dict:
        """The manifest's `family.stitching` section for this space."""
        return {"window": self.window, "stride": self.stride, "nearest": self.nearest,
                "pairs": [[self.anchor_names[f], self.anchor_names[e]] for f, e in self.pairs],
                "layers_per_pair": self.num_stitch_layers}

    def family_json(self) -> dict:
        """The fields of a manifest's `family` section that this space determines beyond the
        anchors (for stitches: `stitching`); the bundle checks the manifest says exactly this."""
        return {"stitching": self.stitching_json()}


FAMILY_KINDS = ("snnet", "vit")  # manifest family kinds whose variants are SN-Net stitches


def stitch_space_from_json(family: dict) -> VariantSpace:
    """The variant space a manifest's `family` section describes (anchors' configs, already
    validated, and the kind's own settings: for stitches `stitching.window/stride/nearest`).
    Raises SpaceSpecError naming the field for settings it cannot rebuild."""
    st = family.get("stitching")
    if not isinstance(st, dict):
        raise SpaceSpecError("family.stitching", "missing or not an object")
    configs = [ViTConfig.from_json(a["config"]) for a in family["anchors"]]
    depth = configs[0].depth
    for key, typ in (("window", int), ("stride", int), ("nearest", bool)):
        if type(st.get(key)) is not typ:
            raise SpaceSpecError(f"family.stitching.{key}",
                                 f"expected {typ.__name__}, got {st.get(key)!r}")
    for key in ("window", "stride"):
        if not 1 <= st[key] <= depth:
            raise SpaceSpecError(f"family.stitching.{key}", f"{st[key]} is out of range "
                                 f"[1, {depth}] (the depth)")
    return VariantSpace([a["name"] for a in family["anchors"]], configs, window=st["window"],
                        stride=st["stride"], nearest=st["nearest"])
