"""Compare two bundles holding the same weights in different operator forms (snrt-export
regraph): max |logit difference| per variant (whole graphs and piece chains) and per task x
variant (the task chains snrt.Runtime runs), on seeded random images, with onnxruntime; for a
subnet bundle (no whole graphs), the piece chain of every listed subnet and of --unlisted
sampled members of its space; node counts of both bundles' graphs.

    python tools/regraph_check.py OLD.snrt NEW.snrt [--tol 1e-4] [--task-variants 12]
        [--unlisted 20] [--top1]

--top1: also recompute every listed variant's test top-1 through snrt.Runtime on NEW, on the
default family's test split (tools/train_default_family.py's dataset, for bundles whose
accuracy records name it), and require it equal to the top-1 the manifest records.
Exits 1 if any difference exceeds --tol, the weight files differ, or a top-1 differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent


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


def _nodes(bundle) -> int:
    import onnx

    rels = [p.graph for p in bundle.manifest.pieces] + \
        [v.graph for v in bundle.manifest.variants if v.graph]
    return sum(len(onnx.load(str(bundle.file(r)), load_external_data=False).graph.node)
               for r in rels)


def _unlisted(bundle, k: int, seed: int = 0) -> list[str]:
    """Up to k members of an open space that the bundle does not list (seeded)."""
    if k <= 0 or not bundle.open_membership:
        return []
    listed = {v.id for v in bundle.variants}
    return [s for s in bundle._space.sample(k + len(listed), seed) if s not in listed][:k]


def _top1(bundle_path, bundle) -> bool:
    """Recompute each listed variant's test top-1 on the default family's test split."""
    sys.path.insert(0, str(TOOLS))
    import train_default_family as tdf
    from PIL import Image

    import snrt
    from snrt.preprocess import preprocess_image

    recs = [v for v in bundle.variants if v.accuracy]
    if not recs or any(v.accuracy.get("dataset") != tdf.DATASET_DESC for v in recs):
        print(f"top-1: the accuracy records do not name {tdf.DATASET_DESC!r}; not checked")
        return True
    data = tdf.load_dataset()
    ok = True
    with snrt.Runtime(bundle_path, threads=2) as rt:
        cache = {}
        for v in recs:
            n = v.accuracy["n"]
            if n not in cache:
                images, labels = data.part("test", n)
                cache[n] = (np.stack([preprocess_image(Image.fromarray(im, "L"),
                                                       bundle.preprocess) for im in images]),
                            np.asarray(labels))
            x, y = cache[n]
            logits = np.concatenate([rt.infer(x[i:i + 250], variant=v.id)
                                     for i in range(0, len(x), 250)])
            top1 = round(100.0 * float(np.mean(logits.argmax(-1) == y)), 2)
            same = top1 == v.accuracy["top1"]
            ok &= same
            print(f"top-1 {v.id:14s} recorded {v.accuracy['top1']:6.2f}  now {top1:6.2f}  "
                  f"(n={n}) {'same' if same else 'DIFFERS'}")
    return ok


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
    ap.add_argument("--unlisted", type=int, default=20,
                    help="subnet bundles: also check this many unlisted members (default 20)")
    ap.add_argument("--top1", action="store_true",
                    help="recompute the recorded test top-1 on NEW (default family's dataset)")
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
    print(f"nodes (every piece and whole graph): {_nodes(old)} -> {_nodes(new)}")
    extra = _unlisted(old, args.unlisted)
    for vid in [v.id for v in old.variants] + extra:
        v = old.variant(vid)
        ref = old.graph_path(v.id) if v.graph else None
        a = _chain([ref] if ref else [old.piece_path(p) for p in v.pieces], x, co)
        d_chain = float(np.abs(_chain([new.piece_path(p) for p in v.pieces], x, cn) - a).max())
        d_whole = float(np.abs(_chain([new.graph_path(v.id)], x, cn) - a).max()) \
            if new.variant(v.id).graph else None
        worst.append((max(d_chain, d_whole or 0.0), v.id))
        tag = "unlisted" if vid in extra else "variant"
        whole = f"whole {d_whole:.2e}  " if d_whole is not None else ""
        print(f"{tag} {v.id:14s} {whole}pieces {d_chain:.2e}")
    print(f"variants: {len(worst) - len(extra)} listed + {len(extra)} unlisted, max |dlogit| "
          f"{max(worst)[0]:.2e} ({max(worst)[1]})")
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
    if args.top1:
        ok &= _top1(args.new, new)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
