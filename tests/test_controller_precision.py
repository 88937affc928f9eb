"""Precision as a controller dimension (issue 18 item 3): a candidate is (variant, precision);
under a tight budget the most accurate pair that fits wins, so `b` in int8 beats `ti` in fp32
when int8 `b` is more accurate. Hand-made latencies and accuracies, pure decide()."""

from __future__ import annotations

from snrt.controller import Candidate, PolicyConfig, cand_key, decide, split_key
from snrt.monitor import PowerState

# (variant, precision): hand-set table p50 (ms) and top-1 (%), int8 `b` 2x faster, 0.3 pts less
CANDS = [Candidate("ti", 90.1, 1.0), Candidate("b", 93.7, 6.0),
         Candidate(cand_key("b", "int8"), 93.4, 3.0)]
CFG = PolicyConfig(target_fps=100.0, headroom=1.0)  # budget 10 ms; power saving halves it


def state(**kw) -> PowerState:
    base = dict(battery_pct=None, plugged=None, power_saving=False, power_saving_source="none",
                cpu_load_pct=0.0, cpu_freq_mhz=None, cpu_freq_max_mhz=None, temperature_c=None,
                thermal_status=0, timestamp_s=0.0)
    return PowerState(**{**base, **kw})


def _pick(cands, state, current):
    return decide(state, cands, current, 1.0, now_s=100.0, last_switch_s=0.0, cfg=CFG).target


def test_keys_round_trip_and_fp32_is_the_plain_id():
    assert cand_key("b", "fp32") == "b" and split_key("b") == ("b", "fp32")
    assert split_key(cand_key("ti>s@5:5", "int8")) == ("ti>s@5:5", "int8")


def test_power_saving_keeps_b_in_int8_rather_than_ti_in_fp32():
    normal, saving = state(), state(power_saving=True, power_saving_source="os")
    # normal: 10 ms budget, b fp32 (6 ms) fits and is the most accurate
    assert _pick(CANDS, normal, "b") == "b"
    # power saving: 5 ms; b fp32 over it; b int8 (3 ms <= 5 * 0.85, 93.4%) beats ti (90.1%)
    assert _pick(CANDS, saving, "b") == "b|int8"
    # precision switching off (fp32 candidates only): the same budget falls to ti
    assert _pick([c for c in CANDS if "|" not in c.id], saving, "b") == "ti"


def test_int8_is_not_chosen_when_fp32_fits_and_is_more_accurate():
    # b fp32 fits the normal budget: starting on int8 b, a clean step up returns to fp32
    d = decide(state(), CANDS, "b|int8", 1.0, now_s=100.0, last_switch_s=0.0, cfg=CFG)
    assert d.kind == "up" and d.target == "b"
