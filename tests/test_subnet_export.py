"""Elastic subnets exported as pieces over one weights file, run by snrt.Runtime, vs an independent
PyTorch reference (timm VisionTransformer, pretrained=False, weights sliced as POA's and UFO's
code slice them: tests/subnet_slicing.py; the second, independent one is
tests/subnet_reference.py). Test geometry: embed 256, img 32, patch 8 (17 tokens); POA on depth
8 with head_dim 32 (8 widths x 8 depths = 64 members), UFO on depth 6 with the contract's table
(9^4 + 9^5 + 9^6 members)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from subnet_slicing import make_supernet, poa_reference, ufo_reference

import snrt
from exporters.cli import main as export_main
from snrt.bundle import Bundle
from snrt.errors import BundleError, SubnetConfigError
from snrt.onnx_file import read_onnx_info
from snrt.weights_io import write_safetensors

TOL = 1e-4
UFO = {"kind": "ufo", "embed_dim": 256, "max_depth": 6, "head_dim": 64,
       "depth_codes": {"j": 4, "k": 5, "l": 6}, "heads_codes": {"1": 4, "2": 3, "3": 2},
       "mlp_codes": {"1": 4.0, "2": 3.5, "3": 3.0}, "embed_codes": {"1": 256}}
POA = {"kind": "poa", "widths": list(range(32, 257, 32)), "depths": list(range(1, 9)),
       "head_dim": 32}


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _export(tmp, sd, table, *extra, name="b"):
    w = tmp / f"{name}.safetensors"
    write_safetensors(w, sd)
    sp = tmp / f"{name}_space.json"
    sp.write_text(json.dumps(table))
    out = tmp / f"{name}.snrt"
    assert export_main(["subnets", "--supernet", str(w), "--space", str(sp), "--out", str(out),
                        "--quiet", *extra]) == 0
    return out, w, sp


@pytest.fixture(scope="module")
def ufo(tmp_path_factory):
    sd = make_supernet(embed=256, depth=6, seed=1)
    out, w, sp = _export(tmp_path_factory.mktemp("ufo"), sd, UFO, "--sample", "20")
    return sd, out, w, sp


@pytest.fixture(scope="module")
def poa(tmp_path_factory):
    sd = make_supernet(embed=256, depth=8, seed=2, head_dim=32)
    out, w, sp = _export(tmp_path_factory.mktemp("poa"), sd, POA)
    return sd, out, w, sp


def _ufo_ref(sd, rt, sid, x):
    s = rt.bundle._space.subnet(sid)
    m = ufo_reference(sd, s.depth, s.heads, [h / 256 for h in s.hidden], 32, 8, 10)
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def _poa_ref(sd, sid, x, head_dim=32, classes=10):
    w, d = (int(v) for v in sid[1:].split("d"))
    m = poa_reference(sd, w, d, 32, 8, classes, head_dim=head_dim)
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def test_ufo_50_subnets_match_pytorch(ufo):
    sd, out, _, _ = ufo
    rt = snrt.Runtime(out, lazy=True)
    space = rt.bundle._space
    listed = [v.id for v in rt.bundle.variants]
    ids = listed + [s for s in space.sample(80, seed=7) if s not in listed][:40]
    ids += space.extremes()
    assert len(set(ids)) >= 50
    x = _x()
    worst = 0.0
    for sid in dict.fromkeys(ids):
        y = rt.infer(x, variant=sid)
        worst = max(worst, float(np.abs(y - _ufo_ref(sd, rt, sid, x)).max()))
    assert worst <= TOL, worst
    # the pieces cover the space: 6 blocks x 9 choices + embed + head, no more
    assert len(rt.bundle.manifest.pieces) == 56
    rt.close()


def test_poa_50_subnets_match_pytorch(poa):
    sd, out, _, _ = poa
    b = Bundle.open(out)
    assert [v.id for v in b.variants] == [f"w{w}d{d}" for w in POA["widths"]
                                          for d in POA["depths"]]  # exactly the grid
    rt = snrt.Runtime(b, lazy=True)
    rng = np.random.default_rng(3)
    ids = [b.variants[i].id for i in sorted(rng.choice(len(b.variants), 50, replace=False))]
    x = _x()
    worst = max(float(np.abs(rt.infer(x, variant=s) - _poa_ref(sd, s, x)).max()) for s in ids)
    assert worst <= TOL, worst
    rt.close()


@pytest.mark.slow
def test_poa_all_subnets_match_pytorch(poa):
    sd, out, _, _ = poa
    rt = snrt.Runtime(out, lazy=True)
    x = _x(3, seed=4)
    worst = max(float(np.abs(rt.infer(x, variant=v.id) - _poa_ref(sd, v.id, x)).max())
                for v in rt.bundle.variants)
    assert worst <= TOL, worst


def test_any_member_switches_listed_or_not(ufo):
    sd, out, _, _ = ufo
    rt = snrt.Runtime(out)
    b = rt.bundle
    sid = next(s for s in b._space.sample(50, seed=11) if s not in {v.id for v in b.variants})
    v = b.variant(sid)  # unlisted: resolved from the space
    assert v.id == sid and v.flops == b._space.get(sid).flops and v.params > 0
    rt.switch(sid)
    assert rt.current.id == sid
    x = _x(1)
    assert np.abs(rt.infer(x) - _ufo_ref(sd, rt, sid, x)).max() <= TOL
    with pytest.raises(SubnetConfigError, match="position 1"):
        rt.switch("j411111111111000000")
    with pytest.raises(BundleError, match="standalone"):
        b.graph_path(sid)
    rt.close()


def test_ufo_pieces_alias_one_stored_copy(ufo):
    sd, out, _, _ = ufo
    b = Bundle.open(out)
    supernet_bytes = sum(a.nbytes for a in sd.values())
    # every slice is a view: weights.bin holds the supernet once (plus alignment padding)
    assert supernet_bytes <= b.weights_bytes() <= supernet_bytes * 1.01 + 65536
    views = 0
    for p in b.manifest.pieces:
        info = read_onnx_info(b.piece_path(p.id).read_bytes())
        views += sum("[" in r.tensor for r in info.external)
        assert all(r.location == "weights.bin" for r in info.external)
    assert views > 0


def test_tampered_view_offset_is_refused(ufo, tmp_path):
    import shutil

    _, out, _, _ = ufo
    dst = tmp_path / "t.snrt"
    shutil.copytree(out, dst)
    m = json.loads((dst / "manifest.json").read_text())
    rel = next(p["graph"] for p in m["pieces"] if p["kind"] == "block")
    data = (dst / rel).read_bytes()
    import onnx

    model = onnx.load_from_string(data)
    t = next(t for t in model.graph.initializer if "[" in t.name and t.name.endswith("]"))
    for e in t.external_data:
        if e.key == "offset":
            e.value = str(int(e.value) + 4096)
    (dst / rel).write_bytes(model.SerializeToString())
    from snrt.bundle import record_file
    from snrt.manifest import manifest_from_json, write_manifest

    man = manifest_from_json(m)
    record_file(man, dst, rel)
    write_manifest(dst / "manifest.json", man)
    with pytest.raises(BundleError, match="tensors table"):
        Bundle.open(dst).piece_path(next(p["id"] for p in m["pieces"] if p["graph"] == rel))


def test_standalone_onnx_is_self_contained_and_equal(poa, tmp_path):
    import onnxruntime as ort

    sd, _, w, sp = poa
    out = tmp_path / "w160d6.onnx"
    assert export_main(["subnets", "--supernet", str(w), "--space", str(sp), "--standalone",
                        "w160d6", "--out", str(out)]) == 0
    assert not read_onnx_info(out.read_bytes()).external
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _x()
    assert np.abs(s.run(None, {"image": x})[0] - _poa_ref(sd, "w160d6", x)).max() <= TOL
    assert export_main(["subnets", "--supernet", str(w), "--space", str(sp), "--standalone",
                        "w100d6", "--out", str(tmp_path / "bad.onnx")]) == 1


def test_poa_headless_teacher_with_layer_scale(tmp_path):
    """A POA-style supernet without a classifier (features out) and with layer scale."""
    sd = make_supernet(embed=256, depth=6, seed=5, layer_scale=True)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    table = {"kind": "poa", "widths": [128, 192, 256], "depths": [3, 6], "head_dim": 64}
    out, _, _ = _export(tmp_path, sd, table, name="h")
    rt = snrt.Runtime(out, lazy=True)
    assert rt.bundle.manifest.output["shape"] == ["batch", "features"]
    x = _x()
    for sid in ("w128d3", "w192d6", "w256d6"):
        y = rt.infer(x, variant=sid)
        ref = _poa_ref(sd, sid, x, head_dim=64, classes=0)
        assert y.shape == ref.shape == (2, int(sid[1:].split("d")[0]))
        assert np.abs(y - ref).max() <= TOL


def test_flags_override_the_builtin_poa_space(tmp_path):
    sd = make_supernet(embed=256, depth=6, seed=6)
    w = tmp_path / "s.safetensors"
    write_safetensors(w, sd)
    out = tmp_path / "s.snrt"
    assert export_main(["subnets", "--supernet", str(w), "--space", "poa", "--widths",
                        "128,256", "--depths", "5-6", "--out", str(out), "--quiet"]) == 0
    assert [v.id for v in Bundle.open(out).variants] == ["w128d5", "w128d6", "w256d5",
                                                         "w256d6"]
    with pytest.raises(SubnetConfigError, match=r"allowed widths: \[128, 256\]"):
        Bundle.open(out).variant("w192d5")


@pytest.mark.parametrize("prepack", [True, False])
def test_shared_weights_mode_matches_pytorch(ufo, poa, prepack):
    """share_weights: every session's tensors are views of one mmap of weights.bin."""
    sd, out, _, _ = ufo
    rt = snrt.Runtime(out, lazy=True, share_weights=True, prepack=prepack)
    x = _x()
    for sid in rt.bundle._space.sample(4, seed=21):
        assert np.abs(rt.infer(x, variant=sid) - _ufo_ref(sd, rt, sid, x)).max() <= TOL
    sd, out, _, _ = poa
    rt = snrt.Runtime(out, lazy=True, share_weights=True, prepack=prepack)
    for sid in ("w96d3", "w256d8"):
        assert np.abs(rt.infer(x, variant=sid) - _poa_ref(sd, sid, x)).max() <= TOL


def test_poa_slice_and_scale_fold_when_a_piece_loads(poa, tmp_path):
    """POA's column slice and D/W scale are in-graph Slice/Mul on stored views; onnxruntime
    folds them at load, so the running graph multiplies by pre-scaled weights (no Slice left,
    no Mul beyond GELU's three)."""
    import collections

    import onnx
    import onnxruntime as ort

    _, out, _, _ = poa
    b = Bundle.open(out)
    path = b.piece_path("w128.block3")
    def ops(p):
        return collections.Counter(n.op_type for n in onnx.load(
            str(p), load_external_data=False).graph.node)

    before = ops(path)
    assert before["Slice"] == 6 and before["Mul"] > 3  # q, k, v, proj, fc1, fc2; + scales
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    after = ops(tmp_path / "opt.onnx")
    assert after["Slice"] == 0 and after["Mul"] <= 3, after
