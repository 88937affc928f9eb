"""Contention benchmark (issue 7): a frame loop at a target FPS while a CPU hog turns on and off,
for fixed-largest, fixed-smallest and adaptive (snrt's controller); then a simulated battery
drain from 100% to 5% with power-saving switching on.

    python -m benchmarks.contention_bench [--bundle PATH] [--phase-seconds 8] [--phases 6]
                                          [--repeat 1] [--hog-procs 1] [--headroom 1.0]
                                          [--period-ms MS]

Bounded in time (about repeat x 3 x phases x phase-seconds + calibration + battery-seconds),
loopback only, and it stops
its own load processes (also on Ctrl-C). Steps:
1. measure every variant back to back (as snrt-profile does): the idle p50s are the lookup
   table the controller gets; their Pareto front is the candidate set;
2. pick the frame period so the most accurate variant's back-to-back idle p99 is 80% of it
   (or take --period-ms);
3. measure every front variant paced at that period (a frame, then sleep until the next one:
   what the frame loop does, and on a VM a paced frame is often much slower than a back-to-back
   one), idle and with the hog on: the oracle's knowledge;
4. run the same on/off schedule for each strategy; a frame misses its deadline when its
   inference takes longer than the frame period.
"best feasible" = per phase, the most accurate variant whose paced p99 in that condition fits
the period (at most 1% misses), else the fastest; its time-weighted mean accuracy is what
adaptive should approach, and the fastest variant's misses are the floor no strategy beats.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import table

HOG = "import time\nwhile True:\n    pass\n"


class Hog:
    """CPU-burning child processes (normal priority, like other apps on the device)."""

    def __init__(self, procs: int):
        self.procs, self.children = procs, []

    def on(self):
        if not self.children:
            self.children = [subprocess.Popen([sys.executable, "-c", HOG])
                             for _ in range(self.procs)]
            time.sleep(0.05)

    def off(self):
        for c in self.children:
            c.kill()
        for c in self.children:
            c.wait()
        self.children = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.off()


def latencies(rt, key, x, seconds):
    """Back-to-back latencies of a candidate key (a variant id, or "id|int8")."""
    from snrt.controller import split_key

    vid, prec = split_key(key)
    out, t_end = [], time.perf_counter() + seconds
    rt.run(x, variant=vid, precision=prec)
    while time.perf_counter() < t_end:
        out.append(rt.run(x, variant=vid, precision=prec).latency_ms)
    return np.asarray(out)


def switch(rt, key, reason="manual"):
    from snrt.controller import split_key

    vid, prec = split_key(key)
    rt.switch(vid, reason=reason, precision=prec)


def frame_loop(rt, xs, period_ms, seconds, hog_schedule, hog, on_frame=None):
    """Run frames at 1000/period FPS for `seconds`; hog_schedule(t) -> bool, or None to leave
    the hog as it is. Returns records (t, candidate key: variant or
    "id|int8", latency ms, hog wanted)."""
    from snrt.controller import cand_key

    recs = []
    t0 = time.perf_counter()
    nxt = t0
    i = 0
    hog_state = None
    while True:
        now = time.perf_counter()
        t = now - t0
        if t >= seconds:
            break
        want = hog_schedule(t)
        if want != hog_state:
            hog.on() if want else hog.off()
            hog_state = want
        res = rt.run(xs[i % len(xs)])
        recs.append((t, cand_key(res.variant.id, res.precision), res.latency_ms, want))
        if on_frame:
            on_frame(t, res)
        i += 1
        nxt += period_ms / 1000
        sleep = nxt - time.perf_counter()
        if sleep > 0:
            time.sleep(sleep)
        else:
            nxt = time.perf_counter()  # behind: drop, do not try to catch up
    if hog_state is not None:  # None: the schedule leaves the hog as it is
        hog.off()
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="default: the bundled default family")
    ap.add_argument("--phase-seconds", type=float, default=8.0)
    ap.add_argument("--phases", type=int, default=6, help="alternating off/on, starts off")
    ap.add_argument("--hog-procs", type=int, default=1,
                    help="CPU-hog processes (the issue's scenario: one); as many as cores "
                         "oversubscribes the machine, a stress test whose miss floor (the "
                         "fastest variant's misses) is above 1%% on a shared 2-vCPU VM")
    ap.add_argument("--calib-seconds", type=float, default=2.0)
    ap.add_argument("--battery-seconds", type=float, default=40.0)
    ap.add_argument("--period-ms", type=float, default=None,
                    help="frame period (default: the most accurate variant's back-to-back "
                         "p99 / 0.8)")
    ap.add_argument("--headroom", type=float, default=1.0,
                    help="the controller's PolicyConfig.headroom: share of the frame period "
                         "inference may use. The frame loop here does nothing else and a miss "
                         "is a frame over the whole period, so 1.0 sets the controller the "
                         "deadline it is graded on (default); 0.8 (the library default) keeps "
                         "20%% for an app's own work")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run scenario 1 this many times (strategies interleaved per round)")
    ap.add_argument("--precisions", default="fp32",
                    help="e.g. fp32,int8: (variant, precision) candidates (the bundle needs "
                         "int8 graphs with accuracies: tools/default_family_int8.py --out "
                         "build/default-int8-acc.snrt); the battery scenario then runs with "
                         "precision switching off and on")
    args = ap.parse_args(argv)

    import snrt
    from snrt.controller import Controller, PolicyConfig, cand_key, precision_accuracy
    from snrt.lookup_table import Entry, pareto_front
    from snrt.monitor import SimulatedClock, SimulatedMonitor, SystemMonitor

    path = args.bundle or snrt.default_bundle()
    precs = args.precisions.split(",")
    rt = snrt.Runtime(path, threads=1, precisions=precs, tasks=[])
    b = rt.bundle
    acc = {v.id: v.top1 for v in rt.variants}
    for p in precs[1:] if precs[0] == "fp32" else precs:
        pacc = precision_accuracy(b, p)
        if not pacc:
            raise SystemExit(f"{b.path}: no {p} accuracies in the manifest (run "
                             "tools/default_family_int8.py --out ...)")
        acc.update({cand_key(v, p): a for v, a in pacc.items() if v in acc})
    if any(a is None for a in acc.values()):
        print("# bundle has no accuracies: using FLOPs rank as accuracy proxy")
        order = sorted(rt.variants, key=lambda v: v.flops)
        acc = {v.id: 100.0 * (i + 1) / len(order) for i, v in enumerate(order)}
    rng = np.random.default_rng(0)
    shape = tuple(b.manifest.input["shape"][1:])
    samples = _sample_inputs(b, shape, rng)

    # 1. calibration: idle latency of all variants -> Pareto front; then front idle/loaded
    idle = {k: float(np.median(latencies(rt, k, samples[0], 0.15))) for k in acc}

    def front_of(keys):
        return [e.variant for e in pareto_front(
            [Entry("", k, 0, "", "", 1, idle[k], idle[k], accuracy=acc[k]) for k in keys])]

    front = front_of(list(acc))
    front_fp32 = front_of([k for k in acc if "|" not in k])
    hog = Hog(args.hog_procs)
    b2b = {vid: latencies(rt, vid, samples[0], args.calib_seconds) for vid in front}
    largest = max(front, key=lambda v: acc[v])
    smallest = min(front, key=lambda v: np.median(b2b[v]))
    period = args.period_ms or float(np.percentile(b2b[largest], 99)) / 0.8
    cal = {}
    with hog:
        for cond in ("idle", "load"):
            hog.on() if cond == "load" else hog.off()
            for vid in front:
                switch(rt, vid)
                recs = frame_loop(rt, samples, period, args.calib_seconds, lambda t: None, hog)
                cal.setdefault(vid, {})[cond] = np.array([r[2] for r in recs])
    print(f"# {b.path.name}: {len(rt.variants)} variants x {precs}, Pareto front {len(front)}"
          f" {front}; "
          f"period {period:.2f} ms ({1000 / period:.0f} FPS); hog {args.hog_procs} procs; "
          f"controller headroom {args.headroom}")
    rows = [{"variant": v, "top1": acc[v], "table p50": float(np.median(b2b[v])),
             "idle p50": float(np.median(cal[v]["idle"])),
             "idle p99": float(np.percentile(cal[v]["idle"], 99)),
             "load p50": float(np.median(cal[v]["load"])),
             "load p99": float(np.percentile(cal[v]["load"], 99))} for v in front]
    print(table(rows))
    print("table p50: back to back (the controller's lookup table); idle/load: paced at the "
          "period, as in the frame loop")

    def feasible(cond):
        ok = [v for v in front if np.percentile(cal[v][cond], 99) <= period]
        return max(ok, key=lambda v: acc[v]) if ok else smallest

    best = {"idle": feasible("idle"), "load": feasible("load")}
    schedule = lambda t: int(t // args.phase_seconds) % 2 == 1  # noqa: E731
    total = args.phase_seconds * args.phases

    # 2. strategies
    base = {v: float(np.median(b2b[v])) for v in front}
    results, adaptive_log = [], []
    for rnd, name in [(r, n) for r in range(args.repeat)
                      for n in ("fixed-largest", "fixed-smallest", "adaptive")]:
        if name == "adaptive":
            ctl = Controller(SystemMonitor(), base, {v: acc[v] for v in front},
                             config=PolicyConfig(target_fps=1000 / period,
                                                 headroom=args.headroom, min_dwell_s=1.0))
            switch(rt, largest)
            rt.set_controller(ctl)
        else:
            rt.set_controller(None)
            switch(rt, largest if name == "fixed-largest" else smallest)
        n_sw0 = len(rt.switches())
        t_loop = time.monotonic()
        recs = frame_loop(rt, samples, period, total, schedule, hog)
        rt.set_controller(None)
        events = [(e.t_s - t_loop, cand_key(e.from_id or "-", e.from_precision),
                   cand_key(e.to_id, e.to_precision), e.reason)
                  for e in rt.switches()[n_sw0:]]
        if name == "adaptive" and rnd == 0:
            adaptive_log = events
        lat = np.array([r[2] for r in recs])
        loaded = np.array([r[3] for r in recs])
        oracle = np.mean([acc[best["load" if ld else "idle"]] for ld in loaded])
        # the first half second is the controller's start (it begins on the largest), not a
        # reaction to a load change; every later switch counts
        sw = sum(1 for ev in events if ev[0] >= 0.5)
        results.append({
            "strategy": name, "round": rnd + 1, "frames": len(recs),
            "miss %": 100 * float(np.mean(lat > period)),
            "miss % idle": 100 * float(np.mean(lat[~loaded] > period)),
            "miss % loaded": 100 * float(np.mean(lat[loaded] > period)),
            "mean top1": float(np.mean([acc[r[1]] for r in recs])),
            "best feasible top1": float(oracle),
            "switches/min": sw / (total / 60), "switches/load change": sw / (args.phases - 1)})
    print("\n## Scenario 1: CPU hog on/off "
          f"({args.phases} phases x {args.phase_seconds:.0f} s, deadline {period:.2f} ms)")
    print(table(results))
    if args.repeat > 1:
        keys = [k for k in results[0] if k not in ("strategy", "round")]
        mean_rows = []
        for name in ("fixed-largest", "fixed-smallest", "adaptive"):
            rs = [r for r in results if r["strategy"] == name]
            mean_rows.append({"strategy": name, "rounds": len(rs),
                              **{k: float(np.mean([r[k] for r in rs])) for k in keys},
                              "max miss %": max(r["miss %"] for r in rs)})
        print(f"\nmean over {args.repeat} rounds:")
        print(table(mean_rows))
    print(f"\nadaptive, round 1: {len(adaptive_log)} switches (t s, load on/off at "
          f"{args.phase_seconds:.0f} s steps)")
    for t, old, new, why in adaptive_log[:20]:
        print(f"  t={t:5.1f}s {'load' if schedule(t) else 'idle'} {old} -> {new}: "
              f"{why.split(': ', 1)[-1]}")

    # 3. battery drain with power saving from 30%: precision switching off (fp32 front) and
    # on (the (variant, precision) front) when several precisions are ready
    secs = args.battery_seconds
    b2b.update({k: latencies(rt, k, samples[0], args.calib_seconds)
                for k in front_fp32 if k not in b2b})
    modes = [("off", front_fp32), ("on", front)] if len(precs) > 1 else [("-", front)]
    rows, logs = [], {}
    for mode, cands in modes:
        clock = SimulatedClock()
        mon = SimulatedMonitor(clock=clock, battery_start_pct=100.0,
                               drain_pct_per_h=95.0 / secs * 3600,
                               power_saving=[(0.0, False), (secs * 70 / 95, True)])
        ctl = Controller(mon, {k: float(np.median(b2b[k])) for k in cands},
                         {k: acc[k] for k in cands},
                         config=PolicyConfig(target_fps=1000 / period, headroom=args.headroom,
                                             min_dwell_s=1.0), clock=clock)
        switch(rt, max(cands, key=lambda k: acc[k]))
        rt.set_controller(ctl)
        t_prev = [0.0]

        def tick(t, res, clock=clock, t_prev=t_prev):
            clock.advance(t - t_prev[0])
            t_prev[0] = t

        recs = frame_loop(rt, samples, period, secs, lambda t: False, hog, on_frame=tick)
        rt.set_controller(None)
        logs[mode] = list(ctl.events)
        for hi, lo in [(100, 70), (70, 30), (30, 20), (20, 10), (10, 5)]:
            sel = [r for r in recs if lo < 100 - 95 * r[0] / secs <= hi]
            if not sel:
                continue
            used = {}
            for r in sel:
                used[r[1]] = used.get(r[1], 0) + 1
            main_v = max(used, key=used.get)
            lat = np.array([r[2] for r in sel])
            rows.append({"precision switching": mode, "battery %": f"{hi}-{lo}",
                         "power saving": "yes" if hi <= 30 else "no",
                         "variant (most frames)": main_v, "variants used": len(used),
                         "mean top1": float(np.mean([acc[r[1]] for r in sel])),
                         "mean latency ms": float(lat.mean()),
                         "miss %": 100 * float(np.mean(lat > period))})
    print(f"\n## Scenario 2: simulated battery 100% -> 5% in {secs:.0f} s, power saving from "
          f"30% (deadline {period:.2f} ms)")
    print(table(rows))
    for mode, evs in logs.items():
        print(f"switch log, precision switching {mode}:")
        for e in evs[:12]:
            print(f"  t={e.t_s:5.1f}s battery {e.state['battery_pct']:.0f}% -> "
                  f"{e.decision['target']}: {e.decision['reason']}")
    rt.close()
    return 0


def _sample_inputs(b, shape, rng):
    from pathlib import Path

    from snrt.preprocess import load_image, preprocess_image

    d = Path(b.path).parent / "samples"
    files = sorted(d.glob("*.png"))[:16] if d.is_dir() else []
    if files:
        return [preprocess_image(load_image(f), b.preprocess) for f in files]
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]


if __name__ == "__main__":
    sys.exit(main())
