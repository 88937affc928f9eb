"""Latency predictor benchmark (issue 6): from 20% of a bundle's variants profiled, how many of
the rest are predicted within ±5% of their measured p50?

    python -m benchmarks.latency_predict_bench --bundle B.snrt --table lookup_tables/DEV.json \\
        [--repeat-table OTHER.json] [--splits 20]

Needs a table where every variant was measured (snrt-profile without --sample). Rows:
snrt's own sample (anchors + variants spread over FLOPs, what `snrt-profile --sample 20%`
measures) and `--splits` random 20% samples that include the anchors. The optional second,
independent measurement of the same variants gives the noise floor: how often two
measurements of the same variant agree within ±5%, which bounds what any predictor can score.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from benchmarks.common import table as fmt_table


def evaluate(bundle, measured: dict[str, float], train_ids: list[str], **model) -> dict:
    from snrt.latency_model import fit_model, variant_features

    targets = [bundle.variant(v) for v in measured if v not in train_ids]
    gp = fit_model(bundle, {k: measured[k] for k in train_ids}, **model)
    Xt = variant_features(bundle, targets)
    mean, std = gp.predict(Xt)
    _, std_meas = gp.predict(Xt, include_noise=True)  # the same fit, a new measurement's sigma
    truth = np.array([measured[v.id] for v in targets])
    rel = np.abs(mean / truth - 1)
    z = np.abs(mean - truth) / np.maximum(std, 1e-12)
    z_meas = np.abs(mean - truth) / np.maximum(std_meas, 1e-12)
    return {"within5": float(np.mean(rel <= 0.05)), "within10": float(np.mean(rel <= 0.10)),
            "median": float(np.median(rel)), "max": float(rel.max()),
            "cover2s": float(np.mean(z <= 2)), "cover2s_meas": float(np.mean(z_meas <= 2))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--repeat-table", help="a second, independent profile of the same bundle")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--stat", default="p50_ms",
                    choices=["p50_ms", "quiet_ms", "min_ms", "mean_ms"],
                    help="which measured statistic is the truth (default p50_ms; quiet_ms: "
                         "the latency when the machine is quiet, see snrt.profile)")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--models", type=lambda x: x.split(","), default=["ms", "log"],
                    help="comma list of predictor fits to compare: ms (GP on latency in ms, "
                         "what snrt uses), log (GP on log latency)")
    args = ap.parse_args(argv)

    from snrt.bundle import Bundle
    from snrt.lookup_table import LookupTable, bundle_key
    from snrt.profile import resolve_bundle, sample_variants

    b = Bundle.open(resolve_bundle(args.bundle), verify="size")
    key = bundle_key(b)

    def measured_of(path):
        es = LookupTable.load(path).select(key, args.backend, args.precision, args.threads,
                                           measured_only=True)
        out = {e.variant: getattr(e, args.stat) for e in es}
        missing = [k for k, x in out.items() if x is None]
        if missing:
            raise SystemExit(f"{path}: {len(missing)} entries have no {args.stat} (e.g. "
                             f"{missing[0]}); profile again with this snrt")
        return out

    measured = measured_of(args.table)
    if len(measured) < len(b.variants):
        print(f"# warning: {len(measured)} of {len(b.variants)} variants measured")
    n_train = math.ceil(len(b.variants) * args.fraction)
    rows = []
    t0 = time.monotonic()
    ours = [v.id for v in sample_variants(b.variants, str(n_train)) if v.id in measured]
    anchors = [v.id for v in b.variants if v.is_anchor and v.id in measured]
    others = [v for v in measured if v not in anchors]
    splits = [anchors + list(np.random.default_rng(seed).choice(others, n_train - len(anchors),
                                                                 replace=False))
              for seed in range(args.splits)]
    for name in args.models:
        if name not in ("ms", "log"):
            raise SystemExit(f"--models {name!r}: give ms or log")
        model = {"log_target": name == "log"}
        r = evaluate(b, measured, ours, **model)
        rows.append({"sample": f"[{name}] snrt --sample ({len(ours)} variants)", **r})
        res = [evaluate(b, measured, ids, **model) for ids in splits]
        agg = {k: float(np.mean([x[k] for x in res])) for k in res[0]}
        rows.append({"sample": f"[{name}] random {n_train} incl. anchors, mean of "
                               f"{args.splits}", **agg})
        rows.append({"sample": "  (worst split)",
                     "within5": float(np.min([x["within5"] for x in res]))})
    if args.repeat_table:
        rep = measured_of(args.repeat_table)
        common = [k for k in measured if k in rep]
        ratio = np.array([rep[k] / measured[k] for k in common])
        for label, r in ((f"noise floor: 2nd measurement ({len(common)})", ratio),
                         (f"  same, common scale x{np.median(ratio):.3f} removed",
                          ratio / np.median(ratio))):
            rel = np.abs(r - 1)
            rows.append({"sample": label, "within5": float(np.mean(rel <= 0.05)),
                         "within10": float(np.mean(rel <= 0.10)),
                         "median": float(np.median(rel)), "max": float(rel.max())})
    print(f"# {b.name}: {len(measured)} measured variants, {args.backend}/{args.precision}/"
          f"{args.threads}t, {args.stat}, train {n_train} ({args.fraction:.0%}); "
          f"{time.monotonic() - t0:.1f}s")
    print(fmt_table(rows, ["sample", "within5", "within10", "median", "max", "cover2s",
                           "cover2s_meas"]))
    print(f"within5/within10: share of held-out variants within ±5%/±10% of measured "
          f"{args.stat}; "
          "median/max: relative error; cover2s: share inside the predicted ±2 sigma of the "
          "mean, cover2s_meas: of a new measurement (sigma includes the fitted noise). The "
          "common-scale row divides the 2nd profile by its median ratio to the 1st: what is "
          "left is the noise between variants, which is what a predictor trained on one "
          "profile meets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
