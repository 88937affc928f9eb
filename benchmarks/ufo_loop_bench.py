"""The UFO loop, benchmarked honestly (issue 16 item 4) on any subnets bundle + labelled data.

    flock /tmp/snrt-timing.lock python -m benchmarks.ufo_loop_bench --bundle B.snrt \\
        --data default|DIR [--pool 120] [--splits 10] [--rounds 20]

1. A pool of subnets (the whole grid for POA, `--pool` seeded random members for UFO) is
   measured: top-1 on all the images (and on two disjoint halves: the noise floor), latency
   whole (interleaved rounds, quiet = lowest burst p10, as snrt-profile) and of every piece.
2. Per split (seed): half the pool is held out (never used to fit or choose anything); from the
   other half 10%, 20%, 40% of the pool are "measured" (the product's space-filling choice,
   snrt.accuracy_model.farthest_point, on a seeded shuffle); the predictors are fitted on them and
   scored on the held-out half: Kendall tau of predicted vs measured top-1 (snrt's
   AccuracyModel and GPNASBaseline on the same encoding and splits), and the share of held-out
   latencies within ±5% (sum of pieces + GP correction fitted on the measured ones).
3. Noise floor: tau between top-1s measured on the even and the odd images, held-out members.
4. Regret (20% measured, split 0): the front is searched over the whole space with the
   fitted predictors; at latency budgets (25/50/75% quantiles of the pool's latency), among
   the front members whose predicted latency fits: the predicted-best one, and the one the
   controller picks after --verify-front (every front member's top-1 measured: the best
   measured), each against the best measured pool member within the same budget (latencies
   as the pool's timing measured them).
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


def time_subnets(rt, ids, x, rounds: int, burst: int = 5, per_round: dict | None = None
                 ) -> dict[str, float]:
    """Interleaved: `rounds` shuffled round-robin bursts; quiet = lowest burst p10 (ms).
    `per_round`, when given, receives every burst p10 per id (for the split-half floor)."""
    lows: dict[str, float] = {}
    for r in range(rounds):
        order = list(ids)
        np.random.default_rng([0x5A27, r]).shuffle(order)
        for vid in order:
            rt.run(x, variant=vid)
            lat = [rt.run(x, variant=vid).latency_ms for _ in range(burst)]
            p10 = float(np.percentile(lat, 10))
            lows[vid] = min(lows.get(vid, np.inf), p10)
            if per_round is not None:
                per_round.setdefault(vid, []).append(p10)
    return lows


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
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds (subnets, pieces)")
    ap.add_argument("--fractions", default="0.1,0.2,0.4")
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--depths", help="POA: list every depth in A-B (e.g. 6-12) instead of the "
                    "bundle's table, from the same shipped pieces (see widen_depths)")
    args = ap.parse_args(argv)

    from snrt.accuracy import load_data
    from snrt.accuracy_model import AccuracyModel, candidate_pool, encode, farthest_point
    from snrt.bundle import Bundle
    from snrt.chain_latency import ChainLatencyModel, measure_pieces
    from snrt.front_search import SearchSettings, search_front
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
    x1 = data.x[:1]
    rounds_p10: dict[str, list[float]] = {}
    lat = time_subnets(rt, pool, x1, args.rounds, per_round=rounds_p10)
    # latency noise floor: quiet latency from the even rounds vs the odd rounds, common scale
    # removed (as snrt-profile's split-half repeatability)
    ratio = np.array([min(r[0::2]) / min(r[1::2]) for r in rounds_p10.values()])
    lat_floor = float(np.mean(np.abs(ratio / np.median(ratio) - 1) <= 0.05))
    pieces = measure_pieces(b, rounds=args.rounds, progress=False)
    piece_ms = {p: r["quiet_ms"] for p, r in pieces.items()}
    # the measurement's own floor: every subnet timed again, a second pass after the pieces
    lat2 = time_subnets(rt, pool, x1, args.rounds)
    twice = np.array([lat2[v] / lat[v] for v in pool])
    twice5 = float(np.mean(np.abs(twice - 1) <= 0.05))
    # the chain's overhead over its pieces (descriptive, whole pool): measured - sum of pieces
    # = a + c * number of pieces, least squares
    n_p = np.array([len(b.variant(v).pieces) for v in pool], dtype=float)
    sums = np.array([sum(piece_ms[p] for p in b.variant(v).pieces) for v in pool])
    meas = np.array([lat[v] for v in pool])
    (over_a, over_c), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(n_p), n_p]),
                                           meas - sums, rcond=None)
    t_lat = time.monotonic() - t0 - t_acc
    print(f"# measured top-1 of {len(pool)} subnets in {t_acc:.0f}s (range "
          f"{min(top1.values()):.2f}-{max(top1.values()):.2f}%), latency in {t_lat:.0f}s "
          f"({min(lat.values()):.3f}-{max(lat.values()):.3f} ms)")

    fracs = [float(f) for f in args.fractions.split(",")]
    rows = []
    floors = []
    models_at_20 = None
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
            lm = ChainLatencyModel(piece_ms, lambda v: b.variant(v).pieces)
            lm.fit({v: lat[v] for v in train})
            pred = lm.predict(held)[0]
            within = float(np.mean(np.abs(pred / np.array([lat[v] for v in held]) - 1) <= 0.05))
            rows.append({"frac": f, "seed": seed, "n": n, "tau": tau, "tau_g": tau_g,
                         "lat5": within})
            if seed == 0 and abs(f - 0.2) < 1e-9:
                models_at_20 = (m, lm, train)
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
          f"(worst {np.nanmin(floors):.3f}); latency split-half repeatability (even vs odd "
          f"rounds within ±5%): {lat_floor:.1%}; the same subnets timed twice (second pass after "
          f"the pieces) within ±5%: {twice5:.1%} (ratio {twice.min():.3f}-{twice.max():.3f})\n")
    print(f"chain overhead over the sum of pieces (whole pool): measured / sum "
          f"{(meas / sums).min():.3f}-{(meas / sums).max():.3f}; measured - sum = "
          f"{over_a * 1e3:.0f} us + {over_c * 1e3:.1f} us per piece\n")
    print(fmt_table(out))

    if models_at_20 is not None:
        m, lm, train = models_at_20
        front, seen = search_front(space, lambda ids: (m.predict(ids)[0], lm.predict(ids)[0]),
                                   SearchSettings(generations=args.generations))
        print(f"\nfront: {len(front)} members from {len(seen)} evaluated "
              f"({len(train)} measured)")
        reg = []
        all_lat = np.array(list(lat.values()))

        def measured(v):  # top-1 and latency as the pool measured them (else measured now)
            t = top1[v] if v in top1 else 100 * float(correctness(rt, v, data).mean())
            ms = lat[v] if v in lat else time_subnets(rt, [v], x1, args.rounds)[v]
            return t, ms

        verified = {v: measured(v) for v in front}  # snrt-accuracy --verify-front
        for q in (25, 50, 75):
            budget = float(np.percentile(all_lat, q))
            fits = [v for v in front if seen[v][1] <= budget]  # by predicted latency
            best = max((v for v in pool if lat[v] <= budget), key=lambda v: top1[v])
            if not fits:
                reg.append({"budget ms": budget, "predicted pick": "-"})
                continue
            pick = max(fits, key=lambda v: seen[v][0])
            vpick = max(fits, key=lambda v: verified[v][0])
            reg.append({"budget ms": budget, "predicted pick": pick,
                        "pred/measured top-1": f"{seen[pick][0]:.1f}/{verified[pick][0]:.1f}",
                        "regret pts": top1[best] - verified[pick][0],
                        "verified pick": vpick, "its top-1 (ms)":
                        f"{verified[vpick][0]:.1f} ({verified[vpick][1]:.3f})",
                        "regret verified": top1[best] - verified[vpick][0],
                        "over budget": ",".join(k for k, v in (("pred", pick), ("verified", vpick))
                                                if verified[v][1] > budget) or "-",
                        "best in pool (ms)": f"{best} {top1[best]:.1f} ({lat[best]:.3f})"})
        print(fmt_table(reg))
    print(f"\n# total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
