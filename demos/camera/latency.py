"""Where a frame's latency comes from: the wall clock (the default), or a table (simulated).

`MeasuredLatency` is what users run: the runtime times each inference and feeds its controller,
so the demo reacts to this machine's real speed and load. `SimulatedLatency` (`--simulate-latency`)
runs the same inference for the prediction but reports each variant's latency from a table,
and feeds the controller itself: the controller's decisions then depend on the table, the
simulated sensors and the simulated clock only, not on how busy the machine is (tests, CI).

Tables: `flops[:MAX_MS]` makes the most expensive variant take MAX_MS (default 40 ms) and every
other variant its FLOPs share of it; a lookup table file (`snrt-profile`'s JSON) gives the
p50 of this bundle's entries (variants it lacks are scaled by FLOPs from the measured ones).
Tasks: a (variant, task) pair takes the FLOPs share of its chain with the task's tuners and
head (`flops`), or the table's entry for that task (`snrt-profile --tasks`), else the
variant's own latency scaled by the same FLOPs ratio.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path

from snrt.errors import SnrtError
from snrt.runtime import FrameRecord, Result, Runtime

DEFAULT_SIMULATED_MAX_MS = 40.0


class MeasuredLatency:
    """The wall clock's latency, measured by the runtime (which also feeds its controller)."""

    simulated = False
    description = "measured"

    def attach(self, rt: Runtime, controller) -> None:
        if rt.controller is not controller:
            rt.set_controller(controller)

    def run(self, rt: Runtime, controller, image, now_s: float) -> tuple[Result, float]:
        """(the result, CPU-busy seconds of the frame for the energy model)."""
        c0 = time.thread_time()
        res = rt.run(image)
        cpu_s = time.thread_time() - c0
        threads = max(1, int(rt.threads))
        return res, cpu_s + (threads - 1) * res.latency_ms / 1e3


class SimulatedLatency:
    """Each variant's latency from `table_ms`; the controller is fed these, not the clock."""

    simulated = True

    def __init__(self, table_ms: Mapping[str, float], description: str = "simulated",
                 task_ms: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """table_ms: {variant: ms} with the backbone's head; task_ms: {task: {variant: ms}}."""
        every = [*table_ms.items(), *((f"{k}@{t}", v) for t, m in (task_ms or {}).items()
                                      for k, v in m.items())]
        bad = {k: v for k, v in every
               if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
        if not table_ms or bad:
            raise SnrtError("simulated latencies must be positive numbers of ms, got "
                            f"{bad or 'none'}")
        self.table_ms = dict(table_ms)
        self.task_ms = {t: dict(m) for t, m in (task_ms or {}).items()}
        self.description = description

    def ms(self, variant: str, task: str | None = None) -> float:
        return self.table_ms[variant] if task is None else self.task_ms[task][variant]

    def attach(self, rt: Runtime, controller) -> None:
        if rt.controller is not None:
            rt.set_controller(None)  # the runtime would feed it wall-clock latencies
        controller.attach(rt)

    def run(self, rt: Runtime, controller, image, now_s: float) -> tuple[Result, float]:
        res = rt.run(image)  # the real prediction of the active variant and task
        ms = self.ms(res.variant.id, res.task)
        controller.observe(rt, FrameRecord(now_s, res.variant.id, ms, ms, 1, res.task))
        return dataclasses.replace(res, latency_ms=ms, total_ms=ms), ms / 1e3


def simulated_latency(spec: str, rt: Runtime) -> SimulatedLatency:
    """`flops[:MAX_MS]` or a lookup-table path (module docstring); SnrtError names the flag."""
    variants = rt.variants
    flops = {v.id: max(float(v.flops), 1.0) for v in variants}
    if spec == "flops" or spec.startswith("flops:"):
        max_ms = DEFAULT_SIMULATED_MAX_MS
        if ":" in spec:
            try:
                max_ms = float(spec.split(":", 1)[1])
            except ValueError:
                max_ms = math.nan
            if not (math.isfinite(max_ms) and 0 < max_ms <= 60_000):
                raise SnrtError(f"--simulate-latency {spec!r}: MAX_MS must be a number of ms in "
                                "(0, 60000], e.g. flops:40")
        top = max(flops.values())
        task_ms = {t.name: {vid: max_ms * max(f, 1.0) / top
                            for vid, f in task_flops(rt.bundle, t, variants).items()}
                   for t in rt.tasks}
        return SimulatedLatency({k: max_ms * f / top for k, f in flops.items()},
                                f"simulated: FLOPs share of {max_ms:g} ms", task_ms)
    path = Path(spec)
    if not path.is_file():
        raise SnrtError(f"--simulate-latency {spec!r}: expected 'flops', 'flops:MAX_MS' or a "
                        "lookup table file (snrt-profile's JSON)")
    from snrt.lookup_table import LookupTable, bundle_key

    table = LookupTable.load(path)
    entries = table.select(bundle_key(rt.bundle), rt.backend_name, "fp32", rt.threads)
    measured = {e.variant: float(e.p50_ms) for e in entries if e.variant in flops}
    if not measured:
        raise SnrtError(f"--simulate-latency {spec}: the table has no fp32 entries for bundle "
                        f"{bundle_key(rt.bundle)} on {rt.backend_name} with {rt.threads} "
                        "thread(s)")
    ms_per_flop = sorted(ms / flops[k] for k, ms in measured.items())[len(measured) // 2]
    table_ms = {k: measured.get(k, ms_per_flop * f) for k, f in flops.items()}
    task_ms = {}
    for t in rt.tasks:
        got = {e.variant: float(e.p50_ms) for e in table.select(
            bundle_key(rt.bundle), rt.backend_name, "fp32", rt.threads, task=t.name)}
        task_ms[t.name] = {vid: got.get(vid, table_ms[vid] * f / flops[vid])
                           for vid, f in task_flops(rt.bundle, t, variants).items()}
    return SimulatedLatency(table_ms, f"simulated: lookup table {path.name}", task_ms)


def task_flops(bundle, task, variants) -> dict[str, float]:
    """FLOPs of each of `variants` the task runs on, with the task's tuners and head: the
    sum over its chain (TaskInfo.chain) of the frozen pieces' and the task pieces' FLOPs."""
    piece = {p.id: p.flops for p in bundle.manifest.pieces}
    piece.update({p["id"]: p["flops"] for p in task.pieces})
    runs_on = set(task.variants)
    return {v.id: float(sum(piece[p] for p in task.chain(v.pieces, v.anchors)))
            for v in variants if v.id in runs_on}
