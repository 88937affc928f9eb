"""Battery for the demo: the real sensor when there is one, else a simulated battery that the
variants' energy drains.

Energy model (simulated battery)
--------------------------------
Energy is charged to the battery after every processed frame and for the wall time between
frames; all of it is multiplied by `drain_speedup` so that a demo session shows in minutes what
would take hours:

    frame_joules = cpu_busy_s x active_power_w        (the CPU work of this frame)
    idle_joules  = dt_s x idle_power_w                (display, camera, rest of the device)
    battery drop = (frame_joules + idle_joules) x drain_speedup / 3600 / capacity_wh x 100 %

`cpu_busy_s` is the CPU time of the frame's preprocessing and inference, measured with
`time.thread_time()` in the thread that runs it (onnxruntime with 1 intra-op thread computes in
the calling thread); with N > 1 threads the N - 1 pool threads are counted as busy for the
wall latency of the inference. `active_power_w` is an assumed power per busy core, not a
measurement. Defaults: a phone-sized 15 Wh battery (about 4,000 mAh at 3.85 V), 3 W per busy
core (a big mobile core at full clock), a 0.5 W floor, speed-up x60 (one demo minute = one
hour). So a variant that needs twice the CPU time per frame drains the battery roughly twice as
fast, apart from the floor; `SimulatedMonitor.consume(joules)` does the bookkeeping, and the
controller sees the falling percentage like a real one (low battery at 20 %, critical at 10 %).

Plugged in (simulated), the battery charges at `charge_pct_per_h` x `drain_speedup` and no
energy is drained.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from snrt.monitor import Monitor, PowerState, SimulatedMonitor, SystemMonitor

log = logging.getLogger(__name__)

BATTERY_CHOICES = ("auto", "system", "simulated")


@dataclass(frozen=True)
class EnergyModel:
    """What a frame and the time between frames cost the simulated battery (module docstring).
    """

    battery_capacity_wh: float = 15.0
    active_power_w: float = 3.0  # per busy core
    idle_power_w: float = 0.5  # the rest of the device, whatever the network does
    drain_speedup: float = 60.0
    charge_pct_per_h: float = 60.0  # while (simulated) plugged in, before the speed-up

    def __post_init__(self) -> None:
        for name in ("battery_capacity_wh", "drain_speedup"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("active_power_w", "idle_power_w", "charge_pct_per_h"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")

    def frame_joules(self, cpu_busy_s: float) -> float:
        """Energy of one frame's computation (before the speed-up)."""
        return max(0.0, cpu_busy_s) * self.active_power_w

    def idle_joules(self, dt_s: float) -> float:
        """Energy of the device's floor over `dt_s` seconds (before the speed-up)."""
        return max(0.0, dt_s) * self.idle_power_w

    def battery_joules(self, joules: float) -> float:
        """What `joules` of modelled energy take out of the simulated battery (sped up)."""
        return joules * self.drain_speedup

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SimulatedBatteryMonitor(Monitor):
    """The system's readings (CPU load, temperature, power-saving sources) with a simulated
    battery in place of the absent one.

    Power saving set by the app goes to the system monitor (the app flag still overrides the
    system's own sources there); `consume()` drains the simulated battery.
    """

    def __init__(self, system: Monitor, battery: SimulatedMonitor) -> None:
        super().__init__()
        self.system = system
        self.battery = battery

    def read(self) -> PowerState:
        s = self.system.read()
        b = self.battery.read()
        return dataclasses.replace(s, battery_pct=b.battery_pct, plugged=b.plugged)

    def set_power_saving(self, enabled: bool | None) -> None:
        super().set_power_saving(enabled)
        self.system.set_power_saving(enabled)

    def consume(self, joules: float) -> None:
        self.battery.consume(joules)

    def set_plugged(self, plugged: bool) -> None:
        self.battery.set_plugged(plugged)

    def close(self) -> None:
        self.system.close()
        self.battery.close()


def system_has_battery() -> bool:
    """Whether psutil reports a battery on this machine."""
    try:
        import psutil

        return psutil.sensors_battery() is not None
    except Exception:  # noqa: BLE001 - no psutil support on this platform: no battery
        return False


SENSOR_CHOICES = ("system", "simulated")


def make_monitor(battery: str, model: EnergyModel, *, battery_start_pct: float = 100.0,
                 system: Monitor | None = None, sensors: str = "system",
                 clock=time.monotonic) -> tuple[Monitor, str]:
    """The demo's monitor and where its battery reading comes from ("system"/"simulated").

    battery: "system" (the real sensor, via SystemMonitor), "simulated" (energy-model drain),
    or "auto" (system when psutil sees a battery, else simulated).
    system: the monitor for the non-battery readings (default: a SystemMonitor, or with
    sensors="simulated" a SimulatedMonitor on `clock`: no CPU load from other processes, no
    temperature, power saving only from the page, whatever this machine does).
    """
    if battery not in BATTERY_CHOICES:
        raise ValueError(f"battery must be one of {BATTERY_CHOICES}, got {battery!r}")
    if sensors not in SENSOR_CHOICES:
        raise ValueError(f"sensors must be one of {SENSOR_CHOICES}, got {sensors!r}")
    if sensors == "simulated":
        if battery == "system":
            raise ValueError("--battery system reads the real battery; it cannot be combined "
                             "with --sensors simulated (use --battery simulated or auto)")
        battery = "simulated"
        if system is None:
            system = SimulatedMonitor(clock=clock, battery_start_pct=None)
    if battery == "auto":
        battery = "system" if system_has_battery() else "simulated"
    system = system if system is not None else SystemMonitor()
    if battery == "system":
        return system, "system"
    sim = SimulatedMonitor(clock=clock, battery_start_pct=battery_start_pct,
                           battery_capacity_wh=model.battery_capacity_wh,
                           charge_pct_per_h=model.charge_pct_per_h * model.drain_speedup,
                           plugged=False)
    log.info("simulated battery: %.1f Wh from %.0f %%, drain x%g", model.battery_capacity_wh,
             battery_start_pct, model.drain_speedup)
    return SimulatedBatteryMonitor(system, sim), "simulated"
