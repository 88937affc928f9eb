"""The small API every monitor shares: `read`, `set_power_saving`, `consume`, `close`."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from .state import PowerState, _check_bool, _check_float

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


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
