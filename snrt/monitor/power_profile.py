"""power-profiles-daemon: its state file, else `powerprofilesctl get` run as a child
process that is polled, never waited for.

A mixin of SystemMonitor: its methods use the monitor's `_ppd_*` attributes, `_refresh` and
`_read_system_power_saving()`."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

from .state import MonitorValueError
from .sysfs_source import _read_text

log = logging.getLogger(__name__)

PPD_STATE_PATH = "/var/lib/power-profiles-daemon/state.ini"


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


class PowerProfileSource:
    """power-profiles-daemon's profile (SystemMonitor mixin)."""

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
