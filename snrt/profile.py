"""snrt-profile: measure a bundle's variants on this device into a lookup table.

    snrt-profile BUNDLE [--backend onnxruntime,tflite] [--threads 1,2] [--precision fp32]
                 [--variants ID ... | --sample 20%] [--runs 20 --warmup 3 --min-seconds 1]
                 [--out lookup_tables/] [--predict] [--plot pareto.png]

Protocol per variant x backend x precision x threads (as TFLite's benchmark_model and
onnxruntime_perf_test): the variant is made ready exactly as snrt.Runtime does (load, warm up its
sessions: `load_ms`), one first inference (`first_run_ms`), `--warmup` untimed runs, then timed
runs until at least `--runs` runs and `--min-seconds` have passed (capped by `--max-seconds`):
count, mean, std, min, p50, p90, p99, max. Each variant runs in a fresh worker process, so load
time and peak RSS are its own and a crash cannot take the profile down. Conditions during the
run (CPU load of other processes, frequency, temperature, battery) come from snrt.monitor.

Results are written after every variant (atomically): Ctrl-C leaves a valid table, and a rerun
resumes where it stopped (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, VariantInfo
from .errors import SnrtError
from .lookup_table import Entry, LookupTable, LookupTableError, bundle_key
from .progress import Progress

log = logging.getLogger("snrt.profile")


@dataclass(frozen=True)
class Protocol:
    runs: int = 20
    warmup: int = 3
    min_seconds: float = 1.0
    max_seconds: float = 30.0

    def __post_init__(self):
        if self.runs < 1 or self.warmup < 0 or self.min_seconds < 0 or self.max_seconds <= 0:
            raise SnrtError("runs >= 1, warmup >= 0, min-seconds >= 0, max-seconds > 0")


def _stats(lat_ms: list[float]) -> dict:
    a = np.asarray(lat_ms, dtype=np.float64)
    return {"count": int(a.size), "mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "min_ms": float(a.min()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def measure_variant(bundle_path: str, variant: str, backend: str, precision: str, threads: int,
                    protocol: Protocol, placement: str | None = None) -> dict:
    """Measure one variant in this process (the worker side). Returns the Entry fields."""
    from .monitor import SystemMonitor
    from .runtime import Runtime

    monitor = SystemMonitor()
    opts = {"precision": precision}
    if backend == "onnxruntime" and placement:
        opts["placement"] = placement
    t0 = time.perf_counter()
    rt = Runtime(bundle_path, backend=backend, threads=threads, variants=[variant],
                 initial=variant, verify=False, **opts)
    load_ms = (time.perf_counter() - t0) * 1e3
    shape = [1 if isinstance(d, str) else d for d in rt.bundle.manifest.input["shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    start_state = monitor.read()
    first = rt.run(x).latency_ms
    for _ in range(protocol.warmup):
        rt.run(x)
    lat: list[float] = []
    t_start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t_start
        if elapsed >= protocol.max_seconds or (len(lat) >= protocol.runs
                                                and elapsed >= protocol.min_seconds):
            break
        lat.append(rt.run(x).latency_ms)
    end = monitor.read()
    info = rt.stats()["backend"]
    rt.close()
    monitor.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {**_stats(lat), "first_run_ms": first, "load_ms": load_ms,
            "peak_rss_mb": peak_kb / 1024, "warmup": protocol.warmup,
            "placement": info.get("placement"), "backend_version": info.get("version"),
            "conditions": {"cpu_load_pct_start": start_state.cpu_load_pct,
                           "cpu_load_pct": end.cpu_load_pct, "cpu_freq_mhz": end.cpu_freq_mhz,
                           "temperature_c": end.temperature_c,
                           "thermal_status": end.thermal_status, "battery_pct": end.battery_pct,
                           "plugged": end.plugged, "power_saving": end.power_saving}}


def sample_variants(variants: list[VariantInfo], spec: str, seed: int = 0) -> list[VariantInfo]:
    """A subset to measure: '20%' or a count. Anchors always; the rest shared evenly between the
    stitch routes (Ti>S, S>B, ...) and, within each, spread evenly over the split positions
    (j, k), so the latency predictor sees every anchor's per-block cost from many mixes. (A
    spread over FLOPs alone picked near-collinear variants: on DeiT-Ti/S/B, 55% of the rest
    predicted within ±5% against 100% this way; benchmarks/latency_predict_bench.py.)
    Returned in bundle order."""
    n_total = len(variants)
    try:
        n = math.ceil(n_total * float(spec[:-1]) / 100) if spec.endswith("%") else int(spec)
    except ValueError:
        raise SnrtError(f"--sample {spec!r}: give a percentage like 20% or a count") from None
    n = min(max(n, 1), n_total)
    chosen = {v.id for v in variants if v.is_anchor}
    groups: dict[tuple, list[VariantInfo]] = {}
    for v in variants:
        if v.id not in chosen:
            route = tuple((s["front"], s["end"]) for s in v.stitches)
            groups.setdefault(route, []).append(v)
    # share the rest between the routes in proportion to their sizes: one at a time to the
    # route least filled so far (ties: the larger route); a route gets at most its size
    left = dict.fromkeys(groups, 0)
    for _ in range(max(0, n - len(chosen))):
        open_routes = [g for g in groups if left[g] < len(groups[g])]
        if not open_routes:
            break
        left[min(open_routes, key=lambda g: (left[g] / len(groups[g]), -len(groups[g])))] += 1
    for g, m in left.items():
        if m:
            members = sorted(groups[g], key=lambda v: [(s["front_block"], s["end_block"])
                                                       for s in v.stitches])
            idx = np.unique(np.linspace(0, len(members) - 1, m).round().astype(int))
            chosen |= {members[i].id for i in idx}
    return [v for v in variants if v.id in chosen]


class Profiler:
    """Plans and runs the measurements, one worker process per variant, saving as it goes."""

    def __init__(self, bundle_path: str | os.PathLike, table_path: str | os.PathLike, *,
                 protocol: Protocol = Protocol(), isolate: bool = True):
        self.bundle = Bundle.open(bundle_path)  # verify hashes once, here
        self.table_path = Path(table_path)
        self.protocol = protocol
        self.isolate = isolate
        self.key = bundle_key(self.bundle)
        if self.table_path.exists():
            self.table = LookupTable.load(self.table_path)
        else:
            self.table = LookupTable.new()
        self.table.bundles[self.key] = {"name": self.bundle.name,
                                        "weights_sha256": self.bundle.manifest.files[
                                            "graphs/weights.bin"]["sha256"],
                                        "variants": len(self.bundle.variants),
                                        "path": str(self.bundle.path)}
        # what the runtime will use for the full ready set (pieces vs graphs)
        from .backends.ort import AUTO_GRAPHS_MAX_BYTES
        graph_bytes = sum(v.params for v in self.bundle.variants) * 4
        self.placement = "graphs" if graph_bytes <= AUTO_GRAPHS_MAX_BYTES else "pieces"

    def plan(self, variants: list[VariantInfo], backends: list[str], precisions: list[str],
             threads: list[int], fresh: bool = False) -> list[tuple]:
        items = []
        for backend in backends:
            for precision in precisions:
                if backend == "onnxruntime" and precision != "fp32":
                    continue
                for t in threads:
                    for v in variants:
                        done = self.table.get(self.key, v.id, backend, precision, t)
                        if done and not done.predicted and done.error is None and not fresh:
                            continue
                        items.append((backend, precision, t, v))
        return items

    def run(self, items: list[tuple], progress: bool = True) -> int:
        """Measure `items`; returns how many were measured. Saves after each one."""
        n = 0
        with Progress(len(items), "profile", enabled=progress) as bar:
            for backend, precision, threads, v in items:
                fields = self._measure(backend, precision, threads, v)
                entry = Entry(bundle=self.key, variant=v.id, cfg_id=v.cfg_id, backend=backend,
                              precision=precision, threads=threads, flops=v.flops,
                              params=v.params, accuracy=v.top1,
                              timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(
                                  timespec="seconds"),
                              **{"p50_ms": float("nan"), "mean_ms": float("nan"), **fields})
                if entry.error:
                    log.warning("%s %s/%s/%dt failed: %s", v.id, backend, precision, threads,
                                entry.error)
                    entry.p50_ms = entry.mean_ms = 0.0
                self.table.put(entry)
                self.table.save(self.table_path)
                n += 1
                bar.update(note=f"{v.id} {entry.p50_ms:.2f} ms" if not entry.error else v.id)
        return n

    def _measure(self, backend, precision, threads, v) -> dict:
        args = {"bundle": str(self.bundle.path), "variant": v.id, "backend": backend,
                "precision": precision, "threads": threads, "placement": self.placement,
                "protocol": vars(self.protocol)}
        if not self.isolate:
            try:
                return measure_variant(args["bundle"], v.id, backend, precision, threads,
                                       self.protocol, self.placement)
            except SnrtError as e:
                return {"error": str(e)}
        timeout = self.protocol.max_seconds * 2 + 600
        try:
            out = subprocess.run([sys.executable, "-m", "snrt.profile", "--worker",
                                  json.dumps(args)], capture_output=True, text=True,
                                 timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {timeout:.0f}s"}
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"worker exited with {out.returncode}: {tail[:300]}"}
        return json.loads(lines[-1])


def _worker(spec: str) -> int:
    a = json.loads(spec)
    try:
        res = measure_variant(a["bundle"], a["variant"], a["backend"], a["precision"],
                              a["threads"], Protocol(**a["protocol"]), a.get("placement"))
    except SnrtError as e:
        res = {"error": str(e)}
    print(json.dumps(res))
    return 0


def _csv(s: str, cast=str) -> list:
    try:
        return [cast(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list {s!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snrt-profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory (NAME.snrt), or 'default' for the bundled "
                                  "default family")
    p.add_argument("--backend", type=_csv, default=["onnxruntime"],
                   help="comma list: onnxruntime,tflite (default onnxruntime)")
    p.add_argument("--threads", type=lambda s: _csv(s, int), default=[1],
                   help="comma list of intra-op thread counts (default 1)")
    p.add_argument("--precision", type=_csv, default=None,
                   help="comma list: fp32,fp16,int8 (tflite); default fp32")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--variants", nargs="+", metavar="ID", help="variant ids or cfg_ids")
    sel.add_argument("--sample", metavar="N|P%",
                     help="measure anchors plus variants spread over FLOPs, e.g. 20%% or 14")
    p.add_argument("--runs", type=int, default=20, help="minimum timed runs (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="minimum timed seconds per variant (default 1)")
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="cap on timed seconds per variant (default 30)")
    p.add_argument("--out", default="lookup_tables",
                   help="directory for <device-id>.json, or a .json path (default "
                        "lookup_tables/)")
    p.add_argument("--predict", action="store_true",
                   help="predict the variants not measured (default with --sample)")
    p.add_argument("--plot", metavar="PNG", help="write the accuracy-latency Pareto plot")
    p.add_argument("--fresh", action="store_true", help="re-measure entries already present")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster start, no crash isolation)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def resolve_bundle(arg: str) -> Path:
    if arg == "default":
        from . import default_bundle

        return default_bundle()
    return Path(arg)


def summary_lines(table: LookupTable, key: str, variant_ids: list[str]) -> list[str]:
    """Per backend x precision x threads over `variant_ids`: how many were measured, their
    median p50, and the median per-variant ratio to onnxruntime fp32 at the same threads (the
    ORT-vs-TFLite comparison per precision)."""
    ids = set(variant_ids)
    rows: dict[tuple, dict[str, float]] = {}
    for e in table.entries:
        if e.bundle == key and e.variant in ids and not e.predicted and e.error is None:
            rows.setdefault((e.backend, e.precision, e.threads), {})[e.variant] = e.p50_ms
    if not rows:
        return []
    out = [f"{'backend':12s} {'prec':5s} {'threads':>7s} {'variants':>8s} {'median p50 ms':>13s} "
           f"{'vs onnxruntime fp32':>19s}"]
    for (backend, precision, threads), p50 in sorted(rows.items()):
        ref = rows.get(("onnxruntime", "fp32", threads), {})
        common = [v for v in p50 if v in ref]
        ratio = (f"{np.median([p50[v] / ref[v] for v in common]):.2f}x ({len(common)})"
                 if common else "-")
        out.append(f"{backend:12s} {precision:5s} {threads:7d} {len(p50):8d} "
                   f"{np.median(list(p50.values())):13.3f} {ratio:>19s}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except (SnrtError, LookupTableError) as e:
        log.error("error: %s", e)
        return 1


def _main(args) -> int:
    t0 = time.monotonic()
    protocol = Protocol(args.runs, args.warmup, args.min_seconds, args.max_seconds)
    out = Path(args.out)
    bundle_path = resolve_bundle(args.bundle)
    if out.suffix != ".json":
        from .device import describe_device

        out = LookupTable.path_for(out, describe_device())
    prof = Profiler(bundle_path, out, protocol=protocol, isolate=not args.in_process)
    variants = prof.bundle.variants
    if args.variants:
        variants = [prof.bundle.variant(k) for k in args.variants]
    elif args.sample:
        variants = sample_variants(variants, args.sample)
    precisions = args.precision or ["fp32"]
    items = prof.plan(variants, args.backend, precisions, args.threads, fresh=args.fresh)
    everything = prof.plan(variants, args.backend, precisions, args.threads, fresh=True)
    skipped = len(everything) - len(items)
    log.info("profiling %d of %d variants x %s x %s x threads %s on %s -> %s (%d already "
             "measured)", len(variants), len(prof.bundle.variants), args.backend, precisions,
             args.threads, prof.table.device.id, out, max(skipped, 0))
    try:
        prof.run(items, progress=not args.quiet)
    except KeyboardInterrupt:
        log.warning("interrupted: %s holds every variant measured so far; rerun the same "
                    "command to resume", out)
        return 130
    if args.predict or args.sample:
        from .latency_model import predict_table

        n = predict_table(prof.table, prof.bundle)
        prof.table.save(out)
        log.info("predicted %d entries", n)
    for line in summary_lines(prof.table, prof.key, [v.id for v in variants]):
        log.info("%s", line)
    if args.plot:
        from .plots import plot_pareto

        plot_pareto(prof.table, args.plot, bundle=prof.key)
        log.info("wrote %s", args.plot)
    log.info("wrote %s (%d entries) in %.0fs", out, len(prof.table.entries),
             time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
