"""backend="auto": which (variant, backend, precision) entries a Runtime keeps ready.

    plan = plan_auto(bundle, table, threads=1, budget_mb=64)
    plan.entries     # AutoEntry: variant, backend, precision, p50_ms, accuracy, est_mb, key
    print(plan.table())

Backend is one more key of a switchable entry, like precision (issue 18): an *option* is one
lookup-table entry of this bundle at `threads` (backbone head), i.e. a (variant, backend,
precision) triple with its measured p50 on this device and its top-1 in that precision:
- fp32 on any backend: the variant's top-1 the manifest records (the TFLite exporter verifies
  every fp32 file against the ONNX graph within rtol 3e-5: the same network);
- another precision: the accuracy measured in it and recorded in the manifest
  (onnxruntime: `exports.precisions.<p>.accuracy`, snrt-export quantize; TFLite: the file's
  record `accuracy.top1`, tools/default_family_tflite.py --record). An option without one is
  left out (logged): the table's accuracy column is the fp32 copy.

The options' accuracy-latency Pareto front is what the controller may pick. On each of its
variants that is the fastest entry the table shows (a second entry of the same variant is on
the front only if it is more accurate, e.g. fp32 beside a faster int8). Then the memory budget
(TFLite files share no weights: each interpreter holds its own file, packed copy and arena):
the fastest front entry first, then the others by accuracy, each kept when its estimated
memory (`estimate_mb`, plus the engine's one-time `ENGINE_MB` for a backend's first entry,
plus `RUNTIME_MB` once) still fits, else replaced by the same variant's next-fastest option that
fits (e.g. onnxruntime fp32 instead of a large TFLite file), else left out. The controller's own
front over what is kept decides at run time.

Clear errors (SnrtError): the table has no entries for a backend asked for; a front entry's
file is missing (a TFLite file never exported, int8 graphs never quantized), naming the export
command; the budget cannot hold even the fastest fp32 entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import BundleError, SnrtError
from .lookup_table import pareto_front

log = logging.getLogger(__name__)

AUTO_BACKENDS = ("onnxruntime", "tflite")

# Resident memory of one ready entry, measured on this machine (ai-edge-litert 2.3 + XNNPACK,
# onnxruntime 1.32, default family; RSS growth of one more entry once its engine is loaded:
# `python -m benchmarks.auto_backend_bench --memory`): TFLite is the mapped file + XNNPACK's
# packed copy + arena, 1.0 MB + 2.0x the file in fp32 (ti 0.40 MB file -> 1.80 MB, b 5.19 ->
# 11.39) and 1.0 + 2.1x in int8 (ti 0.20 -> 1.45, b 1.50 -> 4.11); fp16 unpacks to fp32
# (3.1x the file, snrt.backends.tflite). onnxruntime (one session per variant graph at this
# size, prepacked): 1.7 MB + its fp32 weights (ti 2.12 MB, b 6.91 MB for 5.2 MB of weights);
# its int8 graphs are not measured here: 2 bytes a parameter, an upper guess.
# The first entry of a backend also pays the engine's one-time memory (its arena, thread pool,
# XNNPACK's state): the RSS growth of a fresh process's first Runtime minus its entries',
# measured the same way: 12.0-12.3 MB for TFLite, 17.8-18.4 MB for onnxruntime.
ENGINE_MB = {"tflite": 12.0, "onnxruntime": 18.0}
# and the Runtime itself (the open bundle, records, Python objects): what creating a whole
# auto Runtime grew beyond the sum of the above, 2.3-3.1 MB (benchmarks/auto_backend_bench.py)
RUNTIME_MB = 3.0
FIXED_MB = {"tflite": 1.0, "onnxruntime": 1.7}
TFLITE_FACTOR = {"fp32": 2.0, "fp16": 3.1, "int8": 2.1}
ORT_BYTES_PER_PARAM = {"fp32": 4.0, "int8": 2.0}


def entry_key(variant: str, backend: str, precision: str) -> str:
    """The controller key of an auto runtime's entry: "<id>|<backend>:<precision>"."""
    from .controller import cand_key

    return cand_key(variant, precision, backend)


@dataclass(frozen=True)
class AutoEntry:
    """One (variant, backend, precision) a backend="auto" runtime may keep ready."""

    variant: str
    backend: str
    precision: str
    p50_ms: float  # the lookup table's p50 on this device
    accuracy: float  # top-1 % in this precision
    est_mb: float  # estimated resident memory when ready
    missing: str | None = None  # why it cannot be loaded (file never exported), else None

    @property
    def key(self) -> str:
        return entry_key(self.variant, self.backend, self.precision)


@dataclass
class AutoPlan:
    entries: list[AutoEntry]  # kept ready, fastest first
    front: list[AutoEntry]  # the options' front (what an unlimited budget keeps)
    budget_mb: float | None
    replaced: list[tuple[AutoEntry, AutoEntry]] = field(default_factory=list)  # (front, kept)
    dropped: list[AutoEntry] = field(default_factory=list)  # front entries left out
    skipped: list[str] = field(default_factory=list)  # options left out, and why

    @property
    def est_mb(self) -> float:
        """Estimated memory of the kept entries, with each backend's one-time engine cost."""
        return RUNTIME_MB + sum(e.est_mb for e in self.entries) + sum(
            ENGINE_MB.get(b, 0.0) for b in {e.backend for e in self.entries})

    def of(self, variant: str) -> list[AutoEntry]:
        """The entries kept for `variant`, fastest first."""
        return [e for e in self.entries if e.variant == variant]

    def table(self) -> str:
        lines = [f"{'variant':12s} {'backend':12s} {'prec':5s} {'p50 ms':>7s} {'top-1':>6s} "
                 f"{'est MB':>7s}"]
        for e in self.entries:
            lines.append(f"{e.variant:12s} {e.backend:12s} {e.precision:5s} {e.p50_ms:7.3f} "
                         f"{e.accuracy:6.2f} {e.est_mb:7.2f}")
        for f, k in self.replaced:
            lines.append(f"  {f.variant}: {f.backend}/{f.precision} ({f.est_mb:.1f} MB) over "
                         f"the budget -> {k.backend}/{k.precision}")
        for f in self.dropped:
            lines.append(f"  {f.variant}: left out ({f.backend}/{f.precision} {f.est_mb:.1f} "
                         "MB, nothing of it fits the budget)")
        budget = "none" if self.budget_mb is None else f"{self.budget_mb:g} MB"
        lines.append(f"{len(self.entries)} entries, est {self.est_mb:.1f} MB (budget {budget})")
        return "\n".join(lines)


def estimate_mb(bundle, variant: str, backend: str, precision: str) -> float:
    """Estimated resident memory of one ready entry (see FIXED_MB and the factors)."""
    v = bundle.variant(variant)
    if backend == "tflite":
        rec = v.exports.get("tflite", {}).get(precision)
        nbytes = rec["bytes"] if rec else 4 * v.params / (2 if precision == "fp16" else
                                                         4 if precision == "int8" else 1)
        return FIXED_MB["tflite"] + TFLITE_FACTOR.get(precision, 2.0) * nbytes / 2**20
    return FIXED_MB.get(backend, 1.0) + ORT_BYTES_PER_PARAM.get(precision, 4.0) * v.params \
        / 2**20


def option_accuracy(bundle, variant: str, backend: str, precision: str) -> float | None:
    """Top-1 of `variant` in `precision` on `backend` as the manifest records it (see the
    module docstring), else None."""
    v = bundle.variant(variant)
    if backend == "tflite":
        acc = (v.exports.get("tflite", {}).get(precision) or {}).get("accuracy")
        if isinstance(acc, dict) and acc.get("top1") is not None:
            return float(acc["top1"])
    if precision == "fp32":
        return v.top1
    if backend == "onnxruntime":
        from .controller import precision_accuracy

        return precision_accuracy(bundle, precision).get(variant)
    return None


def device_table(table=None, first_dir=None):
    """The lookup table to plan from: `table` (a LookupTable or a path), else every table of
    this device found where Controller.auto looks ($SNRT_LOOKUP_TABLES, the per-user data
    directory, ./lookup_tables, the shipped ones), merged (the newer measurement of an entry
    wins, snrt-lut merge; `first_dir` is looked in first); None when there is none."""
    import os
    from pathlib import Path

    from .lookup_table import LookupTable, LookupTableError
    from .lut_cli import merge
    from .paths import table_dirs

    if isinstance(table, LookupTable):
        return table
    if table is not None:
        return LookupTable.load(table)
    dirs = table_dirs(first_dir or os.environ.get("SNRT_LOOKUP_TABLES") or None)
    dirs.insert(len(dirs) - 1, Path("lookup_tables"))
    found, seen = [], set()
    for d in dirs:
        p = LookupTable.path_for(d)
        if p.is_file() and p.resolve() not in seen:
            seen.add(p.resolve())
            try:
                found.append(LookupTable.load(p))
            except LookupTableError as e:
                log.warning("%s", e)
    if not found:
        return None
    return next(iter(merge(found).values()))


def _missing(bundle, variant: str, backend: str, precision: str) -> str | None:
    v = bundle.variant(variant)
    if backend == "tflite":
        if precision not in v.exports.get("tflite", {}):
            return (f"no TFLite {precision} file for '{variant}' in {bundle.path} (export it: "
                    f"snrt-export tflite {bundle.path} --precisions {precision} --variants "
                    f"'{variant}')")
        return None
    if precision != "fp32" and precision not in bundle.precisions:
        return (f"no {precision} graphs in {bundle.path} (add them: snrt-export quantize "
                f"{bundle.path} --precision {precision})")
    return None


def plan_auto(bundle, table, *, threads: int = 1, budget_mb: float | None = None,
              backends: list[str] | None = None, precisions: list[str] | None = None,
              variants: list[str] | None = None) -> AutoPlan:
    """The entries a backend="auto" Runtime keeps ready (module docstring).

    table: a LookupTable of this device. backends: those to consider (default: every backend
    installed here, snrt.backends.available_backends). precisions / variants: restrict the
    options (default: every one the table holds / every variant)."""
    from .backends import available_backends
    from .lookup_table import bundle_key

    if budget_mb is not None and not budget_mb > 0:
        raise SnrtError(f"memory_budget_mb must be a positive number of MB, got {budget_mb!r}")
    installed = available_backends()
    if backends is None:
        backends = [b for b in AUTO_BACKENDS if installed.get(b)]
    for b in backends:
        if b not in installed:
            raise SnrtError(f"unknown backend '{b}' for backend='auto'; known: "
                            f"{list(AUTO_BACKENDS)}")
    key = bundle_key(bundle)
    wanted = None if variants is None else {bundle.variant(k).id for k in variants}
    options, skipped = [], []
    from .lut_graphs import remeasure_command, select_current, warn_stale

    for b in backends:
        # entries measured on graphs the bundle no longer has are stale: ignored (warned)
        current, stale = select_current(table, bundle, b, None, threads)
        warn_stale(stale, bundle, "backend='auto'")

        def wanted_entry(e):
            return (precisions is None or e.precision in precisions) and (
                wanted is None or e.variant in wanted)

        es = [e for e in current if wanted_entry(e)]
        if not es:
            old = [e for e in stale if wanted_entry(e)]
            why = (f" ({len(old)} stale: measured on other graphs; measure them again: "
                   f"{remeasure_command(bundle, b, old[0].precision, threads)})" if old else
                   f": profile it (snrt-profile {bundle.path} --backend {b} --threads "
                   f"{threads})")
            raise SnrtError(
                f"lookup table {table.device.id} has no entries for backend '{b}' "
                f"({key}, threads={threads}{f', precisions {precisions}' if precisions else ''})"
                f"{why}, or leave it out (Runtime(backend='auto', auto_backends=[...]))")
        for e in es:
            try:
                acc = option_accuracy(bundle, e.variant, b, e.precision)
            except SnrtError:  # a variant the bundle no longer lists
                skipped.append(f"{e.variant} {b}/{e.precision}: not in the bundle")
                continue
            if acc is None:
                skipped.append(f"{e.variant} {b}/{e.precision}: no measured top-1 in "
                               f"{e.precision}")
                continue
            options.append(AutoEntry(e.variant, b, e.precision, e.p50_ms, acc,
                                     estimate_mb(bundle, e.variant, b, e.precision),
                                     _missing(bundle, e.variant, b, e.precision)))
    if skipped:
        log.info("auto: %d options left out (%s%s)", len(skipped), "; ".join(skipped[:3]),
                 "; ..." if len(skipped) > 3 else "")
    if not options:
        raise SnrtError(f"lookup table {table.device.id}: no entry of {key} at threads="
                        f"{threads} has a measured accuracy in its precision ({skipped[:2]})")
    front = pareto_front(options)  # AutoEntry has p50_ms and accuracy, as Entry
    missing = [e for e in front if e.missing]
    if missing:
        more = f" (and {len(missing) - 1} more front entries)" if len(missing) > 1 else ""
        raise BundleError(
            f"backend='auto': the lookup table's front needs {missing[0].variant} on "
            f"{missing[0].backend}/{missing[0].precision}, but there is {missing[0].missing}"
            f"{more}; or restrict what auto considers (auto_backends=[...], precisions=[...])")
    return _fit(front, options, budget_mb, skipped)


def _fit(front: list[AutoEntry], options: list[AutoEntry], budget_mb: float | None,
         skipped: list[str]) -> AutoPlan:
    if budget_mb is None:
        return AutoPlan(list(front), front, None, skipped=skipped)
    front_ids = {e.variant for e in front}
    fp32 = [e for e in options if e.precision == "fp32" and e.variant in front_ids
            and not e.missing]
    def alone(e: AutoEntry) -> float:  # an entry with its engine's and the Runtime's cost
        return RUNTIME_MB + e.est_mb + ENGINE_MB.get(e.backend, 0.0)

    if fp32:
        first = min(fp32, key=lambda e: e.p50_ms)
        if alone(first) > budget_mb:
            cheapest = min(fp32, key=alone)
            raise SnrtError(
                f"memory_budget_mb={budget_mb:g} cannot hold even the fastest fp32 entry, "
                f"{first.variant} on {first.backend} (est {alone(first):.1f} MB with the "
                f"engine's {ENGINE_MB.get(first.backend, 0.0):g} MB; the cheapest fp32 entry, "
                f"{cheapest.variant} on {cheapest.backend}, needs {alone(cheapest):.1f} MB): "
                "raise the budget")
    order = [front[0]] + sorted(front[1:], key=lambda e: (-e.accuracy, e.p50_ms))
    kept, replaced, dropped, used = [], [], [], RUNTIME_MB
    for e in order:
        # the same variant's other options, fastest first (front entries have their own turn)
        alts = [e] + sorted((o for o in options if o.variant == e.variant and o not in front
                             and not o.missing and o not in kept), key=lambda o: o.p50_ms)
        def cost(o: AutoEntry) -> float:
            if any(k.backend == o.backend for k in kept):
                return o.est_mb
            return o.est_mb + ENGINE_MB.get(o.backend, 0.0)

        pick = next((o for o in alts if used + cost(o) <= budget_mb + 1e-9), None)
        if pick is None:
            dropped.append(e)
            continue
        used += cost(pick)
        kept.append(pick)
        if pick is not e:
            replaced.append((e, pick))
    if not any(e.precision == "fp32" for e in kept):
        f = min(fp32, key=lambda e: e.p50_ms) if fp32 else None
        raise SnrtError(f"memory_budget_mb={budget_mb:g} holds no fp32 entry"
                        + (f" (the fastest, {f.variant} on {f.backend}, needs "
                           f"{f.est_mb:.1f} MB)" if f else "") + ": raise the budget")
    kept.sort(key=lambda e: (e.p50_ms, -e.accuracy))
    return AutoPlan(kept, front, budget_mb, replaced, dropped, skipped)
