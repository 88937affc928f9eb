"""The camera demo over two bundles (issue 15 item 7): `--bundle default --bundle elastic` runs
one controller over the default family's SN-Net stitches and the elastic family's POA subnets
on one Pareto front. With simulated latencies (each variant's FLOPs share of 40 ms, computed
here by hand), sensors and clock, power saving halving the budget moves the runtime from a
subnet to a stitch and back, the switch log and the API name each variant's kind and bundle,
and a task (which only the default bundle has) runs on its own bundle's variants only. The
budget is found from the table, not from hard-coded accuracies."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from test_demo_server import demo_options, get_json, post_config, wait_for
from test_demo_server_tasks import SAMPLES, SIMULATED, post_task

import snrt
from demos.camera.app import DemoApp, main
from snrt.bundle import Bundle

HEADROOM = 0.8  # PolicyConfig's defaults: the budget is 80 % of the frame period,
UP_MARGIN = 0.15  # and a step up (or a landing after a step down) keeps 15 % of it spare


def hand_kind(vid: str) -> str:
    """POA subnet ids are w<width>d<depth>; SN-Net anchors have no '>' in their id."""
    if re.fullmatch(r"w\d+d\d+", vid):
        return "subnet"
    return "stitch" if ">" in vid else "anchor"


def _table():
    """(latency ms, top-1, bundle name) of every variant of both bundles: the most expensive
    variant of either takes 40 ms, every other its FLOPs share (--simulate-latency flops)."""
    vs = [(v, b.name) for b in (Bundle.open(snrt.default_bundle(), verify="size"),
                                Bundle.open(snrt.elastic_bundle(), verify="size"))
          for v in b.variants]
    top = max(v.flops for v, _ in vs)
    base = {v.id: 40.0 * v.flops / top for v, _ in vs}
    acc = {v.id: v.top1 for v, _ in vs}
    return base, acc, {v.id: name for v, name in vs}


def _front(base, acc):
    ids = list(base)
    return [i for i in ids if not any(
        (base[j] <= base[i] and acc[j] > acc[i]) or (base[j] < base[i] and acc[j] >= acc[i])
        for j in ids)]


def _best_within(front, base, acc, budget_ms):
    return max((i for i in front if base[i] <= budget_ms), key=lambda i: (acc[i], -base[i]))


def _moves(front, base, acc, b):
    """The controller's documented rules (snrt.controller, PolicyConfig): it starts on the
    best variant within the budget; a forced step down lands on the best with UP_MARGIN to
    spare (else the best that fits); a step up takes the best with UP_MARGIN to spare."""
    start = _best_within(front, base, acc, b)
    half = b / 2
    roomy = [i for i in front if base[i] <= half * (1 - UP_MARGIN)]
    saving = (_best_within(roomy, base, acc, half) if roomy
              else _best_within(front, base, acc, half))
    back = _best_within(front, base, acc, b * (1 - UP_MARGIN))
    return start, saving, back


def _cross_kind_budget():
    """A budget at which the controller starts on a subnet, power saving's half budget moves
    it to one of the default family's variants (a stitch or an anchor), and the full budget
    again brings it back to a subnet (found from the table; the start's own when one is)."""
    base, acc, owner = _table()
    front = _front(base, acc)
    found = []
    for cut in sorted({base[i] for i in front}):
        b = cut / (1 - UP_MARGIN) * 1.001
        if min(base.values()) > b / 2 * (1 - UP_MARGIN):
            continue
        start, saving, back = _moves(front, base, acc, b)
        if (hand_kind(start), hand_kind(back)) == ("subnet", "subnet") \
                and hand_kind(saving) != "subnet":
            found.append((start != back, b))
    assert found, "the shipped families offer no budget switching across the kinds"
    b = min(found)[1]
    return b, base, acc, front, owner


@pytest.fixture(scope="module")
def both():
    budget, base, acc, front, owner = _cross_kind_budget()
    fps = HEADROOM * 1000.0 / budget
    a = DemoApp.create(demo_options(["default", "elastic"], SAMPLES, frame_size=64, fps=fps,
                                    **SIMULATED))
    a.start()
    yield a, budget, base, acc, front, owner
    a.close()


def test_one_front_over_stitches_and_subnets(both):
    app, budget, base, acc, front, owner = both
    url = app.url
    d = get_json(url + "api/variants")["variants"]
    assert {v["id"] for v in d} == set(base)  # both bundles' variants
    for v in d:
        assert v["kind"] == hand_kind(v["id"]) and v["bundle"] == owner[v["id"]], v
    st = get_json(url + "api/status")
    assert st["bundle"]["kinds"] == {k: sum(hand_kind(i) == k for i in base)
                                     for k in ("anchor", "stitch", "subnet")}
    assert "default.snrt" in st["bundle"]["label"] and "elastic.snrt" in st["bundle"]["label"]
    assert st["budget_ms"] == pytest.approx(budget)
    # the controller's candidates are the hand-computed front of both bundles together
    assert sorted(c["id"] for c in st["candidates"]) == sorted(front)
    for c in st["candidates"]:
        assert c["base_ms"] == pytest.approx(base[c["id"]])

    normal, saving, back = _moves(front, base, acc, budget)
    st = wait_for(lambda: (s := get_json(url + "api/status"))["variant"]["id"] == normal
                  and s["frame_seq"] > 3 and s, timeout_s=60, what=f"the subnet {normal}")
    assert st["variant"]["kind"] == "subnet" and st["latency_ms"] == pytest.approx(base[normal])
    n0 = st["switch_count"]

    assert post_config(url, {"power_saving": True})[0] == 200
    st = wait_for(lambda: (s := get_json(url + "api/status"))["variant"]["id"] == saving
                  and s, timeout_s=60, what=f"power saving's {saving}")
    down = [s for s in st["switches"] if s["n"] > n0]
    assert (down[0]["from"], down[0]["to"]) == (normal, saving), down
    assert "power-saving" in down[0]["reason"]
    assert (down[0]["from_kind"], down[0]["to_kind"]) == ("subnet", hand_kind(saving))
    assert (down[0]["from_bundle"], down[0]["to_bundle"]) == (owner[normal], owner[saving])
    assert owner[normal] != owner[saving]
    n1 = st["switch_count"]

    assert post_config(url, {"power_saving": False})[0] == 200  # and back to a subnet
    st = wait_for(lambda: (s := get_json(url + "api/status"))["variant"]["id"] == back
                  and s, timeout_s=60, what=f"back to {back}")
    up = [s for s in get_json(url + "api/history")["switches"] if s["n"] > n1]
    assert up and up[-1]["to"] == back and up[-1]["to_kind"] == "subnet", up
    assert up[0]["from_kind"] == hand_kind(saving)


def test_a_task_runs_on_its_own_bundle_only(both):
    app, budget, base, acc, front, owner = both
    url, rt = app.url, app.rt
    wait_for(lambda: hand_kind(rt.current.id) == "subnet", timeout_s=60, what="a subnet")
    n0 = get_json(url + "api/status")["switch_count"]
    tasks = get_json(url + "api/tasks")["tasks"]
    assert [t["task"] for t in tasks] == [None, "uci-digits", "faces"]  # the default bundle's

    status, body = post_task(url, {"task": "uci-digits"})
    assert status == 200 and body["task"] == "uci-digits"
    assert owner[rt.current.id] == owner["ti"]  # moved to a variant the task runs on
    st = wait_for(lambda: (s := get_json(url + "api/status"))["controller_task"]
                  == "uci-digits" and s["prediction"]["task"] == "uci-digits" and s,
                  timeout_s=60, what="the task's front")
    sw = next(s for s in st["switches"] if s["n"] == n0 + 1)
    assert sw["to_task"] == "uci-digits" and sw["from_kind"] == "subnet"
    assert sw["to_bundle"] == owner["ti"] and sw["to_kind"] != "subnet"
    task = rt.bundle.task("uci-digits")
    assert st["candidates"] and {c["id"] for c in st["candidates"]} <= set(task.variants)
    assert all(hand_kind(c["id"]) != "subnet" for c in st["candidates"])
    # pinning a subnet while the task is active: the task does not run there
    status, body = post_config(url, {"pinned": "w48d6"})
    assert status == 400 and "uci-digits" in body["error"] and "w48d6" in body["error"], body
    status, body = post_task(url, {"task": None})  # back to the backbone: both bundles again
    assert status == 200 and body["task"] is None
    wait_for(lambda: get_json(url + "api/status")["controller_task"] is None, timeout_s=60,
             what="the backbone's front")


def test_bundles_that_cannot_go_together(capsys):
    assert main(["--bundle", "elastic", "--bundle", "elastic", "--port", "0",
                 "--camera", "synthetic", "--battery", "simulated"]) == 2
    err = capsys.readouterr().err
    assert "two bundles" in err and "variant id" in err, err


def test_measured_latencies_over_both_bundles():
    """No table and no simulated latency: the demo measures every candidate of both bundles
    itself (calibrate) before it starts, and runs frames on the front it finds. (The
    several-bundle runtime was once handed calibrate's precision='fp32' and refused it.)"""
    a = DemoApp.create(demo_options(["default", "elastic"], SAMPLES, frame_size=64, fps=30,
                                    calibrate_runs=1, sensors="simulated", clock="simulated"))
    try:
        a.start()
        st = wait_for(lambda: (s := get_json(a.url + "api/status"))["frame_seq"] > 3 and s,
                      timeout_s=120, what="frames")
        assert "measured" in st["controller_source"], st["controller_source"]
        kinds = {hand_kind(c["id"]) for c in st["candidates"]}
        assert kinds and kinds <= {"anchor", "stitch", "subnet"}
        assert all(c["base_ms"] > 0 for c in st["candidates"])
        assert st["variant"]["id"] in {c["id"] for c in st["candidates"]}
    finally:
        a.close()


def test_several_bundles_refuse_int8_by_name():
    from snrt.errors import SnrtError
    from snrt.multi_bundle import MultiRuntime
    rt = MultiRuntime([snrt.default_bundle(), snrt.elastic_bundle()])
    img = sorted(SAMPLES.glob("*.png"))[0]
    assert rt.run(img, variant="ti", precision="fp32").variant.id == "ti"
    with pytest.raises(SnrtError, match="fp32 only"):
        rt.run(img, variant="ti", precision="int8")
