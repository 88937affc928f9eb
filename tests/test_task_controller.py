"""Lookup table and controller per (variant, task) (issue 17, item 6).

The lookup table keys entries by (variant, task) and still reads tables without tasks;
snrt-profile --tasks measures each (variant, task) on the shipped default bundle's real tasks
(uci-digits, faces); the controller's front follows the runtime's active task: fed injected
latencies on a simulated clock (no wall-clock assertion), the same budget picks a different
variant for a task whose tuners cost more. The expected picks are worked out by hand here
(the most accurate variant whose latency fits the budget), not from snrt's code.
"""

from __future__ import annotations

import json

import pytest

import snrt
from snrt.controller import Controller, PolicyConfig, TaskFront, task_candidates
from snrt.lookup_table import ALL_TASKS, Entry, LookupTable, LookupTableError, bundle_key
from snrt.monitor import SimulatedClock, SimulatedMonitor
from snrt.runtime import FrameRecord

# ----------------------------------------------------------------------------- lookup table


def _entry(variant, p50, task=None, acc=None):
    return Entry(bundle="fam@abc", variant=variant, cfg_id=0, backend="onnxruntime",
                 precision="fp32", threads=1, p50_ms=p50, mean_ms=p50, accuracy=acc, task=task)


def test_table_keys_entries_by_variant_and_task_and_reads_old_tables(tmp_path):
    t = LookupTable.new()
    t.put(_entry("ti", 1.0))
    t.put(_entry("ti", 1.4, task="faces", acc=95.0))
    t.put(_entry("ti", 1.3, task="uci-digits"))
    t.put(_entry("ti", 1.5, task="faces", acc=95.0))  # replaces the faces entry only
    assert len(t.entries) == 3
    assert t.get("fam@abc", "ti").p50_ms == 1.0
    assert t.get("fam@abc", "ti", task="faces").p50_ms == 1.5
    assert [e.p50_ms for e in t.select("fam@abc")] == [1.0]  # default: the backbone's head
    assert [e.p50_ms for e in t.select("fam@abc", task="faces")] == [1.5]
    assert len(t.select(task=ALL_TASKS)) == 3 and t.tasks() == ["faces", "uci-digits"]
    from snrt.lut_cli import show

    shown = show([t])  # snrt-lut show lists a task's entries with their ratio to the plain one
    assert "task faces: 1 variants" in shown and "1.50x the backbone head's" in shown
    path = t.save(tmp_path / "dev.json")
    d = json.loads(path.read_text())
    assert d["schema_version"] == 3
    assert [e.get("task") for e in d["entries"]] == [None, "faces", "uci-digits"]
    back = LookupTable.load(path)
    assert [e.key for e in back.entries] == [e.key for e in t.entries]
    # a table without tasks is written as before (version 2, no task field), and an old
    # version-2 file, written by hand here, is read with task None
    old = LookupTable(t.device, {}, [_entry("s", 2.0)])
    d2 = old.to_json()
    assert d2["schema_version"] == 2 and "task" not in d2["entries"][0]
    raw = {"schema": "snrt.lookup_table", "schema_version": 2, "device": t.device.to_json(),
           "bundles": {}, "entries": [{"bundle": "fam@abc", "variant": "s", "cfg_id": 1,
                                       "backend": "onnxruntime", "precision": "fp32",
                                       "threads": 1, "p50_ms": 2.0, "mean_ms": 2.1}]}
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert LookupTable.load(tmp_path / "old.json").get("fam@abc", "s").task is None
    # the same (variant, task) twice is a duplicate; a task that is not a name is refused
    raw["schema_version"] = 3
    raw["entries"] += [dict(raw["entries"][0], task="faces"),
                       dict(raw["entries"][0], task="faces")]
    with pytest.raises(LookupTableError, match=r"entry 2 \(s task=faces .*duplicate"):
        LookupTable.from_json(raw)
    raw["entries"][2] = dict(raw["entries"][0], task=7)
    with pytest.raises(LookupTableError, match="task must be a task name"):
        LookupTable.from_json(raw)


# ----------------------------------------------------------------------------- snrt-profile


@pytest.mark.parametrize("rounds", [0, 2])
def test_profile_tasks_measures_each_variant_and_task_and_resumes(tmp_path, monkeypatch,
                                                                   capsys, rounds):
    from snrt import profile_cli
    from snrt.runtime import Runtime

    ran: list[tuple[str, str | None]] = []
    real_run = Runtime.run

    def spy(self, x, **kw):
        res = real_run(self, x, **kw)
        ran.append((res.variant.id, res.task))
        return res

    monkeypatch.setattr(Runtime, "run", spy)
    out = tmp_path / "dev.json"
    args = ["default", "--variants", "ti", "ti>s@5:6", "--tasks", "faces", "--runs", "2",
            "--warmup", "0", "--min-seconds", "0", "--rounds", str(rounds), "--in-process",
            "--quiet", "--out", str(out)]
    assert profile_cli.main(args) == 0
    bundle = snrt.Bundle.open(snrt.default_bundle(), verify=False)
    table = LookupTable.load(out)
    key = bundle_key(bundle)
    faces = bundle.task("faces")
    for vid in ("ti", "ti>s@5:6"):
        plain = table.get(key, vid)
        e = table.get(key, vid, task="faces")
        assert plain is not None and plain.error is None and plain.task is None
        assert plain.accuracy == bundle.variant(vid).top1
        assert e is not None and e.error is None and e.p50_ms > 0
        assert e.accuracy == faces.accuracy[vid]["top1"]  # the task's own test top-1
    assert len(table.entries) == 4
    # every measured call of a faces entry ran the faces tuners and head, the others none
    assert {("ti", "faces"), ("ti>s@5:6", "faces"), ("ti", None), ("ti>s@5:6", None)} \
        == set(ran)
    # resumable: the same command measures nothing again
    ran.clear()
    assert profile_cli.main(args) == 0
    assert ran == []
    # an unknown task is refused before anything is measured, naming the bundle's tasks
    assert profile_cli.main(args[:4] + ["--tasks", "cats"] + args[6:]) == 1
    assert "unknown task(s) ['cats']; default.snrt has uci-digits, faces" in \
        capsys.readouterr().err
    assert ran == []


# ----------------------------------------------------------------------------- controller

BASE = {"a": 10.0, "b": 20.0, "c": 30.0}
ACC = {"a": 70.0, "b": 80.0, "c": 90.0}
HEAVY = TaskFront({"a": 14.0, "b": 28.0, "c": 42.0}, {"a": 60.0, "b": 75.0, "c": 85.0})
CFG = PolicyConfig(target_fps=25.0, up_margin=0.0, miss_limit=0)  # budget 1000/25*0.8 = 32 ms


class FakeRuntime:
    """What the controller reads and calls: the active variant and task, switch()."""

    def __init__(self, current: str):
        self.current = type("V", (), {"id": current})()
        self.current_task = None
        self.switches: list[tuple[str, str | None]] = []

    def switch(self, vid=None, reason="", task=None):
        if vid is not None:
            self.current = type("V", (), {"id": vid})()
        if task is not None:
            self.current_task = task or None
        self.switches.append((self.current.id, self.current_task))


def _frame(clock, rt, table: dict, task=None):
    """One frame of the active variant at 10 FPS, its latency injected from `table`."""
    clock.advance(0.1)
    ms = table[rt.current.id]
    return FrameRecord(clock(), rt.current.id, ms, ms, 1, task)


def test_task_candidates_is_a_pure_front_per_task():
    cands, rank = task_candidates(HEAVY, {"a": 1e6, "b": 2e6, "c": 3e6})
    assert rank == "accuracy" and [(c.id, c.base_ms, c.accuracy) for c in cands] == [
        ("a", 14.0, 60.0), ("b", 28.0, 75.0), ("c", 42.0, 85.0)]
    # no accuracies recorded for a task: FLOPs (MFLOPs) rank it, as a stated proxy
    cands, rank = task_candidates(TaskFront({"a": 14.0, "c": 42.0}), {"a": 1e6, "c": 3e6})
    assert rank == "flops" and [(c.id, c.accuracy, c.label) for c in cands] == [
        ("a", 1.0, "MFLOPs"), ("c", 3.0, "MFLOPs")]
    # off the front: slower and no more accurate
    cands, _ = task_candidates(TaskFront({"a": 14.0, "b": 28.0}, {"a": 80.0, "b": 75.0}), {})
    assert [c.id for c in cands] == ["a"]


def test_same_budget_picks_another_variant_for_a_task_whose_tuners_cost_more():
    clock = SimulatedClock()
    ctl = Controller(SimulatedMonitor(clock=clock), BASE, ACC, config=CFG, clock=clock,
                     flops={"a": 1e6, "b": 2e6, "c": 3e6}, tasks={"heavy": HEAVY})
    rt = FakeRuntime("none-yet")  # not a candidate: the first decision is a start
    ctl.attach(rt)
    budget = 1000 / 25 * 0.8
    # by hand: the most accurate variant within 32 ms; backbone c (30 ms), heavy b (28 ms;
    # c with the task's tuners takes 42 ms)
    assert max((v for v in BASE if BASE[v] <= budget), key=ACC.get) == "c"
    assert max((v for v in HEAVY.base_ms if HEAVY.base_ms[v] <= budget),
               key=HEAVY.accuracy.get) == "b"
    rt.current = type("V", (), {"id": "none-yet"})()
    d = ctl.observe(rt, FrameRecord(clock(), "none-yet", 5.0, 5.0, 1))
    assert d.kind == "start" and rt.current.id == "c"
    for _ in range(20):  # steady on the backbone: c fits, exactly its table latency
        d = ctl.observe(rt, _frame(clock, rt, BASE))
    assert rt.current.id == "c" and ctl.task is None and ctl.contention.value == 1.0
    # the app switches task; the next frame (c with the tuners: 42 ms) is decided on the
    # task's front, at the same budget
    rt.switch(task="heavy")
    d = ctl.observe(rt, _frame(clock, rt, HEAVY.base_ms, "heavy"))
    assert ctl.task == "heavy" and d.budget.budget_ms == pytest.approx(budget)
    assert d.kind == "down" and d.target == "b" and rt.current.id == "b", d
    assert rt.current_task == "heavy"  # the variant changed, the task stayed
    assert [c.id for c in ctl.candidates] == ["a", "b", "c"]
    assert ctl.status()["task"] == "heavy" and ctl.status()["tasks"] == ["heavy"]
    for _ in range(50):
        ctl.observe(rt, _frame(clock, rt, HEAVY.base_ms, "heavy"))
    assert rt.current.id == "b"  # no step up: c does not fit with this task
    # back to the backbone's head: c fits again and the controller returns to it once the
    # dwell and clean window allow a step up
    rt.switch(task=False)
    for _ in range(400):
        ctl.observe(rt, _frame(clock, rt, BASE))
    assert ctl.task is None and rt.current.id == "c"


def test_injected_contention_carries_across_a_task_switch():
    """Contention is the machine's: learnt on the backbone, it applies to the task's front."""
    clock = SimulatedClock()
    ctl = Controller(SimulatedMonitor(clock=clock), BASE, ACC, config=CFG, clock=clock,
                     tasks={"heavy": HEAVY})
    rt = FakeRuntime("a")
    ctl.attach(rt)
    slow = {k: v * 1.25 for k, v in BASE.items()}  # a neighbour takes a quarter of the core
    for _ in range(10):
        ctl.observe(rt, _frame(clock, rt, slow))
    assert ctl.contention.value == pytest.approx(1.25)
    rt.switch("b", task="heavy")
    d = ctl.observe(rt, _frame(clock, rt, {k: v * 1.25 for k, v in HEAVY.base_ms.items()},
                               "heavy"))
    # heavy at x1.25: a 17.5, b 35 (over 32), c 52.5 -> a, by hand
    assert d.target == "a" and d.est_ms == pytest.approx(17.5), d


def test_auto_and_from_table_fronts_on_the_default_bundles_tasks():
    """Controller.auto on a real Runtime with the shipped tasks: a task's front takes the
    table's entries for that task and the task's recorded accuracy per variant; a task the
    table lacks gets the backbone's latencies on the variants it runs on. Driven by injected
    frames; the Runtime really switches variant with the task kept."""
    ids = ["ti", "s", "b"]
    with snrt.Runtime(snrt.default_bundle(), variants=ids, initial="b") as rt:
        key = bundle_key(rt.bundle)
        table = LookupTable.new()
        base = {"ti": 2.0, "s": 4.0, "b": 10.0}
        faces_ms = {"ti": 3.0, "s": 6.0, "b": 15.0}  # the faces tuners cost 50% here
        for vid in ids:
            v = rt.bundle.variant(vid)
            table.put(Entry(key, vid, v.cfg_id, "onnxruntime", "fp32", 1, base[vid],
                            base[vid], flops=v.flops, accuracy=v.top1))
            table.put(Entry(key, vid, v.cfg_id, "onnxruntime", "fp32", 1, faces_ms[vid],
                            faces_ms[vid], flops=v.flops, task="faces"))
        clock = SimulatedClock()
        cfg = PolicyConfig(target_fps=80.0, up_margin=0.0, miss_limit=0)  # budget 10 ms
        ctl = Controller.auto(rt, table=table, monitor=SimulatedMonitor(clock=clock),
                              config=cfg)
        ctl.clock = clock
        fronts = ctl.task_fronts
        faces = rt.bundle.task("faces")
        assert dict(fronts["faces"].base_ms) == faces_ms
        assert dict(fronts["faces"].accuracy) == {v: faces.accuracy[v]["top1"] for v in ids}
        digits = rt.bundle.task("uci-digits")
        assert dict(fronts["uci-digits"].base_ms) == base  # no entries: the backbone's
        assert "no entries for task uci-digits" in fronts["uci-digits"].source
        assert dict(fronts["uci-digits"].accuracy) == {v: digits.accuracy[v]["top1"]
                                                       for v in ids}
        ctl.attach(rt)
        # the backbone's head: b (10 ms) fits the 10 ms budget
        ctl.observe(rt, FrameRecord(clock.advance(0.1), "b", 10.0, 10.0, 1))
        assert rt.current.id == "b"
        rt.switch(task="faces")
        ctl.observe(rt, FrameRecord(clock.advance(0.1), "b", 15.0, 15.0, 1,
                                    "faces"))
        # faces: b 15 ms > 10; by hand the most accurate of ti (3), s (6)
        want = max(("ti", "s"), key=lambda v: faces.accuracy[v]["top1"])
        assert rt.current.id == want and rt.current_task == "faces"
        assert rt.run(_probe(rt)).task == "faces"

        ctl2 = Controller.from_table(SimulatedMonitor(clock=clock), table)
        assert set(ctl2.task_fronts) == {None, "faces"}
        assert ctl2.task_fronts["faces"].accuracy is None  # these entries carry none
        ctl2.use_task("faces")
        assert ctl2.rank == "flops" and {c.id for c in ctl2.candidates} <= set(ids)


def _probe(rt):
    import numpy as np

    shape = [1 if isinstance(d, str) else d for d in rt.bundle.manifest.input["shape"]]
    return np.zeros(shape[1:], np.float32)


def test_a_task_without_candidates_holds_the_variant_and_never_breaks_the_frame():
    clock = SimulatedClock()
    ctl = Controller(SimulatedMonitor(clock=clock), BASE, ACC, config=CFG, clock=clock,
                     tasks={"empty": TaskFront({}, None)})
    rt = FakeRuntime("c")
    ctl.attach(rt)
    rt.switch(task="empty")
    assert ctl.observe(rt, _frame(clock, rt, BASE, "empty")) is None  # no exception
    assert rt.current.id == "c" and ctl.task is None  # the backbone's front is kept
