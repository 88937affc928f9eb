"""snrt-profile --rounds K: the interleaved protocol (one worker, shuffled round-robin bursts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import snrt.profile as profile
from snrt.errors import SnrtError
from snrt.lookup_table import Entry, LookupTable
from snrt.profile import Profiler, interleaved_fields, main, resolve_bundle

IDS = ["ti", "s", "b", "ti>s@1:1", "s>b@5:4"]
FAST = ["--runs", "3", "--min-seconds", "0", "--warmup", "1", "--quiet"]


def _entries(path):
    t = LookupTable.load(path)
    return {e.variant: e for e in t.entries}


def test_interleaved_entries_for_every_variant(tmp_path):
    out = tmp_path / "t.json"
    assert main(["default", "--variants", *IDS, "--rounds", "3", "--in-process",
                 "--out", str(out), *FAST]) == 0
    es = _entries(out)
    assert sorted(es) == sorted(IDS)
    for e in es.values():
        il = e.conditions["interleaved"]
        assert e.conditions["protocol"] == "interleaved" and not e.predicted and not e.error
        assert len(il["p50"]) == 3 and il["target"] == 3 and "count" not in il  # compacted
        assert il["burst_runs"] == 1 and e.count >= 3
        assert e.min_ms <= e.p50_ms == pytest.approx(min(il["p50"]))
        assert len(il["p10"]) == 3 and e.quiet_ms == pytest.approx(min(il["p10"]))
        assert e.min_ms <= e.quiet_ms <= e.p50_ms  # each burst's p10 <= its p50
        assert il["p50_median_ms"] == pytest.approx(np.median(il["p50"]), abs=1e-5)
        assert e.min_ms <= e.p50_ms <= e.max_ms and e.min_ms <= e.mean_ms <= e.max_ms
        assert e.load_ms > 0 and e.first_run_ms > 0 and e.placement in ("pieces", "graphs")
        assert e.peak_rss_mb is None and il["worker_peak_rss_mb"] > 10  # not per variant
        assert "cpu_load_pct" in e.conditions
    # shared pieces: an anchor's own load is heavier than a stitched variant made from
    # pieces that are ready already
    assert es["ti"].load_ms > 0 and es["ti>s@1:1"].load_ms > 0


def test_interleaved_resumes_by_rounds_after_interrupt(tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    real = profile.measure_interleaved

    def interrupted(*a, **kw):  # dies in the middle of the third round
        rounds_seen = bursts = 0
        for ev in real(*a, **kw):
            if rounds_seen == 2 and ev["event"] == "burst":
                bursts += 1
                if bursts == 2:
                    raise KeyboardInterrupt
            rounds_seen += ev["event"] == "round"
            yield ev

    monkeypatch.setattr(profile, "measure_interleaved", interrupted)
    args = ["default", "--variants", *IDS, "--rounds", "4", "--in-process", "--out", str(out),
            *FAST]
    assert main(args) == 130
    es = _entries(out)  # a valid table: two complete rounds, the partial third dropped
    assert sorted(es) == sorted(IDS)
    assert all(len(e.conditions["interleaved"]["p50"]) == len(e.conditions["interleaved"][
        "count"]) == 2 for e in es.values())  # in progress: every burst statistic kept
    before = {k: list(e.conditions["interleaved"]["p50"]) for k, e in es.items()}

    monkeypatch.setattr(profile, "measure_interleaved", real)
    prof = Profiler(resolve_bundle("default"), out, isolate=False)
    vs = [prof.bundle.variant(k) for k in IDS]
    plan = prof.plan_interleaved(vs, ["onnxruntime"], ["fp32"], [1], rounds=4)
    assert sorted((v.id, done) for *_, v, done in plan) == sorted((k, 2) for k in IDS)
    assert main(args) == 0
    es = _entries(out)
    for k, e in es.items():
        il = e.conditions["interleaved"]
        assert il["p50"][:2] == before[k] and len(il["p50"]) == 4
        assert e.count >= 4 and e.p50_ms == pytest.approx(min(il["p50"]))
    # complete: nothing left to do at 4 rounds; complete entries keep only the burst medians,
    # so asking for more rounds starts over
    prof = Profiler(resolve_bundle("default"), out, isolate=False)
    assert prof.plan_interleaved(vs, ["onnxruntime"], ["fp32"], [1], rounds=4) == []
    assert {done for *_, done in prof.plan_interleaved(vs, ["onnxruntime"], ["fp32"], [1],
                                                        rounds=6)} == {0}


def test_isolated_entries_are_remeasured_not_mixed(tmp_path):
    out = tmp_path / "t.json"
    assert main(["default", "--variants", "ti", "s", "--in-process", "--out", str(out),
                 *FAST]) == 0
    assert all("interleaved" not in e.conditions for e in _entries(out).values())
    prof = Profiler(resolve_bundle("default"), out, isolate=False)
    vs = [prof.bundle.variant(k) for k in ("ti", "s")]
    assert [done for *_, done in prof.plan_interleaved(vs, ["onnxruntime"], ["fp32"], [1],
                                                        2)] == [0, 0]
    assert prof.plan(vs, ["onnxruntime"], ["fp32"], [1]) == []  # the isolated plan: done


def test_rejects_bad_rounds(tmp_path, capsys):
    out = tmp_path / "t.json"
    with pytest.raises(SystemExit) as exc:  # a usage error, before any work
        main(["default", "--variants", "ti", "--rounds", "-2", "--out", str(out), *FAST])
    assert exc.value.code == 2
    assert "argument --rounds: -2: give a round count 0 to 10000" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["default", "--rounds", "many", "--out", str(out)])
    assert exc.value.code == 2
    assert "argument --rounds: 'many' is not a whole number" in capsys.readouterr().err
    prof = Profiler(resolve_bundle("default"), out, isolate=False)
    with pytest.raises(SnrtError, match="at least 1 round"):
        prof.plan_interleaved(prof.bundle.variants[:2], ["onnxruntime"], ["fp32"], [1], 0)


def test_interleaved_worker_process_and_crash(tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    assert main(["default", "--variants", "ti", "b", "--rounds", "2", "--out", str(out),
                 *FAST]) == 0
    es = _entries(out)
    assert sorted(es) == ["b", "ti"] and all(len(e.conditions["interleaved"]["p50"]) == 2
                                             for e in es.values())
    # a worker that dies before any round: error entries, the profile itself goes on, and
    # the command exits 1 saying so
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # shadow numpy in the worker only
    (tmp_path / "numpy.py").write_text("raise SystemExit(3)\n")
    assert main(["default", "--variants", "s", "--rounds", "2", "--out", str(out),
                 *FAST]) == 1
    e = _entries(out)["s"]
    assert e.error and "exited with 3" in e.error
    assert _entries(out)["ti"].error is None  # complete entries are kept


def test_pooled_statistics_match_the_concatenated_runs():
    rng = np.random.default_rng(1)
    bursts = [rng.gamma(5, 0.2, n) + 1 for n in (7, 30, 12, 1)]
    rs = {"p10": [float(np.percentile(b, 10)) for b in bursts],
          "p50": [float(np.percentile(b, 50)) for b in bursts],
          "p90": [float(np.percentile(b, 90)) for b in bursts],
          "p99": [float(np.percentile(b, 99)) for b in bursts],
          "mean": [float(b.mean()) for b in bursts], "std": [float(b.std()) for b in bursts],
          "count": [len(b) for b in bursts]}
    allv = np.concatenate(bursts)
    f = interleaved_fields(rs, float(allv.min()), float(allv.max()))
    assert f["count"] == 50 and f["mean_ms"] == pytest.approx(allv.mean())
    assert f["std_ms"] == pytest.approx(allv.std())
    assert f["p50_ms"] == min(rs["p50"])
    assert f["p90_ms"] == pytest.approx(np.median(rs["p90"]))
    assert f["min_ms"] <= f["p50_ms"] <= f["p90_ms"] <= f["max_ms"]
    assert f["quiet_ms"] == min(rs["p10"]) and f["min_ms"] <= f["quiet_ms"] <= f["p50_ms"]
    # a round without its p10 (a table resumed from an older snrt): no quiet figure
    assert interleaved_fields({**rs, "p10": rs["p10"][1:]}, 0.0, 9.0)["quiet_ms"] is None


def test_schema_v1_tables_are_still_read(tmp_path):
    """Version 2 added quiet_ms; a version 1 table (without it) loads, quiet_ms empty, and is
    written back as version 2. The interleaved details live in `conditions`."""
    t = LookupTable.new()
    t.put(Entry("f@x", "a", 0, "onnxruntime", "fp32", 1, 1.0, 1.0,
                conditions={"protocol": "interleaved", "interleaved": {"p50": [1.0]}}))
    p = t.save(tmp_path / "x.json")
    d = json.loads(p.read_text())
    assert d["schema_version"] == 2
    d["schema_version"] = 1
    p.write_text(json.dumps(d))
    e = LookupTable.load(p).entries[0]
    assert e.quiet_ms is None and e.conditions["interleaved"]["p50"] == [1.0]
