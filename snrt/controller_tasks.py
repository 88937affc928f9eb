"""The controller's view of tasks (snrt.controller's module docstring, "Tasks"): one front
per head, the backbone's own and each task's, and the pure function that ranks a front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import SnrtError
from .lookup_table import Entry, pareto_front


@dataclass(frozen=True)
class TaskFront:
    """What the controller knows of one head (a task, or the backbone's own): latency without
    contention per variant that can run it (ms), and its measured top-1 per variant where
    known (None: ranked by FLOPs)."""

    base_ms: Mapping[str, float]
    accuracy: Mapping[str, float] | None = None
    source: str = ""


def task_candidates(front: TaskFront, flops: Mapping[str, float], *, rank: str = "accuracy",
                    pareto_only: bool = True) -> tuple[list, str]:
    """(candidates sorted by latency, the rank used) for one head. Pure. rank "accuracy"
    uses the front's accuracies and falls back to "flops" when it has none; "flops" ranks
    by FLOPs (MFLOPs as the accuracy proxy) on the latency-FLOPs Pareto front."""
    from .controller import Candidate

    ids = list(front.base_ms)
    acc = {i: a for i, a in (front.accuracy or {}).items() if i in front.base_ms}
    if rank == "accuracy" and not acc:
        rank = "flops"
    if rank == "flops":
        missing = [i for i in ids if not flops.get(i)]
        if missing:
            raise SnrtError(f"rank 'flops': no FLOPs for {missing[:3]}; give flops={{id: "
                            "FLOPs} or record the task's accuracy per variant")
        acc = {i: flops[i] / 1e6 for i in ids}
    ids = [i for i in ids if i in acc]
    label = "MFLOPs" if rank == "flops" else "top1"
    cands = [Candidate(i, acc[i], float(front.base_ms[i]), label) for i in ids]
    if pareto_only:
        es = [Entry("", c.id, 0, "", "", 1, c.base_ms, c.base_ms, accuracy=c.accuracy)
              for c in cands]
        keep = {e.variant for e in pareto_front(es)}
        cands = [c for c in cands if c.id in keep]
    return sorted(cands, key=lambda c: c.base_ms), rank


def front_from_bundle(task, base_ms: Mapping[str, float], source: str) -> TaskFront:
    """A task's front from its manifest record (TaskInfo): the latencies `base_ms` holds for
    the variants it runs on, its recorded top-1 per variant."""
    runs_on = set(task.variants)
    acc = {vid: rec["top1"] for vid, rec in (task.accuracy or {}).items()
           if isinstance(rec, dict) and rec.get("top1") is not None}
    base = {k: v for k, v in base_ms.items() if k in runs_on}
    return TaskFront(base, {k: v for k, v in acc.items() if k in base} or None, source)
