"""Parity of exported ONNX with timm's own forward for each ViT layout a user can bring.

Each model is built by timm (pretrained=False, randomised; attention sharpened so that how the
width splits into heads changes the output), saved as timm saves it (state dict as safetensors,
`config.json` written by timm's own `save_config_for_hf`), exported with `snrt-export stitch`,
and run in onnxruntime: max |Δlogit| against timm must be <= 1e-4. Layouts whose heads or
pooling the keys cannot say are exported three ways (config.json, `snrt.config` metadata, CLI
flag) and, with nothing recorded, must log a WARNING naming the flag.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
from conftest import state_dict_np, timm_vit

from exporters.cli import main
from snrt.bundle import Bundle
from snrt.weights_io import write_safetensors

TOL = 1e-4
SMALL = dict(img_size=32, patch_size=8, depth=2)

# name -> timm.create_model kwargs (registered names: timm's config.json needs them)
LAYOUTS = {
    # class token, final norm, class-token pooling (DeiT / ViT)
    "deit_cls_norm": dict(name="deit_tiny_patch16_224", **SMALL),
    # timm's *_gap_*: no class token, final norm then the mean of the patch tokens; the
    # registered architecture has 16 heads (48 wide at 768; 12 at the 192 used here), which
    # only its config.json (architecture name) or a flag can say
    "gap_registered": dict(name="vit_base_patch16_gap_224", embed_dim=192, **SMALL),
    "gap_64_wide": dict(name="vit_base_patch16_gap_224", embed_dim=128, num_heads=2, **SMALL),
    # global_pool='avg' with fc_norm (timm's default for avg): mean, then norm
    "avg_fc_norm": dict(name="vit_base_patch16_224", embed_dim=128, num_heads=2,
                        global_pool="avg", class_token=False, **SMALL),
    "avg_fc_norm_cls": dict(name="vit_base_patch16_224", embed_dim=128, num_heads=2,
                            global_pool="avg", **SMALL),
    # class token pooling with fc_norm=True: same keys as avg + fc_norm with a class token
    "token_fc_norm": dict(name="vit_base_patch16_224", embed_dim=128, num_heads=2,
                          fc_norm=True, **SMALL),
    # class token AND avg pooling without fc_norm: same keys as DeiT, different output
    "cls_avg_no_fc_norm": dict(name="vit_base_patch16_224", global_pool="avg", fc_norm=False,
                               embed_dim=128, num_heads=2, **SMALL),
    # heads not 64 wide: same keys as 3 heads of 64
    "heads_not_64_wide": dict(name="vit_tiny_patch16_224", num_heads=6, **SMALL),
    "distilled_deit": dict(name="deit_tiny_distilled_patch16_224", **SMALL),
    # DeiT III: layer scale, pos_embed without the class token
    "deit3": dict(name="deit3_small_patch16_224", **SMALL),
}
# what a file with no config must guess: the flag its WARNING names (the rest: keys decide;
# DeiT layouts with 64-wide heads warn too, the guess happens to be right)
NEEDS = {"gap_registered": "--num-heads", "cls_avg_no_fc_norm": "--global-pool",
         "heads_not_64_wide": "--num-heads", "token_fc_norm": "--global-pool",
         "avg_fc_norm_cls": "--global-pool", "deit_cls_norm": "--global-pool"}
# ...and where the guess is wrong, the flags / snrt.config values that settle it
SETTLE = {"gap_registered": {"num_heads": 16}, "cls_avg_no_fc_norm": {"global_pool": "avg"},
          "heads_not_64_wide": {"num_heads": 6}, "token_fc_norm": {"global_pool": "token"}}


def _model(layout: str, seed: int = 0):
    import torch

    m = timm_vit(seed, **LAYOUTS[layout])
    if hasattr(m, "set_distilled_training"):
        m.set_distilled_training(False)
    with torch.no_grad():  # peaked attention: a wrong head split shows in the logits
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return m


def _export(tmp_path, model, *, config_json=False, metadata=None, flags=(), stem="model"):
    """Save `model` as timm does, export it, return (max |Δlogit| vs timm, bundle)."""
    import torch
    from timm.models._hub import save_config_for_hf

    d = tmp_path / stem
    d.mkdir()
    w = d / "model.safetensors"
    write_safetensors(w, state_dict_np(model), metadata)
    if config_json:
        save_config_for_hf(model, str(d / "config.json"))
    out = tmp_path / f"{stem}.snrt"
    assert main(["stitch", "--anchors", str(w), "--out", str(out), "--quiet", *flags]) == 0
    b = Bundle.open(out)
    size = b.load_family().anchors[0].config.img_size
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    s = ort.InferenceSession(str(b.graph_path(b.variants[0])), providers=["CPUExecutionProvider"])
    got = s.run(None, {"image": x})[0]
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).numpy()
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max()), b


def _guess_warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING and r.name.startswith("snrt"))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_with_timm_config_json_matches_timm(tmp_path, caplog, layout):
    """The hub layout (weights + timm's config.json): exact, and nothing guessed."""
    caplog.set_level(logging.INFO)
    delta, _ = _export(tmp_path, _model(layout), config_json=True)
    print(f"{layout:20s} config.json   max|Δlogit| {delta:.2e}")
    assert delta <= TOL, f"{layout}: max |Δlogit| {delta:.3g} vs timm"
    assert "assumed" not in _guess_warnings(caplog)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_from_keys_alone(tmp_path, caplog, layout):
    """No config: layouts the keys decide are exact; the others warn, naming the flag, and are
    exact once the flag is given."""
    caplog.set_level(logging.INFO)
    m = _model(layout)
    delta, _ = _export(tmp_path, m, stem="bare")
    warned = _guess_warnings(caplog)
    print(f"{layout:20s} keys only     max|Δlogit| {delta:.2e}")
    if layout in NEEDS:
        assert NEEDS[layout] in warned, warned
    if layout not in SETTLE:
        assert delta <= TOL, f"{layout}: max |Δlogit| {delta:.3g} vs timm"
        return
    assert delta > TOL  # the guess is wrong for this model: hence the warning
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTLE[layout].items()]
    caplog.clear()
    delta, _ = _export(tmp_path, m, flags=flags, stem="flagged")
    print(f"{layout:20s} {' '.join(flags):13s} max|Δlogit| {delta:.2e}")
    assert delta <= TOL
    assert NEEDS[layout] not in _guess_warnings(caplog)


@pytest.mark.parametrize("layout", sorted(SETTLE))
def test_layout_with_snrt_config_metadata(tmp_path, caplog, layout):
    caplog.set_level(logging.INFO)
    meta = {"snrt.config": json.dumps(SETTLE[layout])}
    delta, _ = _export(tmp_path, _model(layout), metadata=meta)
    print(f"{layout:20s} snrt.config   max|Δlogit| {delta:.2e}")
    assert delta <= TOL
    assert NEEDS[layout] not in _guess_warnings(caplog)


def test_config_json_preprocessing_and_labels_reach_the_bundle(tmp_path):
    """pretrained_cfg (timm's eval transform) and label_names become the bundle's Preprocess
    and labels; the reference is timm's own resolve_data_config applied to the file timm wrote."""
    from timm.data import resolve_data_config
    from timm.models._hub import save_config_for_hf

    m = _model("heads_not_64_wide")
    d = tmp_path / "m"
    d.mkdir()
    write_safetensors(d / "model.safetensors", state_dict_np(m))
    labels = [f"class {i}" for i in range(m.num_classes)]
    save_config_for_hf(m, str(d / "config.json"), model_config={"label_names": labels})
    assert main(["stitch", "--anchors", str(d / "model.safetensors"), "--out",
                 str(tmp_path / "m.snrt"), "--quiet"]) == 0
    fam = Bundle.open(tmp_path / "m.snrt").load_family()
    ref = resolve_data_config(
        {}, pretrained_cfg=json.loads((d / "config.json").read_text())["pretrained_cfg"])
    pre = fam.preprocess
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == \
        (ref["input_size"][1], ref["crop_pct"], ref["interpolation"])
    np.testing.assert_allclose(pre.mean, ref["mean"])
    np.testing.assert_allclose(pre.std, ref["std"])
    assert fam.labels == labels
    assert fam.anchors[0].config.num_heads == 6
