"""snrt-lut: inspect and combine lookup tables from several boards.

    snrt-lut show TABLE.json [TABLE.json ...] [--bundle KEY] [--backend B] [--threads N]
    snrt-lut merge A.json B.json ... --out DIR
    snrt-lut plot TABLE.json --out pareto.png

`show` with one table prints its entries (p50/p90/p99, predicted ±1σ, Pareto members marked *);
with several it prints p50 side by side, one column per device. `merge` combines tables of the
same device (measurements beat predictions, newer beats older) and writes one file per device.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import SnrtError
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
        return "\n".join(lines)
    keys = sorted({(e.bundle, e.variant, e.backend, e.precision, e.threads, e.cfg_id)
                   for t in tables for e in t.select(bundle, backend, threads=threads)},
                  key=lambda k: (k[0], k[2], k[3], k[4], k[5]))
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


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="snrt-lut", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print one table, or several side by side")
    s.add_argument("tables", nargs="+")
    s.add_argument("--bundle")
    s.add_argument("--backend")
    s.add_argument("--threads", type=int)
    m = sub.add_parser("merge", help="combine tables, one output file per device")
    m.add_argument("tables", nargs="+")
    m.add_argument("--out", required=True, help="output directory")
    pl = sub.add_parser("plot", help="accuracy-latency Pareto plot (needs the plot extra)")
    pl.add_argument("table")
    pl.add_argument("--bundle")
    pl.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    try:
        if args.cmd == "show":
            print(show([LookupTable.load(t) for t in args.tables], args.bundle, args.backend,
                       args.threads))
        elif args.cmd == "merge":
            merged = merge([LookupTable.load(t) for t in args.tables])
            for dev, t in merged.items():
                path = t.save(Path(args.out) / f"{dev}.json")
                log.info("wrote %s (%d entries)", path, len(t.entries))
        else:
            from .plots import plot_pareto

            plot_pareto(LookupTable.load(args.table), args.out, bundle=args.bundle)
            log.info("wrote %s", args.out)
    except (SnrtError, LookupTableError) as e:
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
