"""snrt-export tflite --task (exporters/task_tflite.py): a variant with a task as one TFLite
file, against the independent PyTorch reference of tests/tuner_reference.py (prompts as real
VPT-deep tokens there, folded into prefixes by the exporter), run by snrt.Runtime on the tflite
backend, resumable, recorded in the task's manifest record."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from task_files import backbone_bundle, random_task, write_task
from tuner_reference import Reference

import snrt
from exporters.task_bundle import add_task
from exporters.tflite_export import export_tflite
from snrt.preprocess import to_batch
from snrt.tuners import bundle_backbone_sha256, read_task_file


def _require(module: str) -> None:
    """Skip without `module`, except in CI (SNRT_REQUIRE_TFLITE=1), where that fails. Found,
    not imported: TensorFlow imported before torchvision crashes the process (segfault), and
    other test modules import timm at collection."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("SNRT_REQUIRE_TFLITE", "") not in ("", "0"):
            pytest.fail(f"{module} is required here (SNRT_REQUIRE_TFLITE=1)")
        pytest.skip(f"needs {module} (pip install 'snrt[tflite]')", allow_module_level=True)


_require("tensorflow")
_require("ai_edge_litert")

VARIANTS = ["s", "ti>s@5:6"]  # an anchor (final norm skipped by the task head) and a stitch
SAMPLES = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[:6]
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasktfl")
    shipped = snrt.Bundle.open(snrt.default_bundle(), verify="size")
    tensors, meta = random_task(bundle_backbone_sha256(shipped), name="faces",
                                tuners=(("adapter", 4), ("lora", 2), ("prefix", 2),
                                        ("prompt", 2)),
                                tuned={"ti": [0, 3, 5], "s": [6, 8, 11]}, heads=("ti", "s"),
                                variants=["ti", "s", "ti>s@5:6"], scale=0.15, seed=3)
    src = write_task(d / "faces.safetensors", tensors, meta)
    out = d / "tasks.snrt"
    add_task(backbone_bundle(), src, out=out)
    # the variants' own files first (the tflite backend runs a bundle's exported variants),
    # then the same variants with the task
    base = export_tflite(out, ["fp32"], variants=VARIANTS, progress=False)
    assert base.ok, base.table()
    report = export_tflite(out, ["fp32", "int8"], variants=VARIANTS, task="faces",
                           progress=False)
    bundle = snrt.Bundle.open(out)  # every file hashed, the manifest's rules checked
    ref = Reference(bundle.load_family(), read_task_file(src, bundle=bundle))
    return bundle, report, ref


def _images(bundle) -> np.ndarray:
    x, _ = to_batch([str(p) for p in SAMPLES], bundle.preprocess)
    noise = np.random.default_rng(0).standard_normal((2, *x.shape[1:])).astype(np.float32)
    return np.concatenate([x, noise])


def test_every_file_is_exported_verified_and_recorded(setup):
    bundle, report, _ = setup
    assert report.ok, report.table()
    assert sorted((r.variant, r.precision) for r in report.exported) == sorted(
        (f"{v}@faces", p) for v in VARIANTS for p in ("fp32", "int8"))
    task = bundle.task("faces")
    for v in VARIANTS:
        for prec in ("fp32", "int8"):
            rec = task.exports[v]["tflite"][prec]
            assert rec["max_abs_diff"] <= rec["allowed_abs_diff"]
            assert bundle.manifest.files[rec["file"]]["bytes"] == rec["bytes"]
            assert rec["file"].startswith(f"tflite/{prec}/t_faces.")
    # the variants' own records are untouched by the task export
    for v in VARIANTS:
        assert set(bundle.variant(v).exports["tflite"]) == {"fp32"}


def test_fp32_files_match_the_pytorch_reference(setup):
    bundle, _, ref = setup
    from snrt.backends.tflite import TFLiteRunner

    x = _images(bundle)
    for vid in VARIANTS:
        rec = bundle.task("faces").exports[vid]["tflite"]["fp32"]
        with TFLiteRunner(bundle.file(rec["file"]), threads=1, layout=rec["layout"]) as r:
            got = r.run(x)
        want = ref.route(bundle.variant(vid), x)
        assert got.shape == (len(x), 3)
        d = float(np.abs(got - want).max())
        print(f"max |dlogit| TFLite fp32 {vid}@faces vs PyTorch: {d:.2e}")
        assert d <= FP32_TOL, (vid, d)
        # and the task changes the output: a file of the plain variant would not pass
        assert np.abs(want).max() > 10 * FP32_TOL


def test_int8_files_stay_close_to_the_reference(setup):
    bundle, _, ref = setup
    from snrt.backends.tflite import TFLiteRunner

    x = _images(bundle)
    for vid in VARIANTS:
        rec = bundle.task("faces").exports[vid]["tflite"]["int8"]
        with TFLiteRunner(bundle.file(rec["file"]), threads=1, layout=rec["layout"]) as r:
            got = r.run(x)
        want = ref.route(bundle.variant(vid), x)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel <= 0.15, (vid, rel)  # the exporter's int8 tolerance (rtol 0.15)
        assert bundle.file(rec["file"]).stat().st_size < \
            bundle.file(bundle.task("faces").exports[vid]["tflite"]["fp32"]["file"]).stat().st_size


def test_runtime_runs_the_task_on_tflite(setup):
    bundle, _, ref = setup
    with snrt.Runtime(bundle, backend="tflite", variants=VARIANTS, initial="s") as rt:
        assert [t.name for t in rt.tasks] == ["faces"]
        n_before = rt._backend.info()["interpreters"]
        for vid in VARIANTS:
            res = rt.run(str(SAMPLES[0]), variant=vid, task="faces")
            assert res.task == "faces" and res.variant.id == vid
            batch, _ = to_batch(str(SAMPLES[0]), bundle.preprocess)
            want = ref.route(bundle.variant(vid), batch)[0]
            assert float(np.abs(np.asarray(res.logits) - want).max()) <= FP32_TOL
        rt.switch(task="faces")
        rt.switch("ti>s@5:6")
        rt.switch(task=False)
        assert rt._backend.info()["interpreters"] == n_before  # all ready at start
        assert rt.classify(str(SAMPLES[1]), task="faces")[0][0] in ("face", "other", "x")


def test_rerun_skips_and_errors_are_clear(setup, tmp_path):
    bundle, _, _ = setup
    again = export_tflite(bundle.path, ["fp32"], variants=VARIANTS, task="faces",
                          progress=False)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    with pytest.raises(snrt.SnrtError, match="not trained for \\['b'\\]"):
        export_tflite(bundle.path, ["fp32"], variants=["b"], task="faces", progress=False)
    with pytest.raises(snrt.SnrtError, match="no task 'cats'"):
        export_tflite(bundle.path, ["fp32"], task="cats", progress=False)
    with pytest.raises(snrt.SnrtError, match="no TFLite fp16 files"):
        snrt.Runtime(bundle, backend="tflite", precision="fp16", variants=VARIANTS,
                     tasks=["faces"])


def test_a_damaged_file_loses_its_record_and_is_exported_again(setup, tmp_path):
    import shutil

    bundle, _, _ = setup
    copy = tmp_path / "copy.snrt"
    shutil.copytree(bundle.path, copy)
    rec = bundle.task("faces").exports["s"]["tflite"]["int8"]
    (copy / rec["file"]).write_bytes(b"broken")
    again = export_tflite(copy, ["int8"], variants=["s"], task="faces", progress=False)
    assert [r.status for r in again.results] == ["exported"]
    m = json.loads((copy / "manifest.json").read_text())
    t = next(t for t in m["tasks"] if t["name"] == "faces")
    assert t["exports"]["s"]["tflite"]["int8"]["bytes"] == (copy / rec["file"]).stat().st_size
    snrt.Bundle.open(copy)  # hashes and rules hold again
