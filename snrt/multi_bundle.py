"""One runtime over several bundles: switch across variant kinds (the default family's SN-Net
stitches and the elastic family's subnets) with one controller on one Pareto front.

    mr = MultiRuntime(["default", "elastic"])       # bundle names or paths
    mr.switch("w64d10"); mr.run(x); mr.switch("s>b@3:4")
    ctl = Controller(monitor, base_ms, mr.accuracy())  # latencies of both bundles' variants
    mr.set_controller(ctl)                           # the controller switches across bundles

Each bundle keeps its own snrt.Runtime (a Runtime holds one bundle); this layer routes frames
to the active one and forwards every frame to the one controller. Variant ids must be unique
across the bundles (stitch ids `s>b@3:4` and POA ids `w64d10` are). The bundles' inputs must
agree (preprocessing and labels), since one frame may go to either.

It offers what a Runtime offers an app and a controller (variants, current, tasks,
current_task, switch(key, task=...), run(x, variant=..., task=...), frames(), switches(),
on_switch, set_controller, threads, bundle.variant/task/labels), so code written for a Runtime
runs on it unchanged (the camera demo does: `snrt-demo --bundle default --bundle elastic`).
Tasks come from the bundles that hold them and run only on their own bundle's variants;
switching to a task while a variant of another bundle is active moves to the task's variant
nearest in FLOPs (the controller then picks on the task's front). Task names must be unique
across the bundles too. `kind(id)` says what a variant is: "stitch", "anchor" (an SN-Net
family's anchors) or "subnet" (an elastic family's), `bundle_of(id)` the bundle holding it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .errors import SnrtError, UnknownVariantError
from .runtime import FrameRecord, Result, Runtime, SwitchEvent

NAMED = ("default", "elastic")


def resolve(arg: str | Path) -> Path:
    """'default' / 'elastic' (the bundled families) or a bundle directory."""
    from . import default_bundle, elastic_bundle

    if arg == "default":
        return default_bundle()
    if arg == "elastic":
        return elastic_bundle()
    return Path(arg)


def variant_kind(bundle, v) -> str:
    """What variant `v` of `bundle` is: "subnet" (an elastic family's), "anchor" or "stitch"
    (an SN-Net family's)."""
    from .variants.subnets import FAMILY_KINDS as SUBNET_KINDS

    if (bundle.manifest.family or {}).get("kind") in SUBNET_KINDS:
        return "subnet"
    return "anchor" if v.is_anchor else "stitch"


def parts(rt) -> list[Runtime]:
    """The Runtimes behind `rt`: its bundles' for a MultiRuntime, else [rt]."""
    return list(getattr(rt, "runtimes", None) or [rt])


def bundle_of(rt, key: str):
    """The bundle that holds variant or task `key` in `rt` (a Runtime or a MultiRuntime)."""
    return rt.bundle_of(key) if isinstance(rt, MultiRuntime) else rt.bundle


def kind_of(rt, key: str) -> str:
    """variant_kind of variant `key` in `rt` (a Runtime or a MultiRuntime)."""
    return variant_kind(bundle_of(rt, key), rt.bundle.variant(key))


class _Forward:
    """Attached to each inner Runtime as its controller: hands frames to the owner's."""

    def __init__(self, owner: MultiRuntime):
        self.owner = owner

    def attach(self, rt) -> None:
        pass

    def detach(self) -> None:
        pass

    def observe(self, rt, rec):
        ctl = self.owner.controller
        if ctl is not None:
            return ctl.observe(self.owner, rec)
        return None


class _Bundles:
    """What apps and controllers ask of `rt.bundle` (variant and task lookup, labels,
    preprocessing), across the bundles."""

    def __init__(self, owner: MultiRuntime):
        self._owner = owner

    def variant(self, key: str | int):
        return self._owner._runtime_of(key).bundle.variant(key)

    def task(self, name: str):
        return self._owner._runtime_of_task(name).bundle.task(name)

    @property
    def variants(self) -> list:
        return [v for rt in self._owner.runtimes for v in rt.bundle.variants]

    @property
    def tasks(self) -> list:
        return [t for rt in self._owner.runtimes for t in rt.bundle.tasks]

    @property
    def labels(self):
        return self._owner.runtimes[0].bundle.labels

    @property
    def preprocess(self):
        return self._owner.runtimes[0].bundle.preprocess

    @property
    def paths(self) -> list[Path]:
        return [rt.bundle.path for rt in self._owner.runtimes]

    @property
    def path(self) -> Path:
        """The first bundle's directory (where its samples are); `paths` has them all."""
        return self._owner.runtimes[0].bundle.path

    @property
    def name(self) -> str:
        return "+".join(rt.bundle.name for rt in self._owner.runtimes)


class MultiRuntime:
    def __init__(self, bundles: list[str | Path], *, threads: int = 1,
                 initial: str | None = None, **runtime_options):
        if len(bundles) < 1:
            raise SnrtError("MultiRuntime needs at least one bundle")
        self.runtimes: list[Runtime] = []
        self.controller = None
        try:
            for b in bundles:
                self.runtimes.append(Runtime(resolve(b), threads=threads, **runtime_options))
            self._where = self._index()
            self._task_where = self._task_index()
        except BaseException:
            self.close()
            raise
        self.threads = threads
        self.backend_name = self.runtimes[0].backend_name
        self.bundle = _Bundles(self)
        self._lock = threading.Lock()
        self._active = self.runtimes[0]
        self._switches: list[SwitchEvent] = []
        self._listeners: list = []
        for rt in self.runtimes:
            rt.set_controller(_Forward(self))
        if initial is not None:
            self.switch(initial, reason="initial")

    def _owners(self, keys_of, what: str, hint: str) -> dict[str, Runtime]:
        """{key: the runtime that holds it} over every bundle; a key in two bundles is an
        error (`what` names the kind of key, `hint` what to do)."""
        where: dict[str, Runtime] = {}
        for rt in self.runtimes:
            for key in keys_of(rt):
                if key in where:
                    raise SnrtError(f"{what} {key!r} is in two bundles "
                                    f"({where[key].bundle.path}, {rt.bundle.path}); {hint}")
                where[key] = rt
        return where

    def _index(self) -> dict[str, Runtime]:
        where = self._owners(lambda rt: (v.id for v in rt.variants), "variant id",
                             "one runtime could not tell them apart")
        first = self.runtimes[0].bundle
        for rt in self.runtimes[1:]:
            if rt.bundle.preprocess != first.preprocess or rt.bundle.labels != first.labels:
                raise SnrtError(f"{rt.bundle.path} and {first.path} preprocess or label their "
                                "inputs differently; one frame could not go to both")
        return where

    def _task_index(self) -> dict[str, Runtime]:
        return self._owners(lambda rt: (t.name for t in rt.tasks), "task",
                            "rename one (snrt-export task --name)")

    def _runtime_of(self, key: str | int) -> Runtime:
        rt = self._where.get(key) if isinstance(key, str) else None
        if rt is not None:
            return rt
        if len(self.runtimes) == 1:
            return self.runtimes[0]
        found = []  # an unlisted subnet of an open space, or a cfg_id
        for r in self.runtimes:
            try:
                r.bundle.variant(key)
            except SnrtError:
                continue
            found.append(r)
        if len(found) == 1:
            return found[0]
        paths = ", ".join(str(r.bundle.path) for r in (found or self.runtimes))
        if found:
            raise UnknownVariantError(f"variant {key!r} names a variant in several bundles "
                                      f"({paths}); give its id (e.g. "
                                      f"{', '.join(list(self._where)[:3])})")
        raise UnknownVariantError(f"variant {key!r} is in none of the bundles ({paths}); "
                                  f"known: {', '.join(list(self._where)[:6])}, ...")

    def _runtime_of_task(self, name: str) -> Runtime:
        rt = self._task_where.get(name) if isinstance(name, str) else None
        if rt is None:
            raise SnrtError(f"unknown task {name!r}; the bundles' tasks: "
                            f"{', '.join(self._task_where) or 'none'}")
        return rt

    def bundle_of(self, key: str):
        """The bundle holding variant or task `key`."""
        if isinstance(key, str) and key in self._task_where and key not in self._where:
            return self._task_where[key].bundle
        return self._runtime_of(key).bundle

    def kind(self, key: str) -> str:
        """"stitch", "anchor" or "subnet" (see variant_kind)."""
        return variant_kind(self.bundle_of(key), self.bundle.variant(key))

    @property
    def variants(self) -> list:
        return [v for rt in self.runtimes for v in rt.variants]

    @property
    def tasks(self) -> list:
        """Every bundle's tasks (each runs on its own bundle's variants only)."""
        return [t for rt in self.runtimes for t in rt.tasks]

    @property
    def current(self):
        return self._active.current

    @property
    def current_task(self) -> str | None:
        return self._active.current_task

    def accuracy(self) -> dict[str, float]:
        """Measured top-1 of every variant that has one, across the bundles."""
        return {v.id: v.top1 for v in self.variants if v.top1 is not None}

    def flops(self) -> dict[str, float]:
        return {v.id: v.flops for v in self.variants}

    def _target(self, key, task) -> tuple[Runtime, str, str | None]:
        """(runtime, variant id, task name or None) that switch/run with key/task mean."""
        name = self._active.current_task if task is None else (None if task is False
                                                               else task)
        if key is None:
            rt, vid = self._active, self._active.current.id
        else:
            rt = self._runtime_of(key)
            vid = rt.bundle.variant(key).id
        if name is not None:
            owner = self._runtime_of_task(name)
            if owner is not rt:
                t = owner.bundle.task(name)
                if key is not None or task is None:
                    raise SnrtError(f"task '{name}' runs on {owner.bundle.name}'s variants "
                                    f"({len(t.variants)}: {', '.join(t.variants[:4])}, ...), "
                                    f"not on '{vid}' of {rt.bundle.name}")
                # a task chosen while another bundle's variant is active: its nearest variant
                f = rt.bundle.variant(vid).flops
                ready = {v.id: v for v in owner.variants}
                vid = min((ready[i] for i in t.variants if i in ready),
                          key=lambda v: abs(v.flops - f)).id
                rt = owner
        return rt, vid, name

    def switch(self, key: str | int | None = None, reason: str = "manual", *,
               task: str | bool | None = None):
        """Make variant `key` (None: keep it) and `task` (None: keep it; False: the backbone's
        own head) active, in whichever bundle holds them (Runtime.switch)."""
        t0 = time.perf_counter()
        with self._lock:
            rt, vid, name = self._target(key, task)
            old_v, old_t = self._active.current.id, self._active.current_task
            v = rt.switch(vid, reason=reason, task=name if name is not None else False)
            self._active = rt
        ev = SwitchEvent(time.monotonic(), old_v, v.id, reason,
                         (time.perf_counter() - t0) * 1e3, old_t, name)
        self._switches.append(ev)
        for cb in list(self._listeners):
            cb(ev)
        return v

    def on_switch(self, callback) -> None:
        self._listeners.append(callback)

    def switches(self) -> list[SwitchEvent]:
        return list(self._switches)

    def frames(self) -> list[FrameRecord]:
        """Every bundle's frame records, oldest first."""
        return sorted((f for rt in self.runtimes for f in rt.frames()), key=lambda f: f.t_s)

    def run(self, x, *, variant: str | int | None = None,
            task: str | bool | None = None, precision: str | None = None) -> Result:
        """A frame on the active variant and task (or `variant` / `task` for this call, in
        whichever bundle holds them; task=False: the backbone's own head). Several bundles
        run fp32 only: `precision` may be None or "fp32"."""
        if precision not in (None, "fp32"):
            raise SnrtError(f"several bundles run fp32 only, not precision '{precision}'; "
                            "run one bundle with snrt.Runtime(bundle, precisions=[...])")
        if variant is None and task is None:
            return self._active.run(x)
        rt, vid, name = self._target(variant, task)
        return rt.run(x, variant=vid, task=name if name is not None else False)

    def infer(self, x, *, variant: str | int | None = None,
              task: str | bool | None = None):
        return self.run(x, variant=variant, task=task).logits

    def set_controller(self, controller) -> None:
        if controller == "auto":
            controller = self.auto_controller()
        if self.controller is not None:
            self.controller.detach()
        self.controller = controller
        if controller is not None:
            controller.attach(self)

    def auto_controller(self, *, monitor=None, config=None, rank: str | None = None, **kw):
        """Controller.auto over every bundle: each bundle's lookup-table entries (or FLOPs
        estimates: then `source` starts with "FLOPs", as Controller.auto's does) on one front;
        ranked by accuracy when every bundle records some, else by FLOPs. When one bundle has
        no table entries here, every bundle's latencies are FLOPs estimates (one scale)."""
        from .controller import Controller, PolicyConfig
        from .monitor import SystemMonitor

        monitor = monitor or SystemMonitor()
        subs = [Controller.auto(rt, monitor=monitor, config=config, **kw)
                for rt in self.runtimes]
        base = {k: v for c in subs for k, v in c.task_fronts[None].base_ms.items()}
        acc = {k: v for c in subs for k, v in (c.task_fronts[None].accuracy or {}).items()}
        if rank is None:
            rank = "accuracy" if all(c.task_fronts[None].accuracy for c in subs) else "flops"
        tasks = {k: f for c in subs for k, f in c.task_fronts.items() if k is not None}
        flops = {k: v for c in subs for k, v in c.flops.items()}
        sources = [getattr(c, "source", "") for c in subs]
        source = "; ".join(dict.fromkeys(sources))
        if any(s.startswith("FLOPs") for s in sources):  # one scale for all, not two
            from .controller_tasks import front_from_bundle

            source = "FLOPs (not every bundle has lookup-table entries here)"
            base = {v.id: max(v.flops / 1e9, 1e-3) for v in self.variants}
            tasks = {t.name: front_from_bundle(t, base, source) for t in self.tasks}
        ctl = Controller(monitor, base, acc or None, config=config or PolicyConfig(),
                         rank=rank, flops=flops, tasks=tasks)
        ctl.source = source
        return ctl

    def close(self) -> None:
        if getattr(self, "controller", None) is not None:
            self.controller.detach()
            self.controller = None
        for rt in self.runtimes:
            rt.close()

    def __enter__(self) -> MultiRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
