"""Drive the power-saving demo end to end with real latencies and print what it did.

    python tools/demo_drive.py [--phase-seconds 15] [--port 8770] -- [snrt-demo options]
    e.g. python tools/demo_drive.py -- --bundle default --bundle elastic

Starts `snrt-demo` (synthetic camera, simulated battery unless options say otherwise) on
127.0.0.1, waits for its first frames, then runs three phases of --phase-seconds each: normal,
power saving on (POST /api/config), power saving off; prints the switch log (kinds and
reasons) and, per phase, the active variant, budget, latency and the measured front. The
demo measures its own latencies (no --simulate-latency), so what it prints depends on this
machine and its load: a check that the whole path works, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase-seconds", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=8770)
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds to wait for the demo's first frames (it measures first)")
    ap.add_argument("demo_args", nargs="*", help="options for snrt-demo (after --)")
    a = ap.parse_args(argv)
    demo = a.demo_args or ["--bundle", "default", "--bundle", "elastic"]
    cmd = [sys.executable, "-m", "demos.camera", "--port", str(a.port), "--host", "127.0.0.1",
           "--camera", "synthetic", "--battery", "simulated", *demo]
    base = f"http://127.0.0.1:{a.port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return json.load(r)

    def post(path, body):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while True:
            if p.poll() is not None:
                print(p.stdout.read(), file=sys.stderr)
                print(f"snrt-demo exited with {p.returncode} before serving", file=sys.stderr)
                return 1
            try:
                if get("/api/status").get("frame_seq", 0) > 0:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > a.start_timeout:
                print("snrt-demo served no frame in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        phases = {}
        for name, saving in (("normal", None), ("power saving", True), ("normal again", False)):
            if saving is not None:
                post("/api/config", {"power_saving": saving})
            time.sleep(a.phase_seconds)
            phases[name] = get("/api/status")
        for s in get("/api/history")["switches"]:
            print(f"switch {s['n']:3d} t={s['t_s']:7.2f}s {s['from']} ({s.get('from_kind')}) -> "
                  f"{s['to']} ({s.get('to_kind')}): {s['reason']}")
        for name, s in phases.items():
            front = ", ".join(f"{c['id']} {c['base_ms']:.2f} ms {c['accuracy']}"
                              for c in s["candidates"])
            print(f"{name}: {s['variant']['id']} ({s['variant']['kind']}), budget "
                  f"{s['budget_ms']:.2f} ms ({s['budget_why']}), latency p50 "
                  f"{s['latency_p50_ms']:.2f} ms, {s['fps']:.1f} FPS; front from "
                  f"{s.get('controller_source')}: {front}")
        return 0
    finally:
        p.terminate()
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
