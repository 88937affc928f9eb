"""Elastic subnet spaces (snrt.variants.subnets, snrt.family.supernet): ids, errors, FLOPs and
params against fvcore / timm on the sliced model, POA checkpoint key mapping."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("fvcore")

from subnet_slicing import fvcore_flops, make_supernet, poa_reference, ufo_reference

from snrt.errors import SnrtError, SubnetConfigError
from snrt.family.supernet import map_poa_state_dict, supernet_from_state_dict
from snrt.variants.common import SpaceSpecError
from snrt.variants.subnets import SubnetSpace, builtin_table

POA = {"kind": "poa", "widths": [128, 192, 256], "depths": [4, 5, 6], "head_dim": 64}
UFO = {"kind": "ufo", "embed_dim": 256, "max_depth": 6, "head_dim": 64,
       "depth_codes": {"j": 4, "k": 5, "l": 6}, "heads_codes": {"1": 4, "2": 3, "3": 2},
       "mlp_codes": {"1": 4.0, "2": 3.5, "3": 3.0}, "embed_codes": {"1": 256}}


@pytest.fixture(scope="module")
def sd():
    return make_supernet()


@pytest.fixture(scope="module")
def net(sd):
    return supernet_from_state_dict(sd)


def test_poa_flops_params_equal_fvcore_on_sliced_timm(sd, net):
    space = SubnetSpace(net.config, POA)
    for sid in ("w128d4", "w192d5", "w256d6", "w128d6"):
        v = space.get(sid)
        m = poa_reference(sd, v.subnet.width, v.subnet.depth, 32, 8, 10)
        assert v.flops == fvcore_flops(m, 32), sid
        assert v.params == sum(p.numel() for p in m.parameters()), sid


def test_ufo_flops_params_equal_fvcore_on_sliced_timm(sd, net):
    space = SubnetSpace(net.config, UFO)
    for sid in space.sample(4, seed=3):
        s = space.get(sid).subnet
        m = ufo_reference(sd, s.depth, s.heads, [h / 256 for h in s.hidden], 32, 8, 10)
        assert space.get(sid).flops == fvcore_flops(m, 32), sid
        assert space.get(sid).params == sum(p.numel() for p in m.parameters()), sid


def test_ufo_vit_b_table_matches_the_arch_parser():
    from snrt.family import ViTConfig
    from snrt.subnets import UFO_VIT_B, ElasticSubnet

    c = ViTConfig(768, 12, 12, 3072, 16, 224, 3, 1000)
    space = SubnetSpace(c, builtin_table("ufo", c))
    arch = "j111231321311311221231121111231000000"
    s, ref = space.subnet(arch), ElasticSubnet.from_arch(arch, UFO_VIT_B)
    assert s.heads == ref.num_heads and s.depth == ref.depth == 10
    assert s.hidden == tuple(int(768 * r) for r in ref.mlp_ratio)
    assert len([p for p in space.all_pieces() if p.kind == "block"]) == 108
    assert space.size() == 9 ** 10 + 9 ** 11 + 9 ** 12


@pytest.mark.parametrize("space,sid,words", [
    (POA, "w100d4", ["width", "100", "[128, 192, 256]"]),
    (POA, "w128d7", ["depth", "7", "[4, 5, 6]"]),
    (POA, "128x4", ["w{width}d{depth}"]),
    (UFO, "j411111111111000000", ["position 1", "0-based", "num_heads", "'1' = 4"]),
    (UFO, "j141111111111000000", ["position 2", "mlp_ratio", "'3' = 3.0"]),
    (UFO, "j111111111111000001", ["position 18", "'000'"]),
    (UFO, "m111111111111111111", ["position 0", "'j' = 4"]),
    (UFO, "j11111111111100000", ["18 characters", "exactly 19"]),
])
def test_config_outside_the_space_names_position_and_allowed(net, space, sid, words):
    with pytest.raises(SubnetConfigError) as e:
        SubnetSpace(net.config, space).get(sid)
    assert isinstance(e.value, SnrtError)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_space_tables_are_checked(net):
    with pytest.raises(SpaceSpecError, match="widths"):
        SubnetSpace(net.config, {**POA, "widths": [100]})
    with pytest.raises(SpaceSpecError, match="heads_codes"):
        SubnetSpace(net.config, {**UFO, "heads_codes": {"1": 5}})
    with pytest.raises(SpaceSpecError, match="ufo"):
        builtin_table("ufo", net.config)
    assert builtin_table("poa", net.config)["widths"] == [128, 192, 256]


def test_poa_teacher_keys_map_like_extract_elastic_net(sd):
    teacher = {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        k2 = k
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k2 = k.replace(f"blocks.{i}.", f"blocks.{i // 3}.{i}.", 1)
            for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                k2 = k2.replace(f"{lin}.", f"{lin}.linear.")
            for n in ("norm1", "norm2"):
                k2 = k2.replace(f"{n}.", f"{n}.norm.")
        elif k.startswith("norm."):
            k2 = k.replace("norm.", "norm.norm.")
        teacher["teacher.backbone." + k2] = v
    teacher["teacher.dino_head.mlp.0.weight"] = np.zeros((3, 3), np.float32)
    teacher["teacher.backbone.mask_token"] = np.zeros((1, 256), np.float32)
    mapped = map_poa_state_dict(teacher)
    assert sorted(mapped) == sorted(k for k in sd if not k.startswith("head."))
    net = supernet_from_state_dict(teacher)
    assert net.config.num_classes == 0 and net.config.depth == 6
    bad = {k: v for k, v in teacher.items() if "backbone.norm.norm" not in k}
    with pytest.raises(SnrtError, match="norm.weight"):
        supernet_from_state_dict(bad)


def test_poa_pth_checkpoint_read_with_weights_only(sd, tmp_path):
    """A POA training checkpoint ({'teacher': ..., 'student': ...}, chunked blocks, dynamic
    layer names) read with torch.load(weights_only=True); the student is ignored."""
    from snrt.family.supernet import load_supernet

    teacher = {}
    for k, v in sd.items():
        k2 = k
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k2 = k.replace(f"blocks.{i}.", f"blocks.{i // 2}.{i}.", 1)
            for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                k2 = k2.replace(f"{lin}.", f"{lin}.linear.")
        teacher["backbone." + k2] = torch.from_numpy(v)
    path = tmp_path / "poa.pth"
    torch.save({"teacher": teacher, "student": {"backbone.cls_token": torch.zeros(1)},
                "iteration": 3}, path)
    net = load_supernet(path)
    assert sorted(net.weights) == sorted(sd)
    assert all(np.array_equal(net.weights[k], sd[k]) for k in sd)
    assert net.config.num_classes == 10 and net.has_head
