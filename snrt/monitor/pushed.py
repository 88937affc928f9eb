"""PushMonitor: readings the app pushes (e.g. Android's battery and thermal status), with a
fallback monitor for what is not pushed or pushed too long ago."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .base import Monitor
from .state import (
    DEFAULT_BATTERY_PCT,
    DEFAULT_CPU_FREQ_MHZ,
    DEFAULT_CPU_LOAD_PCT,
    DEFAULT_PLUGGED,
    DEFAULT_POWER_SAVING,
    DEFAULT_TEMPERATURE_C,
    DEFAULT_THERMAL_STATUS,
    SOURCE_APP,
    SOURCE_NONE,
    SOURCE_PUSH,
    MonitorValueError,
    PowerState,
    ThermalThresholds,
    _check_bool,
    _check_float,
    _check_interval,
    _check_status,
)


class _Unset:
    def __repr__(self) -> str:
        return "<not pushed>"


_UNSET: Any = _Unset()

PUSHABLE_FIELDS = ("battery_pct", "plugged", "power_saving", "cpu_load_pct", "cpu_freq_mhz",
                   "cpu_freq_max_mhz", "temperature_c", "thermal_status")


class PushMonitor(Monitor):
    """Readings pushed by the app (e.g. Android's battery and thermal status), with fallback.

    A pushed value is used for `stale_after_s` seconds after its push; after that, or if it was
    never pushed, the field comes from `fallback.read()` or, without a fallback, from the
    defaults of the module docstring. Push unchanged values again (a heartbeat) if they may
    stay the same for longer than `stale_after_s`, or set that field's timeout to `math.inf`.

    thermal_status: a fresh pushed status wins; else a fresh pushed temperature gives
    `thermal_thresholds.status_for(temperature_c)`; else the fallback's status.
    power_saving: the app flag (`set_power_saving`), then a fresh pushed value (its
    `power_saving_source`, "push" by default), then the fallback.

    Args:
        fallback: the monitor for what is not pushed (e.g. a SystemMonitor), or None.
        stale_after_s: seconds a pushed value stays valid: one number for every field, or a
            dict of per-field overrides of the 30 s default, e.g. `{"battery_pct": 300}`.
        clock: monotonic seconds (push times, staleness, `timestamp_s`).
        thermal_thresholds: used when a temperature but no status is pushed.
    """

    DEFAULT_STALE_AFTER_S = 30.0

    def __init__(
        self,
        fallback: Monitor | None = None,
        *,
        stale_after_s: float | Mapping[str, float] = DEFAULT_STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        thermal_thresholds: ThermalThresholds | None = None,
    ) -> None:
        super().__init__()
        if fallback is not None and not isinstance(fallback, Monitor):
            raise MonitorValueError("fallback must be a Monitor (e.g. SystemMonitor()) or None, "
                                    f"got {type(fallback).__name__}")
        if not callable(clock):
            raise MonitorValueError(f"clock must be a callable returning seconds, got {clock!r}")
        if thermal_thresholds is not None and not isinstance(thermal_thresholds,
                                                             ThermalThresholds):
            raise MonitorValueError("thermal_thresholds must be a ThermalThresholds, got "
                                    f"{type(thermal_thresholds).__name__}")
        self.fallback = fallback
        self._clock = clock
        self._thresholds = thermal_thresholds or ThermalThresholds()
        if isinstance(stale_after_s, Mapping):
            self._stale_s = dict.fromkeys(PUSHABLE_FIELDS, self.DEFAULT_STALE_AFTER_S)
            for key, value in stale_after_s.items():
                if key not in self._stale_s:
                    raise MonitorValueError(f"unknown stale_after_s field {key!r}; known: "
                                            f"{list(PUSHABLE_FIELDS)}")
                self._stale_s[key] = _check_interval(f"stale_after_s[{key!r}]", value)
        else:
            self._stale_s = dict.fromkeys(
                PUSHABLE_FIELDS, _check_interval("stale_after_s", stale_after_s))
        self._pushed: dict[str, tuple[Any, float]] = {}  # field -> (value, push time)
        self._pushed_source = SOURCE_PUSH

    def push(
        self,
        *,
        battery_pct: float | None = _UNSET,
        plugged: bool | None = _UNSET,
        power_saving: bool = _UNSET,
        power_saving_source: str = SOURCE_PUSH,
        cpu_load_pct: float = _UNSET,
        cpu_freq_mhz: float | None = _UNSET,
        cpu_freq_max_mhz: float | None = _UNSET,
        temperature_c: float | None = _UNSET,
        thermal_status: int = _UNSET,
    ) -> None:
        """Record fresh readings; only the fields given change. None means "known absent"
        (e.g. `battery_pct=None` on a device without battery), not "forget": see `forget()`.
        Raises ValueError (and records nothing) if any value is out of range."""
        checks: dict[str, Callable[[Any], Any]] = {
            "battery_pct": lambda v: _check_float("battery_pct", v, lo=0.0, hi=100.0,
                                                  allow_none=True),
            "plugged": lambda v: _check_bool("plugged", v, allow_none=True),
            "power_saving": lambda v: _check_bool("power_saving", v),
            "cpu_load_pct": lambda v: _check_float("cpu_load_pct", v, lo=0.0, hi=100.0),
            "cpu_freq_mhz": lambda v: _check_float("cpu_freq_mhz", v, lo=0.0, lo_open=True,
                                                   allow_none=True),
            "cpu_freq_max_mhz": lambda v: _check_float("cpu_freq_max_mhz", v, lo=0.0,
                                                       lo_open=True, allow_none=True),
            "temperature_c": lambda v: _check_float("temperature_c", v, allow_none=True),
            "thermal_status": lambda v: _check_status("thermal_status", v),
        }
        given = {"battery_pct": battery_pct, "plugged": plugged, "power_saving": power_saving,
                 "cpu_load_pct": cpu_load_pct, "cpu_freq_mhz": cpu_freq_mhz,
                 "cpu_freq_max_mhz": cpu_freq_max_mhz, "temperature_c": temperature_c,
                 "thermal_status": thermal_status}
        values = {k: checks[k](v) for k, v in given.items() if v is not _UNSET}
        if not isinstance(power_saving_source, str) or not power_saving_source:
            raise MonitorValueError("power_saving_source must be a non-empty string, e.g. "
                                    f"'android', got {power_saving_source!r}")
        with self._lock:
            now = self._clock()
            for key, value in values.items():
                self._pushed[key] = (value, now)
            if "power_saving" in values:
                self._pushed_source = power_saving_source

    def forget(self, *fields: str) -> None:
        """Drop pushed values (all when no field is named) so they fall back at once."""
        unknown = [f for f in fields if f not in PUSHABLE_FIELDS]
        if unknown:
            raise MonitorValueError(f"unknown fields {unknown}; known: {list(PUSHABLE_FIELDS)}")
        with self._lock:
            for key in fields or PUSHABLE_FIELDS:
                self._pushed.pop(key, None)

    def read(self) -> PowerState:
        with self._lock:
            now = self._clock()
            fresh = {key: value for key, (value, t) in self._pushed.items()
                     if now - t <= self._stale_s[key]}
            base = None
            if len(fresh) < len(PUSHABLE_FIELDS) and self.fallback is not None:
                base = self.fallback.read()

            def pick(key: str, default: Any) -> Any:
                if key in fresh:
                    return fresh[key]
                return getattr(base, key) if base is not None else default

            if self._app_power_saving is not None:
                power_saving, source = self._app_power_saving, SOURCE_APP
            elif "power_saving" in fresh:
                power_saving, source = fresh["power_saving"], self._pushed_source
            elif base is not None:
                power_saving, source = base.power_saving, base.power_saving_source
            else:
                power_saving, source = DEFAULT_POWER_SAVING, SOURCE_NONE
            if "thermal_status" in fresh:
                thermal_status = fresh["thermal_status"]
            elif "temperature_c" in fresh:
                thermal_status = self._thresholds.status_for(fresh["temperature_c"])
            else:
                thermal_status = pick("thermal_status", DEFAULT_THERMAL_STATUS)
            return PowerState(
                battery_pct=pick("battery_pct", DEFAULT_BATTERY_PCT),
                plugged=pick("plugged", DEFAULT_PLUGGED),
                power_saving=power_saving,
                power_saving_source=source,
                cpu_load_pct=pick("cpu_load_pct", DEFAULT_CPU_LOAD_PCT),
                cpu_freq_mhz=pick("cpu_freq_mhz", DEFAULT_CPU_FREQ_MHZ),
                cpu_freq_max_mhz=pick("cpu_freq_max_mhz", DEFAULT_CPU_FREQ_MHZ),
                temperature_c=pick("temperature_c", DEFAULT_TEMPERATURE_C),
                thermal_status=thermal_status,
                timestamp_s=now,
            )

    def consume(self, joules: float) -> None:
        """Forwarded to the fallback (a SimulatedMonitor drains its battery with it)."""
        if self.fallback is not None:
            self.fallback.consume(joules)
        else:
            super().consume(joules)

    def close(self) -> None:
        """Closes the fallback too."""
        if self.fallback is not None:
            self.fallback.close()
