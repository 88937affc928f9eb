"""Tasks on a running Runtime: memory each task adds and its frame time vs the plain backbone.

    flock /tmp/snrt-timing.lock python benchmarks/task_bench.py [--rounds 5] [--runs 200]

One task per tuner kind (adapter r=8, LoRA r=4, prefix l=4, prompt l=4) on all 12 blocks of
variant s of the default bundle, random tuners (tests/task_files.py), in a temporary copy.
Memory: one fresh process per (kind, mode): RSS/PSS before and after rt.add_task(kind) plus one
call, vs the task's tuner+head bytes (task_<name>.bin). Modes: pieces placement merged (one
session per run of task pieces, the default), pieces unmerged (one per tuned block), graphs
placement (one session per (variant, task)). Time: the plain s and s with each task in one
Runtime (graphs placement), interleaved; min over rounds of the p50 of `runs` calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
KINDS = {"adapter": ("adapter", 8), "lora": ("lora", 4), "prefix": ("prefix", 4),
         "prompt": ("prompt", 4)}
MODES = {"pieces merged": dict(placement="pieces"),
         "pieces per block": dict(placement="pieces", merge_tasks=False),
         "graphs": dict(placement="graphs")}

CHILD = r"""
import gc, json, sys, numpy as np, psutil, snrt
b, kind, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
p = psutil.Process()
def mem():
    gc.collect(); m = p.memory_full_info(); return m.rss, m.pss
rt = snrt.Runtime(b, variants=["s"], tasks=[], **opts)
img = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[0]
rt.infer(img)
n0 = rt._backend.session_count; r0, p0 = mem()
t = rt.add_task(kind); rt.infer(img, task=kind)
r1, p1 = mem()
print(json.dumps({"rss": r1 - r0, "pss": p1 - p0, "sessions": rt._backend.session_count - n0,
                  "bytes": t.bytes}))
"""


def build(d: Path) -> Path:
    from task_files import random_task, write_task

    import snrt
    from exporters.task_bundle import add_task
    from snrt.tuners import bundle_backbone_sha256

    sha = bundle_backbone_sha256(snrt.Bundle.open(snrt.default_bundle(), verify="size"))
    out = d / "bench.snrt"
    for k, (kind, r) in KINDS.items():
        tensors, meta = random_task(sha, name=k, tuners=((kind, r),),
                                    tuned={"s": list(range(12))}, heads=("s",),
                                    variants=["s"], scale=0.1, seed=1)
        f = write_task(d / f"{k}.safetensors", tensors, meta)
        add_task(snrt.default_bundle() if not out.exists() else out, f,
                 out=None if out.exists() else out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    import numpy as np

    import snrt

    with tempfile.TemporaryDirectory() as tmp:
        b = build(Path(tmp))
        print("| task | mode | sessions added | task bytes | RSS added | RSS / bytes | PSS added |")
        print("|---|---|---|---|---|---|---|")
        for k in KINDS:
            for mode, opts in MODES.items():
                out = subprocess.run([sys.executable, "-c", CHILD, str(b), k, json.dumps(opts)],
                                     capture_output=True, text=True, check=True,
                                     env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
                m = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {k} | {mode} | {m['sessions']} | {m['bytes'] / 1e3:.0f} kB | "
                      f"{m['rss'] / 1e6:.2f} MB | {m['rss'] / m['bytes']:.2f}x | "
                      f"{m['pss'] / 1e6:.2f} MB |")
        img = sorted((snrt.default_bundle().parent / "samples").glob("*.png"))[0]
        print("\n| task | frame p50 plain | with task | ratio |\n|---|---|---|---|")
        with snrt.Runtime(b, variants=["s"], placement="graphs") as rt:
            batch = snrt.preprocess.to_batch(img, rt.bundle.preprocess)[0]
            best = {k: float("inf") for k in [False, *KINDS]}
            for _ in range(a.rounds):
                for k in best:
                    ts = []
                    for _ in range(a.runs):
                        t0 = time.perf_counter()
                        rt.infer(batch, task=k)
                        ts.append(time.perf_counter() - t0)
                    best[k] = min(best[k], float(np.median(ts)))
            for k in KINDS:
                print(f"| {k} | {best[False] * 1e3:.3f} ms | {best[k] * 1e3:.3f} ms | "
                      f"{best[k] / best[False]:.2f}x |")


if __name__ == "__main__":
    main()
