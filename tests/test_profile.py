"""snrt-profile and lookup tables: protocol, resume, interruption, schema, merge, plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snrt.bundle import Bundle
from snrt.lookup_table import Entry, LookupTable, LookupTableError, pareto_front
from snrt.lut_cli import main as lut_main
from snrt.lut_cli import merge
from snrt.profile import Profiler, Protocol, main, sample_variants
from snrt.profile_cli import summary_lines

FAST = Protocol(runs=3, warmup=1, min_seconds=0.0, max_seconds=5.0)


def test_sample_keeps_anchors_and_spreads_over_routes_and_positions(tiny_family):
    vs = Bundle.open(tiny_family["bundle"]).variants
    s = sample_variants(vs, "20%")
    assert len(s) == 5 and {"ti", "s", "b"} <= {v.id for v in s}
    assert {v.id.split("@")[0] for v in s if not v.is_anchor} == {"ti>s", "s>b"}
    s = sample_variants(vs, "9")  # 3 anchors + 3 per route, first, middle and last split
    for route in ("ti>s", "s>b"):
        fronts = sorted(v.stitches[0]["front_block"] for v in s if v.id.startswith(route))
        assert len(fronts) == 3 and fronts[0] == 0 and fronts[-1] == 3
    assert len(sample_variants(vs, "7")) == 7
    assert len(sample_variants(vs, "100%")) == len(vs)
    with pytest.raises(Exception, match="percentage"):
        sample_variants(vs, "lots")


def test_profile_measures_resumes_and_survives_interrupts(tiny_family, tmp_path, monkeypatch):
    out = tmp_path / "dev.json"
    prof = Profiler(tiny_family["bundle"], out, protocol=FAST, isolate=False)
    items = prof.plan(prof.bundle.variants[:6], ["onnxruntime"], ["fp32"], [1])
    assert len(items) == 6
    calls = {"n": 0}
    real = Profiler._measure

    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Profiler, "_measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        prof.run(items, progress=False)
    t = LookupTable.load(out)  # valid after the interruption, 3 entries kept
    assert len(t.entries) == 3
    monkeypatch.setattr(Profiler, "_measure", real)
    prof2 = Profiler(tiny_family["bundle"], out, protocol=FAST, isolate=False)
    rest = prof2.plan(prof2.bundle.variants[:6], ["onnxruntime"], ["fp32"], [1])
    assert [v.id for *_, v in rest] == [v.id for v in prof2.bundle.variants[3:6]]
    prof2.run(rest, progress=False)
    t = LookupTable.load(out)
    assert len(t.entries) == 6
    for e in t.entries:
        assert e.count >= 3 and e.min_ms <= e.p50_ms <= e.p90_ms <= e.p99_ms <= e.max_ms
        assert e.min_ms <= e.quiet_ms <= e.p50_ms  # isolated: the p10 of the runs
        assert e.load_ms > 0 and e.first_run_ms > 0 and e.peak_rss_mb > 10
        assert "cpu_load_pct" in e.conditions and not e.predicted
        assert e.placement in ("pieces", "graphs")


def test_cli_isolated_workers_and_crash_recorded(tiny_family, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.json"
    assert main([str(tiny_family["bundle"]), "--variants", "ti", "s>b@1:1", "--runs", "3",
                 "--min-seconds", "0", "--out", str(out), "--quiet"]) == 0
    t = LookupTable.load(out)
    assert {e.variant for e in t.entries} == {"ti", "s>b@1:1"}
    # a worker that dies is recorded as an error entry, the profile goes on
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # shadow numpy in the worker only
    (tmp_path / "numpy.py").write_text("raise SystemExit(3)\n")
    capsys.readouterr()
    # ... and the command fails (exit 1) saying so, the table keeping the failure
    assert main([str(tiny_family["bundle"]), "--variants", "b", "--runs", "3",
                 "--min-seconds", "0", "--out", str(out), "--quiet"]) == 1
    assert "1 of 1 measurements failed (b: worker exited with 3" in capsys.readouterr().err
    e = LookupTable.load(out).get(t.entries[0].bundle, "b")
    assert e.error and "exited with 3" in e.error


def test_schema_is_validated(tmp_path):
    t = LookupTable.new()
    t.put(Entry("fam@x", "a", 0, "onnxruntime", "fp32", 1, 2.0, 2.1))
    p = t.save(tmp_path / "ok.json")
    assert LookupTable.load(p).entries[0].p50_ms == 2.0
    d = json.loads(p.read_text())
    for bad, msg in [({**d, "schema_version": 7}, "schema version 7"),
                     ({**d, "entries": d["entries"] * 2}, "duplicate"),
                     ({**d, "entries": [{**d["entries"][0], "bogus": 1}]}, "unknown entry"),
                     ({**d, "entries": [{**d["entries"][0], "p50_ms": -1}]}, "non-negative"),
                     ({**d, "entries": [{**d["entries"][0], "quiet_ms": "1"}]}, "quiet_ms"),
                     ({"schema": "other"}, "not an snrt lookup table")]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(LookupTableError, match=msg):
            LookupTable.load(tmp_path / "bad.json")


def test_predictions_never_replace_measurements_and_merge():
    t = LookupTable.new()
    m = Entry("f@x", "a", 0, "onnxruntime", "fp32", 1, 5.0, 5.0, timestamp="2026-01-01")
    t.put(m)
    t.put(Entry("f@x", "a", 0, "onnxruntime", "fp32", 1, 9.0, 9.0, predicted=True))
    assert t.get("f@x", "a").p50_ms == 5.0
    other = LookupTable(t.device)
    other.put(Entry("f@x", "a", 0, "onnxruntime", "fp32", 1, 4.0, 4.0, timestamp="2026-02-01"))
    other.put(Entry("f@x", "b", 1, "onnxruntime", "fp32", 1, 7.0, 7.0, timestamp="2026-02-01"))
    merged = merge([t, other])
    assert list(merged) == [t.device.id]
    mt = merged[t.device.id]
    assert mt.get("f@x", "a").p50_ms == 4.0 and mt.get("f@x", "b").p50_ms == 7.0


def test_summary_compares_each_backend_precision_with_onnxruntime_fp32():
    t = LookupTable.new()
    for v, ort_ms, lite in (("a", 2.0, {"fp32": 1.6, "int8": 1.0}),
                            ("b", 4.0, {"fp32": 3.6, "int8": 3.0}),
                            ("c", 8.0, {"fp32": 8.8})):
        t.put(Entry("f@x", v, 0, "onnxruntime", "fp32", 1, ort_ms, ort_ms))
        for prec, ms in lite.items():
            t.put(Entry("f@x", v, 0, "tflite", prec, 1, ms, ms))
    t.put(Entry("f@x", "d", 0, "tflite", "int8", 1, 0.1, 0.1, predicted=True))  # not counted
    lines = summary_lines(t, "f@x", ["a", "b", "c", "d"])
    rows = {tuple(ln.split()[:3]): ln.split() for ln in lines[1:]}
    assert rows[("onnxruntime", "fp32", "1")][3:] == ["3", "4.000", "1.00x", "(3)", "-"]
    assert rows[("tflite", "fp32", "1")][3:] == ["3", "3.600", "0.90x", "(3)", "-"]  # .8,.9,1.1
    assert rows[("tflite", "int8", "1")][3:] == ["2", "2.000", "0.62x", "(2)", "-"]  # .5, .75
    assert summary_lines(t, "other@y", ["a"]) == []


def _split_half_entries() -> list[Entry]:
    """8 steady variants (even rounds 20% slower for all: common mode) and 2 whose odd
    rounds were slower or faster on their own."""
    rng = np.random.default_rng(0)

    def entry(v, base, odd_extra=0.0):
        p10 = [base * (1 + abs(rng.normal(0, 0.005))) * (1.2 if r % 2 == 0 else 1.0)
               * (1 + (odd_extra if r % 2 else 0.0)) for r in range(10)]  # even rounds slow
        return Entry("f@x", v, 0, "onnxruntime", "fp32", 1, base, base,
                     conditions={"protocol": "interleaved", "interleaved": {"p10": p10}})

    return ([entry(f"v{i}", 1.0 + i) for i in range(8)]
            + [entry("slow1", 2.0, 0.2), entry("slow2", 3.0, -0.3)])


def test_split_half_repeatability():
    """Odd against even rounds' quiet latency, common scale removed: a variant whose odd
    rounds were all slow (busy the whole time it was measured in them) counts as not
    repeating; a uniform slowdown of every variant does not."""
    from snrt.profile_cli import split_half_repeatability

    es = _split_half_entries()
    assert split_half_repeatability(es[:8]) == 1.0
    assert split_half_repeatability(es) == pytest.approx(0.8)
    assert split_half_repeatability(es[:2]) is None  # too few variants
    t = LookupTable.new()
    for e in es:
        t.put(e)
    assert summary_lines(t, "f@x", [e.variant for e in es])[1].split()[-1] == "80%"


def test_profile_warns_when_it_does_not_repeat(caplog):
    from snrt.profile_cli import _warn_unrepeatable

    t = LookupTable.new()
    for e in _split_half_entries():
        t.put(e)
    ids = {e.variant for e in t.entries}
    with caplog.at_level("WARNING", logger="snrt.profile"):
        _warn_unrepeatable(t, "f@x", ids)
    assert "only 80% of the variants repeat" in caplog.text and "1t" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="snrt.profile"):
        _warn_unrepeatable(t, "f@x", {f"v{i}" for i in range(8)})  # the steady ones
    assert caplog.text == ""


def test_pareto_front():
    es = [Entry("f", v, 0, "o", "fp32", 1, ms, ms, accuracy=acc)
          for v, ms, acc in [("a", 1, 70), ("b", 2, 69), ("c", 3, 80), ("d", 4, 80),
                             ("e", 5, 85)]]
    assert [e.variant for e in pareto_front(es)] == ["a", "c", "e"]


def test_show_and_plot(tiny_family, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main([str(tiny_family["bundle"]), "--variants", "ti", "s", "b", "--runs", "3",
                 "--min-seconds", "0", "--out", str(out), "--quiet", "--in-process",
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert lut_main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime fp32 threads=1" in text and " ti " in text
    assert lut_main(["show", str(out), str(out)]) == 0
    assert lut_main(["show", str(tmp_path / "missing.json")]) == 1
