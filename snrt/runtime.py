"""snrt.Runtime: every variant of a bundle ready, one active, swapped atomically between frames.

    rt = snrt.Runtime("deit.snrt", backend="onnxruntime", threads=2)
    rt.variants               # VariantInfo: id, cfg_id, flops, params, accuracy
    rt.switch("ti>s@7:7")     # or an SN-Net cfg_id
    logits = rt.infer(image)  # PIL image, path, uint8 array, preprocessed float array, or a list

Tasks (snrt-export task; snrt.tuners): a bundle may carry tasks, tuners and heads on the
frozen backbone. Every task the bundle records is ready at start, for every ready variant it
was trained for (onnxruntime backend), so switching task, like switching variant, is a
reference swap that creates no session:

    rt.tasks                           # TaskInfo: name, labels, variants, accuracy per variant
    rt.classify(img, task="faces")     # this call only; the active variant runs the faces
                                       # tuners and head
    rt.switch(task="faces")            # the active task (the variant stays); task=False goes
                                       # back to the backbone's own head; rt.switch("s") keeps
                                       # the active task
    rt.run(img).task, rt.run(img).variant    # which task and variant produced the logits
    rt.add_task("digits")              # a task the bundle records, made ready while running
                                       # (Runtime(tasks=[]) starts with none)

Backends (issue 18): `Runtime(bundle, backend="auto", memory_budget_mb=40)` keeps, for each
variant on this device's lookup-table front over every backend x precision, its fastest entry
(snrt.auto_backend; `rt.plan`), all loaded at start; an entry is (variant, backend, precision)
and `switch()`, `run()`, the records and the controller carry the backend as they carry the
precision (`rt.current_backend`, `Result.backend`, `rt.entries(variant)`).

`task=None` (the default everywhere) means the active task, `task=False` the backbone's own
head, as `variant=None` means the active variant.

Concurrency: `infer()` reads the active (variant, task, executor) triple once, as one
reference, so a call in flight finishes on the variant and task it started with even if
`switch()` runs meanwhile; `switch()` replaces that reference under a lock. Calls from several
threads are safe (each onnxruntime session is safe to run concurrently; per-call `variant=` and
`task=` touch no shared state).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .backends import create_backend
from .bundle import Bundle, VariantInfo
from .errors import InputError, SnrtError
from .preprocess import to_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchEvent:
    t_s: float  # time.monotonic() at the switch
    from_id: str | None
    to_id: str
    reason: str
    switch_ms: float  # time spent inside switch()
    from_task: str | None = None  # None: the backbone's own head
    to_task: str | None = None
    from_precision: str | None = None
    to_precision: str = "fp32"
    from_backend: str | None = None
    to_backend: str | None = None


@dataclass(frozen=True)
class FrameRecord:
    t_s: float  # time.monotonic() when the call finished
    variant: str
    latency_ms: float  # inference only (after preprocessing)
    total_ms: float  # preprocessing + inference
    batch: int
    task: str | None = None
    precision: str = "fp32"
    backend: str | None = None  # the backend that ran it ("onnxruntime", "tflite")


@dataclass(frozen=True)
class Result:
    logits: np.ndarray
    variant: VariantInfo
    latency_ms: float
    total_ms: float
    task: str | None = None  # the task whose tuners and head ran; None: the backbone's head
    labels: list[str] | None = None  # of the head that produced the logits
    precision: str = "fp32"  # the precision of the graphs that ran ("fp32", "int8")
    backend: str | None = None  # the backend that ran them ("onnxruntime", "tflite")


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {"n": len(a), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min()), "max": float(a.max())}


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - no psutil or no process info here
        return None


def _default_initial(keep: list[VariantInfo]) -> VariantInfo:
    """The most accurate variant when accuracies are known, else the largest anchor."""
    if any(v.top1 is not None for v in keep):
        return max(keep, key=lambda v: (v.top1 if v.top1 is not None else -1.0, -v.flops))
    anchors = [v for v in keep if v.is_anchor] or keep
    return max(anchors, key=lambda v: v.flops)


class Runtime:
    """Runs a bundle's variants; see the module docstring."""

    def __init__(self, bundle: str | Path | Bundle, *, backend: str = "onnxruntime",
                 threads: int = 1, variants: list[str | int] | None = None,
                 initial: str | int | None = None, lazy: bool = False,
                 controller=None, verify: bool | str = True, history: int = 4096,
                 expected_digest: str | None = None, tasks: list[str] | None = None,
                 precision: str = "fp32", precisions: list[str] | None = None,
                 memory_budget_mb: float | None = None, table=None,
                 auto_backends: list[str] | None = None,
                 **backend_options):
        """
        bundle: a bundle directory or an open Bundle.
        backend: "onnxruntime", "tflite" (see snrt.backends), or "auto": for the variants the
            controller may pick on this device (the lookup table's accuracy-latency front
            over every backend x precision), the fastest backend x precision entry the table
            shows, within `memory_budget_mb` (snrt.auto_backend); `switch()` and the
            controller move between entries of different backends like between variants.
        threads: intra-op threads per inference.
        variants: ids/cfg_ids to keep ready (default: all; with "auto": those it considers).
        initial: the variant active first (default: the most accurate ready one, else the
            largest).
        lazy: load variants on first use instead of all at start.
        controller: None, "auto", or a policy object that picks variants (snrt.controller).
        verify: check bundle hashes on open (True), sizes only ("size") or not at all (False).
        history: per-call records kept for stats().
        expected_digest: the manifest digest the bundle must have ("sha256:<hex>", printed by
            `snrt-export info`); pins the exact bundle (every file, with verify=True).
        tasks: names of the bundle's tasks to keep ready (default: all; with the tflite
            backend, those exported as TFLite at its precision: snrt-export tflite --task).
            On onnxruntime tasks run in fp32 (their tuned runs have no int8 graphs): a
            Runtime whose precisions exclude "fp32" keeps none by default and refuses tasks=.
            backend="auto" keeps none (tasks run on one backend).
        precision: the precision active first and, without `precisions`, the only one ready:
            "fp32", or "int8" (onnxruntime: the graphs `snrt-export quantize` adds; tflite:
            the exported int8 files). With "auto" the initial variant starts in its fastest
            entry instead.
        precisions: precisions to keep ready at once (onnxruntime), e.g. ["fp32", "int8"]:
            every ready variant in each; `switch(key, precision=...)` moves between them
            without creating a session. With "auto": the precisions it considers (default:
            every one the table holds).
        memory_budget_mb: backend="auto" only: the memory its ready entries may take
            (estimated per entry, snrt.auto_backend.estimate_mb; the RSS growth of loading
            them is measured and in stats()["memory"]). None: no limit.
        table: backend="auto" only: the LookupTable (or its path) to plan from (default: this
            device's, found as Controller.auto finds it).
        auto_backends: backend="auto" only: the backends it considers (default: every one
            installed here).
        """
        if isinstance(bundle, Bundle):
            self.bundle = bundle
            if expected_digest is not None:
                bundle.check_digest(expected_digest)
        else:
            self.bundle = Bundle.open(bundle, verify=verify, expected_digest=expected_digest)
        self.plan = None  # backend="auto": the AutoPlan of the entries kept ready
        if backend == "auto":
            keep, engines, per_variant, precs = self._plan_auto(
                variants, table, threads, memory_budget_mb, auto_backends, precisions, tasks)
        else:
            if memory_budget_mb is not None or auto_backends is not None or table is not None:
                raise SnrtError("memory_budget_mb, table and auto_backends are options of "
                                f"backend='auto' (got backend '{backend}')")
            keep = self.bundle.variants if variants is None else [self.bundle.variant(k)
                                                                    for k in variants]
            precs = [precision] if precisions is None else list(dict.fromkeys(precisions))
            if precision not in precs:
                raise SnrtError(f"precision {precision!r} is not in precisions {precs}")
            if len(precs) > 1 and backend != "onnxruntime":
                raise SnrtError(f"several precisions at once run on the onnxruntime backend "
                                f"only (got backend '{backend}')")
            if backend == "onnxruntime":
                for p in precs:
                    if p not in self.bundle.precisions:
                        self.bundle.precision_record(p)  # BundleError: run snrt-export quantize
            if tasks and backend == "onnxruntime" and "fp32" not in precs:
                raise SnrtError("tasks run in fp32 only on onnxruntime (snrt-export quantize "
                                "makes no int8 graphs of a task's tuned runs); drop tasks= or "
                                "add 'fp32' to precisions=")
            if variants is None and backend == "tflite":  # only what has been exported
                prec = precision
                keep = [v for v in keep if prec in v.exports.get("tflite", {})] or keep
            engines = [(backend, p) for p in precs]
            per_variant = None  # every ready variant in every engine
        self._precisions = precs
        if not keep:
            raise SnrtError("Runtime needs at least one variant")
        self._ready_set = {v.id: v for v in keep}
        # the entries a variant may run in: (backend, precision), fastest first (auto)
        self._engines = engines
        self._per_variant: dict[str, list[tuple[str, str]]] | None = per_variant
        self._backends: dict[str, object] = {}
        for name in dict.fromkeys(b for b, _ in engines):
            mine = [p for b, p in engines if b == name]
            on = keep if per_variant is None else [
                v for v in keep if any(b == name for b, _ in per_variant[v.id])]
            opts = backend_options if backend != "auto" else {
                k: o for k, o in backend_options.items()
                if (k in ("engine", "warmup")) == (name == "tflite")}
            self._backends[name] = create_backend(
                name, self.bundle, threads=threads, variants=on,
                precision=precision if precision in mine else mine[0], **opts)
        first_engine = engines[0][0] if backend == "auto" else backend
        self._backend = self._backends.get("onnxruntime", self._backends[first_engine])
        self.backend_name = backend
        self.threads = threads
        self._lock = threading.Lock()
        self._add_lock = threading.Lock()  # add_task(): one at a time
        self._listeners: list[Callable[[SwitchEvent], None]] = []
        self._frames: collections.deque[FrameRecord] = collections.deque(maxlen=history)
        self._switches: collections.deque[SwitchEvent] = collections.deque(maxlen=history)
        self._n_frames = 0
        self._n_errors = 0
        self._closed = False
        fp32_tasks_only = backend == "onnxruntime" and "fp32" not in precs
        names = [] if (tasks is None and fp32_tasks_only) or backend == "auto" else [
            t.name for t in self.bundle.tasks
            if self._backend.task_variants(t)] if tasks is None else list(tasks)
        self._tasks = {n: self.bundle.task(n) for n in names}
        for t in self._tasks.values():
            if not self._backend.task_variants(t):
                raise SnrtError(f"task '{t.name}' cannot run on the {backend} backend here: "
                                f"no variant of it was exported for it (snrt-export tflite "
                                f"BUNDLE --task {t.name}); drop it from tasks= or use "
                                "backend='onnxruntime'")
        self._task_ex: dict[tuple[str, str], object] = {}
        self._bound_task = getattr(self._backend, "bound_task", None)
        t0 = time.monotonic()
        rss0 = _rss_mb()
        if not lazy:
            for v in keep:
                for b, p in self._engines_of(v.id):
                    self._load(v, b, p)
            for t in self._tasks.values():
                for vid in self._backend.task_variants(t):
                    if vid in self._ready_set:
                        self._executor(self._ready_set[vid], t.name)
        self.load_rss_mb = None if rss0 is None or lazy else _rss_mb() - rss0
        first = self.bundle.variant(initial) if initial is not None else _default_initial(keep)
        fb, fp = self._resolve(first, None if backend == "auto" else precision, None,
                               fresh=True)
        # (variant, executor, task, precision, backend): one reference, read once per call
        self._active: tuple[VariantInfo, object, str | None, str, str] = (
            first, self._executor(first, None, fp, fb), None, fp, fb)
        self.load_seconds = time.monotonic() - t0
        if self.plan is not None and self.plan.budget_mb is not None and self.load_rss_mb \
                is not None and self.load_rss_mb > self.plan.budget_mb:
            log.warning("backend='auto': loading took %.1f MB of RSS, over the budget of "
                        "%g MB (estimated %.1f MB); lower memory_budget_mb to leave room",
                        self.load_rss_mb, self.plan.budget_mb, self.plan.est_mb)
        log.debug("runtime ready: %d variants on %s in %.2fs, active %s", len(keep), backend,
                  self.load_seconds, first.id)
        self.controller = None
        if controller is not None:
            self.set_controller(controller)

    # -- variants ----------------------------------------------------------------------------
    @property
    def variants(self) -> list[VariantInfo]:
        """The variants this runtime can switch to, in bundle order."""
        return [v for v in self.bundle.variants if v.id in self._ready_set]

    @property
    def current(self) -> VariantInfo:
        return self._active[0]

    @property
    def current_precision(self) -> str:
        """The active precision ("fp32", "int8")."""
        return self._active[3]

    @property
    def precisions(self) -> list[str]:
        """The precisions this runtime keeps ready."""
        return list(self._precisions)

    @property
    def current_backend(self) -> str:
        """The backend of the active entry ("onnxruntime", "tflite")."""
        return self._active[4]

    @property
    def backends(self) -> list[str]:
        """The backends this runtime runs entries on (several with backend="auto")."""
        return list(self._backends)

    def entries(self, variant: str | int | None = None) -> list[tuple[str, str]]:
        """The (backend, precision) entries `variant` (default: the active one) is ready in;
        with backend="auto" fastest first."""
        v = self._active[0] if variant is None else self.bundle.variant(variant)
        return list(self._engines_of(v.id))

    def _engines_of(self, vid: str) -> list[tuple[str, str]]:
        if self._per_variant is None:
            return self._engines
        return self._per_variant.get(vid, [])

    def _plan_auto(self, variants, table, threads, budget_mb, backends, precisions, tasks):
        from .auto_backend import device_table, plan_auto

        if tasks:
            raise SnrtError("backend='auto' keeps no tasks (a task runs on one backend): drop "
                            "tasks= or use backend='onnxruntime'")
        tbl = device_table(table)
        if tbl is None:
            raise SnrtError("backend='auto' needs this device's lookup table (none found): "
                            f"profile the bundle (snrt-profile {self.bundle.path} --backend "
                            "onnxruntime,tflite --precision fp32,int8) or pass table=")
        self.plan = plan_auto(self.bundle, tbl, threads=threads, budget_mb=budget_mb,
                              backends=backends, precisions=precisions,
                              variants=None if variants is None else list(variants))
        per: dict[str, list[tuple[str, str]]] = {}
        for e in self.plan.entries:  # fastest first
            per.setdefault(e.variant, []).append((e.backend, e.precision))
        keep = [v for v in self.bundle.variants if v.id in per]
        engines = list(dict.fromkeys((e.backend, e.precision) for e in self.plan.entries))
        precs = list(dict.fromkeys(p for _, p in engines))
        log.info("backend='auto': %d entries of %d variants on %s, est %.1f MB",
                 len(self.plan.entries), len(keep), sorted({b for b, _ in engines}),
                 self.plan.est_mb)
        return keep, engines, per, precs

    def _load(self, v: VariantInfo, backend: str, precision: str):
        return self._backends[backend].load(v, precision)

    def _resolve(self, v: VariantInfo, precision: str | None, backend: str | None, *,
                 fresh: bool = False) -> tuple[str, str]:
        """(backend, precision) for variant `v`: the ones asked; what is not asked stays as
        the active entry's when `v` is ready in it, else `v`'s fastest entry that matches."""
        if self._per_variant is None:  # one backend, every variant in every precision
            b = backend or next(iter(self._backends))
            p = precision or (self._engines[0][1] if fresh else self._active[3])
            if backend is not None and backend not in self._backends:
                raise SnrtError(f"backend {backend!r} is not one of this runtime's "
                                f"({self.backends}); backend='auto' runs several")
            return b, p
        mine = self._per_variant.get(v.id, [])
        if not fresh and precision is None and backend is None \
                and (self._active[4], self._active[3]) in mine:
            return self._active[4], self._active[3]
        got = [(b, p) for b, p in mine if (backend is None or b == backend)
               and (precision is None or p == precision)]
        if not got:
            asked = "/".join(x for x in (backend, precision) if x) or "any entry"
            raise SnrtError(
                f"variant '{v.id}' is not ready in {asked} on this backend='auto' runtime "
                f"(ready: {[f'{b}/{p}' for b, p in mine] or 'none: not on the front kept'}); "
                "the plan keeps the fastest entries of the lookup table's front within "
                "memory_budget_mb (rt.plan.table())")
        return got[0]

    @property
    def current_task(self) -> str | None:
        """The active task's name, or None (the backbone's own head)."""
        return self._active[2]

    @property
    def tasks(self) -> list:
        """The tasks this runtime can run (snrt.manifest.TaskInfo: name, labels, variants,
        accuracy per variant, params, bytes)."""
        return list(self._tasks.values())

    def add_task(self, name: str):
        """Make the bundle's task `name` ready on this running Runtime (for every ready variant
        it was trained for) and return its TaskInfo; a task already ready is returned as is.
        Safe while other threads run inference: the task's sessions are loaded first and the
        name becomes visible to `task=` only when all of them are ready. Only the sessions the
        task needs are created (its tuned runs and head; the frozen pieces are shared)."""
        self._check_open()
        with self._add_lock:
            t = self._tasks.get(name)
            if t is not None:
                return t
            t = self.bundle.task(name)  # names the bundle's tasks when it has none so named
            for vid in self._backend.task_variants(t):
                v = self._ready_set.get(vid)
                if v is not None:
                    self._keep_task_ex(vid, name, self._backend.load_task(v, t))
            self._tasks = {**self._tasks, name: t}  # one reference swap: readers see all or none
            log.debug("task %s added (%d sessions open)", name,
                      getattr(self._backend, "session_count", -1))
            return t

    def _task_name(self, task) -> str | None:
        """None -> the active task; False -> None (the backbone's head); a name, checked."""
        if task is None:
            return self._active[2]
        if task is False:
            return None
        if not isinstance(task, str) or task not in self._tasks:
            known = ", ".join(self._tasks) or "none"
            more = [t.name for t in self.bundle.tasks if t.name not in self._tasks]
            hint = f"rt.add_task() makes one of the bundle's others ready: {', '.join(more)}" \
                if more else "add one to the bundle with snrt-export task"
            raise SnrtError(f"unknown task {task!r}; this runtime's tasks: {known} ({hint})")
        return task

    def _executor(self, v: VariantInfo, task: str | None = None, precision: str = "fp32",
                  backend: str | None = None):
        if v.id not in self._ready_set and v.index < 0 and v.graph is None:
            with self._lock:  # an unlisted member of an open space: made ready on first use
                self._ready_set.setdefault(v.id, v)
        if v.id not in self._ready_set:
            raise SnrtError(f"variant '{v.id}' is in the bundle but not in this runtime's "
                            f"ready set; pass it in Runtime(variants=...)")
        if backend is None:
            backend = next(iter(self._backends))
        if self._per_variant is not None:
            if (backend, precision) not in self._per_variant.get(v.id, []):
                raise SnrtError(f"variant '{v.id}' is not ready on {backend}/{precision} in "
                                f"this backend='auto' runtime (ready: "
                                f"{self._per_variant.get(v.id, [])})")
        elif precision not in self._precisions:
            more = "" if precision in self.bundle.precisions else (
                f"; the bundle holds {self.bundle.precisions}: add it with snrt-export "
                f"quantize {self.bundle.path} --precision {precision}")
            raise SnrtError(f"precision {precision!r} is not ready in this runtime (ready: "
                            f"{self._precisions}); pass Runtime(precisions=[...]){more}")
        if task is None:
            return self._load(v, backend, precision)
        if precision != "fp32" and self.backend_name == "onnxruntime":
            raise SnrtError(f"task {task!r} runs in fp32 only on onnxruntime (asked for "
                            f"{precision!r}): switch(task=False) for the backbone's head in "
                            f"{precision}, or switch(precision='fp32') for the task")
        ex = self._task_ex.get((v.id, task))  # a dict read: no lock on the per-call path
        if ex is None and self._bound_task is not None:  # tasks on shared pieces: bound per use
            ex = self._bound_task(v.id, task)
        if ex is None:
            t = self._tasks[task]
            if v.id not in t.variants:
                raise SnrtError(f"task '{task}' was not trained for variant '{v.id}'; it runs "
                                f"on {len(t.variants)} variants: {t.variants[:6]}"
                                f"{'...' if len(t.variants) > 6 else ''}")
            ex = self._backend.load_task(v, t)
            self._keep_task_ex(v.id, task, ex)
        return ex

    def _keep_task_ex(self, vid: str, task: str, ex) -> None:
        """Keep a (variant, task) executor, unless the backend binds it per use (a task on
        shared pieces: its state is O(pieces it touches), so nothing is kept per variant)."""
        if not getattr(ex, "bound", False):
            self._task_ex[(vid, task)] = ex

    def switch(self, key: str | int | None = None, reason: str = "manual", *,
               task: str | bool | None = None, precision: str | None = None,
               backend: str | None = None) -> VariantInfo:
        """Make `key` (id or cfg_id; None: keep the active one) the active variant and `task`
        (a name; None: keep the active task; False: the backbone's own head) the active task.
        `precision` ("fp32", "int8"; None: keep the active one) must be one of the runtime's
        `precisions`. Atomic; in-flight calls finish on what they started with. Cheap (a
        reference swap, no session created) when the triple is ready. `backend`
        ("onnxruntime", "tflite"; None: keep the active one when the variant is ready in it,
        else its fastest entry): with backend="auto" the entry's backend, like precision."""
        self._check_open()
        t0 = time.perf_counter()
        v = self._active[0] if key is None else self.bundle.variant(key)
        name = self._task_name(task)
        be, prec = self._resolve(v, precision, backend)
        ex = self._executor(v, name, prec, be)  # loads it first if the runtime is lazy
        with self._lock:
            old_v, _, old_t, old_p, old_b = self._active
            self._active = (v, ex, name, prec, be)
        ev = SwitchEvent(time.monotonic(), old_v.id, v.id, reason,
                         (time.perf_counter() - t0) * 1e3, old_t, name, old_p, prec, old_b, be)
        self._switches.append(ev)
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:  # a listener's bug must not break inference
                log.exception("switch listener %r failed", cb)
        return v

    def on_switch(self, callback: Callable[[SwitchEvent], None]) -> None:
        """Call `callback(SwitchEvent)` after every switch (manual or by the controller)."""
        self._listeners.append(callback)

    # -- inference ---------------------------------------------------------------------------
    def run(self, x, *, variant: str | int | None = None,
            task: str | bool | None = None, precision: str | None = None,
            backend: str | None = None) -> Result:
        """Like infer(), but returns a Result with the variant and task that produced the
        logits and the latency of this call."""
        self._check_open()
        t0 = time.perf_counter()
        if variant is None and task is None and precision is None and backend is None:
            v, ex, name, prec, be = self._active
        else:
            v = self._active[0] if variant is None else self.bundle.variant(variant)
            name = self._task_name(task)
            be, prec = self._resolve(v, precision, backend)
            ex = self._executor(v, name, prec, be)
        try:
            batch, batched = to_batch(x, self.bundle.preprocess)
        except InputError:
            self._n_errors += 1
            raise
        t1 = time.perf_counter()
        out = ex.run(batch)
        t2 = time.perf_counter()
        if not np.isfinite(out).all():
            # finite inputs the network overflows on (e.g. float32 values near 3e38 given as
            # a preprocessed array) would give NaN probabilities without a word
            self._n_errors += 1
            raise InputError(
                f"variant {v.id} gave NaN or infinite logits for this input (its values span "
                f"{float(batch.min()):.3g} to {float(batch.max()):.3g}; a preprocessed image "
                "is normalised, within a few units of 0)")
        rec = FrameRecord(time.monotonic(), v.id, (t2 - t1) * 1e3, (t2 - t0) * 1e3, len(batch),
                          name, prec, be)
        self._frames.append(rec)
        self._n_frames += 1
        ctl = self.controller
        if ctl is not None:
            ctl.observe(self, rec)
        labels = self._tasks[name].labels if name is not None else self.bundle.labels
        return Result(out if batched else out[0], v, rec.latency_ms, rec.total_ms, name,
                      labels, prec, be)

    def infer(self, x, *, variant: str | int | None = None,
              task: str | bool | None = None, precision: str | None = None,
              backend: str | None = None) -> np.ndarray:
        """Logits for one input ([classes]) or a batch ([B, classes]).

        x: PIL image, image path, uint8 HxW(xC) array, preprocessed float CxHxW array, a 4-D
        float batch, or a list of those. `variant` / `task` run a specific variant / task for
        this call only (task=False: the backbone's own head).
        """
        return self.run(x, variant=variant, task=task, precision=precision,
                        backend=backend).logits

    def classify(self, x, k: int = 5, *, variant: str | int | None = None,
                 task: str | bool | None = None) -> list[tuple[str, float]]:
        """Top-k (label, probability) for one input, labels from the task or the bundle when
        they are known."""
        res = self.run(x, variant=variant, task=task)
        logits = res.logits
        if logits.ndim != 1:
            raise InputError("classify() takes one input; use infer() for batches")
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:k]
        labels = res.labels
        return [(labels[i] if labels else str(i), float(p[i])) for i in top]

    # -- control -----------------------------------------------------------------------------
    def set_controller(self, controller) -> None:
        """Attach a controller (None detaches it). "auto" builds the default one."""
        if controller == "auto":
            from .controller import Controller

            controller = Controller.auto(self)
        if self.controller is not None:
            self.controller.detach()
        self.controller = controller
        if controller is not None:
            controller.attach(self)

    # -- observability -----------------------------------------------------------------------
    def frames(self) -> list[FrameRecord]:
        return list(self._frames)

    def switches(self) -> list[SwitchEvent]:
        return list(self._switches)

    def stats(self) -> dict:
        frames = list(self._frames)
        per: dict[str, list[float]] = {}
        for f in frames:
            per.setdefault(f.variant, []).append(f.latency_ms)
        sw = list(self._switches)
        return {
            "current": self.current.id, "current_task": self.current_task,
            "current_precision": self.current_precision,
            "current_backend": self.current_backend,
            "backend": self._backend.info() if self.plan is None else {
                "backend": "auto", **{n: b.info() for n, b in self._backends.items()}},
            "memory": {"load_rss_mb": self.load_rss_mb,
                       "budget_mb": self.plan.budget_mb if self.plan else None,
                       "estimated_mb": self.plan.est_mb if self.plan else None},
            "frames": self._n_frames, "input_errors": self._n_errors,
            "latency_ms": _percentiles([f.latency_ms for f in frames]),
            "per_variant_latency_ms": {k: _percentiles(v) for k, v in per.items()},
            "switches": len(sw), "switch_ms": _percentiles([e.switch_ms for e in sw]),
            "last_switch": asdict(sw[-1]) if sw else None,
            "load_seconds": self.load_seconds,
        }

    # -- lifetime ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SnrtError("this Runtime is closed")

    def close(self) -> None:
        if self.controller is not None:
            self.controller.detach()
            self.controller = None
        self._closed = True
        for b in self._backends.values():
            b.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Runtime({self.bundle.path.name}, {len(self._ready_set)} variants, "
                f"active={self.current.id}, backend={self.backend_name})")
