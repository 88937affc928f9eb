"""timm config.json, `snrt.config` metadata, flags: which source wins, what is checked, and the
table of timm's registered ViT/DeiT defaults against the installed timm."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from conftest import state_dict_np, timm_vit

from snrt.errors import ModelFileError, UnsupportedModelError
from snrt.family import (
    TIMM_VIT_ARCHS,
    config_from_state_dict,
    family_from_snnet_checkpoint,
    find_hub_config,
    load_anchor,
    read_hub_config,
)
from snrt.weights_io import write_safetensors

SAMPLE_ARCHS = ["deit_tiny_patch16_224", "deit_small_distilled_patch16_224",
                "deit3_medium_patch16_224", "vit_base_patch16_gap_224",
                "vit_medium_patch16_gap_240", "vit_base_patch16_plus_240", "vit_tiny_patch16_224"]


def _check_row(name):
    import timm
    import torch.nn as nn

    m = timm.create_model(name, pretrained=False, device="meta")
    row = TIMM_VIT_ARCHS[name]
    assert (row.embed_dim, row.depth, row.num_heads, row.patch_size, row.global_pool,
            row.class_token) == (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads,
                                 m.patch_embed.patch_size[0], m.global_pool, m.has_class_token)
    effective = row.fc_norm if row.fc_norm is not None else row.global_pool == "avg"
    assert effective == (not isinstance(m.fc_norm, nn.Identity))


@pytest.mark.parametrize("name", SAMPLE_ARCHS)
def test_arch_table_rows_match_timm(name):
    _check_row(name)


@pytest.mark.slow
def test_every_arch_table_row_matches_timm():
    for name in TIMM_VIT_ARCHS:
        _check_row(name)


@pytest.fixture(scope="module")
def vit6():
    """vit_tiny layout with 6 heads of 32 (not the 64-wide convention)."""
    return timm_vit(0, name="vit_tiny_patch16_224", num_heads=6, img_size=32, patch_size=8,
                    depth=1, num_classes=5)


def _config_json(path, **fields):
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 5,
           "model_args": {"num_heads": 6, "img_size": 32, "patch_size": 8, "depth": 1,
                          "num_classes": 5},
           "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                              "crop_pct": 0.9, "interpolation": "bicubic"}}
    for k, v in fields.items():
        section, _, key = k.partition("__")
        if key:
            cfg[section][key] = v
        elif v is None:
            cfg.pop(section)
        else:
            cfg[section] = v
    path.write_text(json.dumps(cfg) if not isinstance(fields.get("raw"), str) else fields["raw"])
    return path


def test_precedence_flag_then_metadata_then_config_json_then_convention(tmp_path, vit6, caplog):
    sd = state_dict_np(vit6)
    hub = read_hub_config(_config_json(tmp_path / "config.json"))
    meta = {"snrt.config": json.dumps({"num_heads": 2})}
    assert config_from_state_dict(sd, num_heads=12, metadata=meta, hub_config=hub).num_heads == 12
    assert config_from_state_dict(sd, metadata=meta, hub_config=hub).num_heads == 2
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert config_from_state_dict(sd, hub_config=hub).num_heads == 6
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert config_from_state_dict(sd).num_heads == 3  # convention: 192 / 64
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "num_heads=3" in warned[0] and "--num-heads" in warned[0]
    assert "global_pool='token'" in warned[0] and "--global-pool" in warned[0]
    # global_pool the same way; the keys rule out token pooling without a class token
    assert config_from_state_dict(sd, global_pool="avg", hub_config=hub).global_pool == "avg"
    meta = {"snrt.config": json.dumps({"global_pool": "avg"})}
    assert config_from_state_dict(sd, metadata=meta, hub_config=hub).global_pool == "avg"


def test_config_json_found_beside_the_weights(tmp_path, vit6):
    w = tmp_path / "ti.safetensors"
    write_safetensors(w, state_dict_np(vit6))
    assert find_hub_config(w) is None
    _config_json(tmp_path / "config.json")
    assert load_anchor(w).config.num_heads == 6
    # a <stem>.config.json wins over the directory's config.json
    _config_json(tmp_path / "ti.config.json", model_args__num_heads=2)
    assert find_hub_config(w) == tmp_path / "ti.config.json"
    a = load_anchor(w)
    assert a.config.num_heads == 2 and a.source["config"] == "ti.config.json"


def test_legacy_single_dict_config_json(tmp_path, vit6):
    """timm's older layout: no pretrained_cfg/model_args, preprocessing at the top level."""
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"architecture": "deit_tiny_patch16_224", "num_classes": 5,
                             "input_size": [3, 224, 224], "crop_pct": 0.875,
                             "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225], "labels": ["a", "b"]}))
    hub = read_hub_config(p)
    assert hub.vit_args["num_heads"] == 3 and hub.vit_args["global_pool"] == "token"
    assert hub.preprocess["crop_pct"] == 0.875 and hub.labels == ["a", "b"]


@pytest.mark.parametrize("damage, error, words", [
    ({"raw": "{not json"}, ModelFileError, "not valid JSON"),
    ({"raw": "[1, 2]"}, ModelFileError, "JSON object"),
    ({"architecture": 5}, ModelFileError, "'architecture'"),
    ({"model_args": [1]}, ModelFileError, "'model_args'"),
    ({"model_args__num_heads": "six"}, ModelFileError, "model_args.num_heads"),
    ({"model_args__num_heads": True}, ModelFileError, "model_args.num_heads"),
    ({"model_args__class_token": "yes"}, ModelFileError, "model_args.class_token"),
    ({"model_args__img_size": [32, 48]}, UnsupportedModelError, "not square"),
    ({"model_args__global_pool": "map"}, UnsupportedModelError, "global_pool 'map'"),
    ({"model_args__qk_norm": True}, UnsupportedModelError, "model_args.qk_norm"),
    ({"model_args__act_layer": "gelu_tanh"}, UnsupportedModelError, "model_args.act_layer"),
    ({"model_args__reg_tokens": 4}, UnsupportedModelError, "model_args.reg_tokens"),
    ({"model_args__frobnicate": 1}, UnsupportedModelError, "model_args.frobnicate"),
    ({"global_pool": "avg", "model_args__global_pool": "token"}, ModelFileError, "disagree"),
    ({"pretrained_cfg": "bicubic"}, ModelFileError, "'pretrained_cfg'"),
    ({"pretrained_cfg__mean": [0.5, 0.5]}, ModelFileError, "pretrained_cfg.mean"),
    ({"pretrained_cfg__std": [0.5, 0, 0.5]}, ModelFileError, "pretrained_cfg.std"),
    ({"pretrained_cfg__crop_pct": 1.5}, ModelFileError, "pretrained_cfg.crop_pct"),
    ({"pretrained_cfg__input_size": [3, 32]}, ModelFileError, "pretrained_cfg.input_size"),
    ({"pretrained_cfg__input_size": [3, 64, 64]}, ModelFileError, "input_size"),
    ({"label_names": ["a", "b"]}, ModelFileError, "label_names"),
    ({"label_names": {"0": "a", "7": "b"}}, ModelFileError, "label_names"),
    # a config.json of another model: the keys disagree with it
    ({"model_args__embed_dim": 384}, ModelFileError, "embed_dim = 384"),
    ({"model_args__depth": 12}, ModelFileError, "depth = 12"),
    ({"model_args": None, "architecture": "vit_base_patch16_224"}, ModelFileError,
     "embed_dim = 768"),
    ({"model_args__class_token": False}, ModelFileError, "class_token"),
    ({"model_args__global_pool": "avg"}, ModelFileError, "fc_norm"),
    ({"model_args__mlp_ratio": 2.0}, ModelFileError, "mlp_ratio"),
    ({"model_args__mlp_ratio": math.inf}, ModelFileError, "mlp_ratio"),  # found by the fuzz
    ({"pretrained_cfg__crop_pct": math.nan}, ModelFileError, "crop_pct"),
    ({"model_args__init_values": 1e-5}, ModelFileError, "init_values"),
    ({"num_classes": 1000}, ModelFileError, "num_classes 1000 and model_args.num_classes 5"),
    ({"num_classes": 1000, "model_args__num_classes": 1000}, ModelFileError,
     "num_classes = 1000"),
])
def test_malformed_or_foreign_config_json_is_refused(tmp_path, vit6, damage, error, words):
    w = tmp_path / "m.safetensors"
    write_safetensors(w, state_dict_np(vit6))
    _config_json(tmp_path / "config.json", **damage)
    with pytest.raises(error, match=words) as e:
        load_anchor(w)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("value, words", [
    ("{not json", "not JSON"), ("[6]", "JSON object"), ('{"num_heads": "6"}', "num_heads"),
    ('{"num_heads": 0}', "num_heads"), ('{"heads": 6}', "unknown keys"),
    ('{"norm_eps": -1}', "norm_eps"), ('{"embed_dim": 384}', "embed_dim = 384"),
    ('{"global_pool": "max"}', "global_pool 'max'"),
])
def test_malformed_snrt_config_metadata(tmp_path, vit6, value, words):
    w = tmp_path / "m.safetensors"
    write_safetensors(w, state_dict_np(vit6), {"snrt.config": value})
    with pytest.raises((ModelFileError, UnsupportedModelError), match=words) as e:
        load_anchor(w)
    assert "m.safetensors" in str(e.value)


def test_snnet_metadata_is_checked(tmp_path, tiny_family):
    from snrt.weights_io import read_state_dict

    sd, meta = read_state_dict(tiny_family["ckpt"])
    for key, value, words in [("snrt.anchor_names", '["ti", "s"]', "3 strings"),
                              ("snrt.num_heads", '["2", 4, 4]', "positive integers"),
                              ("snrt.labels", '"abc"', "list of strings"),
                              ("snrt.preprocess", '{"img_size": 32, "colour": 1}', "Preprocess"),
                              ("snrt.num_heads", "[2, 4", "not JSON")]:
        p = tmp_path / "bad.safetensors"
        write_safetensors(p, sd, {**meta, key: value})
        with pytest.raises(ModelFileError, match=words) as e:
            family_from_snnet_checkpoint(p)
        assert "bad.safetensors" in str(e.value) and key in str(e.value)


def test_pooling_the_keys_decide_needs_no_guess(caplog):
    """No class token -> mean of patches; fc_norm -> avg; distilled -> tokens: no WARNING about
    pooling, and a config that contradicts the keys is refused."""
    caplog.set_level(logging.INFO)
    gap = timm_vit(1, name="vit_base_patch16_gap_224", embed_dim=64, num_heads=1, img_size=32,
                   patch_size=8, depth=1)
    c = config_from_state_dict(state_dict_np(gap))
    assert (c.global_pool, c.class_token, c.fc_norm) == ("avg", False, False)
    assert "global_pool" not in " ".join(r.getMessage() for r in caplog.records
                                         if r.levelno >= logging.WARNING)
    with pytest.raises(UnsupportedModelError, match="needs a class token"):
        config_from_state_dict(state_dict_np(gap), global_pool="token")
    dist = timm_vit(1, name="deit_tiny_distilled_patch16_224", img_size=32, patch_size=8,
                    depth=1)
    assert config_from_state_dict(state_dict_np(dist), num_heads=3).global_pool == "token"
    with pytest.raises(UnsupportedModelError, match="distilled"):
        config_from_state_dict(state_dict_np(dist), global_pool="avg")
    assert np.isfinite(c.norm_eps)


_FIELDS = [("architecture", ""), ("num_classes", ""), ("num_features", ""),
           ("global_pool", ""), ("model_args", ""), ("pretrained_cfg", ""), ("label_names", ""),
           *[("model_args", k) for k in (
               "num_heads", "embed_dim", "depth", "img_size", "patch_size", "global_pool",
               "class_token", "fc_norm", "mlp_ratio", "init_values", "qk_norm", "act_layer",
               "drop_rate", "no_embed_class", "num_classes", "qkv_bias")],
           *[("pretrained_cfg", k) for k in (
               "input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode")]]


def test_config_json_fuzz(tmp_path_factory, vit6):
    """Any JSON in one or two fields of a valid config.json: snrt returns a config or raises
    its own error naming the file, never a TypeError/OverflowError from a value it did not
    check."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from snrt.errors import SnrtError

    leaves = (st.sampled_from([math.inf, -math.inf, math.nan, 0, -1, 0.5, 1e308, 10**30, True,
                               "", "vit_tiny_patch16_224", "token", "avg", "bicubic", "gelu"])
              | st.none() | st.integers(-5, 2**70) | st.floats() | st.text(max_size=4))
    values = st.one_of(leaves, leaves, leaves, st.lists(leaves, max_size=4), st.dictionaries(
        st.sampled_from(["0", "1", "a"]), leaves, max_size=2))
    d = tmp_path_factory.mktemp("fuzzcfg")
    sd = state_dict_np(vit6)
    base = json.loads(_config_json(d / "config.json").read_text())

    @given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), values), min_size=1, max_size=2))
    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @example(edits=[(("model_args", "mlp_ratio"), 1e308)])  # embed_dim * ratio overflowed
    def check(edits):
        cfg = json.loads(json.dumps(base))
        for (section, key), v in edits:
            if key and isinstance(cfg.get(section), dict):
                cfg[section][key] = v
            elif not key:
                cfg[section] = v
        p = d / "config.json"
        p.write_text(json.dumps(cfg))
        try:
            config_from_state_dict(sd, hub_config=read_hub_config(p))
        except SnrtError as e:
            assert "config.json" in str(e), str(e)

    check()
