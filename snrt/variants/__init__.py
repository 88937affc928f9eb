"""Variant spaces, one module per kind, side by side:

- stitches.py: SN-Net stitches of a family of anchors (`VariantSpace`);
- subnets.py: elastic subnets of one supernet (POA width x depth, UFO per-block heads/MLP);
- common.py: what they share.

Each kind enumerates or parses its variants with stable ids and resolves each to a route of
pieces, with FLOPs and params; `variant_space_from_json` rebuilds the space a manifest's
`family` section describes, dispatching on `family["kind"]`, so the bundle, the manifest rules
and the runtime handle pieces, not kinds.
"""

from __future__ import annotations

from .common import SpaceSpecError
from .stitches import (
    FAMILY_KINDS,
    Piece,
    Route,
    Stitch,
    Variant,
    VariantSpace,
    paired_stitching,
    piece_id,
    piece_io_shape,
    stitch_space_from_json,
)

__all__ = [
    "FAMILY_KINDS", "Piece", "Route", "SpaceSpecError", "Stitch", "Variant", "VariantSpace",
    "paired_stitching", "piece_id", "piece_io_shape", "variant_space_from_json",
]


def variant_space_from_json(family: dict):
    """The variant space a manifest's `family` section describes. Raises SpaceSpecError
    naming the field for a kind or settings it cannot rebuild."""
    from . import subnets

    kind = family.get("kind")
    if kind in FAMILY_KINDS:
        return stitch_space_from_json(family)
    if kind in subnets.FAMILY_KINDS:
        return subnets.subnet_space_from_json(family)
    raise SpaceSpecError("family.kind", f"{kind!r}; this snrt knows "
                         f"{list(FAMILY_KINDS) + list(subnets.FAMILY_KINDS)}")
