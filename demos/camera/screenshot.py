"""Screenshot of the demo page after a short scripted session (for docs/demo.png).

    python -m demos.camera.screenshot --out docs/demo.png [--bundle B] [--images DIR]
    python -m demos.camera.screenshot --out docs/demo_tasks.png --tasks uci-digits,faces

Starts the demo in this process on a free loopback port (synthetic camera, simulated battery),
opens it in headless Chromium (Playwright with the system's Chromium, no browser download),
and drives the page's own controls: a few seconds as started; the most accurate variant pinned
for a moment and the target FPS set so that it uses 45 % of the frame budget, back to auto; power
saving on; power saving off; with --tasks, each named task chosen in turn in the page's task
selector (half a phase each, the last one stays); then writes a full-page PNG. Needs
`pip install playwright` and Chromium (`apt-get install -y chromium`, or --chromium PATH).
--simulated: simulated latencies, sensors and clock (the shot does not depend on the load).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .app import DemoApp, DemoOptions
from .energy import EnergyModel

log = logging.getLogger(__name__)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def capture(app: DemoApp, out: Path, *, chromium: str, phase_s: float = 8.0,
            width: int = 1280, height: int = 960, tasks: list[str] = ()) -> Path:
    """Drive the running demo's page through the power-saving scenario and save a PNG."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("screenshot needs playwright: pip install playwright (the system "
                         "Chromium is used; do not run `playwright install`)") from None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(app.url)
            page.wait_for_function(
                "() => Number(document.getElementById('frame').dataset.seq) > 0")
            if page.is_checked("#ps-toggle"):
                page.click("#ps-toggle")
            page.wait_for_timeout(phase_s * 1000)
            _fit_best_variant(page)
            page.wait_for_timeout(phase_s * 1000)
            page.click("#ps-toggle")  # power saving on
            page.wait_for_timeout(phase_s * 1000)
            page.click("#ps-toggle")  # and off again
            page.wait_for_timeout(phase_s * 1000)
            for name in tasks:  # the task selector: same backbone, the task's tuners and head
                page.select_option("#task-select", name)
                page.wait_for_function(
                    "(t) => document.getElementById('pred-task').dataset.task === t", arg=name)
                page.wait_for_timeout(phase_s * 500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def _fit_best_variant(page) -> None:
    """Through the page: pin the most accurate variant for a moment (the controller learns
    its latency now), set the target FPS so that it takes 45 % of the frame budget, back to
    auto: it fits with room for the spikes that the browser and server sharing the CPU cause,
    and power saving's half budget will not hold it."""
    status = page.evaluate("async () => (await fetch('/api/status')).json()")
    best = max(status["candidates"], key=lambda c: c["accuracy"])["id"]
    page.select_option("#pin-select", best)
    page.wait_for_timeout(2000)
    est_ms = page.evaluate("async () => (await fetch('/api/status')).json()")["est_ms"]
    if est_ms:
        fps = round(max(1.0, min(240.0, 800.0 * 0.45 / est_ms)), 1)
        page.fill("#fps-input", str(fps))
        page.click("#fps-apply")
    page.select_option("#pin-select", "auto")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demos.camera.screenshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    p.add_argument("--bundle", help="default: snrt's bundled default family")
    p.add_argument("--images", nargs="+", default=[])
    p.add_argument("--fps", type=float, default=None, help="default: auto")
    p.add_argument("--phase-seconds", type=float, default=8.0)
    p.add_argument("--battery-start-pct", type=float, default=100.0)
    p.add_argument("--drain-speedup", type=float, default=60.0)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--simulated", action="store_true",
                   help="simulated latencies (FLOPs share), sensors and clock, as the tests: "
                   "the shot does not depend on how busy this machine is")
    p.add_argument("--tasks", default="", help="comma list of the bundle's tasks to choose "
                   "in turn in the task selector before the screenshot")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = DemoOptions(bundle=args.bundle, port=0, camera="synthetic", images=args.images,
                       fps=args.fps, battery="simulated",
                       battery_start_pct=args.battery_start_pct,
                       energy=EnergyModel(drain_speedup=args.drain_speedup),
                       **({"simulate_latency": "flops", "sensors": "simulated",
                           "clock": "simulated"} if args.simulated else {}))
    t0 = time.monotonic()
    with DemoApp.create(opts) as app:
        out = capture(app, args.out, chromium=args.chromium, phase_s=args.phase_seconds,
                      tasks=[t for t in args.tasks.split(",") if t])
    log.info("wrote %s in %.0f s", out, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
