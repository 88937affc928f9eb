"""Device fingerprint: what a lookup table was measured on, and a stable id naming its file.

The id is `<os>-<arch>-<cpu>-<cores>c-<ram>g-<hash6>`: readable, the same on every board of one
kind (hostnames and serial numbers are left out on purpose: one table serves all identical
boards), and it changes when what makes latency differ changes (CPU model, core counts, RAM,
architecture, OS). Kernel, library and snrt versions are recorded but are not part of the id.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from .version import __version__


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


def _freq_range() -> tuple[float | None, float | None]:
    lo = hi = None
    try:
        f = psutil.cpu_freq()
        if f is not None:
            lo, hi = (f.min or None), (f.max or None)
    except Exception:  # noqa: BLE001 - psutil raises various errors in containers
        pass
    if hi is None:  # sysfs, in kHz
        base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
        try:
            lo = int((base / "cpuinfo_min_freq").read_text()) / 1000
            hi = int((base / "cpuinfo_max_freq").read_text()) / 1000
        except (OSError, ValueError):
            pass
    return lo, hi


def _slug(s: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$", "", s.lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:40] or "cpu"


def describe_device() -> DeviceInfo:
    model = cpu_model()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    lo, hi = _freq_range()
    ram = psutil.virtual_memory().total
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
