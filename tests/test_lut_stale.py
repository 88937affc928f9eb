"""Lookup-table entries measured on graphs the bundle no longer has (snrt.lut_graphs).

A table is profiled on the tiny bundle, then the bundle is regraphed (same weights.bin byte for
byte, other ONNX graphs): the entries are stale. Controller.auto falls back to FLOPs with one
warning, snrt-run's table step and snrt-profile measure exactly the stale entries again, a copy
of the same bundle (same graphs) keeps using them, and tables from before the record (schema 2)
still load, their onnxruntime measurements stale on a regraphed bundle only. Latencies are
injected (Profiler._measure replaced): no wall-clock."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import types

import pytest

from exporters.onnx_export import regraph_bundle
from snrt.bundle import Bundle
from snrt.lookup_table import Entry, LookupTable, bundle_key
from snrt.lut_graphs import graph_files, graphs_digest, select_current, stale_reason
from snrt.profile import Profiler
from snrt.profile import main as profile_main

SCALE = {"orig": 1.0, "copy": 1.0, "re": 0.7}  # injected ms per MFLOP of each bundle's graphs


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundles(tiny_family, tmp_path_factory):
    """orig (the tiny family, standard ops), copy (a byte copy of it), re (orig regraphed to
    the decomposed form)."""
    d = tmp_path_factory.mktemp("stale")
    orig = d / "orig.snrt"
    shutil.copytree(tiny_family["bundle"], orig)
    shutil.copytree(orig, d / "copy.snrt")
    regraph_bundle(orig, d / "re.snrt", ops="decomposed")
    return {k: Bundle.open(d / f"{k}.snrt") for k in ("orig", "copy", "re")}


@pytest.fixture
def fake_measure(monkeypatch):
    """Profiler._measure returning SCALE[bundle] x MFLOPs x threads; records every call."""
    calls = []

    def measure(self, backend, precision, threads, v, task=None):
        name = self.bundle.path.name.removesuffix(".snrt")
        calls.append((name, v.id, backend, threads))
        ms = SCALE[name] * v.flops / 1e6 * threads
        return {"p50_ms": ms, "mean_ms": ms, "quiet_ms": 0.9 * ms, "min_ms": 0.8 * ms,
                "count": 3}

    monkeypatch.setattr(Profiler, "_measure", measure)
    return calls


def _profile(bundle, out, *extra):
    return profile_main([str(bundle.path), "--threads", "1,2", "--out", str(out), "--quiet",
                         *extra])


def test_the_regraph_changes_graphs_not_weights(bundles):
    """The premise, checked on the files themselves: same weights.bin, other graph bytes."""
    o, r = bundles["orig"], bundles["re"]
    assert bundle_key(o) == bundle_key(r) == bundle_key(bundles["copy"])
    assert _sha(o.path / "graphs/weights.bin") == _sha(r.path / "graphs/weights.bin")
    for v in o.variants:
        files = graph_files(o, v.id, "onnxruntime")
        assert files == graph_files(r, v.id, "onnxruntime")
        assert v.graph in files and all(f.endswith(".onnx") for f in files)
        assert {p.graph for p in o.manifest.pieces if p.id in v.pieces} <= set(files)
        assert any(_sha(o.path / f) != _sha(r.path / f) for f in files)
        assert graphs_digest(o, v.id, "onnxruntime") == graphs_digest(
            bundles["copy"], v.id, "onnxruntime")
        assert graphs_digest(o, v.id, "onnxruntime") != graphs_digest(r, v.id, "onnxruntime")
    assert graphs_digest(o, "ti", "tflite") is None  # no .tflite files: nothing to compare


def test_profile_remeasures_exactly_the_stale_entries(bundles, fake_measure, tmp_path, caplog):
    out = tmp_path / "dev.json"
    n = len(bundles["orig"].variants)
    assert _profile(bundles["orig"], out) == 0
    assert len(fake_measure) == 2 * n
    t = LookupTable.load(out)
    assert json.loads(out.read_text())["schema_version"] == 4
    for e in t.entries:
        assert e.graphs == graphs_digest(bundles["orig"], e.variant, "onnxruntime")
    # a TFLite measurement from before the record: .tflite files are not built from the ONNX
    # graphs, so a regraph does not make it stale
    v0 = bundles["orig"].variants[0]
    t.put(Entry(bundle_key(bundles["orig"]), v0.id, v0.cfg_id, "tflite", "fp32", 1, 0.3, 0.3,
                timestamp="2026-11-23T18:00:00+00:00"))
    t.save(out)

    fake_measure.clear()  # a copy of the same bundle: everything already measured
    assert _profile(bundles["copy"], out) == 0
    assert fake_measure == []

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="snrt.profile"):
        assert _profile(bundles["re"], out) == 0
    assert sorted(fake_measure) == sorted(("re", v.id, "onnxruntime", th)
                                          for v in bundles["re"].variants for th in (1, 2))
    assert f"{2 * n} stale, measured again" in caplog.text
    assert f"{2 * n} entries of {bundle_key(bundles['re'])} were measured on other graphs" \
        in caplog.text
    t = LookupTable.load(out)
    assert len(t.entries) == 2 * n + 1
    for e in t.select(backend="onnxruntime"):
        v = bundles["re"].variant(e.variant)
        assert e.graphs == graphs_digest(bundles["re"], v.id, "onnxruntime")
        assert e.p50_ms == pytest.approx(0.7 * v.flops / 1e6 * e.threads)
    assert t.get(bundle_key(bundles["re"]), v0.id, "tflite").p50_ms == 0.3
    current, stale = select_current(t, bundles["re"])
    assert stale == [] and len(current) == 2 * n + 1  # both thread counts and the TFLite one
    # now the original bundle's graphs are the other ones
    assert len(select_current(t, bundles["orig"], "onnxruntime")[1]) == 2 * n

    fake_measure.clear()  # rerun: nothing stale, nothing missing
    assert _profile(bundles["re"], out) == 0
    assert fake_measure == []


def test_interleaved_plan_restarts_stale_entries(bundles, tmp_path):
    """An interleaved profile interrupted on the old graphs does not resume on the new ones."""
    t = LookupTable.new()
    o = bundles["orig"]
    for v in o.variants[:3]:
        rounds = {"p50": [1.0] * 5, "p10": [0.9] * 5, "count": [3] * 5, "target": 10}
        t.put(Entry(bundle_key(o), v.id, v.cfg_id, "onnxruntime", "fp32", 1, 1.0, 1.0,
                    graphs=graphs_digest(o, v.id, "onnxruntime"), timestamp="x",
                    conditions={"protocol": "interleaved", "interleaved": rounds}))
    out = tmp_path / "il.json"
    t.save(out)
    for name, done in (("copy", 5), ("re", 0)):
        prof = Profiler(bundles[name].path, out, isolate=False)
        items = prof.plan_interleaved(bundles[name].variants[:3], ["onnxruntime"], ["fp32"],
                                      [1], rounds=10)
        assert [d for *_, d in items] == [done] * 3, name
        assert len(prof.stale_entries(items)) == (3 if name == "re" else 0)


def test_controller_auto_ignores_stale_entries_with_one_warning(bundles, fake_measure,
                                                                tmp_path, caplog):
    from snrt.controller import Controller
    from snrt.monitor import SimulatedMonitor
    from snrt.runtime import Runtime

    out = tmp_path / "dev.json"
    assert _profile(bundles["orig"], out) == 0
    with Runtime(bundles["copy"].path) as rt:  # same graphs: the table's latencies
        caplog.clear()
        ctl = Controller.auto(rt, table=out, monitor=SimulatedMonitor(), rank="flops")
        assert ctl.source.startswith("lookup table")
        assert ctl.base_ms == {v.id: v.flops / 1e6 for v in rt.variants}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with Runtime(bundles["re"].path) as rt:  # regraphed: FLOPs estimates, one warning
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ctl = Controller.auto(rt, table=out, monitor=SimulatedMonitor(), rank="flops")
        assert ctl.source.startswith("FLOPs") and "stale" in ctl.source
        assert ctl.base_ms == {v.id: max(v.flops / 1e9, 1e-3) for v in rt.variants}
        warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warns) == 1, warns
        w = warns[0]
        assert bundle_key(rt.bundle) in w and str(bundles["re"].path) in w
        assert "onnxruntime/fp32/1t" in w and "measured on other graphs" in w
        assert f"snrt-profile {bundles['re'].path} --backend onnxruntime --threads 1" in w


def test_snrt_run_profiles_the_stale_entries(bundles, fake_measure, tmp_path, caplog):
    """snrt-run's table step: a table whose entries are all stale is not used; the stale
    variants are measured again into it (quick protocol) and their new figures used."""
    from snrt.device import describe_device
    from snrt.run_cli import _bundle_table
    from snrt.runtime import Runtime

    dev = describe_device()
    out = LookupTable.path_for(tmp_path, dev)
    assert _profile(bundles["orig"], out) == 0
    args = types.SimpleNamespace(tables=tmp_path, threads=1, rank="flops")
    fake_measure.clear()
    with Runtime(bundles["copy"].path) as rt:
        base, _ = _bundle_table(args, rt, dev)
        assert fake_measure == []
        assert base == {v.id: v.flops / 1e6 for v in rt.variants}
    with Runtime(bundles["re"].path) as rt:
        with caplog.at_level(logging.WARNING):
            base, _ = _bundle_table(args, rt, dev)
        assert sorted(fake_measure) == sorted(("re", v.id, "onnxruntime", 1)
                                              for v in rt.variants)
        assert base == pytest.approx({v.id: 0.7 * v.flops / 1e6 for v in rt.variants})
    assert sum("ignoring" in r.getMessage() for r in caplog.records) == 1


def test_old_schema_tables_load_and_the_rule_for_entries_without_a_record(bundles, tmp_path):
    o, r = bundles["orig"], bundles["re"]
    key = bundle_key(o)
    t = LookupTable.new()
    stamp = "2026-11-23T17:34:58+00:00"
    for v in o.variants[:2]:
        t.put(Entry(key, v.id, v.cfg_id, "onnxruntime", "fp32", 1, 1.0, 1.0, timestamp=stamp))
        t.put(Entry(key, v.id, v.cfg_id, "tflite", "int8", 1, 0.4, 0.4, timestamp=stamp))
    hand = o.variants[2]  # put by hand (no timestamp): the caller's own figure
    t.put(Entry(key, hand.id, hand.cfg_id, "onnxruntime", "fp32", 1, 2.0, 2.0))
    pred = o.variants[3]
    t.put(Entry(key, pred.id, pred.cfg_id, "onnxruntime", "fp32", 1, 2.0, 2.0, predicted=True))
    p = t.save(tmp_path / "v2.json")
    d = json.loads(p.read_text())
    assert d["schema_version"] == 2 and not any("graphs" in e for e in d["entries"])
    t = LookupTable.load(p)
    # never regraphed: nothing says otherwise, every entry is kept
    assert [stale_reason(e, o) for e in t.entries] == [None] * 6
    # regraphed: the measured and predicted onnxruntime entries are stale; TFLite and the hand
    # entry are kept
    stale = {(e.variant, e.backend) for e in t.entries if stale_reason(e, r)}
    assert stale == {(v.id, "onnxruntime") for v in (*o.variants[:2], pred)}
    reason = stale_reason(t.entries[0], r)
    assert stamp in reason and r.manifest.provenance["regraphs"][-1]["created"] in reason
    # a version 1 table (no quiet_ms, no record) reads too; a recorded entry makes version 4
    d["schema_version"] = 1
    p.write_text(json.dumps(d))
    t = LookupTable.load(p)
    assert len(t.entries) == 6
    t.entries[0].graphs = graphs_digest(r, t.entries[0].variant, "onnxruntime")
    d4 = json.loads(t.save(tmp_path / "v4.json").read_text())
    assert d4["schema_version"] == 4 and LookupTable.load(tmp_path / "v4.json").entries[0] \
        .graphs == t.entries[0].graphs
    assert stale_reason(LookupTable.load(tmp_path / "v4.json").entries[0], r) is None


def test_tflite_and_task_entries_record_their_own_files(bundles):
    """TFLite: the variant's .tflite file at that precision (a re-export with other bytes makes
    the entry stale); a task entry: the task's piece graphs on the variant's route."""
    import snrt

    b = Bundle.open(bundles["orig"].path)  # a private copy of the manifest to edit
    v = b.variants[0]
    rel = "tflite/fp32/v000_ti.tflite"
    v.exports = {"tflite": {"fp32": {"file": rel}}}
    b.manifest.files[rel] = {"sha256": "a" * 64, "bytes": 1}
    d1 = graphs_digest(b, v.id, "tflite", "fp32")
    assert d1 and graphs_digest(b, v.id, "tflite", "int8") is None
    e = Entry(bundle_key(b), v.id, v.cfg_id, "tflite", "fp32", 1, 0.3, 0.3, graphs=d1,
              timestamp="t")
    assert stale_reason(e, b) is None
    b.manifest.files[rel] = {"sha256": "b" * 64, "bytes": 1}
    assert "measured on other graphs" in stale_reason(e, b)

    d = Bundle.open(snrt.default_bundle())
    task = d.tasks[0]
    files = graph_files(d, "ti", "onnxruntime", task=task.name)
    ours = {p["graph"] for p in task.pieces}
    assert ours & set(files) and set(files) - ours  # the task's pieces and frozen ones
    assert graphs_digest(d, "ti", "onnxruntime", task=task.name) != graphs_digest(
        d, "ti", "onnxruntime")
