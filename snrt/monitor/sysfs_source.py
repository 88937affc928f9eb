"""Linux sysfs: ACPI platform_profile and thermal zones with their trip points.

A mixin of SystemMonitor: its methods use the monitor's `_root` (the sysfs mount) and fill
`_zones`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .state import ThermalStatus

_TRIP_STATUS = {
    "active": ThermalStatus.LIGHT,
    "passive": ThermalStatus.MODERATE,
    "hot": ThermalStatus.CRITICAL,
    "critical": ThermalStatus.SHUTDOWN,
}


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return None


def _millidegrees(text: str | None) -> float | None:
    try:
        return int(text) / 1000.0 if text else None
    except (ValueError, OverflowError):  # not a number, or too large for a float
        return None


@dataclass(frozen=True)
class _ThermalZone:
    name: str  # the zone's `type`, e.g. "x86_pkg_temp", "cpu0-thermal", "acpitz"
    temp_path: Path
    trips: tuple[tuple[float, int], ...]  # (temperature °C, ThermalStatus)


class SysfsSource:
    """platform_profile and thermal-zone discovery (SystemMonitor mixin)."""

    _root: Path
    _zones: list[_ThermalZone]

    def _platform_profiles(self) -> list[str]:
        paths = [self._root / "firmware" / "acpi" / "platform_profile"]
        class_dir = self._root / "class" / "platform-profile"
        if class_dir.is_dir():  # Linux >= 6.14: one directory per profile handler
            paths += sorted(class_dir.glob("*/profile"))
        values = (_read_text(p) for p in paths)
        return [v.lower() for v in values if v]

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
