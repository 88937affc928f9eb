"""Elastic subnets (POA, VIMER-UFO) through snrt's public API only, against the independent
reference in tests/subnet_reference.py (docs/subnets-contract.md is the contract).

Used: `snrt-export subnets` (exporters.cli.main), `snrt.Runtime(...).infer(x, variant=ID)`,
`snrt.Bundle.open(...).variant(ID).flops/.params`, onnxruntime for `--standalone` files, and the
errors' types and messages. Skipped as a whole while snrt has no `subnets` command.

Default suite: >= 50 subnets per space at small geometries, logits within 1e-4 of the reference,
fvcore FLOPs/params on a few members of each space. `-m slow`: every member's FLOPs/params, a
sampled sweep, and the built-in ViT-B UFO table with VIMER-UFO's published arch strings.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
pytest.importorskip("fvcore")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import subnet_reference as R  # tests/ is on sys.path under pytest (rootdir conftest)

import snrt
from snrt.errors import SnrtError


def _has_subnets_command() -> bool:
    from exporters.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["subnets", "--help"])
        except SystemExit as e:  # argparse: 0 after --help, 2 for an unknown command
            return e.code == 0
    return False


if not _has_subnets_command():
    pytest.skip("snrt-export has no 'subnets' command yet (issue 15)", allow_module_level=True)

UFO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ufo"
TOL = 1e-4

# POA: 5 widths x 10 depths = 50 subnets (64-wide heads need embed 320 for 5 widths)
POA_GEOM = R.Geometry(embed_dim=320, depth=10, img_size=32, patch_size=8, mlp_hidden=640,
                      num_classes=10)
POA_WIDTHS = [64, 128, 192, 256, 320]
POA_DEPTHS = list(range(1, 11))
# UFO: the contract's example table at embed 256, depth 6
UFO_GEOM = R.Geometry(embed_dim=256, depth=6, img_size=32, patch_size=8, mlp_hidden=1024,
                      num_classes=10)
UFO_SPACE = R.ufo_space(256, 6, {"j": 4, "k": 5, "l": 6}, {"1": 4, "2": 3, "3": 2},
                        {"1": 4.0, "2": 3.5, "3": 3.0})
N_UFO = 50


def _export(*args: str) -> None:
    from exporters.cli import main

    rc = main(["subnets", *map(str, args)])
    assert rc == 0, f"snrt-export subnets {' '.join(map(str, args))} exited {rc}"


def _save_supernet(path: Path, sd: dict) -> Path:
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _few(ids: list[str], k: int) -> list[str]:
    """The first, the last and evenly spaced members between."""
    idx = np.unique(np.linspace(0, len(ids) - 1, k).round().astype(int))
    return [ids[i] for i in idx]


def _ufo_archs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    archs = ["l" + "111" * 6, "j" + "331" * 4 + "000" * 2]  # the largest and the smallest
    while len(archs) < n:
        a = R.random_ufo_arch(rng, UFO_SPACE)
        if a not in archs:
            archs.append(a)
    return archs


UFO_ARCHS = _ufo_archs(N_UFO, seed=3)
UFO_COST = UFO_ARCHS[:2] + _few(UFO_ARCHS[2:], 3)  # the largest, the smallest, three between


@pytest.fixture(scope="module")
def poa(tmp_path_factory):
    d = tmp_path_factory.mktemp("poa")
    sd = R.state_dict_np(R.supernet(POA_GEOM, seed=21))
    w = _save_supernet(d / "super.safetensors", sd)
    space = d / "poa.json"
    space.write_text(json.dumps({"kind": "poa", "widths": POA_WIDTHS, "depths": POA_DEPTHS,
                                 "head_dim": 64}))
    out = d / "poa.snrt"
    _export("--supernet", w, "--space", space, "--out", out)
    return {"dir": d, "sd": sd, "weights": w, "space": space, "bundle": out}


@pytest.fixture(scope="module")
def ufo(tmp_path_factory):
    d = tmp_path_factory.mktemp("ufo")
    sd = R.state_dict_np(R.supernet(UFO_GEOM, seed=22))
    w = _save_supernet(d / "super.safetensors", sd)
    space = d / "ufo.json"
    space.write_text(json.dumps(UFO_SPACE))
    archs = UFO_ARCHS
    lst = d / "archs.txt"
    lst.write_text("\n".join(archs) + "\n")
    out = d / "ufo.snrt"
    _export("--supernet", w, "--space", space, "--archs", lst, "--out", out)
    return {"dir": d, "sd": sd, "weights": w, "space": space, "bundle": out, "archs": archs}


@pytest.fixture(scope="module")
def poa_rt(poa):
    rt = snrt.Runtime(poa["bundle"])
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def ufo_rt(ufo):
    rt = snrt.Runtime(ufo["bundle"])
    yield rt
    rt.close()


def _poa_ref(sd, sid):
    w, d = R.parse_poa_id(sid)
    return R.poa_subnet(sd, POA_GEOM, w, d)


def _check_logits(rt, ref_model, sid, x):
    got = np.asarray(rt.infer(x, variant=sid))
    want = R.forward(ref_model, x)
    assert got.shape == want.shape, sid
    err = float(np.abs(got - want).max())
    assert err <= TOL, f"{sid}: max |dlogit| {err:.3g} > {TOL}"
    return err


def _check_cost(bundle, ref_model, sid, img_size):
    v = bundle.variant(sid)
    assert v.flops == R.fvcore_flops(ref_model, img_size), sid
    assert v.params == R.num_params(ref_model), sid


POA_IDS = [R.poa_id(w, d) for w in POA_WIDTHS for d in POA_DEPTHS]


# ---------------------------------------------------------------------------- POA

def test_poa_bundle_lists_exactly_the_grid(poa):
    b = snrt.Bundle.open(poa["bundle"])
    assert sorted(v.id for v in b.variants) == sorted(POA_IDS)
    assert len(POA_IDS) >= 50


def test_poa_logits_match_reference_for_every_subnet(poa, poa_rt):
    x = _images()
    errs = [_check_logits(poa_rt, _poa_ref(poa["sd"], sid), sid, x) for sid in POA_IDS]
    print(f"POA: {len(errs)} subnets, worst max |dlogit| {max(errs):.3g}")  # shown with -rP
    assert len(errs) >= 50 and max(errs) <= TOL


@pytest.mark.parametrize("sid", _few(POA_IDS, 5))
def test_poa_flops_params_equal_fvcore(poa, sid):
    _check_cost(snrt.Bundle.open(poa["bundle"]), _poa_ref(poa["sd"], sid), sid, 32)


def test_poa_switch_then_infer(poa, poa_rt):
    x = _images(1, seed=4)
    poa_rt.switch("w192d5")
    got = np.asarray(poa_rt.infer(x))
    want = R.forward(_poa_ref(poa["sd"], "w192d5"), x)
    assert float(np.abs(got - want).max()) <= TOL


@pytest.mark.parametrize("bad,allowed", [
    ("w96d3", POA_WIDTHS),      # not a listed width (and not a multiple of 64)
    ("w384d3", POA_WIDTHS),     # wider than the grid
    ("w128d11", POA_DEPTHS),    # deeper than the grid
    ("w128d0", POA_DEPTHS),
])
def test_poa_ids_outside_the_grid_are_refused(poa, poa_rt, bad, allowed):
    for call in (lambda: snrt.Bundle.open(poa["bundle"]).variant(bad),
                 lambda: poa_rt.infer(_images(1), variant=bad)):
        with pytest.raises(SnrtError) as e:
            call()
        msg = str(e.value)
        assert bad in msg or any(s in msg for s in ("width", "depth")), msg
        for a in (allowed[0], allowed[-1]):  # the allowed values are listed
            assert re.search(rf"\b{a}\b", msg), f"{msg!r} does not list {a}"


def test_poa_builtin_space_with_flags_lists_exactly_the_grid(poa, tmp_path):
    out = tmp_path / "flags.snrt"
    _export("--supernet", poa["weights"], "--space", "poa", "--widths", "128,192",
            "--depths", "4-6", "--out", out)
    b = snrt.Bundle.open(out)
    ids = sorted(v.id for v in b.variants)
    assert ids == sorted(R.poa_id(w, d) for w in (128, 192) for d in (4, 5, 6))
    with snrt.Runtime(out) as rt:
        x = _images(1, seed=5)
        for sid in ("w128d4", "w192d6"):
            _check_logits(rt, _poa_ref(poa["sd"], sid), sid, x)
        with pytest.raises(SnrtError):
            rt.infer(x, variant="w256d5")  # outside the flags' grid


def test_poa_standalone_onnx(poa, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "w192d5.onnx"
    _export("--supernet", poa["weights"], "--space", poa["space"], "--standalone", "w192d5",
            "--out", out)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(2, seed=6)
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    want = R.forward(_poa_ref(poa["sd"], "w192d5"), x)
    assert float(np.abs(got - want).max()) <= TOL


# POA teacher checkpoints: no head (features out), layer scale, chunked blocks, junk keys
TEACHER_GEOM = R.Geometry(embed_dim=192, depth=4, img_size=32, patch_size=8, mlp_hidden=768,
                          num_classes=0, layer_scale=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("teacher")
    sd = R.state_dict_np(R.supernet(TEACHER_GEOM, seed=23))
    t = R.timm_to_poa_teacher(sd, chunks=2)
    ck = d / "poa_teacher.pth"
    torch.save({"teacher": {k: torch.as_tensor(v) for k, v in t.items()}, "iteration": 7}, ck)
    space = d / "poa.json"
    space.write_text(json.dumps({"kind": "poa", "widths": [64, 128, 192], "depths": [2, 3, 4],
                                 "head_dim": 64}))
    return {"dir": d, "sd": sd, "teacher": t, "ckpt": ck, "space": space}


def test_poa_teacher_checkpoint_features(teacher):
    out = teacher["dir"] / "t.snrt"
    _export("--supernet", teacher["ckpt"], "--space", teacher["space"], "--out", out)
    x = _images(2, seed=7)
    with snrt.Runtime(out) as rt:
        for w in (64, 128, 192):
            for d in (2, 4):
                sid = R.poa_id(w, d)
                got = np.asarray(rt.infer(x, variant=sid))
                assert got.shape == (2, w), sid  # the class token after the final norm
                want = R.forward(R.poa_subnet(teacher["sd"], TEACHER_GEOM, w, d), x)
                assert float(np.abs(got - want).max()) <= TOL, sid
    b = snrt.Bundle.open(out)
    v = b.variant("w128d3")
    ref = R.poa_subnet(teacher["sd"], TEACHER_GEOM, 128, 3)
    assert (v.flops, v.params) == (R.fvcore_flops(ref, 32), R.num_params(ref))


def test_poa_teacher_without_final_norm_is_refused(teacher, caplog):
    import torch

    from exporters.cli import main

    t = {k: torch.as_tensor(v) for k, v in teacher["teacher"].items()
         if not k.startswith("backbone.norm.")}
    ck = teacher["dir"] / "no_norm.pth"
    torch.save({"teacher": t}, ck)
    out = teacher["dir"] / "no_norm.snrt"
    try:
        rc = main(["subnets", "--supernet", str(ck), "--space", str(teacher["space"]),
                   "--out", str(out)])
    except SnrtError as e:
        msg = str(e)
    else:
        assert rc != 0
        msg = caplog.text
    assert "norm" in msg, msg
    assert not (out / "manifest.json").exists()


# ---------------------------------------------------------------------------- UFO

def test_ufo_bundle_lists_exactly_the_given_archs(ufo):
    b = snrt.Bundle.open(ufo["bundle"])
    assert sorted(v.id for v in b.variants) == sorted(ufo["archs"])
    assert len(ufo["archs"]) >= 50


def test_ufo_logits_match_reference_for_every_listed_arch(ufo, ufo_rt):
    x = _images()
    errs = [_check_logits(ufo_rt, R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE), a, x)
            for a in ufo["archs"]]
    print(f"UFO: {len(errs)} subnets, worst max |dlogit| {max(errs):.3g}")  # shown with -rP
    assert len(errs) >= 50 and max(errs) <= TOL


@pytest.mark.parametrize("a", UFO_COST)
def test_ufo_flops_params_equal_fvcore(ufo, a):
    _check_cost(snrt.Bundle.open(ufo["bundle"]), R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE),
                a, 32)


def test_ufo_unlisted_arch_runs(ufo, ufo_rt):
    rng = np.random.default_rng(99)
    a = R.random_ufo_arch(rng, UFO_SPACE)
    while a in ufo["archs"]:
        a = R.random_ufo_arch(rng, UFO_SPACE)
    assert a not in {v.id for v in snrt.Bundle.open(ufo["bundle"]).variants}
    ref = R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE)
    _check_logits(ufo_rt, ref, a, _images(2, seed=8))
    _check_cost(snrt.Bundle.open(ufo["bundle"]), ref, a, 32)


def test_ufo_standalone_onnx_of_an_unlisted_arch(ufo, tmp_path):
    import onnxruntime as ort

    a = "k" + "231" + "321" + "111" + "331" + "121" + "000"
    assert a not in ufo["archs"]
    out = tmp_path / "one.onnx"
    _export("--supernet", ufo["weights"], "--space", ufo["space"], "--standalone", a,
            "--out", out)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(2, seed=9)
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    want = R.forward(R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE), x)
    assert float(np.abs(got - want).max()) <= TOL


# (arch, offending position 0-based or None for a length error, allowed values)
UFO_BAD = [
    ("l" + "111" * 5, None, ["19"]),
    ("l" + "111" * 6 + "1", None, ["19"]),
    ("m" + "111" * 6, 0, ["j", "k", "l"]),
    ("l111" + "411" + "111" * 4, 4, ["1", "2", "3"]),     # heads code of block 1
    ("l111" + "151" + "111" * 4, 5, ["1", "2", "3"]),     # mlp code of block 1
    ("j" + "111" * 4 + "000" + "100", 16, ["000"]),       # past depth 4: must be 000
    ("k" + "111" * 4 + "000" * 2, 13, ["1", "2", "3"]),   # inside depth 5: a real block
]


def _position_named(msg: str, pos0: int) -> bool:
    m = re.search(r"\b([01])-based\b", msg)
    assert m, f"{msg!r}: does not say whether positions are 0- or 1-based"
    return re.search(rf"\b{pos0 + int(m.group(1))}\b", msg) is not None


@pytest.mark.parametrize("bad,pos,allowed", UFO_BAD)
def test_ufo_archs_outside_the_space_are_refused(ufo, ufo_rt, bad, pos, allowed):
    for call in (lambda: snrt.Bundle.open(ufo["bundle"]).variant(bad),
                 lambda: ufo_rt.infer(_images(1), variant=bad)):
        with pytest.raises(SnrtError) as e:
            call()
        msg = str(e.value)
        if pos is not None:
            assert _position_named(msg, pos), f"{msg!r} does not name position {pos} (0-based)"
        for a in allowed:
            assert a in msg, f"{msg!r} does not list {a!r}"


def test_ufo_bad_arch_in_the_list_fails_the_export(ufo, tmp_path, caplog):
    from exporters.cli import main

    lst = tmp_path / "archs.txt"
    lst.write_text(ufo["archs"][0] + "\n" + "l111" + "151" + "111" * 4 + "\n")
    out = tmp_path / "bad.snrt"
    try:
        rc = main(["subnets", "--supernet", str(ufo["weights"]), "--space", str(ufo["space"]),
                   "--archs", str(lst), "--out", str(out)])
    except SnrtError as e:
        msg = str(e)
    else:
        assert rc != 0
        msg = caplog.text
    assert _position_named(msg, 5), msg
    assert not (out / "manifest.json").exists()


# ---------------------------------------------------------------------------- slow sweeps

@pytest.mark.slow
def test_poa_flops_params_of_every_subnet(poa):
    b = snrt.Bundle.open(poa["bundle"])
    for sid in POA_IDS:
        _check_cost(b, _poa_ref(poa["sd"], sid), sid, 32)


@pytest.mark.slow
def test_ufo_flops_params_of_every_listed_arch(ufo):
    b = snrt.Bundle.open(ufo["bundle"])
    for a in ufo["archs"]:
        _check_cost(b, R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE), a, 32)


@pytest.mark.slow
def test_ufo_sampled_sweep(ufo, tmp_path):
    out = tmp_path / "sampled.snrt"
    _export("--supernet", ufo["weights"], "--space", ufo["space"], "--sample", "200",
            "--out", out)
    b = snrt.Bundle.open(out)
    ids = [v.id for v in b.variants]
    assert len(ids) == 200 == len(set(ids))
    x = _images(2, seed=10)
    with snrt.Runtime(out) as rt:
        for a in ids:
            ref = R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE)  # parses: a member
            _check_logits(rt, ref, a, x)
    for a in _few(ids, 10):
        _check_cost(b, R.ufo_subnet(ufo["sd"], UFO_GEOM, a, UFO_SPACE), a, 32)


@pytest.mark.slow
def test_ufo_builtin_vit_b_table_with_published_archs(tmp_path):
    """The built-in `ufo` space (VIMER-UFO's ViT-B table) on a random ViT-B/16 supernet at a
    64-pixel input, with the first 50 arch strings of the CCF UFO training file."""
    geom = R.Geometry(embed_dim=768, depth=12, img_size=64, patch_size=16, mlp_hidden=3072,
                      num_classes=10)
    sd = R.state_dict_np(R.supernet(geom, seed=24))
    w = _save_supernet(tmp_path / "vitb.safetensors", sd)
    table = json.loads((UFO_DIR / "CCF_UFO_train.json").read_text())
    archs = [table[f"arch{i}"]["arch"] for i in range(1, 51)]
    lst = tmp_path / "archs.txt"
    lst.write_text("\n".join(archs) + "\n")
    out = tmp_path / "vitb.snrt"
    _export("--supernet", w, "--space", "ufo", "--archs", lst, "--out", out)
    b = snrt.Bundle.open(out)
    assert sorted(v.id for v in b.variants) == sorted(set(archs))
    x = np.random.default_rng(11).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with snrt.Runtime(out) as rt:
        for a in archs:
            _check_logits(rt, R.ufo_subnet(sd, geom, a, R.UFO_VITB), a, x)
    for a in _few(archs, 4):
        _check_cost(b, R.ufo_subnet(sd, geom, a, R.UFO_VITB), a, 64)
