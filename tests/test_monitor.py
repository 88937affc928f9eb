"""Monitor tests: fake psutil and a fake sysfs tree (tmp_path) so that each sensor situation of
the module docstring's table is exercised, plus one check on this machine's real sensors."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from snrt.monitor import (
    ENV_POWER_SAVING,
    MonitorValueError,
    PowerState,
    PushMonitor,
    SimulatedClock,
    SimulatedMonitor,
    SystemMonitor,
    ThermalStatus,
    ThermalThresholds,
    other_process_load_pct,
    parse_power_saving_env,
)

CpuTimes = namedtuple("CpuTimes",
                      "user nice system idle iowait irq softirq steal guest guest_nice")
ProcTimes = namedtuple("ProcTimes", "user system children_user children_system iowait")
Battery = namedtuple("Battery", "percent secsleft power_plugged")
Freq = namedtuple("Freq", "current min max")
Temp = namedtuple("Temp", "label current high critical")


class FakeProcess:
    def __init__(self) -> None:
        self.times = ProcTimes(0.0, 0.0, 0.0, 0.0, 0.0)

    def cpu_times(self) -> ProcTimes:
        return self.times


class FakePsutil:
    """The psutil functions SystemMonitor uses, as instance attributes so a test can delete one
    (a psutil build without it) or make one raise."""

    def __init__(self, n_cores: int = 4) -> None:
        self.n_cores = n_cores
        self.system = CpuTimes(*[0.0] * 10)
        self.process = FakeProcess()
        self.cpu_times_calls = 0
        self.loadavg = (0.0, 0.0, 0.0)
        self.battery: object = None
        self.freq: object = None
        self.temps: object = {}

        def cpu_times():
            self.cpu_times_calls += 1
            return self.system

        self.cpu_times = cpu_times
        self.Process = lambda: self.process
        self.cpu_count = lambda: self.n_cores
        self.getloadavg = lambda: self.loadavg
        self.sensors_battery = lambda: self._value(self.battery)
        self.cpu_freq = lambda: self._value(self.freq)
        self.sensors_temperatures = lambda: self._value(self.temps)

    @staticmethod
    def _value(value):
        if isinstance(value, Exception):
            raise value
        return value

    def spend(self, wall_s: float, busy_cores: float, own_cores: float = 0.0) -> None:
        """`wall_s` seconds pass with `busy_cores` cores busy, `own_cores` of them ours."""
        s = self.system
        busy_s, total_s = busy_cores * wall_s, self.n_cores * wall_s
        self.system = s._replace(user=s.user + busy_s, idle=s.idle + total_s - busy_s)
        p = self.process.times
        self.process.times = p._replace(user=p.user + own_cores * wall_s)


def system_monitor(tmp_path: Path, ps: FakePsutil | None = None, **kw) -> SystemMonitor:
    """A SystemMonitor on fakes only: empty fake sysfs, no ppd, no env var, manual clock."""
    kw.setdefault("clock", SimulatedClock())
    kw.setdefault("environ", {})
    kw.setdefault("ppd_state_path", tmp_path / "no-ppd-state.ini")
    kw.setdefault("powerprofilesctl", None)
    sysfs = tmp_path / "sys"
    sysfs.mkdir(exist_ok=True)
    return SystemMonitor(psutil_module=ps or FakePsutil(), sysfs_root=sysfs, **kw)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# PowerState

def make_state(**kw) -> PowerState:
    fields = {"battery_pct": 55.0, "plugged": False, "power_saving": True,
              "power_saving_source": "platform_profile", "cpu_load_pct": 12.5,
              "cpu_freq_mhz": 1800.0, "cpu_freq_max_mhz": 3200.0, "temperature_c": 61.0,
              "thermal_status": 1, "timestamp_s": 12.0}
    fields.update(kw)
    return PowerState(**fields)


def test_power_state_json_round_trip():
    state = make_state()
    text = json.dumps(state.to_json())
    assert PowerState.from_json(json.loads(text)) == state
    nones = make_state(battery_pct=None, plugged=None, cpu_freq_mhz=None,
                       cpu_freq_max_mhz=None, temperature_c=None)
    assert PowerState.from_json(json.loads(json.dumps(nones.to_json()))) == nones


def test_power_state_from_json_names_bad_keys():
    data = make_state().to_json()
    del data["plugged"]
    data["battery_percent"] = 3
    with pytest.raises(ValueError, match=r"missing keys \['plugged'\].*battery_percent"):
        PowerState.from_json(data)


def test_power_state_coerces_json_ints_and_enum():
    state = make_state(battery_pct=50, cpu_load_pct=0, thermal_status=ThermalStatus.SEVERE)
    assert isinstance(state.battery_pct, float) and isinstance(state.cpu_load_pct, float)
    assert type(state.thermal_status) is int and state.thermal_status == 3


@pytest.mark.parametrize("field, value", [
    ("battery_pct", 101.0), ("battery_pct", -1), ("cpu_load_pct", math.nan),
    ("thermal_status", 7), ("thermal_status", True), ("plugged", 1), ("power_saving", None),
    ("cpu_freq_mhz", 0.0), ("power_saving_source", ""), ("timestamp_s", math.inf),
])
def test_power_state_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        make_state(**{field: value})


# --------------------------------------------------------------------------------------------
# SystemMonitor on a machine without sensors

def test_sensor_absent_machine_gives_documented_defaults(tmp_path):
    ps = FakePsutil()
    ps.battery, ps.freq, ps.temps = None, None, {}
    state = system_monitor(tmp_path, ps).read()
    assert state.battery_pct is None and state.plugged is None
    assert (state.power_saving, state.power_saving_source) == (False, "none")
    assert state.cpu_freq_mhz is None and state.cpu_freq_max_mhz is None
    assert state.temperature_c is None and state.thermal_status == 0
    assert state.cpu_load_pct == 0.0


@pytest.mark.parametrize("missing", ["sensors_battery", "cpu_freq", "sensors_temperatures",
                                     "getloadavg"])
def test_psutil_without_a_function_still_reads(tmp_path, missing):
    ps = FakePsutil()
    ps.battery = Battery(80.0, 3600, False)
    ps.freq = Freq(1500.0, 400.0, 3000.0)
    ps.temps = {"coretemp": [Temp("Package id 0", 50.0, 80.0, 100.0)]}
    delattr(ps, missing)
    state = system_monitor(tmp_path, ps).read()
    assert (state.battery_pct is None) == (missing == "sensors_battery")
    assert (state.cpu_freq_mhz is None) == (missing == "cpu_freq")
    assert (state.temperature_c is None) == (missing == "sensors_temperatures")


def test_sensors_that_raise_give_defaults_and_log_once(tmp_path, caplog):
    ps = FakePsutil()
    ps.battery = RuntimeError("no /sys/class/power_supply")
    ps.freq = NotImplementedError("no cpufreq")
    ps.temps = OSError("hwmon gone")
    clock = SimulatedClock()
    with caplog.at_level(logging.DEBUG, logger="snrt.monitor"):
        monitor = system_monitor(tmp_path, ps, clock=clock)
        for _ in range(5):
            clock.advance(2.0)
            state = monitor.read()
    assert state.battery_pct is None and state.plugged is None
    assert state.cpu_freq_mhz is None and state.temperature_c is None
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG
                   and "sensors_battery" in r.getMessage()]
    assert len(above_debug) == 1  # per frame would flood the log


def test_battery_failure_keeps_last_good_value(tmp_path):
    ps = FakePsutil()
    ps.battery = Battery(42.4, 100, True)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock)
    assert (monitor.read().battery_pct, monitor.read().plugged) == (42.4, True)
    ps.battery = RuntimeError("transient")
    clock.advance(5.0)
    assert monitor.read().battery_pct == 42.4
    ps.battery = None  # battery removed: None is an answer, not a failure
    clock.advance(5.0)
    assert monitor.read().battery_pct is None


def test_battery_plugged_unknown_and_percent_clamped(tmp_path):
    ps = FakePsutil()
    ps.battery = Battery(100.7, -2, None)  # some firmwares overshoot 100
    state = system_monitor(tmp_path, ps).read()
    assert state.battery_pct == 100.0 and state.plugged is None


@pytest.mark.parametrize("freq, current, maximum", [
    (None, None, None),
    (Freq(0.0, 0.0, 0.0), None, None),
    (Freq(2445.4, 0.0, 0.0), 2445.4, None),  # what this container reports
    (Freq(1200.0, 400.0, 3600.0), 1200.0, 3600.0),
])
def test_cpu_freq_none_and_zero(tmp_path, freq, current, maximum):
    ps = FakePsutil()
    ps.freq = freq
    state = system_monitor(tmp_path, ps).read()
    assert (state.cpu_freq_mhz, state.cpu_freq_max_mhz) == (current, maximum)


# --------------------------------------------------------------------------------------------
# CPU load

def test_cpu_baseline_primed_at_construction(tmp_path):
    ps = FakePsutil(n_cores=4)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock)
    assert ps.cpu_times_calls == 1  # the baseline
    ps.spend(1.0, busy_cores=2.0)
    clock.advance(1.0)
    # without a baseline from the constructor this first read would be a meaningless 0.0
    assert monitor.read().cpu_load_pct == pytest.approx(50.0)


def test_cpu_load_before_first_window_uses_load_average(tmp_path):
    ps = FakePsutil(n_cores=4)
    ps.loadavg = (3.0, 1.0, 1.0)
    monitor = system_monitor(tmp_path, ps)
    assert monitor.read().cpu_load_pct == pytest.approx(75.0)
    ps.loadavg = (9.0, 1.0, 1.0)
    assert system_monitor(tmp_path, ps).read().cpu_load_pct == 100.0


def test_cpu_load_subtracts_this_process(tmp_path):
    ps = FakePsutil(n_cores=4)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock)
    # 3 of 4 cores busy (75 %), 2 of them ours: the others use 1 core = 25 % of the machine
    ps.spend(1.0, busy_cores=3.0, own_cores=2.0)
    clock.advance(1.0)
    assert monitor.read().cpu_load_pct == pytest.approx(25.0)
    # the same through psutil's percentages: 75 % busy, process at 200 % (per-core)
    assert other_process_load_pct(75.0, 200.0, 4) == pytest.approx(25.0)


def test_cpu_load_is_clamped_and_skips_backwards_counters(tmp_path):
    ps = FakePsutil(n_cores=2)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock)
    ps.spend(1.0, busy_cores=1.0, own_cores=1.5)  # process clock a bit ahead of /proc/stat
    clock.advance(1.0)
    assert monitor.read().cpu_load_pct == 0.0
    ps.spend(1.0, busy_cores=1.0)
    clock.advance(1.0)
    assert monitor.read().cpu_load_pct == pytest.approx(50.0)
    ps.system = CpuTimes(*[0.0] * 10)  # counters reset (VM migration)
    clock.advance(1.0)
    assert monitor.read().cpu_load_pct == pytest.approx(50.0)  # kept


def test_cpu_load_sampled_at_most_every_refresh_interval(tmp_path):
    ps = FakePsutil(n_cores=2)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock, refresh_s={"cpu_load": 0.5})
    calls = ps.cpu_times_calls
    for _ in range(10):
        clock.advance(0.04)  # 10 frames in 0.4 s
        monitor.read()
    assert ps.cpu_times_calls == calls
    clock.advance(0.1)
    monitor.read()
    assert ps.cpu_times_calls == calls + 1


@pytest.mark.parametrize("busy, own, cores, expected", [
    (50.0, 100.0, 4, 25.0), (10.0, 400.0, 4, 0.0), (100.0, 0.0, 8, 100.0), (30.0, 30.0, 1, 0.0),
])
def test_other_process_load_pct(busy, own, cores, expected):
    assert other_process_load_pct(busy, own, cores) == pytest.approx(expected)


def test_other_process_load_pct_rejects_zero_cores():
    with pytest.raises(ValueError, match="n_cores"):
        other_process_load_pct(10.0, 0.0, 0)


# --------------------------------------------------------------------------------------------
# power saving

@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), (" YES ", True), ("on", True), ("0", False), ("false", False),
    ("off", False), ("", None), (None, None), ("maybe", None),
])
def test_parse_power_saving_env(value, expected):
    assert parse_power_saving_env(value) is expected


@pytest.mark.parametrize("profile, expected", [
    ("low-power\n", (True, "platform_profile")),
    ("balanced\n", (False, "platform_profile")),
    ("performance", (False, "platform_profile")),
])
def test_acpi_platform_profile(tmp_path, profile, expected):
    write(tmp_path / "sys/firmware/acpi/platform_profile", profile)
    state = system_monitor(tmp_path).read()
    assert (state.power_saving, state.power_saving_source) == expected


def test_platform_profile_class_directory(tmp_path):
    write(tmp_path / "sys/class/platform-profile/platform-profile-0/profile", "balanced\n")
    write(tmp_path / "sys/class/platform-profile/platform-profile-1/profile", "low-power\n")
    state = system_monitor(tmp_path).read()
    assert (state.power_saving, state.power_saving_source) == (True, "platform_profile")


def test_platform_profile_is_cached_then_refreshed(tmp_path):
    path = tmp_path / "sys/firmware/acpi/platform_profile"
    write(path, "balanced\n")
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, clock=clock, refresh_s={"power_saving": 1.0})
    assert monitor.read().power_saving is False
    path.write_text("low-power\n")
    clock.advance(0.5)
    assert monitor.read().power_saving is False  # cached
    clock.advance(0.5)
    assert monitor.read().power_saving is True


def test_env_var_and_app_flag_priority(tmp_path):
    write(tmp_path / "sys/firmware/acpi/platform_profile", "low-power\n")
    env = {ENV_POWER_SAVING: "0"}
    monitor = system_monitor(tmp_path, environ=env)
    state = monitor.read()
    assert (state.power_saving, state.power_saving_source) == (False, "env")
    env[ENV_POWER_SAVING] = "1"
    assert monitor.read().power_saving is True  # the environment is read on every call
    monitor.set_power_saving(False)
    state = monitor.read()
    assert (state.power_saving, state.power_saving_source) == (False, "app")
    monitor.set_power_saving(None)
    assert monitor.read().power_saving_source == "env"
    del env[ENV_POWER_SAVING]
    assert monitor.read().power_saving_source == "platform_profile"


def test_unrecognised_env_value_is_ignored_with_a_warning(tmp_path, caplog):
    monitor = system_monitor(tmp_path, environ={ENV_POWER_SAVING: "sometimes"})
    with caplog.at_level(logging.WARNING, logger="snrt.monitor"):
        state = monitor.read()
        monitor.read()
    assert (state.power_saving, state.power_saving_source) == (False, "none")
    assert len([r for r in caplog.records if ENV_POWER_SAVING in r.getMessage()]) == 1


def test_set_power_saving_rejects_non_bool(tmp_path):
    with pytest.raises(ValueError, match="True or False"):
        system_monitor(tmp_path).set_power_saving("yes")


@pytest.mark.parametrize("profile, expected", [("power-saver", True), ("balanced", False)])
def test_power_profiles_daemon_state_file(tmp_path, profile, expected):
    state_file = tmp_path / "state.ini"
    write(state_file, f"[State]\nCpuDriver=intel_pstate\nPlatformDriver=platform_profile\n"
                      f"Profile={profile}\n")
    state = system_monitor(tmp_path, ppd_state_path=state_file).read()
    assert (state.power_saving, state.power_saving_source) == (expected, "power-profiles-daemon")


def test_any_system_source_saying_saving_wins(tmp_path):
    write(tmp_path / "sys/firmware/acpi/platform_profile", "balanced\n")
    state_file = tmp_path / "state.ini"
    write(state_file, "[State]\nProfile=power-saver\n")
    state = system_monitor(tmp_path, ppd_state_path=state_file).read()
    assert (state.power_saving, state.power_saving_source) == (True, "power-profiles-daemon")


def fake_command(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-powerprofilesctl"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as fake command")
def test_powerprofilesctl_runs_in_background(tmp_path):
    cmd = fake_command(tmp_path, "echo power-saver")
    with system_monitor(tmp_path, clock=time.monotonic, powerprofilesctl=[cmd]) as monitor:
        deadline = time.monotonic() + 10.0
        state = monitor.read()
        while state.power_saving_source != "power-profiles-daemon" and time.monotonic() < deadline:
            time.sleep(0.01)
            state = monitor.read()
    assert (state.power_saving, state.power_saving_source) == (True, "power-profiles-daemon")


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as fake command")
def test_hanging_powerprofilesctl_never_blocks_and_is_killed(tmp_path):
    cmd = fake_command(tmp_path, "exec sleep 30")
    monitor = system_monitor(tmp_path, clock=time.monotonic, powerprofilesctl=[cmd],
                             subprocess_timeout_s=0.2)
    proc = monitor._ppd_proc
    assert proc is not None and proc.poll() is None
    slowest_s, t_end = 0.0, time.monotonic() + 0.6
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        state = monitor.read()
        slowest_s = max(slowest_s, time.perf_counter() - t0)
        time.sleep(0.01)
    assert slowest_s < 0.1
    assert proc.poll() is not None  # killed after the timeout
    assert (state.power_saving, state.power_saving_source) == (False, "none")
    monitor.close()


def test_state_file_is_preferred_over_powerprofilesctl(tmp_path):
    state_file = tmp_path / "state.ini"
    write(state_file, "[State]\nProfile=balanced\n")
    cmd = fake_command(tmp_path, "echo power-saver")
    monitor = system_monitor(tmp_path, ppd_state_path=state_file, powerprofilesctl=[cmd])
    assert monitor._ppd_proc is None
    assert monitor.read().power_saving is False


def test_bad_constructor_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown refresh_s key 'batery'.*battery"):
        system_monitor(tmp_path, refresh_s={"batery": 1.0})
    with pytest.raises(ValueError, match="> 0"):
        system_monitor(tmp_path, refresh_s={"battery": 0})
    with pytest.raises(ValueError, match="list of strings"):
        system_monitor(tmp_path, powerprofilesctl="powerprofilesctl get")
    with pytest.raises(ValueError, match="ThermalThresholds"):
        system_monitor(tmp_path, thermal_thresholds=(70, 80))
    with pytest.raises(MonitorValueError):
        system_monitor(tmp_path, power_saving_profiles=())


# --------------------------------------------------------------------------------------------
# thermal

@pytest.mark.parametrize("temperature_c, status", [
    (None, 0), (20.0, 0), (74.9, 0), (75.0, 1), (84.9, 1), (85.0, 2), (90.0, 3), (95.0, 4),
    (100.0, 5), (105.0, 6), (300.0, 6),
])
def test_default_thermal_thresholds(temperature_c, status):
    assert ThermalThresholds().status_for(temperature_c) == status


def test_custom_thermal_thresholds():
    skin = ThermalThresholds(light_c=39, moderate_c=41, severe_c=43, critical_c=45,
                             emergency_c=47, shutdown_c=50)
    assert skin.status_for(42.0) == ThermalStatus.MODERATE
    same = ThermalThresholds(light_c=70, moderate_c=80, severe_c=80, critical_c=95,
                             emergency_c=100, shutdown_c=105)
    assert same.status_for(80.0) == ThermalStatus.SEVERE  # equal thresholds: higher level
    with pytest.raises(ValueError, match="non-decreasing"):
        ThermalThresholds(light_c=90, moderate_c=80)
    with pytest.raises(ValueError, match="finite"):
        ThermalThresholds(light_c=math.nan)


def test_psutil_temperature_prefers_cpu_sensor(tmp_path):
    ps = FakePsutil()
    ps.temps = {
        "nvme": [Temp("Composite", 96.0, 80.0, 90.0)],
        "coretemp": [Temp("Package id 0", 88.0, 100.0, 100.0), Temp("Core 0", 86.0, 100, 100)],
        "acpitz": [Temp("", 0.0, None, None)],  # absent sensors often read 0
    }
    state = system_monitor(tmp_path, ps).read()
    assert state.temperature_c == 88.0
    assert state.thermal_status == ThermalStatus.MODERATE


def test_psutil_temperature_without_cpu_sensor_uses_hottest(tmp_path):
    ps = FakePsutil()
    ps.temps = {"acpitz": [Temp("", 45.0, None, None)], "pch": [Temp("", 61.0, None, None)],
                "broken": [Temp("", 255.0, None, None)]}
    assert system_monitor(tmp_path, ps).read().temperature_c == 61.0


def make_zone(root: Path, i: int, kind: str, temp_mc: int, trips=(), mode: str | None = None):
    zone = root / f"sys/class/thermal/thermal_zone{i}"
    write(zone / "type", kind + "\n")
    write(zone / "temp", f"{temp_mc}\n")
    if mode is not None:
        write(zone / "mode", mode + "\n")
    for j, (trip_type, trip_mc) in enumerate(trips):
        write(zone / f"trip_point_{j}_type", trip_type + "\n")
        write(zone / f"trip_point_{j}_temp", f"{trip_mc}\n")


def test_thermal_zones_and_trip_points(tmp_path):
    make_zone(tmp_path, 0, "x86_pkg_temp", 50000, [("passive", 45000), ("critical", 105000)])
    make_zone(tmp_path, 1, "acpitz", 70000)  # hotter, but not the CPU
    make_zone(tmp_path, 2, "iwlwifi_1", 40000, [("critical", 30000)], mode="disabled")
    state = system_monitor(tmp_path).read()
    assert state.temperature_c == 50.0
    # 50 °C is below every default threshold, but the kernel is throttling (passive trip)
    assert state.thermal_status == ThermalStatus.MODERATE


def test_thermal_zone_critical_trip_and_refresh(tmp_path):
    make_zone(tmp_path, 0, "cpu0-thermal", 60000, [("hot", 90000), ("critical", 95000)])
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, clock=clock)
    assert monitor.read().thermal_status == ThermalStatus.NONE
    write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "96000\n")
    clock.advance(1.0)
    state = monitor.read()
    assert state.temperature_c == 96.0 and state.thermal_status == ThermalStatus.SHUTDOWN


def test_unreadable_thermal_zone_is_skipped(tmp_path):
    make_zone(tmp_path, 0, "cpu-thermal", 0)
    write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "garbage\n")
    make_zone(tmp_path, 1, "soc_thermal", 47500)
    assert system_monitor(tmp_path).read().temperature_c == 47.5


# --------------------------------------------------------------------------------------------
# SimulatedMonitor

def test_simulated_time_based_drain():
    sim = SimulatedMonitor(battery_start_pct=80.0, drain_pct_per_h=10.0)
    assert sim.read().battery_pct == 80.0
    sim.advance(1800.0)
    assert sim.read().battery_pct == pytest.approx(75.0)
    sim.advance(10 * 3600.0)
    assert sim.read().battery_pct == 0.0  # clamped


def test_simulated_drain_with_plug_events_is_path_independent():
    def make():
        return SimulatedMonitor(battery_start_pct=50.0, drain_pct_per_h=10.0,
                                charge_pct_per_h=20.0,
                                plugged=[(0.0, False), (3600.0, True), (5400.0, False)])

    once = make()
    once.advance(7200.0)
    often = make()
    for _ in range(72):
        often.advance(100.0)
        often.read()
    # -10 (first hour), +10 (half an hour charging), -5 (last half hour)
    assert once.read().battery_pct == pytest.approx(45.0)
    assert often.read().battery_pct == pytest.approx(45.0)
    assert once.read().plugged is False
    mid = make()
    mid.advance(4000.0)
    assert mid.read().plugged is True


def test_simulated_energy_based_drain():
    sim = SimulatedMonitor(battery_start_pct=50.0, battery_capacity_wh=10.0)  # 36 kJ
    for _ in range(100):
        sim.consume(3.6)  # 360 J = 1 % of 10 Wh
    assert sim.read().battery_pct == pytest.approx(49.0)
    assert sim.energy_consumed_j == pytest.approx(360.0)
    sim.set_plugged(True)
    sim.consume(3600.0)
    assert sim.read().battery_pct == pytest.approx(49.0)  # mains pays while plugged
    with pytest.raises(ValueError, match="joules"):
        sim.consume(-1.0)


def test_simulated_energy_and_time_drain_add_up():
    sim = SimulatedMonitor(battery_start_pct=100.0, drain_pct_per_h=4.0,
                           battery_capacity_wh=1.0)
    sim.advance(900.0)  # -1 %
    sim.consume(36.0)  # -1 % of 1 Wh
    assert sim.read().battery_pct == pytest.approx(98.0)


def test_simulated_consume_without_capacity_only_counts(caplog):
    sim = SimulatedMonitor(battery_start_pct=70.0)
    with caplog.at_level(logging.INFO, logger="snrt.monitor"):
        sim.consume(1000.0)
        sim.consume(1000.0)
    assert sim.read().battery_pct == 70.0 and sim.energy_consumed_j == 2000.0
    assert len([r for r in caplog.records if "battery_capacity_wh" in r.getMessage()]) == 1


def test_simulated_without_battery():
    sim = SimulatedMonitor(battery_start_pct=None, plugged=True, battery_capacity_wh=5.0)
    sim.consume(100.0)
    state = sim.read()
    assert state.battery_pct is None and state.plugged is True


def test_simulated_schedules():
    sim = SimulatedMonitor(
        cpu_load_pct=[(0.0, 10.0), (5.0, 80.0), (10.0, 20.0)],
        temperature_c=[(2.0, 60.0), (6.0, 92.0)],
        power_saving=[(3.0, True), (8.0, False)],
        cpu_freq_mhz=[(0.0, 3000.0), (6.0, 1200.0)], cpu_freq_max_mhz=3600.0,
    )
    expect = {  # t_s: (load, temperature, status, power saving, freq)
        0.0: (10.0, None, 0, False, 3000.0),
        2.0: (10.0, 60.0, 0, False, 3000.0),
        4.9: (10.0, 60.0, 0, True, 3000.0),
        5.0: (80.0, 60.0, 0, True, 3000.0),
        7.0: (80.0, 92.0, 3, True, 1200.0),
        12.0: (20.0, 92.0, 3, False, 1200.0),
    }
    for t_s, (load, temp, status, saving, freq) in expect.items():
        sim.advance(t_s - sim.elapsed_s)
        state = sim.read()
        got = (state.cpu_load_pct, state.temperature_c, state.thermal_status,
               state.power_saving, state.cpu_freq_mhz)
        assert got == (load, temp, status, saving, freq), t_s
        assert state.power_saving_source == "simulated"
        assert state.timestamp_s == pytest.approx(t_s)


def test_simulated_setters_and_app_flag():
    sim = SimulatedMonitor(cpu_load_pct=[(0.0, 10.0), (10.0, 50.0)])
    sim.advance(2.0)
    sim.set_cpu_load(90.0)
    sim.set_temperature(101.0)
    sim.set_power_saving(True)
    state = sim.read()
    assert (state.cpu_load_pct, state.thermal_status) == (90.0, ThermalStatus.EMERGENCY)
    assert (state.power_saving, state.power_saving_source) == (True, "app")
    sim.advance(8.0)
    assert sim.read().cpu_load_pct == 50.0  # the scripted step still happens


def test_simulated_with_external_clock():
    now = [100.0]
    sim = SimulatedMonitor(clock=lambda: now[0], battery_start_pct=90.0, drain_pct_per_h=36.0)
    now[0] = 200.0
    assert sim.elapsed_s == 100.0
    assert sim.read().battery_pct == pytest.approx(89.0)
    with pytest.raises(ValueError, match="advance that clock"):
        sim.advance(1.0)


@pytest.mark.parametrize("kw, match", [
    ({"cpu_load_pct": [(5.0, 10.0), (1.0, 20.0)]}, "sorted"),
    ({"cpu_load_pct": [(0.0, 120.0)]}, "cpu_load_pct"),
    ({"cpu_load_pct": [(0.0,)]}, "pair"),
    ({"plugged": [(0.0, "yes")]}, "plugged"),
    ({"battery_start_pct": 150.0}, "battery_start_pct"),
    ({"battery_capacity_wh": 0.0}, "battery_capacity_wh"),
    ({"drain_pct_per_h": -1.0}, "drain_pct_per_h"),
    ({"clock": 5.0}, "clock"),
])
def test_simulated_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        SimulatedMonitor(**kw)


def test_simulated_clock_rejects_going_back():
    with pytest.raises(ValueError, match="dt_s"):
        SimulatedClock().advance(-1.0)


# --------------------------------------------------------------------------------------------
# PushMonitor

def test_push_then_stale_falls_back():
    clock = SimulatedClock()
    fallback = SimulatedMonitor(clock=clock, battery_start_pct=80.0, cpu_load_pct=15.0,
                                temperature_c=50.0)
    push = PushMonitor(fallback, stale_after_s=10.0, clock=clock)
    push.push(battery_pct=30.0, plugged=True, thermal_status=ThermalStatus.SEVERE)
    state = push.read()
    assert (state.battery_pct, state.plugged, state.thermal_status) == (30.0, True, 3)
    assert (state.cpu_load_pct, state.temperature_c) == (15.0, 50.0)  # not pushed
    clock.advance(10.0)
    assert push.read().battery_pct == 30.0  # 10 s old: still fresh
    clock.advance(0.5)
    state = push.read()
    assert (state.battery_pct, state.plugged, state.thermal_status) == (80.0, False, 0)


def test_push_without_fallback_uses_defaults():
    clock = SimulatedClock()
    push = PushMonitor(clock=clock, stale_after_s={"battery_pct": 300.0})
    state = push.read()
    assert state == PowerState(None, None, False, "none", 0.0, None, None, None, 0, 0.0)
    push.push(battery_pct=64.0, cpu_load_pct=40.0)
    clock.advance(60.0)
    state = push.read()
    assert state.battery_pct == 64.0  # per-field timeout
    assert state.cpu_load_pct == 0.0  # default 30 s timeout passed


def test_push_temperature_gives_status_and_source_names():
    push = PushMonitor(clock=SimulatedClock(), thermal_thresholds=ThermalThresholds(
        light_c=38, moderate_c=40, severe_c=42, critical_c=44, emergency_c=46, shutdown_c=50))
    push.push(temperature_c=41.0, power_saving=True, power_saving_source="android")
    state = push.read()
    assert state.thermal_status == ThermalStatus.MODERATE
    assert (state.power_saving, state.power_saving_source) == (True, "android")
    push.set_power_saving(False)
    assert push.read().power_saving_source == "app"


def test_push_is_validated_and_atomic():
    push = PushMonitor(clock=SimulatedClock())
    with pytest.raises(ValueError, match="cpu_load_pct"):
        push.push(battery_pct=50.0, cpu_load_pct=250.0)
    assert push.read().battery_pct is None  # nothing recorded
    with pytest.raises(ValueError, match="thermal_status"):
        push.push(thermal_status=9)
    with pytest.raises(ValueError, match="unknown stale_after_s field"):
        PushMonitor(stale_after_s={"battery": 5.0})
    with pytest.raises(ValueError, match="fallback"):
        PushMonitor(fallback="system")


def test_push_forget_and_consume_forwarding():
    clock = SimulatedClock()
    fallback = SimulatedMonitor(clock=clock, battery_start_pct=60.0, battery_capacity_wh=1.0)
    push = PushMonitor(fallback, clock=clock)
    push.push(battery_pct=10.0, plugged=False)
    push.forget("battery_pct")
    assert push.read().battery_pct == 60.0
    push.consume(36.0)  # 1 % of 1 Wh, drained in the fallback
    assert push.read().battery_pct == pytest.approx(59.0)
    with pytest.raises(ValueError, match="unknown fields"):
        push.forget("battery")


# --------------------------------------------------------------------------------------------
# threads and the real machine

def test_many_threads_reading_and_consuming():
    clock = SimulatedClock()
    sim = SimulatedMonitor(clock=clock, battery_start_pct=100.0, battery_capacity_wh=100.0,
                           cpu_load_pct=[(0.0, 5.0), (50.0, 95.0)])
    push = PushMonitor(sim, clock=clock)
    errors: list[BaseException] = []
    n_threads, n_iter = 8, 400

    def worker(k: int) -> None:
        try:
            for i in range(n_iter):
                state = push.read()
                assert 0.0 <= state.battery_pct <= 100.0
                sim.consume(1.0)
                if k == 0:
                    clock.advance(0.1)
                if i % 50 == 0:
                    push.push(temperature_c=40.0 + k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sim.energy_consumed_j == n_threads * n_iter  # no lost update
    # 3200 J of a 100 Wh (360 kJ) battery
    assert sim.read().battery_pct == pytest.approx(100.0 - 3200.0 / 3600.0)


def test_system_monitor_threads_share_one_cpu_window(tmp_path):
    ps = FakePsutil(n_cores=4)
    clock = SimulatedClock()
    monitor = system_monitor(tmp_path, ps, clock=clock)
    ps.spend(1.0, busy_cores=1.0)
    clock.advance(1.0)
    loads: list[float] = []

    def worker() -> None:
        for _ in range(200):
            loads.append(monitor.read().cpu_load_pct)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # psutil.cpu_percent() would give every new thread its own baseline and a first 0.0
    assert len(loads) == 1600 and all(x == pytest.approx(25.0) for x in loads)


def test_real_machine_system_monitor():
    """On this machine's psutil and sysfs: a valid, JSON-round-tripping state; and read() is
    cheap because it returns cached values: within a refresh interval (a frozen clock) it
    calls no psutil function at all, and each source is re-read once per interval. Counted,
    not timed, so a loaded machine cannot make it fail."""
    import psutil

    calls: dict[str, int] = {}

    class CountingPsutil:
        def __getattr__(self, name):
            fn = getattr(psutil, name)
            if not callable(fn):
                return fn

            def counted(*a, **kw):
                calls[name] = calls.get(name, 0) + 1
                return fn(*a, **kw)
            return counted

    clock = SimulatedClock(1000.0)
    with SystemMonitor(psutil_module=CountingPsutil(), clock=clock) as monitor:
        state = monitor.read()
        assert isinstance(state, PowerState)
        assert PowerState.from_json(json.loads(json.dumps(state.to_json()))) == state
        assert 0.0 <= state.cpu_load_pct <= 100.0 and 0 <= state.thermal_status <= 6
        calls.clear()
        for _ in range(300):
            assert monitor.read().timestamp_s == 1000.0
        assert calls == {}, calls
        clock.advance(1.0)  # every source of DEFAULT_REFRESH_S <= 1 s is due once
        for _ in range(300):
            monitor.read()
        assert calls.get("cpu_times", 0) == 1, calls
        assert all(n == 1 for n in calls.values()), calls

