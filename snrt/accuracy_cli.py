"""snrt-accuracy: the UFO loop on a subnets bundle — measure a sample, predict the rest, search
and verify the front.

    snrt-accuracy B.snrt --data DIR|default --sample 32          # measure (space-filling sample)
    snrt-accuracy B.snrt --data DIR|default --variants ID ...    # measure these
    snrt-accuracy B.snrt --data D --predict                      # predict the listed members
    snrt-accuracy B.snrt --data D --front [--verify-front] [--table T.json]
                                                    # search the front into this device's table

Measuring is resumable (snrt.accuracy: results written after every subnet; rerun to resume).
`--front` needs the pieces' latencies in the lookup table (snrt-profile B.snrt --pieces, plus
measured subnets for the GP correction: snrt-profile B.snrt --sample N) and the predict extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import cli_args
from .errors import SnrtError
from .lookup_table import LookupTableError

log = logging.getLogger("snrt.accuracy")


def _parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(prog="snrt-accuracy", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="a subnets bundle directory (NAME.snrt)")
    p.add_argument("--data", required=True,
                   help="DIR with <label>/*.png sub-folders, or 'default' (the default "
                        "family's test split)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--sample", type=cli_args.int_range(1, 100000, "a subnet count"),
                     help="measure N subnets chosen space-filling (extremes, then farthest "
                          "point over the encoding)")
    sel.add_argument("--variants", nargs="+", metavar="ID", help="measure these subnets")
    p.add_argument("--predict", action="store_true",
                   help="predict the top-1 of the listed (or --variants) subnets not measured")
    p.add_argument("--front", action="store_true",
                   help="search the predicted accuracy-latency front over the whole space and "
                        "write it into this device's lookup table")
    p.add_argument("--verify-front", action="store_true",
                   help="measure the top-1 of every front member before the table is written "
                        "(the measured value replaces the prediction), refit the accuracy "
                        "predictor on them and search again, until the front is all measured")
    p.add_argument("--optimism", type=cli_args.number(0, 100, what="sigmas"), default=1.0,
                   help="--verify-front: an unmeasured subnet scores its predicted top-1 plus "
                        "this many sigmas, so one the predictor under-rates still gets measured "
                        "(default 1; 0: the prediction)")
    p.add_argument("--verify-rounds", type=cli_args.int_range(1, 1000, "a count"), default=5,
                   help="--verify-front: at most this many searches (default 5)")
    p.add_argument("--table", type=cli_args.out_file(".json"), default=None,
                   help="lookup table (default: this device's in the per-user data directory)")
    p.add_argument("--out", type=cli_args.out_file(".json"), default=None,
                   help="results file (default: <data dir>/accuracy/<bundle>-<data>.json)")
    p.add_argument("--population", type=cli_args.int_range(4, 100000, "a size"), default=64)
    p.add_argument("--generations", type=cli_args.int_range(0, 100000, "a count"), default=60)
    p.add_argument("--seed", type=cli_args.int_range(0, 2**31, "a seed"), default=0)
    p.add_argument("--threads", type=cli_args.threads, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except (SnrtError, LookupTableError, OSError) as e:
        return cli_args.fail("snrt-accuracy", e)


def _main(args) -> int:
    from .accuracy import AccuracyStore, load_data, measure, results_path
    from .bundle import Bundle
    from .lookup_table import bundle_key

    if args.predict or args.front:
        from .numerics import require_scipy

        require_scipy()
    bundle = Bundle.open(args.bundle)
    if not bundle.open_membership:
        raise SnrtError(f"{args.bundle}: not a subnets bundle (snrt-export subnets); stitches "
                        "carry their measured top-1 in the manifest")
    space = bundle.variant_space()
    data = load_data(args.data, bundle)
    out = Path(args.out) if args.out else results_path(bundle, data)
    store = AccuracyStore(out, bundle_key(bundle), data.source)
    log.info("%s: %d labelled images (%s); results %s (%d measured)", bundle.name, len(data),
             data.source["kind"], out, len(store.measured()))
    ids: list[str] = []
    if args.sample:
        from .accuracy_model import space_filling_sample

        ids = space_filling_sample(space, args.sample, seed=args.seed)
    elif args.variants:
        ids = list(args.variants)
    if ids and not (args.predict and args.variants):
        n = measure(bundle, ids, data, store, progress=not args.quiet, threads=args.threads)
        log.info("measured %d subnets (%d were already measured)", n, len(ids) - n)
    if args.predict or args.front:
        from .accuracy_model import AccuracyModel

        model = AccuracyModel(space).fit({k: r["top1"] for k, r in store.measured().items()})
        store.predictor = model.describe()
        targets = list(args.variants) if args.variants and args.predict else \
            [v.id for v in bundle.variants]
        targets = [t for t in targets if t not in store.measured()]
        if targets:
            mean, sd = model.predict(targets)
            for t, m, s in zip(targets, mean, sd):
                store.put(t, {"status": "predicted", "top1": float(m), "uncertainty": float(s),
                              "trained_on": model.trained_on})
        store.save()
        for t in targets[:20]:
            r = store.results[t]
            log.info("  %s predicted top-1 %.2f%% ± %.2f", t, r["top1"], r["uncertainty"])
        if args.front:
            _front(args, bundle, space, model, data, store)
    return 0


def _front(args, bundle, space, model, data, store) -> None:
    from .accuracy import measure
    from .accuracy_model import AccuracyModel
    from .chain_latency import model_from_table
    from .device import describe_device
    from .front_search import (
        SearchSettings,
        refine_front,
        search_front,
        verify_front,
        write_front,
    )
    from .lookup_table import LookupTable, bundle_key
    from .paths import user_tables_dir

    path = Path(args.table) if args.table else LookupTable.path_for(user_tables_dir(),
                                                                      describe_device())
    table = LookupTable.load(path)
    lat_model = model_from_table(table, bundle, threads=args.threads)
    settings = SearchSettings(population=args.population, generations=args.generations,
                              seed=args.seed)

    def measure_one(vid):
        measure(bundle, [vid], data, store, progress=False, threads=args.threads)
        return store.measured()[vid]

    if args.verify_front:
        # search, measure the front, refit on what was measured, search again until the front
        # is all measured (snrt.front_search.refine_front)
        def fit(measured):
            m = AccuracyModel(space).fit(measured)

            def predict(ids):  # latency as the table will show it: measured where timed
                acc, sd = m.predict(ids)
                return acc, lat_model.latency(ids), sd
            return predict

        done = {k: r["top1"] for k, r in store.measured().items()}
        ref = refine_front(space, fit, lambda v: measure_one(v)["top1"], done, settings,
                           max_rounds=args.verify_rounds, optimism=args.optimism)
        front = ref.front
        model = AccuracyModel(space).fit(ref.measured)
        log.info("front verified: %d searches, %d members measured during them%s", ref.rounds,
                 len(ref.measured) - len(done),
                 "" if ref.complete else f" (round limit {args.verify_rounds}: the last front's "
                 "members measured, the ones they dominate dropped)")
    else:
        front, _ = search_front(space, lambda ids: (model.predict(ids)[0],
                                                    lat_model.latency(ids)), settings)
    acc_m, acc_s = model.predict(front)
    lat_m, lat_s = lat_model.predict(front)
    measured = store.measured()
    acc = {v: (measured[v]["top1"], 0.0) if v in measured else (float(m), float(s))
           for v, m, s in zip(front, acc_m, acc_s)}
    write_front(table, bundle, front, acc, dict(zip(front, zip(lat_m, lat_s))),
                settings=settings, predictor=model.describe(), threads=args.threads)
    for e in table.entries:  # members already measured: their top-1 is a measurement
        f = (e.conditions or {}).get("front")
        if f is not None and e.variant in measured and f["accuracy_status"] == "predicted":
            r = measured[e.variant]
            f.update({"accuracy_status": "measured", "n": r["n"], "ci95": r["ci95"]})
    log.info("front: %d members (search %s)", len(front), settings)
    if args.verify_front:  # nothing left after refine_front; kept as the guarantee
        n = verify_front(table, bundle, measure_one, threads=args.threads)
        if n:
            log.info("verified %d more front members", n)
    table.save(path)
    for vid in front:
        e = table.get(bundle_key(bundle), vid, threads=args.threads)
        log.info("  %-40s %7.3f ms  top-1 %6.2f%% (%s)", vid, e.p50_ms, e.accuracy,
                 e.conditions["front"]["accuracy_status"])
    log.info("wrote %s", path)


if __name__ == "__main__":
    sys.exit(main())
