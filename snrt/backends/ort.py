"""The onnxruntime backend: every variant ready, one copy of the weights in memory.

Design (measured on this 2-vCPU machine, see benchmarks/runtime_bench.py and
docs/runtime-design.md):
- **pieces** placement (default for large families): one InferenceSession per *piece* of the
  family (patch embedding, each block, each stitching layer, each head), shared by every variant
  that runs it. A variant is a chain of sessions. Each weight is loaded once, and onnxruntime's
  prepacking (its fast GEMM layout) keeps full speed: the packed copy replaces the mmapped
  original, so memory stays ~1x the weights however many variants are ready. Chaining costs one
  `run()` call per piece (~5-10 µs each), negligible for DeiT-sized models.
- **graphs** placement (default when all ready variants' weights together stay small): one
  session per variant graph. Fastest for tiny models, where per-piece call overhead is visible,
  at the cost of one (prepacked) weights copy per variant.
- One CPU arena for all sessions (registered with the onnxruntime environment and used via
  `session.use_env_allocators`): with an arena per session, 12 DeiT-B block sessions grew
  by 245 MB of activation arenas above their 340 MB of weights; with the shared arena, 33 MB.
- Per-session intra-op thread pools with spinning disabled: with spinning on, a chain of
  sessions at 2 threads ran 1.5-20x slower (idle pools spin against each other).
"""

from __future__ import annotations

import logging
import posixpath
import sys
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle, VariantInfo
from ..errors import BundleError, SnrtError
from .ort_tasks import (
    FormChain,
    SharedTaskSteps,
    TaskBound,
    TaskChainExecutor,
    TaskStep,
    warm,
)

log = logging.getLogger(__name__)

AUTO_GRAPHS_MAX_BYTES = 64 << 20  # "auto": whole graphs when their weights sum to <= 64 MiB
PLACEMENTS = ("auto", "pieces", "graphs")


_env_arena_lock = threading.Lock()
_env_arena: bool | None = False  # None: tried and unavailable


def _ensure_env_arena() -> bool:
    """Register one process-wide CPU arena with onnxruntime's environment (once)."""
    global _env_arena
    with _env_arena_lock:
        if _env_arena is False:
            mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                    ort.OrtMemType.DEFAULT)
            try:
                ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, -1, -1, -1))
                _env_arena = True
            except Exception as e:  # noqa: BLE001 - a build without env allocators
                log.warning("shared onnxruntime arena unavailable (%s); each session gets "
                            "its own arena, which costs memory", e)
                _env_arena = None
        return bool(_env_arena)


def session_options(threads: int, shared_arena: bool = True,
                    prepack: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if not prepack:  # use the (mmapped, shared) weights as stored: less memory, slower GEMM
        so.add_session_config_entry("session.disable_prepacking", "1")
    if shared_arena and _ensure_env_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_session(path, threads: int, shared_arena: bool = True, prepack: bool = True,
                 initializers: dict | None = None) -> ort.InferenceSession:
    so = session_options(threads, shared_arena, prepack)
    for name, value in (initializers or {}).items():
        so.add_initializer(name, value)  # the caller's buffer, not a copy
    try:
        return ort.InferenceSession(str(path), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types here
        raise BundleError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: "
                          f"{str(e)[:200]}); re-export the bundle") from None


@dataclass
class _Step:
    session: ort.InferenceSession
    input_name: str
    output_name: str


class ChainExecutor:
    """Runs a variant as a chain of piece sessions (or a single whole-graph session)."""

    def __init__(self, variant: VariantInfo, steps: list[_Step]):
        self.variant = variant
        self.steps = steps
        self._outs = [[s.output_name] for s in steps]

    def run(self, batch: np.ndarray) -> np.ndarray:
        h = batch
        for step, outs in zip(self.steps, self._outs):
            h = step.session.run(outs, {step.input_name: h})[0]
        return h


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, threads: int = 1, placement: str = "auto",
                 variants: list[VariantInfo] | None = None, precision: str = "fp32",
                 shared_arena: bool = True, prepack: bool = True,
                 share_weights: bool = False, merge_tasks: bool | str = "auto",
                 task_prepack: bool = False, share_tasks: bool = True):
        if placement not in PLACEMENTS:
            raise SnrtError(f"unknown placement '{placement}'; choose from {PLACEMENTS}")
        if precision not in bundle.precisions:
            bundle.precision_record(precision)  # BundleError: how to add it
        self.precision = precision  # what load() makes ready when not told
        self.bundle = bundle
        self.threads = max(1, int(threads))
        self.shared_arena = shared_arena
        self.prepack = prepack  # False: sessions compute on the weights as stored
        # True: every session's weights.bin tensors are OrtValues over one read-only mmap of
        # the file (one copy in memory for all sessions; with prepack=True each session still
        # packs its own copy for speed)
        self.share_weights = share_weights
        self._mmaps: dict[str, np.memmap] = {}  # data file (as graphs name it) -> its mmap
        # tasks: consecutive task pieces run as one session (False: one session per piece;
        # "auto": merged when that opens fewer sessions over the planned variants, see
        # _merge_task); those sessions compute on the mmapped weights unless task_prepack
        if merge_tasks not in (True, False, "auto"):
            raise SnrtError(f"merge_tasks must be True, False or 'auto', got {merge_tasks!r}")
        self.merge_tasks = merge_tasks
        self._merge_decided: dict[str, bool] = {}
        self.task_prepack = task_prepack
        # tasks, piece by piece: one session per distinct task piece graph with the task's
        # tensors as inputs, shared by every task of that form (snrt.backends.ort_tasks);
        # False: one session per task piece, the task's tensors as its initializers
        self.share_tasks = share_tasks
        self._shared = SharedTaskSteps(
            lambda: session_options(self.threads, self.shared_arena, self.prepack), self._mmap)
        planned = variants if variants is not None else bundle.variants
        if any(v.graph is None for v in planned) or \
                bundle.open_membership:
            placement = "pieces"  # routes of pieces only (e.g. elastic subnets)
        if placement == "auto":
            graph_bytes = sum(v.params for v in planned) * 4
            placement = "graphs" if graph_bytes <= AUTO_GRAPHS_MAX_BYTES else "pieces"
            log.debug("placement auto -> %s (whole graphs would hold %.0f MB of weights)",
                     placement, graph_bytes / 1e6)
        self.placement = placement
        self._planned = list(planned)
        self._pieces: dict[str, _Step] = {}
        self._executors: dict[str, ChainExecutor] = {}
        self._task_executors: dict[tuple[str, str], ChainExecutor] = {}
        self._task_whole: set[tuple[str, str]] = set()  # task executors of one whole graph
        # piece by piece on shared sessions: (variant id, task form) -> its chain, for every
        # task of that form (ort_tasks.FormChain; a task's own state is its TaskFeeds)
        self._form_chains: dict[tuple[str, int], FormChain] = {}
        self._runs: dict[tuple[str, ...], _Step] = {}  # consecutive pieces, one session
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"backend": self.name, "version": ort.__version__, "placement": self.placement,
                "threads": self.threads, "sessions": self.session_count}

    def _mmap(self, path) -> np.memmap:
        """One read-only mmap per bundle data file (keyed by its name in graphs/)."""
        mm = self._mmaps.get(path.name)
        if mm is None:
            mm = self._mmaps[path.name] = np.memmap(path, dtype=np.uint8, mode="r")
        return mm

    def _shared_initializers(self, path, buf: bytes | None = None, prefix: str = "",
                             every_file: bool = False) -> dict:
        """OrtValues over one read-only mmap per data file for the graph's external tensors
        (weights.bin; with every_file, also a task's task_<name>.bin), named `prefix`+name."""
        from ..onnx_file import read_onnx_info

        out = {}
        for r in read_onnx_info(path.read_bytes() if buf is None else buf).external:
            if r.location != "weights.bin" and not every_file:
                continue
            mm = self._mmaps.get(r.location)
            if mm is None:
                f = path.parent / r.location
                mm = self._mmaps[r.location] = np.memmap(f, dtype=np.uint8, mode="r")
            n = 4 * int(np.prod(r.dims, dtype=np.int64))
            if r.offset + n > len(mm):
                raise BundleError(f"{path}: tensor '{r.tensor}' reads past the end of "
                                  f"{r.location}; re-export the bundle")
            a = mm[r.offset:r.offset + n].view(np.float32).reshape(r.dims)
            out[prefix + r.tensor] = ort.OrtValue.ortvalue_from_numpy(a)
        return out

    def _run_step(self, pids: tuple[str, ...]) -> _Step:
        """One session for consecutive pieces (snrt.onnx_compose), every weight an OrtValue
        over the bundle's files (none copied; prepacking as self.task_prepack)."""
        from ..onnx_compose import chain_models, prefix

        paths = [self.bundle.piece_path(pid) for pid in pids]
        blobs = [p.read_bytes() for p in paths]
        inits = {}
        for k, (p, b) in enumerate(zip(paths, blobs)):
            inits.update(self._shared_initializers(p, b, prefix(k), every_file=True))
        model = chain_models(blobs, [str(p) for p in paths])
        so = session_options(self.threads, self.shared_arena, self.task_prepack)
        # a model given as bytes resolves external data here (every tensor is supplied below)
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(paths[0].parent))
        for name, value in inits.items():
            so.add_initializer(name, value)
        try:
            s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types here
            raise BundleError(f"{paths[0]} .. {paths[-1].name}: onnxruntime cannot load "
                              f"them chained ({type(e).__name__}: {str(e)[:200]}); "
                              "re-export the bundle") from None
        return _Step(s, s.get_inputs()[0].name, s.get_outputs()[0].name)

    def _task_segments(self, chain: list[str], task: str) -> list[tuple[str, ...]]:
        """The chain cut into the segments that get one session each: with merge_tasks, a run
        of consecutive task pieces is one segment (the whole chain in the graphs placement,
        whose frozen pieces no plain variant has loaded); else every piece alone."""
        if not chain or not self._merge_task(task):
            return [(p,) for p in chain]
        return self._merged_segments(chain, task)

    def _merged_segments(self, chain: list[str], task: str) -> list[tuple[str, ...]]:
        if self.placement == "graphs":
            return [tuple(chain)]
        out: list[list[str]] = []
        suffix = f"@{task}"
        for pid in chain:
            mine = pid.endswith(suffix)
            if mine and out and out[-1][-1].endswith(suffix):
                out[-1].append(pid)
            else:
                out.append([pid])
        return [tuple(s) for s in out]

    def _merge_task(self, task: str) -> bool:
        """Whether `task`'s pieces run merged. "auto": merged when, over the planned variants
        the task runs on, the merged segments are no more sessions than the single pieces.
        Each merged run is its own session, so for one variant merging wins (13 pieces of a
        12-block adapter task -> 1 session) while over all 71 default-family variants every
        stitch has its own runs: 3.0 s and +170 MB to load two tasks merged vs 0.7 s and
        +40 MB piece by piece (measured, 2 adapter tasks, graphs placement)."""
        if self.merge_tasks != "auto":
            return bool(self.merge_tasks)
        if self.share_tasks and self.placement == "pieces":
            return False  # shared piece sessions serve every further task (ort_tasks)
        decided = self._merge_decided.get(task)
        if decided is None:
            t = self.bundle.task(task)
            chains = [t.chain(v.pieces, v.anchors) for v in self._planned
                      if v.id in set(t.variants)]
            merged = {seg for c in chains for seg in self._merged_segments(c, task)}
            single = {p for c in chains for p in c}
            decided = self._merge_decided[task] = len(merged) <= len(single)
            log.debug("task %s: %s (%d merged segments vs %d pieces over %d variants)", task,
                      "merged" if decided else "piece by piece", len(merged), len(single),
                      len(chains))
        return decided

    def _step(self, path) -> _Step:
        inits = self._shared_initializers(path) if self.share_weights else None
        s = open_session(path, self.threads, self.shared_arena, self.prepack, inits)
        return _Step(s, s.get_inputs()[0].name, s.get_outputs()[0].name)

    def load(self, variant: VariantInfo, precision: str | None = None) -> ChainExecutor:
        """Make `variant` ready in `precision` (default: the backend's): load the sessions it
        needs (sharing pieces) and warm up the new ones (a never-run session page-faults its
        arena and packed weights on its first 1-2 runs; pieces already warm for another
        variant are not run again). int8 graphs (snrt-export quantize) read the one shared
        graphs/weights_int8.bin; each (piece, precision) is one session."""
        prec = precision or self.precision
        key = variant.id if prec == "fp32" else f"{variant.id}#{prec}"
        ex = self._executors.get(key)  # a dict read: no lock when ready
        if ex is not None:
            return ex
        with self._lock:
            if key in self._executors:
                return self._executors[key]
            if prec not in self.bundle.precisions:
                self.bundle.precision_record(prec)  # BundleError: how to add it
            fresh: list[_Step] = []
            if self.placement == "graphs":
                steps = [self._step(self.bundle.precision_graph_path("variants", variant.id,
                                                                      prec))]
                fresh = steps
            else:
                steps = []
                for pid in variant.pieces:
                    pk = pid if prec == "fp32" else f"{pid}#{prec}"
                    if pk not in self._pieces:
                        self._pieces[pk] = self._step(
                            self.bundle.precision_graph_path("pieces", pid, prec))
                        fresh.append(self._pieces[pk])
                    steps.append(self._pieces[pk])
            for step in fresh:
                self._warm(step)
            ex = ChainExecutor(variant, steps)
            self._executors[key] = ex
            return ex

    def task_variants(self, task) -> list[str]:
        """The variants `task` runs on with this backend: every one it was trained for."""
        return list(task.variants)

    def _by_form(self, task) -> bool:
        """Whether `task` runs piece by piece on shared sessions (FormChains, TaskBound)."""
        return self.share_tasks and self.placement == "pieces" and not self._merge_task(task)

    def bound_task(self, variant_id: str, task: str) -> TaskBound | None:
        """The ready (variant, task) on shared pieces, bound for one use (a few dict reads; no
        lock, no session); None when not ready that way (then: load_task)."""
        tf = self._shared.tasks.get(task)
        if tf is None:
            return None
        ch = self._form_chains.get((variant_id, tf.form))
        return None if ch is None else TaskBound(ch, tf, task)

    def load_task(self, variant: VariantInfo, task) -> ChainExecutor | TaskBound:
        """Make `variant` with `task` (a snrt.manifest.TaskInfo) ready: in the graphs placement
        the whole graph of the pair when the task has one (snrt-export task --graphs), else a
        chain of piece sessions (the task's tuned blocks and head, the bundle's other pieces,
        shared with every variant and task that runs them). Piece by piece on shared sessions
        the result is a TaskBound, made per call: the caller need not keep it per (variant,
        task) (bound_task finds it again)."""
        key = (variant.id, task.name)
        ex = self._task_executors.get(key) or self.bound_task(variant.id, task.name)
        if ex is not None:
            return ex
        if self._by_form(task.name):
            return self._load_form(variant, task)
        with self._lock:
            if key in self._task_executors:
                return self._task_executors[key]
            steps, fresh = [], []
            whole = self.bundle.task_graph_path(task.name, variant.id) \
                if self.placement == "graphs" else None
            if whole is not None:  # one session for the whole variant with the task
                steps = fresh = [self._step(whole)]
                self._task_whole.add(key)
            chain = [] if whole is not None else task.chain(variant.pieces, variant.anchors)
            loc = posixpath.relpath(task.weights, "graphs")  # as the task's graphs name it
            for seg in self._task_segments(chain, task.name):
                if self.share_tasks and any(p.endswith(f"@{task.name}") for p in seg):
                    # one session per distinct graph, every task of that form (ort_tasks)
                    st, new = self._shared.step(
                        seg, lambda seg=seg: [self.bundle.piece_path(p) for p in seg], loc,
                        task.name)
                    if new:
                        fresh.append(st)
                    steps.append(st)
                    continue
                if len(seg) > 1:  # a run of pieces as one session, shared by every variant
                    if seg not in self._runs:  # with the same run
                        self._runs[seg] = self._run_step(seg)
                        fresh.append(self._runs[seg])
                    steps.append(self._runs[seg])
                    continue
                (pid,) = seg
                if pid not in self._pieces:
                    self._pieces[pid] = self._step(self.bundle.piece_path(pid))
                    fresh.append(self._pieces[pid])
                steps.append(self._pieces[pid])
            for step in fresh:
                self._warm(step)
            ex = TaskChainExecutor(variant, steps) if any(
                isinstance(s, TaskStep) for s in steps) else ChainExecutor(variant, steps)
            self._task_executors[key] = ex
            return ex

    def _load_form(self, variant: VariantInfo, task) -> TaskBound:
        """load_task piece by piece on shared sessions: the task's feeds and form (once per
        task), the variant's chain (once per (variant, form))."""
        loc = posixpath.relpath(task.weights, "graphs")  # as the task's graphs name it
        suffix = f"@{task.name}"
        with self._lock:
            tf = self._shared.prepare(  # slot: the piece id without the task ("b.block3")
                task.name, [(p["id"][:-len(suffix)], self.bundle.piece_path(p["id"]))
                            for p in task.pieces if p["id"].endswith(suffix)], loc)
            ck = (variant.id, tf.form)
            ch = self._form_chains.get(ck)
            if ch is None:
                keys = self._shared.form_keys[tf.form]
                steps, slots, fresh = [], [], []
                for pid in task.chain(variant.pieces, variant.anchors):
                    if pid.endswith(suffix):
                        slot = sys.intern(pid[:-len(suffix)])
                        st, new = self._shared.form_step(keys[slot], self.bundle.piece_path(pid),
                                                         loc)
                        if new:
                            fresh.append((st, tf.values[slot]))
                        steps.append(st)
                        slots.append(slot)
                        continue
                    if pid not in self._pieces:
                        self._pieces[pid] = self._step(self.bundle.piece_path(pid))
                        fresh.append((self._pieces[pid], None))
                    steps.append(self._pieces[pid])
                    slots.append(None)
                for st, values in fresh:
                    if values is None:
                        self._warm(st)
                    else:
                        warm(st, feeds=values)
                ch = self._form_chains[ck] = FormChain(variant, steps, slots)
            return TaskBound(ch, tf, task.name)

    @property
    def session_count(self) -> int:
        """onnxruntime sessions open now (pieces, and whole graphs in the graphs placement)."""
        return len(self._pieces) + len(self._runs) + len(self._task_whole) + \
            len(self._shared.sessions) + (
            len(self._executors) if self.placement == "graphs" else 0)

    def task_session_count(self, task: str) -> int:
        """Sessions open now that only `task` uses (its tuned pieces or runs, its heads, its
        whole graphs)."""
        suffix = f"@{task}"
        return sum(1 for pid in self._pieces if pid.endswith(suffix)) + \
            sum(1 for seg in self._runs if any(p.endswith(suffix) for p in seg)) + \
            sum(1 for _, t in self._task_whole if t == task) + self._shared.own_sessions(task)

    @staticmethod
    def _warm(step: _Step, runs: int = 2) -> None:
        if isinstance(step, TaskStep):
            return warm(step, runs)
        shape = [1 if not isinstance(d, int) else d for d in step.session.get_inputs()[0].shape]
        x = np.zeros(shape, np.float32)
        for _ in range(runs):
            step.session.run([step.output_name], {step.input_name: x})

    def unload(self, variant: VariantInfo) -> None:
        """Forget a variant; pieces no other loaded variant uses are released. Calls in flight
        keep their references and finish normally."""
        with self._lock:
            for key in [k for k in self._executors if k.split("#", 1)[0] == variant.id]:
                del self._executors[key]
            for key in [k for k in self._task_executors if k[0] == variant.id]:
                del self._task_executors[key]
                self._task_whole.discard(key)
            for key in [k for k in self._form_chains if k[0] == variant.id]:
                del self._form_chains[key]
            used = {id(s) for ex in self._task_executors.values() for s in ex.steps}
            used |= {id(s) for ch in self._form_chains.values() for s in ch.steps}
            if self.placement == "pieces":
                used |= {id(s) for ex in self._executors.values() for s in ex.steps}
            for pid in [p for p, s in self._pieces.items() if id(s) not in used]:
                del self._pieces[pid]
            for seg in [g for g, s in self._runs.items() if id(s) not in used]:
                del self._runs[seg]
            self._shared.release(used)

    def close(self) -> None:
        with self._lock:
            self._executors.clear()
            self._task_executors.clear()
            self._form_chains.clear()
            self._task_whole.clear()
            self._pieces.clear()
            self._runs.clear()
            self._shared.clear()
