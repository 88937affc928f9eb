"""SystemMonitor: psutil, sysfs and power-profiles-daemon, each source cached and re-read at
most every `refresh_s[source]` seconds."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import Monitor
from .power_profile import PPD_STATE_PATH, PowerProfileSource
from .psutil_source import PsutilSource
from .state import (
    DEFAULT_BATTERY_PCT,
    DEFAULT_CPU_FREQ_MHZ,
    DEFAULT_CPU_LOAD_PCT,
    DEFAULT_PLUGGED,
    DEFAULT_POWER_SAVING,
    DEFAULT_REFRESH_S,
    DEFAULT_TEMPERATURE_C,
    DEFAULT_THERMAL_STATUS,
    ENV_POWER_SAVING,
    SOURCE_APP,
    SOURCE_ENV,
    SOURCE_NONE,
    SOURCE_PLATFORM_PROFILE,
    SOURCE_PPD,
    MonitorValueError,
    PowerState,
    ThermalStatus,
    ThermalThresholds,
    _check_interval,
    _is_cpu_sensor,
    _valid_temperature,
    parse_power_saving_env,
)
from .sysfs_source import SysfsSource, _millidegrees, _read_text, _ThermalZone

log = logging.getLogger(__name__)


class _Refresh:
    """When each cached source is due again."""

    def __init__(self, intervals_s: Mapping[str, float], now: float) -> None:
        self.intervals_s = dict(intervals_s)
        self.next_s = dict.fromkeys(self.intervals_s, now)

    def due(self, key: str, now: float) -> bool:
        if now < self.next_s[key]:
            return False
        self.next_s[key] = now + self.intervals_s[key]
        return True


class SystemMonitor(PsutilSource, SysfsSource, PowerProfileSource, Monitor):
    """Battery, power-saving mode, CPU load and frequency, temperature from psutil and sysfs.

    Args:
        psutil_module: the psutil module, or a fake with the same functions (tests).
        sysfs_root: where sysfs is mounted (`/sys`); tests point it at a fake tree.
        ppd_state_path: power-profiles-daemon's state file; None to not read it.
        powerprofilesctl: command printing the active profile, used only when the state file
            does not exist; None to never run it.
        environ: where `SNRT_POWER_SAVING` is looked up (`os.environ`).
        clock: monotonic seconds; refresh intervals and `timestamp_s` use it.
        thermal_thresholds: temperatures of each ThermalStatus.
        refresh_s: overrides of `DEFAULT_REFRESH_S`, e.g. `{"battery": 5.0}`.
        power_saving_profiles: platform_profile values that mean power saving.
        subprocess_timeout_s: after this, a hanging `powerprofilesctl` is killed.

    Every source is read once at construction, which also primes the CPU-load baseline (the
    first `cpu_percent()`-style reading would otherwise be a meaningless 0.0).
    """

    def __init__(
        self,
        *,
        psutil_module: Any | None = None,
        sysfs_root: str | os.PathLike = "/sys",
        ppd_state_path: str | os.PathLike | None = PPD_STATE_PATH,
        powerprofilesctl: Sequence[str] | None = ("powerprofilesctl", "get"),
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        thermal_thresholds: ThermalThresholds | None = None,
        refresh_s: Mapping[str, float] | None = None,
        power_saving_profiles: Iterable[str] = ("low-power",),
        subprocess_timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        if psutil_module is None:
            try:
                import psutil as psutil_module
            except ImportError as e:  # a core dependency, but say what to do
                raise ImportError("SystemMonitor needs psutil: pip install psutil "
                                  "(or use SimulatedMonitor / PushMonitor)") from e
        self._ps = psutil_module
        self._root = Path(sysfs_root)
        self._ppd_state_path = Path(ppd_state_path) if ppd_state_path is not None else None
        self._environ = os.environ if environ is None else environ
        if not callable(clock):
            raise MonitorValueError(f"clock must be a callable returning seconds, got {clock!r}")
        self._clock = clock
        if thermal_thresholds is not None and not isinstance(thermal_thresholds,
                                                             ThermalThresholds):
            raise MonitorValueError("thermal_thresholds must be a ThermalThresholds, got "
                                    f"{type(thermal_thresholds).__name__}")
        self._thresholds = thermal_thresholds or ThermalThresholds()
        intervals = dict(DEFAULT_REFRESH_S)
        for key, value in (refresh_s or {}).items():
            if key not in intervals:
                raise MonitorValueError(f"unknown refresh_s key {key!r}; "
                                        f"known: {sorted(intervals)}")
            intervals[key] = _check_interval(f"refresh_s[{key!r}]", value)
        self._profiles = frozenset(p.strip().lower() for p in power_saving_profiles)
        if not self._profiles:
            raise MonitorValueError("power_saving_profiles must name at least one platform_profile "
                                    "value, e.g. ('low-power',)")
        self._subprocess_timeout_s = _check_interval("subprocess_timeout_s",
                                                     subprocess_timeout_s)
        self._ppd_cmd = self._resolve_command(powerprofilesctl)
        self._ppd_proc: subprocess.Popen | None = None
        self._ppd_started_s = 0.0
        self._ppd_failures = 0
        self._ppd_cmd_profile: str | None = None

        # cached values (the defaults of the module docstring until a source answers)
        self._battery_pct = DEFAULT_BATTERY_PCT
        self._plugged = DEFAULT_PLUGGED
        self._system_power_saving: tuple[bool, str] | None = None
        self._cpu_load_pct = DEFAULT_CPU_LOAD_PCT
        self._cpu_freq_mhz = DEFAULT_CPU_FREQ_MHZ
        self._cpu_freq_max_mhz = DEFAULT_CPU_FREQ_MHZ
        self._temperature_c = DEFAULT_TEMPERATURE_C
        self._thermal_status = DEFAULT_THERMAL_STATUS
        self._zones: list[_ThermalZone] = []
        self._cpu_baseline: tuple[Any, Any] | None = None

        self._process = None
        try:
            self._process = self._ps.Process()
        except Exception as e:  # noqa: BLE001 - an unusable psutil must not stop the app
            self._log_once("process", logging.WARNING,
                           "psutil.Process() failed (%r): this process's own CPU use cannot be "
                           "subtracted from the CPU load", e)
        self._n_cores = self._core_count()

        with self._lock:
            now = self._clock()
            self._refresh = _Refresh(intervals, now)
            self._cpu_load_pct = self._initial_cpu_load()
            self._refresh_due(now)  # primes the CPU baseline and fills every cache

    # -- public --------------------------------------------------------------------------

    def read(self) -> PowerState:
        with self._lock:
            now = self._clock()
            self._refresh_due(now)
            power_saving, source = self._power_saving_decision()
            return PowerState(
                battery_pct=self._battery_pct,
                plugged=self._plugged,
                power_saving=power_saving,
                power_saving_source=source,
                cpu_load_pct=self._cpu_load_pct,
                cpu_freq_mhz=self._cpu_freq_mhz,
                cpu_freq_max_mhz=self._cpu_freq_max_mhz,
                temperature_c=self._temperature_c,
                thermal_status=self._thermal_status,
                timestamp_s=now,
            )

    def close(self) -> None:
        """Kill a running `powerprofilesctl` and do not start it again."""
        with self._lock:
            proc, self._ppd_proc, self._ppd_cmd = self._ppd_proc, None, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    # -- refresh scheduling ----------------------------------------------------------------

    def _refresh_due(self, now: float) -> None:
        r = self._refresh
        if r.due("cpu_load", now):
            self._guarded("cpu_load", self._sample_cpu_load)
        if r.due("cpu_freq", now):
            self._guarded("cpu_freq", self._read_cpu_freq)
        if r.due("battery", now):
            self._guarded("battery", self._read_battery)
        if r.due("power_saving", now):
            self._guarded("power_saving", self._read_system_power_saving)
        if self._ppd_cmd is not None:
            self._guarded("powerprofilesctl", self._poll_powerprofilesctl, now)
        if r.due("thermal_discovery", now):
            self._guarded("thermal_discovery", self._discover_thermal_zones)
        if r.due("thermal", now):
            self._guarded("thermal", self._read_thermal)

    def _guarded(self, source: str, read: Callable[..., None], *args: Any) -> None:
        """Each reader checks what it reads; this is the net under them, so that `read()` keeps
        its promise (never raises for sensor trouble) even for junk nobody foresaw."""
        try:
            read(*args)
        except Exception as e:  # noqa: BLE001 - the documented promise of read()
            self._log_once(f"guard-{source}", logging.WARNING,
                           "reading %s failed (%r); it keeps its last value", source, e)

    # -- power saving --------------------------------------------------------------------------

    def _power_saving_decision(self) -> tuple[bool, str]:
        if self._app_power_saving is not None:
            return self._app_power_saving, SOURCE_APP
        raw = self._environ.get(ENV_POWER_SAVING)
        env = parse_power_saving_env(raw)
        if env is not None:
            return env, SOURCE_ENV
        if raw is not None and raw.strip():
            self._log_once("env", logging.WARNING,
                           "%s=%r is not understood; use 1/true/yes/on or 0/false/no/off",
                           ENV_POWER_SAVING, raw)
        if self._system_power_saving is not None:
            return self._system_power_saving
        return DEFAULT_POWER_SAVING, SOURCE_NONE

    def _read_system_power_saving(self) -> None:
        answers: list[tuple[bool, str]] = []
        profiles = self._platform_profiles()
        if profiles:
            answers.append((any(p in self._profiles for p in profiles),
                            SOURCE_PLATFORM_PROFILE))
        ppd = self._ppd_profile()
        if ppd is not None:
            answers.append((ppd == "power-saver", SOURCE_PPD))
        saving = [a for a in answers if a[0]]
        self._system_power_saving = (saving or answers or [None])[0]

    # -- thermal (sysfs zones and psutil sensors) ------------------------------------------

    def _read_thermal(self) -> None:
        readings: list[tuple[str, float]] = []
        trip_status = ThermalStatus.NONE
        for zone in self._zones:
            temp_c = _valid_temperature(_millidegrees(_read_text(zone.temp_path)))
            if temp_c is None:
                continue
            readings.append((zone.name, temp_c))
            for trip_c, status in zone.trips:
                if temp_c >= trip_c:
                    trip_status = max(trip_status, status)
        readings += self._psutil_temperatures()
        if not readings:
            return  # keep the last good temperature (and status)
        cpu = [t for name, t in readings if _is_cpu_sensor(name)]
        self._temperature_c = max(cpu or [t for _, t in readings])
        self._thermal_status = max(self._thresholds.status_for(self._temperature_c),
                                   trip_status)
