"""TFLite benchmark (issue 5): deviation and latency of fp32/fp16/int8 TFLite files vs the ONNX
graph in onnxruntime, side by side in one run; optionally memory per loaded variant.

    python -m benchmarks.tflite_bench [--bundle PATH] [--variants ti s b 5 40] [--runs 20]
                                      [--precisions fp32 fp16 int8] [--memory]

Exports the chosen variants into the bundle first (exporters.tflite_export; resumable, so a
second run only measures). Deviation: max |Δlogit| and top-1 agreement of each file (run with
snrt.backends.tflite.TFLiteRunner, ai-edge-litert) against onnxruntime on the variant's graph,
on `--inputs` seeded standard-normal images that are not the export's verification inputs.
Latency: batch 1, 1 thread each, all paths of a variant interleaved round by round (so load from
other processes hits them alike); median wall time and median thread CPU time, and the ratio to
onnxruntime. --memory: RSS growth per loaded TFLite file, from a fresh subprocess per precision.
Without --bundle it builds DeiT-Ti/S/B with random weights (benchmarks.common).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import ensure_deit_bundle, table

_MEM_CHILD = r"""
import gc, json, sys, numpy as np, psutil
from snrt.backends.tflite import TFLiteRunner
files = json.loads(sys.argv[1])
proc = psutil.Process()
def rss():
    gc.collect(); return proc.memory_full_info().rss
r0 = rss(); runners = []; steps = []
for f in files:
    r = TFLiteRunner(f, threads=1, layout="NCHW")
    r.run(np.zeros((1, *r.input_shape), np.float32))
    runners.append(r); steps.append(rss() - r0)
print(json.dumps(steps))
"""


def _ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _time(fns: dict, runs: int) -> dict:
    for f in fns.values():  # warm-up: first runs page-fault arenas and packed weights
        f()
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            f()
            cpu[k].append(time.thread_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return {k: (float(np.median(wall[k])) * 1e3, float(np.median(cpu[k])) * 1e3) for k in fns}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle to measure (default: DeiT-Ti/S/B random weights)")
    ap.add_argument("--variants", nargs="+", default=["ti", "s", "b", "ti>s@5:5", "s>b@5:5"],
                    help="variant ids or cfg_ids (default: the anchors and two stitches)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    ap.add_argument("--runs", type=int, default=20, help="timed runs per path (median)")
    ap.add_argument("--inputs", type=int, default=16, help="inputs for the deviation check")
    ap.add_argument("--memory", action="store_true",
                    help="also measure RSS per loaded TFLite file (subprocesses)")
    args = ap.parse_args(argv)

    from exporters.tflite_export import export_tflite
    from snrt.backends.tflite import TFLiteRunner, load_engine
    from snrt.bundle import Bundle

    path = args.bundle or ensure_deit_bundle()
    t0 = time.monotonic()
    rep = export_tflite(path, precisions=args.precisions, variants=args.variants,
                        progress=True)
    print(f"# export: {len(rep.exported)} converted, {len(rep.skipped)} already there, "
          f"{len(rep.refused)} refused, {len(rep.failed)} failed in "
          f"{time.monotonic() - t0:.0f}s")
    conv = {(r.variant, r.precision): r.convert_s for r in rep.results}
    for r in rep.refused + rep.failed:
        print(f"# {r.status}: {r.variant} {r.precision}: {r.reason}")
    b = Bundle.open(path, verify="size")
    engine = load_engine()
    import onnxruntime as ort

    print(f"# bundle {b.path} ({b.name}); onnxruntime {ort.__version__}, {engine.name} "
          f"{engine.version} (XNNPACK), batch 1, 1 thread, {args.runs} interleaved runs")
    rng = np.random.default_rng(12345)
    pre = b.preprocess
    x = rng.standard_normal((args.inputs, len(pre.mean), pre.img_size, pre.img_size)
                           ).astype(np.float32)
    x1 = x[:1]
    rows, mem_files = [], {p: [] for p in args.precisions}
    for key in args.variants:
        v = b.variant(key)
        sess = _ort_session(b.graph_path(v))
        ref = np.concatenate([sess.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
        scale = float(np.abs(ref).max())
        fns = {"onnxruntime": lambda s=sess: s.run(None, {"image": x1})}
        runners = {}
        for prec in args.precisions:
            rec = v.exports.get("tflite", {}).get(prec)
            if rec is None:
                continue
            r = TFLiteRunner(b.file(rec["file"]), threads=1, layout=rec["layout"])
            runners[prec] = (r, rec)
            mem_files[prec].append(str(b.file(rec["file"])))
            fns[prec] = lambda r=r: r.run(x1)
        lat = _time(fns, args.runs)
        base_wall, base_cpu = lat["onnxruntime"]
        rows.append({"variant": v.id, "GFLOPs": v.flops / 1e9, "precision": "onnx fp32",
                     "MB": b.manifest.files[v.graph]["bytes"] / 1e6 + v.params * 4 / 1e6,
                     "max|Δ|": 0.0, "rel": 0.0, "top1": 1.0, "wall ms": base_wall,
                     "cpu ms": base_cpu, "×ORT wall": 1.0, "×ORT cpu": 1.0, "convert s": None})
        for prec, (r, rec) in runners.items():
            out = r.run(x)
            d = float(np.abs(out - ref).max())
            w, c = lat[prec]
            rows.append({"variant": v.id, "GFLOPs": v.flops / 1e9, "precision": f"tflite {prec}",
                         "MB": rec["bytes"] / 1e6, "max|Δ|": d, "rel": d / scale,
                         "top1": float((out.argmax(1) == ref.argmax(1)).mean()),
                         "wall ms": w, "cpu ms": c, "×ORT wall": w / base_wall,
                         "×ORT cpu": c / base_cpu, "convert s": conv.get((v.id, prec))})
            r.close()
    print(table(rows, ["variant", "GFLOPs", "precision", "MB", "max|Δ|", "rel", "top1",
                       "wall ms", "cpu ms", "×ORT wall", "×ORT cpu", "convert s"]))
    print("# rel = max|Δlogit| / max|onnx logit|; top1 = argmax agreement on "
          f"{args.inputs} random-normal inputs; MB for onnx = graph + its weights (fp32)")
    if args.memory:
        mrows = []
        for prec, files in mem_files.items():
            if not files:
                continue
            out = subprocess.run([sys.executable, "-c", _MEM_CHILD, json.dumps(files)],
                                 capture_output=True, text=True, check=True)
            steps = json.loads(out.stdout.strip().splitlines()[-1])
            prev = 0
            for f, s in zip(files, steps):
                size = os.path.getsize(f)
                mrows.append({"precision": prec, "file": f.rsplit("/", 1)[-1],
                              "file MB": size / 1e6, "RSS +MB": (s - prev) / 1e6,
                              "RSS / file": (s - prev) / size, "cumulative MB": s / 1e6})
                prev = s
        print(table(mrows))
        print("# RSS growth when loading each file (after one run) into one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
