"""Compare two bundles holding the same weights in different operator forms (snrt-export
regraph): max |logit difference| per variant (whole graphs and piece chains) and per task x
variant (the task chains snrt.Runtime runs), on seeded random images, with onnxruntime.

    python tools/regraph_check.py OLD.snrt NEW.snrt [--tol 1e-4] [--task-variants 12]

Exits 1 if any difference exceeds --tol, or the weight files differ.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _chain(paths, x, cache):
    for p in paths:
        if p not in cache:
            cache[p] = _session(p)
        s = cache[p]
        x = s.run(None, {s.get_inputs()[0].name: x})[0]
    return x


def _task_paths(bundle, task, v):
    own = {p["id"]: bundle.file(p["graph"]) for p in task.pieces}
    return [own.get(pid) or bundle.piece_path(pid) for pid in task.chain(v.pieces, v.anchors)]


def main(argv=None) -> int:
    from snrt.bundle import Bundle

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--n", type=int, default=4, help="random images (default 4)")
    ap.add_argument("--task-variants", type=int, default=0,
                    help="check each task on every k-th of its variants (default 0: all)")
    args = ap.parse_args(argv)
    old, new = Bundle.open(args.old, verify=True), Bundle.open(args.new, verify=True)
    ok = True
    for rel in [f for f in old.manifest.files if f.endswith(".bin")]:
        same = old.manifest.files[rel]["sha256"] == new.manifest.files.get(rel, {}).get("sha256")
        print(f"{rel}: {'byte-identical' if same else 'DIFFERS'}")
        ok &= same
    shape = old.manifest.input["shape"][1:]
    x = np.random.default_rng(0).standard_normal((args.n, *shape)).astype(np.float32)
    co, cn = {}, {}
    worst = []
    for v in old.variants:
        a = _chain([old.graph_path(v.id)], x, co)
        d_whole = float(np.abs(_chain([new.graph_path(v.id)], x, cn) - a).max())
        d_chain = float(np.abs(_chain([new.piece_path(p) for p in v.pieces], x, cn) - a).max())
        worst.append((max(d_whole, d_chain), v.id))
        print(f"variant {v.id:14s} whole {d_whole:.2e}  pieces {d_chain:.2e}")
    print(f"variants: {len(worst)}, max |dlogit| {max(worst)[0]:.2e} ({max(worst)[1]})")
    ok &= max(worst)[0] <= args.tol
    for t in old.tasks:
        tn = new.task(t.name)
        step = args.task_variants or 1
        tw = []
        for vid in t.variants[::step]:
            a = _chain(_task_paths(old, t, old.variant(vid)), x, co)
            b = _chain(_task_paths(new, tn, new.variant(vid)), x, cn)
            tw.append((float(np.abs(a - b).max()), vid))
        print(f"task {t.name}: {len(tw)} variants, max |dlogit| {max(tw)[0]:.2e} ({max(tw)[1]})")
        ok &= max(tw)[0] <= args.tol
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
