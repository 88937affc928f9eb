"""The graphs' operator forms (snrt-export stitch --ops): the fused forms hold the fused
kernels and fewer nodes, compute what timm computes (every variant of the tiny family), and
share one weights.bin layout with the decomposed form; re-exporting a bundle's graphs
(regraph_bundle) keeps its weights.bin byte-identical (with tasks: tests/test_task_regraph.py)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import reference_logits

from exporters.cli import main
from exporters.regraph import regraph_bundle
from snrt.bundle import Bundle
from snrt.errors import SnrtError

TOL = 1e-4
FORMS = ["standard", "contrib", "decomposed"]


@pytest.fixture(scope="module")
def forms(tiny_family, tmp_path_factory):
    d = tmp_path_factory.mktemp("ops")
    out = {}
    for ops in FORMS:
        p = d / f"{ops}.snrt"
        assert main(["stitch", "--anchors", *map(str, tiny_family["paths"]), "--names", "ti",
                     "s", "b", "--stitch-weights", str(tiny_family["ckpt"]), "--out", str(p),
                     "--quiet", "--ops", ops]) == 0
        out[ops] = Bundle.open(p)
    return out


def _ops(path) -> collections.Counter:
    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter((n.domain or "", n.op_type) for n in m.graph.node)


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_fused_forms_hold_fused_kernels_and_fewer_nodes(forms):
    depth = 4
    blocks = {ops: _ops(b.piece_path("b.block1")) for ops, b in forms.items()}
    std, ms, dec = blocks["standard"], blocks["contrib"], blocks["decomposed"]
    assert std[("", "Attention")] == 1 and std[("", "Gelu")] == 1
    assert std[("", "LayerNormalization")] == 2
    assert ms[("com.microsoft", "Attention")] == 1
    assert ms[("com.microsoft", "SkipLayerNormalization")] == 1
    assert ms[("com.microsoft", "BiasGelu")] == 1
    for c in (std, ms):
        assert not {("", "Erf"), ("", "Softmax"), ("", "Transpose")} & set(c)
    assert dec[("", "Erf")] == 1 and dec[("", "Softmax")] == 1
    n = {ops: sum(c.values()) for ops, c in blocks.items()}
    assert n["contrib"] < n["standard"] < n["decomposed"] / 1.5, n
    whole = {ops: sum(_ops(b.graph_path("b")).values()) for ops, b in forms.items()}
    assert whole["decomposed"] - whole["standard"] == depth * (n["decomposed"] - n["standard"])
    opsets = {ops: {o.domain: o.version for o in onnx.load(
        str(b.graph_path("b")), load_external_data=False).opset_import}
        for ops, b in forms.items()}
    assert opsets == {"standard": {"": 23}, "contrib": {"": 17, "com.microsoft": 1},
                      "decomposed": {"": 17}}
    for ops, b in forms.items():
        assert b.manifest.exports["onnx"]["ops"] == ops


def test_every_form_matches_timm_and_the_decomposed_graphs(forms, tiny_family):
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for v in forms["decomposed"].variants:
        ref = reference_logits(tiny_family["models"], tiny_family["layers"], v, x)
        dec = _run(forms["decomposed"].graph_path(v.id), x)
        for ops in ("standard", "contrib"):
            b = forms[ops]
            got = _run(b.graph_path(v.id), x)
            assert np.abs(got - ref).max() <= TOL, (ops, v.id, np.abs(got - ref).max())
            assert np.abs(got - dec).max() <= TOL, (ops, v.id)
            h = x  # the chain of piece graphs the runtime runs
            for pid in b.variant(v.id).pieces:
                h = _run(b.piece_path(pid), h)
            assert np.abs(h - ref).max() <= TOL, (ops, v.id, "pieces")


def test_weights_layout_does_not_depend_on_the_form(forms):
    files = {ops: b.manifest.files["graphs/weights.bin"]["sha256"] for ops, b in forms.items()}
    assert len(set(files.values())) == 1, files
    assert forms["standard"].manifest.tensors == forms["decomposed"].manifest.tensors


def test_regraph_keeps_weights_and_records(forms, tmp_path):
    src = forms["decomposed"]
    out = tmp_path / "re.snrt"
    regraph_bundle(src.path, out, ops="standard")
    b = Bundle.open(out)
    assert b.manifest.files["graphs/weights.bin"] == src.manifest.files["graphs/weights.bin"]
    assert b.manifest.exports["onnx"]["ops"] == "standard"
    assert b.manifest.family == src.manifest.family
    assert [v.accuracy for v in b.variants] == [v.accuracy for v in src.variants]
    assert b.manifest.provenance["regraphs"][-1]["from_digest"] == src.manifest.digest
    assert _ops(b.graph_path("s"))[("", "Attention")] == 4
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for v in src.variants:
        np.testing.assert_allclose(_run(b.graph_path(v.id), x), _run(src.graph_path(v.id), x),
                                   atol=TOL)


def test_regraph_refuses_bundles_with_tflite(forms, tmp_path, monkeypatch):
    src = forms["decomposed"]
    m = src.manifest
    monkeypatch.setattr(m, "exports", {"tflite": {"fp32": {}}})
    monkeypatch.setattr(Bundle, "open", classmethod(lambda cls, *a, **k: src))
    with pytest.raises(SnrtError, match="beside its ONNX graphs"):
        regraph_bundle(src.path, tmp_path / "x.snrt")
    assert not (tmp_path / "x.snrt").exists()
