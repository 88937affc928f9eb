"""Image preprocessing as the family was trained: timm's eval transform, with Pillow and numpy.

timm `transforms_imagenet_eval`: resize the shorter side to floor(img_size / crop_pct) (aspect
kept, long side truncated), centre crop img_size (offsets rounded), scale to [0, 1], normalise by
mean/std, channels first. Inputs the runtime accepts (`to_batch`):
  - a PIL image, a path to an image file, a uint8 array HxW / HxWxC (an image),
  - a float array CxHxW or BxCxHxW (already preprocessed: passed through after checks),
  - a list/tuple of images (a batch).
Anything else raises InputError saying what was expected.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .family import Preprocess

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
}
MAX_RESIZE_AREA = 4  # resize whole up to 4 x (the resized short side)^2, i.e. 4:1 aspect
_CONVERTIBLE = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                "I;16", "I", "F"}


def load_image(path: str | os.PathLike) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such image file")
    try:
        with Image.open(p) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return im.copy()
    except UnidentifiedImageError:
        raise InputError(f"{p}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{p}: damaged or truncated image ({e})") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: refused, image too large ({e})") from None


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    if im.mode == mode:
        return im
    if im.mode not in _CONVERTIBLE:
        raise InputError(f"image mode '{im.mode}' is not supported; give an RGB or L image")
    if im.mode in ("I;16", "I", "F"):  # 16/32-bit grey: scale to 8 bit before converting
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode == "I;16" else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # composite on white, like browsers
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    return im.convert(mode)


def preprocess_image(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image -> float32 [C, H, W] normalised model input."""
    im = _to_mode(im, pre.channels)
    w, h = im.size
    if w < 1 or h < 1:
        raise InputError(f"image of size {w}x{h} is empty")
    scale = math.floor(pre.img_size / pre.crop_pct)
    if w <= h:
        size = (scale, int(scale * h / w))
    else:
        size = (int(scale * w / h), scale)
    rw, rh = size
    t = pre.img_size
    if rw < t or rh < t:
        raise InputError(f"image resized to {rw}x{rh} is smaller than the {t}px crop")
    left, top = int(round((rw - t) / 2.0)), int(round((rh - t) / 2.0))
    if size != (w, h) and rw * rh > MAX_RESIZE_AREA * scale * scale:
        # an extreme aspect ratio: resize only the part of the image the centre crop keeps.
        # Pillow's `box` places the filter as resizing the whole image to `size` and cropping
        # would (its support still reads the pixels beyond the box), so the result differs
        # from timm's by rounding (at most 1 of 255 per pixel), but the work is
        # bounded by the t x t output, not by the resized size (784 Mpx for 1 x 1,000,000)
        sx, sy = w / rw, h / rh
        im = im.resize((t, t), _RESAMPLE[pre.interpolation],
                       box=(left * sx, top * sy, (left + t) * sx, (top + t) * sy))
    else:
        if size != (w, h):  # at most MAX_RESIZE_AREA x the crop's square: exactly as timm
            im = im.resize(size, _RESAMPLE[pre.interpolation])
        im = im.crop((left, top, left + t, top + t))
    a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    _check_finite(a, "the normalised image (check the bundle's preprocess mean/std)")
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _as_float32(x: np.ndarray) -> np.ndarray:
    """`x` as float32, checked for NaN/inf AFTER the cast: a finite float64 beyond float32's
    range (|x| > 3.4e38) becomes inf in the cast."""
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.ascontiguousarray(x, dtype=np.float32)
    _check_finite(a, "input array")
    return a


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise InputError(f"{what} holds NaN or infinite values (in float32, the model's type: "
                         "finite float64 values beyond ±3.4e38 overflow)")


def to_batch(x, pre: Preprocess) -> tuple[np.ndarray, bool]:
    """Any accepted input -> (float32 [B, C, H, W], was_batched)."""
    shape = (len(pre.mean), pre.img_size, pre.img_size)
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError("empty batch")
        return np.stack([_one(item, pre, shape) for item in x]), True
    if isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype.kind == "f":
        if not len(x):
            raise InputError(f"empty batch: an array of shape {x.shape} holds no input")
        _check_float(x[0], shape)
        return _as_float32(x), True
    if isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.uint8:
        if not len(x):
            raise InputError(f"empty batch: an array of shape {x.shape} holds no image")
        return np.stack([_one(item, pre, shape) for item in x]), True
    return _one(x, pre, shape)[None], False


def _one(x, pre: Preprocess, shape: tuple) -> np.ndarray:
    if isinstance(x, Image.Image):
        return preprocess_image(x, pre)
    if isinstance(x, (str, os.PathLike)):
        return preprocess_image(load_image(x), pre)
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3, 4))):
            arr = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
            return preprocess_image(Image.fromarray(arr), pre)
        if x.dtype.kind == "f":
            _check_float(x, shape)
            return _as_float32(x)
        raise InputError(
            f"array of dtype {x.dtype} and shape {x.shape} is not an input: give a uint8 image "
            f"(HxW or HxWxC) or a preprocessed float array of shape {shape} (or a batch of them)")
    raise InputError(f"cannot use a {type(x).__name__} as an image: give a PIL image, a path, "
                     "a numpy array, or a list of those")


def _check_float(x: np.ndarray, shape: tuple) -> None:
    if tuple(x.shape) != shape:
        raise InputError(f"preprocessed input must have shape {shape} (CxHxW) or "
                         f"(B, {', '.join(map(str, shape))}); got {tuple(x.shape)}")


def label_from_name(stem: str, labels: Sequence[str] | None) -> str | None:
    """The label a sample's file name carries: a token equal to a label ("cat_01" -> "cat"),
    or a word followed by a label ("digit3_row1502" -> "3"). None when there is none."""
    if not labels:
        return None
    known = set(labels)
    for token in re.split(r"[_\-\s.]+", stem):
        if token in known:
            return token
        m = re.fullmatch(r"[A-Za-z]+(\w+)", token)
        if m and m.group(1) in known:
            return m.group(1)
    return None
