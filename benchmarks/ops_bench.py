"""Operator-form benchmark (issue 18 item 4): the same variant's graph in each `--ops` form
(decomposed, standard, contrib) on onnxruntime, beside TFLite fp32, with node counts and
GFLOP/s against a one-MatMul peak measured in the same run.

    python -m benchmarks.ops_bench --prepare          # build graphs + TFLite files (cached)
    flock /tmp/snrt-timing.lock python -m benchmarks.ops_bench [--rounds 25]
    flock /tmp/snrt-timing.lock python -m benchmarks.ops_bench --profile ti,b  # per op type

Variants: the shipped default family's ti, s, b and two stitches (graphs rebuilt from the
bundle's weights in every form, one weights.bin) and DeiT-Ti / DeiT-S with random weights
(224 px, timm shapes). onnxruntime sessions use snrt's session options (1 thread, no spinning,
the default ORT_ENABLE_ALL optimization level; `--levels` adds the standard form at
ORT_ENABLE_BASIC to show what onnxruntime's own fusions add). Rounds interleave every form of a
variant, so load from other processes hits them alike; medians, ratios to TFLite fp32.
GFLOP/s counts 2 FLOPs per multiply-add (the FLOPs column is fvcore's multiply-adds); the peak
is one onnxruntime MatMul of DeiT-S's fc1 shape ([197, 384] x [384, 1536]).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE, random_vit_state_dict, table

FORMS = ("decomposed", "standard", "contrib")
DEFAULT_VARIANTS = ("ti", "s", "b", "ti>s@4:5", "s>b@6:6")
DIR = CACHE / "ops-bench"


def _families():
    """(tag, family, [(variant id, pieces, flops)]) for the default family and DeiT-Ti/S."""
    import snrt
    from snrt.family import Anchor, Family, config_from_state_dict
    from snrt.variants import VariantSpace

    b = snrt.Bundle.open(snrt.default_bundle(), verify=False)
    fam = b.load_family()
    space = b.variant_space()
    out = [("default", fam, [(v.id, v.route.pieces(fam.depth), v.flops)
                             for v in space if v.id in DEFAULT_VARIANTS])]
    for name, dim in (("deit-ti", 192), ("deit-s", 384)):
        sd = random_vit_state_dict(dim, seed=1)
        cfg = config_from_state_dict(sd, num_heads=dim // 64, global_pool="token", where=name)
        f = Family(name, [Anchor(name, cfg, sd)], {})
        sp = VariantSpace([name], [cfg])
        v = next(iter(sp))
        out.append((name, f, [(name, v.route.pieces(f.depth), v.flops)]))
    return out


def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def prepare() -> list[dict]:
    """Write every graph (per form) and TFLite fp32 file; return one record per variant."""
    from exporters.onnx_graph import WEIGHTS_FILE, GraphBuilder, WeightStore

    recs = []
    for tag, fam, variants in _families():
        d = DIR / tag
        d.mkdir(parents=True, exist_ok=True)
        store = WeightStore()
        for vid, pieces, flops in variants:
            rec = {"family": tag, "variant": vid, "flops": flops, "graphs": {},
                   "tflite": d / f"{_safe(vid)}.fp32.tflite"}
            for ops in FORMS:
                p = d / f"{_safe(vid)}.{ops}.onnx"
                model = GraphBuilder(fam, store, ops=ops).graph(pieces, vid)
                p.write_bytes(model.SerializeToString())
                rec["graphs"][ops] = p
            if not rec["tflite"].exists():
                _tflite(fam, pieces, rec["tflite"])
            recs.append(rec)
        with open(d / WEIGHTS_FILE, "wb") as f:  # one layout for every form
            store.write(f)
    return recs


def _tflite(fam, pieces, out: Path) -> None:
    import tempfile

    import tensorflow as tf

    from exporters.tflite_graph import _convert, _TFRouteBuilder

    with tempfile.TemporaryDirectory() as t:
        _TFRouteBuilder(fam, tf).save(pieces, Path(t) / "sm")
        out.write_bytes(_convert(tf, Path(t) / "sm", "fp32"))


def _nodes(path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _session(path, level=None):
    import onnxruntime as ort

    from snrt.backends.ort import session_options

    so = session_options(1)
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _time(fns: dict, rounds: int, budget_s: float) -> dict:
    """Median ms per call of each fn, interleaved; each round calls each fn `reps` times."""
    for f in fns.values():
        for _ in range(3):
            f()
    t0 = time.perf_counter()
    next(iter(fns.values()))()
    one = time.perf_counter() - t0
    reps = max(1, int(budget_s / rounds / len(fns) / max(one, 1e-6)))
    reps = min(reps, 200)
    ms = collections.defaultdict(list)
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                f()
            ms[k].append((time.perf_counter() - t) / reps * 1e3)
    return {k: float(np.median(v)) for k, v in ms.items()}


def matmul_peak_gflops(rounds: int) -> float:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    M, K, N = 197, 384, 1536
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((K, N)).astype(
        np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = DIR / "matmul.onnx"
    onnx.save(m, str(p))
    s = _session(p)
    x = np.random.default_rng(1).standard_normal((1, M, K)).astype(np.float32)
    ms = _time({"mm": lambda: s.run(None, {"x": x})}, rounds, 2.0)["mm"]
    return 2 * M * K * N / (ms * 1e-3) / 1e9


def profile(vid: str, runs: int) -> None:
    """onnxruntime's profiler on the shipped bundle's graph of `vid` (snrt's session options):
    the nodes after onnxruntime's own fusions, kernel time per op type, and how much of a run
    is outside the kernels (per-node dispatch, the executor, the Python call)."""
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    import snrt
    from snrt.backends.ort import session_options

    b = snrt.Bundle.open(snrt.default_bundle(), verify=False)
    path = b.graph_path(vid)
    x = np.zeros([1, *b.manifest.input["shape"][1:]], np.float32)
    with tempfile.TemporaryDirectory() as t:
        so = session_options(1)
        so.optimized_model_filepath = str(Path(t) / "opt.onnx")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = collections.Counter(n.op_type for n in onnx.load(
            so.optimized_model_filepath, load_external_data=False).graph.node)
        plain = _time({"run": lambda: s.run(None, {"image": x})}, 5, 1.0)["run"] * 1e3
        so = session_options(1)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(t) / "p")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            s.run(None, {"image": x})
        for _ in range(runs):
            s.run(None, {"image": x})
        ev = json.load(open(s.end_profiling()))
    n = runs + 20
    model = [e["dur"] for e in ev if e.get("cat") == "Session" and e["name"] == "model_run"]
    kern = [e for e in ev if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by = collections.defaultdict(lambda: [0.0, 0])
    for e in kern:
        by[e["args"]["op_name"]][0] += e["dur"] / n
        by[e["args"]["op_name"]][1] += 1
    k_us = sum(v[0] for v in by.values())
    print(f"\n## {vid}: {_nodes(path)} nodes in the graph, {sum(opt.values())} after "
          f"onnxruntime's fusions ({', '.join(f'{k} {c}' for k, c in opt.most_common())})")
    print(f"# unprofiled run {plain:.1f} us; profiled: model_run {np.median(model):.1f} us, "
          f"kernels {k_us:.1f} us ({len(kern) / n:.0f} per run)")
    rows = [{"op": op, "nodes": c // n, "us/run": us, "share": us / k_us}
            for op, (us, c) in sorted(by.items(), key=lambda kv: -kv[1][0])]
    print(table(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="only build the graphs and files")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--levels", action="store_true",
                    help="also time the standard form at ORT_ENABLE_BASIC")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per variant (default 6)")
    ap.add_argument("--profile", metavar="IDS",
                    help="instead: onnxruntime's profiler on these variants of the shipped "
                         "bundle (e.g. b,ti): kernel time per op type vs the whole run")
    ap.add_argument("--profile-runs", type=int, default=300)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    recs = prepare()
    if args.prepare:
        print(f"# prepared {len(recs)} variants in {DIR}")
        return 0
    import snrt
    from snrt.backends.tflite import TFLiteRunner

    if args.profile:
        for vid in args.profile.split(","):
            profile(vid, args.profile_runs)
        return 0
    peak = matmul_peak_gflops(args.rounds)
    # the runtime on the shipped bundle (its graphs are the standard form: snrt-export regraph)
    bundle = snrt.Bundle.open(snrt.default_bundle(), verify=False)
    rt = snrt.Runtime(bundle, variants=list(DEFAULT_VARIANTS), tasks=[], verify=False)
    print(f"# shipped bundle: {bundle.manifest.exports.get('onnx', {}).get('ops', 'decomposed')}"
          " ops; snrt = Runtime.run(x, variant=...) on it, bare = InferenceSession with "
          "default options (1 thread) on the same graph")
    print(f"# onnxruntime {ort.__version__}, 1 thread; one-MatMul peak {peak:.1f} GFLOP/s "
          "([197,384]x[384,1536])")
    rows = []
    for r in recs:
        x = np.zeros((1, 1, 28, 28) if r["family"] == "default" else (1, 3, 224, 224),
                     np.float32)
        fns = {}
        for ops in FORMS:
            s = _session(r["graphs"][ops])
            fns[ops] = (lambda s=s, x=x: s.run(None, {"image": x}))
        if args.levels:
            s = _session(r["graphs"]["standard"], ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
            fns["standard@basic"] = (lambda s=s, x=x: s.run(None, {"image": x}))
        if r["family"] == "default":
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            s = ort.InferenceSession(str(bundle.graph_path(r["variant"])), so,
                                     providers=["CPUExecutionProvider"])
            fns["bare"] = (lambda s=s, x=x: s.run(None, {"image": x}))
            fns["snrt"] = (lambda v=r["variant"], x=x: rt.run(x, variant=v))
        tfl = TFLiteRunner(r["tflite"], threads=1, layout="NCHW")
        fns["tflite"] = lambda t=tfl, x=x: t.run(x)
        ms = _time(fns, args.rounds, args.budget)
        tf_ms = ms["tflite"]
        best = min(FORMS[1:], key=lambda k: ms[k])
        row = {"variant": f"{r['family']}:{r['variant']}", "MFLOPs": r["flops"] / 1e6,
               "nodes dec/std/ms": "/".join(str(_nodes(r["graphs"][k])) for k in FORMS),
               "tflite ms": tf_ms}
        for ops in FORMS:
            row[f"{ops[:3]}/tfl"] = ms[ops] / tf_ms
        row["bare/tfl"] = ms["bare"] / tf_ms if "bare" in ms else None
        row["snrt/tfl"] = ms["snrt"] / tf_ms if "snrt" in ms else None
        if args.levels:
            row["std@basic/tfl"] = ms["standard@basic"] / tf_ms
        row["std/dec"] = ms["standard"] / ms["decomposed"]
        row["std GFLOP/s"] = 2 * r["flops"] / (ms["standard"] * 1e-3) / 1e9
        row["std/peak"] = row["std GFLOP/s"] / peak
        row["fastest"] = best
        rows.append(row)
        print(f"# {row['variant']}: std/tfl {row['sta/tfl']:.2f}", flush=True)
    print("\n## median ms per call, ratios to TFLite fp32 (interleaved rounds)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
