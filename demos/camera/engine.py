"""The demo's engine: camera -> Runtime (with its Controller) -> prediction, energy, history.

One processing thread takes the newest camera frame, runs it on the runtime's active variant
(the controller picks the variant between two frames), charges the frame's energy to the
monitor (see energy.py) and records what the page shows: prediction, variant, FPS, latency,
budget, battery, and every switch with its reason.

Everything the web page may change goes through `apply_config()` or `set_task()`, which
validate the whole request before changing anything and raise `ConfigError` with a message for
the user. The task (the backbone's own head, or one of the bundle's tasks: its tuners and head
on the same backbone) is switched through `rt.switch(task=...)`; the controller then decides on
that task's front, the predictions carry the task's labels and the switch log the task.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from snrt.bundle import VariantInfo
from snrt.controller import Controller, frame_budget
from snrt.errors import SnrtError, UnknownVariantError
from snrt.runtime import Runtime, SwitchEvent

from .controller_setup import (  # noqa: F401 - re-exported: the demo tests import them here
    FPS_RANGE,
    auto_fps,
    build_controller,
    calibrate,
    candidate_ids,
)
from .energy import EnergyModel, SimulatedBatteryMonitor
from .latency import MeasuredLatency, SimulatedLatency
from .pacing import FrameClock, WallClock
from .sources import FrameSource

log = logging.getLogger(__name__)

CONFIG_FIELDS = ("power_saving", "target_fps", "pinned", "plugged")
HISTORY_SAMPLE_S = 0.05  # chart resolution: one point per 50 ms at most
HISTORY_KEEP = 12000  # 10 minutes at 20 points per second
AUTO_FPS_SETTLE_S = 3.0  # auto FPS is re-measured once after this long in operation


class ConfigError(SnrtError, ValueError):
    """A change the page asked for is not valid; the message says why."""


@dataclass
class _Sample:
    """One chart point: frames of one HISTORY_SAMPLE_S interval."""

    t_s: float
    variant: str
    latency_ms: float  # mean over the interval's frames
    latency_max_ms: float
    frames: int
    budget_ms: float
    battery_pct: float | None
    power_saving: bool


# ----------------------------------------------------------------------------- the engine

class DemoEngine:
    """Runs frames from `camera` through `rt` (with `controller` attached) on one thread."""

    def __init__(self, rt: Runtime, controller: Controller, camera: FrameSource,
                 energy: EnergyModel, *, battery_source: str, controller_source: str = "",
                 fps_auto: bool = False, bundle_label: str = "",
                 latency: MeasuredLatency | SimulatedLatency | None = None,
                 clock: WallClock | FrameClock | None = None) -> None:
        self.rt = rt
        self.latency = latency or MeasuredLatency()
        self.clock = clock or WallClock()  # the controller's, monitor's and energy's time
        self.controller = controller
        self.monitor = controller.monitor
        self.camera = camera
        self.energy = energy
        self.battery_source = battery_source
        self.controller_source = controller_source
        self.fps_auto = fps_auto
        self.bundle_label = bundle_label or rt.bundle.path.name
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, Any] | None = None  # the newest processed frame's results
        self._frame_times: deque[float] = deque(maxlen=512)
        self._latencies: deque[float] = deque(maxlen=256)
        self._history: deque[_Sample] = deque(maxlen=HISTORY_KEEP)
        self._switches: deque[dict[str, Any]] = deque(maxlen=500)
        self._n_switches = 0  # numbers the switches 1, 2, ... (the page lists them so)
        self._jpeg: tuple[int, bytes] | None = None
        self._jpeg_lock = threading.Lock()
        self._power_w: deque[tuple[float, float]] = deque(maxlen=256)  # (t, joules)
        self._energy_j = 0.0
        self.error: str | None = None
        self._retuned = False  # auto FPS re-measured in operation (once)
        self._config_lock = threading.Lock()  # the page's FPS vs. the auto re-measurement
        self._ps_override: bool | None = None  # the page's power-saving choice; None: system
        self._variant_index = {v.id: v for v in rt.variants}
        rt.on_switch(self._on_switch)
        self.latency.attach(rt, controller)

    # -- lifetime ----------------------------------------------------------------------------
    def start(self) -> None:
        self.camera.start()
        self._thread = threading.Thread(target=self._loop, name="snrt-demo-engine",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop processing, then the camera; the caller closes the runtime and monitor."""
        self._stop.set()
        self.camera.close()
        t = self._thread
        if t is not None:
            t.join(timeout_s)
            if t.is_alive():
                log.warning("processing thread did not stop within %.1f s", timeout_s)

    # -- processing --------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._process()
        except Exception as e:  # keep the server up, and show what broke
            self.error = f"{type(e).__name__}: {e}"
            log.exception("frame processing stopped")

    def _process(self) -> None:
        started = time.monotonic()
        last_seq, last_t = 0, self.clock()
        next_t = time.monotonic()
        sample: list[float] = []
        sample_t0 = time.monotonic()
        while not self._stop.is_set():
            frame = self.camera.wait_frame(last_seq, timeout_s=0.25)
            if frame is None:
                t = self.clock()
                self._charge(0.0, t - last_t, time.monotonic())
                last_t = t
                continue
            last_seq = frame.seq
            res, busy_s = self.latency.run(self.rt, self.controller, frame.image, self.clock())
            self.clock.frame_done(1.0 / self.camera.fps)
            now, t = time.monotonic(), self.clock()
            self._charge(busy_s, t - last_t, now)
            last_t = t
            logits = np.asarray(res.logits, dtype=np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-p)[:3]
            labels = res.labels  # the task's, or the backbone head's
            top3 = [[labels[i] if labels and i < len(labels) else str(int(i)), float(p[i])]
                    for i in top]
            state = self.monitor.read()
            budget = frame_budget(state, self.controller.config).budget_ms
            with self._lock:
                self._frame_times.append(now)
                self._latencies.append(res.latency_ms)
                self._last = {"seq": frame.seq, "frame": frame, "variant": res.variant.id,
                              "task": res.task,
                              "latency_ms": res.latency_ms, "total_ms": res.total_ms,
                              "cpu_ms": busy_s * 1e3, "top": top3, "truth": frame.truth,
                              "t_s": now - self.t0}
                sample.append(res.latency_ms)
                if now - sample_t0 >= HISTORY_SAMPLE_S:
                    self._history.append(_Sample(  # rounded once: `since` filters exactly
                        round(now - self.t0, 3), res.variant.id, float(np.mean(sample)),
                        float(np.max(sample)), len(sample), budget, state.battery_pct,
                        state.power_saving))
                    sample, sample_t0 = [], now
            # measured latencies in operation differ from the calibration's; simulated do not
            if (self.fps_auto and not self._retuned and not self.latency.simulated
                    and now - started >= AUTO_FPS_SETTLE_S):
                self._retune_auto_fps(now)
            # pace to the target frame rate (the webcam may deliver faster)
            next_t = max(next_t + 1.0 / self.camera.fps, time.monotonic())
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _retune_auto_fps(self, now: float) -> None:
        """Auto FPS, second look: the calibration ran before the camera, the page and this
        loop competed for the CPU (and at another frame rate), so latencies in operation
        differ; redo auto_fps with the median observed/calibrated ratio of the last
        AUTO_FPS_SETTLE_S seconds. Once, and not after the page has set a rate."""
        with self._config_lock:
            if not self.fps_auto:  # the page set a rate meanwhile
                self._retuned = True
                return
            self._retune_locked()

    def _retune_locked(self) -> None:
        self._retuned = True
        t_min = time.monotonic() - AUTO_FPS_SETTLE_S
        base = self.controller.base_ms  # the active task's
        task = self.controller.task
        ratios = [f.latency_ms / base[f.variant] for f in self.rt.frames()
                  if f.t_s >= t_min and f.task == task and f.variant in base
                  and base[f.variant] > 0]
        if len(ratios) < 5:
            return
        ratio = float(np.median(ratios))
        best = max(self.controller.candidates, key=lambda c: (c.accuracy, -c.base_ms))
        fps = auto_fps(best.base_ms * ratio, self.controller.config.headroom)
        log.info("target fps auto, in operation: %.1f (latencies x%.2f the calibration's; %s "
                 "at %.2f ms uses 2/3 of the budget)", fps, ratio, best.id,
                 best.base_ms * ratio)
        self.controller.set_config(target_fps=fps)
        self.camera.set_fps(fps)

    def _charge(self, busy_s: float, dt_s: float, now: float) -> None:
        j = self.energy.frame_joules(busy_s) + self.energy.idle_joules(dt_s)
        self.monitor.consume(self.energy.battery_joules(j))
        with self._lock:
            self._energy_j += j
            self._power_w.append((now, j))

    def _on_switch(self, ev: SwitchEvent) -> None:
        with self._lock:
            self._n_switches += 1
            self._switches.append({"n": self._n_switches, "t_s": round(ev.t_s - self.t0, 3),
                                   "from": ev.from_id,
                                   "to": ev.to_id, "reason": ev.reason,
                                   "switch_ms": ev.switch_ms,
                                   "from_task": ev.from_task, "to_task": ev.to_task})
        log.info("switch %s -> %s (task %s -> %s): %s", ev.from_id, ev.to_id,
                 ev.from_task or "-", ev.to_task or "-", ev.reason)

    # -- what the page reads -----------------------------------------------------------------
    def variant_json(self, v: VariantInfo) -> dict[str, Any]:
        return {"id": v.id, "cfg_id": v.cfg_id, "flops": v.flops, "params": v.params,
                "top1": v.top1, "is_anchor": v.is_anchor,
                "candidate": v.id in {c.id for c in self.controller.candidates}}

    def variants(self) -> list[dict[str, Any]]:
        return [self.variant_json(v) for v in self.rt.variants]

    def backbone_head_label(self) -> str:
        labels = self.rt.bundle.labels or []
        if labels and all(lab.isdigit() for lab in labels):
            return "digits (the backbone's head)"
        return "the backbone's head"

    def _task_top1(self, task: str | None, vid: str) -> float | None:
        """The top-1 of `task` (None: the backbone's head) on variant `vid`, when recorded."""
        if task is None:
            return self.rt.bundle.variant(vid).top1
        t = next((t for t in self.rt.tasks if t.name == task), None)
        rec = (t.accuracy or {}).get(vid) if t is not None else None
        return rec.get("top1") if isinstance(rec, dict) else None

    def tasks(self) -> list[dict[str, Any]]:
        """What the task selector offers: the backbone's own head (task null), then every
        task of this runtime: name, labels, variants it runs on, top-1 on the active variant."""
        cur = self.rt.current.id
        out = [{"task": None, "label": self.backbone_head_label(),
                "labels": list(self.rt.bundle.labels or []),
                "variants": len(self.rt.variants), "top1": self.rt.current.top1}]
        for t in self.rt.tasks:
            acc = (t.accuracy or {}).get(cur) or {}
            out.append({"task": t.name, "label": t.name, "labels": list(t.labels),
                        "variants": len(t.variants), "top1": acc.get("top1")})
        return out

    def measured_fps(self, window_s: float = 2.0) -> float:
        now = time.monotonic()
        with self._lock:
            ts = [t for t in self._frame_times if now - t <= window_s]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)

    def power_w(self, window_s: float = 2.0) -> float:
        """Modelled mean power over the last window (before the drain speed-up)."""
        now = time.monotonic()
        with self._lock:
            pts = [(t, j) for t, j in self._power_w if now - t <= window_s]
        if len(pts) < 2:
            return 0.0
        return sum(j for _, j in pts[1:]) / max(pts[-1][0] - pts[0][0], 1e-6)

    def config(self) -> dict[str, Any]:
        return {"target_fps": self.controller.config.target_fps, "fps_auto": self.fps_auto,
                "fps_range": list(FPS_RANGE), "power_saving_override": self._ps_override,
                "pinned": self.controller.pinned,
                "plugged_settable": self.battery_source == "simulated"}

    def status(self) -> dict[str, Any]:
        ctl = self.controller.status()
        state = ctl["state"]
        cur = self.rt.current
        with self._lock:
            last = dict(self._last) if self._last else None
            lat = list(self._latencies)
            switches = list(self._switches)[-50:]
            n_sw = self._n_switches
            energy_j = self._energy_j
        pred = None
        if last is not None:
            pred = {"label": last["top"][0][0], "prob": last["top"][0][1], "top": last["top"],
                    "truth": last["truth"], "seq": last["seq"], "variant": last["variant"],
                    "task": last["task"]}
        est = {c["id"]: c["base_ms"] * ctl["contention"] for c in ctl["candidates"]}
        return {
            "t_s": time.monotonic() - self.t0,
            "bundle": {"name": self.rt.bundle.name, "label": self.bundle_label,
                       "variants": len(self.rt.variants),
                       "labels": len(self.rt.bundle.labels or [])},
            "camera": {"kind": self.camera.kind, "description": self.camera.description,
                       "fps": self.camera.measured_fps(), "error": self.camera.error},
            "frame_seq": last["seq"] if last else 0,
            "prediction": pred,
            "variant": self.variant_json(cur),
            "task": self.rt.current_task,
            "task_top1": self._task_top1(self.rt.current_task, cur.id),
            "controller_task": ctl.get("task"),
            "fps": self.measured_fps(),
            "latency_ms": last["latency_ms"] if last else None,
            "latency_p50_ms": float(np.median(lat)) if lat else None,
            "cpu_ms": last["cpu_ms"] if last else None,
            "budget_ms": ctl["budget_ms"], "budget_why": ctl["budget_why"],
            "contention": ctl["contention"], "est_ms": est.get(cur.id),
            "candidates": [{"id": c["id"], "accuracy": c["accuracy"], "base_ms": c["base_ms"],
                            "est_ms": est[c["id"]]} for c in ctl["candidates"]],
            "controller_source": self.controller_source,
            "latency_source": self.latency.description,
            "clock": "simulated" if self.clock.simulated else "wall",
            "config": self.config(),
            "power": {
                "battery_pct": state["battery_pct"], "plugged": state["plugged"],
                "battery_source": self.battery_source,
                "power_saving": state["power_saving"],
                "power_saving_source": state["power_saving_source"],
                "cpu_load_pct": state["cpu_load_pct"], "temperature_c": state["temperature_c"],
                "thermal_status": state["thermal_status"],
                "model_power_w": self.power_w(), "energy_j": energy_j,
            },
            "energy_model": self.energy.to_json(),
            "switch_count": n_sw,
            "switches": switches,
            "error": self.error,
        }

    def history(self, since_s: float = -1.0, max_points: int = 2000) -> dict[str, Any]:
        """Chart points and switches after `since_s` (seconds since start), newest last."""
        with self._lock:
            pts = [s for s in self._history if s.t_s > since_s][-max_points:]
            sws = [s for s in self._switches if s["t_s"] > since_s]
        return {
            "t_s": time.monotonic() - self.t0,
            "points": {
                "t_s": [s.t_s for s in pts],
                "variant": [s.variant for s in pts],
                "latency_ms": [round(s.latency_ms, 3) for s in pts],
                "latency_max_ms": [round(s.latency_max_ms, 3) for s in pts],
                "budget_ms": [round(s.budget_ms, 3) for s in pts],
                "battery_pct": [None if s.battery_pct is None else round(s.battery_pct, 2)
                                for s in pts],
                "power_saving": [s.power_saving for s in pts],
            },
            "switches": sws,
        }

    def jpeg(self, quality: int = 80) -> tuple[int, bytes] | None:
        """The newest processed frame as JPEG (encoded once per frame, on demand)."""
        with self._lock:
            last = self._last
        if last is None:
            return None
        with self._jpeg_lock:
            if self._jpeg is not None and self._jpeg[0] == last["seq"]:
                return self._jpeg
            buf = io.BytesIO()
            Image.fromarray(last["frame"].image).save(buf, "JPEG", quality=quality)
            self._jpeg = (last["seq"], buf.getvalue())
            return self._jpeg

    # -- what the page changes ---------------------------------------------------------------
    def apply_config(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every field, then apply them all. Fields: power_saving (true/false, or
        null to follow the system), target_fps (number in FPS_RANGE), pinned (a variant id or
        cfg_id, or "auto"/null), plugged (bool; simulated battery only)."""
        if not isinstance(changes, Mapping):
            raise ConfigError(f"the body must be a JSON object with some of {list(CONFIG_FIELDS)}"
                              f", got {type(changes).__name__}")
        unknown = sorted(set(changes) - set(CONFIG_FIELDS))
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; known: {list(CONFIG_FIELDS)}")
        if not changes:
            raise ConfigError(f"nothing to change; give some of {list(CONFIG_FIELDS)}")
        todo = []
        if "power_saving" in changes:
            ps = changes["power_saving"]
            if ps is not None and not isinstance(ps, bool):
                raise ConfigError("power_saving must be true, false, or null (follow the "
                                  f"system), got {ps!r}")
            todo.append(lambda: self._set_power_saving(ps))
        if "target_fps" in changes:
            fps = parse_fps(changes["target_fps"])
            todo.append(lambda: self._set_fps(fps))
        if "pinned" in changes:
            pin = changes["pinned"]
            if pin is None or pin == "auto":
                todo.append(self.controller.unpin)
            else:
                if isinstance(pin, bool) or not isinstance(pin, (str, int)):
                    raise ConfigError(f"pinned must be a variant id, a cfg_id or \"auto\", got "
                                      f"{pin!r}")
                try:
                    v = self.rt.bundle.variant(pin)
                except UnknownVariantError as e:
                    raise ConfigError(str(e)) from None
                if v.id not in self._variant_index:
                    raise ConfigError(f"variant '{v.id}' is not loaded in this runtime")
                todo.append(lambda: self.controller.pin(v.id))
        if "plugged" in changes:
            plugged = changes["plugged"]
            if not isinstance(plugged, bool):
                raise ConfigError(f"plugged must be true or false, got {plugged!r}")
            if not isinstance(self.monitor, SimulatedBatteryMonitor):
                raise ConfigError("plugged can only be set for the simulated battery; this "
                                  "demo reads the real battery")
            todo.append(lambda: self.monitor.set_plugged(plugged))
        for f in todo:
            f()
        log.info("config changed: %s", dict(changes))
        return self.config()

    def set_task(self, body: Any) -> dict[str, Any]:
        """POST /api/task: {"task": NAME} switches the runtime to one of its tasks, {"task":
        null} back to the backbone's own head; the active variant stays (the controller then
        picks on the task's front). Returns the active task and the choices."""
        if not isinstance(body, Mapping) or set(body) != {"task"}:
            got = sorted(body) if isinstance(body, Mapping) else type(body).__name__
            raise ConfigError(f"the body must be a JSON object with exactly one field, \"task\" "
                              f"(a task name, or null for the backbone's own head), got {got}")
        name = body["task"]
        known = [t.name for t in self.rt.tasks]
        if name is not None and (not isinstance(name, str) or name not in known):
            raise ConfigError(f"unknown task {name!r}; this demo's tasks: "
                              f"{', '.join(known) or 'none (the bundle has no tasks)'}, or null "
                              "for the backbone's own head")
        try:
            self.rt.switch(task=name if name is not None else False,
                           reason="task selected by the app")
        except SnrtError as e:  # e.g. a pinned variant the task was not trained for
            raise ConfigError(str(e)) from None
        log.info("task: %s", name or "(the backbone's head)")
        return {"task": self.rt.current_task, "tasks": self.tasks()}

    def _set_power_saving(self, enabled: bool | None) -> None:
        self.monitor.set_power_saving(enabled)
        self._ps_override = enabled

    def _set_fps(self, fps: float) -> None:
        with self._config_lock:
            self.controller.set_config(target_fps=fps)
            self.camera.set_fps(fps)
            self.fps_auto = False


def parse_fps(value: Any) -> float:
    """A target frame rate from user input, or ConfigError saying what is allowed."""
    lo, hi = FPS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"target_fps must be a number between {lo:g} and {hi:g}, got "
                          f"{value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"target_fps must be between {lo:g} and {hi:g} frames per second, "
                          f"got {value!r}")
    return float(value)
