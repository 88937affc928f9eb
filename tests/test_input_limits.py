"""Issue 14 items 4, 5 and 11a: inputs that overflow float32, images whose resize would cost
far more than the output, and an empty uint8 batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import snrt
from snrt.errors import InputError
from snrt.family import Preprocess
from snrt.preprocess import preprocess_image, to_batch

MNIST = Preprocess(img_size=28, crop_pct=0.875, interpolation="bilinear", mean=(0.5,),
                   std=(0.5,), channels="L")


@pytest.fixture(scope="module")
def rt():
    r = snrt.Runtime(snrt.default_bundle())
    yield r
    r.close()


def _whole_then_crop(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """timm's eval transform as written: resize the whole image, then centre crop."""
    w, h = im.size
    s = int(pre.img_size / pre.crop_pct)
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    im = im.resize(size, Image.Resampling.BILINEAR)
    t = pre.img_size
    left, top = int(round((size[0] - t) / 2)), int(round((size[1] - t) / 2))
    a = np.asarray(im.crop((left, top, left + t, top + t)), np.float32)[None] / 255.0
    return (a - 0.5) / 0.5


@pytest.mark.parametrize("x", [np.full((1, 28, 28), 1e300),  # finite float64, inf in float32
                               np.full((2, 1, 28, 28), -1e39),
                               np.full((1, 28, 28), 3e38, np.float32)],  # the net overflows
                         ids=["float64 1e300", "batch float64 -1e39", "float32 3e38"])
def test_inputs_that_overflow_float32_are_refused_not_nan(rt, x):
    with pytest.raises(InputError, match="NaN or infinite"):
        rt.classify(x) if x.ndim == 3 else rt.infer(x)
    assert np.isfinite(rt.infer(np.zeros((1, 28, 28)))).all()  # and it keeps serving


def test_an_extreme_aspect_ratio_costs_the_output_not_the_resize(monkeypatch):
    """1 x 1,000,000 used to be resized whole to 32 x 32,000,000 (1 GB, seconds); now no
    resize is larger than 4x the resized short side's square."""
    sizes = []
    real = Image.Image.resize

    def resize(self, size, *a, **kw):
        assert size[0] * size[1] <= 4 * 32 * 32, f"resize to {size}"
        sizes.append(size)
        return real(self, size, *a, **kw)

    monkeypatch.setattr(Image.Image, "resize", resize)
    rng = np.random.default_rng(0)
    for shape in ((1_000_000, 1), (1, 3_000_000), (5, 20_000)):
        im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        assert preprocess_image(im, MNIST).shape == (1, 28, 28)
    assert sizes == [(28, 28)] * 3


@pytest.mark.parametrize("shape", [(37, 41), (40, 200), (9, 700), (3000, 11), (28, 28),
                                   (60, 16)])
def test_resizing_a_part_equals_resizing_the_whole(shape):
    """Up to 4:1 exactly timm's transform; beyond, the part the crop keeps is resized, equal to
    the whole resized and cropped but for rounding (at most 1 of 255 per pixel)."""
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8))
    ref = _whole_then_crop(im, MNIST)
    ours = preprocess_image(im, MNIST)
    tol = 1e-6 if max(shape) <= 4 * min(shape) else 2 / 255 + 1e-6
    assert np.abs(ours - ref).max() <= tol  # 1 of 255 is 2/255 after (x - 0.5) / 0.5
    assert np.abs(ours - ref).mean() < 0.5 * 2 / 255


def test_an_empty_uint8_batch_says_so():
    for x in (np.zeros((0, 28, 28, 1), np.uint8), np.zeros((0, 28, 28, 3), np.uint8),
              np.zeros((0, 1, 28, 28), np.float32)):
        with pytest.raises(InputError, match="empty batch"):
            to_batch(x, MNIST)
