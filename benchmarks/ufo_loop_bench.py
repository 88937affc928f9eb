"""The UFO loop, benchmarked honestly (issue 16 item 4) on any subnets bundle + labelled data.

    flock /tmp/snrt-timing.lock python -m benchmarks.ufo_loop_bench --bundle B.snrt \\
        --data default|DIR [--pool 120] [--splits 10] [--rounds 40] [--stat median_p10]

1. A pool of subnets (the whole grid for POA, `--pool` seeded random members for UFO) is
   measured: top-1 on all the images (and on two disjoint halves: the noise floor); latency of
   every piece and of every pool subnet whole, TWICE (two copies of each subnet as separate
   items), all in the same shuffled round-robin rounds (snrt.chain_latency.measure_together),
   so pieces and whole chains see the same load. Copy A is the measurement, copy B the same
   subnet timed again in the same run: the share of |A/B - 1| <= 5% is the measurement's own
   repeatability, the floor any predictor meets. Each latency is a statistic over the rounds'
   bursts (`--stat`, snrt.chain_latency.STATS; the table shows every one).
2. Per split (seed): half the pool is held out (never used to fit or choose anything); from the
   other half 10%, 20%, 40% of the pool are "measured" (the product's space-filling choice,
   snrt.accuracy_model.farthest_point, on a seeded shuffle); the predictors are fitted on them and
   scored on the held-out half: Kendall tau of predicted vs measured top-1 (snrt's
   AccuracyModel and GPNASBaseline on the same encoding and splits), and the share of held-out
   latencies within ±5% of copy A (sum of pieces + correction fitted on copy A of the measured).
3. Noise floor: tau between top-1s measured on the even and the odd images, held-out members.
4. Regret (20% measured, `--regret-splits` splits): at latency budgets (10/25/50/75/90%
   quantiles of the pool's measured latency), the controller's pick (the best front member by
   its table top-1 among those whose table latency fits: measured latency for the subnets timed
   whole, predicted for the rest) against the best measured pool member within the same budget.
   Two fronts: one search whose members are then measured (`--verify-front` before), and
   snrt.front_search.refine_front (measure, refit, search again until the front is all
   measured; `--verify-front` now). "over" counts picks whose measured latency exceeds the
   budget.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import time

import numpy as np

from benchmarks.common import table as fmt_table


def correctness(rt, vid, data) -> np.ndarray:
    from snrt.accuracy import logits_of

    return logits_of(rt, vid, data.x).argmax(1) == data.y


QUANTILES = (10, 25, 50, 75, 90)


def regret(args, b, space, pool, top1, lat, piece_ms, rt, data, runs) -> None:
    """Item 4 of the module docstring: the regret of the front at latency budgets, per split,
    for one search + verification and for refine_front."""
    from snrt.accuracy_model import AccuracyModel
    from snrt.chain_latency import ChainLatencyModel
    from snrt.front_search import SearchSettings, refine_front, search_front

    settings = SearchSettings(generations=args.generations)
    acc_cache = dict(top1)

    def measure(v):  # as the pool measured it (else measured now)
        if v not in acc_cache:
            acc_cache[v] = 100 * float(correctness(rt, v, data).mean())
        return acc_cache[v]

    budgets = [float(np.percentile(list(lat.values()), q)) for q in QUANTILES]
    best = [max(top1[v] for v in pool if lat[v] <= B) for B in budgets]
    methods = {"once": "one search + verify", "refined": "refine_front",
               "profiled": "refine_front + front profiled"}
    res = {k: [[] for _ in budgets] for k in methods}
    over = {k: [0] * len(budgets) for k in res}
    extra, searches, complete, timed_n = [], [], 0, []
    for _seed, train in runs:
        lm = ChainLatencyModel(piece_ms, lambda v: b.variant(v).pieces)
        lm.fit({v: lat[v] for v in train})
        measured = {v: top1[v] for v in train}

        def fit(meas, lm=lm):
            m = AccuracyModel(space).fit(meas)

            def predict(ids):
                acc, sd = m.predict(ids)
                return acc, lm.latency(ids), sd
            return predict

        first = fit(measured)
        once, _ = search_front(space, lambda ids, first=first: first(ids)[:2], settings)
        ref = refine_front(space, fit, measure, measured, settings, optimism=args.optimism)
        extra.append(len(ref.measured) - len(measured))
        searches.append(ref.rounds)
        complete += ref.complete
        # then the front members timed whole (snrt-profile --front), the latency correction
        # refitted on them and the loop run again, until the front is all timed (<= 3 times)
        timed = {v: lat[v] for v in train}
        lm2 = ChainLatencyModel(piece_ms, lambda v: b.variant(v).pieces).fit(timed)
        ref2 = ref
        for _ in range(3):
            new = [v for v in ref2.front if v not in timed and v in lat]
            if not new:
                break
            timed.update({v: lat[v] for v in new})
            lm2.fit(timed)
            ref2 = refine_front(space, lambda meas, lm2=lm2: fit(meas, lm2), measure,
                                ref2.measured, settings, optimism=args.optimism)
        timed_n.append(len(timed) - len(train))
        for k, front, lmk in (("once", once, lm), ("refined", ref.front, lm),
                              ("profiled", ref2.front, lm2)):
            table_lat = dict(zip(front, lmk.latency(front)))
            for j, B in enumerate(budgets):
                fits = [v for v in front if table_lat[v] <= B]
                if not fits:
                    res[k][j].append(np.nan)
                    continue
                pick = max(fits, key=measure)  # every front member measured (verified)
                res[k][j].append(best[j] - measure(pick))
                if args.verbose and res[k][j][-1] > 0.5:
                    top = max((v for v in pool if lat[v] <= B), key=lambda v: top1[v])
                    p_acc = first([top])[0][0]
                    print(f"  miss {k} p{QUANTILES[j]} {B:.3f}: pick {pick} {measure(pick):.1f} "
                          f"({table_lat[pick]:.3f}/{lat[pick]:.3f}); best {top} {top1[top]:.1f}"
                          f" (lat pred {lmk.latency([top])[0]:.3f}, measured {lat[top]:.3f}; "
                          f"top-1 predicted {p_acc:.1f}, in front {top in front}); "
                          f"front {front}")
                over[k][j] += pick in lat and lat[pick] > B
    n = len(runs)
    print(f"\nregret of the front (top-1 points: best measured pool member under the budget - "
          f"the controller's pick), 20% measured ({len(runs[0][1])}), {n} splits, optimism "
          f"{args.optimism:g} sigma; refine_front measured {np.mean(extra):.1f} more subnets "
          f"(range {min(extra)}-{max(extra)}) in {np.mean(searches):.1f} searches, complete in "
          f"{complete}/{n}; front profiled: {np.mean(timed_n):.1f} more subnets timed whole. "
          f"Cells: splits with regret <= 0.5 / mean (worst) / picks over budget:")
    rows = []
    for j, (q, B) in enumerate(zip(QUANTILES, budgets)):
        row = {"budget": f"p{q} {B:.3f} ms", "best in pool": f"{best[j]:.1f}"}
        for k, name in methods.items():
            r = np.array(res[k][j], dtype=float)
            ok = r[np.isfinite(r)]
            row[name] = (f"{int((ok <= 0.5).sum())}/{n} / "
                         + (f"{ok.mean():.2f} ({ok.max():.1f})" if len(ok) else "-")
                         + f" / {over[k][j]}" + (f" ({int((~np.isfinite(r)).sum())} none fit)"
                                                 if (~np.isfinite(r)).any() else ""))
        rows.append(row)
    print(fmt_table(rows))


def widen_depths(b, spec: str) -> None:
    """List every depth A..B of a POA bundle's space, in memory (nothing is written). A depth-d
    member runs the supernet blocks linspace(0, L-1, d) through the same per-width block pieces
    every depth shares, so this is the bundle `snrt-export subnets --depths A-B` writes from the
    same supernet weights (identical pieces, graphs and weights; only the listed table grows).
    Refuses when a member of the wider grid would need a piece the bundle does not ship."""
    space = b.manifest.family["space"]
    if space.get("kind") != "poa":
        raise SystemExit("--depths: only for POA spaces")
    lo, hi = (int(x) for x in spec.split("-"))
    space["depths"] = list(range(lo, hi + 1))
    have = {p.id for p in b.manifest.pieces}
    for vid in b.variant_space().grid():
        missing = set(b.variant(vid).pieces) - have
        if missing:
            raise SystemExit(f"--depths {spec}: {vid} needs pieces {sorted(missing)[:3]} the "
                             "bundle does not ship; re-export with snrt-export subnets")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default="default")
    ap.add_argument("--pool", type=int, default=120, help="UFO: random members measured")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=40, help="latency rounds (pieces and subnets "
                    "together)")
    ap.add_argument("--stat", default="quiet", help="the latency statistic over rounds "
                    "(snrt.chain_latency.STATS) the predictor and the regret use")
    ap.add_argument("--regret-splits", type=int, default=10)
    ap.add_argument("--optimism", type=float, default=1.0,
                    help="refine_front's upper confidence bound, in sigmas of the top-1")
    ap.add_argument("--verbose", action="store_true", help="print every regret miss")
    ap.add_argument("--fractions", default="0.1,0.2,0.4")
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--depths", help="POA: list every depth in A-B (e.g. 6-12) instead of the "
                    "bundle's table, from the same shipped pieces (see widen_depths)")
    args = ap.parse_args(argv)

    from snrt.accuracy import load_data
    from snrt.accuracy_model import AccuracyModel, candidate_pool, encode, farthest_point
    from snrt.bundle import Bundle
    from snrt.chain_latency import STATS, ChainLatencyModel, measure_together, round_stat
    from snrt.predict import GPNASBaseline, kendall_tau
    from snrt.runtime import Runtime

    t0 = time.monotonic()
    b = Bundle.open(args.bundle)
    if args.depths:
        widen_depths(b, args.depths)
    space = b.variant_space()
    data = load_data(args.data, b)
    pool = candidate_pool(space, args.pool, seed=7)
    print(f"# {b.name}: space of {space.size():.3g} members, pool {len(pool)}, "
          f"{len(data)} images")
    rt = Runtime(b, variants=list(dict.fromkeys(pool + [v.id for v in b.variants])), lazy=True)
    ok = {v: correctness(rt, v, data) for v in pool}
    top1 = {v: 100 * float(c.mean()) for v, c in ok.items()}
    half_a = {v: 100 * float(c[0::2].mean()) for v, c in ok.items()}
    half_b = {v: 100 * float(c[1::2].mean()) for v, c in ok.items()}
    t_acc = time.monotonic() - t0
    pieces_r, whole_r = measure_together(b, pool, copies=2, rounds=args.rounds,
                                         progress=False)
    piece_by = {st: {p: round_stat(r, st) for p, r in pieces_r.items()} for st in STATS}
    lat_a = {st: {v: round_stat(r[0], st) for v, r in whole_r.items()} for st in STATS}
    lat_b = {st: {v: round_stat(r[1], st) for v, r in whole_r.items()} for st in STATS}
    floor5 = {st: float(np.mean([abs(lat_a[st][v] / lat_b[st][v] - 1) <= 0.05 for v in pool]))
              for st in STATS}
    piece_ms, lat = piece_by[args.stat], lat_a[args.stat]
    # the chain's overhead over its pieces (descriptive, whole pool): measured - sum of pieces
    # = a + c * number of pieces, least squares
    n_p = np.array([len(b.variant(v).pieces) for v in pool], dtype=float)
    sums = np.array([sum(piece_ms[p] for p in b.variant(v).pieces) for v in pool])
    meas = np.array([lat[v] for v in pool])
    (over_a, over_c), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(n_p), n_p]),
                                           meas - sums, rcond=None)
    t_lat = time.monotonic() - t0 - t_acc
    print(f"# measured top-1 of {len(pool)} subnets in {t_acc:.0f}s (range "
          f"{min(top1.values()):.2f}-{max(top1.values()):.2f}%), latency of {len(pieces_r)} "
          f"pieces and {len(pool)} subnets x 2 in {args.rounds} rounds in {t_lat:.0f}s "
          f"({min(lat.values()):.3f}-{max(lat.values()):.3f} ms)")

    fracs = [float(f) for f in args.fractions.split(",")]
    rows = []
    floors = []
    regret_runs = []
    for seed in range(args.splits):
        perm = list(np.random.default_rng(seed).permutation(len(pool)))
        held = [pool[i] for i in perm[:len(pool) // 2]]
        rest = [pool[i] for i in perm[len(pool) // 2:]]
        floors.append(kendall_tau([half_a[v] for v in held], [half_b[v] for v in held]))
        for f in fracs:
            n = max(3, round(f * len(pool)))
            if n > len(rest):
                continue
            train = farthest_point(space, rest, n)
            truth = [top1[v] for v in held]
            m = AccuracyModel(space).fit({v: top1[v] for v in train})
            tau = kendall_tau(m.predict(held)[0], truth)
            g = GPNASBaseline().fit(encode(space, train), [top1[v] for v in train]) \
                if n >= 4 else None
            tau_g = kendall_tau(g.predict(encode(space, held)), truth) if g else float("nan")
            within = {}
            for st in STATS:
                lm = ChainLatencyModel(piece_by[st], lambda v: b.variant(v).pieces)
                lm.fit({v: lat_a[st][v] for v in train})
                pred = lm.predict(held)[0]
                within[st] = float(np.mean(np.abs(pred / np.array([lat_a[st][v] for v in held])
                                                  - 1) <= 0.05))
            rows.append({"frac": f, "seed": seed, "n": n, "tau": tau, "tau_g": tau_g,
                         "lat5": within[args.stat], "lat5_by": within})
            if abs(f - 0.2) < 1e-9 and seed < args.regret_splits:
                regret_runs.append((seed, train))
    out = []
    for f in fracs:
        rs = [r for r in rows if r["frac"] == f]
        if not rs:
            continue
        out.append({"measured": f"{f:.0%} ({rs[0]['n']})",
                    "snrt tau (mean, worst)": f"{np.nanmean([r['tau'] for r in rs]):.3f} "
                                              f"({np.nanmin([r['tau'] for r in rs]):.3f})",
                    "GP-NAS tau": f"{np.nanmean([r['tau_g'] for r in rs]):.3f}",
                    "latency ±5% (mean, worst)": f"{np.mean([r['lat5'] for r in rs]):.1%} "
                                                 f"({np.min([r['lat5'] for r in rs]):.1%})"})
    print(f"\nheld out: {len(pool) // 2} of the pool per split, {args.splits} splits; noise "
          f"floor tau (even vs odd images, held-out members): {np.nanmean(floors):.3f} "
          f"(worst {np.nanmin(floors):.3f})\n")
    print(f"chain overhead over the sum of pieces (whole pool, {args.stat}): measured / sum "
          f"{(meas / sums).min():.3f}-{(meas / sums).max():.3f}; measured - sum = "
          f"{over_a * 1e3:.0f} us + {over_c * 1e3:.1f} us per piece\n")
    print(fmt_table(out))
    lrows = []
    for st in STATS:
        r20 = [r["lat5_by"][st] for r in rows if abs(r["frac"] - 0.2) < 1e-9]
        r40 = [r["lat5_by"][st] for r in rows if abs(r["frac"] - 0.4) < 1e-9]
        ab = np.array([lat_a[st][v] / lat_b[st][v] for v in pool])
        lrows.append({"statistic": st + (" (--stat)" if st == args.stat else ""),
                      "floor: same subnet twice ±5%": f"{floor5[st]:.1%}",
                      "A/B ratio range": f"{ab.min():.3f}-{ab.max():.3f}",
                      "predictor ±5%, 20% (mean, worst)":
                          f"{np.mean(r20):.1%} ({np.min(r20):.1%})" if r20 else "-",
                      "predictor ±5%, 40%":
                          f"{np.mean(r40):.1%} ({np.min(r40):.1%})" if r40 else "-"})
    print("\nheld-out latency within ±5% of the measurement (copy A), beside the measurement's "
          "own floor (copy A vs copy B of every pool subnet, the same run):")
    print(fmt_table(lrows))
    if regret_runs:
        regret(args, b, space, pool, top1, lat, piece_ms, rt, data, regret_runs)
    print(f"\n# total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
