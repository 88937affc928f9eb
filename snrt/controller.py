"""Controller: battery, power saving, CPU load and temperature pick the variant.

    rt = snrt.Runtime("family.snrt", controller="auto")   # SystemMonitor + this device's table
    rt.controller.pin("ti")  /  rt.controller.unpin()

Between two frames (inside `Runtime.run`, after the frame is recorded; microseconds, never an
I/O wait) the controller:
1. reads the Monitor (cached readings) -> PowerState;
2. turns it into a per-frame latency budget: `1000 / target_fps * headroom`, scaled down in
   power-saving mode, at low/critical battery (unless charging) and by thermal status;
3. estimates every candidate's latency on this device now: the lookup table's p50 times a
   contention factor learnt from the latencies the runtime actually observes (feedback: rises
   at once when frames get slower, decays slowly when they get faster, so contention is seen
   within one or two frames even when CPU-load readings lag);
4. counts deadline misses (frames slower than the unscaled-by-headroom budget, i.e. the frame
   period in the normal state): contention that only shows in the tail (another process taking
   the core for a few ms now and then, the median barely moving) is seen this way;
5. picks the most accurate variant on the accuracy-latency Pareto front that fits, with
   hysteresis: step down as soon as the current variant no longer fits, or as soon as it missed
   `miss_limit` deadlines within its last `miss_window` frames (then to the most accurate
   variant whose expected miss rate, scaled by its latency, is below that limit); step up only
   when the better variant fits with `up_margin` to spare, `min_dwell_s` has passed since the
   last switch, and there has been no miss for `clean_frames` frames or `clean_s` seconds (so
   noisy readings do not make it flap). Each switch carries its reason.
6. remembers "home": the most accurate variant left by a step down that contention caused
   (the budget had not shrunk). Once the clean window shows the load has gone, one step up goes
   straight back home, even when the estimate measured on the small variant would allow less:
   a frame loop's small variants carry a larger fixed cost per frame than the table's
   back-to-back figure (on this VM a paced `ti` frame is 2.9x its table p50, `b` 1.3x), so
   the contention read on them overstates it for the big ones and would climb back in two
   steps. A return that meets the load again steps down within a few frames and doubles the
   dwell, like any premature step up.

What "most accurate" means (`rank`): "accuracy" (the default) ranks by the measured top-1 the
bundle or the lookup table records, and refuses (SnrtError) when no candidate has one, as
elastic subnets exported from a supernet do until they are evaluated; "flops" ranks by FLOPs
(more FLOPs taken as more accurate: a stated proxy, never a measurement), on the latency-FLOPs
Pareto front. `Controller.auto` (Runtime(controller="auto")) falls back to "flops" with a
warning when no variant has an accuracy; snrt-run needs `--rank flops` for that. Stitches and
subnets are variants alike: `Controller.from_table` builds ONE front over every bundle a
(merged, `snrt-lut merge`) lookup table holds.

Tasks (snrt.tuners): a task's tuners and head cost time, and its accuracy per variant is its
own. The controller holds one front per head: the backbone's own and one per task
(`TaskFront`: latency per variant from the lookup table's entries for that task, `snrt-profile
--tasks`; accuracy per variant from the task's manifest record, `TaskInfo.accuracy`, else
FLOPs). When the app switches task (`rt.switch(task=...)`), the next frame's decision uses
that task's front (`task_candidates`, pure like `decide`); the contention learnt so far is
kept (it is the machine's, not the task's), the miss window and "home" start afresh.

Precision (issue 18): with several precisions ready (`Runtime(precisions=["fp32", "int8"])`)
a candidate is a (variant, precision) pair, keyed `cand_key(id, precision)`: the plain id for
fp32, "<id>|int8" for int8. Its latency is the lookup table's entry at that precision and its
accuracy the manifest's (exports.precisions.int8.accuracy); the front and the rules above are
the same, so under power saving `b|int8` is kept when it is more accurate than `ti` and fits.
The controller switches with `rt.switch(id, precision=...)`; tasks stay fp32.
Backend is the same kind of dimension: a `Runtime(backend="auto")` keeps (variant, backend,
precision) entries (snrt.auto_backend), keyed "<id>|<backend>:<precision>"
(`cand_key(id, precision, backend)`), and `Controller.auto` takes their latencies and
accuracies from the runtime's plan; decisions are the same, the switch passes `backend=`.

`decide()` is a pure function of (state, estimates, current, time): easy to test and tune.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .controller_tasks import TaskFront, front_from_bundle, task_candidates
from .errors import SnrtError
from .lookup_table import LookupTable, LookupTableError, bundle_key, pareto_front
from .lut_graphs import select_current, warn_stale
from .monitor import Monitor, SystemMonitor
from .policy import (  # re-exported: callers and tests import them from snrt.controller
    Budget,
    Candidate,
    ContentionEstimate,
    Decision,
    MissStats,
    PolicyConfig,
    decide,
    frame_budget,
)

log = logging.getLogger(__name__)

# Precision as a dimension: a candidate is a (variant, precision) pair, keyed by the variant id
# for fp32 (so fp32-only tables, tasks and apps see plain ids) and "<id>|<precision>" else.
KEY_SEP = "|"


BACKEND_SEP = ":"  # backend="auto": "<id>|<backend>:<precision>" (snrt.auto_backend)


def cand_key(variant: str, precision: str | None = "fp32", backend: str | None = None) -> str:
    """The candidate key of (variant, precision[, backend]): the id itself for fp32 on a
    single-backend runtime; "<id>|<backend>:<precision>" when the backend is a dimension too
    (Runtime(backend="auto"))."""
    if backend is not None:
        return f"{variant}{KEY_SEP}{backend}{BACKEND_SEP}{precision or 'fp32'}"
    return variant if precision in (None, "fp32") else f"{variant}{KEY_SEP}{precision}"


def split_entry(key: str) -> tuple[str, str, str | None]:
    """(variant id, precision, backend or None) of a candidate key."""
    vid, _, rest = key.partition(KEY_SEP)
    backend, sep, prec = rest.partition(BACKEND_SEP)
    if not sep:
        return vid, rest or "fp32", None
    return vid, prec or "fp32", backend


def split_key(key: str) -> tuple[str, str]:
    """(variant id, precision) of a candidate key."""
    vid, prec, _ = split_entry(key)
    return vid, prec


def keyed_by_backend(keys) -> bool:
    """Whether candidate keys carry the backend (a backend="auto" runtime's)."""
    return any(split_entry(k)[2] is not None for k in keys)


def precision_accuracy(bundle, precision: str) -> dict[str, float]:
    """Per-variant top-1 of an added precision, as the manifest records it
    (exports.precisions.<p>.accuracy, tools/default_family_int8.py); {} when not measured."""
    try:
        rec = bundle.precision_record(precision)
    except SnrtError:
        return {}
    return {vid: float(a["top1"]) for vid, a in (rec.get("accuracy") or {}).items()
            if isinstance(a, dict) and a.get("top1") is not None}


@dataclass
class ControllerEvent:
    t_s: float
    state: dict
    decision: dict


class Controller:
    """Glues Monitor + lookup table + policy to a Runtime. See the module docstring."""

    def __init__(self, monitor: Monitor, base_ms: dict[str, float],
                 accuracy: dict[str, float] | None = None, *,
                 config: PolicyConfig = PolicyConfig(), clock=time.monotonic,  # noqa: B008 (frozen)
                 decide_every_s: float = 0.0, history: int = 2048, rank: str = "accuracy",
                 flops: dict[str, float] | None = None,
                 tasks: Mapping[str, TaskFront] | None = None):
        """base_ms/accuracy: the backbone's own head, per variant. tasks: {name: TaskFront}
        of the runtime's tasks (see the module docstring); a task without one gets the
        backbone's latencies for the variants it runs on, once the runtime switches to it."""
        if not base_ms:
            raise SnrtError("the controller needs latency figures for at least one variant")
        if rank not in RANKS:
            raise SnrtError(f"rank {rank!r}: give one of {list(RANKS)}")
        self.rank = rank
        self.flops = dict(flops or {})
        self.monitor = monitor
        self.config = config
        self.clock = clock
        self.base_ms = dict(base_ms)
        self.accuracy = dict(accuracy or {})
        self.task: str | None = None  # whose front base_ms/accuracy/candidates are
        self._rank0 = rank
        self._task_error: str | None = None  # the task whose front failed (logged once)
        self._fronts: dict[str | None, TaskFront] = {
            None: TaskFront(self.base_ms, self.accuracy or None, "backbone"),
            **dict(tasks or {})}
        self.contention = ContentionEstimate()
        self.decide_every_s = decide_every_s
        self.events: collections.deque[ControllerEvent] = collections.deque(maxlen=history)
        self._pinned: str | None = None
        self._rt = None
        self._last_switch = -1e9
        self._last_up = -1e9
        self._last_down = float("-inf")
        self._last_decide = -1e9
        self._home: tuple[str, float] | None = None  # (variant, budget_ms): see decide()
        self._budget_ms: float | None = None  # budget of the latest decision
        self.dwell_s = config.min_dwell_s
        self._deadline_ms: float | None = None  # budget / headroom of the latest decision
        self._miss_variant: str | None = None  # whose frames the miss counters below hold
        self._miss_hist: collections.deque[bool] = collections.deque(maxlen=config.miss_window)
        self._clean_frames = 1 << 30  # frames since the last miss (any variant)
        self._clean_since = float("-inf")  # time of the last miss
        self.deadline_misses = 0  # all frames, all variants (for status and apps)
        self._lock = threading.Lock()
        self._keyed = keyed_by_backend(self.base_ms)  # candidates name their backend
        self.candidates = self._candidates()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def auto(cls, rt, *, table: LookupTable | str | os.PathLike | None = None,
             monitor: Monitor | None = None, config: PolicyConfig | None = None,
             backend: str | None = None, precision: str = "fp32",
             rank: str | None = None, precisions: list[str] | None = None) -> Controller:
        """Controller for a runtime: this device's lookup table (from `table`, else
        $SNRT_LOOKUP_TABLES, the per-user data directory, ./lookup_tables or the shipped
        tables: snrt.paths), else FLOPs-proportional estimates that the
        feedback rescales; SystemMonitor unless one is given.
        precisions: the precisions the controller may switch among (default: every one the
        runtime keeps ready, `Runtime(precisions=[...])`; ["fp32"] turns precision switching
        off). A (variant, precision) other than `precision` is a candidate when the table has
        its latency and, ranking by accuracy, the manifest its accuracy in that precision."""
        if hasattr(rt, "auto_controller"):  # a MultiRuntime: each bundle's figures, one front
            return rt.auto_controller(table=table, monitor=monitor, config=config,
                                      backend=backend, precision=precision, rank=rank)
        plan = getattr(rt, "plan", None)
        if plan is not None:  # backend="auto": the entries it keeps, from its lookup table
            ctl = cls(monitor or SystemMonitor(), {e.key: e.p50_ms for e in plan.entries},
                      {e.key: e.accuracy for e in plan.entries},
                      config=config or PolicyConfig(), rank=rank or "accuracy",
                      flops={e.key: rt.bundle.variant(e.variant).flops for e in plan.entries})
            ctl.source = "the backend='auto' plan (lookup table)"
            return ctl
        base, source = None, None
        tbl = _find_table(table)
        if tbl is not None:  # entries measured on other graphs than the bundle's are ignored
            key = bundle_key(rt.bundle)
            where = f"lookup table {tbl.device.id}"
            es, stale = select_current(tbl, rt.bundle, backend or rt.backend_name, precision,
                                       rt.threads)
            warn_stale(stale, rt.bundle, where)
            if es:
                base = {e.variant: e.p50_ms for e in es}
                source = f"lookup table {tbl.device.id}"
            elif stale:
                source = f"FLOPs (the entries of {where} are stale)"
            else:
                log.warning("lookup table %s has no entries for %s/%s/%s threads=%d; using "
                            "FLOPs estimates", tbl.device.id, key, backend or rt.backend_name,
                            precision, rt.threads)
        ids = {v.id for v in rt.variants}
        if base is None:
            # 1 ms per GFLOP is a placeholder scale; the contention feedback corrects it
            base = {v.id: max(v.flops / 1e9, 1e-3) for v in rt.variants}
            source = source or "FLOPs (no lookup table for this device)"
        base = {k: v for k, v in base.items() if k in ids}
        acc = {v.id: v.top1 for v in rt.variants if v.top1 is not None}
        infos = {k: rt.bundle.variant(k) for k in base}
        if tbl is not None and not acc:  # accuracies a table may carry (evaluated subnets)
            acc = {e.variant: e.accuracy for e in es
                   if e.accuracy is not None and e.variant in base}
        if rank is None:
            rank = "accuracy" if acc else "flops"
            if not acc:
                log.warning("controller: no variant of %s has a measured accuracy: ranking by "
                            "FLOPs (rank='flops', a proxy)", rt.bundle.name)
        extra = [p for p in (precisions if precisions is not None
                             else getattr(rt, "precisions", [precision])) if p != precision]
        for p in extra:
            pes = []
            if tbl is not None:
                pes, stale = select_current(tbl, rt.bundle, backend or rt.backend_name, p,
                                            rt.threads)
                warn_stale(stale, rt.bundle, where)
            pacc = precision_accuracy(rt.bundle, p)
            got = [e for e in pes if e.variant in ids and (rank != "accuracy" or
                                                           e.variant in pacc)]
            if not got or rank == "flops":
                log.warning("controller: precision %s is not a candidate (%s)", p,
                            "ranking by FLOPs cannot tell precisions apart" if rank == "flops"
                            else f"no lookup-table entries at {p}" if not pes else
                            f"no variant has a measured {p} accuracy in the manifest")
                continue
            for e in got:
                k = cand_key(e.variant, p)
                base[k], infos[k] = e.p50_ms, infos.get(e.variant) or rt.bundle.variant(
                    e.variant)
                acc[k] = pacc[e.variant]
        log.info("controller: latencies from %s, %d candidates, ranked by %s", source,
                 len(base), rank)
        tasks = {}
        for t in getattr(rt, "tasks", []):  # each task's entries, else the backbone's figures
            tes = []
            if tbl is not None:
                tes, stale = select_current(tbl, rt.bundle, backend or rt.backend_name,
                                            precision, rt.threads, task=t.name)
                warn_stale(stale, rt.bundle, where)
            got = {e.variant: e.p50_ms for e in tes if e.variant in ids}
            tasks[t.name] = front_from_bundle(
                t, got or base, f"lookup table {tbl.device.id}" if got else
                f"{source}, the backbone's (no entries for task {t.name})")
        ctl = cls(monitor or SystemMonitor(), base, acc or None, config=config or PolicyConfig(),
                  rank=rank, flops={k: v.flops for k, v in infos.items()}, tasks=tasks)
        ctl.source = source
        return ctl

    @classmethod
    def from_table(cls, monitor: Monitor, table: LookupTable, *, backend: str = "onnxruntime",
                   precision: str = "fp32", threads: int = 1, bundles: list[str] | None = None,
                   rank: str = "accuracy", allow_predicted: bool = False,
                   **kw) -> Controller:
        """A controller over every variant `table` holds at backend/precision/threads, of every
        bundle (or of `bundles`, keys "name@sha"): stitches of one bundle and subnets of
        another are candidates alike, on one Pareto front. Accuracies and FLOPs come from the
        entries. A variant id in two bundles is an error (the runtime could not tell them
        apart). Entries with a task (snrt-profile --tasks) make that task's front. Entries of a
        searched front whose accuracy is still a prediction
        (`conditions.front.accuracy_status == "predicted"`, snrt.front_search) are skipped
        unless `allow_predicted`: verify them first (snrt-accuracy --verify-front)."""
        from .lookup_table import ALL_TASKS

        every = [e for e in table.select(None, backend, precision, threads, task=ALL_TASKS)
                 if bundles is None or e.bundle in bundles]
        unchecked = [e for e in every if (e.conditions or {}).get("front", {}).get(
            "accuracy_status") == "predicted"]
        if unchecked and not allow_predicted:
            log.warning("controller: skipping %d front entries whose accuracy is predicted, "
                        "not measured (verify them: snrt-accuracy --front --verify-front)",
                        len(unchecked))
            every = [e for e in every if e not in unchecked]
        es = [e for e in every if e.task is None]
        if not es:
            raise SnrtError(f"lookup table {table.device.id} has no entries at {backend}/"
                            f"{precision}/threads={threads}"
                            f"{f' for {bundles}' if bundles else ''}; profile with snrt-profile")
        seen: dict[str, str] = {}
        for e in es:
            if seen.setdefault(e.variant, e.bundle) != e.bundle:
                raise SnrtError(f"variant id {e.variant!r} is in two bundles of the table "
                                f"({seen[e.variant]}, {e.bundle}); pass bundles=[...] to pick")
        tasks: dict[str, TaskFront] = {}
        for name in sorted({e.task for e in every if e.task is not None}):
            tes = [e for e in every if e.task == name]
            tasks[name] = TaskFront({e.variant: e.p50_ms for e in tes},
                                    {e.variant: e.accuracy for e in tes
                                     if e.accuracy is not None} or None,
                                    f"lookup table {table.device.id}")
        return cls(monitor, {e.variant: e.p50_ms for e in es},
                   {e.variant: e.accuracy for e in es if e.accuracy is not None} or None,
                   rank=rank, flops={e.variant: e.flops for e in every}, tasks=tasks, **kw)

    def _candidates(self) -> list[Candidate]:
        if self.task is not None:  # a task's front: FLOPs where it has no accuracies
            cands, self.rank = task_candidates(
                TaskFront(self.base_ms, self.accuracy or None), self.flops, rank=self._rank0,
                pareto_only=self.config.pareto_only)
            if not cands:
                raise SnrtError(f"task '{self.task}': no variant has a latency and an accuracy")
            return cands
        self.rank = self._rank0
        ids = list(self.base_ms)
        if self.rank == "flops":
            missing = [i for i in ids if not self.flops.get(i)]
            if missing:
                raise SnrtError(f"rank 'flops': no FLOPs for {missing[:3]}; give flops={{id: "
                                "FLOPs}} or rank by accuracy")
            acc = {i: self.flops[i] / 1e6 for i in ids}  # MFLOPs: the proxy the user chose
        elif self.accuracy:
            ids = [i for i in ids if i in self.accuracy]
            acc = self.accuracy
        else:
            raise SnrtError(
                f"none of the {len(ids)} variants ({', '.join(ids[:3])}"
                f"{', ...' if len(ids) > 3 else ''}) has a measured top-1 accuracy (elastic "
                "subnets have none until evaluated), so the controller cannot rank them by "
                "accuracy; rank by FLOPs instead (snrt-run --rank flops, Controller(..., "
                "rank='flops')), or record accuracies in the bundle or the lookup table")
        label = "MFLOPs" if self.rank == "flops" else "top1"
        cands = [Candidate(i, acc[i], self.base_ms[i], label) for i in ids]
        if self.config.pareto_only and (self.accuracy or self.rank == "flops"):
            from .lookup_table import Entry

            es = [Entry("", c.id, 0, "", "", 1, c.base_ms, c.base_ms, accuracy=c.accuracy)
                  for c in cands]
            front = {e.variant for e in pareto_front(es)}
            cands = [c for c in cands if c.id in front]
        if not cands:
            raise SnrtError("no variant has both a latency and an accuracy; rank by FLOPs "
                            "(snrt-run --rank flops, rank='flops')")
        return sorted(cands, key=lambda c: c.base_ms)

    # -- runtime hooks -----------------------------------------------------------------------
    def attach(self, rt) -> None:
        self._rt = rt
        self._last_switch = self.clock()

    def detach(self) -> None:
        self._rt = None

    def pin(self, variant: str | int) -> None:
        """Hold one variant until unpin(); the controller keeps observing."""
        rt = self._rt
        if rt is None:
            raise SnrtError("controller is not attached to a runtime")
        v = rt.bundle.variant(variant)
        self._pinned = v.id
        self._home = None
        rt.switch(v.id, reason="pinned by the app")

    def unpin(self) -> None:
        self._pinned = None
        self._last_decide = -1e9

    @property
    def pinned(self) -> str | None:
        return self._pinned

    # -- tasks -------------------------------------------------------------------------------
    @property
    def task_fronts(self) -> dict[str | None, TaskFront]:
        """{None: the backbone's own head, task name: its front}."""
        return dict(self._fronts)

    def use_task(self, task: str | None, rt=None) -> None:
        """Make `task`'s front the one decisions use (the controller does this itself when
        the runtime's active task changes). A task without a front gets the backbone's
        latencies on the variants it runs on (from `rt`) and its recorded accuracies."""
        if task == self.task:
            return
        front = self._fronts.get(task)
        if front is None:
            if rt is None:
                raise SnrtError(f"the controller has no front for task {task!r}; known: "
                                f"{[k for k in self._fronts if k is not None]}")
            front = front_from_bundle(rt.bundle.task(task), self._fronts[None].base_ms,
                                      "backbone latencies (no entries for this task)")
            self._fronts[task] = front
        prev = (self.task, self.base_ms, self.accuracy, self.rank)
        self.task, self.base_ms = task, dict(front.base_ms)
        self.accuracy = dict(front.accuracy or {})
        try:
            self.candidates = self._candidates()
        except SnrtError:
            self.task, self.base_ms, self.accuracy, self.rank = prev
            raise
        self._home = None
        self._miss_hist.clear()
        self._last_decide = -1e9  # decide on the next frame
        log.info("controller: task %s, %d candidates ranked by %s (%s)", task or "(backbone)",
                 len(self.candidates), self.rank, front.source or "given")

    def observe(self, rt, rec) -> Decision | None:
        """Called by the runtime after every frame: learn, then maybe switch."""
        rec_task = getattr(rec, "task", None)
        front = self._fronts.get(rec_task)  # per-call task= frames: their own front
        base = (self.base_ms if rec_task == self.task else
                front.base_ms if front is not None else {}).get(_rec_key(rec, self._keyed))
        if base is not None and rec.batch == 1:
            self.contention.update(rec.latency_ms, base)
        now = self.clock()
        self._count_miss(rec, now)
        if self._pinned is not None:
            return None
        active_task = getattr(rt, "current_task", None)
        if now - self._last_decide < self.decide_every_s and active_task == self.task:
            return None
        if not self._lock.acquire(blocking=False):  # another thread is deciding
            return None
        try:
            if active_task != self.task:
                try:
                    self.use_task(active_task, rt)
                except SnrtError as e:  # never break the frame: hold the variant instead
                    if self._task_error != active_task:
                        log.warning("controller: cannot decide for task %s (%s); holding "
                                    "the variant", active_task, e)
                        self._task_error = active_task
                    return None
            self._last_decide = now
            state = self.monitor.read()
            home, home_budget = self._home or (None, float("inf"))
            current = _rt_key(rt, self._keyed)
            d = decide(state, self.candidates, current, self.contention.value, now,
                       self._last_switch, self.config, self.dwell_s, self.miss_stats(now),
                       self._last_down, home, home_budget)
            self._deadline_ms = d.budget.budget_ms / self.config.headroom
            self._adapt_dwell(d, now)
            self._track_home(d, current)
            if d.switch:
                self._last_switch = now
                if d.kind == "up":
                    self._last_up = now
                elif d.kind == "down":
                    self._last_down = now
                self.events.append(ControllerEvent(now, state.to_json(), _dec_json(d)))
                if d.home:
                    self.contention.reset()
                vid, prec, be = split_entry(d.target)
                if be is not None:
                    rt.switch(vid, reason=d.reason, precision=prec, backend=be)
                elif hasattr(rt, "current_precision"):
                    rt.switch(vid, reason=d.reason, precision=prec)
                else:
                    rt.switch(vid, reason=d.reason)
            return d
        finally:
            self._lock.release()

    def _track_home(self, d: Decision, current: str) -> None:
        """A step down forced by a load at an unchanged budget leaves home behind, unless home
        is already more accurate; reaching or passing home, or a start, forgets it."""
        prev, self._budget_ms = self._budget_ms, d.budget.budget_ms
        if not d.switch:  # most frames: nothing to track
            return
        acc = {c.id: c.accuracy for c in self.candidates}
        if d.load and current in acc and prev is not None \
                and d.budget.budget_ms >= prev * (1 - 1e-9):
            if self._home is None or acc[current] > acc.get(self._home[0], -math.inf):
                self._home = (current, d.budget.budget_ms)
        elif d.kind == "start" or (d.kind == "up" and self._home is not None
                                   and acc[d.target] >= acc.get(self._home[0], -math.inf)):
            self._home = None

    def _count_miss(self, rec, now: float) -> None:
        """Record whether this frame missed the deadline in force. The miss window is per
        variant (a switch, by the controller or the app, starts it afresh); the time since the
        last miss is not: misses just before a step down still argue against stepping up."""
        if _rec_key(rec, self._keyed) != self._miss_variant:
            self._miss_variant = _rec_key(rec, self._keyed)
            self._miss_hist.clear()
            self.contention.new_variant()
        if self._deadline_ms is None:
            self._deadline_ms = (frame_budget(self.monitor.read(), self.config).budget_ms
                                 / self.config.headroom)
        missed = rec.batch == 1 and rec.latency_ms > self._deadline_ms
        self._miss_hist.append(missed)
        if missed:
            self.deadline_misses += 1
            self._clean_frames, self._clean_since = 0, now
        else:
            self._clean_frames += 1

    def miss_stats(self, now: float | None = None) -> MissStats:
        now = self.clock() if now is None else now
        return MissStats(sum(self._miss_hist), len(self._miss_hist), self._clean_frames,
                         now - self._clean_since)

    def _adapt_dwell(self, d: Decision, now: float) -> None:
        """Anti-flap: a step down soon after a step up means the step up was premature, so
        wait twice as long before the next one; long stable stretches halve the wait again."""
        cfg = self.config
        if d.kind == "down" and now - self._last_up < 2 * self.dwell_s:
            self.dwell_s = min(self.dwell_s * 2, cfg.max_dwell_s)
        elif not d.switch and now - self._last_switch > 4 * self.dwell_s:
            self.dwell_s = max(cfg.min_dwell_s, self.dwell_s / 2)
            self._last_switch = now - 2 * self.dwell_s  # count the stretch only once

    def set_config(self, **changes) -> None:
        """Change thresholds at run time (e.g. target_fps from the app's UI)."""
        self.config = replace(self.config, **changes)
        if self._miss_hist.maxlen != self.config.miss_window:
            self._miss_hist = collections.deque(self._miss_hist, maxlen=self.config.miss_window)
        self._deadline_ms = None
        self.candidates = self._candidates()

    def status(self) -> dict:
        rt = self._rt
        state = self.monitor.read()
        b = frame_budget(state, self.config)
        return {"state": state.to_json(), "budget_ms": b.budget_ms, "budget_why": b.why,
                "contention": self.contention.value, "pinned": self._pinned,
                "misses": _miss_json(self.miss_stats()), "deadline_misses": self.deadline_misses,
                "dwell_s": self.dwell_s, "home": self._home[0] if self._home else None,
                "current": rt.current.id if rt else None, "rank": self.rank,
                "current_key": _rt_key(rt, self._keyed) if rt else None,
                "task": self.task, "tasks": [k for k in self._fronts if k is not None],
                "candidates": [asdict(c) for c in self.candidates],
                "config": asdict(self.config)}


def _rec_key(rec, keyed: bool = False) -> str:
    return cand_key(rec.variant, getattr(rec, "precision", "fp32"),
                    getattr(rec, "backend", None) if keyed else None)


def _rt_key(rt, keyed: bool = False) -> str:
    return cand_key(rt.current.id, getattr(rt, "current_precision", "fp32"),
                    getattr(rt, "current_backend", None) if keyed else None)


def _miss_json(m: MissStats) -> dict:
    none_yet = math.isinf(m.clean_s)  # JSON has no infinity
    return {"misses": m.misses, "frames": m.frames,
            "clean_frames": None if none_yet else m.clean_frames,
            "clean_s": None if none_yet else m.clean_s}


def _dec_json(d: Decision) -> dict:
    return {"kind": d.kind, "target": d.target, "budget_ms": d.budget.budget_ms,
            "why": d.budget.why,
            "contention": d.contention, "est_ms": d.est_ms, "reason": d.reason}


RANKS = ("accuracy", "flops")


def _find_table(table) -> LookupTable | None:
    if isinstance(table, LookupTable):
        return table
    if table is not None:
        return LookupTable.load(table)
    from .paths import table_dirs

    dirs = table_dirs(os.environ.get("SNRT_LOOKUP_TABLES") or None)
    dirs.insert(len(dirs) - 1, Path("lookup_tables"))  # a checkout's, before the shipped ones
    for d in dirs:
        if not LookupTable.path_for(d).is_file():
            continue
        try:
            return LookupTable.for_this_device(d)
        except LookupTableError as e:
            log.warning("%s", e)
    return None


__all__ = ["BACKEND_SEP", "KEY_SEP", "RANKS", "Budget", "Candidate", "ContentionEstimate",
           "Controller",
           "Decision", "MissStats", "PolicyConfig", "TaskFront", "cand_key", "decide",
           "frame_budget", "front_from_bundle", "keyed_by_backend", "split_entry", "split_key",
           "task_candidates"]
