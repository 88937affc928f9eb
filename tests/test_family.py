"""Weight-file readers (untrusted input) and timm config inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import state_dict_np, timm_vit

from snrt.errors import ModelFileError, UnsupportedModelError
from snrt.family import config_from_state_dict, family_from_snnet_checkpoint, load_anchor
from snrt.weights_io import read_safetensors, read_state_dict, write_safetensors


@pytest.fixture(scope="module")
def small_vit():
    return timm_vit(0, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                    num_classes=4)


def test_safetensors_reader_agrees_with_the_safetensors_library(tmp_path, small_vit):
    from safetensors.numpy import load_file, save_file

    sd = state_dict_np(small_vit)
    sd["an_int"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    save_file(sd, str(tmp_path / "lib.safetensors"), metadata={"k": "v"})
    ours, meta = read_safetensors(tmp_path / "lib.safetensors")
    assert meta == {"k": "v"} and set(ours) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(ours[k], sd[k])
    write_safetensors(tmp_path / "ours.safetensors", sd, {"a": "b"})
    back = load_file(str(tmp_path / "ours.safetensors"))
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_bfloat16_is_widened(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = torch.randn(5, 3).to(torch.bfloat16)
    save_file({"w": t}, str(tmp_path / "bf.safetensors"))
    ours, _ = read_state_dict(tmp_path / "bf.safetensors")
    np.testing.assert_array_equal(ours["w"], t.float().numpy())


def test_all_formats_give_the_same_config_and_weights(tmp_path, small_vit):
    import torch

    sd = state_dict_np(small_vit)
    write_safetensors(tmp_path / "m.safetensors", sd)
    np.savez(tmp_path / "m.npz", **sd)
    torch.save({"model": small_vit.state_dict(), "epoch": 3}, tmp_path / "m.pth")
    anchors = [load_anchor(tmp_path / f"m.{ext}", num_heads=3)
               for ext in ("safetensors", "npz", "pth")]
    for a in anchors:
        assert a.config == anchors[0].config
        for k in sd:
            np.testing.assert_array_equal(a.weights[k], sd[k])
    c = anchors[0].config
    assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, c.num_classes) == \
        (48, 2, 3, 8, 32, 4)


@pytest.mark.parametrize("damage", ["truncate", "header", "offsets", "nan"])
def test_corrupt_safetensors_are_refused(tmp_path, small_vit, damage):
    p = tmp_path / "m.safetensors"
    sd = state_dict_np(small_vit)
    if damage == "nan":
        sd["head.bias"][0] = np.nan
    write_safetensors(p, sd)
    raw = bytearray(p.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "header":
        raw[10:20] = b"\xff" * 10
    elif damage == "offsets":
        raw[8:] = raw[8:].replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1)
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=str(p.name)):
        load_anchor(p)


def test_pickled_objects_are_never_loaded(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {"x": torch.zeros(1)}, "obj": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelFileError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")
    np.savez(tmp_path / "obj.npz", a=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="unpickle"):
        read_state_dict(tmp_path / "obj.npz")


def test_unsupported_architectures_get_clear_messages(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                          qk_norm=True)
    with pytest.raises(UnsupportedModelError, match="qk-norm"):
        config_from_state_dict(state_dict_np(m))
    with pytest.raises(UnsupportedModelError, match="not a timm ViT"):
        config_from_state_dict({"conv1.weight": np.zeros((3, 3, 3, 3), np.float32)})
    with pytest.raises(ModelFileError, match="unknown weights format"):
        read_state_dict(tmp_path.joinpath("x.onnx").write_bytes(b"") or tmp_path / "x.onnx")


def test_heads_from_metadata_then_convention(tmp_path, small_vit):
    sd = state_dict_np(small_vit)
    write_safetensors(tmp_path / "a.safetensors", sd, {"snrt.config": json.dumps({"num_heads": 6})})
    assert load_anchor(tmp_path / "a.safetensors").config.num_heads == 6
    write_safetensors(tmp_path / "b.safetensors", sd)
    assert load_anchor(tmp_path / "b.safetensors").config.num_heads == 1  # 48 // 64 -> 1
    with pytest.raises(UnsupportedModelError, match="divisible"):
        load_anchor(tmp_path / "b.safetensors", num_heads=5)


def test_snnet_checkpoint_pairs_and_errors(tmp_path, tiny_family):
    fam = family_from_snnet_checkpoint(tiny_family["ckpt"])
    assert [a.name for a in fam.anchors] == ["ti", "s", "b"]
    assert sorted(fam.stitch_layers) == [(0, 1), (1, 2)]
    assert [len(v) for v in fam.stitch_layers.values()] == [3, 3]
    sd, meta = read_state_dict(tiny_family["ckpt"])
    bad = dict(sd)
    bad["stitch_layers.0.1.transform.weight"] = np.zeros((3, 3), np.float32)
    write_safetensors(tmp_path / "bad.safetensors", bad, meta)
    with pytest.raises(UnsupportedModelError, match=r"stitch_layers\.0\.1"):
        family_from_snnet_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(UnsupportedModelError, match="not an SN-Net checkpoint"):
        family_from_snnet_checkpoint(tiny_family["paths"][0])
