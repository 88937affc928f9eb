"""The camera demo with simulated latencies, sensors and clock (issue 14, item 12): the
controller's decisions depend on the latency table, the simulated monitor and the frame count
only, so power saving makes the runtime step down however busy this machine is (the contention
rule cannot fire: every observed latency is exactly its table value)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from test_demo_server import (  # noqa: F401 - the fixtures are used by name
    demo_bundle,
    demo_options,
    digit_dir,
    get_json,
    post_config,
    wait_for,
)

from demos.camera.app import DemoApp, build_parser, options_from_args
from demos.camera.latency import DEFAULT_SIMULATED_MAX_MS, simulated_latency
from snrt.errors import SnrtError

SIMULATED = {"simulate_latency": "flops", "sensors": "simulated", "clock": "simulated"}


@pytest.fixture
def sim_app(demo_bundle, digit_dir):  # noqa: F811 - the imported fixtures
    a = DemoApp.create(demo_options(demo_bundle, digit_dir, **SIMULATED))
    a.start()
    yield a
    a.close()


def test_power_saving_steps_down_through_simulated_latencies(sim_app):
    base = sim_app.url
    rt = sim_app.rt
    st = get_json(base + "api/status")
    assert st["latency_source"].startswith("simulated") and st["clock"] == "simulated"
    assert st["power"]["cpu_load_pct"] == 0.0 and st["power"]["battery_source"] == "simulated"
    table = sim_app.engine.latency.table_ms
    best = max(st["candidates"], key=lambda c: c["accuracy"])
    assert best["base_ms"] == pytest.approx(DEFAULT_SIMULATED_MAX_MS)  # the largest variant
    # auto FPS: the most accurate variant uses 2/3 of the budget, so the controller settles
    # on it, and every frame reports exactly its table latency (contention stays 1)
    st = wait_for(lambda: (s := get_json(base + "api/status"))["variant"]["id"] == best["id"]
                  and s["frame_seq"] > 5 and s, timeout_s=60, what="the best variant")
    assert st["latency_ms"] == pytest.approx(table[best["id"]])
    assert st["contention"] == pytest.approx(1.0)
    assert st["budget_ms"] == pytest.approx(1000 / st["config"]["target_fps"] * 0.8)
    assert table[best["id"]] / st["budget_ms"] == pytest.approx(2 / 3, rel=0.01)
    n_before = st["switch_count"]

    status, _ = post_config(base, {"power_saving": True})
    assert status == 200
    st = wait_for(lambda: (s := get_json(base + "api/status"))["switch_count"] > n_before
                  and s, timeout_s=60, what="a switch after power saving")
    first = next(s for s in st["switches"] if s["n"] == n_before + 1)
    assert first["from"] == best["id"] and "power-saving" in first["reason"], first
    assert rt.bundle.variant(first["to"]).flops < rt.bundle.variant(best["id"]).flops
    assert table[first["to"]] <= st["budget_ms"], (first, st["budget_ms"])


def test_simulated_latency_tables(demo_bundle, tmp_path):  # noqa: F811
    from snrt.runtime import Runtime

    with Runtime(demo_bundle) as rt:
        sim = simulated_latency("flops:10", rt)
        top = max(rt.variants, key=lambda v: v.flops)
        assert sim.table_ms[top.id] == pytest.approx(10.0)
        for v in rt.variants:
            assert sim.table_ms[v.id] == pytest.approx(10.0 * v.flops / top.flops)
        for bad in ("flops:0", "flops:x", "flops:-3", str(tmp_path / "none.json")):
            with pytest.raises(SnrtError, match="--simulate-latency"):
                simulated_latency(bad, rt)


def test_cli_simulation_flags_and_real_defaults():
    parser = build_parser()
    real = options_from_args(parser.parse_args([]))
    assert (real.simulate_latency, real.sensors, real.clock) == (None, "system", "wall")
    sim = options_from_args(parser.parse_args(["--simulate-latency", "flops", "--sensors",
                                               "simulated", "--clock", "simulated"]))
    assert (sim.simulate_latency, sim.sensors, sim.clock) == ("flops", "simulated", "simulated")
    with pytest.raises(SnrtError, match="--battery system"):
        options_from_args(parser.parse_args(["--sensors", "simulated", "--battery", "system"]))
