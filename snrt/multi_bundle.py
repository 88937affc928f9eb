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
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .errors import SnrtError, UnknownVariantError
from .runtime import Runtime, SwitchEvent

NAMED = ("default", "elastic")


def resolve(arg: str | Path) -> Path:
    """'default' / 'elastic' (the bundled families) or a bundle directory."""
    from . import default_bundle, elastic_bundle

    if arg == "default":
        return default_bundle()
    if arg == "elastic":
        return elastic_bundle()
    return Path(arg)


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
    """What a controller asks of `rt.bundle` (variant lookup), across the bundles."""

    def __init__(self, owner: MultiRuntime):
        self._owner = owner

    def variant(self, key: str):
        return self._owner._runtime_of(key).bundle.variant(key)

    @property
    def name(self) -> str:
        return "+".join(rt.bundle.name for rt in self._owner.runtimes)


class MultiRuntime:
    def __init__(self, bundles: list[str | Path], *, threads: int = 1,
                 initial: str | None = None, **runtime_options):
        if len(bundles) < 1:
            raise SnrtError("MultiRuntime needs at least one bundle")
        self.runtimes: list[Runtime] = []
        try:
            for b in bundles:
                self.runtimes.append(Runtime(resolve(b), threads=threads, **runtime_options))
        except BaseException:
            self.close()
            raise
        self._where: dict[str, Runtime] = {}
        for rt in self.runtimes:
            for v in rt.variants:
                if v.id in self._where:
                    other = self._where[v.id].bundle.path
                    self.close()
                    raise SnrtError(f"variant id {v.id!r} is in two bundles ({other}, "
                                    f"{rt.bundle.path}); one runtime could not tell them apart")
                self._where[v.id] = rt
        first = self.runtimes[0].bundle
        for rt in self.runtimes[1:]:
            if rt.bundle.preprocess != first.preprocess or rt.bundle.labels != first.labels:
                self.close()
                raise SnrtError(f"{rt.bundle.path} and {first.path} preprocess or label their "
                                "inputs differently; one frame could not go to both")
        self.bundle = _Bundles(self)
        self.controller = None
        self._lock = threading.Lock()
        self._active = self.runtimes[0]
        self._switches: list[SwitchEvent] = []
        self._listeners: list = []
        for rt in self.runtimes:
            rt.set_controller(_Forward(self))
        if initial is not None:
            self.switch(initial, reason="initial")

    def _runtime_of(self, key: str) -> Runtime:
        rt = self._where.get(key)
        if rt is None:
            raise UnknownVariantError(f"variant {key!r} is in none of the bundles "
                                      f"({', '.join(str(r.bundle.path) for r in self.runtimes)})"
                                      f"; known: {', '.join(list(self._where)[:6])}, ...")
        return rt

    @property
    def variants(self) -> list:
        return [v for rt in self.runtimes for v in rt.variants]

    @property
    def current(self):
        return self._active.current

    def accuracy(self) -> dict[str, float]:
        """Measured top-1 of every variant that has one, across the bundles."""
        return {v.id: v.top1 for v in self.variants if v.top1 is not None}

    def flops(self) -> dict[str, float]:
        return {v.id: v.flops for v in self.variants}

    def switch(self, key: str, reason: str = "manual"):
        t0 = time.perf_counter()
        rt = self._runtime_of(key)
        with self._lock:
            old = self._active.current.id
            v = rt.switch(key, reason=reason)
            self._active = rt
        ev = SwitchEvent(time.monotonic(), old, v.id, reason, (time.perf_counter() - t0) * 1e3)
        self._switches.append(ev)
        for cb in list(self._listeners):
            cb(ev)
        return v

    def on_switch(self, callback) -> None:
        self._listeners.append(callback)

    def switches(self) -> list[SwitchEvent]:
        return list(self._switches)

    def run(self, x, *, variant: str | None = None):
        """A frame on the active variant (or `variant`, in whichever bundle holds it)."""
        if variant is not None:
            return self._runtime_of(variant).run(x, variant=variant)
        return self._active.run(x)

    def infer(self, x, *, variant: str | None = None):
        return self.run(x, variant=variant).logits

    def set_controller(self, controller) -> None:
        if self.controller is not None:
            self.controller.detach()
        self.controller = controller
        if controller is not None:
            controller.attach(self)

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
