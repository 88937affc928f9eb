"""LookupTable: per-device latency measurements (and predictions) of a bundle's variants.

File: `<device-id>.json` in a table directory (runs write to `lookup_tables/` in the per-user
data directory, snrt.paths; the repository's `lookup_tables/` holds the shipped, read-only
ones), schema `snrt.lookup_table` version 2, 3 when some entry has a `task`, 4 when some entry
records the graphs it was measured on (`graphs`; version 1 files, without `quiet_ms`, are
still read):

    {"schema": "snrt.lookup_table", "schema_version": 2,
     "device": DeviceInfo,                        # snrt.device
     "bundles": {"<bundle key>": {"name", "weights_sha256", "variants", "path"}},
     "entries": [Entry, ...]}

An Entry is one variant on one backend/precision/thread count, with the backbone's own head
(`task` absent) or with one of the bundle's tasks (`task`: its name; the variant's chain with
the task's tuners and head, `snrt-profile --tasks`; version 3). `graphs` (version 4) is a
digest of the files whose form sets the entry's latency (the ONNX graphs of the variant's route
for onnxruntime, its .tflite file for TFLite: snrt.lut_graphs.graphs_digest); an entry whose
digest differs from the bundle's now is stale (regraphed, re-exported) and is ignored by the
controller and snrt-run and re-measured by snrt-profile (snrt.lut_graphs). Measured entries hold the
statistics `snrt-profile` collects (TFLite benchmark_model / onnxruntime_perf_test style:
warm-up, then timed runs: count, mean, std, min, p50, p90, p99, max, first run, load time, peak
RSS) and the conditions during measurement, plus `quiet_ms` (version 2): the variant's latency
when the machine is quiet, the statistic that repeats between two profiles on a shared host
(see snrt.profile); predicted entries (`predicted: true`) hold the predictor's mean as
`p50_ms`/`mean_ms` (and `quiet_ms`) and its 1-sigma `uncertainty_ms`. The table is validated
on load (an error names the file, the entry and `snrt-lut repair`, which drops bad entries);
writes are atomic.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .device import DeviceInfo, describe_device
from .errors import SnrtError
from .fileio import atomic_write_json

SCHEMA = "snrt.lookup_table"
SCHEMA_VERSION = 2  # written when no entry has a task
TASKS_VERSION = 3  # written when some entry has a task (older snrt refuses the field)
GRAPHS_VERSION = 4  # written when some entry records its graphs (older snrt refuses the field,
# and would use entries measured on graphs the bundle no longer has)
READS_VERSIONS = (1, 2, 3, 4)  # version 1: the same without quiet_ms
ALL_TASKS = object()  # select(task=ALL_TASKS): entries of every task and of the backbone


class LookupTableError(SnrtError, ValueError):
    """A lookup table file is missing, malformed, or of another schema version."""


@dataclass
class Entry:
    bundle: str  # bundle key: "<family name>@<weights sha256[:12]>"
    variant: str
    cfg_id: int
    backend: str
    precision: str
    threads: int
    p50_ms: float
    mean_ms: float
    flops: int = 0
    params: int = 0
    accuracy: float | None = None  # top-1 %, copied from the bundle when known
    predicted: bool = False
    uncertainty_ms: float | None = None  # predictions: 1-sigma
    count: int = 0
    std_ms: float | None = None
    min_ms: float | None = None
    quiet_ms: float | None = None  # latency when the machine is quiet (snrt.profile)
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    first_run_ms: float | None = None
    load_ms: float | None = None
    peak_rss_mb: float | None = None
    warmup: int = 0
    placement: str | None = None
    backend_version: str | None = None
    conditions: dict = field(default_factory=dict)  # cpu load, freq, temperature, battery...
    timestamp: str | None = None
    error: str | None = None  # set when the variant could not be measured
    task: str | None = None  # None: the backbone's own head; else the task whose tuners ran
    graphs: str | None = None  # digest of the files measured (snrt.lut_graphs); None: unknown

    @property
    def key(self) -> tuple:
        return (self.bundle, self.variant, self.backend, self.precision, self.threads,
                self.task)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "accuracy"}

    @classmethod
    def from_json(cls, d: dict) -> Entry:
        """An entry from its JSON object; LookupTableError saying which field is wrong."""
        if not isinstance(d, dict):
            raise LookupTableError(f"not a JSON object ({type(d).__name__})")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LookupTableError(f"unknown entry fields {sorted(unknown)}")
        try:
            e = cls(**d)
        except TypeError as err:
            raise LookupTableError(f"malformed ({err})") from None
        for name, required in (("p50_ms", True), ("quiet_ms", False)):
            x = getattr(e, name)
            if (x is not None or required) and (isinstance(x, bool)
                                                or not isinstance(x, (int, float)) or x < 0):
                raise LookupTableError(f"{name} must be a non-negative number, got {x!r}")
        if isinstance(e.threads, bool) or not isinstance(e.threads, int) or e.threads < 1:
            raise LookupTableError(f"threads must be a positive integer, got {e.threads!r}")
        for name in ("bundle", "variant", "backend", "precision"):
            if not isinstance(getattr(e, name), str):
                raise LookupTableError(f"{name} must be a string")
        if e.task is not None and (not isinstance(e.task, str) or not e.task):
            raise LookupTableError(f"task must be a task name or absent, got {e.task!r}")
        if e.graphs is not None and (not isinstance(e.graphs, str) or not e.graphs):
            raise LookupTableError(f"graphs must be a digest string or absent, got {e.graphs!r}")
        return e


def _entry_name(i: int, d) -> str:
    if isinstance(d, dict):
        task = f" task={d['task']!s}" if d.get("task") is not None else ""
        return (f"entry {i} ({d.get('variant')!s}{task} {d.get('backend')!s}/"
                f"{d.get('precision')!s}/threads={d.get('threads')!r})")
    return f"entry {i}"


def repair_hint(where: str) -> str:
    return (f"drop the bad entries with `snrt-lut repair {where}`, then measure them again "
            "with snrt-profile")


@dataclass
class LookupTable:
    device: DeviceInfo
    bundles: dict[str, dict] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def new(cls) -> LookupTable:
        return cls(describe_device())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LookupTable:
        p = Path(path)
        if not p.is_file():
            raise LookupTableError(f"{p}: no such lookup table; create one with snrt-profile")
        try:
            d = json.loads(p.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LookupTableError(f"{p}: not valid JSON ({e}); remove it and profile again "
                                   "with snrt-profile") from None
        return cls.from_json(d, str(p))

    @classmethod
    def from_json(cls, d: dict, where: str = "lookup table") -> LookupTable:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise LookupTableError(f"{where}: not an snrt lookup table")
        if d.get("schema_version") not in READS_VERSIONS:
            raise LookupTableError(
                f"{where}: schema version {d.get('schema_version')}, this snrt reads "
                f"{' and '.join(map(str, READS_VERSIONS))}; re-run snrt-profile or upgrade "
                "snrt")
        try:
            device = DeviceInfo.from_json(d["device"])
        except (KeyError, TypeError, ValueError) as e:
            raise LookupTableError(f"{where}: malformed device ({type(e).__name__}: {e}); "
                                   "profile again into a new file with snrt-profile") from None
        entries, bad = cls.parse_entries(d.get("entries", []))
        if bad:
            more = f" (and {len(bad) - 1} more bad entries)" if len(bad) > 1 else ""
            raise LookupTableError(f"{where}: {bad[0]}{more}; {repair_hint(where)}")
        bundles = d.get("bundles", {})
        if not isinstance(bundles, dict):
            raise LookupTableError(f"{where}: 'bundles' must be an object; "
                                   f"{repair_hint(where)}")
        return cls(device, dict(bundles), entries)

    @staticmethod
    def parse_entries(raw) -> tuple[list[Entry], list[str]]:
        """(valid entries, a message per bad or duplicate entry naming it)."""
        if not isinstance(raw, list):
            return [], ["'entries' must be a list"]
        entries, bad, seen = [], [], set()
        for i, d in enumerate(raw):
            try:
                e = Entry.from_json(d)
            except LookupTableError as err:
                bad.append(f"{_entry_name(i, d)}: {err}")
                continue
            if e.key in seen:
                bad.append(f"{_entry_name(i, d)}: duplicate of an earlier entry")
                continue
            seen.add(e.key)
            entries.append(e)
        return entries, bad

    def to_json(self) -> dict:
        tasks = any(e.task is not None for e in self.entries)
        graphs = any(e.graphs is not None for e in self.entries)
        version = GRAPHS_VERSION if graphs else TASKS_VERSION if tasks else SCHEMA_VERSION
        return {"schema": SCHEMA, "schema_version": version,
                "device": self.device.to_json(), "bundles": self.bundles,
                "entries": [e.to_json() for e in self.entries]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; a table the loader would reject is never written."""
        d = self.to_json()
        bad = self.parse_entries(d["entries"])[1]
        if bad:
            raise LookupTableError(f"{path}: not written, {bad[0]}")
        atomic_write_json(path, d)
        return Path(path)

    @staticmethod
    def path_for(directory: str | os.PathLike, device: DeviceInfo | None = None) -> Path:
        return Path(directory) / f"{(device or describe_device()).id}.json"

    @classmethod
    def for_this_device(cls, directory: str | os.PathLike) -> LookupTable:
        return cls.load(cls.path_for(directory))

    # -- entries -----------------------------------------------------------------------------
    def put(self, entry: Entry) -> None:
        """Add or replace the entry with the same key (bundle, variant, backend, precision,
        threads, task); a prediction never replaces a measurement."""
        for i, e in enumerate(self.entries):
            if e.key == entry.key:
                if entry.predicted and not e.predicted and e.error is None:
                    return
                self.entries[i] = entry
                return
        self.entries.append(entry)

    def get(self, bundle: str, variant: str, backend: str = "onnxruntime",
            precision: str = "fp32", threads: int = 1, task: str | None = None
            ) -> Entry | None:
        for e in self.entries:
            if e.key == (bundle, variant, backend, precision, threads, task):
                return e
        return None

    def select(self, bundle: str | None = None, backend: str | None = None,
               precision: str | None = None, threads: int | None = None,
               measured_only: bool = False, task=None) -> list[Entry]:
        """Entries without errors matching the filters (None: any). `task`: None (the
        default) the backbone's own head only, a name that task's only, ALL_TASKS every
        entry."""
        return [e for e in self.entries
                if (bundle is None or e.bundle == bundle)
                and (backend is None or e.backend == backend)
                and (precision is None or e.precision == precision)
                and (threads is None or e.threads == threads)
                and (task is ALL_TASKS or e.task == task)
                and e.error is None and not (measured_only and e.predicted)]

    def tasks(self, bundle: str | None = None) -> list[str]:
        """The task names some entry (of `bundle`) holds, sorted."""
        return sorted({e.task for e in self.select(bundle, task=ALL_TASKS)
                       if e.task is not None})

    def configs(self, bundle: str | None = None) -> list[tuple[str, str, int]]:
        """(backend, precision, threads) combinations present, sorted."""
        return sorted({(e.backend, e.precision, e.threads) for e in self.select(bundle)})


def bundle_key(bundle) -> str:
    """Identify a bundle by family name and weights hash: a re-export with other weights is a
    different bundle, a copy of the same one is not."""
    sha = bundle.manifest.files["graphs/weights.bin"]["sha256"]
    return f"{bundle.name}@{sha[:12]}"


def pareto_front(entries: list[Entry]) -> list[Entry]:
    """Entries not dominated in (lower p50 latency, higher accuracy); needs accuracies.
    Sorted by latency."""
    pts = sorted((e for e in entries if e.accuracy is not None),
                 key=lambda e: (e.p50_ms, -e.accuracy))
    front, best = [], float("-inf")
    for e in pts:
        if e.accuracy > best:
            front.append(e)
            best = e.accuracy
    return front
