"""Subnet operator forms side by side: an elastic-subnet bundle regraphed into each form subnet
graphs take (exporters.subnet_graph.SUBNET_OPS: decomposed, standard), each subnet run through
snrt.Runtime (1 thread) in interleaved rounds together with the default family's stitches in the
shipped (standard) bundle for the Pareto comparison; node counts of each subnet's chain.

    flock /tmp/snrt-timing.lock python -m benchmarks.subnet_ops_bench \\
        [--bundle snrt/data/elastic.snrt] [--variants w48d6,w96d12] [--stitches ti,b]

The forms are rebuilt (snrt-export regraph, weights.bin byte-identical) into the benchmark
cache from whatever form the bundle holds; medians of --rounds rounds, ratio std/dec.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE, table
from benchmarks.ops_bench import _time

DIR = CACHE / "subnet-ops-bench"


def _nodes(path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _chain_nodes(bundle, vid: str) -> int:
    return sum(_nodes(bundle.piece_path(p)) for p in bundle.variant(vid).pieces)


def main(argv=None) -> int:
    import snrt
    from exporters.regraph import regraph_bundle
    from exporters.subnet_graph import SUBNET_OPS

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(Path(snrt.__file__).parent / "data" / "elastic.snrt"))
    ap.add_argument("--variants", default="w48d6,w64d8,w96d12")
    ap.add_argument("--stitches", default="ti,b", help="default-family variants beside them")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per variant")
    args = ap.parse_args(argv)
    DIR.mkdir(parents=True, exist_ok=True)
    forms = {}
    for ops in SUBNET_OPS:
        out = DIR / f"{ops}.snrt"
        regraph_bundle(args.bundle, out, ops=ops)
        forms[ops] = snrt.Bundle.open(out)
    vids = [v for v in args.variants.split(",") if v]
    rts = {ops: snrt.Runtime(b, variants=vids, threads=1) for ops, b in forms.items()}
    x = np.zeros([1, *forms["standard"].manifest.input["shape"][1:]], np.float32)
    fns = {(ops, vid): (lambda rt=rt, v=vid: rt.run(x, variant=v))
           for vid in vids for ops, rt in rts.items()}
    sts = [v for v in args.stitches.split(",") if v]
    if sts:
        d = snrt.Bundle.open(snrt.default_bundle(), verify=False)
        srt = snrt.Runtime(d, variants=sts, tasks=[], threads=1)
        form = (d.manifest.exports.get("onnx") or {}).get("ops", "decomposed")
        fns.update({("stitch", v): (lambda v=v: srt.run(x, variant=v)) for v in sts})
    ms = _time(fns, args.rounds, args.budget * (len(vids) + len(sts)))  # one interleaved run
    rows = []
    for vid in vids:
        b = forms["standard"]
        rows.append({"variant": f"subnet {vid}", "MFLOPs": b.variant(vid).flops / 1e6,
                     "pieces": len(b.variant(vid).pieces),
                     "nodes dec/std": "/".join(str(_chain_nodes(forms[o], vid))
                                               for o in ("decomposed", "standard")),
                     "decomposed ms": ms[("decomposed", vid)],
                     "standard ms": ms[("standard", vid)],
                     "std/dec": ms[("standard", vid)] / ms[("decomposed", vid)]})
    whole = sts and srt.stats()["backend"]["placement"] == "graphs"  # one session each
    for v in sts:
        nodes = _nodes(d.graph_path(v)) if whole else _chain_nodes(d, v)
        rows.append({"variant": f"stitch {v} ({form})", "MFLOPs": d.variant(v).flops / 1e6,
                     "pieces": 1 if whole else len(d.variant(v).pieces),
                     "nodes dec/std": str(nodes),
                     "decomposed ms": None, "standard ms": ms[("stitch", v)], "std/dec": None})
    print("\n## snrt.Runtime.run, 1 thread, median ms per call (interleaved rounds)")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
