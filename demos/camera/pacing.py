"""The demo's clock: the wall clock (the default), or a simulated one moved by the frames.

The controller, the monitor and the energy model read `clock()`. `WallClock` is
`time.monotonic`. `FrameClock` (`--clock simulated`) is a SimulatedClock that advances by one
frame period (1 / target FPS) per processed frame: the controller's dwell times, decision
intervals and the battery drain then count frames, whatever the machine's speed. The engine
still waits in real time between frames, so the page sees frames at about the target rate.
"""

from __future__ import annotations

import time

from snrt.monitor import SimulatedClock

CLOCK_CHOICES = ("wall", "simulated")


class WallClock:
    simulated = False

    def __call__(self) -> float:
        return time.monotonic()

    def frame_done(self, period_s: float) -> None:
        """Nothing: real time passes by itself."""


class FrameClock(SimulatedClock):
    simulated = True

    def frame_done(self, period_s: float) -> None:
        """One frame period passes."""
        self.advance(period_s)


def make_clock(kind: str) -> WallClock | FrameClock:
    if kind not in CLOCK_CHOICES:
        raise ValueError(f"clock must be one of {CLOCK_CHOICES}, got {kind!r}")
    return FrameClock() if kind == "simulated" else WallClock()
