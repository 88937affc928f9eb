"""Task pieces on shared sessions (onnxruntime backend): each task added brings only its arrays.

A task piece graph (a tuned block, a task head) run as its own session costs every task one
session per tuned block and head: for the default bundle's adapter tasks 39 sessions, +20 MB
per task against ~145 kB of tuner and head weights (benchmarks/task_bench.py). Here each piece
graph is rewritten by snrt.task_graphs.shared_graph (the task's tensors become graph inputs,
names canonical) and one session per distinct rewritten graph serves every task of that form
(same tuner kinds and shapes on that block; heads of any class count): its frozen weights are
loaded once and prepacked once (a fixed cost, paid by the first task of that form), and a task
brings its tensors as read-only views of its mmapped task_<name>.bin, fed on every run (no copy).

`SharedTaskSteps.step(pid, path, location)` gives a `TaskStep` (session + the task's feeds);
`TaskChainExecutor` runs a chain mixing plain `_Step`s and `TaskStep`s. Thread-safe: the feeds
are read-only and each call builds its own feed dict.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ..errors import BundleError
from ..task_graphs import shared_graph

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TaskStep:
    """A task piece: a shared session and the task's arrays it is fed with."""

    session: ort.InferenceSession
    input_name: str
    output_name: str
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    key: str = ""  # the shared graph's sha256 (which session)
    task: str = ""
    plan: tuple | None = None  # TaskChainExecutor's (run, outputs, input, feeds), made once


def _plan(step) -> tuple:
    """(run, outputs, input name, feeds or None) of a step, made once per step. A task step
    calls the session's C++ run (run(outputs, feeds, None)) directly: InferenceSession.run
    checks every feed name in Python first, ~6 us for a tuned block's 5 inputs (measured: 74 vs
    68 us per block of s, against 66 us for the plain block); the feeds are built here with the
    graph's own names."""
    task = isinstance(step, TaskStep)
    p = step.plan if task else getattr(step, "_plan", None)
    if p is not None:
        return p
    if task:
        inner = getattr(step.session, "_sess", None)
        run = inner.run if callable(getattr(inner, "run", None)) else step.session.run
        p = step.plan = (run, [step.output_name], step.input_name, step.feeds or {})
    else:  # a plain piece (snrt.backends.ort._Step)
        p = step._plan = (step.session.run, [step.output_name], step.input_name, None)
    return p


class TaskChainExecutor:
    """A variant with a task: a chain of plain steps and task steps (same interface as
    snrt.backends.ort.ChainExecutor). One per (variant, task): kept small (slots, tuples,
    one plan tuple per step shared by every executor that runs it)."""

    __slots__ = ("variant", "steps", "_plan")

    def __init__(self, variant, steps):
        self.variant = variant
        self.steps = tuple(steps)
        self._plan = tuple(_plan(s) for s in steps)

    def run(self, batch: np.ndarray) -> np.ndarray:
        h = batch
        for run, outs, name, feeds in self._plan:
            if feeds is None:
                h = run(outs, {name: h})[0]
            else:
                f = dict(feeds)
                f[name] = h
                h = run(outs, f, None)[0]
        return h


class SharedTaskSteps:
    """The shared sessions of task pieces, and each task piece's step over them."""

    def __init__(self, options, mmap):
        """options(): a fresh ort.SessionOptions for a shared session; mmap(path): the
        read-only uint8 memmap of a bundle data file (shared with the backend)."""
        self._options = options
        self._mmap = mmap
        self.sessions: dict[str, ort.InferenceSession] = {}  # shared graph sha256 -> session
        self.steps: dict[tuple[str, ...], TaskStep] = {}  # task pieces -> their step

    def step(self, seg: tuple[str, ...], paths, location: str,
             task: str) -> tuple[TaskStep, bool]:
        """The step of the consecutive pieces `seg` of `task` (paths(): their graphs, chained
        into one model when several: snrt.onnx_compose; the task's tensors in `location`
        beside them); True when this opened a new session."""
        st = self.steps.get(seg)
        if st is not None:
            return st, False
        paths = paths()
        path = paths[0]
        where = str(path) if len(paths) == 1 else f"{path} .. {paths[-1].name}"
        if len(paths) == 1:
            buf = path.read_bytes()
        else:
            from ..onnx_compose import chain_models

            buf = chain_models([p.read_bytes() for p in paths], [str(p) for p in paths])
        sg = shared_graph(buf, location, where)
        feeds = {}
        for f in sg.feeds:
            mm = self._mmap(path.parent / f.location)
            n = 4 * int(np.prod(f.dims, dtype=np.int64))
            if f.offset + n > len(mm):
                raise BundleError(f"{where}: a task tensor reads past the end of {f.location}; "
                                  "re-export the task")
            # one read-only array over the task file's mmap (no copy, no intermediate view)
            feeds[sys.intern(f.input)] = np.ndarray(f.dims, np.float32, buffer=mm, offset=f.offset)
        sess = self.sessions.get(sg.key)
        fresh = sess is None
        if fresh:
            sess = self.sessions[sg.key] = self._open(sg, path, where)
        st = self.steps[seg] = TaskStep(sess, sys.intern(sg.input), sys.intern(sg.output),
                                        feeds, sys.intern(sg.key), task)
        return st, fresh

    def _open(self, sg, path, where: str) -> ort.InferenceSession:
        so = self._options()
        # the model is given as bytes: its frozen tensors' external data resolve from here
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(path.parent))
        try:
            return ort.InferenceSession(sg.model, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types here
            raise BundleError(f"{where}: onnxruntime cannot load it as a shared task graph "
                              f"({type(e).__name__}: {str(e)[:200]}); re-export the task"
                              ) from None

    def own_sessions(self, task: str) -> int:
        """Sessions only `task`'s pieces use."""
        users: dict[str, set[str]] = {}
        for st in self.steps.values():
            users.setdefault(st.key, set()).add(st.task)
        return sum(1 for ts in users.values() if ts == {task})

    def release(self, used_steps: set[int]) -> None:
        """Forget the steps not in `used_steps` (ids) and the sessions no step uses."""
        for pid in [p for p, s in self.steps.items() if id(s) not in used_steps]:
            del self.steps[pid]
        keys = {s.key for s in self.steps.values()}
        for k in [k for k in self.sessions if k not in keys]:
            del self.sessions[k]

    def clear(self) -> None:
        self.steps.clear()
        self.sessions.clear()


def warm(step, runs: int = 2) -> None:
    """Run a never-run step twice on zeros (its first runs page-fault arena and packed
    weights)."""
    shape = [1 if not isinstance(d, int) else d for d in step.session.get_inputs()[0].shape]
    feeds = dict(getattr(step, "feeds", {}) or {})
    feeds[step.input_name] = np.zeros(shape, np.float32)
    for _ in range(runs):
        step.session.run([step.output_name], feeds)
