"""Device fingerprint: what a lookup table was measured on, and a stable id naming its file.

The id is `<os>-<arch>-<cpu>-<cores>c-<ram>g-<hash6>`: readable, the same on every board of one
kind (hostnames and serial numbers are left out on purpose: one table serves all identical
boards), and it changes when what makes latency differ changes (CPU model, core counts, RAM,
architecture, OS). Kernel, library and snrt versions are recorded but are not part of the id.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from .version import __version__

_MAX_CORES = 1 << 16  # more than any machine has: a larger count is junk
_MAX_RAM_BYTES = 1 << 60  # 1 EiB, likewise


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    os: str
    kernel: str
    arch: str
    cpu_model: str
    cores_logical: int
    cores_physical: int | None
    affinity: list[int] | None
    freq_min_mhz: float | None
    freq_max_mhz: float | None
    ram_bytes: int
    python: str
    numpy: str
    snrt: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> DeviceInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def cpu_model(cpuinfo: str | None = None) -> str:
    """CPU model from /proc/cpuinfo (x86 'model name', ARM 'Hardware'/'Model'), else platform."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if m and m.group(1).strip():
            return re.sub(r"\s+", " ", m.group(1).strip())
    return platform.processor() or platform.machine() or "unknown-cpu"


def _finite_positive(value: object) -> float | None:
    """A finite float > 0, or None for what psutil returns when it does not know (None, 0) or
    when it misbehaves (NaN, strings, ints too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _count(value: object) -> int | None:
    """A core count psutil returned, or None when it is not a plausible one."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_CORES:
        return value
    return None


def _psutil(name: str, *args, **kwargs):
    """psutil.<name>(...), or None when it is missing or raises (containers, exotic OSes)."""
    try:
        return getattr(psutil, name)(*args, **kwargs)
    except Exception:  # noqa: BLE001 - psutil raises various errors in containers
        return None


def _attr(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def _freq_range() -> tuple[float | None, float | None]:
    f = _psutil("cpu_freq")
    lo, hi = _finite_positive(_attr(f, "min")), _finite_positive(_attr(f, "max"))
    if hi is None:  # sysfs, in kHz
        base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
        try:
            lo = _finite_positive(int((base / "cpuinfo_min_freq").read_text()) / 1000)
            hi = _finite_positive(int((base / "cpuinfo_max_freq").read_text()) / 1000)
        except (OSError, ValueError, OverflowError):
            pass
    return lo, hi


def _ram_bytes() -> int:
    total = _attr(_psutil("virtual_memory"), "total")
    if isinstance(total, int) and not isinstance(total, bool) and 0 < total <= _MAX_RAM_BYTES:
        return total
    try:  # POSIX; 0 when nothing can tell
        return max(0, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def _slug(s: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$", "", s.lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:40] or "cpu"


def describe_device() -> DeviceInfo:
    model = cpu_model()
    logical = (_count(_psutil("cpu_count", logical=True)) or _count(os.cpu_count()) or 1)
    physical = _count(_psutil("cpu_count", logical=False))
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    lo, hi = _freq_range()
    ram = _ram_bytes()
    system, arch = platform.system().lower(), platform.machine().lower()
    ram_gb = max(1, round(ram / 2**30))
    key = f"{system}|{arch}|{model}|{logical}|{physical}|{ram_gb}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    dev_id = f"{system}-{arch}-{_slug(model)}-{logical}c-{ram_gb}g-{digest}"
    return DeviceInfo(
        id=dev_id, os=f"{platform.system()} {platform.release()}", kernel=platform.version(),
        arch=arch, cpu_model=model, cores_logical=logical, cores_physical=physical,
        affinity=affinity, freq_min_mhz=lo, freq_max_mhz=hi, ram_bytes=ram,
        python=sys.version.split()[0], numpy=np.__version__, snrt=__version__)
