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

# One module per source; the public names are the same as before the split.
from .base import Monitor
from .pushed import PUSHABLE_FIELDS, PushMonitor
from .simulated import SimulatedClock, SimulatedMonitor
from .state import (
    DEFAULT_REFRESH_S,
    ENV_POWER_SAVING,
    MonitorValueError,
    PowerState,
    ThermalStatus,
    ThermalThresholds,
    other_process_load_pct,
    parse_power_saving_env,
)
from .system import SystemMonitor

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
