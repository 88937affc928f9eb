"""Which graphs a lookup-table entry was measured on, and whether the bundle still has them.

A bundle's key (snrt.lookup_table.bundle_key) is its family name and weights hash, so a copy of
the same bundle shares its measurements. But the same weights can run as other graphs:
`snrt-export regraph` rebuilds every ONNX graph in another operator form (weights.bin byte for
byte the same, 0.67-0.74x the time on the default family), `snrt-export tflite` re-exports a
variant's .tflite file. Latencies measured on the old graphs then describe graphs that no
longer exist. So every entry snrt-profile writes records `graphs`: the digest of the files
whose form sets its latency (`graph_files`):

- onnxruntime fp32: the ONNX graph of every piece of the variant's route and the variant's
  whole graph (the runtime runs one or the other: `placement`), plus, for a task entry, the
  task's piece graphs on that route and its whole graph; another precision (int8,
  `snrt-export quantize`): those graphs in that precision (exports["precisions"]);
- TFLite: the variant's .tflite file at that precision (a task entry: the task's file).

The digest is the sha256 of the sorted `path sha256` lines of those files as the manifest
records them (Bundle.open verified them), its first 16 hex digits. Weights files are left
out: their values do not set the latency, and weights.bin is in the bundle key already.

An entry is stale for a bundle (`stale_reason`) when
- it records `graphs` and the bundle's digest for it now differs; or
- it records none (tables written before schema version 4), it is an onnxruntime entry that
  snrt-profile measured (it has a `timestamp`) or predicted, and the bundle's manifest records
  a regraph (provenance.regraphs): it may have been measured on the graphs before the regraph
  (the shipped table was), or on a copy of the bundle that still has them, and nothing tells
  which, so it is not trusted, whenever it was measured. Entries without a timestamp that are
  not predictions were put by hand (an app's or a test's own figures) and are kept.
  TFLite entries without a record are kept: .tflite files are built from the weights in
  TensorFlow ops (exporters/tflite_export.py), not from the ONNX graphs, and a regraph refuses
  bundles that have any (export them again after). An unrecorded entry of a bundle never
  regraphed is kept too (nothing says otherwise; profile again with --fresh when in doubt).
When the bundle records no file for an entry (a TFLite entry looked up for an ONNX-only copy of
the bundle) nothing can be compared and the entry is kept: such a bundle cannot run it anyway.

Stale entries are ignored by Controller.auto and snrt-run (one WARNING naming the bundle, the
backend and the command that re-measures them: `warn_stale`), and snrt-profile measures them
again instead of skipping them.
"""

from __future__ import annotations

import hashlib
import logging

from .lookup_table import Entry, LookupTable, bundle_key

log = logging.getLogger("snrt.lookup_table")

DIGEST_CHARS = 16


def graph_files(bundle, variant: str, backend: str, precision: str = "fp32",
                task: str | None = None) -> list[str] | None:
    """The bundle files (paths in the manifest) whose form sets the latency of `variant` on
    `backend`/`precision` (with `task`'s tuners and head when given); None when the variant, the
    task or the precision is not in the bundle."""
    try:
        v = bundle.variant(variant)
        t = bundle.task(task) if task is not None else None
    except Exception:  # noqa: BLE001 - an id the bundle does not have: nothing to compare
        return None
    m = bundle.manifest
    if backend == "tflite":
        rec = (t.exports.get(v.id, {}) if t is not None else v.exports).get("tflite", {})
        f = rec.get(precision, {}).get("file")
        return [f] if f else None
    if backend != "onnxruntime":
        return None
    route = t.chain(v.pieces, v.anchors) if t is not None else list(v.pieces)
    if precision == "fp32":
        piece_graph = {p.id: p.graph for p in m.pieces}
        if t is not None:
            piece_graph.update({p["id"]: p["graph"] for p in t.pieces})
        whole = (t.graphs.get(v.id) if t is not None else v.graph)
    else:
        rec = (m.exports or {}).get("precisions", {}).get(precision)
        if rec is None or t is not None:  # no such precision (tasks have none in int8)
            return None
        piece_graph = dict(rec.get("pieces", {}))
        whole = rec.get("variants", {}).get(v.id)
    files = [piece_graph.get(pid, f"?{pid}") for pid in route]
    if whole:
        files.append(whole)
    return files


def graphs_digest(bundle, variant: str, backend: str, precision: str = "fp32",
                  task: str | None = None) -> str | None:
    """The digest an entry of `variant` records (module docstring); None when the bundle
    records no file for it."""
    files = graph_files(bundle, variant, backend, precision, task)
    if not files:
        return None
    known = bundle.manifest.files
    lines = sorted(f"{f} {known.get(f, {}).get('sha256', '?')}" for f in set(files))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DIGEST_CHARS]


def stale_reason(entry: Entry, bundle) -> str | None:
    """Why `entry` no longer describes `bundle` (module docstring), or None when it does (or
    nothing can be compared)."""
    if entry.graphs is not None:
        now = graphs_digest(bundle, entry.variant, entry.backend, entry.precision, entry.task)
        if now is not None and now != entry.graphs:
            return f"measured on other graphs (recorded {entry.graphs}, the bundle's now {now})"
        return None
    if entry.backend == "onnxruntime" and (entry.timestamp or entry.predicted):
        regraphs = (bundle.manifest.provenance or {}).get("regraphs") or []
        if regraphs:
            when = regraphs[-1].get("created") or "?"
            how = (f"measured {entry.timestamp}" if entry.timestamp else "predicted")
            return (f"{how} without a record of its graphs; the bundle's ONNX graphs were "
                    f"rebuilt on {when} (manifest provenance.regraphs), so it may describe "
                    "the graphs from before")
    return None


def select_current(table: LookupTable, bundle, backend: str | None = None,
                   precision: str | None = None, threads: int | None = None, *, task=None,
                   measured_only: bool = False) -> tuple[list[Entry], list[Entry]]:
    """(current, stale): table.select(bundle_key(bundle), ...) split by `stale_reason`."""
    current, stale = [], []
    for e in table.select(bundle_key(bundle), backend, precision, threads, task=task,
                          measured_only=measured_only):
        (stale if stale_reason(e, bundle) else current).append(e)
    return current, stale


def remeasure_command(bundle, backend: str, precision: str, threads: int) -> str:
    """The snrt-profile command that measures a configuration again (stale entries are
    re-measured without --fresh)."""
    from pathlib import Path

    shipped = Path(__file__).parent / "data" / "default.snrt"
    where = "default" if _same_path(Path(bundle.path), shipped) else str(bundle.path)
    prec = f" --precision {precision}" if precision != "fp32" else ""
    return (f"snrt-profile {where} --backend {backend}{prec} --threads {threads} "
            "--rounds 90 --min-seconds 3")


def warn_stale(stale: list[Entry], bundle, where: str) -> None:
    """One WARNING for the stale entries of one selection (nothing when there are none)."""
    if not stale:
        return
    configs = sorted({(e.backend, e.precision, e.threads) for e in stale})
    tasks = sorted({e.task for e in stale if e.task is not None})
    backend, precision, threads = configs[0]
    log.warning(
        "%s: ignoring %d %s entries of bundle %s (%s)%s: %s. Measure them again on this "
        "device: %s", where, len(stale),
        ", ".join(f"{b}/{p}/{t}t" for b, p, t in configs), bundle_key(bundle), bundle.path,
        f" with tasks {', '.join(tasks)}" if tasks else "", stale_reason(stale[0], bundle),
        remeasure_command(bundle, backend, precision, threads)
        + (f" --tasks {','.join(tasks)}" if tasks else ""))


def _same_path(a, b) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, AttributeError):
        return False
