"""Exported ONNX graphs against the independent timm/PyTorch reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEIT, reference_logits, state_dict_np, timm_vit

from exporters.cli import main
from snrt.bundle import Bundle
from snrt.weights_io import write_safetensors

TOL = 1e-4


def run_graph(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def deit_bundle(tmp_path_factory):
    """Exact timm deit_tiny/small/base_patch16_224 configs (pretrained=False, randomised), an
    SN-Net checkpoint with random stitching layers, exported with the CLI."""
    import torch

    d = tmp_path_factory.mktemp("deit")
    models, paths = [], []
    for i, name in enumerate(DEIT):
        m = timm_vit(100 + i, name=name)
        p = d / f"{name}.safetensors"
        write_safetensors(p, state_dict_np(m))
        models.append({"name": ["ti", "s", "b"][i], "model": m})
        paths.append(p)
    g = torch.Generator().manual_seed(7)
    layers, ckpt = {}, {}
    for pair, (f, e, df, de) in enumerate([(0, 1, 192, 384), (1, 2, 384, 768)]):
        for t in range(11):
            w = (torch.randn(de, df, generator=g) / df ** 0.5).numpy()
            b = (torch.randn(de, generator=g) * 0.05).numpy()
            layers.setdefault((f, e), []).append((w, b))
            ckpt[f"stitch_layers.{pair}.{t}.transform.weight"] = w
            ckpt[f"stitch_layers.{pair}.{t}.transform.bias"] = b
    ck = d / "stitch.safetensors"
    for i, m in enumerate(models):
        ckpt.update({f"anchors.{i}.{k}": v for k, v in state_dict_np(m["model"]).items()})
    write_safetensors(ck, ckpt)
    out = d / "deit.snrt"
    assert main(["stitch", "--anchors", *map(str, paths), "--stitch-weights", str(ck),
                 "--out", str(out), "--quiet"]) == 0
    return {"bundle": Bundle.open(out), "models": models, "layers": layers}


def _check_variants(bundle, models, layers, variants, batch=2, seed=0):
    x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    worst = 0.0
    for v in variants:
        got = run_graph(bundle.graph_path(v), x)
        ref = reference_logits(models, layers, v, x)
        assert got.shape == ref.shape == (batch, 1000)
        d = float(np.abs(got - ref).max())
        assert d <= TOL, f"{v.id}: max |Δlogit| {d:.2e} > {TOL}"
        worst = max(worst, d)
    return worst


def test_deit_sampled_variants_match_timm(deit_bundle):
    b = deit_bundle["bundle"]
    sample = [b.variant(i) for i in (0, 1, 2, 3, 11, 20, 36, 37, 50, 70)]
    _check_variants(b, deit_bundle["models"], deit_bundle["layers"], sample)


@pytest.mark.slow
def test_deit_all_71_variants_match_timm(deit_bundle):
    b = deit_bundle["bundle"]
    assert len(b.variants) == 71
    worst = _check_variants(b, deit_bundle["models"], deit_bundle["layers"], b.variants)
    print(f"worst max|Δlogit| over 71 DeiT variants: {worst:.2e}")


def test_deit_bundle_stores_each_weight_once(deit_bundle):
    b = deit_bundle["bundle"]
    anchor_params = sum(a["params"] for a in b.manifest.family["anchors"])
    stitch_params = 11 * (192 * 384 + 384) + 11 * (384 * 768 + 768)
    total = sum(f["bytes"] for f in b.manifest.files.values())
    assert total <= 1.1 * 4 * (anchor_params + stitch_params)
    # graphs reference weights.bin, they do not embed weights
    for v in b.variants[:5]:
        m = onnx.load(str(b.graph_path(v)), load_external_data=False)
        ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        inline = sum(len(t.raw_data) for t in m.graph.initializer)
        assert ext and inline < 1024
        assert {e.value for t in ext for e in t.external_data if e.key == "location"} == \
            {"weights.bin"}
        onnx.checker.check_model(str(b.graph_path(v)))


def test_tiny_family_all_variants_match_timm(tiny_family):
    b = Bundle.open(tiny_family["bundle"])
    assert len(b.variants) == 3 + 2 * 10  # depth 4: 10 positions per pair
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for v in b.variants:
        got = run_graph(b.graph_path(v), x)
        ref = reference_logits(tiny_family["models"], tiny_family["layers"], v, x)
        assert np.abs(got - ref).max() <= TOL, v.id


def test_piece_chain_equals_variant_graph(tiny_family):
    b = Bundle.open(tiny_family["bundle"])
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for v in (b.variant("ti"), b.variant("ti>s@2:1"), b.variant("s>b@0:1")):
        h = x
        for pid in v.pieces:
            s = ort.InferenceSession(str(b.piece_path(pid)), providers=["CPUExecutionProvider"])
            h = s.run(None, {s.get_inputs()[0].name: h})[0]
        np.testing.assert_allclose(h, run_graph(b.graph_path(v), x), atol=1e-5)


@pytest.mark.parametrize("ops", ["standard", "contrib", "decomposed"])
@pytest.mark.parametrize("kind", ["deit3", "distilled", "avgpool"])
def test_other_timm_vits_export_exactly(tmp_path, kind, ops):
    """DeiT III (layer scale, pos_embed without class token), distilled DeiT (dist token, two
    heads averaged), avg-pool ViT with fc_norm: each as a two-anchor family, in every
    operator form (--ops)."""
    import torch

    from snrt.family import family_from_anchor_files
    from snrt.variants import VariantSpace

    kw = dict(img_size=32, patch_size=8, depth=3, num_classes=5)
    if kind == "deit3":
        from timm.models.deit import VisionTransformer
        kw.update(no_embed_class=True, init_values=1e-1)
        cls = VisionTransformer
    elif kind == "distilled":
        from timm.models.deit import VisionTransformerDistilled as cls
    else:
        from timm.models.vision_transformer import VisionTransformer as cls
        kw.update(global_pool="avg", fc_norm=True, class_token=False)
    models, paths = [], []
    for i, (dim, heads) in enumerate([(32, 2), (48, 3)]):
        torch.manual_seed(i)
        m = cls(embed_dim=dim, num_heads=heads, **kw).eval()
        with torch.no_grad():
            for k, p in m.named_parameters():
                if "bias" in k or "norm" in k or "gamma" in k or "token" in k:
                    p.add_(torch.randn_like(p) * 0.1)
        if kind == "distilled":
            m.set_distilled_training(False)
        models.append(m)
        paths.append(tmp_path / f"{kind}{i}.safetensors")
        write_safetensors(paths[-1], state_dict_np(m),
                          {"snrt.config": json.dumps({"num_heads": heads})})
    fam = family_from_anchor_files(paths)
    c = fam.anchors[0].config
    assert c.layer_scale == (kind == "deit3") and c.no_embed_class == (kind == "deit3")
    assert c.distilled == (kind == "distilled") and c.fc_norm == (kind == "avgpool")
    out = tmp_path / "b.snrt"
    assert main(["stitch", "--anchors", *map(str, paths), "--calibrate", str(_images(tmp_path)),
                 "--out", str(out), "--quiet", "--ops", ops]) == 0
    b = Bundle.open(out)
    assert b.manifest.exports["onnx"]["ops"] == ops
    fam2 = b.load_family()
    layers = {k: [(s.weight, s.bias) for s in v] for k, v in fam2.stitch_layers.items()}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    named = [{"name": a.name, "model": m} for a, m in zip(fam.anchors, models)]
    space = VariantSpace([a.name for a in fam.anchors], [a.config for a in fam.anchors])
    assert len(b.variants) == len(space)
    for v in b.variants:
        got = run_graph(b.graph_path(v), x)
        ref = reference_logits(named, layers, v, x)
        assert np.abs(got - ref).max() <= TOL, (kind, v.id, np.abs(got - ref).max())


def _images(d, n=6, size=40, mode="RGB"):
    from PIL import Image

    img_dir = d / "calib"
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size + 7, 3) if mode == "RGB" else (size, size + 7)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
            img_dir / f"{i}.png")
    return img_dir


def test_export_refuses_missing_stitch_layers_and_existing_output(tiny_family, tmp_path, caplog):
    paths = [str(p) for p in tiny_family["paths"]]
    assert main(["stitch", "--anchors", *paths, "--out", str(tmp_path / "x.snrt")]) == 1
    assert "--stitch-weights" in caplog.text and "--calibrate" in caplog.text
    assert not (tmp_path / "x.snrt").exists()
    assert main(["stitch", "--anchors", *paths, "--calibrate", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x.snrt")]) == 1
    assert main(["stitch", "--snnet", str(tiny_family["ckpt"]),
                 "--out", str(tiny_family["bundle"])]) == 1
    assert "--force" in caplog.text


def test_snnet_checkpoint_read_directly(tiny_family, tmp_path):
    out = tmp_path / "direct.snrt"
    assert main(["stitch", "--snnet", str(tiny_family["ckpt"]), "--out", str(out),
                 "--quiet"]) == 0
    a, b = Bundle.open(out), Bundle.open(tiny_family["bundle"])
    assert [v.id for v in a.variants] == [v.id for v in b.variants]
    # same weights, same graphs: identical outputs
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for v in a.variants[::4]:
        np.testing.assert_array_equal(run_graph(a.graph_path(v), x),
                                      run_graph(b.graph_path(v.id), x))


def test_cli_help_for_every_command(capsys):
    for argv in (["--help"], ["stitch", "--help"], ["info", "--help"], ["tflite", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--calibrate" in capsys.readouterr().out
    assert main(["--list"]) == 0
    assert "onnx" in capsys.readouterr().out
