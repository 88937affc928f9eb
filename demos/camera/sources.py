"""Frame sources: a real webcam (OpenCV, optional) or a synthetic camera playing real images.

Both run a thread that publishes the newest frame; the consumer waits for a frame newer than
the one it has (`wait_frame`), so a slow consumer skips frames instead of queueing them, as a
camera pipeline should.

Synthetic camera: the images (by default the bundle's sample images, `snrt/data/samples/*.png`,
whose names carry their label, e.g. `digit3_row1502.png`) are shown one after another for
`hold_s` seconds each with a cross-fade, seen through a slowly moving camera: pan, zoom and
rotation follow slow sines (periods 6-13 s), brightness drifts (gain and offset), and Gaussian
sensor noise is added. `frame_at(t_s)` is a pure function of time and the seed; at t = 0 the
motion and the drift are zero.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from snrt.errors import MissingExtraError, SnrtError
from snrt.preprocess import label_from_name

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CAMERA_CHOICES = ("auto", "synthetic", "webcam")


class CameraError(SnrtError):
    """No usable frame source (no images for the synthetic camera, webcam unavailable...)."""


@dataclass(frozen=True)
class Frame:
    seq: int  # 1, 2, ... in publishing order
    t_s: float  # time.monotonic() when published
    image: np.ndarray  # uint8, HxW (grey) or HxWx3 (RGB)
    truth: str | None = None  # the label of the image shown, when the source knows it


@dataclass(frozen=True)
class SampleImage:
    name: str
    image: Image.Image  # "L" or "RGB"
    label: str | None


# ----------------------------------------------------------------------------- sources

class FrameSource(ABC):
    """A thread publishing the newest frame. Subclasses implement `_next_image()`."""

    kind = "source"

    def __init__(self, fps: float) -> None:
        self._fps = _check_fps(fps)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._times: deque[float] = deque(maxlen=120)
        self.error: str | None = None  # why the thread stopped early, if it did

    @property
    def description(self) -> str:
        return self.kind

    @property
    def fps(self) -> float:
        return self._fps

    def set_fps(self, fps: float) -> None:
        """Target frame rate from now on."""
        self._fps = _check_fps(fps)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=f"snrt-demo-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and release the device. Safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)
            if t.is_alive():
                log.warning("%s thread did not stop within %.1f s", self.kind, timeout_s)
        self._release()

    def latest(self) -> Frame | None:
        return self._latest

    def wait_frame(self, after_seq: int, timeout_s: float) -> Frame | None:
        """The newest frame with seq > after_seq, waiting up to timeout_s; None on timeout or
        when the source is closed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._stop.is_set():
                f = self._latest
                if f is not None and f.seq > after_seq:
                    return f
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        return None

    def measured_fps(self) -> float:
        """Frames published per second over the last couple of seconds."""
        ts = list(self._times)
        now = time.monotonic()
        ts = [t for t in ts if now - t <= 2.0]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)

    def _publish(self, image: np.ndarray, truth: str | None) -> None:
        now = time.monotonic()
        with self._cond:
            self._seq += 1
            self._latest = Frame(self._seq, now, image, truth)
            self._times.append(now)
            self._cond.notify_all()

    def _loop(self) -> None:
        try:
            self._run()
        except Exception as e:  # a broken device must not kill the app silently
            self.error = f"{type(e).__name__}: {e}"
            log.exception("%s stopped", self.kind)

    @abstractmethod
    def probe(self) -> np.ndarray:
        """A representative frame, available before start() (for calibration)."""

    @abstractmethod
    def _run(self) -> None:
        """Publish frames until self._stop is set."""

    def _release(self) -> None:
        """Release the device (after the thread stopped)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyntheticCamera(FrameSource):
    """Real images through a simulated camera: motion, drift, noise (see module docstring)."""

    kind = "synthetic"

    def __init__(self, images: Sequence[SampleImage], *, fps: float = 30.0, size: int = 224,
                 hold_s: float = 4.0, fade_s: float = 0.5, noise_std: float = 6.0,
                 motion: float = 1.0, drift: float = 1.0, seed: int = 0) -> None:
        super().__init__(fps)
        if not images:
            raise CameraError("the synthetic camera needs at least one image")
        if not (isinstance(size, int) and 16 <= size <= 2048):
            raise CameraError(f"frame size must be an integer in 16..2048, got {size!r}")
        if hold_s <= 0 or not 0 <= fade_s < hold_s:
            raise CameraError("hold_s must be > 0 and fade_s in [0, hold_s)")
        if noise_std < 0 or motion < 0 or drift < 0:
            raise CameraError("noise_std, motion and drift must be >= 0")
        self.size, self.hold_s, self.fade_s = size, float(hold_s), float(fade_s)
        self.noise_std, self.motion, self.drift = float(noise_std), float(motion), float(drift)
        self.mode = "RGB" if any(im.image.mode == "RGB" for im in images) else "L"
        self.images = [SampleImage(im.name, im.image.convert(self.mode), im.label)
                       for im in images]
        rng = np.random.default_rng(seed)
        self.order = [int(i) for i in rng.permutation(len(self.images))]
        self._bg = [_border_colour(im.image) for im in self.images]
        shape = (size, size) if self.mode == "L" else (size, size, 3)
        # a small bank of noise fields, picked per frame: cheap and still looks like noise
        self._noise = (rng.standard_normal((8, *shape)) * self.noise_std).astype(np.float32)
        self._t0: float | None = None

    @property
    def description(self) -> str:
        return (f"synthetic camera: {len(self.images)} images, {self.size}x{self.size} "
                f"{self.mode}, {self.hold_s:g} s each")

    def probe(self) -> np.ndarray:
        return self.frame_at(0.0)[0]

    def image_index(self, t_s: float) -> int:
        """Which image (index into self.images) is shown at t_s, fades aside."""
        return self.order[int(t_s // self.hold_s) % len(self.order)]

    def frame_at(self, t_s: float) -> tuple[np.ndarray, str | None]:
        """The frame at t_s seconds since the camera started, and the label shown (the image
        fading in counts from the middle of the fade)."""
        slot = int(t_s // self.hold_s)
        into = t_s - slot * self.hold_s
        cur = self.order[slot % len(self.order)]
        nxt = self.order[(slot + 1) % len(self.order)]
        a = self._view(cur, t_s)
        truth = self.images[cur].label
        fade_from = self.hold_s - self.fade_s
        if self.fade_s > 0 and into > fade_from and nxt != cur:
            w = (into - fade_from) / self.fade_s
            a = (1 - w) * a + w * self._view(nxt, t_s)
            if w >= 0.5:
                truth = self.images[nxt].label
        gain = 1.0 + 0.15 * self.drift * math.sin(2 * math.pi * t_s / 13.0)
        offset = 12.0 * self.drift * math.sin(2 * math.pi * t_s / 17.0)
        a = a * gain + offset
        if self.noise_std > 0:
            a = a + self._noise[int(t_s * 1000.0) % len(self._noise)]
        return np.clip(a + 0.5, 0, 255).astype(np.uint8), truth

    def _view(self, index: int, t_s: float) -> np.ndarray:
        """Image `index` seen by the moving camera at t_s, as float32."""
        im = self.images[index].image
        w, h = im.size
        s_out = self.size
        m = self.motion
        zoom = 1.0 + 0.08 * m * math.sin(2 * math.pi * t_s / 6.1)
        angle = math.radians(8.0 * m * math.sin(2 * math.pi * t_s / 8.7))
        pan_x = 0.06 * m * s_out * math.sin(2 * math.pi * t_s / 7.3)
        pan_y = 0.06 * m * s_out * math.sin(2 * math.pi * t_s / 9.1)
        scale = s_out / min(w, h) * zoom  # fill the frame, like a camera does
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        cx, cy = s_out / 2 + pan_x, s_out / 2 + pan_y
        # output (x, y) -> input (a x + b y + c, d x + e y + f): undo pan, scale, rotation
        a_, b_, d_, e_ = cos, sin, -sin, cos
        c_ = w / 2 - (a_ * cx + b_ * cy)
        f_ = h / 2 - (d_ * cx + e_ * cy)
        out = im.transform((s_out, s_out), Image.Transform.AFFINE, (a_, b_, c_, d_, e_, f_),
                           resample=Image.Resampling.BILINEAR, fillcolor=self._bg[index])
        return np.asarray(out, dtype=np.float32)

    def _run(self) -> None:
        self._t0 = time.monotonic()
        next_t = self._t0
        while not self._stop.is_set():
            now = time.monotonic()
            image, truth = self.frame_at(now - self._t0)
            self._publish(image, truth)
            next_t = max(next_t + 1.0 / self._fps, time.monotonic())
            self._stop.wait(max(0.0, next_t - time.monotonic()))


class WebcamCamera(FrameSource):
    """A webcam through OpenCV (the `camera` extra: opencv-python-headless)."""

    kind = "webcam"

    def __init__(self, index: int = 0, *, fps: float = 30.0) -> None:
        super().__init__(fps)
        cv2 = import_cv2()
        self._cv2 = cv2
        self.index = index
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"webcam {index}: cannot open it (no such device, or in use)")
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise CameraError(f"webcam {index}: opened, but it delivers no frames")
        self._cap = cap
        self._first = frame
        self.frame_size = (int(frame.shape[1]), int(frame.shape[0]))

    @property
    def description(self) -> str:
        return f"webcam {self.index} ({self.frame_size[0]}x{self.frame_size[1]})"

    def probe(self) -> np.ndarray:
        f = self._first
        return self._cv2.cvtColor(f, self._cv2.COLOR_BGR2RGB) if f.ndim == 3 else f

    def _run(self) -> None:
        cv2 = self._cv2
        frame, next_t = self._first, time.monotonic()
        failures = 0
        while not self._stop.is_set():
            if frame is not None:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame
                self._publish(np.ascontiguousarray(rgb), None)
            # read() blocks at the device's own rate; drop what exceeds the target rate
            next_t = max(next_t + 1.0 / self._fps, time.monotonic())
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                if not ok:
                    failures += 1
                    if failures >= 50:
                        raise CameraError(f"webcam {self.index}: stopped delivering frames")
                    self._stop.wait(0.02)
                    frame = None
                    break
                failures = 0
                if time.monotonic() >= next_t:
                    break

    def _release(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()


# ----------------------------------------------------------------------------- helpers

def import_cv2():
    """OpenCV, imported only when a webcam is wanted."""
    try:
        import cv2
    except ImportError:
        raise MissingExtraError("webcam input", "opencv-python-headless", "camera") from None
    return cv2


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _border_colour(im: Image.Image):
    """The median colour of the image's border: what lies outside it when the camera moves."""
    a = np.asarray(im)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    med = np.median(edge, axis=0)
    return int(med) if np.ndim(med) == 0 else tuple(int(v) for v in med)


def find_images(where: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from directories, files or glob patterns, sorted, without duplicates."""
    out: list[Path] = []
    for w in where:
        p = Path(w)
        if p.is_dir():
            out += [q for q in sorted(p.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            out.append(p)
        else:
            out += [Path(q) for q in sorted(glob.glob(str(w)))
                    if Path(q).suffix.lower() in IMAGE_SUFFIXES]
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def load_sample_images(paths: Sequence[Path], labels: Sequence[str] | None = None,
                       max_images: int = 200) -> list[SampleImage]:
    """Decode images (unreadable ones are skipped with a warning), as "L" or "RGB"."""
    out = []
    for p in paths[:max_images]:
        try:
            with Image.open(p) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                mode = "L" if im.mode in ("1", "L", "I;16", "I", "F", "LA") else "RGB"
                if im.mode in ("I;16", "I", "F"):
                    a = np.asarray(im, dtype=np.float64)
                    im = Image.fromarray(np.clip(a / max(a.max(), 1.0) * 255, 0, 255)
                                         .astype(np.uint8), "L")
                im = im.convert(mode)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            log.warning("%s: skipped, not a readable image (%s)", p, e)
            continue
        out.append(SampleImage(p.name, im, label_from_name(p.stem, labels)))
    return out


def default_image_dirs(bundle_path: Path) -> list[Path]:
    """Where the synthetic camera looks for images when none are given, in order: the bundle's
    own `samples/`, a `samples/` beside the bundle (how snrt ships its default family:
    snrt/data/default.snrt + snrt/data/samples), snrt's shipped samples, matplotlib's sample
    photos (if installed)."""
    import snrt

    dirs = [bundle_path / "samples", bundle_path.parent / "samples",
            Path(snrt.__file__).parent / "data" / "samples"]
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "sample_data")
    except ImportError:
        pass
    return dirs


def webcam_present(index: int) -> bool:
    """Cheap check before asking OpenCV (which logs noisily when there is no device)."""
    if sys.platform.startswith("linux"):
        return Path(f"/dev/video{index}").exists()
    return True


def open_camera(kind: str, *, fps: float, images: Sequence[SampleImage] | None = None,
                webcam_index: int = 0, **synthetic_options) -> FrameSource:
    """The frame source for `kind`: "webcam" (must work), "synthetic", or "auto" (webcam when
    OpenCV and a device are there, else synthetic, saying why)."""
    if kind not in CAMERA_CHOICES:
        raise CameraError(f"unknown camera '{kind}'; choose from {list(CAMERA_CHOICES)}")
    if kind in ("auto", "webcam"):
        try:
            if kind == "auto" and not webcam_present(webcam_index):
                raise CameraError(f"no /dev/video{webcam_index}")
            return WebcamCamera(webcam_index, fps=fps)
        except (CameraError, MissingExtraError) as e:
            if kind == "webcam":
                raise
            log.info("no webcam (%s); using the synthetic camera", e)
    if not images:
        raise CameraError("the synthetic camera has no images: pass --images DIR (PNG/JPEG "
                          "files), or install snrt with its sample images")
    return SyntheticCamera(images, fps=fps, **synthetic_options)
