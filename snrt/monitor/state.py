"""PowerState, its field checks, thermal thresholds and the defaults of the table in
`snrt.monitor`'s docstring: what every monitor shares."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..errors import SnrtError

ENV_POWER_SAVING = "SNRT_POWER_SAVING"

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


# --------------------------------------------------------------------------------------------
# argument checks shared by PowerState, the monitors and push()

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_float(value: Any) -> float | None:
    """`value` as a finite float, or None for anything else (None, bool, str, NaN, inf, an int
    too large for a float, an object whose conversion raises): sensors return such junk."""
    if not _is_number(value):
        return None
    try:
        f = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return f if math.isfinite(f) else None


def _check_float(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 allow_none: bool = False, lo_open: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if _finite_float(value) is None:
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
    if not _is_number(value) or (_finite_float(value) is None and value != math.inf) or value <= 0:
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
    temp_c = _finite_float(value)
    if temp_c is None or temp_c == 0.0:
        return None
    lo, hi = _VALID_TEMPERATURE_C
    return temp_c if lo < temp_c < hi else None


def _is_cpu_sensor(name: str) -> bool:
    name = name.strip().lower()
    return name in _CPU_SENSOR_NAMES or name.startswith("cpu")
