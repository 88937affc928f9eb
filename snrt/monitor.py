"""Monitor: what the device's power situation is right now, as one `PowerState`.

The controller calls `monitor.read()` between two frames and turns the state into a latency or
energy budget. Three monitors share the small `Monitor` API (`read`, `set_power_saving`,
`consume`, `close`):

- `SystemMonitor`: psutil and Linux sysfs, for laptops, single-board computers and Linux phones.
- `SimulatedMonitor`: deterministic scripts (battery drain by time or by reported energy,
  plug events, CPU-load / temperature / power-saving schedules) for tests, benchmarks and demos.
- `PushMonitor`: the app pushes its own readings (e.g. Android's battery and thermal status,
  forwarded by the app); what is not pushed, or pushed too long ago, comes from a fallback
  monitor or from the defaults below.

`read()` never raises because a sensor is missing or misbehaves: every field has a default.

Defaults when a source is absent or fails
-----------------------------------------
A source that worked once and then fails keeps its last good value (logged once); a source that
never worked gives the default below.

=====================  ======================================================  =============
field                  absent when                                             default
=====================  ======================================================  =============
battery_pct            no battery (desktop, container, VM); psutil has no      None
                       `sensors_battery`, returns None, or raises
plugged                as battery_pct, or psutil cannot tell (power_plugged    None
                       is None)
power_saving           no app flag, no `SNRT_POWER_SAVING`, no readable        False
                       platform_profile, no power-profiles-daemon
power_saving_source    as power_saving                                         "none"
cpu_load_pct           `cpu_times()` unavailable. Before the first full        0.0
                       sampling window (`refresh_s["cpu_load"]`, 0.5 s) it
                       is the 1-min load average / logical cores (clamped),
                       or 0.0 without `getloadavg`
cpu_freq_mhz           `cpu_freq()` missing, None, raises, or reports 0        None
cpu_freq_max_mhz       as cpu_freq_mhz (max is often 0 in containers/VMs)      None
temperature_c          `sensors_temperatures()` missing or {} and no readable  None
                       /sys/class/thermal zone; readings outside (-40, 150)
                       °C or exactly 0.0 (how absent sensors often read) are
                       ignored
thermal_status         no temperature and no crossed trip point                0 (NONE)
=====================  ======================================================  =============

A consumer should read `battery_pct is None` as "no battery to save" (mains power) and
`plugged is None` as "unknown".

Power saving (first that has an opinion wins)
---------------------------------------------
1. the app: `monitor.set_power_saving(True/False)`; `None` hands the decision back;
2. the environment: `SNRT_POWER_SAVING=1` (or true/yes/on) / `=0` (false/no/off);
3. the system: ACPI `platform_profile` (`/sys/firmware/acpi/platform_profile` and
   `/sys/class/platform-profile/*/profile`) equal to `low-power`, or power-profiles-daemon's
   profile `power-saver` (its state file `/var/lib/power-profiles-daemon/state.ini`; only when
   that file is absent, `powerprofilesctl get`, run in the background with a timeout and at
   most every 10 s). The state file holds the profile the user chose; temporary "holds"
   taken by other programs are only seen through `powerprofilesctl`.
   Any system source saying "saving" wins over one saying "not saving".

Thermal status (0..6 as Android's PowerManager.THERMAL_STATUS_NONE..SHUTDOWN)
-----------------------------------------------------------------------------
The highest of (a) `ThermalThresholds.status_for(temperature_c)` on the hottest CPU/SoC sensor
(defaults 75/85/90/95/100/105 °C for LIGHT..SHUTDOWN: die temperatures of laptop and phone
SoCs; tune them for your device, e.g. phones' skin-temperature policies are far lower), and
(b) the trip points of enabled `/sys/class/thermal/thermal_zone*` the zone has crossed:
`active` -> LIGHT (fans), `passive` -> MODERATE (the kernel throttles), `hot` -> CRITICAL,
`critical` -> SHUTDOWN (the kernel powers off).

CPU load
--------
`cpu_load_pct` is the load of the *other* processes, 0..100 of the whole machine: the busy share
of all CPUs' time minus this process's share of it, both taken from `cpu_times()` deltas over
the same window. That is `psutil.cpu_percent()` minus `Process().cpu_percent() / cores`, but
with the monitor's own baselines: psutil keeps `cpu_percent()`'s baseline per calling thread and
shares it with any other code calling it, so whoever calls it would change our window.

Cost and threads
----------------
`read()` takes one lock and returns cached values; each slow source is re-read at most every
`refresh_s[source]` seconds (`DEFAULT_REFRESH_S`), in the calling thread, except
`powerprofilesctl` which runs as a child process polled without waiting. All monitors are safe
to call from several threads.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import math
import os
import shutil
import subprocess
import threading
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SnrtError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
_UNAVAILABLE = object()  # a psutil function this platform lacks, or one that raised

__all__ = [
    "DEFAULT_REFRESH_S",
    "ENV_POWER_SAVING",
    "PUSHABLE_FIELDS",
    "Monitor",
    "MonitorValueError",
    "PowerState",
    "PushMonitor",
    "SimulatedClock",
    "SimulatedMonitor",
    "SystemMonitor",
    "ThermalStatus",
    "ThermalThresholds",
    "other_process_load_pct",
    "parse_power_saving_env",
]

ENV_POWER_SAVING = "SNRT_POWER_SAVING"
PPD_STATE_PATH = "/var/lib/power-profiles-daemon/state.ini"

# power_saving_source values
SOURCE_APP = "app"
SOURCE_ENV = "env"
SOURCE_PLATFORM_PROFILE = "platform_profile"
SOURCE_PPD = "power-profiles-daemon"
SOURCE_SIMULATED = "simulated"
SOURCE_PUSH = "push"
SOURCE_NONE = "none"

# Defaults of the table in the module docstring.
DEFAULT_BATTERY_PCT: float | None = None
DEFAULT_PLUGGED: bool | None = None
DEFAULT_POWER_SAVING = False
DEFAULT_CPU_LOAD_PCT = 0.0
DEFAULT_CPU_FREQ_MHZ: float | None = None
DEFAULT_TEMPERATURE_C: float | None = None
DEFAULT_THERMAL_STATUS = 0

# Minimum seconds between two reads of each slow source (SystemMonitor's `refresh_s`).
DEFAULT_REFRESH_S: Mapping[str, float] = types.MappingProxyType({
    "cpu_load": 0.5,  # the sampling window; shorter windows are noisy (100 Hz tick counters)
    "cpu_freq": 1.0,
    "battery": 1.0,
    "power_saving": 1.0,  # platform_profile and the power-profiles-daemon state file
    "thermal": 1.0,
    "thermal_discovery": 60.0,  # re-list thermal zones and their trip points
    "powerprofilesctl": 10.0,  # a Python process each time: keep it rare
})

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# Sensor (psutil chip) and thermal-zone names taken to be the CPU/SoC; when none is present the
# hottest of all readings is used.
_CPU_SENSOR_NAMES = frozenset({
    "coretemp", "k10temp", "zenpower", "x86_pkg_temp", "tcpu", "b0d4", "soc_thermal",
    "soc-thermal", "soc",
})
_VALID_TEMPERATURE_C = (-40.0, 150.0)  # open interval; outside it a sensor is broken or absent


class MonitorValueError(SnrtError, ValueError):
    """An argument of a monitor, or a PowerState field, is out of range or of the wrong type."""


class ThermalStatus(IntEnum):
    """Android PowerManager's THERMAL_STATUS_* values; `PowerState.thermal_status` uses them."""

    NONE = 0
    LIGHT = 1
    MODERATE = 2
    SEVERE = 3
    CRITICAL = 4
    EMERGENCY = 5
    SHUTDOWN = 6


_TRIP_STATUS = {
    "active": ThermalStatus.LIGHT,
    "passive": ThermalStatus.MODERATE,
    "hot": ThermalStatus.CRITICAL,
    "critical": ThermalStatus.SHUTDOWN,
}


# --------------------------------------------------------------------------------------------
# argument checks shared by PowerState, the monitors and push()

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_float(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 allow_none: bool = False, lo_open: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not _is_number(value) or not math.isfinite(value):
        or_none = " or None" if allow_none else ""
        raise MonitorValueError(f"{name} must be a finite number{or_none}, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise MonitorValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise MonitorValueError(f"{name} must be <= {hi}, got {value!r}")
    return float(value)


def _check_bool(name: str, value: Any, *, allow_none: bool = False) -> bool | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        or_none = " or None" if allow_none else ""
        raise MonitorValueError(f"{name} must be True or False{or_none}, got {value!r}")
    return value


def _check_status(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 6:
        raise MonitorValueError(f"{name} must be an int 0..6 (ThermalStatus.NONE..SHUTDOWN), "
                                f"got {value!r}")
    return int(value)


def _check_interval(name: str, value: Any) -> float:
    if not _is_number(value) or math.isnan(value) or value <= 0:
        raise MonitorValueError(f"{name} must be a number of seconds > 0 (math.inf for never), "
                                f"got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# PowerState

@dataclass(frozen=True)
class PowerState:
    """The device's power situation at `timestamp_s`. Validated on construction.

    `timestamp_s` is on the monitor's clock (`time.monotonic` for the real monitors, simulated
    seconds for `SimulatedMonitor`), so compare it only with times from the same monitor.
    """

    # battery
    battery_pct: float | None  # 0..100; None: no battery
    plugged: bool | None  # on mains power; None: unknown
    # power-saving mode
    power_saving: bool
    power_saving_source: str  # "app", "env", "platform_profile", "power-profiles-daemon", ...
    # CPU
    cpu_load_pct: float  # load from OTHER processes, 0..100 of the whole machine
    cpu_freq_mhz: float | None
    cpu_freq_max_mhz: float | None
    # heat
    temperature_c: float | None  # hottest CPU/SoC sensor
    thermal_status: int  # ThermalStatus 0..6
    timestamp_s: float

    def __post_init__(self) -> None:
        checked = {
            "battery_pct": _check_float("battery_pct", self.battery_pct, lo=0.0, hi=100.0,
                                        allow_none=True),
            "plugged": _check_bool("plugged", self.plugged, allow_none=True),
            "power_saving": _check_bool("power_saving", self.power_saving),
            "cpu_load_pct": _check_float("cpu_load_pct", self.cpu_load_pct, lo=0.0, hi=100.0),
            "cpu_freq_mhz": _check_float("cpu_freq_mhz", self.cpu_freq_mhz, lo=0.0,
                                         lo_open=True, allow_none=True),
            "cpu_freq_max_mhz": _check_float("cpu_freq_max_mhz", self.cpu_freq_max_mhz, lo=0.0,
                                             lo_open=True, allow_none=True),
            "temperature_c": _check_float("temperature_c", self.temperature_c,
                                          allow_none=True),
            "thermal_status": _check_status("thermal_status", self.thermal_status),
            "timestamp_s": _check_float("timestamp_s", self.timestamp_s),
        }
        if not isinstance(self.power_saving_source, str) or not self.power_saving_source:
            raise MonitorValueError("power_saving_source must be a non-empty string such as "
                                    f"'app' or 'none', got {self.power_saving_source!r}")
        for name, value in checked.items():  # ints from JSON become floats, IntEnum -> int
            object.__setattr__(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (`json.dumps(state.to_json())`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PowerState:
        """The inverse of `to_json`; raises ValueError naming missing or unknown keys."""
        if not isinstance(data, Mapping):
            raise MonitorValueError(f"PowerState.from_json needs a dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise MonitorValueError(f"not a PowerState: missing keys {missing}, unknown keys "
                                    f"{unknown}; expected exactly {names}")
        return cls(**{n: data[n] for n in names})


# --------------------------------------------------------------------------------------------
# pure policy helpers

@dataclass(frozen=True)
class ThermalThresholds:
    """Temperatures (°C, inclusive) at which each ThermalStatus starts. Non-decreasing.

    The defaults suit CPU/SoC die sensors of laptops and phones; set your own for other
    sensors (e.g. `ThermalThresholds(light_c=40, moderate_c=43, ...)` for skin temperature).
    """

    light_c: float = 75.0
    moderate_c: float = 85.0
    severe_c: float = 90.0
    critical_c: float = 95.0
    emergency_c: float = 100.0
    shutdown_c: float = 105.0

    def __post_init__(self) -> None:
        values = self.as_tuple()
        for f, v in zip(dataclasses.fields(self), values):
            _check_float(f"ThermalThresholds.{f.name}", v)
        if any(b < a for a, b in itertools.pairwise(values)):
            raise MonitorValueError("ThermalThresholds must be non-decreasing from light_c to "
                                    f"shutdown_c, got {values}")

    def as_tuple(self) -> tuple[float, ...]:
        """(light_c, moderate_c, severe_c, critical_c, emergency_c, shutdown_c)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def status_for(self, temperature_c: float | None) -> int:
        """The ThermalStatus (0..6) for a temperature; NONE for None (no sensor)."""
        if temperature_c is None or not math.isfinite(temperature_c):
            return int(ThermalStatus.NONE)
        return bisect.bisect_right(self.as_tuple(), temperature_c)


def other_process_load_pct(system_busy_pct: float, process_pct_per_core: float,
                           n_cores: int) -> float:
    """CPU load of the other processes, 0..100 of the whole machine.

    `system_busy_pct` is psutil.cpu_percent()'s whole-machine busy %; `process_pct_per_core` is
    Process.cpu_percent()'s per-core % (up to 100 × cores) of this process.
    """
    if n_cores < 1:
        raise MonitorValueError(f"n_cores must be >= 1, got {n_cores!r}")
    return min(100.0, max(0.0, system_busy_pct - process_pct_per_core / n_cores))


def parse_power_saving_env(value: str | None) -> bool | None:
    """`SNRT_POWER_SAVING`'s meaning: True, False, or None (unset, empty or unrecognised)."""
    if value is None:
        return None
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def _valid_temperature(value: Any) -> float | None:
    if not _is_number(value) or not math.isfinite(value) or value == 0.0:
        return None
    lo, hi = _VALID_TEMPERATURE_C
    return float(value) if lo < value < hi else None


def _is_cpu_sensor(name: str) -> bool:
    name = name.strip().lower()
    return name in _CPU_SENSOR_NAMES or name.startswith("cpu")


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Monitor base


class Monitor(ABC):
    """What every monitor offers: `read()`, an app power-saving flag, and `consume()`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._app_power_saving: bool | None = None
        self._logged: set[str] = set()

    @abstractmethod
    def read(self) -> PowerState:
        """The current PowerState. Cheap, thread-safe, never raises for sensor trouble."""

    def set_power_saving(self, enabled: bool | None) -> None:
        """The app's own power-saving flag; it overrides every other source. None clears it."""
        enabled = _check_bool("enabled", enabled, allow_none=True)
        with self._lock:
            self._app_power_saving = enabled

    def consume(self, joules: float) -> None:
        """Report energy the app spent (e.g. per frame). Real monitors measure the battery
        themselves and ignore it; SimulatedMonitor drains its battery with it."""
        _check_float("joules", joules, lo=0.0)

    def close(self) -> None:
        """Release what the monitor holds (child processes). Reading after close is allowed."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_once(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log a sensor problem once at `level`, afterwards at DEBUG (read() runs per frame)."""
        if key in self._logged:
            log.debug(msg, *args)
        else:
            self._logged.add(key)
            log.log(level, msg, *args)


# --------------------------------------------------------------------------------------------
# SystemMonitor

@dataclass(frozen=True)
class _ThermalZone:
    name: str  # the zone's `type`, e.g. "x86_pkg_temp", "cpu0-thermal", "acpitz"
    temp_path: Path
    trips: tuple[tuple[float, int], ...]  # (temperature °C, ThermalStatus)


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


class SystemMonitor(Monitor):
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
            self._sample_cpu_load()
        if r.due("cpu_freq", now):
            self._read_cpu_freq()
        if r.due("battery", now):
            self._read_battery()
        if r.due("power_saving", now):
            self._read_system_power_saving()
        if self._ppd_cmd is not None:
            self._poll_powerprofilesctl(now)
        if r.due("thermal_discovery", now):
            self._discover_thermal_zones()
        if r.due("thermal", now):
            self._read_thermal()

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

    def _platform_profiles(self) -> list[str]:
        paths = [self._root / "firmware" / "acpi" / "platform_profile"]
        class_dir = self._root / "class" / "platform-profile"
        if class_dir.is_dir():  # Linux >= 6.14: one directory per profile handler
            paths += sorted(class_dir.glob("*/profile"))
        values = (_read_text(p) for p in paths)
        return [v.lower() for v in values if v]

    def _ppd_profile(self) -> str | None:
        """power-profiles-daemon's profile: its state file, else the last powerprofilesctl."""
        if self._ppd_state_path is not None:
            text = _read_text(self._ppd_state_path)
            if text is not None:
                return _parse_ppd_state(text)
        return self._ppd_cmd_profile

    # -- powerprofilesctl (child process, never waited for) ----------------------------------

    @staticmethod
    def _resolve_command(command: Sequence[str] | None) -> list[str] | None:
        if command is None:
            return None
        if isinstance(command, str) or not command or not all(isinstance(c, str)
                                                              for c in command):
            raise MonitorValueError("powerprofilesctl must be a list of strings such as "
                                    f"['powerprofilesctl', 'get'], or None; got {command!r}")
        path = shutil.which(command[0])
        if path is None:
            log.debug("%s not found; power-profiles-daemon is read from its state file only",
                      command[0])
            return None
        return [path, *command[1:]]

    def _poll_powerprofilesctl(self, now: float) -> None:
        proc = self._ppd_proc
        if proc is None:
            if not self._refresh.due("powerprofilesctl", now):
                return
            if self._ppd_state_path is not None and self._ppd_state_path.exists():
                return  # the cheap source is there
            self._start_powerprofilesctl(now)
            return
        if proc.poll() is None:
            if now - self._ppd_started_s > self._subprocess_timeout_s:
                proc.kill()
                proc.wait()
                self._ppd_proc = None
                self._ppd_failed(f"timed out after {self._subprocess_timeout_s:g} s")
            return
        out, _ = proc.communicate()
        self._ppd_proc = None
        profile = out.strip().lower() if isinstance(out, str) else ""
        if proc.returncode != 0 or not profile:
            self._ppd_failed(f"exit code {proc.returncode}")
            return
        self._ppd_failures = 0
        self._ppd_cmd_profile = profile
        self._read_system_power_saving()  # apply the answer now, not at the next refresh

    def _start_powerprofilesctl(self, now: float) -> None:
        try:
            self._ppd_proc = subprocess.Popen(
                self._ppd_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
            self._ppd_started_s = now
        except OSError as e:
            self._ppd_failed(repr(e))

    def _ppd_failed(self, why: str) -> None:
        self._ppd_failures += 1
        if self._ppd_failures >= 3:
            log.info("%s failed 3 times in a row (%s); not running it again",
                     self._ppd_cmd[0], why)
            self._ppd_cmd = None
        else:
            log.debug("%s failed (%s)", self._ppd_cmd[0], why)

    # -- thermal -------------------------------------------------------------------------------

    def _discover_thermal_zones(self) -> None:
        zones = []
        for zone_dir in sorted((self._root / "class" / "thermal").glob("thermal_zone*")):
            name = _read_text(zone_dir / "type") or zone_dir.name
            trips: list[tuple[float, int]] = []
            if (_read_text(zone_dir / "mode") or "enabled") != "disabled":
                for temp_path in sorted(zone_dir.glob("trip_point_*_temp")):
                    kind = _read_text(Path(str(temp_path)[: -len("_temp")] + "_type"))
                    trip_c = _millidegrees(_read_text(temp_path))
                    status = _TRIP_STATUS.get((kind or "").lower())
                    if trip_c is not None and trip_c > 0 and status is not None:
                        trips.append((trip_c, status))
            zones.append(_ThermalZone(name, zone_dir / "temp", tuple(trips)))
        self._zones = zones

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


def _millidegrees(text: str | None) -> float | None:
    try:
        return int(text) / 1000.0 if text else None
    except ValueError:
        return None


def _parse_ppd_state(text: str) -> str | None:
    """`Profile=` of the `[State]` group of power-profiles-daemon's state.ini."""
    group = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group == "State" and line.startswith("Profile") and "=" in line:
            key, value = line.split("=", 1)
            if key.strip() == "Profile":
                return value.strip().lower() or None
    return None


# --------------------------------------------------------------------------------------------
# SimulatedMonitor

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


# --------------------------------------------------------------------------------------------
# PushMonitor

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
