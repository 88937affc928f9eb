"""VariantSpace against SN-Net's published table and its enumeration rules."""

import pytest
from conftest import snnet_reference

from snrt.errors import UnknownVariantError
from snrt.family import ViTConfig
from snrt.variants import VariantSpace, paired_stitching


def deit_space(**kw):
    cfgs = [ViTConfig(d, 12, d // 64, 4 * d, 16, 224, 3, 1000) for d in (192, 384, 768)]
    return VariantSpace(["ti", "s", "b"], cfgs, **kw)


def test_deit_flops_params_match_snnet_table_within_half_percent():
    space, ref = deit_space(), snnet_reference()
    assert len(space) == len(ref) == 71
    worst_flops = worst_params = 0.0
    for v, r in zip(space, ref):
        assert v.cfg_id == r["cfg_id"]
        worst_flops = max(worst_flops, abs(v.flops - r["flops"]) / r["flops"])
        worst_params = max(worst_params, abs(v.params - r["params"]) / r["params"])
    assert worst_flops <= 0.005 and worst_params <= 0.005, (worst_flops, worst_params)


def test_deit_order_and_routes():
    space = deit_space()
    ids = [v.id for v in space]
    assert ids[:3] == ["ti", "s", "b"]
    assert all(i.startswith("ti>s@") for i in ids[3:37])
    assert all(i.startswith("s>b@") for i in ids[37:71])
    assert len(set(ids)) == 71
    v = space.get("ti>s@7:7")
    pieces = v.route.pieces(12)
    kinds = [(p.kind, p.anchor, p.index) for p in pieces]
    # ti embed, ti blocks 0..7, stitch, s blocks 7..11, s head without final norm
    assert kinds[0] == ("embed", 0, 0)
    assert kinds[1:9] == [("block", 0, b) for b in range(8)]
    assert kinds[9][0] == "stitch"
    assert kinds[10:15] == [("block", 1, b) for b in range(7, 12)]
    assert pieces[-1].kind == "head" and pieces[-1].norm is False
    assert space.get("s").route.pieces(12)[-1].norm is True
    assert space.get(v.cfg_id) is v and space.get(str(v.cfg_id)) is v


def test_paired_stitching_shares_layers_like_snnet():
    positions, layer_of, n = paired_stitching(12, 2, 1)
    assert n == 11 and len(positions) == 34
    assert positions[:4] == [(0, 0), (0, 1), (1, 0), (1, 1)] and layer_of[:4] == [0] * 4
    assert positions[4:7] == [(1, 2), (2, 1), (2, 2)] and layer_of[4:7] == [1] * 3
    # every position lies in one window: |j - k| < window
    assert all(abs(j - k) < 2 for j, k in positions)


def test_other_families_follow_the_same_rules():
    cfgs = [ViTConfig(d, 6, 2, 2 * d, 4, 16, 1, 5) for d in (16, 32, 48, 64)]
    near = VariantSpace(["a", "b", "c", "d"], cfgs, window=3, stride=2)
    positions, _, _ = paired_stitching(6, 3, 2)
    assert len(near) == 4 + 3 * len(positions)
    allp = VariantSpace(["a", "b", "c", "d"], cfgs, window=2, stride=1, nearest=False)
    multi = [v for v in allp if len(v.route.anchors) > 2]
    assert multi, "non-nearest stitching includes multi-stitch routes"
    for v in multi:  # each later stitch leaves no earlier than the previous one entered
        for s1, s2 in zip(v.route.stitches, v.route.stitches[1:]):
            assert s2.front_block >= s1.end_block
    assert len({v.id for v in allp}) == len(allp)


def test_unknown_variant_errors_list_choices():
    space = deit_space()
    with pytest.raises(UnknownVariantError, match="ti>s@"):
        space.get("ti>s@99:1")
    with pytest.raises(UnknownVariantError, match="0..70"):
        space.get(71)
