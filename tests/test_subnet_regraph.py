"""snrt-export regraph on elastic-subnet bundles (POA and UFO, the geometries and spaces of
tests/test_subnets_parity.py): every form rebuilt from the bundle's own weights.bin keeps it
byte-identical and the records as they were, holds its form's kernels, and every form's logits
(listed and unlisted subnets) match the independent timm reference (tests/subnet_reference.py)
within 1e-4; standard -> decomposed -> standard gives the same graph bytes, and the rebuild from
the bundle equals an export from the supernet file in that form."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

pytest.importorskip("timm")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import subnet_reference as R  # tests/ is on sys.path under pytest
from test_subnets_parity import POA_GEOM, UFO_GEOM, UFO_SPACE, _ufo_archs

import snrt
from exporters.cli import main
from exporters.regraph import regraph_bundle
from snrt.bundle import Bundle, update_manifest
from snrt.errors import SnrtError

TOL = 1e-4
WEIGHTS = "graphs/weights.bin"
POA_TABLE = {"kind": "poa", "widths": [64, 128, 192, 256, 320], "depths": list(range(1, 11)),
             "head_dim": 64}
POA_LISTED = ["w64d1", "w64d10", "w128d5", "w192d7", "w256d3", "w320d10"]
POA_UNLISTED = ["w64d4", "w192d2", "w320d6"]
ARCHS = _ufo_archs(14, seed=5)
UFO_LISTED, UFO_UNLISTED = ARCHS[:8], ARCHS[8:]  # the largest and the smallest are listed


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _export(d, name, sd, table, listed, *extra):
    w = d / f"{name}.safetensors"
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(w))
    sp = d / f"{name}.json"
    sp.write_text(json.dumps(table))
    lst = d / f"{name}.txt"
    lst.write_text("\n".join(listed) + "\n")
    out = d / f"{name}.snrt"
    assert main(["subnets", "--supernet", str(w), "--space", str(sp), "--archs", str(lst),
                 "--out", str(out), "--quiet", *extra]) == 0
    return out


def _with_accuracy(path):
    """Give the listed subnets accuracy records (made up here: regraph must keep them)."""
    def mutate(m, _p):
        for i, v in enumerate(m.variants):
            v.accuracy = {"top1": 50.0 + i, "dataset": "test", "split": "test", "n": 10}
    update_manifest(path, mutate)


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    d = tmp_path_factory.mktemp("subnet-regraph")
    out = {}
    for kind, geom, seed, table, listed, unlisted in (
            ("poa", POA_GEOM, 31, POA_TABLE, POA_LISTED, POA_UNLISTED),
            ("ufo", UFO_GEOM, 32, UFO_SPACE, UFO_LISTED, UFO_UNLISTED)):
        sd = R.state_dict_np(R.supernet(geom, seed=seed))
        std = _export(d, kind, sd, table, listed)  # the default form: standard
        _with_accuracy(std)
        dec = d / f"{kind}.dec.snrt"
        assert main(["regraph", str(std), "--ops", "decomposed", "--out", str(dec)]) == 0
        std2 = d / f"{kind}.std2.snrt"
        regraph_bundle(dec, std2, ops="standard")
        direct = _export(d, f"{kind}.direct", sd, table, listed, "--ops", "decomposed")
        out[kind] = {"sd": sd, "geom": geom, "listed": listed, "unlisted": unlisted,
                     "forms": {"standard": Bundle.open(std), "decomposed": Bundle.open(dec),
                               "standard again": Bundle.open(std2)},
                     "direct decomposed": Bundle.open(direct)}
    return out


def _reference(space, sid):
    sd, geom = space["sd"], space["geom"]
    if sid.startswith("w"):
        return R.poa_subnet(sd, geom, *R.parse_poa_id(sid))
    return R.ufo_subnet(sd, geom, sid, UFO_SPACE)


def _ops(path) -> collections.Counter:
    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


@pytest.mark.parametrize("kind", ["poa", "ufo"])
def test_regraph_keeps_weights_tensors_and_records(spaces, kind):
    forms = spaces[kind]["forms"]
    src = forms["standard"].manifest
    for name, b in forms.items():
        m = b.manifest
        assert m.files[WEIGHTS] == src.files[WEIGHTS], name  # sha256 and size
        assert m.tensors == src.tensors, name
        assert [vars(v) for v in m.variants] == [vars(v) for v in src.variants], name
        assert [vars(p) for p in m.pieces] == [vars(p) for p in src.pieces], name
        assert m.family == src.family and m.labels == src.labels, name
        assert m.exports["onnx"]["ops"] == name.split()[0], name
    assert [v.top1 for v in forms["decomposed"].variants] == \
        [50.0 + i for i in range(len(spaces[kind]["listed"]))]
    steps = forms["standard again"].manifest.provenance["regraphs"]
    assert [s["ops"] for s in steps] == ["decomposed", "standard"]
    assert steps[0]["from_digest"] == src.digest
    assert steps[1]["from_digest"] == forms["decomposed"].manifest.digest
    assert forms["standard again"].manifest.provenance["tool"] == "snrt-export subnets"


@pytest.mark.parametrize("kind", ["poa", "ufo"])
def test_each_form_holds_its_kernels(spaces, kind):
    forms = spaces[kind]["forms"]
    pid = next(p.id for p in forms["standard"].manifest.pieces if p.kind == "block")
    std, dec = (_ops(forms[f].piece_path(pid)) for f in ("standard", "decomposed"))
    assert std["Attention"] == 1 and std["Gelu"] == 1 and std["LayerNormalization"] == 2
    assert not {"Softmax", "Erf", "MatMul", "Transpose"} & set(std), std
    assert dec["Softmax"] == 1 and dec["Erf"] == 1 and "Attention" not in dec
    assert sum(std.values()) < sum(dec.values()) - 10
    opsets = {f: {o.domain: o.version for o in onnx.load(
        str(forms[f].piece_path(pid)), load_external_data=False).opset_import}
        for f in ("standard", "decomposed")}
    assert opsets == {"standard": {"": 23}, "decomposed": {"": 17}}


@pytest.mark.parametrize("kind", ["poa", "ufo"])
def test_every_form_matches_the_timm_reference(spaces, kind):
    sp = spaces[kind]
    x = _x()
    ids = sp["listed"][::2] + sp["unlisted"]
    want = {sid: R.forward(_reference(sp, sid), x) for sid in ids}
    for name, b in sp["forms"].items():
        listed = {v.id for v in b.variants}
        assert not listed & set(sp["unlisted"])
        with snrt.Runtime(b, lazy=True) as rt:
            for sid in ids:
                err = float(np.abs(rt.infer(x, variant=sid) - want[sid]).max())
                assert err <= TOL, (kind, name, sid, err)


@pytest.mark.parametrize("kind", ["poa", "ufo"])
def test_round_trip_and_rebuild_give_the_same_graph_bytes(spaces, kind):
    sp = spaces[kind]
    forms = sp["forms"]
    for p in forms["standard"].manifest.pieces:
        assert forms["standard again"].file(p.graph).read_bytes() == \
            forms["standard"].file(p.graph).read_bytes(), p.id
        # rebuilt from the bundle's weights.bin == exported from the supernet file
        assert forms["decomposed"].file(p.graph).read_bytes() == \
            sp["direct decomposed"].file(p.graph).read_bytes(), p.id
    assert sp["direct decomposed"].manifest.files[WEIGHTS] == \
        forms["decomposed"].manifest.files[WEIGHTS]


def test_regraph_refuses_what_it_cannot_rebuild(spaces, tmp_path, monkeypatch):
    src = spaces["poa"]["forms"]["standard"]
    with pytest.raises(SnrtError, match="standard or decomposed"):
        regraph_bundle(src.path, tmp_path / "c.snrt", ops="contrib")
    assert main(["regraph", str(src.path), "--ops", "contrib", "--out",
                 str(tmp_path / "c.snrt")]) != 0
    assert not (tmp_path / "c.snrt").exists()
    monkeypatch.setattr(Bundle, "open", classmethod(lambda cls, *a, **k: src))
    monkeypatch.setattr(src.manifest, "exports", {**src.manifest.exports, "tflite": {}})
    with pytest.raises(SnrtError, match="beside its ONNX graphs"):
        regraph_bundle(src.path, tmp_path / "t.snrt")
    monkeypatch.setattr(src.manifest, "exports", {})
    monkeypatch.setattr(src.manifest, "family", {**src.manifest.family, "kind": "tuners"})
    with pytest.raises(SnrtError, match="kind 'tuners'"):
        regraph_bundle(src.path, tmp_path / "k.snrt")
    assert not (tmp_path / "t.snrt").exists() and not (tmp_path / "k.snrt").exists()


def test_whole_subnet_graphs_are_rebuilt_too(spaces, tmp_path):
    """A subnet bundle may hold a whole graph for a listed subnet (export_subnets(graphs=));
    regraph rebuilds it in the new form at the same path, over the same weights.bin."""
    import onnxruntime as ort

    from exporters.subnet_export import export_subnets, supernet_from_bundle
    from snrt.bundle import BundleWriter

    sp = spaces["poa"]
    src = sp["forms"]["standard"]
    space = src.variant_space()
    space.add_listed([v.id for v in src.variants])
    rel = "graphs/v_w128d5.onnx"
    with BundleWriter(tmp_path / "whole.snrt") as w:
        w.commit(export_subnets(supernet_from_bundle(src), space, w, progress=False,
                                graphs={"w128d5": rel}))
    b = Bundle.open(tmp_path / "whole.snrt")
    assert b.variant("w128d5").graph == rel
    assert b.manifest.files[WEIGHTS] == src.manifest.files[WEIGHTS]
    out = regraph_bundle(b.path, tmp_path / "whole.dec.snrt", ops="decomposed")
    dec = Bundle.open(tmp_path / "whole.dec.snrt")
    assert dec.variant("w128d5").graph == rel and out.files[WEIGHTS] == b.manifest.files[WEIGHTS]
    assert _ops(dec.graph_path("w128d5"))["Softmax"] == 5 and \
        _ops(b.graph_path("w128d5"))["Attention"] == 5
    x = _x(2, seed=3)
    want = R.forward(_reference(sp, "w128d5"), x)
    for bundle in (b, dec):
        s = ort.InferenceSession(str(bundle.graph_path("w128d5")),
                                 providers=["CPUExecutionProvider"])
        assert float(np.abs(s.run(None, {"image": x})[0] - want).max()) <= TOL
