"""Runtime benchmark (issue 3): memory with all variants ready, switch latency, first frame
after a switch, and infer() overhead vs a bare onnxruntime session on the same graph.

    python -m benchmarks.runtime_bench [--bundle PATH] [--threads 1] [--naive-all]

Each memory figure comes from a fresh subprocess (RSS and PSS before/after loading and
running every variant once). Timings interleave the compared paths round by round so that
load from other processes hits both alike; they are reported as ratios.
Without --bundle it builds DeiT-Ti/S/B with random weights (71 variants, 474 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import ensure_deit_bundle, table

_MEM_CHILD = r"""
import json, sys, gc, numpy as np, onnxruntime as ort, psutil
from snrt.bundle import Bundle
mode, path, threads, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
b = Bundle.open(path, verify=False)
proc = psutil.Process()
def mem():
    gc.collect(); m = proc.memory_full_info(); return m.rss, m.pss
rss0, pss0 = mem()
variants = [b.variant(i) for i in ids] if ids else b.variants
shape = [1 if isinstance(d, str) else d for d in b.manifest.input["shape"]]
x = np.zeros(shape, np.float32)
if mode == "naive":
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(b.graph_path(v)), so, providers=["CPUExecutionProvider"])
                for v in variants]
    for s in sessions: s.run(None, {"image": x})
else:
    import snrt
    rt = snrt.Runtime(b, threads=threads, placement=mode, variants=[v.id for v in variants])
    for v in variants: rt.infer(x, variant=v.id)
rss1, pss1 = mem()
print(json.dumps({"rss": rss1 - rss0, "pss": pss1 - pss0,
                  "params_bytes": sum(v.params for v in variants) * 4}))
"""


def measure_memory(mode: str, path, threads: int, ids: list[str] | None) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, mode, str(path), str(threads),
                          json.dumps(ids or [])], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle to measure (default: DeiT-Ti/S/B random weights)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive-all", action="store_true",
                    help="load all variants as naive sessions (DeiT: ~11 GB); default: a sample "
                         "of 8, extrapolated by parameter bytes")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per comparison")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import snrt

    path = args.bundle or ensure_deit_bundle()
    b = snrt.Bundle.open(path, verify=False)
    weights = b.weights_bytes()
    all_params = sum(v.params for v in b.variants) * 4
    print(f"# bundle {path}: {len(b.variants)} variants, weights {weights / 1e6:.0f} MB, "
          f"threads {args.threads}, onnxruntime {ort.__version__}")

    # ---------------------------------------------------------------- memory
    rows = []
    snrt_mem = measure_memory("pieces", path, args.threads, None)
    sample = None if args.naive_all else [v.id for v in b.variants[:: max(1, len(b.variants)
                                                                             // 8)]]
    naive = measure_memory("naive", path, args.threads, sample)
    scale = all_params / naive["params_bytes"]
    rows.append({"setup": f"naive: 1 session/variant{'' if sample is None else ' (extrap.)'}",
                 "variants": len(b.variants), "RSS MB": naive["rss"] * scale / 1e6,
                 "PSS MB": naive["pss"] * scale / 1e6,
                 "above weights / weights": (naive["rss"] * scale - weights) / weights})
    rows.append({"setup": "snrt pieces (shared sessions)", "variants": len(b.variants),
                 "RSS MB": snrt_mem["rss"] / 1e6, "PSS MB": snrt_mem["pss"] / 1e6,
                 "above weights / weights": (snrt_mem["rss"] - weights) / weights})
    print("\n## Memory with every variant ready (growth after load + one run of each)")
    print(table(rows))
    if sample is not None:
        print(f"(naive measured on {len(sample)} variants holding "
              f"{naive['params_bytes'] / 1e6:.0f} MB of weights, scaled by {scale:.1f}x)")

    # ---------------------------------------------------------------- switch + first frame
    rt = snrt.Runtime(b, threads=args.threads, placement="pieces")
    ids = [v.id for v in rt.variants]
    rng = np.random.default_rng(0)
    sw = []
    for i in rng.integers(len(ids), size=5000):
        t = time.perf_counter()
        rt.switch(ids[i])
        sw.append((time.perf_counter() - t) * 1e3)
    x = rng.standard_normal((3, *b.manifest.input["shape"][2:])).astype(np.float32)
    probe = [b.variant(i).id for i in range(0, len(ids), max(1, len(ids) // 10))]
    first_ratio = []
    sw_loaded = []
    for k, vid in enumerate(probe):
        other = probe[(k + 1) % len(probe)]
        rt.switch(other)
        for _ in range(3):
            rt.infer(x)
        t = time.perf_counter()
        rt.switch(vid)
        sw_loaded.append((time.perf_counter() - t) * 1e3)
        first = rt.run(x).latency_ms
        steady = np.median([rt.run(x).latency_ms for _ in range(7)])
        first_ratio.append(first / steady)
    print("\n## Switching between ready variants")
    print(table([
        {"measure": "switch() idle, 5000 random", "p50 ms": float(np.percentile(sw, 50)),
         "p99 ms": float(np.percentile(sw, 99)), "max ms": float(np.max(sw))},
        {"measure": f"switch() between frames, {len(probe)} variants",
         "p50 ms": float(np.percentile(sw_loaded, 50)),
         "p99 ms": float(np.percentile(sw_loaded, 99)), "max ms": float(np.max(sw_loaded))},
    ]))
    print(table([{"measure": "first frame after switch / steady median",
                  "median": float(np.median(first_ratio)), "max": float(np.max(first_ratio)),
                  "variants": len(probe)}]))

    # ---------------------------------------------------------------- overhead vs bare ORT
    rows = []
    for vid in [b.variants[0].id, b.variants[min(len(ids) - 1, 24)].id, b.variants[1].id]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        bare = ort.InferenceSession(str(b.graph_path(vid)), so,
                                    providers=["CPUExecutionProvider"])
        xb = x[None]
        rt.switch(vid)
        for _ in range(3):
            bare.run(None, {"image": xb})
            rt.infer(x)
        tb, ts = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            bare.run(None, {"image": xb})
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            rt.infer(x)
            ts.append(time.perf_counter() - t)
        rows.append({"variant": vid, "pieces": len(b.variant(vid).pieces),
                     "bare ORT ms": float(np.median(tb)) * 1e3,
                     "snrt infer ms": float(np.median(ts)) * 1e3,
                     "ratio": float(np.median(ts) / np.median(tb))})
    print("\n## infer() vs bare InferenceSession.run on the variant's whole graph "
          f"(median of {args.rounds} interleaved rounds)")
    print(table(rows))
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
