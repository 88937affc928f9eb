"""TFLite export of elastic subnets (issue 15 item 5): `snrt-export tflite B.snrt --variants
ID,ID` on a subnets bundle, each file verified like stitches' files, run by the tflite backend
and checked here against the independent PyTorch reference (tests/subnet_reference.py: timm
models holding the weights sliced as POA's and UFO's code slice them). Test geometry as in
tests/test_subnet_export.py: embed 256, 32 px, patch 8; 64-wide heads (the reference's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import subnet_reference as R  # tests/ is on sys.path under pytest

import snrt
from exporters.cli import main
from exporters.tflite_export import DEFAULT_TOLERANCES, export_tflite
from snrt.bundle import Bundle
from snrt.errors import SnrtError, SubnetConfigError

POA_GEOM = R.Geometry(embed_dim=256, depth=6, img_size=32, patch_size=8, mlp_hidden=1024,
                      num_classes=10)
POA_TABLE = {"kind": "poa", "widths": [128, 192, 256], "depths": [3, 4, 5, 6], "head_dim": 64}
UFO_GEOM = R.Geometry(embed_dim=256, depth=6, img_size=32, patch_size=8, mlp_hidden=1024,
                      num_classes=10)
UFO_TABLE = R.ufo_space(256, 6, {"j": 4, "k": 5, "l": 6}, {"1": 4, "2": 3, "3": 2},
                        {"1": 4.0, "2": 3.5, "3": 3.0})
UFO_LISTED = "l" + "111" * 6  # the largest (listed by default)
UFO_UNLISTED = "k" + "231" + "321" + "131" + "221" + "311" + "000"  # 5 blocks, not listed


def _x(n=4, seed=7):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _bundle(d, geom, table, seed, *extra):
    sd = R.state_dict_np(R.supernet(geom, seed=seed))
    w = d / "super.safetensors"
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(w))
    sp = d / "space.json"
    sp.write_text(json.dumps(table))
    out = d / "b.snrt"
    assert main(["subnets", "--supernet", str(w), "--space", str(sp), "--out", str(out),
                 "--quiet", *extra]) == 0
    return sd, out


@pytest.fixture(scope="module")
def poa(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("poa"), POA_GEOM, POA_TABLE, 31)


@pytest.fixture(scope="module")
def ufo(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("ufo"), UFO_GEOM, UFO_TABLE, 32)


def _check_vs_torch(bundle, sid, ref_model, precision):
    """The tflite backend's logits for `sid` vs the PyTorch reference, within the tolerance
    the stitches' TFLite files are held to."""
    x = _x()
    rt = snrt.Runtime(bundle, backend="tflite", precision=precision, variants=[sid])
    try:
        got = np.stack([np.asarray(rt.infer(x[i:i + 1], variant=sid))[0]
                        for i in range(len(x))])
    finally:
        rt.close()
    want = R.forward(ref_model, x)
    err = float(np.abs(got - want).max())
    allowed = DEFAULT_TOLERANCES[precision].allowed(float(np.abs(want).max()))
    assert err <= allowed, f"{sid} {precision}: max|Δlogit| {err:.3g} > {allowed:.3g}"
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75, sid
    return err


def _rec(bundle, sid, precision):
    return Bundle.open(bundle, verify=True).variant(sid).exports["tflite"][precision]


def test_poa_fp32_two_subnets_match_reference_and_resume(poa):
    sd, b = poa
    assert main(["tflite", str(b), "--precisions", "fp32", "--variants", "w128d3,w256d6",
                 "--quiet"]) == 0
    for sid in ("w128d3", "w256d6"):
        w, d = R.parse_poa_id(sid)
        err = _check_vs_torch(b, sid, R.poa_subnet(sd, POA_GEOM, w, d), "fp32")
        rec = _rec(b, sid, "fp32")  # recorded like stitches' files, manifest valid (hashes)
        assert rec["file"].startswith("tflite/fp32/") and rec["max_abs_diff"] <= \
            rec["allowed_abs_diff"], rec
        print(f"{sid} fp32 vs torch {err:.2e}, vs ONNX {rec['max_abs_diff']:.2e}")
    manifest = (b / "manifest.json").read_bytes()
    again = export_tflite(b, ["fp32"], variants=["w128d3"], progress=False)
    assert [r.status for r in again.results] == ["skipped"]  # resumes: nothing redone
    assert (b / "manifest.json").read_bytes() == manifest


def test_poa_fp16_int8_of_one_subnet(poa):
    sd, b = poa
    r = export_tflite(b, ["fp16", "int8"], variants=["w192d4"], progress=False)
    assert r.ok and [x.status for x in r.results] == ["exported", "exported"], r.table()
    ref = R.poa_subnet(sd, POA_GEOM, 192, 4)
    for prec in ("fp16", "int8"):
        err = _check_vs_torch(b, "w192d4", ref, prec)
        print(f"w192d4 {prec} vs torch {err:.2e}, vs ONNX "
              f"{_rec(b, 'w192d4', prec)['max_abs_diff']:.2e}")


def test_ufo_fp32_listed_and_unlisted_member(ufo):
    sd, b = ufo
    before = [v.id for v in Bundle.open(b).variants]
    assert UFO_LISTED in before and UFO_UNLISTED not in before
    r = export_tflite(b, ["fp32"], variants=[UFO_LISTED, UFO_UNLISTED], progress=False)
    assert r.ok, r.table()
    after = Bundle.open(b, verify=True)
    assert [v.id for v in after.variants] == before + [UFO_UNLISTED]  # now listed, appended
    assert after.variant(UFO_UNLISTED).index == len(before)
    for sid in (UFO_LISTED, UFO_UNLISTED):
        err = _check_vs_torch(b, sid, R.ufo_subnet(sd, UFO_GEOM, sid, UFO_TABLE), "fp32")
        print(f"{sid} fp32 vs torch {err:.2e}")
    with snrt.Runtime(b, variants=[UFO_UNLISTED]) as rt:  # still runs on onnxruntime's pieces
        x = _x(2)
        want = R.forward(R.ufo_subnet(sd, UFO_GEOM, UFO_UNLISTED, UFO_TABLE), x)
        assert np.abs(np.asarray(rt.infer(x)) - want).max() <= 1e-4


@pytest.mark.parametrize("bad,where", [("w160d3", "allowed widths"), ("w128d2", "allowed"),
                                       ("vit_b", r"w\{width\}d\{depth\}")])
def test_out_of_space_ids_are_refused_before_any_work(poa, bad, where):
    _, b = poa
    before = (b / "manifest.json").read_bytes()
    with pytest.raises(SubnetConfigError, match=where):
        export_tflite(b, ["fp32"], variants=["w128d3", bad], progress=False)
    assert (b / "manifest.json").read_bytes() == before


def test_ufo_out_of_space_arch_is_refused(ufo):
    _, b = ufo
    bad = "j" + "141" + "111" * 3 + "000" * 2  # mlp code '4' at position 2 (0-based)
    with pytest.raises(SubnetConfigError, match="position 2"):
        export_tflite(b, ["fp32"], variants=[bad], progress=False)


def test_default_refuses_more_than_20_listed_naming_the_flag(tmp_path):
    _, b = _bundle(tmp_path, UFO_GEOM, UFO_TABLE, 33, "--sample", "21")
    with pytest.raises(SnrtError, match="--variants"):
        export_tflite(b, ["fp32"], progress=False)


def test_help_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["tflite", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--variants" in out and "any member of its space" in out
