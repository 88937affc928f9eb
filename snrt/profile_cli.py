"""snrt-profile's command line: arguments (each checked before any work), the run, and the
summary it prints (per-configuration medians, split-half repeatability). The measurement
protocols themselves are in snrt.profile."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import cli_args
from . import profile as _profile
from .errors import SnrtError
from .lookup_table import Entry, LookupTable, LookupTableError
from .profile import (
    Profiler,
    Protocol,
    _worker,
    _worker_interleaved,
    resolve_bundle,
    sample_variants,
)

log = logging.getLogger("snrt.profile")


BACKENDS = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")


def _table_out(s: str) -> Path:
    """--out: a .json file, or a directory for <device-id>.json; never a shipped location."""
    return cli_args.out_file(".json")(s) if s.endswith(".json") else cli_args.out_dir(s)


def _parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(prog="snrt-profile", description=_profile.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory (NAME.snrt), or 'default' for the bundled "
                                  "default family")
    p.add_argument("--backend", type=cli_args.csv(cli_args.choice(BACKENDS)),
                   default=["onnxruntime"],
                   help="comma list: onnxruntime,tflite (default onnxruntime)")
    p.add_argument("--threads", type=cli_args.csv(cli_args.threads), default=[1],
                   help=f"comma list of intra-op thread counts, 1 to {cli_args.MAX_THREADS} "
                        "(default 1)")
    p.add_argument("--precision", type=cli_args.csv(cli_args.choice(PRECISIONS)), default=None,
                   help="comma list: fp32,fp16,int8 (tflite); default fp32")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--variants", nargs="+", metavar="ID", help="variant ids or cfg_ids")
    sel.add_argument("--sample", metavar="N|P%", type=cli_args.sample_spec,
                     help="measure anchors plus variants spread over FLOPs, e.g. 20%% or 14")
    sel.add_argument("--front", action="store_true",
                     help="subnets bundles: time the front members snrt-accuracy --front wrote "
                          "into the table whole, all again in the same rounds (their latency "
                          "replaced, their "
                          "measured top-1 and front record kept); then rerun snrt-accuracy "
                          "--front --verify-front, which searches with these timings")
    p.add_argument("--tasks", type=cli_args.csv(str), default=None, metavar="NAME,...|all",
                   help="also measure each selected variant with these tasks of the bundle "
                        "(their tuners and head; 'all': every task), entries keyed by "
                        "(variant, task)")
    p.add_argument("--runs", type=cli_args.int_range(1, 10**6, "a run count"), default=20,
                   help="minimum timed runs (default 20)")
    p.add_argument("--warmup", type=cli_args.int_range(0, 10**6, "a run count"), default=3,
                   help="untimed runs first (default 3)")
    p.add_argument("--min-seconds", type=cli_args.number(0, 86400, what="seconds"),
                   default=1.0,
                   help="minimum timed seconds per variant (default 1)")
    p.add_argument("--max-seconds", type=cli_args.number(0, 86400, lo_open=True,
                                                         what="seconds"), default=30.0,
                   help="cap on timed seconds per variant (default 30)")
    p.add_argument("--rounds", type=cli_args.int_range(0, 10000, "a round count"), default=0,
                   metavar="K",
                   help="interleaved protocol: make all selected variants ready in one worker "
                        "and measure them in K shuffled round-robin rounds of short bursts "
                        "(--runs and --min-seconds are then totals per variant, split over the "
                        "rounds); host drift hits all variants alike. 0 (default): the "
                        "isolated protocol, one fresh worker per variant. See above")
    p.add_argument("--out", type=_table_out, default=None,
                   help="directory for <device-id>.json, or a .json path (default: "
                        "lookup_tables/ in the per-user data directory, snrt.paths; the tables "
                        "shipped with snrt are never written)")
    p.add_argument("--predict", action="store_true",
                   help="predict the variants not measured (default with --sample; needs "
                        "the predict extra, scipy)")
    p.add_argument("--pieces", action="store_true",
                   help="subnets bundles: also time every piece of the space once (in this "
                        "process, interleaved rounds), so the latency of ANY member is "
                        "predicted as the sum of its pieces plus a GP correction "
                        "(snrt.chain_latency)")
    p.add_argument("--plot", metavar="PNG", type=cli_args.out_file(".png"),
                   help="write the accuracy-latency Pareto plot")
    p.add_argument("--fresh", action="store_true", help="re-measure entries already present")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster start, no crash isolation)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def split_half_repeatability(entries: list[Entry], tol: float = 0.05) -> float | None:
    """How well an interleaved profile repeats within itself: the share of variants whose
    quiet latency from the odd rounds is within ±tol of that from the even rounds, once the
    common scale (the median ratio) is removed. None without interleaved p10s of >= 4 rounds
    for at least 3 variants. On six default-family profiles it tracked how well a predictor
    fitted to the profile did: 99-100% -> 100% of held-out variants within ±5%, 70% -> 80%
    (README); a low figure means the machine was busy during the profile."""
    halves = []
    for e in entries:
        p10 = e.conditions.get("interleaved", {}).get("p10", []) if e.conditions else []
        if len(p10) >= 4 and not e.predicted and e.error is None:
            halves.append((min(p10[0::2]), min(p10[1::2])))
    if len(halves) < 3:
        return None
    r = np.array([b / a for a, b in halves])
    return float(np.mean(np.abs(r / np.median(r) - 1) <= tol))


def _measured_groups(table: LookupTable, key: str, ids: set[str]
                     ) -> dict[tuple, dict[str, Entry]]:
    """{(backend, precision, threads): {variant: entry}} of the measured entries of `ids`."""
    rows: dict[tuple, dict[str, Entry]] = {}
    for e in table.entries:
        if e.bundle == key and e.variant in ids and not e.predicted and e.error is None:
            rows.setdefault((e.backend, e.precision, e.threads), {})[e.variant] = e
    return rows


def summary_lines(table: LookupTable, key: str, variant_ids: list[str]) -> list[str]:
    """Per backend x precision x threads over `variant_ids`: how many were measured, their
    median p50, the median per-variant ratio to onnxruntime fp32 at the same threads (the
    ORT-vs-TFLite comparison per precision) and, for interleaved profiles, the split-half
    repeatability (share within ±5%)."""
    rows = _measured_groups(table, key, set(variant_ids))
    if not rows:
        return []
    out = [f"{'backend':12s} {'prec':5s} {'threads':>7s} {'variants':>8s} {'median p50 ms':>13s} "
           f"{'vs onnxruntime fp32':>19s} {'repeats ±5%':>11s}"]
    for (backend, precision, threads), es in sorted(rows.items()):
        ref = rows.get(("onnxruntime", "fp32", threads), {})
        common = [v for v in es if v in ref]
        ratio = (f"{np.median([es[v].p50_ms / ref[v].p50_ms for v in common]):.2f}x "
                 f"({len(common)})" if common else "-")
        rep = split_half_repeatability(list(es.values()))
        out.append(f"{backend:12s} {precision:5s} {threads:7d} {len(es):8d} "
                   f"{np.median([e.p50_ms for e in es.values()]):13.3f} {ratio:>19s} "
                   f"{'-' if rep is None else f'{rep:.0%}':>11s}")
    return out


def task_summary_lines(table: LookupTable, key: str, variant_ids: list[str],
                       tasks: list[str]) -> list[str]:
    """Per task and backend x precision x threads: how many (variant, task) entries were
    measured and the median ratio of their p50 to the same variant's with the backbone's own
    head (what the task's tuners and head cost)."""
    ids = set(variant_ids)
    out = []
    for name in tasks:
        rows: dict[tuple, list[float]] = {}
        for e in table.select(key, task=name, measured_only=True):
            base = table.get(key, e.variant, e.backend, e.precision, e.threads)
            if e.variant in ids and base is not None and base.error is None and base.p50_ms:
                rows.setdefault((e.backend, e.precision, e.threads), []).append(
                    e.p50_ms / base.p50_ms)
        for (b, pr, th), rs in sorted(rows.items()):
            out.append(f"task {name}: {b} {pr} {th}t, {len(rs)} variants, p50 "
                       f"{np.median(rs):.2f}x the backbone head's (median; "
                       f"{min(rs):.2f}-{max(rs):.2f}x)")
    return out


REPEATABLE = 0.95  # split-half share within ±5% below which a profile is worth repeating


def _warn_unrepeatable(table: LookupTable, key: str, ids: set[str]) -> None:
    for (backend, precision, threads), es in sorted(_measured_groups(table, key, ids).items()):
        rep = split_half_repeatability(list(es.values()))
        if rep is not None and rep < REPEATABLE:
            log.warning("%s/%s/%dt: only %.0f%% of the variants repeat within ±5%% between odd "
                        "and even rounds: the machine was busy. Profile again (--fresh) when "
                        "it is quiet, or with more rounds (--rounds 90 --min-seconds 3 repeated "
                        "to 100%% on the default family here), before trusting small "
                        "differences or predictions", backend, precision, threads, 100 * rep)


def _pieces_with_subnets(prof: Profiler, variants, args, out: Path) -> None:
    """--pieces --rounds K on a subnets bundle: every piece and every selected subnet in the
    same K rounds (module comment at the call). A subnet's entry: p50_ms the lowest burst
    median, quiet_ms the lowest burst p10 (as the interleaved protocol), the rounds kept."""
    from .chain_latency import measure_together, store_pieces

    ids = [v.id for v in variants]
    for t in args.threads:
        pieces, whole = measure_together(prof.bundle, ids, threads=t,
                                         rounds=max(args.rounds, 10),
                                         burst_runs=max(1, -(-args.runs // args.rounds)),
                                         progress=not args.quiet)
        store_pieces(prof.table, prof.bundle, {
            pid: {"p50_ms": min(b[0] for b in bs), "quiet_ms": min(b[1] for b in bs)}
            for pid, bs in pieces.items()}, threads=t)
        for v in variants:
            bs = np.asarray(whole[v.id][0])
            prof.table.put(prof._entry(
                v, "onnxruntime", "fp32", t, p50_ms=float(bs[:, 0].min()),
                mean_ms=float(bs[:, 0].mean()), quiet_ms=float(bs[:, 1].min()),
                min_ms=float(bs[:, 1].min()), count=int(len(bs)),
                conditions={"protocol": "interleaved with pieces",
                            "interleaved": {"p50": [round(x, 5) for x in bs[:, 0]],
                                            "p10": [round(x, 5) for x in bs[:, 1]]}}))
        log.info("timed %d pieces and %d subnets together at %d threads, %d rounds",
                 len(pieces), len(ids), t, max(args.rounds, 10))
    prof.table.save(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    if argv[:1] == ["--worker-interleaved"]:
        return _worker_interleaved(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)  # every value checked here: exit 2 before any work
    try:
        return _main(args)
    except (SnrtError, LookupTableError, OSError) as e:  # OSError: an --out not writable
        return cli_args.fail("snrt-profile", e)


def _main(args) -> int:
    t0 = time.monotonic()
    protocol = Protocol(args.runs, args.warmup, args.min_seconds, args.max_seconds)
    if args.predict or args.sample:
        from .numerics import require_scipy

        require_scipy()  # before anything is measured: the prediction at the end needs it
    if args.out is None:
        from .paths import user_tables_dir

        args.out = user_tables_dir()
    out = Path(args.out)
    bundle_path = resolve_bundle(args.bundle)
    if out.suffix != ".json":
        from .device import describe_device

        out = LookupTable.path_for(out, describe_device())
    prof = Profiler(bundle_path, out, protocol=protocol, isolate=not args.in_process)
    variants = prof.bundle.variants
    if args.variants:
        variants = [prof.bundle.variant(k) for k in args.variants]
    elif args.sample and prof.bundle.open_membership:
        # elastic subnets: the space-filling sample over the whole space (snrt.accuracy_model),
        # not only the listed members; a percentage is of the space's size
        import math

        from .accuracy_model import space_filling_sample

        space = prof.bundle.variant_space()
        spec = args.sample
        n = math.ceil(space.size() * float(spec[:-1]) / 100) if spec.endswith("%") else int(spec)
        variants = [prof.bundle.variant(k) for k in space_filling_sample(space, min(n, 10000))]
    elif args.sample:
        variants = sample_variants(variants, args.sample)
    front_kept = {}
    if args.front:
        front_kept = {e.key: (e.accuracy, e.conditions["front"]) for e in prof.table.entries
                      if e.bundle == prof.key and "front" in (e.conditions or {})}
        if not front_kept:
            raise SnrtError(f"{out}: no front of {prof.bundle.name} to time; search it first "
                            "(snrt-accuracy BUNDLE --data D --front --verify-front)")
        variants = [prof.bundle.variant(k) for k in dict.fromkeys(k[1] for k in front_kept)]
        # every member re-timed in the same rounds, also those a --sample profile timed
        # earlier: mixed with an earlier (busier) profile, one could dominate another falsely
        args.fresh = True
    precisions = args.precision or ["fp32"]
    tasks = prof.task_names(args.tasks)
    everything = prof.plan(variants, args.backend, precisions, args.threads, fresh=True,
                           tasks=tasks)
    if args.rounds:
        items = prof.plan_interleaved(variants, args.backend, precisions, args.threads,
                                      args.rounds, fresh=args.fresh, tasks=tasks)
        partial = sum(1 for *_, done in items if done)
        how = (f"interleaved, {args.rounds} rounds; {len(everything) - len(items)} complete, "
               f"{partial} resumed")
    else:
        items = prof.plan(variants, args.backend, precisions, args.threads, fresh=args.fresh,
                          tasks=tasks)
        how = f"isolated; {len(everything) - len(items)} already measured"
    stale = prof.stale_entries(items)
    if stale:
        from .lut_graphs import stale_reason

        how += f"; {len(stale)} stale, measured again"
        log.warning("%s: %d entries of %s were %s: measuring them again", out, len(stale),
                    prof.key, stale_reason(stale[0], prof.bundle))
    log.info("profiling %d of %d variants%s x %s x %s x threads %s on %s -> %s (%s)",
             len(variants), len(prof.bundle.variants),
             f" (and with tasks {', '.join(tasks)})" if tasks else "", args.backend,
             precisions, args.threads, prof.table.device.id, out, how)
    # a subnets bundle's pieces and its selected subnets, interleaved: timed in the same rounds
    # in this process (snrt.chain_latency.measure_together), so the chain latency model's
    # pieces and the whole subnets it is corrected on see the same load
    together = bool(args.pieces and args.rounds and prof.bundle.open_membership and not tasks
                    and args.backend == ["onnxruntime"])
    try:
        if together:
            pass
        elif args.rounds:
            prof.run_interleaved(items, args.rounds, progress=not args.quiet)
        else:
            prof.run(items, progress=not args.quiet)
    except KeyboardInterrupt:
        log.warning("interrupted: %s holds every variant (isolated) or round (interleaved) "
                    "measured so far; rerun the same command to resume", out)
        return 130
    if together:
        _pieces_with_subnets(prof, variants, args, out)
    elif args.pieces:
        from .chain_latency import measure_pieces, store_pieces

        for t in args.threads:
            pieces = measure_pieces(prof.bundle, threads=t, rounds=max(args.rounds, 10),
                                    progress=not args.quiet)
            store_pieces(prof.table, prof.bundle, pieces, threads=t)
            log.info("timed %d pieces at %d threads", len(pieces), t)
        prof.table.save(out)
    if front_kept:  # the timed front members keep their measured top-1 and front record
        for key, (acc, rec) in front_kept.items():
            e = prof.table.get(*key)
            if e is not None and "front" not in (e.conditions or {}):
                e.accuracy = acc
                e.conditions = {**(e.conditions or {}), "front": {**rec,
                                                                  "latency_status": "measured"}}
        prof.table.save(out)
    if args.predict or args.sample:
        from .latency_model import predict_table

        n = predict_table(prof.table, prof.bundle)
        prof.table.save(out)
        log.info("predicted %d entries", n)
    for line in summary_lines(prof.table, prof.key, [v.id for v in variants]):
        log.info("%s", line)
    for line in task_summary_lines(prof.table, prof.key, [v.id for v in variants], tasks):
        log.info("%s", line)
    if args.rounds:
        _warn_unrepeatable(prof.table, prof.key, {v.id for v in variants})
    if args.plot:
        from .plots import plot_pareto

        plot_pareto(prof.table, args.plot, bundle=prof.key)
        log.info("wrote %s", args.plot)
    log.info("wrote %s (%d entries) in %.0fs", out, len(prof.table.entries),
             time.monotonic() - t0)
    failed = [e for b, pr, t, task, v, *_ in items
              if (e := prof.table.get(prof.key, v.id, b, pr, t, task)) is None or e.error]
    if failed:
        first = next((e for e in failed if e is not None), None)
        raise SnrtError(f"{len(failed)} of {len(items)} measurements failed"
                        f"{f' ({first.variant}: {first.error})' if first else ''}; {out} marks "
                        "them failed, rerun the same command to measure them again")
    return 0



if __name__ == "__main__":
    sys.exit(main())
