"""Controller: budget from power state, choice with hysteresis, feedback, runtime wiring."""

from __future__ import annotations

import numpy as np
import pytest

import snrt
from snrt.controller import (
    Candidate,
    ContentionEstimate,
    Controller,
    MissStats,
    PolicyConfig,
    decide,
    frame_budget,
)
from snrt.monitor import PowerState, SimulatedClock, SimulatedMonitor

CANDS = [Candidate("tiny", 80.0, 10.0), Candidate("mid", 85.0, 25.0),
         Candidate("big", 90.0, 50.0)]


def state(**kw) -> PowerState:
    base = dict(battery_pct=None, plugged=None, power_saving=False, power_saving_source="none",
                cpu_load_pct=0.0, cpu_freq_mhz=None, cpu_freq_max_mhz=None, temperature_c=None,
                thermal_status=0, timestamp_s=0.0)
    base.update(kw)
    return PowerState(**base)


def test_budget_scales_with_power_state():
    cfg = PolicyConfig(target_fps=10, headroom=1.0)
    assert frame_budget(state(), cfg).budget_ms == pytest.approx(100.0)
    assert frame_budget(state(power_saving=True, power_saving_source="env"), cfg).budget_ms \
        == pytest.approx(50.0)
    assert frame_budget(state(battery_pct=15.0, plugged=False), cfg).budget_ms \
        == pytest.approx(70.0)
    assert frame_budget(state(battery_pct=5.0, plugged=False), cfg).budget_ms \
        == pytest.approx(40.0)
    assert frame_budget(state(battery_pct=5.0, plugged=True), cfg).budget_ms \
        == pytest.approx(100.0)  # charging: battery level does not matter
    assert frame_budget(state(thermal_status=3), cfg).budget_ms == pytest.approx(50.0)
    both = frame_budget(state(power_saving=True, thermal_status=4), cfg)
    assert both.budget_ms == pytest.approx(35.0) and "thermal" in both.why
    # a machine without any sensors (all None) gets the normal budget
    assert frame_budget(state(), cfg).why == "normal"


def test_picks_most_accurate_that_fits():
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=0, up_margin=0)
    d = decide(state(), CANDS, "tiny", 1.0, 10.0, 0.0, cfg)
    assert d.target == "big" and d.switch
    d = decide(state(), CANDS, "big", 2.5, 10.0, 0.0, cfg)  # contention: big = 125 ms
    assert d.target == "mid" and "over budget" in d.reason
    d = decide(state(), CANDS, "big", 20.0, 10.0, 0.0, cfg)  # nothing fits: fastest
    assert d.target == "tiny"
    d = decide(state(power_saving=True, power_saving_source="app"), CANDS, "big", 1.1, 10.0,
               0.0, cfg)  # budget 50 ms, big 55 ms
    assert d.target == "mid" and "power-saving" in d.reason


def test_step_up_waits_for_dwell_and_margin_but_step_down_does_not():
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=5.0, up_margin=0.2)
    # big needs 50*1.7 = 85 ms: fits the 100 ms budget but not with 20% to spare
    d = decide(state(), CANDS, "mid", 1.7, 100.0, 0.0, cfg)
    assert not d.switch
    d = decide(state(), CANDS, "mid", 1.5, 100.0, 0.0, cfg)  # 75 ms: roomy
    assert d.switch and d.target == "big"
    d = decide(state(), CANDS, "mid", 1.5, 3.0, 0.0, cfg)  # roomy but too soon
    assert not d.switch
    d = decide(state(), CANDS, "big", 2.2, 0.5, 0.0, cfg)  # over budget: immediately
    assert d.switch and d.target == "mid"


def test_step_down_lands_with_room_to_spare():
    """Stepping down to a variant that only just fits makes the next slow frame force another
    step (a cascade); the target keeps up_margin to spare when some variant can."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=5.0, up_margin=0.2)
    cands = [*CANDS, Candidate("mid+", 87.0, 45.0)]
    d = decide(state(), cands, "big", 2.1, 0.5, 0.0, cfg)  # big 105, mid+ 94.5, mid 52.5 ms
    assert d.switch and d.target == "mid"
    d = decide(state(), cands, "big", 3.5, 0.5, 0.0, cfg)  # only tiny (35) roomy, mid 87.5
    assert d.target == "tiny"
    d = decide(state(), cands, "big", 9.0, 0.5, 0.0, cfg)  # tiny 90: fits, nothing roomy
    assert d.target == "tiny"


def test_deadline_misses_step_down_and_hold_off_step_ups():
    """Contention that only shows in the tail: the median fits, but the current variant missed
    3 of its last 200 deadlines; misses scale with a frame's duration, so the target is the
    most accurate variant expected below the limit, else the fastest."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=0.0, up_margin=0.2,
                       miss_limit=3, miss_window=200, clean_frames=400, clean_s=30.0)
    cands = [*CANDS, Candidate("mid+", 87.0, 40.0)]
    ok = MissStats(misses=2, frames=200, clean_frames=10, clean_s=0.1)
    d = decide(state(), cands, "big", 1.0, 10.0, 0.0, cfg, misses=ok)
    assert not d.switch  # 2 misses: under the limit, and a step up is not possible anyway
    # the target must expect under half the limit (0.75%): 3/300 = 1% on big (50 ms) -> mid
    # (25 ms) expects 0.5%, mid+ (40 ms) 0.8%; 4/200 = 2% -> mid 1%, only tiny (0.4%)
    d = decide(state(), cands, "big", 1.0, 10.0, 0.0, cfg,
               misses=MissStats(misses=3, frames=300, clean_frames=0, clean_s=0.0))
    assert d.switch and d.kind == "down" and d.target == "mid" and "missed 3" in d.reason
    d = decide(state(), cands, "big", 1.0, 10.0, 0.0, cfg,
               misses=MissStats(misses=4, frames=200, clean_frames=0, clean_s=0.0))
    assert d.target == "tiny"
    # a second step down soon after the first goes straight to the fastest
    cfg2 = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.2)
    d = decide(state(), cands, "big", 1.0, 10.0, 0.0, cfg2,
               misses=MissStats(misses=3, frames=300), last_down_s=9.5)
    assert d.target == "tiny" and "to the fastest" in d.reason
    d = decide(state(), cands, "big", 2.1, 10.0, 0.0, cfg2)  # big 105 ms: over budget
    assert d.target == "mid"
    d = decide(state(), cands, "big", 2.1, 10.0, 0.0, cfg2, last_down_s=9.5)
    assert d.target == "tiny" and "to the fastest" in d.reason
    # 20% misses: nothing is expected below the limit -> fastest
    d = decide(state(), cands, "big", 1.0, 10.0, 0.0, cfg,
               misses=MissStats(misses=40, frames=200, clean_frames=0, clean_s=0.0))
    assert d.target == "tiny"
    d = decide(state(), cands, "tiny", 1.0, 10.0, 0.0, cfg,
               misses=MissStats(misses=40, frames=200, clean_frames=0, clean_s=0.0))
    assert not d.switch and "already fastest" in d.reason
    # a step up waits for clean_frames frames or clean_s seconds without a miss
    recent = MissStats(misses=0, frames=50, clean_frames=50, clean_s=0.5)
    assert not decide(state(), cands, "tiny", 1.0, 10.0, 0.0, cfg, misses=recent).switch
    for clean in (MissStats(0, 200, 400, 1.0), MissStats(0, 30, 30, 30.0), MissStats()):
        d = decide(state(), cands, "tiny", 1.0, 10.0, 0.0, cfg, misses=clean)
        assert d.switch and d.kind == "up" and d.target == "big"
    # miss_limit=0 turns the tail rule off
    off = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=0.0, miss_limit=0)
    assert not decide(state(), cands, "big", 1.0, 10.0, 0.0, off,
                      misses=MissStats(40, 200, 0, 0.0)).switch
    with pytest.raises(ValueError):
        PolicyConfig(miss_window=0)


def test_controller_sees_tail_contention_the_median_misses():
    """Frames on 'big' take 50 ms (the budget is 100 ms) but 3% of them are preempted for
    80 ms: the median-based contention estimate stays ~1 and never steps down; the miss
    counter does, within a few hundred frames. When the spikes stop, one step back up."""
    from snrt.runtime import FrameRecord

    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.15)
    clock, ctl, rt = _simulated(cfg)
    rng = np.random.default_rng(1)

    used = []

    def frames(n, spike_p):
        for _ in range(n):
            cur = rt.current.id
            used.append(cur)
            ms = ctl.base_ms[cur] * (1 + rng.normal(0, 0.03))
            if rng.random() < spike_p * ctl.base_ms[cur] / 50:  # exposure ~ duration
                ms += 80.0
            ctl.observe(rt, FrameRecord(clock(), cur, ms, ms, 1))
            clock.advance(0.1)

    frames(400, 0.0)
    assert rt.switches == [] and ctl.deadline_misses == 0
    frames(400, 0.03)
    assert ctl.contention.value < 1.2  # the median did not move
    assert rt.switches and "missed" in rt.switches[0][1]
    first_down = next(i for i, v in enumerate(used) if v != "big")
    assert first_down < 400 + 250  # seen within a few hundred frames
    assert np.mean([v != "big" for v in used[first_down:]]) > 0.7  # and mostly acted on
    assert len(rt.switches) <= 4, rt.switches  # a retry of big after 30 s clean at most
    n = len(rt.switches)
    frames(500, 0.0)  # 400 frames or 30 s without a miss, then one step up
    assert rt.current.id == "big" and len(rt.switches) <= n + 1, rt.switches
    assert ctl.deadline_misses > 0


class FakeRuntime:
    def __init__(self, current):
        self.current = type("V", (), {"id": current})()
        self.switches = []

    def switch(self, vid, reason=""):
        self.current = type("V", (), {"id": vid})()
        self.switches.append((vid, reason))


def _simulated(cfg: PolicyConfig) -> tuple[SimulatedClock, Controller, FakeRuntime]:
    """A controller over CANDS on a simulated clock, attached to a fake runtime on 'big'."""
    clock = SimulatedClock()
    ctl = Controller(SimulatedMonitor(clock=clock), {c.id: c.base_ms for c in CANDS},
                     {c.id: c.accuracy for c in CANDS}, config=cfg, clock=clock)
    rt = FakeRuntime("big")
    ctl.attach(rt)
    return clock, ctl, rt


def _loop(clock, ctl, rt, n, fixed_ms=15.0, load=1.0, mon=None, noise=0.02, seed=0):
    """n frames at 10 FPS; a frame costs (table p50 + a fixed per-frame cost) x load, as paced
    frames do on a real board (the fixed cost weighs most on the small variants)."""
    from snrt.runtime import FrameRecord

    rng = np.random.default_rng(seed)
    for _ in range(n):
        cur = rt.current.id
        ms = (ctl.base_ms[cur] + fixed_ms) * load * (1 + rng.normal(0, noise))
        ctl.observe(rt, FrameRecord(clock(), cur, ms, ms, 1))
        clock.advance(0.1)


def test_after_a_load_one_step_back_to_the_variant_before_it():
    """Idle, big fits (65 of 100 ms). A load (x3) drives it down to tiny. When the load ends,
    the contention read on tiny (25 ms observed / 10 table = x2.5) would only let mid in, and
    a second step would follow: the controller goes straight back to big instead."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.15)
    clock, ctl, rt = _simulated(cfg)
    _loop(clock, ctl, rt, 100)
    assert rt.switches == []
    _loop(clock, ctl, rt, 100, load=3.0)
    assert rt.current.id == "tiny" and ctl.status()["home"] == "big"
    # what the estimate alone would pick on tiny once the load is gone
    d = decide(state(), CANDS, "tiny", 2.5, 1e3, 0.0, cfg, misses=MissStats())
    assert d.target == "mid"
    n = len(rt.switches)
    _loop(clock, ctl, rt, 600)
    assert [v for v, _ in rt.switches[n:]] == ["big"], rt.switches[n:]
    assert "back to big" in rt.switches[n][1] and ctl.status()["home"] is None
    _loop(clock, ctl, rt, 300)  # and it stays there
    assert len(rt.switches) == n + 1


def test_home_return_that_meets_the_load_backs_off():
    """The load never ends: each return home steps down again within frames and doubles the
    dwell, so the probes thin out."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.15,
                       clean_s=5.0)
    clock, ctl, rt = _simulated(cfg)
    _loop(clock, ctl, rt, 50)
    _loop(clock, ctl, rt, 3000, load=3.0)  # 300 s
    ups = [t for t, (v, r) in zip(ctl_times(ctl), rt.switches) if "back to" in r]
    assert 2 <= len(ups) <= 10, rt.switches
    assert ups[-1] - ups[-2] >= 30.0 and ctl.dwell_s >= 32 * cfg.min_dwell_s


def test_only_a_clear_load_leaves_a_home():
    """A step down at the edge of the budget (noise) is no load: no return home bypassing the
    up margin; one well past the hysteresis band, or forced by misses, is."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.15)
    edge = decide(state(), CANDS, "big", 2.04, 10.0, 0.0, cfg)  # big 102 ms of 100
    assert edge.kind == "down" and not edge.load
    clear = decide(state(), CANDS, "big", 2.4, 10.0, 0.0, cfg)  # 120 ms
    assert clear.kind == "down" and clear.load
    missed = decide(state(), CANDS, "big", 1.0, 10.0, 0.0, cfg,
                    misses=MissStats(misses=3, frames=100, clean_frames=0, clean_s=0.0))
    assert missed.kind == "down" and missed.load
    clock, ctl, rt = _simulated(cfg)
    _loop(clock, ctl, rt, 100, fixed_ms=52.0)  # big: 102 ms a frame, just over
    assert rt.current.id != "big" and ctl.status()["home"] is None


def ctl_times(ctl):
    return [e.t_s for e in ctl.events]


def test_budget_cut_is_not_a_load_no_return_home():
    """Power saving halves the budget: big (65 ms) no longer fits and the controller steps
    down; that step leaves no home, so a long clean stretch does not bring big back."""
    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=1.0, up_margin=0.15)
    clock, ctl, rt = _simulated(cfg)
    _loop(clock, ctl, rt, 100)
    ctl.monitor.set_power_saving(True)
    _loop(clock, ctl, rt, 600)
    assert [v for v, _ in rt.switches] == ["mid"], rt.switches
    assert ctl.status()["home"] is None
    # a home left at the full budget is not taken while the budget is cut
    d = decide(state(power_saving=True, power_saving_source="app"), CANDS, "mid", 1.3, 1e3,
               0.0, cfg, misses=MissStats(), home="big", home_budget_ms=100.0)
    assert d.target == "mid" and not d.switch
    d = decide(state(), CANDS, "tiny", 2.5, 1e3, 0.0, cfg, misses=MissStats(), home="big",
               home_budget_ms=100.0)
    assert d.target == "big" and d.kind == "up"
    d = decide(state(), CANDS, "tiny", 2.5, 1e3, 0.0, cfg, home="big", home_budget_ms=100.0,
               misses=MissStats(misses=0, frames=50, clean_frames=50, clean_s=5.0))
    assert d.target == "tiny"  # not clean yet


def test_noisy_latencies_do_not_flap():
    """Frame latencies noisy around the budget (±15%, 1 sigma) for 100 s of frames: the
    hysteresis and the dwell backoff bound the switches, where a naive 'most accurate that
    fits' picker flips hundreds of times."""
    from snrt.runtime import FrameRecord

    cfg = PolicyConfig(target_fps=10, headroom=1.0, min_dwell_s=2.0, up_margin=0.15)
    clock, ctl, rt = _simulated(cfg)
    rng = np.random.default_rng(0)
    naive = 0
    for _ in range(1000):  # 10 frames/s
        factor = 1.9 * (1 + rng.normal(0, 0.15))
        cur = rt.current.id
        ms = ctl.base_ms[cur] * factor
        ctl.observe(rt, FrameRecord(clock(), cur, ms, ms, 1))
        naive += (50 * factor <= 100) != (50 * 1.9 * (1 + rng.normal(0, 0.15)) <= 100)
        clock.advance(0.1)
    assert naive > 100
    assert len(rt.switches) <= 12, rt.switches
    assert ctl.dwell_s > cfg.min_dwell_s  # the backoff engaged


def test_contention_rises_fast_ignores_spikes_and_decays_slowly():
    e = ContentionEstimate()
    for _ in range(5):
        e.update(10.0, 10.0)
    e.update(80.0, 10.0)  # one scheduler spike
    assert e.value == pytest.approx(1.0)
    e.update(20.0, 10.0)
    e.update(20.0, 10.0)
    assert e.value >= 2.0  # two slow frames in a row: believed at once
    for _ in range(3):
        e.update(10.0, 10.0)
    assert 1.2 < e.value < 2.0  # recovery is gradual
    for _ in range(60):
        e.update(10.0, 10.0)
    assert e.value == pytest.approx(1.0, abs=0.01)


def test_runtime_steps_down_on_power_saving_and_pins(tiny_family):
    clock = SimulatedClock()
    mon = SimulatedMonitor(clock=clock)
    rt = snrt.Runtime(tiny_family["bundle"], initial="ti")
    ids = [v.id for v in rt.variants]
    # synthetic table: latency grows with FLOPs; accuracy grows with FLOPs
    base = {v.id: v.flops / 1e5 for v in rt.variants}
    acc = {v.id: 50 + 40 * v.flops / max(x.flops for x in rt.variants) for v in rt.variants}
    big = max(ids, key=lambda i: acc[i])
    cfg = PolicyConfig(target_fps=1000 / (base[big] * 1.5), headroom=1.0, min_dwell_s=1.0)
    ctl = Controller(mon, base, acc, config=cfg, clock=clock)
    # the synthetic table is not this machine's: freeze the feedback at 1.0 so only the
    # power state moves the choice
    ctl.contention = ContentionEstimate(frozen=True)
    events = []
    rt.on_switch(events.append)
    rt.set_controller(ctl)
    x = np.zeros((3, 32, 32), np.float32)

    def frames(n):
        for _ in range(n):
            rt.run(x)
            clock.advance(0.1)

    frames(30)
    assert rt.current.id == big
    mon.set_power_saving(True)
    frames(3)
    assert rt.current.id != big and base[rt.current.id] <= base[big] * 1.5 * 0.5
    assert "power-saving" in events[-1].reason
    ctl.pin("ti")
    frames(20)
    assert rt.current.id == "ti" and events[-1].reason == "pinned by the app"
    ctl.unpin()
    mon.set_power_saving(False)
    frames(30)
    assert rt.current.id == big
    rt.close()


def test_auto_without_table_uses_flops_and_no_sensors(tiny_family, tmp_path, monkeypatch):
    monkeypatch.setenv("SNRT_LOOKUP_TABLES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rt = snrt.Runtime(tiny_family["bundle"], controller="auto")
    assert "FLOPs" in rt.controller.source
    for _ in range(5):
        rt.infer(np.zeros((3, 32, 32), np.float32))
    st = rt.controller.status()
    assert st["budget_ms"] > 0 and st["current"] == rt.current.id
    rt.close()
