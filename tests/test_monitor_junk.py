"""SystemMonitor and describe_device on a psutil that returns junk or raises (issue 14, item 10).

Property: whatever psutil's functions return (None, wrong types, NaN, inf, ints too large for a
float, lists instead of dicts, objects whose attributes raise) or raise, `SystemMonitor()`
constructs, `read()` never raises and every field of the PowerState is sane: None or a finite
number in the field's documented range. The same for `describe_device()` (lookup-table file
names, `Controller.auto`). Each call draws fresh junk, so values also change between reads (a
sensor that worked and then fails). Bounded: 200 examples per property, about 20 s each.
"""

from __future__ import annotations

import math
import types
from collections import namedtuple
from unittest import mock

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snrt
from snrt import device
from snrt.monitor import PowerState, SimulatedClock, SystemMonitor

JUNK = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CpuTimes = namedtuple("CpuTimes",
                      "user nice system idle iowait irq softirq steal guest guest_nice")
ProcTimes = namedtuple("ProcTimes", "user system children_user children_system iowait")
Battery = namedtuple("Battery", "percent secsleft power_plugged")
Freq = namedtuple("Freq", "current min max")
Temp = namedtuple("Temp", "label current high critical")
Memory = namedtuple("Memory", "total available percent used free")


class Hostile:
    """An object whose every attribute, iteration, length and number conversion raises."""

    def __getattr__(self, name):
        if name.startswith("_"):  # hypothesis' printer looks up _repr_pretty_ and the like
            raise AttributeError(name)
        raise RuntimeError(f"hostile attribute {name}")

    def __repr__(self) -> str:
        return "Hostile()"

    def __iter__(self):
        raise RuntimeError("hostile iteration")

    def __len__(self):
        raise RuntimeError("hostile len")

    def __float__(self):
        raise RuntimeError("hostile float")

    def __bool__(self):
        raise RuntimeError("hostile bool")


class Raise:
    """Marker: the fake function raises this exception instead of returning."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        return f"Raise({self.exc!r})"


numbers = (st.floats(allow_nan=True, allow_infinity=True)
           | st.integers(-(2**70), 2**70) | st.sampled_from([10**400, -(10**400), True, 0, -1]))
scalars = st.none() | numbers | st.text(max_size=4) | st.binary(max_size=4) | st.booleans()
exceptions = st.sampled_from([OSError("EIO"), RuntimeError("boom"), TypeError("bad"),
                              ValueError("bad"), AttributeError("gone"), KeyError("k"),
                              NotImplementedError(), ZeroDivisionError(), OverflowError(),
                              psutil.AccessDenied(), psutil.Error("psutil")]).map(Raise)
junk = st.recursive(
    scalars | st.just(Hostile()) | exceptions,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)),
    max_leaves=8)


def fields_of(cls, values=numbers):
    """The namedtuple psutil returns, with each field a plausible number or junk."""
    return st.builds(cls, *[values | junk for _ in cls._fields])


def namespace_of(names):
    """An object with the right attribute names but junk values (not a tuple: sum() fails)."""
    return st.builds(lambda *vs: types.SimpleNamespace(**dict(zip(names, vs))),
                     *[numbers | junk for _ in names])


RESULTS = {
    "cpu_times": fields_of(CpuTimes, st.floats(0, 1e9)) | namespace_of(CpuTimes._fields) | junk,
    "cpu_count": st.integers(-3, 300) | junk,
    "getloadavg": st.tuples(numbers, numbers, numbers) | junk,
    "sensors_battery": fields_of(Battery) | namespace_of(Battery._fields) | junk,
    "cpu_freq": fields_of(Freq) | namespace_of(Freq._fields) | junk,
    "sensors_temperatures": (st.dictionaries(st.text(max_size=8) | junk,
                                             st.lists(fields_of(Temp) | junk, max_size=3) | junk,
                                             max_size=3) | junk),
    "process_cpu_times": fields_of(ProcTimes, st.floats(0, 1e9)) | junk,
    "virtual_memory": fields_of(Memory) | junk,
}


class JunkPsutil:
    """psutil's functions, each returning (or raising) a value drawn from RESULTS per call."""

    def __init__(self, data) -> None:
        self._data = data

    def _call(self, name: str):
        value = self._data.draw(RESULTS[name], label=name)
        if isinstance(value, Raise):
            raise value.exc
        return value

    def cpu_times(self, *a, **kw):
        return self._call("cpu_times")

    def cpu_count(self, *a, **kw):
        return self._call("cpu_count")

    def getloadavg(self):
        return self._call("getloadavg")

    def sensors_battery(self):
        return self._call("sensors_battery")

    def cpu_freq(self, *a, **kw):
        return self._call("cpu_freq")

    def sensors_temperatures(self, *a, **kw):
        return self._call("sensors_temperatures")

    def virtual_memory(self):
        return self._call("virtual_memory")

    def Process(self, *a, **kw):
        if self._data.draw(st.booleans(), label="Process raises"):
            raise psutil.NoSuchProcess(1)
        proc = types.SimpleNamespace()
        proc.cpu_times = lambda: self._call("process_cpu_times")
        return proc


def assert_sane(state: PowerState) -> None:
    def finite_or_none(v, lo=-math.inf, hi=math.inf):
        return v is None or (isinstance(v, float) and math.isfinite(v) and lo <= v <= hi)

    assert isinstance(state, PowerState)
    assert finite_or_none(state.battery_pct, 0.0, 100.0), state
    assert state.plugged in (None, True, False), state
    assert isinstance(state.power_saving, bool), state
    assert isinstance(state.cpu_load_pct, float) and 0.0 <= state.cpu_load_pct <= 100.0, state
    for mhz in (state.cpu_freq_mhz, state.cpu_freq_max_mhz):
        assert finite_or_none(mhz) and (mhz is None or mhz > 0), state
    assert finite_or_none(state.temperature_c, -40.0, 150.0), state
    assert state.thermal_status in range(7), state


def junk_monitor(sysfs, ps) -> SystemMonitor:
    return SystemMonitor(psutil_module=ps, sysfs_root=sysfs, clock=SimulatedClock(),
                         environ={}, ppd_state_path=None, powerprofilesctl=None)


@pytest.fixture(scope="module")
def empty_sysfs(tmp_path_factory):
    return tmp_path_factory.mktemp("empty-sysfs")


@JUNK
@given(data=st.data())
def test_system_monitor_read_never_raises_on_psutil_junk(empty_sysfs, data):
    monitor = junk_monitor(empty_sysfs, JunkPsutil(data))
    for _ in range(data.draw(st.integers(1, 6), label="reads")):
        monitor._clock.advance(data.draw(st.sampled_from([0.0, 0.3, 0.6, 1.5, 61.0]),
                                        label="dt_s"))
        assert_sane(monitor.read())


@JUNK
@given(data=st.data())
def test_describe_device_never_raises_on_psutil_junk(data):
    ps = JunkPsutil(data)
    with mock.patch.multiple(device.psutil, cpu_count=ps.cpu_count, cpu_freq=ps.cpu_freq,
                             virtual_memory=ps.virtual_memory):
        info = device.describe_device()
    assert isinstance(info.cores_logical, int) and info.cores_logical >= 1
    assert info.cores_physical is None or (isinstance(info.cores_physical, int)
                                           and info.cores_physical >= 1)
    assert isinstance(info.ram_bytes, int) and info.ram_bytes >= 0
    for mhz in (info.freq_min_mhz, info.freq_max_mhz):
        assert mhz is None or (isinstance(mhz, float) and math.isfinite(mhz) and mhz > 0)
    assert info.id and " " not in info.id


sysfs_text = (st.binary(max_size=12)
              | st.sampled_from([b"", b"55000", b"-1", b"nan", b"inf", b"9" * 400, b"0x10",
                                 b"1" * 5000, b"\xff\xfe", b"low-power", b"enabled",
                                 b"disabled", b"passive", b"critical", b"hot", b"active"]))


@JUNK
@given(files=st.dictionaries(
    st.sampled_from(["thermal_zone0/temp", "thermal_zone0/type", "thermal_zone0/mode",
                     "thermal_zone0/trip_point_0_temp", "thermal_zone0/trip_point_0_type",
                     "thermal_zone1/temp", "thermal_zone1/trip_point_0_temp",
                     "thermal_zone1/trip_point_0_type"]),
    sysfs_text, max_size=8),
    profile=st.none() | sysfs_text)
def test_system_monitor_read_never_raises_on_sysfs_junk(tmp_path_factory, files, profile):
    root = tmp_path_factory.mktemp("sysfs")
    for rel, data in files.items():
        path = root / "class" / "thermal" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if profile is not None:
        (root / "firmware" / "acpi").mkdir(parents=True)
        (root / "firmware" / "acpi" / "platform_profile").write_bytes(profile)
    monitor = SystemMonitor(psutil_module=types.SimpleNamespace(), sysfs_root=root,
                            clock=SimulatedClock(), environ={}, ppd_state_path=None,
                            powerprofilesctl=None)
    for _ in range(2):
        monitor._clock.advance(61.0)
        assert_sane(monitor.read())


# The three reports of the issue, on the real psutil module patched as a broken build would be.

def test_cpu_times_none_keeps_read_working(tmp_path):
    with mock.patch.object(psutil, "cpu_times", lambda *a, **kw: None):
        monitor = SystemMonitor(sysfs_root=tmp_path, clock=SimulatedClock(), environ={},
                                ppd_state_path=None, powerprofilesctl=None)
        for _ in range(5):
            monitor._clock.advance(1.0)
            assert_sane(monitor.read())


def test_temperatures_as_a_list_keeps_read_working(tmp_path):
    temps = [Temp("Package", 55.0, 90.0, 100.0)]
    with mock.patch.object(psutil, "sensors_temperatures", lambda *a, **kw: temps,
                           create=True):
        monitor = SystemMonitor(sysfs_root=tmp_path, clock=SimulatedClock(), environ={},
                                ppd_state_path=None, powerprofilesctl=None)
        monitor._clock.advance(2.0)
        assert_sane(monitor.read())


def test_runtime_auto_with_cpu_count_raising_and_cpu_times_none(tiny_family, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("SNRT_LOOKUP_TABLES", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def broken(*a, **kw):
        raise RuntimeError("cpu_count broken")

    monkeypatch.setattr(psutil, "cpu_count", broken)
    monkeypatch.setattr(psutil, "cpu_times", lambda *a, **kw: None)
    rt = snrt.Runtime(tiny_family["bundle"], controller="auto")
    try:
        clock = SimulatedClock()
        rt.controller.monitor._clock = clock  # refresh every source on every frame
        for _ in range(20):
            clock.advance(1.0)
            rt.infer(np.zeros((3, 32, 32), np.float32))
        assert_sane(rt.controller.monitor.read())
    finally:
        rt.close()


@pytest.mark.parametrize("bad", [None, "4", 0, -2, 2.0, True, 10**400])
def test_core_count_junk_falls_back_to_os(tmp_path, bad):
    with mock.patch.object(psutil, "cpu_count", lambda *a, **kw: bad):
        assert device.describe_device().cores_logical >= 1
        monitor = SystemMonitor(sysfs_root=tmp_path, clock=SimulatedClock(), environ={},
                                ppd_state_path=None, powerprofilesctl=None)
        assert 1 <= monitor._n_cores <= 65536
