"""The camera demo's task selector (issue 17, item 6) on the shipped default bundle, whose real
tasks (uci-digits, faces) share the backbone: GET /api/tasks lists the backbone's digits head
and every task, POST /api/task switches the Runtime's task (400 with a clear message for bad
input), the switch log shows the task, predictions carry the task's labels, and the controller
decides on the task's front. Simulated latencies, sensors and clock (no wall-clock
assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from test_demo_server import demo_options, get_json, http, wait_for

import snrt
from demos.camera.app import DemoApp
from demos.camera.latency import task_flops

SIMULATED = {"simulate_latency": "flops", "sensors": "simulated", "clock": "simulated"}
SAMPLES = Path(snrt.__file__).parent / "data" / "samples"


@pytest.fixture(scope="module")
def task_app():
    a = DemoApp.create(demo_options(snrt.default_bundle(), SAMPLES, frame_size=64, **SIMULATED))
    a.start()
    yield a
    a.close()


def post_task(base: str, obj, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(obj).encode()
    status, _, body = http(base + "api/task", method="POST", body=data,
                           headers={"Content-Type": "application/json"})
    return status, json.loads(body)


def test_task_selector_lists_and_switches_tasks(task_app):
    base, rt = task_app.url, task_app.rt
    d = get_json(base + "api/tasks")
    assert d["task"] is None
    assert [t["task"] for t in d["tasks"]] == [None, "uci-digits", "faces"]
    assert d["tasks"][0]["label"].startswith("digits")
    assert d["tasks"][0]["labels"] == [str(k) for k in range(10)]
    assert d["tasks"][2]["labels"] == rt.bundle.task("faces").labels == ["face", "non-face"]
    n0 = get_json(base + "api/status")["switch_count"]

    status, body = post_task(base, {"task": "faces"})
    assert status == 200 and body["task"] == "faces" and rt.current_task == "faces"
    st = wait_for(lambda: (s := get_json(base + "api/status"))["prediction"]
                  and s["prediction"]["task"] == "faces" and s, what="a faces prediction")
    assert st["task"] == "faces" and st["controller_task"] == "faces"
    assert {lab for lab, _ in st["prediction"]["top"]} <= {"face", "non-face"}
    assert st["task_top1"] == rt.bundle.task("faces").accuracy[st["variant"]["id"]]["top1"]
    sw = next(s for s in get_json(base + "api/history")["switches"] if s["n"] == n0 + 1)
    assert (sw["from_task"], sw["to_task"]) == (None, "faces")
    assert sw["reason"] == "task selected by the app" and sw["from"] == sw["to"]

    status, body = post_task(base, {"task": "uci-digits"})
    assert status == 200 and rt.current_task == "uci-digits"
    st = wait_for(lambda: (s := get_json(base + "api/status"))["prediction"]["task"]
                  == "uci-digits" and s, what="a uci-digits prediction")
    assert {lab for lab, _ in st["prediction"]["top"]} <= set(rt.bundle.task("uci-digits")
                                                                .labels)
    status, body = post_task(base, {"task": None})  # back to the backbone's own head
    assert status == 200 and body["task"] is None and rt.current_task is None
    hist = get_json(base + "api/history")["switches"]
    tasks = [(s["from_task"], s["to_task"]) for s in hist
             if s["reason"] == "task selected by the app"]
    assert tasks == [(None, "faces"), ("faces", "uci-digits"), ("uci-digits", None)]


@pytest.mark.parametrize("body, status, message", [
    ({"task": "cats"}, 400, "unknown task 'cats'; this demo's tasks: uci-digits, faces, or "
                            "null for the backbone's own head"),
    ({"task": 3}, 400, "unknown task 3"),
    ({"task": ["faces"]}, 400, "unknown task ['faces']"),
    ({}, 400, 'exactly one field, "task"'),
    ({"task": "faces", "pinned": "ti"}, 400, "exactly one field"),
    ([1, 2], 400, "got list"),
])
def test_task_endpoint_rejects_bad_input(task_app, body, status, message):
    before = task_app.rt.current_task
    got, reply = post_task(task_app.url, body)
    assert got == status and message in reply["error"], reply
    assert task_app.rt.current_task == before


def test_task_endpoint_http_errors(task_app):
    base = task_app.url
    status, reply = post_task(base, None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]
    status, _, body = http(base + "api/task", method="POST", body=b'{"task": "faces"}',
                           headers={"Content-Type": "text/plain"})
    assert status == 415
    status, _, body = http(base + "api/task")
    assert status == 405 and "use POST" in json.loads(body)["error"]
    status, _, body = http(base + "api/tasks?x=1")
    assert status == 400 and "unknown query parameter 'x'" in json.loads(body)["error"]


def test_simulated_latencies_follow_the_task_chain(task_app):
    """Simulated (variant, task) latency = the FLOPs share of the variant's chain with the
    task's pieces: by hand from the manifest, the frozen pieces' FLOPs plus the tuned pieces'
    instead of the blocks they replace."""
    rt, lat = task_app.rt, task_app.engine.latency
    faces = rt.bundle.task("faces")
    v = rt.bundle.variant("s")
    piece = {p.id: p.flops for p in rt.bundle.manifest.pieces}
    tuned = {p["base"]: p["flops"] for p in faces.pieces if p["kind"] == "block"}
    head = next(p["flops"] for p in faces.pieces if p["id"] == "s.head@faces")
    by_hand = sum(tuned.get(p, piece[p]) for p in v.pieces if not p.startswith("s.head")) \
        + head
    assert task_flops(rt.bundle, faces, [v])["s"] == by_hand
    assert by_hand > v.flops  # the adapters add work
    assert lat.ms("s", "faces") / lat.ms("s") == pytest.approx(by_hand / v.flops)
    fr = task_app.engine.controller.task_fronts["faces"]
    assert fr.base_ms  # the task's candidates, with their (variant, task) latencies
    for vid, ms in fr.base_ms.items():
        assert ms == pytest.approx(lat.ms(vid, "faces"))
        assert fr.accuracy[vid] == faces.accuracy[vid]["top1"]
