"""Elastic subnets of one supernet (placeholder; filled in by the next commit)."""

from __future__ import annotations

from .common import SpaceSpecError

FAMILY_KINDS = ("subnets",)


def subnet_space_from_json(family: dict):
    raise SpaceSpecError("family.kind", "subnets: not implemented yet")
