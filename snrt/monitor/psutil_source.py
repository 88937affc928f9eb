"""psutil: CPU times (the load of other processes), CPU frequency, battery, temperatures.

A mixin of SystemMonitor: its methods use the monitor's `_ps` (psutil or a fake), `_process`,
`_n_cores` and fill the cached `_cpu_load_pct`, `_cpu_freq_*`, `_battery_pct`, `_plugged`."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from .state import (
    DEFAULT_BATTERY_PCT,
    DEFAULT_CPU_LOAD_PCT,
    DEFAULT_PLUGGED,
    _is_number,
    _valid_temperature,
)

log = logging.getLogger(__name__)
_UNAVAILABLE = object()  # a psutil function this platform lacks, or one that raised


class PsutilSource:
    """What psutil knows (SystemMonitor mixin)."""

    # -- CPU ---------------------------------------------------------------------------------

    def _core_count(self) -> int:
        try:
            n = self._ps.cpu_count()
        except Exception:  # noqa: BLE001
            n = None
        return n if isinstance(n, int) and n >= 1 else (os.cpu_count() or 1)

    def _initial_cpu_load(self) -> float:
        """Until the first sampling window ends: the 1-min load average per core, clamped."""
        getloadavg = getattr(self._ps, "getloadavg", None)
        if getloadavg is None:
            return DEFAULT_CPU_LOAD_PCT
        try:
            load1 = float(getloadavg()[0])
        except Exception:  # noqa: BLE001
            return DEFAULT_CPU_LOAD_PCT
        if not math.isfinite(load1):
            return DEFAULT_CPU_LOAD_PCT
        return min(100.0, max(0.0, 100.0 * load1 / self._n_cores))

    def _sample_cpu_load(self) -> None:
        try:
            system = self._ps.cpu_times()
            own = self._process.cpu_times() if self._process is not None else None
        except Exception as e:  # noqa: BLE001
            self._log_once("cpu_times", logging.WARNING,
                           "cpu_times() failed (%r); cpu_load_pct keeps its last value", e)
            return
        baseline, self._cpu_baseline = self._cpu_baseline, (system, own)
        if baseline is None:
            return
        total_s = _cpu_total_s(system) - _cpu_total_s(baseline[0])
        busy_s = total_s - (_cpu_idle_s(system) - _cpu_idle_s(baseline[0]))
        if total_s <= 0 or busy_s < 0:
            return  # no tick elapsed, or counters went backwards (VM migration): skip window
        own_s = 0.0
        if own is not None and baseline[1] is not None:
            own_s = max(0.0, (own.user + own.system) - (baseline[1].user + baseline[1].system))
        # Both shares are fractions of all CPUs' time in the window: no core count or wall
        # clock needed, and the result equals other_process_load_pct() of psutil's percentages.
        self._cpu_load_pct = min(100.0, max(0.0, 100.0 * (busy_s - own_s) / total_s))

    def _call_psutil(self, name: str, log_key: str):
        """psutil.<name>(), or _UNAVAILABLE when this psutil/OS lacks it or it raised (logged
        once under `log_key`)."""
        fn = getattr(self._ps, name, None)
        if fn is None:
            return _UNAVAILABLE
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - psutil raises OS-specific types
            self._log_once(log_key, logging.INFO, "%s() failed (%r)", name, e)
            return _UNAVAILABLE

    def _read_cpu_freq(self) -> None:
        freq = self._call_psutil("cpu_freq", "cpu_freq")
        if freq is _UNAVAILABLE:
            return
        if freq is None:
            return
        current = getattr(freq, "current", None)
        maximum = getattr(freq, "max", None)
        self._cpu_freq_mhz = float(current) if _positive(current) else self._cpu_freq_mhz
        self._cpu_freq_max_mhz = float(maximum) if _positive(maximum) else self._cpu_freq_max_mhz

    # -- battery -------------------------------------------------------------------------------

    def _read_battery(self) -> None:
        battery = self._call_psutil("sensors_battery", "battery")
        if battery is _UNAVAILABLE:
            return
        if battery is None:  # no battery: not a failure, so no stale value is kept
            self._battery_pct, self._plugged = DEFAULT_BATTERY_PCT, DEFAULT_PLUGGED
            return
        pct = getattr(battery, "percent", None)
        if _is_number(pct) and math.isfinite(pct):
            self._battery_pct = min(100.0, max(0.0, float(pct)))
        plugged = getattr(battery, "power_plugged", None)
        self._plugged = plugged if isinstance(plugged, bool) else None

    def _psutil_temperatures(self) -> list[tuple[str, float]]:
        chips = self._call_psutil("sensors_temperatures", "temperatures")  # not on every OS
        if chips is _UNAVAILABLE:
            return []
        chips = chips or {}
        readings = []
        for chip, entries in chips.items():
            for entry in entries or ():
                temp_c = _valid_temperature(getattr(entry, "current", None))
                if temp_c is not None:
                    readings.append((str(chip), temp_c))
        return readings


def _cpu_total_s(times: Any) -> float:
    # On Linux guest time is already counted in user (and guest_nice in nice); psutil does the
    # same subtraction.
    return (sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0))


def _cpu_idle_s(times: Any) -> float:
    return times.idle + getattr(times, "iowait", 0.0)


def _positive(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0
