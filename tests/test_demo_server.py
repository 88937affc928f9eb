"""The camera demo without a browser: synthetic camera, energy model, HTTP API (status, frames,
config, history, 400s for bad input), clean shutdown of the CLI on SIGTERM/SIGINT.

The demo runs on a small random-weights family built here with numpy (no torch): three ViTs
(widths 48/96/192, depth 4, 32x32 grey input, 10 classes) whose variants cost 1-15 ms on this
machine, so that budgets and step-downs are real, with accuracies made up to grow with FLOPs
(labelled as such in the manifest) so that the controller has an order to follow.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # demos/ is used from the checkout (not an installed package)
    sys.path.insert(0, str(ROOT))

from benchmarks.common import random_vit_state_dict
from demos.camera.app import DemoApp, DemoOptions, main
from demos.camera.energy import EnergyModel, SimulatedBatteryMonitor, make_monitor
from demos.camera.engine import (
    FPS_RANGE,
    ConfigError,
    auto_fps,
    candidate_ids,
    parse_fps,
)
from demos.camera.sources import (
    CameraError,
    SampleImage,
    SyntheticCamera,
    find_images,
    label_from_name,
    load_sample_images,
    open_camera,
)
from snrt.errors import MissingExtraError
from snrt.monitor import SimulatedMonitor

# ----------------------------------------------------------------------------- fixtures


def build_demo_bundle(out: Path) -> Path:
    """A ti/s/b family with random weights and made-up accuracies rising with FLOPs."""
    from exporters.onnx_export import export_onnx
    from snrt.bundle import BundleWriter, update_manifest
    from snrt.family import Anchor, Family, Preprocess, StitchLayer, config_from_state_dict
    from snrt.variants import VariantSpace

    dims, depth, img, patch = (48, 96, 192), 4, 32, 4
    anchors = []
    for i, (name, dim) in enumerate(zip(("ti", "s", "b"), dims)):
        sd = random_vit_state_dict(dim, depth, img, patch, classes=10, chans=1, seed=i,
                                   head_std=0.5)
        anchors.append(Anchor(name, config_from_state_dict(sd, where=name), sd))
    rng = np.random.default_rng(7)
    layers = {(f, f + 1): [StitchLayer(
        (rng.standard_normal((d2, d1)) / np.sqrt(d1)).astype(np.float32),
        np.zeros(d2, np.float32)) for _ in range(depth - 1)]
        for f, (d1, d2) in enumerate(itertools.pairwise(dims))}
    pre = Preprocess(img_size=img, crop_pct=1.0, interpolation="bilinear", mean=(0.13,),
                     std=(0.31,), channels="L")
    fam = Family("demo-test", anchors, layers, pre, [str(d) for d in range(10)])
    space = VariantSpace(["ti", "s", "b"], [a.config for a in anchors])
    with BundleWriter(out) as w:
        w.commit(export_onnx(fam, space, w, progress=False))

    def add_accuracy(manifest, _path):
        lo = min(v.flops for v in manifest.variants)
        for v in manifest.variants:
            v.accuracy = {"top1": round(40 + 10 * math.log2(v.flops / lo), 2),
                          "dataset": "made up for the demo tests (rises with FLOPs)",
                          "split": "none", "n": 0}

    update_manifest(out, add_accuracy)
    return out


def write_digit_images(d: Path) -> Path:
    """PNG digits named like snrt's samples (digit3_x.png): white on black, 28x28."""
    d.mkdir(parents=True, exist_ok=True)
    for k in range(10):
        im = Image.new("L", (28, 28), 0)
        dr = ImageDraw.Draw(im)
        dr.text((9, 6), str(k), fill=255, font_size=16) if _pil_font_size() else \
            dr.text((11, 8), str(k), fill=255)
        im.save(d / f"digit{k}_row{k:04d}.png")
    return d


def _pil_font_size() -> bool:
    try:
        ImageDraw.Draw(Image.new("L", (4, 4))).text((0, 0), "1", font_size=8)
        return True
    except TypeError:
        return False


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    return build_demo_bundle(tmp_path_factory.mktemp("demo") / "demo.snrt")


@pytest.fixture(scope="session")
def digit_dir(tmp_path_factory) -> Path:
    return write_digit_images(tmp_path_factory.mktemp("digits"))


def demo_options(bundle: Path, images: Path, **kw) -> DemoOptions:
    opts = {"bundle": bundle, "port": 0, "camera": "synthetic", "images": [str(images)],
            "battery": "simulated", "frame_size": 96, "calibrate_runs": 6}
    opts.update(kw)
    return DemoOptions(**opts)


@pytest.fixture
def app(demo_bundle, digit_dir):
    """A running demo whose settings a test may change."""
    a = DemoApp.create(demo_options(demo_bundle, digit_dir))
    a.start()
    yield a
    a.close()


@pytest.fixture(scope="module")
def shared_app(demo_bundle, digit_dir):
    """A running demo for tests that only read, or whose requests must be rejected."""
    a = DemoApp.create(demo_options(demo_bundle, digit_dir))
    a.start()
    yield a
    a.close()


def http(url: str, *, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> dict:
    status, _, body = http(url)
    assert status == 200, body
    return json.loads(body)


def post_config(base: str, obj, *, raw: bytes | None = None,
                ctype: str = "application/json") -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(obj).encode()
    status, _, body = http(base + "api/config", method="POST", body=data,
                           headers={"Content-Type": ctype})
    return status, json.loads(body)


def wait_for(pred, timeout_s: float = 20.0, every_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


# ----------------------------------------------------------------------------- camera

def _images(n=3, size=28):
    out = []
    for k in range(n):
        a = np.zeros((size, size), np.uint8)
        a[6:22, 10 + k:14 + k] = 255  # a bar, in a different place per image
        out.append(SampleImage(f"digit{k}.png", Image.fromarray(a), str(k)))
    return out


def test_synthetic_camera_shows_the_image_unmoved_at_t0():
    ims = _images()
    cam = SyntheticCamera(ims, size=112, noise_std=0.0, fade_s=0.0)
    frame, truth = cam.frame_at(0.0)
    assert frame.shape == (112, 112) and frame.dtype == np.uint8
    shown = ims[cam.image_index(0.0)]
    assert truth == shown.label
    back = np.asarray(Image.fromarray(frame).resize((28, 28), Image.Resampling.BILINEAR),
                      np.float64)
    ref = np.asarray(shown.image, np.float64)
    corr = np.corrcoef(back.ravel(), ref.ravel())[0, 1]
    assert corr > 0.95, corr
    others = [np.corrcoef(back.ravel(), np.asarray(o.image, np.float64).ravel())[0, 1]
              for o in ims if o is not shown]
    assert max(others) < corr


def test_synthetic_camera_moves_drifts_and_is_deterministic():
    ims = _images()
    a = SyntheticCamera(ims, size=64, seed=3)
    b = SyntheticCamera(ims, size=64, seed=3)
    f1, _ = a.frame_at(1.7)
    assert np.array_equal(f1, b.frame_at(1.7)[0])  # a pure function of (seed, t)
    # motion: same image, noise off, 1.5 s apart -> the picture moved
    still = SyntheticCamera(ims, size=64, noise_std=0.0, hold_s=100.0, drift=0.0)
    m0, m1 = still.frame_at(0.0)[0].astype(int), still.frame_at(1.5)[0].astype(int)
    assert np.abs(m0 - m1).mean() > 1.0
    # no motion, no noise: only the brightness drift changes the mean
    flat = SyntheticCamera(ims, size=64, noise_std=0.0, hold_s=100.0, motion=0.0)
    assert abs(flat.frame_at(3.0)[0].mean() - flat.frame_at(0.0)[0].mean()) > 1.0
    # noise: two frames at the same pose differ pixel by pixel
    noisy = SyntheticCamera(ims, size=64, noise_std=8.0, motion=0.0, drift=0.0, hold_s=100.0)
    n0, n1 = noisy.frame_at(0.0)[0].astype(int), noisy.frame_at(0.0101)[0].astype(int)
    assert 3.0 < np.abs(n0 - n1).mean() < 20.0
    # the images take turns, each hold_s long
    cam = SyntheticCamera(ims, size=32, hold_s=1.0, fade_s=0.2)
    assert {cam.image_index(t + 0.5) for t in range(3)} == {0, 1, 2}


def test_synthetic_camera_thread_paces_publishes_and_stops():
    cam = SyntheticCamera(_images(), size=48, fps=40.0)
    cam.start()
    try:
        f1 = cam.wait_frame(0, timeout_s=5.0)
        assert f1 is not None and f1.seq >= 1 and f1.image.shape == (48, 48)
        f2 = cam.wait_frame(f1.seq, timeout_s=5.0)
        assert f2 is not None and f2.seq > f1.seq and f2.t_s >= f1.t_s
        time.sleep(1.2)
        assert 15.0 < cam.measured_fps() <= 48.0, cam.measured_fps()
        cam.set_fps(10.0)
        time.sleep(2.2)
        assert cam.measured_fps() <= 12.5, cam.measured_fps()
    finally:
        cam.close()
    assert not any(t.name.startswith("snrt-demo") for t in threading.enumerate())
    assert cam.wait_frame(10**9, timeout_s=0.1) is None  # closed: no waiting


def test_sample_images_labels_and_broken_files(tmp_path):
    assert label_from_name("digit3_row1502", [str(d) for d in range(10)]) == "3"
    assert label_from_name("cat_01", ["cat", "dog"]) == "cat"
    assert label_from_name("row1502", [str(d) for d in range(10)]) is None
    assert label_from_name("digit3", None) is None
    Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "cat_1.png")
    Image.new("L", (10, 10), 30).save(tmp_path / "dog_2.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = find_images([tmp_path])
    assert [p.name for p in paths] == ["broken.png", "cat_1.png", "dog_2.jpg"]
    ims = load_sample_images(paths, ["cat", "dog"])
    assert [(i.name, i.image.mode, i.label) for i in ims] == [
        ("cat_1.png", "RGB", "cat"), ("dog_2.jpg", "L", "dog")]
    cam = SyntheticCamera(ims, size=32)
    assert cam.mode == "RGB" and cam.frame_at(0.0)[0].shape == (32, 32, 3)


def test_open_camera_falls_back_and_fails_clearly(monkeypatch):
    from demos.camera import sources

    monkeypatch.setattr(sources, "webcam_present", lambda index: False)
    assert open_camera("auto", fps=10, images=_images()).kind == "synthetic"
    with pytest.raises(CameraError, match="--images"):
        open_camera("synthetic", fps=10, images=[])
    with pytest.raises(CameraError, match="unknown camera"):
        open_camera("kinect", fps=10, images=_images())

    def no_cv2():
        raise MissingExtraError("webcam input", "opencv-python-headless", "camera")

    monkeypatch.setattr(sources, "import_cv2", no_cv2)
    with pytest.raises(MissingExtraError, match=r"snrt\[camera\]"):
        open_camera("webcam", fps=10, images=_images())
    monkeypatch.setattr(sources, "webcam_present", lambda index: True)
    assert open_camera("auto", fps=10, images=_images()).kind == "synthetic"


class FakeCapture:
    """cv2.VideoCapture stand-in: BGR frames (blue channel 200) at ~100 fps, or none."""

    def __init__(self, index, opens=True):
        self.opened, self.released, self.reads = opens, False, 0

    def isOpened(self):  # OpenCV's name
        return self.opened

    def read(self):
        time.sleep(0.01)
        self.reads += 1
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = 200  # B in BGR
        return True, frame

    def release(self):
        self.released = True


def fake_cv2(opens=True):
    import types

    caps = []

    def capture(index):
        caps.append(FakeCapture(index, opens))
        return caps[-1]

    return types.SimpleNamespace(
        VideoCapture=capture, COLOR_BGR2RGB=4,
        cvtColor=lambda a, code: np.ascontiguousarray(a[..., ::-1])), caps


def test_webcam_through_opencv_rgb_paced_and_released(monkeypatch):
    from demos.camera import sources

    cv2, caps = fake_cv2()
    monkeypatch.setattr(sources, "import_cv2", lambda: cv2)
    monkeypatch.setattr(sources, "webcam_present", lambda index: True)
    cam = open_camera("auto", fps=20.0, images=_images())
    assert cam.kind == "webcam" and cam.description == "webcam 0 (64x48)"
    assert cam.probe()[0, 0].tolist() == [0, 0, 200]  # RGB now
    with cam:
        f = cam.wait_frame(0, timeout_s=5.0)
        assert f.image.shape == (48, 64, 3) and f.image[0, 0].tolist() == [0, 0, 200]
        time.sleep(1.2)
        assert 10.0 < cam.measured_fps() <= 24.0, cam.measured_fps()  # 100 fps device, 20 kept
    assert caps[0].released
    cv2, caps = fake_cv2(opens=False)
    monkeypatch.setattr(sources, "import_cv2", lambda: cv2)
    assert open_camera("auto", fps=20.0, images=_images()).kind == "synthetic"
    with pytest.raises(CameraError, match="cannot open"):
        open_camera("webcam", fps=20.0, images=_images())
    assert caps[-1].released


# ----------------------------------------------------------------------------- energy

def test_energy_model_drains_the_simulated_battery_by_work():
    model = EnergyModel(battery_capacity_wh=10.0, active_power_w=4.0, idle_power_w=1.0,
                        drain_speedup=100.0)
    assert model.frame_joules(0.010) == pytest.approx(0.04)
    assert model.idle_joules(2.0) == pytest.approx(2.0)
    assert model.battery_joules(0.04) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="drain_speedup"):
        EnergyModel(drain_speedup=0)

    class Steady(SimulatedMonitor):  # stands in for SystemMonitor: no sensors needed
        pass

    mon, source = make_monitor("simulated", model, battery_start_pct=50.0, system=Steady())
    assert source == "simulated" and isinstance(mon, SimulatedBatteryMonitor)
    assert mon.read().battery_pct == pytest.approx(50.0)
    # 90 s of a busy core: 4 W x 90 s x 100 (speed-up) = 36 kJ = 10 Wh > the 5 Wh left
    mon.consume(model.battery_joules(model.frame_joules(90.0)))
    assert mon.read().battery_pct == 0.0
    mon2, _ = make_monitor("simulated", model, battery_start_pct=50.0, system=Steady())
    mon2.consume(360.0)  # 0.1 Wh of 10 Wh = 1 %
    assert mon2.read().battery_pct == pytest.approx(49.0)
    mon2.set_plugged(True)
    mon2.consume(360.0)  # plugged: no drain
    assert mon2.read().plugged is True and mon2.read().battery_pct >= 49.0
    mon2.set_power_saving(True)
    assert mon2.read().power_saving and mon2.read().power_saving_source == "app"
    with pytest.raises(ValueError, match="battery"):
        make_monitor("solar", model)


def test_auto_fps_candidates_and_fps_validation(demo_bundle):
    from snrt.bundle import Bundle

    assert auto_fps(8.0, 0.8) == pytest.approx(66.7)  # 2/3 of 0.8 x 1000/66.7 ms = 8 ms
    assert auto_fps(0.01, 0.8) == FPS_RANGE[1] and auto_fps(1e6, 0.8) == FPS_RANGE[0]
    b = Bundle.open(demo_bundle, verify=False)
    ids = candidate_ids(b.variants)
    flops = [b.variant(i).flops for i in ids]
    assert flops == sorted(flops) and ids[0] == "ti" and ids[-1] in ("b", "s>b@0:0",
                                                                       "s>b@1:0")
    assert parse_fps(30) == 30.0
    for bad in (0, -1, 241, float("nan"), float("inf"), "30", True, None):
        with pytest.raises(ConfigError, match="target_fps"):
            parse_fps(bad)


# ----------------------------------------------------------------------------- the app

def test_status_frames_and_page(shared_app):
    base = shared_app.url
    st = wait_for(lambda: (s := get_json(base + "api/status"))["frame_seq"] > 0 and s,
                  what="a first processed frame")
    assert st["bundle"]["name"] == "demo-test" and st["bundle"]["variants"] == 23
    assert st["camera"]["kind"] == "synthetic"
    assert st["prediction"]["label"] in [str(d) for d in range(10)]
    assert 0.0 <= st["prediction"]["prob"] <= 1.0
    assert st["prediction"]["truth"] in [str(d) for d in range(10)]
    v = st["variant"]
    assert {"id", "cfg_id", "flops", "params", "top1"} <= set(v) and v["flops"] > 0
    assert st["power"]["battery_source"] == "simulated" and st["power"]["battery_pct"] <= 100
    assert st["budget_ms"] == pytest.approx(1000 / st["config"]["target_fps"] * 0.8)
    assert st["config"]["fps_auto"] is True
    status, headers, jpg = http(base + "frame.jpg?seq=3")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert jpg[:3] == b"\xff\xd8\xff" and int(headers["X-Frame-Seq"]) >= 1
    with Image.open(__import__("io").BytesIO(jpg)) as im:
        assert im.size == (96, 96)
    wait_for(lambda: get_json(base + "api/status")["frame_seq"] > st["frame_seq"] + 5,
             what="frames to keep coming")
    status, headers, html = http(base)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for needle in (b'id="ps-toggle"', b'id="fps-input"', b'id="pin-select"', b'id="chart"'):
        assert needle in html
    assert b"http://" not in html and b"https://" not in html  # nothing from the internet
    vs = get_json(base + "api/variants")["variants"]
    assert len(vs) == 23 and any(x["candidate"] for x in vs)
    h = wait_for(lambda: (d := get_json(base + "api/history"))["points"]["t_s"] and d,
                 what="chart points")
    p = h["points"]
    assert len(p["t_s"]) == len(p["variant"]) == len(p["latency_ms"]) == len(p["budget_ms"])
    later = get_json(base + f"api/history?since={p['t_s'][-1]}&max=5")
    assert all(t > p["t_s"][-1] for t in later["points"]["t_s"])
    assert len(later["points"]["t_s"]) <= 5


BAD_GETS = [
    ("api/history?since=abc", "'since' must be a number"),
    ("api/history?since=nan", "finite"),
    ("api/history?max=0", "1..5000"),
    ("api/history?max=2.5", "'max' must be an integer"),
    ("api/history?since=1&since=2", "given 2 times"),
    ("api/history?until=3", "unknown query parameter 'until'"),
    ("api/status?verbose=1", "unknown query parameter 'verbose'"),
    ("frame.jpg?seq=x", "'seq' must be an integer"),
    ("api/history?since", "malformed query"),
]


@pytest.mark.parametrize("path,message", BAD_GETS)
def test_bad_query_parameters_get_400(shared_app, path, message):
    status, headers, body = http(shared_app.url + path)
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]


BAD_BODIES = [
    (None, b"target_fps=30", "not valid JSON"),
    (None, b"{\"target_fps\": NaN}", "not valid JSON"),
    ([1, 2], None, "JSON object"),
    ({}, None, "nothing to change"),
    ({"bogus": 1}, None, "unknown field(s) ['bogus']"),
    ({"target_fps": 0}, None, "between 1 and 240"),
    ({"target_fps": 10000}, None, "between 1 and 240"),
    ({"target_fps": "fast"}, None, "must be a number"),
    ({"target_fps": True}, None, "must be a number"),
    ({"power_saving": "yes"}, None, "power_saving must be true, false, or null"),
    ({"pinned": "ti>b@1:1"}, None, "unknown variant 'ti>b@1:1'"),
    ({"pinned": 999}, None, "no variant with cfg_id 999"),
    ({"pinned": 1.5}, None, "pinned must be"),
    ({"plugged": "no"}, None, "plugged must be true or false"),
]


@pytest.mark.parametrize("obj,raw,message", BAD_BODIES)
def test_bad_config_bodies_get_400(shared_app, obj, raw, message):
    status, body = post_config(shared_app.url, obj, raw=raw)
    assert status == 400, body
    assert message in body["error"]


def test_bad_request_changes_nothing_and_other_errors(shared_app):
    base = shared_app.url
    before = get_json(base + "api/config")
    status, body = post_config(base, {"target_fps": 20, "pinned": "nope"})
    assert status == 400 and "unknown variant 'nope'" in body["error"]
    assert get_json(base + "api/config") == before  # validated first, applied all or nothing
    status, body = post_config(base, {"target_fps": 20}, ctype="text/plain")
    assert status == 415 and "application/json" in body["error"]
    assert http(base + "nope")[0] == 404
    assert http(base + "api/status", method="POST", body=b"{}",
                headers={"Content-Type": "application/json"})[0] == 405
    assert http(base + "api/config", method="PUT", body=b"{}")[0] == 405
    assert http(base + "api/status", headers={"Host": "attacker.example:80"})[0] == 403
    assert http(base + "api/status", headers={"Host": "localhost"})[0] == 200
    big = b"{\"x\": \"" + b"a" * 70000 + b"\"}"
    assert post_config(base, None, raw=big)[0] == 413
    assert get_json(base + "api/config") == before


def test_config_changes_power_saving_fps_pin_plug(app):
    base = app.url
    wait_for(lambda: get_json(base + "api/status")["frame_seq"] > 0, what="frames")
    assert post_config(base, {"power_saving": False})[0] == 200
    st0 = get_json(base + "api/status")
    assert st0["power"]["power_saving"] is False and st0["power"]["power_saving_source"] == "app"
    status, cfg = post_config(base, {"power_saving": True})
    assert status == 200 and cfg["power_saving_override"] is True
    st1 = get_json(base + "api/status")
    assert st1["power"]["power_saving"] is True
    assert st1["budget_ms"] == pytest.approx(st0["budget_ms"] / 2)
    assert "power-saving (app)" in st1["budget_why"]
    assert post_config(base, {"power_saving": None})[1]["power_saving_override"] is None

    status, cfg = post_config(base, {"target_fps": 12.5})
    assert status == 200 and cfg["target_fps"] == 12.5 and cfg["fps_auto"] is False
    assert get_json(base + "api/status")["budget_ms"] == pytest.approx(1000 / 12.5 * 0.8)
    assert app.camera.fps == 12.5

    status, cfg = post_config(base, {"pinned": "s"})
    assert status == 200 and cfg["pinned"] == "s"
    st = wait_for(lambda: (s := get_json(base + "api/status"))["variant"]["id"] == "s" and s,
                  what="the pinned variant")
    assert st["switches"][-1]["to"] == "s" and st["switches"][-1]["reason"] == "pinned by the app"
    assert post_config(base, {"pinned": 0})[1]["pinned"] == "ti"  # a cfg_id works too
    assert post_config(base, {"pinned": "auto"})[1]["pinned"] is None

    assert post_config(base, {"plugged": True})[0] == 200
    assert get_json(base + "api/status")["power"]["plugged"] is True


def test_heavier_variant_costs_more_energy(demo_bundle, digit_dir):
    """The energy model charges CPU time: pinned to b, a frame costs more than pinned to ti."""
    a = DemoApp.create(demo_options(demo_bundle, digit_dir, fps=30.0))
    a.start()
    try:
        cpu = {}
        for vid in ("ti", "b"):
            a.engine.apply_config({"pinned": vid})
            wait_for(lambda v=vid: (a.engine.status()["prediction"] or {}).get("variant") == v,
                     what=vid)
            samples = []
            for _ in range(15):
                time.sleep(0.04)
                samples.append(a.engine.status()["cpu_ms"])
            cpu[vid] = float(np.median(samples))
        assert cpu["b"] > 2 * cpu["ti"], cpu
    finally:
        a.close()


def test_app_close_leaves_no_threads(demo_bundle, digit_dir):
    before = {t.ident for t in threading.enumerate()}
    a = DemoApp.create(demo_options(demo_bundle, digit_dir))
    a.start()
    wait_for(lambda: get_json(a.url + "api/status")["frame_seq"] > 0, what="frames")
    names = {t.name for t in threading.enumerate()}
    assert {"snrt-demo-engine", "snrt-demo-synthetic", "snrt-demo-http"} <= names
    a.close()
    a.close()  # twice is fine
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, left
    with pytest.raises(OSError):
        http(a.url + "api/status")


def test_loopback_names():
    from demos.camera.server import is_loopback

    for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.3.4.5"):
        assert is_loopback(h), h
    for h in ("0.0.0.0", "192.168.1.20", "example.org", "", "::"):
        assert not is_loopback(h), h


def test_runs_on_the_default_bundle_with_its_samples():
    """The shipped family and its sample digits, no options: what `snrt-demo` starts with."""
    import snrt
    from snrt.errors import BundleError

    try:
        bundle = snrt.default_bundle()
    except BundleError as e:
        pytest.skip(f"default bundle not installed yet: {e}")
    a = DemoApp.create(DemoOptions(port=0, camera="synthetic", battery="simulated",
                                   calibrate_runs=4))
    a.start()
    try:
        assert a.rt.bundle.path == bundle
        assert "images" in a.camera.description
        assert all(im.label is not None for im in a.camera.images)  # digit3_... -> "3"
        st = wait_for(lambda: (s := get_json(a.url + "api/status"))["prediction"] and s,
                      what="a prediction")
        assert st["prediction"]["label"] in a.rt.bundle.labels
        assert st["prediction"]["truth"] in a.rt.bundle.labels
    finally:
        a.close()


def test_cli_rejects_bad_arguments(demo_bundle, digit_dir, capsys, tmp_path):
    before = set(threading.enumerate())
    assert main(["--bundle", str(demo_bundle), "--fps", "1000", "--port", "0"]) == 2
    assert "target_fps must be between 1 and 240" in capsys.readouterr().err
    assert main(["--bundle", str(tmp_path / "missing.snrt"), "--port", "0"]) == 2
    assert "no such bundle directory" in capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle), "--camera", "synthetic", "--images",
                 str(tmp_path / "none"), "--port", "0"]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not [t for t in threading.enumerate() if t not in before]  # closed what it opened


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_on_signal(demo_bundle, digit_dir, sig):
    import psutil

    cmd = [sys.executable, "-m", "demos.camera", "--bundle", str(demo_bundle), "--port", "0",
           "--camera", "synthetic", "--images", str(digit_dir), "--battery", "simulated"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "open http://" in line:
                url = line.split("open ", 1)[1].split()[0]
                break
        assert url, f"no URL printed; stderr: {proc.stderr.read() if proc.poll() else ''}"
        assert url.startswith("http://127.0.0.1:")
        wait_for(lambda: get_json(url + "api/status")["frame_seq"] > 0, what="frames")
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err, err
        assert not [c for c in children if c.is_running() and
                    c.status() != psutil.STATUS_ZOMBIE]
        with pytest.raises(OSError):
            http(url + "api/status")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
