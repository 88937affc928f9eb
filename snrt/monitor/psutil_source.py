"""psutil: CPU times (the load of other processes), CPU frequency, battery, temperatures.

A mixin of SystemMonitor: its methods use the monitor's `_ps` (psutil or a fake), `_process`,
`_n_cores` and fill the cached `_cpu_load_pct`, `_cpu_freq_*`, `_battery_pct`, `_plugged`.

Every value psutil returns is checked before it is used: a broken build, an exotic OS or a fake
may return None, wrong types, NaN or objects whose attributes raise (issue 14), and `read()`
must not raise. A junk answer counts as a failed read: the last good value stays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .state import (
    DEFAULT_BATTERY_PCT,
    DEFAULT_CPU_LOAD_PCT,
    DEFAULT_PLUGGED,
    _finite_float,
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
        if _is_count(n):
            return n
        self._log_once("cpu_count", logging.INFO, "cpu_count() gave %r; using os.cpu_count()",
                       _safe_repr(n))
        n = os.cpu_count()
        return n if _is_count(n) else 1

    def _initial_cpu_load(self) -> float:
        """Until the first sampling window ends: the 1-min load average per core, clamped."""
        getloadavg = getattr(self._ps, "getloadavg", None)
        if getloadavg is None:
            return DEFAULT_CPU_LOAD_PCT
        try:
            load1 = _finite_float(getloadavg()[0])
        except Exception:  # noqa: BLE001
            return DEFAULT_CPU_LOAD_PCT
        if load1 is None:
            return DEFAULT_CPU_LOAD_PCT
        return min(100.0, max(0.0, 100.0 * load1 / self._n_cores))

    def _sample_cpu_load(self) -> None:
        try:
            raw_system = self._ps.cpu_times()
            raw_own = self._process.cpu_times() if self._process is not None else None
        except Exception as e:  # noqa: BLE001
            self._log_once("cpu_times", logging.WARNING,
                           "cpu_times() failed (%r); cpu_load_pct keeps its last value", e)
            return
        system = _system_times(raw_system)
        if system is None:
            self._log_once("cpu_times_junk", logging.WARNING,
                           "psutil.cpu_times() returned %s, not CPU times; cpu_load_pct keeps "
                           "its last value", _safe_repr(raw_system))
            return  # keep the baseline: the next good window is simply longer
        own = _process_busy_s(raw_own) if raw_own is not None else None
        baseline, self._cpu_baseline = self._cpu_baseline, (system, own)
        if baseline is None:
            return
        (total, idle), (total0, idle0) = system, baseline[0]
        total_s = total - total0
        busy_s = total_s - (idle - idle0)
        if not total_s > 0 or busy_s < 0:
            return  # no tick elapsed, or counters went backwards (VM migration): skip window
        own_s = 0.0
        if own is not None and baseline[1] is not None:
            own_s = max(0.0, own - baseline[1])
        # Both shares are fractions of all CPUs' time in the window: no core count or wall
        # clock needed, and the result equals other_process_load_pct() of psutil's percentages.
        load = _finite_float(100.0 * (busy_s - own_s) / total_s)
        if load is not None:
            self._cpu_load_pct = min(100.0, max(0.0, load))

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
        if freq is _UNAVAILABLE or freq is None:
            return
        current = _positive(_attr(freq, "current"))
        maximum = _positive(_attr(freq, "max"))
        self._cpu_freq_mhz = current if current is not None else self._cpu_freq_mhz
        self._cpu_freq_max_mhz = maximum if maximum is not None else self._cpu_freq_max_mhz

    # -- battery -------------------------------------------------------------------------------

    def _read_battery(self) -> None:
        battery = self._call_psutil("sensors_battery", "battery")
        if battery is _UNAVAILABLE:
            return
        if battery is None:  # no battery: not a failure, so no stale value is kept
            self._battery_pct, self._plugged = DEFAULT_BATTERY_PCT, DEFAULT_PLUGGED
            return
        pct = _finite_float(_attr(battery, "percent"))
        if pct is None:
            self._log_once("battery_junk", logging.INFO, "sensors_battery() returned %s; the "
                           "battery level keeps its last value", _safe_repr(battery))
            return
        self._battery_pct = min(100.0, max(0.0, pct))
        plugged = _attr(battery, "power_plugged")
        self._plugged = plugged if isinstance(plugged, bool) else None

    # -- temperatures --------------------------------------------------------------------------

    def _psutil_temperatures(self) -> list[tuple[str, float]]:
        chips = self._call_psutil("sensors_temperatures", "temperatures")  # not on every OS
        if chips is _UNAVAILABLE or chips is None:
            return []
        if not isinstance(chips, Mapping):
            self._log_once("temperatures_junk", logging.INFO, "sensors_temperatures() returned "
                           "%s, not a dict of sensors; ignored", _safe_repr(chips))
            return []
        readings = []
        try:
            for chip, entries in chips.items():
                if not isinstance(entries, (list, tuple)):
                    continue
                for entry in entries:
                    temp_c = _valid_temperature(_attr(entry, "current"))
                    if temp_c is not None:
                        readings.append((chip if isinstance(chip, str) else repr(chip), temp_c))
        except Exception as e:  # noqa: BLE001 - a Mapping whose iteration raises
            self._log_once("temperatures", logging.INFO, "sensors_temperatures() failed (%r)", e)
        return readings


_MAX_CORES = 1 << 16  # more than any machine has: a larger count is junk


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_CORES


def _attr(obj: Any, name: str) -> Any:
    """getattr(obj, name, None), also when the attribute raises."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _system_times(times: Any) -> tuple[float, float] | None:
    """(total, idle) seconds of psutil.cpu_times(), or None when it is not CPU times."""
    try:
        if not isinstance(times, tuple) or not times:
            return None
        values = [_finite_float(v) for v in times]
        idle = _finite_float(_attr(times, "idle"))
        iowait = _finite_float(_attr(times, "iowait") or 0.0)
        # On Linux guest time is already counted in user (and guest_nice in nice); psutil does
        # the same subtraction.
        guest = _finite_float(_attr(times, "guest") or 0.0)
        guest_nice = _finite_float(_attr(times, "guest_nice") or 0.0)
    except Exception:  # noqa: BLE001 - a tuple subclass whose fields raise
        return None
    parts = [*values, idle, iowait, guest, guest_nice]
    if any(v is None or v < 0 for v in parts):
        return None
    total = _finite_float(sum(values) - guest - guest_nice)
    busy_idle = _finite_float(idle + iowait)
    if total is None or busy_idle is None:
        return None
    return total, busy_idle


def _process_busy_s(times: Any) -> float | None:
    """user + system seconds of Process.cpu_times(), or None when they are junk."""
    user, system = _finite_float(_attr(times, "user")), _finite_float(_attr(times, "system"))
    if user is None or system is None or user < 0 or system < 0:
        return None
    return _finite_float(user + system)


def _positive(value: Any) -> float | None:
    value = _finite_float(value)
    return value if value is not None and value > 0 else None
