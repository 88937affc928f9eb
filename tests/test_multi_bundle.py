"""snrt.multi_bundle.MultiRuntime: one controller switching across the default family's
stitches and the elastic family's subnets (injected latencies, simulated clock and battery)."""

from __future__ import annotations

import numpy as np
import pytest

from snrt.controller import ContentionEstimate, Controller, PolicyConfig
from snrt.errors import SnrtError
from snrt.monitor import SimulatedClock, SimulatedMonitor
from snrt.multi_bundle import MultiRuntime
from snrt.runtime import Runtime


def _front(base: dict, acc: dict) -> list[str]:
    """Pareto front by hand: no other variant is at least as fast and strictly more accurate
    (or as accurate and strictly faster)."""
    ids = [i for i in base if i in acc]
    return [i for i in ids if not any(
        (base[j] <= base[i] and acc[j] > acc[i]) or (base[j] < base[i] and acc[j] >= acc[i])
        for j in ids)]


def _best_within(front: list[str], base: dict, acc: dict, budget_ms: float) -> str:
    return max((i for i in front if base[i] <= budget_ms), key=lambda i: (acc[i], -base[i]))


def test_one_controller_switches_across_stitches_and_subnets():
    with MultiRuntime(["default", "elastic"], lazy=True) as mr:
        kinds = {v.id: ("subnet" if v.id.startswith("w") and "d" in v.id else "stitch")
                 for v in mr.variants}
        assert {"ti", "s", "b", "w96d12", "w48d6"} <= set(kinds)
        base = {k: f / 1e6 for k, f in mr.flops().items()}  # injected: 1 ms per MFLOP
        acc = mr.accuracy()
        assert set(acc) == set(base)  # every variant of both bundles has a measured top-1
        front = _front(base, acc)
        # a budget whose best front member is a subnet while half of it is best served by a
        # stitch: the shipped families must offer one (found from the table, not hard-coded)
        cuts = sorted({base[i] for i in front})
        budget = next((b * 1.001 for b in cuts
                       if kinds[_best_within(front, base, acc, b * 1.001)] == "subnet"
                       and min(base.values()) <= b * 1.001 / 2
                       and kinds[_best_within(front, base, acc, b * 1.001 / 2)] == "stitch"),
                      None)
        assert budget is not None, "no budget switches across the two kinds"
        clock = SimulatedClock()
        mon = SimulatedMonitor(clock=clock)
        cfg = PolicyConfig(target_fps=0.8 * 1000.0 / budget, headroom=0.8, min_dwell_s=0.0,
                           miss_limit=0)
        ctl = Controller(mon, base, acc, clock=clock, config=cfg)
        ctl.contention = ContentionEstimate(frozen=True)  # decisions from the injected table
        assert sorted(c.id for c in ctl.candidates) == sorted(front)
        mr.set_controller(ctl)
        x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)

        def frames(n):
            out = []
            for _ in range(n):
                out.append(mr.run(x))
                clock.advance(0.1)
            return out

        frames(3)
        normal = _best_within(front, base, acc, budget)  # headroom / target FPS
        assert mr.current.id == normal
        mon.set_power_saving(True)
        res = frames(3)[-1]
        saving = _best_within(front, base, acc, budget / 2)  # power saving halves the budget
        assert mr.current.id == saving == res.variant.id
        assert (kinds[normal], kinds[saving]) == ("subnet", "stitch")  # across the bundles
        assert [(e.from_id, e.to_id) for e in mr.switches()][-1] == (normal, saving)
        # the frame ran on the bundle that holds the variant
        owner = "elastic" if kinds[saving] == "subnet" else "default"
        from snrt.multi_bundle import resolve

        with Runtime(resolve(owner), variants=[saving]) as rt:
            np.testing.assert_allclose(res.logits, rt.infer(x, variant=saving), atol=1e-5)


def test_duplicate_ids_are_refused():
    with pytest.raises(SnrtError, match="two bundles"):
        MultiRuntime(["elastic", "elastic"], lazy=True)


def test_runtime_protocol_tasks_stay_on_their_bundle():
    """What the demo and the controller use of a Runtime, across bundles: tasks come from the
    bundle that has them and run on its variants only; choosing a task while another bundle's
    variant is active moves to the task's variant nearest in FLOPs; run(variant=, task=) runs
    where they are, with the same logits as that bundle's own Runtime."""
    from snrt.multi_bundle import resolve

    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with MultiRuntime(["default", "elastic"], lazy=True) as mr:
        with Runtime(resolve("default"), lazy=True) as dflt:
            assert [t.name for t in mr.tasks] == [t.name for t in dflt.tasks] == [
                "uci-digits", "faces"]
            assert mr.bundle.task("faces").labels == dflt.bundle.task("faces").labels
            assert mr.kind("w64d10") == "subnet" and mr.kind("ti") == "anchor"
            assert mr.kind("ti>s@3:4") == "stitch"
            assert mr.bundle_of("faces").path == dflt.bundle.path
            res = mr.run(x, variant="ti", task="faces")
            assert res.task == "faces" and res.labels == ["face", "non-face"]
            np.testing.assert_allclose(res.logits, dflt.infer(x, variant="ti", task="faces"),
                                       atol=1e-5)
        mr.switch("w64d10")
        with pytest.raises(SnrtError, match="runs on .*not on 'w48d6'"):
            mr.run(x, variant="w48d6", task="faces")
        f = mr.bundle.variant("w64d10").flops
        runs_on = mr.bundle.task("uci-digits").variants
        nearest = min(runs_on, key=lambda i: abs(mr.bundle.variant(i).flops - f))
        v = mr.switch(task="uci-digits")
        assert v.id == nearest and mr.current_task == "uci-digits"
        ev = mr.switches()[-1]
        assert (ev.from_id, ev.to_id, ev.from_task, ev.to_task) == (
            "w64d10", nearest, None, "uci-digits")
        with pytest.raises(SnrtError, match="uci-digits"):
            mr.switch("w48d6")  # the task stays active: it does not run there
        assert mr.current.id == nearest
        mr.switch("w48d6", task=False)  # the backbone's own head runs everywhere
        assert (mr.current.id, mr.current_task) == ("w48d6", None)
        assert mr.run(x).variant.id == "w48d6" and mr.frames()[-1].variant == "w48d6"


def _table_for(runtimes, ms_per_mflop: float):
    from snrt.lookup_table import Entry, LookupTable, bundle_key

    tbl = LookupTable.new()
    for rt in runtimes:
        for v in rt.variants:
            ms = ms_per_mflop * v.flops / 1e6
            tbl.entries.append(Entry(bundle_key(rt.bundle), v.id, v.cfg_id, "onnxruntime",
                                     "fp32", 1, ms, ms, v.flops, v.params, v.top1))
    return tbl


def test_auto_controller_puts_both_bundles_on_one_front():
    """Controller.auto on a MultiRuntime: every variant of both bundles on one front (the
    table's figures of each bundle), each task's front only its own bundle's variants; when
    one bundle has no entries, FLOPs estimates for all (one scale, not two)."""
    mon = SimulatedMonitor(clock=SimulatedClock())
    with MultiRuntime(["default", "elastic"], lazy=True) as mr:
        ctl = Controller.auto(mr, monitor=mon, table=_table_for(mr.runtimes, 0.5))
        back = ctl.task_fronts[None]
        assert set(back.base_ms) == {v.id for v in mr.variants}
        for v in mr.variants:
            assert back.base_ms[v.id] == pytest.approx(0.5 * v.flops / 1e6)
        assert ctl.source.startswith("lookup table") and ctl.rank == "accuracy"
        assert set(ctl.task_fronts) == {None, "uci-digits", "faces"}
        for name in ("uci-digits", "faces"):
            assert set(ctl.task_fronts[name].base_ms) == set(mr.bundle.task(name).variants)
        kinds = {mr.kind(c.id) for c in ctl.candidates}
        assert "subnet" in kinds and kinds & {"stitch", "anchor"}

        ctl = Controller.auto(mr, monitor=mon, table=_table_for(mr.runtimes[:1], 0.5))
        assert ctl.source.startswith("FLOPs")  # the elastic bundle has no entries
        for v in mr.variants:
            assert ctl.task_fronts[None].base_ms[v.id] == pytest.approx(
                max(v.flops / 1e9, 1e-3))
