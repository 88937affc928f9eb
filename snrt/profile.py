"""snrt-profile: measure a bundle's variants on this device into a lookup table.

    snrt-profile BUNDLE [--backend onnxruntime,tflite] [--threads 1,2] [--precision fp32]
                 [--variants ID ... | --sample 20%] [--tasks NAME,...|all]
                 [--runs 20 --warmup 3 --min-seconds 1]
                 [--rounds K] [--out lookup_tables/] [--predict] [--plot pareto.png]

Two protocols, per backend x precision x threads:

Isolated (the default, `--rounds 0`; as TFLite's benchmark_model and onnxruntime_perf_test):
one variant after another, each in a fresh worker process. The variant is made ready exactly
as snrt.Runtime does (load, warm up its sessions: `load_ms`), one first inference
(`first_run_ms`), `--warmup` untimed runs, then timed runs until at least `--runs` runs and
`--min-seconds` have passed (capped by `--max-seconds`): count, mean, std, min, p50, p90, p99,
max, and `quiet_ms` = their p10. Load time and peak RSS are the variant's own and a crash
cannot take the profile down; but each variant is measured at another moment (and in another
process), so host drift (neighbours on a shared machine, CPU frequency) lands on some variants
and not on others.

Interleaved (`--rounds K`): all selected variants are made ready in one worker process (one
snrt.Runtime; pieces are shared, as at run time), then measured in K rounds; each round visits
every variant once in a freshly shuffled order with a short burst (1 untimed run, then timed
runs until ceil(runs/K) runs and min-seconds/K have passed). Drift then hits every variant
alike (common mode) instead of some and not others. p50 is the lowest of the K burst medians,
the variant's median when the machine is quiet (neighbours only ever slow a run down; the
median over rounds, which follows how busy the machine was, is kept as `p50_median_ms`),
p90/p99 the median of the burst p90/p99, mean and std are pooled over all timed runs, min/max
overall. `quiet_ms` is the lowest burst p10: the latency when the machine is quiet, and of the
statistics tried the one two profiles of the same bundle reproduce best on a shared host
(chosen on one pair of default-family profiles, checked on three more pairs; README); the
latency predictor's benchmark takes it as the truth. The summary printed at the end gives each
profile's split-half repeatability (odd against even rounds,
`snrt.profile_cli.split_half_repeatability`): a low figure means the machine was busy and the
profile is worth repeating. The burst statistics are kept in the entry
(`conditions.interleaved`). `load_ms` is the time to add the variant to the runtime holding
the variants made ready before it (shared pieces are not loaded
twice), `first_run_ms` its first inference; peak RSS is the whole worker's
(`conditions.interleaved.worker_peak_rss_mb`), not per variant, so `peak_rss_mb` is left empty.
Use the isolated protocol for per-variant load time and memory.

`--tasks` also measures each selected variant with each named task of the bundle (its tuners
and head, snrt-export task), as one more measurement alike: entries with `task` set, keyed by
(variant, task), accuracy from the task's record (`tasks[].accuracy`); a variant the task was
not trained for is skipped. The backbone's own head is measured too, as without `--tasks`.
Each measurement loads only what it runs (`Runtime(tasks=[])` or `tasks=[name]`).

Results are written atomically after every variant (isolated) or every round (interleaved,
with running statistics): Ctrl-C leaves a valid table, and a rerun of the same command resumes
(interleaved: by rounds, an interrupted round is measured again; `--fresh` starts over).
Every entry records the graphs it was measured on (`graphs`, snrt.lut_graphs); an entry whose
graphs the bundle no longer has (`snrt-export regraph`, a TFLite re-export) is stale and is
measured again like a missing one (the run says how many).
Conditions during the run (CPU load of other processes, frequency, temperature, battery) come
from snrt.monitor.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, VariantInfo
from .errors import SnrtError
from .lookup_table import Entry, LookupTable, bundle_key
from .lut_graphs import graphs_digest, stale_reason
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
            "min_ms": float(a.min()), "p10_ms": float(np.percentile(a, 10)),
            "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def _runtime_opts(backend: str, precision: str, placement: str | None) -> dict:
    opts = {"precision": precision}
    if backend == "onnxruntime" and placement:
        opts["placement"] = placement
    return opts


def _probe_input(rt) -> np.ndarray:
    """The fixed input every measurement uses (batch 1, seeded)."""
    shape = [1 if isinstance(d, str) else d for d in rt.bundle.manifest.input["shape"]]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _timed_runs(rt, x, runs: int, min_s: float, cap_s: float, variant: str | None = None,
                task: str | bool | None = None) -> list[float]:
    """Timed runs until at least `runs` runs and `min_s` seconds, capped at `cap_s` seconds."""
    lat: list[float] = []
    t_start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t_start
        if elapsed >= cap_s or (len(lat) >= runs and elapsed >= min_s):
            return lat
        lat.append(rt.run(x, variant=variant, task=task).latency_ms)


def _conditions(state) -> dict:
    return {"cpu_load_pct": state.cpu_load_pct, "cpu_freq_mhz": state.cpu_freq_mhz,
            "temperature_c": state.temperature_c, "thermal_status": state.thermal_status,
            "battery_pct": state.battery_pct, "plugged": state.plugged,
            "power_saving": state.power_saving}


def measure_variant(bundle_path: str, variant: str, backend: str, precision: str, threads: int,
                    protocol: Protocol, placement: str | None = None,
                    task: str | None = None) -> dict:
    """Measure one variant (with `task`'s tuners and head, or the backbone's own head) in this
    process (the worker side). Returns the Entry fields."""
    from .monitor import SystemMonitor
    from .runtime import Runtime

    monitor = SystemMonitor()
    t0 = time.perf_counter()
    rt = Runtime(bundle_path, backend=backend, threads=threads, variants=[variant],
                 initial=variant, verify=False, tasks=[] if task is None else [task],
                 **_runtime_opts(backend, precision, placement))
    if task is not None:
        rt.switch(task=task, reason="profile")
    load_ms = (time.perf_counter() - t0) * 1e3
    x = _probe_input(rt)
    start_state = monitor.read()
    first = rt.run(x).latency_ms
    for _ in range(protocol.warmup):
        rt.run(x)
    lat = _timed_runs(rt, x, protocol.runs, protocol.min_seconds, protocol.max_seconds)
    end = monitor.read()
    info = rt.stats()["backend"]
    rt.close()
    monitor.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    stats = _stats(lat)
    stats["quiet_ms"] = stats.pop("p10_ms")  # one run set: its p10
    return {**stats, "first_run_ms": first, "load_ms": load_ms,
            "peak_rss_mb": peak_kb / 1024, "warmup": protocol.warmup,
            "placement": info.get("placement"), "backend_version": info.get("version"),
            "conditions": {"cpu_load_pct_start": start_state.cpu_load_pct,
                           **_conditions(end)}}


def unit_key(variant: str, task: str | None = None) -> str:
    """What one measurement is, as a string (the interleaved worker's keys): the variant id,
    or `<variant>\t<task>` (a tab is in no id or task name)."""
    return variant if task is None else f"{variant}\t{task}"


def split_unit(key: str) -> tuple[str, str | None]:
    vid, _, task = key.partition("\t")
    return vid, task or None


ROUND_KEYS = ("p10", "p50", "p90", "p99", "mean", "std", "count")  # per-round burst stats kept
DROP_WHEN_COMPLETE = ("p90", "p99", "mean", "std", "count")  # ... until the target is reached


def measure_interleaved(bundle_path: str, needs: dict[str, int], backend: str, precision: str,
                        threads: int, protocol: Protocol, rounds: int, first_round: int = 0,
                        placement: str | None = None):
    """Interleaved protocol, worker side: a generator of events (dicts, JSON-able).

    `needs`: {unit_key(variant, task): rounds still to measure}. All are made ready in one
    Runtime ("ready" or "error" per key), then round r = first_round, first_round + 1, ...
    visits the keys that still need rounds in an order shuffled with seed r: one "burst" event
    per key, then a "round" event (the round is complete). Last, "done". Events name the key
    as "variant"."""
    from .monitor import SystemMonitor
    from .runtime import Runtime

    monitor = SystemMonitor()
    opts = _runtime_opts(backend, precision, placement)
    keys = list(needs)
    units = {k: split_unit(k) for k in keys}
    ids = list(dict.fromkeys(vid for vid, _ in units.values()))
    tasks = list(dict.fromkeys(t for _, t in units.values() if t is not None))
    head = {k: (t if t is not None else False) for k, (_, t) in units.items()}
    rt = None
    x = None
    ok: list[str] = []
    for key in keys:
        vid = units[key][0]
        t0 = time.perf_counter()
        try:
            if rt is None:
                rt = Runtime(bundle_path, backend=backend, threads=threads, variants=ids,
                             initial=vid, lazy=True, verify=False, tasks=tasks, **opts)
                x = _probe_input(rt)
            rt.switch(vid, reason="profile", task=head[key])
            load_ms = (time.perf_counter() - t0) * 1e3
            first = rt.run(x, variant=vid, task=head[key]).latency_ms
            for _ in range(protocol.warmup):
                rt.run(x, variant=vid, task=head[key])
        except SnrtError as e:
            yield {"event": "error", "variant": key, "error": str(e)}
            continue
        ok.append(key)
        yield {"event": "ready", "variant": key, "load_ms": load_ms, "first_run_ms": first}
    if rt is not None:
        info = rt.stats()["backend"]
        yield {"event": "backend", "placement": info.get("placement"),
               "backend_version": info.get("version")}
    burst_runs = max(1, math.ceil(protocol.runs / rounds))
    burst_s = protocol.min_seconds / rounds
    cap_s = protocol.max_seconds / rounds
    for i in range(max((needs[v] for v in ok), default=0)):
        r = first_round + i
        order = [v for v in ok if needs[v] > i]
        np.random.default_rng([0x5A27, r]).shuffle(order)
        for key in order:
            vid = units[key][0]
            rt.run(x, variant=vid, task=head[key])  # untimed: back into cache after the others
            lat = _timed_runs(rt, x, burst_runs, burst_s, cap_s, variant=vid, task=head[key])
            yield {"event": "burst", "variant": key, "round": r, **_stats(lat)}
        yield {"event": "round", "round": r, "conditions": _conditions(monitor.read())}
    if rt is not None:
        rt.close()
    monitor.close()
    yield {"event": "done", "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
           / 1024}


def interleaved_fields(rounds_stats: dict[str, list], min_ms: float, max_ms: float) -> dict:
    """Entry statistics from per-round burst statistics ({p50: [...], ..., count: [...]}).

    p50_ms is the median of the quietest burst (the lowest of the per-round burst medians):
    on a shared machine the slowdown from neighbours is one-sided and comes and goes within
    seconds, so the lowest burst median estimates the variant's median latency when the
    machine is quiet, which two profiles reproduce; the median over rounds (kept as
    `p50_median_ms`) follows how busy the machine was (benchmarks/latency_predict_bench.py,
    README). quiet_ms is the lowest burst p10 (module docstring), when every round has one.
    p90/p99 are the median over rounds of the burst p90/p99 (typical tails), mean and
    std are pooled over every timed run, min/max overall."""
    c = np.asarray(rounds_stats["count"], dtype=np.float64)
    mean = np.asarray(rounds_stats["mean"], dtype=np.float64)
    std = np.asarray(rounds_stats["std"], dtype=np.float64)
    n = c.sum()
    pooled_mean = float((c * mean).sum() / n)
    pooled_var = float((c * (std ** 2 + mean ** 2)).sum() / n - pooled_mean ** 2)
    return {"count": int(n), "mean_ms": pooled_mean, "std_ms": math.sqrt(max(pooled_var, 0.0)),
            "min_ms": min_ms, "max_ms": max_ms,
            "p50_ms": float(np.min(rounds_stats["p50"])),
            "quiet_ms": (float(np.min(p10)) if (p10 := rounds_stats.get("p10"))
                         and len(p10) == len(rounds_stats["p50"]) else None),
            "p90_ms": float(np.median(rounds_stats["p90"])),
            "p99_ms": float(np.median(rounds_stats["p99"]))}


def sample_variants(variants: list[VariantInfo], spec: str, seed: int = 0) -> list[VariantInfo]:
    """A subset to measure: '20%' or a count. Anchors always; the rest shared evenly between the
    stitch routes (Ti>S, S>B, ...) and, within each, spread evenly over the split positions
    (j, k), so the latency predictor sees every anchor's per-block cost from many mixes. (A
    spread over FLOPs alone picked near-collinear variants: on DeiT-Ti/S/B, 55% of the rest
    predicted within ±5% against 100% this way; benchmarks/latency_predict_bench.py.)
    Returned in bundle order."""
    n_total = len(variants)
    try:
        pct = float(spec[:-1]) if spec.endswith("%") else None
        n = math.ceil(n_total * pct / 100) if pct is not None else int(spec)
    except ValueError:
        raise SnrtError(f"--sample {spec!r}: give a percentage like 20% or a count") from None
    if (pct is not None and not 0 < pct <= 100) or (pct is None and n < 1):
        raise SnrtError(f"--sample {spec!r}: give a percentage more than 0% and at most 100%, "
                        "or a count of at least 1")
    n = min(n, n_total)
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
    """Plans and runs the measurements (isolated: one worker process per variant; interleaved:
    one worker per backend x precision x threads), saving as it goes."""

    def __init__(self, bundle_path: str | os.PathLike, table_path: str | os.PathLike, *,
                 protocol: Protocol = Protocol(), isolate: bool = True):
        from .paths import is_shipped

        if is_shipped(table_path):
            raise SnrtError(f"{table_path}: the lookup tables shipped with snrt are read-only; "
                            "profile into the per-user data directory (snrt.paths."
                            "user_tables_dir()) or another directory")
        self.bundle = Bundle.open(bundle_path)  # verify hashes once, here
        self.table_path = Path(table_path)
        self.protocol = protocol
        self.isolate = isolate
        self.key = bundle_key(self.bundle)
        if self.table_path.exists():
            self.table = LookupTable.load(self.table_path)
        else:
            self.table = LookupTable.new()
        sha = self.bundle.manifest.files["graphs/weights.bin"]["sha256"]
        old = self.table.bundles.get(self.key, {})
        rec = {"name": self.bundle.name, "weights_sha256": sha,
               "variants": len(self.bundle.variants), "path": str(self.bundle.path)}
        if "pieces" in old and old.get("weights_sha256", sha) == sha:
            rec["pieces"] = old["pieces"]  # snrt-profile --pieces earlier (snrt.chain_latency)
        self.table.bundles[self.key] = rec
        # what the runtime will use for the full ready set (pieces vs graphs)
        from .backends.ort import AUTO_GRAPHS_MAX_BYTES
        graph_bytes = sum(v.params for v in self.bundle.variants) * 4
        self.placement = "graphs" if graph_bytes <= AUTO_GRAPHS_MAX_BYTES else "pieces"

    def task_names(self, spec: list[str] | None) -> list[str]:
        """--tasks: names of the bundle's tasks (['all']: every one); SnrtError naming the
        known ones for an unknown name or a bundle without tasks."""
        if not spec:
            return []
        known = [t.name for t in self.bundle.tasks]
        if spec == ["all"]:
            if not known:
                raise SnrtError(f"--tasks all: {self.bundle.path.name} has no tasks (add one "
                                "with snrt-export task)")
            return known
        bad = [n for n in spec if n not in known]
        if bad:
            raise SnrtError(f"--tasks: unknown task(s) {bad}; {self.bundle.path.name} has "
                            f"{', '.join(known) or 'none'} (or give 'all')")
        return list(dict.fromkeys(spec))

    def is_stale(self, entry: Entry) -> bool:
        """Whether `entry` was measured on other graphs than the bundle's now (or may have
        been: snrt.lut_graphs.stale_reason); such entries are measured again."""
        return entry.error is None and not entry.predicted and \
            stale_reason(entry, self.bundle) is not None

    def stale_entries(self, items: list[tuple]) -> list[Entry]:
        """The stale entries among plan()'s or plan_interleaved()'s items."""
        out = []
        for backend, precision, t, task, v, *_ in items:
            e = self.table.get(self.key, v.id, backend, precision, t, task)
            if e is not None and self.is_stale(e):
                out.append(e)
        return out

    def plan(self, variants: list[VariantInfo], backends: list[str], precisions: list[str],
             threads: list[int], fresh: bool = False, tasks: list[str] = ()
             ) -> list[tuple]:
        """(backend, precision, threads, task, variant) to measure: every variant with the
        backbone's head (task None), then with each of `tasks` it was trained for; those
        already measured are left out unless `fresh` (or stale: measured on other graphs
        than the bundle's now, snrt.lut_graphs)."""
        units = [(None, v) for v in variants]
        for name in tasks:
            runs_on = set(self.bundle.task(name).variants)
            units += [(name, v) for v in variants if v.id in runs_on]
        items = []
        for backend in backends:
            for precision in precisions:
                if backend == "onnxruntime" and precision != "fp32":
                    continue
                for t in threads:
                    for task, v in units:
                        done = self.table.get(self.key, v.id, backend, precision, t, task)
                        if done and not done.predicted and done.error is None and not fresh \
                                and not self.is_stale(done):
                            continue
                        items.append((backend, precision, t, task, v))
        return items

    def run(self, items: list[tuple], progress: bool = True) -> int:
        """Measure `items`; returns how many were measured. Saves after each one."""
        n = 0
        with Progress(len(items), "profile", enabled=progress) as bar:
            for backend, precision, threads, task, v in items:
                fields = self._measure(backend, precision, threads, v, task)
                entry = self._entry(v, backend, precision, threads, task=task,
                                    **{"p50_ms": float("nan"), "mean_ms": float("nan"),
                                       **fields})
                name = v.id if task is None else f"{v.id} task={task}"
                if entry.error:
                    log.warning("%s %s/%s/%dt failed: %s", name, backend, precision, threads,
                                entry.error)
                    entry.p50_ms = entry.mean_ms = 0.0
                self.table.put(entry)
                self.table.save(self.table_path)
                n += 1
                bar.update(note=f"{name} {entry.p50_ms:.2f} ms" if not entry.error else name)
        return n

    # -- interleaved protocol ------------------------------------------------------------------
    def plan_interleaved(self, variants: list[VariantInfo], backends: list[str],
                         precisions: list[str], threads: list[int], rounds: int,
                         fresh: bool = False, tasks: list[str] = ()) -> list[tuple]:
        """(backend, precision, threads, task, variant, rounds done) for every entry (the
        backbone's head and each of `tasks`, as plan()) that has fewer
        than `rounds` interleaved rounds. An interrupted run resumes by rounds; entries
        measured otherwise (isolated protocol, errors, predictions) or complete at fewer
        rounds start from 0: their numbers are not comparable with a common-mode run, and a
        complete entry keeps only its burst medians (the table stays small); so do stale
        entries (measured on other graphs, snrt.lut_graphs)."""
        if rounds < 1:
            raise SnrtError(f"--rounds {rounds}: give at least 1 round (0 = isolated protocol)")
        items = []
        for backend, precision, t, task, v in self.plan(variants, backends, precisions, threads,
                                                        fresh=True, tasks=tasks):
            e = self.table.get(self.key, v.id, backend, precision, t, task)
            done = 0
            if e is not None and not fresh and not e.predicted and e.error is None \
                    and not self.is_stale(e):
                rs = e.conditions.get("interleaved", {})
                done = len(rs.get("p50", []))
                if done < rounds and "count" not in rs:
                    done = 0  # complete at fewer rounds: the pooled statistics are gone
            if done < rounds:
                items.append((backend, precision, t, task, v, done))
        return items

    def run_interleaved(self, items: list[tuple], rounds: int, progress: bool = True) -> int:
        """Measure `items` (from plan_interleaved) in `rounds` interleaved rounds, one worker
        per backend x precision x threads; the table is saved after every round. Returns the
        number of bursts measured."""
        groups: dict[tuple, list[tuple]] = {}
        for backend, precision, t, task, v, done in items:
            groups.setdefault((backend, precision, t), []).append((v, task, done))
        total = sum(rounds - done for *_, done in items)
        n = 0
        with Progress(total, "profile", enabled=progress) as bar:
            for (backend, precision, t), members in groups.items():
                n += self._interleave_group(backend, precision, t, members, rounds, bar)
        return n

    def _interleave_group(self, backend, precision, threads, members, rounds, bar) -> int:
        # keyed by unit_key(variant, task): the worker's names
        variants = {unit_key(v.id, task): (v, task) for v, task, _ in members}
        done = {unit_key(v.id, task): d for v, task, d in members}
        state: dict[str, dict] = {}
        for key, d in done.items():
            v, task = variants[key]
            e = self.table.get(self.key, v.id, backend, precision, threads, task)
            if d:
                state[key] = {"entry": e, "rounds": e.conditions["interleaved"]}
        # rounds are numbered globally so a resumed run shuffles differently; resume from the
        # fewest rounds any variant has (variants added later catch up in the same rounds)
        first_round = min(done.values())
        needs = {vid: rounds - d for vid, d in done.items()}
        ready: dict[str, dict] = {}
        pending: dict[str, dict] = {}
        backend_info: dict = {}
        label = f"{backend}/{precision}/{threads}t"
        n = 0
        events = self._interleaved_events(needs, backend, precision, threads, rounds,
                                          first_round)
        try:
            for ev in events:
                kind = ev.pop("event")
                if kind == "error":
                    key = ev["variant"]
                    v, task = variants[key]
                    log.warning("%s %s failed: %s", _unit_name(key), label, ev["error"])
                    self.table.put(self._entry(v, backend, precision, threads, task=task,
                                               p50_ms=0.0, mean_ms=0.0, error=ev["error"]))
                    self.table.save(self.table_path)
                    bar.update(needs[key], note=f"{_unit_name(key)} failed")
                elif kind == "ready":
                    ready[ev.pop("variant")] = ev
                elif kind == "backend":
                    backend_info = ev
                elif kind == "burst":
                    vid = ev.pop("variant")
                    pending[vid] = ev
                    n += 1
                    bar.update(note=f"round {ev['round'] + 1}/{rounds} {_unit_name(vid)} "
                                    f"{ev['p50_ms']:.2f} ms")
                elif kind == "round":
                    for key, b in pending.items():
                        self._commit_round(key, variants[key], backend, precision, threads,
                                           state, ready.get(key, {}), backend_info, b,
                                           ev["conditions"], rounds)
                    pending = {}
                    self.table.save(self.table_path)
                elif kind == "worker_error":
                    log.warning("%s: %s; the table keeps every complete round, rerun the same "
                                "command to resume", label, ev["error"])
                    for key, (v, task) in variants.items():
                        if key not in state and self.table.get(
                                self.key, v.id, backend, precision, threads, task) is None:
                            self.table.put(self._entry(v, backend, precision, threads,
                                                       task=task, p50_ms=0.0, mean_ms=0.0,
                                                       error=ev["error"]))
                    self.table.save(self.table_path)
                elif kind == "done":
                    for st in state.values():
                        st["rounds"]["worker_peak_rss_mb"] = round(ev["peak_rss_mb"], 1)
                    self.table.save(self.table_path)
        finally:
            close = getattr(events, "close", None)
            if close:
                close()
        return n

    def _interleaved_events(self, needs, backend, precision, threads, rounds, first_round):
        if not self.isolate:
            try:
                yield from measure_interleaved(str(self.bundle.path), needs, backend,
                                               precision, threads, self.protocol, rounds,
                                               first_round, self.placement)
            except SnrtError as e:
                yield {"event": "worker_error", "error": str(e)}
            return
        args = {"bundle": str(self.bundle.path), "needs": needs, "backend": backend,
                "precision": precision, "threads": threads, "placement": self.placement,
                "protocol": vars(self.protocol), "rounds": rounds, "first_round": first_round}
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "snrt.profile",
                                     "--worker-interleaved", json.dumps(args)],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                finished = False
                for line in proc.stdout:
                    if line.startswith("{"):
                        ev = json.loads(line)
                        finished |= ev.get("event") in ("done", "worker_error")
                        yield ev
                rc = proc.wait()
                if rc != 0 or not finished:
                    err.seek(0)
                    tail = (err.read().strip().splitlines() or ["no output"])[-1]
                    yield {"event": "worker_error",
                           "error": f"worker exited with {rc}: {tail[:300]}"}
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _entry(self, v: VariantInfo, backend, precision, threads, task: str | None = None,
               **fields) -> Entry:
        acc = v.top1
        if task is not None:  # the task's own test accuracy on this variant, when recorded
            rec = self.bundle.task(task).accuracy.get(v.id) or {}
            acc = rec.get("top1")
        return Entry(bundle=self.key, variant=v.id, cfg_id=v.cfg_id, backend=backend,
                     precision=precision, threads=threads, flops=v.flops, params=v.params,
                     accuracy=acc, task=task,
                     graphs=graphs_digest(self.bundle, v.id, backend, precision, task),
                     timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **fields)

    def _commit_round(self, key, unit, backend, precision, threads, state, ready, backend_info,
                      burst, conditions, rounds) -> None:
        v, task = unit
        st = state.get(key)
        if st is None:  # first round of this variant
            rs = {"target": rounds, "burst_runs": max(1, math.ceil(self.protocol.runs / rounds)),
                  "burst_seconds": self.protocol.min_seconds / rounds,
                  "cpu_load_pct_start": conditions.get("cpu_load_pct"),
                  **{k: [] for k in ROUND_KEYS}}
            st = state[key] = {"entry": None, "rounds": rs}
            lo, hi = round(burst["min_ms"], 5), round(burst["max_ms"], 5)
            load_ms, first_ms = ready.get("load_ms"), ready.get("first_run_ms")
        else:
            old = st["entry"]
            lo = min(old.min_ms, round(burst["min_ms"], 5))
            hi = max(old.max_ms, round(burst["max_ms"], 5))
            load_ms, first_ms = old.load_ms, old.first_run_ms
        rs = st["rounds"]
        rs["target"] = max(rounds, rs.get("target", 0))
        for k in ROUND_KEYS:
            val = burst["count"] if k == "count" else burst[f"{k}_ms"]
            rs.setdefault(k, []).append(val if k == "count" else round(val, 5))
        rs["p50_median_ms"] = round(float(np.median(rs["p50"])), 5)
        fields = interleaved_fields(rs, lo, hi)
        if len(rs["p50"]) >= rs["target"]:  # complete: keep the burst p10s and medians only
            for k in DROP_WHEN_COMPLETE:
                rs.pop(k, None)
        e = self._entry(v, backend, precision, threads, task=task, **fields,
                        first_run_ms=first_ms, load_ms=load_ms, warmup=self.protocol.warmup,
                        placement=backend_info.get("placement"),
                        backend_version=backend_info.get("backend_version"),
                        conditions={"cpu_load_pct_start": rs.get("cpu_load_pct_start"),
                                    **conditions, "protocol": "interleaved", "interleaved": rs})
        st["entry"] = e
        self.table.put(e)

    def _measure(self, backend, precision, threads, v, task: str | None = None) -> dict:
        args = {"bundle": str(self.bundle.path), "variant": v.id, "backend": backend,
                "precision": precision, "threads": threads, "placement": self.placement,
                "protocol": vars(self.protocol), "task": task}
        if not self.isolate:
            try:
                return measure_variant(args["bundle"], v.id, backend, precision, threads,
                                       self.protocol, self.placement, task)
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
                              a["threads"], Protocol(**a["protocol"]), a.get("placement"),
                              a.get("task"))
    except SnrtError as e:
        res = {"error": str(e)}
    print(json.dumps(res))
    return 0


def _worker_interleaved(spec: str) -> int:
    a = json.loads(spec)
    try:
        for ev in measure_interleaved(a["bundle"], a["needs"], a["backend"], a["precision"],
                                      a["threads"], Protocol(**a["protocol"]), a["rounds"],
                                      a["first_round"], a.get("placement")):
            print(json.dumps(ev), flush=True)
    except SnrtError as e:
        print(json.dumps({"event": "worker_error", "error": str(e)}), flush=True)
    return 0


def _unit_name(key: str) -> str:
    vid, task = split_unit(key)
    return vid if task is None else f"{vid} task={task}"


def resolve_bundle(arg: str) -> Path:
    """'default' / 'elastic' (the bundled families) or a bundle directory."""
    from .multi_bundle import resolve

    return resolve(arg)


def main(argv: list[str] | None = None) -> int:
    """snrt-profile (snrt.profile_cli), kept here for `python -m snrt.profile` and callers."""
    from .profile_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
