"""A dependency-free progress bar with ETA for long jobs (export, profiling, training).

On a terminal it redraws one line on stderr; otherwise (CI logs, pipes) it logs a line every
10% so logs stay readable. `enabled=False` silences it.
"""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream=None,
                 start: int = 0):
        self.total, self.desc, self.n = max(total, 0), desc, start
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._start = start
        self._last_decile = -1
        self.note = ""

    def update(self, k: int = 1, note: str = "") -> None:
        self.n += k
        self.note = note or self.note
        if not self.enabled:
            return
        frac = min(self.n / self.total, 1.0)
        elapsed = time.monotonic() - self.t0
        done_here = self.n - self._start
        eta = elapsed / done_here * (self.total - self.n) if done_here > 0 else 0.0
        line = (f"{self.desc} [{'#' * int(frac * 24):<24}] {self.n}/{self.total} "
                f"{frac:4.0%} {_fmt(elapsed)}<{_fmt(eta)} {self.note}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100))
            self.stream.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
