"""snrt-lut: inspect and combine lookup tables from several boards.

    snrt-lut show TABLE.json [TABLE.json ...] [--bundle KEY] [--backend B] [--threads N]
    snrt-lut merge A.json B.json ... --out DIR
    snrt-lut plot TABLE.json --out pareto.png
    snrt-lut repair TABLE.json [--out FIXED.json]

`show` with one table prints its entries (p50/p90/p99, predicted ±1σ, Pareto members marked *);
with several it prints p50 side by side, one column per device; a filter (--bundle, --backend,
--threads) that selects nothing is an error. `merge` combines tables of the same device
(measurements beat predictions, newer beats older) and writes one file per device. `repair`
drops the entries the loader rejects (and duplicates), saying which, and writes the rest back
atomically (or to --out); measure the dropped ones again with snrt-profile.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import cli_args
from .errors import SnrtError
from .fileio import atomic_write_json
from .lookup_table import LookupTable, LookupTableError, pareto_front

log = logging.getLogger("snrt.lut")


def show(tables: list[LookupTable], bundle=None, backend=None, threads=None) -> str:
    lines = []
    if len(tables) == 1:
        t = tables[0]
        d = t.device
        lines.append(f"device {d.id}: {d.cpu_model}, {d.cores_logical} cores, "
                     f"{d.ram_bytes / 2**30:.0f} GiB, {d.os}")
        for b, p, th in t.configs(bundle):
            if (backend and b != backend) or (threads and th != threads):
                continue
            es = sorted(t.select(bundle, b, p, th), key=lambda e: e.p50_ms)
            front = {e.variant for e in pareto_front(es)}
            lines.append(f"\n{b} {p} threads={th}: {len(es)} variants "
                         f"({sum(e.predicted for e in es)} predicted)")
            lines.append(f"  {'':1s} {'variant':16s} {'cfg':>4s} {'GFLOPs':>7s} {'top1':>6s} "
                         f"{'p50 ms':>9s} {'p90 ms':>8s} {'p99 ms':>8s} {'runs':>5s}")
            for e in es:
                p50 = f"{e.p50_ms:9.2f}"
                if e.predicted:
                    p50 = f"~{e.p50_ms:.2f}±{e.uncertainty_ms or 0:.2f}".rjust(9)
                lines.append(
                    f"  {'*' if e.variant in front else ' '} {e.variant:16s} {e.cfg_id:4d} "
                    f"{e.flops / 1e9:7.3f} "
                    f"{(f'{e.accuracy:.2f}' if e.accuracy is not None else '-'):>6s} {p50} "
                    f"{_f(e.p90_ms):>8s} {_f(e.p99_ms):>8s} {e.count:5d}")
            for name in t.tasks(bundle):  # snrt-profile --tasks: (variant, task) entries
                tes = sorted(t.select(bundle, b, p, th, task=name), key=lambda e: e.p50_ms)
                if not tes:
                    continue
                lines.append(f"  task {name}: {len(tes)} variants")
                for e in tes:
                    plain = t.get(e.bundle, e.variant, b, p, th)
                    ratio = (f"{e.p50_ms / plain.p50_ms:.2f}x the backbone head's"
                             if plain is not None and plain.p50_ms else "")
                    acc = f"{e.accuracy:.2f}" if e.accuracy is not None else "-"
                    lines.append(f"    {e.variant:16s} top1 {acc:>6s} p50 {e.p50_ms:9.2f} ms "
                                 f"{ratio}")
        return "\n".join(lines)
    keys = sorted({(e.bundle, e.variant, e.backend, e.precision, e.threads, e.cfg_id)
                   for t in tables for e in t.select(bundle, backend, threads=threads)},
                  key=lambda k: (k[0], k[2], k[3], k[4], k[5]))  # the backbone's head
    lines.append(f"{'variant':16s} {'config':22s} " + " ".join(f"{t.device.id[:24]:>24s}"
                                                               for t in tables))
    for bk, v, b, p, th, _ in keys:
        cells = []
        for t in tables:
            e = t.get(bk, v, b, p, th)
            cells.append(f"{'~' if e and e.predicted else ''}{e.p50_ms:.2f} ms".rjust(24)
                         if e else "-".rjust(24))
        lines.append(f"{v:16s} {f'{b} {p} {th}t':22s} " + " ".join(cells))
    return "\n".join(lines)


def _f(x) -> str:
    return f"{x:.2f}" if x is not None else "-"


def merge(tables: list[LookupTable]) -> dict[str, LookupTable]:
    out: dict[str, LookupTable] = {}
    for t in tables:
        m = out.setdefault(t.device.id, LookupTable(t.device))
        m.bundles.update(t.bundles)
        for e in sorted(t.entries, key=lambda e: e.timestamp or ""):
            old = m.get(*e.key)
            if old is None or old.predicted or not e.predicted:
                if old is None or (e.timestamp or "") >= (old.timestamp or "") or old.predicted:
                    m.put(e)
    return out


def _check_filters(tables: list[LookupTable], paths: list[str], bundle, backend,
                   threads) -> None:
    """A --bundle/--backend/--threads that selects nothing in any table is an error listing
    what the tables hold."""
    if bundle is None and backend is None and threads is None:
        return
    if any(t.select(bundle, backend, threads=threads) for t in tables):
        return
    have = sorted({(e.bundle, e.backend, e.threads) for t in tables for e in t.select()})
    held = ", ".join(f"{b} {be} threads={th}" for b, be, th in have[:8]) or "no entries"
    want = " ".join(f"{k} {v}" for k, v in (("--bundle", bundle), ("--backend", backend),
                                              ("--threads", threads)) if v is not None)
    raise SnrtError(f"{want}: no entries in {', '.join(paths)}; they hold: {held}"
                    f"{' ...' if len(have) > 8 else ''}")


def repair(path: str, out: str | None = None) -> tuple[int, list[str]]:
    """Drop the entries of the table at `path` that the loader rejects; write the rest to
    `out` (default: back to `path`, atomically). Returns (entries kept, messages dropped)."""
    import json

    p = Path(path)
    try:
        d = json.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise LookupTableError(f"{p}: no such lookup table") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LookupTableError(f"{p}: not valid JSON ({e}); nothing to repair, remove it and "
                               "profile again with snrt-profile") from None
    if not isinstance(d, dict):
        raise LookupTableError(f"{p}: not an snrt lookup table")
    entries, bad = LookupTable.parse_entries(d.get("entries", []))
    d = {**d, "entries": [e.to_json() for e in entries]}
    LookupTable.from_json(d, str(p))  # anything else wrong (schema, device) is reported here
    if bad or out is not None:
        atomic_write_json(out or p, d)
    return len(entries), bad


def parser() -> argparse.ArgumentParser:
    p = cli_args.Parser(prog="snrt-lut", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print one table, or several side by side")
    s.add_argument("tables", nargs="+")
    s.add_argument("--bundle")
    s.add_argument("--backend")
    s.add_argument("--threads", type=cli_args.threads)
    m = sub.add_parser("merge", help="combine tables, one output file per device")
    m.add_argument("tables", nargs="+")
    m.add_argument("--out", required=True, type=cli_args.out_dir, help="output directory")
    pl = sub.add_parser("plot", help="accuracy-latency Pareto plot (needs the plot extra)")
    pl.add_argument("table")
    pl.add_argument("--bundle")
    pl.add_argument("--out", required=True, type=cli_args.out_file(".png"), help="PNG path")
    r = sub.add_parser("repair", help="drop the entries a table's loader rejects")
    r.add_argument("table")
    r.add_argument("--out", type=cli_args.out_file(".json"),
                   help="write the repaired table here (default: over TABLE, atomically)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)  # every value checked here: exit 2 before any work
    try:
        if args.cmd == "show":
            tables = [LookupTable.load(t) for t in args.tables]
            _check_filters(tables, args.tables, args.bundle, args.backend, args.threads)
            print(show(tables, args.bundle, args.backend, args.threads))
        elif args.cmd == "merge":
            merged = merge([LookupTable.load(t) for t in args.tables])
            for dev, t in merged.items():
                path = t.save(Path(args.out) / f"{dev}.json")
                log.info("wrote %s (%d entries)", path, len(t.entries))
        elif args.cmd == "repair":
            kept, bad = repair(args.table, args.out)
            for msg in bad:
                log.info("dropped %s", msg)
            log.info("%s: %d entries kept, %d dropped%s", args.out or args.table, kept,
                     len(bad), "" if bad else " (nothing to repair)")
        else:
            from .plots import plot_pareto

            table = LookupTable.load(args.table)
            _check_filters([table], [args.table], args.bundle, None, None)
            plot_pareto(table, args.out, bundle=args.bundle)
            log.info("wrote %s", args.out)
    except (SnrtError, OSError) as e:
        return cli_args.fail("snrt-lut", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
