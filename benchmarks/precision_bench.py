"""Precision benchmark (issue 18): fp32 vs int8 (shared weights) vs TFLite, side by side.

    flock /tmp/snrt-timing.lock python -m benchmarks.precision_bench [--rounds 20] [--no-tflite]
        [--no-memory] [--no-static]
    flock /tmp/snrt-timing.lock python -m benchmarks.precision_bench --kernels

`--kernels`: only DeiT-S's four MatMul shapes alone, fp32 against snrt's int8 pattern with
full-range and 7-bit weights (CPU time and error; why the weights are 7-bit, see
exporters/quantize.py WEIGHT_QMAX). The CPU's AVX/VNNI flags are printed with every table.

For the default family (a quantized copy in build/, snrt-export quantize) and DeiT-Ti/S/B
with random weights (timm key names and shapes, benchmarks.common; 71 variants: three anchors
and 68 stitches; DeiT-Ti and DeiT-S timed), prints in one interleaved run (every path of a
variant called once per round, 1 thread, batch 1, median wall time):
- bare onnxruntime fp32: an InferenceSession on the variant's own graph (= 1.00);
- snrt fp32 and snrt int8: snrt.Runtime(precisions=["fp32", "int8"]), the int8 graphs
  reading the one shared graphs/weights_int8.bin;
- TFLite fp32 / int8 (dynamic range) through snrt's tflite backend, when installed;
- for DeiT-S also onnxruntime's own quantize_dynamic and quantize_static (QDQ, calibrated on
  16 random inputs) of the standalone graph: the dynamic vs static comparison;
- GFLOP/s of each (2 x the variant's multiply-adds / time) beside the one-MatMul peak
  (onnxruntime, [197, 384] x [384, 1536] fp32 and the dynamic int8 MatMul), measured in the
  same run.
Then the weights' bytes (int8 file vs weights.bin) and RSS growth with all 71 DeiT variants
ready in fp32 and int8 at once (a fresh subprocess; `--no-latency` runs only this part, which
needs no timing lock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE, table

_MEM_CHILD = r"""
import gc, json, sys, numpy as np, psutil
import snrt
proc = psutil.Process()
def mem():
    gc.collect(); m = proc.memory_full_info(); return m.rss, m.pss
r0, p0 = mem()
rt = snrt.Runtime(sys.argv[1], precisions=["fp32", "int8"], placement="pieces", tasks=[])
x = np.zeros((1, 3, 224, 224), np.float32)
for v in rt.variants:
    for p in ("fp32", "int8"):
        rt.infer(x, variant=v.id, precision=p)
r1, p1 = mem()
print(json.dumps({"rss": r1 - r0, "pss": p1 - p0, "sessions": rt._backend.session_count,
                  "variants": len(rt.variants)}))
"""


def deit_int8_bundle() -> Path:
    """DeiT-Ti/S/B (random weights, timm shapes) with their 68 stitches (71 variants),
    exported once (benchmarks.common.ensure_deit_bundle) and quantized."""
    from benchmarks.common import ensure_deit_bundle
    from exporters.quantize import quantize_bundle
    from snrt.bundle import Bundle

    path = CACHE / "deit-random-int8.snrt"
    if path.exists() and not _current(Bundle.open(path, verify="size")):
        shutil.rmtree(path)  # another operator form or weight range: rebuild
    path = ensure_deit_bundle(path)
    if "int8" not in Bundle.open(path, verify="size").precisions:
        quantize_bundle(path, n_inputs=4)
    return path


def _current(b) -> bool:
    """Whether a cached bundle is in today's default operator form and, if quantized, holds
    today's int8 weight range (an older cache would time other graphs)."""
    from exporters.onnx_export import bundle_ops
    from exporters.onnx_graph import DEFAULT_OPS
    from exporters.quantize import WEIGHT_QMAX

    if bundle_ops(b.manifest) != DEFAULT_OPS:
        return False
    return "int8" not in b.precisions or \
        b.precision_record("int8").get("weight_qmax", 127) == WEIGHT_QMAX


def default_int8_bundle() -> Path:
    import snrt
    from exporters.quantize import quantize_bundle
    from snrt.bundle import Bundle

    path = Path("build/default-int8.snrt")
    try:
        b = Bundle.open(path, verify="size")
        if "int8" in b.precisions and _current(b):
            return path
    except Exception:  # noqa: BLE001
        pass
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(snrt.default_bundle(), path)
    quantize_bundle(path, images="default", n_inputs=20)
    return path


def _session(model, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def _time(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
        f()
    wall = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            wall[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in wall.items()}


def _matmul_peak(rounds: int) -> dict:
    import onnx
    from onnx import TensorProto, helper

    m, k, n = 197, 384, 1536
    w = (np.random.default_rng(0).standard_normal((k, n)) * 0.02).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
                          [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = Path(tempfile.mkdtemp(prefix="snrt-mm-"))
    onnx.save(model, tmp / "mm.onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(tmp / "mm.onnx", tmp / "mm8.onnx", weight_type=QuantType.QInt8,
                     per_channel=True)
    s32, s8 = _session(tmp / "mm.onnx"), _session(tmp / "mm8.onnx")
    x = np.random.default_rng(1).standard_normal((1, m, k)).astype(np.float32)
    t = _time({"fp32": lambda: s32.run(None, {"x": x}), "int8": lambda: s8.run(None, {"x": x})},
              rounds * 5)
    shutil.rmtree(tmp, ignore_errors=True)
    return {p: 2 * m * k * n / (ms * 1e-3) / 1e9 for p, ms in t.items()}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                return " ".join(sorted(x for x in f if x.startswith(("avx", "amx"))
                                       or "vnni" in x)) or "no AVX"
    except OSError:
        pass
    return "unknown"


def _kernels(rounds: int) -> list[dict]:
    """DeiT-S's four MatMul shapes ([197, K] x [K, N]) alone: fp32 MatMul against the dynamic
    int8 pattern snrt writes (fused by onnxruntime into DynamicQuantizeMatMul) with weights in
    [-127, 127] and in [-63, 63]; CPU time per call (time.thread_time, robust to other load)
    and max |error| / max |y| against a float64 product, x ~ N(0, 1) with 4 outlier channels
    (x6) as real activations have."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporters.quantize import quantize_weight

    def model(nodes, inits, k):
        g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1, 197, k])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m.SerializeToString()

    def int8(w, qmax, k):
        q, sc = quantize_weight(w, qmax)
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["i"]),
                 helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["xs", "ws"], ["sc"]),
                 helper.make_node("Mul", ["f", "sc"], ["y"])]
        return model(nodes, [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(sc, "ws"),
                             numpy_helper.from_array(np.zeros(len(sc), np.int8), "wz")], k)

    rng = np.random.default_rng(0)
    rows = []
    for k, n in [(384, 1152), (384, 384), (384, 1536), (1536, 384)]:
        w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        x = rng.standard_normal((1, 197, k)).astype(np.float32)
        x[..., :4] *= 6
        ss = {"fp32": _session(model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                                     [onnx.numpy_helper.from_array(w, "w")], k)),
              "int8 [-127,127]": _session(int8(w, 127, k)),
              "int8 [-63,63]": _session(int8(w, 63, k))}
        ref = x[0].astype(np.float64) @ w
        cpu = {name: [] for name in ss}
        for s in ss.values():
            s.run(None, {"x": x})
        for _ in range(rounds * 3):
            for name, s in ss.items():
                t = time.thread_time()
                s.run(None, {"x": x})
                cpu[name].append(time.thread_time() - t)
        row = {"K x N": f"{k} x {n}", "fp32 ms": float(np.median(cpu["fp32"])) * 1e3}
        for name, s in ss.items():
            if name == "fp32":
                continue
            err = np.abs(s.run(None, {"x": x})[0][0] - ref).max() / np.abs(ref).max()
            row[f"{name} / fp32"] = float(np.median(cpu[name]) / np.median(cpu["fp32"]))
            row[f"{name} max err"] = float(err)
        rows.append(row)
    return rows


def _ort_quantized(graph: Path, tmp: Path, static: bool) -> Path:
    """onnxruntime's own quantize_dynamic / quantize_static (QDQ) of a standalone graph."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = tmp / "standalone.onnx"
    if not src.exists():
        onnx.save(onnx.load(str(graph)), src)  # weights inlined: a standalone graph
    out = tmp / ("static.onnx" if static else "dynamic.onnx")
    if not static:
        # MatMuls only: on the standard form quantize_dynamic would turn Attention-23 into a
        # QAttention that onnxruntime then refuses ("Unrecognized attribute: kv_num_heads")
        quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        return out

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(3)
            self.it = iter([{"image": rng.standard_normal((1, 3, 224, 224))
                             .astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul"],
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _paths(b, v, x, rt, tflite: bool, ort_own: bool, static: bool, tmp: Path) -> dict:
    """The callables timed for one variant, each bound to its own session/runtime."""
    from functools import partial

    bare = _session(b.graph_path(v))
    feed = {"image": x}
    fns = {"bare fp32": partial(bare.run, None, feed),
           "snrt fp32": partial(rt.infer, x, variant=v.id, precision="fp32"),
           "snrt int8": partial(rt.infer, x, variant=v.id, precision="int8")}
    if ort_own:
        fns["ort quantize_dynamic"] = partial(
            _session(_ort_quantized(b.graph_path(v), tmp, False)).run, None, feed)
        if static:
            fns["ort quantize_static QDQ"] = partial(
                _session(_ort_quantized(b.graph_path(v), tmp, True)).run, None, feed)
    if tflite:
        import snrt

        for p in ("fp32", "int8"):
            t_rt = snrt.Runtime(b, backend="tflite", precision=p, variants=[v.id])
            fns[f"TFLite {p}"] = partial(t_rt.infer, x)
    return fns


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-tflite", action="store_true")
    ap.add_argument("--no-latency", action="store_true",
                    help="only the weights' bytes and the memory (nothing timed)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-static", action="store_true")
    ap.add_argument("--default-variants", default="ti,ti>s@5:5,s,b")
    ap.add_argument("--deit-variants", default="ti,s")
    ap.add_argument("--kernels", action="store_true",
                    help="only the one-MatMul kernels of DeiT-S's shapes (fp32 vs int8 with "
                         "full and 7-bit weights: time and error)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import onnxruntime as ort

    import snrt
    from snrt.backends import available_backends

    if args.kernels:
        print(f"# onnxruntime {ort.__version__}, 1 thread, CPU flags: {_cpu_flags()}")
        print(table(_kernels(args.rounds)))
        return 0
    tflite = not args.no_tflite and available_backends().get("tflite", False)
    sets = [(default_int8_bundle(), args.default_variants.split(",")),
            (deit_int8_bundle(), args.deit_variants.split(","))]
    if not args.no_latency:
        _latency(args, sets, tflite, ort.__version__, snrt)
    _weights_and_memory(args, sets, snrt)
    return 0


def _latency(args, sets, tflite: bool, ort_version: str, snrt) -> None:
    print(f"# onnxruntime {ort_version}, 1 thread, batch 1, median of {args.rounds} "
          f"interleaved rounds; CPU flags: {_cpu_flags()}")
    peak = _matmul_peak(args.rounds)
    print(f"# one-MatMul peak [197,384]x[384,1536]: fp32 {peak['fp32']:.1f} GFLOP/s, int8 "
          f"(dynamic) {peak['int8']:.1f} GFLOP/s")
    rows = []
    for path, ids in sets:
        b = snrt.Bundle.open(path, verify="size")
        if tflite:
            from exporters.tflite_export import export_tflite

            todo = [i for i in ids if not {"fp32", "int8"} <= set(
                b.variant(i).exports.get("tflite", {}))]
            if todo:
                export_tflite(path, ["fp32", "int8"], variants=todo, progress=False)
                b = snrt.Bundle.open(path, verify="size")
        rt = snrt.Runtime(b, precisions=["fp32", "int8"], variants=ids, tasks=[])
        shape = [1, *b.manifest.input["shape"][1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for vid in ids:
            v = b.variant(vid)
            tmp = Path(tempfile.mkdtemp(prefix="snrt-q-"))
            own = b.name.startswith("deit") and vid == "s"
            fns = _paths(b, v, x, rt, tflite, own, not args.no_static, tmp)
            ms = _time(fns, args.rounds)
            row = {"family": b.name, "variant": vid, "MFLOPs": v.flops / 1e6,
                   "bare fp32 ms": ms["bare fp32"]}
            for k, t in ms.items():
                if k != "bare fp32":
                    row[k] = t / ms["bare fp32"]
            for k in ("bare fp32", "snrt fp32", "snrt int8"):
                row[f"GFLOP/s {k}"] = 2 * v.flops / (ms[k] * 1e-3) / 1e9
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
        rt.close()
    cols = ["family", "variant", "MFLOPs", "bare fp32 ms", "snrt fp32", "snrt int8",
            "ort quantize_dynamic", "ort quantize_static QDQ", "TFLite fp32", "TFLite int8",
            "GFLOP/s bare fp32", "GFLOP/s snrt fp32", "GFLOP/s snrt int8"]
    print("\n## latency / bare onnxruntime fp32 (own graph)")
    print(table(rows, [c for c in cols if any(c in r for r in rows)]))
    print(f"one-MatMul peak: fp32 {peak['fp32']:.1f}, int8 {peak['int8']:.1f} GFLOP/s")


def _weights_and_memory(args, sets, snrt) -> None:
    print("\n## weights")
    wrows = []
    for path, _ in sets:
        b = snrt.Bundle.open(path, verify="size")
        rec = b.precision_record("int8")
        f32 = b.weights_bytes()
        i8 = b.manifest.files[rec["weights"]]["bytes"]
        g8 = sum(b.manifest.files[r]["bytes"] for k in ("pieces", "variants")
                 for r in rec[k].values())
        g32 = sum(b.manifest.files[p.graph]["bytes"] for p in b.manifest.pieces) + \
            sum(b.manifest.files[v.graph]["bytes"] for v in b.variants if v.graph)
        wrows.append({"family": b.name, "variants": len(b.variants),
                      "weights.bin MB": f32 / 1e6, "weights_int8.bin MB": i8 / 1e6,
                      "int8 / fp32": i8 / f32,
                      "int8 / fp32 of the replaced weights": i8 / rec["fp32_bytes_replaced"],
                      "fp32 graphs MB": g32 / 1e6, "int8 graphs MB": g8 / 1e6})
    print(table(wrows))
    if args.no_memory:
        return
    path = sets[1][0]
    b = snrt.Bundle.open(path, verify="size")
    rec = b.precision_record("int8")
    both = b.weights_bytes() + b.manifest.files[rec["weights"]]["bytes"]
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(path)], capture_output=True,
                         text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n## memory: every {b.name} variant ready in fp32 and int8 (placement pieces, "
          "each run once in both)")
    print(table([{"variants": mem["variants"], "sessions": mem["sessions"],
                  "RSS growth MB": mem["rss"] / 1e6, "PSS growth MB": mem["pss"] / 1e6,
                  "fp32+int8 weights MB": both / 1e6, "RSS / weights": mem["rss"] / both,
                  "PSS / weights": mem["pss"] / both}]))


if __name__ == "__main__":
    sys.exit(main())
