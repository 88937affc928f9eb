"""Elastic subnets are variants like any other (issue 15 item 6): snrt-profile measures a subnets
bundle (listed and unlisted members, isolated and interleaved, resume), the controller refuses
to rank variants without an accuracy unless told rank="flops", builds ONE Pareto front over
the entries of a stitches table and a subnets table merged with `snrt-lut merge`, and snrt-run
runs a subnets bundle end to end. Latencies the assertions depend on are injected; the
profiles are real but nothing asserts on this machine's speed. Geometry: the UFO test space of
tests/test_subnet_export.py (embed 256, depth 6, img 32, patch 8)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from subnet_slicing import make_supernet

from exporters.cli import main as export_main
from snrt.bundle import Bundle
from snrt.controller import Controller, PolicyConfig, decide
from snrt.errors import SnrtError
from snrt.lookup_table import Entry, LookupTable, bundle_key
from snrt.lut_cli import main as lut_main
from snrt.monitor import SimulatedMonitor
from snrt.profile_cli import main as profile_main
from snrt.run_cli import main as run_main
from snrt.weights_io import write_safetensors

UFO = {"kind": "ufo", "embed_dim": 256, "max_depth": 6, "head_dim": 64,
       "depth_codes": {"j": 4, "k": 5, "l": 6}, "heads_codes": {"1": 4, "2": 3, "3": 2},
       "mlp_codes": {"1": 4.0, "2": 3.5, "3": 3.0}, "embed_codes": {"1": 256}}
UNLISTED = "j" + "221" * 4 + "000" * 2  # depth 4, 3 heads, mlp 3.5: not listed
QUICK = ["--runs", "2", "--warmup", "0", "--min-seconds", "0", "--quiet", "--in-process"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("subprof")
    write_safetensors(d / "w.safetensors", make_supernet(embed=256, depth=6, seed=1))
    (d / "space.json").write_text(json.dumps(UFO))
    out = d / "u.snrt"
    assert export_main(["subnets", "--supernet", str(d / "w.safetensors"), "--space",
                        str(d / "space.json"), "--out", str(out), "--quiet"]) == 0
    return out  # UFO without --archs: the largest and the smallest member listed


def _entries(path) -> dict[str, Entry]:
    return {e.variant: e for e in LookupTable.load(path).entries}


def test_profile_measures_listed_and_unlisted_subnets_and_resumes(bundle, tmp_path):
    b = Bundle.open(bundle)
    listed = [v.id for v in b.variants]
    assert UNLISTED not in listed
    ids = [listed[0], UNLISTED]
    iso = tmp_path / "iso.json"
    assert profile_main([str(bundle), "--out", str(iso), "--variants", *ids, *QUICK]) == 0
    es = _entries(iso)  # the loader accepts the table
    assert set(es) == set(ids)
    for vid, e in es.items():
        v = b.variant(vid)
        assert (e.flops, e.params) == (v.flops, v.params) and e.flops > 0
        assert e.accuracy is None and e.error is None and e.p50_ms > 0 and e.count >= 2
    assert es[UNLISTED].cfg_id == -1  # recorded by id
    stamps = {k: e.timestamp for k, e in es.items()}
    assert profile_main([str(bundle), "--out", str(iso), "--variants", *ids, *QUICK]) == 0
    assert {k: e.timestamp for k, e in _entries(iso).items()} == stamps  # nothing re-measured

    inter = tmp_path / "inter.json"
    assert profile_main([str(bundle), "--out", str(inter), "--variants", *ids, "--rounds", "2",
                         *QUICK]) == 0
    assert all(len(e.conditions["interleaved"]["p50"]) == 2 for e in _entries(inter).values())
    # the same command again: every entry is complete, nothing is measured again
    first = {k: e.conditions["interleaved"]["p50"] for k, e in _entries(inter).items()}
    assert profile_main([str(bundle), "--out", str(inter), "--variants", *ids, "--rounds", "2",
                         *QUICK]) == 0
    assert {k: e.conditions["interleaved"]["p50"] for k, e in _entries(inter).items()} == first
    # more rounds than a complete entry has: measured again from round 0 (snrt.profile)
    assert profile_main([str(bundle), "--out", str(inter), "--variants", *ids, "--rounds", "3",
                         *QUICK]) == 0
    for k, e in _entries(inter).items():
        assert len(e.conditions["interleaved"]["p50"]) == 3
        assert e.conditions["protocol"] == "interleaved" and e.flops == b.variant(k).flops


def test_profile_refuses_an_id_outside_the_space(bundle, tmp_path, capsys):
    bad = "j" + "111" * 3 + "000" * 3  # depth 4 with block 3 written 000
    assert profile_main([str(bundle), "--out", str(tmp_path / "t.json"), "--variants", bad,
                         *QUICK]) != 0
    assert "position 10" in capsys.readouterr().err


def _front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Brute force: ids no other point beats in both latency (lower) and score (higher)."""
    return {i for i, (ms, s) in points.items()
            if not any(ms2 <= ms and s2 >= s and (ms2, s2) != (ms, s)
                       for j, (ms2, s2) in points.items() if j != i)}


def test_controller_refuses_without_accuracy_unless_rank_flops():
    t = LookupTable.new()
    for vid, ms, fl in (("w64d2", 1.0, 2e6), ("w96d3", 2.0, 5e6), ("w128d4", 1.5, 4e6)):
        t.put(Entry("sub@1", vid, -1, "onnxruntime", "fp32", 1, ms, ms, flops=int(fl)))
    mon = SimulatedMonitor()
    with pytest.raises(SnrtError, match=r"has a measured top-1 accuracy.*--rank flops"):
        Controller.from_table(mon, t)
    ctl = Controller.from_table(mon, t, rank="flops")
    # on the latency-FLOPs front nothing is dominated; with w96d3 at 1.2 ms, w128d4 (4 MFLOPs,
    # 1.5 ms) is
    assert [c.id for c in ctl.candidates] == ["w64d2", "w128d4", "w96d3"]
    t.get("sub@1", "w96d3").p50_ms = 1.2
    ctl = Controller.from_table(mon, t, rank="flops")
    assert [c.id for c in ctl.candidates] == ["w64d2", "w96d3"]
    assert ctl.status()["rank"] == "flops"


def test_one_front_over_stitches_and_subnets_from_merged_tables(bundle, tmp_path):
    """A stitches table (synthetic entries of a SN-Net family) and a subnets table profiled
    from the bundle, merged with `snrt-lut merge`: the controller's candidates are the brute
    force Pareto front over both kinds, and decide() picks across kinds by budget. (A Runtime
    holds one bundle, so switching across bundles is checked at the controller level.)"""
    sub = tmp_path / "sub.json"
    b = Bundle.open(bundle)
    ids = [v.id for v in b.variants] + [UNLISTED]
    assert profile_main([str(bundle), "--out", str(sub), "--variants", *ids, *QUICK]) == 0
    st = LookupTable.load(sub)  # inject latencies and (as if evaluated) accuracies
    injected = dict(zip(ids, [(9.0, 79.0), (3.0, 70.0), (2.0, 60.0)]))
    for e in st.entries:
        e.p50_ms, e.accuracy = injected[e.variant]
    st.save(sub)
    stitches = LookupTable(st.device)  # same device: merge keeps one file per device
    stitches.bundles["fam@abc"] = {"name": "fam", "variants": 4}
    for vid, ms, acc in (("ti", 1.0, 55.0), ("s", 4.0, 72.0), ("b", 12.0, 80.0),
                         ("ti>s@1:1", 3.5, 65.0)):
        stitches.put(Entry("fam@abc", vid, 0, "onnxruntime", "fp32", 1, ms, ms, flops=1,
                           accuracy=acc))
    stitches.save(tmp_path / "st.json")
    out = tmp_path / "merged"
    assert lut_main(["merge", str(sub), str(tmp_path / "st.json"), "--out", str(out)]) == 0
    merged = LookupTable.load(LookupTable.path_for(out, st.device))
    assert {e.bundle for e in merged.entries} == {"fam@abc", bundle_key(b)}

    ctl = Controller.from_table(SimulatedMonitor(), merged)
    points = {e.variant: (e.p50_ms, e.accuracy) for e in merged.entries}
    want = _front(points)
    assert {c.id for c in ctl.candidates} == want
    assert want & {"ti", "s", "b"} and want & set(ids)  # both kinds on the one front
    assert "ti>s@1:1" not in want  # dominated by a subnet (3.0 ms, 70%)

    def pick(budget_ms: float) -> str:
        cfg = PolicyConfig(target_fps=1000.0 / budget_ms, headroom=1.0)
        return decide(SimulatedMonitor().read(), ctl.candidates, "none", 1.0, 0.0, -1e9,
                      cfg).target

    for budget in (1.5, 2.5, 3.2, 5.0, 10.0, 20.0):
        fits = {k: v for k, v in points.items() if k in want and v[0] <= budget}
        assert pick(budget) == max(fits, key=lambda k: fits[k][1])


def test_snrt_run_runs_a_subnets_bundle_ranked_by_flops(bundle, tmp_path, capsys):
    """End to end through snrt-run. Whether the run switches depends on this machine's real
    latencies (snrt-run measures them), so switching itself is asserted with injected latencies
    in test_one_front_over_stitches_and_subnets_from_merged_tables, not here."""
    tables = tmp_path / "tables"
    assert run_main([str(bundle), "--seconds", "2", "--tables", str(tables)]) == 1
    err = capsys.readouterr().err
    assert "no variant has a measured top-1 accuracy" in err and "--rank flops" in err
    assert not tables.exists() or not any(tables.iterdir())  # refused before profiling

    assert run_main([str(bundle), "--seconds", "2", "--tables", str(tables),
                     "--rank", "flops"]) == 0
    out = capsys.readouterr().out
    b = Bundle.open(bundle)
    biggest = max(b.variants, key=lambda v: v.flops).id
    assert f"frame rate: {biggest} takes" in out  # starts on the most FLOPs
    assert "controller ranks by flops" in out
    table = next(tables.glob("*.json"))  # every listed subnet was profiled into --tables
    assert {v.id for v in b.variants} <= {e["variant"] for e in json.loads(table.read_text())
                                          ["entries"]}
    assert int(out.rsplit(" frames,", 1)[0].split()[-1]) > 0
