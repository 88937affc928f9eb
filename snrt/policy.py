"""The controller's policy: pure functions of (state, estimates, current, time).

`frame_budget` turns a PowerState into the frame's latency budget; `decide` picks among the
candidates (the accuracy-latency front) with the hysteresis snrt.controller describes;
`ContentionEstimate` is the feedback that scales the table's latencies to what frames take
now. No I/O and no runtime here: snrt.controller.Controller holds the state and calls these
between frames, and tests call them directly.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .errors import SnrtError
from .monitor import PowerState


@dataclass(frozen=True)
class PolicyConfig:
    """User-tunable thresholds. Scales multiply the frame budget; the smallest applies."""

    target_fps: float = 15.0
    headroom: float = 0.8  # share of the frame period inference may use
    power_saving_scale: float = 0.5
    low_battery_pct: float = 20.0
    low_battery_scale: float = 0.7
    critical_battery_pct: float = 10.0
    critical_battery_scale: float = 0.4
    charging_ignores_battery: bool = True
    # by thermal status 0..6 (NONE, LIGHT, MODERATE, SEVERE, CRITICAL, EMERGENCY, SHUTDOWN)
    thermal_scales: tuple[float, ...] = (1.0, 0.9, 0.7, 0.5, 0.35, 0.25, 0.25)
    high_cpu_load_pct: float = 101.0  # >100: off (feedback sees contention); e.g. 80 to act
    high_cpu_load_scale: float = 0.8  # on a lagging load reading as well
    up_margin: float = 0.15  # step up only if est <= budget * (1 - up_margin)
    down_margin: float = 0.0  # step down once est > budget * (1 + down_margin)
    min_dwell_s: float = 3.0  # no step up sooner than this after any switch
    max_dwell_s: float = 60.0  # premature step-ups double the dwell up to this
    pareto_only: bool = True
    # tail feedback: >= miss_limit misses within the current variant's last miss_window frames
    # steps down; a step up needs clean_frames frames or clean_s seconds without a miss
    miss_limit: int = 3  # 0: off
    miss_window: int = 200
    clean_frames: int = 400
    clean_s: float = 30.0

    def __post_init__(self):
        if self.target_fps <= 0 or not 0 < self.headroom <= 1:
            raise ValueError("target_fps must be > 0 and headroom in (0, 1]")
        if len(self.thermal_scales) != 7:
            raise ValueError("thermal_scales needs 7 values (thermal status 0..6)")
        if not 0 <= self.up_margin < 1 or self.down_margin < 0 or self.min_dwell_s < 0:
            raise ValueError("up_margin in [0, 1), down_margin >= 0, min_dwell_s >= 0")
        if self.miss_limit < 0 or self.miss_window < 1 or self.clean_frames < 0 \
                or self.clean_s < 0:
            raise ValueError("miss_limit >= 0, miss_window >= 1, clean_frames >= 0, "
                             "clean_s >= 0")


@dataclass(frozen=True)
class Candidate:
    id: str
    accuracy: float  # top-1 %, or MFLOPs with rank="flops" (the proxy the user chose)
    base_ms: float  # latency on this device without contention (table p50)
    label: str = "top1"  # what `accuracy` holds, for the reasons: "top1" or "MFLOPs"


@dataclass(frozen=True)
class Budget:
    budget_ms: float
    scale: float
    why: str  # what scaled it


@dataclass(frozen=True)
class MissStats:
    """Deadline misses of the current variant (counted since it became current)."""

    misses: int = 0  # within its last `frames` frames (at most cfg.miss_window)
    frames: int = 0
    clean_frames: int = 1 << 30  # frames since the last miss (of any variant)
    clean_s: float = float("inf")  # seconds since the last miss (of any variant)

    @property
    def rate(self) -> float:
        return self.misses / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class Decision:
    kind: str  # "start" | "down" | "up" | "keep"
    target: str
    budget: Budget
    contention: float
    est_ms: float
    reason: str
    switch: bool
    home: bool = False  # a return to the variant before a load: re-learn contention on it
    load: bool = False  # a step down forced by a clear load: over budget by more than the
    # hysteresis band (up_margin), or by deadline misses; not a figure wobbling at the edge


def frame_budget(state: PowerState, cfg: PolicyConfig) -> Budget:
    """Latency budget for one frame, from the power state."""
    scale, why = 1.0, []
    if state.power_saving:
        scale = min(scale, cfg.power_saving_scale)
        why.append(f"power-saving ({state.power_saving_source})")
    on_mains = state.plugged is True and cfg.charging_ignores_battery
    if state.battery_pct is not None and not on_mains:
        if state.battery_pct <= cfg.critical_battery_pct:
            scale = min(scale, cfg.critical_battery_scale)
            why.append(f"battery {state.battery_pct:.0f}% critical")
        elif state.battery_pct <= cfg.low_battery_pct:
            scale = min(scale, cfg.low_battery_scale)
            why.append(f"battery {state.battery_pct:.0f}% low")
    t = cfg.thermal_scales[max(0, min(6, state.thermal_status))]
    if t < 1.0:
        scale = min(scale, t)
        why.append(f"thermal status {state.thermal_status}")
    if state.cpu_load_pct >= cfg.high_cpu_load_pct:
        scale = min(scale, cfg.high_cpu_load_scale)
        why.append(f"cpu load {state.cpu_load_pct:.0f}%")
    budget = 1000.0 / cfg.target_fps * cfg.headroom * scale
    return Budget(budget, scale, ", ".join(why) or "normal")


def decide(state: PowerState, candidates: list[Candidate], current: str, contention: float,
           now_s: float, last_switch_s: float, cfg: PolicyConfig,
           dwell_s: float | None = None, misses: MissStats | None = None,
           last_down_s: float = float("-inf"), home: str | None = None,
           home_budget_ms: float = float("inf")) -> Decision:
    """Pick the variant for the next frame. Pure: same inputs, same answer.
    dwell_s: the current minimum time between a switch and a step up (default
    cfg.min_dwell_s; the Controller lengthens it after premature step-ups).
    misses: the current variant's deadline misses (default: none seen).
    last_down_s: time of the last step down; a second one within min_dwell_s goes straight to
    the fastest variant (contention still rising: no cascade of small steps).
    home, home_budget_ms: the variant a contention-caused step down left, and the budget then;
    a clean step up may return to it directly while the budget is at least that large."""
    dwell_s = cfg.min_dwell_s if dwell_s is None else dwell_s
    misses = misses or MissStats()
    if not candidates:
        raise SnrtError("no candidate variants to choose from")
    b = frame_budget(state, cfg)
    est = {c.id: c.base_ms * contention for c in candidates}
    by_id = {c.id: c for c in candidates}
    cur = by_id.get(current)
    fits = [c for c in candidates if est[c.id] <= b.budget_ms]
    fastest = min(candidates, key=lambda c: est[c.id])
    best = max(fits, key=lambda c: (c.accuracy, -est[c.id])) if fits else fastest
    note = f"budget {b.budget_ms:.1f} ms ({b.why}), contention x{contention:.2f}"
    if cur is None:  # the current variant is not a candidate (pinned before, or off-front)
        return Decision("start", best.id, b, contention, est[best.id],
                        f"{note}: start on {best.id} (est {est[best.id]:.1f} ms)", True)
    cur_est = est[cur.id]
    cascade = now_s - last_down_s < cfg.min_dwell_s
    again = f" (stepped down {now_s - last_down_s:.2f} s ago: to the fastest)" if cascade else ""
    if cur_est > b.budget_ms * (1 + cfg.down_margin):  # must step down, no dwell
        # land where a step up would: with up_margin to spare when some variant has it, so
        # that the next slightly slower frame does not force another step (no cascades)
        roomy = [c for c in fits if est[c.id] <= b.budget_ms * (1 - cfg.up_margin)]
        safe = max(roomy, key=lambda c: (c.accuracy, -est[c.id])) if roomy else best
        tgt = safe if est[safe.id] < cur_est and not cascade else fastest
        if tgt.id != cur.id:
            return Decision("down", tgt.id, b, contention, est[tgt.id],
                            f"{note}: {cur.id} est {cur_est:.1f} ms over budget -> "
                            f"{tgt.id} est {est[tgt.id]:.1f} ms{again}", True,
                            load=cur_est > b.budget_ms * (1 + cfg.up_margin))
        return Decision("keep", cur.id, b, contention, cur_est, f"{note}: already fastest",
                        False)
    if cfg.miss_limit and misses.misses >= cfg.miss_limit:  # the tail says: too slow here
        # misses scale with the time a frame is exposed to preemption: expect
        # rate * est(v) / est(cur) for v; take the most accurate expected below half the limit
        # (a decisive step: one that only just passes would be the first of a cascade), else
        # the fastest
        limit = cfg.miss_limit / cfg.miss_window / 2
        ok = [c for c in candidates if est[c.id] < cur_est
              and misses.rate * est[c.id] / cur_est < limit]
        tgt = (max(ok, key=lambda c: (c.accuracy, -est[c.id])) if ok and not cascade
               else fastest)
        if tgt.id != cur.id:
            return Decision("down", tgt.id, b, contention, est[tgt.id],
                            f"{note}: {cur.id} missed {misses.misses} of its last "
                            f"{misses.frames} deadlines -> {tgt.id} est {est[tgt.id]:.1f} ms"
                            f"{again}", True, load=True)
        return Decision("keep", cur.id, b, contention, cur_est,
                        f"{note}: {misses.misses} misses in {misses.frames} frames, already "
                        "fastest", False)
    clean = misses.clean_frames >= cfg.clean_frames or misses.clean_s >= cfg.clean_s
    if clean and now_s - last_switch_s >= dwell_s:  # step up to the best that fits roomily
        roomy = [c for c in fits if c.accuracy > cur.accuracy
                 and est[c.id] <= b.budget_ms * (1 - cfg.up_margin)]
        back = by_id.get(home) if home is not None else None
        if back is not None and back.accuracy > cur.accuracy \
                and b.budget_ms >= home_budget_ms * (1 - 1e-9) \
                and all(c.accuracy <= back.accuracy for c in roomy):
            quiet = (f"{misses.clean_frames} frames" if misses.clean_frames < 1 << 30
                     else "ever")
            return Decision("up", back.id, b, contention, est[back.id],
                            f"{note}: no miss for {quiet}: back to {back.id}, the variant "
                            f"before the slowdown ({back.label} {back.accuracy:.2f} > "
                            f"{cur.accuracy:.2f})", True, home=True)
        if roomy:
            c = max(roomy, key=lambda c: (c.accuracy, -est[c.id]))
            return Decision("up", c.id, b, contention, est[c.id],
                            f"{note}: room for {c.id} (est {est[c.id]:.1f} ms, {c.label} "
                            f"{c.accuracy:.2f} > {cur.accuracy:.2f})", True)
    return Decision("keep", cur.id, b, contention, cur_est, f"{note}: keep {cur.id}", False)


class ContentionEstimate:
    """observed / table latency, learnt from frames. Up fast: as soon as the median of the
    last `window` ratios exceeds the estimate, the estimate jumps to it (two slow frames in a
    row with window 3: a lone scheduler spike is ignored). Down slowly: an EWMA with
    `down_alpha` towards that median."""

    def __init__(self, window: int = 3, down_alpha: float = 0.15, initial: float = 1.0,
                 frozen: bool = False):
        self.window, self.down_alpha, self.frozen = window, down_alpha, frozen
        self.value = initial
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self.n = 0

    def reset(self, value: float = 1.0) -> None:
        """Forget what was learnt (the ratio read on one variant does not carry to another,
        e.g. on a return home after a load); the next frames set it again."""
        if not self.frozen:
            self.value = value
        self._recent.clear()

    def new_variant(self) -> None:
        """The variant changed: the next jump up needs frames of the new one (keeps the value;
        without this, one slow frame of the old variant plus one of the new would count as two
        in a row)."""
        self._recent.clear()

    def update(self, observed_ms: float, table_ms: float) -> float:
        if table_ms <= 0 or self.frozen:
            return self.value
        self._recent.append(max(observed_ms / table_ms, 0.05))
        self.n += 1
        m = sorted(self._recent)[len(self._recent) // 2]
        if m > self.value:
            self.value = m
        else:
            self.value += self.down_alpha * (m - self.value)
        return self.value


__all__ = ["Budget", "Candidate", "ContentionEstimate", "Decision", "MissStats", "PolicyConfig",
           "decide", "frame_budget"]
