"""snrt-demo: the power-saving camera app (also `python -m demos.camera`).

    snrt-demo                          # default bundle, webcam if any else synthetic camera
    snrt-demo --bundle my.snrt --camera synthetic --images photos/ --port 8080
    snrt-demo --bundle default --bundle elastic   # stitches and subnets on one front
    snrt-demo --battery-start-pct 30 --drain-speedup 300   # see low-battery steps sooner
    snrt-demo --simulate-latency flops --sensors simulated --clock simulated  # deterministic

Opens a local page (http://127.0.0.1:8000/ by default) showing the live frame, the prediction,
the active variant, FPS, latency, battery and CPU load, with controls for power saving, the
target FPS and a pinned variant, and a chart of variant and latency with every switch and its
reason. Ctrl-C or SIGTERM stops the server, the camera and the runtime cleanly.

By default everything is real: latencies measured on this machine, its sensors, its clock.
`--simulate-latency`, `--sensors simulated` and `--clock simulated` replace each with a
simulation (latency.py, energy.py, pacing.py), so that what the controller decides no longer
depends on how busy the machine is (the demo's tests use all three).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snrt.errors import SnrtError
from snrt.multi_bundle import parts

from .controller_setup import FPS_RANGE, build_controller
from .energy import BATTERY_CHOICES, SENSOR_CHOICES, EnergyModel, make_monitor
from .engine import DemoEngine, parse_fps
from .latency import simulated_latency
from .pacing import CLOCK_CHOICES, make_clock
from .server import DemoServer, is_loopback
from .sources import (
    CAMERA_CHOICES,
    CameraError,
    default_image_dirs,
    find_images,
    load_sample_images,
    open_camera,
)

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("demos.camera")


@dataclass
class DemoOptions:
    """Everything `DemoApp.create` needs (the CLI flags, as values)."""

    # None: snrt.default_bundle(); a list: several bundles on one front (MultiRuntime);
    # "default" / "elastic" name the bundled families
    bundle: str | Path | list[str | Path] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    camera: str = "auto"
    webcam_index: int = 0
    images: list[str] = field(default_factory=list)  # empty: default_image_dirs()
    frame_size: int = 224
    fps: float | None = None  # None: auto (see engine.auto_fps)
    threads: int = 1
    battery: str = "auto"
    battery_start_pct: float = 100.0
    energy: EnergyModel = field(default_factory=EnergyModel)
    verify: bool | str = True
    calibrate_runs: int = 10
    precisions: tuple[str, ...] = ("fp32",)  # e.g. ("fp32", "int8"): precision switching
    seed: int = 0
    simulate_latency: str | None = None  # None: measured; "flops[:MAX_MS]" or a table path
    sensors: str = "system"  # or "simulated"
    clock: str = "wall"  # or "simulated"


class DemoApp:
    """Runtime + monitor + camera + engine + server, started and closed together."""

    def __init__(self, rt, monitor, camera, engine: DemoEngine, server: DemoServer) -> None:
        self.rt, self.monitor, self.camera = rt, monitor, camera
        self.engine, self.server = engine, server
        self._closed = False

    @classmethod
    def create(cls, opts: DemoOptions) -> DemoApp:
        """Open everything (raises SnrtError/CameraError/OSError with a clear message); on
        failure, whatever was opened is closed again."""
        from snrt.multi_bundle import MultiRuntime, resolve
        from snrt.runtime import Runtime

        if opts.fps is not None:
            parse_fps(opts.fps)
        if not is_loopback(opts.host):
            log.warning("serving on %s, not a loopback address: anyone who can reach it sees "
                        "the camera and can change the settings", opts.host)
        given = opts.bundle if isinstance(opts.bundle, (list, tuple)) else [opts.bundle]
        paths = [resolve(b or "default") for b in given] or [resolve("default")]
        opened: list[Any] = []
        try:
            if len(paths) == 1:
                rt = Runtime(paths[0], threads=opts.threads, verify=opts.verify,
                             precisions=list(opts.precisions))
            else:  # one controller over every bundle's variants (stitches and subnets)
                if list(opts.precisions) != ["fp32"]:
                    raise SnrtError("--precisions other than fp32 take one --bundle "
                                    "(several bundles run fp32)")
                rt = MultiRuntime(paths, threads=opts.threads, verify=opts.verify)
            opened.append(rt)
            latency = (simulated_latency(opts.simulate_latency, rt)
                       if opts.simulate_latency else None)
            clock = make_clock(opts.clock)
            camera = _open_camera(opts, rt)
            opened.append(camera)
            monitor, battery_source = make_monitor(opts.battery, opts.energy,
                                                   battery_start_pct=opts.battery_start_pct,
                                                   sensors=opts.sensors, clock=clock)
            opened.append(monitor)
            ctl, source, fps = build_controller(rt, monitor, target_fps=opts.fps,
                                                frame=camera.probe(),
                                                calibrate_runs=opts.calibrate_runs,
                                                latency=latency, clock=clock)
            camera.set_fps(fps)
            engine = DemoEngine(rt, ctl, camera, opts.energy, battery_source=battery_source,
                                controller_source=source, fps_auto=opts.fps is None,
                                bundle_label=" + ".join(
                                    f"{r.bundle.name} ({p.name})"
                                    for r, p in zip(parts(rt), paths)),
                                latency=latency, clock=clock)
            server = DemoServer(engine, opts.host, opts.port)
        except BaseException:
            for thing in reversed(opened):
                _quietly_close(thing)
            raise
        return cls(rt, monitor, camera, engine, server)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.engine.start()
        self.server.start()

    def close(self) -> None:
        """Server first (no new requests), then processing and camera, runtime, monitor."""
        if self._closed:
            return
        self._closed = True
        _quietly_close(self.server)
        _quietly_close(self.engine)
        _quietly_close(self.rt)
        _quietly_close(self.monitor)
        log.info("demo stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quietly_close(thing: Any) -> None:
    try:
        thing.close()
    except Exception:
        log.exception("closing %r failed", thing)


def _open_camera(opts: DemoOptions, rt):
    images = []
    if opts.camera != "webcam":
        paths = (find_images(opts.images) if opts.images
                 else _first_nonempty(default_image_dirs(rt.bundle.path)))
        if opts.images and not paths:
            raise CameraError(f"no images found in {opts.images} (looked for PNG/JPEG/BMP/GIF/"
                              "WebP files)")
        images = load_sample_images(paths, rt.bundle.labels)
        if paths:
            log.info("synthetic camera images: %d from %s", len(images), paths[0].parent)
    return open_camera(opts.camera, fps=30.0, images=images, webcam_index=opts.webcam_index,
                       size=opts.frame_size, seed=opts.seed)


def _first_nonempty(dirs: list[Path]) -> list[Path]:
    for d in dirs:
        if d.is_dir():
            found = find_images([d])
            if found:
                return found
    return []


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    e = d.energy
    p = argparse.ArgumentParser(
        prog="snrt-demo", description="Power-saving camera demo: a local web page showing "
        "which snrt variant runs, and why, as power conditions change.",
        epilog="Simulated battery (no battery sensor, or --battery simulated): every frame "
        "costs its CPU time x --active-power-w, the time between frames --idle-power-w, all x "
        "--drain-speedup, taken from a --capacity-wh battery (see demos/camera/energy.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", default=argparse.SUPPRESS,
                   metavar="BUNDLE", help="bundle directory, or 'default' / 'elastic' (the "
                   "bundled SN-Net stitches / elastic subnets; default: 'default'); repeat it "
                   "to put several bundles' variants on one front, e.g. --bundle default "
                   "--bundle elastic (one controller switches across stitches and subnets)")
    p.add_argument("--host", default=d.host, help="address to serve on; anything but "
                   "loopback exposes the camera to the network")
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--camera", choices=CAMERA_CHOICES, default=d.camera,
                   help="auto: webcam when OpenCV (the 'camera' extra) and a device exist, "
                   "else synthetic")
    p.add_argument("--webcam-index", type=int, default=d.webcam_index)
    p.add_argument("--images", nargs="+", default=[], metavar="PATH",
                   help="images for the synthetic camera (dirs, files or globs; default: "
                   "samples/ in or beside the bundle, i.e. snrt/data/samples for the default "
                   "family, else matplotlib's sample photos)")
    p.add_argument("--frame-size", type=int, default=d.frame_size,
                   help="synthetic frame size in pixels (square)")
    p.add_argument("--fps", default="auto", help="target frames per second "
                   f"({FPS_RANGE[0]:g}-{FPS_RANGE[1]:g}), or 'auto': the rate at which the most "
                   "accurate variant uses 2/3 of the frame budget")
    p.add_argument("--threads", type=int, default=d.threads, help="inference threads")
    p.add_argument("--battery", choices=BATTERY_CHOICES, default=d.battery,
                   help="auto: the real battery when psutil sees one, else simulated")
    p.add_argument("--battery-start-pct", type=float, default=d.battery_start_pct)
    p.add_argument("--capacity-wh", type=float, default=e.battery_capacity_wh,
                   help="simulated battery capacity")
    p.add_argument("--active-power-w", type=float, default=e.active_power_w,
                   help="assumed power of one busy core")
    p.add_argument("--idle-power-w", type=float, default=e.idle_power_w,
                   help="assumed power of the rest of the device")
    p.add_argument("--drain-speedup", type=float, default=e.drain_speedup,
                   help="simulated battery drains this many times faster than modelled")
    p.add_argument("--simulate-latency", default=None, metavar="flops[:MAX_MS]|TABLE",
                   help="report each variant's latency from a table instead of the wall "
                   "clock: 'flops' (the largest variant takes 40 ms, the others their FLOPs "
                   "share; flops:MAX_MS to change it) or a lookup table JSON")
    p.add_argument("--precisions", default="fp32", metavar="fp32[,int8]",
                   help="precisions kept ready; with int8 (a bundle `snrt-export quantize` "
                        "made, with int8 accuracies) the controller switches (variant, "
                        "precision) pairs and the switch log shows the precision")
    p.add_argument("--sensors", choices=SENSOR_CHOICES, default=d.sensors,
                   help="simulated: no CPU load, temperature or system power saving from "
                   "this machine (implies the simulated battery)")
    p.add_argument("--clock", choices=CLOCK_CHOICES, default=d.clock,
                   help="simulated: the controller's and the battery's time advances by one "
                   "frame period per frame, whatever the machine's speed")
    p.add_argument("--no-verify", action="store_true",
                   help="check bundle file sizes only, not their sha256")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    fps = None
    if str(args.fps).lower() != "auto":
        try:
            fps = float(args.fps)
        except ValueError:
            raise SnrtError(f"--fps must be a number or 'auto', got {args.fps!r}") from None
        parse_fps(fps)
    if not 0 <= args.battery_start_pct <= 100:
        raise SnrtError("--battery-start-pct must be in 0..100")
    if args.threads < 1:
        raise SnrtError("--threads must be >= 1")
    if args.sensors == "simulated" and args.battery == "system":
        raise SnrtError("--battery system reads the real battery; with --sensors simulated use "
                        "--battery simulated (or auto)")
    if not 0 <= args.port <= 65535:
        raise SnrtError("--port must be in 0..65535")
    try:
        energy = EnergyModel(args.capacity_wh, args.active_power_w, args.idle_power_w,
                             args.drain_speedup)
    except ValueError as e:
        raise SnrtError(str(e)) from None
    bundles = getattr(args, "bundle", None) or []
    return DemoOptions(bundle=bundles[0] if len(bundles) == 1 else bundles or None,
                       host=args.host, port=args.port,
                       camera=args.camera,
                       webcam_index=args.webcam_index, images=args.images,
                       frame_size=args.frame_size, fps=fps, threads=args.threads,
                       battery=args.battery, battery_start_pct=args.battery_start_pct,
                       energy=energy, verify="size" if args.no_verify else True,
                       simulate_latency=args.simulate_latency, sensors=args.sensors,
                       clock=args.clock,
                       precisions=tuple(p for p in args.precisions.split(",") if p))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1
                                                       else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C while closing: give up on a clean stop
            raise KeyboardInterrupt
        log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    app = None
    try:
        opts = options_from_args(args)
        print("snrt-demo: loading the bundle and measuring its variants...", flush=True)
        app = DemoApp.create(opts)
        if stop.is_set():
            return 0
        app.start()
        print(f"snrt-demo: open {app.url}  (Ctrl-C to stop)", flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(app.url)
        while not stop.wait(0.5):
            pass
        return 0
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            print(f"snrt-demo: error: port {args.port} on {args.host} is in use; choose "
                  "another with --port (0 = any free port)", file=sys.stderr)
        else:
            print(f"snrt-demo: error: {e}", file=sys.stderr)
        return 2
    except (SnrtError, ValueError) as e:
        print(f"snrt-demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if app is not None:
            app.close()
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
