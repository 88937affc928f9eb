"""backend="auto" vs one backend: the default family's front members side by side in one run.

    python -m benchmarks.auto_backend_bench --prepare     # TFLite files + accuracy (cached)
    flock /tmp/snrt-timing.lock python -m benchmarks.auto_backend_bench [--runs 200 --rounds 5]
    flock /tmp/snrt-timing.lock python -m benchmarks.auto_backend_bench --memory  # per entry

--prepare copies the shipped default bundle to $SNRT_BENCH_CACHE/auto-backend (default
~/.cache/snrt-bench), exports the variants on the shipped lookup table's fp32 fronts (TFLite and
onnxruntime) to TFLite fp32 and int8, verified, and records each file's top-1 on the 1,000 test
digits in its manifest record (tools/default_family_tflite.py: what auto ranks int8 by).

The timed run builds three Runtimes over that copy in one process: onnxruntime fp32, TFLite
fp32, and backend="auto" (the shipped lookup table's front: each member's fastest backend x
precision), all over the auto runtime's variants; then, in interleaved rounds, times `run()` of
every front member on each (median per round, median over rounds), 1 thread. RSS: each
Runtime is created in a fresh subprocess after its engines are imported and measured as the
growth of RSS. Switches: the auto runtime is switched round robin over its entries (crossing
backends) and the p50/p99 of `switch()` reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE

ROOT = Path(__file__).resolve().parent.parent
WORK = CACHE / "auto-backend"
BUNDLE = WORK / "default.snrt"
TABLE = ROOT / "lookup_tables" / "linux-x86_64-amd-epyc-2c-24g-1dfc39.json"


def front_variants() -> list[str]:
    from snrt.lookup_table import LookupTable, pareto_front

    t = LookupTable.load(TABLE)
    ids: dict[str, None] = {}
    for be in ("tflite", "onnxruntime"):
        for e in pareto_front(t.select(None, be, "fp32", 1)):
            ids[e.variant] = None
    return list(ids)


def prepare() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import snrt
    from exporters.tflite_export import export_tflite

    if not (BUNDLE / "manifest.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        shutil.copytree(snrt.default_bundle(), BUNDLE)
    if not (WORK / "samples").is_dir():  # snrt-run's labelled sample digits, beside it
        shutil.copytree(Path(snrt.default_bundle()).parent / "samples", WORK / "samples")
    ids = front_variants()
    rep = export_tflite(BUNDLE, ("fp32", "int8"), variants=ids, progress=True)
    if not rep.ok:
        raise SystemExit(rep.table())
    from default_family_tflite import measure, record_accuracy
    from PIL import Image
    from train_default_family import load_dataset

    from snrt.bundle import Bundle
    from snrt.preprocess import preprocess_image

    pre = Bundle.open(BUNDLE, verify="size").preprocess
    ims, labels = load_dataset().part("test")
    x = np.stack([preprocess_image(Image.fromarray(im, "L"), pre) for im in ims])
    rows = measure(BUNDLE, ids, x, labels, progress=True)
    print(f"recorded {record_accuracy(BUNDLE, rows, len(labels))} accuracies in {BUNDLE}")
    for r in rows:
        print(f"  {r['id']:10s} onnx {r['onnx']:.1f}  " + "  ".join(
            f"{p} {r[p]['top1']:.1f}" for p in ("fp32", "int8") if r.get(p)))


_MEM = r"""
import json, sys, psutil, numpy as np
import onnxruntime, ai_edge_litert.interpreter
import snrt
kind, arg = sys.argv[1], json.loads(sys.argv[2])
proc = psutil.Process()
if kind == "runtime":
    r0 = proc.memory_info().rss
    rt = snrt.Runtime(arg["bundle"], verify="size", tasks=[], **arg["kw"])
    r1 = proc.memory_info().rss
    print(json.dumps({"rss_mb": (r1 - r0) / 2**20,
                      "entries": sum(len(rt.entries(v.id)) for v in rt.variants)}))
else:  # one entry, after another entry of the same backend paid the engine's fixed cost
    from snrt.bundle import Bundle
    from snrt.backends import create_backend
    b = Bundle.open(arg["bundle"], verify="size")
    be = create_backend(arg["backend"], b, threads=1, precision=arg["precision"],
                        variants=[b.variant(arg["warm"]), b.variant(arg["variant"])],
                        **({"placement": "graphs"} if arg["backend"] == "onnxruntime" else {}))
    be.load(b.variant(arg["warm"]), arg["precision"])
    r0 = proc.memory_info().rss
    be.load(b.variant(arg["variant"]), arg["precision"])
    r1 = proc.memory_info().rss
    rec = b.variant(arg["variant"]).exports.get("tflite", {}).get(arg["precision"]) or {}
    print(json.dumps({"rss_mb": (r1 - r0) / 2**20, "file_mb": rec.get("bytes", 0) / 2**20,
                      "params": b.variant(arg["variant"]).params}))
"""


def _sub(kind: str, arg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEM, kind, json.dumps(arg)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory() -> None:
    from snrt.auto_backend import estimate_mb
    from snrt.bundle import Bundle

    b = Bundle.open(BUNDLE, verify="size")
    print(f"{'variant':10s} {'backend':12s} {'prec':5s} {'file MB':>8s} {'RSS MB':>7s} "
          f"{'est MB':>7s}")
    for be, prec in (("tflite", "fp32"), ("tflite", "int8"), ("onnxruntime", "fp32")):
        for vid in ("ti", "s", "s>b@1:1", "b"):
            warm = "ti>s@8:8"
            r = _sub("entry", {"bundle": str(BUNDLE), "backend": be, "precision": prec,
                               "variant": vid, "warm": warm})
            print(f"{vid:10s} {be:12s} {prec:5s} {r['file_mb']:8.2f} {r['rss_mb']:7.2f} "
                  f"{estimate_mb(b, vid, be, prec):7.2f}")


def timed(runs: int, rounds: int, budget_mb: float) -> None:
    import snrt
    from snrt.lookup_table import LookupTable

    table = LookupTable.load(TABLE)
    auto = snrt.Runtime(BUNDLE, backend="auto", table=table, verify="size")
    tight = snrt.Runtime(BUNDLE, backend="auto", table=table, verify="size",
                         memory_budget_mb=budget_mb)
    ids = [v.id for v in auto.variants]
    kws = {"onnxruntime": {"backend": "onnxruntime", "variants": ids},
           "tflite": {"backend": "tflite", "variants": ids},
           "auto": {"backend": "auto", "table": str(TABLE)},
           "budget": {"backend": "auto", "table": str(TABLE), "memory_budget_mb": budget_mb}}
    rss = {k: _sub("runtime", {"bundle": str(BUNDLE), "kw": kw})["rss_mb"]
           for k, kw in kws.items()}
    rts = {"onnxruntime": snrt.Runtime(BUNDLE, verify="size", tasks=[], variants=ids),
           "tflite": snrt.Runtime(BUNDLE, backend="tflite", verify="size", variants=ids),
           "auto": auto, "budget": tight}
    x = np.random.default_rng(0).standard_normal(
        tuple(auto.bundle.manifest.input["shape"][1:])).astype(np.float32)
    per: dict[tuple[str, str], list[float]] = {}
    names = list(rts)
    for r in range(rounds):
        for vid in ids:
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
                rt = rts[name]
                if name in ("auto", "budget") and not rt.entries(vid):
                    continue
                for _ in range(10):
                    rt.run(x, variant=vid)
                ts = [rt.run(x, variant=vid).latency_ms for _ in range(runs)]
                per.setdefault((vid, name), []).append(float(np.median(ts)))
    # switches round robin over the entries of an auto runtime that mixes backends: on this
    # machine's table TFLite wins every variant, so this one plans from a copy of the table
    # with the S->B stitches' and b's onnxruntime p50 divided by 4 (hand-set, only to put
    # them on onnxruntime; the switch path does not depend on the figures)
    import copy

    mixed_t = copy.deepcopy(table)
    for e in mixed_t.entries:
        if e.backend == "onnxruntime" and (e.variant.startswith("s>b") or e.variant == "b"):
            e.p50_ms /= 4
    mixed = snrt.Runtime(BUNDLE, backend="auto", table=mixed_t, verify="size")
    entries = [(v.id, b, p) for v in mixed.variants for b, p in mixed.entries(v.id)]
    n0 = len(mixed.switches())
    for i in range(2000):
        v, b, p = entries[i % len(entries)]
        mixed.switch(v, backend=b, precision=p)
        mixed.run(x)
    evs = mixed.switches()[n0:]
    sw = [e.switch_ms for e in evs]
    cross = [e.switch_ms for e in evs if e.from_backend != e.to_backend]
    print("backend='auto' plan (shipped lookup table):")
    print(auto.plan.table())
    print(f"\nwith memory_budget_mb={budget_mb:g}:")
    print(tight.plan.table())
    print()
    med = {k: float(np.median(v)) for k, v in per.items()}
    print(f"{'variant':10s} {'top-1':>6s} {'onnxruntime':>11s} {'tflite':>7s} {'auto':>7s} "
          f"{'auto entry':12s} {'auto/ort':>8s} {'auto/tfl':>8s} {f'{budget_mb:g} MB':>7s} "
          f"{'its entry':12s}   (ms, median of round medians)")
    for vid in ids:
        e = auto.plan.of(vid)[0]
        o, t, a = med[(vid, "onnxruntime")], med[(vid, "tflite")], med[(vid, "auto")]
        te = tight.plan.of(vid)
        bud = f"{med[(vid, 'budget')]:7.3f} {te[0].backend + '/' + te[0].precision:12s}" \
            if te else f"{'-':>7s} {'(left out)':12s}"
        print(f"{vid:10s} {e.accuracy:6.2f} {o:11.3f} {t:7.3f} {a:7.3f} "
              f"{e.backend + '/' + e.precision:12s} {a / o:8.2f} {a / t:8.2f} {bud}")
    ratios = [med[(v, "auto")] / med[(v, "onnxruntime")] for v in ids]
    same = [med[(v, "auto")] / med[(v, "tflite")] for v in ids]
    print(f"auto/onnxruntime: median {np.median(ratios):.2f} (range {min(ratios):.2f}-"
          f"{max(ratios):.2f}); auto/tflite {np.median(same):.2f} ({min(same):.2f}-"
          f"{max(same):.2f}); {len(ids)} front members, 1 thread, {rounds} rounds x {runs} "
          "runs, interleaved")
    print("RSS growth creating the Runtime: " + ", ".join(
        f"{k} {v:.1f} MB" for k, v in rss.items()) + f" (plan estimates: auto "
        f"{auto.plan.est_mb:.1f} MB, {budget_mb:g} MB budget {tight.plan.est_mb:.1f} MB)")
    print(f"switch() round robin over the {len(entries)} entries of an auto runtime on "
          f"{sorted({b for _, b, _ in entries})} (table with onnxruntime made faster for S->B, "
          f"hand-set): {len(sw)} switches, p50 {np.percentile(sw, 50) * 1e3:.1f} us, p99 "
          f"{np.percentile(sw, 99) * 1e3:.1f} us; {len(cross)} across backends: p99 "
          f"{np.percentile(cross, 99) * 1e3 if cross else float('nan'):.1f} us")
    for rt in [*rts.values(), mixed]:
        rt.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="export and record (cached)")
    ap.add_argument("--memory", action="store_true", help="RSS of one entry per backend")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget-mb", type=float, default=20.0,
                    help="memory_budget_mb of the second auto runtime (default 20)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.prepare:
        prepare()
    elif args.memory:
        memory()
    else:
        if not (BUNDLE / "manifest.json").is_file():
            raise SystemExit(f"{BUNDLE} missing: run with --prepare first")
        timed(args.runs, args.rounds, args.budget_mb)
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
