"""backend="auto" (issue 18 item 3): backend as a switching dimension like precision.

A copy of the tiny family with three variants exported to TFLite fp32/fp16/int8 (conftest's
tflite_exported), hand-set accuracies, and an injected lookup table with hand-set latencies
(never wall-clock). The expected plans are worked out by hand in the tests from the table;
references for the logits: each backend's own Runtime on the same file, and a bare onnxruntime
InferenceSession on the variant's ONNX graph with the tolerance the TFLite exporter recorded."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

import snrt
from snrt.bundle import Bundle, update_manifest
from snrt.controller import (
    ContentionEstimate,
    Controller,
    PolicyConfig,
    cand_key,
    split_entry,
    split_key,
)
from snrt.errors import BundleError, SnrtError
from snrt.lookup_table import Entry, LookupTable, bundle_key
from snrt.monitor import SimulatedClock, SimulatedMonitor

B, TS, SB = "b", "ti>s@1:1", "s>b@2:3"  # the exported variants
TOP1 = {B: 80.0, TS: 60.0, SB: 75.0, "ti": 50.0}  # fp32 top-1, hand-set
TFLITE_INT8_TOP1 = {B: 79.5, SB: 74.0}  # ti>s@1:1 has none: its int8 file is no option
# hand-set table p50 (ms): (variant, backend, precision) -> ms
P50 = {
    (B, "onnxruntime", "fp32"): 5.0, (B, "tflite", "fp32"): 2.0, (B, "tflite", "int8"): 1.5,
    (B, "tflite", "fp16"): 2.5,
    (TS, "onnxruntime", "fp32"): 0.5, (TS, "tflite", "fp32"): 1.0, (TS, "tflite", "int8"): 0.3,
    (SB, "onnxruntime", "fp32"): 3.0, (SB, "tflite", "fp32"): 2.5, (SB, "tflite", "int8"): 1.2,
}
# Worked out by hand. Options (an accuracy in the precision is needed: fp16 has none, nor
# ti>s@1:1 int8), sorted by p50: TS ort 0.5 (60), TS tfl32 1.0 (60: not better), SB int8 1.2
# (74), B int8 1.5 (79.5), B tfl32 2.0 (80), SB tfl32 2.5 (75 < 80), SB ort 3.0, B ort 5.0.
# Front: TS on onnxruntime (faster than its TFLite file here), SB and B in TFLite int8, and B
# in TFLite fp32 (more accurate than its int8, slower).
FRONT = [(TS, "onnxruntime", "fp32"), (SB, "tflite", "int8"), (B, "tflite", "int8"),
         (B, "tflite", "fp32")]


@pytest.fixture(scope="module")
def abundle(tflite_exported, tmp_path_factory):
    dst = tmp_path_factory.mktemp("auto") / "auto.snrt"
    shutil.copytree(tflite_exported["path"], dst)

    def mutate(m, _p):
        for v in m.variants:
            if v.id in TOP1:
                v.accuracy = {"top1": TOP1[v.id], "split": "test", "n": 200}
            if v.id in TFLITE_INT8_TOP1:
                v.exports["tflite"]["int8"]["accuracy"] = {
                    "top1": TFLITE_INT8_TOP1[v.id], "split": "test", "n": 200}

    update_manifest(dst, mutate)
    return dst


def _table(bundle_path, p50=P50, drop_backend=None) -> LookupTable:
    b = Bundle.open(bundle_path, verify=False)
    key = bundle_key(b)
    t = LookupTable.new()
    rows = dict(p50)
    rows[("ti", "onnxruntime", "fp32")] = 0.4  # no TFLite file of ti: only its ONNX entry
    for (vid, be, prec), ms in rows.items():
        if be == drop_backend:
            continue
        v = b.variant(vid)
        # the table's accuracy column holds the fp32 copy (as snrt-profile writes it): the
        # plan must take the precision's own from the manifest instead
        t.put(Entry(key, vid, v.cfg_id, be, prec, 1, ms, ms, flops=v.flops, params=v.params,
                    accuracy=TOP1.get(vid)))
    return t


def _auto(path, **kw) -> snrt.Runtime:
    kw.setdefault("table", _table(path))
    return snrt.Runtime(path, backend="auto", variants=[B, TS, SB], verify="size", **kw)


def _x(rt, seed=0, n=1):
    shape = tuple(rt.bundle.manifest.input["shape"][1:])
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_keys_name_the_backend_and_round_trip():
    k = cand_key("ti>s@2:1", "int8", "tflite")
    assert k == "ti>s@2:1|tflite:int8" and split_entry(k) == ("ti>s@2:1", "int8", "tflite")
    assert split_key(k) == ("ti>s@2:1", "int8")
    assert split_entry("b|int8") == ("b", "int8", None) and split_entry("b") == ("b", "fp32",
                                                                                   None)


def test_auto_keeps_the_fastest_entry_of_each_front_variant(abundle):
    with _auto(abundle) as rt:
        got = [(e.variant, e.backend, e.precision) for e in rt.plan.entries]
        assert got == FRONT
        acc = {(e.variant, e.backend, e.precision): e.accuracy for e in rt.plan.entries}
        assert acc[(B, "tflite", "int8")] == 79.5 and acc[(SB, "tflite", "int8")] == 74.0
        assert rt.entries(TS) == [("onnxruntime", "fp32")]
        assert rt.entries(B) == [("tflite", "int8"), ("tflite", "fp32")]
        assert sorted(rt.backends) == ["onnxruntime", "tflite"]
        assert "ti" not in {v.id for v in rt.variants}  # not asked for (variants=)
        # the initial variant is the most accurate one, in its fastest entry
        assert (rt.current.id, rt.current_backend, rt.current_precision) == (B, "tflite",
                                                                             "int8")
        # every entry ready at start: 3 TFLite interpreters, TS's onnxruntime session(s)
        assert rt._backends["tflite"].info()["interpreters"] == 3
        assert rt.stats()["memory"]["load_rss_mb"] is not None


def test_budget_keeps_what_fits_and_drops_what_does_not(abundle):
    """TFLite only. Front by hand: ti>s@1:1 fp32 1.0 (60%), s>b int8 1.2 (74), b int8 1.5
    (79.5), b fp32 2.0 (80). Budget: the engine's one-time cost, ti>s@1:1 fp32 and the two
    int8 entries, and 0.01 MB. Order: the fastest, then by accuracy: b fp32 does not fit
    beside ti>s@1:1 (its file is ~4x b's int8 file) and b has no other option (fp16 has no
    accuracy): it is left out; b int8 and s>b int8 fit."""
    from snrt.auto_backend import ENGINE_MB, RUNTIME_MB

    with _auto(abundle, auto_backends=["tflite"]) as rt:
        assert [(e.variant, e.precision) for e in rt.plan.entries] == [
            (TS, "fp32"), (SB, "int8"), (B, "int8"), (B, "fp32")]
        est = {(e.variant, e.precision): e.est_mb for e in rt.plan.entries}
    budget = RUNTIME_MB + ENGINE_MB["tflite"] + est[(TS, "fp32")] + est[(B, "int8")] + \
        est[(SB, "int8")] + 0.01
    assert est[(B, "fp32")] > est[(B, "int8")] + est[(SB, "int8")] + 0.01
    with _auto(abundle, auto_backends=["tflite"], memory_budget_mb=budget) as rt:
        assert [(e.variant, e.precision) for e in rt.plan.entries] == [
            (TS, "fp32"), (SB, "int8"), (B, "int8")]
        assert rt.plan.est_mb <= budget
        assert [(f.variant, f.precision) for f in rt.plan.dropped] == [(B, "fp32")]
        assert rt._backends["tflite"].info()["interpreters"] == 3
        assert rt.stats()["memory"]["budget_mb"] == budget
        assert rt.entries(B) == [("tflite", "int8")]


def test_budget_replaces_an_entry_by_the_variants_cheaper_one(abundle):
    """fp32 only: make the costlier of b's two fp32 entries the faster one in the table; a
    budget that holds the cheaper one only keeps b on that backend instead."""
    from snrt.auto_backend import ENGINE_MB, RUNTIME_MB, estimate_mb

    bnd = Bundle.open(abundle, verify=False)
    # what b adds beside ti>s@1:1 on onnxruntime: its entry, and for TFLite the engine's
    # one-time cost (onnxruntime's is paid by ti>s@1:1 already)
    cost = {be: estimate_mb(bnd, B, be, "fp32") + (ENGINE_MB[be] if be == "tflite" else 0)
            for be in ("onnxruntime", "tflite")}
    fast, slow = sorted(cost, key=cost.get, reverse=True)  # fast: the costlier
    assert cost[fast] > 1.05 * cost[slow]
    p50 = {k: v for k, v in P50.items() if k[2] == "fp32"}
    p50[(B, fast, "fp32")], p50[(B, slow, "fp32")] = 1.8, 4.0
    # fp32 front by hand: ti>s@1:1 onnxruntime 0.5 (60%), b on `fast` 1.8 (80%); s>b 2.5/3.0
    # (75%) and b on `slow` 4.0 are dominated
    ts = RUNTIME_MB + estimate_mb(bnd, TS, "onnxruntime", "fp32") + ENGINE_MB["onnxruntime"]
    with _auto(abundle, table=_table(abundle, p50), precisions=["fp32"]) as rt:
        assert [(e.variant, e.backend) for e in rt.plan.entries] == [(TS, "onnxruntime"),
                                                                      (B, fast)]
    with _auto(abundle, table=_table(abundle, p50), precisions=["fp32"],
               memory_budget_mb=ts + cost[slow] * 1.01) as rt:
        assert [(e.variant, e.backend) for e in rt.plan.entries] == [(TS, "onnxruntime"),
                                                                      (B, slow)]
        assert [((f.variant, f.backend), (k.variant, k.backend))
                for f, k in rt.plan.replaced] == [((B, fast), (B, slow))]
        assert rt.entries(B) == [(slow, "fp32")]
        assert rt.run(_x(rt), variant=B).backend == slow


def test_budget_below_the_fastest_fp32_entry_is_refused(abundle):
    from snrt.auto_backend import ENGINE_MB, RUNTIME_MB, estimate_mb

    b = Bundle.open(abundle, verify=False)  # the fastest fp32 entry (0.5 ms), with its engine
    need = RUNTIME_MB + estimate_mb(b, TS, "onnxruntime", "fp32") + ENGINE_MB["onnxruntime"]
    with pytest.raises(SnrtError, match="cannot hold even the fastest fp32 entry"):
        _auto(abundle, memory_budget_mb=need * 0.5)
    with pytest.raises(SnrtError, match="positive"):
        _auto(abundle, memory_budget_mb=0)


def test_each_entry_matches_its_backends_own_run(abundle):
    """Logits of every entry of the auto runtime equal the same (backend, precision) Runtime's
    on the same file, and stay within the tolerance the TFLite exporter recorded of the
    variant's ONNX graph in a bare InferenceSession."""
    tol = Bundle.open(abundle, verify=False).manifest.exports["tflite"]["tolerance"]
    with _auto(abundle) as rt:
        x = _x(rt, seed=7, n=4)
        for e in rt.plan.entries:
            res = rt.run(x, variant=e.variant, backend=e.backend, precision=e.precision)
            assert (res.backend, res.precision, res.variant.id) == (e.backend, e.precision,
                                                                    e.variant)
            with snrt.Runtime(abundle, backend=e.backend, precision=e.precision,
                              variants=[e.variant], verify="size", tasks=[]) as own:
                np.testing.assert_array_equal(res.logits, own.infer(x))
            graph = rt.bundle.file(rt.bundle.variant(e.variant).graph)
            so = ort.SessionOptions()
            so.log_severity_level = 3
            ref = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"]).run(
                None, {"image": x})[0]
            t = tol[e.precision] if e.backend == "tflite" else {"atol": 1e-5, "rtol": 1e-5}
            allowed = t["atol"] + t["rtol"] * float(np.abs(ref).max())
            assert float(np.abs(res.logits - ref).max()) <= allowed, e


def test_controller_switches_across_backends_without_loading(abundle):
    """Hand-set latencies (the plan's table), frozen contention, simulated clock and monitor:
    normal budget 2.5 ms -> b on TFLite fp32 (2.0 ms, 80%); power saving halves it to 1.25 ms
    -> b int8 (1.5) is over, s>b int8 (1.2) fits without the 15% up-margin, so the step
    down lands on ti>s@1:1 on onnxruntime (0.5 ms <= 1.06); power saving off -> back up to b
    on TFLite fp32. No interpreter or session is created by any of these switches."""
    clock = SimulatedClock()
    mon = SimulatedMonitor(clock=clock)
    with _auto(abundle) as rt:
        ctl = Controller.auto(rt, monitor=mon, config=PolicyConfig(
            target_fps=400.0, headroom=1.0, min_dwell_s=1.0, miss_limit=0, clean_frames=0))
        assert {c.id for c in ctl.candidates} == {cand_key(v, p, be) for v, be, p in FRONT}
        ctl.clock = clock
        ctl.contention = ContentionEstimate(frozen=True)
        rt.set_controller(ctl)
        n_tfl = rt._backends["tflite"].info()["interpreters"]
        n_ort = rt._backends["onnxruntime"].session_count
        x = _x(rt)[0]

        def frames(k):
            for _ in range(k):
                rt.run(x)
                clock.advance(0.1)

        frames(3)  # starts on b's fastest entry, int8; the dwell (1 s) holds it
        assert (rt.current.id, rt.current_backend, rt.current_precision) == (B, "tflite",
                                                                             "int8")
        frames(12)  # then room for b in fp32 (2.0 ms <= 2.5 * 0.85), more accurate
        assert (rt.current.id, rt.current_backend, rt.current_precision) == (B, "tflite",
                                                                             "fp32")
        mon.set_power_saving(True)
        frames(3)
        assert (rt.current.id, rt.current_backend, rt.current_precision) == (
            TS, "onnxruntime", "fp32")
        ev = rt.switches()[-1]
        assert (ev.from_backend, ev.to_backend) == ("tflite", "onnxruntime")
        assert f"{TS}|onnxruntime:fp32" in ev.reason
        assert rt.frames()[-1].backend == "onnxruntime" and rt.run(x).backend == "onnxruntime"
        mon.set_power_saving(False)
        frames(30)
        assert (rt.current.id, rt.current_backend) == (B, "tflite")
        assert rt._backends["tflite"].info()["interpreters"] == n_tfl
        assert rt._backends["onnxruntime"].session_count == n_ort
        st = rt.stats()
        assert st["switches"] >= 3 and st["switch_ms"]["n"] == st["switches"]


def test_manual_switch_keeps_or_picks_an_entry(abundle):
    with _auto(abundle) as rt:
        rt.switch(TS)  # b's tflite/int8 is not ready for TS: its fastest entry
        assert (rt.current_backend, rt.current_precision) == ("onnxruntime", "fp32")
        rt.switch(B, precision="fp32")
        assert (rt.current_backend, rt.current_precision) == ("tflite", "fp32")
        with pytest.raises(SnrtError, match="not ready in tflite"):
            rt.switch(TS, backend="tflite")
        with pytest.raises(SnrtError, match="keeps no tasks"):
            _auto(abundle, tasks=["x"])


def test_clear_errors_for_missing_entries_and_files(abundle, tmp_path):
    # the table has no TFLite entries at all
    with pytest.raises(SnrtError, match="no entries for backend 'tflite'.*snrt-profile"):
        _auto(abundle, table=_table(abundle, drop_backend="tflite"))
    # onnxruntime only is fine without TFLite entries
    with _auto(abundle, table=_table(abundle, drop_backend="tflite"),
               auto_backends=["onnxruntime"]) as rt:
        assert {e.backend for e in rt.plan.entries} == {"onnxruntime"}
    # the front needs a TFLite file that was never exported: ti on TFLite fastest
    p50 = {**P50, ("ti", "tflite", "fp32"): 0.1}
    with pytest.raises(BundleError, match=r"no TFLite fp32 file for 'ti'.*snrt-export tflite"):
        snrt.Runtime(abundle, backend="auto", table=_table(abundle, p50), verify="size")
    with pytest.raises(SnrtError, match="options of backend='auto'"):
        snrt.Runtime(abundle, memory_budget_mb=10, verify="size")


def test_snrt_run_options_are_checked(capsys):
    from snrt.run_cli import main

    assert main(["default", "--memory-budget-mb", "5"]) != 0
    assert "option of --backend auto" in capsys.readouterr().err
    assert main(["default", "elastic", "--backend", "auto"]) != 0
    assert "one bundle" in capsys.readouterr().err
