"""snrt.Runtime: preprocessing, bad input, switching, concurrency (soak)."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import snrt
from snrt.family import Preprocess
from snrt.preprocess import preprocess_image


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_image

    return [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]


@pytest.fixture(params=["pieces", "graphs"])
def rt(request, tiny_family):
    r = snrt.Runtime(tiny_family["bundle"], placement=request.param)
    yield r
    r.close()


def test_preprocessing_equals_timm_eval_transform(photos):
    """Against timm's own eval transform (torchvision on PIL), on real photos."""
    import timm.data

    for size, crop, interp in ((224, 0.875, "bicubic"), (32, 1.0, "bilinear"),
                               (96, 0.9, "bicubic")):
        t = timm.data.create_transform(input_size=(3, size, size), crop_pct=crop,
                                       interpolation=interp, is_training=False)
        pre = Preprocess(img_size=size, crop_pct=crop, interpolation=interp)
        for im in photos + [photos[0].rotate(90, expand=True).resize((151, 230))]:
            ref = t(im).numpy()
            ours = preprocess_image(im, pre)
            assert ours.shape == ref.shape
            assert np.abs(ours - ref).max() < 1e-5


def test_grey_and_alpha_images_convert(tiny_family, photos):
    with snrt.Runtime(tiny_family["bundle"]) as r:
        rgb = photos[0]
        for im in (rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("I;16")):
            assert r.infer(im).shape == (7,)


def test_outputs_equal_bare_onnxruntime(rt, tiny_family, photos):
    b = rt.bundle
    batch = np.stack([preprocess_image(p, b.preprocess) for p in photos])
    for key in ("ti", "ti>s@1:2", "b", 20):
        v = rt.switch(key)
        s = ort.InferenceSession(str(b.graph_path(v)), providers=["CPUExecutionProvider"])
        ref = s.run(None, {"image": batch})[0]
        np.testing.assert_allclose(rt.infer(photos), ref, atol=1e-5)
        np.testing.assert_allclose(rt.infer(photos[1]), ref[1], atol=1e-5)
        np.testing.assert_allclose(rt.infer(batch), ref, atol=1e-5)
        assert rt.current.id == v.id


def test_bad_inputs_raise_clear_errors_and_runtime_keeps_serving(rt, tmp_path, photos):
    (tmp_path / "notes.txt").write_text("not an image")
    buf = tmp_path / "trunc.jpg"
    photos[0].save(buf)
    buf.write_bytes(buf.read_bytes()[:2000])
    cases = [
        (str(tmp_path / "notes.txt"), "not an image"),
        (str(buf), "truncated"),
        (str(tmp_path / "missing.png"), "no such image"),
        (np.zeros((3, 31, 32), np.float32), r"shape \(3, 32, 32\)"),
        (np.zeros((2, 3, 32, 33), np.float32), "shape"),
        (np.zeros((32, 32), np.int64), "dtype int64"),
        (np.full((3, 32, 32), np.nan, np.float32), "NaN"),
        ([], "empty batch"),
        (42, "cannot use a int"),
        (Image.new("CMYK", (40, 40)).convert("CMYK").copy(), None),  # convertible: fine
    ]
    for bad, msg in cases:
        if msg is None:
            assert rt.infer(bad).shape == (7,)
            continue
        with pytest.raises(snrt.InputError, match=msg):
            rt.infer(bad)
        assert isinstance(bad, (str, np.ndarray, list, int))
    assert rt.infer(photos[0]).shape == (7,)
    assert rt.stats()["input_errors"] == len(cases) - 1


def test_switch_events_and_stats(rt):
    events = []
    rt.on_switch(events.append)
    rt.on_switch(lambda e: 1 / 0)  # a broken listener is logged, never raised
    x = np.zeros((3, 32, 32), np.float32)
    rt.switch("ti")
    rt.infer(x)
    rt.switch(5, reason="test")
    rt.infer(x)
    assert [(e.to_id, e.reason) for e in events] == [("ti", "manual"), (rt.current.id, "test")]
    assert rt.bundle.variant(5).id == rt.current.id
    st = rt.stats()
    assert st["frames"] == 2 and st["switches"] == 2 and st["current"] == rt.current.id
    assert set(st["per_variant_latency_ms"]) == {"ti", rt.current.id}
    with pytest.raises(snrt.UnknownVariantError):
        rt.switch("ti>b@0:0")
    assert rt.current.id == events[-1].to_id  # a failed switch changes nothing


def test_ready_subset_lazy_and_closed(tiny_family):
    r = snrt.Runtime(tiny_family["bundle"], variants=["ti", "s"], lazy=True, initial="ti")
    assert [v.id for v in r.variants] == ["ti", "s"]
    with pytest.raises(snrt.SnrtError, match="ready set"):
        r.switch("b")
    r.switch("s")
    r.close()
    with pytest.raises(snrt.SnrtError, match="closed"):
        r.infer(np.zeros((3, 32, 32), np.float32))


def test_in_flight_call_finishes_on_its_variant(tiny_family):
    """A switch during a call does not change the variant that call runs."""
    r = snrt.Runtime(tiny_family["bundle"], initial="ti")
    gate, release = threading.Event(), threading.Event()
    ex = r._active[1]
    real_run = ex.run

    def slow_run(batch):
        gate.set()
        release.wait(5)
        return real_run(batch)

    ex.run = slow_run
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", r.run(np.zeros((3, 32, 32),
                                                                            np.float32))))
    t.start()
    gate.wait(5)
    r.switch("b")
    release.set()
    t.join(5)
    assert out["r"].variant.id == "ti" and r.current.id == "b"
    r.close()


def test_soak_two_threads_switch_every_frame(tiny_family):
    """2 threads x 2,000 frames, a switch before every frame: no errors, and every output
    equals that variant's output run alone."""
    r = snrt.Runtime(tiny_family["bundle"], placement="pieces")
    ids = [v.id for v in r.variants]
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    alone = {}
    for vid in ids:
        s = ort.InferenceSession(str(r.bundle.graph_path(vid)),
                                 providers=["CPUExecutionProvider"])
        alone[vid] = s.run(None, {"image": inputs})[0]
    errors, checked = [], [0, 0]

    def worker(k):
        g = np.random.default_rng(k)
        for i in range(2000):
            try:
                r.switch(ids[g.integers(len(ids))], reason=f"soak{k}")
                j = int(g.integers(len(inputs)))
                res = r.run(inputs[j])
                if np.abs(res.logits - alone[res.variant.id][j]).max() > 1e-5:
                    errors.append((k, i, res.variant.id))
                checked[k] += 1
            except Exception as e:  # noqa: BLE001 - any error fails the soak
                errors.append((k, i, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert checked == [2000, 2000]
    st = r.stats()
    assert st["frames"] == 4000 and st["switches"] == 4000
    r.close()
