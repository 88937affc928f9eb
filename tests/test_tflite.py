"""TFLite export (exporters/tflite_export.py) and backend (snrt/backends/tflite.py).

Export tests need TensorFlow and ai-edge-litert (pip install 'snrt[tflite]') and skip without
them; error-path tests that need neither always run. References: onnxruntime on the bundle's
graphs, and timm (PyTorch) itself for the fp32 files.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import threading
import types

import numpy as np
import pytest
from conftest import reference_logits, state_dict_np, timm_vit

from snrt.backends import tflite as backend
from snrt.backends.tflite import TFLiteRunner, read_tflite_info
from snrt.bundle import Bundle
from snrt.errors import (
    BundleError,
    InputError,
    MissingExtraError,
    ModelFileError,
    SnrtError,
    UnknownVariantError,
)
from snrt.fileio import sha256_file

PRECISIONS = ("fp32", "fp16", "int8")
VARIANTS = ("b", "ti>s@1:1", "s>b@2:3")  # an anchor (final norm) and a stitch of each pair


def _require(module: str, reason: str):
    """importorskip, except that SNRT_REQUIRE_TFLITE=1 (set in CI) makes a missing module a
    failure, so CI cannot pass without running the TFLite path."""
    if os.environ.get("SNRT_REQUIRE_TFLITE", "") not in ("", "0"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def _need_tflite():
    _require("ai_edge_litert.interpreter",
             "TFLite backend tests need ai-edge-litert (snrt[litert])")


def _need_tf():
    _need_tflite()
    return _require("tensorflow", "TFLite export needs tensorflow (snrt[tflite])")


def _ort(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def exported(tflite_exported):
    """A copy of the tiny bundle with VARIANTS exported at all three precisions (conftest:
    one export per session, shared with test_auto_backend.py; tests that change it copy it)."""
    _need_tf()
    assert tuple(tflite_exported["variants"]) == VARIANTS
    return tflite_exported


def _copy(exported, tmp_path):
    dst = tmp_path / "copy.snrt"
    shutil.copytree(exported["path"], dst)
    return dst


# ----------------------------------------------------------------------------- export

def test_export_records_every_file(exported):
    rep = exported["report"]
    assert rep.ok, rep.table()
    assert sorted((r.variant, r.precision) for r in rep.exported) == sorted(
        (v, p) for v in VARIANTS for p in PRECISIONS)
    b = Bundle.open(exported["path"])  # verifies size and sha256 of every listed file
    settings = b.manifest.exports["tflite"]
    assert settings["options"]["supported_ops"] == ["TFLITE_BUILTINS"]
    assert set(settings["tolerance"]) == set(PRECISIONS)
    assert settings["versions"]["tensorflow"] and settings["inputs"]["kind"] == "random_normal"
    sizes = {}
    for vid in VARIANTS:
        v = b.variant(vid)
        for prec in PRECISIONS:
            rec = v.exports["tflite"][prec]
            assert rec["file"].startswith(f"tflite/{prec}/") and rec["file"].endswith(".tflite")
            p = b.file(rec["file"])
            assert rec["bytes"] == p.stat().st_size
            assert b.manifest.files[rec["file"]]["sha256"] == sha256_file(p)
            assert rec["layout"] == "NCHW" and rec["n_inputs"] == 8
            assert 0 <= rec["max_abs_diff"] <= rec["allowed_abs_diff"]
            assert rec["settings_id"] == settings["settings_id"]
            sizes[vid, prec] = rec["bytes"]
    for vid in VARIANTS:  # fp16 halves the weights, int8 quarters them (plus graph overhead)
        assert sizes[vid, "fp16"] < 0.6 * sizes[vid, "fp32"]
        assert sizes[vid, "int8"] < 0.7 * sizes[vid, "fp16"]
    # variants not asked for are untouched
    assert not b.variant("ti").exports


@pytest.mark.parametrize("prec", PRECISIONS)
def test_files_are_builtin_only_and_load_in_litert(exported, prec):
    from ai_edge_litert.interpreter import Interpreter

    b = Bundle.open(exported["path"], verify=False)
    for vid in VARIANTS:
        p = b.file(b.variant(vid).exports["tflite"][prec]["file"])
        info = read_tflite_info(p)
        assert info.builtin_only and not info.flex_ops, info.op_names
        assert "GELU" in info.op_names and "FULLY_CONNECTED" in info.op_names
        if prec == "fp16":
            assert "DEQUANTIZE" in info.op_names
        gelus = _gelu_options(p)
        assert gelus and not any(g.approximate for g in gelus)  # exact erf GELU, like timm
        it = Interpreter(model_path=str(p))
        it.allocate_tensors()
        names = {o["op_name"] for o in it._get_ops_details()}
        assert not any(n.startswith("Flex") or n == "CUSTOM" for n in names), names


def _gelu_options(path):
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in m.operatorCodes]
    return [op.builtinOptions for g in m.subgraphs for op in g.operators
            if codes[op.opcodeIndex] == schema.BuiltinOperator.GELU]


@pytest.mark.parametrize("prec", PRECISIONS)
def test_deviation_within_tolerance_and_argmax_agrees(exported, prec):
    """Fresh inputs (not the export's verification inputs), run through the runner."""
    from exporters.tflite_export import DEFAULT_TOLERANCES

    b = Bundle.open(exported["path"], verify=False)
    x = np.random.default_rng(99).standard_normal((12, 3, 32, 32)).astype(np.float32)
    for vid in VARIANTS:
        v = b.variant(vid)
        ref = _ort(b.graph_path(v), x)
        with TFLiteRunner(b.file(v.exports["tflite"][prec]["file"])) as r:
            out = r.run(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        allowed = DEFAULT_TOLERANCES[prec].allowed(float(np.abs(ref).max()))
        diff = np.abs(out - ref).max()
        assert diff <= allowed, (vid, prec, diff, allowed)
        if prec == "fp32":  # float rounding only; a tanh-approximated GELU gives ~6e-6 here
            assert diff <= 2e-6 * np.abs(ref).max(), (vid, diff)
        else:
            assert diff > 1e-6, "quantized file behaves like fp32: precision option ignored?"
        srt = np.sort(ref, axis=1)
        decisive = srt[:, -1] - srt[:, -2] > 2 * diff  # argmax cannot flip there
        assert decisive.sum() >= 6
        np.testing.assert_array_equal(out.argmax(1)[decisive], ref.argmax(1)[decisive])


def test_fp32_files_match_timm(exported):
    """The TF rebuild vs the PyTorch models themselves (independent of snrt's ONNX graphs)."""
    fam = exported["family"]
    b = Bundle.open(exported["path"], verify=False)
    layers = {k: [(s.weight, s.bias) for s in v] for k, v in b.load_family().stitch_layers.items()}
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for vid in VARIANTS:
        v = b.variant(vid)
        ref = reference_logits(fam["models"], layers, v, x)
        out = TFLiteRunner(b.file(v.exports["tflite"]["fp32"]["file"])).run(x)
        assert np.abs(out - ref).max() <= 1e-4, (vid, np.abs(out - ref).max())


def test_resume_skips_recorded_files_and_redoes_damaged_ones(exported, tmp_path):
    from exporters.tflite_export import export_tflite

    path = _copy(exported, tmp_path)
    b = Bundle.open(path, verify=False)
    rel = b.variant("b").exports["tflite"]["fp16"]["file"]
    mtimes = {p: p.stat().st_mtime_ns for p in (path / "tflite").rglob("*.tflite")}
    rep = export_tflite(path, PRECISIONS, variants=list(VARIANTS), progress=False)
    assert rep.ok and len(rep.skipped) == 9 and not rep.exported
    assert mtimes == {p: p.stat().st_mtime_ns for p in (path / "tflite").rglob("*.tflite")}
    data = bytearray((path / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage one weight byte: same size, other hash
    (path / rel).write_bytes(bytes(data))
    with pytest.raises(BundleError):
        Bundle.open(path)
    rel8 = b.variant("ti>s@1:1").exports["tflite"]["int8"]["file"]
    (path / rel8).write_bytes((path / rel8).read_bytes()[:1000])  # truncated: other size
    rep = export_tflite(path, ("fp16", "int8"), variants=["b", "ti>s@1:1"], progress=False)
    assert sorted((r.variant, r.precision, r.status) for r in rep.results) == [
        ("b", "fp16", "exported"), ("b", "int8", "skipped"),
        ("ti>s@1:1", "fp16", "skipped"), ("ti>s@1:1", "int8", "exported")]
    Bundle.open(path)  # sizes and hashes match again


def test_refuses_out_of_tolerance_and_drops_stale_record(exported, tmp_path):
    from exporters.tflite_export import Tolerance, export_tflite

    path = _copy(exported, tmp_path)
    rel = Bundle.open(path, verify=False).variant("ti>s@1:1").exports["tflite"]["int8"]["file"]
    assert (path / rel).is_file()
    rep = export_tflite(path, ("int8",), variants=["ti>s@1:1"], progress=False,
                        tolerances={"int8": Tolerance(atol=0.0, rtol=1e-7)})
    assert not rep.ok and [r.variant for r in rep.refused] == ["ti>s@1:1"]
    r = rep.refused[0]
    assert r.max_abs_diff > r.allowed_abs_diff and "max|Δlogit|" in r.reason
    b = Bundle.open(path)  # still consistent
    assert "int8" not in b.variant("ti>s@1:1").exports.get("tflite", {})
    assert "fp32" in b.variant("ti>s@1:1").exports["tflite"]  # other precisions stay
    assert rel not in b.manifest.files and not (path / rel).exists()
    assert not list((path / "tflite").rglob(".*verify"))  # no temporary left behind


def test_export_refuses_flex_model(exported, tmp_path, monkeypatch):
    """The exporter's builtin-only check, fed a converter output that has a Flex op."""
    import exporters.tflite_export as te

    path = _copy(exported, tmp_path)
    flex = _flex_model()
    monkeypatch.setattr(te, "_convert", lambda tf, saved, prec: flex)
    rep = te.export_tflite(path, ("fp32",), variants=["ti"], progress=False)
    assert [(r.status, r.reason) for r in rep.results] == [("refused",
                                                           "non-builtin ops ['FlexErf']")]
    assert not (path / "tflite" / "fp32" / "v000_ti.tflite").exists()


def test_images_directory_and_other_vit_kinds(tmp_path):
    """Distilled DeiT, DeiT III (layer scale, no class pos-embed) and avg-pool + fc_norm ViTs,
    verified on images through snrt.preprocess; fp32 also against timm."""
    _need_tf()
    from PIL import Image
    from timm.models.deit import VisionTransformerDistilled

    from exporters.cli import main
    from exporters.tflite_export import export_tflite
    from snrt.weights_io import write_safetensors

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 47, 3), dtype=np.uint8)).save(
            img_dir / f"{i}.png")
    base = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 5, "embed_dim": 32,
            "num_heads": 2}
    kinds = {"distilled": {}, "deit3": {"no_embed_class": True, "init_values": 0.1},
             "avgpool": {"global_pool": "avg", "fc_norm": True, "class_token": False}}
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for kind, kw in kinds.items():
        if kind == "distilled":
            import torch

            torch.manual_seed(0)
            m = VisionTransformerDistilled(**base).eval()
            m.set_distilled_training(False)
        else:
            m = timm_vit(0, **base, **kw)
        p = tmp_path / f"{kind}.safetensors"
        write_safetensors(p, state_dict_np(m), {"snrt.config": json.dumps({"num_heads": 2})})
        out = tmp_path / f"{kind}.snrt"
        assert main(["stitch", "--anchors", str(p), "--out", str(out), "--quiet"]) == 0
        rep = export_tflite(out, ("fp32",), images=img_dir, n_inputs=4, progress=False)
        assert rep.ok, rep.table()
        assert rep.inputs["kind"] == "images" and rep.inputs["n"] == 4
        b = Bundle.open(out)
        v = b.variants[0]
        assert b.manifest.exports["tflite"]["inputs"]["kind"] == "images"
        import torch

        with torch.no_grad():
            ref = m(torch.as_tensor(x)).numpy()
        got = TFLiteRunner(b.file(v.exports["tflite"]["fp32"]["file"])).run(x)
        assert np.abs(got - ref).max() <= 1e-4, (kind, np.abs(got - ref).max())


def test_export_validates_arguments_before_work(exported, tmp_path):
    from exporters.tflite_export import export_tflite

    path = _copy(exported, tmp_path)
    before = (path / "manifest.json").read_bytes()
    with pytest.raises(SnrtError, match="known"):
        export_tflite(path, ("fp64",), progress=False)
    with pytest.raises(UnknownVariantError):
        export_tflite(path, ("fp32",), variants=["nope"], progress=False)
    with pytest.raises(InputError):
        export_tflite(path, ("fp32",), images=tmp_path / "missing", progress=False)
    assert (path / "manifest.json").read_bytes() == before


# ----------------------------------------------------------------------------- runner

def _flex_model() -> bytes:
    tf = _need_tf()
    fn = tf.function(lambda x: tf.math.erf(x) * 2.0,
                     input_signature=[tf.TensorSpec([1, 3, 4, 4], tf.float32)])
    m = tf.Module()
    m.f = fn
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], m)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                      tf.lite.OpsSet.SELECT_TF_OPS]
    return conv.convert()


def test_runner_rejects_flex_model(tmp_path):
    _need_tf()
    p = tmp_path / "flex.tflite"
    p.write_bytes(_flex_model())
    assert read_tflite_info(p).flex_ops == ["FlexErf"]
    with pytest.raises(ModelFileError, match=r"Select-TF \(Flex\) ops \['FlexErf'\]"):
        TFLiteRunner(p)


def test_runner_rejects_corrupt_and_truncated_files(exported, tmp_path):
    b = Bundle.open(exported["path"], verify=False)
    good = b.file(b.variant("b").exports["tflite"]["int8"]["file"]).read_bytes()
    cases = {"truncated_half": good[: len(good) // 2], "truncated_tiny": good[:12],
             "garbage": np.random.default_rng(0).bytes(4096),
             "bad_identifier": good[:4] + b"XXXX" + good[8:], "empty": b""}
    for name, data in cases.items():
        p = tmp_path / f"{name}.tflite"
        p.write_bytes(data)
        with pytest.raises(ModelFileError, match="re-export|corrupt|truncated"):
            TFLiteRunner(p)
    with pytest.raises(ModelFileError, match="no such"):
        TFLiteRunner(tmp_path / "absent.tflite")


def test_runner_batches_layout_and_input_checks(exported):
    b = Bundle.open(exported["path"], verify=False)
    v = b.variant("s>b@2:3")
    r = TFLiteRunner(b.file(v.exports["tflite"]["fp32"]["file"]), threads=1)
    assert r.layout == "NCHW" and r.input_shape == (3, 32, 32) and r.num_classes == 7
    assert not r.dynamic_batch
    x = np.random.default_rng(2).standard_normal((5, 3, 32, 32)).astype(np.float32)
    whole = r.run(x)
    singles = np.concatenate([r.run(x[i:i + 1]) for i in range(5)])
    np.testing.assert_array_equal(whole, singles)
    np.testing.assert_allclose(r.run(x.astype(np.float64)), whole, atol=1e-6)
    for bad in (x[0], x[:, :, :16], x[:0], x.astype(np.int32), [x]):
        with pytest.raises(InputError):
            r.run(bad)
    r.close()
    r.close()
    with pytest.raises(SnrtError, match="closed"):
        r.run(x)


def test_runner_is_safe_from_several_threads(exported):
    """Without the runner's lock, concurrent invokes raise or return other threads' results."""
    b = Bundle.open(exported["path"], verify=False)
    r = TFLiteRunner(b.file(b.variant("b").exports["tflite"]["fp32"]["file"]))
    xs = [np.random.default_rng(i).standard_normal((2, 3, 32, 32)).astype(np.float32)
          for i in range(4)]
    expect = [r.run(x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(40):
                if not np.array_equal(r.run(xs[i]), expect[i]):
                    errors.append(f"thread {i}: wrong output")
        except Exception as e:  # noqa: BLE001 - any error in a thread is a failure here
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_runtime_serves_tflite_variants(exported):
    import snrt

    b = Bundle.open(exported["path"])
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    rt = snrt.Runtime(b, backend="tflite", precision="int8", variants=list(VARIANTS))
    try:
        for vid in VARIANTS:
            rt.switch(vid)
            got = rt.infer(x)
            got = getattr(got, "logits", got)
            want = TFLiteRunner(b.file(b.variant(vid).exports["tflite"]["int8"]["file"])).run(x)
            np.testing.assert_array_equal(got, want)
        assert rt._backend.info()["precision"] == "int8"
    finally:
        rt.close()
    with pytest.raises(BundleError, match="no TFLite"):
        snrt.Runtime(b, backend="tflite", precision="fp16", variants=["ti"])


# ----------------------------------------------------------------------------- errors
# These need neither TensorFlow nor LiteRT installed.

def _hide_modules(monkeypatch, *names):
    real = backend.importlib.import_module

    def fake(name, *a, **k):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(backend.importlib, "import_module", fake)


def test_missing_litert_raises_missing_extra(monkeypatch):
    _hide_modules(monkeypatch, "ai_edge_litert", "tflite_runtime")
    with pytest.raises(MissingExtraError) as e:
        backend.load_engine()
    assert e.value.extra == "litert" and "snrt[litert]" in str(e.value)


def test_old_tflite_runtime_with_numpy2_is_explained(monkeypatch):
    _hide_modules(monkeypatch, "ai_edge_litert")
    mod = types.ModuleType("tflite_runtime.interpreter")
    mod.Interpreter = object
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", mod)
    monkeypatch.setattr(backend.np, "__version__", "2.4.0")
    with pytest.raises(MissingExtraError, match="numpy<2"):
        backend.load_engine()
    monkeypatch.setattr(backend.np, "__version__", "1.26.4")
    assert backend.load_engine().name == "tflite_runtime"


def test_op_version_rejection_is_explained(exported, monkeypatch):
    class OldInterpreter:
        def __init__(self, **kw):
            raise ValueError("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'."
                             " An older version of this builtin might be supported.")

    monkeypatch.setattr(backend, "load_engine",
                        lambda prefer=None: backend.Engine("tflite_runtime", "2.14.0",
                                                           OldInterpreter))
    b = Bundle.open(exported["path"], verify=False)
    with pytest.raises(ModelFileError, match="ai-edge-litert"):
        TFLiteRunner(b.file(b.variant("b").exports["tflite"]["int8"]["file"]))


def test_export_without_tensorflow_raises_missing_extra(tiny_family, tmp_path, monkeypatch):
    import importlib.util

    import exporters.tflite_export as te

    real = importlib.util.find_spec
    monkeypatch.setattr(te.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    path = tmp_path / "t.snrt"
    shutil.copytree(tiny_family["bundle"], path)
    with pytest.raises(MissingExtraError) as e:
        te.export_tflite(path, progress=False)
    assert e.value.extra == "tflite" and "tensorflow" in str(e.value)
    assert not (path / "tflite").exists()


def test_backend_create_without_exports_fails_clearly(tiny_family):
    _need_tflite()
    from snrt.backends import create_backend

    with pytest.raises(BundleError, match="no TFLite fp32 files"):
        create_backend("tflite", Bundle.open(tiny_family["bundle"], verify=False))
