"""How the demo's controller gets its latencies: this device's lookup table, else the candidate
variants measured now (`calibrate`), or, with `--simulate-latency`, the simulated table
(latency.py); and the automatic target frame rate. Each of the runtime's tasks gets its own
front the same way (its table entries, or its candidates measured now with the task's tuners
and head, or the simulated table's (variant, task) figures), ranked by the task's recorded
accuracy per variant (snrt.controller.TaskFront)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from snrt.bundle import VariantInfo
from snrt.controller import Controller, PolicyConfig, TaskFront, front_from_bundle
from snrt.runtime import Runtime

log = logging.getLogger(__name__)

FPS_RANGE = (1.0, 240.0)


def candidate_ids(variants: list[VariantInfo], max_unknown: int = 8) -> list[str]:
    """Variants worth measuring for the controller: the FLOPs-accuracy Pareto front when
    accuracies are known, else the anchors plus a spread over FLOPs."""
    if any(v.top1 is not None for v in variants):
        front, best = [], -math.inf
        for v in sorted((v for v in variants if v.top1 is not None),
                        key=lambda v: (v.flops, -v.top1)):
            if v.top1 > best:
                front.append(v.id)
                best = v.top1
        return front
    by_flops = sorted(variants, key=lambda v: v.flops)
    picks = {v.id for v in variants if v.is_anchor}
    n = len(by_flops)
    for i in range(min(max_unknown, n)):
        picks.add(by_flops[round(i * (n - 1) / max(1, min(max_unknown, n) - 1))].id)
    return [v.id for v in by_flops if v.id in picks]


def task_candidate_ids(rt: Runtime, task) -> list[str]:
    """candidate_ids for one task: its variants in this runtime, on the FLOPs-accuracy front
    of the task's own accuracies when it records them."""
    acc = {vid: rec.get("top1") for vid, rec in (task.accuracy or {}).items()
           if isinstance(rec, dict)}
    vs = [v for v in rt.variants if v.id in set(task.variants)]
    if not any(acc.get(v.id) is not None for v in vs):
        return candidate_ids(vs)
    front, best = [], -math.inf
    for v in sorted((v for v in vs if acc.get(v.id) is not None),
                    key=lambda v: (v.flops, -acc[v.id])):
        if acc[v.id] > best:
            front.append(v.id)
            best = acc[v.id]
    return front


def calibrate(rt: Runtime, ids: list[str], frame: np.ndarray, runs: int = 10,
              warmup: int = 2, task: str | bool = False) -> dict[str, float]:
    """Each variant's latency (ms) on this machine without contention, estimated as the 25th
    percentile of `runs` runs measured round-robin (a burst of background load then hits
    every variant alike, and mostly the upper runs). Run before a controller is attached:
    these calls must not drive it. `task`: a task's name (its tuners and head), or False
    (the backbone's own head)."""
    for vid in ids:
        for _ in range(warmup):
            rt.run(frame, variant=vid, task=task)
    ms: dict[str, list[float]] = {vid: [] for vid in ids}
    for _ in range(runs):
        for vid in ids:
            ms[vid].append(rt.run(frame, variant=vid, task=task).latency_ms)
    return {vid: float(np.percentile(v, 25)) for vid, v in ms.items()}


def auto_fps(best_ms: float, headroom: float, share: float = 2 / 3) -> float:
    """The frame rate at which the most accurate variant uses `share` of the frame budget, so
    it fits, and halving the budget (power saving) makes the controller step down."""
    fps = 1000.0 * headroom * share / max(best_ms, 1e-3)
    return float(min(FPS_RANGE[1], max(FPS_RANGE[0], round(fps, 1))))


def build_controller(rt: Runtime, monitor, *, target_fps: float | None, frame: np.ndarray,
                     calibrate_runs: int = 10, latency=None,
                     clock=time.monotonic) -> tuple[Controller, str, float]:
    """The controller for the demo: with a SimulatedLatency its table; else this device's
    lookup table if there is one, else latencies measured now. Returns (controller, where its
    latencies come from, target fps); target_fps None means auto (see auto_fps). `clock` is
    the controller's time (pacing.py)."""
    cfg = PolicyConfig(target_fps=target_fps or 30.0)
    acc = {v.id: v.top1 for v in rt.variants if v.top1 is not None}
    if latency is not None and latency.simulated:
        base = {vid: latency.table_ms[vid] for vid in candidate_ids(rt.variants)}
        tasks = {t.name: front_from_bundle(t, {vid: latency.ms(vid, t.name)
                                               for vid in task_candidate_ids(rt, t)},
                                           latency.description) for t in rt.tasks}
        ctl = Controller(monitor, base, acc or None, config=cfg, clock=clock,
                         rank="accuracy" if acc else "flops",  # FLOPs only without a top-1
                         flops={v.id: v.flops for v in rt.variants}, tasks=tasks)
        source = latency.description
    else:
        ctl = Controller.auto(rt, monitor=monitor, config=cfg)
        ctl.clock = clock
        source = getattr(ctl, "source", "")
        if source.startswith("FLOPs"):
            ids = candidate_ids(rt.variants)
            t0 = time.monotonic()
            base = calibrate(rt, ids, frame, runs=calibrate_runs)
            tasks: dict[str, TaskFront] = {}
            for t in rt.tasks:  # each task's candidates, measured with its tuners and head
                t_ms = calibrate(rt, task_candidate_ids(rt, t), frame, runs=calibrate_runs,
                                 task=t.name)
                tasks[t.name] = front_from_bundle(t, t_ms, "measured now")
            n = len(ids) + sum(len(f.base_ms) for f in tasks.values())
            ctl = Controller(monitor, base, acc or None, config=cfg, clock=clock,
                             rank=ctl.rank, flops=ctl.flops,  # as auto chose: FLOPs w/o top-1
                             tasks=tasks)
            source = (f"measured now ({n} variant{'/task pairs' if tasks else 's'}, "
                      f"{time.monotonic() - t0:.1f} s)")
            log.info("controller latencies %s: %s", source,
                     ", ".join(f"{k} {v:.2f} ms" for k, v in base.items()))
    if target_fps is None:
        best = max(ctl.candidates, key=lambda c: (c.accuracy, -c.base_ms))
        target_fps = auto_fps(best.base_ms, cfg.headroom)
        log.info("target fps auto: %.1f (%s at %.2f ms uses 2/3 of the budget)", target_fps,
                 best.id, best.base_ms)
        ctl.set_config(target_fps=target_fps)
    return ctl, source, float(target_fps)
