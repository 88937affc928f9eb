"""SimulatedMonitor: a scripted, deterministic device on a SimulatedClock."""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .base import Monitor
from .state import (
    DEFAULT_CPU_FREQ_MHZ,
    DEFAULT_CPU_LOAD_PCT,
    DEFAULT_PLUGGED,
    DEFAULT_POWER_SAVING,
    DEFAULT_TEMPERATURE_C,
    SOURCE_APP,
    SOURCE_SIMULATED,
    MonitorValueError,
    PowerState,
    ThermalThresholds,
    _check_bool,
    _check_float,
)


class SimulatedClock:
    """A manual clock: `clock()` returns the time, `clock.advance(dt_s)` moves it forward."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = _check_float("start_s", start_s)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now_s

    def advance(self, dt_s: float) -> float:
        """Move forward by `dt_s` >= 0 seconds; returns the new time."""
        dt_s = _check_float("dt_s", dt_s, lo=0.0)
        with self._lock:
            self._now_s += dt_s
            return self._now_s


class _StepSchedule:
    """A value that changes in steps: [(t_s, value), ...] sorted by time; before the first
    step the value is `initial`."""

    def __init__(self, name: str, spec: Any, check: Callable[[str, Any], Any],
                 initial: Any) -> None:
        self.name = name
        self._check = check
        if isinstance(spec, (list, tuple)):
            self.initial = initial
            self.times: list[float] = []
            self.values: list[Any] = []
            for i, step in enumerate(spec):
                if not isinstance(step, (list, tuple)) or len(step) != 2:
                    raise MonitorValueError(f"{name}[{i}] must be a (t_s, value) pair, "
                                            f"got {step!r}")
                t_s = _check_float(f"{name}[{i}] time", step[0], lo=0.0)
                if self.times and t_s < self.times[-1]:
                    raise MonitorValueError(f"{name} steps must be sorted by time; step {i} at "
                                            f"{t_s} s comes after {self.times[-1]} s")
                self.times.append(t_s)
                self.values.append(check(f"{name}[{i}] value", step[1]))
        else:  # a constant
            self.initial = check(name, spec)
            self.times, self.values = [], []

    def at(self, t_s: float) -> Any:
        i = bisect.bisect_right(self.times, t_s)
        return self.values[i - 1] if i else self.initial

    def next_change_after(self, t_s: float) -> float:
        i = bisect.bisect_right(self.times, t_s)
        return self.times[i] if i < len(self.times) else math.inf

    def set_from(self, t_s: float, value: Any) -> None:
        """A step at `t_s` (after any scripted step at the same time); later steps stay."""
        value = self._check(self.name, value)
        i = bisect.bisect_right(self.times, t_s)
        self.times.insert(i, t_s)
        self.values.insert(i, value)


class SimulatedMonitor(Monitor):
    """A scripted, deterministic device. Times are seconds since the monitor was created.

    Schedules are a constant or a list of `(t_s, value)` steps sorted by time (the value holds
    until the next step; before the first step the constant default shown applies).

    Args:
        clock: seconds; default a `SimulatedClock` at 0 moved by `advance()`. Pass
            `time.monotonic` to run the script in real time (the demo).
        battery_start_pct: charge at t=0; None simulates a device without a battery.
        drain_pct_per_h: time-based drain while unplugged (the rest of the device).
        charge_pct_per_h: charging rate while plugged.
        battery_capacity_wh: enables energy-based drain: `consume(joules)` removes
            `joules / 3600 / battery_capacity_wh × 100` percent while unplugged.
        plugged: bool/None or schedule (default False). None counts as unplugged for draining.
        cpu_load_pct: other processes' load 0..100, constant or schedule (default 0).
        temperature_c: constant, None or schedule (default None); drives thermal_status
            through `thermal_thresholds`.
        power_saving: bool or schedule (default False), reported with source "simulated";
            `set_power_saving()` (source "app") overrides it. `SNRT_POWER_SAVING` is ignored
            so that scripts stay deterministic.
        cpu_freq_mhz, cpu_freq_max_mhz: constant, None or schedule (default None).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        battery_start_pct: float | None = 100.0,
        drain_pct_per_h: float = 0.0,
        charge_pct_per_h: float = 0.0,
        battery_capacity_wh: float | None = None,
        plugged: bool | Sequence[tuple[float, bool | None]] | None = False,
        cpu_load_pct: float | Sequence[tuple[float, float]] = 0.0,
        temperature_c: float | Sequence[tuple[float, float | None]] | None = None,
        power_saving: bool | Sequence[tuple[float, bool]] = False,
        cpu_freq_mhz: float | Sequence[tuple[float, float | None]] | None = None,
        cpu_freq_max_mhz: float | None = None,
        thermal_thresholds: ThermalThresholds | None = None,
    ) -> None:
        super().__init__()
        if clock is None:
            clock = SimulatedClock()
        if not callable(clock):
            raise MonitorValueError(f"clock must be a callable returning seconds, got {clock!r}")
        self.clock = clock
        self._t0_s = float(clock())
        self._battery_pct = _check_float("battery_start_pct", battery_start_pct, lo=0.0,
                                         hi=100.0, allow_none=True)
        self._drain_pct_per_h = _check_float("drain_pct_per_h", drain_pct_per_h, lo=0.0)
        self._charge_pct_per_h = _check_float("charge_pct_per_h", charge_pct_per_h, lo=0.0)
        self._capacity_wh = _check_float("battery_capacity_wh", battery_capacity_wh, lo=0.0,
                                         lo_open=True, allow_none=True)
        if thermal_thresholds is not None and not isinstance(thermal_thresholds,
                                                             ThermalThresholds):
            raise MonitorValueError("thermal_thresholds must be a ThermalThresholds, got "
                                    f"{type(thermal_thresholds).__name__}")
        self._thresholds = thermal_thresholds or ThermalThresholds()

        def pct(name: str, v: Any) -> float:
            return _check_float(name, v, lo=0.0, hi=100.0)

        def temp(name: str, v: Any) -> float | None:
            return _check_float(name, v, allow_none=True)

        def freq(name: str, v: Any) -> float | None:
            return _check_float(name, v, lo=0.0, lo_open=True, allow_none=True)

        def opt_bool(name: str, v: Any) -> bool | None:
            return _check_bool(name, v, allow_none=True)

        self._plugged = _StepSchedule("plugged", plugged, opt_bool, DEFAULT_PLUGGED)
        self._cpu_load = _StepSchedule("cpu_load_pct", cpu_load_pct, pct, DEFAULT_CPU_LOAD_PCT)
        self._temperature = _StepSchedule("temperature_c", temperature_c, temp,
                                          DEFAULT_TEMPERATURE_C)
        self._power_saving = _StepSchedule("power_saving", power_saving, _check_bool,
                                           DEFAULT_POWER_SAVING)
        self._cpu_freq = _StepSchedule("cpu_freq_mhz", cpu_freq_mhz, freq, DEFAULT_CPU_FREQ_MHZ)
        self._cpu_freq_max_mhz = freq("cpu_freq_max_mhz", cpu_freq_max_mhz)
        self._battery_t_s = 0.0  # simulated time the battery level was integrated up to
        self._energy_j = 0.0

    # -- public --------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since construction."""
        return self.clock() - self._t0_s

    @property
    def energy_consumed_j(self) -> float:
        """Total joules reported through `consume()`."""
        with self._lock:
            return self._energy_j

    def advance(self, dt_s: float) -> float:
        """Move the monitor's own SimulatedClock forward; returns the new elapsed time."""
        if not isinstance(self.clock, SimulatedClock):
            raise MonitorValueError("advance() works only with the monitor's SimulatedClock; this "
                                    f"monitor runs on {self.clock!r}, advance that clock instead")
        self.clock.advance(dt_s)
        return self.elapsed_s

    def read(self) -> PowerState:
        with self._lock:
            now_s = self.clock()
            t_s = now_s - self._t0_s
            self._integrate_battery(t_s)
            temperature_c = self._temperature.at(t_s)
            if self._app_power_saving is not None:
                power_saving, source = self._app_power_saving, SOURCE_APP
            else:
                power_saving, source = self._power_saving.at(t_s), SOURCE_SIMULATED
            return PowerState(
                battery_pct=self._battery_pct,
                plugged=self._plugged.at(t_s),
                power_saving=power_saving,
                power_saving_source=source,
                cpu_load_pct=self._cpu_load.at(t_s),
                cpu_freq_mhz=self._cpu_freq.at(t_s),
                cpu_freq_max_mhz=self._cpu_freq_max_mhz,
                temperature_c=temperature_c,
                thermal_status=self._thresholds.status_for(temperature_c),
                timestamp_s=now_s,
            )

    def consume(self, joules: float) -> None:
        """Spend `joules` from the battery now (nothing while plugged or without a battery).

        Without `battery_capacity_wh` the energy is only counted (`energy_consumed_j`); that is
        logged once, so a demo can call `consume()` on any monitor.
        """
        joules = _check_float("joules", joules, lo=0.0)
        with self._lock:
            t_s = self.clock() - self._t0_s
            self._integrate_battery(t_s)
            self._energy_j += joules
            if self._capacity_wh is None:
                self._log_once("no-capacity", logging.INFO,
                               "SimulatedMonitor.consume(): no battery_capacity_wh given, so "
                               "energy is counted but does not drain the battery")
                return
            if self._battery_pct is None or self._plugged.at(t_s):
                return
            drop_pct = joules / 3600.0 / self._capacity_wh * 100.0
            self._battery_pct = max(0.0, self._battery_pct - drop_pct)

    def set_plugged(self, plugged: bool | None) -> None:
        """Plug in / unplug now; later scripted plug events still happen."""
        self._set_now(self._plugged, plugged)

    def set_cpu_load(self, cpu_load_pct: float) -> None:
        """Other processes' load from now on (until the next scripted step)."""
        self._set_now(self._cpu_load, cpu_load_pct)

    def set_temperature(self, temperature_c: float | None) -> None:
        """Temperature from now on (until the next scripted step)."""
        self._set_now(self._temperature, temperature_c)

    # -- internals -----------------------------------------------------------------------

    def _set_now(self, schedule: _StepSchedule, value: Any) -> None:
        with self._lock:
            t_s = self.clock() - self._t0_s
            self._integrate_battery(t_s)  # the old plug state applies up to now
            schedule.set_from(t_s, value)

    def _integrate_battery(self, t_s: float) -> None:
        """Apply time-based drain/charge from the last integration time up to `t_s`, piece by
        piece between plug events."""
        if t_s <= self._battery_t_s:
            return
        if self._battery_pct is not None:
            t = self._battery_t_s
            while t < t_s:
                t_end = min(t_s, self._plugged.next_change_after(t))
                hours = (t_end - t) / 3600.0
                if self._plugged.at(t):
                    self._battery_pct = min(100.0, self._battery_pct
                                            + self._charge_pct_per_h * hours)
                else:
                    self._battery_pct = max(0.0, self._battery_pct
                                            - self._drain_pct_per_h * hours)
                t = t_end
        self._battery_t_s = t_s
